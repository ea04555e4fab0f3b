//! What the coordinator remembers about an agent: what its enrollment bound it to (CVM or pool, tenant), its
//! credentials, what it last said about itself in its hello, and when it was last seen; and the join tokens that
//! enroll agents.

use serde::{Deserialize, Serialize};

use crate::ids::AgentId;

/// An enrolled agent. `cvm_instance_id`, `region`, `pool` and `tenant` come from the join token it enrolled with,
/// never from its hello; the rest is what the agent last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent_id: AgentId,
    /// The CVM the agent is enrolled for; empty for a pool agent.
    pub cvm_instance_id: String,
    pub region: String,
    pub private_ips: Vec<String>,
    pub version: String,
    pub hostname: String,
    /// Whether the agent is enrolled as a pool member (serves public-network tasks).
    pub pool: bool,
    /// Commands the agent supports.
    pub capabilities: Vec<String>,
    /// Unix milliseconds.
    pub last_seen_ms: i64,
    /// The tenant the agent serves; empty means any.
    #[serde(default)]
    pub tenant: String,
    /// Unix milliseconds of the enrollment; 0 for records from before enrollment existed (never eligible).
    #[serde(default)]
    pub enrolled_ms: i64,
    /// Set when revoked: the credentials are refused from then on.
    #[serde(default)]
    pub revoked_ms: Option<i64>,
    /// Hex SHA-256 digests of the credentials issued to the agent: client certificates (DER) and the plaintext-mode
    /// secret, newest last.
    #[serde(default)]
    pub credentials: Vec<String>,
}

impl AgentRecord {
    /// Whether the agent may hold a session: enrolled and not revoked.
    pub fn is_active(&self) -> bool {
        self.enrolled_ms > 0 && self.revoked_ms.is_none()
    }
}

/// A join token as stored: only the hash of the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// Public id, e.g. `jt-3f9a1c2b7d4e`.
    pub token_id: String,
    /// Hex SHA-256 of the token.
    pub hash: String,
    /// The CVM the agent must run on; empty for a pool token.
    pub cvm_id: String,
    pub region: String,
    pub pool: bool,
    /// Empty means any tenant.
    pub tenant: String,
    pub description: String,
    /// The principal that created it.
    pub created_by: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// Set once used: a token enrolls one agent.
    pub used_ms: Option<i64>,
    pub used_by: Option<String>,
}
