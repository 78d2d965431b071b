//! `pop-rig`: build the virtual PoP and keep it (`up`), remove stale runs (`cleanup`), or check
//! the rig end to end (`selftest`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use pop_rig::{
    cleanup_stale, run_selftest, state_root, BfdTimers, Rig, RigOptions, Role, Uplink, Upstream,
};

#[derive(Debug, Parser)]
#[command(
    name = "pop-rig",
    about = "The PoP in network namespaces (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the rig, print it, keep it until Ctrl-C (or SIGTERM), then tear it down.
    Up {
        /// Run FRR bfdd (50 ms x 3) in the carriers and the core; the core route follows BFD.
        #[arg(long)]
        frr: bool,
        /// Also run FRR bfdd in the appliance as its link monitor (the reference).
        #[arg(long, requires = "frr")]
        appliance_frr: bool,
    },
    /// Remove runs whose owner process is gone (namespaces, processes, state directories).
    Cleanup,
    /// Build, check every path, inject each fault and check breakage and recovery; tear down.
    Selftest {
        /// Without FRR (manual upstream routing).
        #[arg(long)]
        no_frr: bool,
    },
}

fn print_rig(rig: &Rig) {
    let p = rig.plan();
    println!(
        "run {} (state in {})",
        rig.run_id(),
        rig.run_dir().display()
    );
    for role in Role::ALL {
        println!("  {:<5} namespace {}", role.name(), rig.ns(role));
    }
    println!("  service address {} (app lo)", p.service);
    println!(
        "  core media {}  control {} (core lo)",
        p.core_media, p.core_control
    );
    for u in Uplink::ALL {
        let a = p.uplink(u);
        println!(
            "  {u}: app {}/{} gateway {} ({}), carrier->core {} core {}",
            a.app,
            a.prefix_len,
            a.gateway,
            u.carrier(),
            a.carrier_core_side,
            a.core_side
        );
    }
    for role in Role::ALL {
        if let Some(b) = rig.frr(role) {
            println!(
                "  bfdd in {role}: pid {}, vtysh --vty_socket {}",
                b.pid(),
                b.dir().display()
            );
        }
    }
    println!("  e.g. ip netns exec {} ip route", rig.ns(Role::App));
}

fn up(frr: bool, appliance_frr: bool) -> Result<(), String> {
    // Block the signals before any thread starts, so every thread inherits the mask and only
    // the wait below receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let options = RigOptions {
        upstream: if frr {
            Upstream::FrrBfd(BfdTimers::FAST_50X3)
        } else {
            Upstream::Manual
        },
        appliance_frr: appliance_frr.then_some(BfdTimers::FAST_50X3),
        ..RigOptions::default()
    };
    let rig = Rig::build(options).map_err(|e| e.to_string())?;
    let t = rig.timings();
    println!(
        "built in {:.1} ms (FRR start {:.1} ms)",
        t.topology.as_secs_f64() * 1e3,
        t.frr_start.as_secs_f64() * 1e3
    );
    print_rig(&rig);
    println!("Ctrl-C tears it down.");
    let sig = signals
        .wait()
        .map_err(|e| format!("waiting for a signal: {e}"))?;
    println!("{sig:?}: tearing down");
    rig.teardown().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up { frr, appliance_frr } => up(frr, appliance_frr),
        Command::Cleanup => {
            let r = cleanup_stale(&state_root());
            for run in &r.runs {
                println!("removed run {run}");
            }
            for ns in &r.namespaces {
                println!("removed namespace {ns}");
            }
            for run in &r.live_runs {
                println!("kept live run {run}");
            }
            if r.errors.is_empty() {
                Ok(())
            } else {
                Err(r.errors.join("\n"))
            }
        }
        Command::Selftest { no_frr } => {
            let mut out = std::io::stdout();
            match run_selftest(&mut out, !no_frr) {
                Ok(report) if report.failures.is_empty() => {
                    println!("selftest passed");
                    Ok(())
                }
                Ok(report) => Err(format!(
                    "selftest failed:\n  {}",
                    report.failures.join("\n  ")
                )),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pop-rig: {e}");
            ExitCode::FAILURE
        }
    }
}
