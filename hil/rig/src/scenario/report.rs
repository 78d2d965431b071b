//! Percentiles, the side-by-side table, the targets as PASS/FAIL, and the JSON file.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::checks::{BothDownCheck, LossCheck};
use super::media::Direction;
use super::trial::{DirectionResult, Mode, Monitor, TrialResult};

/// p50/p99/max of a sample (nearest rank; with 20 trials p99 is the largest value).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Summary {
    /// Values in the sample.
    pub n: usize,
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

/// Nearest-rank percentiles of `values` (NaNs ignored).
pub fn summarize(mut values: Vec<f64>) -> Summary {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        values.get(idx).copied()
    };
    Summary {
        n: values.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: values.last().copied(),
    }
}

/// One metric of one mode, direction and monitor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Failure mode.
    pub mode: Mode,
    /// Direction key.
    pub direction: &'static str,
    /// Monitor.
    pub monitor: Monitor,
    /// Fault in effect → decided.
    pub detect_ms: Summary,
    /// Decided → route replaced.
    pub switch_ms: Summary,
    /// Media gap.
    pub gap_ms: Summary,
    /// Trials run.
    pub trials: usize,
    /// Trials with an error (no switch, media not back, no failback).
    pub failed_trials: usize,
}

/// A target of the issue, judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// What.
    pub name: String,
    /// The requirement.
    pub requirement: String,
    /// The measured value.
    pub measured: String,
    /// Met.
    pub pass: bool,
}

/// Everything one benchmark invocation produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Trials per mode and monitor.
    pub trials_per_mode: u32,
    /// linkmon's hold-down, ms.
    pub hold_down_ms: u64,
    /// linkmon's tuning, as text.
    pub linkmon_tuning: String,
    /// Per mode, direction and monitor.
    pub rows: Vec<Row>,
    /// The 2 % loss check (absent with --quick).
    pub loss: Option<LossCheck>,
    /// Both uplinks down and back.
    pub both_down: Option<BothDownCheck>,
    /// Shortest recovery → failback over linkmon's trials, ms.
    pub min_failback_after_ms: Option<f64>,
    /// The targets.
    pub targets: Vec<Target>,
    /// Every trial.
    pub trials: Vec<TrialResult>,
}

/// Picks one metric out of a row.
type MetricOf = fn(&Row) -> &Summary;

fn rows_for(trials: &[TrialResult]) -> Vec<Row> {
    let mut rows = Vec::new();
    for mode in Mode::ALL {
        for dir in Direction::ALL {
            for monitor in [Monitor::Linkmon, Monitor::FrrBfdd] {
                let set: Vec<&DirectionResult> = trials
                    .iter()
                    .filter(|t| t.mode == mode && t.monitor == monitor)
                    .map(|t| t.direction(dir))
                    .collect();
                if set.is_empty() {
                    continue;
                }
                let failed = trials
                    .iter()
                    .filter(|t| t.mode == mode && t.monitor == monitor && t.error.is_some())
                    .count();
                rows.push(Row {
                    mode,
                    direction: dir.key(),
                    monitor,
                    detect_ms: summarize(set.iter().filter_map(|d| d.detect_ms).collect()),
                    switch_ms: summarize(set.iter().filter_map(|d| d.switch_ms).collect()),
                    gap_ms: summarize(set.iter().map(|d| d.gap_ms).collect()),
                    trials: set.len(),
                    failed_trials: failed,
                });
            }
        }
    }
    rows
}

fn find(rows: &[Row], mode: Mode, dir: Direction, monitor: Monitor) -> Option<&Row> {
    rows.iter()
        .find(|r| r.mode == mode && r.direction == dir.key() && r.monitor == monitor)
}

fn gap_target(rows: &[Row], mode: Mode, dir: Direction, limit: f64) -> Option<Target> {
    let row = find(rows, mode, dir, Monitor::Linkmon)?;
    let p99 = row.gap_ms.p99;
    Some(Target {
        name: format!("{} {} media gap p99", mode.name(), dir.label()),
        requirement: format!("≤ {limit} ms"),
        measured: p99.map_or("no data".into(), |v| {
            format!("{v:.0} ms (n={})", row.gap_ms.n)
        }),
        pass: p99.is_some_and(|v| v <= limit) && row.failed_trials == 0,
    })
}

impl Report {
    /// Builds the report and judges the targets.
    pub fn new(
        trials: Vec<TrialResult>,
        trials_per_mode: u32,
        hold_down: Duration,
        linkmon_tuning: String,
        loss: Option<LossCheck>,
        both_down: Option<BothDownCheck>,
    ) -> Report {
        let rows = rows_for(&trials);
        let hold_down_ms = u64::try_from(hold_down.as_millis()).unwrap_or(u64::MAX);
        let failbacks: Vec<f64> = trials
            .iter()
            .filter(|t| t.monitor == Monitor::Linkmon)
            .filter_map(|t| t.failback_after_ms)
            .collect();
        let min_failback_after_ms = failbacks.iter().copied().reduce(f64::min);
        let mut targets = Vec::new();
        targets.extend(gap_target(
            &rows,
            Mode::Blackhole,
            Direction::AppToCore,
            100.0,
        ));
        targets.extend(gap_target(
            &rows,
            Mode::CarrierLoss,
            Direction::AppToCore,
            10.0,
        ));
        for mode in Mode::ALL {
            for dir in Direction::ALL {
                targets.extend(gap_target(&rows, mode, dir, 200.0));
            }
        }
        if let Some(l) = &loss {
            targets.push(Target {
                name: format!("failovers during {} s of {} % loss", l.seconds, l.percent),
                requirement: "0".into(),
                measured: l.failovers.to_string(),
                pass: l.pass,
            });
        }
        targets.push(Target {
            name: "failback only after the hold-down".into(),
            requirement: format!("recovery → failback ≥ {hold_down_ms} ms in every trial"),
            measured: min_failback_after_ms.map_or("no failback seen".into(), |v| {
                format!("min {v:.0} ms over {} failbacks", failbacks.len())
            }),
            pass: min_failback_after_ms.is_some_and(|v| v >= hold_down_ms as f64),
        });
        if let Some(b) = &both_down {
            targets.push(Target {
                name: "both uplinks down and back".into(),
                requirement: "services alive, ≤ 1 switch while down, ≤ 1 after, media resumes"
                    .into(),
                measured: format!(
                    "alive={} switches down/after={}/{} media resumed {}",
                    b.services_alive,
                    b.switches_while_down,
                    b.switches_after,
                    b.media_resumed_ms
                        .map_or("never".into(), |v| format!("{v:.0} ms after recovery"))
                ),
                pass: b.pass,
            });
        }
        Report {
            trials_per_mode,
            hold_down_ms,
            linkmon_tuning,
            rows,
            loss,
            both_down,
            min_failback_after_ms,
            targets,
            trials,
        }
    }

    /// True when every target passed.
    pub fn all_pass(&self) -> bool {
        self.targets.iter().all(|t| t.pass)
    }

    /// The human-readable tables.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let cell = |m: &Summary| match (m.p50, m.p99, m.max) {
            (Some(a), Some(b), Some(c)) => format!("{a:6.1} {b:6.1} {c:6.1}"),
            _ => format!("{:>20}", "—"),
        };
        let _ = writeln!(
            s,
            "\nFailover benchmark: {} trials per mode, 50 packets/s RTP each way through popd relay.\n\
             Times in ms as p50 p99 max (nearest rank: with 20 trials p99 = max). detect = fault in \
             effect → switch decided;\nswitch = decided → route replaced; gap = longest run of lost \
             packets × 20 ms. app→core is moved by the appliance's monitor,\ncore→app by the rig's \
             upstream (FRR bfdd 50 ms × 3 in carriers and core, route follower in core).\n\
             linkmon: {}",
            self.trials_per_mode, self.linkmon_tuning
        );
        let _ = writeln!(
            s,
            "\n{:<13} {:<9} {:<7} | {:^20} | {:^20} | trials ok",
            "mode", "direction", "metric", "popd linkmon", "FRR bfdd (reference)"
        );
        let _ = writeln!(s, "{}", "-".repeat(100));
        for mode in Mode::ALL {
            for dir in Direction::ALL {
                let ours = find(&self.rows, mode, dir, Monitor::Linkmon);
                let frr = find(&self.rows, mode, dir, Monitor::FrrBfdd);
                if ours.is_none() && frr.is_none() {
                    continue;
                }
                let metrics: [(&str, MetricOf); 3] = [
                    ("detect", |r| &r.detect_ms),
                    ("switch", |r| &r.switch_ms),
                    ("gap", |r| &r.gap_ms),
                ];
                for (i, (name, get)) in metrics.into_iter().enumerate() {
                    let c =
                        |r: Option<&Row>| r.map_or(format!("{:>20}", "not run"), |r| cell(get(r)));
                    let ok = |r: Option<&Row>| {
                        r.map_or("-".into(), |r| {
                            format!("{}/{}", r.trials - r.failed_trials, r.trials)
                        })
                    };
                    let (m, d, okcol) = if i == 0 {
                        (
                            mode.name(),
                            dir.label(),
                            format!("{} | {}", ok(ours), ok(frr)),
                        )
                    } else {
                        ("", "", String::new())
                    };
                    let _ = writeln!(
                        s,
                        "{m:<13} {d:<9} {name:<7} | {} | {} | {okcol}",
                        c(ours),
                        c(frr)
                    );
                }
            }
        }
        // One line per monitor, mode and problem, with how many trials had it.
        let mut problems: Vec<(Monitor, Mode, &str, usize)> = Vec::new();
        for t in &self.trials {
            let Some(e) = t.error.as_deref() else {
                continue;
            };
            match problems
                .iter_mut()
                .find(|p| p.0 == t.monitor && p.1 == t.mode && p.2 == e)
            {
                Some(p) => p.3 += 1,
                None => problems.push((t.monitor, t.mode, e, 1)),
            }
        }
        if !problems.is_empty() {
            let _ = writeln!(s, "\nTrials with problems:");
            for (monitor, mode, e, n) in problems {
                let _ = writeln!(s, "  {} {} ({n} trials): {e}", monitor.name(), mode.name());
            }
        }
        if let Some(l) = &self.loss {
            let _ = writeln!(
                s,
                "\n{} % loss on the primary for {} s: {} linkmon failovers, {} core route changes; \
                 app→core {}/{} received, core→app {}/{} received",
                l.percent,
                l.seconds,
                l.failovers,
                l.core_route_changes,
                l.app_to_core.received,
                l.app_to_core.sent,
                l.core_to_app.received,
                l.core_to_app.sent
            );
        }
        let _ = writeln!(s, "\nTargets (issue 3, popd linkmon):");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "  [{}] {}: {} (required {})",
                if t.pass { "PASS" } else { "FAIL" },
                t.name,
                t.measured,
                t.requirement
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = summarize((1..=20).map(f64::from).collect());
        assert_eq!(
            (s.n, s.p50, s.p99, s.max),
            (20, Some(10.0), Some(20.0), Some(20.0))
        );
        let s = summarize((1..=200).map(f64::from).collect());
        assert_eq!(s.p99, Some(198.0));
        let s = summarize(vec![]);
        assert_eq!((s.n, s.p50), (0, None));
    }
}
