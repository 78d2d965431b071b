//! `popd linkmon` on L2's virtual rig (appliance, two carriers running FRR bfdd toward it at
//! 50 ms × 3, core): BFD comes Up on both uplinks, carrier loss and a silent blackhole on the
//! primary each move the appliance's default route to the backup, and the primary is taken
//! back only after the hold-down.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pop_linkmon::netlink::RtnlSocket;
use pop_linkmon::status_server::query;
use pop_linkmon::LinkmonConfig;
use pop_rig::{BfdTimers, Fault, Rig, RigOptions, Role, Uplink, Upstream};

struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(ns_path: std::path::PathBuf, cfg: LinkmonConfig) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&ns_path).map_err(|e| e.to_string())?;
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| e.to_string())?;
            pop_linkmon::run_until(cfg, &mut || stop.load(Ordering::Relaxed))
                .map_err(|e| e.to_string())
        })
    };
    Running {
        stop,
        thread: Some(thread),
    }
}

fn status(sock: &Path) -> serde_json::Value {
    query(sock, "status")
        .ok()
        .and_then(|mut v| v.pop())
        .unwrap_or(serde_json::Value::Null)
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("{what}: not within {limit:?}");
}

fn default_gateway(rig: &Rig) -> Option<Ipv4Addr> {
    rig.in_ns(Role::App, || {
        let mut s = RtnlSocket::open().ok()?;
        s.routes()
            .ok()?
            .into_iter()
            .find(|r| r.prefix_len == 0 && r.table == 254)?
            .gateway
    })
    .ok()
    .flatten()
}

#[test]
fn linkmon_on_the_rig_fails_over_on_carrier_loss_and_blackhole() {
    let rig = Rig::build(RigOptions {
        upstream: Upstream::FrrBfd(BfdTimers::FAST_50X3),
        // linkmon installs its own per-uplink source routing.
        uplink_policy_tables: false,
        ..RigOptions::default()
    })
    .unwrap();
    let plan = *rig.plan();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("linkmon.sock");
    let uplink = |name: &str, dev: &str, a: &pop_rig::UplinkAddrs| {
        format!(
            "[[uplink]]\nname = \"{name}\"\ninterface = \"{dev}\"\naddress = \"{}\"\ngateway = \"{}\"\n[uplink.bfd]\n",
            a.app, a.gateway
        )
    };
    let text = format!(
        "socket = \"{}\"\nneighbour_refresh_ms = 500\n[routes]\nprefsrc = \"{}\"\n[selector]\nhold_down_ms = 2000\nstartup_grace_ms = 5000\n{}{}",
        sock.display(),
        plan.service,
        uplink("primary", Uplink::One.app_dev(), &plan.uplink1),
        uplink("backup", Uplink::Two.app_dev(), &plan.uplink2),
    );
    let cfg = LinkmonConfig::from_toml(&text, Path::new("rig")).unwrap();
    let _lm = start(pop_rig::netns_path(rig.ns(Role::App)), cfg);

    let primary = plan.uplink1.gateway;
    let backup = plan.uplink2.gateway;
    wait_for(
        "BFD Up on both uplinks at 50 ms",
        Duration::from_secs(20),
        || {
            let st = status(&sock);
            (0..2).all(|i| {
                let b = &st["uplinks"][i]["bfd"];
                b["state"] == "Up" && b["tx_interval_us"] == 50_000
            })
        },
    );
    wait_for(
        "default route via the primary",
        Duration::from_secs(5),
        || default_gateway(&rig) == Some(primary),
    );

    // Carrier loss.
    std::thread::sleep(Duration::from_millis(1100));
    let t0 = Instant::now();
    rig.inject(Fault::CarrierLoss(Uplink::One)).unwrap();
    wait_for("failover on carrier loss", Duration::from_secs(3), || {
        default_gateway(&rig) == Some(backup)
    });
    println!("rig carrier loss → route on backup: {:?}", t0.elapsed());
    let t_recover = Instant::now();
    rig.recover(Fault::CarrierLoss(Uplink::One)).unwrap();
    wait_for(
        "failback after the hold-down",
        Duration::from_secs(15),
        || default_gateway(&rig) == Some(primary),
    );
    let fb = t_recover.elapsed();
    assert!(
        fb >= Duration::from_millis(2000),
        "failed back after {fb:?}, before the hold-down"
    );

    // Silent blackhole (carrier up, nothing passes).
    wait_for(
        "BFD Up again on the primary",
        Duration::from_secs(20),
        || {
            status(&sock)["uplinks"][0]["bfd"]["state"] == "Up"
                && status(&sock)["uplinks"][0]["bfd"]["tx_interval_us"] == 50_000
        },
    );
    let t0 = Instant::now();
    rig.inject(Fault::Blackhole(Uplink::One)).unwrap();
    let took = wait_for("failover on blackhole", Duration::from_secs(3), || {
        default_gateway(&rig) == Some(backup)
    });
    println!(
        "rig blackhole → route on backup: {:?} (50 ms × 3 with FRR)",
        t0.elapsed()
    );
    assert!(
        took < Duration::from_millis(300),
        "blackhole detected after {took:?}"
    );
    let events = query(&sock, "events").unwrap();
    let reasons: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "switch" && e["kind"] == "failover")
        .map(|e| e["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        reasons.first().map(String::as_str),
        Some("carrier_down"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.last().map(String::as_str),
        Some("bfd_down"),
        "{reasons:?}"
    );
    rig.recover_all().unwrap();
}
