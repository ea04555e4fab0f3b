//! A task's history: one record per thing that happened to it (state and phase changes, checks, operator actions
//! with their principal, assignments, agent disconnects and reconnects, long retries, failures, resumes). Stored
//! per task in sequence order by [`crate::Store::append_task_events`]. Must not: carry secrets.

use serde::{Deserialize, Serialize};

/// One event of a task's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEventRecord {
    /// Position in the task's history, assigned by the store (increasing, from 1).
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// e.g. "state", "phase", "operator", "assigned", "agent_disconnected".
    pub kind: String,
    /// Who caused it: an operator principal, `agent:<id>`, or `coordinator`.
    pub principal: String,
    /// What happened, in words; never secrets.
    pub detail: String,
    /// The task's state name after the event (e.g. `RUNNING`).
    pub state: String,
    /// The task's phase name after the event (e.g. `OPLOG_SYNC`), empty when none.
    pub phase: String,
    /// The task's assignment epoch after the event.
    pub epoch: u64,
}
