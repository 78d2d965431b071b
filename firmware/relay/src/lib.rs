//! The relay service: the NG control server (UDP, optional TCP), the configuration, and the
//! glue that lets the sans-I/O core (`pop-relay-core`) drive the data plane (`pop-dataplane`).
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
pub mod media_ops;
pub mod service;

pub use config::{ConfigError, RelayConfig};
pub use service::{run, ServiceError};
