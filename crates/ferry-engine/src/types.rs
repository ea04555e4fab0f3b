//! Public configuration, progress and checkpoint types of the engine (the binding API the agent codes
//! against). Plain data only: no IO, no driver calls.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::Timestamp;
use tokio::sync::Notify;
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
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
}

/// A progress report.
#[derive(Clone, Debug)]
pub struct ProgressSnapshot {
    pub phase: Phase,
    pub collections: Vec<CollectionProgress>,
    pub documents_copied: u64,
    pub documents_estimated: u64,
    pub bytes_copied: u64,
    pub bytes_estimated: u64,
    pub documents_per_second: f64,
    pub bytes_per_second: f64,
    pub eta_seconds: Option<u64>,
    pub indexes_built: u32,
    pub indexes_total: u32,
    pub last_applied: Option<OpTime>,
    pub source_newest: Option<OpTime>,
    pub lag_seconds: f64,
    pub oplog_entries_applied: u64,
    pub spool_bytes: u64,
}

/// What the engine reports to its caller.
#[derive(Clone, Debug)]
pub enum EngineEvent {
    PhaseChanged(Phase),
    Progress(ProgressSnapshot),
    Checkpoint(Checkpoint),
}

/// Operator controls of a running migration.
#[derive(Clone, Debug)]
pub struct MigrationControl {
    cancel: CancellationToken,
    complete: Arc<AtomicBool>,
    complete_notify: Arc<Notify>,
}

impl Default for MigrationControl {
    fn default() -> Self {
        Self::new()
    }
}

impl MigrationControl {
    pub fn new() -> Self {
        Self {
            cancel: CancellationToken::new(),
            complete: Arc::new(AtomicBool::new(false)),
            complete_notify: Arc::new(Notify::new()),
        }
    }
    /// Cancels the migration; `run_migration` returns `Outcome::Stopped`.
    pub fn stop(&self) {
        self.cancel.cancel();
    }
    /// Asks for cut-over: apply through the source's newest oplog entry, then return `Completed`.
    pub fn request_complete(&self) {
        self.complete.store(true, Ordering::SeqCst);
        self.complete_notify.notify_waiters();
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
#[derive(Clone, Debug)]
pub enum Outcome {
    Completed(Completion),
    /// `control.stop()` was called; the caller then calls `rollback`.
    Stopped,
}

#[cfg(test)]
mod tests {
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
