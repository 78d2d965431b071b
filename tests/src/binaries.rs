//! Locating the programs under test; a missing one is an error that says how to get it.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Finds the built `popd`.
///
/// Order: `$POPD_BIN`; then `popd` under `$CARGO_TARGET_DIR` or the workspace's `target/`, in
/// `release/` and `debug/`, taking the most recently built of the two. Tests never build it
/// themselves (a nested cargo would fight the outer one for the build lock): the test command
/// builds it first, e.g. `cargo build -p popd && cargo test -p pop-system-tests`.
pub fn popd() -> Result<PathBuf> {
    workspace_binary("popd", "POPD_BIN")
}

/// Finds the built reference control plane `pop-cp` (as [`popd`] does; `$POP_CP_BIN` first).
pub fn pop_cp() -> Result<PathBuf> {
    workspace_binary("pop-cp", "POP_CP_BIN")
}

/// Finds the built `popctl` (as [`popd`] does; `$POPCTL_BIN` first).
pub fn popctl() -> Result<PathBuf> {
    workspace_binary("popctl", "POPCTL_BIN")
}

fn workspace_binary(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(path) = env::var_os(env_var) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{env_var}={} does not exist", path.display());
        }
        return Ok(path);
    }
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join(name))
        .filter_map(|p| {
            let modified = p.metadata().and_then(|m| m.modified()).ok()?;
            Some((modified, p))
        })
        .max_by_key(|(modified, _)| *modified);
    match newest {
        Some((_, path)) => Ok(path),
        None => bail!(
            "{name} is not built (looked in {}/{{release,debug}}/{name}): run `cargo build \
             --workspace --bins` before these tests, or set {env_var}",
            target.display()
        ),
    }
}

/// Finds rtpengine (Debian package `rtpengine-daemon`).
pub fn rtpengine() -> Result<PathBuf> {
    system_program("rtpengine", "rtpengine-daemon")
}

/// Finds Kamailio (Debian package `kamailio`).
pub fn kamailio() -> Result<PathBuf> {
    system_program("kamailio", "kamailio")
}

/// Finds `name` on `$PATH` or in the sbin directories a non-root `$PATH` may lack.
pub fn system_program(name: &str, debian_package: &str) -> Result<PathBuf> {
    let path_dirs = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let fallback = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from);
    for dir in path_dirs.iter().chain(fallback.iter()) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} not found on PATH or in /usr/sbin: install the Debian package {debian_package} \
         (run scripts/setup as root)"
    )
}
