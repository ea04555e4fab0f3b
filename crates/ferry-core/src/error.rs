//! Errors of the domain layer: invalid input (naming the field) and illegal transitions (naming the state and the
//! actions allowed in it). The coordinator maps them to gRPC status codes; nothing here knows about gRPC.

use crate::state::{Action, TaskState};

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
    /// The action is not allowed in the task's current state.
    #[error("task is {state}: {action} is not allowed; allowed actions in {state}: {}", fmt_actions(.allowed))]
    IllegalTransition {
        /// The task's current state.
        state: TaskState,
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
