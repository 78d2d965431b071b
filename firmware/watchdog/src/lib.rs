//! `popd watchdog`: pets the hardware watchdog only while every critical service proves that its
//! own loop makes progress, and the systemd notification helpers every `popd` service uses.
//!
//! Liveness protocol (chosen here, used by all services): each critical service sends a small
//! datagram ([`heartbeat`]) to the watchdog's Unix socket from inside its main loop, once per
//! loop iteration at most every `interval`. The watchdog never asks services about their
//! *state*: an uplink that is down, a relay with no calls, are healthy loops. Only a loop that
//! stops turning stops the heartbeats, and only that stops the petting (reboot loops caused by
//! the network are thereby impossible by construction).
//!
//! Layers: [`supervisor`] is the sans-I/O decision (fake-clock tested), [`device`] the
//! hardware behind the [`device::WatchdogDevice`] trait (with a fake), [`ioctl`] the only
//! `unsafe` in the crate, [`service`] the loop, [`sd_notify`] the systemd protocol.

#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod device;
pub mod error;
pub mod heartbeat;
#[allow(unsafe_code)] // the WDIOC_* ioctls; each block has a SAFETY comment
pub mod ioctl;
pub mod sd_notify;
pub mod service;
pub mod signals;
pub mod supervisor;

pub use config::WatchdogConfig;
pub use device::{BootStatus, FakeWatchdog, WatchdogDevice};
pub use error::WatchdogError;
pub use heartbeat::{Heartbeat, HeartbeatSender};
pub use sd_notify::{Notifier, SystemdWatchdog};
pub use service::run;
pub use supervisor::{Decision, Supervisor};
