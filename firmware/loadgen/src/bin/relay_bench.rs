//! `relay-bench`: rtpengine and our relay (io_uring and mmsg backends) under the same load in
//! one invocation; prints tables, ratios and target verdicts, writes JSON. `floor` adds the
//! minimal forwarder `relay-floor` as a CPU reference (the kernel's UDP path and little else).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pop_loadgen::bench::{bench_relay, BenchSettings, RunShape, SearchPlan};
use pop_loadgen::relay_process::{RelayKind, RelaySpec};
use pop_loadgen::report::{self, Targets};
use pop_loadgen::sdp_text::SdpOptions;
use pop_loadgen::{host, LoadgenError};

#[derive(Debug, Parser)]
#[command(
    name = "relay-bench",
    about = "Benchmark popd relay against rtpengine (same invocation)"
)]
struct Cli {
    /// Relays to run, in order: rtpengine, popd-uring, popd-mmsg, floor (the minimal forwarder,
    /// a CPU reference).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rtpengine,popd-uring,popd-mmsg"
    )]
    relays: Vec<String>,
    /// popd binary.
    #[arg(long, default_value = "target/release/popd")]
    popd: PathBuf,
    /// rtpengine binary.
    #[arg(long, default_value = "/usr/bin/rtpengine")]
    rtpengine: PathBuf,
    /// relay-floor binary (default: next to this relay-bench).
    #[arg(long)]
    floor: Option<PathBuf>,
    /// CI smoke mode: short windows, few steps (~1–2 minutes for all three relays).
    #[arg(long)]
    quick: bool,
    /// JSON report path.
    #[arg(long, default_value = "target/relay-bench.json")]
    json: PathBuf,
    /// Directory for relay logs.
    #[arg(long, default_value = "target/relay-bench-logs")]
    log_dir: PathBuf,
    /// CPU the relay is pinned to.
    #[arg(long, default_value_t = 0)]
    relay_cpu: usize,
    /// CPU the load generator is pinned to.
    #[arg(long, default_value_t = 1)]
    loadgen_cpu: usize,
    /// Relay media port range start.
    #[arg(long, default_value_t = 10_000)]
    port_min: u16,
    /// Relay media port range end.
    #[arg(long, default_value_t = 29_999)]
    port_max: u16,
    /// Extra argument for popd (repeatable), e.g. `--popd-arg=--batch-wait-usec=0`.
    #[arg(long, allow_hyphen_values = true)]
    popd_arg: Vec<String>,
    /// Worker threads of the relay (rtpengine --num-threads, popd --workers).
    #[arg(long, default_value_t = 1)]
    relay_threads: u32,
    /// Sessions of the fixed-rate CPU run (×100 packets/s).
    #[arg(long, default_value_t = 500)]
    cpu_sessions: usize,
    /// Sessions of the latency run.
    #[arg(long, default_value_t = 1_000)]
    latency_sessions: usize,
    /// Sessions of the memory / setup-rate run.
    #[arg(long, default_value_t = 4_000)]
    memory_sessions: usize,
    /// Measured window per step, seconds (default 5, quick 2).
    #[arg(long)]
    measure_s: Option<f64>,
    /// Steps of the rate search at most (default 9, quick 3).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Loss ratio that fails a search step.
    #[arg(long, default_value_t = 0.001)]
    loss_threshold: f64,
    /// p99 one-way latency (ms) that fails a search step (the relay is queueing, not keeping up).
    #[arg(long, default_value_t = 20.0)]
    max_p99_ms: f64,
    /// Load-generator media sockets shared by the endpoints.
    #[arg(long, default_value_t = 16)]
    loadgen_sockets: usize,
    /// NG requests outstanding during setup.
    #[arg(long, default_value_t = 32)]
    setup_window: usize,
    /// Offer rtcp-mux (default: separate RTP and RTCP ports, like most carriers).
    #[arg(long)]
    rtcp_mux: bool,
    /// Exit with status 2 when a target is missed.
    #[arg(long)]
    enforce_targets: bool,
}

fn kind(name: &str) -> Result<RelayKind, LoadgenError> {
    match name {
        "rtpengine" => Ok(RelayKind::Rtpengine),
        "popd-uring" => Ok(RelayKind::PopdUring),
        "popd-mmsg" => Ok(RelayKind::PopdMmsg),
        "floor" => Ok(RelayKind::Floor),
        other => Err(LoadgenError::Config {
            field: "relays",
            reason: format!(
                "unknown relay `{other}` (use rtpengine, popd-uring, popd-mmsg, floor)"
            ),
        }),
    }
}

/// `relay-floor` from `--floor`, else the one built next to this binary.
fn floor_binary(cli: &Cli) -> Result<PathBuf, LoadgenError> {
    if let Some(p) = &cli.floor {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().map_err(|e| LoadgenError::sys("locate relay-bench", e))?;
    Ok(exe.with_file_name("relay-floor"))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.1))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("relay-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<bool, LoadgenError> {
    let nofile = host::raise_nofile_limit()?;
    if host::online_cpus() <= cli.relay_cpu.max(cli.loadgen_cpu) {
        return Err(LoadgenError::Config {
            field: "relay-cpu/loadgen-cpu",
            reason: format!("only {} CPUs available", host::online_cpus()),
        });
    }
    host::pin_current_thread(cli.loadgen_cpu)?;
    let measure = secs(cli.measure_s.unwrap_or(if cli.quick { 2.0 } else { 5.0 }));
    let warmup = if cli.quick { secs(0.5) } else { secs(1.0) };
    let max_steps = cli.max_steps.unwrap_or(if cli.quick { 3 } else { 9 });
    let settings = BenchSettings {
        setup_window: cli.setup_window,
        loadgen_sockets: cli.loadgen_sockets,
        loadgen_first_port: 40_000,
        sdp: SdpOptions {
            rtcp_mux: cli.rtcp_mux,
        },
    };
    let step_shape = RunShape {
        sessions: 0,
        warmup,
        measure,
        interval: Duration::from_millis(20),
    };
    let plan = SearchPlan {
        fixed_steps: [cli.cpu_sessions, cli.latency_sessions],
        growth: 1.25,
        max_steps,
        loss_threshold: cli.loss_threshold,
        max_p99_us: cli.max_p99_ms * 1_000.0,
        shape: step_shape,
    };
    // Many sessions are touched at a tenth of the PCMU rate: the point is memory and setup,
    // not a rate no relay here sustains.
    let memory_shape = RunShape {
        sessions: cli.memory_sessions,
        warmup: secs(1.0),
        measure: if cli.quick { secs(1.0) } else { secs(2.0) },
        interval: Duration::from_millis(200),
    };
    println!(
        "relay-bench: relays {:?}, relay on CPU {}, load generator on CPU {}, open-file limit {nofile}, window {:.1} s, ≤ {max_steps} search steps",
        cli.relays, cli.relay_cpu, cli.loadgen_cpu, measure.as_secs_f64()
    );
    let mut results = Vec::new();
    for name in &cli.relays {
        let kind = kind(name)?;
        let spec = RelaySpec {
            kind,
            binary: match kind {
                RelayKind::Rtpengine => cli.rtpengine.clone(),
                RelayKind::Floor => floor_binary(cli)?,
                RelayKind::PopdUring | RelayKind::PopdMmsg => cli.popd.clone(),
            },
            port_min: cli.port_min,
            port_max: cli.port_max,
            cpu: cli.relay_cpu,
            loadgen_cpu: cli.loadgen_cpu,
            threads: cli.relay_threads,
            log_dir: cli.log_dir.clone(),
            extra_args: match kind {
                RelayKind::Rtpengine | RelayKind::Floor => Vec::new(),
                RelayKind::PopdUring | RelayKind::PopdMmsg => cli.popd_arg.clone(),
            },
        };
        let r = bench_relay(&spec, &settings, plan, memory_shape, &mut |relay, f| {
            println!("{}", report::run_line(relay, f));
        })?;
        results.push(r);
    }
    let full = report::build(results, Targets::default());
    print!("{}", report::render(&full));
    let json = serde_json::to_string_pretty(&full).map_err(|e| LoadgenError::Report {
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
    println!("JSON report: {}", cli.json.display());
    Ok(!cli.enforce_targets || full.verdicts.iter().all(|v| v.pass))
}
