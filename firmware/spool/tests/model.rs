//! Random sequences of appends, batches, acks, erasures and restarts against a model.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use pop_keystore::dev::DevKeyStore;
use pop_keystore::{KeyStore, Profile};
use pop_spool::{NewRecord, RecordClass, Spool, SpoolConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { class: u8, len: usize },
    Batch { n: usize, len: usize },
    Ack { ahead: u64 },
    Erase { residue: u8 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 0usize..700).prop_map(|(class, len)| Op::Append { class, len }),
        2 => (1usize..12, 0usize..400).prop_map(|(n, len)| Op::Batch { n, len }),
        2 => (0u64..25).prop_map(|ahead| Op::Ack { ahead }),
        1 => (0u8..5).prop_map(|residue| Op::Erase { residue }),
        1 => Just(Op::Reopen),
    ]
}

fn class_of(c: u8) -> RecordClass {
    [
        RecordClass::Telemetry,
        RecordClass::Event,
        RecordClass::Cdr,
        RecordClass::Audit,
    ][usize::from(c % 4)]
}

type Model = BTreeMap<u64, (RecordClass, u64, Vec<u8>)>;

struct World {
    model: Model,
    acked: u64,
    max_id: u64,
    counter: u64,
}

impl World {
    fn body(&mut self, len: usize) -> Vec<u8> {
        self.counter += 1;
        let seed = self.counter;
        (0..len.max(1))
            .map(|i| (seed as usize * 7 + i) as u8)
            .collect()
    }

    fn stored(&mut self, id: u64, class: RecordClass, created: u64, body: Vec<u8>) {
        assert!(id > self.max_id, "id {id} not above {}", self.max_id);
        self.max_id = id;
        self.model.insert(id, (class, created, body));
    }
}

fn check(sp: &Spool, w: &World) {
    let got = sp.pending_after(0, usize::MAX).unwrap();
    let want: Vec<_> = w.model.range(w.acked + 1..).collect();
    assert_eq!(got.len(), want.len(), "pending count");
    for (r, (id, (class, created, body))) in got.iter().zip(want) {
        assert_eq!((r.id, r.class, r.created_unix_ms), (*id, *class, *created));
        assert_eq!(&r.body, body, "body of {id}");
    }
    let st = sp.stats();
    assert_eq!(st.pending_records, got.len() as u64);
    assert_eq!(st.acked_up_to, w.acked);
    assert_eq!(st.corrupt_records, 0);
    assert!(st.last_id >= w.max_id);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn spool_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let tmp = tempfile::TempDir::new().unwrap();
        let ks: Arc<dyn KeyStore> =
            Arc::new(DevKeyStore::open(&tmp.path().join("ks"), Profile::Development).unwrap());
        let cfg = SpoolConfig {
            dir: tmp.path().join("spool"),
            max_bytes: 1 << 24,
            segment_bytes: 4096,
            alarm_percent: 90,
        };
        let mut sp = Some(Spool::open(cfg.clone(), Arc::clone(&ks)).unwrap().0);
        let mut w = World { model: BTreeMap::new(), acked: 0, max_id: 0, counter: 0 };
        for op in ops {
            let s = sp.as_mut().unwrap();
            match op {
                Op::Append { class, len } => {
                    let b = w.body(len);
                    let created = w.counter * 10;
                    let id = s.append(class_of(class), created, &b).unwrap();
                    w.stored(id, class_of(class), created, b);
                }
                Op::Batch { n, len } => {
                    let bodies: Vec<Vec<u8>> = (0..n).map(|_| w.body(len)).collect();
                    let recs: Vec<NewRecord<'_>> = bodies
                        .iter()
                        .enumerate()
                        .map(|(i, b)| NewRecord { class: class_of(i as u8), created_unix_ms: 1, body: b })
                        .collect();
                    let ids = s.append_batch(&recs).unwrap();
                    prop_assert_eq!(ids.len(), n);
                    for (i, (id, b)) in ids.into_iter().zip(bodies).enumerate() {
                        w.stored(id, class_of(i as u8), 1, b);
                    }
                }
                Op::Ack { ahead } => {
                    let up_to = w.acked + ahead;
                    s.ack_up_to(up_to).unwrap();
                    w.acked = w.acked.max(up_to);
                    // Ids the control plane has acknowledged are never handed out again.
                    w.max_id = w.max_id.max(up_to);
                }
                Op::Erase { residue } => {
                    let n = s.erase_where(&mut |r| r.body[0] % 5 == residue).unwrap();
                    let doomed: Vec<u64> = w
                        .model
                        .range(w.acked + 1..)
                        .filter(|(_, (_, _, b))| b[0] % 5 == residue)
                        .map(|(id, _)| *id)
                        .collect();
                    prop_assert_eq!(n, doomed.len());
                    for id in doomed {
                        w.model.remove(&id);
                    }
                }
                Op::Reopen => {
                    drop(sp.take());
                    let (s2, rep) = Spool::open(cfg.clone(), Arc::clone(&ks)).unwrap();
                    prop_assert_eq!(rep.corrupt_records, 0);
                    prop_assert_eq!(rep.truncated_tail_bytes, 0);
                    sp = Some(s2);
                }
            }
            check(sp.as_ref().unwrap(), &w);
        }
    }
}
