//! The petting decision, sans-I/O: given heartbeats and `now`, pet or withhold.
//!
//! A service is healthy while its last heartbeat is younger than its deadline; before its first
//! heartbeat it is given the start-up grace measured from the supervisor's start, so a boot in
//! which a service never comes up still ends in a reset. Nothing but heartbeat age is looked at.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::heartbeat::Heartbeat;

/// A service whose loop must keep turning for the board to stay up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriticalService {
    /// Name the service sends in its heartbeats.
    pub name: String,
    /// Longest silence tolerated before the service counts as hung.
    pub deadline: Duration,
}

#[derive(Debug)]
struct Tracked {
    service: CriticalService,
    last_seen: Option<Instant>,
    detail: Option<String>,
    beats: u64,
}

impl Tracked {
    fn healthy(&self, now: Instant, started: Instant, grace: Duration) -> bool {
        match self.last_seen {
            Some(t) => now.saturating_duration_since(t) <= self.service.deadline,
            None => now.saturating_duration_since(started) <= grace,
        }
    }
}

/// What to do with the device now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every service is healthy and a pet is due.
    Pet,
    /// Every service is healthy; the next pet is due at the instant given.
    Wait(Instant),
    /// At least one service is hung: do not pet (the board resets when the timeout runs out
    /// unless the service recovers first).
    Withhold {
        /// Names of the hung services.
        stalled: Vec<String>,
    },
}

/// A heartbeat from a service that is not in the configured list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownService;

/// One service in the status report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceStatus {
    /// Configured name.
    pub name: String,
    /// Whether it currently counts as making progress.
    pub healthy: bool,
    /// Milliseconds since its last heartbeat, `None` before the first.
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Last detail it reported (informational).
    pub detail: Option<String>,
    /// Heartbeats received.
    pub heartbeats: u64,
}

/// The petting decision for a fixed set of critical services.
#[derive(Debug)]
pub struct Supervisor {
    services: Vec<Tracked>,
    started: Instant,
    startup_grace: Duration,
    pet_interval: Duration,
    last_pet: Option<Instant>,
}

impl Supervisor {
    /// A supervisor started at `now`.
    pub fn new(
        services: Vec<CriticalService>,
        startup_grace: Duration,
        pet_interval: Duration,
        now: Instant,
    ) -> Self {
        Self {
            services: services
                .into_iter()
                .map(|service| Tracked {
                    service,
                    last_seen: None,
                    detail: None,
                    beats: 0,
                })
                .collect(),
            started: now,
            startup_grace,
            pet_interval,
            last_pet: None,
        }
    }

    /// Records a heartbeat received at `now`.
    pub fn on_heartbeat(&mut self, hb: &Heartbeat<'_>, now: Instant) -> Result<(), UnknownService> {
        let tracked = self
            .services
            .iter_mut()
            .find(|t| t.service.name == hb.service)
            .ok_or(UnknownService)?;
        tracked.last_seen = Some(now);
        tracked.beats = tracked.beats.saturating_add(1);
        tracked.detail = hb.detail.map(str::to_owned);
        Ok(())
    }

    /// The decision at `now`. Returning [`Decision::Pet`] assumes the caller pets right away.
    pub fn poll(&mut self, now: Instant) -> Decision {
        let stalled: Vec<String> = self
            .services
            .iter()
            .filter(|t| !t.healthy(now, self.started, self.startup_grace))
            .map(|t| t.service.name.clone())
            .collect();
        if !stalled.is_empty() {
            return Decision::Withhold { stalled };
        }
        match self.last_pet {
            Some(t) if now.saturating_duration_since(t) < self.pet_interval => {
                Decision::Wait(t + self.pet_interval)
            }
            _ => {
                self.last_pet = Some(now);
                Decision::Pet
            }
        }
    }

    /// The status of every service at `now`.
    pub fn status(&self, now: Instant) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|t| ServiceStatus {
                name: t.service.name.clone(),
                healthy: t.healthy(now, self.started, self.startup_grace),
                last_heartbeat_ms_ago: t.last_seen.map(|s| {
                    u64::try_from(now.saturating_duration_since(s).as_millis()).unwrap_or(u64::MAX)
                }),
                detail: t.detail.clone(),
                heartbeats: t.beats,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn sup(t0: Instant) -> Supervisor {
        Supervisor::new(
            vec![
                CriticalService {
                    name: "relay".into(),
                    deadline: 3000 * MS,
                },
                CriticalService {
                    name: "linkmon".into(),
                    deadline: 3000 * MS,
                },
            ],
            10_000 * MS,
            1000 * MS,
            t0,
        )
    }

    fn beat(s: &mut Supervisor, name: &str, detail: Option<&str>, now: Instant) {
        s.on_heartbeat(
            &Heartbeat {
                service: name,
                detail,
            },
            now,
        )
        .unwrap();
    }

    #[test]
    fn pets_at_the_interval_while_all_services_are_healthy() {
        let t0 = Instant::now();
        let mut s = sup(t0);
        let mut pets = 0;
        for step in 0..100u32 {
            let now = t0 + step * 100 * MS;
            beat(&mut s, "relay", None, now);
            beat(&mut s, "linkmon", None, now);
            if s.poll(now) == Decision::Pet {
                pets += 1;
            }
        }
        // 10 s at one pet per second, first pet immediately.
        assert_eq!(pets, 10);
    }

    #[test]
    fn stops_petting_when_one_service_stalls_past_its_deadline() {
        let t0 = Instant::now();
        let mut s = sup(t0);
        beat(&mut s, "relay", None, t0);
        beat(&mut s, "linkmon", None, t0);
        assert_eq!(s.poll(t0), Decision::Pet);
        // linkmon keeps going, relay goes silent.
        for step in 1..=30u32 {
            let now = t0 + step * 100 * MS;
            beat(&mut s, "linkmon", None, now);
            assert!(
                !matches!(s.poll(now), Decision::Withhold { .. }),
                "withheld too early at {step}"
            );
        }
        let late = t0 + 3001 * MS;
        beat(&mut s, "linkmon", None, late);
        assert_eq!(
            s.poll(late),
            Decision::Withhold {
                stalled: vec!["relay".into()]
            }
        );
        // It recovers: petting resumes at the next interval.
        let later = late + 1000 * MS;
        beat(&mut s, "relay", None, later);
        beat(&mut s, "linkmon", None, later);
        assert_eq!(s.poll(later), Decision::Pet);
    }

    #[test]
    fn uplink_loss_reported_by_linkmon_does_not_stop_petting() {
        let t0 = Instant::now();
        let mut s = sup(t0);
        let mut pets = 0;
        for step in 0..50u32 {
            let now = t0 + step * 200 * MS;
            beat(&mut s, "relay", None, now);
            beat(&mut s, "linkmon", Some("all uplinks down"), now);
            match s.poll(now) {
                Decision::Pet => pets += 1,
                Decision::Wait(_) => {}
                Decision::Withhold { stalled } => panic!("withheld for {stalled:?}"),
            }
        }
        assert_eq!(pets, 10);
        let st = s.status(t0 + 49 * 200 * MS);
        assert!(st.iter().all(|x| x.healthy));
        assert_eq!(st[1].detail.as_deref(), Some("all uplinks down"));
    }

    #[test]
    fn a_service_that_never_starts_is_stalled_after_the_startup_grace() {
        let t0 = Instant::now();
        let mut s = sup(t0);
        beat(&mut s, "linkmon", None, t0);
        assert_eq!(s.poll(t0), Decision::Pet);
        for step in 1..=10u32 {
            let now = t0 + step * 1000 * MS;
            beat(&mut s, "linkmon", None, now);
            assert_eq!(s.poll(now), Decision::Pet);
        }
        let now = t0 + 10_001 * MS;
        beat(&mut s, "linkmon", None, now);
        assert_eq!(
            s.poll(now),
            Decision::Withhold {
                stalled: vec!["relay".into()]
            }
        );
    }

    #[test]
    fn unknown_services_are_refused_and_change_nothing() {
        let t0 = Instant::now();
        let mut s = sup(t0);
        assert_eq!(
            s.on_heartbeat(
                &Heartbeat {
                    service: "intruder",
                    detail: None
                },
                t0
            ),
            Err(UnknownService)
        );
        assert!(s.status(t0).iter().all(|x| x.heartbeats == 0));
    }

    #[test]
    fn wait_names_the_next_pet() {
        let t0 = Instant::now();
        let mut s = sup(t0);
        beat(&mut s, "relay", None, t0);
        beat(&mut s, "linkmon", None, t0);
        assert_eq!(s.poll(t0), Decision::Pet);
        assert_eq!(s.poll(t0 + 10 * MS), Decision::Wait(t0 + 1000 * MS));
    }
}
