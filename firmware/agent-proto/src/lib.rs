//! The protocol between `popd agent` and the central control plane, without I/O.
//!
//! Transport: TLS 1.3 with client certificates (the agent's key stays in its keystore). On the
//! stream, each message is one **frame**: a 4-byte big-endian length `n`, then `n` bytes of
//! [postcard](https://docs.rs/postcard) encoding one [`Uplink`] (agent → control plane) or
//! [`Downlink`] (control plane → agent). `n` is at most [`MAX_FRAME`]; a larger length is a
//! protocol error and the connection is closed (it cannot be resynchronised).
//!
//! Session: the agent's first frame is [`Uplink::Hello`]; the control plane answers
//! [`Downlink::Welcome`] (or [`Downlink::Refused`] and closes). Afterwards either side may
//! send at any time. Both sides send a heartbeat at least every `heartbeat_interval_ms`; a
//! side that hears nothing for three intervals considers the connection dead.
//!
//! Delivery: telemetry, events, CDRs and audit records are [`Record`]s carrying the id the
//! agent's spool gave them (strictly increasing per device, never reused). The control plane
//! stores each record before acknowledging it with [`Downlink::Ack`] (`up_to`: every id ≤ it is
//! stored); the agent deletes acknowledged records from its spool. After a reconnect the agent
//! resends every unacknowledged record, so the control plane sees duplicates and drops them by
//! `(device id, record id)`: delivery is at-least-once on the wire, exactly-once in the store.
//!
//! Configuration: [`Downlink::ConfigPush`] carries a version and a TOML document (the schema is
//! `pop-config`'s). Versions are monotonic: the agent refuses a version that is not above the
//! one it runs (replays, downgrades). The agent answers every push with
//! [`Uplink::ConfigResult`] once the outcome is known (applied, refused with the field and the
//! reason, or rolled back), and reports its running version in every Hello and telemetry record.
//!
//! Versioning: [`PROTOCOL_VERSION`] is in the Hello; the control plane refuses versions it does
//! not speak. New message variants are only ever appended (postcard encodes the variant index).

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest frame body, in bytes (1 MiB): a config document or a diagnostics bundle fits; a
/// corrupt or hostile length prefix cannot make a peer allocate more.
pub const MAX_FRAME: usize = 1 << 20;

/// Length of the frame header (big-endian u32 body length).
pub const FRAME_HEADER_LEN: usize = 4;

/// Frame encoding and decoding errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced or actual body length.
        len: usize,
        /// [`MAX_FRAME`].
        max: usize,
    },
    /// The body is not a valid message.
    #[error("malformed frame body: {0}")]
    Malformed(String),
}

/// Encodes `msg` as one frame (length prefix + postcard body).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; FRAME_HEADER_LEN];
    out = postcard::to_extend(msg, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - FRAME_HEADER_LEN;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    // len ≤ MAX_FRAME < u32::MAX, so the cast is lossless.
    out[..FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one message from a frame body (without the length prefix). Trailing bytes are an
/// error: a body must be exactly one message.
pub fn decode_body<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_FRAME,
        });
    }
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Incremental frame splitter for a byte stream: feed it what the socket gave, take whole
/// frame bodies out. Holds at most one partial frame.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame body, `Ok(None)` if more bytes are needed, or an error if the
    /// announced length is over [`MAX_FRAME`] (checked before buffering the body, so a hostile
    /// peer cannot make us hold more than one maximal frame).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(header) = self.buf.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; FRAME_HEADER_LEN];
        len_bytes.copy_from_slice(header);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME,
            });
        }
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let body = self.buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec();
        self.buf.drain(..FRAME_HEADER_LEN + len);
        Ok(Some(body))
    }
}

/// Agent → control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Uplink {
    /// First frame of every connection.
    Hello(Hello),
    /// Liveness; answered by [`Downlink::HeartbeatAck`] with the same `seq`.
    Heartbeat {
        /// Echoed back.
        seq: u64,
        /// Agent wall clock, ms since the Unix epoch (for clock-skew reporting).
        sent_unix_ms: u64,
    },
    /// A spooled record (sent again after a reconnect until acknowledged).
    Record(Record),
    /// The outcome of a [`Downlink::ConfigPush`].
    ConfigResult(ConfigResult),
    /// The outcome of a [`Downlink::Command`].
    CommandResult {
        /// The command's id.
        id: u64,
        /// What happened.
        outcome: CommandOutcome,
    },
    /// Answer to [`Downlink::Heartbeat`].
    HeartbeatAck {
        /// The control plane's heartbeat seq.
        seq: u64,
    },
    /// First and only request of an enrollment connection (TLS without a client certificate,
    /// the control plane's CA pinned): a one-time bootstrap token and a certificate request
    /// whose key was generated in the keystore. Answered by [`Downlink::Certificate`] or
    /// [`Downlink::Refused`].
    Enroll(EnrollRequest),
    /// Certificate renewal or rotation on an authenticated connection: a new CSR for the same
    /// device id. Answered by [`Downlink::Certificate`] or [`Downlink::Refused`].
    Renew {
        /// PKCS#10 certificate request, DER.
        csr_der: Vec<u8>,
    },
}

/// An enrollment request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol_version: u16,
    /// The one-time bootstrap token a technician was given.
    pub token: String,
    /// The device id the certificate is for (its common name); must match the token's.
    pub device_id: String,
    /// PKCS#10 certificate request, DER, signed by the keystore-held key.
    pub csr_der: Vec<u8>,
}

/// Control plane → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Downlink {
    /// The Hello was accepted.
    Welcome {
        /// Protocol version the control plane will speak (≤ the agent's).
        protocol_version: u16,
        /// Control-plane wall clock, ms since the Unix epoch.
        server_unix_ms: u64,
        /// How often each side sends a heartbeat.
        heartbeat_interval_ms: u32,
        /// Highest record id already stored for this device (the agent may drop ≤ it at once).
        acked_up_to: u64,
    },
    /// The Hello was refused; the connection closes.
    Refused {
        /// Why, for the log.
        reason: String,
    },
    /// Liveness; answered by [`Uplink::HeartbeatAck`].
    Heartbeat {
        /// Echoed back.
        seq: u64,
    },
    /// Answer to [`Uplink::Heartbeat`].
    HeartbeatAck {
        /// The agent's seq.
        seq: u64,
    },
    /// Every record with an id ≤ `up_to` is stored.
    Ack {
        /// Highest stored record id (cumulative).
        up_to: u64,
    },
    /// New desired configuration.
    ConfigPush {
        /// Monotonic version; must exceed the running one.
        version: u64,
        /// TOML document (schema: `pop-config`).
        document: String,
    },
    /// A command to run.
    Command {
        /// Id for the result.
        id: u64,
        /// What to do.
        command: Command,
    },
    /// The device certificate issued for an [`Uplink::Enroll`] or [`Uplink::Renew`].
    Certificate {
        /// Leaf first, DER.
        chain_der: Vec<Vec<u8>>,
        /// Expiry of the leaf, seconds since the Unix epoch.
        not_after_unix_s: u64,
    },
    /// The control-plane CA's current certificate revocation list (DER), sent after
    /// `Welcome` and whenever it changes; the agent keeps it to check the server next time.
    Crl {
        /// X.509 CRL, DER.
        der: Vec<u8>,
    },
}

/// Who is talking and what it can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol_version: u16,
    /// Device id (also the certificate's common name).
    pub device_id: String,
    /// Firmware version string.
    pub firmware_version: String,
    /// Board descriptor name (e.g. `x86_64-appliance`).
    pub board: String,
    /// Capability names (e.g. `relay`, `linkmon`, `firewall`, `spool`).
    pub capabilities: Vec<String>,
    /// Config version currently running (0: none yet).
    pub config_version: u64,
    /// Highest record id the agent has spooled so far (0: none).
    pub last_record_id: u64,
}

/// A spooled record: what the agent stores until acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Spool id: strictly increasing per device, never reused.
    pub id: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// The content.
    pub body: RecordBody,
}

/// The four kinds of record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordBody {
    /// Periodic health and counters (dropped oldest-first when the spool is full).
    Telemetry(Telemetry),
    /// Something that happened.
    Event(Event),
    /// A call detail record (never dropped silently).
    Cdr(Cdr),
    /// An audit record (never dropped silently).
    Audit(Audit),
}

impl RecordBody {
    /// The record class, as the spool files it.
    pub fn class(&self) -> RecordClass {
        match self {
            RecordBody::Telemetry(_) => RecordClass::Telemetry,
            RecordBody::Event(_) => RecordClass::Event,
            RecordBody::Cdr(_) => RecordClass::Cdr,
            RecordBody::Audit(_) => RecordClass::Audit,
        }
    }
}

/// Record classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RecordClass {
    /// [`Telemetry`].
    Telemetry,
    /// [`Event`].
    Event,
    /// [`Cdr`].
    Cdr,
    /// [`Audit`].
    Audit,
}

/// Periodic health report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Running config version.
    pub config_version: u64,
    /// Agent uptime, seconds.
    pub uptime_s: u64,
    /// One entry per supervised service.
    pub services: Vec<ServiceHealth>,
    /// Uplinks as the link monitor reports them.
    pub uplinks: Vec<UplinkState>,
    /// Relay figures, when the relay answered.
    pub relay: Option<RelayCounters>,
    /// Spool occupancy.
    pub spool: SpoolCounters,
}

/// Health of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// `relay`, `linkmon`, `watchdog`, `agent`…
    pub name: String,
    /// Answered its socket and reports itself healthy.
    pub healthy: bool,
    /// Why not, or a short status.
    pub detail: String,
}

/// One uplink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkState {
    /// Configured name.
    pub name: String,
    /// `up`, `down`, `suppressed`, … as the link monitor names it.
    pub state: String,
    /// Carries the traffic now.
    pub active: bool,
}

/// Relay counters (cumulative since relay start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCounters {
    /// Sessions now.
    pub sessions: u64,
    /// Packets forwarded.
    pub packets_forwarded: u64,
    /// Bytes forwarded.
    pub bytes_forwarded: u64,
    /// Packets dropped (malformed, spoofed, no session…).
    pub packets_dropped: u64,
}

/// Spool occupancy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolCounters {
    /// Bytes on disk.
    pub bytes: u64,
    /// Records waiting for an ack.
    pub pending_records: u64,
    /// Telemetry records dropped because the spool was full (cumulative).
    pub telemetry_dropped: u64,
    /// The spool is over its cap with records that may not be dropped.
    pub alarm: bool,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// What.
    pub kind: EventKind,
}

/// Event kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// The agent started; `last_reset_watchdog` from the watchdog's boot status.
    AgentStarted {
        /// Firmware version.
        firmware_version: String,
        /// The last reset was caused by the watchdog (None: unknown).
        last_reset_watchdog: Option<bool>,
    },
    /// The link monitor moved traffic to another uplink.
    Failover {
        /// From.
        from: String,
        /// To.
        to: String,
        /// Why (carrier, bfd, probes…).
        reason: String,
        /// Fault seen → switched, µs.
        switch_us: u64,
    },
    /// Traffic went back to a preferred uplink after the hold-down.
    Failback {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// A pushed config was applied and stayed healthy through the watch window.
    ConfigApplied {
        /// The version.
        version: u64,
    },
    /// A pushed config was refused before anything changed.
    ConfigRefused {
        /// The version.
        version: u64,
        /// The offending field (dotted path).
        field: String,
        /// Why.
        reason: String,
    },
    /// A pushed config was applied, health dropped, and the previous one was restored.
    ConfigRolledBack {
        /// The version that failed.
        version: u64,
        /// The version running again.
        restored: u64,
        /// What failed.
        reason: String,
    },
    /// The spool is over its cap with CDRs or audit records it may not drop.
    SpoolAlarm {
        /// Bytes on disk.
        bytes: u64,
        /// The cap.
        cap: u64,
    },
    /// The device certificate was renewed.
    CertificateRenewed {
        /// New expiry, seconds since the Unix epoch.
        not_after_unix_s: u64,
    },
    /// A free-form event from a service.
    Other {
        /// Source service.
        source: String,
        /// Description (never personal data).
        message: String,
    },
}

/// A call detail record. Parties are pseudonymised with a keyed hash (HMAC-SHA-256 under a
/// device key, truncated to 16 bytes) so the record can be matched for erasure but not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cdr {
    /// Pseudonymised call id.
    pub call: [u8; 16],
    /// Pseudonymised calling party (None when the signalling did not say).
    pub caller: Option<[u8; 16]>,
    /// Pseudonymised called party.
    pub callee: Option<[u8; 16]>,
    /// Session start, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Session end, ms since the Unix epoch.
    pub ended_unix_ms: u64,
    /// Packets relayed.
    pub packets: u64,
    /// Why it ended (`deleted`, `no-media`, `max-duration`…).
    pub end_reason: String,
}

/// An audit record: every config change, technician command and enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// When, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// Who (`control-plane`, `technician`, `agent`).
    pub actor: String,
    /// What (`config.apply`, `enroll`, `command.erase-subject`…).
    pub action: String,
    /// Details, with personal data redacted.
    pub detail: String,
    /// `ok` or the failure.
    pub outcome: String,
}

/// Outcome of a config push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigResult {
    /// The pushed version.
    pub version: u64,
    /// What happened.
    pub outcome: ConfigOutcome,
    /// Version running after the outcome.
    pub running_version: u64,
}

/// Config push outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigOutcome {
    /// Applied and healthy through the watch window.
    Applied,
    /// Refused before anything changed.
    Refused {
        /// Offending field, dotted path (`relay.max_sessions`), or `version`.
        field: String,
        /// Why.
        reason: String,
    },
    /// Applied, then rolled back because health dropped.
    RolledBack {
        /// What failed.
        reason: String,
    },
}

/// Commands from the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Erase everything stored locally about a subject, matched through the keyed hash of the
    /// number (the number itself is never stored or logged).
    EraseSubject {
        /// The subject's number (E.164 or SIP user part).
        number: String,
    },
    /// Generate a new device key and certificate now.
    RotateCertificate,
    /// Produce a diagnostics bundle with personal data redacted.
    Diagnostics,
}

/// Command outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// What `EraseSubject` erased.
    Erased {
        /// Spooled CDRs removed.
        cdrs: u64,
        /// Other local records removed (recordings when they exist).
        other: u64,
    },
    /// `RotateCertificate` done.
    Rotated {
        /// New expiry, seconds since the Unix epoch.
        not_after_unix_s: u64,
    },
    /// `Diagnostics` bundle (text, redacted).
    Diagnostics {
        /// The bundle.
        bundle: String,
    },
    /// The command failed.
    Failed {
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<Uplink> {
        vec![
            Uplink::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                device_id: "pop-ams-01".into(),
                firmware_version: "0.1.0".into(),
                board: "qemu-x86_64".into(),
                capabilities: vec!["relay".into()],
                config_version: 3,
                last_record_id: 42,
            }),
            Uplink::Record(Record {
                id: 7,
                created_unix_ms: 1,
                body: RecordBody::Cdr(Cdr {
                    call: [1; 16],
                    caller: Some([2; 16]),
                    callee: None,
                    started_unix_ms: 10,
                    ended_unix_ms: 20,
                    packets: 3,
                    end_reason: "deleted".into(),
                }),
            }),
            Uplink::ConfigResult(ConfigResult {
                version: 4,
                outcome: ConfigOutcome::Refused {
                    field: "relay.max_sessions".into(),
                    reason: "must be at most 5000".into(),
                },
                running_version: 3,
            }),
        ]
    }

    #[test]
    fn frames_round_trip_through_the_stream_reader_in_any_split() {
        let msgs = sample();
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend(encode_frame(m).unwrap());
        }
        for split in [1usize, 3, 7, wire.len()] {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                r.push(chunk);
                while let Some(body) = r.next_frame().unwrap() {
                    got.push(decode_body::<Uplink>(&body).unwrap());
                }
            }
            assert_eq!(got, msgs, "split {split}");
            assert_eq!(r.buffered(), 0);
        }
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_buffering() {
        let mut r = FrameReader::new();
        r.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert_eq!(
            r.next_frame(),
            Err(FrameError::TooLarge {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let big = Downlink::ConfigPush {
            version: 1,
            document: "x".repeat(MAX_FRAME + 1),
        };
        assert!(matches!(
            encode_frame(&big),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_truncation_are_malformed() {
        let frame = encode_frame(&Downlink::Ack { up_to: 9 }).unwrap();
        let body = &frame[FRAME_HEADER_LEN..];
        let mut extra = body.to_vec();
        extra.push(0);
        assert!(matches!(
            decode_body::<Downlink>(&extra),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode_body::<Downlink>(&body[..body.len() - 1]),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body::<Uplink>(&bytes);
            let _ = decode_body::<Downlink>(&bytes);
            let mut r = FrameReader::new();
            r.push(&bytes);
            while let Ok(Some(body)) = r.next_frame() {
                let _ = decode_body::<Downlink>(&body);
            }
        }
    }
}
