//! Free loopback ports for the programs under test.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use rand::Rng;

/// Relay port ranges are drawn below the kernel's ephemeral range (32768+ by default) so that
/// sockets bound to port 0 elsewhere in the test cannot land inside them.
const RANGE_FLOOR: u16 = 10_000;
const RANGE_CEILING: u16 = 32_000;
const RANGE_ATTEMPTS: usize = 64;

/// Ranges handed out in this process and not yet probed by their relay: two relays started by
/// the same test must not get overlapping ranges.
static HANDED_OUT: Mutex<Vec<RangeInclusive<u16>>> = Mutex::new(Vec::new());

/// A UDP port that was free on `ip` a moment ago (bind to port 0, read it, release it).
pub fn free_udp_port(ip: IpAddr) -> Result<u16> {
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("binding a UDP socket on {ip}"))?;
    Ok(sock.local_addr().context("reading the bound port")?.port())
}

/// A block of `len` consecutive UDP ports, starting on an even port, all free on every address
/// in `ips`, not overlapping any block handed out before in this process.
pub fn free_udp_port_range(ips: &[IpAddr], len: u16) -> Result<RangeInclusive<u16>> {
    if !(2..=RANGE_CEILING - RANGE_FLOOR).contains(&len) {
        bail!("port range length {len} out of bounds");
    }
    let mut rng = rand::thread_rng();
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..RANGE_ATTEMPTS {
        let start = rng.gen_range(RANGE_FLOOR..=RANGE_CEILING - len) & !1;
        let range = start..=start + (len - 1);
        let overlaps = handed_out
            .iter()
            .any(|r| r.start() <= range.end() && range.start() <= r.end());
        if overlaps || !all_free(ips, &range) {
            continue;
        }
        handed_out.push(range.clone());
        return Ok(range);
    }
    bail!("no free block of {len} UDP ports in {RANGE_FLOOR}..{RANGE_CEILING} after {RANGE_ATTEMPTS} tries")
}

fn all_free(ips: &[IpAddr], range: &RangeInclusive<u16>) -> bool {
    range.clone().all(|port| {
        ips.iter()
            .all(|ip| UdpSocket::bind(SocketAddr::new(*ip, port)).is_ok())
    })
}
