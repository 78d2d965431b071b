//! Bencode, the encoding of rtpengine's NG control protocol.
//!
//! An owned [`Value`] tree with a strict, bounded decoder: the NG socket accepts bytes from the
//! network, so nesting depth and element count are limited, every length is checked against the
//! input before anything is allocated, and errors carry the byte offset and a reason.
//! [`decode_prefix`] serves stream transports: it tells "incomplete, read more" apart from
//! "invalid, drop the connection".

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

/// Nesting depth the default decoder accepts. NG messages nest two or three levels deep
/// (`flags`, `rtcp-mux`, `codec` → `strip`), so 32 leaves room without inviting stack abuse.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// Total number of values (integers, strings, lists, dicts, counting nested ones) the default
/// decoder accepts in one message. A large NG `offer` holds a few hundred; the limit bounds the
/// memory a hostile message can make us allocate (each value costs ~32 bytes for a few input
/// bytes).
pub const DEFAULT_MAX_ELEMENTS: usize = 65_536;

/// Limits applied by the decoder against hostile input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Deepest nesting of lists and dicts accepted; a top-level list is depth 1.
    pub max_depth: usize,
    /// Most values accepted in one decoded message.
    pub max_elements: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
            max_elements: DEFAULT_MAX_ELEMENTS,
        }
    }
}

/// Why a byte sequence is not valid bencode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InvalidReason {
    /// A byte that cannot start or continue a value here.
    #[error("unexpected byte {0:#04x}")]
    UnexpectedByte(u8),
    /// An integer or string length written with leading zeros (`i03e`, `03:abc`).
    #[error("number with leading zero")]
    LeadingZero,
    /// `i-0e`, which bencode forbids.
    #[error("negative zero")]
    NegativeZero,
    /// `ie` or `i-e`.
    #[error("integer without digits")]
    EmptyInteger,
    /// An integer outside the signed 64-bit range.
    #[error("integer does not fit in 64 bits")]
    IntegerOverflow,
    /// A string length that does not fit in memory addresses.
    #[error("string length does not fit in memory")]
    LengthOverflow,
    /// A dictionary key that is not a byte string.
    #[error("dictionary key is not a byte string")]
    NonStringKey,
    /// The same key twice in one dictionary; which one wins would be ambiguous.
    #[error("duplicate dictionary key")]
    DuplicateKey,
    /// Lists and dicts nested deeper than the decoder's limit.
    #[error("nesting deeper than the limit")]
    TooDeep,
    /// More values than the decoder's limit.
    #[error("more values than the limit")]
    TooManyElements,
    /// Bytes after the single top-level value that [`decode`] expects.
    #[error("trailing bytes after the value")]
    TrailingData,
}

/// A bencode decoding failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BencodeError {
    /// The input ends in the middle of a value: on a stream, read more bytes and retry.
    /// From [`decode`] it means the message was truncated.
    #[error("bencode message incomplete at byte {offset}: it was truncated, or more bytes are still to come")]
    Incomplete {
        /// Where the input ran out (its length).
        offset: usize,
    },
    /// The input is not bencode; no amount of further bytes will make it valid.
    #[error("invalid bencode at byte {offset}: {reason}")]
    Invalid {
        /// Byte offset of the offending element.
        offset: usize,
        /// What is wrong there.
        reason: InvalidReason,
    },
}

impl BencodeError {
    /// Whether more input could complete the value (stream transports keep reading).
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Self::Incomplete { .. })
    }

    /// Byte offset the error refers to.
    pub fn offset(&self) -> usize {
        match *self {
            Self::Incomplete { offset } | Self::Invalid { offset, .. } => offset,
        }
    }
}

/// A bencode value.
///
/// `Debug` prints the structure, integers and dictionary keys but not the contents of byte
/// strings: NG messages carry SDP, call ids and tags that can contain phone numbers and SIP
/// URIs. Use [`Value::as_bytes`] where showing them is allowed.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// `i<decimal>e`.
    Int(i64),
    /// `<len>:<bytes>`.
    Bytes(Vec<u8>),
    /// `l<values>e`.
    List(Vec<Value>),
    /// `d<key><value>...e`; keys are emitted in sorted byte order, as bencode requires.
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(i) => write!(f, "Int({i})"),
            Self::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.len()),
            Self::List(l) => f.debug_list().entries(l).finish(),
            Self::Dict(d) => f
                .debug_map()
                .entries(d.iter().map(|(k, v)| (DebugKey(k), v)))
                .finish(),
        }
    }
}

/// Dictionary keys are protocol field names (`call-id`, `sdp`), not personal data.
struct DebugKey<'a>(&'a [u8]);

impl fmt::Debug for DebugKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

impl Value {
    /// A byte string holding `s`.
    pub fn str(s: &str) -> Self {
        Self::Bytes(s.as_bytes().to_vec())
    }

    /// A byte string.
    pub fn bytes(b: impl Into<Vec<u8>>) -> Self {
        Self::Bytes(b.into())
    }

    /// An integer.
    pub fn int(i: i64) -> Self {
        Self::Int(i)
    }

    /// A dictionary from `(key, value)` pairs; a later duplicate key replaces an earlier one.
    pub fn dict<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Self::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// A list.
    pub fn list(items: impl IntoIterator<Item = Value>) -> Self {
        Self::List(items.into_iter().collect())
    }

    /// The value under `key` if `self` is a dictionary holding it.
    pub fn dict_get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?.get(key.as_bytes())
    }

    /// Inserts `key` → `value` if `self` is a dictionary; returns `false` (and drops nothing
    /// from `self`) if it is not.
    pub fn dict_insert(&mut self, key: &str, value: Value) -> bool {
        match self {
            Self::Dict(d) => {
                d.insert(key.as_bytes().to_vec(), value);
                true
            }
            _ => false,
        }
    }

    /// The bytes of a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A byte string that is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()?).ok()
    }

    /// An integer, or a byte string holding a decimal integer (some NG clients send numbers
    /// as strings, e.g. `"ptime": "20"`).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            Self::Bytes(b) => parse_decimal_text(b),
            _ => None,
        }
    }

    /// The items of a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Self::List(l) => Some(l),
            _ => None,
        }
    }

    /// The entries of a dictionary.
    pub fn as_dict(&self) -> Option<&BTreeMap<Vec<u8>, Value>> {
        match self {
            Self::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Appends the bencoding of `self` to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Self::Bytes(b) => encode_bytes(b, out),
            Self::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Self::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(k, out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The bencoding of `self`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::str(s)
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// Lenient on purpose: clients that send numbers as strings are not bencode-strict either.
fn parse_decimal_text(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?.trim();
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    s.parse().ok()
}

/// Decodes `input`, which must hold exactly one value, with the default limits.
pub fn decode(input: &[u8]) -> Result<Value, BencodeError> {
    decode_with_limits(input, DecodeLimits::default())
}

/// Decodes one value from the start of `input` with the default limits and returns it with
/// the number of bytes it took. Bytes after it are left for the next call.
pub fn decode_prefix(input: &[u8]) -> Result<(Value, usize), BencodeError> {
    decode_prefix_with_limits(input, DecodeLimits::default())
}

/// [`decode`] with explicit limits.
pub fn decode_with_limits(input: &[u8], limits: DecodeLimits) -> Result<Value, BencodeError> {
    let (value, used) = decode_prefix_with_limits(input, limits)?;
    if used != input.len() {
        return Err(BencodeError::Invalid {
            offset: used,
            reason: InvalidReason::TrailingData,
        });
    }
    Ok(value)
}

/// [`decode_prefix`] with explicit limits.
pub fn decode_prefix_with_limits(
    input: &[u8],
    limits: DecodeLimits,
) -> Result<(Value, usize), BencodeError> {
    let mut d = Decoder {
        input,
        pos: 0,
        elements: 0,
        limits,
    };
    let v = d.value(0)?;
    Ok((v, d.pos))
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    elements: usize,
    limits: DecodeLimits,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::Incomplete {
                offset: self.input.len(),
            })
    }

    fn invalid(&self, offset: usize, reason: InvalidReason) -> BencodeError {
        BencodeError::Invalid { offset, reason }
    }

    /// `depth` is the number of lists/dicts enclosing the value about to be read.
    fn value(&mut self, depth: usize) -> Result<Value, BencodeError> {
        let start = self.pos;
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(self.invalid(start, InvalidReason::TooManyElements));
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                self.integer(start).map(Value::Int)
            }
            b'0'..=b'9' => self.byte_string().map(Value::Bytes),
            b'l' => {
                self.enter(depth, start)?;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                self.enter(depth, start)?;
                let mut entries = BTreeMap::new();
                while self.peek()? != b'e' {
                    let key_at = self.pos;
                    if !self.peek()?.is_ascii_digit() {
                        return Err(self.invalid(key_at, InvalidReason::NonStringKey));
                    }
                    let key = self.byte_string()?;
                    let v = self.value(depth + 1)?;
                    if entries.insert(key, v).is_some() {
                        return Err(self.invalid(key_at, InvalidReason::DuplicateKey));
                    }
                }
                self.pos += 1;
                Ok(Value::Dict(entries))
            }
            other => Err(self.invalid(start, InvalidReason::UnexpectedByte(other))),
        }
    }

    fn enter(&mut self, depth: usize, start: usize) -> Result<(), BencodeError> {
        if depth >= self.limits.max_depth {
            return Err(self.invalid(start, InvalidReason::TooDeep));
        }
        self.pos += 1;
        Ok(())
    }

    /// Reads decimal digits up to `terminator`; returns the digits' range.
    fn digits(&mut self, terminator: u8) -> Result<(usize, usize), BencodeError> {
        let first = self.pos;
        loop {
            let b = self.peek()?;
            if b == terminator {
                let end = self.pos;
                self.pos += 1;
                return Ok((first, end));
            }
            if !b.is_ascii_digit() {
                return Err(self.invalid(self.pos, InvalidReason::UnexpectedByte(b)));
            }
            self.pos += 1;
        }
    }

    /// After the `i`: `-?digits e`.
    fn integer(&mut self, start: usize) -> Result<i64, BencodeError> {
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let (from, to) = self.digits(b'e')?;
        let digits = self.input.get(from..to).unwrap_or_default();
        match digits {
            [] => return Err(self.invalid(start, InvalidReason::EmptyInteger)),
            [b'0'] if negative => return Err(self.invalid(start, InvalidReason::NegativeZero)),
            [b'0', _, ..] => return Err(self.invalid(start, InvalidReason::LeadingZero)),
            _ => {}
        }
        // Accumulate negatively so that i64::MIN parses.
        let mut acc: i64 = 0;
        for &d in digits {
            acc = acc
                .checked_mul(10)
                .and_then(|a| a.checked_sub(i64::from(d - b'0')))
                .ok_or(self.invalid(start, InvalidReason::IntegerOverflow))?;
        }
        if negative {
            Ok(acc)
        } else {
            acc.checked_neg()
                .ok_or(self.invalid(start, InvalidReason::IntegerOverflow))
        }
    }

    /// `len:bytes`; nothing is allocated until the input is known to hold `len` bytes.
    fn byte_string(&mut self) -> Result<Vec<u8>, BencodeError> {
        let start = self.pos;
        let (from, to) = self.digits(b':')?;
        let digits = self.input.get(from..to).unwrap_or_default();
        if digits.len() > 1 && digits.first() == Some(&b'0') {
            return Err(self.invalid(start, InvalidReason::LeadingZero));
        }
        let mut len: usize = 0;
        for &d in digits {
            len = len
                .checked_mul(10)
                .and_then(|l| l.checked_add(usize::from(d - b'0')))
                .ok_or(self.invalid(start, InvalidReason::LengthOverflow))?;
        }
        let end = self
            .pos
            .checked_add(len)
            .ok_or(self.invalid(start, InvalidReason::LengthOverflow))?;
        let bytes = self
            .input
            .get(self.pos..end)
            .ok_or(BencodeError::Incomplete {
                offset: self.input.len(),
            })?;
        self.pos = end;
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(input: &[u8]) -> (usize, InvalidReason) {
        match decode(input) {
            Err(BencodeError::Invalid { offset, reason }) => (offset, reason),
            other => panic!(
                "expected invalid for {:?}, got {other:?}",
                input.escape_ascii()
            ),
        }
    }

    #[test]
    fn decodes_an_ng_offer() {
        let msg = b"d7:call-id4:abcd7:command5:offer5:flagsl9:trust-adde3:sdp3:v=0e";
        let v = decode(msg).unwrap();
        assert_eq!(v.dict_get("command").and_then(Value::as_str), Some("offer"));
        assert_eq!(
            v.dict_get("call-id").and_then(Value::as_bytes),
            Some(&b"abcd"[..])
        );
        let flags = v.dict_get("flags").and_then(Value::as_list).unwrap();
        assert_eq!(flags, &[Value::str("trust-add")]);
        assert_eq!(v.to_bytes(), msg);
    }

    #[test]
    fn integers_and_their_text_form() {
        assert_eq!(decode(b"i0e").unwrap(), Value::Int(0));
        assert_eq!(decode(b"i-42e").unwrap(), Value::Int(-42));
        assert_eq!(
            decode(b"i9223372036854775807e").unwrap(),
            Value::Int(i64::MAX)
        );
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap(),
            Value::Int(i64::MIN)
        );
        assert_eq!(Value::str("20").as_int(), Some(20));
        assert_eq!(Value::str("-3").as_int(), Some(-3));
        assert_eq!(Value::str("x").as_int(), None);
        assert_eq!(Value::str("").as_int(), None);
        assert_eq!(Value::list([]).as_int(), None);
    }

    #[test]
    fn rejects_malformed_integers() {
        assert_eq!(
            invalid(b"i9223372036854775808e").1,
            InvalidReason::IntegerOverflow
        );
        assert_eq!(
            invalid(b"i-9223372036854775809e").1,
            InvalidReason::IntegerOverflow
        );
        assert_eq!(invalid(b"i-0e").1, InvalidReason::NegativeZero);
        assert_eq!(invalid(b"i03e").1, InvalidReason::LeadingZero);
        assert_eq!(invalid(b"ie").1, InvalidReason::EmptyInteger);
        assert_eq!(invalid(b"i-e").1, InvalidReason::EmptyInteger);
        assert_eq!(invalid(b"i1xe"), (2, InvalidReason::UnexpectedByte(b'x')));
    }

    #[test]
    fn rejects_malformed_structure_with_offsets() {
        assert_eq!(invalid(b"03:abc"), (0, InvalidReason::LeadingZero));
        assert_eq!(invalid(b"di1ei2ee"), (1, InvalidReason::NonStringKey));
        assert_eq!(invalid(b"d1:ai1e1:ai2ee"), (7, InvalidReason::DuplicateKey));
        assert_eq!(invalid(b"i1ei2e"), (3, InvalidReason::TrailingData));
        assert_eq!(invalid(b"x"), (0, InvalidReason::UnexpectedByte(b'x')));
        assert_eq!(
            invalid(b"99999999999999999999999:"),
            (0, InvalidReason::LengthOverflow)
        );
    }

    #[test]
    fn accepts_unsorted_keys_and_emits_them_sorted() {
        // Kamailio's bencode writer keeps insertion order.
        let v = decode(b"d1:bi2e1:ai1ee").unwrap();
        assert_eq!(v.to_bytes(), b"d1:ai1e1:bi2ee");
    }

    #[test]
    fn incomplete_is_distinct_from_invalid() {
        let msg = b"d7:command4:pinge";
        for cut in 0..msg.len() {
            let err = decode_prefix(&msg[..cut]).unwrap_err();
            assert!(err.is_incomplete(), "cut at {cut}: {err:?}");
            assert_eq!(err.offset(), cut);
        }
        let (v, used) = decode_prefix(b"d7:command4:pingei5e").unwrap();
        assert_eq!(used, msg.len());
        assert_eq!(v.dict_get("command").and_then(Value::as_str), Some("ping"));
        assert!(!decode_prefix(b"d7:command4:pingx")
            .unwrap_err()
            .is_incomplete());
        assert!(decode(b"5:abc").unwrap_err().is_incomplete());
    }

    #[test]
    fn depth_and_element_limits() {
        let deep_ok = [vec![b'l'; 32], vec![b'e'; 32]].concat();
        assert!(decode(&deep_ok).is_ok());
        let too_deep = [vec![b'l'; 33], vec![b'e'; 33]].concat();
        assert_eq!(invalid(&too_deep), (32, InvalidReason::TooDeep));
        let limits = DecodeLimits {
            max_depth: 4,
            max_elements: 3,
        };
        assert!(decode_with_limits(b"li1ei2ee", limits).is_ok());
        assert_eq!(
            decode_with_limits(b"li1ei2ei3ee", limits),
            Err(BencodeError::Invalid {
                offset: 7,
                reason: InvalidReason::TooManyElements
            })
        );
    }

    #[test]
    fn builders_and_accessors() {
        let mut v = Value::dict([
            ("result", Value::str("ok")),
            ("sdp", Value::bytes(b"v=0\r\n".to_vec())),
            ("list", Value::list([Value::int(1), Value::from("a")])),
        ]);
        assert!(v.dict_insert("created", Value::int(7)));
        assert!(!Value::int(1).dict_insert("x", Value::int(1)));
        assert_eq!(v.dict_get("created").and_then(Value::as_int), Some(7));
        assert_eq!(v.dict_get("missing"), None);
        assert_eq!(Value::int(1).dict_get("x"), None);
        assert_eq!(Value::bytes(vec![0xff]).as_str(), None);
        assert_eq!(
            v.to_bytes(),
            b"d7:createdi7e4:listli1e1:ae6:result2:ok3:sdp5:v=0\r\ne".to_vec()
        );
        assert_eq!(decode(&v.to_bytes()).unwrap(), v);
    }

    #[test]
    fn debug_hides_string_contents() {
        let v = Value::dict([("from-tag", Value::str("sip:+4915112345678@example.com"))]);
        let shown = format!("{v:?}");
        assert!(shown.contains("from-tag"), "{shown}");
        assert!(!shown.contains("4915112345678"), "{shown}");
        assert!(!shown.contains("sip:"), "{shown}");
    }
}
