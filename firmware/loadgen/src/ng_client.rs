//! NG (rtpengine control protocol) client: `<cookie> <bencode dict>` over UDP, with a window of
//! outstanding requests so session setup is measured as a signalling proxy would drive it, and
//! retransmission with the same cookie (relays cache replies by cookie).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use pop_wire::bencode::{self, Value};

use crate::error::{LoadgenError, Result};
use crate::sdp_text::{audio_destination, endpoint_sdp, SdpOptions};

/// How long to wait for a reply before retransmitting.
const RETRANSMIT_AFTER: Duration = Duration::from_millis(1_000);
/// Transmissions of one request before giving up.
const MAX_ATTEMPTS: u32 = 4;
/// Largest NG datagram accepted.
const MAX_REPLY: usize = 65_535;

/// One call to create: ids and the load generator's two endpoints.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// Call-ID (generated, no personal data).
    pub call_id: String,
    /// Caller's tag.
    pub from_tag: String,
    /// Callee's tag.
    pub to_tag: String,
    /// Caller's media address (offered).
    pub caller: SocketAddrV4,
    /// Callee's media address (answered).
    pub callee: SocketAddrV4,
}

/// Where each side of a created session must send its media: the relay's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRoute {
    /// Relay address the caller sends to (from the answer's rewritten SDP).
    pub caller_sends_to: SocketAddrV4,
    /// Relay address the callee sends to (from the offer's rewritten SDP).
    pub callee_sends_to: SocketAddrV4,
}

/// Result of creating a batch of sessions.
#[derive(Debug, Clone)]
pub struct SetupOutcome {
    /// Routes, in the order of the specs.
    pub routes: Vec<SessionRoute>,
    /// Wall time from first offer to last answer reply.
    pub elapsed: Duration,
}

impl SetupOutcome {
    /// Offer+answer pairs completed per second.
    pub fn pairs_per_s(&self) -> f64 {
        self.routes.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Pending {
    job: usize,
    command: &'static str,
    datagram: Vec<u8>,
    sent_at: Instant,
    attempts: u32,
}

/// A client of one relay's NG socket.
#[derive(Debug)]
pub struct NgClient {
    sock: UdpSocket,
    ng: SocketAddr,
    cookie_prefix: String,
    next_cookie: u64,
    rx: Vec<u8>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("command", &self.command)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl NgClient {
    /// Opens a UDP socket towards the relay's NG address.
    pub fn connect(ng: SocketAddr) -> Result<Self> {
        let sock =
            UdpSocket::bind("127.0.0.1:0").map_err(|e| LoadgenError::sys("bind NG socket", e))?;
        sock.connect(ng)
            .map_err(|e| LoadgenError::sys("connect NG socket", e))?;
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .map_err(|e| LoadgenError::sys("set NG socket timeout", e))?;
        Ok(Self {
            sock,
            ng,
            cookie_prefix: format!("lg{:x}_{:x}_", std::process::id(), rand::random::<u32>()),
            next_cookie: 0,
            rx: vec![0; MAX_REPLY],
        })
    }

    fn cookie(&mut self) -> String {
        self.next_cookie += 1;
        format!("{}{}", self.cookie_prefix, self.next_cookie)
    }

    /// Sends one request and waits for its reply (with retransmission).
    pub fn request(&mut self, command: &'static str, body: Value) -> Result<Value> {
        let mut reply = None;
        let mut body = Some(body);
        self.run_pipeline(
            1,
            1,
            |_| (command, body.take().unwrap_or_else(|| Value::dict([]))),
            |_, _, v| {
                reply = Some(v.clone());
                Ok(None)
            },
        )?;
        reply.ok_or(LoadgenError::NgTimeout {
            command,
            ng: self.ng,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// `ping`; true if the relay answered `pong`. Waits at most `wait` and never retransmits,
    /// so it doubles as a readiness probe.
    pub fn ping_once(&mut self, wait: Duration) -> bool {
        let cookie = self.cookie();
        let mut dgram = format!("{cookie} ").into_bytes();
        dgram.extend(Value::dict([("command", Value::str("ping"))]).to_bytes());
        if self.sock.send(&dgram).is_err() {
            return false;
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match self.sock.recv(&mut self.rx) {
                Ok(n) => {
                    if let Some((c, v)) = self.rx.get(..n).and_then(split_reply) {
                        if c == cookie.as_bytes() {
                            return v.dict_get("result").and_then(Value::as_str) == Some("pong");
                        }
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// NG `statistics` reply.
    pub fn statistics(&mut self) -> Result<Value> {
        let v = self.request(
            "statistics",
            Value::dict([("command", Value::str("statistics"))]),
        )?;
        check_ok("statistics", &v)?;
        Ok(v)
    }

    /// Creates sessions with offer+answer, keeping `window` requests outstanding.
    pub fn setup_sessions(
        &mut self,
        specs: &[SessionSpec],
        window: usize,
        opts: SdpOptions,
    ) -> Result<SetupOutcome> {
        let mut callee_dest: Vec<Option<SocketAddrV4>> = vec![None; specs.len()];
        let mut caller_dest: Vec<Option<SocketAddrV4>> = vec![None; specs.len()];
        let started = Instant::now();
        self.run_pipeline(
            specs.len(),
            window,
            |job| {
                let s = specs.get(job);
                (
                    "offer",
                    s.map_or_else(|| Value::dict([]), |s| offer_body(s, job, opts)),
                )
            },
            |job, command, reply| {
                check_ok(command, reply)?;
                let dest = reply_destination(command, reply)?;
                let Some(spec) = specs.get(job) else {
                    return Ok(None);
                };
                if command == "offer" {
                    if let Some(d) = callee_dest.get_mut(job) {
                        *d = Some(dest);
                    }
                    Ok(Some(("answer", answer_body(spec, job, opts))))
                } else {
                    if let Some(d) = caller_dest.get_mut(job) {
                        *d = Some(dest);
                    }
                    Ok(None)
                }
            },
        )?;
        let elapsed = started.elapsed();
        let routes = caller_dest
            .into_iter()
            .zip(callee_dest)
            .map(|(a, b)| match (a, b) {
                (Some(caller_sends_to), Some(callee_sends_to)) => Ok(SessionRoute {
                    caller_sends_to,
                    callee_sends_to,
                }),
                _ => Err(LoadgenError::NgRefused {
                    command: "answer",
                    reason: "a session completed without both media addresses".into(),
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SetupOutcome { routes, elapsed })
    }

    /// Deletes sessions, keeping `window` requests outstanding. A relay answering "call not
    /// found" is an error: the benchmark only deletes what it created.
    pub fn delete_sessions(&mut self, specs: &[SessionSpec], window: usize) -> Result<Duration> {
        let started = Instant::now();
        self.run_pipeline(
            specs.len(),
            window,
            |job| {
                let body = specs.get(job).map_or_else(
                    || Value::dict([]),
                    |s| {
                        Value::dict([
                            ("command", Value::str("delete")),
                            ("call-id", Value::str(&s.call_id)),
                            ("from-tag", Value::str(&s.from_tag)),
                        ])
                    },
                );
                ("delete", body)
            },
            |_, command, reply| {
                check_ok(command, reply)?;
                Ok(None)
            },
        )?;
        Ok(started.elapsed())
    }

    /// Runs `jobs` request chains with at most `window` outstanding. `start(job)` gives a
    /// chain's first request; `on_reply` gives its next one or `None` when the chain is done.
    fn run_pipeline(
        &mut self,
        jobs: usize,
        window: usize,
        mut start: impl FnMut(usize) -> (&'static str, Value),
        mut on_reply: impl FnMut(usize, &'static str, &Value) -> Result<Option<(&'static str, Value)>>,
    ) -> Result<()> {
        let window = window.max(1);
        let mut pending: HashMap<Vec<u8>, Pending> = HashMap::with_capacity(window * 2);
        let mut next_job = 0;
        let mut done = 0;
        while done < jobs {
            while pending.len() < window && next_job < jobs {
                let (command, body) = start(next_job);
                self.send_new(&mut pending, next_job, command, &body)?;
                next_job += 1;
            }
            match self.sock.recv(&mut self.rx) {
                Ok(n) => {
                    let Some((cookie, value)) = self.rx.get(..n).and_then(split_reply) else {
                        continue; // not an NG reply: ignore, the timeout logic covers loss
                    };
                    let Some(p) = pending.remove(cookie) else {
                        continue; // reply to a retransmission already answered
                    };
                    match on_reply(p.job, p.command, &value)? {
                        Some((command, body)) => {
                            self.send_new(&mut pending, p.job, command, &body)?
                        }
                        None => done += 1,
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(LoadgenError::sys("receive NG reply", e)),
            }
            let now = Instant::now();
            for p in pending.values_mut() {
                if now.duration_since(p.sent_at) < RETRANSMIT_AFTER {
                    continue;
                }
                if p.attempts >= MAX_ATTEMPTS {
                    return Err(LoadgenError::NgTimeout {
                        command: p.command,
                        ng: self.ng,
                        attempts: p.attempts,
                    });
                }
                self.sock
                    .send(&p.datagram)
                    .map_err(|e| LoadgenError::sys("send NG request", e))?;
                p.attempts += 1;
                p.sent_at = now;
            }
        }
        Ok(())
    }

    fn send_new(
        &mut self,
        pending: &mut HashMap<Vec<u8>, Pending>,
        job: usize,
        command: &'static str,
        body: &Value,
    ) -> Result<()> {
        let cookie = self.cookie();
        let mut datagram = Vec::with_capacity(cookie.len() + 600);
        datagram.extend_from_slice(cookie.as_bytes());
        datagram.push(b' ');
        body.encode(&mut datagram);
        self.sock
            .send(&datagram)
            .map_err(|e| LoadgenError::sys("send NG request", e))?;
        pending.insert(
            cookie.into_bytes(),
            Pending {
                job,
                command,
                datagram,
                sent_at: Instant::now(),
                attempts: 1,
            },
        );
        Ok(())
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Splits `<cookie> <bencode>`.
fn split_reply(dgram: &[u8]) -> Option<(&[u8], Value)> {
    let sp = dgram.iter().position(|&b| b == b' ')?;
    let cookie = dgram.get(..sp)?;
    let value = bencode::decode(dgram.get(sp + 1..)?).ok()?;
    Some((cookie, value))
}

fn check_ok(command: &'static str, reply: &Value) -> Result<()> {
    match reply.dict_get("result").and_then(Value::as_str) {
        Some("ok") | Some("pong") => Ok(()),
        Some(other) => {
            let why = reply
                .dict_get("error-reason")
                .and_then(Value::as_str)
                .unwrap_or("no error-reason given");
            Err(LoadgenError::NgRefused {
                command,
                reason: format!("result `{other}`: {why}"),
            })
        }
        None => Err(LoadgenError::NgRefused {
            command,
            reason: "reply has no `result`".into(),
        }),
    }
}

fn reply_destination(command: &'static str, reply: &Value) -> Result<SocketAddrV4> {
    let sdp = reply
        .dict_get("sdp")
        .and_then(Value::as_str)
        .ok_or_else(|| LoadgenError::NgRefused {
            command,
            reason: "reply has no SDP".into(),
        })?;
    audio_destination(sdp).ok_or_else(|| LoadgenError::NgRefused {
        command,
        reason: "reply SDP has no IPv4 audio address and port".into(),
    })
}

fn offer_body(s: &SessionSpec, job: usize, opts: SdpOptions) -> Value {
    Value::dict([
        ("command", Value::str("offer")),
        ("call-id", Value::str(&s.call_id)),
        ("from-tag", Value::str(&s.from_tag)),
        (
            "sdp",
            Value::str(&endpoint_sdp(s.caller, job as u64 * 2, opts)),
        ),
    ])
}

fn answer_body(s: &SessionSpec, job: usize, opts: SdpOptions) -> Value {
    Value::dict([
        ("command", Value::str("answer")),
        ("call-id", Value::str(&s.call_id)),
        ("from-tag", Value::str(&s.from_tag)),
        ("to-tag", Value::str(&s.to_tag)),
        (
            "sdp",
            Value::str(&endpoint_sdp(s.callee, job as u64 * 2 + 1, opts)),
        ),
    ])
}

/// Session specs with distinct ids: `{tag}-{index}` call-ids, so repeated runs and soak cycles
/// never collide.
pub fn session_specs(
    tag: &str,
    first_index: u64,
    endpoints: &[(SocketAddrV4, SocketAddrV4)],
) -> Vec<SessionSpec> {
    endpoints
        .iter()
        .enumerate()
        .map(|(i, &(caller, callee))| {
            let n = first_index + i as u64;
            SessionSpec {
                call_id: format!("{tag}-{n}"),
                from_tag: format!("a{n}"),
                to_tag: format!("b{n}"),
                caller,
                callee,
            }
        })
        .collect()
}

/// Integer leaves of a `statistics` reply, as `path.to.key` → value, for leak tracking.
pub fn integer_leaves(v: &Value) -> Vec<(String, i64)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, i64)>) {
        if let Some(i) = v.as_int() {
            out.push((prefix.to_string(), i));
        } else if let Some(d) = v.as_dict() {
            for (k, child) in d {
                let key = String::from_utf8_lossy(k);
                let path = if prefix.is_empty() {
                    key.into_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                walk(&path, child, out);
            }
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn reply_split_and_result_checked() {
        let (c, v) = split_reply(b"abc d6:result4:ponge").unwrap();
        assert_eq!(c, b"abc");
        check_ok("ping", &v).unwrap();
        let (_, v) = split_reply(b"x d6:result5:error12:error-reason4:nopee").unwrap();
        let e = check_ok("offer", &v).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        assert!(split_reply(b"nospace").is_none());
        assert!(split_reply(b"c notbencode").is_none());
    }

    #[test]
    fn pipeline_against_a_fake_relay_answers_offer_then_answer() {
        // A fake NG server that answers offers with port 20000 and answers with 20002, and drops
        // the first copy of every 3rd request to exercise retransmission.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            // Only first copies are dropped: dropping every 3rd datagram could keep hitting the
            // retransmissions of one request in lock step and fail it after all attempts.
            let mut first_copies = std::collections::HashSet::new();
            let mut answered = 0;
            while answered < 20 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                let (cookie, v) = split_reply(&buf[..n]).unwrap();
                if first_copies.insert(cookie.to_vec()) && first_copies.len() % 3 == 0 {
                    continue;
                }
                let cmd = v.dict_get("command").unwrap().as_str().unwrap();
                let port = if cmd == "offer" { 20000 } else { 20002 };
                let sdp = format!("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio {port} RTP/AVP 0\r\n");
                let mut out = cookie.to_vec();
                out.push(b' ');
                Value::dict([("result", Value::str("ok")), ("sdp", Value::str(&sdp))])
                    .encode(&mut out);
                server.send_to(&out, from).unwrap();
                answered += 1;
            }
        });
        let mut c = NgClient::connect(addr).unwrap();
        let ep = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 40000);
        let specs = session_specs("t", 0, &[(ep, ep); 10]);
        let out = c.setup_sessions(&specs, 4, SdpOptions::default()).unwrap();
        t.join().unwrap();
        assert_eq!(out.routes.len(), 10);
        for r in out.routes {
            assert_eq!(r.callee_sends_to.port(), 20000);
            assert_eq!(r.caller_sends_to.port(), 20002);
        }
    }

    #[test]
    fn statistics_leaves_flattened() {
        let v = Value::dict([(
            "statistics",
            Value::dict([(
                "currentstatistics",
                Value::dict([("sessionsown", Value::int(3))]),
            )]),
        )]);
        assert_eq!(
            integer_leaves(&v),
            vec![("statistics.currentstatistics.sessionsown".to_string(), 3)]
        );
    }
}
