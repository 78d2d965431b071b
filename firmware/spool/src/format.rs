//! The on-disk formats, without I/O: segment header, record frame, state file, and the scan
//! that splits a segment's bytes into frames while stepping over damage.
//!
//! All integers are big-endian. CRC-32 is the IEEE polynomial (`crc32fast`).
//!
//! Segment header (format version 1):
//!
//! ```text
//! "PSEG" | version u8 = 1 | flags u8 = 0 | wrapped_len u16 | segment id u64
//!   | wrapped data key [wrapped_len] (pop-keystore WrappedKey::to_bytes) | crc32 u32 of all before
//! ```
//!
//! Record frame:
//!
//! ```text
//! len u32        number of bytes after this 8-byte prefix = 17 + body length + 16
//! crc u32        CRC-32 of the len field followed by the len bytes after the prefix
//! id u64         record id
//! class u8       1 telemetry, 2 event, 3 cdr, 4 audit
//! created u64    creation time, ms since the Unix epoch
//! ciphertext || tag [16]   AES-256-GCM of the body under the segment's data key
//! ```
//!
//! Nonce: `00 00 00 00 || id u64`. Ids are unique and each segment has its own key, so a
//! (key, nonce) pair never encrypts two different bodies. AAD: `"pop-spool v1" || segment id ||
//! id || class || created`, so a record cannot be moved to another segment or position, nor
//! its class or time changed, without failing authentication.
//!
//! State file (`state`, replaced atomically):
//!
//! ```text
//! "PSST" | version u8 = 1 | acked_up_to u64 | id floor u64 | telemetry_dropped u64 | crc32 u32
//! ```

use pop_agent_proto::RecordClass;
use pop_keystore::DataKey;

/// Version of every format in this module.
pub(crate) const FORMAT_VERSION: u8 = 1;
const SEG_MAGIC: &[u8; 4] = b"PSEG";
const SEG_FIXED_LEN: usize = 4 + 1 + 1 + 2 + 8;
const CRC_LEN: usize = 4;
/// `len` and `crc` fields.
pub(crate) const FRAME_PREFIX_LEN: usize = 8;
/// id, class, created.
const META_LEN: usize = 8 + 1 + 8;
const TAG_LEN: usize = 16;
/// Bytes a frame adds to its body.
pub const FRAME_OVERHEAD: usize = FRAME_PREFIX_LEN + META_LEN + TAG_LEN;
/// Largest record body: one agent-protocol frame, since a record travels in one.
pub const MAX_BODY: usize = pop_agent_proto::MAX_FRAME;
const MIN_LEN_FIELD: usize = META_LEN + TAG_LEN;
const MAX_LEN_FIELD: usize = META_LEN + MAX_BODY + TAG_LEN;
const AAD_LABEL: &[u8; 12] = b"pop-spool v1";
const AAD_LEN: usize = 12 + 8 + 8 + 1 + 8;
const STATE_MAGIC: &[u8; 4] = b"PSST";
/// Length of the state file.
pub(crate) const STATE_LEN: usize = 4 + 1 + 8 + 8 + 8 + CRC_LEN;

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn be_u16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.try_into().ok()?))
}

/// On-disk code of a record class.
pub(crate) fn class_code(class: RecordClass) -> u8 {
    match class {
        RecordClass::Telemetry => 1,
        RecordClass::Event => 2,
        RecordClass::Cdr => 3,
        RecordClass::Audit => 4,
    }
}

/// The class of an on-disk code, if it is one.
pub(crate) fn class_from_code(code: u8) -> Option<RecordClass> {
    Some(match code {
        1 => RecordClass::Telemetry,
        2 => RecordClass::Event,
        3 => RecordClass::Cdr,
        4 => RecordClass::Audit,
        _ => return None,
    })
}

/// Index of a class in per-class counters.
pub(crate) fn class_index(class: RecordClass) -> usize {
    usize::from(class_code(class) - 1)
}

/// A parsed segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// The segment id (the first record id it was created for).
    pub seg_id: u64,
    /// The wrapped data key, as `WrappedKey::to_bytes` wrote it.
    pub wrapped: Vec<u8>,
    /// Length of the header in bytes (records start there).
    pub len: usize,
}

/// Encodes a segment header; `None` if the wrapped key is longer than 65535 bytes.
pub(crate) fn encode_header(seg_id: u64, wrapped: &[u8]) -> Option<Vec<u8>> {
    let wlen = u16::try_from(wrapped.len()).ok()?;
    let mut h = Vec::with_capacity(SEG_FIXED_LEN + wrapped.len() + CRC_LEN);
    h.extend_from_slice(SEG_MAGIC);
    h.push(FORMAT_VERSION);
    h.push(0);
    h.extend_from_slice(&wlen.to_be_bytes());
    h.extend_from_slice(&seg_id.to_be_bytes());
    h.extend_from_slice(wrapped);
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_be_bytes());
    Some(h)
}

/// Length of a header carrying a wrapped key of `wrapped_len` bytes.
pub(crate) fn header_len(wrapped_len: usize) -> usize {
    SEG_FIXED_LEN + wrapped_len + CRC_LEN
}

/// Parses the header at the start of a segment file.
pub(crate) fn decode_header(buf: &[u8]) -> Result<SegmentHeader, String> {
    let fixed = buf
        .get(..SEG_FIXED_LEN)
        .ok_or_else(|| format!("{} bytes is shorter than a segment header", buf.len()))?;
    if &fixed[..4] != SEG_MAGIC {
        return Err("bad magic (not a spool segment)".into());
    }
    if fixed[4] != FORMAT_VERSION {
        return Err(format!(
            "format version {} (this firmware reads {FORMAT_VERSION})",
            fixed[4]
        ));
    }
    let wlen = usize::from(be_u16(&fixed[6..8]).ok_or("header length field")?);
    let seg_id = be_u64(&fixed[8..16]).ok_or("header segment id field")?;
    let len = header_len(wlen);
    let whole = buf
        .get(..len)
        .ok_or_else(|| format!("header announces {len} bytes, file has {}", buf.len()))?;
    let (body, crc) = whole.split_at(len - CRC_LEN);
    if be_u32(crc) != Some(crc32fast::hash(body)) {
        return Err("header CRC mismatch".into());
    }
    Ok(SegmentHeader {
        seg_id,
        wrapped: body[SEG_FIXED_LEN..].to_vec(),
        len,
    })
}

/// The AES-GCM nonce of record `id`.
pub(crate) fn nonce(id: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&id.to_be_bytes());
    n
}

/// The AES-GCM associated data of a record.
pub(crate) fn aad(seg_id: u64, id: u64, class: RecordClass, created: u64) -> [u8; AAD_LEN] {
    let mut a = [0u8; AAD_LEN];
    a[..12].copy_from_slice(AAD_LABEL);
    a[12..20].copy_from_slice(&seg_id.to_be_bytes());
    a[20..28].copy_from_slice(&id.to_be_bytes());
    a[28] = class_code(class);
    a[29..37].copy_from_slice(&created.to_be_bytes());
    a
}

fn frame_crc(len_field: &[u8], rest: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len_field);
    h.update(rest);
    h.finalize()
}

/// Encrypts and frames one record, appending the frame to `out`.
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    key: &DataKey,
    seg_id: u64,
    id: u64,
    class: RecordClass,
    created: u64,
    body: &[u8],
) -> pop_keystore::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_PREFIX_LEN]);
    out.extend_from_slice(&id.to_be_bytes());
    out.push(class_code(class));
    out.extend_from_slice(&created.to_be_bytes());
    let body_at = out.len();
    out.extend_from_slice(body);
    let sealed = key.seal_in_place_separate_tag(
        nonce(id),
        &aad(seg_id, id, class, created),
        &mut out[body_at..],
    );
    let tag = match sealed {
        Ok(t) => t,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    out.extend_from_slice(&tag);
    // The body is at most MAX_BODY (checked by the caller), so this fits a u32.
    let len = u32::try_from(out.len() - start - FRAME_PREFIX_LEN).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    let crc = frame_crc(&len.to_be_bytes(), &out[start + FRAME_PREFIX_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// A structurally valid frame (length and CRC check out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameMeta {
    /// Record id.
    pub id: u64,
    /// Record class.
    pub class: RecordClass,
    /// Creation time.
    pub created: u64,
    /// Offset of the frame in the buffer.
    pub offset: usize,
    /// Whole frame length (prefix included).
    pub len: usize,
}

/// Why a frame did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameFault {
    /// The buffer ends before the frame does.
    Incomplete,
    /// The length field is out of range, the CRC does not match or the class is unknown.
    Bad(&'static str),
}

/// Parses the frame starting at `pos` (CRC checked, nothing decrypted).
pub(crate) fn parse_frame_at(buf: &[u8], pos: usize) -> Result<FrameMeta, FrameFault> {
    let prefix = buf
        .get(pos..pos.saturating_add(FRAME_PREFIX_LEN))
        .ok_or(FrameFault::Incomplete)?;
    let len_bytes = &prefix[..4];
    let len = be_u32(len_bytes).ok_or(FrameFault::Incomplete)? as usize;
    if !(MIN_LEN_FIELD..=MAX_LEN_FIELD).contains(&len) {
        return Err(FrameFault::Bad("length field out of range"));
    }
    let rest_at = pos + FRAME_PREFIX_LEN;
    let rest = buf
        .get(rest_at..rest_at + len)
        .ok_or(FrameFault::Incomplete)?;
    let class = class_from_code(rest[8]).ok_or(FrameFault::Bad("unknown record class"))?;
    if be_u32(&prefix[4..8]) != Some(frame_crc(len_bytes, rest)) {
        return Err(FrameFault::Bad("CRC mismatch"));
    }
    Ok(FrameMeta {
        id: be_u64(&rest[..8]).ok_or(FrameFault::Incomplete)?,
        class,
        created: be_u64(&rest[9..17]).ok_or(FrameFault::Incomplete)?,
        offset: pos,
        len: FRAME_PREFIX_LEN + len,
    })
}

/// Decrypts the body of a frame whose bytes are `frame` (from its prefix to its tag, already
/// checked by [`parse_frame_at`]). Fails when the tag does not verify.
pub(crate) fn open_frame(
    key: &DataKey,
    seg_id: u64,
    meta: &FrameMeta,
    frame: &mut [u8],
) -> pop_keystore::Result<Vec<u8>> {
    let sealed =
        frame
            .get_mut(FRAME_PREFIX_LEN + META_LEN..)
            .ok_or(pop_keystore::Error::Crypto(
                "spool frame shorter than its header",
            ))?;
    let plain = key.open_in_place(
        nonce(meta.id),
        &aad(seg_id, meta.id, meta.class, meta.created),
        sealed,
        "spool record",
    )?;
    Ok(plain.to_vec())
}

/// What [`scan`] found in a segment.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Valid frames, in file order.
    pub frames: Vec<FrameMeta>,
    /// Damaged regions `[start, end)` followed by a valid frame.
    pub corrupt: Vec<(usize, usize)>,
    /// Where trailing bytes that contain no valid frame start, if there are any.
    pub tail_from: Option<usize>,
}

/// Splits `buf[start..]` into frames. A damaged frame is stepped over by searching, byte by
/// byte, for the next offset where a valid frame starts (a random length field is almost
/// never in range and a CRC-32 almost never matches, so this costs little); damage with no
/// valid frame after it is reported as a tail, which the caller treats as a torn write in the
/// last segment.
pub(crate) fn scan(buf: &[u8], start: usize) -> Scan {
    let mut out = Scan::default();
    let mut pos = start;
    while pos < buf.len() {
        match parse_frame_at(buf, pos) {
            Ok(f) => {
                pos += f.len;
                out.frames.push(f);
            }
            Err(_) => match (pos + 1..buf.len()).find(|&p| parse_frame_at(buf, p).is_ok()) {
                Some(next) => {
                    out.corrupt.push((pos, next));
                    pos = next;
                }
                None => {
                    out.tail_from = Some(pos);
                    break;
                }
            },
        }
    }
    out
}

/// The contents of the state file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// Every id ≤ this is acknowledged.
    pub acked_up_to: u64,
    /// No id ≤ this may be handed out again.
    pub id_floor: u64,
    /// Telemetry records dropped for space, cumulative.
    pub telemetry_dropped: u64,
}

impl State {
    /// Serialises the state file.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(STATE_LEN);
        b.extend_from_slice(STATE_MAGIC);
        b.push(FORMAT_VERSION);
        b.extend_from_slice(&self.acked_up_to.to_be_bytes());
        b.extend_from_slice(&self.id_floor.to_be_bytes());
        b.extend_from_slice(&self.telemetry_dropped.to_be_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    /// Parses the state file.
    pub(crate) fn decode(b: &[u8]) -> Result<State, String> {
        if b.len() != STATE_LEN {
            return Err(format!("{} bytes, expected {STATE_LEN}", b.len()));
        }
        if &b[..4] != STATE_MAGIC {
            return Err("bad magic".into());
        }
        if b[4] != FORMAT_VERSION {
            return Err(format!(
                "format version {} (this firmware reads {FORMAT_VERSION})",
                b[4]
            ));
        }
        let (body, crc) = b.split_at(STATE_LEN - CRC_LEN);
        if be_u32(crc) != Some(crc32fast::hash(body)) {
            return Err("CRC mismatch".into());
        }
        let field = |at: usize| be_u64(&b[at..at + 8]).ok_or_else(|| "short field".to_string());
        Ok(State {
            acked_up_to: field(5)?,
            id_floor: field(13)?,
            telemetry_dropped: field(21)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(b: u8) -> DataKey {
        DataKey::from_fill(|k| {
            k.fill(b);
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = encode_header(42, b"wrapped-key-bytes").unwrap();
        assert_eq!(h.len(), header_len(17));
        let d = decode_header(&h).unwrap();
        assert_eq!(
            (d.seg_id, d.wrapped.as_slice(), d.len),
            (42, &b"wrapped-key-bytes"[..], h.len())
        );
        for i in 0..h.len() {
            let mut bad = h.clone();
            bad[i] ^= 0x01;
            assert!(decode_header(&bad).is_err(), "flip at {i} accepted");
        }
        assert!(decode_header(&h[..h.len() - 1]).is_err());
    }

    #[test]
    fn frame_round_trips_and_binds_aad() {
        let k = key(1);
        let mut buf = Vec::new();
        encode_frame(&mut buf, &k, 7, 9, RecordClass::Cdr, 1234, b"hello").unwrap();
        assert_eq!(buf.len(), FRAME_OVERHEAD + 5);
        let m = parse_frame_at(&buf, 0).unwrap();
        assert_eq!(
            (m.id, m.class, m.created, m.len),
            (9, RecordClass::Cdr, 1234, buf.len())
        );
        assert_eq!(open_frame(&k, 7, &m, &mut buf.clone()).unwrap(), b"hello");
        // Same bytes claimed by another segment: authentication fails.
        assert!(open_frame(&k, 8, &m, &mut buf.clone()).is_err());
        assert!(open_frame(&key(2), 7, &m, &mut buf.clone()).is_err());
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x80;
            assert!(parse_frame_at(&bad, 0).is_err(), "flip at {i} accepted");
        }
        assert_eq!(
            parse_frame_at(&buf[..buf.len() - 1], 0),
            Err(FrameFault::Incomplete)
        );
    }

    #[test]
    fn scan_steps_over_damage_and_reports_the_tail() {
        let k = key(3);
        let mut buf = vec![0xEE; 10]; // pretend header
        let mut ends = Vec::new();
        for id in 1..=3u64 {
            encode_frame(&mut buf, &k, 1, id, RecordClass::Event, id, &[id as u8; 50]).unwrap();
            ends.push(buf.len());
        }
        let clean = scan(&buf, 10);
        assert_eq!(clean.frames.len(), 3);
        assert!(clean.corrupt.is_empty() && clean.tail_from.is_none());

        let mut mid = buf.clone();
        mid[ends[0] + 30] ^= 0xFF;
        let s = scan(&mid, 10);
        assert_eq!(
            s.frames.iter().map(|f| f.id).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(s.corrupt, vec![(ends[0], ends[1])]);

        let torn = &buf[..ends[2] - 5];
        let s = scan(torn, 10);
        assert_eq!(s.frames.len(), 2);
        assert_eq!(s.tail_from, Some(ends[1]));
    }

    #[test]
    fn state_round_trips_and_rejects_damage() {
        let s = State {
            acked_up_to: 5,
            id_floor: 9,
            telemetry_dropped: 2,
        };
        let b = s.encode();
        assert_eq!(State::decode(&b).unwrap(), s);
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x04;
            assert!(State::decode(&bad).is_err(), "flip at {i} accepted");
        }
    }
}
