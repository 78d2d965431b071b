//! Hand-run micro-benchmark: one worker pinned to CPU 0 forwards a saturating loopback flood
//! for each backend; prints forwarded packets per second.
//!
//! `cargo run --release -p pop-dataplane --example forward_bench [seconds] [streams]`
#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pop_dataplane::{Backend, Dataplane, DataplaneConfig, LegSockets};
use pop_relay_core::media::{MediaPolicy, StreamId};
use pop_wire::rtp::{emit_header, Ssrc};

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let streams: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    for backend in [Backend::Uring, Backend::Mmsg] {
        run(
            backend,
            Duration::from_secs(secs.clamp(1, 60)),
            streams.clamp(1, 500),
        );
    }
}

fn run(backend: Backend, dur: Duration, streams: u64) {
    let dp = Dataplane::start(DataplaneConfig {
        backend,
        workers: 1,
        pin_cpus: vec![0],
        ..Default::default()
    })
    .unwrap();
    let mut targets = Vec::new();
    let mut sinks = Vec::new();
    for id in 0..streams {
        let (a_rtp, b_rtp) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        targets.push((sender, a_rtp.local_addr().unwrap()));
        let leg = |rtp, peer| LegSockets {
            rtp,
            rtcp: None,
            peer_rtp: peer,
            peer_rtcp: None,
            rtcp_mux: true,
            codecs: Default::default(),
        };
        dp.add_stream(
            StreamId(id),
            leg(a_rtp, None),
            leg(b_rtp, Some(sink.local_addr().unwrap())),
            MediaPolicy {
                latch: true,
                ..Default::default()
            },
        )
        .unwrap();
        sinks.push(sink);
    }
    // Sinks drain on their own thread so the relay's sends do not hit full buffers.
    let stop = Arc::new(AtomicBool::new(false));
    let sink_stop = Arc::clone(&stop);
    let sink_thread = std::thread::spawn(move || {
        for s in &sinks {
            s.set_nonblocking(true).unwrap();
        }
        let mut buf = [0u8; 2048];
        while !sink_stop.load(Ordering::Relaxed) {
            for s in &sinks {
                while s.recv_from(&mut buf).is_ok() {}
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let mut pkt = [0u8; 172];
    let start = Instant::now();
    let mut warm = None;
    let mut seq = 0u16;
    while start.elapsed() < dur + Duration::from_millis(500) {
        if warm.is_none() && start.elapsed() >= Duration::from_millis(500) {
            warm = Some((
                Instant::now(),
                dp.totals().forwarded_packets,
                worker_cpu_ticks(),
            ));
        }
        seq = seq.wrapping_add(1);
        emit_header(&mut pkt, 0, false, seq, u32::from(seq) * 160, Ssrc(1)).unwrap();
        for (s, to) in &targets {
            let _ = s.send_to(&pkt, to);
        }
    }
    let (t0, p0, c0) = warm.unwrap();
    let totals = dp.totals();
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu_s = (worker_cpu_ticks() - c0) as f64 / 100.0;
    let fwd = (totals.forwarded_packets - p0) as f64;
    stop.store(true, Ordering::Relaxed);
    sink_thread.join().unwrap();
    println!(
        "{backend:?}: {:.0} packets/s forwarded over {elapsed:.1} s, worker CPU {:.0} % \
         = {:.2} µs/packet ({streams} streams; send errors {}, buffer-ring empty {}, rearms {})",
        fwd / elapsed,
        100.0 * cpu_s / elapsed,
        1e6 * cpu_s / fwd.max(1.0),
        totals.send_errors,
        totals.buffer_ring_empty,
        totals.rearms
    );
    dp.shutdown();
}

/// utime + stime (clock ticks, 100 Hz) of the worker thread `pop-dp-0`.
fn worker_cpu_ticks() -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "pop-dp-0" {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = after.split_whitespace().collect();
            return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    panic!("worker thread pop-dp-0 not found");
}
