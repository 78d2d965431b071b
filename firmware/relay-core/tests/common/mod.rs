//! Test bed for the relay core: a fake clock (one base `Instant` plus offsets), a fake
//! `MediaOps` that records every call, NG request builders and SDP helpers.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use pop_relay_core::media::{
    BindError, LocalPortsId, MediaError, MediaOps, MediaTotals, StreamId, StreamSpec, StreamStats,
};
use pop_relay_core::{CoreConfig, RelayCore};
use pop_wire::bencode::{self, Value};

/// A clock that only moves when told to.
pub struct Clock {
    base: Instant,
    offset: Duration,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            base: Instant::now(),
            offset: Duration::ZERO,
        }
    }
    pub fn now(&self) -> Instant {
        self.base + self.offset
    }
    pub fn advance(&mut self, d: Duration) -> Instant {
        self.offset += d;
        self.now()
    }
}

/// Records what the core asked of the data plane and lets tests script its answers.
#[derive(Default)]
pub struct FakeMedia {
    pub next_id: u64,
    /// Bound pairs: id → (ip, rtp port, mux only).
    pub bound: HashMap<LocalPortsId, (IpAddr, u16, bool)>,
    /// Live streams and their latest spec.
    pub streams: HashMap<StreamId, StreamSpec>,
    /// Stats returned by `stream_stats`, per stream (default: nothing received yet).
    pub stats: HashMap<StreamId, StreamStats>,
    /// RTP ports some other process holds.
    pub foreign_ports: HashSet<u16>,
    /// Make every bind fail fatally.
    pub fatal_bind: bool,
    pub creates: usize,
    pub updates: usize,
    pub removes: usize,
    pub releases: usize,
    pub stats_calls: usize,
    /// A port bound twice at the same time: the core handed out a port it did not own.
    pub double_binds: usize,
    /// What `totals` reports.
    pub totals: MediaTotals,
}

impl FakeMedia {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn bound_rtp_ports(&self) -> HashSet<u16> {
        self.bound.values().map(|&(_, p, _)| p).collect()
    }
    pub fn port_of(&self, id: LocalPortsId) -> u16 {
        self.bound[&id].1
    }
    /// The only live stream (panics if there is not exactly one).
    pub fn only_stream(&self) -> &StreamSpec {
        assert_eq!(self.streams.len(), 1, "expected exactly one stream");
        self.streams.values().next().unwrap()
    }
    pub fn set_idle(&mut self, ms: Option<u64>) {
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            let s = self.stats.entry(id).or_default();
            s.from_a.idle_ms = ms;
            s.from_b.idle_ms = ms;
        }
    }
}

impl MediaOps for FakeMedia {
    fn totals(&mut self) -> MediaTotals {
        self.totals
    }
    fn bind_ports(
        &mut self,
        ip: IpAddr,
        rtp_port: u16,
        rtcp_mux_only: bool,
    ) -> Result<LocalPortsId, BindError> {
        if self.fatal_bind {
            return Err(BindError::Fatal {
                addr: SocketAddr::new(ip, rtp_port),
                reason: "address not available".into(),
            });
        }
        if self.foreign_ports.contains(&rtp_port) {
            return Err(BindError::InUse(rtp_port));
        }
        if self.bound_rtp_ports().contains(&rtp_port) {
            self.double_binds += 1;
            return Err(BindError::InUse(rtp_port));
        }
        self.next_id += 1;
        let id = LocalPortsId(self.next_id);
        self.bound.insert(id, (ip, rtp_port, rtcp_mux_only));
        Ok(id)
    }
    fn release_ports(&mut self, ports: LocalPortsId) {
        assert!(
            self.bound.remove(&ports).is_some(),
            "released unknown ports"
        );
        assert!(
            !self
                .streams
                .values()
                .any(|s| s.a.local == ports || s.b.local == ports),
            "ports released while a stream uses them"
        );
        self.releases += 1;
    }
    fn create_stream(&mut self, spec: StreamSpec) -> Result<(), MediaError> {
        assert!(self.bound.contains_key(&spec.a.local) && self.bound.contains_key(&spec.b.local));
        assert!(
            self.streams.insert(spec.id, spec).is_none(),
            "stream created twice"
        );
        self.creates += 1;
        Ok(())
    }
    fn update_stream(&mut self, spec: StreamSpec) -> Result<(), MediaError> {
        let slot = self.streams.get_mut(&spec.id).ok_or(MediaError::Unknown)?;
        *slot = spec;
        self.updates += 1;
        Ok(())
    }
    fn remove_stream(&mut self, id: StreamId) -> Result<StreamStats, MediaError> {
        self.streams.remove(&id).ok_or(MediaError::Unknown)?;
        self.removes += 1;
        Ok(self.stats.remove(&id).unwrap_or_default())
    }
    fn stream_stats(&mut self, id: StreamId) -> Result<StreamStats, MediaError> {
        self.stats_calls += 1;
        if !self.streams.contains_key(&id) {
            return Err(MediaError::Unknown);
        }
        Ok(self.stats.get(&id).copied().unwrap_or_default())
    }
}

/// A small config: media on 203.0.113.1, ports 30000–30099 (50 pairs).
pub fn config() -> CoreConfig {
    CoreConfig {
        media_address: "203.0.113.1".parse().unwrap(),
        port_min: 30000,
        port_max: 30099,
        ..CoreConfig::default()
    }
}

pub fn core_with(cfg: CoreConfig) -> RelayCore {
    RelayCore::new(cfg, 42).expect("valid config")
}

/// An audio SDP from `ip:port`, o= version `version`, with `extra` media attributes.
pub fn sdp(ip: &str, port: u16, version: u64, extra: &str) -> String {
    format!(
        "v=0\r\no=- 1000 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n{extra}"
    )
}

pub fn req(entries: Vec<(&str, Value)>) -> Value {
    Value::dict(entries)
}

pub fn offer_req(call: &str, from: &str, sdp: &str) -> Value {
    req(vec![
        ("command", "offer".into()),
        ("call-id", call.into()),
        ("from-tag", from.into()),
        ("sdp", sdp.into()),
    ])
}

pub fn answer_req(call: &str, from: &str, to: &str, sdp: &str) -> Value {
    req(vec![
        ("command", "answer".into()),
        ("call-id", call.into()),
        ("from-tag", from.into()),
        ("to-tag", to.into()),
        ("sdp", sdp.into()),
    ])
}

pub fn delete_req(call: &str, from: &str) -> Value {
    req(vec![
        ("command", "delete".into()),
        ("call-id", call.into()),
        ("from-tag", from.into()),
    ])
}

pub fn with(mut v: Value, key: &str, val: Value) -> Value {
    v.dict_insert(key, val);
    v
}

pub fn strings(items: &[&str]) -> Value {
    Value::list(items.iter().map(|s| Value::str(s)))
}

pub fn result(reply: &Value) -> &str {
    reply
        .dict_get("result")
        .and_then(Value::as_str)
        .unwrap_or("<no result>")
}

pub fn error_reason(reply: &Value) -> &str {
    reply
        .dict_get("error-reason")
        .and_then(Value::as_str)
        .unwrap_or("<no error-reason>")
}

pub fn reply_sdp(reply: &Value) -> String {
    let sdp = reply.dict_get("sdp").and_then(Value::as_str);
    assert!(
        sdp.is_some(),
        "reply has no sdp: {reply:?} ({})",
        error_reason(reply)
    );
    sdp.unwrap().to_owned()
}

/// Ports on the `m=` lines of an SDP.
pub fn media_ports(sdp: &str) -> Vec<u16> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("m="))
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect()
}

pub fn origin_version(sdp: &str) -> u64 {
    let o = sdp.lines().find(|l| l.starts_with("o=")).unwrap();
    o.split(' ').nth(2).unwrap().parse().unwrap()
}

/// `<cookie> <bencode>`.
pub fn datagram(cookie: &str, v: &Value) -> Vec<u8> {
    let mut out = format!("{cookie} ").into_bytes();
    v.encode(&mut out);
    out
}

/// Splits a reply datagram into cookie and decoded dictionary.
pub fn parse_datagram(d: &[u8]) -> (Vec<u8>, Value) {
    let sp = d
        .iter()
        .position(|&b| b == b' ')
        .expect("reply has a cookie");
    let cookie = d[..sp].to_vec();
    (
        cookie,
        bencode::decode(&d[sp + 1..]).expect("reply is bencode"),
    )
}
