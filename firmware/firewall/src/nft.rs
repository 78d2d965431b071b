//! [`Nft`]: runs the `nft` program, on the host or inside a named network namespace (through
//! `ip netns exec`), with the script on standard input and a time limit.

use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::render::TABLE;

/// Why an `nft` invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The program could not be started.
    #[error("cannot run `{program}` (is {package} installed?): {source}")]
    Spawn {
        /// Program name.
        program: &'static str,
        /// Debian package that provides it.
        package: &'static str,
        /// OS error.
        source: io::Error,
    },
    /// nft (or `ip netns exec`) exited with an error; nothing was changed.
    #[error("nft {action} failed ({status}): {stderr}")]
    Rejected {
        /// `check`, `apply`, `list` or `remove`.
        action: &'static str,
        /// Exit status.
        status: String,
        /// nft's diagnostics (file position, the offending text, the reason).
        stderr: String,
    },
    /// nft did not finish in time and was killed.
    #[error("nft {action} did not finish within {secs} s and was killed")]
    Timeout {
        /// What was run.
        action: &'static str,
        /// Limit.
        secs: u64,
    },
    /// Talking to the child failed.
    #[error("nft {action}: {source}")]
    Io {
        /// What was run.
        action: &'static str,
        /// OS error.
        source: io::Error,
    },
    /// The namespace name cannot be one (`ip netns` names are file names).
    #[error("network namespace name {name:?} is not valid")]
    InvalidNetns {
        /// The name given.
        name: String,
    },
}

/// Where `nft` runs: the host's network namespace or a named one (`ip netns add NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nft {
    netns: Option<String>,
    timeout: Duration,
}

impl Default for Nft {
    fn default() -> Self {
        Self::host()
    }
}

/// Output of one run.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Nft {
    /// The host's (the caller's) network namespace.
    pub fn host() -> Self {
        Self {
            netns: None,
            // nft loads a ruleset of this size in milliseconds; the limit only guards against a
            // wedged netlink socket holding the agent forever.
            timeout: Duration::from_secs(30),
        }
    }

    /// The named network namespace (as created by `ip netns add`).
    pub fn in_netns(name: impl Into<String>) -> Self {
        Self {
            netns: Some(name.into()),
            ..Self::host()
        }
    }

    /// The namespace targeted, if not the host's.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Checks a script without changing anything (`nft -c -f -`): the kernel validates the
    /// whole transaction and throws it away.
    pub fn check(&self, script: &str) -> Result<(), FirewallError> {
        self.run_ok("check", &["-c", "-f", "-"], script).map(drop)
    }

    /// Applies a script (`nft -f -`) as one kernel transaction: all of it, or (on any error)
    /// none of it.
    pub fn apply(&self, script: &str) -> Result<(), FirewallError> {
        self.run_ok("apply", &["-f", "-"], script).map(drop)
    }

    /// The table as the kernel has it (`nft -s list table inet popd`: stateless, so counter
    /// values do not make two listings of the same ruleset differ), or `None` if absent.
    pub fn current(&self) -> Result<Option<String>, FirewallError> {
        let table: Vec<&str> = TABLE.split(' ').collect();
        let mut args = vec!["-s", "list", "table"];
        args.extend(table);
        let out = self.run("list", &args, "")?;
        if out.status.success() {
            return Ok(Some(out.stdout));
        }
        // nft's message for a missing table is the errno text of ENOENT.
        if out.stderr.contains("No such file or directory") {
            return Ok(None);
        }
        Err(rejected("list", &out))
    }

    /// Removes the table; succeeds if it is already absent (one transaction: create-if-absent,
    /// then delete).
    pub fn remove(&self) -> Result<(), FirewallError> {
        let script = format!("table {TABLE} {{}}\ndelete table {TABLE}\n");
        self.run_ok("remove", &["-f", "-"], &script).map(drop)
    }

    fn run_ok(
        &self,
        action: &'static str,
        args: &[&str],
        stdin: &str,
    ) -> Result<Output, FirewallError> {
        let out = self.run(action, args, stdin)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(rejected(action, &out))
        }
    }

    fn command(&self) -> Result<(Command, &'static str, &'static str), FirewallError> {
        match &self.netns {
            None => Ok((Command::new("nft"), "nft", "nftables")),
            Some(name) => {
                if name.is_empty()
                    || name.len() > 255
                    || name.contains(['/', '\0'])
                    || name == "."
                    || name == ".."
                {
                    return Err(FirewallError::InvalidNetns { name: name.clone() });
                }
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name, "nft"]);
                Ok((c, "ip", "iproute2"))
            }
        }
    }

    fn run(
        &self,
        action: &'static str,
        args: &[&str],
        stdin: &str,
    ) -> Result<Output, FirewallError> {
        let (mut cmd, program, package) = self.command()?;
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| FirewallError::Spawn {
                program,
                package,
                source,
            })?;
        let io_err = |source| FirewallError::Io { action, source };
        let (mut sin, mut sout, mut serr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => {
                    kill(&mut child);
                    return Err(io_err(io::Error::other("child pipes missing")));
                }
            };
        // Writer and readers run beside the wait so a large listing or a large script cannot
        // deadlock on a full pipe; the scope joins them once the child is gone (its pipe ends
        // close when it exits or is killed).
        thread::scope(|scope| {
            let writer = scope.spawn(move || {
                let r = sin.write_all(stdin.as_bytes());
                drop(sin); // EOF: nft starts parsing
                r
            });
            let out_reader = scope.spawn(move || read_all(&mut sout));
            let err_reader = scope.spawn(move || read_all(&mut serr));
            let status = wait_with_timeout(&mut child, self.timeout);
            let written = writer.join();
            let stdout = out_reader.join();
            let stderr = err_reader.join();
            let status = match status {
                Ok(Some(s)) => s,
                Ok(None) => {
                    return Err(FirewallError::Timeout {
                        action,
                        secs: self.timeout.as_secs(),
                    })
                }
                Err(e) => return Err(io_err(e)),
            };
            let (Ok(stdout), Ok(stderr)) = (stdout, stderr) else {
                return Err(io_err(io::Error::other("pipe reader panicked")));
            };
            // A write error (EPIPE) only matters if nft then claims success on a truncated
            // script, which it cannot: it parses to EOF. Its exit status tells.
            if let Ok(Err(e)) = written {
                if status.success() {
                    return Err(io_err(e));
                }
            }
            Ok(Output {
                status,
                stdout,
                stderr: stderr.trim().to_owned(),
            })
        })
    }
}

fn rejected(action: &'static str, out: &Output) -> FirewallError {
    FirewallError::Rejected {
        action,
        status: out.status.to_string(),
        stderr: if out.stderr.is_empty() {
            "(no diagnostics)".to_owned()
        } else {
            out.stderr.clone()
        },
    }
}

/// Reads a pipe to EOF, lossily (nft prints UTF-8; anything else must not make us fail).
/// At most 16 MiB are kept: a ruleset listing is a few kilobytes.
fn read_all(r: &mut impl Read) -> String {
    const MAX: u64 = 16 << 20;
    let mut buf = Vec::new();
    let _ = r.take(MAX).read_to_end(&mut buf);
    // Drain the rest so the child never blocks on a full pipe.
    let _ = io::copy(r, &mut io::sink());
    String::from_utf8_lossy(&buf).into_owned()
}

/// Waits for the child, killing it after `timeout` (`Ok(None)`).
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            kill(child);
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
