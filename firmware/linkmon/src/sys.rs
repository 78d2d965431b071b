//! The two socket calls neither std nor nix offers: `IP_RECVTTL` and reading the TTL control
//! message. The only `unsafe` in this crate.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

/// Asks the kernel to attach each received datagram's IP TTL as a control message.
pub fn enable_recv_ttl(sock: &impl AsRawFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the fd is open for the lifetime of `sock`; the option value points to a live
    // c_int and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVTTL,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One received IPv4 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    /// Sender.
    pub from: SocketAddrV4,
    /// IP TTL of the datagram, when the kernel attached it.
    pub ttl: Option<u8>,
    /// The datagram was longer than the buffer.
    pub truncated: bool,
}

/// Non-blocking `recvmsg` on an IPv4 UDP socket with `IP_RECVTTL` enabled. `Ok(None)` when
/// nothing is queued.
pub fn recv_with_ttl(sock: &impl AsRawFd, buf: &mut [u8]) -> std::io::Result<Option<Received>> {
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths); the fields are set next.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = std::ptr::addr_of_mut!(addr).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` refers to a live local or to `buf`, with the lengths of
    // those objects; the kernel writes only within them.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    let mut ttl = None;
    // SAFETY: `msg` was filled by a successful recvmsg; CMSG_FIRSTHDR/NXTHDR stay within
    // msg_control/msg_controllen, and the data read is bounds-checked against cmsg_len.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let hdr = &*cmsg;
            let data_len = (hdr.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            if hdr.cmsg_level == libc::IPPROTO_IP
                && hdr.cmsg_type == libc::IP_TTL
                && data_len >= std::mem::size_of::<libc::c_int>()
            {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                ttl = u8::try_from(v).ok();
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let from = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    );
    Ok(Some(Received {
        len: usize::try_from(n).unwrap_or(0).min(buf.len()),
        from,
        ttl,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn ttl_of_a_loopback_datagram_is_reported() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_recv_ttl(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_ttl(255).unwrap();
        tx.send_to(b"hello", rx.local_addr().unwrap()).unwrap();
        tx.set_ttl(17).unwrap();
        tx.send_to(b"again", rx.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        for _ in 0..200 {
            if let Some(r) = recv_with_ttl(&rx, &mut buf).unwrap() {
                got.push((buf[..r.len].to_vec(), r.ttl, r.from));
                if got.len() == 2 {
                    break;
                }
            } else {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, b"hello");
        assert_eq!(got[0].1, Some(255));
        assert_eq!(got[1].1, Some(17));
        assert_eq!(std::net::SocketAddr::V4(got[0].2), tx.local_addr().unwrap());
    }
}
