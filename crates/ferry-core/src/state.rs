//! The task state machine (DESIGN.md "Task lifecycle"), enforced here and only here.
//!
//! Operator actions ([`Action`]) and agent/coordinator events ([`Event`]) are checked against the current state;
//! an illegal one yields [`CoreError::IllegalTransition`] naming the state and what is allowed in it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// What a FAILED task can still do (meaningless in other states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// It can continue from its last checkpoint (StartTask) or be rolled back (StopTask).
    Resumable,
    /// It cannot continue, but what it created on the destination can still be rolled back (StopTask).
    Permanent,
    /// Nothing is left to undo: it was rolled back by StopTask, or failed before creating anything.
    Final,
}

/// Lifecycle state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    NotStarted,
    Checking,
    CheckPassed,
    CheckFailed,
    Running,
    Completing,
    Succeeded,
    Stopping,
    Failed,
}

impl TaskState {
    /// Every state, for tables and property tests.
    pub const ALL: [TaskState; 9] = [
        TaskState::NotStarted,
        TaskState::Checking,
        TaskState::CheckPassed,
        TaskState::CheckFailed,
        TaskState::Running,
        TaskState::Completing,
        TaskState::Succeeded,
        TaskState::Stopping,
        TaskState::Failed,
    ];

    /// The operator-facing name (the proto enum value without its prefix).
    pub fn name(self) -> &'static str {
        match self {
            TaskState::NotStarted => "NOT_STARTED",
            TaskState::Checking => "CHECKING",
            TaskState::CheckPassed => "CHECK_PASSED",
            TaskState::CheckFailed => "CHECK_FAILED",
            TaskState::Running => "RUNNING",
            TaskState::Completing => "COMPLETING",
            TaskState::Succeeded => "SUCCEEDED",
            TaskState::Stopping => "STOPPING",
            TaskState::Failed => "FAILED",
        }
    }

    /// States in which an agent works on the task (it must not be deleted or edited).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            TaskState::Checking | TaskState::Running | TaskState::Completing | TaskState::Stopping
        )
    }

    /// States after which nothing more happens.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed)
    }

    /// Operator actions allowed in this state. `failure`: what a FAILED task can still do (ignored in other
    /// states).
    pub fn allowed_actions(self, failure: Failure) -> Vec<Action> {
        Action::ALL
            .into_iter()
            .filter(|a| a.target(self, failure).is_some())
            .collect()
    }

    /// Applies an operator action: the next state, or why not. `failure` as for [`Self::allowed_actions`].
    pub fn apply(self, action: Action, failure: Failure) -> Result<TaskState, CoreError> {
        action
            .target(self, failure)
            .ok_or_else(|| CoreError::IllegalTransition {
                state: self,
                failure,
                action,
                allowed: self.allowed_actions(failure),
            })
    }

    /// Applies an event reported by an agent (or produced by the coordinator). `None`: the event means nothing in
    /// this state and must change nothing.
    pub fn on_event(self, event: Event) -> Option<TaskState> {
        use TaskState as S;
        match (self, event) {
            (S::Checking, Event::ChecksPassed) => Some(S::CheckPassed),
            (S::Checking, Event::ChecksFailed | Event::CommandError) => Some(S::CheckFailed),
            (S::NotStarted | S::CheckPassed | S::CheckFailed, Event::NoAgentForChecks) => {
                Some(S::CheckFailed)
            }
            (S::Completing, Event::Completed) => Some(S::Succeeded),
            (S::Running | S::Completing | S::Stopping, Event::Failed | Event::CommandError) => {
                Some(S::Failed)
            }
            (S::Stopping, Event::Stopped) => Some(S::Failed),
            _ => None,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An operator action on a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Update,
    Delete,
    Check,
    Start,
    Complete,
    Stop,
    /// Runs the product verifier; the state does not change.
    Verify,
    /// Stops copy and apply of a RUNNING task (the oplog keeps spooling); the state does not change.
    Pause,
    /// Continues a paused task.
    Resume,
    /// Changes the copy and apply limits of a task that has not ended; the state does not change.
    Throttle,
}

impl Action {
    /// Every action, in the order they are listed to operators.
    pub const ALL: [Action; 10] = [
        Action::Check,
        Action::Start,
        Action::Complete,
        Action::Stop,
        Action::Verify,
        Action::Pause,
        Action::Resume,
        Action::Throttle,
        Action::Update,
        Action::Delete,
    ];

    /// The RPC that performs the action, as operators know it.
    pub fn rpc_name(self) -> &'static str {
        match self {
            Action::Update => "UpdateTask",
            Action::Delete => "DeleteTask",
            Action::Check => "CheckTask",
            Action::Start => "StartTask",
            Action::Complete => "CompleteTask",
            Action::Stop => "StopTask",
            Action::Verify => "VerifyTask",
            Action::Pause => "PauseTask",
            Action::Resume => "ResumeTask",
            Action::Throttle => "SetTaskThrottle",
        }
    }

    /// The state after this action from `from`, or `None` when illegal. `Delete` "targets" the same state: the
    /// record is removed by the caller. `Stop` in CHECKING fails the task at once (nothing was created yet). A
    /// resumable FAILED task can be started again (it resumes from its last checkpoint); any FAILED task that may
    /// have left data on the destination can be stopped (its partial copy is rolled back).
    fn target(self, from: TaskState, failure: Failure) -> Option<TaskState> {
        use TaskState as S;
        let resumable = from == S::Failed && failure == Failure::Resumable;
        match (self, from) {
            (Action::Start, S::Failed) if resumable => Some(S::Running),
            (Action::Stop, S::Failed) if failure != Failure::Final => Some(S::Stopping),
            (Action::Update, S::NotStarted | S::CheckPassed | S::CheckFailed) => {
                Some(S::NotStarted)
            }
            (Action::Delete, s) if !s.is_active() => Some(s),
            (Action::Check, S::NotStarted | S::CheckPassed | S::CheckFailed) => Some(S::Checking),
            (Action::Start, S::CheckPassed) => Some(S::Running),
            (Action::Complete, S::Running) => Some(S::Completing),
            (Action::Stop, S::Checking) => Some(S::Failed),
            (Action::Stop, S::Running | S::Completing) => Some(S::Stopping),
            // Online while the migration runs (the coordinator also requires OPLOG_SYNC), or after the cut-over.
            (Action::Verify, S::Running | S::Succeeded) => Some(from),
            (Action::Pause | Action::Resume, S::Running) => Some(from),
            (Action::Throttle, s) if !s.is_terminal() || (s == S::Failed && resumable) => {
                Some(from)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rpc_name())
    }
}

/// Something that happened to a task outside an operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The agent finished the checks and none failed.
    ChecksPassed,
    /// The agent finished the checks and at least one failed.
    ChecksFailed,
    /// CheckTask found no eligible agent connected.
    NoAgentForChecks,
    /// The migration completed.
    Completed,
    /// The migration failed.
    Failed,
    /// The rollback after StopMigration finished.
    Stopped,
    /// The agent could not act on a command.
    CommandError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Failure::{Final, Permanent, Resumable};

    #[test]
    fn the_documented_lifecycle_is_legal() {
        use TaskState as S;
        assert_eq!(S::NotStarted.apply(Action::Check, Final), Ok(S::Checking));
        assert_eq!(
            S::Checking.on_event(Event::ChecksPassed),
            Some(S::CheckPassed)
        );
        assert_eq!(S::CheckPassed.apply(Action::Start, Final), Ok(S::Running));
        assert_eq!(S::Running.apply(Action::Complete, Final), Ok(S::Completing));
        assert_eq!(S::Completing.on_event(Event::Completed), Some(S::Succeeded));
        assert_eq!(S::Running.apply(Action::Stop, Final), Ok(S::Stopping));
        assert_eq!(S::Stopping.on_event(Event::Stopped), Some(S::Failed));
        assert_eq!(S::Checking.apply(Action::Stop, Final), Ok(S::Failed));
        assert_eq!(S::CheckFailed.apply(Action::Check, Final), Ok(S::Checking));
    }

    #[test]
    fn illegal_transition_names_state_and_allowed_actions() {
        let err = TaskState::NotStarted
            .apply(Action::Start, Final)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("NOT_STARTED"), "{msg}");
        assert!(msg.contains("StartTask is not allowed"), "{msg}");
        assert!(
            msg.contains("CheckTask, SetTaskThrottle, UpdateTask, DeleteTask"),
            "{msg}"
        );
    }

    #[test]
    fn pause_resume_only_while_running_and_throttle_until_the_task_ends() {
        use TaskState as S;
        for s in TaskState::ALL {
            assert_eq!(
                s.apply(Action::Pause, Final).is_ok(),
                s == S::Running,
                "{s}"
            );
            assert_eq!(
                s.apply(Action::Resume, Final).is_ok(),
                s == S::Running,
                "{s}"
            );
            assert_eq!(
                s.apply(Action::Throttle, Final).is_ok(),
                !s.is_terminal(),
                "{s}"
            );
        }
        assert_eq!(S::Failed.apply(Action::Throttle, Resumable), Ok(S::Failed));
    }

    #[test]
    fn only_a_resumable_failure_starts_again_and_any_failure_with_data_rolls_back() {
        use TaskState as S;
        assert_eq!(S::Failed.allowed_actions(Final), vec![Action::Delete]);
        assert_eq!(
            S::Failed.allowed_actions(Permanent),
            vec![Action::Stop, Action::Delete]
        );
        assert_eq!(
            S::Failed.allowed_actions(Resumable),
            vec![
                Action::Start,
                Action::Stop,
                Action::Throttle,
                Action::Delete
            ]
        );
        assert_eq!(S::Failed.apply(Action::Start, Resumable), Ok(S::Running));
        assert_eq!(S::Failed.apply(Action::Stop, Resumable), Ok(S::Stopping));
        assert_eq!(S::Failed.apply(Action::Stop, Permanent), Ok(S::Stopping));
        let msg = S::Failed
            .apply(Action::Check, Resumable)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("task is FAILED (resumable)"), "{msg}");
        assert!(
            msg.contains("StartTask, StopTask, SetTaskThrottle, DeleteTask"),
            "{msg}"
        );
        let msg = S::Failed
            .apply(Action::Start, Permanent)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("task is FAILED (not resumable):"), "{msg}");
        assert!(
            msg.contains("roll back what it created with StopTask"),
            "{msg}"
        );
        let msg = S::Failed
            .apply(Action::Stop, Final)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("task is FAILED:"), "{msg}");
        assert!(msg.contains("nothing left to roll back"), "{msg}");
    }

    proptest! {
        #[test]
        fn active_tasks_are_never_deleted_or_updated(i in 0usize..9, f in 0usize..3) {
            let s = TaskState::ALL[i];
            let failure = [Resumable, Permanent, Final][f];
            if s.is_active() {
                prop_assert!(s.apply(Action::Delete, failure).is_err());
                prop_assert!(s.apply(Action::Update, failure).is_err());
            }
        }

        #[test]
        fn the_failure_only_matters_in_failed(i in 0usize..9) {
            let s = TaskState::ALL[i];
            if s != TaskState::Failed {
                prop_assert_eq!(s.allowed_actions(Resumable), s.allowed_actions(Final));
                prop_assert_eq!(s.allowed_actions(Permanent), s.allowed_actions(Final));
            }
        }

        #[test]
        fn terminal_states_only_allow_delete_and_verify_unless_resumable(i in 0usize..9) {
            let s = TaskState::ALL[i];
            match s {
                TaskState::Succeeded => {
                    prop_assert_eq!(s.allowed_actions(Final), vec![Action::Verify, Action::Delete])
                }
                TaskState::Failed => prop_assert_eq!(s.allowed_actions(Final), vec![Action::Delete]),
                _ => {}
            }
        }

        #[test]
        fn an_error_lists_exactly_the_allowed_actions(i in 0usize..9, j in 0usize..7, f in 0usize..3) {
            let s = TaskState::ALL[i];
            let a = Action::ALL[j];
            let failure = [Resumable, Permanent, Final][f];
            match s.apply(a, failure) {
                Ok(_) => prop_assert!(s.allowed_actions(failure).contains(&a)),
                Err(CoreError::IllegalTransition { allowed, .. }) => {
                    prop_assert!(!allowed.contains(&a));
                    prop_assert_eq!(allowed, s.allowed_actions(failure));
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }
}
