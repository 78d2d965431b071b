//! Building NG reply dictionaries (`query`, `delete` statistics, `statistics`, errors).

use std::net::SocketAddr;

use pop_wire::bencode::Value;

use crate::counters::CoreCounters;
use crate::error::CoreError;
use crate::media::{DirectionStats, MediaTotals, StreamStats};
use crate::session::{Call, Side};

/// `{"result": "error", "error-reason": ...}`.
pub(crate) fn error(e: &CoreError) -> Value {
    Value::dict([
        ("result", Value::str("error")),
        ("error-reason", Value::str(&e.to_string())),
    ])
}

/// `{"result": "ok"}` plus `extra` entries.
pub(crate) fn ok_with(extra: Vec<(&str, Value)>) -> Value {
    let mut v = Value::dict([("result", Value::str("ok"))]);
    for (k, val) in extra {
        v.dict_insert(k, val);
    }
    v
}

fn int(n: u64) -> Value {
    Value::int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn endpoint(addr: SocketAddr) -> Value {
    Value::dict([
        (
            "family",
            Value::str(if addr.is_ipv4() { "IPv4" } else { "IPv6" }),
        ),
        ("address", Value::str(&addr.ip().to_string())),
        ("port", Value::int(i64::from(addr.port()))),
    ])
}

fn errors(d: &DirectionStats) -> u64 {
    d.malformed_dropped + d.spoofed_dropped + d.send_errors
}

/// RTP packets and bytes of a direction: the data plane counts RTCP within the totals.
fn rtp_only(d: &DirectionStats) -> (u64, u64) {
    (
        d.packets.saturating_sub(d.rtcp_packets),
        d.bytes.saturating_sub(d.rtcp_bytes),
    )
}

fn stats_dict(packets: u64, bytes: u64, errors: u64) -> Value {
    Value::dict([
        ("packets", int(packets)),
        ("bytes", int(bytes)),
        ("errors", int(errors)),
    ])
}

/// The `query` body (also appended to `delete` replies): per-tag media with the counters of
/// what each party sent us, and call totals. `stats[i]` belongs to `call.streams[i]` (`None`
/// when the data plane has no stream yet).
pub(crate) fn call_stats(call: &Call, stats: &[Option<StreamStats>]) -> Vec<(&'static str, Value)> {
    let mut tags = Value::dict([]);
    let (mut rtp_p, mut rtp_b, mut rtp_e) = (0u64, 0u64, 0u64);
    let (mut rtcp_p, mut rtcp_b) = (0u64, 0u64);
    for side in [Side::A, Side::B] {
        let tag = call.tag(side).unwrap_or_default();
        let mut medias = Vec::with_capacity(call.streams.len());
        for (i, stream) in call.streams.iter().enumerate() {
            let leg = stream.leg(side);
            let st = stats.get(i).copied().flatten();
            let dir = st.map(|s| match side {
                Side::A => s.from_a,
                Side::B => s.from_b,
            });
            let latched = st.and_then(|s| match side {
                Side::A => s.peer_a,
                Side::B => s.peer_b,
            });
            let d = dir.unwrap_or_default();
            let (packets, bytes) = rtp_only(&d);
            let mut s = Value::dict([("stats", stats_dict(packets, bytes, errors(&d)))]);
            if let Some(p) = leg.ports {
                s.dict_insert("local port", Value::int(i64::from(p.rtp_port)));
            }
            if let Some(ep) = latched.or(leg.peer_rtp) {
                s.dict_insert("endpoint", endpoint(ep));
            }
            if let Some(ep) = leg.peer_rtp {
                s.dict_insert("advertised endpoint", endpoint(ep));
            }
            s.dict_insert("rtcp packets", int(d.rtcp_packets));
            s.dict_insert("rtcp bytes", int(d.rtcp_bytes));
            rtp_p += packets;
            rtp_b += bytes;
            rtp_e += errors(&d);
            rtcp_p += d.rtcp_packets;
            rtcp_b += d.rtcp_bytes;
            let mut flags = Vec::new();
            if leg.rtcp_mux {
                flags.push(Value::str("rtcp-mux"));
            }
            medias.push(Value::dict([
                ("index", int(i as u64 + 1)),
                ("type", Value::str(&stream.media_type)),
                ("protocol", Value::str(&stream.proto)),
                ("flags", Value::list(flags)),
                ("streams", Value::list([s])),
            ]));
        }
        let mut entry = Value::dict([("tag", Value::bytes(tag)), ("medias", Value::list(medias))]);
        if let Some(other) = call.tag(side.other()) {
            entry.dict_insert("in dialogue with", Value::bytes(other));
        }
        if let Value::Dict(d) = &mut tags {
            d.insert(tag.to_vec(), entry);
        }
    }
    vec![
        ("tags", tags),
        (
            "totals",
            Value::dict([
                ("RTP", stats_dict(rtp_p, rtp_b, rtp_e)),
                ("RTCP", stats_dict(rtcp_p, rtcp_b, 0)),
            ]),
        ),
    ]
}

/// The `statistics` body, in rtpengine's layout, plus our own `pop` section (core counters and
/// the data plane's `media` totals).
pub(crate) fn statistics(c: &CoreCounters, sessions: usize, media: &MediaTotals) -> Value {
    let current = Value::dict([
        ("sessionsown", int(sessions as u64)),
        ("sessionsforeign", int(0)),
        ("sessionstotal", int(sessions as u64)),
    ]);
    let total = Value::dict([
        ("managedsessions", int(c.sessions_created)),
        ("rejectedsessions", int(c.sessions_rejected_load_limit)),
        ("timeoutsessions", int(c.sessions_timed_out_no_media)),
        ("silenttimeoutsessions", int(0)),
        (
            "finaltimeoutsessions",
            int(c.sessions_timed_out_max_duration),
        ),
        ("offertimeoutsessions", int(c.sessions_timed_out_unanswered)),
        ("regularterminatedsessions", int(c.sessions_deleted)),
        ("forcedterminatedsessions", int(c.sessions_timed_out())),
    ]);
    let control = Value::dict([
        ("totalpingcount", int(c.pings)),
        ("totaloffercount", int(c.offers)),
        ("totalanswercount", int(c.answers)),
        ("totaldeletecount", int(c.deletes)),
        ("totalquerycount", int(c.queries)),
        ("totallistcount", int(c.lists)),
        ("totalstatistics", int(c.statistics)),
        ("totalerrorcount", int(c.errors_total())),
    ]);
    let pop = Value::dict([
        ("portsinuse", int(c.ports_in_use)),
        ("portsquarantined", int(c.ports_quarantined)),
        ("portsfree", int(c.ports_free)),
        ("replycachehits", int(c.reply_cache_hits)),
        ("unknownkeysignored", int(c.unknown_keys_ignored)),
        ("media", media_totals(media)),
    ]);
    Value::dict([
        ("currentstatistics", current),
        ("totalstatistics", total),
        ("controlstatistics", control),
        ("pop", pop),
    ])
}

/// Data-plane totals, keys in rtpengine's lower-case run-together style.
fn media_totals(m: &MediaTotals) -> Value {
    Value::dict([
        ("forwardedpackets", int(m.forwarded_packets)),
        ("forwardedbytes", int(m.forwarded_bytes)),
        ("droppedmalformed", int(m.dropped_malformed)),
        ("droppedspoofed", int(m.dropped_spoofed)),
        ("droppednodestination", int(m.dropped_no_destination)),
        ("senderrors", int(m.send_errors)),
        ("bufferringempty", int(m.buffer_ring_empty)),
    ])
}
