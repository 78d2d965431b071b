//! The benchmark: each relay under test (rtpengine, popd with io_uring, popd with mmsg) goes
//! through the same runs in one invocation — CPU per packet at a fixed offered rate, a step
//! search for the highest rate under the loss threshold, the 1,000-session run, memory at
//! 4,000 sessions and the NG setup rate — each run against a freshly started relay pinned to
//! its own core. The floor reference (`relay-floor`) goes through the same runs with computed
//! port pairs instead of NG sessions, so it has no setup rate.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;

use crate::error::{LoadgenError, Result};
use crate::ng_client::{session_specs, NgClient};
use crate::procstat::ProcSample;
use crate::relay_process::{RelayProcess, RelaySpec};
use crate::sdp_text::SdpOptions;
use crate::traffic::{
    self, EndpointSockets, Phase, PhaseRole, TrafficConfig, TrafficReport, WindowObserver,
};

/// Sockets a relay holds per session without rtcp-mux (RTP + RTCP on each side).
pub const RELAY_SOCKETS_PER_SESSION: usize = 4;
/// Files a relay needs besides media sockets (NG socket, logs, epoll/rings, …).
const RELAY_FD_HEADROOM: usize = 200;

/// Shape of one measured run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunShape {
    /// Sessions created (2 streams each).
    pub sessions: usize,
    /// Unmeasured traffic before the window.
    pub warmup: Duration,
    /// Measured window.
    pub measure: Duration,
    /// Packet interval per stream (20 ms = real PCMU; longer to touch many sessions gently).
    pub interval: Duration,
}

/// Settings shared by all runs.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// NG requests kept outstanding during setup.
    pub setup_window: usize,
    /// Load-generator media sockets (endpoints share them round-robin).
    pub loadgen_sockets: usize,
    /// First port for load-generator sockets (outside the relays' range).
    pub loadgen_first_port: u16,
    /// SDP options.
    pub sdp: SdpOptions,
}

/// Figures of one measured run against one relay.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    /// Sessions.
    pub sessions: usize,
    /// Nominal offered rate, packets/s (sessions × 2 streams × 1/interval).
    pub nominal_pps: f64,
    /// Offer+answer pairs per second while creating the sessions; None for the floor
    /// reference, whose sessions are computed, not negotiated.
    pub setup_pairs_per_s: Option<f64>,
    /// Traffic figures of the measured window.
    pub traffic: TrafficReport,
    /// Relay CPU seconds in the window.
    pub relay_cpu_s: f64,
    /// Relay CPU as a fraction of one core.
    pub relay_cpu_core: f64,
    /// Share of the relay's CPU in the window spent in the kernel (stime / utime+stime): on
    /// loopback this is the UDP send and receive path, which no relay design avoids.
    pub relay_cpu_sys_share: f64,
    /// Relay CPU µs per forwarded (delivered) packet.
    pub relay_cpu_us_per_packet: f64,
    /// Relay sample after the window.
    pub relay_after: ProcSample,
    /// Kernel receive-queue drops on the relay's sockets in the window.
    pub relay_socket_drops: u64,
    /// Kernel receive-queue drops on the load generator's sockets in the window.
    pub loadgen_socket_drops: u64,
    /// Idle fraction of the relay's and the load generator's CPUs just before the run; well
    /// under 1 means another process competed and the figures are not trustworthy.
    pub host_idle_before: Vec<f64>,
}

impl RunFigures {
    /// Whether the load generator rather than the relay was the bottleneck: it fell behind its
    /// send schedule, could not send what was asked, or its own sockets overflowed. (Its CPU
    /// share says nothing here: it polls without sleeping when sends are < 1 ms apart.)
    pub fn loadgen_saturated(&self) -> bool {
        self.traffic.schedule_skips > 0
            || self.traffic.offered_pps < 0.97 * self.nominal_pps
            || self.loadgen_socket_drops > 0
    }

    /// Whether another process kept the benchmark's CPUs busy before the run (< 90 % idle).
    pub fn host_busy(&self) -> bool {
        self.host_idle_before.iter().any(|&i| i < 0.9)
    }
}

struct RelayWindow<'a> {
    relay: &'a mut RelayProcess,
    relay_ports: (u16, u16),
    loadgen_ports: Vec<u16>,
    start: Option<(ProcSample, u64, u64)>,
    end: Option<(ProcSample, u64, u64)>,
}

impl RelayWindow<'_> {
    fn drops(&self) -> (u64, u64) {
        let (lo, hi) = self.relay_ports;
        let ours = &self.loadgen_ports;
        (
            traffic::udp_drops(|p| (lo..=hi).contains(&p)),
            traffic::udp_drops(|p| ours.contains(&p)),
        )
    }
}

impl WindowObserver for RelayWindow<'_> {
    // The relay's CPU time is read last at the start and first at the end, so the slow
    // `/proc/net/udp` scans stay outside its window.
    fn window_start(&mut self) -> Result<()> {
        let (relay, ours) = self.drops();
        self.start = Some((self.relay.sample()?, relay, ours));
        Ok(())
    }
    fn window_end(&mut self) -> Result<()> {
        let s = self.relay.sample()?;
        let (relay, ours) = self.drops();
        self.end = Some((s, relay, ours));
        Ok(())
    }
}

/// Starts a fresh relay, creates `shape.sessions` sessions over NG, drives media and measures.
pub fn measure_run(
    spec: &RelaySpec,
    settings: &BenchSettings,
    shape: RunShape,
    instance: &str,
) -> Result<RunFigures> {
    let max_sessions = max_sessions_for(spec, settings);
    if shape.sessions == 0 || shape.sessions > max_sessions {
        return Err(LoadgenError::Config {
            field: "sessions",
            reason: format!(
                "{} sessions requested; 1..={max_sessions} fit the relay's port range and open-file limit",
                shape.sessions
            ),
        });
    }
    let host_idle_before =
        crate::host::cpu_idle_fractions(&[spec.cpu, spec.loadgen_cpu], Duration::from_millis(300));
    let mut relay = spec.start_for(instance, shape.sessions)?;
    let sockets = EndpointSockets::bind(settings.loadgen_sockets, settings.loadgen_first_port)?;
    let endpoints: Vec<_> = (0..shape.sessions)
        .map(|i| {
            (
                sockets.endpoint_addr(2 * i),
                sockets.endpoint_addr(2 * i + 1),
            )
        })
        .collect();
    let (routes, setup_pairs_per_s) = if spec.kind.has_ng() {
        let specs = session_specs(&format!("bench-{instance}"), 0, &endpoints);
        let mut ng = NgClient::connect(relay.ng()?)?;
        let setup = ng.setup_sessions(&specs, settings.setup_window, settings.sdp)?;
        let rate = setup.pairs_per_s();
        (setup.routes, Some(rate))
    } else {
        (
            crate::floor::session_routes(Ipv4Addr::LOCALHOST, spec.port_min, shape.sessions)?,
            None,
        )
    };
    let streams = traffic::session_streams(&routes, 0);
    let phases = [
        Phase {
            role: PhaseRole::Warmup,
            duration: shape.warmup,
            packets_per_interval: 1,
        },
        Phase {
            role: PhaseRole::Measure,
            duration: shape.measure,
            packets_per_interval: 1,
        },
    ];
    let cfg = TrafficConfig {
        interval: shape.interval,
        ..TrafficConfig::default()
    };
    let mut window = RelayWindow {
        relay: &mut relay,
        relay_ports: (spec.port_min, spec.port_max),
        loadgen_ports: sockets.ports(),
        start: None,
        end: None,
    };
    let report = traffic::run(&sockets, &streams, &phases, cfg, &mut window)?;
    let (Some((s0, rd0, ld0)), Some((s1, rd1, ld1))) = (window.start, window.end) else {
        return Err(LoadgenError::Config {
            field: "measure",
            reason: "the run had no measured window".into(),
        });
    };
    let relay_after = relay.sample()?;
    let relay_cpu_s = (s1.cpu_s - s0.cpu_s).max(0.0);
    let relay_sys_s = (s1.cpu_sys_s - s0.cpu_sys_s).max(0.0);
    let nominal_pps = 2.0 * shape.sessions as f64 / shape.interval.as_secs_f64();
    Ok(RunFigures {
        sessions: shape.sessions,
        nominal_pps,
        setup_pairs_per_s,
        relay_cpu_core: relay_cpu_s / report.measured_s.max(1e-9),
        relay_cpu_sys_share: if relay_cpu_s > 0.0 {
            (relay_sys_s / relay_cpu_s).min(1.0)
        } else {
            0.0
        },
        relay_cpu_us_per_packet: if report.received == 0 {
            0.0
        } else {
            relay_cpu_s * 1e6 / report.received as f64
        },
        relay_cpu_s,
        relay_after,
        relay_socket_drops: rd1.saturating_sub(rd0),
        loadgen_socket_drops: ld1.saturating_sub(ld0),
        host_idle_before,
        traffic: report,
    })
}

/// Most sessions the relay can hold within its port range and the open-file limit.
pub fn max_sessions_for(spec: &RelaySpec, settings: &BenchSettings) -> usize {
    let per = if settings.sdp.rtcp_mux {
        2
    } else {
        RELAY_SOCKETS_PER_SESSION
    };
    let ports = usize::from(spec.port_max.saturating_sub(spec.port_min)) + 1;
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| usize::try_from(soft).unwrap_or(1024));
    (ports / per).min(nofile.saturating_sub(RELAY_FD_HEADROOM) / per)
}

/// Step-search settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchPlan {
    /// Sessions of the first steps, in order (e.g. the fixed-rate CPU run, then 1,000).
    pub fixed_steps: [usize; 2],
    /// Growth per step after the fixed ones while under the threshold.
    pub growth: f64,
    /// Steps at most, fixed ones included.
    pub max_steps: usize,
    /// Loss ratio that fails a step.
    pub loss_threshold: f64,
    /// p99 one-way latency (µs) that fails a step: a relay that cannot keep up first queues
    /// (latency climbs without bound) and loses only once its socket buffers overflow, which a
    /// few-second window may not reach.
    pub max_p99_us: f64,
    /// Shape of each step (sessions replaced per step).
    pub shape: RunShape,
}

/// Outcome of the rate search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchOutcome {
    /// Every step, in order.
    pub steps: Vec<RunFigures>,
    /// Highest offered rate (packets/s) with loss and p99 latency under their thresholds.
    pub max_rate_pps: f64,
    /// Whether the load generator, not the relay, bounded the search.
    pub loadgen_bound: bool,
}

/// Finds the highest offered rate below the loss threshold with bounded steps: the fixed
/// steps, geometric growth until a step fails, then bisection between the last pass and the
/// first failure. `progress` sees each step as it completes.
pub fn rate_search(
    spec: &RelaySpec,
    settings: &BenchSettings,
    plan: SearchPlan,
    progress: &mut dyn FnMut(&RunFigures),
) -> Result<SearchOutcome> {
    let cap = max_sessions_for(spec, settings);
    let mut steps: Vec<RunFigures> = Vec::new();
    let mut best: Option<usize> = None;
    let mut failed: Option<usize> = None;
    let mut loadgen_bound = false;
    let mut next = plan.fixed_steps[0].min(cap);
    for i in 0..plan.max_steps {
        let shape = RunShape {
            sessions: next,
            ..plan.shape
        };
        let fig = measure_run(spec, settings, shape, &format!("step{i}"))?;
        progress(&fig);
        let pass = fig.traffic.loss_ratio < plan.loss_threshold
            && fig.traffic.latency_p99_us < plan.max_p99_us;
        if fig.loadgen_saturated() {
            loadgen_bound = true;
        }
        if pass {
            best = Some(best.map_or(next, |b| b.max(next)));
        } else {
            failed = Some(failed.map_or(next, |f| f.min(next)));
        }
        steps.push(fig);
        if loadgen_bound && pass {
            break; // the relay was not the limit; more steps would measure us
        }
        let candidate = if i == 0 && plan.fixed_steps[1] > next && failed.is_none() {
            plan.fixed_steps[1]
        } else {
            match (best, failed) {
                (Some(b), None) => ((b as f64 * plan.growth) as usize).max(b + 1),
                (b, Some(f)) => (b.unwrap_or(0) + f) / 2,
                (None, None) => break,
            }
        };
        let candidate = candidate.min(cap);
        let bracket_closed = match (best, failed) {
            (Some(b), Some(f)) => f <= b + (b / 20).max(1), // within 5 %
            (None, Some(f)) => f <= 1,
            _ => false,
        };
        if bracket_closed || candidate == 0 || steps.iter().any(|s| s.sessions == candidate) {
            break;
        }
        next = candidate;
    }
    let max_rate_pps = best
        .and_then(|b| steps.iter().find(|s| s.sessions == b))
        .map_or(0.0, |s| s.traffic.offered_pps);
    Ok(SearchOutcome {
        steps,
        max_rate_pps,
        loadgen_bound,
    })
}

/// Everything measured for one relay.
#[derive(Debug, Clone, Serialize)]
pub struct RelayBench {
    /// Relay label.
    pub relay: &'static str,
    /// The fixed-rate run (CPU per packet at the same offered rate for every relay).
    pub cpu_run: Option<RunFigures>,
    /// The 1,000-session run.
    pub latency_run: Option<RunFigures>,
    /// The rate search.
    pub search: SearchOutcome,
    /// The many-sessions run (RSS, open files, setup rate).
    pub memory_run: RunFigures,
}

/// Runs the whole benchmark for one relay.
pub fn bench_relay(
    spec: &RelaySpec,
    settings: &BenchSettings,
    plan: SearchPlan,
    memory_shape: RunShape,
    progress: &mut dyn FnMut(&str, &RunFigures),
) -> Result<RelayBench> {
    let label = spec.kind.label();
    let search = rate_search(spec, settings, plan, &mut |f| progress(label, f))?;
    let find = |n: usize| search.steps.iter().find(|s| s.sessions == n).cloned();
    let cpu_run = find(plan.fixed_steps[0]);
    let latency_run = match find(plan.fixed_steps[1]) {
        Some(r) => Some(r),
        None => {
            // The search skipped it (first step already failed): run it on its own.
            let shape = RunShape {
                sessions: plan.fixed_steps[1],
                ..plan.shape
            };
            let r = measure_run(spec, settings, shape, "latency")?;
            progress(label, &r);
            Some(r)
        }
    };
    let memory_run = measure_run(spec, settings, memory_shape, "memory")?;
    progress(label, &memory_run);
    Ok(RelayBench {
        relay: label,
        cpu_run,
        latency_run,
        search,
        memory_run,
    })
}
