//! SDP (RFC 8866): a lossless, bounded parser and emitter with typed access to the fields a media
//! relay reads and rewrites.
//!
//! [`Sdp::parse`] keeps every line, in order, including the ones it does not understand, so
//! `Sdp::parse(x)?.emit()` reproduces `x` with line ends normalised to CRLF (LF-only input is
//! accepted, trailing empty lines are dropped). The structural lines (`v=`, `o=`, `c=`, `m=`) are
//! validated during parsing so that errors carry the line number; attribute values are parsed on
//! demand by the typed accessors.
//!
//! SDP bodies arrive from the network (inside NG commands), so the parser enforces size, line
//! count, line length and media count limits before it allocates much, and it never panics.
//!
//! Privacy: `o=`, `s=`, `i=`, `u=`, `e=`, `p=` and attribute values may carry phone numbers, SIP
//! URIs or e-mail addresses. `Debug` output and error messages never include them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

/// Largest SDP body accepted, in bytes. An NG command travels in one UDP datagram, so nothing
/// larger can reach us through rtpengine's protocol anyway.
pub const MAX_SDP_BYTES: usize = 65_535;
/// Most lines accepted in one SDP body (a video offer with many codecs has ~200).
pub const MAX_LINES: usize = 4_096;
/// Longest line accepted, in bytes, without its line end.
pub const MAX_LINE_LEN: usize = 4_096;
/// Most media sections (`m=` lines) accepted in one SDP body.
pub const MAX_MEDIA: usize = 64;
/// Most formats accepted on one `m=` line.
pub const MAX_FORMATS: usize = 128;

/// Why an SDP line is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MalformedReason {
    /// A line that is not `<letter>=<value>`.
    #[error("expected `<type>=<value>` with a single lowercase letter as type")]
    BadLineSyntax,
    /// A value holding NUL or a carriage return not followed by a line feed.
    #[error("line contains a NUL byte or a bare carriage return")]
    ControlCharacter,
    /// The body does not start with `v=`.
    #[error("the first line must be `v=0`")]
    VersionNotFirst,
    /// `v=` with something other than 0.
    #[error("only SDP version 0 exists")]
    UnsupportedVersion,
    /// `o=` without its six fields.
    #[error("`o=` needs six fields: username sess-id sess-version nettype addrtype address")]
    BadOrigin,
    /// `c=` that is not `<nettype> <addrtype> <address>[/ttl][/count]`.
    #[error("`c=` needs `<nettype> <addrtype> <address>`, with an address matching IP4/IP6")]
    BadConnection,
    /// `m=` that is not `<media> <port>[/<count>] <proto> <fmt> ...`.
    #[error("`m=` needs `<media> <port>[/<count>] <proto> <fmt> ...` with a port of 0-65535")]
    BadMedia,
    /// More formats on an `m=` line than [`MAX_FORMATS`].
    #[error("`m=` lists more than {MAX_FORMATS} formats")]
    TooManyFormats,
}

/// An SDP error: malformed input, an input beyond the limits, or an invalid value handed to a
/// setter. Messages never quote line contents (they may hold phone numbers or SIP URIs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SdpError {
    /// The body is empty or holds only line ends.
    #[error("SDP body is empty: the peer sent no session description")]
    Empty,
    /// The body is larger than [`MAX_SDP_BYTES`].
    #[error("SDP body of {size} bytes exceeds the limit of {MAX_SDP_BYTES} bytes")]
    TooLarge {
        /// Size of the body received.
        size: usize,
    },
    /// The body has more lines than [`MAX_LINES`].
    #[error("SDP body has more than {MAX_LINES} lines")]
    TooManyLines,
    /// A line is longer than [`MAX_LINE_LEN`].
    #[error("SDP line {line} is {len} bytes long, above the limit of {MAX_LINE_LEN} bytes")]
    LineTooLong {
        /// 1-based line number.
        line: usize,
        /// Length of the line in bytes.
        len: usize,
    },
    /// The body has more media sections than [`MAX_MEDIA`].
    #[error("SDP body has more than {MAX_MEDIA} media sections")]
    TooManyMedia,
    /// A line is not valid UTF-8.
    #[error("SDP line {line} is not valid UTF-8")]
    NotUtf8 {
        /// 1-based line number.
        line: usize,
    },
    /// A line is malformed.
    #[error("SDP line {line} is malformed: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: MalformedReason,
    },
    /// An attribute value does not have the syntax its RFC defines.
    #[error("SDP attribute `a={name}` has an invalid value")]
    BadAttribute {
        /// Attribute name (a protocol constant such as `rtcp`, never user data).
        name: &'static str,
    },
    /// A value given to a constructor or setter cannot be written into SDP.
    #[error("invalid SDP {field}: {reason}")]
    InvalidValue {
        /// Which field.
        field: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// Line types whose values are personal data or free text: never shown by `Debug`.
const PRIVATE_LINE_TYPES: &[u8] = b"osiuepk";

/// Attribute names that belong to ICE (RFC 8839), removed together when ICE is stripped.
/// `end-of-candidates` is deliberately absent: see [`is_ice_attribute`].
const ICE_ATTRIBUTES: &[&str] = &[
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
    "ice-mismatch",
    "ice-pacing",
    "candidate",
    "remote-candidates",
];

/// Whether `name` is an ICE attribute (RFC 8839) that carries ICE state: credentials, options,
/// candidates. `end-of-candidates` is not one of them: rtpengine keeps it when removing ICE.
pub fn is_ice_attribute(name: &str) -> bool {
    ICE_ATTRIBUTES.contains(&name)
}

/// One SDP line other than `m=`: a type letter and its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Line {
    kind: u8,
    value: String,
}

impl Line {
    /// A line of type `kind` (a lowercase ASCII letter other than `m`; media lines are
    /// [`MediaDescription`]s) with `value`, which must not contain CR, LF or NUL.
    pub fn new(kind: char, value: impl Into<String>) -> Result<Self, SdpError> {
        if !kind.is_ascii_lowercase() || kind == 'm' {
            return Err(SdpError::InvalidValue {
                field: "line type",
                reason: "must be a lowercase letter other than `m`",
            });
        }
        let value = value.into();
        check_value(&value, "line value")?;
        Ok(Self {
            kind: kind as u8,
            value,
        })
    }

    /// An attribute line: `a=name` or `a=name:value`.
    pub fn attribute(name: &str, value: Option<&str>) -> Result<Self, SdpError> {
        if name.is_empty() || name.bytes().any(|b| !is_token_char(b)) {
            return Err(SdpError::InvalidValue {
                field: "attribute name",
                reason: "must be a non-empty token (letters, digits, `-`, `_`, `.`, ...)",
            });
        }
        match value {
            Some(value) => Self::new('a', format!("{name}:{value}")),
            None => Self::new('a', name),
        }
    }

    /// The line type letter.
    pub fn kind(&self) -> char {
        char::from(self.kind)
    }

    /// The value after `<type>=`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// For `a=` lines, the attribute name and value; `None` for other lines.
    pub fn as_attribute(&self) -> Option<Attribute<'_>> {
        if self.kind != b'a' {
            return None;
        }
        Some(match self.value.split_once(':') {
            Some((name, value)) => Attribute {
                name,
                value: Some(value),
            },
            None => Attribute {
                name: &self.value,
                value: None,
            },
        })
    }

    fn is_attribute_named(&self, name: &str) -> bool {
        self.as_attribute().is_some_and(|a| a.name == name)
    }
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind();
        if let Some(attr) = self.as_attribute() {
            // Attribute values may hold CNAMEs, labels or URIs: only the name is shown.
            let shown = if attr.value.is_some() { ":…" } else { "" };
            write!(f, "a={}{shown}", attr.name)
        } else if PRIVATE_LINE_TYPES.contains(&self.kind) {
            write!(f, "{kind}=<redacted>")
        } else {
            write!(f, "{kind}={}", self.value)
        }
    }
}

/// An attribute: `a=<name>` or `a=<name>:<value>`, borrowed from its [`Line`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// Attribute name, before the first `:`.
    pub name: &'a str,
    /// Everything after the first `:`, if there is one.
    pub value: Option<&'a str>,
}

impl fmt::Debug for Attribute<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attribute")
            .field("name", &self.name)
            .field("has_value", &self.value.is_some())
            .finish()
    }
}

/// The ordered lines of the session part or of one media section (without its `m=` line), with
/// typed access to the ones a relay cares about.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Lines(Vec<Line>);

impl fmt::Debug for Lines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

impl Lines {
    /// No lines.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// The lines, in order.
    pub fn as_slice(&self) -> &[Line] {
        &self.0
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no lines.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates the lines in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Line> {
        self.0.iter()
    }

    /// Appends a line.
    pub fn push(&mut self, line: Line) {
        self.0.push(line);
    }

    /// Inserts `line` before position `index` (`index == len()` appends).
    pub fn insert(&mut self, index: usize, line: Line) -> Result<(), SdpError> {
        if index > self.0.len() {
            return Err(SdpError::InvalidValue {
                field: "line index",
                reason: "past the end of the section",
            });
        }
        self.0.insert(index, line);
        Ok(())
    }

    /// Removes and returns the line at `index`, or `None` if there is none.
    pub fn remove(&mut self, index: usize) -> Option<Line> {
        (index < self.0.len()).then(|| self.0.remove(index))
    }

    /// Replaces the line at `index`, returning the old one, or `None` (and no change) if there
    /// is no line at `index`.
    pub fn replace(&mut self, index: usize, line: Line) -> Option<Line> {
        self.0
            .get_mut(index)
            .map(|slot| std::mem::replace(slot, line))
    }

    /// Keeps only the lines for which `keep` returns true.
    pub fn retain(&mut self, keep: impl FnMut(&Line) -> bool) {
        self.0.retain(keep);
    }

    /// The attributes with their line index, in order.
    pub fn attributes(&self) -> impl Iterator<Item = (usize, Attribute<'_>)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, line)| line.as_attribute().map(|a| (i, a)))
    }

    /// The first attribute called `name`, with its line index.
    pub fn find_attribute(&self, name: &str) -> Option<(usize, Attribute<'_>)> {
        self.attributes().find(|(_, a)| a.name == name)
    }

    /// Whether a flag or value attribute called `name` is present.
    pub fn has_attribute(&self, name: &str) -> bool {
        self.find_attribute(name).is_some()
    }

    /// Removes every attribute called `name`; returns how many were removed.
    pub fn remove_attributes(&mut self, name: &str) -> usize {
        let before = self.0.len();
        self.0.retain(|line| !line.is_attribute_named(name));
        before - self.0.len()
    }

    /// The first `c=` line, parsed.
    pub fn connection(&self) -> Result<Option<Connection>, SdpError> {
        match self.0.iter().find(|l| l.kind == b'c') {
            Some(line) => Connection::from_str(&line.value).map(Some),
            None => Ok(None),
        }
    }

    /// Replaces every `c=` line with `connection`. Returns false, changing nothing, if there is
    /// no `c=` line (where to add one depends on the section; use [`Lines::insert`]) or if
    /// `connection` would not serialise to a valid `c=` value.
    pub fn set_connection(&mut self, connection: &Connection) -> bool {
        let text = connection.to_string();
        // Public fields could smuggle a line break or a space into the line: refuse those.
        if check_value(&text, "connection").is_err() || parse_connection(&text).is_none() {
            return false;
        }
        let mut found = false;
        for line in self.0.iter_mut().filter(|l| l.kind == b'c') {
            line.value.clone_from(&text);
            found = true;
        }
        found
    }

    /// The first `o=` line, parsed; `None` if absent or malformed.
    pub fn origin(&self) -> Option<Origin> {
        self.0
            .iter()
            .find(|l| l.kind == b'o')
            .and_then(|l| l.value.parse().ok())
    }

    /// Replaces the first `o=` line. Returns `Ok(false)`, changing nothing, if there is none;
    /// an error if a field holds a space, CR, LF or NUL.
    pub fn set_origin(&mut self, origin: &Origin) -> Result<bool, SdpError> {
        let text = origin.to_string();
        check_value(&text, "origin")?;
        if Origin::from_str(&text)? != *origin {
            return Err(SdpError::InvalidValue {
                field: "origin",
                reason: "fields must be non-empty and hold no spaces",
            });
        }
        match self.0.iter_mut().find(|l| l.kind == b'o') {
            Some(line) => {
                line.value = text;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The first direction attribute (`sendrecv`, `sendonly`, `recvonly`, `inactive`).
    pub fn direction(&self) -> Option<Direction> {
        self.attributes()
            .find_map(|(_, a)| a.value.is_none().then(|| a.name.parse().ok()).flatten())
    }

    /// Removes all direction attributes and, if `direction` is given, appends it.
    pub fn set_direction(&mut self, direction: Option<Direction>) {
        self.0.retain(|line| {
            line.as_attribute()
                .is_none_or(|a| a.value.is_some() || Direction::from_str(a.name).is_err())
        });
        if let Some(direction) = direction {
            self.0.push(Line {
                kind: b'a',
                value: direction.as_str().to_owned(),
            });
        }
    }

    /// Whether any ICE attribute (see [`is_ice_attribute`]) is present.
    pub fn has_ice(&self) -> bool {
        self.attributes().any(|(_, a)| is_ice_attribute(a.name))
    }

    /// Removes all ICE attributes (see [`is_ice_attribute`]); returns how many were removed.
    pub fn remove_ice(&mut self) -> usize {
        let before = self.0.len();
        self.0.retain(|line| {
            line.as_attribute()
                .is_none_or(|a| !is_ice_attribute(a.name))
        });
        before - self.0.len()
    }
}

impl<'a> IntoIterator for &'a Lines {
    type Item = &'a Line;
    type IntoIter = std::slice::Iter<'a, Line>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Media direction attribute (RFC 8866 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `a=sendrecv`, the default.
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// Whether the side that wrote this direction wants to receive media.
    pub fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }

    /// Whether the side that wrote this direction will send media.
    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }
}

impl FromStr for Direction {
    type Err = SdpError;
    fn from_str(s: &str) -> Result<Self, SdpError> {
        match s {
            "sendrecv" => Ok(Self::SendRecv),
            "sendonly" => Ok(Self::SendOnly),
            "recvonly" => Ok(Self::RecvOnly),
            "inactive" => Ok(Self::Inactive),
            _ => Err(SdpError::InvalidValue {
                field: "direction",
                reason: "must be sendrecv, sendonly, recvonly or inactive",
            }),
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Address type of `o=`, `c=` and `a=rtcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrType {
    /// `IP4`.
    Ip4,
    /// `IP6`.
    Ip6,
}

impl AddrType {
    /// The SDP token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip4 => "IP4",
            Self::Ip6 => "IP6",
        }
    }

    /// The address type of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::Ip4,
            IpAddr::V6(_) => Self::Ip6,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "IP4" => Some(Self::Ip4),
            "IP6" => Some(Self::Ip6),
            _ => None,
        }
    }
}

/// A connection address: an IP literal or, as RFC 8866 allows, a fully qualified domain name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A host name.
    Fqdn(String),
}

impl Address {
    /// The IP literal, if the address is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::Ip(ip) => Some(*ip),
            Self::Fqdn(_) => None,
        }
    }

    fn parse(s: &str, addrtype: AddrType) -> Option<Self> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            // An IP literal must match the declared address type.
            return (AddrType::of(ip) == addrtype).then_some(Self::Ip(ip));
        }
        // A name of digits and dots only is a mistyped IP literal, not a host name.
        let fqdn_ok = s.bytes().any(|b| b.is_ascii_alphabetic())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        fqdn_ok.then(|| Self::Fqdn(s.to_owned()))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Fqdn(name) => f.write_str(name),
        }
    }
}

/// `c=<nettype> <addrtype> <address>[/<ttl>][/<count>]` (RFC 8866 §5.7).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Connection {
    /// Network type, `IN` in practice.
    pub nettype: String,
    /// Address type.
    pub addrtype: AddrType,
    /// The address.
    pub address: Address,
    /// Multicast TTL (IPv4 multicast only).
    pub ttl: Option<u8>,
    /// Number of multicast addresses.
    pub count: Option<u32>,
}

impl Connection {
    /// `IN IP4|IP6 <ip>`, the unicast form a relay writes.
    pub fn unicast(ip: IpAddr) -> Self {
        Self {
            nettype: "IN".to_owned(),
            addrtype: AddrType::of(ip),
            address: Address::Ip(ip),
            ttl: None,
            count: None,
        }
    }

    /// Whether the address is `0.0.0.0` or `::`: the old RFC 2543 way of putting a stream on
    /// hold, still sent by many user agents.
    pub fn is_unspecified(&self) -> bool {
        self.address.ip().is_some_and(|ip| ip.is_unspecified())
    }
}

impl FromStr for Connection {
    type Err = SdpError;
    fn from_str(s: &str) -> Result<Self, SdpError> {
        parse_connection(s).ok_or(SdpError::InvalidValue {
            field: "connection",
            reason: "must be `<nettype> <addrtype> <address>[/ttl][/count]`",
        })
    }
}

fn parse_connection(s: &str) -> Option<Connection> {
    let mut fields = s.split(' ');
    let nettype = fields.next().filter(|t| is_token(t))?;
    let addrtype = AddrType::parse(fields.next()?)?;
    let full = fields.next()?;
    if fields.next().is_some() {
        return None;
    }
    let mut parts = full.split('/');
    let address = Address::parse(parts.next()?, addrtype)?;
    let first = parts.next();
    let second = parts.next();
    if parts.next().is_some() {
        return None;
    }
    // IPv4 multicast carries `/ttl[/count]`; IPv6 has no TTL, so its one suffix is the count.
    let (ttl, count) = match (addrtype, first, second) {
        (_, None, _) => (None, None),
        (AddrType::Ip4, Some(ttl), None) => (Some(ttl.parse().ok()?), None),
        (AddrType::Ip4, Some(ttl), Some(count)) => {
            (Some(ttl.parse().ok()?), Some(count.parse().ok()?))
        }
        (AddrType::Ip6, Some(count), None) => (None, Some(count.parse().ok()?)),
        (AddrType::Ip6, Some(_), Some(_)) => return None,
    };
    Some(Connection {
        nettype: nettype.to_owned(),
        addrtype,
        address,
        ttl,
        count,
    })
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.nettype,
            self.addrtype.as_str(),
            self.address
        )?;
        if let Some(ttl) = self.ttl {
            write!(f, "/{ttl}")?;
        }
        if let Some(count) = self.count {
            write!(f, "/{count}")?;
        }
        Ok(())
    }
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`.
///
/// `Debug` redacts the username and address, which may identify a subscriber.
#[derive(Clone, PartialEq, Eq)]
pub struct Origin {
    /// User name (`-` when none); may be a phone number.
    pub username: String,
    /// Session id, a numeric string; kept as text because some agents exceed 64 bits.
    pub session_id: String,
    /// Session version, a numeric string; see [`Origin::version`].
    pub session_version: String,
    /// Network type, `IN` in practice.
    pub nettype: String,
    /// Address type, kept as text: `o=` is informational and some agents write odd values.
    pub addrtype: String,
    /// Address of the originator (IP literal or host name).
    pub address: String,
}

impl Origin {
    /// The session version as a number, if it is one that fits 64 bits.
    pub fn version(&self) -> Option<u64> {
        self.session_version.parse().ok()
    }

    /// Sets the session version.
    pub fn set_version(&mut self, version: u64) {
        self.session_version = version.to_string();
    }

    /// Sets address type and address to `ip`.
    pub fn set_address(&mut self, ip: IpAddr) {
        self.addrtype = AddrType::of(ip).as_str().to_owned();
        self.address = ip.to_string();
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("username", &"<redacted>")
            .field("session_id", &self.session_id)
            .field("session_version", &self.session_version)
            .field("nettype", &self.nettype)
            .field("addrtype", &self.addrtype)
            .field("address", &"<redacted>")
            .finish()
    }
}

impl FromStr for Origin {
    type Err = SdpError;
    fn from_str(s: &str) -> Result<Self, SdpError> {
        let fields: Vec<&str> = s.split(' ').collect();
        match fields.as_slice() {
            [username, session_id, session_version, nettype, addrtype, address]
                if fields.iter().all(|f| !f.is_empty()) =>
            {
                Ok(Self {
                    username: (*username).to_owned(),
                    session_id: (*session_id).to_owned(),
                    session_version: (*session_version).to_owned(),
                    nettype: (*nettype).to_owned(),
                    addrtype: (*addrtype).to_owned(),
                    address: (*address).to_owned(),
                })
            }
            _ => Err(SdpError::InvalidValue {
                field: "origin",
                reason: "must have six space-separated fields",
            }),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}",
            self.username,
            self.session_id,
            self.session_version,
            self.nettype,
            self.addrtype,
            self.address
        )
    }
}

/// `a=rtcp:<port> [<nettype> <addrtype> <address>]` (RFC 3605).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtcp {
    /// RTCP port.
    pub port: u16,
    /// Address, when it differs from the media's `c=`.
    pub connection: Option<Connection>,
}

impl FromStr for Rtcp {
    type Err = SdpError;
    fn from_str(s: &str) -> Result<Self, SdpError> {
        let bad = SdpError::BadAttribute { name: "rtcp" };
        let (port, rest) = match s.split_once(' ') {
            Some((port, rest)) => (port, Some(rest)),
            None => (s, None),
        };
        let port = parse_port(port).ok_or(bad)?;
        let connection = match rest {
            Some(rest) => Some(parse_connection(rest).ok_or(bad)?),
            None => None,
        };
        Ok(Self { port, connection })
    }
}

impl fmt::Display for Rtcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.port)?;
        if let Some(c) = &self.connection {
            write!(f, " {c}")?;
        }
        Ok(())
    }
}

/// `a=rtpmap:<payload type> <encoding name>/<clock rate>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// RTP payload type, 0-127.
    pub payload_type: u8,
    /// Encoding name as written (`PCMU`, `opus`, `telephone-event`).
    pub encoding: String,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Encoding parameters (audio channels), as written.
    pub parameters: Option<String>,
}

impl FromStr for RtpMap {
    type Err = SdpError;
    fn from_str(s: &str) -> Result<Self, SdpError> {
        let bad = SdpError::BadAttribute { name: "rtpmap" };
        let (pt, rest) = s.split_once(' ').ok_or(bad)?;
        let payload_type = parse_payload_type(pt).ok_or(bad)?;
        let mut parts = rest.trim_end().splitn(3, '/');
        let encoding = parts.next().filter(|e| is_token(e)).ok_or(bad)?;
        let clock_rate = parts.next().and_then(|c| c.parse().ok()).ok_or(bad)?;
        let parameters = parts.next().map(str::to_owned);
        Ok(Self {
            payload_type,
            encoding: encoding.to_owned(),
            clock_rate,
            parameters,
        })
    }
}

impl fmt::Display for RtpMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}",
            self.payload_type, self.encoding, self.clock_rate
        )?;
        if let Some(p) = &self.parameters {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

/// The payload type a codec-bound attribute (`a=rtpmap`, `a=fmtp`, `a=rtcp-fb`) refers to:
/// its value up to the first space. `None` for other attributes or for `a=rtcp-fb:*`.
pub fn attribute_payload_type(attr: &Attribute<'_>) -> Option<u8> {
    if !matches!(attr.name, "rtpmap" | "fmtp" | "rtcp-fb") {
        return None;
    }
    let value = attr.value?;
    let pt = value.split(' ').next()?;
    parse_payload_type(pt)
}

/// The `m=` line: `<media> <port>[/<count>] <proto> <fmt> ...`.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaDescription {
    media: String,
    port: u16,
    port_count: Option<u16>,
    proto: String,
    formats: Vec<String>,
}

impl fmt::Debug for MediaDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={self}")
    }
}

impl MediaDescription {
    /// A media description; `media`, `proto` and each format must be non-empty tokens.
    pub fn new(
        media: &str,
        port: u16,
        port_count: Option<u16>,
        proto: &str,
        formats: Vec<String>,
    ) -> Result<Self, SdpError> {
        if !is_token(media) {
            return Err(SdpError::InvalidValue {
                field: "media type",
                reason: "must be a non-empty token",
            });
        }
        if proto.is_empty() || !proto.split('/').all(is_token) {
            return Err(SdpError::InvalidValue {
                field: "media proto",
                reason: "must be tokens separated by `/`",
            });
        }
        check_formats(&formats)?;
        Ok(Self {
            media: media.to_owned(),
            port,
            port_count,
            proto: proto.to_owned(),
            formats,
        })
    }

    /// Media type (`audio`, `video`, `application`, ...).
    pub fn media(&self) -> &str {
        &self.media
    }

    /// Transport port; 0 means the stream is rejected or disabled.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the transport port.
    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// Number of ports (`m=audio 49170/2 ...`), if given.
    pub fn port_count(&self) -> Option<u16> {
        self.port_count
    }

    /// Sets or clears the port count.
    pub fn set_port_count(&mut self, count: Option<u16>) {
        self.port_count = count;
    }

    /// Transport protocol (`RTP/AVP`, `RTP/SAVPF`, `UDP/TLS/RTP/SAVPF`, ...).
    pub fn proto(&self) -> &str {
        &self.proto
    }

    /// Formats: RTP payload types for RTP protocols.
    pub fn formats(&self) -> &[String] {
        &self.formats
    }

    /// Replaces the formats list; each must be a non-empty token, at most [`MAX_FORMATS`].
    pub fn set_formats(&mut self, formats: Vec<String>) -> Result<(), SdpError> {
        check_formats(&formats)?;
        self.formats = formats;
        Ok(())
    }

    /// The formats that are RTP payload types (0-127), in order.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| parse_payload_type(f))
    }

    fn parse(value: &str) -> Result<Self, MalformedReason> {
        let mut fields = value.split(' ');
        let bad = MalformedReason::BadMedia;
        let media = fields.next().filter(|m| is_token(m)).ok_or(bad)?;
        let port_field = fields.next().ok_or(bad)?;
        let (port, port_count) = match port_field.split_once('/') {
            Some((port, count)) => (
                parse_port(port).ok_or(bad)?,
                Some(count.parse::<u16>().map_err(|_| bad)?),
            ),
            None => (parse_port(port_field).ok_or(bad)?, None),
        };
        let proto = fields
            .next()
            .filter(|p| !p.is_empty() && p.split('/').all(is_token))
            .ok_or(bad)?;
        let mut formats = Vec::new();
        for format in fields {
            if !is_token(format) {
                return Err(bad);
            }
            if formats.len() == MAX_FORMATS {
                return Err(MalformedReason::TooManyFormats);
            }
            formats.push(format.to_owned());
        }
        if formats.is_empty() {
            return Err(bad);
        }
        Ok(Self {
            media: media.to_owned(),
            port,
            port_count,
            proto: proto.to_owned(),
            formats,
        })
    }
}

impl fmt::Display for MediaDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.media, self.port)?;
        if let Some(count) = self.port_count {
            write!(f, "/{count}")?;
        }
        write!(f, " {}", self.proto)?;
        for format in &self.formats {
            write!(f, " {format}")?;
        }
        Ok(())
    }
}

/// One media section: its `m=` line and the lines that follow it up to the next `m=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// The `m=` line.
    pub description: MediaDescription,
    /// The section's other lines, in order.
    pub lines: Lines,
}

impl MediaSection {
    /// A section with no lines besides `m=`.
    pub fn new(description: MediaDescription) -> Self {
        Self {
            description,
            lines: Lines::new(),
        }
    }

    /// Whether the port is 0 (stream rejected or disabled).
    pub fn is_rejected(&self) -> bool {
        self.description.port == 0
    }

    /// `a=rtcp`, parsed.
    pub fn rtcp(&self) -> Result<Option<Rtcp>, SdpError> {
        match self.lines.find_attribute("rtcp") {
            Some((_, a)) => a
                .value
                .ok_or(SdpError::BadAttribute { name: "rtcp" })?
                .parse()
                .map(Some),
            None => Ok(None),
        }
    }

    /// Whether `a=rtcp-mux` is present.
    pub fn rtcp_mux(&self) -> bool {
        self.lines.has_attribute("rtcp-mux")
    }

    /// `a=mid` value.
    pub fn mid(&self) -> Option<&str> {
        self.lines.find_attribute("mid").and_then(|(_, a)| a.value)
    }

    /// `a=ptime` in milliseconds.
    pub fn ptime(&self) -> Result<Option<u32>, SdpError> {
        match self.lines.find_attribute("ptime") {
            Some((_, a)) => a
                .value
                .and_then(|v| v.trim().parse().ok())
                .ok_or(SdpError::BadAttribute { name: "ptime" })
                .map(Some),
            None => Ok(None),
        }
    }

    /// The `a=rtpmap` for payload type `pt`; malformed ones are skipped.
    pub fn rtpmap(&self, pt: u8) -> Option<RtpMap> {
        self.rtpmaps().find(|m| m.payload_type == pt)
    }

    /// All well-formed `a=rtpmap` attributes, in order.
    pub fn rtpmaps(&self) -> impl Iterator<Item = RtpMap> + '_ {
        self.lines
            .attributes()
            .filter(|(_, a)| a.name == "rtpmap")
            .filter_map(|(_, a)| a.value?.parse().ok())
    }
}

/// A parsed SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// Session-level lines (from `v=` up to the first `m=`), in order.
    pub session: Lines,
    /// Media sections, in order.
    pub media: Vec<MediaSection>,
}

impl Sdp {
    /// Parses an SDP body. Lines may end in CRLF or LF; empty lines at the end are ignored.
    pub fn parse(input: &[u8]) -> Result<Self, SdpError> {
        if input.len() > MAX_SDP_BYTES {
            return Err(SdpError::TooLarge { size: input.len() });
        }
        let mut body = input;
        while let Some(rest) = body
            .strip_suffix(b"\r\n")
            .or_else(|| body.strip_suffix(b"\n"))
        {
            body = rest;
        }
        if body.is_empty() {
            return Err(SdpError::Empty);
        }
        let mut sdp = Self {
            session: Lines::new(),
            media: Vec::new(),
        };
        for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
            let number = index + 1;
            if number > MAX_LINES {
                return Err(SdpError::TooManyLines);
            }
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.len() > MAX_LINE_LEN {
                return Err(SdpError::LineTooLong {
                    line: number,
                    len: raw.len(),
                });
            }
            let text = std::str::from_utf8(raw).map_err(|_| SdpError::NotUtf8 { line: number })?;
            sdp.parse_line(number == 1, text).map_err(|e| match e {
                ParseLineError::Malformed(reason) => SdpError::Malformed {
                    line: number,
                    reason,
                },
                ParseLineError::TooManyMedia => SdpError::TooManyMedia,
            })?;
        }
        Ok(sdp)
    }

    fn parse_line(&mut self, first: bool, text: &str) -> Result<(), ParseLineError> {
        let bytes = text.as_bytes();
        let (kind, value) = match bytes {
            [kind, b'=', ..] if kind.is_ascii_lowercase() => (*kind, text.get(2..).unwrap_or("")),
            _ => return Err(MalformedReason::BadLineSyntax.into()),
        };
        if value.bytes().any(|b| b == 0 || b == b'\r') {
            return Err(MalformedReason::ControlCharacter.into());
        }
        if first {
            if kind != b'v' {
                return Err(MalformedReason::VersionNotFirst.into());
            }
            if value != "0" {
                return Err(MalformedReason::UnsupportedVersion.into());
            }
        }
        match kind {
            b'm' => {
                if self.media.len() == MAX_MEDIA {
                    return Err(ParseLineError::TooManyMedia);
                }
                let description = MediaDescription::parse(value)?;
                self.media.push(MediaSection::new(description));
                return Ok(());
            }
            b'o' if Origin::from_str(value).is_err() => {
                return Err(MalformedReason::BadOrigin.into());
            }
            b'c' if parse_connection(value).is_none() => {
                return Err(MalformedReason::BadConnection.into());
            }
            _ => {}
        }
        let line = Line {
            kind,
            value: value.to_owned(),
        };
        match self.media.last_mut() {
            Some(section) => section.lines.push(line),
            None => self.session.push(line),
        }
        Ok(())
    }

    /// The `o=` line, parsed (it was validated by [`Sdp::parse`]).
    pub fn origin(&self) -> Option<Origin> {
        self.session.origin()
    }

    /// Replaces the `o=` line. Returns false, changing nothing, if there is none.
    pub fn set_origin(&mut self, origin: &Origin) -> Result<bool, SdpError> {
        self.session.set_origin(origin)
    }

    /// The connection that applies to media section `index`: its own `c=`, else the
    /// session-level one.
    pub fn effective_connection(&self, index: usize) -> Result<Option<Connection>, SdpError> {
        if let Some(section) = self.media.get(index) {
            if let Some(c) = section.lines.connection()? {
                return Ok(Some(c));
            }
        }
        self.session.connection()
    }

    /// The direction that applies to media section `index`: its own attribute, else the
    /// session-level one, else `sendrecv`.
    pub fn effective_direction(&self, index: usize) -> Direction {
        self.media
            .get(index)
            .and_then(|m| m.lines.direction())
            .or_else(|| self.session.direction())
            .unwrap_or(Direction::SendRecv)
    }

    /// Serialises with CRLF line ends.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.emitted_len());
        self.emit_into(&mut out);
        out
    }

    /// Appends the serialised body, CRLF line ends, to `out`.
    pub fn emit_into(&self, out: &mut Vec<u8>) {
        for line in &self.session {
            push_line(out, line);
        }
        for section in &self.media {
            out.extend_from_slice(b"m=");
            out.extend_from_slice(section.description.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            for line in &section.lines {
                push_line(out, line);
            }
        }
    }

    fn emitted_len(&self) -> usize {
        let lines = self
            .session
            .iter()
            .chain(self.media.iter().flat_map(|m| m.lines.iter()));
        lines.map(|l| l.value.len() + 4).sum::<usize>() + self.media.len() * 64
    }
}

impl FromStr for Sdp {
    type Err = SdpError;
    fn from_str(s: &str) -> Result<Self, SdpError> {
        Self::parse(s.as_bytes())
    }
}

/// Internal: a line-level failure, before the line number is attached.
enum ParseLineError {
    Malformed(MalformedReason),
    TooManyMedia,
}

impl From<MalformedReason> for ParseLineError {
    fn from(reason: MalformedReason) -> Self {
        Self::Malformed(reason)
    }
}

fn push_line(out: &mut Vec<u8>, line: &Line) {
    out.push(line.kind);
    out.push(b'=');
    out.extend_from_slice(line.value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn check_value(value: &str, field: &'static str) -> Result<(), SdpError> {
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(SdpError::InvalidValue {
            field,
            reason: "must not contain CR, LF or NUL",
        });
    }
    if value.len() > MAX_LINE_LEN {
        return Err(SdpError::InvalidValue {
            field,
            reason: "longer than the SDP line length limit",
        });
    }
    Ok(())
}

fn check_formats(formats: &[String]) -> Result<(), SdpError> {
    if formats.is_empty() || formats.len() > MAX_FORMATS || !formats.iter().all(|f| is_token(f)) {
        return Err(SdpError::InvalidValue {
            field: "media formats",
            reason: "must be 1 to 128 non-empty tokens",
        });
    }
    Ok(())
}

/// RFC 8866 `token-char`: visible ASCII except the separators it excludes.
fn is_token_char(b: u8) -> bool {
    matches!(b, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'0'..=b'9' | b'A'..=b'Z' | b'^'..=b'~')
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_payload_type(s: &str) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|pt| *pt <= 127)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844527 IN IP4 192.0.2.10\r\ns=-\r\n\
c=IN IP4 192.0.2.10\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\n\
a=mid:0\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp:49171 IN IP4 192.0.2.11\r\n\
a=rtcp-mux\r\na=ptime:20\r\na=sendonly\r\na=x-unknown\r\n\
m=video 0/2 RTP/AVPF 96\r\nc=IN IP6 2001:db8::1\r\nb=AS:512\r\na=rtpmap:96 VP8/90000\r\n";

    fn parse(s: &str) -> Result<Sdp, SdpError> {
        Sdp::parse(s.as_bytes())
    }

    #[test]
    fn parse_then_emit_reproduces_the_input() {
        let sdp = parse(OFFER).unwrap();
        assert_eq!(sdp.emit(), OFFER.as_bytes());
        assert_eq!(sdp.media.len(), 2);
        assert_eq!(sdp.session.len(), 6);
    }

    #[test]
    fn lf_input_is_emitted_with_crlf() {
        let lf = OFFER.replace("\r\n", "\n");
        assert_eq!(Sdp::parse(lf.as_bytes()).unwrap().emit(), OFFER.as_bytes());
    }

    #[test]
    fn trailing_empty_lines_are_dropped() {
        let padded = format!("{OFFER}\r\n\r\n");
        assert_eq!(parse(&padded).unwrap().emit(), OFFER.as_bytes());
    }

    #[test]
    fn typed_access_reads_origin_connection_and_media() {
        let sdp = parse(OFFER).unwrap();
        let origin = sdp.origin().unwrap();
        assert_eq!(origin.username, "alice");
        assert_eq!(origin.version(), Some(2_890_844_527));
        assert_eq!(origin.address, "192.0.2.10");
        let c = sdp.session.connection().unwrap().unwrap();
        assert_eq!(c.address.ip(), Some("192.0.2.10".parse().unwrap()));
        let audio = &sdp.media[0];
        assert_eq!(audio.description.media(), "audio");
        assert_eq!(audio.description.port(), 49170);
        assert_eq!(audio.description.proto(), "RTP/AVP");
        assert_eq!(
            audio.description.payload_types().collect::<Vec<_>>(),
            [0, 8, 101]
        );
        assert_eq!(audio.mid(), Some("0"));
        assert_eq!(audio.ptime().unwrap(), Some(20));
        assert!(audio.rtcp_mux());
        let rtcp = audio.rtcp().unwrap().unwrap();
        assert_eq!(rtcp.port, 49171);
        assert_eq!(
            rtcp.connection.unwrap().address.ip(),
            Some("192.0.2.11".parse().unwrap())
        );
        assert_eq!(audio.lines.direction(), Some(Direction::SendOnly));
        assert_eq!(sdp.effective_direction(1), Direction::SendRecv);
        let te = audio.rtpmap(101).unwrap();
        assert_eq!(
            (te.encoding.as_str(), te.clock_rate),
            ("telephone-event", 8000)
        );
        let video = &sdp.media[1];
        assert!(video.is_rejected());
        assert_eq!(video.description.port_count(), Some(2));
        let v6 = sdp.effective_connection(1).unwrap().unwrap();
        assert_eq!(v6.addrtype, AddrType::Ip6);
        assert_eq!(
            sdp.effective_connection(0).unwrap().unwrap().address,
            Address::Ip("192.0.2.10".parse().unwrap())
        );
    }

    #[test]
    fn mutations_are_emitted_in_place() {
        let mut sdp = parse(OFFER).unwrap();
        let mut origin = sdp.origin().unwrap();
        origin.set_version(7);
        origin.set_address("2001:db8::5".parse().unwrap());
        assert!(sdp.set_origin(&origin).unwrap());
        assert!(sdp
            .session
            .set_connection(&Connection::unicast("203.0.113.1".parse().unwrap())));
        let audio = &mut sdp.media[0];
        audio.description.set_port(40000);
        audio.description.set_formats(vec!["0".into()]).unwrap();
        assert_eq!(audio.lines.remove_attributes("rtcp-mux"), 1);
        audio.lines.set_direction(Some(Direction::Inactive));
        let (mid_at, _) = audio.lines.find_attribute("mid").unwrap();
        audio
            .lines
            .insert(mid_at + 1, Line::attribute("label", Some("1")).unwrap())
            .unwrap();
        assert!(audio
            .lines
            .replace(0, Line::attribute("mid", Some("a")).unwrap())
            .is_some());
        let text = String::from_utf8(sdp.emit()).unwrap();
        assert!(text.contains("o=alice 2890844526 7 IN IP6 2001:db8::5\r\n"));
        assert!(text.contains("\r\nc=IN IP4 203.0.113.1\r\n"));
        assert!(text.contains("m=audio 40000 RTP/AVP 0\r\na=mid:a\r\na=label:1\r\n"));
        assert!(!text.contains("rtcp-mux"));
        assert!(!text.contains("sendonly"));
        assert!(text.contains("a=x-unknown\r\na=inactive\r\nm=video"));
        assert_eq!(parse(&text).unwrap().emit(), text.as_bytes());
    }

    #[test]
    fn setters_refuse_values_that_would_break_the_line_structure() {
        assert!(Line::new('a', "x\r\ny").is_err());
        assert!(Line::new('m', "audio 1 RTP/AVP 0").is_err());
        assert!(Line::new('A', "x").is_err());
        assert!(Line::attribute("bad name", None).is_err());
        let mut sdp = parse(OFFER).unwrap();
        let mut origin = sdp.origin().unwrap();
        origin.username = "two words".into();
        assert!(sdp.set_origin(&origin).is_err());
        assert!(sdp.media[0].description.set_formats(vec![]).is_err());
        assert!(sdp.media[0]
            .lines
            .insert(99, Line::new('i', "x").unwrap())
            .is_err());
        assert!(sdp.media[0].lines.remove(99).is_none());
    }

    #[test]
    fn ice_attributes_are_found_and_removed_except_end_of_candidates() {
        let text = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
m=audio 1 RTP/AVP 0\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\na=candidate:1 1 UDP 1 192.0.2.1 1 typ host\r\n\
a=end-of-candidates\r\n";
        let mut sdp = parse(text).unwrap();
        assert!(sdp.session.has_ice());
        assert_eq!(sdp.media[0].lines.remove_ice(), 3);
        assert!(sdp.media[0].lines.has_attribute("end-of-candidates"));
        assert!(!sdp.media[0].lines.has_ice());
    }

    #[test]
    fn connection_forms() {
        let c: Connection = "IN IP4 224.2.1.1/127/3".parse().unwrap();
        assert_eq!((c.ttl, c.count), (Some(127), Some(3)));
        assert_eq!(c.to_string(), "IN IP4 224.2.1.1/127/3");
        let c: Connection = "IN IP6 ff15::101/3".parse().unwrap();
        assert_eq!((c.ttl, c.count), (None, Some(3)));
        let c: Connection = "IN IP4 media.example.net".parse().unwrap();
        assert_eq!(c.address, Address::Fqdn("media.example.net".into()));
        assert!("IN IP4 0.0.0.0"
            .parse::<Connection>()
            .unwrap()
            .is_unspecified());
        assert!("IN IP6 ::".parse::<Connection>().unwrap().is_unspecified());
        for bad in [
            "IN IP4 2001:db8::1",
            "IN IP6 192.0.2.1",
            "IN IP4",
            "IN IP5 1.2.3.4",
            "IN IP4 1.2.3.4/x",
            "IN IP4 1.2.3.4 extra",
            "IN IP6 ff15::1/1/2",
        ] {
            assert!(bad.parse::<Connection>().is_err(), "{bad}");
        }
    }

    fn malformed(s: &str) -> (usize, MalformedReason) {
        match parse(s) {
            Err(SdpError::Malformed { line, reason }) => (line, reason),
            other => panic!("expected a malformed-line error for {s:?}, got {other:?}"),
        }
    }

    #[test]
    fn errors_carry_line_number_and_reason() {
        use MalformedReason::*;
        let head = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n";
        assert_eq!(
            malformed("o=- 1 1 IN IP4 1.2.3.4\r\n"),
            (1, VersionNotFirst)
        );
        assert_eq!(malformed("v=1\r\n"), (1, UnsupportedVersion));
        assert_eq!(malformed("v=0\r\no=- 1 IN IP4 x\r\n"), (2, BadOrigin));
        assert_eq!(
            malformed(&format!("{head}c=IN IP4 999.1.1.1\r\n")),
            (4, BadConnection)
        );
        assert_eq!(
            malformed(&format!("{head}m=audio 70000 RTP/AVP 0\r\n")),
            (4, BadMedia)
        );
        assert_eq!(
            malformed(&format!("{head}m=audio 1 RTP/AVP\r\n")),
            (4, BadMedia)
        );
        assert_eq!(
            malformed(&format!("{head}m=audio -1 RTP/AVP 0\r\n")),
            (4, BadMedia)
        );
        assert_eq!(
            malformed(&format!("{head}\r\nt=0 0\r\n")),
            (4, BadLineSyntax)
        );
        assert_eq!(malformed(&format!("{head}X=1\r\n")), (4, BadLineSyntax));
        assert_eq!(
            malformed(&format!("{head}a=x\0y\r\n")),
            (4, ControlCharacter)
        );
        assert_eq!(
            malformed(&format!("{head}a=x\ry\r\n")),
            (4, ControlCharacter)
        );
        let many: String = (0..=MAX_FORMATS).map(|i| format!(" {i}")).collect();
        assert_eq!(
            malformed(&format!("{head}m=audio 1 RTP/AVP{many}\r\n")),
            (4, TooManyFormats)
        );
        let mut bad_utf8 = head.as_bytes().to_vec();
        bad_utf8.extend_from_slice(b"s=\xff\r\n");
        assert_eq!(Sdp::parse(&bad_utf8), Err(SdpError::NotUtf8 { line: 4 }));
        assert_eq!(parse(""), Err(SdpError::Empty));
        assert_eq!(parse("\r\n\n"), Err(SdpError::Empty));
    }

    #[test]
    fn limits_are_enforced() {
        let head = "v=0\r\n";
        let big = format!("{head}a={}\r\n", "x".repeat(MAX_SDP_BYTES));
        assert!(matches!(parse(&big), Err(SdpError::TooLarge { .. })));
        let long = format!("{head}a={}\r\n", "x".repeat(MAX_LINE_LEN));
        assert_eq!(
            parse(&long),
            Err(SdpError::LineTooLong {
                line: 2,
                len: MAX_LINE_LEN + 2
            })
        );
        let lines = format!("{head}{}", "a=x\r\n".repeat(MAX_LINES));
        assert_eq!(parse(&lines), Err(SdpError::TooManyLines));
        let media = format!("{head}{}", "m=audio 1 RTP/AVP 0\r\n".repeat(MAX_MEDIA + 1));
        assert_eq!(parse(&media), Err(SdpError::TooManyMedia));
    }

    #[test]
    fn debug_output_redacts_personal_data() {
        let text = "v=0\r\no=+4915112345678 1 1 IN IP4 192.0.2.1\r\ns=sip:bob@example.com\r\n\
e=bob@example.com\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\na=ssrc:1 cname:bob@example.com\r\n";
        let debug = format!(
            "{:?} {:?}",
            parse(text).unwrap(),
            parse(text).unwrap().origin()
        );
        assert!(!debug.contains("4915112345678"), "{debug}");
        assert!(!debug.contains("bob@"), "{debug}");
        assert!(debug.contains("a=ssrc"));
        let err = parse("v=0\r\no=+4915112345678\r\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("4915112345678"), "{err}");
    }

    fn arb_token() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9][a-zA-Z0-9._-]{0,8}"
    }

    fn arb_line() -> impl Strategy<Value = String> {
        prop_oneof![
            (arb_token(), proptest::option::of("[ -~]{0,20}")).prop_map(|(n, v)| match v {
                Some(v) => format!("a={n}:{v}"),
                None => format!("a={n}"),
            }),
            "[bikt]=[ -~]{0,30}".prop_map(|s| s),
            (any::<[u8; 4]>())
                .prop_map(|o| format!("c=IN IP4 {}.{}.{}.{}", o[0], o[1], o[2], o[3])),
        ]
    }

    fn arb_sdp() -> impl Strategy<Value = String> {
        let media = (
            arb_token(),
            any::<u16>(),
            proptest::collection::vec(0u8..128, 1..6),
            proptest::collection::vec(arb_line(), 0..8),
        )
            .prop_map(|(kind, port, pts, lines)| {
                let pts: String = pts.iter().map(|p| format!(" {p}")).collect();
                let mut s = format!("m={kind} {port} RTP/AVP{pts}\r\n");
                for l in lines {
                    s.push_str(&l);
                    s.push_str("\r\n");
                }
                s
            });
        (
            proptest::collection::vec(arb_line(), 0..6),
            proptest::collection::vec(media, 0..4),
        )
            .prop_map(|(session, media)| {
                let mut s = String::from("v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\n");
                for l in session {
                    s.push_str(&l);
                    s.push_str("\r\n");
                }
                s.extend(media);
                s
            })
    }

    proptest! {
        #[test]
        fn generated_sdp_round_trips(sdp in arb_sdp()) {
            let parsed = Sdp::parse(sdp.as_bytes()).unwrap();
            prop_assert_eq!(parsed.emit(), sdp.as_bytes());
            let lf = sdp.replace("\r\n", "\n");
            prop_assert_eq!(Sdp::parse(lf.as_bytes()).unwrap(), parsed);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_accepted_input_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(parsed) = Sdp::parse(&bytes) {
                let emitted = parsed.emit();
                prop_assert_eq!(Sdp::parse(&emitted).unwrap(), parsed);
            }
        }

        #[test]
        fn mutated_sdp_never_panics(sdp in arb_sdp(), at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = sdp.into_bytes();
            let len = bytes.len();
            if let Some(b) = bytes.get_mut(at % len.max(1)) {
                *b = byte;
            }
            if let Ok(parsed) = Sdp::parse(&bytes) {
                for i in 0..parsed.media.len() {
                    let _ = parsed.effective_connection(i);
                    let _ = parsed.media[i].rtcp();
                    let _ = parsed.media[i].ptime();
                    let _ = parsed.media[i].rtpmaps().count();
                }
            }
        }
    }
}
