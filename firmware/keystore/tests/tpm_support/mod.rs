//! swtpm for tests: starts a private TPM 2.0 simulator (`swtpm socket --tpm2`) on free loopback
//! ports with its state in a temp dir, and kills it by PID on drop. [`TpmFixture`] opens any
//! number of sequential `TpmKeyStore`s on one simulator and state dir; the shared backend suite
//! (tests/backend_suite.rs) includes this file with `#[path]` and implements its `Fixture` trait
//! with the inherent methods here.
//!
//! swtpm serves one connection at a time: keep at most one `TpmKeyStore` per simulator alive,
//! or the second waits for the first to be dropped.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pop_keystore::tpm::{TpmConfig, TpmKeyStore};

/// Fails the test loudly when a program the TPM tests need is not installed.
pub fn require_program(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} is missing: install the Debian package {package} (scripts/setup does)"
    );
}

/// A running swtpm process, killed (by PID) and its state removed on drop.
pub struct Swtpm {
    child: Child,
    port: u16,
    _state: tempfile::TempDir,
}

/// Two consecutive free loopback ports (swtpm's control port is the server port + 1, which is
/// what the `swtpm` TCTI assumes).
fn free_port_pair() -> Option<u16> {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").ok()?;
        let port = a.local_addr().ok()?.port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Some(port);
        }
    }
    None
}

impl Swtpm {
    /// Starts a fresh simulator (manufactured state, TPM2_Startup(CLEAR) done) and waits until it
    /// accepts connections.
    pub fn start() -> Swtpm {
        require_program("swtpm", "swtpm");
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let state = tempfile::tempdir().expect("temp dir for swtpm state");
            let port = free_port_pair().expect("no free loopback port pair for swtpm");
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--server"])
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.path().display()))
                .args(["--flags", "startup-clear"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn swtpm");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().expect("wait for swtpm") {
                    let mut err = String::new();
                    if let Some(mut stderr) = child.stderr.take() {
                        use std::io::Read;
                        let _ = stderr.read_to_string(&mut err);
                    }
                    last_error = format!("swtpm exited with {status}: {err}");
                    break;
                }
                // Probe the control port: a probe of the server port would take the single
                // server connection slot for a moment.
                if TcpStream::connect(("127.0.0.1", port + 1)).is_ok() {
                    return Swtpm {
                        child,
                        port,
                        _state: state,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = "swtpm did not listen within 10 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("could not start swtpm: {last_error}");
    }

    /// The TCTI string for this simulator.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The swtpm process id (for tests that check it is gone).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Extends SHA-256 PCR `pcr` with tpm2-tools, as a measured boot would. No `TpmKeyStore` may
    /// be connected to this simulator meanwhile (swtpm serves one connection at a time).
    pub fn pcr_extend(&self, pcr: u8) {
        require_program("tpm2_pcrextend", "tpm2-tools");
        let digest = "ab".repeat(32);
        let mut child = Command::new("tpm2_pcrextend")
            .arg(format!("{pcr}:sha256={digest}"))
            .env("TPM2TOOLS_TCTI", self.tcti())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tpm2_pcrextend");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait for tpm2_pcrextend") {
                assert!(status.success(), "tpm2_pcrextend failed: {status}");
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tpm2_pcrextend did not finish within 20 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // Child::kill signals exactly this PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A simulator plus a state directory: what a `TpmKeyStore` needs, reopenable after a restart.
pub struct TpmFixture {
    swtpm: Option<Arc<Swtpm>>,
    tcti: String,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TpmFixture {
    /// Starts a simulator and makes a fresh state dir.
    pub fn new() -> Self {
        let swtpm = Swtpm::start();
        let tmp = tempfile::tempdir().expect("temp dir");
        TpmFixture {
            tcti: swtpm.tcti(),
            swtpm: Some(Arc::new(swtpm)),
            dir: tmp.path().to_owned(),
            _tmp: Some(tmp),
        }
    }

    /// Rebuilds the fixture of a parent process from [`TpmFixture::describe`]; the parent keeps
    /// the simulator running.
    pub fn from_description(desc: &str) -> Option<Self> {
        let rest = desc.strip_prefix("tpm|")?;
        let (dir, tcti) = rest.split_once('|')?;
        Some(TpmFixture {
            swtpm: None,
            tcti: tcti.to_owned(),
            dir: PathBuf::from(dir),
            _tmp: None,
        })
    }

    /// `tpm|<dir>|<tcti>`.
    pub fn describe(&self) -> String {
        format!("tpm|{}|{}", self.dir.display(), self.tcti)
    }

    /// The key store config for this fixture (bus parameter encryption on, the default).
    pub fn config(&self) -> TpmConfig {
        TpmConfig {
            tcti: self.tcti.clone(),
            state_dir: self.dir.join("tpm-state"),
            parameter_encryption: true,
        }
    }

    /// Opens a key store (drop the previous one first: swtpm serves one connection).
    pub fn open_tpm(&self) -> TpmKeyStore {
        TpmKeyStore::open(&self.config()).expect("open TPM key store on swtpm")
    }

    /// A directory private to this fixture (object stores, test files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The simulator, when this process started it.
    pub fn swtpm(&self) -> Option<&Swtpm> {
        self.swtpm.as_deref()
    }
}
