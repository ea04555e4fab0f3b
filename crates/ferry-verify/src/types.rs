//! Public configuration, control, progress, report and checkpoint types of the verifier (the API the
//! agent codes against). Plain data only: no IO, no driver calls.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::VerifyError;

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

/// How documents are compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Every document of every range is merged by `_id` and compared byte for byte.
    #[default]
    Full,
    /// Per range: document count and a digest of the raw documents in `_id` order (the server's
    /// `dbHash` when the range is the whole collection); a full merge only where they differ.
    Hashed,
}

/// Which members the verifier reads from (both sides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadPref {
    Primary,
    /// Keeps the load off the primary when a secondary is available.
    #[default]
    SecondaryPreferred,
}

/// An oplog timestamp (same shape as the engine's `OpTime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct OpTime {
    pub seconds: u32,
    pub increment: u32,
}

impl OpTime {
    pub(crate) fn from_ts(ts: bson::Timestamp) -> Self {
        Self {
            seconds: ts.time,
            increment: ts.increment,
        }
    }
    pub(crate) fn to_ts(self) -> bson::Timestamp {
        bson::Timestamp {
            time: self.seconds,
            increment: self.increment,
        }
    }
    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.seconds) << 32) | u64::from(self.increment)
    }
    pub(crate) fn unpack(v: u64) -> Self {
        Self {
            seconds: (v >> 32) as u32,
            increment: v as u32,
        }
    }
}

impl fmt::Display for OpTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}, {})", self.seconds, self.increment)
    }
}

/// Performance and bound knobs.
#[derive(Clone, Debug)]
pub struct VerifyTuning {
    /// Target documents per `_id` range; larger collections are split (`$sample`).
    pub docs_per_range: u64,
    /// Documents per cursor batch (bounds memory per range: 2 sides x 3 batches).
    pub batch_docs: u32,
    /// Cap of the live part of the on-disk recheck queue; reaching it fails the run
    /// (`RecheckQueueFull`).
    pub recheck_queue_cap_bytes: u64,
    /// Confirmed mismatches kept with their details (report, checkpoint); later ones are only
    /// counted.
    pub max_reported_mismatches: usize,
    /// How many times a document that keeps changing on the source is re-read before it is left
    /// pending.
    pub max_recheck_attempts: u8,
    /// Maximum time between two progress events.
    pub progress_interval: Duration,
    /// How long transient failures are retried without progress before the run fails
    /// (`Unavailable`). Must be greater than zero.
    pub retry_budget: Duration,
}

impl Default for VerifyTuning {
    fn default() -> Self {
        Self {
            docs_per_range: 100_000,
            batch_docs: 1000,
            recheck_queue_cap_bytes: 256 << 20,
            max_reported_mismatches: 10_000,
            max_recheck_attempts: 8,
            progress_interval: Duration::from_millis(500),
            retry_budget: Duration::from_secs(120),
        }
    }
}

/// Everything one verification needs.
#[derive(Clone, Debug)]
pub struct VerifyConfig {
    pub task_id: String,
    pub source: Endpoint,
    pub destination: Endpoint,
    /// Databases to verify; empty means every non-system database (of either side).
    pub databases: Vec<String>,
    pub mode: Mode,
    pub read_preference: ReadPref,
    /// Documents read per second on each side; 0 = unlimited.
    pub max_docs_per_second: u64,
    /// Ranges compared concurrently (at least 1).
    pub parallelism: usize,
    /// Directory for the disk-backed recheck queue (inside the agent's data dir).
    pub work_dir: PathBuf,
    /// `(namespace, index name)` pairs the migration keeps non-unique / TTL-paused until cut-over:
    /// their `unique`, `prepareUnique` and `expireAfterSeconds` are not compared.
    pub relaxed_indexes: Vec<(String, String)>,
    pub tuning: VerifyTuning,
}

impl VerifyConfig {
    /// Checks the values that have no safe reading (`run_verification` calls it).
    pub fn validate(&self) -> Result<(), VerifyError> {
        if self.tuning.retry_budget.is_zero() {
            return Err(VerifyError::Config(
                "tuning.retry_budget is 0: it must be greater than zero (default 120s)".into(),
            ));
        }
        if self.tuning.batch_docs == 0 || self.tuning.recheck_queue_cap_bytes == 0 {
            return Err(VerifyError::Config(
                "tuning.batch_docs and tuning.recheck_queue_cap_bytes must be greater than zero"
                    .into(),
            ));
        }
        if self.work_dir.as_os_str().is_empty() {
            return Err(VerifyError::Config(
                "work_dir is empty: set it to a directory in the agent's data dir".into(),
            ));
        }
        Ok(())
    }
}

/// Operator controls of a running verification: cancel, pause and resume.
#[derive(Clone, Debug)]
pub struct VerifyControl {
    cancel: CancellationToken,
    paused: watch::Sender<bool>,
}

impl Default for VerifyControl {
    fn default() -> Self {
        Self::new()
    }
}

impl VerifyControl {
    pub fn new() -> Self {
        Self {
            cancel: CancellationToken::new(),
            paused: watch::Sender::new(false),
        }
    }
    /// Stops the run; `run_verification` returns `Err(VerifyError::Cancelled)` after a last checkpoint.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
    /// Stops reading (between batches) until `resume`; nothing is reread.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }
    pub(crate) fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }
    /// Returns when not paused (immediately if not paused); `false` when cancelled meanwhile.
    pub(crate) async fn wait_unpaused(&self, cancel: &CancellationToken) -> bool {
        let mut rx = self.paused.subscribe();
        tokio::select! {
            _ = cancel.cancelled() => false,
            r = rx.wait_for(|p| !*p) => r.is_ok(),
        }
    }
}

/// Overall state of a verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VerifyStatus {
    Running,
    /// Everything compared equal (nothing confirmed, nothing pending).
    Passed,
    /// Confirmed mismatches, or documents still pending at the end.
    Failed,
}

/// What the verifier is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VerifyPhase {
    Metadata,
    Documents,
    Rechecking,
}

/// Kind of a difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MismatchKind {
    MissingOnDestination,
    ExtraOnDestination,
    /// Same `_id`, different bytes; `field_path` names the first differing field.
    Different,
    /// Collection options, an index, a view definition or a namespace present on one side only.
    Metadata,
}

/// One confirmed difference.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mismatch {
    /// `db.collection`.
    pub namespace: String,
    /// The document's `_id` as canonical extended JSON (documents only).
    pub id: Option<String>,
    pub kind: MismatchKind,
    /// First differing field, dotted (`a.b.2`); `_id` when only the `_id`'s type differs.
    pub field_path: Option<String>,
    pub description: String,
}

/// Confirmed mismatches by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MismatchCounts {
    pub missing_on_destination: u64,
    pub extra_on_destination: u64,
    pub different: u64,
    pub metadata: u64,
}

impl MismatchCounts {
    pub fn total(&self) -> u64 {
        self.missing_on_destination + self.extra_on_destination + self.different + self.metadata
    }
}

/// Per-collection summary.
#[derive(Clone, Debug, Default)]
pub struct CollectionSummary {
    pub namespace: String,
    pub source_documents: u64,
    pub destination_documents: u64,
    /// Confirmed document mismatches (metadata mismatches are counted in the totals only).
    pub mismatches: u64,
    pub ranges_done: u32,
    pub ranges_total: u32,
    pub done: bool,
}

/// A progress report (also the body of the final report).
#[derive(Clone, Debug)]
pub struct VerifyProgress {
    pub status: VerifyStatus,
    pub phase: VerifyPhase,
    /// Source documents compared (merged or covered by an equal digest).
    pub documents_compared: u64,
    /// Source documents to compare (count estimate at planning).
    pub documents_estimated: u64,
    pub confirmed: MismatchCounts,
    /// Documents whose last comparison differed and that wait for a recheck.
    pub pending: u64,
    /// Entries (differences and oplog touches) waiting in the recheck queue.
    pub recheck_queue_len: u64,
    /// Documents re-read on both sides by the recheck loop so far (this run).
    pub documents_rechecked: u64,
    pub collections: Vec<CollectionSummary>,
    pub started_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    pub documents_per_second: f64,
    /// From the rate of the last seconds; `None` when nothing moves.
    pub eta_seconds: Option<u64>,
}

/// Durable resume point; `verify_state` is verifier-private JSON (`{"v":1,...}`).
#[derive(Clone, Debug)]
pub struct VerifyCheckpoint {
    pub phase: VerifyPhase,
    pub ranges_done: u64,
    pub ranges_total: u64,
    pub documents_compared: u64,
    pub verify_state: Vec<u8>,
}

/// What the verifier reports to its caller.
#[derive(Clone, Debug)]
pub enum VerifyEvent {
    Progress(VerifyProgress),
    Checkpoint(VerifyCheckpoint),
    /// A mismatch was confirmed (emitted once per confirmation).
    Mismatch(Mismatch),
}

/// Result of a finished verification.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    pub status: VerifyStatus,
    pub progress: VerifyProgress,
    /// Confirmed mismatches (at most `tuning.max_reported_mismatches`).
    pub mismatches: Vec<Mismatch>,
    /// More were confirmed than are listed.
    pub mismatches_truncated: bool,
    pub summary: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_passwords() {
        let e = Endpoint {
            uri: "mongodb://127.0.0.1:1/".into(),
            username: "u".into(),
            password: "hunter2".into(),
        };
        let cfg = VerifyConfig {
            task_id: "t".into(),
            source: e.clone(),
            destination: e,
            databases: vec![],
            mode: Mode::Full,
            read_preference: ReadPref::default(),
            max_docs_per_second: 0,
            parallelism: 1,
            work_dir: PathBuf::from("/tmp"),
            relaxed_indexes: vec![],
            tuning: VerifyTuning::default(),
        };
        let s = format!("{cfg:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("redacted"));
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn optime_packs_in_order() {
        let a = OpTime {
            seconds: 1,
            increment: 9,
        };
        let b = OpTime {
            seconds: 2,
            increment: 0,
        };
        assert!(a.pack() < b.pack());
        assert_eq!(OpTime::unpack(a.pack()), a);
        assert_eq!(OpTime::from_ts(b.to_ts()), b);
    }
}
