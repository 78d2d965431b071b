//! The `mmsg` backend's worker loop: level-triggered epoll over the sockets and the command
//! eventfd; one `recvmmsg` per ready socket per turn, forwarded in place with `sendmmsg`.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use pop_relay_core::media::{MediaPolicy, StreamId};

use crate::command::{answer, Command};
use crate::counters::{bump, WorkerCounters};
use crate::forward::Forwarder;
use crate::mmsg_sys::MmsgBatch;
use crate::{DataplaneConfig, DataplaneError, LegSockets};

/// Epoll token of the command eventfd (socket tokens carry a generation below 2^24 in the
/// high half, so they never reach this).
const WAKE_TOKEN: u64 = u64::MAX;

fn socket_token(idx: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(idx)
}

/// Worker state; lives on its own thread.
#[derive(Debug)]
pub(crate) struct MmsgWorker {
    epoll: Epoll,
    fwd: Forwarder,
    commands: Receiver<Command>,
    wake: Arc<EventFd>,
    batch: MmsgBatch,
    events: Vec<EpollEvent>,
    stopping: bool,
}

impl MmsgWorker {
    pub(crate) fn new(
        index: usize,
        cfg: &DataplaneConfig,
        counters: Arc<WorkerCounters>,
        commands: Receiver<Command>,
        wake: Arc<EventFd>,
    ) -> Result<Self, DataplaneError> {
        let io = |what| {
            move |e: nix::Error| DataplaneError::Io {
                what,
                source: std::io::Error::from(e),
            }
        };
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io("epoll_create1"))?;
        epoll
            .add(
                wake.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN),
            )
            .map_err(io("adding the command eventfd to epoll"))?;
        Ok(Self {
            epoll,
            fwd: Forwarder::new(index, cfg.max_sockets_per_worker, counters),
            commands,
            wake,
            batch: MmsgBatch::new(),
            events: vec![EpollEvent::empty(); 256],
            stopping: false,
        })
    }

    pub(crate) fn run(mut self) {
        while !self.stopping {
            let mut events = std::mem::take(&mut self.events);
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed; worker stops");
                    self.events = events;
                    break;
                }
            };
            let now = Instant::now();
            for ev in events.iter().take(n) {
                let token = ev.data();
                if token == WAKE_TOKEN {
                    let _ = self.wake.read();
                    self.drain_commands(now);
                } else {
                    self.on_readable(token, now);
                }
            }
            self.events = events;
        }
        self.close_all(Instant::now());
    }

    fn on_readable(&mut self, token: u64, now: Instant) {
        let idx = token as u32;
        let generation = (token >> 32) as u32;
        let fd = match self.fwd.slot(idx) {
            Some(s) if s.generation == generation => s.socket.as_raw_fd(),
            _ => return,
        };
        let n = match self.batch.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                bump(&self.fwd.counters().recv_errors, 1);
                return;
            }
        };
        let fwd = &mut self.fwd;
        let batch = &mut self.batch;
        let mut failed = Vec::new();
        for i in 0..n {
            let Some(dg) = batch.datagram(i) else {
                continue;
            };
            let (Some(src), false) = (dg.source, dg.truncated) else {
                bump(&fwd.counters().dropped_malformed, 1);
                continue;
            };
            let Some(target) = fwd.on_datagram(idx, src, dg.payload, now) else {
                continue;
            };
            let Some(out_fd) = fwd.slot(target.out_socket).map(|s| s.socket.as_raw_fd()) else {
                continue;
            };
            batch.queue_send(out_fd, i, target.dest, target.origin, &mut |o| {
                failed.push(o)
            });
        }
        batch.flush(&mut |o| failed.push(o));
        for o in failed {
            fwd.on_send_error(o);
        }
    }

    fn drain_commands(&mut self, now: Instant) {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Add {
                    id,
                    a,
                    b,
                    policy,
                    reply,
                }) => answer(&reply, self.add(id, a, b, policy, now)),
                Ok(Command::Update {
                    id,
                    a,
                    b,
                    policy,
                    reply,
                }) => answer(&reply, self.fwd.update_stream(id, a, b, policy)),
                Ok(Command::Stats { id, reply }) => answer(&reply, self.fwd.stream_stats(id, now)),
                Ok(Command::Remove { id, reply }) => answer(&reply, self.remove(id, now)),
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                    self.stopping = true;
                    return;
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    fn add(
        &mut self,
        id: StreamId,
        a: LegSockets,
        b: LegSockets,
        policy: MediaPolicy,
        now: Instant,
    ) -> Result<(), DataplaneError> {
        let used = self.fwd.add_stream(id, a, b, policy)?;
        for &idx in &used {
            let added = match self.fwd.slot(idx) {
                Some(s) => self
                    .epoll
                    .add(
                        s.socket.as_fd(),
                        EpollEvent::new(EpollFlags::EPOLLIN, socket_token(idx, s.generation)),
                    )
                    .map_err(|e| DataplaneError::Io {
                        what: "adding a media socket to epoll",
                        source: e.into(),
                    }),
                None => Err(DataplaneError::InvalidLeg("internal: slot vanished")),
            };
            if let Err(e) = added {
                let _ = self.remove(id, now);
                return Err(e);
            }
        }
        Ok(())
    }

    fn remove(
        &mut self,
        id: StreamId,
        now: Instant,
    ) -> Result<pop_relay_core::media::StreamStats, DataplaneError> {
        let detached = self.fwd.detach_stream(id, now)?;
        for idx in detached.sockets {
            if let Some(sock) = self.fwd.release_socket(idx) {
                // Not registered yet if add failed half-way; closing removes it anyway.
                let _ = self.epoll.delete(sock.as_fd());
            }
        }
        Ok(detached.stats)
    }

    fn close_all(&mut self, now: Instant) {
        for id in self.fwd.stream_ids() {
            let _ = self.remove(id, now);
        }
        debug_assert!(self.fwd.occupied_sockets().is_empty());
    }
}
