//! `VerifyError`: the one error type of the verifier, with messages an operator can act on.

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "cannot connect to the {side} ({detail}): check the address, credentials and network path"
    )]
    Connect { side: &'static str, detail: String },
    #[error("{side} unreachable for longer than the retry budget ({budget:?}) during {operation}: {detail}; restore connectivity, then run the verification again with its last checkpoint to resume")]
    Unavailable {
        side: &'static str,
        operation: String,
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
    #[error("the recheck queue in {dir} reached its cap of {cap_bytes} bytes: too many documents differ while the migration is running (destination far behind, or damaged); verify after cut-over, or raise tuning.recheck_queue_cap_bytes")]
    RecheckQueueFull { cap_bytes: u64, dir: String },
    #[error("recheck queue I/O error in {dir}: {detail}; check the agent's work directory (disk full, permissions)")]
    Queue { dir: String, detail: String },
    #[error("the source oplog rolled past {needed}, which the verification still needed to follow changes; run the verification again from scratch (or after cut-over)")]
    OplogRolledOver { needed: String },
    #[error("the source has no oplog ({detail}): an online verification (migration running) needs a replica-set source; verify after cut-over instead")]
    NoOplog { detail: String },
    #[error("invalid verification checkpoint: {0}; run the verification again from scratch")]
    BadCheckpoint(String),
    #[error("invalid verification configuration: {0}")]
    Config(String),
    #[error("verification cancelled")]
    Cancelled,
}
