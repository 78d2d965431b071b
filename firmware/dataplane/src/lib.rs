//! Media forwarding data plane.
//!
//! Worker threads each own a set of streams (all sockets of a stream live in one worker, chosen
//! by stream id) and move their packets with one of two backends chosen at start:
//! [`Backend::Uring`] (io_uring: multishot recvmsg into a provided buffer ring, sends of the same
//! buffer in place on fixed files, one `submit_and_wait` per turn) or [`Backend::Mmsg`] (epoll +
//! `recvmmsg`/`sendmmsg`). Both share the forwarding decision and statistics (`forward`), so
//! they differ only in I/O. Control talks to workers through a channel plus an eventfd the
//! worker waits on alongside its sockets.
//!
//! `unsafe` is confined to `ring` (io_uring) and `mmsg_sys` (batched syscalls).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod command;
mod config;
mod counters;
mod direction_stats;
mod error;
mod forward;
mod mmsg_sys;
mod mmsg_worker;
mod ring;
mod sockaddr;
mod uring_worker;

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::sys::eventfd::{EfdFlags, EventFd};
use pop_relay_core::media::{CodecHints, MediaPolicy, StreamId, StreamStats};

pub use config::{Backend, DataplaneConfig};
pub use counters::DataplaneTotals;
pub use error::DataplaneError;

use command::{Command, Reply};
use counters::WorkerCounters;

/// One side of a new stream: its local sockets (moved into the data plane, which closes them)
/// and where its peer is, if known.
#[derive(Debug)]
pub struct LegSockets {
    /// Local RTP socket (also carries RTCP when this side muxes).
    pub rtp: UdpSocket,
    /// Local RTCP socket; `None` when this side muxes.
    pub rtcp: Option<UdpSocket>,
    /// Peer RTP address from SDP; `None` until known (latching then sets it).
    pub peer_rtp: Option<SocketAddr>,
    /// Peer RTCP address from SDP; `None`: RTP port + 1, or latched.
    pub peer_rtcp: Option<SocketAddr>,
    /// The peer multiplexes RTCP on its RTP port (RFC 5761).
    pub rtcp_mux: bool,
    /// Payload types the peer's SDP declared (clock rates, telephone-event), used for the
    /// statistics of packets received from it.
    pub codecs: CodecHints,
}

/// New signalled peer addresses of one side of an existing stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegPeers {
    /// Peer RTP address from SDP.
    pub peer_rtp: Option<SocketAddr>,
    /// Peer RTCP address from SDP.
    pub peer_rtcp: Option<SocketAddr>,
    /// The peer multiplexes RTCP on its RTP port.
    pub rtcp_mux: bool,
    /// Payload types the peer's SDP now declares.
    pub codecs: CodecHints,
}

#[derive(Debug)]
struct WorkerHandle {
    commands: Sender<Command>,
    wake: Arc<EventFd>,
    counters: Arc<WorkerCounters>,
    thread: Option<JoinHandle<()>>,
}

/// The running data plane. `Send + Sync`; every method takes `&self` and blocks until the
/// owning worker answered.
#[derive(Debug)]
pub struct Dataplane {
    workers: Vec<WorkerHandle>,
}

impl Dataplane {
    /// Validates `cfg`, starts the workers and waits until each has set up its backend. A
    /// kernel lacking an io_uring feature fails here with an error naming it.
    pub fn start(cfg: DataplaneConfig) -> Result<Self, DataplaneError> {
        cfg.validate()?;
        let mut dp = Self {
            workers: Vec::with_capacity(cfg.workers),
        };
        for index in 0..cfg.workers {
            // On error `dp` drops, stopping the workers already started.
            let handle = spawn_worker(index, &cfg)?;
            dp.workers.push(handle);
        }
        Ok(dp)
    }

    fn worker_of(&self, id: StreamId) -> Result<(usize, &WorkerHandle), DataplaneError> {
        let n = self.workers.len() as u64;
        let index = usize::try_from(id.0 % n.max(1)).unwrap_or(0);
        self.workers
            .get(index)
            .map(|w| (index, w))
            .ok_or(DataplaneError::WorkerGone(index))
    }

    fn call<T>(
        &self,
        id: StreamId,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, DataplaneError> {
        let (index, worker) = self.worker_of(id)?;
        let (tx, rx) = mpsc::sync_channel(1);
        worker
            .commands
            .send(make(tx))
            .map_err(|_| DataplaneError::WorkerGone(index))?;
        worker.wake.write(1).map_err(|e| DataplaneError::Io {
            what: "waking a data plane worker",
            source: e.into(),
        })?;
        rx.recv().map_err(|_| DataplaneError::WorkerGone(index))?
    }

    /// Starts forwarding between legs `a` and `b`. The sockets are moved in; the data plane
    /// owns and closes them.
    pub fn add_stream(
        &self,
        id: StreamId,
        a: LegSockets,
        b: LegSockets,
        policy: MediaPolicy,
    ) -> Result<(), DataplaneError> {
        self.call(id, |reply| Command::Add {
            id,
            a,
            b,
            policy,
            reply,
        })
    }

    /// Replaces signalled peers and policy. A changed signalled address restarts latching on
    /// that side; an unchanged one keeps the learned address.
    pub fn update_stream(
        &self,
        id: StreamId,
        a: LegPeers,
        b: LegPeers,
        policy: MediaPolicy,
    ) -> Result<(), DataplaneError> {
        self.call(id, |reply| Command::Update {
            id,
            a,
            b,
            policy,
            reply,
        })
    }

    /// Stops forwarding, closes the stream's sockets (their ports are free when this returns)
    /// and returns the final counters.
    pub fn remove_stream(&self, id: StreamId) -> Result<StreamStats, DataplaneError> {
        self.call(id, |reply| Command::Remove { id, reply })
    }

    /// Current counters of a stream.
    pub fn stream_stats(&self, id: StreamId) -> Result<StreamStats, DataplaneError> {
        self.call(id, |reply| Command::Stats { id, reply })
    }

    /// Aggregate counters of all workers.
    pub fn totals(&self) -> DataplaneTotals {
        let mut t = DataplaneTotals::default();
        for w in &self.workers {
            t.add(&w.counters);
        }
        t
    }

    /// Stops the workers, closing every socket, and joins them.
    /// Whether every worker thread is still running (a worker that died — a panic, a fatal
    /// ring error — leaves its streams unforwarded; supervision must then stop vouching for
    /// the relay so that it is restarted).
    pub fn workers_alive(&self) -> bool {
        self.workers
            .iter()
            .all(|w| w.thread.as_ref().is_some_and(|t| !t.is_finished()))
    }

    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.commands.send(Command::Shutdown);
            let _ = w.wake.write(1);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                if t.join().is_err() {
                    tracing::error!("a data plane worker panicked");
                }
            }
        }
    }
}

fn spawn_worker(index: usize, cfg: &DataplaneConfig) -> Result<WorkerHandle, DataplaneError> {
    let wake = Arc::new(
        EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map_err(|e| {
            DataplaneError::Io {
                what: "creating the worker eventfd",
                source: e.into(),
            }
        })?,
    );
    let counters = Arc::new(WorkerCounters::default());
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), DataplaneError>>(1);
    let cpu = (!cfg.pin_cpus.is_empty())
        .then(|| cfg.pin_cpus.get(index % cfg.pin_cpus.len()).copied())
        .flatten();
    let thread_cfg = cfg.clone();
    let thread_wake = Arc::clone(&wake);
    let thread_counters = Arc::clone(&counters);
    let thread = std::thread::Builder::new()
        .name(format!("pop-dp-{index}"))
        .spawn(move || {
            if let Some(cpu) = cpu {
                if let Err(e) = pin_to_cpu(cpu) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            match thread_cfg.backend {
                Backend::Uring => match uring_worker::UringWorker::new(
                    index,
                    &thread_cfg,
                    thread_counters,
                    rx,
                    thread_wake,
                ) {
                    Ok(w) => {
                        let _ = ready_tx.send(Ok(()));
                        w.run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                },
                Backend::Mmsg => match mmsg_worker::MmsgWorker::new(
                    index,
                    &thread_cfg,
                    thread_counters,
                    rx,
                    thread_wake,
                ) {
                    Ok(w) => {
                        let _ = ready_tx.send(Ok(()));
                        w.run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                },
            }
        })
        .map_err(|source| DataplaneError::Io {
            what: "spawning a data plane worker thread",
            source,
        })?;
    let handle = WorkerHandle {
        commands: tx,
        wake,
        counters,
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DataplaneError::WorkerGone(index)),
    }
}

fn pin_to_cpu(cpu: usize) -> Result<(), DataplaneError> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|_| DataplaneError::InvalidConfig {
        field: "pin_cpus",
        reason: format!("CPU {cpu} is out of range"),
    })?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(|e| {
        DataplaneError::InvalidConfig {
            field: "pin_cpus",
            reason: format!("cannot pin to CPU {cpu}: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataplane_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Dataplane>();
    }
}
