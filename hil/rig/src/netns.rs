//! Doing things inside a rig namespace from this process: a fresh thread joins the namespace
//! (`setns`), so sockets it creates belong there and stay there wherever they are used.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

use crate::error::{Result, RigError};

/// Path of a named network namespace (as `ip netns add` creates it).
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// Runs `f` on a new thread that has joined namespace `ns`; returns its result.
pub fn in_namespace<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = netns_path(ns);
    let file =
        File::open(&path).map_err(|e| RigError::io(format!("opening {}", path.display()), e))?;
    let handle = std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| RigError::io(format!("joining {}", path.display()), e.into()))?;
            Ok(f())
        })
        .map_err(|e| RigError::io("spawning a namespace thread", e))?;
    handle
        .join()
        .map_err(|_| RigError::Usage(format!("the closure run in namespace {ns} panicked")))?
}

/// A UDP socket bound to `addr` inside namespace `ns`.
pub fn udp_socket_in(ns: &str, addr: SocketAddr) -> Result<UdpSocket> {
    in_namespace(ns, move || UdpSocket::bind(addr))?
        .map_err(|e| RigError::io(format!("binding UDP {addr} in {ns}"), e))
}

/// Outcome of a one-way UDP probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResult {
    /// Datagrams sent.
    pub sent: u32,
    /// Datagrams received (each counted once, matched by sequence number and run nonce).
    pub received: u32,
}

impl ProbeResult {
    /// Whether anything arrived.
    pub fn any(&self) -> bool {
        self.received > 0
    }

    /// Whether everything arrived.
    pub fn all(&self) -> bool {
        self.received == self.sent
    }
}

/// Sends `count` datagrams from `tx` to `rx`'s address, `gap` apart, and counts what `rx`
/// receives until all arrived or `linger` passed after the last send.
pub fn probe(
    tx: &UdpSocket,
    rx: &UdpSocket,
    count: u32,
    gap: Duration,
    linger: Duration,
) -> Result<ProbeResult> {
    let dst = rx
        .local_addr()
        .map_err(|e| RigError::io("reading the probe receiver's address", e))?;
    let nonce: u64 = rand::random();
    rx.set_nonblocking(true)
        .map_err(|e| RigError::io("setting the probe receiver non-blocking", e))?;
    let mut seen = vec![false; usize::try_from(count).unwrap_or(0)];
    let mut received = 0u32;
    let mut buf = [0u8; 64];
    let mut drain = |seen: &mut Vec<bool>, received: &mut u32| {
        while let Ok(n) = rx.recv(&mut buf) {
            let Some(payload) = buf.get(..n) else {
                continue;
            };
            let (Some(n_bytes), Some(s_bytes)) = (payload.get(..8), payload.get(8..12)) else {
                continue;
            };
            let mut nb = [0u8; 8];
            nb.copy_from_slice(n_bytes);
            let mut sb = [0u8; 4];
            sb.copy_from_slice(s_bytes);
            if u64::from_be_bytes(nb) != nonce {
                continue;
            }
            let seq = u32::from_be_bytes(sb);
            if let Some(slot) = usize::try_from(seq).ok().and_then(|i| seen.get_mut(i)) {
                if !*slot {
                    *slot = true;
                    *received += 1;
                }
            }
        }
    };
    for seq in 0..count {
        let mut msg = [0u8; 12];
        msg[..8].copy_from_slice(&nonce.to_be_bytes());
        msg[8..].copy_from_slice(&seq.to_be_bytes());
        // Unreachable destinations give ICMP errors on later sends: those are results, not
        // failures of the probe.
        let _ = tx.send_to(&msg, dst);
        drain(&mut seen, &mut received);
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    let deadline = Instant::now() + linger;
    while received < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        drain(&mut seen, &mut received);
    }
    Ok(ProbeResult {
        sent: count,
        received,
    })
}
