//! The sans-I/O core of one agent connection: what the first frame opens (enrollment or a
//! session), what each later frame asks of the server, and heartbeat/liveness timing. The
//! server task feeds it frames and the clock and carries out the [`Action`]s.

use std::time::{Duration, Instant};

use pop_agent_proto::{
    CommandOutcome, ConfigResult, Downlink, EnrollRequest, Hello, Record, Uplink, PROTOCOL_VERSION,
};

/// Who is on the other end, as the TLS handshake established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate (only enrollment is allowed).
    Anonymous,
    /// A client certificate that verified against the CA and the CRL.
    Device {
        /// The certificate's common name (the device id).
        common_name: String,
        /// Its serial, hex.
        serial: String,
    },
}

/// What a connection's first frame opens.
#[derive(Debug, Clone, PartialEq)]
pub enum Opening {
    /// An enrollment (anonymous connection).
    Enroll(EnrollRequest),
    /// A session of an authenticated device.
    Session(Hello),
}

fn check_version(v: u16) -> Result<(), String> {
    // An agent newer than us may still speak our version (Welcome tells it which one we use);
    // an older one cannot understand us.
    if v < PROTOCOL_VERSION {
        Err(format!(
            "unsupported protocol version {v}: this control plane speaks version {PROTOCOL_VERSION}"
        ))
    } else {
        Ok(())
    }
}

/// Decides what the first frame opens, or the reason to refuse (sent in
/// [`Downlink::Refused`] before closing).
pub fn open(peer: &Peer, first: Uplink) -> Result<Opening, String> {
    match (peer, first) {
        (Peer::Anonymous, Uplink::Enroll(req)) => {
            check_version(req.protocol_version)?;
            Ok(Opening::Enroll(req))
        }
        (Peer::Anonymous, Uplink::Hello(_)) => {
            Err("a client certificate is required for a session (enroll first)".into())
        }
        (Peer::Device { .. }, Uplink::Enroll(_)) => Err(
            "enrollment is made without a client certificate; this device is enrolled already"
                .into(),
        ),
        (Peer::Device { common_name, .. }, Uplink::Hello(hello)) => {
            check_version(hello.protocol_version)?;
            if &hello.device_id != common_name {
                return Err(format!(
                    "device id {:?} does not match the certificate's common name {:?}",
                    hello.device_id, common_name
                ));
            }
            Ok(Opening::Session(hello))
        }
        (Peer::Anonymous, _) => Err("the first message must be Enroll".into()),
        (Peer::Device { .. }, _) => Err("the first message must be Hello".into()),
    }
}

/// What the server must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this frame.
    Send(Downlink),
    /// Store the record (deduplicated), then send `Ack` with the cumulative id.
    StoreRecord(Record),
    /// Store a config result.
    StoreConfigResult(ConfigResult),
    /// Store a command result.
    StoreCommandResult {
        /// Command id.
        id: u64,
        /// Outcome.
        outcome: CommandOutcome,
    },
    /// Issue a renewed certificate for the session's device from this CSR, then send it.
    Renew {
        /// PKCS#10 DER.
        csr_der: Vec<u8>,
    },
    /// Close the connection, for this reason (logged).
    Close(String),
}

/// An established session's state.
#[derive(Debug)]
pub struct Session {
    device_id: String,
    interval: Duration,
    last_heard: Instant,
    last_heartbeat_sent: Instant,
    next_seq: u64,
}

impl Session {
    /// A session for `device_id` that just received its Hello at `now`.
    pub fn new(device_id: &str, heartbeat_interval: Duration, now: Instant) -> Self {
        Self {
            device_id: device_id.to_string(),
            // A zero interval would make the timer spin; an absurd one would overflow the
            // Instant arithmetic (three intervals are added to a timestamp).
            interval: heartbeat_interval
                .clamp(Duration::from_millis(10), Duration::from_secs(3600)),
            last_heard: now,
            last_heartbeat_sent: now,
            next_seq: 1,
        }
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The Welcome frame for this session.
    pub fn welcome(&self, acked_up_to: u64, server_unix_ms: u64) -> Downlink {
        Downlink::Welcome {
            protocol_version: PROTOCOL_VERSION,
            server_unix_ms,
            heartbeat_interval_ms: u32::try_from(self.interval.as_millis()).unwrap_or(u32::MAX),
            acked_up_to,
        }
    }

    /// Handles one frame from the device.
    pub fn on_uplink(&mut self, now: Instant, msg: Uplink) -> Vec<Action> {
        self.last_heard = now;
        match msg {
            Uplink::Heartbeat { seq, .. } => vec![Action::Send(Downlink::HeartbeatAck { seq })],
            Uplink::HeartbeatAck { .. } => Vec::new(),
            Uplink::Record(r) => vec![Action::StoreRecord(r)],
            Uplink::ConfigResult(r) => vec![Action::StoreConfigResult(r)],
            Uplink::CommandResult { id, outcome } => {
                vec![Action::StoreCommandResult { id, outcome }]
            }
            Uplink::Renew { csr_der } => vec![Action::Renew { csr_der }],
            Uplink::Hello(_) => vec![Action::Close("Hello after the session started".into())],
            Uplink::Enroll(_) => vec![Action::Close("Enroll inside a session".into())],
        }
    }

    /// When [`Session::poll`] next has something to do.
    pub fn next_deadline(&self) -> Instant {
        (self.last_heartbeat_sent + self.interval).min(self.last_heard + self.interval * 3)
    }

    /// Timer work due at `now`: close after three silent intervals, else a heartbeat when
    /// one interval passed since the last one.
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        if now.saturating_duration_since(self.last_heard) >= self.interval * 3 {
            return Some(Action::Close(format!(
                "no frame for {} ms (3 heartbeat intervals)",
                now.saturating_duration_since(self.last_heard).as_millis()
            )));
        }
        if now.saturating_duration_since(self.last_heartbeat_sent) >= self.interval {
            self.last_heartbeat_sent = now;
            let seq = self.next_seq;
            self.next_seq += 1;
            return Some(Action::Send(Downlink::Heartbeat { seq }));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &str, v: u16) -> Hello {
        Hello {
            protocol_version: v,
            device_id: id.into(),
            firmware_version: "t".into(),
            board: "b".into(),
            capabilities: vec![],
            config_version: 0,
            last_record_id: 0,
        }
    }

    fn dev(cn: &str) -> Peer {
        Peer::Device {
            common_name: cn.into(),
            serial: "01".into(),
        }
    }

    #[test]
    fn openings_follow_the_certificate() {
        assert!(matches!(
            open(&dev("a"), Uplink::Hello(hello("a", PROTOCOL_VERSION))),
            Ok(Opening::Session(_))
        ));
        let e = open(&dev("a"), Uplink::Hello(hello("b", PROTOCOL_VERSION))).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let e = open(
            &Peer::Anonymous,
            Uplink::Hello(hello("a", PROTOCOL_VERSION)),
        )
        .unwrap_err();
        assert!(e.contains("client certificate is required"), "{e}");
        let e = open(&dev("a"), Uplink::Hello(hello("a", 0))).unwrap_err();
        assert!(e.contains("unsupported protocol version 0"), "{e}");
        let e = open(&Peer::Anonymous, Uplink::HeartbeatAck { seq: 1 }).unwrap_err();
        assert!(e.contains("must be Enroll"), "{e}");
        let enroll = EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            token: "t".into(),
            device_id: "a".into(),
            csr_der: vec![],
        };
        assert!(matches!(
            open(&Peer::Anonymous, Uplink::Enroll(enroll.clone())),
            Ok(Opening::Enroll(_))
        ));
        assert!(open(&dev("a"), Uplink::Enroll(enroll)).is_err());
    }

    #[test]
    fn heartbeats_every_interval_and_death_after_three_silent_ones() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(100);
        let mut s = Session::new("a", iv, t0);
        assert_eq!(s.poll(t0 + Duration::from_millis(50)), None);
        assert_eq!(
            s.poll(t0 + iv),
            Some(Action::Send(Downlink::Heartbeat { seq: 1 }))
        );
        assert_eq!(
            s.poll(t0 + iv * 2),
            Some(Action::Send(Downlink::Heartbeat { seq: 2 }))
        );
        // The device answers at 2.5 intervals: alive until 5.5.
        let acts = s.on_uplink(
            t0 + iv * 5 / 2,
            Uplink::Heartbeat {
                seq: 9,
                sent_unix_ms: 0,
            },
        );
        assert_eq!(acts, vec![Action::Send(Downlink::HeartbeatAck { seq: 9 })]);
        assert!(!matches!(s.poll(t0 + iv * 5), Some(Action::Close(_))));
        assert!(matches!(s.poll(t0 + iv * 11 / 2), Some(Action::Close(_))));
        assert!(s.next_deadline() <= t0 + iv * 11 / 2);
    }
}
