//! Task specs and destination instances: the raw operator input, and the validated forms the rest of the program
//! works on. Validation names the offending field (`spec.port`, `instance.uri`, ...).
//!
//! Checks that need the catalog (does the destination exist, is it in the same region) live in the coordinator.

use std::collections::HashSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::ids::{CvmId, InstanceId};
use crate::secret::Secret;

/// Databases that are never migrated.
pub const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];

/// Longest task name, in characters.
pub const MAX_NAME_CHARS: usize = 60;

/// Where the source lives, which decides which agent runs the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    /// Source on a CVM; the agent on that CVM runs the task.
    Cvm,
    /// Source reachable over the internet; any pool agent runs the task.
    PublicNetwork,
}

/// Operator input for a task, as received (not yet validated). `kind` is `None` when unspecified.
#[derive(Debug, Clone, Default)]
pub struct TaskSpecInput {
    pub name: String,
    pub region: String,
    pub kind: Option<TaskKind>,
    pub cvm_id: String,
    pub mongo_host: String,
    pub port: u32,
    pub username: String,
    pub password: Secret,
    pub destination_instance_id: String,
    pub databases: Vec<String>,
    pub require_verification: bool,
}

/// A validated task spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    pub region: String,
    pub kind: TaskKind,
    /// Set exactly for [`TaskKind::Cvm`].
    pub cvm_id: Option<CvmId>,
    pub mongo_host: String,
    pub port: u16,
    pub username: String,
    /// Never serialised by this type: the store encrypts it separately.
    #[serde(skip)]
    pub password: Secret,
    pub destination_instance_id: InstanceId,
    /// Empty means every non-system database.
    pub databases: Vec<String>,
    /// CompleteTask verifies the destination before the task succeeds (as if every CompleteTask asked).
    #[serde(default)]
    pub require_verification: bool,
}

impl TryFrom<TaskSpecInput> for TaskSpec {
    type Error = CoreError;

    fn try_from(input: TaskSpecInput) -> Result<Self, Self::Error> {
        let name = input.name.trim().to_owned();
        if name.is_empty() {
            return Err(CoreError::invalid("spec.name", "is required"));
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(CoreError::invalid(
                "spec.name",
                format!("is longer than {MAX_NAME_CHARS} characters"),
            ));
        }
        validate_region("spec.region", &input.region)?;
        let kind = input
            .kind
            .ok_or_else(|| CoreError::invalid("spec.kind", "must be CVM or PUBLIC_NETWORK"))?;
        let cvm_id = match kind {
            TaskKind::Cvm => Some(CvmId::parse("spec.cvm_id", &input.cvm_id)?),
            TaskKind::PublicNetwork if !input.cvm_id.is_empty() => {
                return Err(CoreError::invalid(
                    "spec.cvm_id",
                    "must be empty for a PUBLIC_NETWORK task",
                ));
            }
            TaskKind::PublicNetwork => None,
        };
        validate_host(kind, &input.mongo_host)?;
        let port = match u16::try_from(input.port) {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(CoreError::invalid(
                    "spec.port",
                    format!("{} is out of range 1..65535", input.port),
                ))
            }
        };
        if input.password.is_set() && input.username.is_empty() {
            return Err(CoreError::invalid(
                "spec.username",
                "is required when a password is given",
            ));
        }
        let destination_instance_id = InstanceId::parse(
            "spec.destination_instance_id",
            &input.destination_instance_id,
        )?;
        validate_databases(&input.databases)?;
        Ok(Self {
            name,
            region: input.region,
            kind,
            cvm_id,
            mongo_host: input.mongo_host,
            port,
            username: input.username,
            password: input.password,
            destination_instance_id,
            databases: input.databases,
            require_verification: input.require_verification,
        })
    }
}

fn validate_region(field: &'static str, region: &str) -> Result<(), CoreError> {
    if region.is_empty() {
        return Err(CoreError::invalid(
            field,
            "is required (e.g. \"ap-guangzhou\")",
        ));
    }
    let ok = region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if !ok {
        return Err(CoreError::invalid(
            field,
            format!("{region:?} is malformed (e.g. \"ap-guangzhou\")"),
        ));
    }
    Ok(())
}

fn validate_host(kind: TaskKind, host: &str) -> Result<(), CoreError> {
    const FIELD: &str = "spec.mongo_host";
    if host.is_empty() {
        return Err(CoreError::invalid(FIELD, "is required"));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if kind == TaskKind::Cvm {
        return Err(CoreError::invalid(
            FIELD,
            format!("{host:?} is not a valid IP address (the CVM's private IP)"),
        ));
    }
    if !is_dns_name(host) {
        return Err(CoreError::invalid(
            FIELD,
            format!("{host:?} is neither an IP address nor a host name"),
        ));
    }
    Ok(())
}

fn is_dns_name(host: &str) -> bool {
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    // A name made only of digits and dots is a malformed IPv4 address, not a host name.
    let all_numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    host.len() <= 253 && labels_ok && !all_numeric
}

fn validate_databases(databases: &[String]) -> Result<(), CoreError> {
    const FIELD: &str = "spec.databases";
    let mut seen = HashSet::new();
    for db in databases {
        if db.is_empty() {
            return Err(CoreError::invalid(FIELD, "contains an empty name"));
        }
        if SYSTEM_DATABASES.contains(&db.as_str()) {
            return Err(CoreError::invalid(
                FIELD,
                format!("{db:?} is a system database and is never migrated"),
            ));
        }
        if db.len() >= 64 || db.chars().any(|c| "/\\. \"$*<>:|?\0".contains(c)) {
            return Err(CoreError::invalid(
                FIELD,
                format!("{db:?} is not a valid database name"),
            ));
        }
        if !seen.insert(db.as_str()) {
            return Err(CoreError::invalid(FIELD, format!("{db:?} is listed twice")));
        }
    }
    Ok(())
}

/// Operator input for a destination instance, as received.
#[derive(Debug, Clone, Default)]
pub struct InstanceInput {
    pub instance_id: String,
    pub region: String,
    pub uri: String,
    pub username: String,
    pub password: Secret,
}

/// A validated destination instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub instance_id: InstanceId,
    pub region: String,
    /// `mongodb://` or `mongodb+srv://` URI without credentials.
    pub uri: String,
    pub username: String,
    /// Never serialised by this type: the store encrypts it separately.
    #[serde(skip)]
    pub password: Secret,
    /// Unix milliseconds.
    pub create_time_ms: i64,
}

impl Instance {
    /// Validates operator input; `now_ms` becomes the creation time.
    pub fn from_input(input: InstanceInput, now_ms: i64) -> Result<Self, CoreError> {
        let instance_id = InstanceId::parse("instance.instance_id", &input.instance_id)?;
        validate_region("instance.region", &input.region)?;
        let rest = input
            .uri
            .strip_prefix("mongodb://")
            .or_else(|| input.uri.strip_prefix("mongodb+srv://"))
            .ok_or_else(|| {
                CoreError::invalid(
                    "instance.uri",
                    "must start with mongodb:// or mongodb+srv://",
                )
            })?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if authority.is_empty() {
            return Err(CoreError::invalid("instance.uri", "has no host"));
        }
        if authority.contains('@') {
            return Err(CoreError::invalid(
                "instance.uri",
                "must not carry credentials: pass them as username and password",
            ));
        }
        if input.password.is_set() && input.username.is_empty() {
            return Err(CoreError::invalid(
                "instance.username",
                "is required when a password is given",
            ));
        }
        Ok(Self {
            instance_id,
            region: input.region,
            uri: input.uri,
            username: input.username,
            password: input.password,
            create_time_ms: now_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn good_input() -> TaskSpecInput {
        TaskSpecInput {
            name: "orders".into(),
            region: "ap-guangzhou".into(),
            kind: Some(TaskKind::Cvm),
            cvm_id: "ins-abc12345".into(),
            mongo_host: "127.0.0.1".into(),
            port: 27017,
            username: "root".into(),
            password: Secret::new("pw"),
            destination_instance_id: "cmgo-6wk2mxa1".into(),
            databases: vec!["shop".into()],
            require_verification: false,
        }
    }

    #[test]
    fn good_spec_validates() {
        let spec = TaskSpec::try_from(good_input()).unwrap();
        assert_eq!(spec.port, 27017);
        assert_eq!(spec.cvm_id.unwrap().as_str(), "ins-abc12345");
    }

    #[test]
    fn bad_fields_are_named() {
        type Mutate = fn(&mut TaskSpecInput);
        let cases: Vec<(&str, Mutate)> = vec![
            ("spec.name", |i| i.name = String::new()),
            ("spec.name", |i| i.name = "x".repeat(61)),
            ("spec.region", |i| i.region = String::new()),
            ("spec.region", |i| i.region = "AP Guangzhou".into()),
            ("spec.kind", |i| i.kind = None),
            ("spec.cvm_id", |i| i.cvm_id = "ins-1".into()),
            ("spec.cvm_id", |i| i.cvm_id = String::new()),
            ("spec.cvm_id", |i| i.kind = Some(TaskKind::PublicNetwork)),
            ("spec.mongo_host", |i| i.mongo_host = "127.0.0.300".into()),
            ("spec.mongo_host", |i| i.mongo_host = "not-an-ip".into()),
            ("spec.mongo_host", |i| i.mongo_host = String::new()),
            ("spec.port", |i| i.port = 0),
            ("spec.port", |i| i.port = 65536),
            ("spec.username", |i| i.username = String::new()),
            ("spec.destination_instance_id", |i| {
                i.destination_instance_id = "cmgo-x".into()
            }),
            ("spec.databases", |i| i.databases = vec!["admin".into()]),
            ("spec.databases", |i| i.databases = vec!["local".into()]),
            ("spec.databases", |i| i.databases = vec!["config".into()]),
            ("spec.databases", |i| {
                i.databases = vec!["a".into(), "a".into()]
            }),
            ("spec.databases", |i| i.databases = vec!["a.b".into()]),
        ];
        for (field, mutate) in cases {
            let mut input = good_input();
            mutate(&mut input);
            match TaskSpec::try_from(input) {
                Err(CoreError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected InvalidArgument on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn public_network_accepts_host_names() {
        let mut input = good_input();
        input.kind = Some(TaskKind::PublicNetwork);
        input.cvm_id = String::new();
        input.mongo_host = "localhost".into();
        assert!(TaskSpec::try_from(input).is_ok());
    }

    #[test]
    fn instance_uri_must_not_carry_credentials() {
        let input = InstanceInput {
            instance_id: "cmgo-6wk2mxa1".into(),
            region: "ap-guangzhou".into(),
            uri: "mongodb://u:p@127.0.0.1:27017".into(),
            username: "u".into(),
            password: Secret::new("p"),
        };
        let err = Instance::from_input(input, 0).unwrap_err();
        assert!(matches!(
            err,
            CoreError::InvalidArgument {
                field: "instance.uri",
                ..
            }
        ));
    }
}
