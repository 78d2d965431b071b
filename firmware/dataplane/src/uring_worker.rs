//! The `uring` backend's worker loop: one ring, multishot receives into the provided buffer
//! ring, sends of the received buffer in place, one `submit_and_wait` per turn.

use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use io_uring::cqueue;
use nix::sys::eventfd::EventFd;
use pop_relay_core::media::StreamStats;

use crate::command::{answer, Command, Reply};
use crate::counters::{bump, WorkerCounters};
use crate::forward::Forwarder;
use crate::ring::Uring;
use crate::{DataplaneConfig, DataplaneError};

const TAG_SHIFT: u32 = 56;
const TAG_RECV: u64 = 1;
const TAG_SEND: u64 = 2;
const TAG_WAKE: u64 = 3;
const TAG_CANCEL: u64 = 4;

fn recv_tag(idx: u32, generation: u32) -> u64 {
    (TAG_RECV << TAG_SHIFT) | (u64::from(generation & 0x00ff_ffff) << 32) | u64::from(idx)
}

/// I/O state of one fixed-file slot.
#[derive(Debug, Clone, Copy, Default)]
struct SlotIo {
    generation: u32,
    /// A multishot receive is outstanding.
    armed: bool,
    /// Sends from this socket not yet completed.
    inflight: u32,
    /// Its stream was removed; close once idle.
    closing: bool,
}

#[derive(Debug)]
struct PendingRemoval {
    sockets: Vec<u32>,
    stats: StreamStats,
    reply: Option<Reply<StreamStats>>,
}

/// Worker state; lives on its own thread.
#[derive(Debug)]
pub(crate) struct UringWorker {
    uring: Uring,
    fwd: Forwarder,
    commands: Receiver<Command>,
    wake: Arc<EventFd>,
    slots: Vec<SlotIo>,
    rearm: Vec<u32>,
    removals: Vec<PendingRemoval>,
    cqes: Vec<cqueue::Entry>,
    inflight_sends: u32,
    buf_count: u32,
    stopping: bool,
    /// Completions worth waking up for, and how long to wait for them (0: wake per completion).
    batch: usize,
    batch_wait_usec: u32,
    /// Packets received in the previous loop turn (drives coalescing).
    received_last_turn: usize,
}

/// Received packets in one turn from which the next wait coalesces wake-ups.
const COALESCE_AFTER_RECEIVED: usize = 4;

impl UringWorker {
    /// Sets the ring up (on the calling thread, which must be the worker's).
    pub(crate) fn new(
        index: usize,
        cfg: &DataplaneConfig,
        counters: Arc<WorkerCounters>,
        commands: Receiver<Command>,
        wake: Arc<EventFd>,
    ) -> Result<Self, DataplaneError> {
        let uring = Uring::new(
            cfg.ring_entries,
            cfg.max_sockets_per_worker,
            cfg.buffers_per_worker,
        )?;
        let cap = cfg.max_sockets_per_worker as usize;
        let batch_wait_usec = if cfg.batch_wait_usec > 0 && !uring.supports_batch_wait() {
            tracing::warn!(
                "kernel lacks io_uring batch wait (IORING_FEAT_MIN_TIMEOUT, Linux 6.12): \
                 waking per completion"
            );
            0
        } else {
            cfg.batch_wait_usec
        };
        Ok(Self {
            uring,
            fwd: Forwarder::new(index, cfg.max_sockets_per_worker, counters),
            commands,
            wake,
            slots: vec![SlotIo::default(); cap],
            rearm: Vec::with_capacity(cap),
            removals: Vec::new(),
            cqes: Vec::with_capacity(cfg.ring_entries as usize * 4),
            inflight_sends: 0,
            buf_count: u32::from(cfg.buffers_per_worker),
            stopping: false,
            batch: cfg.batch_completions as usize,
            batch_wait_usec,
            received_last_turn: 0,
        })
    }

    /// Runs until shut down and every socket is closed.
    pub(crate) fn run(mut self) {
        let wake_fd = self.wake.as_fd_raw();
        self.uring.arm_poll(wake_fd, TAG_WAKE << TAG_SHIFT);
        loop {
            if self.stopping && self.removals.is_empty() && self.inflight_sends == 0 {
                break;
            }
            // Coalesce only while packets arrive faster than the worker wakes: a turn that
            // received several packets predicts more. After a quiet turn, block for the next
            // completion, so light traffic and idle cost no timer wake-ups.
            let flowing = self.received_last_turn >= COALESCE_AFTER_RECEIVED;
            let waited = if flowing && self.batch_wait_usec > 0 && self.batch > 1 {
                self.uring
                    .submit_and_wait_batch(self.batch, self.batch_wait_usec)
            } else {
                self.uring.submit_and_wait(1)
            };
            if let Err(e) = waited {
                match e.raw_os_error() {
                    // Interrupted, timed out, or completions must be reaped first: all retried.
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME) => {}
                    _ => {
                        tracing::error!(error = %e, "io_uring_enter failed; worker stops");
                        break;
                    }
                }
            }
            let now = Instant::now();
            let mut cqes = std::mem::take(&mut self.cqes);
            self.uring.drain_completions(&mut cqes);
            self.received_last_turn = cqes
                .iter()
                .filter(|c| c.user_data() >> TAG_SHIFT == TAG_RECV)
                .count();
            for cqe in &cqes {
                self.on_completion(cqe, now);
            }
            self.cqes = cqes;
            self.rearm_if_buffers();
        }
    }

    fn on_completion(&mut self, cqe: &cqueue::Entry, now: Instant) {
        let ud = cqe.user_data();
        match ud >> TAG_SHIFT {
            TAG_RECV => self.on_recv(cqe, now),
            TAG_SEND => self.on_sent(cqe),
            TAG_WAKE => {
                // Resetting the counter is the only syscall a command costs the worker.
                let _ = self.wake.read();
                if !cqueue::more(cqe.flags()) {
                    self.uring
                        .arm_poll(self.wake.as_fd_raw(), TAG_WAKE << TAG_SHIFT);
                }
                self.drain_commands(now);
            }
            _ => {}
        }
    }

    fn on_recv(&mut self, cqe: &cqueue::Entry, now: Instant) {
        let ud = cqe.user_data();
        let idx = ud as u32;
        let generation = ((ud >> 32) & 0x00ff_ffff) as u32;
        let res = cqe.result();
        let flags = cqe.flags();
        let current = self
            .slots
            .get(idx as usize)
            .is_some_and(|s| s.generation == generation);
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.uring.consumed();
            let forwarded = current && res >= 0 && self.forward(idx, bid, res as usize, now);
            if !forwarded {
                self.uring.recycle(bid);
            }
        } else if res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED {
            bump(&self.fwd.counters().recv_errors, 1);
        }
        if cqueue::more(flags) || !current {
            return;
        }
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        slot.armed = false;
        if res == -libc::ENOBUFS {
            bump(&self.fwd.counters().buffer_ring_empty, 1);
        }
        if slot.closing {
            self.maybe_release(idx);
        } else {
            self.rearm.push(idx);
        }
    }

    /// Forwards the datagram in buffer `bid`; `false` if the buffer is free again.
    fn forward(&mut self, idx: u32, bid: u16, len: usize, now: Instant) -> bool {
        let Some(rx) = self.uring.received(bid, len) else {
            bump(&self.fwd.counters().dropped_malformed, 1);
            return false;
        };
        let (Some(src), false) = (rx.source, rx.truncated) else {
            bump(&self.fwd.counters().dropped_malformed, 1);
            return false;
        };
        let (offset, plen) = (rx.offset, rx.payload.len());
        let Some(target) = self.fwd.on_datagram(idx, src, rx.payload, now) else {
            return false;
        };
        let Some(out) = self.slots.get_mut(target.out_socket as usize) else {
            return false;
        };
        let tag = (TAG_SEND << TAG_SHIFT) | u64::from(bid);
        if !self.uring.send(bid, offset, plen, &target, tag) {
            self.fwd.on_send_error(target.origin);
            return false;
        }
        out.inflight += 1;
        self.inflight_sends += 1;
        true
    }

    fn on_sent(&mut self, cqe: &cqueue::Entry) {
        let bid = cqe.user_data() as u16;
        let info = self.uring.sent(bid);
        self.uring.recycle(bid);
        self.inflight_sends = self.inflight_sends.saturating_sub(1);
        let Some(info) = info else {
            return;
        };
        if cqe.result() < 0 {
            self.fwd.on_send_error(info.origin);
        }
        if let Some(slot) = self.slots.get_mut(info.socket as usize) {
            slot.inflight = slot.inflight.saturating_sub(1);
            if slot.closing {
                self.maybe_release(info.socket);
            }
        }
    }

    /// Re-arms receives stopped by buffer exhaustion once buffers are back (or nothing is in
    /// flight that could bring more back), so no stream stays silent after an overload.
    fn rearm_if_buffers(&mut self) {
        if self.rearm.is_empty() {
            return;
        }
        let free = self.uring.free_buffers();
        if free == 0 || (free * 4 < self.buf_count && self.inflight_sends > 0) {
            return;
        }
        let pending = std::mem::take(&mut self.rearm);
        for &idx in &pending {
            let Some(slot) = self.slots.get_mut(idx as usize) else {
                continue;
            };
            if slot.armed || slot.closing {
                continue;
            }
            slot.armed = true;
            let tag = recv_tag(idx, slot.generation);
            self.uring.arm_recv(idx, tag);
            bump(&self.fwd.counters().rearms, 1);
        }
        self.rearm = pending;
        self.rearm.clear();
    }

    fn drain_commands(&mut self, now: Instant) {
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.on_command(cmd, now),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.stop(now);
                    return;
                }
            }
        }
    }

    fn on_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Add {
                id,
                a,
                b,
                policy,
                reply,
            } => {
                let result = self.add(id, a, b, policy, now);
                answer(&reply, result);
            }
            Command::Update {
                id,
                a,
                b,
                policy,
                reply,
            } => answer(&reply, self.fwd.update_stream(id, a, b, policy)),
            Command::Stats { id, reply } => answer(&reply, self.fwd.stream_stats(id, now)),
            Command::Remove { id, reply } => self.remove(id, Some(reply), now),
            Command::Shutdown => self.stop(now),
        }
    }

    fn add(
        &mut self,
        id: pop_relay_core::media::StreamId,
        a: crate::LegSockets,
        b: crate::LegSockets,
        policy: pop_relay_core::media::MediaPolicy,
        now: Instant,
    ) -> Result<(), DataplaneError> {
        if self.stopping {
            return Err(DataplaneError::WorkerGone(0));
        }
        let used = self.fwd.add_stream(id, a, b, policy)?;
        for &idx in &used {
            let registered = match self.fwd.slot(idx) {
                Some(s) => self.uring.register_file(idx, s.socket.as_raw_fd()),
                None => Err(DataplaneError::InvalidLeg("internal: slot vanished")),
            };
            if let Err(e) = registered {
                // Nothing was armed yet: undo synchronously.
                let _ = self.fwd.detach_stream(id, now);
                for &i in &used {
                    self.uring.unregister_file(i);
                    drop(self.fwd.release_socket(i));
                }
                return Err(e);
            }
        }
        for &idx in &used {
            let generation = self.fwd.slot(idx).map_or(0, |s| s.generation);
            if let Some(slot) = self.slots.get_mut(idx as usize) {
                *slot = SlotIo {
                    generation,
                    armed: true,
                    inflight: 0,
                    closing: false,
                };
            }
            self.uring.arm_recv(idx, recv_tag(idx, generation));
        }
        Ok(())
    }

    fn remove(
        &mut self,
        id: pop_relay_core::media::StreamId,
        reply: Option<Reply<StreamStats>>,
        now: Instant,
    ) {
        let detached = match self.fwd.detach_stream(id, now) {
            Ok(d) => d,
            Err(e) => {
                if let Some(r) = &reply {
                    answer(r, Err(e));
                }
                return;
            }
        };
        for &idx in &detached.sockets {
            if let Some(slot) = self.slots.get_mut(idx as usize) {
                slot.closing = true;
                if slot.armed {
                    let target = recv_tag(idx, slot.generation);
                    self.uring.cancel(target, TAG_CANCEL << TAG_SHIFT);
                }
            }
        }
        self.removals.push(PendingRemoval {
            sockets: detached.sockets.clone(),
            stats: detached.stats,
            reply,
        });
        for idx in detached.sockets {
            self.maybe_release(idx);
        }
    }

    /// Closes a removed stream's socket once the kernel holds no request on it, and answers the
    /// removal when its last socket is closed.
    fn maybe_release(&mut self, idx: u32) {
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        if !slot.closing || slot.armed || slot.inflight > 0 {
            return;
        }
        *slot = SlotIo::default();
        self.uring.unregister_file(idx);
        drop(self.fwd.release_socket(idx));
        let Some(pos) = self
            .removals
            .iter_mut()
            .position(|r| r.sockets.contains(&idx))
        else {
            return;
        };
        let Some(removal) = self.removals.get_mut(pos) else {
            return;
        };
        removal.sockets.retain(|&s| s != idx);
        if removal.sockets.is_empty() {
            let done = self.removals.swap_remove(pos);
            if let Some(r) = &done.reply {
                answer(r, Ok(done.stats));
            }
        }
    }

    fn stop(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        for id in self.fwd.stream_ids() {
            self.remove(id, None, now);
        }
        // Sockets parked for re-arm have no request outstanding.
        self.rearm.clear();
    }
}

/// Raw fd of the eventfd, for the poll SQE.
trait EventFdRaw {
    fn as_fd_raw(&self) -> i32;
}

impl EventFdRaw for EventFd {
    fn as_fd_raw(&self) -> i32 {
        use std::os::fd::AsFd;
        self.as_fd().as_raw_fd()
    }
}
