//! Per-test scratch directory that holds child logs and prints them when the test fails.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A temporary directory for one test: config files, pid files and every child's log.
///
/// On drop during a panic it prints each `*.log` file and keeps the directory so the run can be
/// inspected; otherwise it is removed, unless `POP_KEEP_TEST_DIRS` is set in the environment.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates `pop-<name>-XXXXXX` under the system temp dir.
    pub fn new(name: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pop-{name}-"))
            .tempdir()
            .context("creating the per-test temp dir")?;
        let path = dir.path().to_path_buf();
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Prints every log file in the directory to stderr (captured by the test runner and shown
    /// for failing tests).
    pub fn dump_logs(&self) {
        let Ok(entries) = fs::read_dir(&self.path) else {
            eprintln!("(cannot list {})", self.path.display());
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = fs::read(&log)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("(unreadable: {e})"));
            eprintln!("===== {} =====\n{text}===== end =====", log.display());
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            self.dump_logs();
        }
        if panicking || std::env::var_os("POP_KEEP_TEST_DIRS").is_some() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("test files kept in {}", kept.display());
            }
        }
    }
}
