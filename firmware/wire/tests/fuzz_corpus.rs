//! Replays every file of every fuzz seed corpus (and saved crash regressions) through the same
//! checks the cargo-fuzz targets run, so stable CI exercises them without nightly.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/checks.rs"]
mod checks;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Runs `check` on every file in the target's corpus; fails if the corpus is missing or empty.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {} unreadable: {e}", dir.display()));
    let mut files = 0;
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .path();
        if !path.is_file() {
            continue;
        }
        let data =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target} check failed on {}",
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

#[test]
fn rtp_corpus() {
    replay("rtp", checks::rtp);
}

#[test]
fn rtcp_corpus() {
    replay("rtcp", checks::rtcp);
}

#[test]
fn telephone_event_corpus() {
    replay("telephone_event", checks::telephone_event);
}

#[test]
fn bencode_corpus() {
    replay("bencode", checks::bencode);
}

#[test]
fn bfd_corpus() {
    replay("bfd", checks::bfd);
}

#[test]
fn sdp_corpus() {
    replay("sdp", checks::sdp);
}

/// The seeds are meant to reach the interesting paths, not only the rejections.
#[test]
fn seeds_include_valid_inputs() {
    use pop_wire::{bencode, rtcp::RtcpCompound, rtp::RtpPacket, sdp::Sdp};
    let read = |t: &str, f: &str| {
        let p = corpus_dir(t).join(f);
        std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    };
    assert!(RtpPacket::new_checked(&read("rtp", "seed-csrc-ext")[..]).is_ok());
    assert_eq!(
        RtcpCompound::new_checked(&read("rtcp", "seed-sr-sdes"))
            .map(|c| c.packets().count())
            .ok(),
        Some(2)
    );
    assert!(bencode::decode(&read("bencode", "seed-ng-offer")).is_ok());
    assert!(Sdp::parse(&read("sdp", "seed-audio-offer")).is_ok());
    assert!(pop_wire::bfd::BfdControl::parse(&read("bfd", "seed-up-poll")).is_ok());
    assert!(pop_wire::bfd::BfdControl::parse(&read("bfd", "seed-auth-simple")).is_ok());
}
