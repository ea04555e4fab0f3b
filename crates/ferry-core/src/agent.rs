//! What the coordinator remembers about an agent: the identity it sent in its hello, and when it was last seen.

use serde::{Deserialize, Serialize};

use crate::ids::AgentId;

/// An agent's identity as read by the agent itself (cloud metadata and host interfaces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent_id: AgentId,
    /// Empty when not on a CVM. Kept as sent: it is only compared with task specs.
    pub cvm_instance_id: String,
    pub region: String,
    pub private_ips: Vec<String>,
    pub version: String,
    pub hostname: String,
    /// Whether the agent serves public-network tasks.
    pub pool: bool,
    /// Commands the agent supports.
    pub capabilities: Vec<String>,
    /// Unix milliseconds.
    pub last_seen_ms: i64,
}
