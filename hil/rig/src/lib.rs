//! The virtual rig: the PoP in network namespaces.
//!
//! An appliance namespace (`app`: service address on `lo`, uplinks `up1`, `up2`), two carrier
//! routers (`car1`, `car2`) and a core (`core`: far-end media peer and control-plane host),
//! built from Rust by shelling out to `ip`, `nft`, `sysctl` and FRR's `bfdd`. Nothing is ever
//! created in the root namespace. Failure injectors act on the carrier side and return the
//! `CLOCK_MONOTONIC` time they took effect. Teardown happens on drop, after a panic, and — via
//! run-state files and `pop-rig cleanup` or the next build — after the owner was killed.
//!
//! ```no_run
//! use pop_rig::{Fault, Rig, RigOptions, Role, Uplink};
//! # fn main() -> pop_rig::Result<()> {
//! let rig = Rig::build(RigOptions::default())?;
//! let p = *rig.plan();
//! assert!(rig.probe((Role::App, p.service), (Role::Core, p.core_media), 5)?.all());
//! let hit = rig.inject(Fault::Blackhole(Uplink::One))?;
//! // ... drive the link monitor, measure from hit.effective ...
//! rig.recover(Fault::Blackhole(Uplink::One))?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod checks;
mod clock;
mod cmd;
mod error;
mod follow;
mod frr;
mod inject;
mod netns;
mod plan;
mod process;
mod rig;
mod selftest;
mod state;

pub use checks::{expected_effect, meets, mismatches, Expect, PathId};
pub use clock::MonoTime;
pub use error::{Result, RigError};
pub use follow::{FollowPath, RouteEvent, RouteFollower};
pub use frr::{render_bfdd_config, BfdPeerConfig, BfdPeerStatus, BfdTimers, FrrBfdd, VtyClient};
pub use inject::{Fault, Injection};
pub use netns::{in_namespace, netns_path, probe, udp_socket_in, ProbeResult};
pub use plan::{
    AddressPlan, Role, Uplink, UplinkAddrs, BFD_PORT, CARRIER_APP_DEV, CARRIER_CORE_DEV,
};
pub use process::NsProcess;
pub use rig::{BuildTimings, Rig, RigOptions, Upstream};
pub use selftest::{run_selftest, SelftestReport, SELFTEST_FAULTS};
pub use state::{
    cleanup_stale, existing_namespaces, state_root, CleanupReport, ProcRecord, RunState,
    DEFAULT_STATE_ROOT, RUN_PREFIX, STATE_ROOT_ENV,
};
