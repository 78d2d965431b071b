//! Load generator and benchmarks for the media relay.
//!
//! Drives a relay under test (ours, `popd relay`, or rtpengine) the way a carrier does: sessions
//! are created over rtpengine's NG protocol, then each session's two endpoints send 20 ms-paced
//! 172-byte RTP both ways. Receivers measure delivery, loss, duplicates and one-way latency; the
//! relay's CPU time, RSS and open files are sampled from `/proc`. `relay-bench` runs ours and
//! rtpengine in the same invocation and prints ratios; `relay-soak` hunts leaks and checks
//! recovery after overload.
#![forbid(unsafe_code)]
// Tests may panic on a broken fixture; production code may not (workspace lint).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bench;
pub mod clock;
pub mod error;
pub mod floor;
pub mod host;
pub mod latency;
pub mod ng_client;
pub mod procstat;
pub mod relay_process;
pub mod report;
pub mod sdp_text;
pub mod soak;
pub mod stream_stats;
pub mod traffic;

pub use error::LoadgenError;
