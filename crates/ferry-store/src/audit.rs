//! The audit log's record: who called what on which targets, and how it ended. Stored in sequence order by
//! [`crate::Store::append_audit`]. Must not: carry secrets (callers keep passwords and tokens out of `detail`).

use serde::{Deserialize, Serialize};

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, assigned by the store (increasing, from 1).
    pub seq: u64,
    /// Unix milliseconds of the call.
    pub time_ms: i64,
    /// Who called (e.g. the operator's certificate subject or the agent id).
    pub principal: String,
    /// The peer address the call came from.
    pub peer: String,
    /// The RPC, e.g. `ferry.v1.MigrationService/CreateTask`.
    pub method: String,
    /// Ids the call acted on (tasks, instances, agents, join tokens).
    pub targets: Vec<String>,
    /// Outcome: a gRPC status code name, e.g. `OK` or `PERMISSION_DENIED`.
    pub code: String,
    /// Free text about the outcome; never secrets.
    pub detail: String,
}
