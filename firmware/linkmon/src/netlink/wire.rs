//! rtnetlink messages as bytes: building the few requests linkmon sends and parsing the
//! replies and events it reads. No I/O; every parser is bounds-checked and returns `None` on
//! anything short or inconsistent (the kernel is trusted, but not to the point of a panic).

use std::net::Ipv4Addr;

/// `nlmsghdr` length.
pub const NLMSG_HDR_LEN: usize = 16;

/// Message types (`linux/netlink.h`, `linux/rtnetlink.h`).
pub const NLMSG_ERROR: u16 = 2;
/// End of a multi-part dump.
pub const NLMSG_DONE: u16 = 3;
/// Link created or changed.
pub const RTM_NEWLINK: u16 = 16;
/// Link removed.
pub const RTM_DELLINK: u16 = 17;
/// Link dump request.
pub const RTM_GETLINK: u16 = 18;
/// Route add/replace.
pub const RTM_NEWROUTE: u16 = 24;
/// Route dump request.
pub const RTM_GETROUTE: u16 = 26;
/// Neighbour add/use.
pub const RTM_NEWNEIGH: u16 = 28;
/// Policy rule add.
pub const RTM_NEWRULE: u16 = 32;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_ROOT: u16 = 0x100;
const NLM_F_MATCH: u16 = 0x200;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;

const AF_INET: u8 = libc::AF_INET as u8;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;

const IFLA_IFNAME: u16 = 3;
const IFF_UP: u32 = 0x1;
const IFF_LOWER_UP: u32 = 0x10000;

const NDA_DST: u16 = 1;
const NTF_USE: u8 = 0x01;

const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A message under construction: header first, then the family header, then attributes.
struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    fn new(msg_type: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        Self { buf }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len() as u32).to_ne_bytes();
        self.buf[..4].copy_from_slice(&len);
        self.buf
    }
}

/// An IPv4 route as linkmon installs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination network.
    pub dst: Ipv4Addr,
    /// Prefix length (0 for the default route).
    pub prefix_len: u8,
    /// Next hop.
    pub gateway: Ipv4Addr,
    /// Outgoing interface index.
    pub oif: u32,
    /// Routing table.
    pub table: u32,
    /// Metric (`RTA_PRIORITY`): part of the route's identity for replace.
    pub metric: u32,
    /// Preferred source address, e.g. the service address on the dummy interface.
    pub prefsrc: Option<Ipv4Addr>,
    /// `rtm_protocol`, identifying the installer (`ip route` shows it as `proto N`).
    pub protocol: u8,
}

/// `RTM_NEWROUTE` with `NLM_F_CREATE | NLM_F_REPLACE`: the kernel swaps the route in one step,
/// there is no instant with no route.
pub fn route_replace(route: &RouteSpec, seq: u32) -> Vec<u8> {
    let mut m = MsgBuilder::new(
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    );
    let table_byte = u8::try_from(route.table).unwrap_or(libc::RT_TABLE_UNSPEC);
    m.bytes(&[
        AF_INET,
        route.prefix_len,
        0, // src_len
        0, // tos
        table_byte,
        route.protocol,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ])
    .bytes(&0u32.to_ne_bytes()); // rtm_flags
    if route.prefix_len > 0 {
        m.attr(RTA_DST, &route.dst.octets());
    }
    m.attr(RTA_GATEWAY, &route.gateway.octets())
        .attr(RTA_OIF, &route.oif.to_ne_bytes())
        .attr(RTA_PRIORITY, &route.metric.to_ne_bytes())
        .attr(RTA_TABLE, &route.table.to_ne_bytes());
    if let Some(src) = route.prefsrc {
        m.attr(RTA_PREFSRC, &src.octets());
    }
    m.finish()
}

const FRA_SRC: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
const FRA_TABLE: u16 = 15;
const FR_ACT_TO_TBL: u8 = 1;

/// An IPv4 policy rule as linkmon installs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSpec {
    /// Rule priority (lower is consulted first).
    pub priority: u32,
    /// Table to look up.
    pub table: u32,
    /// Only for packets from this source address (/32).
    pub from: Option<Ipv4Addr>,
    /// Ignore results with a prefix this short or shorter (`suppress_prefixlength`).
    pub suppress_prefixlen: Option<u32>,
}

/// `RTM_NEWRULE` with `NLM_F_EXCL`: an identical rule left by a previous run answers EEXIST.
pub fn rule_add(rule: &RuleSpec, seq: u32) -> Vec<u8> {
    let mut m = MsgBuilder::new(
        RTM_NEWRULE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    );
    let table_byte = u8::try_from(rule.table).unwrap_or(libc::RT_TABLE_UNSPEC);
    let src_len = if rule.from.is_some() { 32 } else { 0 };
    m.bytes(&[AF_INET, 0, src_len, 0, table_byte, 0, 0, FR_ACT_TO_TBL])
        .bytes(&0u32.to_ne_bytes())
        .attr(FRA_PRIORITY, &rule.priority.to_ne_bytes())
        .attr(FRA_TABLE, &rule.table.to_ne_bytes());
    if let Some(src) = rule.from {
        m.attr(FRA_SRC, &src.octets());
    }
    if let Some(len) = rule.suppress_prefixlen {
        m.attr(FRA_SUPPRESS_PREFIXLEN, &len.to_ne_bytes());
    }
    m.finish()
}

/// `RTM_GETROUTE` dump of IPv4 routes.
pub fn route_dump(seq: u32) -> Vec<u8> {
    let mut m = MsgBuilder::new(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq);
    m.bytes(&[AF_INET, 0, 0, 0, 0, 0, 0, 0])
        .bytes(&0u32.to_ne_bytes());
    m.finish()
}

/// `RTM_GETLINK` dump.
pub fn link_dump(seq: u32) -> Vec<u8> {
    let mut m = MsgBuilder::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq);
    m.bytes(&[0u8; 16]);
    m.finish()
}

/// `RTM_NEWNEIGH` with `NTF_USE`: asks the kernel to (re)resolve the neighbour as if a packet
/// were about to be sent to it, creating the entry if needed. Periodically sent for a backup
/// gateway it keeps the entry valid, so the first packet after a switch does not wait for ARP.
pub fn neigh_use(ifindex: u32, addr: Ipv4Addr, seq: u32) -> Vec<u8> {
    let mut m = MsgBuilder::new(
        RTM_NEWNEIGH,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    );
    m.bytes(&[AF_INET, 0, 0, 0])
        .bytes(&ifindex.to_ne_bytes())
        .bytes(&0u16.to_ne_bytes()) // ndm_state: left to resolution
        .bytes(&[NTF_USE, 0]) // flags, type
        .attr(NDA_DST, &addr.octets());
    m.finish()
}

/// One message out of a buffer that may hold several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlMsg<'a> {
    /// `nlmsg_type`.
    pub msg_type: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// Everything after the header.
    pub payload: &'a [u8],
}

/// Iterates over the messages of one received datagram; stops at the first malformed one.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = NlMsg<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
        if len < NLMSG_HDR_LEN || len > rest.len() {
            return None;
        }
        let msg_type = u16::from_ne_bytes(rest.get(4..6)?.try_into().ok()?);
        let seq = u32::from_ne_bytes(rest.get(8..12)?.try_into().ok()?);
        let payload = rest.get(NLMSG_HDR_LEN..len)?;
        rest = rest.get(align4(len).min(rest.len())..).unwrap_or_default();
        Some(NlMsg {
            msg_type,
            seq,
            payload,
        })
    })
}

/// The errno of an `NLMSG_ERROR` payload (0 is an acknowledgement).
pub fn error_code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}

fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(buf.get(0..2)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf.get(2..4)?.try_into().ok()?);
        if len < 4 {
            return None;
        }
        let payload = buf.get(4..len)?;
        buf = buf.get(align4(len).min(buf.len())..).unwrap_or_default();
        // Strip NLA_F_NESTED / NLA_F_NET_BYTEORDER.
        Some((kind & 0x3fff, payload))
    })
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

fn u32_ne(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

/// A link's state from `RTM_NEWLINK`/`RTM_DELLINK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name, when the message carries it.
    pub name: Option<String>,
    /// Administratively up and carrier present (`IFF_UP` and `IFF_LOWER_UP`); false for a
    /// removed link.
    pub carrier: bool,
}

/// Parses a link message payload.
pub fn parse_link(msg: &NlMsg<'_>) -> Option<LinkState> {
    if msg.msg_type != RTM_NEWLINK && msg.msg_type != RTM_DELLINK {
        return None;
    }
    let p = msg.payload;
    let ifindex = u32::from_ne_bytes(p.get(4..8)?.try_into().ok()?);
    let flags = u32::from_ne_bytes(p.get(8..12)?.try_into().ok()?);
    let name = attrs(p.get(16..)?)
        .find(|(k, _)| *k == IFLA_IFNAME)
        .map(|(_, v)| {
            let v = v.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(v).into_owned()
        });
    Some(LinkState {
        ifindex,
        name,
        carrier: msg.msg_type == RTM_NEWLINK && flags & IFF_UP != 0 && flags & IFF_LOWER_UP != 0,
    })
}

/// An IPv4 route read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination (0.0.0.0 for default).
    pub dst: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Table.
    pub table: u32,
    /// Gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Outgoing interface.
    pub oif: Option<u32>,
    /// Metric.
    pub metric: u32,
    /// Installer protocol.
    pub protocol: u8,
}

/// Parses a route message payload (`RTM_NEWROUTE` from a dump or an event).
pub fn parse_route(msg: &NlMsg<'_>) -> Option<RouteEntry> {
    if msg.msg_type != RTM_NEWROUTE {
        return None;
    }
    let p = msg.payload;
    if *p.first()? != AF_INET {
        return None;
    }
    let mut r = RouteEntry {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix_len: *p.get(1)?,
        table: u32::from(*p.get(4)?),
        gateway: None,
        oif: None,
        metric: 0,
        protocol: *p.get(5)?,
    };
    for (kind, v) in attrs(p.get(12..)?) {
        match kind {
            RTA_DST => r.dst = ipv4(v)?,
            RTA_GATEWAY => r.gateway = ipv4(v),
            RTA_OIF => r.oif = u32_ne(v),
            RTA_PRIORITY => r.metric = u32_ne(v).unwrap_or(0),
            RTA_TABLE => r.table = u32_ne(v).unwrap_or(r.table),
            _ => {}
        }
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_replace_round_trips_through_the_parser() {
        let spec = RouteSpec {
            dst: Ipv4Addr::new(203, 0, 113, 0),
            prefix_len: 24,
            gateway: Ipv4Addr::new(192, 0, 2, 1),
            oif: 7,
            table: 254,
            metric: 10,
            prefsrc: Some(Ipv4Addr::new(198, 51, 100, 1)),
            protocol: 4,
        };
        let bytes = route_replace(&spec, 9);
        assert_eq!(bytes.len() % 4, 0);
        let msgs: Vec<_> = messages(&bytes).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].seq, 9);
        let back = parse_route(&msgs[0]).unwrap();
        assert_eq!(back.dst, spec.dst);
        assert_eq!(back.prefix_len, 24);
        assert_eq!(back.gateway, Some(spec.gateway));
        assert_eq!(back.oif, Some(7));
        assert_eq!(back.metric, 10);
        assert_eq!(back.table, 254);
    }

    #[test]
    fn truncated_or_garbage_input_yields_nothing_and_never_panics() {
        let good = route_replace(
            &RouteSpec {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Ipv4Addr::new(192, 0, 2, 1),
                oif: 1,
                table: 254,
                metric: 0,
                prefsrc: None,
                protocol: 4,
            },
            1,
        );
        for cut in 0..good.len() {
            for m in messages(&good[..cut]) {
                let _ = parse_route(&m);
                let _ = parse_link(&m);
            }
        }
        let mut lying = good.clone();
        lying[0] = 0xff; // length beyond the buffer
        assert_eq!(messages(&lying).count(), 0);
        let mut x: u32 = 1;
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            for m in messages(&junk) {
                let _ = parse_route(&m);
                let _ = parse_link(&m);
                let _ = error_code(m.payload);
            }
        }
    }
}
