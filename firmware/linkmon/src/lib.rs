//! `popd linkmon`: the I/O side of the link monitor. Reads carrier changes over rtnetlink,
//! runs BFD and probe sockets per uplink, drives the sans-I/O core
//! ([`pop_linkmon_core`]) with `now`, and on its decision switches the routes with one atomic
//! rtnetlink replace. Events and status are served as JSON lines on a Unix socket.

#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod error;
pub mod history;
pub mod netlink;
pub mod service;
pub mod status_server;
#[allow(unsafe_code)] // IP_RECVTTL and its control message; each block has a SAFETY comment
pub mod sys;
pub mod uplink_sockets;

pub use config::LinkmonConfig;
pub use error::LinkmonError;
pub use service::{run, run_until};
