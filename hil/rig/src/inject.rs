//! Failure injectors. Every fault is made on the carrier side, so the appliance sees what it
//! would see in the field: a carrier dropping its end, a carrier silently eating traffic, a
//! break beyond the gateway, loss bursts.

use std::fmt;

use crate::clock::MonoTime;
use crate::cmd::{self, NFT};
use crate::error::{Result, RigError};
use crate::plan::{Uplink, CARRIER_APP_DEV, CARRIER_CORE_DEV};

/// A failure the rig can inject (and recover from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The carrier's end of the uplink goes down: the appliance's interface loses carrier.
    CarrierLoss(Uplink),
    /// The carrier drops everything on the uplink, both directions, link stays up (nft netdev
    /// ingress + egress on the carrier's port, so ARP and BFD die too).
    Blackhole(Uplink),
    /// The carrier's link toward the core drops everything: the gateway still answers (BFD and
    /// ARP stay up), destinations past it do not.
    PastGateway(Uplink),
    /// The carrier drops `percent` % of packets at random on the uplink, both directions.
    Loss {
        /// Which uplink.
        uplink: Uplink,
        /// Drop probability in percent, 1..=100.
        percent: u8,
    },
    /// Both carriers drop their ends at once.
    BothUplinksDown,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::CarrierLoss(u) => write!(f, "carrier-loss({u})"),
            Fault::Blackhole(u) => write!(f, "blackhole({u})"),
            Fault::PastGateway(u) => write!(f, "past-gateway({u})"),
            Fault::Loss { uplink, percent } => write!(f, "loss({uplink},{percent}%)"),
            Fault::BothUplinksDown => f.write_str("both-uplinks-down"),
        }
    }
}

/// When an injection or recovery happened. The change took effect between `started` (before
/// the command ran) and `effective` (after it returned); use `effective` as "the fault is in
/// place", and `effective - started` as the uncertainty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injection {
    /// The fault.
    pub fault: Fault,
    /// Just before the change was issued.
    pub started: MonoTime,
    /// Just after it completed.
    pub effective: MonoTime,
}

/// Names of nftables tables the injectors create (all `netdev` family, in carrier namespaces).
pub(crate) const BLACKHOLE_TABLE: &str = "pop_rig_blackhole";
pub(crate) const PAST_GATEWAY_TABLE: &str = "pop_rig_past_gateway";
pub(crate) const LOSS_TABLE: &str = "pop_rig_loss";
pub(crate) const ALL_TABLES: [&str; 3] = [BLACKHOLE_TABLE, PAST_GATEWAY_TABLE, LOSS_TABLE];

/// A netdev table dropping on `dev`, both directions, everything or `percent` % at random.
/// Priority -500 puts it ahead of anything else hooked on the device.
pub(crate) fn drop_table(table: &str, dev: &str, percent: Option<u8>) -> String {
    let rule = match percent {
        Some(p) => format!("numgen random mod 100 < {p} drop"),
        None => "drop".to_owned(),
    };
    format!(
        "table netdev {table} {{\n\
         \x20 chain rx {{ type filter hook ingress device \"{dev}\" priority -500; policy accept; {rule}; }}\n\
         \x20 chain tx {{ type filter hook egress device \"{dev}\" priority -500; policy accept; {rule}; }}\n\
         }}\n"
    )
}

/// Script removing `table` if present (declaring it first makes the delete idempotent), all in
/// one transaction.
pub(crate) fn remove_table_script(table: &str) -> String {
    format!("table netdev {table}\ndelete table netdev {table}\n")
}

/// Applies an nft script in `ns`. `nft` is started from a thread that joined the namespace
/// (a child inherits its thread's namespace) rather than by `ip netns exec`, whose private
/// mount namespace and /sys remount cost ~15 ms: injection timing is what tests measure.
pub(crate) fn nft_apply(ns: &str, script: &str) -> Result<()> {
    let script = script.to_owned();
    crate::netns::in_namespace(ns, move || {
        cmd::run_with_input(NFT, &["-f", "-"], Some(&script)).map(drop)
    })?
}

/// Validates a loss percentage.
pub(crate) fn check_percent(percent: u8) -> Result<()> {
    if (1..=100).contains(&percent) {
        Ok(())
    } else {
        Err(RigError::Usage(format!(
            "loss percentage {percent} is out of range: use 1..=100"
        )))
    }
}

/// Which table and device a table-based fault uses in its carrier.
pub(crate) fn table_and_dev(fault: Fault) -> Option<(&'static str, &'static str, Option<u8>)> {
    match fault {
        Fault::Blackhole(_) => Some((BLACKHOLE_TABLE, CARRIER_APP_DEV, None)),
        Fault::PastGateway(_) => Some((PAST_GATEWAY_TABLE, CARRIER_CORE_DEV, None)),
        Fault::Loss { percent, .. } => Some((LOSS_TABLE, CARRIER_APP_DEV, Some(percent))),
        Fault::CarrierLoss(_) | Fault::BothUplinksDown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blackhole_drops_both_directions_on_the_uplink_port() {
        let s = drop_table(BLACKHOLE_TABLE, "app", None);
        assert!(s.contains("hook ingress device \"app\""));
        assert!(s.contains("hook egress device \"app\""));
        assert_eq!(s.matches("; drop;").count(), 2);
    }

    #[test]
    fn loss_uses_random_numgen() {
        let s = drop_table(LOSS_TABLE, "app", Some(2));
        assert_eq!(s.matches("numgen random mod 100 < 2 drop").count(), 2);
    }

    #[test]
    fn percent_bounds() {
        assert!(check_percent(0).is_err());
        assert!(check_percent(101).is_err());
        assert!(check_percent(1).is_ok());
        assert!(check_percent(100).is_ok());
    }

    #[test]
    fn fault_names_are_stable() {
        assert_eq!(Fault::Blackhole(Uplink::One).to_string(), "blackhole(up1)");
        assert_eq!(
            Fault::Loss {
                uplink: Uplink::Two,
                percent: 5
            }
            .to_string(),
            "loss(up2,5%)"
        );
    }
}
