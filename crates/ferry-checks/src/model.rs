//! The public vocabulary of the checks: what the agent hands in ([`CheckInput`]) and what comes out
//! ([`CheckItem`]).
//!
//! Owns the item ids and their order. Must not do IO and must never print a password: [`Endpoint`]'s
//! `Debug` redacts it.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Item id: the CVM instance id read from the metadata service equals the task's CVM ID.
pub const CVM_IDENTITY: &str = "cvm_identity";
/// Item id: the task's MongoDB IP is an address of this host and the metadata `local-ipv4`.
pub const PRIVATE_IP: &str = "private_ip";
/// Item id: the agent's region equals the destination instance's region.
pub const REGION: &str = "region";
/// Item id: TCP connect from the agent to the source's host:port.
pub const SOURCE_REACHABLE: &str = "source_reachable";
/// Item id: the source credentials authenticate.
pub const SOURCE_AUTH: &str = "source_auth";
/// Item id: the source user can list databases, read the selected ones and read `local.oplog.rs`.
pub const SOURCE_PRIVILEGES: &str = "source_privileges";
/// Item id: the source is a replica-set member with an oplog.
pub const SOURCE_TOPOLOGY: &str = "source_topology";
/// Item id: source and destination versions are supported (and the destination is not older).
pub const VERSIONS: &str = "versions";
/// Item id: the source's oplog window covers the estimated copy time.
pub const OPLOG_WINDOW: &str = "oplog_window";
/// Item id: the selected databases exist on the source and none is a system database.
pub const DATABASES: &str = "databases";
/// Item id: TCP connect from the agent to the destination.
pub const DESTINATION_REACHABLE: &str = "destination_reachable";
/// Item id: the destination credentials authenticate.
pub const DESTINATION_AUTH: &str = "destination_auth";
/// Item id: no non-empty collection with a source namespace already exists on the destination.
pub const DESTINATION_CONFLICTS: &str = "destination_conflicts";
/// Item id: the destination reports enough free space for the source's data.
pub const DESTINATION_CAPACITY: &str = "destination_capacity";

/// Every item [`crate::run_checks`] produces, in the order it produces them.
pub const ITEM_IDS: [&str; 14] = [
    CVM_IDENTITY,
    PRIVATE_IP,
    REGION,
    SOURCE_REACHABLE,
    SOURCE_AUTH,
    SOURCE_PRIVILEGES,
    SOURCE_TOPOLOGY,
    VERSIONS,
    OPLOG_WINDOW,
    DATABASES,
    DESTINATION_REACHABLE,
    DESTINATION_AUTH,
    DESTINATION_CONFLICTS,
    DESTINATION_CAPACITY,
];

/// Human-readable name of an item id (shown next to the id by GetTask and `ferryctl task check`).
pub fn item_name(id: &str) -> &'static str {
    match id {
        CVM_IDENTITY => "CVM identity and status",
        PRIVATE_IP => "MongoDB private IP",
        REGION => "Region",
        SOURCE_REACHABLE => "Source reachable",
        SOURCE_AUTH => "Source authentication",
        SOURCE_PRIVILEGES => "Source privileges",
        SOURCE_TOPOLOGY => "Source topology",
        VERSIONS => "Server versions",
        OPLOG_WINDOW => "Oplog window",
        DATABASES => "Selected databases",
        DESTINATION_REACHABLE => "Destination reachable",
        DESTINATION_AUTH => "Destination authentication",
        DESTINATION_CONFLICTS => "Destination conflicts",
        DESTINATION_CAPACITY => "Destination capacity",
        _ => "Unknown check",
    }
}

/// A MongoDB deployment and the credentials to log into it.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Connection string without credentials, e.g. `mongodb://HOST:PORT/?directConnection=true`.
    pub uri: String,
    /// User name; empty means no authentication.
    pub username: String,
    /// Password; never logged, never part of a message (see the hand-written `Debug`).
    pub password: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("uri", &self.uri)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the agent knows about the machine it runs on, from the cloud metadata service and the host's
/// interfaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalIdentity {
    /// Metadata `instance-id`.
    pub metadata_instance_id: Option<String>,
    /// Metadata region (e.g. `ap-guangzhou`).
    pub metadata_region: Option<String>,
    /// Metadata `local-ipv4`: the CVM's primary private IP.
    pub metadata_local_ipv4: Option<String>,
    /// Every address bound to one of this host's interfaces.
    pub interface_ips: Vec<IpAddr>,
    /// Host uptime; an agent answering from the CVM shows that the instance runs.
    pub uptime_seconds: Option<u64>,
    /// Why the metadata service could not be read, if it could not.
    pub metadata_error: Option<String>,
}

/// Where the source runs, which decides which items apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// Source on a cloud VM; the agent runs on that VM and checks it locally.
    Cvm,
    /// Source reachable over the network; a pool agent runs the task; no CVM items.
    PublicNetwork,
}

/// Everything one check run needs.
#[derive(Clone, Debug)]
pub struct CheckInput {
    /// CVM or public-network task.
    pub kind: TaskKind,
    /// The task's CVM ID (empty for public-network tasks).
    pub cvm_id: String,
    /// The task's MongoDB host (an IP for CVM tasks).
    pub mongo_host: String,
    /// The task's MongoDB port.
    pub port: u16,
    /// The source; uri `mongodb://HOST:PORT/?directConnection=true`.
    pub source: Endpoint,
    /// Databases to migrate; empty means every non-system database.
    pub databases: Vec<String>,
    /// The destination instance.
    pub destination: Endpoint,
    /// The destination instance's region.
    pub destination_region: String,
    /// What the agent read locally.
    pub identity: LocalIdentity,
    /// Bytes per second used to estimate the copy time; 0 = [`crate::DEFAULT_COPY_RATE_BYTES_PER_SECOND`].
    pub copy_rate_bytes_per_second: u64,
    /// Where that rate comes from, shown next to it (e.g. "configured", "measured by this agent's last full
    /// copy"); empty with a rate of 0 means the checks' default.
    pub copy_rate_origin: String,
    /// Upper bound of each item; zero = [`crate::DEFAULT_ITEM_TIMEOUT`].
    pub item_timeout: Duration,
}

/// Outcome of one item. The task passes its checks only when no item is `Fail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    /// The condition holds.
    Pass,
    /// The migration can run but the operator should look (e.g. a thin oplog margin).
    Warn,
    /// The migration must not start.
    Fail,
    /// The item does not apply or could not run because an earlier item failed (the message says which).
    Skipped,
}

impl CheckStatus {
    /// `PASS`, `WARN`, `FAIL` or `SKIPPED`, as operators see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
            Self::Skipped => "SKIPPED",
        }
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// True when no item failed: the only condition for CHECK_PASSED (WARN and SKIPPED do not block).
pub fn checks_passed(items: &[CheckItem]) -> bool {
    items.iter().all(|item| item.status != CheckStatus::Fail)
}

/// One finished check item.
#[derive(Clone, Debug)]
pub struct CheckItem {
    /// Stable id, one of [`ITEM_IDS`].
    pub id: &'static str,
    /// Human-readable name.
    pub name: String,
    /// Outcome.
    pub status: CheckStatus,
    /// The measured facts.
    pub message: String,
    /// What the operator can do about a WARN or FAIL (empty on PASS and SKIPPED).
    pub fix: String,
    /// How long the item took.
    pub duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_debug_redacts_the_password() {
        let endpoint = Endpoint {
            uri: "mongodb://127.0.0.1:27017/".into(),
            username: "root".into(),
            password: "hunter2-secret".into(),
        };
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("root"));
    }

    #[test]
    fn only_fail_blocks() {
        let item = |status| CheckItem {
            id: SOURCE_AUTH,
            name: item_name(SOURCE_AUTH).into(),
            status,
            message: "m".into(),
            fix: String::new(),
            duration: Duration::ZERO,
        };
        let ok = [
            item(CheckStatus::Pass),
            item(CheckStatus::Warn),
            item(CheckStatus::Skipped),
        ];
        assert!(checks_passed(&ok));
        assert!(!checks_passed(&[
            item(CheckStatus::Pass),
            item(CheckStatus::Fail)
        ]));
        assert_eq!(CheckStatus::Skipped.to_string(), "SKIPPED");
    }

    #[test]
    fn every_item_has_a_name() {
        for id in ITEM_IDS {
            assert_ne!(item_name(id), "Unknown check", "{id}");
        }
    }
}
