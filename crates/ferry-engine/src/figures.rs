//! The derived figures of a progress report: moving rates over the last `RATE_WINDOW`, and the
//! estimates computed from them (copy ETAs, catch-up ETA, spool-full ETA). Pure arithmetic, no IO.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::types::{Phase, ProgressSnapshot};

/// The window of every rate in a progress report.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A moving rate: the change of a value over the samples of the last `window`.
#[derive(Debug)]
pub(crate) struct RateWindow {
    window: Duration,
    samples: VecDeque<(Instant, f64)>,
}

impl RateWindow {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records `value` at `at` (samples come in time order) and forgets those older than the window.
    pub(crate) fn push(&mut self, at: Instant, value: f64) {
        self.samples.push_back((at, value));
        while let Some((t, _)) = self.samples.front() {
            if at.saturating_duration_since(*t) > self.window {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Change per second between the oldest and newest sample in the window (0 with fewer than two);
    /// negative when the value shrank.
    pub(crate) fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, v0)), Some((t1, v1))) => {
                let dt = t1.saturating_duration_since(*t0).as_secs_f64();
                if dt < 1e-3 {
                    0.0
                } else {
                    (v1 - v0) / dt
                }
            }
            _ => 0.0,
        }
    }
}

/// Seconds to do `remaining` at `rate` per second: `Some(0)` when nothing remains, `None` without a rate.
pub(crate) fn time_left(remaining: u64, rate: f64) -> Option<u64> {
    if remaining == 0 {
        Some(0)
    } else if rate > 0.0 && rate.is_finite() {
        Some((remaining as f64 / rate).ceil() as u64)
    } else {
        None
    }
}

/// `(catch_up_eta_seconds, converging)`: with `pending` entries read but not applied, entries applied at
/// `apply_rate` and arriving at `source_rate` per second.
pub(crate) fn catch_up(pending: u64, apply_rate: f64, source_rate: f64) -> (Option<u64>, bool) {
    if pending == 0 {
        return (Some(0), true);
    }
    let gain = apply_rate - source_rate;
    if gain > 0.0 && gain.is_finite() {
        (Some((pending as f64 / gain).ceil() as u64), true)
    } else {
        (None, false)
    }
}

/// Seconds until a spool holding `bytes` reaches `cap` while growing by `growth` bytes per second.
pub(crate) fn spool_full(cap: u64, bytes: u64, growth: f64) -> Option<u64> {
    (growth > 0.0 && growth.is_finite())
        .then(|| (cap.saturating_sub(bytes) as f64 / growth).floor() as u64)
}

/// The rates a progress report is derived from (per second, over `RATE_WINDOW`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Rates {
    pub docs: f64,
    pub bytes: f64,
    pub applied: f64,
    pub read: f64,
    /// Change of the spool's size (negative while it drains).
    pub spool: f64,
    /// Per collection, in plan order: (documents, bytes) copied per second.
    pub collections: Vec<(f64, f64)>,
}

/// Fills the rate-derived fields of `snap` from `rates`.
pub(crate) fn derive(snap: &mut ProgressSnapshot, rates: &Rates) {
    snap.documents_per_second = rates.docs.max(0.0);
    snap.bytes_per_second = rates.bytes.max(0.0);
    snap.apply_entries_per_second = rates.applied.max(0.0);
    snap.source_entries_per_second = rates.read.max(0.0);
    snap.eta_seconds = match snap.phase {
        Phase::DataSync => copy_left(
            snap.documents_estimated
                .saturating_sub(snap.documents_copied),
            snap.documents_per_second,
            snap.bytes_estimated,
            snap.bytes_copied,
            snap.bytes_per_second,
        ),
        _ => Some(0),
    };
    for (i, c) in snap.collections.iter_mut().enumerate() {
        let (docs, bytes) = rates.collections.get(i).copied().unwrap_or_default();
        c.eta_seconds = if c.done {
            Some(0)
        } else {
            copy_left(
                c.documents_estimated.saturating_sub(c.documents_copied),
                docs.max(0.0),
                c.bytes_estimated,
                c.bytes_copied,
                bytes.max(0.0),
            )
            // Not done: never claim it is.
            .map(|s| s.max(1))
        };
    }
    let pending = snap
        .oplog_entries_read
        .saturating_sub(snap.oplog_entries_applied);
    let (eta, converging) = catch_up(
        pending,
        snap.apply_entries_per_second,
        snap.source_entries_per_second,
    );
    snap.catch_up_eta_seconds = eta;
    snap.converging = converging;
    snap.spool_full_eta_seconds = spool_full(snap.spool_cap_bytes, snap.spool_bytes, rates.spool);
}

/// Copy time left: by bytes when the size is known, else by documents.
fn copy_left(
    docs_left: u64,
    docs_rate: f64,
    bytes_estimated: u64,
    bytes_copied: u64,
    bytes_rate: f64,
) -> Option<u64> {
    if bytes_estimated > 0 && bytes_rate > 0.0 {
        time_left(bytes_estimated.saturating_sub(bytes_copied), bytes_rate)
    } else {
        time_left(docs_left, docs_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_moving_rate_covers_the_window_only() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(Duration::from_secs(10));
        assert_eq!(w.rate(), 0.0);
        w.push(t0, 0.0);
        assert_eq!(w.rate(), 0.0);
        // 1000/s for 20 s.
        for s in 1..=20 {
            w.push(at(t0, s * 1000), (s * 1000) as f64);
        }
        assert!((w.rate() - 1000.0).abs() < 1e-6, "{}", w.rate());
        // Then nothing for 5 s: the rate halves (a whole-run average would barely move).
        for s in 21..=25 {
            w.push(at(t0, s * 1000), 20_000.0);
        }
        assert!((w.rate() - 500.0).abs() < 1e-6, "{}", w.rate());
        // 10 s without change: 0, not a slow decay.
        for s in 26..=30 {
            w.push(at(t0, s * 1000), 20_000.0);
        }
        assert_eq!(w.rate(), 0.0);
    }

    #[test]
    fn a_moving_rate_follows_changes_within_the_window() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(Duration::from_secs(10));
        let mut v = 0.0;
        for step in 0..100u64 {
            // 100/s, then 1000/s from 20 s on (samples every 200 ms).
            v += if step < 100 { 20.0 } else { 200.0 };
            w.push(at(t0, step * 200), v);
        }
        assert!((w.rate() - 100.0).abs() < 1.0, "{}", w.rate());
        for step in 100..200u64 {
            v += 200.0;
            w.push(at(t0, step * 200), v);
        }
        assert!((w.rate() - 1000.0).abs() < 1.0, "{}", w.rate());
        // A shrinking value gives a negative rate (the spool draining).
        let mut s = RateWindow::new(Duration::from_secs(10));
        s.push(t0, 1000.0);
        s.push(at(t0, 2000), 0.0);
        assert!((s.rate() + 500.0).abs() < 1e-6);
    }

    #[test]
    fn catch_up_needs_the_applier_to_outrun_the_source() {
        assert_eq!(catch_up(0, 0.0, 500.0), (Some(0), true));
        assert_eq!(catch_up(1000, 600.0, 500.0), (Some(10), true));
        assert_eq!(catch_up(1001, 600.0, 500.0), (Some(11), true));
        assert_eq!(catch_up(1000, 500.0, 500.0), (None, false));
        assert_eq!(catch_up(1000, 100.0, 500.0), (None, false));
        assert_eq!(catch_up(1000, 0.0, 0.0), (None, false));
        assert_eq!(catch_up(1000, 2000.0, 0.0), (Some(1), true));
    }

    #[test]
    fn spool_full_only_when_growing() {
        assert_eq!(spool_full(1000, 200, 100.0), Some(8));
        assert_eq!(spool_full(1000, 200, 0.0), None);
        assert_eq!(spool_full(1000, 200, -50.0), None);
        assert_eq!(spool_full(1000, 1200, 10.0), Some(0));
        assert_eq!(spool_full(8 << 30, 0, f64::NAN), None);
    }

    #[test]
    fn time_left_rounds_up_and_knows_done() {
        assert_eq!(time_left(0, 0.0), Some(0));
        assert_eq!(time_left(10, 0.0), None);
        assert_eq!(time_left(10, 4.0), Some(3));
        assert_eq!(time_left(10, f64::INFINITY), None);
    }

    fn snapshot() -> ProgressSnapshot {
        ProgressSnapshot {
            phase: Phase::DataSync,
            collections: vec![
                crate::types::CollectionProgress {
                    namespace: "a.done".into(),
                    documents_copied: 10,
                    documents_estimated: 10,
                    bytes_copied: 100,
                    bytes_estimated: 100,
                    ranges_total: 1,
                    ranges_done: 1,
                    done: true,
                    eta_seconds: None,
                },
                crate::types::CollectionProgress {
                    namespace: "a.busy".into(),
                    documents_copied: 1000,
                    documents_estimated: 5000,
                    bytes_copied: 100_000,
                    bytes_estimated: 500_000,
                    ranges_total: 4,
                    ranges_done: 1,
                    done: false,
                    eta_seconds: None,
                },
                crate::types::CollectionProgress {
                    namespace: "a.queued".into(),
                    documents_estimated: 50,
                    bytes_estimated: 0,
                    ranges_total: 1,
                    ..Default::default()
                },
            ],
            documents_copied: 1010,
            documents_estimated: 5060,
            bytes_copied: 100_100,
            bytes_estimated: 500_100,
            documents_per_second: 0.0,
            bytes_per_second: 0.0,
            eta_seconds: None,
            indexes_built: 0,
            indexes_total: 0,
            last_applied: None,
            source_newest: None,
            lag_seconds: 0.0,
            oplog_entries_applied: 100,
            spool_bytes: 1000,
            spool_cap_bytes: 11_000,
            apply_entries_per_second: 0.0,
            source_entries_per_second: 0.0,
            oplog_entries_read: 400,
            catch_up_eta_seconds: None,
            converging: false,
            spool_full_eta_seconds: None,
            oplog_headroom_seconds: None,
            paused: false,
            retries: 0,
        }
    }

    #[test]
    fn derived_figures_use_the_recent_rates() {
        let mut s = snapshot();
        derive(&mut s, &Rates::default());
        assert_eq!(s.eta_seconds, None);
        assert_eq!(s.collections[0].eta_seconds, Some(0));
        assert_eq!(s.collections[1].eta_seconds, None);
        assert_eq!((s.catch_up_eta_seconds, s.converging), (None, false));
        assert_eq!(s.spool_full_eta_seconds, None);

        let rates = Rates {
            docs: 100.0,
            bytes: 10_000.0,
            applied: 50.0,
            read: 20.0,
            spool: 500.0,
            collections: vec![(0.0, 0.0), (100.0, 10_000.0), (0.0, 0.0)],
        };
        derive(&mut s, &rates);
        assert_eq!(s.documents_per_second, 100.0);
        assert_eq!(s.apply_entries_per_second, 50.0);
        assert_eq!(s.source_entries_per_second, 20.0);
        // 400_000 bytes left at 10 kB/s.
        assert_eq!(s.eta_seconds, Some(40));
        assert_eq!(s.collections[1].eta_seconds, Some(40));
        assert_eq!(s.collections[2].eta_seconds, None);
        // 300 pending, gaining 30/s.
        assert_eq!((s.catch_up_eta_seconds, s.converging), (Some(10), true));
        // 10_000 bytes of room at 500 B/s.
        assert_eq!(s.spool_full_eta_seconds, Some(20));

        s.phase = Phase::OplogSync;
        derive(&mut s, &Rates::default());
        assert_eq!(s.eta_seconds, Some(0));
        assert_eq!(s.documents_per_second, 0.0);
    }
}
