//! The read throttle: a token bucket on documents per second, shared by every reader of one side
//! (each side gets its own bucket, so `max_docs_per_second` limits the load on each server). A burst
//! of at most one second's worth is allowed. Owns no IO.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub(crate) struct Throttle {
    /// Documents per second; 0 = unlimited.
    rate: u64,
    /// (tokens available, last refill).
    bucket: Mutex<(f64, Instant)>,
}

impl Throttle {
    pub(crate) fn new(rate: u64) -> Self {
        Self {
            rate,
            bucket: Mutex::new((rate as f64, Instant::now())),
        }
    }

    /// How long to wait before `n` documents may be read (tokens are taken now; debt is allowed so
    /// a batch larger than the bucket still passes, later callers wait for it).
    fn reserve(&self, n: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let rate = self.rate as f64;
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let refill = now.saturating_duration_since(b.1).as_secs_f64() * rate;
        b.0 = (b.0 + refill).min(rate);
        b.1 = now;
        b.0 -= n as f64;
        if b.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.0 / rate)
        }
    }

    /// Waits until `n` documents may be read; `false` when cancelled meanwhile.
    pub(crate) async fn acquire(&self, n: u64, cancel: &CancellationToken) -> bool {
        let wait = self.reserve(n, Instant::now());
        if wait.is_zero() {
            return !cancel.is_cancelled();
        }
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_limits_the_rate() {
        let t = Throttle::new(100);
        let now = Instant::now();
        assert_eq!(t.reserve(100, now), Duration::ZERO);
        // The bucket is empty: 50 more documents wait half a second.
        let w = t.reserve(50, now);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
        // One second later the debt is paid and 50 tokens are back.
        assert_eq!(t.reserve(50, now + Duration::from_secs(1)), Duration::ZERO);
        assert_eq!(Throttle::new(0).reserve(1 << 40, now), Duration::ZERO);
    }
}
