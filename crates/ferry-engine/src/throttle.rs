//! Live rate limits (`Throttle`): one limiter per direction (copy, apply), shared by all its workers, made
//! of two token buckets (units and bytes) that re-read the limits on every use, so a change applies at
//! once without a restart. A caller charges what a batch holds once it has it and waits until the charge
//! is paid: over time the rate is the limit whatever the batch sizes, and `batch_caps` keeps batches to
//! about 1/10 s of the limit so the flow stays smooth. A wait owed under an old limit is recomputed when
//! the limit changes, with the debt capped at `DEBT_CAP` seconds of the new limit (lifting the limit
//! forgives it), so a lowered-then-lifted or raised limit takes over within a fraction of a second.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::types::{MigrationControl, Throttle};

/// Tokens an idle bucket may save up, in seconds of its limit.
const BURST: f64 = 0.2;
/// Debt kept when the limit changes, in seconds of the new limit.
const DEBT_CAP: f64 = 0.5;
/// Batches are cut to 1/`BATCH_SHARE` of a second of the limit.
const BATCH_SHARE: u64 = 10;

/// Which limits a limiter enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Documents and bytes read from the source by the copy.
    Copy,
    /// Oplog entries and bytes written to the destination by the applier.
    Apply,
}

impl Direction {
    /// (units per second, bytes per second) of this direction; 0 = unlimited.
    fn limits(self, t: &Throttle) -> (u64, u64) {
        match self {
            Direction::Copy => (t.copy_documents_per_second, t.copy_bytes_per_second),
            Direction::Apply => (t.apply_entries_per_second, t.apply_bytes_per_second),
        }
    }
}

/// One token bucket. `avail` goes negative when a charge exceeds it (a debt); `paid` counts every token
/// credited since creation (refilled or forgiven), so a charge's ticket, the value `paid` must reach for
/// it to be paid, stays valid across limit changes. Charges are paid in order.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: u64,
    avail: f64,
    paid: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            rate: 0,
            avail: 0.0,
            paid: 0.0,
            last: now,
        }
    }

    /// Refills up to `now` at the rate in force, then adopts `limit` (0 = unlimited).
    pub(crate) fn sync(&mut self, limit: u64, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        if self.rate > 0 {
            let room = (self.rate as f64 * BURST - self.avail).max(0.0);
            let gain = (self.rate as f64 * dt).min(room);
            self.avail += gain;
            self.paid += gain;
        }
        if limit == self.rate {
            return;
        }
        self.rate = limit;
        self.cap_debt();
        self.avail = self.avail.min(limit as f64 * BURST);
    }

    /// Forgives the debt beyond `DEBT_CAP` seconds of the current limit (all of it when unlimited).
    pub(crate) fn cap_debt(&mut self) {
        let cap = self.rate as f64 * DEBT_CAP;
        let debt = -self.avail;
        if debt > cap {
            self.paid += debt - cap;
            self.avail = -cap;
        }
    }

    /// Takes `n` tokens; the ticket to wait for when that leaves a debt.
    pub(crate) fn charge(&mut self, n: u64) -> Option<f64> {
        if self.rate == 0 || n == 0 {
            return None;
        }
        self.avail -= n as f64;
        (self.avail < 0.0).then_some(self.paid - self.avail)
    }

    /// How long until `ticket` is paid at the current rate; `None` when it is (or the bucket is unlimited).
    pub(crate) fn wait(&self, ticket: f64) -> Option<Duration> {
        if self.rate == 0 {
            return None;
        }
        let secs = (ticket - self.paid) / self.rate as f64;
        (secs > 0.000_5).then(|| Duration::from_secs_f64(secs))
    }
}

/// The shared limiter of one direction.
#[derive(Debug)]
pub(crate) struct Limiter {
    control: MigrationControl,
    dir: Direction,
    /// (units, bytes).
    buckets: Mutex<(Bucket, Bucket)>,
}

/// `max` cut to 1/`BATCH_SHARE` of `limit` per second (at least 1); `max` when unlimited.
fn share(limit: u64, max: usize) -> usize {
    let max = max.max(1);
    if limit == 0 {
        return max;
    }
    usize::try_from(limit / BATCH_SHARE)
        .unwrap_or(usize::MAX)
        .clamp(1, max)
}

impl Limiter {
    pub(crate) fn new(control: MigrationControl, dir: Direction) -> Self {
        let now = Instant::now();
        Self {
            control,
            dir,
            buckets: Mutex::new((Bucket::new(now), Bucket::new(now))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Bucket, Bucket)> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Batch bounds `(count, bytes)`: about 1/10 s of the current limits, within `max_count` and
    /// `max_bytes` (those when unlimited).
    pub(crate) fn batch_caps(&self, max_count: usize, max_bytes: usize) -> (usize, usize) {
        self.caps(&self.control.throttle(), max_count, max_bytes)
    }

    /// A receiver of the limits, for a reader that must notice a change in the middle of a batch.
    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<Throttle> {
        self.control.throttle_watch()
    }

    /// `batch_caps` for the limits in `rx`, marking them seen.
    pub(crate) fn seen_caps(
        &self,
        rx: &mut tokio::sync::watch::Receiver<Throttle>,
        max_count: usize,
        max_bytes: usize,
    ) -> (usize, usize) {
        let t = *rx.borrow_and_update();
        self.caps(&t, max_count, max_bytes)
    }

    fn caps(&self, t: &Throttle, max_count: usize, max_bytes: usize) -> (usize, usize) {
        let (units, bytes) = self.dir.limits(t);
        (share(units, max_count), share(bytes, max_bytes))
    }

    /// Charges a batch of `units` holding `bytes` and waits until the limits allow it. `stale`: the
    /// batch was gathered under limits that changed since; like any debt from before a change, what
    /// it owes is capped to `DEBT_CAP` of the new limits. Returns `false` when `cancel` fired first.
    pub(crate) async fn charge(
        &self,
        units: u64,
        bytes: u64,
        stale: bool,
        cancel: &CancellationToken,
    ) -> bool {
        let mut rx = self.control.throttle_watch();
        let tickets = {
            let (lu, lb) = self.dir.limits(&rx.borrow_and_update());
            let now = Instant::now();
            let mut b = self.lock();
            b.0.sync(lu, now);
            b.1.sync(lb, now);
            let tickets = (b.0.charge(units), b.1.charge(bytes));
            if stale {
                b.0.cap_debt();
                b.1.cap_debt();
            }
            tickets
        };
        if tickets == (None, None) {
            return !cancel.is_cancelled();
        }
        loop {
            let wait = {
                let (lu, lb) = self.dir.limits(&rx.borrow_and_update());
                let now = Instant::now();
                let mut b = self.lock();
                b.0.sync(lu, now);
                b.1.sync(lb, now);
                let wu = tickets.0.and_then(|t| b.0.wait(t));
                let wb = tickets.1.and_then(|t| b.1.wait(t));
                wu.max(wb)
            };
            let Some(wait) = wait else {
                return !cancel.is_cancelled();
            };
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
                // A new limit: recompute the wait (the sender lives as long as the control).
                Ok(()) = rx.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Charges batches of `batch` for `secs` simulated seconds, advancing time by each wait; the rate.
    fn simulate(
        b: &mut Bucket,
        limit: u64,
        batch: u64,
        start: Instant,
        secs: f64,
    ) -> (f64, Instant) {
        let mut now = start;
        let mut total = 0u64;
        let end = start + Duration::from_secs_f64(secs);
        while now < end {
            b.sync(limit, now);
            if let Some(t) = b.charge(batch) {
                if let Some(w) = b.wait(t) {
                    now += w;
                    b.sync(limit, now);
                }
            }
            assert!(b.charge(0).is_none());
            total += batch;
            // The caller's own work between batches.
            now += Duration::from_millis(1);
        }
        (total as f64 / now.duration_since(start).as_secs_f64(), now)
    }

    #[test]
    fn a_bucket_holds_its_limit_whatever_the_batch_size() {
        let t0 = Instant::now();
        for (limit, batch) in [(1000, 100), (1000, 7), (1000, 2500), (50, 1)] {
            let mut b = Bucket::new(t0);
            let (rate, _) = simulate(&mut b, limit, batch, t0, 60.0);
            let want = limit as f64;
            assert!(
                (rate - want).abs() / want < 0.05,
                "limit {limit} batch {batch}: rate {rate}"
            );
        }
    }

    #[test]
    fn an_unlimited_bucket_never_waits() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.sync(0, t0);
        assert_eq!(b.charge(1_000_000), None);
    }

    #[test]
    fn a_limit_change_takes_effect_at_once_even_after_a_large_debt() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.sync(10, t0);
        // 1000 units under 10/s: 100 s of debt.
        let ticket = b.charge(1000).unwrap();
        let owed = b.wait(ticket).unwrap();
        assert!(owed > Duration::from_secs(99), "{owed:?}");
        // Raised to 1000/s: at most DEBT_CAP seconds of the new limit remain.
        let t1 = t0 + Duration::from_millis(100);
        b.sync(1000, t1);
        let owed = b.wait(ticket).unwrap();
        assert!(owed <= Duration::from_millis(500), "{owed:?}");
        // Lowered again to 1/s: the debt is capped to 0.5 s of that, not 500 s.
        b.sync(1, t1);
        let owed = b.wait(ticket).unwrap_or_default();
        assert!(owed <= Duration::from_millis(500), "{owed:?}");
        // Lifted: nothing is owed any more, and new charges pass.
        b.sync(0, t1);
        assert_eq!(b.wait(ticket), None);
        assert_eq!(b.charge(1_000_000), None);
        // Limited again: the old debt is gone, a new charge owes only its own share.
        b.sync(100, t1);
        let t = b.charge(50).unwrap();
        let owed = b.wait(t).unwrap();
        assert!(
            owed > Duration::from_millis(400) && owed <= Duration::from_millis(500),
            "{owed:?}"
        );
    }

    #[test]
    fn charges_are_paid_in_order() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        b.sync(100, t0);
        let first = b.charge(10).unwrap();
        let second = b.charge(10).unwrap();
        let w1 = b.wait(first).unwrap();
        let w2 = b.wait(second).unwrap();
        assert!((w1.as_secs_f64() - 0.1).abs() < 0.01, "{w1:?}");
        assert!((w2.as_secs_f64() - 0.2).abs() < 0.01, "{w2:?}");
        b.sync(100, t0 + Duration::from_millis(150));
        assert_eq!(b.wait(first), None);
        assert!(b.wait(second).is_some());
    }

    #[test]
    fn batches_are_a_tenth_of_a_second_of_the_limit() {
        assert_eq!(share(0, 10_000), 10_000);
        assert_eq!(share(1000, 10_000), 100);
        assert_eq!(share(5, 10_000), 1);
        assert_eq!(share(1 << 40, 10_000), 10_000);
        assert_eq!(share(1000, 0), 1);
    }

    #[tokio::test]
    async fn lifting_the_limit_releases_a_waiting_charge() {
        let control = MigrationControl::new();
        control.set_throttle(Throttle {
            copy_documents_per_second: 1,
            ..Throttle::default()
        });
        let limiter = std::sync::Arc::new(Limiter::new(control.clone(), Direction::Copy));
        assert_eq!(limiter.batch_caps(10_000, 1 << 20), (1, 1 << 20));
        let cancel = CancellationToken::new();
        let waiting = {
            let (limiter, cancel) = (limiter.clone(), cancel.clone());
            tokio::spawn(async move { limiter.charge(100, 0, false, &cancel).await })
        };
        // 100 documents at 1/s: the charge waits (~100 s) until the limit is lifted.
        for _ in 0..1000 {
            if limiter.lock().0.avail < 0.0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(limiter.lock().0.avail < 0.0, "the charge was not taken");
        assert!(!waiting.is_finished());
        let lifted = Instant::now();
        control.set_throttle(Throttle::default());
        let done = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(done);
        assert!(lifted.elapsed() < Duration::from_millis(500));
        // The apply direction was never limited.
        let apply = Limiter::new(control, Direction::Apply);
        assert!(apply.charge(1 << 30, 1 << 40, false, &cancel).await);
    }

    #[tokio::test]
    async fn a_waiting_charge_ends_on_cancel() {
        let control = MigrationControl::with_throttle(Throttle {
            apply_bytes_per_second: 1,
            ..Throttle::default()
        });
        let limiter = Limiter::new(control, Direction::Apply);
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!limiter.charge(1, 1000, false, &cancel).await);
    }

    #[tokio::test]
    async fn a_batch_gathered_under_an_old_limit_owes_at_most_half_a_second() {
        let control = MigrationControl::new();
        let limiter = Limiter::new(control.clone(), Direction::Copy);
        let mut rx = limiter.watch();
        assert_eq!(
            limiter.seen_caps(&mut rx, 10_000, 1 << 20),
            (10_000, 1 << 20)
        );
        control.set_throttle(Throttle {
            copy_documents_per_second: 1000,
            ..Throttle::default()
        });
        assert!(rx.has_changed().unwrap());
        assert_eq!(limiter.seen_caps(&mut rx, 10_000, 1 << 20), (100, 1 << 20));
        let cancel = CancellationToken::new();
        let started = Instant::now();
        // 5000 documents read unthrottled: 0.5 s at the new limit, not 5 s.
        assert!(limiter.charge(5000, 0, true, &cancel).await);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
            "{took:?}"
        );
    }
}
