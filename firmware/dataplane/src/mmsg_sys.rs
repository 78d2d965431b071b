//! `recvmmsg`/`sendmmsg` batches for the `mmsg` backend. All of that backend's `unsafe` lives
//! here: the batch owns every buffer and header the kernel reads or writes, and nothing moves
//! while a call is in progress.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::forward::Origin;
use crate::sockaddr::{self, RawAddr, RAW_ADDR_LEN};

/// Datagrams per `recvmmsg` call.
pub(crate) const BATCH: usize = 64;
/// Bytes per datagram buffer.
const BUF_SIZE: usize = 2048;

/// Receive buffers plus the send batch that forwards out of them in place.
pub(crate) struct MmsgBatch {
    bufs: Box<[[u8; BUF_SIZE]]>,
    rx_hdrs: Box<[libc::mmsghdr]>,
    rx_iov: Box<[libc::iovec]>,
    rx_addr: Box<[RawAddr]>,
    tx_hdrs: Box<[libc::mmsghdr]>,
    tx_iov: Box<[libc::iovec]>,
    tx_addr: Box<[RawAddr]>,
    tx_origin: Box<[Origin]>,
    tx_len: usize,
    tx_fd: RawFd,
}

impl std::fmt::Debug for MmsgBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgBatch")
            .field("tx_len", &self.tx_len)
            .finish_non_exhaustive()
    }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct; all-zero (null pointers, zero lengths) is valid.
    unsafe { std::mem::zeroed() }
}

fn empty_iov() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

/// One received datagram.
#[derive(Debug)]
pub(crate) struct Datagram<'a> {
    pub source: Option<SocketAddr>,
    pub payload: &'a [u8],
    pub truncated: bool,
}

impl MmsgBatch {
    pub(crate) fn new() -> Self {
        Self {
            bufs: vec![[0u8; BUF_SIZE]; BATCH].into_boxed_slice(),
            rx_hdrs: (0..BATCH).map(|_| zeroed_mmsghdr()).collect(),
            rx_iov: (0..BATCH).map(|_| empty_iov()).collect(),
            rx_addr: vec![RawAddr::default(); BATCH].into_boxed_slice(),
            tx_hdrs: (0..BATCH).map(|_| zeroed_mmsghdr()).collect(),
            tx_iov: (0..BATCH).map(|_| empty_iov()).collect(),
            tx_addr: vec![RawAddr::default(); BATCH].into_boxed_slice(),
            tx_origin: vec![Origin::default(); BATCH].into_boxed_slice(),
            tx_len: 0,
            tx_fd: -1,
        }
    }

    /// Receives up to [`BATCH`] datagrams from `fd` (non-blocking); returns how many.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            let (Some(h), Some(iov), Some(addr), Some(buf)) = (
                self.rx_hdrs.get_mut(i),
                self.rx_iov.get_mut(i),
                self.rx_addr.get_mut(i),
                self.bufs.get_mut(i),
            ) else {
                break;
            };
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = BUF_SIZE;
            *h = zeroed_mmsghdr();
            h.msg_hdr.msg_name = std::ptr::addr_of_mut!(*addr).cast();
            h.msg_hdr.msg_namelen = RAW_ADDR_LEN as u32;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at an iovec, buffer and address owned by `self`, sized as
        // declared; `&mut self` keeps them alive and unaliased for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.rx_hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0).min(BATCH))
    }

    /// Datagram `i` of the last [`MmsgBatch::recv`].
    pub(crate) fn datagram(&self, i: usize) -> Option<Datagram<'_>> {
        let h = self.rx_hdrs.get(i)?;
        let len = h.msg_len as usize;
        let buf = self.bufs.get(i)?;
        let addr = self.rx_addr.get(i)?;
        let namelen = (h.msg_hdr.msg_namelen as usize).min(RAW_ADDR_LEN);
        Some(Datagram {
            source: sockaddr::decode(addr.0.get(..namelen)?),
            payload: buf.get(..len.min(BUF_SIZE))?,
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        })
    }

    /// Queues datagram `i` of the receive batch to go out of `fd` to `dest`. Sends queued for a
    /// different socket are flushed first, reporting failures to `on_error`.
    pub(crate) fn queue_send(
        &mut self,
        fd: RawFd,
        i: usize,
        dest: SocketAddr,
        origin: Origin,
        on_error: &mut impl FnMut(Origin),
    ) {
        if self.tx_len > 0 && self.tx_fd != fd {
            self.flush(on_error);
        }
        self.tx_fd = fd;
        let k = self.tx_len;
        let len = self.rx_hdrs.get(i).map_or(0, |h| h.msg_len as usize);
        let (Some(h), Some(iov), Some(addr), Some(o), Some(buf)) = (
            self.tx_hdrs.get_mut(k),
            self.tx_iov.get_mut(k),
            self.tx_addr.get_mut(k),
            self.tx_origin.get_mut(k),
            self.bufs.get_mut(i),
        ) else {
            on_error(origin);
            return;
        };
        let namelen = sockaddr::encode(dest, addr);
        iov.iov_base = buf.as_mut_ptr().cast();
        iov.iov_len = len.min(BUF_SIZE);
        *h = zeroed_mmsghdr();
        h.msg_hdr.msg_name = std::ptr::addr_of_mut!(*addr).cast();
        h.msg_hdr.msg_namelen = namelen;
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        *o = origin;
        self.tx_len += 1;
    }

    /// Sends everything queued. Must run before the next [`MmsgBatch::recv`], which reuses
    /// the buffers.
    pub(crate) fn flush(&mut self, on_error: &mut impl FnMut(Origin)) {
        let mut start = 0;
        while start < self.tx_len {
            let remaining = self.tx_len - start;
            let Some(hdrs) = self.tx_hdrs.get_mut(start..self.tx_len) else {
                break;
            };
            // SAFETY: the headers [start, tx_len) point at iovecs, buffers and addresses owned
            // by `self`, filled by `queue_send`; `&mut self` keeps them valid during the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.tx_fd,
                    hdrs.as_mut_ptr(),
                    remaining as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                // The first unsent message failed (full socket buffer, unreachable...): count
                // it and carry on with the rest.
                if let Some(&o) = self.tx_origin.get(start) {
                    on_error(o);
                }
                start += 1;
            } else {
                start += usize::try_from(n).unwrap_or(remaining);
            }
        }
        self.tx_len = 0;
    }
}
