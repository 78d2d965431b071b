//! Real-process tests of `pop-cp`: every test runs its own `pop-cp serve` on 127.0.0.1 with
//! port 0, over real TLS, with fake devices from `pop_controlplane::devclient`.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pop_agent_proto::{
    Audit, CommandOutcome, ConfigOutcome, ConfigResult, Downlink, Record, RecordBody, Uplink,
};
use pop_controlplane::admin::AdminClient;
use pop_controlplane::devclient::{self, DevClientError, DeviceConn, SoftDevice};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const BIN: &str = env!("CARGO_BIN_EXE_pop-cp");
const T: Duration = Duration::from_secs(10);

fn pop_cp(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run pop-cp")
}

fn init(dir: &Path) {
    let out = pop_cp(&[
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--server-name",
        "localhost",
        "--server-ip",
        "127.0.0.1",
    ]);
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn token(dir: &Path, device: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "--dir",
        dir.to_str().unwrap(),
        "--device-id",
        device,
    ];
    args.extend_from_slice(extra);
    let out = pop_cp(&args);
    assert!(
        out.status.success(),
        "token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn ca_der(dir: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(dir.join("ca.pem"))
        .unwrap()
        .to_vec()
}

/// A running `pop-cp serve`, killed (by PID) on drop.
struct Cp {
    child: Child,
    dir: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Cp {
    fn start(dir: &Path, heartbeat_ms: u64) -> Cp {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--dir",
                dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--heartbeat-ms",
                &heartbeat_ms.to_string(),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn pop-cp serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut cp = Cp {
            child,
            dir: dir.to_path_buf(),
            listen: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        let deadline = Instant::now() + T;
        let mut got = 0;
        while got < 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!("pop-cp serve printed no listening/admin lines in {T:?}")
            });
            if let Some(a) = line.strip_prefix("listening ") {
                cp.listen = a.parse().unwrap();
                got += 1;
            } else if let Some(a) = line.strip_prefix("admin ") {
                cp.admin = a.parse().unwrap();
                got += 1;
            }
        }
        cp
    }

    fn admin(&self) -> AdminClient {
        AdminClient::connect(self.admin).unwrap()
    }

    fn ca(&self) -> Vec<u8> {
        ca_der(&self.dir)
    }

    fn enroll(&self, device: &str) -> SoftDevice {
        let mut dev = SoftDevice::new(device).unwrap();
        let tok = token(&self.dir, device, &[]);
        devclient::enroll(self.listen, "localhost", &self.ca(), &mut dev, &tok)
            .unwrap()
            .unwrap_or_else(|r| panic!("enrollment of {device} refused: {r}"));
        dev
    }

    fn connect(&self, dev: &SoftDevice) -> Result<DeviceConn, DevClientError> {
        DeviceConn::connect(
            self.listen,
            "localhost",
            &self.ca(),
            Some((dev.chain.clone(), dev.private_key())),
        )
    }

    /// Connects, sends Hello, returns the connection and the Welcome's acked_up_to.
    fn session(&self, dev: &SoftDevice) -> (DeviceConn, u64) {
        let mut c = self.connect(dev).unwrap();
        c.send(&dev.hello()).unwrap();
        match c.recv(T).unwrap() {
            Downlink::Welcome { acked_up_to, .. } => (c, acked_up_to),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    fn kill9(&mut self) {
        // SAFETY-free: kill by our own child's PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn record(id: u64) -> Record {
    Record {
        id,
        created_unix_ms: 1000 + id,
        body: RecordBody::Audit(Audit {
            at_unix_ms: 1,
            actor: "agent".into(),
            action: "test".into(),
            detail: format!("record {id}"),
            outcome: "ok".into(),
        }),
    }
}

/// The first read of a connection whose client certificate was refused fails with a TLS
/// alert; returns its text.
fn expect_refused_at_handshake(
    cp: &Cp,
    dev_chain: Vec<Vec<u8>>,
    key: PrivateKeyDer<'static>,
    hello: &Uplink,
) -> String {
    let r = DeviceConn::connect(cp.listen, "localhost", &cp.ca(), Some((dev_chain, key)));
    let err = match r {
        Err(e) => e,
        Ok(mut c) => {
            let _ = c.send(hello);
            match c.recv(T) {
                Ok(m) => panic!("a refused certificate got a session: {m:?}"),
                Err(e) => e,
            }
        }
    };
    let text = err.to_string();
    assert!(
        text.contains("received fatal alert"),
        "unexpected error {text}"
    );
    text
}

#[test]
fn enrollment_issues_a_ca_signed_cert_and_tokens_are_one_time() {
    let d = tempfile::tempdir().unwrap();
    init(d.path());
    let cp = Cp::start(d.path(), 1000);
    let mut dev = SoftDevice::new("pop-ams-01").unwrap();
    let tok = token(d.path(), "pop-ams-01", &[]);
    let (cert, crl) = devclient::enroll(cp.listen, "localhost", &cp.ca(), &mut dev, &tok)
        .unwrap()
        .unwrap();
    let Downlink::Certificate {
        chain_der,
        not_after_unix_s,
    } = cert
    else {
        panic!("{cert:?}")
    };
    assert!(matches!(crl, Downlink::Crl { .. }));
    assert_eq!(chain_der.len(), 2);
    assert_eq!(chain_der[1], cp.ca());
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain_der[0]).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&chain_der[1]).unwrap();
    leaf.verify_signature(Some(ca.public_key()))
        .expect("leaf signed by the CA");
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, "pop-ams-01");
    assert_eq!(
        leaf.validity().not_after.timestamp() as u64,
        not_after_unix_s
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);

    // The token is spent.
    let mut again = SoftDevice::new("pop-ams-01").unwrap();
    let r = devclient::enroll(cp.listen, "localhost", &cp.ca(), &mut again, &tok).unwrap();
    assert_eq!(r.unwrap_err(), "token already used");

    // The issued certificate opens a session.
    let (mut c, acked) = cp.session(&dev);
    assert_eq!(acked, 0);
    assert!(matches!(c.recv(T).unwrap(), Downlink::Crl { .. }));

    let audit = cp.admin().audit().unwrap().entries;
    assert_eq!(audit.iter().filter(|e| e.action == "enroll").count(), 2);
    assert!(audit.iter().any(|e| e.outcome == "token already used"));
}

#[test]
fn expired_unknown_and_wrong_device_tokens_are_refused() {
    let d = tempfile::tempdir().unwrap();
    init(d.path());
    let cp = Cp::start(d.path(), 1000);
    let ca = cp.ca();
    let expired = token(d.path(), "pop-1", &["--expired"]);
    let mut dev = SoftDevice::new("pop-1").unwrap();
    let r = devclient::enroll(cp.listen, "localhost", &ca, &mut dev, &expired).unwrap();
    assert_eq!(r.unwrap_err(), "token expired");
    let r = devclient::enroll(cp.listen, "localhost", &ca, &mut dev, "00ff").unwrap();
    assert_eq!(r.unwrap_err(), "unknown token");
    let other = token(d.path(), "pop-2", &[]);
    let r = devclient::enroll(cp.listen, "localhost", &ca, &mut dev, &other).unwrap();
    assert!(r.unwrap_err().contains("not for device"));
    // The wrong-device attempt did not burn pop-2's token.
    let mut dev2 = SoftDevice::new("pop-2").unwrap();
    devclient::enroll(cp.listen, "localhost", &ca, &mut dev2, &other)
        .unwrap()
        .unwrap();
    assert!(dev.chain.is_empty());
    let s = cp.admin().stats().unwrap();
    assert_eq!((s.enrollments_ok, s.enrollments_refused), (1, 3));
}

#[test]
fn foreign_ca_and_expired_client_certs_are_refused_at_the_handshake() {
    let d = tempfile::tempdir().unwrap();
    init(d.path());
    let other = tempfile::tempdir().unwrap();
    init(other.path());
    let cp = Cp::start(d.path(), 1000);

    let issue = |dir: &Path, extra: &[&str]| {
        let cert = dir.join(format!("c{}.pem", extra.len()));
        let key = dir.join(format!("k{}.pem", extra.len()));
        let mut args = vec![
            "issue-client",
            "--dir",
            dir.to_str().unwrap(),
            "--device-id",
            "pop-x",
            "--out-cert",
            cert.to_str().unwrap(),
            "--out-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = pop_cp(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let chain: Vec<Vec<u8>> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(|c| c.unwrap().to_vec())
            .collect();
        (chain, PrivateKeyDer::from_pem_file(&key).unwrap())
    };
    let hello = SoftDevice::new("pop-x").unwrap().hello();

    // Control: a valid software cert from our CA works.
    let (chain, key) = issue(d.path(), &[]);
    let mut c = DeviceConn::connect(cp.listen, "localhost", &cp.ca(), Some((chain, key))).unwrap();
    c.send(&hello).unwrap();
    assert!(matches!(c.recv(T).unwrap(), Downlink::Welcome { .. }));

    let (chain, key) = issue(other.path(), &[]);
    let e = expect_refused_at_handshake(&cp, chain, key, &hello);
    // Same issuer name, other key: webpki reports the signature failure (DecryptError);
    // another issuer name gives UnknownCA.
    assert!(e.contains("UnknownCA") || e.contains("DecryptError"), "{e}");

    let past = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600)
        .to_string();
    let (chain, key) = issue(d.path(), &["--not-after-unix", &past]);
    let e = expect_refused_at_handshake(&cp, chain, key, &hello);
    assert!(e.contains("CertificateExpired"), "{e}");
    assert!(cp.admin().stats().unwrap().handshake_failures >= 2);
}

#[test]
fn revocation_refuses_new_connections_and_drops_the_live_one() {
    let d = tempfile::tempdir().unwrap();
    init(d.path());
    let cp = Cp::start(d.path(), 1000);
    let a = cp.enroll("pop-a");
    let b = cp.enroll("pop-b");
    let (mut ca_conn, _) = cp.session(&a);
    let (mut cb_conn, _) = cp.session(&b);
    // The CRL every session opens with.
    assert!(matches!(cb_conn.recv(T).unwrap(), Downlink::Crl { .. }));
    let crl_before = std::fs::read(d.path().join("crl.der")).unwrap();

    // CLI revocation (another process): the server notices the new crl.der within ~1 s.
    let out = pop_cp(&[
        "revoke",
        "--dir",
        d.path().to_str().unwrap(),
        "--device-id",
        "pop-a",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = ca_conn.recv_until(Duration::from_secs(5), |_| false);
    assert!(
        matches!(r, Err(DevClientError::Closed) | Err(DevClientError::Io(_))),
        "revoked session not dropped: {r:?}"
    );
    // pop-b stays connected and gets the new CRL.
    let (m, _) = cb_conn
        .recv_until(Duration::from_secs(5), |m| {
            matches!(m, Downlink::Crl { .. })
        })
        .unwrap();
    let Downlink::Crl { der } = m else {
        unreachable!()
    };
    assert_ne!(der, crl_before);
    assert_eq!(der, std::fs::read(d.path().join("crl.der")).unwrap());
    let e = expect_refused_at_handshake(&cp, a.chain.clone(), a.private_key(), &a.hello());
    assert!(e.contains("CertificateRevoked"), "{e}");

    // Admin revocation: immediate.
    let reply = cp.admin().revoke("pop-b").unwrap();
    assert_eq!(reply.revoked.len(), 1);
    assert!(reply.disconnected);
    let r = cb_conn.recv_until(Duration::from_secs(5), |_| false);
    assert!(
        matches!(r, Err(DevClientError::Closed) | Err(DevClientError::Io(_))),
        "{r:?}"
    );
    let e = expect_refused_at_handshake(&cp, b.chain.clone(), b.private_key(), &b.hello());
    assert!(e.contains("CertificateRevoked"), "{e}");
    assert!(!cp
        .admin()
        .wait_connected("pop-b", Duration::from_millis(10))
        .unwrap());
}

#[test]
fn records_are_deduplicated_acked_cumulatively_and_survive_kill_9() {
    let d = tempfile::tempdir().unwrap();
    init(d.path());
    let mut cp = Cp::start(d.path(), 1000);
    let dev = cp.enroll("pop-r");
    let (mut c, acked) = cp.session(&dev);
    assert_eq!(acked, 0);
    let mut acks = Vec::new();
    for id in [1, 2, 3, 2, 3, 4] {
        c.send(&Uplink::Record(record(id))).unwrap();
        let (m, _) = c
            .recv_until(T, |m| matches!(m, Downlink::Ack { .. }))
            .unwrap();
        let Downlink::Ack { up_to } = m else {
            unreachable!()
        };
        acks.push(up_to);
    }
    assert_eq!(acks, vec![1, 2, 3, 3, 3, 4]);
    let r = cp.admin().records("pop-r").unwrap();
    assert_eq!(
        r.records.iter().map(|r| r.id).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(r.records[1], record(2));
    assert_eq!(r.duplicates, 2);
    let s = cp.admin().stats().unwrap();
    assert_eq!((s.records_received, s.records_duplicate), (6, 2));
    assert!(s.records_per_s > 0.0);
    drop(c);

    cp.kill9();
    let cp2 = Cp::start(d.path(), 1000);
    let (mut c, acked) = cp2.session(&dev);
    assert_eq!(acked, 4, "acked_up_to survives a restart");
    c.send(&Uplink::Record(record(4))).unwrap();
    let (m, _) = c
        .recv_until(T, |m| matches!(m, Downlink::Ack { .. }))
        .unwrap();
    assert_eq!(m, Downlink::Ack { up_to: 4 });
    let r = cp2.admin().records("pop-r").unwrap();
    assert_eq!(r.records.len(), 4);
}

#[test]
fn config_and_commands_queued_offline_are_delivered_at_next_connect() {
    let d = tempfile::tempdir().unwrap();
    init(d.path());
    let cp = Cp::start(d.path(), 1000);
    let dev = cp.enroll("pop-c");
    let mut admin = cp.admin();
    let push = admin
        .push_config("pop-c", 7, "[relay]\nmax_sessions = 10\n")
        .unwrap();
    assert!(!push.sent);
    let cmd = admin
        .command("pop-c", pop_agent_proto::Command::Diagnostics)
        .unwrap();
    assert!(!cmd.sent);

    let (mut c, _) = cp.session(&dev);
    let (m, _) = c
        .recv_until(T, |m| matches!(m, Downlink::ConfigPush { .. }))
        .unwrap();
    assert_eq!(
        m,
        Downlink::ConfigPush {
            version: 7,
            document: "[relay]\nmax_sessions = 10\n".into()
        }
    );
    let (m, _) = c
        .recv_until(T, |m| matches!(m, Downlink::Command { .. }))
        .unwrap();
    assert_eq!(
        m,
        Downlink::Command {
            id: cmd.id,
            command: pop_agent_proto::Command::Diagnostics
        }
    );
    let status = admin.devices().unwrap();
    let st = status.devices.iter().find(|s| s.device == "pop-c").unwrap();
    assert!(st.connected);
    assert_eq!(st.pending_config_version, Some(7));

    c.send(&Uplink::ConfigResult(ConfigResult {
        version: 7,
        outcome: ConfigOutcome::Applied,
        running_version: 7,
    }))
    .unwrap();
    c.send(&Uplink::CommandResult {
        id: cmd.id,
        outcome: CommandOutcome::Diagnostics {
            bundle: "ok".into(),
        },
    })
    .unwrap();
    // Results are stored asynchronously to this client: poll, bounded.
    let deadline = Instant::now() + T;
    loop {
        let cr = admin.config_results("pop-c").unwrap().results;
        let mr = admin.command_results("pop-c").unwrap().results;
        if cr.len() == 1 && mr.len() == 1 {
            assert_eq!(cr[0].result.running_version, 7);
            assert_eq!(mr[0].id, cmd.id);
            break;
        }
        assert!(Instant::now() < deadline, "results not stored");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = admin.devices().unwrap();
    let st = st.devices.iter().find(|s| s.device == "pop-c").unwrap();
    assert_eq!((st.config_version, st.pending_config_version), (7, None));
    assert!(st.pending_commands.is_empty());

    // Online push: sent at once.
    let push = admin.push_config("pop-c", 8, "x = 1").unwrap();
    assert!(push.sent);
    let (m, _) = c
        .recv_until(T, |m| matches!(m, Downlink::ConfigPush { .. }))
        .unwrap();
    assert!(matches!(m, Downlink::ConfigPush { version: 8, .. }));
    assert!(admin.push_config("../x", 9, "").is_err());
}

#[test]
fn hello_must_match_the_certificate_and_heartbeats_keep_sessions_alive() {
    let d = tempfile::tempdir().unwrap();
    init(d.path());
    let cp = Cp::start(d.path(), 200);
    let dev = cp.enroll("pop-h");
    let mut c = cp.connect(&dev).unwrap();
    let mut liar = SoftDevice::new("pop-other").unwrap();
    liar.chain = dev.chain.clone();
    c.send(&liar.hello()).unwrap();
    match c.recv(T).unwrap() {
        Downlink::Refused { reason } => assert!(reason.contains("does not match"), "{reason}"),
        m => panic!("{m:?}"),
    }

    let (mut c, _) = cp.session(&dev);
    c.send(&Uplink::Heartbeat {
        seq: 42,
        sent_unix_ms: 0,
    })
    .unwrap();
    let (m, skipped) = c
        .recv_until(T, |m| matches!(m, Downlink::HeartbeatAck { .. }))
        .unwrap();
    assert_eq!(m, Downlink::HeartbeatAck { seq: 42 });
    assert!(skipped.iter().any(|m| matches!(m, Downlink::Crl { .. })));
    // Answering the server's heartbeats (recv_until does) keeps it alive past 3 intervals.
    let r = c.recv_until(Duration::from_millis(1500), |_| false);
    assert!(matches!(r, Err(DevClientError::Timeout(_))), "{r:?}");
    assert!(cp
        .admin()
        .wait_connected("pop-h", Duration::from_millis(10))
        .unwrap());
    // Silence: dropped after 3 × 200 ms.
    let t0 = Instant::now();
    let r = loop {
        match c.recv(T) {
            Ok(Downlink::Heartbeat { .. }) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(r, Err(DevClientError::Closed) | Err(DevClientError::Io(_))),
        "{r:?}"
    );
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "dead peer closed after {waited:?}"
    );
}

#[test]
fn renewal_keeps_the_authenticated_identity_and_garbage_does_not_hurt_others() {
    let d = tempfile::tempdir().unwrap();
    init(d.path());
    let cp = Cp::start(d.path(), 1000);
    let dev = cp.enroll("pop-n");
    let (mut c, _) = cp.session(&dev);
    let csr = dev.csr("someone-else").unwrap();
    c.send(&Uplink::Renew { csr_der: csr }).unwrap();
    let (m, _) = c
        .recv_until(T, |m| matches!(m, Downlink::Certificate { .. }))
        .unwrap();
    let Downlink::Certificate { chain_der, .. } = m else {
        unreachable!()
    };
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain_der[0]).unwrap();
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, "pop-n");
    assert_eq!(cp.admin().certificates().unwrap().certificates.len(), 2);

    // A hostile length prefix closes that connection only.
    let mut bad = DeviceConn::connect(cp.listen, "localhost", &cp.ca(), None).unwrap();
    bad.send_raw(&u32::MAX.to_be_bytes()).unwrap();
    match bad.recv(T).unwrap() {
        Downlink::Refused { reason } => assert!(reason.contains("exceeds"), "{reason}"),
        m => panic!("{m:?}"),
    }
    assert!(bad.recv(T).is_err(), "closed after the refusal");
    // Anonymous connection that sends a Hello is refused with a reason.
    let mut anon = DeviceConn::connect(cp.listen, "localhost", &cp.ca(), None).unwrap();
    anon.send(&dev.hello()).unwrap();
    match anon.recv(T).unwrap() {
        Downlink::Refused { reason } => assert!(reason.contains("client certificate"), "{reason}"),
        m => panic!("{m:?}"),
    }
    // The original session still works.
    c.send(&Uplink::Record(record(1))).unwrap();
    let (m, _) = c
        .recv_until(T, |m| matches!(m, Downlink::Ack { .. }))
        .unwrap();
    assert_eq!(m, Downlink::Ack { up_to: 1 });
}

#[test]
fn admin_refuses_a_non_loopback_bind_and_init_refuses_to_overwrite() {
    let d = tempfile::tempdir().unwrap();
    init(d.path());
    let out = pop_cp(&[
        "serve",
        "--dir",
        d.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "0.0.0.0:0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
    let out = pop_cp(&[
        "init",
        "--dir",
        d.path().to_str().unwrap(),
        "--server-name",
        "localhost",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
}
