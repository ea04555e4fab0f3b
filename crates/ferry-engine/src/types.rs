//! Public configuration, progress and checkpoint types of the engine (the binding API the agent codes
//! against). Plain data only: no IO, no driver calls.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::Timestamp;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::EngineError;

/// A MongoDB endpoint. Credentials are set on `ClientOptions`, never put into the URI string.
#[derive(Clone, Default)]
pub struct Endpoint {
    pub uri: String,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("uri", &self.uri)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Performance knobs.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Ranges copied concurrently.
    pub copy_workers: usize,
    /// Target documents per `_id` range; collections larger than this are split.
    pub docs_per_range: u64,
    /// Oplog apply workers (entries are partitioned by hash of namespace and `_id`).
    pub apply_workers: usize,
    /// Maximum time between two checkpoints during OPLOG_SYNC.
    pub checkpoint_interval: Duration,
    /// Maximum time between two progress events.
    pub progress_interval: Duration,
    /// Cap of the on-disk oplog spool; reaching it fails the task.
    pub spool_cap_bytes: u64,
    /// How long transient failures (network, server selection, primary changes, retryable labels)
    /// are retried without progress before the task fails with a resumable `Unavailable` error.
    /// Counted from the last progress of the failing operation. Must be greater than zero.
    pub retry_budget: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            copy_workers: 8,
            docs_per_range: 100_000,
            apply_workers: 8,
            checkpoint_interval: Duration::from_secs(2),
            progress_interval: Duration::from_millis(500),
            spool_cap_bytes: 8 << 30,
            retry_budget: Duration::from_secs(120),
        }
    }
}

impl Tuning {
    /// Checks the knobs that have no safe reading when out of range (`run_migration` calls it).
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.retry_budget.is_zero() {
            return Err(EngineError::Config(
                "tuning.retry_budget is 0: it must be greater than zero (default 120s); it is how long \
                 transient failures are retried without progress before the task fails"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Everything one migration needs.
#[derive(Clone, Debug)]
pub struct MigrationConfig {
    pub task_id: String,
    pub source: Endpoint,
    pub destination: Endpoint,
    /// Databases to migrate; empty means every non-system database.
    pub databases: Vec<String>,
    /// Directory for the oplog spool (inside the agent's data dir).
    pub spool_dir: PathBuf,
    pub tuning: Tuning,
}

/// An oplog timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpTime {
    pub seconds: u32,
    pub increment: u32,
}

impl OpTime {
    pub(crate) fn from_ts(ts: Timestamp) -> Self {
        Self {
            seconds: ts.time,
            increment: ts.increment,
        }
    }
    pub(crate) fn to_ts(self) -> Timestamp {
        Timestamp {
            time: self.seconds,
            increment: self.increment,
        }
    }
}

impl fmt::Display for OpTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}, {})", self.seconds, self.increment)
    }
}

/// Migration phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    DataSync,
    IndexCreation,
    OplogSync,
}

/// Durable resume point; `engine_state` is engine-private JSON (`{"v":1,...}`).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub phase: Phase,
    pub start_ts: Option<OpTime>,
    pub last_applied: Option<OpTime>,
    pub engine_state: Vec<u8>,
}

/// Copy progress of one collection.
#[derive(Clone, Debug, Default)]
pub struct CollectionProgress {
    pub namespace: String,
    pub documents_copied: u64,
    pub documents_estimated: u64,
    pub bytes_copied: u64,
    pub bytes_estimated: u64,
    pub ranges_total: u32,
    pub ranges_done: u32,
    pub done: bool,
    /// Seconds until this collection is copied: what is left of it (bytes, or documents when its size
    /// is unknown) at its own copy rate over the last 10 s. `Some(0)` when done; `None` while it is not
    /// being copied (queued, paused) or its rate is not known yet.
    pub eta_seconds: Option<u64>,
}

/// A progress report. Rates are measured over the last 10 s, so they fall to 0 within
/// that time once the work they measure stops.
#[derive(Clone, Debug, Default)]
pub struct ProgressSnapshot {
    pub phase: Phase,
    pub collections: Vec<CollectionProgress>,
    pub documents_copied: u64,
    pub documents_estimated: u64,
    pub bytes_copied: u64,
    pub bytes_estimated: u64,
    /// Documents copied per second over the last 10 s (0 once the copy is over).
    pub documents_per_second: f64,
    /// Bytes copied per second over the last 10 s (0 once the copy is over).
    pub bytes_per_second: f64,
    /// Seconds until the copy ends at the copy rate of the last 10 s (`None`: not known yet, or no copy
    /// progress in the last 10 s); `Some(0)` after DATA_SYNC.
    pub eta_seconds: Option<u64>,
    pub indexes_built: u32,
    pub indexes_total: u32,
    pub last_applied: Option<OpTime>,
    pub source_newest: Option<OpTime>,
    pub lag_seconds: f64,
    /// Oplog entries of this task's databases applied past the start (or resume) point, across restarts.
    pub oplog_entries_applied: u64,
    pub spool_bytes: u64,
    /// `tuning.spool_cap_bytes`: the size at which the spool fails the task.
    pub spool_cap_bytes: u64,
    /// Oplog entries applied per second over the last 10 s.
    pub apply_entries_per_second: f64,
    /// Oplog entries of this task's databases the tailer read from the source per second over the last
    /// 10 s: the rate the applier must beat to catch up.
    pub source_entries_per_second: f64,
    /// Oplog entries of this task's databases read from the source (counted like
    /// `oplog_entries_applied`: `oplog_entries_read - oplog_entries_applied` entries are pending). After a
    /// restart it continues from `oplog_entries_applied`, since what was read but not applied is read again.
    pub oplog_entries_read: u64,
    /// Seconds until the pending entries are applied at the rates of the last 10 s: `Some(0)` when nothing
    /// is pending, `None` when unknown or not converging (the source writes at least as fast as entries
    /// are applied).
    pub catch_up_eta_seconds: Option<u64>,
    /// Nothing is pending, or entries are applied faster than the source writes them.
    pub converging: bool,
    /// Seconds until the spool reaches its cap at its growth over the last 10 s; `None` when it does not grow.
    pub spool_full_eta_seconds: Option<u64>,
    /// Seconds of source oplog older than the point a restart would resume from (the oplog position the
    /// last checkpoint fetches from): roughly how long until the source's oplog rolls past it and a
    /// restart can no longer resume. Polled from the source's oldest entry every 30 s; `None` until known.
    pub oplog_headroom_seconds: Option<u64>,
    /// The migration is paused (`MigrationControl::set_paused`).
    pub paused: bool,
    /// Transient failures retried so far in this run.
    pub retries: u64,
}

/// What the engine reports to its caller.
#[derive(Clone, Debug)]
pub enum EngineEvent {
    PhaseChanged(Phase),
    Progress(ProgressSnapshot),
    Checkpoint(Checkpoint),
    /// Something the operator should know that is neither progress nor failure, for the task's history.
    /// Kinds: `"retry"`: an operation has been failing with transient errors for more than 5 s and is being
    /// retried (once per outage of a side).
    Note {
        kind: String,
        detail: String,
    },
}

/// Rate limits of a migration; 0 means unlimited. Copy limits count what is read from the source,
/// across all copy workers; apply limits count the oplog entries (of this task's databases) written to
/// the destination, across all apply workers. Reading the oplog into the spool is never limited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Throttle {
    /// Documents read from the source per second during DATA_SYNC.
    pub copy_documents_per_second: u64,
    /// Bytes read from the source per second during DATA_SYNC.
    pub copy_bytes_per_second: u64,
    /// Oplog entries applied to the destination per second.
    pub apply_entries_per_second: u64,
    /// Bytes of oplog entries applied to the destination per second.
    pub apply_bytes_per_second: u64,
}

/// Operator controls of a running migration. Clones share one migration's controls; every setting
/// takes effect at once on a running migration and may be set before `run_migration` to start with it.
#[derive(Clone, Debug)]
pub struct MigrationControl {
    cancel: CancellationToken,
    complete: Arc<AtomicBool>,
    complete_notify: Arc<Notify>,
    knobs: Arc<Knobs>,
}

#[derive(Debug)]
struct Knobs {
    throttle: watch::Sender<Throttle>,
    paused: watch::Sender<bool>,
    /// When the migration was last resumed (time spent paused does not count against retry budgets).
    resumed_at: Mutex<Option<Instant>>,
}

impl Default for MigrationControl {
    fn default() -> Self {
        Self::new()
    }
}

impl MigrationControl {
    /// Controls of a new migration: running, unthrottled, not paused.
    pub fn new() -> Self {
        Self {
            cancel: CancellationToken::new(),
            complete: Arc::new(AtomicBool::new(false)),
            complete_notify: Arc::new(Notify::new()),
            knobs: Arc::new(Knobs {
                throttle: watch::Sender::new(Throttle::default()),
                paused: watch::Sender::new(false),
                resumed_at: Mutex::new(None),
            }),
        }
    }
    /// Controls of a new migration that starts with `throttle`.
    pub fn with_throttle(throttle: Throttle) -> Self {
        let control = Self::new();
        control.set_throttle(throttle);
        control
    }
    /// Cancels the migration; `run_migration` returns `Outcome::Stopped` (also while paused).
    pub fn stop(&self) {
        self.cancel.cancel();
    }
    /// Asks for cut-over: apply through the source's newest oplog entry, then return `Completed`. While
    /// paused, cut-over waits until the migration is resumed (or stopped).
    pub fn request_complete(&self) {
        self.complete.store(true, Ordering::SeqCst);
        self.complete_notify.notify_waiters();
    }
    /// Sets the rate limits; a running migration applies them within a fraction of a second (a wait owed
    /// under a lower limit is cut short).
    pub fn set_throttle(&self, throttle: Throttle) {
        self.knobs.throttle.send_replace(throttle);
    }
    /// The current rate limits.
    pub fn throttle(&self) -> Throttle {
        *self.knobs.throttle.borrow()
    }
    /// Pauses (`true`) or resumes (`false`) the migration. While paused the copy reads nothing from the
    /// source (each copy worker waits before its next batch; an open cursor stays idle, no new one is
    /// opened), no index build starts and nothing is applied to the destination, but the source's oplog
    /// is still read into the spool (so the spool grows), progress events go on (with `paused: true`)
    /// and checkpoints stay valid. Resuming continues exactly where it stopped.
    pub fn set_paused(&self, paused: bool) {
        let was = self.knobs.paused.send_replace(paused);
        if was && !paused {
            *self
                .knobs
                .resumed_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
    }
    /// Whether the migration is paused.
    pub fn is_paused(&self) -> bool {
        *self.knobs.paused.borrow()
    }
    /// A receiver of the rate limits (sees every change).
    pub(crate) fn throttle_watch(&self) -> watch::Receiver<Throttle> {
        self.knobs.throttle.subscribe()
    }
    /// Waits while paused; `false` when `cancel` fired first.
    pub(crate) async fn wait_unpaused(&self, cancel: &CancellationToken) -> bool {
        let mut rx = self.knobs.paused.subscribe();
        if !*rx.borrow_and_update() {
            return !cancel.is_cancelled();
        }
        tokio::select! {
            _ = cancel.cancelled() => false,
            // The sender lives as long as `self`: the wait ends only with a resume.
            r = rx.wait_for(|paused| !*paused) => r.is_ok() && !cancel.is_cancelled(),
        }
    }
    /// When the migration was last resumed, if it ever was.
    pub(crate) fn resumed_at(&self) -> Option<Instant> {
        *self
            .knobs
            .resumed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
    pub(crate) fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }
    pub(crate) fn complete_requested(&self) -> bool {
        self.complete.load(Ordering::SeqCst)
    }
}

/// Result of a completed migration.
#[derive(Clone, Debug)]
pub struct Completion {
    pub final_ts: OpTime,
    pub progress: ProgressSnapshot,
    pub summary: String,
}

/// How `run_migration` ended without error.
// Returned once per migration: the size of the completion's report does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Outcome {
    Completed(Completion),
    /// `control.stop()` was called; the caller then calls `rollback`.
    Stopped,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoint_debug_redacts_the_password() {
        let e = Endpoint {
            uri: "mongodb://127.0.0.1:1/".into(),
            username: "u".into(),
            password: "hunter2".into(),
        };
        let s = format!("{e:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("redacted"));
        let cfg = MigrationConfig {
            task_id: "t".into(),
            source: e.clone(),
            destination: e,
            databases: vec![],
            spool_dir: PathBuf::new(),
            tuning: Tuning::default(),
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn default_tuning_reports_progress_at_least_every_second() {
        let t = Tuning::default();
        assert!(t.progress_interval <= Duration::from_secs(1));
        assert!(t.copy_workers > 0 && t.apply_workers > 0 && t.spool_cap_bytes > 0);
        assert_eq!(t.retry_budget, Duration::from_secs(120));
        assert!(t.validate().is_ok());
    }

    #[test]
    fn a_zero_retry_budget_is_rejected_with_the_field_name() {
        let t = Tuning {
            retry_budget: Duration::ZERO,
            ..Tuning::default()
        };
        let err = t.validate().expect_err("zero budget");
        assert!(matches!(err, EngineError::Config(_)), "{err}");
        assert!(err.to_string().contains("retry_budget"), "{err}");
        assert!(!err.resumable());
    }

    #[tokio::test]
    async fn a_pause_holds_until_resumed_or_cancelled() {
        let c = MigrationControl::new();
        let cancel = CancellationToken::new();
        assert!(!c.is_paused());
        assert!(c.wait_unpaused(&cancel).await);
        assert!(c.resumed_at().is_none());
        c.set_paused(true);
        assert!(c.is_paused());
        let waiter = {
            let (c, cancel) = (c.clone(), cancel.clone());
            tokio::spawn(async move { c.wait_unpaused(&cancel).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.set_paused(false);
        assert!(waiter.await.unwrap());
        assert!(c.resumed_at().is_some());
        c.set_paused(true);
        let waiter = {
            let (c, cancel) = (c.clone(), cancel.clone());
            tokio::spawn(async move { c.wait_unpaused(&cancel).await })
        };
        cancel.cancel();
        assert!(!waiter.await.unwrap(), "a stop ends the wait");
    }

    #[test]
    fn the_throttle_is_shared_by_clones_and_starts_unlimited() {
        let c = MigrationControl::new();
        assert_eq!(c.throttle(), Throttle::default());
        let t = Throttle {
            copy_documents_per_second: 1,
            copy_bytes_per_second: 2,
            apply_entries_per_second: 3,
            apply_bytes_per_second: 4,
        };
        c.clone().set_throttle(t);
        assert_eq!(c.throttle(), t);
        assert_eq!(MigrationControl::with_throttle(t).throttle(), t);
        let mut rx = c.throttle_watch();
        c.set_throttle(Throttle::default());
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), Throttle::default());
    }

    #[test]
    fn optime_orders_by_seconds_then_increment() {
        let a = OpTime {
            seconds: 1,
            increment: 9,
        };
        let b = OpTime {
            seconds: 2,
            increment: 0,
        };
        assert!(a < b);
        assert_eq!(OpTime::from_ts(b.to_ts()), b);
    }
}
