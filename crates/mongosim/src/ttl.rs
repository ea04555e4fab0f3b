//! The TTL monitor: a background task that runs a TTL pass every `ttlMonitorSleepSecs`
//! (60 s by default, `Builder::ttl_monitor_interval`).
//!
//! Owns the schedule only; what a pass deletes and logs is `Store::ttl_pass` (`repl`). It
//! never runs inside a transaction's private data: passes see committed documents only and
//! skip documents an open transaction wrote.

use std::sync::Arc;
use std::time::Duration;

use crate::server::Shared;

/// One TTL pass now; returns the number of documents deleted.
pub fn run_pass(shared: &Shared) -> usize {
    let now = bson::DateTime::now().timestamp_millis();
    shared.with_store(|s| s.batch(|s| s.ttl_pass(now)))
}

/// Runs a pass every configured interval until shutdown.
pub async fn monitor(shared: Arc<Shared>) {
    let every = shared.config.ttl_interval.max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let n = run_pass(&shared);
        if n > 0 {
            tracing::debug!(deleted = n, "TTL pass");
        }
    }
}
