//! Typed view of an NG request dictionary.
//!
//! rtpengine lets clients write key and flag names with spaces or hyphens (`record call`,
//! `record-call`) and is lenient about case in practice, so every name is normalised first:
//! lower case, `-` and `_` turned into spaces. Unknown keys and flags are accepted, counted and
//! reported through a rate-limited warning; they never fail a request.

use std::net::IpAddr;

use pop_wire::bencode::Value;

use crate::error::CoreError;

/// NG commands this relay implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Ping,
    Offer,
    Answer,
    Delete,
    Query,
    List,
    Statistics,
}

impl Command {
    fn parse(name: &str) -> Option<Command> {
        Some(match normalise(name.as_bytes()).as_str() {
            "ping" => Command::Ping,
            "offer" => Command::Offer,
            "answer" => Command::Answer,
            "delete" => Command::Delete,
            "query" => Command::Query,
            "list" => Command::List,
            "statistics" => Command::Statistics,
            _ => return None,
        })
    }
}

/// What to do about rtcp-mux (RFC 5761), from the `rtcp-mux` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RtcpMuxFlags {
    /// Offer rtcp-mux to the other side even if the offerer did not.
    pub offer: bool,
    /// Advertise no separate RTCP port at all (WebRTC peers).
    pub require: bool,
    /// Do not pass an offered rtcp-mux on, but accept it back to the offerer.
    pub demux: bool,
    /// Accept rtcp-mux from the offerer and pass it on.
    pub accept: bool,
    /// Refuse an offered rtcp-mux.
    pub reject: bool,
}

/// Parameters of `offer` and `answer`. No `Debug`: it holds the SDP, call-id and tags, which
/// can carry phone numbers.
#[derive(Clone, Default)]
pub(crate) struct OfferAnswer<'a> {
    pub call_id: &'a [u8],
    pub from_tag: &'a [u8],
    pub to_tag: Option<&'a [u8]>,
    pub sdp: &'a [u8],
    pub strict_source: bool,
    pub asymmetric: bool,
    pub media_handover: bool,
    pub sip_source_address: bool,
    pub replace_origin: bool,
    pub replace_session_connection: bool,
    pub ice_remove: bool,
    pub rtcp_mux: RtcpMuxFlags,
    pub received_from: Option<IpAddr>,
    pub media_address: Option<IpAddr>,
    pub record_call: bool,
    pub supports_load_limit: bool,
    /// rtpengine's free-form `metadata` string; we read the call's parties from it for CDRs.
    pub metadata: Option<&'a [u8]>,
}

/// Parameters of `delete` (no `Debug`, see [`OfferAnswer`]).
#[derive(Clone, Default)]
pub(crate) struct Delete<'a> {
    pub call_id: &'a [u8],
    pub from_tag: Option<&'a [u8]>,
    pub to_tag: Option<&'a [u8]>,
    pub fatal: bool,
    /// Seconds, overriding the configured delete delay.
    pub delete_delay: Option<u64>,
}

/// Parameters of `query` (no `Debug`, see [`OfferAnswer`]).
#[derive(Clone, Default)]
pub(crate) struct Query<'a> {
    pub call_id: &'a [u8],
}

/// Upper bound on `list`'s `limit`: beyond it the reply would not fit a UDP datagram anyway.
pub(crate) const LIST_LIMIT_MAX: usize = 4096;
/// rtpengine's default `list` limit.
pub(crate) const LIST_LIMIT_DEFAULT: usize = 32;

/// Names of keys and flags seen in a request that this relay does not implement.
#[derive(Debug, Default)]
pub(crate) struct Ignored {
    pub names: Vec<String>,
}

impl Ignored {
    fn note(&mut self, name: &[u8]) {
        // Bounded and printable: an ignored name ends up in a log line.
        let mut s: String = name.escape_ascii().to_string();
        s.truncate(32);
        if self.names.len() < 16 {
            self.names.push(s);
        }
    }
}

/// `record call` → lower case, separators → spaces.
pub(crate) fn normalise(name: &[u8]) -> String {
    name.iter()
        .map(|&b| match b {
            b'-' | b'_' => ' ',
            b => char::from(b.to_ascii_lowercase()),
        })
        .collect()
}

/// The request's command.
pub(crate) fn command(req: &Value) -> Result<Command, CoreError> {
    let dict = req.as_dict().ok_or(CoreError::BadRequest)?;
    let name = dict
        .get(b"command".as_slice())
        .and_then(Value::as_str)
        .ok_or(CoreError::MissingKey("command"))?;
    Command::parse(name).ok_or(CoreError::UnknownCommand)
}

fn lookup<'a>(req: &'a Value, wanted: &str) -> Option<&'a Value> {
    let dict = req.as_dict()?;
    if let Some(v) = dict.get(wanted.as_bytes()) {
        return Some(v);
    }
    dict.iter()
        .find(|(k, _)| normalise(k) == normalise(wanted.as_bytes()))
        .map(|(_, v)| v)
}

fn required_bytes<'a>(req: &'a Value, key: &'static str) -> Result<&'a [u8], CoreError> {
    lookup(req, key)
        .and_then(Value::as_bytes)
        .filter(|b| !b.is_empty())
        .ok_or(CoreError::MissingKey(key))
}

fn optional_bytes<'a>(req: &'a Value, key: &str) -> Option<&'a [u8]> {
    lookup(req, key)
        .and_then(Value::as_bytes)
        .filter(|b| !b.is_empty())
}

fn string_list(v: &Value) -> impl Iterator<Item = &[u8]> {
    // A single string is accepted where a list is expected: some clients send `"flags": "x"`.
    let items: &[Value] = match v {
        Value::List(l) => l,
        other => std::slice::from_ref(other),
    };
    items.iter().filter_map(Value::as_bytes)
}

fn parse_ip(v: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

const OFFER_ANSWER_KEYS: &[&str] = &[
    "command",
    "call id",
    "from tag",
    "to tag",
    "sdp",
    "flags",
    "replace",
    "ice",
    "rtcp mux",
    "received from",
    "media address",
    "record call",
    "supports",
    "metadata",
    // Accepted and deliberately without effect: single media interface, IPv4/IPv6 follows the
    // configured media address, Via branch only refines forked calls.
    "direction",
    "via branch",
    "address family",
];

/// Parses `offer`/`answer`; `answer` additionally needs no more than `offer` (rtpengine wants
/// `to-tag` in answers, but Kamailio may omit it for early answers, so it stays optional).
pub(crate) fn offer_answer<'a>(
    req: &'a Value,
    ignored: &mut Ignored,
) -> Result<OfferAnswer<'a>, CoreError> {
    let mut p = OfferAnswer {
        call_id: required_bytes(req, "call-id")?,
        from_tag: required_bytes(req, "from-tag")?,
        to_tag: optional_bytes(req, "to-tag"),
        sdp: required_bytes(req, "sdp")?,
        metadata: optional_bytes(req, "metadata"),
        ..OfferAnswer::default()
    };
    if let Some(dict) = req.as_dict() {
        for key in dict.keys() {
            if !OFFER_ANSWER_KEYS.contains(&normalise(key).as_str()) {
                ignored.note(key);
            }
        }
    }
    if let Some(flags) = lookup(req, "flags") {
        for flag in string_list(flags) {
            match normalise(flag).as_str() {
                "strict source" => p.strict_source = true,
                "asymmetric" => p.asymmetric = true,
                "symmetric" => p.asymmetric = false,
                "media handover" => p.media_handover = true,
                "sip source address" => p.sip_source_address = true,
                "trust address" => p.sip_source_address = false,
                "record call" => p.record_call = true,
                // We never change local ports on a re-offer: latching is what we always do.
                "port latching" | "no port latching" => {}
                _ => ignored.note(flag),
            }
        }
    }
    if let Some(replace) = lookup(req, "replace") {
        for item in string_list(replace) {
            match normalise(item).as_str() {
                "origin" => p.replace_origin = true,
                "session connection" => p.replace_session_connection = true,
                // The o= version is always under our control (bumped only on change).
                "sdp version" | "force increment sdp ver" => {}
                _ => ignored.note(item),
            }
        }
    }
    if let Some(ice) = lookup(req, "ice").and_then(Value::as_bytes) {
        match normalise(ice).as_str() {
            "remove" => p.ice_remove = true,
            // We cannot act as an ICE agent; candidates from the peer are passed through.
            "default" | "optional" => {}
            _ => ignored.note(ice),
        }
    }
    if let Some(mux) = lookup(req, "rtcp mux") {
        for item in string_list(mux) {
            match normalise(item).as_str() {
                "offer" => p.rtcp_mux.offer = true,
                "require" => p.rtcp_mux.require = true,
                "demux" => p.rtcp_mux.demux = true,
                "accept" => p.rtcp_mux.accept = true,
                "reject" => p.rtcp_mux.reject = true,
                _ => ignored.note(item),
            }
        }
    }
    if let Some(rf) = lookup(req, "received from") {
        // `["IP4", "198.51.100.7"]`; the family is implied by the address.
        let addr = rf
            .as_list()
            .and_then(|l| l.get(1))
            .and_then(Value::as_bytes);
        p.received_from = match addr {
            Some(a) => Some(parse_ip(a).ok_or(CoreError::InvalidValue {
                key: "received-from",
                reason: "the second element must be an IPv4 or IPv6 address",
            })?),
            None => {
                return Err(CoreError::InvalidValue {
                    key: "received-from",
                    reason: "expected a list of an address family and an address",
                })
            }
        };
    }
    if let Some(ma) = optional_bytes(req, "media address") {
        p.media_address = Some(parse_ip(ma).ok_or(CoreError::InvalidValue {
            key: "media-address",
            reason: "must be an IPv4 or IPv6 address",
        })?);
    }
    if let Some(rc) = lookup(req, "record call").and_then(Value::as_bytes) {
        p.record_call = matches!(normalise(rc).as_str(), "yes" | "on" | "true");
    }
    if let Some(supports) = lookup(req, "supports") {
        p.supports_load_limit = string_list(supports).any(|s| normalise(s) == "load limit");
    }
    Ok(p)
}

/// Parses `delete`.
pub(crate) fn delete<'a>(req: &'a Value, ignored: &mut Ignored) -> Result<Delete<'a>, CoreError> {
    let mut d = Delete {
        call_id: required_bytes(req, "call-id")?,
        from_tag: optional_bytes(req, "from-tag"),
        to_tag: optional_bytes(req, "to-tag"),
        ..Delete::default()
    };
    if let Some(flags) = lookup(req, "flags") {
        for flag in string_list(flags) {
            match normalise(flag).as_str() {
                "fatal" => d.fatal = true,
                _ => ignored.note(flag),
            }
        }
    }
    if let Some(v) = lookup(req, "delete delay") {
        let secs = v
            .as_int()
            .filter(|s| *s >= 0)
            .ok_or(CoreError::InvalidValue {
                key: "delete-delay",
                reason: "must be a non-negative number of seconds",
            })?;
        d.delete_delay = u64::try_from(secs).ok();
    }
    Ok(d)
}

/// Parses `query`.
pub(crate) fn query(req: &Value) -> Result<Query<'_>, CoreError> {
    Ok(Query {
        call_id: required_bytes(req, "call-id")?,
    })
}

/// Parses `list`'s `limit`.
pub(crate) fn list_limit(req: &Value) -> Result<usize, CoreError> {
    match lookup(req, "limit") {
        None => Ok(LIST_LIMIT_DEFAULT),
        Some(v) => v
            .as_int()
            .filter(|l| *l > 0)
            .and_then(|l| usize::try_from(l).ok())
            .map(|l| l.min(LIST_LIMIT_MAX))
            .ok_or(CoreError::InvalidValue {
                key: "limit",
                reason: "must be a positive integer",
            }),
    }
}
