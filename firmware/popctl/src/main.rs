//! `popctl`: what a technician runs on the appliance. For now: `popctl enroll --token ...`,
//! which generates the device key in the keystore, sends a certificate request with the
//! one-time token to the control plane (its CA pinned) and stores the certificate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "popctl", version, about = "PoP appliance technician tool")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Enroll this appliance with the control plane using a one-time bootstrap token.
    Enroll {
        /// The agent's settings (control plane address, pinned CA, keystore, state directory).
        #[arg(long, default_value = "/etc/popd/agent.toml")]
        config: PathBuf,
        /// The one-time token from the control plane's operator.
        #[arg(long)]
        token: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POPD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match Cli::parse().command {
        Cmd::Enroll { config, token } => {
            let settings = match pop_agent::AgentSettings::from_file(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("popctl enroll: {e}");
                    return ExitCode::from(2);
                }
            };
            match pop_agent::enroll(&settings, &token) {
                Ok(e) => {
                    println!(
                        "enrolled {} (key {} in the keystore); certificate valid until {} (Unix time)",
                        settings.device_id, e.key_label, e.not_after_unix_s
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("popctl enroll: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
