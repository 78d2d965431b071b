//! Roles, uplinks and the address plan of the virtual PoP.
//!
//! ```text
//!                  up1 192.0.2.1/30      app 192.0.2.2/30   core 198.51.100.1/30      car1 198.51.100.2/30
//!  app (lo: 203.0.113.1) ───────────────── car1 ───────────────────────────────────────── core (lo: 198.51.100.10 media,
//!                  up2 192.0.2.5/30      app 192.0.2.6/30   core 198.51.100.5/30      car2 198.51.100.6/30    198.51.100.11 control)
//!                      ───────────────── car2 ─────────────────────────────────────────
//! ```
//!
//! Only documentation ranges (RFC 5737) are used, and only inside the rig's namespaces.

use std::fmt;
use std::net::Ipv4Addr;

/// A namespace of the rig.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The appliance: service address on `lo`, uplinks `up1` and `up2`.
    App,
    /// Carrier router of uplink 1: `app` faces the appliance, `core` faces the core.
    Car1,
    /// Carrier router of uplink 2: `app` faces the appliance, `core` faces the core.
    Car2,
    /// The far end: media peer and control-plane host; `car1` and `car2` face the carriers.
    Core,
}

impl Role {
    /// All roles, in build order.
    pub const ALL: [Role; 4] = [Role::App, Role::Car1, Role::Car2, Role::Core];

    /// Short name used as the namespace suffix and in output.
    pub fn name(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Car1 => "car1",
            Role::Car2 => "car2",
            Role::Core => "core",
        }
    }

    /// Parses [`Role::name`].
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One of the appliance's two uplinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Uplink {
    /// Primary: `up1` to `car1`.
    One,
    /// Backup: `up2` to `car2`.
    Two,
}

impl Uplink {
    /// Both uplinks.
    pub const ALL: [Uplink; 2] = [Uplink::One, Uplink::Two];

    /// The carrier router at the far end of this uplink.
    pub fn carrier(self) -> Role {
        match self {
            Uplink::One => Role::Car1,
            Uplink::Two => Role::Car2,
        }
    }

    /// The appliance-side interface name.
    pub fn app_dev(self) -> &'static str {
        match self {
            Uplink::One => "up1",
            Uplink::Two => "up2",
        }
    }

    /// The core-side interface name toward this uplink's carrier.
    pub fn core_dev(self) -> &'static str {
        match self {
            Uplink::One => "car1",
            Uplink::Two => "car2",
        }
    }

    /// The policy-routing table holding this uplink's default route (see
    /// [`crate::RigOptions::uplink_policy_tables`]).
    pub fn policy_table(self) -> u32 {
        match self {
            Uplink::One => 101,
            Uplink::Two => 102,
        }
    }
}

impl fmt::Display for Uplink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.app_dev())
    }
}

/// Interface name, in each carrier, of the link toward the appliance.
pub const CARRIER_APP_DEV: &str = "app";
/// Interface name, in each carrier, of the link toward the core.
pub const CARRIER_CORE_DEV: &str = "core";
/// UDP port of single-hop BFD control packets (RFC 5881).
pub const BFD_PORT: u16 = 3784;

/// Addresses of one uplink: the appliance end and the carrier end of its /30, plus the carrier's
/// link to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkAddrs {
    /// The appliance's address on the uplink (`up1`/`up2`).
    pub app: Ipv4Addr,
    /// The carrier's address facing the appliance: the appliance's gateway on this uplink.
    pub gateway: Ipv4Addr,
    /// Prefix length of the uplink subnet.
    pub prefix_len: u8,
    /// The carrier's address facing the core.
    pub carrier_core_side: Ipv4Addr,
    /// The core's address facing this carrier (the core's next hop toward the appliance).
    pub core_side: Ipv4Addr,
}

/// Every address of the rig. Fixed: namespaces isolate runs, so there is no need to vary them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPlan {
    /// The appliance's service address (on `lo`): what the relay binds and writes into SDP.
    pub service: Ipv4Addr,
    /// The far-end media peer (on the core's `lo`).
    pub core_media: Ipv4Addr,
    /// The control-plane host (on the core's `lo`).
    pub core_control: Ipv4Addr,
    /// Uplink 1 (primary).
    pub uplink1: UplinkAddrs,
    /// Uplink 2 (backup).
    pub uplink2: UplinkAddrs,
}

impl AddressPlan {
    /// The plan every rig uses.
    pub const STANDARD: AddressPlan = AddressPlan {
        service: Ipv4Addr::new(203, 0, 113, 1),
        core_media: Ipv4Addr::new(198, 51, 100, 10),
        core_control: Ipv4Addr::new(198, 51, 100, 11),
        uplink1: UplinkAddrs {
            app: Ipv4Addr::new(192, 0, 2, 1),
            gateway: Ipv4Addr::new(192, 0, 2, 2),
            prefix_len: 30,
            carrier_core_side: Ipv4Addr::new(198, 51, 100, 1),
            core_side: Ipv4Addr::new(198, 51, 100, 2),
        },
        uplink2: UplinkAddrs {
            app: Ipv4Addr::new(192, 0, 2, 5),
            gateway: Ipv4Addr::new(192, 0, 2, 6),
            prefix_len: 30,
            carrier_core_side: Ipv4Addr::new(198, 51, 100, 5),
            core_side: Ipv4Addr::new(198, 51, 100, 6),
        },
    };

    /// The addresses of `uplink`.
    pub fn uplink(&self, uplink: Uplink) -> &UplinkAddrs {
        match uplink {
            Uplink::One => &self.uplink1,
            Uplink::Two => &self.uplink2,
        }
    }

    /// The network address of `uplink`'s subnet.
    pub fn uplink_net(&self, uplink: Uplink) -> Ipv4Addr {
        let a = self.uplink(uplink);
        let mask = u32::MAX
            .checked_shl(32 - u32::from(a.prefix_len))
            .unwrap_or(0);
        Ipv4Addr::from(u32::from(a.app) & mask)
    }

    /// The prefix covering the core's host addresses, routed by the carriers toward the core.
    pub const CORE_HOSTS: &'static str = "198.51.100.8/29";
    /// Prefix length of the carrier–core links.
    pub const CORE_LINK_PREFIX_LEN: u8 = 30;
}
