//! `relay-soak`: session create/delete cycles with leak checks, then overload and recovery.
//! Exit status: 0 all cycles done and clean; 1 leak, silent stream or error; 3 clean but the
//! time bound cut the cycles short.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pop_loadgen::relay_process::{RelayKind, RelaySpec};
use pop_loadgen::sdp_text::SdpOptions;
use pop_loadgen::soak::{self, SoakPlan, SoakSample};
use pop_loadgen::{host, LoadgenError};

#[derive(Debug, Parser)]
#[command(
    name = "relay-soak",
    about = "Leak soak and overload recovery check for the media relay"
)]
struct Cli {
    /// Relay: popd-uring, popd-mmsg or rtpengine (reference).
    #[arg(long, default_value = "popd-uring")]
    relay: String,
    /// popd binary.
    #[arg(long, default_value = "target/release/popd")]
    popd: PathBuf,
    /// rtpengine binary.
    #[arg(long, default_value = "/usr/bin/rtpengine")]
    rtpengine: PathBuf,
    /// Create/delete cycles.
    #[arg(long, default_value_t = 1_000_000)]
    cycles: u64,
    /// Wall-time bound for the cycles, seconds.
    #[arg(long, default_value_t = 900)]
    max_duration_s: u64,
    /// Seconds of create/delete churn before the baseline sample (caches fill up first).
    #[arg(long, default_value_t = 10)]
    warmup_s: u64,
    /// Sessions created before they are deleted again.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// NG requests outstanding.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Seconds the relay's counters may take to return to baseline.
    #[arg(long, default_value_t = 35)]
    settle_s: u64,
    /// Sessions carrying media in the overload phase.
    #[arg(long, default_value_t = 500)]
    overload_sessions: usize,
    /// Packets per stream per 20 ms during the overload (1 = normal rate).
    #[arg(long, default_value_t = 20)]
    overload_factor: u32,
    /// Overload length, seconds.
    #[arg(long, default_value_t = 3)]
    overload_s: u64,
    /// JSON report path.
    #[arg(long, default_value = "target/relay-soak.json")]
    json: PathBuf,
    /// Directory for relay logs.
    #[arg(long, default_value = "target/relay-soak-logs")]
    log_dir: PathBuf,
    /// Relay media port range start.
    #[arg(long, default_value_t = 10_000)]
    port_min: u16,
    /// Relay media port range end.
    #[arg(long, default_value_t = 29_999)]
    port_max: u16,
    /// CPU the relay is pinned to.
    #[arg(long, default_value_t = 0)]
    relay_cpu: usize,
    /// CPU the load generator is pinned to.
    #[arg(long, default_value_t = 1)]
    loadgen_cpu: usize,
    /// Offer rtcp-mux.
    #[arg(long)]
    rtcp_mux: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("relay-soak: {e}");
            ExitCode::FAILURE
        }
    }
}

fn line(s: &SoakSample) {
    let counters: Vec<String> = s
        .counters
        .iter()
        .map(|(k, v)| format!("{}={v}", k.rsplit('.').next().unwrap_or(k)))
        .collect();
    println!(
        "{:>9} cycles {:>7.1}s  relay fds {:>5} RSS {:>7.1} MiB (peak {:>7.1})  {}",
        s.cycles,
        s.elapsed_s,
        s.relay.fds,
        s.relay.rss_kib as f64 / 1024.0,
        s.relay.hwm_kib as f64 / 1024.0,
        counters.join(" ")
    );
}

fn run(cli: &Cli) -> Result<u8, LoadgenError> {
    host::raise_nofile_limit()?;
    host::pin_current_thread(cli.loadgen_cpu)?;
    let kind = match cli.relay.as_str() {
        "rtpengine" => RelayKind::Rtpengine,
        "popd-uring" => RelayKind::PopdUring,
        "popd-mmsg" => RelayKind::PopdMmsg,
        other => {
            return Err(LoadgenError::Config {
                field: "relay",
                reason: format!("unknown relay `{other}`"),
            })
        }
    };
    let spec = RelaySpec {
        kind,
        binary: if kind == RelayKind::Rtpengine {
            cli.rtpengine.clone()
        } else {
            cli.popd.clone()
        },
        port_min: cli.port_min,
        port_max: cli.port_max,
        cpu: cli.relay_cpu,
        loadgen_cpu: cli.loadgen_cpu,
        threads: 1,
        log_dir: cli.log_dir.clone(),
        // Released ports rest 30 s by default before reuse; a soak churning ~5,000 calls per
        // second (10,000 port pairs) exhausts the range within 2 s of quarantine. The soak looks
        // for leaks, not for quarantine (unit-tested in relay-core), so it is switched off here.
        extra_args: if kind == RelayKind::Rtpengine {
            Vec::new()
        } else {
            vec!["--port-quarantine-secs=0".to_owned()]
        },
    };
    let plan = SoakPlan {
        cycles: cli.cycles,
        warmup: Duration::from_secs(cli.warmup_s),
        batch: cli.batch,
        window: cli.window,
        max_duration: Duration::from_secs(cli.max_duration_s),
        settle: Duration::from_secs(cli.settle_s),
        report_every: Duration::from_secs(10),
        sdp: SdpOptions {
            rtcp_mux: cli.rtcp_mux,
        },
        overload_sessions: cli.overload_sessions,
        overload_factor: cli.overload_factor,
        overload: Duration::from_secs(cli.overload_s),
        loadgen_sockets: 16,
    };
    let mut relay = spec.start("soak")?;
    println!(
        "relay-soak: {} pid {} (log {})",
        kind.label(),
        relay.pid(),
        relay.log().display()
    );
    let report = soak::run(&mut relay, &plan, &mut line)?;
    drop(relay);
    println!(
        "cycles: {} of {} at {:.0}/s",
        report.cycles_done, report.cycles_planned, report.cycles_per_s
    );
    if report.leak_check.leaks.is_empty() {
        println!("leaks: none (fds within {}, RSS within {} KiB or 10 %, NG session/port counters at baseline)", soak::FD_TOLERANCE, soak::RSS_TOLERANCE_KIB);
    }
    for l in &report.leak_check.leaks {
        println!("LEAK: {l}");
    }
    let r = &report.recovery;
    println!(
        "overload: offered {:.0} pkt/s; recovery: {} silent, {} later than {:.0} ms, slowest {:.1} ms",
        report.overload_offered_pps, r.silent_streams, r.late_streams, r.limit_ms, r.worst_first_packet_ms
    );
    let json = serde_json::to_string_pretty(&report).map_err(|e| LoadgenError::Report {
        path: cli.json.clone(),
        source: std::io::Error::other(e),
    })?;
    if let Some(dir) = cli.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| LoadgenError::Report {
            path: cli.json.clone(),
            source,
        })?;
    }
    std::fs::write(&cli.json, json).map_err(|source| LoadgenError::Report {
        path: cli.json.clone(),
        source,
    })?;
    Ok(if report.failed() {
        println!("RESULT: FAIL");
        1
    } else if report.incomplete() {
        println!("RESULT: INCOMPLETE (time bound reached before all cycles; no leak found)");
        3
    } else {
        println!("RESULT: PASS");
        0
    })
}
