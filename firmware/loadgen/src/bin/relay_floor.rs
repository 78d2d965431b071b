//! `relay-floor`: the cheapest user-space UDP forwarder this host can run — N port pairs, one
//! thread, epoll + `recvmmsg`/`sendmmsg`, to the partner socket's latched peer. A measurement
//! reference for `relay-bench` (how much of a relay's CPU is the kernel's UDP path), not a
//! relay: no NG, no sessions, no checks, no statistics. Runs until signalled.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::process::ExitCode;

use clap::Parser;
use pop_loadgen::floor::{FloorRelay, READY_LINE};

#[derive(Debug, Parser)]
#[command(
    name = "relay-floor",
    about = "Minimal UDP pair forwarder: the CPU floor reference for relay-bench (not a relay)"
)]
struct Cli {
    /// Address to bind every port on.
    #[arg(long, default_value = "127.0.0.1")]
    address: Ipv4Addr,
    /// First port; pair i is base+2i ↔ base+2i+1.
    #[arg(long)]
    port_base: u16,
    /// Number of port pairs.
    #[arg(long)]
    pairs: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut relay = match FloorRelay::bind(cli.address, cli.port_base, cli.pairs) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relay-floor: {e}");
            return ExitCode::FAILURE;
        }
    };
    // relay-bench waits for this line (stdout is line-buffered, so it is written at once).
    println!(
        "{READY_LINE}: {} pairs on {}:{}+",
        cli.pairs, cli.address, cli.port_base
    );
    match relay.run() {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("relay-floor: {e}");
            ExitCode::FAILURE
        }
    }
}
