//! Agent benchmark: reconnect time after the control plane returns, telemetry messages per
//! second through the whole pipeline (encrypted spool → TLS → control plane store → ack →
//! spool deletion), and the agent's memory. Every figure is printed; the throughput is also
//! given as a ratio to a reference run in the same invocation: a minimal software client
//! (no spool, no keystore) pushing the same records to the same control plane.
//!
//! Usage: `cargo build --workspace --bins --release && target/release/agent-bench
//! [--records N] [--outages N] [--outage-s S]`. Processes run on loopback; everything is
//! stopped by PID when it ends.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pop_agent_proto::{
    Downlink, Record, RecordBody, RelayCounters, ServiceHealth, SpoolCounters, Telemetry, Uplink,
    UplinkState,
};
use pop_controlplane::devclient::{self, DeviceConn, SoftDevice};
use pop_system_tests::agent_bed::{
    init_control_plane, Appliance, ApplianceOptions, ControlPlane, SERVER_NAME,
};
use pop_system_tests::{ChildGuard, TestDir};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn telemetry(n: u64) -> RecordBody {
    RecordBody::Telemetry(Telemetry {
        config_version: 3,
        uptime_s: n,
        services: vec![
            ServiceHealth {
                name: "relay".into(),
                healthy: true,
                detail: "sessions=812".into(),
            },
            ServiceHealth {
                name: "linkmon".into(),
                healthy: true,
                detail: "active=primary".into(),
            },
        ],
        uplinks: vec![
            UplinkState {
                name: "primary".into(),
                state: "up".into(),
                active: true,
            },
            UplinkState {
                name: "backup".into(),
                state: "up".into(),
                active: false,
            },
        ],
        relay: Some(RelayCounters {
            sessions: 812,
            packets_forwarded: 1_000_000 + n,
            bytes_forwarded: 172_000_000 + n,
            packets_dropped: 3,
        }),
        spool: SpoolCounters {
            bytes: 1 << 20,
            pending_records: n,
            telemetry_dropped: 0,
            alarm: false,
        },
    })
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn wait_acked(cp: &ControlPlane, device: &str, id: u64, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut admin = cp.admin()?;
    loop {
        let devices = admin.devices().context("devices")?;
        if devices
            .devices
            .iter()
            .any(|d| d.device == device && d.acked_up_to >= id)
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{device}: id {id} not acknowledged within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() -> Result<()> {
    let records = arg("--records", 20_000);
    let outages = arg("--outages", 5);
    let outage_s = arg("--outage-s", 5);
    let test = TestDir::new("agent-bench")?;
    let cp_dir = init_control_plane(&test, "cp", &[])?;
    let cp = ControlPlane::start(&test, &cp_dir, "127.0.0.1:0".parse()?, "cp")?;
    let opts = ApplianceOptions {
        ca_file: cp_dir.join("ca.pem"),
        control_plane: cp.listen,
        health_window_ms: 2500,
        apply_firewall: false,
    };
    let app = Appliance::start(&test, "pop-bench", &opts)?;
    // Production reconnect backoff (1 s .. 120 s), telemetry every second.
    let text = std::fs::read_to_string(&app.settings)?
        .replace("backoff_base_ms = 200", "backoff_base_ms = 1000")
        .replace("backoff_cap_ms = 1000", "backoff_cap_ms = 120000")
        .replace("telemetry_ms = 500", "telemetry_ms = 1000");
    std::fs::write(&app.settings, text)?;
    let out = app.enroll(&cp.token(&app.device, false)?)?;
    if !out.status.success() {
        bail!("enroll: {}", String::from_utf8_lossy(&out.stderr));
    }

    // 1. Reference: a minimal client pushes the records straight to the control plane.
    let mut dev = SoftDevice::new("bench-reference")?;
    let token = cp.token("bench-reference", false)?;
    let ca_pem = std::fs::read(cp_dir.join("ca.pem"))?;
    let ca = pop_agent::identity::pem_certs(&ca_pem).map_err(anyhow::Error::msg)?;
    let ca_der = ca.first().context("CA")?.to_vec();
    devclient::enroll(cp.listen, SERVER_NAME, &ca_der, &mut dev, &token)?
        .map_err(anyhow::Error::msg)?;
    let mut conn = DeviceConn::connect(
        cp.listen,
        SERVER_NAME,
        &ca_der,
        Some((dev.chain.clone(), dev.private_key())),
    )?;
    conn.send(&dev.hello())?;
    conn.recv_until(Duration::from_secs(10), |m| {
        matches!(m, Downlink::Welcome { .. })
    })?;
    let start = Instant::now();
    for id in 1..=records {
        conn.send(&Uplink::Record(Record {
            id,
            created_unix_ms: 0,
            body: telemetry(id),
        }))?;
    }
    conn.recv_until(
        Duration::from_secs(300),
        |m| matches!(m, Downlink::Ack { up_to } if *up_to >= records),
    )?;
    let reference = start.elapsed();
    drop(conn);
    let reference_rate = records as f64 / reference.as_secs_f64();

    // 2. The agent: the same number of telemetry records waiting in its spool (as after an
    //    outage), delivered when it starts.
    {
        let keystore: std::sync::Arc<dyn pop_keystore::KeyStore> =
            std::sync::Arc::new(pop_keystore::dev::DevKeyStore::open(
                &test.file("keys"),
                pop_keystore::Profile::Development,
            )?);
        let (mut spool, _) = pop_spool::Spool::open(
            pop_spool::SpoolConfig {
                max_bytes: 256 << 20,
                segment_bytes: 1 << 20,
                ..pop_spool::SpoolConfig::new(app.state_dir.join("spool"))
            },
            keystore,
        )?;
        let bodies: Vec<Vec<u8>> = (1..=records)
            .map(|n| postcard::to_allocvec(&telemetry(n)))
            .collect::<Result<_, _>>()?;
        for chunk in bodies.chunks(256) {
            let batch: Vec<pop_spool::NewRecord<'_>> = chunk
                .iter()
                .map(|b| pop_spool::NewRecord {
                    class: pop_agent_proto::RecordClass::Telemetry,
                    created_unix_ms: 0,
                    body: b,
                })
                .collect();
            spool.append_batch(&batch)?;
        }
    }
    let text = std::fs::read_to_string(&app.settings)?;
    std::fs::write(
        &app.settings,
        format!(
            "{text}[spool]\nmax_bytes = {}\nsegment_bytes = {}\n",
            256u64 << 20,
            1u64 << 20
        ),
    )?;
    let agent: ChildGuard = app.start_agent(&test, "agent")?;
    let start = Instant::now();
    wait_acked(&cp, &app.device, records, Duration::from_secs(600))?;
    let agent_time = start.elapsed();
    let agent_rate = records as f64 / agent_time.as_secs_f64();
    let hwm = rss_kib(agent.pid(), "VmHWM:");
    std::thread::sleep(Duration::from_secs(3));
    let steady = rss_kib(agent.pid(), "VmRSS:");

    println!(
        "agent-bench: {records} telemetry records (postcard {} bytes each)",
        postcard::to_allocvec(&telemetry(1))?.len()
    );
    println!(
        "  reference client (no spool/keystore): {reference_rate:>9.0} records/s ({reference:.2?})"
    );
    println!("  popd agent (spool→TLS→store→ack):    {agent_rate:>9.0} records/s ({agent_time:.2?}), ratio {:.2}", agent_rate / reference_rate);
    println!(
        "  agent RSS: peak {:.1} MiB during the backlog, {:.1} MiB steady",
        hwm as f64 / 1024.0,
        steady as f64 / 1024.0
    );

    // 3. Reconnect after the control plane returns, with the production backoff. The agent is
    //    restarted before each outage so every trial starts from a fresh backoff (back-to-back
    //    outages without a stable minute between them deliberately push the ceiling up).
    let listen = cp.listen;
    let mut cp = Some(cp);
    let mut agent = Some(agent);
    let mut times = Vec::new();
    for n in 0..outages {
        if let Some(a) = agent.take() {
            a.stop()?;
        }
        agent = Some(app.start_agent(&test, &format!("agent-{n}"))?);
        if let Some(c) = cp.as_ref() {
            if !c
                .admin()?
                .wait_connected(&app.device, Duration::from_secs(30))?
            {
                bail!("the agent did not connect");
            }
        }
        if let Some(c) = cp.take() {
            c.child.kill()?;
        }
        std::thread::sleep(Duration::from_secs(outage_s));
        let c = ControlPlane::start(&test, &cp_dir, listen, &format!("cp-{n}"))?;
        let back = Instant::now();
        let mut admin = c.admin()?;
        if !admin.wait_connected(&app.device, Duration::from_secs(150))? {
            bail!("the agent did not reconnect within 150 s");
        }
        let t = back.elapsed();
        println!(
            "  outage {n}: {outage_s} s down, agent back {:.0} ms after the control plane",
            t.as_secs_f64() * 1000.0
        );
        times.push(t);
        cp = Some(c);
    }
    times.sort();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        let median = times[times.len() / 2];
        println!(
            "  reconnect after {outage_s} s outages: min {:.0} ms, median {:.0} ms, max {:.0} ms (full jitter: uniform in [0, ceiling])",
            min.as_secs_f64() * 1000.0,
            median.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0
        );
    }
    drop(agent);
    Ok(())
}
