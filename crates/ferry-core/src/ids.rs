//! Id newtypes. Each parses (and so validates) its textual form once, at the edge.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Field};

fn is_lower_alnum(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect()
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $len:literal, $check:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates the textual form; `field` names the input in the error.
            pub fn parse(field: Field, value: &str) -> Result<Self, CoreError> {
                if value.is_empty() {
                    return Err(CoreError::invalid(field, concat!("is required (", $what, ")")));
                }
                match value.strip_prefix($prefix) {
                    Some(rest) if rest.len() == $len && $check(rest) => Ok(Self(value.to_owned())),
                    _ => Err(CoreError::invalid(field, format!(concat!("{:?} is malformed: expected ", $what), value))),
                }
            }

            /// The textual form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = CoreError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse("id", &value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

string_id!(
    /// A task id: `task-` + 12 lowercase hex digits.
    TaskId, "task-", 12, is_lower_hex, "\"task-\" + 12 lowercase hex digits"
);
string_id!(
    /// An agent id: `agent-` + 12 lowercase hex digits, chosen by the coordinator at enrollment.
    AgentId, "agent-", 12, is_lower_hex, "\"agent-\" + 12 lowercase hex digits"
);
string_id!(
    /// A destination instance id: `cmgo-` + 8 lowercase alphanumerics.
    InstanceId, "cmgo-", 8, is_lower_alnum, "\"cmgo-\" + 8 lowercase alphanumerics"
);
string_id!(
    /// A CVM instance id: `ins-` + 8 lowercase alphanumerics.
    CvmId, "ins-", 8, is_lower_alnum, "\"ins-\" + 8 lowercase alphanumerics"
);

impl AgentId {
    /// A fresh random agent id.
    pub fn generate() -> Self {
        Self(format!("agent-{}", random_hex(12)))
    }
}

/// A fresh random hex string of `len` digits (public ids such as join token ids).
pub fn random_hex_id(len: usize) -> String {
    random_hex(len)
}

impl TaskId {
    /// A fresh random task id.
    pub fn generate() -> Self {
        Self(format!("task-{}", random_hex(12)))
    }
}

/// Assignment epoch of a task: bumped (and persisted) every time the task is (re)assigned to an agent. Reports
/// carrying another epoch are rejected.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The next epoch.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_their_format() {
        assert!(CvmId::parse("cvm_id", "ins-abc12345").is_ok());
        assert!(CvmId::parse("cvm_id", "ins-ABC12345").is_err());
        assert!(CvmId::parse("cvm_id", "ins-abc1234").is_err());
        assert!(CvmId::parse("cvm_id", "cmgo-abc12345").is_err());
        assert!(InstanceId::parse("i", "cmgo-6wk2mxa1").is_ok());
        assert!(AgentId::parse("a", "agent-0123456789ab").is_ok());
        assert!(AgentId::parse("a", "agent-0123456789ag").is_err());
        let id = TaskId::generate();
        assert_eq!(TaskId::parse("t", id.as_str()), Ok(id));
    }

    #[test]
    fn error_names_the_field() {
        let err = CvmId::parse("spec.cvm_id", "nope").unwrap_err();
        assert!(err.to_string().starts_with("spec.cvm_id:"), "{err}");
    }
}
