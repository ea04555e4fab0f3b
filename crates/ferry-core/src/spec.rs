//! Task specs and destination instances: the raw operator input, and the validated forms the rest of the program
//! works on. Validation names the offending field (`spec.port`, `instance.uri`, ...).
//!
//! Checks that need the catalog (does the destination exist, is it in the same region) live in the coordinator.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    /// Empty means [`DEFAULT_TENANT`].
    pub tenant: String,
}

/// The tenant of tasks and instances created without one (and of records stored before tenants existed).
pub const DEFAULT_TENANT: &str = "default";

fn default_tenant() -> String {
    DEFAULT_TENANT.to_owned()
}

/// Validates a tenant name (`field` names it in errors): 1..40 of `[a-z0-9-]`, not starting or ending with `-`.
/// Empty becomes [`DEFAULT_TENANT`].
pub fn validate_tenant(field: &'static str, tenant: &str) -> Result<String, CoreError> {
    if tenant.is_empty() {
        return Ok(default_tenant());
    }
    let ok = tenant.len() <= 40
        && tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !tenant.starts_with('-')
        && !tenant.ends_with('-');
    if !ok {
        return Err(CoreError::invalid(
            field,
            format!("{tenant:?} is malformed: 1..40 of a-z, 0-9 and '-', e.g. \"acme-prod\""),
        ));
    }
    Ok(tenant.to_owned())
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
    /// The tenant (project) the task belongs to; fixed at creation.
    #[serde(default = "default_tenant")]
    pub tenant: String,
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
        let tenant = validate_tenant("spec.tenant", &input.tenant)?;
        Ok(Self {
            tenant,
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
    /// Empty means [`DEFAULT_TENANT`].
    pub tenant: String,
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
    /// Only tasks of this tenant may use the instance.
    #[serde(default = "default_tenant")]
    pub tenant: String,
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
        validate_uri_options(rest)?;
        if input.password.is_set() && input.username.is_empty() {
            return Err(CoreError::invalid(
                "instance.username",
                "is required when a password is given",
            ));
        }
        let tenant = validate_tenant("instance.tenant", &input.tenant)?;
        Ok(Self {
            tenant,
            instance_id,
            region: input.region,
            uri: input.uri,
            username: input.username,
            password: input.password,
            create_time_ms: now_ms,
        })
    }
}

/// Connection-string options a destination instance's URI may carry (names compare case-insensitively, as in the
/// MongoDB URI spec). Everything else is refused: options that make the agent read files on its host, weaken TLS
/// checks, use a proxy or the host's own credentials.
pub const ALLOWED_URI_OPTIONS: [&str; 29] = [
    "replicaSet",
    "authSource",
    "authMechanism",
    "tls",
    "ssl",
    "readPreference",
    "readPreferenceTags",
    "maxPoolSize",
    "minPoolSize",
    "connectTimeoutMS",
    "socketTimeoutMS",
    "serverSelectionTimeoutMS",
    "heartbeatFrequencyMS",
    "localThresholdMS",
    "maxIdleTimeMS",
    "waitQueueTimeoutMS",
    "directConnection",
    "appName",
    "compressors",
    "zlibCompressionLevel",
    "retryWrites",
    "retryReads",
    "w",
    "wTimeoutMS",
    "journal",
    "readConcernLevel",
    "loadBalanced",
    "srvMaxHosts",
    "srvServiceName",
];

/// Values of `authMechanism` a destination may use: mechanisms that authenticate with the instance's username and
/// password only (not with the agent host's Kerberos, cloud or certificate credentials).
pub const ALLOWED_AUTH_MECHANISMS: [&str; 3] = ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"];

/// Checks the query options of a URI (`rest` is the URI after its scheme). Names are shown in errors, values never
/// (they may hold secrets).
fn validate_uri_options(rest: &str) -> Result<(), CoreError> {
    const FIELD: &str = "instance.uri";
    let Some((_, query)) = rest.split_once('?') else {
        return Ok(());
    };
    if query.is_empty() {
        return Ok(());
    }
    // The URI spec separates options with '&'; some drivers also accept ';'. Splitting on both checks every name
    // either reading could see.
    for (i, option) in query.split(['&', ';']).enumerate() {
        let Some((name, value)) = option.split_once('=') else {
            return Err(CoreError::invalid(
                FIELD,
                format!(
                    "query option {} has no '=': options are name=value pairs separated by '&', \
                     e.g. \"?replicaSet=rs0&tls=true\"",
                    i + 1
                ),
            ));
        };
        if name.is_empty() {
            return Err(CoreError::invalid(
                FIELD,
                format!(
                    "query option {} has an empty name: options are name=value pairs separated by '&', \
                     e.g. \"?replicaSet=rs0&tls=true\"",
                    i + 1
                ),
            ));
        }
        if !ALLOWED_URI_OPTIONS
            .iter()
            .any(|a| a.eq_ignore_ascii_case(name))
        {
            return Err(CoreError::invalid(
                FIELD,
                format!(
                    "option {} is not allowed: {}; allowed: {}",
                    shown_name(name),
                    why_option_refused(name),
                    ALLOWED_URI_OPTIONS.join(", ")
                ),
            ));
        }
        if name.eq_ignore_ascii_case("authMechanism")
            && !ALLOWED_AUTH_MECHANISMS
                .iter()
                .any(|m| m.eq_ignore_ascii_case(value))
        {
            return Err(CoreError::invalid(
                FIELD,
                format!(
                    "option authMechanism must be one of {}: other mechanisms (MONGODB-AWS, GSSAPI, MONGODB-X509, \
                     MONGODB-OIDC) authenticate with credentials of the agent's host rather than the instance's \
                     username and password",
                    ALLOWED_AUTH_MECHANISMS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// An option name as shown in an error: quoted, and cut short if long.
fn shown_name(name: &str) -> String {
    const MAX: usize = 48;
    if name.chars().count() <= MAX {
        format!("{name:?}")
    } else {
        let cut: String = name.chars().take(MAX).collect();
        format!("{cut:?}...")
    }
}

fn why_option_refused(name: &str) -> &'static str {
    match name.to_ascii_lowercase().as_str() {
        "tlscafile" | "tlscertificatekeyfile" | "tlscertificatekeyfilepassword" | "tlscrlfile"
        | "sslcafile" | "sslpemkeyfile" | "sslpemkeypassword" | "sslcertificatekeyfile" => {
            "it reads files on the agent's host"
        }
        "tlsinsecure"
        | "tlsallowinvalidcertificates"
        | "tlsallowinvalidhostnames"
        | "sslinvalidhostnameallowed"
        | "sslallowinvalidcertificates"
        | "sslallowinvalidhostnames"
        | "tlsdisableocspendpointcheck"
        | "tlsdisablecertificaterevocationcheck" => {
            "it turns off checks of the destination's TLS certificate"
        }
        "proxyhost" | "proxyport" | "proxyusername" | "proxypassword" => {
            "it routes the agent's connection through a proxy chosen by the URI"
        }
        "authmechanismproperties" => {
            "it can make the agent authenticate with its host's credentials or services (cloud metadata, Kerberos)"
        }
        _ => "only options on Ferry's allow-list reach the agent's driver",
    }
}

/// Checks the source host of a PUBLIC_NETWORK task (field `spec.mongo_host`). Such a task runs on a pool agent,
/// which would otherwise reach hosts on its own network: the cloud metadata service, the coordinator, other
/// private services. Refuses IP literals that are not public unicast addresses (loopback, unspecified, private,
/// shared/CGNAT, link-local, unique-local, site-local, multicast, broadcast, reserved, documentation, benchmarking,
/// and IPv4-mapped, NAT64 or 6to4 forms of those), IPv4 addresses written in non-standard numeric forms (`0x7f.1`),
/// and the names `localhost` and `*.localhost`.
///
/// Pure: other names are not resolved here, so a public name that resolves to a private address passes (the agent
/// must check resolved addresses). The coordinator calls this unless started with `--allow-private-sources`.
pub fn check_public_source_host(host: &str) -> Result<(), CoreError> {
    const FIELD: &str = "spec.mongo_host";
    const WHY: &str = "a public-network task runs on a pool agent, which would reach hosts on its own network \
                       (e.g. the cloud metadata service or the coordinator). Use a CVM task for a source on a \
                       private network, or start the coordinator with --allow-private-sources for a lab";
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return match non_public_reason(ip) {
            Some(reason) => Err(CoreError::invalid(
                FIELD,
                format!("{host:?} is {reason}: {WHY}"),
            )),
            None => Ok(()),
        };
    }
    if let Some(v4) = parse_numeric_ipv4(bare) {
        return Err(CoreError::invalid(
            FIELD,
            match non_public_reason(IpAddr::V4(v4)) {
                Some(reason) => format!("{host:?} is {v4} written in a non-standard form, {reason}: {WHY}"),
                None => format!(
                    "{host:?} is the IPv4 address {v4} written in a non-standard form: write it as \"{v4}\""
                ),
            },
        ));
    }
    let name = bare.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return Err(CoreError::invalid(
            FIELD,
            format!("{host:?} names the agent's own host: {WHY}"),
        ));
    }
    Ok(())
}

/// Why `ip` is not a public unicast address, or `None` if it is one.
fn non_public_reason(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4).map(str::to_owned),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let reason = if a == 0 {
        "an unspecified (\"this network\") address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() {
        "a private address (10/8, 172.16/12, 192.168/16)"
    } else if a == 100 && (64..128).contains(&b) {
        "a shared (carrier-grade NAT) address (100.64/10)"
    } else if ip.is_link_local() {
        "a link-local address (169.254/16, where the cloud metadata service lives)"
    } else if ip.is_broadcast() {
        "the broadcast address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if a >= 240 {
        "a reserved address (240/4)"
    } else if (a, b, c) == (192, 0, 0) {
        "an IETF protocol assignment address (192.0.0/24)"
    } else if ip.is_documentation() {
        "a documentation address"
    } else if a == 198 && (b == 18 || b == 19) {
        "a benchmarking address (198.18/15)"
    } else {
        return None;
    };
    Some(reason)
}

fn v6_reason(ip: Ipv6Addr) -> Option<String> {
    let seg = ip.segments();
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    let via = |what: &str, v4: Ipv4Addr| v4_reason(v4).map(|r| format!("{what} of {v4}, {r}"));
    if ip.is_unspecified() {
        return Some("the unspecified address".to_owned());
    }
    if ip.is_loopback() {
        return Some("the loopback address".to_owned());
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return via("an IPv4-mapped address", v4);
    }
    if seg[..6] == [0; 6] {
        return Some("a deprecated IPv4-compatible address (::/96)".to_owned());
    }
    if seg[0] == 0 {
        return Some("a reserved address (::/8)".to_owned());
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || seg[..3] == [0x64, 0xff9b, 1] {
        return via("a NAT64 address", embedded(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return via("a 6to4 address", embedded(seg[1], seg[2]));
    }
    let reason = if seg[0] & 0xffc0 == 0xfe80 {
        "a link-local address (fe80::/10)"
    } else if seg[0] & 0xffc0 == 0xfec0 {
        "a site-local address (fec0::/10)"
    } else if seg[0] & 0xfe00 == 0xfc00 {
        "a unique-local address (fc00::/7)"
    } else if seg[0] & 0xff00 == 0xff00 {
        "a multicast address"
    } else if seg[..2] == [0x2001, 0x0db8] || seg[0] & 0xfff0 == 0x3ff0 {
        "a documentation address"
    } else if seg[..4] == [0x0100, 0, 0, 0] {
        "a discard-only address (100::/64)"
    } else {
        return None;
    };
    Some(reason.to_owned())
}

/// Parses the numeric IPv4 forms the C resolver (`inet_aton`) accepts besides dotted decimal: 1 to 4 parts, each
/// decimal, octal (leading `0`) or hex (`0x`), the last one filling the remaining bytes (`127.1`, `0x7f000001`).
fn parse_numeric_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let value = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).ok()?
            }
        } else if part.len() > 1 && part.starts_with('0') {
            u64::from_str_radix(part, 8).ok()?
        } else {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse::<u64>().ok()?
        };
        values.push(value);
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|v| *v > 0xff) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut addr: u64 = 0;
    for (i, v) in leading.iter().enumerate() {
        addr |= v << (24 - 8 * i as u32);
    }
    addr |= last;
    u32::try_from(addr).ok().map(Ipv4Addr::from)
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
            tenant: String::new(),
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
            ..Default::default()
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

    fn instance_with_uri(uri: &str) -> Result<Instance, CoreError> {
        Instance::from_input(
            InstanceInput {
                instance_id: "cmgo-6wk2mxa1".into(),
                region: "ap-guangzhou".into(),
                uri: uri.into(),
                ..Default::default()
            },
            0,
        )
    }

    fn uri_error(uri: &str) -> String {
        match instance_with_uri(uri) {
            Err(CoreError::InvalidArgument {
                field: "instance.uri",
                reason,
            }) => reason,
            other => panic!("expected an instance.uri error for {uri}, got {other:?}"),
        }
    }

    #[test]
    fn instance_uri_accepts_allowed_options_in_any_case() {
        for uri in [
            "mongodb://10.0.0.5:27017",
            "mongodb://10.0.0.5:27017/",
            "mongodb://10.0.0.5:27017/?",
            "mongodb://10.0.0.5:27017/admin",
            "mongodb://10.0.0.5:27017,10.0.0.6:27017/?replicaSet=rs0&authSource=admin&tls=false",
            "mongodb://10.0.0.5/?ssl=false&retryWrites=true&w=majority&wTimeoutMS=5000&journal=true",
            "mongodb://10.0.0.5/?readPreference=secondaryPreferred&readPreferenceTags=dc:ny,rack:1\
             &readPreferenceTags=",
            "mongodb://10.0.0.5/?REPLICASET=rs0&TLS=true&appname=ferry&compressors=zstd,zlib\
             &zlibCompressionLevel=6",
            "mongodb://10.0.0.5/?maxPoolSize=10&minPoolSize=1&connectTimeoutMS=1000&socketTimeoutMS=1000\
             &serverSelectionTimeoutMS=1000&heartbeatFrequencyMS=1000&localThresholdMS=15\
             &maxIdleTimeMS=1000&waitQueueTimeoutMS=1000&directConnection=true&retryReads=false\
             &readConcernLevel=majority&loadBalanced=false",
            "mongodb+srv://cluster.example.com/?srvMaxHosts=3&srvServiceName=mongodb",
            "mongodb://10.0.0.5/?authMechanism=SCRAM-SHA-256",
            "mongodb://10.0.0.5/?authMechanism=scram-sha-1",
            "mongodb://10.0.0.5/?authMechanism=PLAIN&authSource=$external",
        ] {
            assert!(instance_with_uri(uri).is_ok(), "{uri} should be accepted");
        }
    }

    #[test]
    fn instance_uri_refuses_options_off_the_allow_list_and_says_why() {
        let cases = [
            ("tlsCAFile", "reads files on the agent's host"),
            ("tlsCertificateKeyFile", "reads files on the agent's host"),
            (
                "tlsCertificateKeyFilePassword",
                "reads files on the agent's host",
            ),
            ("TLSCAFILE", "reads files on the agent's host"),
            ("tlsInsecure", "TLS certificate"),
            ("tlsAllowInvalidCertificates", "TLS certificate"),
            ("tlsAllowInvalidHostnames", "TLS certificate"),
            ("sslInvalidHostNameAllowed", "TLS certificate"),
            ("tlsDisableOCSPEndpointCheck", "TLS certificate"),
            ("proxyHost", "proxy"),
            ("proxyPort", "proxy"),
            ("proxyUsername", "proxy"),
            ("proxyPassword", "proxy"),
            ("authMechanismProperties", "host's credentials"),
            ("gssapiServiceName", "allow-list"),
            ("tls%49nsecure", "allow-list"),
        ];
        for (name, why) in cases {
            let uri = format!("mongodb://10.0.0.5/?replicaSet=rs0&{name}=hunter2-value");
            let reason = uri_error(&uri);
            assert!(
                reason.starts_with(&format!("option \"{name}\" is not allowed: ")),
                "{reason}"
            );
            assert!(reason.contains(why), "{name}: {reason}");
            assert!(
                reason.contains("; allowed: replicaSet, authSource"),
                "{reason}"
            );
            assert!(
                !reason.contains("hunter2"),
                "values are never echoed: {reason}"
            );
        }
        // ';' as a separator cannot smuggle an option past the check.
        let reason = uri_error("mongodb://10.0.0.5/?replicaSet=rs0;tlsInsecure=true");
        assert!(reason.contains("\"tlsInsecure\""), "{reason}");
    }

    #[test]
    fn instance_uri_refuses_malformed_queries_and_host_credential_mechanisms() {
        for uri in [
            "mongodb://10.0.0.5/?replicaSet",
            "mongodb://10.0.0.5/?replicaSet=rs0&&tls=true",
            "mongodb://10.0.0.5/?replicaSet=rs0&",
            "mongodb://10.0.0.5/?=rs0",
        ] {
            let reason = uri_error(uri);
            assert!(reason.contains("name=value"), "{uri}: {reason}");
        }
        for mechanism in ["MONGODB-AWS", "GSSAPI", "MONGODB-X509", "MONGODB-OIDC", ""] {
            let reason = uri_error(&format!("mongodb://10.0.0.5/?authMechanism={mechanism}"));
            assert!(
                reason.contains("authMechanism must be one of SCRAM-SHA-256, SCRAM-SHA-1, PLAIN"),
                "{mechanism}: {reason}"
            );
        }
    }

    #[test]
    fn public_source_hosts_that_reach_the_agents_own_network_are_refused() {
        for host in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "169.254.0.23",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.10",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "::",
            "::1",
            "[::1]",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "localhost",
            "LocalHost",
            "localhost.",
            "db.localhost",
            "0x7f.0.0.1",
            "0x7f000001",
            "2130706433",
            "0177.0.0.1",
            "127.1",
            "0xa9.254.169.254",
        ] {
            match check_public_source_host(host) {
                Err(CoreError::InvalidArgument {
                    field: "spec.mongo_host",
                    reason,
                }) => {
                    assert!(reason.contains(&format!("{host:?}")), "{reason}");
                    assert!(reason.contains("metadata service"), "{reason}");
                    assert!(reason.contains("CVM task"), "{reason}");
                    assert!(reason.contains("--allow-private-sources"), "{reason}");
                }
                other => panic!("{host} should be refused, got {other:?}"),
            }
        }
    }

    #[test]
    fn public_source_hosts_on_the_internet_are_accepted() {
        for host in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "169.253.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "mongo.example.com",
            "localhost.example.com",
            "mylocalhost",
            "0xdeadbeef.example.com",
        ] {
            assert_eq!(check_public_source_host(host), Ok(()), "{host}");
        }
    }

    #[test]
    fn a_public_address_in_a_numeric_form_is_refused_with_its_dotted_form() {
        let err = check_public_source_host("0x08080808").unwrap_err();
        assert!(err.to_string().contains("write it as \"8.8.8.8\""), "{err}");
    }
}
