//! One TLS connection to the control plane: handshake, Hello/Welcome, then records out, acks,
//! pushes and commands in, heartbeats both ways, until it breaks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pop_agent_proto::{
    decode_body, encode_frame, Downlink, FrameReader, Hello, Record, RecordBody, Uplink,
    PROTOCOL_VERSION,
};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::AgentError;
use crate::liveness::{Liveness, Tick};
use crate::records::Outbox;

/// TCP connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TLS handshake plus Welcome timeout.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Records sent but not yet acknowledged, at most (the rest wait in the spool).
pub const MAX_IN_FLIGHT: u64 = 512;
/// Records read from the spool per batch.
const SEND_BATCH: usize = 64;

/// An established, greeted connection.
pub struct Connection<S> {
    stream: S,
    reader: FrameReader,
    buf: Vec<u8>,
    /// Heartbeat bookkeeping.
    pub liveness: Liveness,
    /// Highest record id sent on this connection.
    pub last_sent: u64,
    /// Highest id the control plane acknowledged.
    pub acked: u64,
    /// Highest acknowledgement handed to the spool (which deletes and persists its watermark).
    spool_acked: u64,
}

/// Acknowledgements are handed to the spool in steps of at least this many records (or when
/// nothing else is in flight, or on the poll tick): each hand-over persists the spool's
/// watermark with an fsync, and the control plane acknowledges every record. Losing a few
/// unpersisted acknowledgements in a crash only means re-sending records the control plane
/// drops as duplicates.
const ACK_PERSIST_STEP: u64 = 128;

impl<S> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("last_sent", &self.last_sent)
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

/// Connects TCP and TLS (no Hello yet).
pub async fn connect_tls(
    addr: SocketAddr,
    server_name: rustls::pki_types::ServerName<'static>,
    config: Arc<ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, AgentError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| AgentError::Timeout("TCP connect to the control plane"))?
        .map_err(|e| AgentError::Io {
            path: addr.to_string(),
            source: e,
        })?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    .map_err(|_| AgentError::Timeout("TLS handshake"))?
    .map_err(|e| AgentError::Tls(e.to_string()))?;
    Ok(tls)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a TLS stream.
    pub fn new(stream: S) -> Self {
        Connection {
            stream,
            reader: FrameReader::new(),
            buf: vec![0u8; 16 * 1024],
            liveness: Liveness::new(Instant::now(), Duration::from_secs(10)),
            last_sent: 0,
            acked: 0,
            spool_acked: 0,
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &Uplink) -> Result<(), AgentError> {
        let frame = encode_frame(msg).map_err(|e| AgentError::Protocol(e.to_string()))?;
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| AgentError::Io {
                path: "control plane connection".into(),
                source: e,
            })
    }

    /// Waits for the next message (cancel-safe: partial frames stay buffered).
    pub async fn recv(&mut self) -> Result<Downlink, AgentError> {
        loop {
            if let Some(body) = self
                .reader
                .next_frame()
                .map_err(|e| AgentError::Protocol(e.to_string()))?
            {
                self.liveness.heard(Instant::now());
                return decode_body::<Downlink>(&body)
                    .map_err(|e| AgentError::Protocol(e.to_string()));
            }
            let n = self
                .stream
                .read(&mut self.buf)
                .await
                .map_err(|e| AgentError::Io {
                    path: "control plane connection".into(),
                    source: e,
                })?;
            if n == 0 {
                return Err(AgentError::Protocol(
                    "the control plane closed the connection".into(),
                ));
            }
            self.reader.push(self.buf.get(..n).unwrap_or_default());
        }
    }

    /// Sends the Hello and waits for the Welcome; returns the control plane's stored watermark.
    pub async fn greet(&mut self, hello: Hello) -> Result<u64, AgentError> {
        self.send(&Uplink::Hello(hello)).await?;
        let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.recv())
            .await
            .map_err(|_| AgentError::Timeout("Welcome"))??;
        match reply {
            Downlink::Welcome {
                protocol_version,
                heartbeat_interval_ms,
                acked_up_to,
                ..
            } => {
                if protocol_version > PROTOCOL_VERSION {
                    return Err(AgentError::Protocol(format!(
                        "the control plane answered protocol {protocol_version}, we speak {PROTOCOL_VERSION}"
                    )));
                }
                self.liveness = Liveness::new(
                    Instant::now(),
                    Duration::from_millis(u64::from(heartbeat_interval_ms)),
                );
                self.acked = acked_up_to;
                self.last_sent = acked_up_to;
                self.spool_acked = 0;
                Ok(acked_up_to)
            }
            Downlink::Refused { reason } => Err(AgentError::Refused(reason)),
            other => Err(AgentError::Protocol(format!(
                "expected Welcome, got {}",
                variant_name(&other)
            ))),
        }
    }

    /// Sends spooled records the control plane has not seen yet, within the in-flight limit.
    /// Returns how many were sent.
    pub async fn send_pending(&mut self, outbox: &Outbox) -> Result<usize, AgentError> {
        let mut sent = 0;
        loop {
            let room = MAX_IN_FLIGHT.saturating_sub(self.last_sent.saturating_sub(self.acked));
            if room == 0 {
                return Ok(sent);
            }
            let max = SEND_BATCH.min(usize::try_from(room).unwrap_or(SEND_BATCH));
            let after = self.last_sent;
            let batch = outbox.with(|s| s.pending_after(after, max))?;
            if batch.is_empty() {
                return Ok(sent);
            }
            // One write (one TLS record, one syscall) per batch rather than per record.
            let mut frames = Vec::with_capacity(batch.len() * 128);
            for stored in batch {
                self.last_sent = stored.id;
                let body: RecordBody = match postcard::from_bytes(&stored.body) {
                    Ok(b) => b,
                    Err(e) => {
                        // Authenticated by the spool, so this is our own encoding changing
                        // between versions; say so instead of wedging the queue.
                        tracing::error!(id = stored.id, error = %e, "spooled record cannot be decoded; skipped");
                        continue;
                    }
                };
                let frame = encode_frame(&Uplink::Record(Record {
                    id: stored.id,
                    created_unix_ms: stored.created_unix_ms,
                    body,
                }))
                .map_err(|e| AgentError::Protocol(e.to_string()))?;
                frames.extend_from_slice(&frame);
                sent += 1;
            }
            self.stream
                .write_all(&frames)
                .await
                .map_err(|e| AgentError::Io {
                    path: "control plane connection".into(),
                    source: e,
                })?;
        }
    }

    /// Handles an acknowledgement: the spool forgets everything up to it.
    pub fn acknowledged(&mut self, outbox: &Outbox, up_to: u64) -> Result<(), AgentError> {
        if up_to > self.acked {
            self.acked = up_to;
        }
        if self.acked >= self.spool_acked + ACK_PERSIST_STEP || self.acked >= self.last_sent {
            self.flush_acks(outbox)?;
        }
        Ok(())
    }

    /// Hands the latest acknowledgement to the spool if it has not seen it yet.
    pub fn flush_acks(&mut self, outbox: &Outbox) -> Result<(), AgentError> {
        if self.acked > self.spool_acked {
            let up_to = self.acked;
            outbox.with(|s| s.ack_up_to(up_to))?;
            self.spool_acked = up_to;
        }
        Ok(())
    }

    /// Liveness decision; sends a heartbeat when due.
    pub async fn tick(&mut self) -> Result<(), AgentError> {
        match self.liveness.tick(Instant::now()) {
            Tick::Idle => Ok(()),
            Tick::SendHeartbeat(seq) => {
                self.send(&Uplink::Heartbeat {
                    seq,
                    sent_unix_ms: crate::identity::unix_now_ms(),
                })
                .await
            }
            Tick::Dead => Err(AgentError::Timeout(
                "control plane silent for 3 heartbeat intervals",
            )),
        }
    }

    /// Closes the TLS session politely (best effort).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

/// A message's variant name, for errors (never its content).
pub fn variant_name(m: &Downlink) -> &'static str {
    match m {
        Downlink::Welcome { .. } => "Welcome",
        Downlink::Refused { .. } => "Refused",
        Downlink::Heartbeat { .. } => "Heartbeat",
        Downlink::HeartbeatAck { .. } => "HeartbeatAck",
        Downlink::Ack { .. } => "Ack",
        Downlink::ConfigPush { .. } => "ConfigPush",
        Downlink::Command { .. } => "Command",
        Downlink::Certificate { .. } => "Certificate",
        Downlink::Crl { .. } => "Crl",
    }
}
