//! Every descriptor under `board/` loads and validates, and broken descriptors are refused with
//! the field named.

use std::path::{Path, PathBuf};

use pop_board::{Board, BoardError};

fn boards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../board")
}

#[test]
fn every_shipped_board_validates() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(boards_dir()).expect("board/ exists") {
        let dir = entry.expect("entry").path();
        let file = dir.join("board.toml");
        if !file.is_file() {
            continue;
        }
        let board = Board::load(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            Some(board.name.as_str()),
            dir.file_name().and_then(|n| n.to_str()),
            "board name must match its directory"
        );
        assert_eq!(
            board.uplinks().len(),
            2,
            "{}: primary and backup",
            board.name
        );
        names.push(board.name);
    }
    names.sort();
    assert_eq!(
        names,
        ["arm64-appliance", "qemu-x86_64", "x86_64-appliance"]
    );
}

fn refused(edit: impl Fn(&str) -> String) -> (String, &'static str) {
    let text =
        std::fs::read_to_string(boards_dir().join("x86_64-appliance/board.toml")).expect("read");
    let dir = tempfile_dir();
    let path = dir.join("board.toml");
    std::fs::write(&path, edit(&text)).expect("write");
    match Board::load(&path) {
        Err(BoardError::Invalid { field, reason, .. }) => (reason, field),
        Err(other) => (other.to_string(), "<parse>"),
        Ok(_) => panic!("edited descriptor must be refused"),
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pop-board-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn production_board_refuses_software_keys() {
    let (reason, field) = refused(|t| {
        t.replace(
            "backend = \"tpm\"\ntcti = \"device:/dev/tpmrm0\"\nstate_dir",
            "backend = \"dev\"\ndir",
        )
    });
    assert_eq!(field, "keystore.backend", "{reason}");
}

#[test]
fn broken_descriptors_name_the_field() {
    assert_eq!(
        refused(|t| t.replace("preference = 1", "preference = 0")).1,
        "nics.preference"
    );
    assert_eq!(
        refused(|t| t.replace("timeout_secs = 60", "timeout_secs = 0")).1,
        "watchdog.timeout_secs"
    );
    assert_eq!(
        refused(|t| t.replace("housekeeping = [0, 1]", "housekeeping = [0, 2]")).1,
        "cpus"
    );
    assert_eq!(refused(|t| t.replace("count = 8", "count = 4")).1, "cpus");
    let (reason, field) =
        refused(|t| t.replace("baud = 115200", "baud = 115200\nparity = \"none\""));
    assert_eq!(field, "<parse>");
    assert!(reason.contains("parity"), "unknown key named: {reason}");
}
