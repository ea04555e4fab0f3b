//! The task record the coordinator keeps: spec, state, checks, progress, checkpoint and assignment.

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::ids::{AgentId, Epoch, TaskId};
use crate::spec::TaskSpec;
use crate::state::{Action, Event, Failure, TaskState};

/// Phase of a RUNNING or COMPLETING task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskPhase {
    DataSync,
    IndexCreation,
    OplogSync,
}

/// Status of one check item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CheckStatus {
    Pending,
    Pass,
    Warn,
    Fail,
    Skipped,
}

/// One item of the pre-migration verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckItem {
    /// Stable id, e.g. `source_reachable`; items are upserted by it.
    pub id: String,
    pub name: String,
    pub status: CheckStatus,
    pub message: String,
    pub fix: String,
    /// Unix milliseconds; `None` while pending.
    pub finish_time_ms: Option<i64>,
    pub duration_ms: u64,
}

/// A MongoDB oplog timestamp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OplogTs {
    pub seconds: u32,
    pub increment: u32,
}

/// Durable resume point reported by the agent and handed back on resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub phase: Option<TaskPhase>,
    pub start_ts: Option<OplogTs>,
    pub last_applied: Option<OplogTs>,
    /// Engine-private resume state, opaque to the coordinator.
    pub engine_state: Vec<u8>,
    /// Unix milliseconds.
    pub update_time_ms: Option<i64>,
}

/// Reason recorded when an operator stops a task.
pub const STOPPED_BY_OPERATOR: &str = "stopped by operator";

/// A migration task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub state: TaskState,
    pub phase: Option<TaskPhase>,
    pub checks: Vec<CheckItem>,
    /// The agent's last progress report (an encoded `ferry.v1.Progress`), passed through to operators unread.
    pub progress: Vec<u8>,
    /// Unix milliseconds.
    pub create_time_ms: i64,
    /// Unix milliseconds.
    pub update_time_ms: i64,
    pub failure_reason: String,
    pub resumable: bool,
    /// The agent the task is assigned to.
    pub agent_id: Option<AgentId>,
    /// Bumped and persisted before every command sent for a new assignment.
    pub epoch: Epoch,
    pub checkpoint: Option<Checkpoint>,
    /// The newest verification run.
    #[serde(default)]
    pub verification: Option<Verification>,
    /// The cut-over in progress must pass a verification before the task succeeds.
    #[serde(default)]
    pub verify_at_cut_over: bool,
    /// Copy and apply limits (zeros: unlimited).
    #[serde(default)]
    pub throttle: Throttle,
    /// Copy and apply are paused (PauseTask); CompleteTask needs ResumeTask first.
    #[serde(default)]
    pub paused: bool,
}

/// Limits of a migration; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    pub copy_documents_per_second: u64,
    pub copy_bytes_per_second: u64,
    pub apply_entries_per_second: u64,
    pub apply_bytes_per_second: u64,
}

impl Throttle {
    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

impl std::fmt::Display for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_unlimited() {
            return f.write_str("unlimited");
        }
        let part = |n: u64, unit: &str| {
            if n == 0 {
                format!("unlimited {unit}")
            } else {
                format!("{n} {unit}")
            }
        };
        write!(
            f,
            "copy {}, {}; apply {}, {}",
            part(self.copy_documents_per_second, "docs/s"),
            part(self.copy_bytes_per_second, "B/s"),
            part(self.apply_entries_per_second, "entries/s"),
            part(self.apply_bytes_per_second, "B/s")
        )
    }
}

/// State of a verification run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerificationState {
    Running,
    Passed,
    Failed,
}

/// How the verifier compares documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum VerifyMode {
    #[default]
    Full,
    Hashed,
}

/// The product verifier's newest run on a task (its mismatches are stored apart, by run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Increases with every run.
    pub run: u64,
    pub state: VerificationState,
    pub mode: VerifyMode,
    /// Run by the cut-over (source quiescent); it decides whether the task succeeds.
    pub at_cut_over: bool,
    /// The agent's last report (an encoded `ferry.v1.Verification`), passed through to operators.
    pub report: Vec<u8>,
    /// Verifier-private resume state, handed back when the run is resumed.
    pub checkpoint: Vec<u8>,
    /// Confirmed mismatches stored for this run (ListMismatches pages through them).
    pub stored_mismatches: u64,
    /// Unix milliseconds.
    pub start_time_ms: i64,
    pub finish_time_ms: Option<i64>,
}

impl Verification {
    /// A new run after `previous`.
    pub fn start(
        previous: Option<&Verification>,
        mode: VerifyMode,
        at_cut_over: bool,
        now_ms: i64,
    ) -> Self {
        Self {
            run: previous.map_or(1, |v| v.run + 1),
            state: VerificationState::Running,
            mode,
            at_cut_over,
            report: Vec::new(),
            checkpoint: Vec::new(),
            stored_mismatches: 0,
            start_time_ms: now_ms,
            finish_time_ms: None,
        }
    }
}

impl Task {
    /// A new task in NOT_STARTED.
    pub fn new(id: TaskId, spec: TaskSpec, now_ms: i64) -> Self {
        Self {
            id,
            spec,
            state: TaskState::NotStarted,
            phase: None,
            checks: Vec::new(),
            progress: Vec::new(),
            create_time_ms: now_ms,
            update_time_ms: now_ms,
            failure_reason: String::new(),
            resumable: false,
            agent_id: None,
            epoch: Epoch::default(),
            checkpoint: None,
            verification: None,
            verify_at_cut_over: false,
            throttle: Throttle::default(),
            paused: false,
        }
    }

    /// Whether `action` is allowed now (the state machine decides), without applying it.
    pub fn check(&self, action: Action) -> Result<(), CoreError> {
        self.paused_check(action)?;
        self.state.apply(action, self.failure()).map(drop)
    }

    /// What pausing forbids: CompleteTask before ResumeTask, pausing twice, resuming what is not paused.
    fn paused_check(&self, action: Action) -> Result<(), CoreError> {
        let why = match (action, self.paused) {
            (Action::Complete, true) => {
                "the task is paused: ResumeTask first (StopTask works while paused)"
            }
            (Action::Pause, true) => "the task is already paused",
            (Action::Resume, false) => "the task is not paused",
            _ => return Ok(()),
        };
        Err(CoreError::Precondition(why.to_owned()))
    }

    /// Operator actions allowed now.
    pub fn allowed_actions(&self) -> Vec<Action> {
        self.state.allowed_actions(self.failure())
    }

    /// What this task can still do if it is FAILED: continue (resumable), roll back what it created (a permanent
    /// failure with a checkpoint, which records the namespaces it created), or nothing (stopped already, or failed
    /// before creating anything).
    pub fn failure(&self) -> Failure {
        if self.resumable {
            Failure::Resumable
        } else if self.failure_reason == STOPPED_BY_OPERATOR || self.checkpoint.is_none() {
            Failure::Final
        } else {
            Failure::Permanent
        }
    }

    /// Whether this task's next StartTask resumes from its checkpoint instead of starting over.
    pub fn resumes(&self) -> bool {
        self.state == TaskState::Failed && self.resumable
    }

    /// Applies an operator action (the state machine decides), clearing what the new state makes stale.
    pub fn apply(&mut self, action: Action, now_ms: i64) -> Result<(), CoreError> {
        self.paused_check(action)?;
        let next = self.state.apply(action, self.failure())?;
        let from = self.state;
        match (action, from, next) {
            (Action::Update, _, _) | (Action::Check, _, _) => {
                self.checks.clear();
                self.failure_reason.clear();
            }
            (Action::Start, TaskState::Failed, _) => {
                // Resume: the checkpoint and the last progress stay; the phase is where the checkpoint left off.
                self.phase = Some(
                    self.checkpoint
                        .as_ref()
                        .and_then(|c| c.phase)
                        .unwrap_or(TaskPhase::DataSync),
                );
                self.failure_reason.clear();
                self.resumable = false;
            }
            (Action::Start, _, _) => {
                self.phase = Some(TaskPhase::DataSync);
                self.failure_reason.clear();
                self.checkpoint = None;
                self.progress.clear();
            }
            (Action::Pause, _, _) => self.paused = true,
            (Action::Resume, _, _) => self.paused = false,
            (Action::Stop, _, TaskState::Failed) => {
                self.failure_reason = STOPPED_BY_OPERATOR.to_owned();
                self.resumable = false;
                self.paused = false;
            }
            (Action::Stop, TaskState::Failed, _) => {
                // Rolling back a failure: it is no longer resumable whatever the rollback does.
                self.resumable = false;
                self.paused = false;
            }
            (Action::Stop, _, _) => self.paused = false,
            _ => {}
        }
        self.state = next;
        self.update_time_ms = now_ms;
        Ok(())
    }

    /// Applies an event; returns whether anything changed (an event meaningless in the current state changes
    /// nothing).
    pub fn on_event(&mut self, event: Event, reason: &str, resumable: bool, now_ms: i64) -> bool {
        let Some(next) = self.state.on_event(event) else {
            return false;
        };
        self.state = next;
        self.update_time_ms = now_ms;
        match next {
            TaskState::CheckFailed | TaskState::Failed => {
                self.failure_reason = reason.to_owned();
                self.resumable = resumable && next == TaskState::Failed;
            }
            _ => self.failure_reason.clear(),
        }
        true
    }

    /// Upserts a check item by id.
    pub fn upsert_check(&mut self, item: CheckItem, now_ms: i64) {
        match self.checks.iter_mut().find(|c| c.id == item.id) {
            Some(existing) => *existing = item,
            None => self.checks.push(item),
        }
        self.update_time_ms = now_ms;
    }

    /// Ids of the failed check items, for the failure reason.
    pub fn failed_checks(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .map(|c| c.id.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::InstanceId;
    use crate::spec::TaskKind;
    use crate::Secret;

    fn task() -> Task {
        let spec = TaskSpec {
            name: "t".into(),
            region: "ap-guangzhou".into(),
            kind: TaskKind::PublicNetwork,
            cvm_id: None,
            mongo_host: "127.0.0.1".into(),
            port: 27017,
            username: String::new(),
            password: Secret::default(),
            destination_instance_id: InstanceId::parse("d", "cmgo-6wk2mxa1").unwrap(),
            databases: vec![],
            require_verification: false,
            tenant: crate::DEFAULT_TENANT.into(),
        };
        Task::new(TaskId::generate(), spec, 1)
    }

    #[test]
    fn stop_while_checking_fails_at_once() {
        let mut t = task();
        t.apply(Action::Check, 2).unwrap();
        t.apply(Action::Stop, 3).unwrap();
        assert_eq!(t.state, TaskState::Failed);
        assert_eq!(t.failure_reason, STOPPED_BY_OPERATOR);
    }

    #[test]
    fn irrelevant_event_changes_nothing() {
        let mut t = task();
        let before = t.clone();
        assert!(!t.on_event(Event::Completed, "x", false, 5));
        assert_eq!(t, before);
    }
}

#[cfg(test)]
mod pause_tests {
    use super::*;
    use crate::spec::TaskSpecInput;
    use crate::{TaskId, TaskKind};

    fn running() -> Task {
        let spec = TaskSpec::try_from(TaskSpecInput {
            name: "p".into(),
            region: "ap-guangzhou".into(),
            kind: Some(TaskKind::PublicNetwork),
            mongo_host: "mongo.example.com".into(),
            port: 27017,
            destination_instance_id: "cmgo-6wk2mxa1".into(),
            ..Default::default()
        })
        .unwrap();
        let mut t = Task::new(TaskId::generate(), spec, 0);
        t.state = TaskState::Running;
        t
    }

    #[test]
    fn a_paused_task_must_be_resumed_before_completing_and_stopping_clears_the_pause() {
        let mut t = running();
        t.apply(Action::Pause, 1).unwrap();
        assert!(t.paused);
        let err = t.check(Action::Complete).unwrap_err();
        assert!(matches!(err, CoreError::Precondition(_)));
        assert!(err.to_string().contains("ResumeTask first"));
        assert!(t.apply(Action::Pause, 2).is_err(), "already paused");
        t.apply(Action::Resume, 3).unwrap();
        assert!(!t.paused && t.check(Action::Complete).is_ok());
        assert!(t.apply(Action::Resume, 4).is_err(), "not paused");
        t.apply(Action::Pause, 5).unwrap();
        t.apply(Action::Stop, 6).unwrap();
        assert_eq!(t.state, TaskState::Stopping);
        assert!(!t.paused, "a stopped task is no longer paused");
    }

    #[test]
    fn throttles_read_as_words() {
        assert_eq!(Throttle::default().to_string(), "unlimited");
        let t = Throttle {
            copy_documents_per_second: 1500,
            ..Default::default()
        };
        assert_eq!(
            t.to_string(),
            "copy 1500 docs/s, unlimited B/s; apply unlimited entries/s, unlimited B/s"
        );
    }
}
