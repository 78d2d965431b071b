//! One call's media through the relay: 50 packets/s of RTP each way, with the send and arrival
//! time of every packet, so a trial can say how long media was lost and when it flowed again.
//!
//! The call is between the far-end media peer in `core` and a local endpoint on the service
//! address in `app`: core→app packets cross the uplink once on their way in (core peer → relay
//! → local endpoint over loopback), app→core packets once on their way out (local endpoint →
//! relay → core peer). So each direction's loss belongs to one leg of the uplink: app→core is
//! the appliance's alone (its default route), core→app follows the upstream's reaction.

use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use pop_rig::MonoTime;

use super::error::{BenchError, Result};

/// RTP packet spacing (PCMU, 20 ms ptime): 50 packets/s.
pub const PACKET_INTERVAL: Duration = Duration::from_millis(20);
/// RTP header + 160 bytes of PCMU payload.
const PACKET_LEN: usize = 172;
/// Marks our packets inside the payload (after the 12-byte RTP header).
const MAGIC: [u8; 4] = *b"PFB1";
/// Largest stream kept: 50 packets/s for 6 hours. Past it the sender stops.
const MAX_PACKETS: usize = 50 * 3600 * 6;

/// A direction of the call's media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Core peer → relay (over the uplink) → local endpoint.
    CoreToApp,
    /// Local endpoint → relay → core peer (over the uplink).
    AppToCore,
}

impl Direction {
    /// Both, appliance's own direction first.
    pub const ALL: [Direction; 2] = [Direction::AppToCore, Direction::CoreToApp];

    /// Label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Direction::CoreToApp => "core→app",
            Direction::AppToCore => "app→core",
        }
    }

    /// Key for JSON.
    pub fn key(self) -> &'static str {
        match self {
            Direction::CoreToApp => "core_to_app",
            Direction::AppToCore => "app_to_core",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Direction::CoreToApp => 1,
            Direction::AppToCore => 2,
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::CoreToApp => 0,
            Direction::AppToCore => 1,
        }
    }
}

/// Per-packet record of one direction.
#[derive(Debug, Default)]
struct StreamLog {
    sent: Vec<MonoTime>,
    arrived: Vec<Option<MonoTime>>,
    duplicates: u64,
    foreign: u64,
    send_errors: u64,
}

fn lock(log: &Mutex<StreamLog>) -> MutexGuard<'_, StreamLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// How one direction fared over a time window.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct GapReport {
    /// Packets sent in the window.
    pub sent: u32,
    /// Of those, never arrived.
    pub lost: u32,
    /// Longest run of consecutive lost packets.
    pub longest_run: u32,
    /// `longest_run` × 20 ms: the media gap.
    pub gap_ms: f64,
    /// Send time of the first packet of the longest run.
    #[serde(skip)]
    pub run_start: Option<MonoTime>,
    /// Arrival time of the first packet after the longest run, if one arrived.
    #[serde(skip)]
    pub resumed_at: Option<MonoTime>,
}

/// Counters of one direction since the stream started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct StreamTotals {
    /// Packets sent.
    pub sent: u64,
    /// Packets received (first copies).
    pub received: u64,
    /// Extra copies received.
    pub duplicates: u64,
    /// Datagrams that were not ours.
    pub foreign: u64,
    /// Sends the kernel refused (e.g. no route while both uplinks are down).
    pub send_errors: u64,
}

/// The running media of one call; stops (and joins its threads) on drop.
#[derive(Debug)]
pub struct MediaRun {
    stop: Arc<AtomicBool>,
    logs: [Arc<Mutex<StreamLog>>; 2],
    threads: Vec<JoinHandle<()>>,
}

/// The sockets and relay addresses of one call.
#[derive(Debug)]
pub struct CallEndpoints {
    /// The core peer's socket (in `core`).
    pub core_peer: UdpSocket,
    /// The local endpoint's socket (in `app`).
    pub local: UdpSocket,
    /// Relay address the core peer sends to.
    pub core_sends_to: SocketAddrV4,
    /// Relay address the local endpoint sends to.
    pub local_sends_to: SocketAddrV4,
}

impl MediaRun {
    /// Starts both directions: a paced sender and a receiver per direction.
    pub fn start(call: CallEndpoints) -> Result<MediaRun> {
        let stop = Arc::new(AtomicBool::new(false));
        let logs = [
            Arc::new(Mutex::new(StreamLog::default())),
            Arc::new(Mutex::new(StreamLog::default())),
        ];
        let clone = |s: &UdpSocket| {
            s.try_clone()
                .map_err(|e| BenchError::io("cloning a socket", e))
        };
        let plan = [
            // (direction, sending socket, destination, receiving socket)
            (
                Direction::CoreToApp,
                clone(&call.core_peer)?,
                call.core_sends_to,
                clone(&call.local)?,
            ),
            (
                Direction::AppToCore,
                clone(&call.local)?,
                call.local_sends_to,
                clone(&call.core_peer)?,
            ),
        ];
        let mut run = MediaRun {
            stop,
            logs,
            threads: Vec::new(),
        };
        for (dir, tx, dest, rx) in plan {
            rx.set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| BenchError::io("setting a receive timeout", e))?;
            let log = run.logs[dir.index()].clone();
            let stop = run.stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("rx-{}", dir.key()))
                .spawn(move || receive(dir, &rx, &log, &stop))
                .map_err(|e| BenchError::io("spawning a receiver", e))?;
            run.threads.push(t);
            let log = run.logs[dir.index()].clone();
            let stop = run.stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("tx-{}", dir.key()))
                .spawn(move || send(dir, &tx, dest, &log, &stop))
                .map_err(|e| BenchError::io("spawning a sender", e))?;
            run.threads.push(t);
        }
        Ok(run)
    }

    fn log(&self, dir: Direction) -> &Mutex<StreamLog> {
        &self.logs[dir.index()]
    }

    /// Totals of `dir` so far.
    pub fn totals(&self, dir: Direction) -> StreamTotals {
        let l = lock(self.log(dir));
        StreamTotals {
            sent: l.sent.len() as u64,
            received: l.arrived.iter().filter(|a| a.is_some()).count() as u64,
            duplicates: l.duplicates,
            foreign: l.foreign,
            send_errors: l.send_errors,
        }
    }

    /// True when the last `count` packets of `dir` sent at least `settle` ago all arrived:
    /// media flows now.
    pub fn flowing(&self, dir: Direction, count: usize, settle: Duration) -> bool {
        let now = MonoTime::now();
        let l = lock(self.log(dir));
        let settled = l
            .sent
            .iter()
            .rposition(|&t| now.saturating_since(t) >= settle);
        let Some(last) = settled else {
            return false;
        };
        let first = (last + 1).saturating_sub(count);
        if last + 1 - first < count {
            return false;
        }
        l.arrived
            .get(first..=last)
            .is_some_and(|a| a.iter().all(Option::is_some))
    }

    /// Loss of `dir` among packets sent in `[from, to]`.
    pub fn gap(&self, dir: Direction, from: MonoTime, to: MonoTime) -> GapReport {
        let l = lock(self.log(dir));
        gap_in(&l.sent, &l.arrived, from, to)
    }
}

impl Drop for MediaRun {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn gap_in(
    sent: &[MonoTime],
    arrived: &[Option<MonoTime>],
    from: MonoTime,
    to: MonoTime,
) -> GapReport {
    let mut r = GapReport::default();
    let mut run = 0u32;
    let mut run_start = None;
    // Index of the packet right after the longest run, to find when media resumed.
    let mut after_longest = None;
    for (i, &t) in sent.iter().enumerate() {
        if t < from || t > to {
            continue;
        }
        r.sent += 1;
        if arrived.get(i).copied().flatten().is_some() {
            if run > r.longest_run {
                r.longest_run = run;
                r.run_start = run_start;
                after_longest = Some(i);
            }
            run = 0;
        } else {
            r.lost += 1;
            if run == 0 {
                run_start = Some(t);
            }
            run += 1;
        }
    }
    if run > r.longest_run {
        r.longest_run = run;
        r.run_start = run_start;
        after_longest = None;
    }
    r.gap_ms = f64::from(r.longest_run) * PACKET_INTERVAL.as_secs_f64() * 1000.0;
    r.resumed_at = after_longest.and_then(|i| arrived.get(i).copied().flatten());
    r
}

fn packet(dir: Direction, seq: u32) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    let rtp_seq = (seq & 0xffff) as u16;
    let ts = seq.wrapping_mul(160);
    let ssrc = 0x5046_0000 | u32::from(dir.tag());
    p[0] = 0x80; // RTP version 2
    p[1] = 0; // PCMU
    p[2..4].copy_from_slice(&rtp_seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p[12..16].copy_from_slice(&MAGIC);
    p[16] = dir.tag();
    p[17..21].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Our sequence number in `p` if it is one of `dir`'s packets.
fn parse(dir: Direction, p: &[u8]) -> Option<u32> {
    if p.get(12..16)? != MAGIC || *p.get(16)? != dir.tag() {
        return None;
    }
    let b: [u8; 4] = p.get(17..21)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

fn send(
    dir: Direction,
    tx: &UdpSocket,
    dest: SocketAddrV4,
    log: &Mutex<StreamLog>,
    stop: &AtomicBool,
) {
    let start = std::time::Instant::now();
    let mut seq: u32 = 0;
    while !stop.load(Ordering::Relaxed) && (seq as usize) < MAX_PACKETS {
        let due = start + PACKET_INTERVAL * seq;
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let p = packet(dir, seq);
        {
            // Logged before sending, so a receiver never sees a packet it has no slot for.
            let mut l = lock(log);
            l.sent.push(MonoTime::now());
            l.arrived.push(None);
        }
        if tx.send_to(&p, dest).is_err() {
            lock(log).send_errors += 1;
        }
        seq = seq.wrapping_add(1);
    }
}

fn receive(dir: Direction, rx: &UdpSocket, log: &Mutex<StreamLog>, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = rx.recv(&mut buf) else {
            continue; // timeout: look at the stop flag again
        };
        let at = MonoTime::now();
        let seq = buf.get(..n).and_then(|p| parse(dir, p));
        let mut l = lock(log);
        match seq.and_then(|s| l.arrived.get_mut(s as usize)) {
            Some(slot @ None) => *slot = Some(at),
            Some(Some(_)) => l.duplicates += 1,
            None => l.foreign += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> MonoTime {
        MonoTime::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn packets_round_trip_and_other_directions_are_foreign() {
        let p = packet(Direction::AppToCore, 70_000);
        assert_eq!(parse(Direction::AppToCore, &p), Some(70_000));
        assert_eq!(parse(Direction::CoreToApp, &p), None);
        assert_eq!(parse(Direction::AppToCore, &p[..18]), None);
        assert_eq!(p[0] >> 6, 2, "RTP version 2");
    }

    #[test]
    fn gap_is_the_longest_lost_run_times_20_ms() {
        let sent: Vec<MonoTime> = (0..20).map(|i| t(i * 20)).collect();
        let mut arrived: Vec<Option<MonoTime>> = sent.iter().map(|&s| Some(s)).collect();
        // Lose 3..=5 (3 packets) and 10..=16 (7 packets).
        for i in (3..=5).chain(10..=16) {
            arrived[i] = None;
        }
        let r = gap_in(&sent, &arrived, t(0), t(1000));
        assert_eq!((r.sent, r.lost, r.longest_run), (20, 10, 7));
        assert!((r.gap_ms - 140.0).abs() < 1e-9);
        assert_eq!(r.run_start, Some(t(200)));
        assert_eq!(r.resumed_at, Some(t(340)));
        // A window that excludes the long run sees only the short one.
        let r = gap_in(&sent, &arrived, t(0), t(180));
        assert_eq!(r.longest_run, 3);
    }

    #[test]
    fn a_run_to_the_end_has_not_resumed() {
        let sent: Vec<MonoTime> = (0..5).map(|i| t(i * 20)).collect();
        let arrived = vec![Some(t(0)), Some(t(20)), None, None, None];
        let r = gap_in(&sent, &arrived, t(0), t(100));
        assert_eq!(r.longest_run, 3);
        assert_eq!(r.resumed_at, None);
    }
}
