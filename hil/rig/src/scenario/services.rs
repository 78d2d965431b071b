//! The services under test on the rig: `popd relay` and `popd linkmon` in the appliance, the
//! echo responder past the gateway that linkmon probes, and the call over NG.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use pop_rig::{AddressPlan, MonoTime, NsProcess, Rig, Role, Uplink};

use super::error::{BenchError, Result};
use super::media::CallEndpoints;
use super::ng::{endpoint_sdp, Ben, Ng};

/// NG control address of the relay, on the appliance's loopback.
pub const NG_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2223);
/// The core peer's media port.
pub const CORE_PEER_PORT: u16 = 40_000;
/// The local endpoint's media port on the service address (outside the relay's range).
pub const LOCAL_PORT: u16 = 41_000;
/// UDP echo port of the probe responder on the core's control-plane host.
pub const ECHO_PORT: u16 = 7;

/// Link monitor settings the benchmark chooses (the rest are linkmon's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkmonTuning {
    /// BFD Desired Min TX / Required Min RX toward each carrier, in ms.
    pub bfd_interval_ms: u32,
    /// BFD detect multiplier.
    pub bfd_mult: u8,
    /// Probe interval past the gateway, in ms.
    pub probe_interval_ms: u64,
    /// A probe unanswered this long is a miss, in ms.
    pub probe_timeout_ms: u64,
    /// Consecutive misses that fail an uplink.
    pub probe_miss_threshold: u32,
    /// Fail back only after the primary has been healthy this long, in ms.
    pub hold_down_ms: u64,
}

impl LinkmonTuning {
    /// What the benchmark runs: BFD as fast as the rig's FRR carriers accept (they are
    /// configured at 50 ms × 3 and never send faster than their own 50 ms, nor let us), probes
    /// every 10 ms past the gateway failing after 4 misses of 25 ms (on a link losing 2 % each
    /// way a probe is lost ~4 % of the time: 4 in a row ~2.6e-6 per probe, one false failover
    /// in ~100 hours at 100 probes/s), and a 2.5 s hold-down so 20 trials fit in minutes.
    pub const BENCH: LinkmonTuning = LinkmonTuning {
        bfd_interval_ms: 50,
        bfd_mult: 3,
        probe_interval_ms: 10,
        probe_timeout_ms: 25,
        probe_miss_threshold: 4,
        hold_down_ms: 2500,
    };
}

/// linkmon's configuration for the rig: primary `up1`, backup `up2`, BFD to each gateway,
/// probes to the core's control-plane host, flap damping relaxed (1 s half-life) so repeated
/// trials are not suppressed.
pub fn linkmon_config(plan: &AddressPlan, socket: &Path, t: LinkmonTuning) -> String {
    let uplink = |name: &str, u: Uplink| {
        let a = plan.uplink(u);
        format!(
            "\n[[uplink]]\nname = \"{name}\"\ninterface = \"{dev}\"\naddress = \"{addr}\"\n\
             gateway = \"{gw}\"\n\n[uplink.bfd]\ndesired_min_tx_us = {us}\nrequired_min_rx_us = {us}\n\
             detect_mult = {mult}\n\n[[uplink.probe]]\ntarget = \"{target}:{ECHO_PORT}\"\n\
             interval_ms = {pi}\ntimeout_ms = {pt}\n",
            dev = u.app_dev(),
            addr = a.app,
            gw = a.gateway,
            us = u64::from(t.bfd_interval_ms) * 1000,
            mult = t.bfd_mult,
            target = plan.core_control,
            pi = t.probe_interval_ms,
            pt = t.probe_timeout_ms,
        )
    };
    format!(
        "socket = \"{sock}\"\nhistory = 20000\nneighbour_refresh_ms = 500\n\n[routes]\n\
         prefsrc = \"{service}\"\n\n[selector]\nprobe_miss_threshold = {miss}\n\
         probe_recover_threshold = 3\nhold_down_ms = {hold}\nstartup_grace_ms = 5000\n\n\
         [selector.damping]\npenalty_per_failure = 1000.0\nsuppress_above = 2500.0\n\
         reuse_below = 800.0\nhalf_life_ms = 1000\nmax_penalty = 8000.0\n{p}{b}",
        sock = socket.display(),
        service = plan.service,
        miss = t.probe_miss_threshold,
        hold = t.hold_down_ms,
        p = uplink("primary", Uplink::One),
        b = uplink("backup", Uplink::Two),
    )
}

/// A switch of the appliance's uplink, in `CLOCK_MONOTONIC`.
#[derive(Debug, Clone, PartialEq)]
pub struct Switch {
    /// `failover` or `failback`.
    pub failover: bool,
    /// Uplink now in use.
    pub to: String,
    /// Why (linkmon's reason; `bfd_down`/`bfd_up` for the FRR follower).
    pub reason: String,
    /// First evidence of the fault (linkmon failovers only).
    pub fault_seen: Option<MonoTime>,
    /// When the monitor decided.
    pub decided: MonoTime,
    /// When the route replace completed.
    pub switched: MonoTime,
}

/// `CLOCK_REALTIME − CLOCK_MONOTONIC` now, in ns: linkmon reports Unix milliseconds, the rig
/// monotonic time. Both processes read the same clocks, so converting with the offset of the
/// moment is exact as long as nobody steps the wall clock during a run.
fn realtime_offset_ns() -> i128 {
    let mono = MonoTime::now().as_nanos();
    let real = clock_gettime(ClockId::CLOCK_REALTIME)
        .map(Duration::from)
        .unwrap_or_default();
    i128::try_from(real.as_nanos()).unwrap_or(0) - i128::from(mono)
}

/// Unix milliseconds (as linkmon reports them) to `CLOCK_MONOTONIC`.
pub fn unix_ms_to_mono(unix_ms: f64) -> MonoTime {
    let ns = (unix_ms * 1e6) as i128 - realtime_offset_ns();
    MonoTime::from_nanos(u64::try_from(ns.max(0)).unwrap_or(0))
}

/// Milliseconds from `a` to `b` (negative if `b` is earlier).
pub fn ms(a: MonoTime, b: MonoTime) -> f64 {
    (b.as_nanos() as f64 - a.as_nanos() as f64) / 1e6
}

/// Queries linkmon's status socket: one request line, JSON lines back.
pub fn linkmon_query(socket: &Path, request: &str) -> Result<Vec<serde_json::Value>> {
    let what = |e| BenchError::io(format!("querying linkmon at {}", socket.display()), e);
    let mut s = UnixStream::connect(socket).map_err(what)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(what)?;
    s.write_all(format!("{request}\n").as_bytes())
        .map_err(what)?;
    let mut out = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.map_err(what)?;
        match serde_json::from_str(&line) {
            Ok(v) => out.push(v),
            Err(e) => {
                return Err(BenchError::Protocol {
                    service: "popd linkmon",
                    detail: format!("not JSON ({e}): {line}"),
                })
            }
        }
    }
    Ok(out)
}

/// linkmon's switch events (failovers and failbacks, not the start-up placement), oldest first.
pub fn linkmon_switches(events: &[serde_json::Value]) -> Vec<Switch> {
    events
        .iter()
        .filter(|e| e["event"] == "switch" && e["kind"] != "startup")
        .filter_map(|e| {
            Some(Switch {
                failover: e["kind"] == "failover",
                to: e["to"].as_str()?.to_owned(),
                reason: e["reason"].as_str().unwrap_or_default().to_owned(),
                fault_seen: e["fault_seen_ms"].as_f64().map(unix_ms_to_mono),
                decided: unix_ms_to_mono(e["decided_ms"].as_f64()?),
                switched: unix_ms_to_mono(e["switched_ms"].as_f64()?),
            })
        })
        .collect()
}

/// The FRR follower's route changes as switches (`up2`: failover, `up1`: failback).
pub fn follower_switches(events: &[pop_rig::RouteEvent], primary: &str) -> Vec<Switch> {
    events
        .iter()
        .map(|e| Switch {
            failover: e.to != primary,
            to: e.to.clone(),
            reason: if e.to == primary {
                "bfd_up"
            } else {
                "bfd_down"
            }
            .to_owned(),
            fault_seen: None,
            decided: e.seen,
            switched: e.switched,
        })
        .collect()
}

/// Waits until `cond` holds, checking every 5 ms, at most `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The services of one rig: relay, optionally linkmon, the echo responder and the call's
/// sockets. Processes are killed by pid when this drops.
#[derive(Debug)]
pub struct Services {
    /// `popd relay` in `app`.
    pub relay: NsProcess,
    /// `popd linkmon` in `app` (absent in the FRR reference).
    pub linkmon: Option<NsProcess>,
    /// linkmon's status socket.
    pub linkmon_socket: PathBuf,
    /// The relay's control socket (`--control-socket`), when started with one.
    pub relay_socket: Option<PathBuf>,
    echo_stop: Arc<AtomicBool>,
    echo: Option<JoinHandle<()>>,
}

impl Drop for Services {
    fn drop(&mut self) {
        self.echo_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.echo.take() {
            let _ = t.join();
        }
    }
}

impl Services {
    /// Starts the echo responder, `popd relay` and (with `linkmon`) `popd linkmon`.
    pub fn start(rig: &Rig, popd: &Path, linkmon: Option<LinkmonTuning>) -> Result<Services> {
        Self::start_inner(rig, popd, linkmon, false)
    }

    /// [`Services::start`] with the relay's control socket at `<run dir>/relay.sock`, where
    /// `popd agent` reads status and call records and applies pushed limits.
    pub fn start_with_control_socket(
        rig: &Rig,
        popd: &Path,
        linkmon: Option<LinkmonTuning>,
    ) -> Result<Services> {
        Self::start_inner(rig, popd, linkmon, true)
    }

    fn start_inner(
        rig: &Rig,
        popd: &Path,
        linkmon: Option<LinkmonTuning>,
        control_socket: bool,
    ) -> Result<Services> {
        if !popd.is_file() {
            return Err(BenchError::MissingBinary(popd.to_owned()));
        }
        let plan = *rig.plan();
        let echo_stop = Arc::new(AtomicBool::new(false));
        let sock = rig.udp_socket(Role::Core, plan.core_control, ECHO_PORT)?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| BenchError::io("echo socket timeout", e))?;
        let stop = echo_stop.clone();
        let echo = std::thread::Builder::new()
            .name("echo".into())
            .spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(buf.get(..n).unwrap_or_default(), from);
                    }
                }
            })
            .map_err(|e| BenchError::io("spawning the echo responder", e))?;
        let popd_s = popd.display().to_string();
        let relay_socket = control_socket.then(|| rig.run_dir().join("relay.sock"));
        let relay_socket_s = relay_socket
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let ng_s = NG_ADDR.to_string();
        let service_s = plan.service.to_string();
        let mut relay_args = vec![
            "relay",
            "--ng-listen",
            &ng_s,
            "--media-address",
            &service_s,
            "--port-min",
            "30000",
            "--port-max",
            "30999",
            "--workers",
            "1",
            "--no-media-timeout",
            "3600",
        ];
        if relay_socket.is_some() {
            relay_args.extend(["--control-socket", relay_socket_s.as_str()]);
        }
        let relay = rig.spawn(Role::App, &popd_s, &relay_args, "relay")?;
        let linkmon_socket = rig.run_dir().join("linkmon.sock");
        let mut services = Services {
            relay,
            linkmon: None,
            linkmon_socket,
            relay_socket,
            echo_stop,
            echo: Some(echo),
        };
        if let Some(tuning) = linkmon {
            let conf = rig.run_dir().join("linkmon.toml");
            std::fs::write(
                &conf,
                linkmon_config(&plan, &services.linkmon_socket, tuning),
            )
            .map_err(|e| BenchError::io(format!("writing {}", conf.display()), e))?;
            let conf_s = conf.display().to_string();
            services.linkmon = Some(rig.spawn(
                Role::App,
                &popd_s,
                &["linkmon", "--config", &conf_s],
                "linkmon",
            )?);
        }
        Ok(services)
    }

    /// linkmon's switches so far (empty without linkmon or before its socket answers).
    pub fn linkmon_switches(&self) -> Result<Vec<Switch>> {
        Ok(linkmon_switches(&linkmon_query(
            &self.linkmon_socket,
            "events",
        )?))
    }

    /// linkmon's status object.
    pub fn linkmon_status(&self) -> Result<serde_json::Value> {
        linkmon_query(&self.linkmon_socket, "status")?
            .pop()
            .ok_or(BenchError::Protocol {
                service: "popd linkmon",
                detail: "empty answer to `status`".into(),
            })
    }

    /// The relay's `status` object from its control socket (one JSON line each way; see
    /// `firmware/relay/src/control.rs`).
    pub fn relay_status(&self) -> Result<serde_json::Value> {
        let Some(socket) = &self.relay_socket else {
            return Err(BenchError::Usage(
                "the relay was started without a control socket".into(),
            ));
        };
        let what = |e| BenchError::io(format!("querying the relay at {}", socket.display()), e);
        let mut s = UnixStream::connect(socket).map_err(what)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(what)?;
        s.write_all(b"{\"op\":\"status\"}\n").map_err(what)?;
        let mut line = String::new();
        // Bounded: a status line is a few hundred bytes.
        BufReader::new(std::io::Read::take(s, 1 << 20))
            .read_line(&mut line)
            .map_err(what)?;
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| BenchError::Protocol {
                service: "popd relay",
                detail: format!("control socket status is not JSON ({e}): {line}"),
            })?;
        if v["ok"] != true {
            return Err(BenchError::Protocol {
                service: "popd relay",
                detail: format!("control socket status refused: {line}"),
            });
        }
        Ok(v)
    }

    /// Fails if the relay or linkmon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let mut procs: Vec<(&'static str, &mut NsProcess)> = vec![("popd relay", &mut self.relay)];
        if let Some(l) = self.linkmon.as_mut() {
            procs.push(("popd linkmon", l));
        }
        for (service, p) in procs {
            if let Some(status) = p.try_wait()? {
                return Err(BenchError::Exited {
                    service,
                    status: status.to_string(),
                    log: p.log_path().display().to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Creates the call over NG (offer from the core peer, answer from the local endpoint) and
/// returns the media sockets and where each side must send.
pub fn create_call(rig: &Rig) -> Result<CallEndpoints> {
    let plan = *rig.plan();
    // The NG socket must live in the appliance's namespace: the relay listens on its loopback.
    let mut ng = rig.in_ns(Role::App, || Ng::connect(SocketAddr::V4(NG_ADDR)))??;
    ng.wait_ready(Duration::from_secs(10))?;
    let core_addr = SocketAddrV4::new(plan.core_media, CORE_PEER_PORT);
    let local_addr = SocketAddrV4::new(plan.service, LOCAL_PORT);
    let core_peer = rig.udp_socket(Role::Core, plan.core_media, CORE_PEER_PORT)?;
    let local = rig.udp_socket(Role::App, plan.service, LOCAL_PORT)?;
    let call_id = bench_call_id();
    let (core_sends_to, local_sends_to) = ng.call(&call_id, core_addr, local_addr)?;
    Ok(CallEndpoints {
        core_peer,
        local,
        core_sends_to,
        local_sends_to,
    })
}

/// The Call-ID of the call [`create_call`] makes (one per process).
pub fn bench_call_id() -> String {
    format!("failover-bench-{}", std::process::id())
}

/// Ends the call [`create_call`] made, naming its parties first: the local endpoint repeats
/// its answer (same SDP, as in a re-INVITE) carrying rtpengine's `metadata`
/// `from:<caller>|to:<callee>`, which is where the relay's call record takes the parties from,
/// then a `delete` with no delete delay closes it at once, so the call record is written now.
pub fn end_call_naming_parties(rig: &Rig, caller: &str, callee: &str) -> Result<()> {
    let plan = *rig.plan();
    let mut ng = rig.in_ns(Role::App, || Ng::connect(SocketAddr::V4(NG_ADDR)))??;
    let call_id = bench_call_id();
    let local_addr = SocketAddrV4::new(plan.service, LOCAL_PORT);
    let answer_sdp = endpoint_sdp(local_addr, 2);
    let metadata = format!("from:{caller}|to:{callee}");
    let answer = Ben::str_dict(&[
        ("command", "answer"),
        ("call-id", &call_id),
        ("from-tag", "caller"),
        ("to-tag", "callee"),
        ("sdp", &answer_sdp),
        ("metadata", &metadata),
    ]);
    ng_ok(&mut ng, "answer with party metadata", &answer)?;
    let mut delete = Ben::str_dict(&[
        ("command", "delete"),
        ("call-id", &call_id),
        ("from-tag", "caller"),
    ]);
    if let Ben::Dict(d) = &mut delete {
        // Explicit: the relay's default delay could keep the call (and its record) back.
        d.push((b"delete-delay".to_vec(), Ben::Int(0)));
        d.sort_by(|a, b| a.0.cmp(&b.0));
    }
    ng_ok(&mut ng, "delete", &delete)
}

/// Sends `body` and fails unless the relay answers `result: ok`.
fn ng_ok(ng: &mut Ng, what: &str, body: &Ben) -> Result<()> {
    let reply = ng.request_with(body, 10)?;
    match reply.get("result").and_then(Ben::as_str) {
        Some("ok") => Ok(()),
        other => Err(BenchError::Protocol {
            service: "popd relay",
            detail: format!(
                "{what} answered {other:?}: {}",
                reply
                    .get("error-reason")
                    .and_then(Ben::as_str)
                    .unwrap_or("no reason given")
            ),
        }),
    }
}
