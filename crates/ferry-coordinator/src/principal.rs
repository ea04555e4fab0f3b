//! Who calls the operator API and what they may do: principals (named, with a role and optionally tenants) from
//! the principals file, authenticated by a bearer token (only its SHA-256 is configured) or by the subject of a
//! client certificate; roles map to permissions.
//!
//! Must not: keep or log a token in clear, or trust anything the caller says about itself.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ServiceError;

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    TasksRead,
    TasksWrite,
    InstancesRead,
    InstancesWrite,
    AgentsRead,
    /// CreateJoinToken and RevokeAgent.
    AgentsEnroll,
    AuditRead,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TasksRead => "tasks.read",
            Self::TasksWrite => "tasks.write",
            Self::InstancesRead => "instances.read",
            Self::InstancesWrite => "instances.write",
            Self::AgentsRead => "agents.read",
            Self::AgentsEnroll => "agents.enroll",
            Self::AuditRead => "audit.read",
        }
    }

    const ALL: [Permission; 7] = [
        Self::TasksRead,
        Self::TasksWrite,
        Self::InstancesRead,
        Self::InstancesWrite,
        Self::AgentsRead,
        Self::AgentsEnroll,
        Self::AuditRead,
    ];
}

/// A principal's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including enrollment, revocation and the audit log.
    Admin,
    /// Tasks and instances (and reading agents).
    Operator,
    /// Read only.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Self::Admin => true,
            Self::Operator => !matches!(permission, AgentsEnroll | AuditRead),
            Self::Viewer => matches!(permission, TasksRead | InstancesRead | AgentsRead),
        }
    }

    pub fn permissions(self) -> Vec<&'static str> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.allows(*p))
            .map(Permission::as_str)
            .collect()
    }
}

/// An authenticated caller of the operator API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// Empty means every tenant.
    pub tenants: BTreeSet<String>,
}

impl Principal {
    /// PERMISSION_DENIED naming the permission and the method when the role lacks it.
    pub fn require(&self, permission: Permission, method: &str) -> Result<(), ServiceError> {
        if self.role.allows(permission) {
            return Ok(());
        }
        Err(ServiceError::PermissionDenied(format!(
            "principal {} (role {}) lacks permission {} needed by {method}",
            self.name,
            self.role.as_str(),
            permission.as_str()
        )))
    }

    /// Whether the principal may see and act on `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenants.is_empty() || self.tenants.contains(tenant)
    }

    /// The tenant a new task or instance gets when the request leaves it empty: the principal's only tenant, or
    /// the default tenant for unrestricted principals.
    pub fn default_tenant(&self, field: &'static str) -> Result<String, ServiceError> {
        match self.tenants.len() {
            0 => Ok(ferry_core::DEFAULT_TENANT.to_owned()),
            1 => Ok(self.tenants.iter().next().cloned().unwrap_or_default()),
            _ => Err(ServiceError::invalid(
                field,
                format!(
                    "is required: principal {} acts on several tenants ({})",
                    self.name,
                    self.tenants.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    /// PERMISSION_DENIED when the principal may not act on `tenant` (for requests naming a tenant).
    pub fn require_tenant(&self, tenant: &str) -> Result<(), ServiceError> {
        if self.sees(tenant) {
            return Ok(());
        }
        Err(ServiceError::PermissionDenied(format!(
            "principal {} may not act on tenant {tenant}",
            self.name
        )))
    }
}

/// One `[[principal]]` of the principals file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: String,
    pub role: Role,
    /// Tenants the principal may act on; empty or absent means every tenant.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Hex SHA-256 of the principal's bearer token (`printf %s "$TOKEN" | sha256sum`).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// Subject of the principal's client certificate as RFC 4514 text, e.g. "CN=alice,O=Acme".
    #[serde(default)]
    pub cert_subject: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalsFile {
    #[serde(default)]
    principal: Vec<PrincipalConfig>,
}

/// The configured principals, validated.
#[derive(Debug, Clone, Default)]
pub struct Principals {
    entries: Vec<PrincipalConfig>,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Principals {
    /// The single-operator setup: whoever holds `token` is `admin` with every tenant.
    pub fn single_admin(token: &ferry_core::Secret) -> Self {
        Self {
            entries: vec![PrincipalConfig {
                name: "admin".into(),
                role: Role::Admin,
                tenants: vec![],
                token_sha256: Some(sha256_hex(token.expose().as_bytes())),
                cert_subject: None,
            }],
        }
    }

    /// Reads and validates a principals file (TOML, `[[principal]]` tables).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading principals file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("principals file {}: {e}", path.display()))
    }

    /// Parses and validates principals from TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: PrincipalsFile = toml::from_str(text)?;
        let mut names = BTreeSet::new();
        let mut digests = BTreeSet::new();
        for (i, p) in file.principal.iter().enumerate() {
            anyhow::ensure!(
                !p.name.is_empty()
                    && p.name.len() <= 64
                    && p.name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)),
                "principal #{}: name {:?} must be 1..64 of letters, digits and -_.@",
                i + 1,
                p.name
            );
            anyhow::ensure!(
                !p.name.starts_with("agent:") && p.name != "anonymous",
                "principal {}: the name is reserved",
                p.name
            );
            anyhow::ensure!(
                names.insert(p.name.clone()),
                "principal {} is listed twice",
                p.name
            );
            anyhow::ensure!(
                p.token_sha256.is_some() || p.cert_subject.is_some(),
                "principal {}: give token_sha256 or cert_subject",
                p.name
            );
            if let Some(digest) = &p.token_sha256 {
                anyhow::ensure!(
                    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
                    "principal {}: token_sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)",
                    p.name
                );
                anyhow::ensure!(
                    digests.insert(digest.to_ascii_lowercase()),
                    "principal {}: the same token_sha256 is given to two principals",
                    p.name
                );
            }
            for tenant in &p.tenants {
                ferry_core::validate_tenant("tenants", tenant)
                    .map_err(|e| anyhow::anyhow!("principal {}: {e}", p.name))?;
                anyhow::ensure!(!tenant.is_empty(), "principal {}: empty tenant", p.name);
            }
        }
        anyhow::ensure!(
            !file.principal.is_empty(),
            "no [[principal]] is defined: nobody could call the operator API"
        );
        Ok(Self {
            entries: file.principal,
        })
    }

    fn principal(entry: &PrincipalConfig) -> Principal {
        Principal {
            name: entry.name.clone(),
            role: entry.role,
            tenants: entry.tenants.iter().cloned().collect(),
        }
    }

    /// The principal whose token this is.
    pub fn by_token(&self, token: &str) -> Option<Principal> {
        let digest = sha256_hex(token.as_bytes());
        self.entries
            .iter()
            .find(|p| {
                p.token_sha256.as_deref().is_some_and(|d| {
                    constant_time_eq(d.to_ascii_lowercase().as_bytes(), digest.as_bytes())
                })
            })
            .map(Self::principal)
    }

    /// The principal whose client-certificate subject this is.
    pub fn by_subject(&self, subject: &str) -> Option<Principal> {
        self.entries
            .iter()
            .find(|p| {
                p.cert_subject
                    .as_deref()
                    .is_some_and(|s| normalize_subject(s) == normalize_subject(subject))
            })
            .map(Self::principal)
    }

    /// Whether any principal authenticates by certificate.
    pub fn uses_certificates(&self) -> bool {
        self.entries.iter().any(|p| p.cert_subject.is_some())
    }
}

/// "CN=alice, O=Acme" and "cn=alice,O=Acme" compare equal.
fn normalize_subject(subject: &str) -> String {
    subject
        .split(',')
        .map(|part| match part.trim().split_once('=') {
            Some((k, v)) => format!("{}={}", k.trim().to_ascii_uppercase(), v.trim()),
            None => part.trim().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[principal]]
name = "root"
role = "admin"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

[[principal]]
name = "acme-ops"
role = "operator"
tenants = ["acme"]
cert_subject = "CN=acme-ops,O=Acme"

[[principal]]
name = "auditor"
role = "viewer"
token_sha256 = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
"#;

    #[test]
    fn tokens_and_subjects_map_to_principals() {
        let p = Principals::parse(FILE).unwrap();
        // sha256("test")
        let root = p.by_token("test").unwrap();
        assert_eq!((root.name.as_str(), root.role), ("root", Role::Admin));
        assert!(p.by_token("tesT").is_none());
        let ops = p.by_subject("cn=acme-ops, O=Acme").unwrap();
        assert_eq!(ops.role, Role::Operator);
        assert!(ops.sees("acme") && !ops.sees("globex"));
        assert!(p.by_subject("CN=acme-ops,O=Globex").is_none());
    }

    #[test]
    fn roles_grant_what_they_say() {
        assert!(Role::Viewer.allows(Permission::TasksRead));
        assert!(!Role::Viewer.allows(Permission::TasksWrite));
        assert!(Role::Operator.allows(Permission::InstancesWrite));
        assert!(!Role::Operator.allows(Permission::AgentsEnroll));
        assert!(!Role::Operator.allows(Permission::AuditRead));
        assert!(Role::Admin.allows(Permission::AuditRead));
        let viewer = Principal {
            name: "v".into(),
            role: Role::Viewer,
            tenants: BTreeSet::new(),
        };
        let err = viewer
            .require(Permission::TasksWrite, "CreateTask")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tasks.write") && err.contains("CreateTask"),
            "{err}"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, needle) in [
            ("", "no [[principal]]"),
            ("[[principal]]\nname=\"a\"\nrole=\"admin\"\n", "token_sha256 or cert_subject"),
            ("[[principal]]\nname=\"a\"\nrole=\"boss\"\ntoken_sha256=\"00\"\n", "unknown variant"),
            ("[[principal]]\nname=\"a\"\nrole=\"admin\"\ntoken_sha256=\"00\"\n", "64 hex"),
            (
                "[[principal]]\nname=\"a\"\nrole=\"admin\"\ncert_subject=\"CN=a\"\ntenants=[\"A B\"]\n",
                "malformed",
            ),
        ] {
            let err = Principals::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
