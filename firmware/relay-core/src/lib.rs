//! Sans-I/O core of the media relay.
//!
//! Nothing here opens a socket or reads the clock: the service (`pop-relay`) passes `now` in and
//! performs media operations through the [`media::MediaOps`] trait, which the data plane
//! implements in production and a fake implements in tests.
#![forbid(unsafe_code)]

pub mod media;
pub mod sdp_rewrite;
pub mod stats;
