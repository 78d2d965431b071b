//! Failover scenarios on the virtual rig: the benchmark of issue 3 ("What it must show") and
//! the watchable demo. Used by the `failover-bench` binary.

pub mod agent;
pub mod checks;
pub mod demo;
pub mod error;
pub mod media;
pub mod ng;
pub mod report;
pub mod services;
pub mod trial;
