//! Host preparation: open-file limit and CPU pinning.

use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::Pid;

use crate::error::{LoadgenError, Result};

/// Raises the soft RLIMIT_NOFILE to the hard limit (20,000 on the benchmark host) and returns
/// it. Relays started afterwards inherit it: 4,000 sessions hold 16,000 relay sockets.
pub fn raise_nofile_limit() -> Result<u64> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| LoadgenError::sys("getrlimit(NOFILE)", e))?;
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

/// Idle fraction of each CPU in `cpus` over `over`, from `/proc/stat`. A benchmark on a core
/// that something else keeps busy measures that something else; runs record this so such
/// figures are flagged instead of trusted.
pub fn cpu_idle_fractions(cpus: &[usize], over: std::time::Duration) -> Vec<f64> {
    let before = cpu_times();
    std::thread::sleep(over);
    let after = cpu_times();
    cpus.iter()
        .map(|&c| match (before.get(c), after.get(c)) {
            (Some(&(i0, t0)), Some(&(i1, t1))) if t1 > t0 => (i1 - i0) as f64 / (t1 - t0) as f64,
            _ => 0.0,
        })
        .collect()
}

/// (idle + iowait, total) jiffies per CPU.
fn cpu_times() -> Vec<(u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_ascii_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            // guest time is already included in user time
            (idle, v.iter().take(8).sum())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_fractions_are_fractions() {
        let f = cpu_idle_fractions(&[0], std::time::Duration::from_millis(50));
        assert_eq!(f.len(), 1);
        assert!((0.0..=1.0).contains(&f[0]), "{f:?}");
    }
}
