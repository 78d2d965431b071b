//! Backend fixtures for the shared suite: each starts its backend on private state (temp dirs,
//! a SoftHSM2 token of its own) and can open any number of fresh `KeyStore` instances on it —
//! in this process or, described through an environment variable, in a child process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use pop_keystore::dev::DevKeyStore;
use pop_keystore::pkcs11::Pkcs11KeyStore;
use pop_keystore::{KeyStore, Profile};

pub mod tls;

#[path = "../tpm_support/mod.rs"]
pub mod tpm_support;
pub use tpm_support::TpmFixture;

impl Fixture for TpmFixture {
    fn open(&self) -> Arc<dyn KeyStore> {
        Arc::new(self.open_tpm())
    }
    fn dir(&self) -> &Path {
        TpmFixture::dir(self)
    }
    fn describe(&self) -> String {
        TpmFixture::describe(self)
    }
}

/// Tells a re-executed test binary that it is the second process of a restart test, and how to
/// open the first process's state.
pub const CHILD_ENV: &str = "POP_KEYSTORE_SUITE_CHILD";
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "31415926";
const SO_PIN: &str = "27182818";
/// Tokens initialised up front: SoftHSM2 reads its token directory at C_Initialize, which happens
/// once per process, so every test's token must exist before the first test opens one.
const TOKENS: usize = 24;

pub trait Fixture: Send + Sync {
    /// Opens a new key store instance on this fixture's state.
    fn open(&self) -> Arc<dyn KeyStore>;
    /// A directory for object stores, private to this fixture.
    fn dir(&self) -> &Path;
    /// What a child process needs to open the same state (see [`from_description`]).
    fn describe(&self) -> String;
}

/// Rebuilds a fixture in a child process from [`Fixture::describe`].
pub fn from_description(desc: &str) -> Box<dyn Fixture> {
    let mut parts = desc.split('|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("dev"), Some(dir), None) => Box::new(DevFixture {
            dir: PathBuf::from(dir),
            _tmp: None,
        }),
        (Some("pkcs11"), Some(dir), Some(token)) => Box::new(SoftHsmFixture {
            dir: PathBuf::from(dir),
            token: token.to_owned(),
            _tmp: None,
        }),
        (Some("tpm"), Some(_), Some(_)) => {
            Box::new(TpmFixture::from_description(desc).expect("tpm fixture description"))
        }
        _ => panic!("bad child fixture description {desc:?}"),
    }
}

pub struct DevFixture {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl DevFixture {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        DevFixture {
            dir: tmp.path().to_owned(),
            _tmp: Some(tmp),
        }
    }
}

impl Fixture for DevFixture {
    fn open(&self) -> Arc<dyn KeyStore> {
        Arc::new(
            DevKeyStore::open(&self.dir.join("keystore"), Profile::Development)
                .expect("open dev key store"),
        )
    }
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn describe(&self) -> String {
        format!("dev|{}", self.dir.display())
    }
}

/// One SoftHSM2 token per fixture, in a token directory shared by this test process.
pub struct SoftHsmFixture {
    dir: PathBuf,
    token: String,
    _tmp: Option<tempfile::TempDir>,
}

struct SoftHsmHome {
    root: PathBuf,
    next: AtomicUsize,
}

fn require_program(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package {package} (scripts/setup does)"
    );
}

fn softhsm_home() -> &'static SoftHsmHome {
    static HOME: OnceLock<SoftHsmHome> = OnceLock::new();
    HOME.get_or_init(|| {
        require_program("/usr/bin/softhsm2-util", "softhsm2");
        require_program(SOFTHSM_MODULE, "softhsm2");
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        // A test process cannot clean up a static at exit; remove homes of processes that are gone.
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("softhsm-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let root = base.join(format!("softhsm-{}", std::process::id()));
        // A child process of a restart test inherits SOFTHSM2_CONF and uses the parent's home.
        if let Ok(conf) = std::env::var("SOFTHSM2_CONF") {
            if std::env::var(CHILD_ENV).is_ok() {
                let root = Path::new(&conf).parent().expect("conf dir").to_owned();
                return SoftHsmHome {
                    root,
                    next: AtomicUsize::new(TOKENS),
                };
            }
        }
        let tokens = root.join("tokens");
        std::fs::create_dir_all(&tokens).expect("create SoftHSM2 token dir");
        let conf = root.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        // Before any C_Initialize in this process (this OnceLock runs before the first open).
        std::env::set_var("SOFTHSM2_CONF", &conf);
        for i in 0..TOKENS {
            let out = Command::new("softhsm2-util")
                .args([
                    "--init-token",
                    "--free",
                    "--label",
                    &format!("pop-t{i}"),
                    "--pin",
                    PIN,
                    "--so-pin",
                    SO_PIN,
                ])
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .expect("run softhsm2-util");
            assert!(
                out.status.success(),
                "softhsm2-util --init-token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        SoftHsmHome {
            root,
            next: AtomicUsize::new(0),
        }
    })
}

impl SoftHsmFixture {
    pub fn new() -> Self {
        let home = softhsm_home();
        let n = home.next.fetch_add(1, Ordering::Relaxed);
        assert!(
            n < TOKENS,
            "more SoftHSM2 fixtures than TOKENS ({TOKENS}); raise it"
        );
        let tmp = tempfile::tempdir().expect("temp dir");
        SoftHsmFixture {
            dir: tmp.path().to_owned(),
            token: format!("pop-t{n}"),
            _tmp: Some(tmp),
        }
    }
}

impl Fixture for SoftHsmFixture {
    fn open(&self) -> Arc<dyn KeyStore> {
        let _ = softhsm_home();
        let pin = cryptoki::types::AuthPin::new(PIN.into());
        Arc::new(
            Pkcs11KeyStore::open_with_pin(
                Path::new(SOFTHSM_MODULE),
                &self.token,
                pin,
                "pop-root-wrap",
            )
            .expect("open SoftHSM2 token"),
        )
    }
    fn dir(&self) -> &Path {
        &self.dir
    }
    fn describe(&self) -> String {
        format!("pkcs11|{}|{}", self.dir.display(), self.token)
    }
}
