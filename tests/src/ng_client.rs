//! A minimal NG control client: `<cookie> <bencode dict>` over UDP, retransmitted until answered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pop_wire::bencode::{self, Value};
use rand::Rng;

/// Sends the same datagram again (same cookie, so the relay answers from its reply cache) when
/// no answer came within this long.
const RETRANSMIT_EVERY: Duration = Duration::from_millis(500);
/// Gives up on a request after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DATAGRAM: usize = 65_535;

/// NG client bound to an ephemeral loopback port.
#[derive(Debug)]
pub struct NgClient {
    sock: UdpSocket,
    server: SocketAddr,
}

impl NgClient {
    /// A client for the NG server at `server`.
    pub fn new(server: SocketAddr) -> Result<Self> {
        let local: IpAddr = if server.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        };
        let sock = UdpSocket::bind(SocketAddr::new(local, 0)).context("binding the NG client")?;
        Ok(Self { sock, server })
    }

    /// Sends `msg` (a dictionary with `command`) and returns the reply dictionary.
    ///
    /// Replies with another cookie (late answers to earlier requests) are ignored.
    pub fn request(&self, msg: &Value) -> Result<Value> {
        let cookie = format!("{:016x}", rand::thread_rng().gen::<u64>());
        let mut datagram = cookie.clone().into_bytes();
        datagram.push(b' ');
        msg.encode(&mut datagram);
        let command = msg
            .dict_get("command")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();

        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while Instant::now() < deadline {
            self.sock
                .send_to(&datagram, self.server)
                .with_context(|| format!("sending NG {command} to {}", self.server))?;
            let resend_at = (Instant::now() + RETRANSMIT_EVERY).min(deadline);
            while let Some(left) = resend_at.checked_duration_since(Instant::now()) {
                if left.is_zero() {
                    break;
                }
                self.sock
                    .set_read_timeout(Some(left))
                    .context("setting timeout")?;
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
                    Err(e) => return Err(e).context("receiving an NG reply"),
                };
                if from != self.server {
                    continue;
                }
                let reply = buf.get(..len).unwrap_or_default();
                let Some(space) = reply.iter().position(|b| *b == b' ') else {
                    bail!("NG reply to {command} has no cookie separator");
                };
                if reply.get(..space) != Some(cookie.as_bytes()) {
                    continue;
                }
                let body = reply.get(space + 1..).unwrap_or_default();
                return bencode::decode(body)
                    .map_err(|e| anyhow!("NG reply to {command} is not bencode: {e}"));
            }
        }
        bail!(
            "no NG reply to {command} from {} within {REQUEST_TIMEOUT:?}",
            self.server
        )
    }

    /// `ping`, expecting `pong`.
    pub fn ping(&self) -> Result<()> {
        let reply = self.request(&Value::dict([("command", Value::str("ping"))]))?;
        match reply.dict_get("result").and_then(Value::as_str) {
            Some("pong") => Ok(()),
            other => bail!("NG ping answered {other:?}, expected \"pong\""),
        }
    }

    /// `query` for one call; returns the whole reply (result `ok` or `error`).
    pub fn query(&self, call_id: &str) -> Result<Value> {
        self.request(&Value::dict([
            ("command", Value::str("query")),
            ("call-id", Value::str(call_id)),
        ]))
    }

    /// `list`: the call-ids the relay knows.
    pub fn list_calls(&self) -> Result<Vec<String>> {
        let reply = self.request(&Value::dict([("command", Value::str("list"))]))?;
        if reply.dict_get("result").and_then(Value::as_str) != Some("ok") {
            bail!("NG list failed: {}", describe_error(&reply));
        }
        let calls = reply
            .dict_get("calls")
            .and_then(Value::as_list)
            .ok_or_else(|| anyhow!("NG list reply has no \"calls\" list"))?;
        Ok(calls
            .iter()
            .filter_map(|c| c.as_bytes())
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect())
    }
}

/// `result` and `error-reason` of a reply, for messages.
pub fn describe_error(reply: &Value) -> String {
    let result = reply
        .dict_get("result")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let reason = reply
        .dict_get("error-reason")
        .and_then(Value::as_str)
        .unwrap_or("");
    format!("result={result:?} error-reason={reason:?}")
}
