//! `EngineError`: the one error type of the engine layer, with messages an operator can act on and a
//! `resumable()` classification (a resumable failure can continue from the last checkpoint).

use crate::diff::DiffError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "cannot connect to the {side} ({detail}): check the address, credentials and network path, then start the task again (StartTask) to resume from its last checkpoint"
    )]
    Connect { side: &'static str, detail: String },
    #[error("{side} unreachable for longer than the retry budget ({budget:?}) during {operation}: {detail}; restore connectivity to the {side}, then start the task again (StartTask) to resume from its last checkpoint, or stop it (StopTask) to roll back")]
    Unavailable {
        side: &'static str,
        operation: String,
        /// `tuning.retry_budget`: how long it was retried without progress.
        budget: std::time::Duration,
        detail: String,
    },
    #[error("{operation} on {namespace} failed on the {side}: {detail}")]
    Command {
        side: &'static str,
        namespace: String,
        operation: String,
        detail: String,
    },
    #[error("the source has no oplog ({detail}): only replica-set members can be migrated online; convert the source to a replica set")]
    NoOplog { detail: String },
    #[error("the source oplog rolled past {needed}, which this task still needed ({detail}); enlarge the source oplog (replSetResizeOplog) or raise oplogMinRetentionHours and restart the migration from scratch")]
    OplogRolledOver { needed: String, detail: String },
    #[error("oplog spool cap of {cap_bytes} bytes reached in {dir}: the copy produced more oplog than the spool may hold; raise spool_cap_bytes or free disk space and restart the migration")]
    SpoolFull { cap_bytes: u64, dir: String },
    #[error("oplog spool I/O error in {dir}: {detail}; check the agent's data directory (permissions, a failing disk), then start the task again (StartTask) to resume from its last checkpoint with a fresh spool")]
    Spool { dir: String, detail: String },
    #[error("the agent's disk is full: the oplog spool in {dir} could not grow for longer than the retry budget ({detail}); free space on the agent's data directory, then start the task again (StartTask) to resume from its last checkpoint")]
    SpoolDiskFull { dir: String, detail: String },
    #[error("cannot apply oplog entry at {ts} on {namespace}: {detail}")]
    Apply {
        ts: String,
        namespace: String,
        detail: String,
    },
    #[error("malformed update diff on {namespace}: {source}")]
    Diff {
        namespace: String,
        #[source]
        source: DiffError,
    },
    #[error("unsupported on {namespace}: {detail}")]
    Unsupported { namespace: String, detail: String },
    #[error("cut-over cannot restore the source's unique indexes: {detail}")]
    UniqueConversion { detail: String },
    #[error("the source replica set rolled back writes after a failover ({detail}); entries this task read may have been undone, so the destination can no longer be trusted: stop the task (StopTask) and restart the migration from scratch")]
    SourceRolledBack { detail: String },
    #[error("invalid checkpoint: {0}; restart the migration from scratch")]
    BadCheckpoint(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl EngineError {
    /// Whether the task can continue from its last checkpoint (StartTask): after an outage, or after
    /// the operator fixed the duplicates a unique-index conversion found.
    pub fn resumable(&self) -> bool {
        matches!(
            self,
            EngineError::Unavailable { .. }
                | EngineError::Connect { .. }
                | EngineError::Spool { .. }
                | EngineError::SpoolDiskFull { .. }
                | EngineError::UniqueConversion { .. }
        )
    }
}
