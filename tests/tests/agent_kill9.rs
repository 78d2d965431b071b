//! `popd agent` killed with SIGKILL at random points 100 times while calls end and
//! configuration pushes arrive: afterwards every CDR arrives exactly once, the spool reports no
//! damaged record, and the configuration store still takes a new push.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pop_agent_proto::{ConfigOutcome, EventKind, RecordBody};
use pop_system_tests::agent_bed::{config_document, kinds, LoopbackBed};
use rand::{Rng, SeedableRng};

const RUNS: usize = 100;

#[test]
fn agent_killed_100_times_loses_and_duplicates_nothing() {
    let LoopbackBed { test, cp, app } =
        LoopbackBed::enrolled("agent-kill9", "pop-kill9").unwrap_or_else(|e| panic!("{e:#}"));

    let seed: u64 = std::env::var("AGENT_KILL9_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (replay with AGENT_KILL9_SEED)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut admin = cp.admin().expect("admin");
    let started = Instant::now();
    let mut pushes = 0u64;
    for run in 0..RUNS {
        let agent = app.start_agent(&test, "agent").expect("agent starts");
        // A call ends at a random moment of this run's life; every tenth run also gets a push.
        let before_call = Duration::from_millis(rng.gen_range(0..150));
        let after_call = Duration::from_millis(rng.gen_range(5..250));
        std::thread::sleep(before_call);
        app.call(
            &format!("kill9-{run}"),
            "+15557770000",
            &format!("+1555888{run:04}"),
        )
        .expect("call");
        if run % 10 == 0 {
            pushes += 1;
            admin
                .push_config(
                    &app.device,
                    pushes,
                    &config_document(pushes, 100 + pushes as u32, cp.listen),
                )
                .expect("push");
        }
        std::thread::sleep(after_call);
        agent.kill().expect("SIGKILL");
    }
    let kill_phase = started.elapsed();

    let agent = app.start_agent(&test, "agent-final").expect("agent starts");
    let records = cp
        .wait_records(
            &app.device,
            Duration::from_secs(60),
            "a CDR for every call",
            |rs| kinds(rs).cdrs >= RUNS,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    std::thread::sleep(Duration::from_secs(1));
    let records = cp.records(&app.device).unwrap_or(records);
    let k = kinds(&records);
    let calls: HashSet<[u8; 16]> = records
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::Cdr(c) => Some(c.call),
            _ => None,
        })
        .collect();
    let starts = records
        .iter()
        .filter(|r| matches!(&r.body, RecordBody::Event(e) if matches!(e.kind, EventKind::AgentStarted { .. })))
        .count();
    eprintln!(
        "{RUNS} SIGKILLs in {kill_phase:.1?}; stored {k:?}; {starts} agent starts recorded; {pushes} pushes"
    );
    assert_eq!(calls.len(), RUNS, "every call has its CDR");
    assert_eq!(k.cdrs, RUNS, "and only one");
    let log = agent.log();
    assert!(log.contains("spool opened"), "{log}");
    assert!(
        log.contains("corrupt_records: 0"),
        "no damaged record after 100 kills: {log}"
    );

    // The configuration store survived too: a new push applies.
    admin
        .push_config(&app.device, 1000, &config_document(1000, 777, cp.listen))
        .expect("push");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let results = admin.config_results(&app.device).expect("results");
        if let Some(r) = results.results.iter().find(|r| r.result.version == 1000) {
            assert_eq!(r.result.outcome, ConfigOutcome::Applied);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no result for the final push:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
