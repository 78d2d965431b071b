//! Named paths through the rig and what each fault must do to them: shared by `pop-rig
//! selftest` and the system tests.

use std::fmt;
use std::net::Ipv4Addr;

use crate::error::Result;
use crate::inject::Fault;
use crate::netns::ProbeResult;
use crate::plan::{Role, Uplink};
use crate::rig::Rig;

/// A one-way path whose state does not depend on the service routes (each source address is
/// tied to its uplink by the carriers' strict rp_filter and the appliance's policy tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathId {
    /// Uplink address → core media peer.
    UplinkToCore(Uplink),
    /// Core media peer → uplink address.
    CoreToUplink(Uplink),
    /// Uplink address → its gateway (first hop only).
    UplinkToGateway(Uplink),
    /// Service address → core media peer, by the appliance's main default route.
    ServiceToCore,
    /// Core media peer → service address, by the core's route.
    CoreToService,
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathId::UplinkToCore(u) => write!(f, "{u}->core"),
            PathId::CoreToUplink(u) => write!(f, "core->{u}"),
            PathId::UplinkToGateway(u) => write!(f, "{u}->gateway"),
            PathId::ServiceToCore => f.write_str("service->core"),
            PathId::CoreToService => f.write_str("core->service"),
        }
    }
}

impl PathId {
    /// Every path that depends only on uplink state.
    pub const UPLINK_PATHS: [PathId; 6] = [
        PathId::UplinkToCore(Uplink::One),
        PathId::CoreToUplink(Uplink::One),
        PathId::UplinkToGateway(Uplink::One),
        PathId::UplinkToCore(Uplink::Two),
        PathId::CoreToUplink(Uplink::Two),
        PathId::UplinkToGateway(Uplink::Two),
    ];

    /// (role, address) at each end.
    pub fn ends(self, rig: &Rig) -> ((Role, Ipv4Addr), (Role, Ipv4Addr)) {
        let p = rig.plan();
        let core = (Role::Core, p.core_media);
        match self {
            PathId::UplinkToCore(u) => ((Role::App, p.uplink(u).app), core),
            PathId::CoreToUplink(u) => (core, (Role::App, p.uplink(u).app)),
            PathId::UplinkToGateway(u) => (
                (Role::App, p.uplink(u).app),
                (u.carrier(), p.uplink(u).gateway),
            ),
            PathId::ServiceToCore => ((Role::App, p.service), core),
            PathId::CoreToService => (core, (Role::App, p.service)),
        }
    }

    /// Probes the path with `count` datagrams.
    pub fn probe(self, rig: &Rig, count: u32) -> Result<ProbeResult> {
        let (from, to) = self.ends(rig);
        rig.probe(from, to, count)
    }
}

/// What a path must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Every datagram arrives.
    Works,
    /// None arrives.
    Broken,
    /// Some but not all arrive (`loss` % dropped at random, give or take).
    Lossy,
}

/// What `fault` does to each of [`PathId::UPLINK_PATHS`].
pub fn expected_effect(fault: Fault, path: PathId) -> Expect {
    let hit = |u: Uplink| match fault {
        Fault::BothUplinksDown => true,
        Fault::CarrierLoss(f) | Fault::Blackhole(f) | Fault::PastGateway(f) => f == u,
        Fault::Loss { uplink, .. } => uplink == u,
    };
    match path {
        PathId::UplinkToCore(u) | PathId::CoreToUplink(u) if hit(u) => match fault {
            Fault::Loss { .. } => Expect::Lossy,
            _ => Expect::Broken,
        },
        PathId::UplinkToGateway(u) if hit(u) => match fault {
            Fault::Loss { .. } => Expect::Lossy,
            // Past the gateway: the gateway itself still answers.
            Fault::PastGateway(_) => Expect::Works,
            _ => Expect::Broken,
        },
        _ => Expect::Works,
    }
}

/// Checks a probe against an expectation.
pub fn meets(result: ProbeResult, expect: Expect) -> bool {
    match expect {
        Expect::Works => result.all(),
        Expect::Broken => result.received == 0,
        Expect::Lossy => result.any() && !result.all(),
    }
}

/// Probes every uplink path and returns those not matching `fault`'s expectation (`None`: the
/// healthy rig), as (path, expectation, result).
pub fn mismatches(
    rig: &Rig,
    fault: Option<Fault>,
    count: u32,
) -> Result<Vec<(PathId, Expect, ProbeResult)>> {
    let mut bad = Vec::new();
    for path in PathId::UPLINK_PATHS {
        let expect = fault.map_or(Expect::Works, |f| expected_effect(f, path));
        let result = path.probe(rig, count)?;
        if !meets(result, expect) {
            bad.push((path, expect, result));
        }
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_gateway_keeps_the_gateway_reachable() {
        let f = Fault::PastGateway(Uplink::One);
        assert_eq!(
            expected_effect(f, PathId::UplinkToGateway(Uplink::One)),
            Expect::Works
        );
        assert_eq!(
            expected_effect(f, PathId::UplinkToCore(Uplink::One)),
            Expect::Broken
        );
        assert_eq!(
            expected_effect(f, PathId::UplinkToCore(Uplink::Two)),
            Expect::Works
        );
    }

    #[test]
    fn both_down_breaks_every_uplink_path() {
        for p in PathId::UPLINK_PATHS {
            assert_eq!(expected_effect(Fault::BothUplinksDown, p), Expect::Broken);
        }
    }

    #[test]
    fn lossy_means_some_but_not_all() {
        let r = |received| ProbeResult { sent: 10, received };
        assert!(meets(r(5), Expect::Lossy));
        assert!(!meets(r(0), Expect::Lossy));
        assert!(!meets(r(10), Expect::Lossy));
        assert!(meets(r(0), Expect::Broken));
        assert!(meets(r(10), Expect::Works));
    }
}
