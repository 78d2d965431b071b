//! io_uring plumbing: ring set-up with opcode probing, the provided buffer ring, fixed files,
//! and the SQEs the worker needs. All of the `uring` backend's `unsafe` lives here; the worker
//! loop above it is safe code.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd, Fixed, RecvMsgOut};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use crate::forward::{Origin, SendTarget};
use crate::sockaddr::{self, RawAddr, RAW_ADDR_LEN};
use crate::DataplaneError;

/// Bytes per provided buffer: the recvmsg_out header, the source address and a datagram.
pub(crate) const BUF_SIZE: usize = 2048;

/// The buffer group of a worker's ring (one ring per worker, so one group suffices).
const BUF_GROUP: u16 = 0;

/// Every opcode the `uring` backend submits, with the name an operator can look up.
const REQUIRED_OPCODES: [(u8, &str); 4] = [
    (opcode::RecvMsgMulti::CODE, "IORING_OP_RECVMSG"),
    (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
    (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
];

/// Turns a probe result into a start-up error naming every missing opcode.
pub(crate) fn check_opcodes(supported: impl Fn(u8) -> bool) -> Result<(), DataplaneError> {
    let missing: Vec<&str> = REQUIRED_OPCODES
        .iter()
        .filter(|(code, _)| !supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DataplaneError::MissingOpcodes {
            opcodes: missing.join(", "),
        })
    }
}

fn setup_err(step: &'static str) -> impl FnOnce(std::io::Error) -> DataplaneError {
    move |source| DataplaneError::RingSetup { step, source }
}

/// Anonymous, page-aligned memory.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Self, DataplaneError> {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::Io {
                what: "mapping receive buffers",
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(DataplaneError::Io {
            what: "mapping receive buffers",
            source: std::io::Error::other("mmap returned null"),
        })?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping this value created and nothing else unmaps.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Per-buffer state of a send in flight: the kernel reads these until the send completes, so
/// they live in a boxed slice that never moves.
struct SendSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: RawAddr,
    /// Fixed-file index the send goes out of.
    socket: u32,
    origin: Origin,
}

/// What a completed send was about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SentInfo {
    pub socket: u32,
    pub origin: Origin,
}

/// One received datagram, located inside its buffer.
#[derive(Debug)]
pub(crate) struct Received<'a> {
    pub source: Option<SocketAddr>,
    pub payload: &'a [u8],
    /// Offset of `payload` in the buffer, to send it in place.
    pub offset: usize,
    /// The datagram did not fit the buffer.
    pub truncated: bool,
}

/// A worker's ring with its buffers.
pub(crate) struct Uring {
    // Dropped first: closing the ring ends the kernel's use of everything below.
    ring: IoUring,
    buf_ring: Mapping,
    buffers: Mapping,
    buf_count: u16,
    tail: u16,
    /// Buffers currently available to the kernel.
    free: u32,
    recv_msg: Box<libc::msghdr>,
    sends: Box<[SendSlot]>,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("buf_count", &self.buf_count)
            .field("free", &self.free)
            .finish_non_exhaustive()
    }
}

impl Uring {
    /// Creates the ring disabled, probes it, registers `files` sparse fixed-file slots and
    /// `buf_count` buffers, then enables it. Call from the thread that will use it.
    pub(crate) fn new(entries: u32, files: u32, buf_count: u16) -> Result<Self, DataplaneError> {
        let mut builder = IoUring::builder();
        builder
            .setup_r_disabled()
            .setup_cqsize(entries.saturating_mul(4))
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_defer_taskrun();
        let ring = match builder.build(entries) {
            Ok(r) => r,
            // Older kernels lack the task-run flags; they only save wake-ups.
            Err(_) => IoUring::builder()
                .setup_r_disabled()
                .setup_cqsize(entries.saturating_mul(4))
                .build(entries)
                .map_err(setup_err("io_uring_setup"))?,
        };
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(setup_err("IORING_REGISTER_PROBE"))?;
        check_opcodes(|code| probe.is_supported(code))?;
        ring.submitter()
            .register_files_sparse(files)
            .map_err(setup_err("registering the sparse fixed-file table"))?;

        let buf_ring = Mapping::new(usize::from(buf_count) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(usize::from(buf_count) * BUF_SIZE)?;
        // SAFETY: buf_ring holds buf_count entries, is page aligned (mmap) and outlives the
        // registration: `ring` is dropped before `buf_ring`.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buf_ring.ptr.as_ptr() as u64,
                buf_count,
                BUF_GROUP,
                0,
            )
        }
        .map_err(setup_err(
            "registering the provided buffer ring (kernel 5.19+)",
        ))?;

        let mut recv_msg: Box<libc::msghdr> = Box::new(zeroed_msghdr());
        recv_msg.msg_namelen = RAW_ADDR_LEN as u32;
        let sends = (0..buf_count)
            .map(|_| SendSlot {
                msg: zeroed_msghdr(),
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                addr: RawAddr::default(),
                socket: 0,
                origin: Origin::default(),
            })
            .collect();
        let mut uring = Self {
            ring,
            buf_ring,
            buffers,
            buf_count,
            tail: 0,
            free: 0,
            recv_msg,
            sends,
        };
        for bid in 0..buf_count {
            uring.recycle(bid);
        }
        uring
            .ring
            .submitter()
            .register_enable_rings()
            .map_err(setup_err("IORING_REGISTER_ENABLE_RINGS"))?;
        Ok(uring)
    }

    /// Buffers the kernel can receive into.
    pub(crate) fn free_buffers(&self) -> u32 {
        self.free
    }

    /// Puts fd into fixed-file slot `idx`.
    pub(crate) fn register_file(&self, idx: u32, fd: RawFd) -> Result<(), DataplaneError> {
        self.ring
            .submitter()
            .register_files_update(idx, &[fd])
            .map(drop)
            .map_err(|source| DataplaneError::Io {
                what: "registering a media socket as fixed file",
                source,
            })
    }

    /// Empties fixed-file slot `idx`.
    pub(crate) fn unregister_file(&self, idx: u32) {
        if let Err(e) = self.ring.submitter().register_files_update(idx, &[-1]) {
            tracing::warn!(slot = idx, error = %e, "could not clear fixed-file slot");
        }
    }

    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every entry pushed references memory owned by `self` (recv msghdr, send
            // slots, buffers) that stays valid and unmoved until its completion is reaped.
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                return;
            }
            // Queue full: hand what we have to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed while queue full");
            }
        }
    }

    /// Arms a multishot recvmsg on fixed file `idx`.
    pub(crate) fn arm_recv(&mut self, idx: u32, user_data: u64) {
        let msg: *const libc::msghdr = &*self.recv_msg;
        let e = opcode::RecvMsgMulti::new(Fixed(idx), msg, BUF_GROUP)
            .build()
            .user_data(user_data);
        self.push(&e);
    }

    /// Arms a multishot readiness poll on a plain fd (the command eventfd).
    pub(crate) fn arm_poll(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data);
        self.push(&e);
    }

    /// Cancels the request tagged `target`; its own completion reports the end.
    pub(crate) fn cancel(&mut self, target: u64, user_data: u64) {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        self.push(&e);
    }

    /// Parses the datagram the kernel put in buffer `bid` (`len` bytes used).
    pub(crate) fn received(&self, bid: u16, len: usize) -> Option<Received<'_>> {
        let buf = self.buffer(bid)?;
        let buf = buf.get(..len.min(BUF_SIZE))?;
        let out = RecvMsgOut::parse(buf, &self.recv_msg).ok()?;
        let payload = out.payload_data();
        let offset = (payload.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
        let payload_len = payload.len();
        Some(Received {
            source: sockaddr::decode(out.name_data()),
            payload: buf.get(offset..offset.checked_add(payload_len)?)?,
            offset,
            truncated: out.is_payload_truncated() || out.is_name_data_truncated(),
        })
    }

    fn buffer(&self, bid: u16) -> Option<&[u8]> {
        if bid >= self.buf_count {
            return None;
        }
        // SAFETY: bid < buf_count so the range lies inside `buffers`; the kernel has completed
        // its write into this buffer (we hold its completion) and will not touch it again until
        // it is recycled, which needs `&mut self`.
        Some(unsafe {
            std::slice::from_raw_parts(
                self.buffers.ptr.as_ptr().add(usize::from(bid) * BUF_SIZE),
                BUF_SIZE,
            )
        })
    }

    /// Sends `len` bytes at `offset` of buffer `bid`, in place, out of the target's fixed file
    /// to its destination. The buffer stays out of the ring until [`Uring::sent`] for it.
    pub(crate) fn send(
        &mut self,
        bid: u16,
        offset: usize,
        len: usize,
        target: &SendTarget,
        user_data: u64,
    ) -> bool {
        let SendTarget {
            out_socket: socket,
            dest,
            origin,
        } = *target;
        if bid >= self.buf_count || offset.saturating_add(len) > BUF_SIZE {
            return false;
        }
        let base = self.buffers.ptr.as_ptr();
        let Some(slot) = self.sends.get_mut(usize::from(bid)) else {
            return false;
        };
        let namelen = sockaddr::encode(dest, &mut slot.addr);
        // SAFETY: offset + len <= BUF_SIZE (checked above) and bid < buf_count, so the pointer
        // stays inside `buffers`.
        slot.iov.iov_base = unsafe { base.add(usize::from(bid) * BUF_SIZE + offset) }.cast();
        slot.iov.iov_len = len;
        slot.msg = zeroed_msghdr();
        slot.msg.msg_name = std::ptr::addr_of_mut!(slot.addr).cast();
        slot.msg.msg_namelen = namelen;
        slot.msg.msg_iov = std::ptr::addr_of_mut!(slot.iov);
        slot.msg.msg_iovlen = 1;
        slot.socket = socket;
        slot.origin = origin;
        let msg: *const libc::msghdr = &slot.msg;
        let e = opcode::SendMsg::new(Fixed(socket), msg)
            .build()
            .user_data(user_data);
        self.push(&e);
        true
    }

    /// What the send from buffer `bid` was about (call on its completion, before recycling).
    pub(crate) fn sent(&self, bid: u16) -> Option<SentInfo> {
        self.sends.get(usize::from(bid)).map(|s| SentInfo {
            socket: s.socket,
            origin: s.origin,
        })
    }

    /// Gives buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        if bid >= self.buf_count {
            return;
        }
        let base = self.buf_ring.ptr.as_ptr().cast::<BufRingEntry>();
        let idx = usize::from(self.tail & (self.buf_count - 1));
        // SAFETY: idx < buf_count, the number of entries `buf_ring` was sized for; the kernel
        // only reads entries between head and the published tail, and this one is beyond it.
        let entry = unsafe { &mut *base.add(idx) };
        // SAFETY: bid < buf_count keeps the address inside `buffers`.
        let addr = unsafe { self.buffers.ptr.as_ptr().add(usize::from(bid) * BUF_SIZE) };
        entry.set_addr(addr as u64);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: `base` is the ring's first entry, whose reserved field is the shared tail; it is
        // 2-byte aligned inside a page-aligned mapping and only this thread writes it, the kernel
        // reads it, hence the atomic release store publishing the entry written above.
        unsafe {
            let tail = BufRingEntry::tail(base).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
        self.free += 1;
    }

    /// Notes that the kernel consumed a buffer (a completion carried one).
    pub(crate) fn consumed(&mut self) {
        self.free = self.free.saturating_sub(1);
    }

    /// Submits everything queued and waits for at least `want` completions.
    pub(crate) fn submit_and_wait(&mut self, want: usize) -> std::io::Result<usize> {
        self.ring.submit_and_wait(want)
    }

    /// Whether the kernel honours a batch wait timeout (`min_wait_usec`, Linux 6.12+).
    pub(crate) fn supports_batch_wait(&self) -> bool {
        self.ring.params().is_feature_min_timeout()
    }

    /// Submits everything queued, then sleeps until `batch` completions are ready or, once
    /// `batch_wait_usec` has passed, until at least one is. With no completion at all it waits
    /// indefinitely, so an idle worker costs nothing and the first packet after a pause is
    /// not delayed. This is interrupt coalescing: under load one wake-up serves a batch of
    /// packets instead of one, which is most of the CPU a relay spends per packet.
    pub(crate) fn submit_and_wait_batch(
        &mut self,
        batch: usize,
        batch_wait_usec: u32,
    ) -> std::io::Result<usize> {
        let args = io_uring::types::SubmitArgs::new().min_wait_usec(batch_wait_usec);
        self.ring.submitter().submit_with_args(batch, &args)
    }

    /// Moves all available completions into `out` (cleared first).
    pub(crate) fn drain_completions(&mut self, out: &mut Vec<cqueue::Entry>) {
        out.clear();
        out.extend(self.ring.completion());
    }
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct for which all-zero bytes (null pointers, zero
    // lengths) is a valid value.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_report_names_each_missing_opcode() {
        assert!(check_opcodes(|_| true).is_ok());
        let err = check_opcodes(|code| code != opcode::SendMsg::CODE)
            .unwrap_err()
            .to_string();
        assert!(err.contains("IORING_OP_SENDMSG"), "{err}");
        assert!(!err.contains("IORING_OP_RECVMSG"), "{err}");
        assert!(err.contains("mmsg"), "{err}");
        let err = check_opcodes(|_| false).unwrap_err().to_string();
        for (_, name) in REQUIRED_OPCODES {
            assert!(err.contains(name), "{err}");
        }
    }
}
