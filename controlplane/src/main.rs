//! `pop-cp`: the reference control plane. Everything lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = pop_controlplane::cli::Cli::parse();
    match pop_controlplane::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pop-cp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
