//! Errors of the domain layer: invalid input (naming the field) and illegal transitions (naming the state and the
//! actions allowed in it). The coordinator maps them to gRPC status codes; nothing here knows about gRPC.

use crate::state::{Action, Failure, TaskState};

/// Dotted path of an input field, e.g. `spec.port`, as shown to operators.
pub type Field = &'static str;

/// Why a domain operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// An input field is malformed or out of range.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The offending field, e.g. `spec.port`.
        field: Field,
        /// Why it was refused.
        reason: String,
    },
    /// The action is not allowed now for a reason other than the state (e.g. the task is paused).
    #[error("{0}")]
    Precondition(String),
    /// The action is not allowed in the task's current state.
    #[error("{}", fmt_illegal(*.state, *.failure, *.action, .allowed))]
    IllegalTransition {
        /// The task's current state.
        state: TaskState,
        /// What a FAILED task can still do.
        failure: Failure,
        /// What the caller tried.
        action: Action,
        /// What is allowed in `state`.
        allowed: Vec<Action>,
    },
}

impl CoreError {
    /// Shorthand for [`CoreError::InvalidArgument`].
    pub fn invalid(field: Field, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

fn fmt_illegal(state: TaskState, failure: Failure, action: Action, allowed: &[Action]) -> String {
    let failed = state == TaskState::Failed;
    let label = match failure {
        Failure::Resumable if failed => format!("{state} (resumable)"),
        Failure::Permanent if failed => format!("{state} (not resumable)"),
        _ => state.to_string(),
    };
    let mut msg = format!(
        "task is {label}: {action} is not allowed; allowed actions in {label}: {}",
        fmt_actions(allowed)
    );
    if failed && action == Action::Start && failure != Failure::Resumable {
        msg.push_str(if failure == Failure::Permanent {
            " (the failure is not resumable: roll back what it created with StopTask, then create a new task to migrate again)"
        } else {
            " (the failure is not resumable: create a new task to migrate again)"
        });
    }
    if failed && action == Action::Stop && failure == Failure::Final {
        msg.push_str(" (nothing left to roll back: the task was stopped already or failed before creating anything)");
    }
    msg
}

fn fmt_actions(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "none".to_owned();
    }
    actions
        .iter()
        .map(|a| a.rpc_name())
        .collect::<Vec<_>>()
        .join(", ")
}
