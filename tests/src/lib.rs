//! Harness for real-process tests: popd against rtpengine, Kamailio and real sockets.
//!
//! Everything here fails loudly: a missing binary is an error naming the package to install
//! (`scripts/setup`) or the build command to run, never a silently skipped test. Child processes
//! live in their own process group and are killed by PID when their guard drops, also while a
//! test panics; their output goes to files in a per-test [`TestDir`], printed on failure.
//!
//! This is test tooling, so errors are `anyhow` chains that read like a failure report rather
//! than a typed enum callers would match on.
#![forbid(unsafe_code)]

pub mod agent_bed;
pub mod binaries;
pub mod child;
pub mod netns_bed;
pub mod ng_client;
pub mod ng_corpus;
pub mod ports;
pub mod relays;
pub mod rtp_endpoint;
pub mod sdp_masking;
pub mod sip_ua;
pub mod test_dir;

pub use child::ChildGuard;
pub use ng_client::NgClient;
pub use test_dir::TestDir;
