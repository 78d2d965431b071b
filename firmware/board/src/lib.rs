//! Board descriptors (`board/<name>/board.toml`): what the firmware must know about the
//! hardware it runs on — which NIC does what, the watchdog, where keys live, the console, and
//! which CPUs the media workers own. Parsed strictly (unknown keys refused) and validated once,
//! with errors that name the field and the reason.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pop_keystore::{BackendConfig, Profile};
use serde::Deserialize;

/// Why a descriptor was refused.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// The file could not be read.
    #[error("cannot read board descriptor {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema (unknown keys included).
    #[error("board descriptor {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parser message with line and column.
        message: String,
    },
    /// A value is inconsistent.
    #[error("board {board}: `{field}`: {reason}")]
    Invalid {
        /// Board name.
        board: String,
        /// Dotted field path.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// CPU architecture of the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// x86-64.
    X86_64,
    /// 64-bit Arm.
    Aarch64,
}

/// What a network interface is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NicRole {
    /// A carrier uplink (needs `preference`).
    Uplink,
    /// Out-of-band management (SSH from the management network only).
    Management,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// Kernel interface name (stable, from udev rules on the image).
    pub name: String,
    /// PCI/platform path, so technicians can map names to ports.
    pub bus: String,
    /// What it is for.
    pub role: NicRole,
    /// Uplinks only: 0 is the primary, then 1, 2...
    #[serde(default)]
    pub preference: Option<u8>,
}

/// Hardware watchdog.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogSpec {
    /// Device node (`/dev/watchdog0`; softdog in VMs).
    pub device: PathBuf,
    /// Seconds before the board resets if not petted.
    pub timeout_secs: u32,
    /// The driver cannot be disarmed once opened.
    #[serde(default)]
    pub nowayout: bool,
}

/// Which CPUs do what.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuLayout {
    /// CPUs on the board.
    pub count: usize,
    /// CPUs the relay's data-plane workers are pinned to, one worker each.
    pub relay_workers: Vec<usize>,
    /// CPUs for everything else (control threads, agent, link monitor).
    pub housekeeping: Vec<usize>,
}

/// Serial console.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Console {
    /// Device (`ttyS0`, `ttyAMA0`).
    pub device: String,
    /// Baud rate.
    pub baud: u32,
}

/// A board descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Short name, the directory under `board/`.
    pub name: String,
    /// Human description for technicians.
    pub description: String,
    /// CPU architecture.
    pub arch: Arch,
    /// Production boards refuse software keys.
    pub profile: Profile,
    /// Network interfaces.
    pub nics: Vec<Nic>,
    /// Hardware watchdog.
    pub watchdog: WatchdogSpec,
    /// Where keys live.
    pub keystore: BackendConfig,
    /// Serial console.
    pub console: Console,
    /// CPU layout.
    pub cpus: CpuLayout,
}

impl Board {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, BoardError> {
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let board: Board = toml::from_str(&text).map_err(|e| BoardError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        board.validate()?;
        Ok(board)
    }

    /// Cross-field rules.
    pub fn validate(&self) -> Result<(), BoardError> {
        let invalid = |field, reason: String| BoardError::Invalid {
            board: self.name.clone(),
            field,
            reason,
        };
        if self.profile == Profile::Production && matches!(self.keystore, BackendConfig::Dev(_)) {
            return Err(invalid(
                "keystore.backend",
                "a production board must keep keys in hardware (tpm or pkcs11), not `dev`".into(),
            ));
        }
        let mut names = BTreeSet::new();
        let mut preferences = BTreeSet::new();
        for nic in &self.nics {
            if !names.insert(nic.name.as_str()) {
                return Err(invalid(
                    "nics.name",
                    format!("`{}` appears twice", nic.name),
                ));
            }
            match (nic.role, nic.preference) {
                (NicRole::Uplink, Some(preference)) => {
                    if !preferences.insert(preference) {
                        return Err(invalid(
                            "nics.preference",
                            format!("two uplinks share preference {preference}"),
                        ));
                    }
                }
                (NicRole::Uplink, None) => {
                    return Err(invalid(
                        "nics.preference",
                        format!("uplink `{}` needs a preference (0 = primary)", nic.name),
                    ))
                }
                (NicRole::Management, Some(_)) => {
                    return Err(invalid(
                        "nics.preference",
                        format!(
                            "`{}` is not an uplink; preference applies to uplinks",
                            nic.name
                        ),
                    ))
                }
                (NicRole::Management, None) => {}
            }
        }
        if preferences.len() < 2 {
            return Err(invalid(
                "nics",
                format!(
                    "{} uplink(s); failover needs at least a primary and a backup",
                    preferences.len()
                ),
            ));
        }
        if preferences.iter().copied().ne(0..preferences.len() as u8) {
            return Err(invalid(
                "nics.preference",
                "uplink preferences must be 0, 1, 2... without gaps".into(),
            ));
        }
        if !(1..=600).contains(&self.watchdog.timeout_secs) {
            return Err(invalid(
                "watchdog.timeout_secs",
                format!("{} s; use 1 to 600", self.watchdog.timeout_secs),
            ));
        }
        let c = &self.cpus;
        if c.relay_workers.is_empty() {
            return Err(invalid(
                "cpus.relay_workers",
                "no CPU for the media workers".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for &cpu in c.relay_workers.iter().chain(&c.housekeeping) {
            if cpu >= c.count {
                return Err(invalid(
                    "cpus",
                    format!("CPU {cpu} does not exist (count {})", c.count),
                ));
            }
            if !seen.insert(cpu) {
                return Err(invalid(
                    "cpus",
                    format!("CPU {cpu} is both a relay worker and housekeeping, or listed twice"),
                ));
            }
        }
        if c.housekeeping.is_empty() && c.count > 1 {
            return Err(invalid(
                "cpus.housekeeping",
                "leave at least one CPU for control threads when the board has more than one"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Uplink interfaces in preference order (primary first).
    pub fn uplinks(&self) -> Vec<&Nic> {
        let mut up: Vec<(u8, &Nic)> = self
            .nics
            .iter()
            .filter_map(|n| match (n.role, n.preference) {
                (NicRole::Uplink, Some(preference)) => Some((preference, n)),
                _ => None,
            })
            .collect();
        up.sort_by_key(|(p, _)| *p);
        up.into_iter().map(|(_, n)| n).collect()
    }
}
