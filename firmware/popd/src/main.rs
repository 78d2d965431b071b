//! `popd`: the PoP appliance daemon. One binary, a subcommand per service; each service runs as
//! its own systemd unit. The logic lives in the service crates; this only parses arguments.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pop_relay::RelayConfig;

#[derive(Debug, Parser)]
#[command(name = "popd", version, about = "PoP appliance daemon")]
struct Cli {
    #[command(subcommand)]
    service: Service,
}

// Parsed once at start: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Service {
    /// RTP/RTCP media relay driven by the NG control protocol (rtpengine-compatible).
    Relay(RelayArgs),
    /// Uplink monitor: carrier, BFD and probes per uplink; moves the routes on failure.
    Linkmon(ConfigArgs),
    /// Hardware watchdog, petted only while every critical service makes progress.
    Watchdog(ConfigArgs),
    /// Control-plane agent: mTLS session, configuration pushes, spooled reporting, commands.
    Agent(ConfigArgs),
}

/// Services configured by one file only.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML configuration file (see image/etc/popd/).
    #[arg(long)]
    config: PathBuf,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

/// Flags override the config file; the result is validated before anything starts.
#[derive(Debug, Args)]
struct RelayArgs {
    /// TOML configuration file (see image/etc/popd/relay.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// NG control address (UDP).
    #[arg(long, value_name = "ADDR:PORT")]
    ng_listen: Option<SocketAddr>,
    /// NG control address (TCP); off unless given.
    #[arg(long, value_name = "ADDR:PORT")]
    ng_listen_tcp: Option<SocketAddr>,
    /// Address media is bound to and written into SDP.
    #[arg(long, value_name = "IP")]
    media_address: Option<IpAddr>,
    /// Lowest media port.
    #[arg(long, value_name = "N")]
    port_min: Option<u16>,
    /// Highest media port.
    #[arg(long, value_name = "N")]
    port_max: Option<u16>,
    /// Data plane worker threads.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Data plane I/O backend: `uring` or `mmsg`.
    #[arg(long, value_name = "uring|mmsg")]
    io_backend: Option<String>,
    /// CPUs to pin the workers to, comma-separated.
    #[arg(long, value_name = "CPU,...", value_delimiter = ',')]
    pin_cpus: Option<Vec<usize>>,
    /// io_uring wake-up coalescing once media flows, in microseconds (0: off).
    #[arg(long, value_name = "USEC")]
    batch_wait_usec: Option<u32>,
    /// Concurrent calls before offers are answered `load limit`.
    #[arg(long, value_name = "N")]
    max_sessions: Option<usize>,
    /// Seconds a released port rests before reuse.
    #[arg(long, value_name = "SECS")]
    port_quarantine_secs: Option<u64>,
    /// Seconds without media before a call is closed.
    #[arg(long, value_name = "SECS")]
    no_media_timeout: Option<u64>,
    /// Local control socket for `popd agent` (status, call records, configuration pushes).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

impl RelayArgs {
    fn into_config(self) -> Result<(RelayConfig, bool), pop_relay::ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => RelayConfig::from_file(path)?,
            None => RelayConfig::default(),
        };
        if let Some(v) = self.ng_listen {
            cfg.ng.listen_udp = v;
        }
        if self.ng_listen_tcp.is_some() {
            cfg.ng.listen_tcp = self.ng_listen_tcp;
        }
        if let Some(v) = self.media_address {
            cfg.media.address = v;
        }
        if let Some(v) = self.port_min {
            cfg.media.port_min = v;
        }
        if let Some(v) = self.port_max {
            cfg.media.port_max = v;
        }
        if let Some(v) = self.workers {
            cfg.dataplane.workers = v;
        }
        if let Some(v) = self.io_backend {
            cfg.dataplane.backend = v;
        }
        if let Some(v) = self.pin_cpus {
            cfg.dataplane.pin_cpus = v;
        }
        if let Some(v) = self.batch_wait_usec {
            cfg.dataplane.batch_wait_usec = v;
        }
        if let Some(v) = self.max_sessions {
            cfg.limits.max_sessions = v;
        }
        if let Some(v) = self.port_quarantine_secs {
            cfg.media.port_quarantine_secs = v;
        }
        if let Some(v) = self.no_media_timeout {
            cfg.timeouts.no_media_secs = v;
        }
        if self.control_socket.is_some() {
            cfg.control.socket = self.control_socket;
        }
        cfg.validate()?;
        Ok((cfg, self.check_config))
    }
}

/// Logs to stderr, and also to journald with structured fields when the journal's socket is
/// there (audit records carry `AUDIT_ACTOR`, `AUDIT_ACTION`, `AUDIT_DETAIL`, `AUDIT_OUTCOME`).
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("POPD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let journald = std::path::Path::new("/run/systemd/journal/socket")
        .exists()
        .then(tracing_journald::layer)
        .and_then(Result::ok)
        .map(|l| l.with_syslog_identifier("popd".into()));
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(journald)
        .init();
}

/// Loads a config, prints it for `--check-config`, or runs the service; exit 2 on a bad config.
fn config_service<C: std::fmt::Debug, E: std::fmt::Display, R>(
    name: &str,
    args: ConfigArgs,
    load: impl FnOnce(&std::path::Path) -> Result<C, E>,
    run: impl FnOnce(C) -> Result<R, E>,
) -> ExitCode {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("popd {name}: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{cfg:#?}");
        return ExitCode::SUCCESS;
    }
    match run(cfg) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("popd {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.service {
        Service::Linkmon(args) => config_service(
            "linkmon",
            args,
            pop_linkmon::LinkmonConfig::from_file,
            pop_linkmon::run,
        ),
        Service::Agent(args) => config_service(
            "agent",
            args,
            pop_agent::AgentSettings::from_file,
            pop_agent::run,
        ),
        Service::Watchdog(args) => config_service(
            "watchdog",
            args,
            pop_watchdog::WatchdogConfig::from_file,
            pop_watchdog::run,
        ),
        Service::Relay(args) => {
            let (cfg, check_only) = match args.into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("popd relay: {e}");
                    return ExitCode::from(2);
                }
            };
            if check_only {
                println!("{cfg:#?}");
                return ExitCode::SUCCESS;
            }
            match pop_relay::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("popd relay: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
