//! Wire formats of the PoP appliance, as checked views and typed representations.
//!
//! No I/O and no clock here. Every parser validates lengths once (`new_checked`/`parse`) and
//! after that no accessor can panic: the data plane and the NG server feed untrusted bytes from
//! the network straight into these types.
#![forbid(unsafe_code)]
// Unit tests may unwrap: a panic there is a test failure, not a crash on network input.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bencode;
pub mod bfd;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod telephone_event;
