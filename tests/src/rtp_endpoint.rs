//! A media endpoint that sends paced RTP and counts what comes back, by source address.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

const PAYLOAD_LEN: usize = 160; // 20 ms of PCMU
const HEADER_LEN: usize = 12;
const PT_PCMU: u8 = 0;

/// A bound UDP socket speaking minimal RTP (PCMU, fixed SSRC).
#[derive(Debug)]
pub struct RtpEndpoint {
    sock: UdpSocket,
    ssrc: u32,
}

/// What one endpoint saw during [`RtpEndpoint::exchange`].
#[derive(Debug, Default, Clone)]
pub struct RtpReport {
    /// Packets sent.
    pub sent: u64,
    /// RTP packets received carrying the expected SSRC, per source address.
    pub received_from: BTreeMap<SocketAddr, u64>,
    /// Datagrams that were not RTP from the expected SSRC.
    pub unexpected: u64,
}

impl RtpReport {
    /// All expected packets received, from any source.
    pub fn received(&self) -> u64 {
        self.received_from.values().sum()
    }
}

impl RtpEndpoint {
    /// Binds on `ip`, port chosen by the kernel.
    pub fn bind(ip: IpAddr, ssrc: u32) -> Result<Self> {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding an RTP socket on {ip}"))?;
        Ok(Self { sock, ssrc })
    }

    /// The address peers should send to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.sock
            .local_addr()
            .context("reading the RTP socket address")
    }

    /// The SSRC this endpoint sends with.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Sends `count` packets to `dest`, one per `interval`, while receiving; keeps receiving for
    /// `linger` after the last one. Received packets count only if they carry `expect_ssrc`.
    pub fn exchange(
        &self,
        dest: SocketAddr,
        count: u64,
        interval: Duration,
        linger: Duration,
        expect_ssrc: u32,
    ) -> Result<RtpReport> {
        let mut report = RtpReport::default();
        let mut buf = [0u8; 2048];
        let start = Instant::now();
        let mut next_send = start;
        let end_of_sending = start + interval * u32::try_from(count).unwrap_or(u32::MAX);
        let end = end_of_sending + linger;
        loop {
            let now = Instant::now();
            if report.sent < count && now >= next_send {
                let packet = self.packet(report.sent);
                self.sock
                    .send_to(&packet, dest)
                    .with_context(|| format!("sending RTP to {dest}"))?;
                report.sent += 1;
                next_send += interval;
                continue;
            }
            if now >= end && report.sent >= count {
                return Ok(report);
            }
            let wake = if report.sent < count { next_send } else { end };
            let wait = wake
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            self.sock
                .set_read_timeout(Some(wait))
                .context("setting RTP timeout")?;
            match self.sock.recv_from(&mut buf) {
                Ok((len, from)) => {
                    let datagram = buf.get(..len).unwrap_or_default();
                    if ssrc_of(datagram) == Some(expect_ssrc) {
                        *report.received_from.entry(from).or_default() += 1;
                    } else {
                        report.unexpected += 1;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e).context("receiving RTP"),
            }
        }
    }

    fn packet(&self, index: u64) -> Vec<u8> {
        let seq = (index & 0xffff) as u16;
        let ts = (index as u32).wrapping_mul(PAYLOAD_LEN as u32);
        let mut p = Vec::with_capacity(HEADER_LEN + PAYLOAD_LEN);
        p.push(0x80); // version 2, no padding, no extension, no CSRC
        p.push(PT_PCMU);
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.resize(HEADER_LEN + PAYLOAD_LEN, 0xff); // PCMU silence
        p
    }
}

/// The SSRC of an RTP version-2 packet.
fn ssrc_of(datagram: &[u8]) -> Option<u32> {
    if datagram.len() < HEADER_LEN || datagram.first()? >> 6 != 2 {
        return None;
    }
    let bytes: [u8; 4] = datagram.get(8..12)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}
