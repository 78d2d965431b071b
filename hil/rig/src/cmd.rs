//! Running the system tools the rig drives (`ip`, `nft`, `sysctl`), with errors that show the
//! command line and its stderr.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Result, RigError};

/// `ip` from iproute2.
pub(crate) const IP: &str = "/usr/sbin/ip";
/// `nft` from nftables.
pub(crate) const NFT: &str = "/usr/sbin/nft";
/// `sysctl` from procps.
pub(crate) const SYSCTL: &str = "/usr/sbin/sysctl";
/// FRR's BFD daemon.
pub(crate) const BFDD: &str = "/usr/lib/frr/bfdd";

/// Fails with an actionable error unless the rig runs as root and every tool it always needs
/// is installed.
pub(crate) fn check_prerequisites() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(RigError::NotRoot);
    }
    for (program, package) in [(IP, "iproute2"), (NFT, "nftables"), (SYSCTL, "procps")] {
        require_tool(program, package)?;
    }
    Ok(())
}

/// Fails unless `program` exists.
pub(crate) fn require_tool(program: &str, package: &'static str) -> Result<()> {
    if Path::new(program).exists() {
        Ok(())
    } else {
        Err(RigError::MissingTool {
            program: program.to_owned(),
            package,
        })
    }
}

fn render(program: &str, args: &[&str]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// Runs `program args`, feeding `stdin` if given; returns stdout, or an error with stderr.
pub(crate) fn run_with_input(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let command = render(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RigError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let Some(input) = stdin {
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(input.as_bytes())
                .map_err(|e| RigError::io(format!("writing the input of `{command}`"), e))?;
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| RigError::io(format!("waiting for `{command}`"), e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(RigError::Command {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs `program args` and returns stdout.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

/// Runs `ip -n <ns> -batch -` with one command per line: one process for many changes.
pub(crate) fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    let script = lines.join("\n") + "\n";
    run_with_input(IP, &["-n", ns, "-batch", "-"], Some(&script)).map(drop)
}

/// Runs `program args` inside namespace `ns` (`ip netns exec`, which also gives the command
/// the namespace's own /sys).
pub(crate) fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    run_in_with_input(ns, program, args, None)
}

/// As [`run_in`], feeding `stdin`.
pub(crate) fn run_in_with_input(
    ns: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run_with_input(IP, &full, stdin)
}
