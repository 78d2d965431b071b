//! The one error type of the data plane.

use pop_relay_core::media::StreamId;

/// Why a data plane operation failed. Messages name what to change.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel's io_uring lacks operations the `uring` backend needs.
    #[error(
        "kernel io_uring does not support {opcodes}: upgrade the kernel (6.0 or later) or start \
         the data plane with backend `mmsg`"
    )]
    MissingOpcodes {
        /// Comma-separated opcode names (`IORING_OP_...`).
        opcodes: String,
    },
    /// An io_uring set-up step failed (ring creation, registration).
    #[error("io_uring set-up failed at {step}: {source} (io_uring disabled by sysctl or seccomp? try backend `mmsg`)")]
    RingSetup {
        /// The step that failed.
        step: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// A system call the data plane depends on failed.
    #[error("{what} failed: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// The configuration cannot work.
    #[error("invalid data plane configuration: `{field}` {reason}")]
    InvalidConfig {
        /// Offending field.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A backend name that is not `uring` or `mmsg`.
    #[error("unknown data plane backend `{0}`: expected `uring` or `mmsg`")]
    UnknownBackend(String),
    /// The stream is not known to the data plane.
    #[error("stream {0:?} is not in the data plane")]
    UnknownStream(StreamId),
    /// A stream with this id is already forwarding.
    #[error("stream {0:?} already exists in the data plane")]
    StreamExists(StreamId),
    /// The worker's socket table is full.
    #[error(
        "worker {worker} has no free socket slot (capacity {capacity}): raise \
         `max_sockets_per_worker` or the number of workers"
    )]
    SocketTableFull {
        /// Worker index.
        worker: usize,
        /// Configured capacity.
        capacity: u32,
    },
    /// The sockets handed in cannot be used (e.g. a leg without RTCP socket that does not mux).
    #[error("invalid leg: {0}")]
    InvalidLeg(&'static str),
    /// A worker thread has stopped; the data plane must be restarted.
    #[error("data plane worker {0} has stopped")]
    WorkerGone(usize),
}
