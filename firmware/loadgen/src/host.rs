//! Host preparation: open-file limit and CPU pinning.

use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::Pid;

use crate::error::{LoadgenError, Result};

/// Raises the soft RLIMIT_NOFILE to the hard limit (20,000 on the benchmark host) and returns
/// it. Relays started afterwards inherit it: 4,000 sessions hold 16,000 relay sockets.
pub fn raise_nofile_limit() -> Result<u64> {
    let (_, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| LoadgenError::sys("getrlimit(NOFILE)", e))?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(|e| LoadgenError::sys("setrlimit(NOFILE)", e))?;
    Ok(hard)
}

/// Pins the calling thread to one CPU. Children spawned afterwards inherit the mask, which is
/// how the relay under test ends up on its core with all of its threads.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| LoadgenError::Config {
        field: "cpu",
        reason: format!("CPU {cpu} cannot be used: {e}"),
    })?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| LoadgenError::sys("sched_setaffinity", e))
}

/// Number of CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
