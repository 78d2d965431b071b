//! Socket addresses in the kernel's `sockaddr_in`/`sockaddr_in6` byte layout, converted without
//! `unsafe` so the per-packet path can read source addresses straight out of receive buffers.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Size of `sockaddr_in6`, large enough for both families.
pub(crate) const RAW_ADDR_LEN: usize = 28;

/// A socket address as the kernel lays it out.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(4))]
pub(crate) struct RawAddr(pub [u8; RAW_ADDR_LEN]);

impl Default for RawAddr {
    fn default() -> Self {
        Self([0; RAW_ADDR_LEN])
    }
}

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// Writes `addr` into `out`; returns the length to pass as `msg_namelen`.
pub(crate) fn encode(addr: SocketAddr, out: &mut RawAddr) -> u32 {
    let b = &mut out.0;
    match addr {
        SocketAddr::V4(a) => {
            b[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.ip().octets());
            b[8..16].fill(0);
            16
        }
        SocketAddr::V6(a) => {
            b[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
            b[8..24].copy_from_slice(&a.ip().octets());
            b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            28
        }
    }
}

/// Reads a socket address; `None` for other families or short buffers.
pub(crate) fn decode(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family {
        AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        AF_INET6 => {
            let flow = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        for a in ["192.0.2.7:4000", "[2001:db8::1]:30000"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut raw = RawAddr::default();
            let len = encode(addr, &mut raw) as usize;
            assert_eq!(decode(&raw.0[..RAW_ADDR_LEN]), Some(addr));
            assert!(len == 16 || len == 28);
        }
        assert_eq!(decode(&[0u8; 4]), None);
        assert_eq!(decode(&[]), None);
    }
}
