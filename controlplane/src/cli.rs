//! The `pop-cp` command line. `main.rs` only calls [`run`].

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::pki::{self, Ca, InitOptions, RevokeTarget};
use crate::server::{self, ServeOptions};
use crate::store::Store;
use crate::util::now_unix_s;

/// Reference control plane for PoP agents.
#[derive(Debug, Parser)]
#[command(name = "pop-cp", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create the CA, the server identity, an empty CRL and the store.
    Init {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// DNS name agents use to reach the server.
        #[arg(long)]
        server_name: String,
        /// IP address SANs (repeatable).
        #[arg(long)]
        server_ip: Vec<IpAddr>,
        /// Server certificate notBefore, Unix seconds (tests).
        #[arg(long)]
        server_not_before_unix: Option<i64>,
        /// Server certificate notAfter, Unix seconds (tests: an expired server cert).
        #[arg(long)]
        server_not_after_unix: Option<i64>,
    },
    /// Print a fresh one-time enrollment token for a device.
    Token {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// Device id the token enrols.
        #[arg(long)]
        device_id: String,
        /// Lifetime, seconds (0: already expired).
        #[arg(long, default_value_t = 3600)]
        ttl_s: u64,
        /// Make an already expired token (tests).
        #[arg(long)]
        expired: bool,
    },
    /// Issue a client certificate with a software key (tests of refusal paths).
    IssueClient {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// Device id (common name).
        #[arg(long)]
        device_id: String,
        /// Certificate output (PEM: leaf then CA).
        #[arg(long)]
        out_cert: PathBuf,
        /// Key output (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        out_key: PathBuf,
        /// notAfter, Unix seconds (default: now + 30 days).
        #[arg(long)]
        not_after_unix: Option<i64>,
        /// notBefore, Unix seconds (default: now − 5 min, or notAfter − 1 day if earlier).
        #[arg(long)]
        not_before_unix: Option<i64>,
    },
    /// Revoke a certificate by serial or every certificate of a device.
    Revoke {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// Serial, hex.
        #[arg(
            long,
            conflicts_with = "device_id",
            required_unless_present = "device_id"
        )]
        serial: Option<String>,
        /// Device id.
        #[arg(long)]
        device_id: Option<String>,
    },
    /// Run the server.
    Serve {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// Agent listener (port 0: any).
        #[arg(long)]
        listen: SocketAddr,
        /// Admin listener, loopback only (port 0: any).
        #[arg(long)]
        admin: SocketAddr,
        /// Heartbeat interval, ms.
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        /// Validity of issued device certificates, days.
        #[arg(long, default_value_t = 30)]
        cert_days: u32,
    },
}

fn pem(label: &str, der: &[u8]) -> String {
    // Base64 by hand keeps the dependency list short; 64-column lines as RFC 7468 says.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Runs the command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Init {
            dir,
            server_name,
            server_ip,
            server_not_before_unix,
            server_not_after_unix,
        } => {
            pki::init(
                &dir,
                &InitOptions {
                    server_name,
                    server_ips: server_ip,
                    server_not_before_unix,
                    server_not_after_unix,
                },
            )?;
            println!("initialised {}", dir.display());
        }
        Cmd::Token {
            dir,
            device_id,
            ttl_s,
            expired,
        } => {
            if !server::is_initialised(&dir) {
                bail!("--dir {}: not initialised (run pop-cp init)", dir.display());
            }
            let store = Store::open(&pki::Layout::new(&dir).store())?;
            let token = store.create_token(&device_id, if expired { 0 } else { ttl_s })?;
            println!("{token}");
        }
        Cmd::IssueClient {
            dir,
            device_id,
            out_cert,
            out_key,
            not_after_unix,
            not_before_unix,
        } => {
            let ca = Ca::load(&dir)?;
            let now = i64::try_from(now_unix_s()).unwrap_or(i64::MAX);
            let not_after = not_after_unix.unwrap_or(now + 30 * 86_400);
            let not_before = not_before_unix.unwrap_or_else(|| (now - 300).min(not_after - 86_400));
            let (cert, key_pem) = ca.issue_software(&device_id, not_before, not_after)?;
            pki::record_issued(&dir, &cert)?;
            let chain = format!(
                "{}{}",
                pem("CERTIFICATE", &cert.der),
                pem("CERTIFICATE", ca.der())
            );
            crate::util::atomic_write(&out_cert, chain.as_bytes(), 0o644)
                .with_context(|| format!("--out-cert {}", out_cert.display()))?;
            crate::util::atomic_write(&out_key, key_pem.as_bytes(), 0o600)
                .with_context(|| format!("--out-key {}", out_key.display()))?;
            println!("serial {}", cert.serial);
        }
        Cmd::Revoke {
            dir,
            serial,
            device_id,
        } => {
            let ca = Ca::load(&dir)?;
            let target = match (serial, device_id) {
                (Some(s), None) => RevokeTarget::Serial(s),
                (None, Some(d)) => RevokeTarget::Device(d),
                _ => bail!("give exactly one of --serial and --device-id"),
            };
            let added = ca.revoke(&dir, &target)?;
            for s in &added {
                println!("revoked {s}");
            }
            if added.is_empty() {
                println!("already revoked");
            }
        }
        Cmd::Serve {
            dir,
            listen,
            admin,
            heartbeat_ms,
            cert_days,
        } => {
            if !server::is_initialised(&dir) {
                bail!("--dir {}: not initialised (run pop-cp init)", dir.display());
            }
            if heartbeat_ms == 0 {
                bail!("--heartbeat-ms: must be above 0");
            }
            if cert_days == 0 {
                bail!("--cert-days: must be above 0");
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(async move {
                let h = server::serve(ServeOptions {
                    dir,
                    listen,
                    admin,
                    heartbeat: Duration::from_millis(heartbeat_ms),
                    cert_days,
                })
                .await?;
                {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "listening {}", h.listen_addr)?;
                    writeln!(out, "admin {}", h.admin_addr)?;
                    out.flush()?;
                }
                tracing::info!(listen = %h.listen_addr, admin = %h.admin_addr, "control plane ready");
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("SIGTERM handler")?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("shutting down");
                h.shutdown().await;
                Ok::<_, anyhow::Error>(())
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pem_encoding_round_trips_through_rustls_parser() {
        use rustls_pki_types::pem::PemObject;
        for der in [
            vec![],
            vec![1u8],
            vec![1, 2],
            vec![1, 2, 3],
            (0..=255u8).collect(),
        ] {
            let text = pem("CERTIFICATE", &der);
            if der.is_empty() {
                continue;
            }
            let back = rustls_pki_types::CertificateDer::from_pem_slice(text.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), der.as_slice());
        }
    }

    #[test]
    fn cli_parses_the_documented_flags() {
        Cli::try_parse_from([
            "pop-cp",
            "serve",
            "--dir",
            "/d",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--heartbeat-ms",
            "200",
            "--cert-days",
            "1",
        ])
        .unwrap();
        Cli::try_parse_from(["pop-cp", "revoke", "--dir", "/d", "--serial", "01ab"]).unwrap();
        assert!(Cli::try_parse_from([
            "pop-cp",
            "revoke",
            "--dir",
            "/d",
            "--serial",
            "01",
            "--device-id",
            "x"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["pop-cp", "revoke", "--dir", "/d"]).is_err());
    }
}
