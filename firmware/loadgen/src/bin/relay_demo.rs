//! `relay-demo`: the appliance's main job on its embedded defaults, in one short run that a
//! technician can watch. Starts `popd relay` (its default configuration — media on 127.0.0.1,
//! ports 30000–39999 — with NG on a free loopback port), sets up calls over NG the way Kamailio would, sends
//! 20 ms-paced RTP both ways through the relay, shows what the relay reports about them (NG
//! `query` and `statistics`), hangs the calls up and checks that nothing is left behind.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pop_loadgen::ng_client::{integer_leaves, session_specs, NgClient};
use pop_loadgen::relay_process::{RelayKind, RelaySpec};
use pop_loadgen::sdp_text::SdpOptions;
use pop_loadgen::traffic::{self, EndpointSockets, NoObserver, Phase, PhaseRole, TrafficConfig};
use pop_loadgen::{host, LoadgenError};
use pop_wire::bencode::Value;

#[derive(Debug, Parser)]
#[command(
    name = "relay-demo",
    about = "Short live run of popd relay with calls and media"
)]
struct Cli {
    /// popd binary.
    #[arg(long, default_value = "target/release/popd")]
    popd: PathBuf,
    /// I/O backend of the relay: uring or mmsg.
    #[arg(long, default_value = "uring")]
    backend: String,
    /// Calls to set up.
    #[arg(long, default_value_t = 50)]
    calls: usize,
    /// Seconds of media.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), LoadgenError> {
    host::raise_nofile_limit()?;
    let kind = match cli.backend.as_str() {
        "uring" => RelayKind::PopdUring,
        "mmsg" => RelayKind::PopdMmsg,
        other => {
            return Err(LoadgenError::Config {
                field: "backend",
                reason: format!("`{other}`: use uring or mmsg"),
            })
        }
    };
    let cpus = host::online_cpus();
    let spec = RelaySpec {
        kind,
        binary: cli.popd.clone(),
        // The relay's embedded default range (image/etc/popd/relay.toml).
        port_min: 30000,
        port_max: 39999,
        cpu: 0,
        loadgen_cpu: if cpus > 1 { 1 } else { 0 },
        threads: 1,
        log_dir: PathBuf::from("target/relay-demo-logs"),
        extra_args: Vec::new(),
    };
    println!("== starting popd relay ({}), pinned to CPU 0", cli.backend);
    let mut relay = spec.start("demo")?;
    println!("   relay pid {}, NG on {}", relay.pid(), relay.ng()?);

    let sockets = EndpointSockets::bind(16, 50_000)?;
    let endpoints: Vec<_> = (0..cli.calls)
        .map(|i| {
            (
                sockets.endpoint_addr(2 * i),
                sockets.endpoint_addr(2 * i + 1),
            )
        })
        .collect();
    let specs = session_specs("demo-call", 0, &endpoints);
    let mut ng = NgClient::connect(relay.ng()?)?;
    println!("\n== {} calls: offer + answer over NG", cli.calls);
    let setup = ng.setup_sessions(&specs, 16, SdpOptions::default())?;
    println!(
        "   set up in {:.1} ms ({:.0} offer+answer pairs/s)",
        setup.elapsed.as_secs_f64() * 1e3,
        setup.pairs_per_s()
    );
    if let Some(route) = setup.routes.first() {
        println!(
            "   call 0: caller sends to relay {}, callee sends to relay {}",
            route.caller_sends_to, route.callee_sends_to
        );
    }

    println!(
        "\n== {} s of 20 ms-paced RTP (172-byte PCMU) both ways",
        cli.seconds
    );
    let streams = traffic::session_streams(&setup.routes, 0);
    let phases = [Phase {
        role: PhaseRole::Measure,
        duration: Duration::from_secs(cli.seconds),
        packets_per_interval: 1,
    }];
    let before = relay.sample()?;
    let report = traffic::run(
        &sockets,
        &streams,
        &phases,
        TrafficConfig::default(),
        &mut NoObserver,
    )?;
    let after = relay.sample()?;
    let cpu_s = after.cpu_s - before.cpu_s;
    println!(
        "   sent {} packets, delivered {} ({:.4} % lost), one-way latency p50 {:.0} µs, p99 {:.0} µs",
        report.sent,
        report.received,
        report.loss_ratio * 100.0,
        report.latency_p50_us,
        report.latency_p99_us
    );
    println!(
        "   relay: {:.1} % of one core, {:.2} µs CPU per packet, RSS {:.1} MiB, {} open files",
        100.0 * cpu_s / report.measured_s.max(1e-9),
        1e6 * cpu_s / (report.received.max(1) as f64),
        after.rss_kib as f64 / 1024.0,
        after.fds
    );

    println!("\n== what the relay reports (NG query, call 0)");
    if let Some(first) = specs.first() {
        let reply = ng.request(
            "query",
            Value::dict([
                ("command", Value::str("query")),
                ("call-id", Value::str(&first.call_id)),
            ]),
        )?;
        if reply.dict_get("result").and_then(Value::as_str) != Some("ok") {
            return Err(LoadgenError::Config {
                field: "query",
                reason: "the relay does not know call 0 while its media flows".into(),
            });
        }
        for (key, value) in integer_leaves(&reply)
            .into_iter()
            .filter(|(k, _)| k.contains("packets") || k.contains("bytes"))
        {
            println!("   {key} = {value}");
        }
    }
    println!("\n== what the relay reports (NG statistics)");
    let stats = ng.statistics()?;
    for (key, value) in integer_leaves(&stats)
        .into_iter()
        .filter(|(k, _)| k.contains("sessions") || k.contains("forwarded") || k.contains("port"))
    {
        println!("   {key} = {value}");
    }

    println!("\n== hanging up (NG delete)");
    ng.delete_sessions(&specs, 16)?;
    let left = integer_leaves(&ng.statistics()?)
        .into_iter()
        .find(|(k, _)| k.ends_with("sessionsown"))
        .map_or(-1, |(_, v)| v);
    println!("   calls left on the relay: {left}");
    relay.check_alive()?;
    if left != 0 || report.received == 0 {
        return Err(LoadgenError::Config {
            field: "demo",
            reason: format!(
                "expected media delivered and no calls left; delivered {}, calls left {left}",
                report.received
            ),
        });
    }
    println!("\ndemo done: relay log in target/relay-demo-logs/");
    Ok(())
}
