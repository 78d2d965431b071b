//! Sans-I/O core of the media relay.
//!
//! Nothing here opens a socket or reads the clock: the service (`pop-relay`) passes `now` in and
//! performs media operations through the [`media::MediaOps`] trait, which the data plane
//! implements in production and a fake implements in tests.
//!
//! [`RelayCore`] is the entry point: it answers rtpengine NG requests
//! ([`RelayCore::handle_datagram`]), owns the call table and the [`PortAllocator`], and closes
//! calls on timeouts ([`RelayCore::poll_timeouts`]).
#![forbid(unsafe_code)]

pub mod config;
pub mod counters;
pub mod ended;
pub mod error;
pub mod media;
pub mod ports;
pub mod sdp_rewrite;
pub mod stats;

mod engine;
mod origin;
mod replies;
mod reply_cache;
mod request;
mod session;

pub use crate::config::CoreConfig;
pub use crate::counters::{CloseReason, CoreCounters};
pub use crate::ended::{EndedCall, LiveLimits};
pub use crate::engine::RelayCore;
pub use crate::error::CoreError;
pub use crate::ports::PortAllocator;
