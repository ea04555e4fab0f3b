//! Capped exponential backoff with full jitter for reconnecting to the coordinator.
//!
//! Owns only the arithmetic of the delays; it must not sleep or do IO itself (the session loop does).

use std::time::Duration;

use rand::Rng;

/// Delay policy: attempt `n` (0-based) waits a random duration in `[base/2, base]` where
/// `base = min(max, initial * 2^n)`. Half-jitter keeps a lower bound so a fleet of agents does not hammer a
/// coordinator that just restarted, while still spreading them out.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A policy starting at `initial` and never exceeding `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay (jittered); advances the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let lower = ceiling / 2;
        let spread = ceiling.saturating_sub(lower).as_millis() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..=spread)
        };
        lower + Duration::from_millis(jitter)
    }

    /// Back to the initial delay, after a session that was established.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_and_are_capped() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut previous_ceiling = Duration::ZERO;
        for attempt in 0..40 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(
                delay <= ceiling,
                "attempt {attempt}: {delay:?} > {ceiling:?}"
            );
            assert!(
                delay >= ceiling / 2,
                "attempt {attempt}: {delay:?} < half of {ceiling:?}"
            );
            assert!(ceiling >= previous_ceiling);
            assert!(ceiling <= Duration::from_secs(2));
            previous_ceiling = ceiling;
        }
        assert_eq!(previous_ceiling, Duration::from_secs(2));
    }

    #[test]
    fn reset_restarts_from_initial() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        for _ in 0..5 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), Duration::from_millis(3200));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay())
            .collect();
        assert!(delays.len() > 1, "no jitter: {delays:?}");
    }
}
