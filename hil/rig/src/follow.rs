//! The rig's upstream reaction: a thread that watches FRR BFD sessions over their vty sockets
//! and moves a route to the first path whose sessions are all up — what a router tracking a
//! static route by BFD does. FRR 8.4's staticd cannot do that itself (`bfd` parses as an
//! interface name), and BGP adds ~50 ms per hop, so the rig does it in a 5 ms polling loop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::MonoTime;
use crate::cmd::{self, IP};
use crate::error::{Result, RigError};
use crate::frr::VtyClient;

/// One way to reach the destination, usable while every listed BFD session is up.
#[derive(Debug, Clone)]
pub struct FollowPath {
    /// Label reported in events (e.g. `car1`).
    pub label: String,
    /// Next hop.
    pub via: Ipv4Addr,
    /// Outgoing interface.
    pub dev: String,
    /// Preferred source address, if any.
    pub src: Option<Ipv4Addr>,
    /// Sessions that must be up: (bfdd vty socket, peer address).
    pub sessions: Vec<(PathBuf, Ipv4Addr)>,
}

/// A route change made by a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEvent {
    /// When the state change was seen (the poll that saw it).
    pub seen: MonoTime,
    /// When the route replace had completed.
    pub switched: MonoTime,
    /// The label of the path now in use.
    pub to: String,
}

/// A running follower; stops when dropped.
#[derive(Debug)]
pub struct RouteFollower {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<RouteEvent>>>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

fn replace_route(ns: &str, prefix: &str, path: &FollowPath) -> Result<()> {
    let via = path.via.to_string();
    let mut args = vec![
        "-n", ns, "route", "replace", prefix, "via", &via, "dev", &path.dev,
    ];
    let src = path.src.map(|s| s.to_string());
    if let Some(src) = src.as_deref() {
        args.extend_from_slice(&["src", src]);
    }
    cmd::run(IP, &args).map(drop)
}

impl RouteFollower {
    /// Starts following: `prefix` in namespace `ns` goes via the first of `paths` whose sessions
    /// are up; when none is, the route stays where it is (the last good path). `current` is the
    /// label of the path the route uses now.
    pub fn start(
        ns: &str,
        prefix: &str,
        paths: Vec<FollowPath>,
        current: &str,
        poll: Duration,
    ) -> Result<Self> {
        let mut clients: Vec<(PathBuf, VtyClient)> = Vec::new();
        for path in &paths {
            for (vty, _) in &path.sessions {
                if !clients.iter().any(|(p, _)| p == vty) {
                    clients.push((vty.clone(), VtyClient::connect(vty)?));
                }
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (ns, prefix, mut current) = (ns.to_owned(), prefix.to_owned(), current.to_owned());
        let (stop_t, events_t, errors_t) = (stop.clone(), events.clone(), errors.clone());
        let thread = std::thread::Builder::new()
            .name(format!("follow-{prefix}"))
            .spawn(move || {
                let record_error = |e: String| {
                    let mut errs = errors_t.lock().unwrap_or_else(|p| p.into_inner());
                    // Bounded: a daemon gone for good must not grow this without end.
                    if errs.len() < 100 {
                        errs.push(e);
                    }
                };
                while !stop_t.load(Ordering::Relaxed) {
                    let mut up: Vec<(PathBuf, Ipv4Addr)> = Vec::new();
                    for (vty, client) in clients.iter_mut() {
                        match client.peers() {
                            Ok(peers) => up.extend(
                                peers
                                    .iter()
                                    .filter(|p| p.is_up())
                                    .map(|p| (vty.clone(), p.peer)),
                            ),
                            Err(e) => record_error(e.to_string()),
                        }
                    }
                    let seen = MonoTime::now();
                    let usable = paths
                        .iter()
                        .find(|p| p.sessions.iter().all(|s| up.contains(s)));
                    if let Some(path) = usable {
                        if path.label != current {
                            match replace_route(&ns, &prefix, path) {
                                Ok(()) => {
                                    current.clone_from(&path.label);
                                    events_t.lock().unwrap_or_else(|p| p.into_inner()).push(
                                        RouteEvent {
                                            seen,
                                            switched: MonoTime::now(),
                                            to: path.label.clone(),
                                        },
                                    );
                                }
                                Err(e) => record_error(e.to_string()),
                            }
                        }
                    }
                    std::thread::sleep(poll);
                }
            })
            .map_err(|e| RigError::io("spawning the route follower", e))?;
        Ok(RouteFollower {
            stop,
            events,
            errors,
            thread: Some(thread),
        })
    }

    /// Route changes so far.
    pub fn events(&self) -> Vec<RouteEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Errors met so far (vty or `ip` failures; the follower keeps going).
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RouteFollower {
    fn drop(&mut self) {
        self.stop();
    }
}
