//! The decisions: each item's status, message and fix as a pure function of measured facts.
//!
//! Owns the thresholds (supported versions, oplog margin) and the wording operators see. Must not do IO:
//! the probes measure, this module judges, so every rule is unit-tested without a server.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{CheckStatus, LocalIdentity};

/// Oldest supported MongoDB release (major, minor), source and destination.
pub const MIN_SUPPORTED_VERSION: (u32, u32) = (4, 0);
/// Newest supported MongoDB release (major, minor), source and destination.
pub const MAX_SUPPORTED_VERSION: (u32, u32) = (8, 0);
/// An oplog window below this multiple of the copy time leaves little room for catch-up: WARN.
pub const OPLOG_MARGIN_FACTOR: f64 = 2.0;
/// The databases that are never migrated.
pub const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];
/// An oplog whose used size is below this fraction of its maximum has not rolled over yet. A real server
/// truncates a full oplog one truncate marker at a time, and keeps at least 10 markers (`minOplogTruncateMarkers`),
/// so a rolled-over oplog stays above 90 % of `maxSize`; a fresh one at 90 % or more is judged by its span, which
/// is the conservative direction.
const OPLOG_FULL_FRACTION: f64 = 0.9;
/// The shortest history a write rate is measured over: with less, the rate is taken as everything written so
/// far per this many seconds, the fastest rate consistent with what was observed (conservative).
pub(crate) const MIN_RATE_SPAN_SECS: u64 = 1;

/// The judgement of one item, before the runner stamps id, name and duration on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub status: CheckStatus,
    pub message: String,
    pub fix: String,
}

impl Verdict {
    pub fn pass(message: impl Into<String>) -> Self {
        Self::new(CheckStatus::Pass, message.into(), String::new())
    }
    pub fn warn(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(CheckStatus::Warn, message.into(), fix.into())
    }
    pub fn fail(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(CheckStatus::Fail, message.into(), fix.into())
    }
    pub fn skipped(message: impl Into<String>) -> Self {
        Self::new(CheckStatus::Skipped, message.into(), String::new())
    }
    fn new(status: CheckStatus, message: String, fix: String) -> Self {
        Self {
            status,
            message,
            fix,
        }
    }
}

/// `cvm_identity`: the metadata instance id equals the task's CVM ID; the agent's uptime shows the CVM runs.
pub(crate) fn cvm_identity(cvm_id: &str, identity: &LocalIdentity) -> Verdict {
    let Some(instance_id) = identity.metadata_instance_id.as_deref() else {
        let reason = identity
            .metadata_error
            .as_deref()
            .unwrap_or("no instance-id returned");
        return Verdict::fail(
            format!("could not read the instance id from the metadata service: {reason}"),
            format!(
                "run ferry-agent on CVM {cvm_id} and check that it can reach the metadata service"
            ),
        );
    };
    if instance_id != cvm_id {
        return Verdict::fail(
            format!(
                "this agent runs on CVM {instance_id} (metadata instance-id), not on the task's CVM {cvm_id}"
            ),
            format!(
                "correct the task's CVM ID, or install and start ferry-agent on CVM {cvm_id}"
            ),
        );
    }
    let uptime = identity
        .uptime_seconds
        .map(|s| format!(", up {}", format_uptime(s)))
        .unwrap_or_default();
    Verdict::pass(format!(
        "metadata instance-id {instance_id} equals the task's CVM ID; the CVM is running{uptime}"
    ))
}

/// `private_ip`: the task's MongoDB host resolves to an address of this host, equal to metadata `local-ipv4`.
pub(crate) fn private_ip(
    cvm_id: &str,
    mongo_host: &str,
    resolved: &[IpAddr],
    identity: &LocalIdentity,
) -> Verdict {
    let interfaces = join_display(identity.interface_ips.iter());
    let Some(local) = resolved
        .iter()
        .find(|ip| identity.interface_ips.contains(ip))
    else {
        let shown = if resolved.len() == 1 && resolved[0].to_string() == mongo_host {
            mongo_host.to_string()
        } else {
            format!("{mongo_host} ({})", join_display(resolved.iter()))
        };
        return Verdict::fail(
            format!(
                "MongoDB IP {shown} is not an address of this host (interfaces: {interfaces})"
            ),
            format!(
                "set the task's MongoDB IP to the private IP of CVM {cvm_id}{}, or run the task on the CVM that hosts MongoDB",
                metadata_ip_hint(identity)
            ),
        );
    };
    let Some(metadata_ip) = identity.metadata_local_ipv4.as_deref() else {
        let reason = identity
            .metadata_error
            .as_deref()
            .unwrap_or("metadata returned no local-ipv4");
        return Verdict::pass(format!(
            "MongoDB IP {local} is an address of this host; local-ipv4 not compared: {reason}"
        ));
    };
    let matches = metadata_ip
        .parse::<IpAddr>()
        .map(|ip| ip == *local)
        .unwrap_or(false);
    if !matches {
        return Verdict::fail(
            format!(
                "MongoDB IP {local} is an address of this host but not the CVM's private IP (metadata local-ipv4 {metadata_ip})"
            ),
            format!("set the task's MongoDB IP to {metadata_ip}, the private IP of CVM {cvm_id}"),
        );
    }
    Verdict::pass(format!(
        "MongoDB IP {local} is an address of this host and equals metadata local-ipv4"
    ))
}

fn metadata_ip_hint(identity: &LocalIdentity) -> String {
    identity
        .metadata_local_ipv4
        .as_deref()
        .map(|ip| format!(" (metadata local-ipv4 {ip})"))
        .unwrap_or_default()
}

/// `region`: the agent's region equals the destination's (cross-region CVM migration is not supported).
pub(crate) fn region(identity: &LocalIdentity, destination_region: &str) -> Verdict {
    let Some(agent_region) = identity.metadata_region.as_deref() else {
        let reason = identity
            .metadata_error
            .as_deref()
            .unwrap_or("metadata returned no region");
        return Verdict::skipped(format!(
            "agent region unknown: {reason} (see {})",
            crate::model::CVM_IDENTITY
        ));
    };
    if destination_region.is_empty() {
        return Verdict::fail(
            format!("agent region {agent_region}; the destination instance has no region"),
            "set the destination instance's region in the coordinator's instance catalog",
        );
    }
    if agent_region != destination_region {
        return Verdict::fail(
            format!(
                "agent region {agent_region} differs from destination region {destination_region}: cross-region CVM migration is not supported"
            ),
            format!(
                "migrate into an instance in {agent_region}, or create a public-network task instead"
            ),
        );
    }
    Verdict::pass(format!(
        "agent region {agent_region} equals the destination's"
    ))
}

/// A MongoDB server version as `buildInfo` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub text: String,
}

impl ServerVersion {
    /// Parses `buildInfo.version`, e.g. `7.0.2` or `8.0.0-rc3`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(['.', '-']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self {
            major,
            minor,
            text: text.to_string(),
        })
    }

    fn major_minor(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    fn supported(&self) -> bool {
        (MIN_SUPPORTED_VERSION..=MAX_SUPPORTED_VERSION).contains(&self.major_minor())
    }
}

/// `versions`: both in 4.0..=8.0 (by major.minor); WARN when the destination is older than the source.
pub(crate) fn versions(source: &ServerVersion, destination: &ServerVersion) -> Verdict {
    let range = format!(
        "{}.{} to {}.{}",
        MIN_SUPPORTED_VERSION.0,
        MIN_SUPPORTED_VERSION.1,
        MAX_SUPPORTED_VERSION.0,
        MAX_SUPPORTED_VERSION.1
    );
    let facts = format!("source {}, destination {}", source.text, destination.text);
    let mut unsupported = Vec::new();
    if !source.supported() {
        unsupported.push(format!("source {}", source.text));
    }
    if !destination.supported() {
        unsupported.push(format!("destination {}", destination.text));
    }
    if !unsupported.is_empty() {
        return Verdict::fail(
            format!(
                "{facts}: {} outside the supported range {range}",
                unsupported.join(" and ")
            ),
            format!("upgrade or choose servers running MongoDB {range}"),
        );
    }
    if destination.major_minor() < source.major_minor() {
        return Verdict::warn(
            format!("{facts}: the destination is older than the source"),
            format!(
                "choose a destination running MongoDB {}.{} or newer; features of the newer source may fail on the older destination",
                source.major, source.minor
            ),
        );
    }
    Verdict::pass(format!("{facts}: within the supported range {range}"))
}

/// What the source tells about its oplog.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OplogFacts {
    /// Seconds of the `ts` of the oldest entry.
    pub first_ts_secs: u32,
    /// Seconds of the `ts` of the newest entry.
    pub last_ts_secs: u32,
    /// Wall clock of the source now (seconds since the epoch), from the newest reply.
    pub now_secs: u64,
    /// `size` and `maxSize` of `local.oplog.rs` (`collStats` or `$collStats` storageStats), where reported.
    pub used_bytes: Option<u64>,
    pub max_bytes: Option<u64>,
    /// Why the size figures are missing, when they are.
    pub stats_error: Option<String>,
}

/// The oplog window and the sentence that says how it was found.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OplogWindow {
    pub secs: f64,
    /// E.g. `oplog window 2.1 h (oldest to newest entry; ...)` or `oplog not yet full: ... -> estimated window ...`.
    pub text: String,
}

/// The oplog window in seconds and how it was derived.
///
/// A rolled-over oplog (or one whose size is unknown) holds exactly its oldest to newest entry. One that has not
/// rolled over yet (`size` below [`OPLOG_FULL_FRACTION`] of `maxSize`) still holds its first entry ever, so that
/// span says nothing about its capacity: the window is estimated as `maxSize` divided by the write rate measured
/// over the observed history (oldest entry to now, at least [`MIN_RATE_SPAN_SECS`]).
pub(crate) fn oplog_window_secs(facts: &OplogFacts) -> OplogWindow {
    let span_secs = u64::from(facts.last_ts_secs.saturating_sub(facts.first_ts_secs));
    let span = span_secs as f64;
    match (facts.used_bytes, facts.max_bytes) {
        (Some(used), Some(max)) if max > 0 && (used as f64) < (max as f64) * OPLOG_FULL_FRACTION => {
            // The source's clock may trail the newest entry's ts slightly: never observe less than the span.
            let observed = facts
                .now_secs
                .saturating_sub(u64::from(facts.first_ts_secs))
                .max(span_secs);
            let short = observed < MIN_RATE_SPAN_SECS;
            let observed = observed.max(MIN_RATE_SPAN_SECS) as f64;
            // At least one byte: an oplog with entries has written something.
            let rate = used.max(1) as f64 / observed;
            let secs = max as f64 / rate;
            let over = if short {
                format!(
                    "less than {0} (counted as {0}: the fastest rate consistent with it)",
                    format_secs(observed)
                )
            } else {
                format_secs(observed)
            };
            let text = format!(
                "oplog not yet full: {} of {} used over {over} -> estimated window {} at the current write rate ({}/s)",
                format_bytes(used),
                format_bytes(max),
                format_secs(secs),
                format_bytes(rate as u64),
            );
            OplogWindow { secs, text }
        }
        (Some(used), Some(max)) if max > 0 => OplogWindow {
            secs: span,
            text: format!(
                "oplog window {} (oldest to newest entry; the oplog has rolled over: {} of {} used)",
                format_secs(span),
                format_bytes(used),
                format_bytes(max)
            ),
        },
        _ => {
            let why = facts
                .stats_error
                .as_deref()
                .unwrap_or("collStats reports no size/maxSize");
            OplogWindow {
                secs: span,
                text: format!(
                    "oplog window {} (oldest to newest entry; whether the oplog has rolled over is unknown: {why})",
                    format_secs(span)
                ),
            }
        }
    }
}

/// `oplog_window`: the window against the estimated copy time of `data_bytes` at `rate` bytes/s (`origin` says where
/// the rate comes from).
pub(crate) fn oplog_window(
    facts: &OplogFacts,
    data_bytes: u64,
    rate: u64,
    origin: &str,
) -> Verdict {
    let OplogWindow { secs: window, text } = oplog_window_secs(facts);
    let rate = rate.max(1);
    let copy = data_bytes as f64 / rate as f64;
    let numbers = format!(
        "{text} {} estimated copy time {} ({} at {}/s{})",
        if window < copy { "<" } else { ">=" },
        format_secs(copy),
        format_bytes(data_bytes),
        format_bytes(rate),
        if origin.is_empty() {
            String::new()
        } else {
            format!(", {origin}")
        }
    );
    let grow = "grow the source's oplog (replSetResizeOplog, or oplogMinRetentionHours on 4.4+)";
    if window < copy {
        return Verdict::fail(
            format!(
                "{numbers}; the agent spools the oplog during the copy, but a stalled spool or an agent restart would need entries the source has already dropped"
            ),
            format!(
                "{grow} to at least {} of writes, raise the copy rate, or migrate fewer databases per task",
                format_secs(copy * OPLOG_MARGIN_FACTOR)
            ),
        );
    }
    if window < copy * OPLOG_MARGIN_FACTOR {
        return Verdict::warn(
            format!(
                "{numbers}, less than {OPLOG_MARGIN_FACTOR}x margin; the agent's spool reads the oplog during the copy, so this holds unless the agent stops for more than {}",
                format_secs(window - copy)
            ),
            format!(
                "{grow} to at least {} for a safe margin",
                format_secs(copy * OPLOG_MARGIN_FACTOR)
            ),
        );
    }
    Verdict::pass(numbers)
}

/// `databases`: the selected databases exist and none is a system database. Returns the databases to
/// migrate (every non-system database when the selection is empty).
pub(crate) fn databases(selected: &[String], existing: &[String]) -> (Verdict, Vec<String>) {
    let user_dbs: Vec<String> = existing
        .iter()
        .filter(|name| !is_system_database(name))
        .cloned()
        .collect();
    if selected.is_empty() {
        if user_dbs.is_empty() {
            return (
                Verdict::warn(
                    "no database selected and the source has no user database: nothing to migrate",
                    "create the data on the source first, or check that the task points at the right source",
                ),
                user_dbs,
            );
        }
        let message = format!(
            "no database selected: all {} user databases ({})",
            user_dbs.len(),
            user_dbs.join(", ")
        );
        return (Verdict::pass(message), user_dbs);
    }
    let system: Vec<&str> = selected
        .iter()
        .map(String::as_str)
        .filter(|name| is_system_database(name))
        .collect();
    let missing: Vec<&str> = selected
        .iter()
        .map(String::as_str)
        .filter(|name| !is_system_database(name) && !existing.iter().any(|e| e == name))
        .collect();
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    if !system.is_empty() {
        problems.push(format!(
            "system database {} selected (admin, local and config are never migrated)",
            system.join(", ")
        ));
        fixes.push(format!(
            "remove {} from the task's databases",
            system.join(", ")
        ));
    }
    if !missing.is_empty() {
        problems.push(format!(
            "database {} not found on the source (source has: {})",
            missing.join(", "),
            if user_dbs.is_empty() {
                "no user database".to_string()
            } else {
                user_dbs.join(", ")
            }
        ));
        fixes.push(format!(
            "correct the database names or create {} on the source; names are case-sensitive",
            missing.join(", ")
        ));
    }
    let present: Vec<String> = selected
        .iter()
        .filter(|name| !is_system_database(name) && existing.contains(name))
        .cloned()
        .collect();
    if !problems.is_empty() {
        return (
            Verdict::fail(problems.join("; "), fixes.join("; ")),
            present,
        );
    }
    let message = format!(
        "{} selected database(s) exist on the source: {}",
        present.len(),
        present.join(", ")
    );
    (Verdict::pass(message), present)
}

/// True for `admin`, `local` and `config`.
pub fn is_system_database(name: &str) -> bool {
    SYSTEM_DATABASES.contains(&name)
}

/// What `hello` says about the source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HelloFacts {
    pub set_name: Option<String>,
    pub writable_primary: bool,
    pub secondary: bool,
    pub arbiter_only: bool,
    pub mongos: bool,
    pub hosts: usize,
}

/// `source_topology`: a replica-set member (primary or secondary) with an oplog.
pub(crate) fn source_topology(facts: &HelloFacts) -> Verdict {
    if facts.mongos {
        return Verdict::fail(
            "the source is a mongos router (sharded cluster): only replica sets are supported",
            "point the task at one shard's replica set (one task per shard)",
        );
    }
    let Some(set_name) = facts.set_name.as_deref() else {
        return Verdict::fail(
            "the source is a single node (hello has no setName): a single node has no oplog, so online migration is not supported",
            "convert the source to a replica set (restart mongod with --replSet <name> and run rs.initiate()); a one-member replica set has an oplog",
        );
    };
    if facts.arbiter_only {
        return Verdict::fail(
            format!("the source is an arbiter of replica set {set_name}: it holds no data"),
            "point the task at a data-bearing member (preferably the primary)",
        );
    }
    let role = if facts.writable_primary {
        "primary"
    } else if facts.secondary {
        "secondary"
    } else {
        return Verdict::fail(
            format!("the source is a member of replica set {set_name} but neither primary nor secondary (recovering or not initialised)"),
            "wait until the member is PRIMARY or SECONDARY (rs.status()), or point the task at the primary",
        );
    };
    Verdict::pass(format!(
        "{role} of replica set {set_name} ({} member(s) listed), has an oplog",
        facts.hosts
    ))
}

/// A same-name collection already on the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExistingCollection {
    pub namespace: String,
    pub non_empty: bool,
}

/// `destination_conflicts`: FAIL naming every non-empty destination collection with a source namespace.
pub(crate) fn destination_conflicts(
    checked_namespaces: usize,
    existing: &[ExistingCollection],
) -> Verdict {
    let conflicts: Vec<&str> = existing
        .iter()
        .filter(|c| c.non_empty)
        .map(|c| c.namespace.as_str())
        .collect();
    if !conflicts.is_empty() {
        return Verdict::fail(
            format!(
                "non-empty collection(s) already on the destination with a source namespace: {}",
                conflicts.join(", ")
            ),
            format!(
                "drop or rename {} on the destination, or deselect their databases",
                conflicts.join(", ")
            ),
        );
    }
    let empty: Vec<&str> = existing.iter().map(|c| c.namespace.as_str()).collect();
    let mut message = format!(
        "none of the {checked_namespaces} source collection(s) exists non-empty on the destination"
    );
    if !empty.is_empty() {
        let _ = write!(message, "; empty ones will be reused: {}", empty.join(", "));
    }
    Verdict::pass(message)
}

/// `destination_capacity`: WARN when the destination's free space is below the source's data size.
pub(crate) fn destination_capacity(fs: Option<(u64, u64)>, source_bytes: u64) -> Verdict {
    let Some((used, total)) = fs else {
        return Verdict::skipped(format!(
            "the destination does not report its free space (dbStats without fsUsedSize/fsTotalSize); source data {}",
            format_bytes(source_bytes)
        ));
    };
    let free = total.saturating_sub(used);
    let facts = format!(
        "destination free space {} (of {}), source data {}",
        format_bytes(free),
        format_bytes(total),
        format_bytes(source_bytes)
    );
    if free < source_bytes {
        return Verdict::warn(
            format!("{facts}: less free space than the source's data"),
            format!(
                "grow the destination's storage by at least {} before starting",
                format_bytes(source_bytes - free)
            ),
        );
    }
    Verdict::pass(facts)
}

/// `1.5 GiB`, `12 B`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Hours with one decimal (`2.1 h`), or seconds below six minutes (`42 s`).
pub fn format_secs(secs: f64) -> String {
    if secs < 1.0 {
        // Short windows and copies must not all read "0 s".
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 10.0 {
        format!("{secs:.1} s")
    } else if secs < 360.0 {
        format!("{secs:.0} s")
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

/// `3 d 4 h 5 min`.
pub fn format_uptime(secs: u64) -> String {
    let days = secs / 86_400;
    let hours = secs % 86_400 / 3600;
    let minutes = secs % 3600 / 60;
    match (days, hours) {
        (0, 0) => format!("{minutes} min"),
        (0, _) => format!("{hours} h {minutes} min"),
        _ => format!("{days} d {hours} h {minutes} min"),
    }
}

fn join_display<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let joined: Vec<String> = items.map(|item| item.to_string()).collect();
    if joined.is_empty() {
        "none".to_string()
    } else {
        joined.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> LocalIdentity {
        LocalIdentity {
            metadata_instance_id: Some("ins-abc".into()),
            metadata_region: Some("ap-guangzhou".into()),
            metadata_local_ipv4: Some("127.0.0.1".into()),
            interface_ips: vec!["127.0.0.1".parse().unwrap()],
            uptime_seconds: Some(90_061),
            metadata_error: None,
        }
    }

    #[test]
    fn cvm_identity_passes_and_reports_uptime() {
        let v = cvm_identity("ins-abc", &identity());
        assert_eq!(v.status, CheckStatus::Pass);
        assert!(v.message.contains("1 d 1 h 1 min"), "{}", v.message);
    }

    #[test]
    fn cvm_identity_fails_on_another_instance() {
        let v = cvm_identity("ins-other", &identity());
        assert_eq!(v.status, CheckStatus::Fail);
        assert!(v.message.contains("ins-abc") && v.message.contains("ins-other"));
        assert!(v.fix.contains("ins-other"));
    }

    #[test]
    fn cvm_identity_fails_without_metadata() {
        let mut id = identity();
        id.metadata_instance_id = None;
        id.metadata_error = Some("connection refused".into());
        let v = cvm_identity("ins-abc", &id);
        assert_eq!(v.status, CheckStatus::Fail);
        assert!(v.message.contains("connection refused"));
    }

    #[test]
    fn private_ip_passes_on_local_metadata_ip() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let v = private_ip("ins-abc", "127.0.0.1", &[ip], &identity());
        assert_eq!(v.status, CheckStatus::Pass, "{}", v.message);
    }

    #[test]
    fn private_ip_fails_when_not_on_this_host() {
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let v = private_ip("ins-abc", "127.0.0.2", &[ip], &identity());
        assert_eq!(v.status, CheckStatus::Fail);
        assert!(v
            .message
            .contains("127.0.0.2 is not an address of this host"));
        assert!(v.fix.contains("local-ipv4 127.0.0.1"), "{}", v.fix);
    }

    #[test]
    fn private_ip_fails_when_metadata_differs() {
        let mut id = identity();
        id.interface_ips.push("127.0.0.3".parse().unwrap());
        let ip: IpAddr = "127.0.0.3".parse().unwrap();
        let v = private_ip("ins-abc", "127.0.0.3", &[ip], &id);
        assert_eq!(v.status, CheckStatus::Fail);
        assert!(v.message.contains("local-ipv4 127.0.0.1"));
    }

    #[test]
    fn region_mismatch_fails() {
        let v = region(&identity(), "ap-shanghai");
        assert_eq!(v.status, CheckStatus::Fail);
        assert!(v.message.contains("ap-guangzhou") && v.message.contains("ap-shanghai"));
        assert_eq!(
            region(&identity(), "ap-guangzhou").status,
            CheckStatus::Pass
        );
    }

    fn version(text: &str) -> ServerVersion {
        ServerVersion::parse(text).unwrap()
    }

    #[test]
    fn version_parse_accepts_suffixes() {
        assert_eq!(version("8.0.0-rc3").major_minor(), (8, 0));
        assert_eq!(version("4.4.29").major_minor(), (4, 4));
        assert!(ServerVersion::parse("garbage").is_none());
    }

    #[test]
    fn versions_range_and_order() {
        assert_eq!(
            versions(&version("6.0.3"), &version("7.0.2")).status,
            CheckStatus::Pass
        );
        assert_eq!(
            versions(&version("4.0.0"), &version("8.0.9")).status,
            CheckStatus::Pass
        );
        let older = versions(&version("7.0.2"), &version("6.0.3"));
        assert_eq!(older.status, CheckStatus::Warn);
        assert!(older.message.contains("7.0.2") && older.message.contains("6.0.3"));
        let old = versions(&version("3.6.23"), &version("7.0.2"));
        assert_eq!(old.status, CheckStatus::Fail);
        assert!(old.message.contains("source 3.6.23"));
        assert_eq!(
            versions(&version("7.0.2"), &version("8.2.1")).status,
            CheckStatus::Fail
        );
    }

    fn full_oplog(span: u32) -> OplogFacts {
        OplogFacts {
            first_ts_secs: 1_000_000,
            last_ts_secs: 1_000_000 + span,
            now_secs: 1_000_000 + u64::from(span),
            used_bytes: Some(1000),
            max_bytes: Some(1000),
            stats_error: None,
        }
    }

    #[test]
    fn oplog_window_fails_below_copy_time_with_both_numbers() {
        // 0.4 h window, 12 GiB at 1.6 MiB/s = 2.1 h.
        let v = oplog_window(&full_oplog(1440), 12 << 30, 1_677_722, "configured");
        assert_eq!(v.status, CheckStatus::Fail);
        assert!(v.message.contains("0.4 h"), "{}", v.message);
        assert!(v.message.contains("2.1 h"), "{}", v.message);
        assert!(
            v.message.contains("12.0 GiB at 1.6 MiB/s, configured"),
            "{}",
            v.message
        );
        assert!(v.message.contains("spool"));
        assert!(v.fix.contains("replSetResizeOplog"));
    }

    #[test]
    fn oplog_window_warns_with_thin_margin_and_passes_with_room() {
        // copy time 1 h.
        assert_eq!(
            oplog_window(&full_oplog(5400), 3600, 1, "").status,
            CheckStatus::Warn
        );
        assert_eq!(
            oplog_window(&full_oplog(7200), 3600, 1, "").status,
            CheckStatus::Pass
        );
    }

    /// An oplog started at second 1_000_000 whose newest entry is `span` s old at `now` (both from the start).
    fn oplog(span: u32, now: u64, used: u64, max: u64) -> OplogFacts {
        OplogFacts {
            first_ts_secs: 1_000_000,
            last_ts_secs: 1_000_000 + span,
            now_secs: 1_000_000 + now,
            used_bytes: Some(used),
            max_bytes: Some(max),
            stats_error: None,
        }
    }

    #[test]
    fn a_fresh_oplog_is_estimated_from_its_capacity_and_write_rate() {
        // 1 MiB written over an hour into a 64 MiB oplog: 64 h at that rate.
        let w = oplog_window_secs(&oplog(0, 3600, 1 << 20, 64 << 20));
        assert!((w.secs - 64.0 * 3600.0).abs() < 1.0, "{}", w.secs);
        assert!(
            w.text.contains(
                "oplog not yet full: 1.0 MiB of 64.0 MiB used over 1.0 h -> estimated window 64.0 h at the current write rate (291 B/s)"
            ),
            "{}",
            w.text
        );
    }

    #[test]
    fn a_fresh_oplog_with_no_history_takes_the_fastest_consistent_rate() {
        // Everything in the same second as now: the rate is all of it per MIN_RATE_SPAN_SECS.
        let w = oplog_window_secs(&oplog(0, 0, 2048, 990 << 20));
        assert!(
            (w.secs - (990u64 << 20) as f64 / 2048.0).abs() < 1.0,
            "{}",
            w.secs
        );
        assert!(
            w.text
                .contains("used over less than 1.0 s (counted as 1.0 s: the fastest rate"),
            "{}",
            w.text
        );
        // Nothing measurable at all still gives a finite window.
        let w = oplog_window_secs(&oplog(0, 0, 0, 4096));
        assert!((w.secs - 4096.0).abs() < 1e-6, "{}", w.secs);
    }

    #[test]
    fn a_fresh_oplog_never_observes_less_than_its_span() {
        // The source's clock trails its newest entry: the span (10 s) is the observed history.
        let w = oplog_window_secs(&oplog(10, 5, 1000, 100_000));
        assert!((w.secs - 1000.0).abs() < 1e-6, "{}", w.secs);
        assert!(w.text.contains("used over 10 s"), "{}", w.text);
    }

    #[test]
    fn a_rolled_over_oplog_is_its_oldest_to_newest_span() {
        // 92 % used: a real server truncates whole markers (at most a tenth of maxSize), so this has rolled over.
        let w = oplog_window_secs(&oplog(1440, 1500, 920, 1000));
        assert!((w.secs - 1440.0).abs() < 1e-6, "{}", w.secs);
        assert!(
            w.text.starts_with(
                "oplog window 0.4 h (oldest to newest entry; the oplog has rolled over"
            ),
            "{}",
            w.text
        );
        // Just below the threshold it is still fresh.
        let w = oplog_window_secs(&oplog(1440, 1440, 899, 1000));
        assert!(w.text.starts_with("oplog not yet full"), "{}", w.text);
    }

    #[test]
    fn an_oplog_of_unknown_size_is_its_span_and_says_why() {
        let mut facts = oplog(30, 30, 0, 0);
        facts.used_bytes = None;
        facts.max_bytes = None;
        facts.stats_error = Some("collStats: not authorized".into());
        let w = oplog_window_secs(&facts);
        assert!((w.secs - 30.0).abs() < 1e-6);
        assert!(
            w.text.contains("unknown: collStats: not authorized"),
            "{}",
            w.text
        );
        // A zero maxSize is no capacity to estimate from.
        assert!(oplog_window_secs(&oplog(30, 30, 10, 0))
            .text
            .contains("unknown"));
    }

    #[test]
    fn a_fresh_source_passes_where_its_span_alone_would_fail() {
        // 1 GiB at 16 MiB/s = 64 s of copy; the oplog spans 1 s but has used 2 KiB of 990 MiB.
        let fresh = oplog(1, 1, 2048, 990 << 20);
        let v = oplog_window(&fresh, 1 << 30, 16 << 20, "default");
        assert_eq!(v.status, CheckStatus::Pass, "{}", v.message);
        assert!(
            v.message.starts_with("oplog not yet full: 2.0 KiB of 990.0 MiB used over 1.0 s -> estimated window 140.8 h"),
            "{}",
            v.message
        );
        assert!(
            v.message
                .contains(">= estimated copy time 64 s (1.0 GiB at 16.0 MiB/s, default)"),
            "{}",
            v.message
        );
        // The same span in a full oplog is 1 s of window.
        let full = oplog(1, 1, 990 << 20, 990 << 20);
        assert_eq!(
            oplog_window(&full, 1 << 30, 16 << 20, "default").status,
            CheckStatus::Fail
        );
    }

    #[test]
    fn a_fresh_oplog_written_fast_still_fails() {
        // 500 MiB in 30 s into 990 MiB: full in another ~29 s, far less than a 64 s copy.
        let v = oplog_window(
            &oplog(30, 30, 500 << 20, 990 << 20),
            1 << 30,
            16 << 20,
            "measured",
        );
        assert_eq!(v.status, CheckStatus::Fail, "{}", v.message);
        assert!(v.message.contains("oplog not yet full: 500.0 MiB of 990.0 MiB used over 30 s -> estimated window 59 s"), "{}", v.message);
    }

    #[test]
    fn databases_missing_and_system() {
        let existing = vec!["admin".into(), "local".into(), "shop".into()];
        let (v, present) = databases(&["shop".into()], &existing);
        assert_eq!(v.status, CheckStatus::Pass);
        assert_eq!(present, vec!["shop".to_string()]);

        let (v, _) = databases(&["shop".into(), "nope".into()], &existing);
        assert_eq!(v.status, CheckStatus::Fail);
        assert!(v.message.contains("nope"));
        assert!(!v.message.contains("admin"), "{}", v.message);

        let (v, present) = databases(&["shop".into(), "config".into()], &existing);
        assert_eq!(v.status, CheckStatus::Fail);
        assert!(v.message.contains("config"));
        assert_eq!(present, vec!["shop".to_string()]);

        let (v, present) = databases(&[], &existing);
        assert_eq!(v.status, CheckStatus::Pass);
        assert_eq!(present, vec!["shop".to_string()]);
    }

    #[test]
    fn topology_single_node_fails() {
        let v = source_topology(&HelloFacts::default());
        assert_eq!(v.status, CheckStatus::Fail);
        assert!(v.message.contains("single node"));
        let primary = HelloFacts {
            set_name: Some("rs0".into()),
            writable_primary: true,
            hosts: 1,
            ..HelloFacts::default()
        };
        assert_eq!(source_topology(&primary).status, CheckStatus::Pass);
    }

    #[test]
    fn conflicts_name_each_non_empty_collection() {
        let existing = vec![
            ExistingCollection {
                namespace: "shop.orders".into(),
                non_empty: true,
            },
            ExistingCollection {
                namespace: "shop.carts".into(),
                non_empty: false,
            },
        ];
        let v = destination_conflicts(3, &existing);
        assert_eq!(v.status, CheckStatus::Fail);
        assert!(v.message.contains("shop.orders") && !v.message.contains("shop.carts"));
        let v = destination_conflicts(3, &existing[1..]);
        assert_eq!(v.status, CheckStatus::Pass);
        assert!(v.message.contains("shop.carts"));
    }

    #[test]
    fn capacity_warns_below_source_size() {
        assert_eq!(
            destination_capacity(Some((900, 1000)), 200).status,
            CheckStatus::Warn
        );
        assert_eq!(
            destination_capacity(Some((100, 1000)), 200).status,
            CheckStatus::Pass
        );
        assert_eq!(destination_capacity(None, 200).status, CheckStatus::Skipped);
    }

    #[test]
    fn formats() {
        assert_eq!(format_bytes(12), "12 B");
        assert_eq!(format_bytes(12 << 30), "12.0 GiB");
        assert_eq!(format_secs(42.0), "42 s");
        assert_eq!(format_secs(0.04), "40 ms");
        assert_eq!(format_secs(2.35), "2.4 s");
        assert_eq!(format_secs(7560.0), "2.1 h");
    }
}
