//! Kamailio interop: Kamailio's own `rtpengine` module drives the relay through a real call.
//!
//! Two scripted user agents call each other through Kamailio (tests/kamailio/kamailio.cfg),
//! which calls `rtpengine_offer`/`rtpengine_answer`/`rtpengine_delete` on the relay. Proves:
//! both SDPs were rewritten to the relay's address and ports; RTP flows both ways through the
//! relay, arriving from the relay ports advertised to each side; after BYE the relay has
//! forgotten the call.
//!
//! Run: `cargo build -p popd && cargo test -p pop-system-tests --test kamailio_interop`.
//! Needs kamailio and rtpengine (scripts/setup).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pop_system_tests::relays::{self, RelayKind, RelayProcess};
use pop_system_tests::rtp_endpoint::{RtpEndpoint, RtpReport};
use pop_system_tests::sip_ua::{audio_sdp, audio_target, SipMessage, SipSocket};
use pop_system_tests::{binaries, ports, ChildGuard, TestDir};
use pop_wire::bencode::Value;
use rand::Rng;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const SIP_TIMEOUT: Duration = Duration::from_secs(5);
const KAMAILIO_STARTUP: Duration = Duration::from_secs(15);
const RTP_PACKETS: u64 = 50;
const RTP_INTERVAL: Duration = Duration::from_millis(20);
const RTP_LINGER: Duration = Duration::from_millis(500);
/// Loopback loses nothing; a few packets may still race the relay's stream setup.
const RTP_MIN_DELIVERED: u64 = RTP_PACKETS * 9 / 10;
const DELETE_TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn kamailio_call_through_rtpengine() {
    run_call(RelayKind::Rtpengine);
}

#[test]
fn kamailio_call_through_popd() {
    run_call(RelayKind::Popd);
}

fn run_call(kind: RelayKind) {
    let dir =
        TestDir::new(&format!("kamailio-{}", kind.name())).unwrap_or_else(|e| panic!("{e:#}"));
    if let Err(e) = call_scenario(kind, &dir) {
        panic!("Kamailio call through {}: {e:#}", kind.name());
    }
}

fn call_scenario(kind: RelayKind, dir: &TestDir) -> Result<()> {
    let mut relay = relays::start(kind, dir, kind.name(), &[LOOPBACK])?;
    let (mut kamailio, proxy) = start_kamailio(dir, &relay)?;
    let mut rng = rand::thread_rng();

    let ua_a = SipSocket::bind(LOOPBACK)?;
    let ua_b = SipSocket::bind(LOOPBACK)?;
    let rtp_a = RtpEndpoint::bind(LOOPBACK, rng.gen())?;
    let rtp_b = RtpEndpoint::bind(LOOPBACK, rng.gen())?;
    let (addr_a, addr_b) = (ua_a.local_addr()?, ua_b.local_addr()?);

    let call_id = format!("{:016x}@pop-system-tests", rng.gen::<u64>());
    let from = format!("<sip:alice@{addr_a}>;tag=a{:08x}", rng.gen::<u32>());
    let to = format!("<sip:bob@{addr_b}>");
    let request_uri = format!("sip:bob@{addr_b}");

    // INVITE A -> Kamailio -> B: the offer must reach B rewritten to the relay.
    let invite = SipMessage::request("INVITE", &request_uri)
        .with_header("Via", via(addr_a, &mut rng))
        .with_header("Max-Forwards", "70")
        .with_header("From", from.clone())
        .with_header("To", to.clone())
        .with_header("Call-ID", call_id.clone())
        .with_header("CSeq", "1 INVITE")
        .with_header("Contact", format!("<sip:alice@{addr_a}>"))
        .with_sdp(&audio_sdp("alice", 1001, rtp_a.local_addr()?));
    ua_a.send(&invite, proxy)?;
    let (invite_at_b, invite_from) =
        ua_b.recv_until("INVITE at B", SIP_TIMEOUT, |m| m.method() == Some("INVITE"))?;
    let relay_for_b = audio_target(&invite_at_b.body).context("SDP of the INVITE at B")?;
    check_rewritten(
        "offer (INVITE at B)",
        &invite_at_b.body,
        relay_for_b,
        &relay,
        rtp_a.local_addr()?,
    )?;

    let query = relay.ng()?.query(&call_id)?;
    ensure!(
        query.dict_get("result").and_then(Value::as_str) == Some("ok"),
        "relay does not know the call after Kamailio's offer: {}",
        pop_system_tests::ng_client::describe_error(&query)
    );

    // 200 OK B -> Kamailio -> A: the answer must reach A rewritten to the relay.
    let to_tag = format!("b{:08x}", rng.gen::<u32>());
    let ok = SipMessage::response_to(&invite_at_b, 200, "OK", Some(&to_tag))
        .with_header("Contact", format!("<sip:bob@{addr_b}>"))
        .with_sdp(&audio_sdp("bob", 2002, rtp_b.local_addr()?));
    ua_b.send(&ok, invite_from)?;
    let (ok_at_a, _) = ua_a.recv_until("200 OK to INVITE at A", SIP_TIMEOUT, |m| {
        m.status() == Some(200) && m.method() == Some("INVITE")
    })?;
    let relay_for_a = audio_target(&ok_at_a.body).context("SDP of the 200 OK at A")?;
    check_rewritten(
        "answer (200 OK at A)",
        &ok_at_a.body,
        relay_for_a,
        &relay,
        rtp_b.local_addr()?,
    )?;
    ensure!(
        relay_for_a != relay_for_b,
        "relay gave both sides the same media address {relay_for_a}"
    );
    let to_with_tag = ok_at_a
        .header("To")
        .context("200 OK without To")?
        .to_owned();

    let ack = SipMessage::request("ACK", &request_uri)
        .with_header("Via", via(addr_a, &mut rng))
        .with_header("Max-Forwards", "70")
        .with_header("From", from.clone())
        .with_header("To", to_with_tag.clone())
        .with_header("Call-ID", call_id.clone())
        .with_header("CSeq", "1 ACK");
    ua_a.send(&ack, proxy)?;
    ua_b.recv_until("ACK at B", SIP_TIMEOUT, |m| m.method() == Some("ACK"))?;

    // Media both ways at the same time, each side sending where its SDP told it to.
    let (at_a, at_b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            rtp_a.exchange(
                relay_for_a,
                RTP_PACKETS,
                RTP_INTERVAL,
                RTP_LINGER,
                rtp_b.ssrc(),
            )
        });
        let b = s.spawn(|| {
            rtp_b.exchange(
                relay_for_b,
                RTP_PACKETS,
                RTP_INTERVAL,
                RTP_LINGER,
                rtp_a.ssrc(),
            )
        });
        (a.join(), b.join())
    });
    let at_a = at_a.map_err(|_| anyhow::anyhow!("RTP thread of A panicked"))??;
    let at_b = at_b.map_err(|_| anyhow::anyhow!("RTP thread of B panicked"))??;
    check_media("B -> A", &at_a, relay_for_a)?;
    check_media("A -> B", &at_b, relay_for_b)?;

    // BYE A -> Kamailio -> B, 200 back: Kamailio deletes the call on the relay.
    let bye = SipMessage::request("BYE", &request_uri)
        .with_header("Via", via(addr_a, &mut rng))
        .with_header("Max-Forwards", "70")
        .with_header("From", from)
        .with_header("To", to_with_tag)
        .with_header("Call-ID", call_id.clone())
        .with_header("CSeq", "2 BYE");
    ua_a.send(&bye, proxy)?;
    let (bye_at_b, bye_from) =
        ua_b.recv_until("BYE at B", SIP_TIMEOUT, |m| m.method() == Some("BYE"))?;
    ua_b.send(
        &SipMessage::response_to(&bye_at_b, 200, "OK", None),
        bye_from,
    )?;
    ua_a.recv_until("200 OK to BYE at A", SIP_TIMEOUT, |m| {
        m.status() == Some(200) && m.method() == Some("BYE")
    })?;
    wait_call_gone(&relay, &call_id)?;

    relay.process.ensure_running()?;
    kamailio.ensure_running()?;
    Ok(())
}

/// Starts Kamailio on a free port with the config template filled in; returns once it answers
/// an OPTIONS probe.
fn start_kamailio(dir: &TestDir, relay: &RelayProcess) -> Result<(ChildGuard, SocketAddr)> {
    let exe = binaries::kamailio()?;
    let template_path = concat!(env!("CARGO_MANIFEST_DIR"), "/kamailio/kamailio.cfg");
    let template =
        fs::read_to_string(template_path).with_context(|| format!("reading {template_path}"))?;
    let sip_port = ports::free_udp_port(LOOPBACK)?;
    let cfg = template
        .replace("{{SIP_PORT}}", &sip_port.to_string())
        .replace("{{NG_PORT}}", &relay.ng_addr.port().to_string());
    ensure!(
        !cfg.contains("{{"),
        "kamailio.cfg has a placeholder the test does not fill"
    );
    let cfg_path = dir.file("kamailio.cfg");
    fs::write(&cfg_path, cfg).context("writing kamailio.cfg")?;
    let run_dir = dir.file("kamailio-run");
    fs::create_dir(&run_dir).context("creating Kamailio's run dir")?;

    let mut cmd = Command::new(exe);
    cmd.arg("-DD") // foreground: the guard's process group holds Kamailio and its children
        .arg("-E")
        .arg("-f")
        .arg(&cfg_path)
        .arg("-Y")
        .arg(&run_dir)
        .arg("-P")
        .arg(run_dir.join("kamailio.pid"))
        .arg("-w")
        .arg(dir.path())
        .args(["-m", "32", "-M", "4"]);
    let mut kamailio = ChildGuard::spawn("kamailio", &mut cmd, dir)?;
    let proxy = SocketAddr::new(LOOPBACK, sip_port);

    let probe = SipSocket::bind(LOOPBACK)?;
    let probe_addr = probe.local_addr()?;
    let mut rng = rand::thread_rng();
    let deadline = Instant::now() + KAMAILIO_STARTUP;
    loop {
        kamailio.ensure_running()?;
        let options = SipMessage::request("OPTIONS", &format!("sip:{proxy}"))
            .with_header("Via", via(probe_addr, &mut rng))
            .with_header("Max-Forwards", "70")
            .with_header("From", format!("<sip:probe@{probe_addr}>;tag=p1"))
            .with_header("To", format!("<sip:{proxy}>"))
            .with_header("Call-ID", format!("{:016x}@probe", rng.gen::<u64>()))
            .with_header("CSeq", "1 OPTIONS");
        probe.send(&options, proxy)?;
        if probe
            .recv_until("OPTIONS reply", Duration::from_millis(250), |m| {
                m.status() == Some(200)
            })
            .is_ok()
        {
            return Ok((kamailio, proxy));
        }
        if Instant::now() >= deadline {
            bail!("Kamailio did not answer OPTIONS on {proxy} within {KAMAILIO_STARTUP:?}");
        }
    }
}

fn via(addr: SocketAddr, rng: &mut impl Rng) -> String {
    format!(
        "SIP/2.0/UDP {addr};branch=z9hG4bK{:016x};rport",
        rng.gen::<u64>()
    )
}

/// The SDP points at the relay (its address, a port of its range), not at the original peer,
/// and the origin line was rewritten too (`replace-origin` in kamailio.cfg).
fn check_rewritten(
    what: &str,
    sdp: &str,
    target: SocketAddr,
    relay: &RelayProcess,
    original: SocketAddr,
) -> Result<()> {
    ensure!(
        target != original,
        "{what}: SDP still points at the peer's own RTP address {original}: was it rewritten?\n{sdp}"
    );
    ensure!(
        relay.media_addrs.contains(&target.ip()),
        "{what}: media address {} is not the relay's {:?}\n{sdp}",
        target.ip(),
        relay.media_addrs
    );
    ensure!(
        relay.ports.contains(&target.port()),
        "{what}: media port {} is outside the relay's range {:?}\n{sdp}",
        target.port(),
        relay.ports
    );
    let origin_ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("o="))
        .and_then(|o| o.split_whitespace().nth(5))
        .context("SDP without o= address")?;
    ensure!(
        origin_ip == target.ip().to_string(),
        "{what}: o= address {origin_ip} was not replaced by the relay's {}\n{sdp}",
        target.ip()
    );
    Ok(())
}

/// Enough packets arrived, all from the relay port advertised to the receiver.
fn check_media(direction: &str, report: &RtpReport, relay_port: SocketAddr) -> Result<()> {
    ensure!(
        report.received() >= RTP_MIN_DELIVERED,
        "{direction}: {} of {RTP_PACKETS} RTP packets arrived (need {RTP_MIN_DELIVERED}); by source: {:?}, unexpected datagrams: {}",
        report.received(),
        report.received_from,
        report.unexpected
    );
    ensure!(
        report.received_from.keys().all(|src| *src == relay_port),
        "{direction}: RTP came from {:?}, expected only the relay's {relay_port}",
        report.received_from
    );
    Ok(())
}

/// After BYE the relay must not know the call: `query` fails and `list` does not name it.
fn wait_call_gone(relay: &RelayProcess, call_id: &str) -> Result<()> {
    let ng = relay.ng()?;
    let deadline = Instant::now() + DELETE_TIMEOUT;
    loop {
        let reply = ng.query(call_id)?;
        let known = reply.dict_get("result").and_then(Value::as_str) == Some("ok");
        let listed = ng.list_calls()?.iter().any(|c| c == call_id);
        if !known && !listed {
            ensure!(
                reply.dict_get("result").and_then(Value::as_str) == Some("error"),
                "query for a deleted call answered {}, expected result \"error\"",
                pop_system_tests::ng_client::describe_error(&reply)
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "relay still has the call {DELETE_TIMEOUT:?} after BYE (query ok: {known}, in list: {listed})"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
