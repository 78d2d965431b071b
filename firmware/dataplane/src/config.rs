//! Start-up configuration of the data plane.

use std::str::FromStr;

use crate::DataplaneError;

/// How workers move packets. Chosen once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: multishot recvmsg into a provided buffer ring, batched sendmsg on fixed files.
    Uring,
    /// epoll + `recvmmsg`/`sendmmsg` batches, for hosts where io_uring is unavailable or slower.
    Mmsg,
}

impl FromStr for Backend {
    type Err = DataplaneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uring" => Ok(Self::Uring),
            "mmsg" => Ok(Self::Mmsg),
            other => Err(DataplaneError::UnknownBackend(other.to_owned())),
        }
    }
}

/// Data plane sizing. Tables are allocated from these at start and never grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// I/O backend.
    pub backend: Backend,
    /// Worker threads; streams are spread over them by id.
    pub workers: usize,
    /// CPU of each worker (worker `i` on `pin_cpus[i % len]`); empty: no pinning.
    pub pin_cpus: Vec<usize>,
    /// Sockets (fixed-file slots) per worker. A call uses up to 4.
    pub max_sockets_per_worker: u32,
    /// Submission queue entries per ring (power of two); the completion queue is 4× larger.
    pub ring_entries: u32,
    /// 2 KiB receive buffers per worker (power of two, at most 32768).
    pub buffers_per_worker: u16,
    /// io_uring: completions a worker waits for before waking up once traffic flows...
    pub batch_completions: u32,
    /// ...or this many microseconds, whichever comes first (0: wake for every completion).
    /// Bounds the latency coalescing can add; an idle worker still wakes on the first packet.
    pub batch_wait_usec: u32,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Uring,
            workers: 1,
            pin_cpus: Vec::new(),
            max_sockets_per_worker: 4096,
            ring_entries: 1024,
            buffers_per_worker: 4096,
            batch_completions: 32,
            batch_wait_usec: 0,
        }
    }
}

impl DataplaneConfig {
    /// Refuses values the workers cannot run with, naming the field.
    pub fn validate(&self) -> Result<(), DataplaneError> {
        let bad = |field, reason: &str| {
            Err(DataplaneError::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.workers == 0 || self.workers > 256 {
            return bad("workers", "must be between 1 and 256");
        }
        if self.max_sockets_per_worker == 0 || self.max_sockets_per_worker > 1 << 20 {
            return bad("max_sockets_per_worker", "must be between 1 and 1048576");
        }
        if !self.ring_entries.is_power_of_two() || !(8..=32768).contains(&self.ring_entries) {
            return bad("ring_entries", "must be a power of two between 8 and 32768");
        }
        if !self.buffers_per_worker.is_power_of_two() || self.buffers_per_worker > 32768 {
            return bad(
                "buffers_per_worker",
                "must be a power of two between 1 and 32768",
            );
        }
        if self.batch_wait_usec > 10_000 {
            return bad(
                "batch_wait_usec",
                "must be at most 10000 (10 ms): it is added to media latency",
            );
        }
        if self.batch_completions == 0 || self.batch_completions > self.ring_entries {
            return bad("batch_completions", "must be between 1 and ring_entries");
        }
        if let Some(cpu) = self.pin_cpus.iter().find(|&&c| c >= 1024) {
            return bad("pin_cpus", &format!("CPU {cpu} is out of range"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_parses_and_refuses_unknown() {
        assert_eq!("uring".parse::<Backend>().unwrap(), Backend::Uring);
        assert_eq!("mmsg".parse::<Backend>().unwrap(), Backend::Mmsg);
        let err = "epoll".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("epoll") && err.contains("mmsg"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        assert!(DataplaneConfig::default().validate().is_ok());
        let cfg = DataplaneConfig {
            buffers_per_worker: 1000,
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("buffers_per_worker"), "{err}");
        let cfg = DataplaneConfig {
            workers: 0,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("workers"));
    }
}
