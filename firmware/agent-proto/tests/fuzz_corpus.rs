//! Replays the `agent_frames` fuzz seed corpus (and saved crash regressions) through the check
//! the cargo-fuzz target runs, so stable CI exercises the decoder without nightly.

#[path = "../../fuzz/agent_checks.rs"]
mod agent_checks;

#[test]
fn agent_frames_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/agent_frames");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read");
        let outcome = std::panic::catch_unwind(|| agent_checks::agent_frames(&data));
        assert!(
            outcome.is_ok(),
            "agent_frames check failed on {}",
            path.display()
        );
        files += 1;
    }
    assert!(
        files >= 3,
        "seed corpus {} has only {files} files",
        dir.display()
    );
}
