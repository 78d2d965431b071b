//! `failover-bench`: issue 3's failover benchmark on the virtual rig. A 50 packets/s RTP call
//! runs both ways through `popd relay` while each failure mode is injected on the primary
//! uplink N times, first with `popd linkmon` as the appliance's monitor, then with FRR bfdd
//! (50 ms × 3) as the reference; per mode and direction it prints detection time, switch time
//! and media gap (p50/p99/max), judges the targets and writes a JSON report.
//! `--demo` runs the short watchable failover instead.
#![forbid(unsafe_code)]

#[path = "../scenario/mod.rs"]
mod scenario;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use pop_rig::{BfdTimers, Rig, RigOptions, Upstream};

use scenario::checks::{both_down_check, loss_check};
use scenario::error::{BenchError, Result};
use scenario::media::MediaRun;
use scenario::report::Report;
use scenario::services::{create_call, LinkmonTuning, Services};
use scenario::trial::{Mode, Monitor, TrialResult, Trials};

/// Failover benchmark (issue 3) on the virtual rig. Needs root (network namespaces), iproute2,
/// nftables and FRR; `scripts/bench-failover` builds and runs it.
#[derive(Debug, Parser)]
#[command(name = "failover-bench")]
struct Args {
    /// Trials per failure mode and monitor.
    #[arg(long, default_value_t = 20)]
    trials: u32,
    /// CI smoke: 3 trials, no 60 s loss run.
    #[arg(long)]
    quick: bool,
    /// Failure modes, comma-separated: carrier-loss, blackhole, past-gateway.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "carrier-loss,blackhole,past-gateway"
    )]
    modes: Vec<String>,
    /// Skip the FRR bfdd reference.
    #[arg(long)]
    no_frr: bool,
    /// Skip the loss and both-uplinks-down checks.
    #[arg(long)]
    no_checks: bool,
    /// Seconds of 2 % loss on the primary.
    #[arg(long, default_value_t = 60)]
    loss_secs: u64,
    /// The popd binary (default: target/release/popd next to this binary's target dir).
    #[arg(long)]
    popd: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "failover-bench.json")]
    json: PathBuf,
    /// Seconds to stay on the primary after start-up before the first trial. The kernel's
    /// linkwatch reports a carrier change late (up to 1 s here) when other link changes —
    /// such as building the rig — happened just before; 3 s lets the first trial see what the
    /// others see. 0 measures a carrier loss right after start-up.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// Copy the services' logs (relay, linkmon, FRR) here before each rig is torn down.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Run the short watchable demo instead of the benchmark.
    #[arg(long)]
    demo: bool,
}

fn default_popd() -> PathBuf {
    // This binary lives in target/<profile>/; prefer the release popd beside it.
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let release = target.join("release").join("popd");
    if release.is_file() {
        release
    } else {
        target.join("debug").join("popd")
    }
}

fn rig_options(monitor: Monitor) -> RigOptions {
    match monitor {
        Monitor::Linkmon => RigOptions {
            upstream: Upstream::FrrBfd(BfdTimers::FAST_50X3),
            // popd linkmon installs its own per-uplink source routing.
            uplink_policy_tables: false,
            ..RigOptions::default()
        },
        Monitor::FrrBfdd => RigOptions {
            upstream: Upstream::FrrBfd(BfdTimers::FAST_50X3),
            appliance_frr: Some(BfdTimers::FAST_50X3),
            ..RigOptions::default()
        },
    }
}

struct Plan {
    modes: Vec<Mode>,
    trials: u32,
    loss_secs: Option<u64>,
    both_down: bool,
    keep_logs: Option<PathBuf>,
    settle: Duration,
}

/// Copies every `*.log` under the rig's run directory into `dest/<monitor>/`.
fn keep_logs(rig: &Rig, monitor: Monitor, dest: &std::path::Path) -> Result<()> {
    let dest = dest.join(match monitor {
        Monitor::Linkmon => "linkmon",
        Monitor::FrrBfdd => "frr",
    });
    let mut stack = vec![rig.run_dir().to_owned()];
    // Bounded: the run directory holds a handful of files two levels deep.
    let mut budget = 1000;
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| BenchError::io(format!("reading {}", dir.display()), e))?;
        for entry in entries.flatten() {
            budget -= 1;
            if budget == 0 {
                return Ok(());
            }
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "log" || e == "toml") {
                let rel = path.strip_prefix(rig.run_dir()).unwrap_or(&path);
                let to = dest.join(rel);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| BenchError::io(format!("creating {}", parent.display()), e))?;
                }
                std::fs::copy(&path, &to)
                    .map_err(|e| BenchError::io(format!("copying {}", path.display()), e))?;
            }
        }
    }
    Ok(())
}

/// Output of one monitor's run.
type MonitorRun = (
    Vec<TrialResult>,
    Option<scenario::checks::LossCheck>,
    Option<scenario::checks::BothDownCheck>,
);

fn run_monitor(monitor: Monitor, popd: &std::path::Path, plan: &Plan) -> Result<MonitorRun> {
    let t0 = Instant::now();
    let rig = Rig::build(rig_options(monitor))?;
    let tuning = LinkmonTuning::BENCH;
    let linkmon = (monitor == Monitor::Linkmon).then_some(tuning);
    let mut services = Services::start(&rig, popd, linkmon)?;
    let call = create_call(&rig)?;
    let media = MediaRun::start(call)?;
    let mut t = Trials {
        rig: &rig,
        services: &mut services,
        media: &media,
        monitor,
        hold_down: match monitor {
            Monitor::Linkmon => Duration::from_millis(tuning.hold_down_ms),
            Monitor::FrrBfdd => Duration::ZERO,
        },
    };
    t.wait_stable(Duration::from_secs(30))?;
    eprintln!(
        "[{}] rig {} up, call set up, stable on the primary after {:.1} s",
        monitor.name(),
        rig.run_id(),
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(plan.settle);
    let mut results = Vec::new();
    for &mode in &plan.modes {
        for i in 0..plan.trials {
            let r = t.run(mode, i)?;
            eprintln!(
                "[{}] {} #{:<2} app→core detect {:>7} gap {:>4.0} ms | core→app detect {:>7} gap {:>4.0} ms | failback {:>6}{}",
                monitor.name(),
                mode.name(),
                i,
                r.app_to_core.detect_ms.map_or("-".into(), |v| format!("{v:.1}")),
                r.app_to_core.gap_ms,
                r.core_to_app.detect_ms.map_or("-".into(), |v| format!("{v:.1}")),
                r.core_to_app.gap_ms,
                r.failback_after_ms.map_or("-".into(), |v| format!("{v:.0}")),
                r.error.as_deref().map_or(String::new(), |e| format!("  !! {e}"))
            );
            results.push(r);
        }
    }
    let mut loss = None;
    let mut both = None;
    if monitor == Monitor::Linkmon {
        if let Some(secs) = plan.loss_secs {
            eprintln!(
                "[{}] {secs} s of 2 % loss on the primary ...",
                monitor.name()
            );
            loss = Some(loss_check(&mut t, 2, secs)?);
        }
        if plan.both_down {
            eprintln!(
                "[{}] both uplinks down for 3 s, then back ...",
                monitor.name()
            );
            both = Some(both_down_check(&mut t, Duration::from_secs(3))?);
        }
    }
    drop(media);
    drop(services);
    if let Some(dest) = &plan.keep_logs {
        keep_logs(&rig, monitor, dest)?;
    }
    rig.teardown()?;
    Ok((results, loss, both))
}

fn run(args: Args) -> Result<bool> {
    let popd = args.popd.clone().unwrap_or_else(default_popd);
    if !popd.is_file() {
        return Err(BenchError::MissingBinary(popd));
    }
    if args.demo {
        return scenario::demo::run_demo(&popd);
    }
    let modes = args
        .modes
        .iter()
        .map(|m| {
            Mode::from_name(m).ok_or_else(|| {
                BenchError::Usage(format!(
                    "unknown mode {m:?}: use carrier-loss, blackhole or past-gateway"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let trials = if args.quick { 3 } else { args.trials };
    if trials == 0 {
        return Err(BenchError::Usage("--trials must be at least 1".into()));
    }
    let plan = Plan {
        modes,
        trials,
        loss_secs: (!args.quick && !args.no_checks && args.loss_secs > 0).then_some(args.loss_secs),
        both_down: !args.no_checks,
        keep_logs: args.keep_logs.clone(),
        settle: Duration::from_secs(args.settle_secs),
    };
    let t0 = Instant::now();
    let (mut all, loss, both) = run_monitor(Monitor::Linkmon, &popd, &plan)?;
    if !args.no_frr {
        let (frr, _, _) = run_monitor(Monitor::FrrBfdd, &popd, &plan)?;
        all.extend(frr);
    }
    let tuning = LinkmonTuning::BENCH;
    let report = Report::new(
        all,
        trials,
        Duration::from_millis(tuning.hold_down_ms),
        format!(
            "BFD {} ms × {} (the carriers' FRR accepts no faster), probes every {} ms past the gateway \
             (timeout {} ms, {} misses), hold-down {} ms, damping half-life 1 s (relaxed for back-to-back trials)",
            tuning.bfd_interval_ms,
            tuning.bfd_mult,
            tuning.probe_interval_ms,
            tuning.probe_timeout_ms,
            tuning.probe_miss_threshold,
            tuning.hold_down_ms
        ),
        loss,
        both,
    );
    print!("{}", report.render());
    println!("\ntotal {:.0} s", t0.elapsed().as_secs_f64());
    let json = serde_json::to_string_pretty(&report).map_err(|e| BenchError::Protocol {
        service: "report",
        detail: e.to_string(),
    })?;
    std::fs::write(&args.json, json)
        .map_err(|e| BenchError::io(format!("writing {}", args.json.display()), e))?;
    println!("JSON report: {}", args.json.display());
    Ok(report.all_pass())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("failover-bench: {e}");
            ExitCode::from(2)
        }
    }
}
