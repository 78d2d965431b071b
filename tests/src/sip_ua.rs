//! Just enough SIP over UDP to play two scripted user agents through a proxy.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// A parsed or to-be-sent SIP message. Header order is kept; `Content-Length` is computed on
/// send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    /// `INVITE sip:b@… SIP/2.0` or `SIP/2.0 200 OK`.
    pub start_line: String,
    /// Name/value pairs in order, names as written.
    pub headers: Vec<(String, String)>,
    /// The body (SDP here).
    pub body: String,
}

impl SipMessage {
    /// A request with no headers yet.
    pub fn request(method: &str, uri: &str) -> Self {
        Self {
            start_line: format!("{method} {uri} SIP/2.0"),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// A response to `req` that copies Via, From, To, Call-ID and CSeq, as RFC 3261 §8.2.6.2
    /// requires; `to_tag` is added to To when given and To has none.
    pub fn response_to(req: &SipMessage, code: u16, reason: &str, to_tag: Option<&str>) -> Self {
        let mut resp = Self {
            start_line: format!("SIP/2.0 {code} {reason}"),
            headers: Vec::new(),
            body: String::new(),
        };
        for (name, value) in &req.headers {
            let lower = name.to_ascii_lowercase();
            if !matches!(lower.as_str(), "via" | "from" | "to" | "call-id" | "cseq") {
                continue;
            }
            let value = match (lower.as_str(), to_tag) {
                ("to", Some(tag)) if !value.contains(";tag=") => format!("{value};tag={tag}"),
                _ => value.clone(),
            };
            resp.headers.push((name.clone(), value));
        }
        resp
    }

    /// Appends a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets an SDP body.
    pub fn with_sdp(mut self, sdp: &str) -> Self {
        self.headers
            .push(("Content-Type".to_owned(), "application/sdp".to_owned()));
        self.body = sdp.to_owned();
        self
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The method of a request, or the CSeq method of a response.
    pub fn method(&self) -> Option<&str> {
        if self.start_line.starts_with("SIP/2.0 ") {
            self.header("CSeq")?.split_whitespace().nth(1)
        } else {
            self.start_line.split_whitespace().next()
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        self.start_line
            .strip_prefix("SIP/2.0 ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Wire form, with `Content-Length`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start_line);
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            let _ = write!(out, "{name}: {value}\r\n");
        }
        let _ = write!(
            out,
            "Content-Length: {}\r\n\r\n{}",
            self.body.len(),
            self.body
        );
        out.into_bytes()
    }

    /// Parses one datagram.
    pub fn parse(datagram: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(datagram).context("SIP message is not UTF-8")?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("SIP message has no end of headers"))?;
        let mut lines = head.split("\r\n");
        let start_line = lines
            .next()
            .ok_or_else(|| anyhow!("empty SIP message"))?
            .to_owned();
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| anyhow!("SIP header line without colon: {line:?}"))?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(Self {
            start_line,
            headers,
            body: body.to_owned(),
        })
    }
}

/// A UDP SIP transport for one scripted user agent.
#[derive(Debug)]
pub struct SipSocket {
    sock: UdpSocket,
}

impl SipSocket {
    /// Binds on `ip`, port chosen by the kernel.
    pub fn bind(ip: IpAddr) -> Result<Self> {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding a SIP socket on {ip}"))?;
        Ok(Self { sock })
    }

    /// Its address (for Via and Contact).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.sock
            .local_addr()
            .context("reading the SIP socket address")
    }

    /// Sends `msg` to `to`.
    pub fn send(&self, msg: &SipMessage, to: SocketAddr) -> Result<()> {
        self.sock
            .send_to(&msg.to_bytes(), to)
            .with_context(|| format!("sending SIP {:?} to {to}", msg.start_line))?;
        Ok(())
    }

    /// Receives until a message satisfies `wanted` (provisional responses and retransmissions in
    /// between are dropped), or fails after `timeout` naming `what`.
    pub fn recv_until(
        &self,
        what: &str,
        timeout: Duration,
        mut wanted: impl FnMut(&SipMessage) -> bool,
    ) -> Result<(SipMessage, SocketAddr)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_535];
        let mut skipped = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            self.sock
                .set_read_timeout(Some(left))
                .context("setting SIP timeout")?;
            let (len, from) = match self.sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e).context("receiving SIP"),
            };
            let msg = SipMessage::parse(buf.get(..len).unwrap_or_default())?;
            if wanted(&msg) {
                return Ok((msg, from));
            }
            skipped.push(msg.start_line);
        }
        bail!("no {what} within {timeout:?} (received instead: {skipped:?})")
    }
}

/// An audio-only SDP offer/answer body for `rtp` (PCMU + telephone-event).
pub fn audio_sdp(user: &str, session_id: u64, rtp: SocketAddr) -> String {
    let fam = if rtp.is_ipv4() { "IP4" } else { "IP6" };
    let ip = rtp.ip();
    format!(
        "v=0\r\no={user} {session_id} 1 IN {fam} {ip}\r\ns=-\r\nc=IN {fam} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\na=ptime:20\r\n",
        port = rtp.port()
    )
}

/// Where the first audio stream of `sdp` wants media: media-level `c=` over session-level.
pub fn audio_target(sdp: &str) -> Result<SocketAddr> {
    let mut session_ip: Option<IpAddr> = None;
    let mut audio_port: Option<u16> = None;
    let mut media_ip: Option<IpAddr> = None;
    let mut in_audio = false;
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            if audio_port.is_some() {
                break; // only the first audio stream
            }
            in_audio = m.starts_with("audio ");
            if in_audio {
                let port = m
                    .split_whitespace()
                    .nth(1)
                    .ok_or_else(|| anyhow!("m= line without port: {line:?}"))?;
                audio_port = Some(port.parse().with_context(|| format!("port in {line:?}"))?);
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let ip: IpAddr = c
                .split_whitespace()
                .nth(2)
                .ok_or_else(|| anyhow!("c= line without address: {line:?}"))?
                .parse()
                .with_context(|| format!("address in {line:?}"))?;
            if audio_port.is_none() && !in_audio {
                session_ip = Some(ip);
            } else if in_audio {
                media_ip = Some(ip);
            }
        }
    }
    let port = audio_port.ok_or_else(|| anyhow!("SDP has no audio stream"))?;
    let ip = media_ip
        .or(session_ip)
        .ok_or_else(|| anyhow!("SDP has no c= for its audio stream"))?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_level_connection_wins() -> Result<()> {
        let sdp = "v=0\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 127.0.0.1\r\n";
        assert_eq!(audio_target(sdp)?, "127.0.0.1:4000".parse()?);
        let sdp = "v=0\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(audio_target(sdp)?, "192.0.2.1:4000".parse()?);
        Ok(())
    }

    #[test]
    fn response_copies_dialog_headers_and_adds_to_tag() -> Result<()> {
        let req = SipMessage::request("INVITE", "sip:b@127.0.0.1")
            .with_header("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1")
            .with_header("Via", "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK2")
            .with_header("To", "<sip:b@127.0.0.1>")
            .with_header("Max-Forwards", "70");
        let parsed = SipMessage::parse(&req.to_bytes())?;
        let resp = SipMessage::response_to(&parsed, 200, "OK", Some("b1"));
        assert_eq!(resp.headers.len(), 3);
        assert_eq!(resp.header("To"), Some("<sip:b@127.0.0.1>;tag=b1"));
        assert_eq!(resp.status(), Some(200));
        Ok(())
    }
}
