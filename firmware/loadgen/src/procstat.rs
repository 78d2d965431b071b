//! Samples of a process's resource use from `/proc`: CPU time, RSS, peak RSS, open files.

use serde::Serialize;

use crate::error::{LoadgenError, Result};

/// One sample of a process's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcSample {
    /// utime + stime of all threads, in seconds.
    pub cpu_s: f64,
    /// stime alone (kernel time: system calls and the network stack work they carry), seconds.
    pub cpu_sys_s: f64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Peak resident set size, KiB.
    pub hwm_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// Clock ticks per second for `/proc/PID/stat` times (USER_HZ; 100 on every Linux ABI we run).
fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// Reads a sample of process `pid`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat = read(&stat_path)?;
    let (utime, stime) = parse_stat_user_sys_ticks(&stat).ok_or_else(|| LoadgenError::Proc {
        path: stat_path.clone(),
        reason: "no utime/stime fields".into(),
    })?;
    let status_path = format!("/proc/{pid}/status");
    let status = read(&status_path)?;
    let fd_path = format!("/proc/{pid}/fd");
    let fds = std::fs::read_dir(&fd_path)
        .map_err(|e| LoadgenError::Proc {
            path: fd_path,
            reason: e.to_string(),
        })?
        .count() as u64;
    Ok(ProcSample {
        cpu_s: (utime + stime) as f64 / clock_ticks(),
        cpu_sys_s: stime as f64 / clock_ticks(),
        rss_kib: parse_status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: parse_status_kib(&status, "VmHWM:").unwrap_or(0),
        fds,
    })
}

/// CPU seconds the calling process has used (all threads).
pub fn self_cpu_s() -> f64 {
    sample(std::process::id()).map_or(0.0, |s| s.cpu_s)
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| LoadgenError::Proc {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// utime + stime (fields 14 and 15) from a `/proc/PID/stat` line. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    parse_stat_user_sys_ticks(stat).map(|(u, s)| u + s)
}

/// (utime, stime) from a `/proc/PID/stat` line, fields counted as in [`parse_stat_cpu_ticks`].
pub fn parse_stat_user_sys_ticks(stat: &str) -> Option<(u64, u64)> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_ascii_whitespace();
    // After the name: field 3 (state) is the first; utime is field 14 → index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// A `kB` value of a `/proc/PID/status` line such as `VmRSS:   1234 kB`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_counted_after_command_name_with_spaces() {
        let line = "1234 (rtp engine) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
        assert_eq!(parse_stat_user_sys_ticks(line), Some((250, 75)));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_kib_parsed() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kib(s, "VmRSS:"), Some(1024));
        assert_eq!(parse_status_kib(s, "VmHWM:"), Some(2048));
        assert_eq!(parse_status_kib(s, "VmSwap:"), None);
    }

    #[test]
    fn own_process_sample_is_plausible() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.fds >= 3);
        assert!(s.hwm_kib >= s.rss_kib);
    }
}
