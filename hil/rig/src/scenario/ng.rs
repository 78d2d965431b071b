//! The few NG (rtpengine control protocol) requests the scenarios need — ping, offer, answer —
//! with a bencode codec of their own: the benchmark creates one call and must not depend on the
//! load generator's internals.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use super::error::{BenchError, Result};

/// A bencode value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ben {
    /// Byte string.
    Bytes(Vec<u8>),
    /// Integer.
    Int(i64),
    /// List.
    List(Vec<Ben>),
    /// Dictionary, in wire order.
    Dict(Vec<(Vec<u8>, Ben)>),
}

/// Nesting accepted when decoding; NG replies are two levels deep.
const MAX_DEPTH: usize = 16;

impl Ben {
    /// A dictionary of string values (keys sorted, as bencode requires).
    pub fn str_dict(pairs: &[(&str, &str)]) -> Ben {
        let mut v: Vec<(Vec<u8>, Ben)> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Ben::Bytes(v.as_bytes().to_vec())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ben::Dict(v)
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Ben::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Ben::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Ben::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Ben::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Ben::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes one value from the whole of `input`; `None` if malformed or trailing bytes.
    pub fn decode(input: &[u8]) -> Option<Ben> {
        let (v, rest) = decode_at(input, 0)?;
        rest.is_empty().then_some(v)
    }

    /// The value of `key` in a dictionary.
    pub fn get(&self, key: &str) -> Option<&Ben> {
        match self {
            Ben::Dict(d) => d.iter().find(|(k, _)| k == key.as_bytes()).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A byte string as UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Ben::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

fn decode_at(input: &[u8], depth: usize) -> Option<(Ben, &[u8])> {
    if depth > MAX_DEPTH {
        return None;
    }
    let (&first, rest) = input.split_first()?;
    match first {
        b'i' => {
            let end = rest.iter().position(|&c| c == b'e')?;
            let n = std::str::from_utf8(rest.get(..end)?).ok()?.parse().ok()?;
            Some((Ben::Int(n), rest.get(end + 1..)?))
        }
        b'l' | b'd' => {
            let mut rest = rest;
            let mut list = Vec::new();
            let mut dict = Vec::new();
            loop {
                if let Some(after) = rest.strip_prefix(b"e") {
                    let v = if first == b'l' {
                        Ben::List(list)
                    } else {
                        Ben::Dict(dict)
                    };
                    return Some((v, after));
                }
                if first == b'l' {
                    let (v, r) = decode_at(rest, depth + 1)?;
                    list.push(v);
                    rest = r;
                } else {
                    let (Ben::Bytes(k), r) = decode_at(rest, depth + 1)? else {
                        return None;
                    };
                    let (v, r) = decode_at(r, depth + 1)?;
                    dict.push((k, v));
                    rest = r;
                }
            }
        }
        b'0'..=b'9' => {
            let colon = input.iter().position(|&c| c == b':')?;
            let len: usize = std::str::from_utf8(input.get(..colon)?)
                .ok()?
                .parse()
                .ok()?;
            let start = colon + 1;
            let bytes = input.get(start..start.checked_add(len)?)?;
            Some((Ben::Bytes(bytes.to_vec()), input.get(start + len..)?))
        }
        _ => None,
    }
}

/// SDP for one PCMU 20 ms audio endpoint at `addr`.
pub fn endpoint_sdp(addr: SocketAddrV4, session_id: u64) -> String {
    let (ip, port) = (addr.ip(), addr.port());
    format!(
        "v=0\r\no=- {session_id} 1 IN IP4 {ip}\r\ns=failover-bench\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// Where the first audio stream of `sdp` wants media (media-level `c=` over session-level).
pub fn audio_destination(sdp: &str) -> Option<SocketAddrV4> {
    let (mut session_ip, mut media_ip, mut port) = (None, None, None);
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(rest) = line.strip_prefix("m=") {
            if port.is_some() {
                break;
            }
            let mut f = rest.split_ascii_whitespace();
            if f.next() == Some("audio") {
                port = f.next().and_then(|p| p.parse::<u16>().ok());
            }
        } else if let Some(rest) = line.strip_prefix("c=IN IP4 ") {
            let ip = rest.split('/').next().and_then(|a| a.trim().parse().ok());
            if port.is_some() {
                media_ip = ip;
            } else {
                session_ip = ip;
            }
        }
    }
    Some(SocketAddrV4::new(media_ip.or(session_ip)?, port?))
}

/// An NG client on UDP. Create it inside the relay's namespace.
#[derive(Debug)]
pub struct Ng {
    sock: UdpSocket,
    next_cookie: u64,
}

/// Retransmissions of one request (same cookie: the relay answers a repeat from its cache).
const ATTEMPTS: u32 = 10;
/// Wait per attempt.
const ATTEMPT_WAIT: Duration = Duration::from_millis(300);

impl Ng {
    /// A socket on loopback connected to the relay's NG address.
    pub fn connect(ng: SocketAddr) -> Result<Ng> {
        let what = |e| BenchError::io(format!("NG socket toward {ng}"), e);
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(what)?;
        sock.connect(ng).map_err(what)?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(what)?;
        Ok(Ng {
            sock,
            next_cookie: 0,
        })
    }

    /// Sends `body` and returns the reply's dictionary; `attempts` transmissions at most.
    pub fn request_with(&mut self, body: &Ben, attempts: u32) -> Result<Ben> {
        self.next_cookie += 1;
        let cookie = format!("fb{}_{}", std::process::id(), self.next_cookie);
        let mut dgram = format!("{cookie} ").into_bytes();
        body.encode(&mut dgram);
        let mut buf = vec![0u8; 65_535];
        for _ in 0..attempts {
            // A send error (relay not yet listening) is retried like a lost datagram.
            let _ = self.sock.send(&dgram);
            let until = Instant::now() + ATTEMPT_WAIT;
            while Instant::now() < until {
                let Ok(n) = self.sock.recv(&mut buf) else {
                    continue;
                };
                let reply = buf.get(..n).unwrap_or_default();
                let Some(space) = reply.iter().position(|&c| c == b' ') else {
                    continue;
                };
                if reply.get(..space) != Some(cookie.as_bytes()) {
                    continue; // a late answer to an earlier request
                }
                return reply
                    .get(space + 1..)
                    .and_then(Ben::decode)
                    .ok_or(BenchError::Protocol {
                        service: "popd relay",
                        detail: "NG reply is not a bencode dictionary".into(),
                    });
            }
        }
        Err(BenchError::Timeout {
            what: "an NG reply from popd relay".into(),
            limit_ms: u64::from(attempts) * 300,
            logs: "the relay's log".into(),
        })
    }

    /// `ping` until `pong`, at most `limit`.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let attempts = u32::try_from(limit.as_millis() / 300).unwrap_or(1).max(1);
        let reply = self.request_with(&Ben::str_dict(&[("command", "ping")]), attempts)?;
        match reply.get("result").and_then(Ben::as_str) {
            Some("pong") => Ok(()),
            other => Err(BenchError::Protocol {
                service: "popd relay",
                detail: format!("ping answered {other:?}"),
            }),
        }
    }

    /// Offer from `caller`, answer from `callee`; returns (where the caller sends, where the
    /// callee sends).
    pub fn call(
        &mut self,
        call_id: &str,
        caller: SocketAddrV4,
        callee: SocketAddrV4,
    ) -> Result<(SocketAddrV4, SocketAddrV4)> {
        let offer_sdp = endpoint_sdp(caller, 1);
        let offer = Ben::str_dict(&[
            ("command", "offer"),
            ("call-id", call_id),
            ("from-tag", "caller"),
            ("sdp", &offer_sdp),
        ]);
        let callee_sends_to = self.sdp_destination("offer", &offer)?;
        let answer_sdp = endpoint_sdp(callee, 2);
        let answer = Ben::str_dict(&[
            ("command", "answer"),
            ("call-id", call_id),
            ("from-tag", "caller"),
            ("to-tag", "callee"),
            ("sdp", &answer_sdp),
        ]);
        let caller_sends_to = self.sdp_destination("answer", &answer)?;
        Ok((caller_sends_to, callee_sends_to))
    }

    fn sdp_destination(&mut self, command: &str, body: &Ben) -> Result<SocketAddrV4> {
        let reply = self.request_with(body, ATTEMPTS)?;
        let result = reply.get("result").and_then(Ben::as_str);
        if result != Some("ok") {
            let reason = reply
                .get("error-reason")
                .and_then(Ben::as_str)
                .unwrap_or("no reason given");
            return Err(BenchError::Protocol {
                service: "popd relay",
                detail: format!("{command} refused ({result:?}): {reason}"),
            });
        }
        reply
            .get("sdp")
            .and_then(Ben::as_str)
            .and_then(audio_destination)
            .ok_or(BenchError::Protocol {
                service: "popd relay",
                detail: format!("{command} reply has no usable audio address in its SDP"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencode_round_trip() {
        let d = Ben::str_dict(&[("sdp", "v=0"), ("command", "offer")]);
        let mut out = Vec::new();
        d.encode(&mut out);
        assert_eq!(out, b"d7:command5:offer3:sdp3:v=0e");
        assert_eq!(Ben::decode(&out), Some(d));
        let nested = b"d6:resultl2:oki-5ee1:xi7ee";
        let v = Ben::decode(nested).unwrap_or(Ben::Int(0));
        assert_eq!(v.get("x"), Some(&Ben::Int(7)));
    }

    #[test]
    fn malformed_bencode_is_refused() {
        for bad in [
            &b"d3:abc"[..],
            b"5:ab",
            b"i12",
            b"x",
            b"d1:ai1ee1",
            b"99999999999999999999:",
        ] {
            assert_eq!(Ben::decode(bad), None, "{bad:?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n(b'l', 100)
            .chain(std::iter::repeat_n(b'e', 100))
            .collect();
        assert_eq!(Ben::decode(&deep), None);
    }

    #[test]
    fn sdp_destination_prefers_media_level_address() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 30000 RTP/AVP 0\r\nc=IN IP4 203.0.113.1\r\n";
        assert_eq!(
            audio_destination(sdp),
            Some(
                "203.0.113.1:30000"
                    .parse()
                    .unwrap_or(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0))
            )
        );
        assert_eq!(audio_destination("v=0\r\n"), None);
    }
}
