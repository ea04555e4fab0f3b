//! Task history: what changed between two versions of a task becomes events (state, phase, assignment, pause,
//! throttle, verification, check results), written with the task in the same store call; operator actions, agent
//! comings and goings and the agent's notes are recorded explicitly. `ListTaskEvents` pages through them.
//!
//! Must not: put secrets into an event (specs are never described, only ids and states).

use ferry_core::{CheckStatus, Task, TaskId, TaskPhase, VerificationState};
use ferry_proto::v1 as pb;
use ferry_store::TaskEventRecord;

use crate::convert::{self, now_ms};
use crate::coordinator::Coordinator;
use crate::error::ServiceError;

/// The principal of events the coordinator itself causes.
pub const COORDINATOR: &str = "coordinator";

pub(crate) fn phase_name(phase: Option<TaskPhase>) -> &'static str {
    match phase {
        None => "",
        Some(TaskPhase::DataSync) => "DATA_SYNC",
        Some(TaskPhase::IndexCreation) => "INDEX_CREATION",
        Some(TaskPhase::OplogSync) => "OPLOG_SYNC",
    }
}

/// An event about `task` (its state, phase and epoch as they are now).
pub(crate) fn event(task: &Task, kind: &str, principal: &str, detail: String) -> TaskEventRecord {
    TaskEventRecord {
        seq: 0,
        time_ms: now_ms(),
        kind: kind.to_owned(),
        principal: principal.to_owned(),
        detail,
        state: task.state.name().to_owned(),
        phase: phase_name(task.phase).to_owned(),
        epoch: task.epoch.0,
    }
}

/// The events between `old` (None: just created) and `new`.
pub(crate) fn diff(old: Option<&Task>, new: &Task) -> Vec<TaskEventRecord> {
    let mut out = Vec::new();
    let Some(old) = old else {
        out.push(event(
            new,
            "created",
            COORDINATOR,
            format!(
                "task {:?} created in tenant {}",
                new.spec.name, new.spec.tenant
            ),
        ));
        return out;
    };
    if old.agent_id != new.agent_id || old.epoch != new.epoch {
        let detail = match &new.agent_id {
            Some(agent) => format!("assigned to {agent} (epoch {})", new.epoch),
            None => format!("unassigned (epoch {})", new.epoch),
        };
        out.push(event(new, "assigned", COORDINATOR, detail));
    }
    if old.state != new.state {
        let mut detail = format!("{} -> {}", old.state, new.state);
        if old.state == ferry_core::TaskState::Failed && new.state == ferry_core::TaskState::Running
        {
            detail.push_str(": resumed from the last checkpoint");
        }
        if matches!(
            new.state,
            ferry_core::TaskState::Failed | ferry_core::TaskState::CheckFailed
        ) && !new.failure_reason.is_empty()
        {
            detail.push_str(&format!(
                ": {}{}",
                new.failure_reason,
                if new.resumable { " (resumable)" } else { "" }
            ));
        }
        let kind = if new.state == ferry_core::TaskState::Failed {
            "failed"
        } else {
            "state"
        };
        out.push(event(new, kind, COORDINATOR, detail));
    }
    if old.phase != new.phase && new.phase.is_some() {
        out.push(event(
            new,
            "phase",
            COORDINATOR,
            format!(
                "{} -> {}",
                or_none(phase_name(old.phase)),
                phase_name(new.phase)
            ),
        ));
    }
    for item in &new.checks {
        let finished = item.finish_time_ms.is_some() && item.status != CheckStatus::Pending;
        let before = old.checks.iter().find(|c| c.id == item.id);
        if finished
            && before
                .is_none_or(|b| b.status != item.status || b.finish_time_ms != item.finish_time_ms)
        {
            out.push(event(
                new,
                "check",
                COORDINATOR,
                format!("{}: {:?}: {}", item.id, item.status, item.message),
            ));
        }
    }
    if old.paused != new.paused {
        let (kind, detail) = if new.paused {
            ("paused", "copy and apply paused; the oplog keeps spooling")
        } else {
            ("resumed", "copy and apply resumed")
        };
        out.push(event(new, kind, COORDINATOR, detail.to_owned()));
    }
    if old.throttle != new.throttle {
        out.push(event(
            new,
            "throttle",
            COORDINATOR,
            format!("limits: {}", new.throttle),
        ));
    }
    let run_state = |t: &Task| t.verification.as_ref().map(|v| (v.run, v.state));
    if run_state(old) != run_state(new) {
        if let Some(v) = &new.verification {
            let detail = match v.state {
                VerificationState::Running => format!("verification run {} started", v.run),
                other => format!(
                    "verification run {} {:?} ({} mismatches stored)",
                    v.run, other, v.stored_mismatches
                ),
            };
            out.push(event(new, "verification", COORDINATOR, detail));
        }
    }
    out
}

fn or_none(text: &str) -> &str {
    if text.is_empty() {
        "none"
    } else {
        text
    }
}

impl Coordinator {
    /// Appends events about a task that are not changes of its record (operator actions, agent sessions, agent
    /// notes), durably.
    pub(crate) async fn record_task_event(
        &self,
        id: &TaskId,
        kind: &'static str,
        principal: String,
        detail: String,
    ) -> Result<(), ServiceError> {
        let key = id.clone();
        self.db(move |s| {
            let Some(task) = s.get_task(&key)? else {
                return Ok(());
            };
            s.append_task_events(&key, vec![event(&task, kind, &principal, detail)])?;
            s.flush()
        })
        .await?;
        self.metrics.task_event(kind);
        Ok(())
    }

    /// ListTaskEvents.
    pub async fn list_task_events(
        &self,
        task: &Task,
        page_size: i32,
        page_token: &str,
    ) -> Result<pb::ListTaskEventsResponse, ServiceError> {
        let size = match usize::try_from(page_size) {
            Ok(0) => 100,
            Ok(n) => n.min(1000),
            Err(_) => return Err(ServiceError::invalid("page_size", "must not be negative")),
        };
        let after: u64 = if page_token.is_empty() {
            0
        } else {
            page_token.parse().map_err(|_| {
                ServiceError::invalid(
                    "page_token",
                    "is malformed: pass the next_page_token of a previous call",
                )
            })?
        };
        let key = task.id.clone();
        let mut events = self
            .db(move |s| s.list_task_events(&key, after, size + 1))
            .await?;
        let next_page_token = if events.len() > size {
            events.truncate(size);
            events.last().map(|e| e.seq.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListTaskEventsResponse {
            events: events.into_iter().map(event_to_pb).collect(),
            next_page_token,
        })
    }
}

fn event_to_pb(e: TaskEventRecord) -> pb::TaskEvent {
    let state = ferry_core::TaskState::ALL
        .into_iter()
        .find(|s| s.name() == e.state)
        .map_or(pb::TaskState::Unspecified, convert::state_to_pb);
    let phase = match e.phase.as_str() {
        "DATA_SYNC" => pb::TaskPhase::DataSync,
        "INDEX_CREATION" => pb::TaskPhase::IndexCreation,
        "OPLOG_SYNC" => pb::TaskPhase::OplogSync,
        _ => pb::TaskPhase::Unspecified,
    };
    pb::TaskEvent {
        seq: e.seq,
        time: Some(convert::timestamp(e.time_ms)),
        kind: e.kind,
        principal: e.principal,
        detail: e.detail,
        state: state as i32,
        phase: phase as i32,
        epoch: e.epoch,
    }
}
