//! Behaviour of the spool on real files (tempdir) with the software key store.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pop_keystore::dev::DevKeyStore;
use pop_keystore::{KeyStore, Profile};
use pop_spool::{
    NewRecord, RecordClass, Spool, SpoolConfig, SpoolError, StoredRecord, FRAME_OVERHEAD,
};
use tempfile::TempDir;

struct Fixture {
    tmp: TempDir,
    ks: Arc<dyn KeyStore>,
    cfg: SpoolConfig,
}

impl Fixture {
    fn new(segment_bytes: u64, max_bytes: u64) -> Fixture {
        let tmp = TempDir::new().unwrap();
        let ks: Arc<dyn KeyStore> =
            Arc::new(DevKeyStore::open(&tmp.path().join("ks"), Profile::Development).unwrap());
        let cfg = SpoolConfig {
            dir: tmp.path().join("spool"),
            max_bytes,
            segment_bytes,
            alarm_percent: 80,
        };
        Fixture { tmp, ks, cfg }
    }

    fn open(&self) -> (Spool, pop_spool::RecoveryReport) {
        Spool::open(self.cfg.clone(), Arc::clone(&self.ks)).unwrap()
    }

    fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}

fn body(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as usize * 31 + i) as u8).collect()
}

fn all(sp: &Spool) -> Vec<StoredRecord> {
    sp.pending_after(0, usize::MAX).unwrap()
}

fn ids(recs: &[StoredRecord]) -> Vec<u64> {
    recs.iter().map(|r| r.id).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("seg-") && n.ends_with(".log")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_survives_reopen() {
    let f = Fixture::new(1 << 16, 1 << 20);
    let classes = [
        RecordClass::Telemetry,
        RecordClass::Event,
        RecordClass::Cdr,
        RecordClass::Audit,
    ];
    let mut expected = Vec::new();
    {
        let (mut sp, rep) = f.open();
        assert_eq!(rep.records, 0);
        for (i, class) in classes.iter().enumerate() {
            let b = body(i as u64, 10 + i * 100);
            let id = sp.append(*class, 1_000 + i as u64, &b).unwrap();
            expected.push(StoredRecord {
                id,
                class: *class,
                created_unix_ms: 1_000 + i as u64,
                body: b,
            });
        }
        assert_eq!(ids(&expected), vec![1, 2, 3, 4]);
        assert_eq!(all(&sp), expected);
        let st = sp.stats();
        assert_eq!((st.pending_records, st.last_id, st.acked_up_to), (4, 4, 0));
        assert_eq!(
            st.bytes,
            std::fs::metadata(&segment_files(f.dir())[0]).unwrap().len()
        );
    }
    let (sp, rep) = f.open();
    assert_eq!(
        (rep.records, rep.corrupt_records, rep.truncated_tail_bytes),
        (4, 0, 0)
    );
    assert_eq!(all(&sp), expected);
    // Bodies are encrypted on disk.
    let raw = std::fs::read(&segment_files(f.dir())[0]).unwrap();
    assert!(!raw.windows(40).any(|w| w == &expected[3].body[..40]));
}

#[test]
fn empty_body_and_batch_round_trip() {
    let f = Fixture::new(8192, 1 << 20);
    let (mut sp, _) = f.open();
    assert_eq!(sp.append(RecordClass::Event, 5, b"").unwrap(), 1);
    let bodies: Vec<Vec<u8>> = (0..40).map(|i| body(i, 300)).collect();
    let batch: Vec<NewRecord<'_>> = bodies
        .iter()
        .map(|b| NewRecord {
            class: RecordClass::Telemetry,
            created_unix_ms: 9,
            body: b,
        })
        .collect();
    let got = sp.append_batch(&batch).unwrap();
    assert_eq!(got, (2..=41).collect::<Vec<_>>());
    // 40 × 341 bytes spread over several 8 KiB segments.
    assert!(segment_files(f.dir()).len() >= 2);
    let recs = all(&sp);
    assert_eq!(recs[0].body, b"");
    for (r, b) in recs[1..].iter().zip(&bodies) {
        assert_eq!(&r.body, b);
    }
    assert!(sp.append_batch(&[]).unwrap().is_empty());
}

#[test]
fn ids_strictly_increase_across_reopen_even_when_everything_was_acked() {
    let f = Fixture::new(4096, 1 << 20);
    {
        let (mut sp, _) = f.open();
        for i in 1..=5 {
            assert_eq!(sp.append(RecordClass::Cdr, 0, &body(i, 10)).unwrap(), i);
        }
    }
    {
        let (mut sp, _) = f.open();
        assert_eq!(sp.stats().last_id, 5);
        assert_eq!(sp.append(RecordClass::Cdr, 0, b"x").unwrap(), 6);
        sp.ack_up_to(6).unwrap();
    }
    {
        // Every segment is gone; the id floor comes from the state file.
        let (mut sp, rep) = f.open();
        assert_eq!(rep.segments, 0);
        assert!(segment_files(f.dir()).is_empty());
        assert_eq!(sp.append(RecordClass::Event, 0, b"y").unwrap(), 7);
        // The control plane knows more than we do (e.g. a wiped spool): never reuse its ids.
        sp.ack_up_to(100).unwrap();
        assert_eq!(sp.append(RecordClass::Event, 0, b"z").unwrap(), 101);
    }
    let (mut sp, _) = f.open();
    assert_eq!(sp.append(RecordClass::Event, 0, b"w").unwrap(), 102);
    assert_eq!(ids(&all(&sp)), vec![101, 102]);
}

#[test]
fn ack_deletes_fully_acknowledged_segments() {
    let f = Fixture::new(4096, 1 << 20);
    let (mut sp, _) = f.open();
    for i in 1..=40 {
        sp.append(RecordClass::Telemetry, 0, &body(i, 500)).unwrap();
    }
    let before = segment_files(f.dir()).len();
    assert!(before >= 5, "{before} segments");
    let bytes_before = sp.stats().bytes;
    sp.ack_up_to(25).unwrap();
    let after = segment_files(f.dir());
    assert!(after.len() < before, "{} -> {}", before, after.len());
    let on_disk: u64 = after
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let st = sp.stats();
    assert_eq!(st.bytes, on_disk);
    assert!(st.bytes < bytes_before);
    assert_eq!((st.pending_records, st.acked_up_to), (15, 25));
    assert_eq!(ids(&all(&sp)), (26..=40).collect::<Vec<_>>());
    // An older ack arriving late changes nothing.
    sp.ack_up_to(10).unwrap();
    assert_eq!(sp.stats().acked_up_to, 25);
    drop(sp);
    let (sp, rep) = f.open();
    assert_eq!(rep.records, 15);
    assert_eq!(ids(&all(&sp)), (26..=40).collect::<Vec<_>>());
}

#[test]
fn ack_everything_removes_closed_segments_and_keeps_appending() {
    let f = Fixture::new(4096, 1 << 20);
    let (mut sp, _) = f.open();
    for i in 1..=20 {
        sp.append(RecordClass::Event, 0, &body(i, 400)).unwrap();
    }
    sp.ack_up_to(20).unwrap();
    // Only the active segment may remain, with nothing pending.
    assert!(segment_files(f.dir()).len() <= 1);
    assert_eq!(sp.stats().pending_records, 0);
    assert_eq!(sp.append(RecordClass::Event, 0, b"next").unwrap(), 21);
    assert_eq!(ids(&all(&sp)), vec![21]);
}

#[test]
fn pending_after_pages_in_id_order() {
    let f = Fixture::new(4096, 1 << 20);
    let (mut sp, _) = f.open();
    for i in 1..=25 {
        sp.append(RecordClass::Event, i, &body(i, 200)).unwrap();
    }
    sp.ack_up_to(3).unwrap();
    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = sp.pending_after(after, 10).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        for r in &page {
            assert_eq!(r.body, body(r.id, 200));
            assert_eq!(r.created_unix_ms, r.id);
        }
        after = page.last().unwrap().id;
        seen.extend(ids(&page));
        pages += 1;
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (4..=25).collect::<Vec<_>>());
    assert!(sp.pending_after(0, 0).unwrap().is_empty());
    assert_eq!(
        ids(&sp.pending_after(20, 100).unwrap()),
        vec![21, 22, 23, 24, 25]
    );
}

#[test]
fn erase_where_removes_matching_records_durably() {
    let f = Fixture::new(4096, 1 << 20);
    {
        let (mut sp, _) = f.open();
        for i in 1..=30u64 {
            let subject = if i % 3 == 0 { "alice" } else { "bob" };
            sp.append(
                RecordClass::Cdr,
                i,
                format!("subject={subject};n={i}").as_bytes(),
            )
            .unwrap();
        }
        sp.ack_up_to(6).unwrap();
        let mut asked = 0;
        let n = sp
            .erase_where(&mut |r| {
                asked += 1;
                r.body.starts_with(b"subject=alice")
            })
            .unwrap();
        // Only unacknowledged records are judged: ids 7..=30, of which 9, 12, .., 30 match.
        assert_eq!(asked, 24);
        assert_eq!(n, 8);
        let left = all(&sp);
        assert_eq!(left.len(), 16);
        assert!(left.iter().all(|r| r.body.starts_with(b"subject=bob")));
        // Appends continue after a rewrite of the active segment.
        assert_eq!(sp.append(RecordClass::Audit, 0, b"after").unwrap(), 31);
    }
    let (sp, rep) = f.open();
    assert_eq!(rep.corrupt_records, 0);
    let left = all(&sp);
    assert_eq!(left.len(), 17);
    assert!(left[..16]
        .iter()
        .all(|r| r.body.starts_with(b"subject=bob")));
    assert_eq!(left[16].body, b"after");
}

/// Offsets of the frames in a one-segment spool whose bodies have the given lengths.
fn frame_offsets(file_len: usize, body_lens: &[usize]) -> Vec<usize> {
    let total: usize = body_lens.iter().map(|l| l + FRAME_OVERHEAD).sum();
    let mut at = file_len - total;
    body_lens
        .iter()
        .map(|l| {
            let o = at;
            at += l + FRAME_OVERHEAD;
            o
        })
        .collect()
}

#[test]
fn a_damaged_middle_record_is_reported_and_the_others_survive() {
    let f = Fixture::new(1 << 16, 1 << 20);
    {
        let (mut sp, _) = f.open();
        for i in 1..=3 {
            sp.append(RecordClass::Cdr, i, &body(i, 100)).unwrap();
        }
    }
    let seg = segment_files(f.dir()).remove(0);
    let mut raw = std::fs::read(&seg).unwrap();
    let offs = frame_offsets(raw.len(), &[100, 100, 100]);
    raw[offs[1] + 60] ^= 0x5A;
    std::fs::write(&seg, &raw).unwrap();

    let (mut sp, rep) = f.open();
    assert_eq!(rep.corrupt_records, 1);
    assert_eq!(rep.truncated_tail_bytes, 0);
    let recs = all(&sp);
    assert_eq!(ids(&recs), vec![1, 3]);
    assert_eq!(recs[1].body, body(3, 100));
    assert_eq!(sp.stats().corrupt_records, 1);
    assert_eq!(sp.append(RecordClass::Cdr, 4, b"4").unwrap(), 4);
}

#[test]
fn a_tampered_ciphertext_with_a_valid_crc_is_rejected_on_read() {
    let f = Fixture::new(1 << 16, 1 << 20);
    {
        let (mut sp, _) = f.open();
        for i in 1..=3 {
            sp.append(RecordClass::Audit, i, &body(i, 64)).unwrap();
        }
    }
    let seg = segment_files(f.dir()).remove(0);
    let mut raw = std::fs::read(&seg).unwrap();
    let offs = frame_offsets(raw.len(), &[64, 64, 64]);
    let (start, end) = (offs[1], offs[1] + 64 + FRAME_OVERHEAD);
    raw[start + 40] ^= 0x01;
    // Recompute the CRC as an attacker would: only authentication can catch this.
    let mut h = crc32fast::Hasher::new();
    h.update(&raw[start..start + 4]);
    h.update(&raw[start + 8..end]);
    raw[start + 4..start + 8].copy_from_slice(&h.finalize().to_be_bytes());
    std::fs::write(&seg, &raw).unwrap();

    let (sp, rep) = f.open();
    assert_eq!(rep.corrupt_records, 0, "CRC is valid, so open sees nothing");
    assert_eq!(ids(&all(&sp)), vec![1, 3]);
    assert_eq!(sp.stats().corrupt_records, 1);
    // Counted once, however often it is read.
    assert_eq!(ids(&all(&sp)), vec![1, 3]);
    assert_eq!(sp.stats().corrupt_records, 1);
}

#[test]
fn truncating_the_last_record_at_every_byte_loses_only_that_record() {
    let f = Fixture::new(1 << 16, 1 << 20);
    {
        let (mut sp, _) = f.open();
        for i in 1..=3 {
            sp.append(RecordClass::Event, i, &body(i, 50)).unwrap();
        }
    }
    let seg = segment_files(f.dir()).remove(0);
    let name = seg.file_name().unwrap().to_owned();
    let raw = std::fs::read(&seg).unwrap();
    let last = frame_offsets(raw.len(), &[50, 50, 50])[2];
    for cut in last..raw.len() {
        let dir = f.tmp.path().join(format!("cut-{cut}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(&name), &raw[..cut]).unwrap();
        let cfg = SpoolConfig {
            dir: dir.clone(),
            ..f.cfg.clone()
        };
        let (mut sp, rep) = Spool::open(cfg.clone(), Arc::clone(&f.ks)).unwrap();
        assert_eq!(
            rep.truncated_tail_bytes,
            (cut - last) as u64,
            "cut at {cut}"
        );
        assert_eq!(rep.corrupt_records, 0, "cut at {cut}");
        assert_eq!(
            std::fs::metadata(dir.join(&name)).unwrap().len(),
            last as u64
        );
        let recs = all(&sp);
        assert_eq!(ids(&recs), vec![1, 2], "cut at {cut}");
        assert_eq!(recs[1].body, body(2, 50));
        let id = sp.append(RecordClass::Event, 9, b"again").unwrap();
        assert!(id > 2, "cut at {cut}: id {id}");
        drop(sp);
        let (sp, rep) = Spool::open(cfg, Arc::clone(&f.ks)).unwrap();
        assert_eq!((rep.truncated_tail_bytes, rep.corrupt_records), (0, 0));
        assert_eq!(ids(&all(&sp)), vec![1, 2, id]);
    }
}

#[test]
fn telemetry_is_dropped_oldest_first_when_full() {
    let f = Fixture::new(4096, 16384);
    let (mut sp, _) = f.open();
    let cdr = sp.append(RecordClass::Cdr, 0, &body(0, 300)).unwrap();
    let mut telemetry = Vec::new();
    for i in 0..200u64 {
        let id = sp.append(RecordClass::Telemetry, i, &body(i, 300)).unwrap();
        telemetry.push(id);
        assert!(sp.stats().bytes <= 16384, "over the cap after {i}");
    }
    let st = sp.stats();
    assert!(st.telemetry_dropped > 0);
    let left = all(&sp);
    // The CDR is never dropped.
    assert_eq!(left[0].id, cdr);
    let kept: Vec<u64> = left[1..].iter().map(|r| r.id).collect();
    assert_eq!(kept.len() as u64 + st.telemetry_dropped, 200);
    // What survives is the newest telemetry: a contiguous suffix of what was appended.
    assert_eq!(kept, telemetry[telemetry.len() - kept.len()..]);
    // The pending CDR makes a spool over 80 % full an alarm.
    assert_eq!(st.alarm, st.bytes * 100 >= 80 * 16384, "{st:?}");
    drop(sp);
    // The counter survives a restart (persisted with the state file when segments went).
    let (sp, _) = f.open();
    assert!(sp.stats().telemetry_dropped > 0);
}

#[test]
fn cdrs_are_never_dropped_full_is_an_error_and_raises_the_alarm() {
    let f = Fixture::new(4096, 16384);
    let (mut sp, _) = f.open();
    sp.append(RecordClass::Telemetry, 0, &body(0, 300)).unwrap();
    let mut stored = Vec::new();
    let mut full = None;
    for i in 1..=100u64 {
        match sp.append(RecordClass::Cdr, i, &body(i, 300)) {
            Ok(id) => stored.push(id),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    match full {
        Some(SpoolError::Full {
            class: RecordClass::Cdr,
            bytes,
            max_bytes: 16384,
        }) => assert!(bytes <= 16384),
        other => panic!("expected Full for a CDR, got {other:?}"),
    }
    let st = sp.stats();
    assert!(st.alarm);
    // The one telemetry record was sacrificed first, every accepted CDR is still there.
    assert_eq!(st.telemetry_dropped, 1);
    assert_eq!(ids(&all(&sp)), stored);
    // A telemetry append is now dropped and counted, not stored.
    let e = sp
        .append(RecordClass::Telemetry, 0, &body(0, 300))
        .unwrap_err();
    assert!(
        matches!(
            e,
            SpoolError::Full {
                class: RecordClass::Telemetry,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(sp.stats().telemetry_dropped, 2);
    // Acknowledging makes room again.
    let half = stored[stored.len() / 2];
    sp.ack_up_to(half).unwrap();
    sp.append(RecordClass::Cdr, 0, b"fits again").unwrap();
    assert!(sp.stats().bytes <= 16384);
}

#[test]
fn alarm_follows_the_threshold_while_cdrs_or_audit_records_are_pending() {
    let f = Fixture::new(4096, 16384);
    let (mut sp, _) = f.open();
    // 80 % of 16384 = 13107 bytes.
    while sp.stats().bytes < 13107 {
        sp.append(RecordClass::Event, 0, &body(1, 200)).unwrap();
    }
    assert!(!sp.stats().alarm, "events only: no alarm");
    let id = sp.append(RecordClass::Audit, 0, b"audit").unwrap();
    assert!(sp.stats().alarm);
    sp.ack_up_to(id).unwrap();
    assert!(!sp.stats().alarm);
}

#[test]
fn a_record_larger_than_a_segment_is_refused() {
    let f = Fixture::new(4096, 16384);
    let (mut sp, _) = f.open();
    let e = sp.append(RecordClass::Event, 0, &[0u8; 4096]).unwrap_err();
    assert!(matches!(e, SpoolError::TooLarge { len: 4096, .. }), "{e}");
    assert_eq!(sp.stats().last_id, 0, "no id consumed");
}

#[test]
fn another_key_store_cannot_open_the_spool() {
    let f = Fixture::new(4096, 1 << 20);
    {
        let (mut sp, _) = f.open();
        sp.append(RecordClass::Cdr, 0, b"secret").unwrap();
    }
    let other: Arc<dyn KeyStore> =
        Arc::new(DevKeyStore::open(&f.tmp.path().join("other-ks"), Profile::Development).unwrap());
    let e = Spool::open(f.cfg.clone(), other).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, SpoolError::Crypto { .. }), "{msg}");
    assert!(msg.contains("seg-00000000000000000001.log"), "{msg}");
    // The right key store still reads it.
    let (sp, _) = f.open();
    assert_eq!(all(&sp)[0].body, b"secret");
}

#[test]
fn a_spool_is_opened_by_one_instance_at_a_time() {
    let f = Fixture::new(4096, 1 << 20);
    let (_sp, _) = f.open();
    let e = Spool::open(f.cfg.clone(), Arc::clone(&f.ks)).unwrap_err();
    assert!(matches!(e, SpoolError::Locked { .. }), "{e}");
}

#[test]
fn damaged_state_file_and_segment_header_are_reported() {
    let f = Fixture::new(4096, 1 << 20);
    {
        let (mut sp, _) = f.open();
        for i in 1..=20 {
            sp.append(RecordClass::Event, 0, &body(i, 400)).unwrap();
        }
        sp.ack_up_to(1).unwrap();
    }
    // A segment whose header is damaged is quarantined; the others are read.
    let segs = segment_files(f.dir());
    let mut raw = std::fs::read(&segs[1]).unwrap();
    raw[2] ^= 0xFF;
    std::fs::write(&segs[1], &raw).unwrap();
    let (sp, rep) = f.open();
    assert_eq!(rep.quarantined_segments, 1);
    let mut quarantined = segs[1].clone().into_os_string();
    quarantined.push(".corrupt");
    assert!(Path::new(&quarantined).exists());
    assert!(!all(&sp).is_empty());
    drop(sp);

    let state = f.dir().join("state");
    let mut raw = std::fs::read(&state).unwrap();
    raw[10] ^= 0x01;
    std::fs::write(&state, &raw).unwrap();
    let e = Spool::open(f.cfg.clone(), Arc::clone(&f.ks)).unwrap_err();
    assert!(matches!(e, SpoolError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("state"), "{e}");
}

#[test]
fn config_errors_name_the_field() {
    let ok = SpoolConfig::new("/tmp/x");
    assert!(ok.validate().is_ok());
    let cases = [
        (
            SpoolConfig {
                segment_bytes: 4095,
                ..ok.clone()
            },
            "segment_bytes",
        ),
        (
            SpoolConfig {
                max_bytes: 4 * ok.segment_bytes - 1,
                ..ok.clone()
            },
            "max_bytes",
        ),
        (
            SpoolConfig {
                alarm_percent: 0,
                ..ok.clone()
            },
            "alarm_percent",
        ),
        (
            SpoolConfig {
                alarm_percent: 100,
                ..ok.clone()
            },
            "alarm_percent",
        ),
        (
            SpoolConfig {
                dir: PathBuf::new(),
                ..ok.clone()
            },
            "dir",
        ),
    ];
    for (cfg, field) in cases {
        match cfg.validate() {
            Err(SpoolError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let tmp = TempDir::new().unwrap();
    let ks: Arc<dyn KeyStore> =
        Arc::new(DevKeyStore::open(&tmp.path().join("ks"), Profile::Development).unwrap());
    let bad = SpoolConfig {
        dir: tmp.path().join("s"),
        segment_bytes: 100,
        ..ok
    };
    assert!(matches!(
        Spool::open(bad, ks),
        Err(SpoolError::Config {
            field: "segment_bytes",
            ..
        })
    ));
}

#[test]
fn spool_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Spool>();
}
