//! Agent enrollment and credentials: join tokens (created by an admin, bound to one CVM or to the pool, single
//! use, expiring; only their SHA-256 is stored), Enroll (the token proves itself once and the agent receives its
//! own credential), session authentication by that credential, certificate renewal and revocation.
//!
//! Must not: derive an agent's identity or binding from anything the agent says (only from the credential), keep a
//! token or secret in clear, or echo other agents' or tasks' ids in a refusal.

use std::time::Duration;

use ferry_core::{AgentId, AgentRecord, JoinTokenRecord};
use ferry_proto::v1 as pb;
use ferry_store::ConsumeJoinToken;
use tonic::metadata::MetadataMap;

use crate::convert::{self, now_ms};
use crate::coordinator::Coordinator;
use crate::error::ServiceError;
use crate::principal::{constant_time_eq, sha256_hex, Principal};

/// Default join-token lifetime.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest join-token lifetime.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Prefix of join tokens (so they are recognisable in a leak scanner).
const TOKEN_PREFIX: &str = "fjt-";

fn random_secret(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)]))
        .collect()
}

fn check_text(field: &'static str, text: &str) -> Result<(), ServiceError> {
    if text.chars().count() > 200 || text.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            field,
            "must be at most 200 characters without control characters",
        ));
    }
    Ok(())
}

/// How an agent proved who it is on a session.
pub(crate) enum AgentCredential<'a> {
    /// The leaf certificate (DER) of a mutual-TLS session.
    Certificate(&'a [u8]),
    /// `authorization: Bearer <agent_id>.<secret>` (plaintext coordinators only).
    Secret(String),
    None,
}

impl<'a> AgentCredential<'a> {
    pub(crate) fn from_request(
        certs: Option<&'a [tonic::transport::CertificateDer<'static>]>,
        metadata: &MetadataMap,
    ) -> Self {
        if let Some(leaf) = certs.and_then(|c| c.first()) {
            return Self::Certificate(leaf.as_ref());
        }
        match metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            Some(token) => Self::Secret(token.trim().to_owned()),
            None => Self::None,
        }
    }
}

impl Coordinator {
    /// CreateJoinToken.
    pub async fn create_join_token(
        &self,
        by: &Principal,
        req: pb::CreateJoinTokenRequest,
    ) -> Result<pb::JoinToken, ServiceError> {
        let (cvm_id, region) =
            match (req.pool, req.cvm_id.is_empty()) {
                (true, true) => (String::new(), req.region.clone()),
                (true, false) => return Err(ServiceError::invalid(
                    "cvm_id",
                    "must be empty with pool: a token enrolls either a CVM's agent or a pool agent",
                )),
                (false, true) => {
                    return Err(ServiceError::invalid(
                        "cvm_id",
                        "is required (e.g. \"ins-abcd1234\"), or set pool for a pool agent",
                    ))
                }
                (false, false) => {
                    let cvm = ferry_core::CvmId::parse("cvm_id", &req.cvm_id)?;
                    if req.region.is_empty() {
                        return Err(ServiceError::invalid(
                            "region",
                            "is required with cvm_id (the CVM's region, e.g. \"ap-guangzhou\")",
                        ));
                    }
                    (cvm.to_string(), req.region.clone())
                }
            };
        if !region.is_empty()
            && !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ServiceError::invalid(
                "region",
                format!("{region:?} is malformed (e.g. \"ap-guangzhou\")"),
            ));
        }
        let tenant = if req.tenant.is_empty() {
            String::new()
        } else {
            ferry_core::validate_tenant("tenant", &req.tenant)?
        };
        check_text("description", &req.description)?;
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(u64::from(s)),
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(ServiceError::invalid(
                "ttl_seconds",
                format!(
                    "{} is more than 7 days: enroll agents soon after creating their token",
                    req.ttl_seconds
                ),
            ));
        }
        let token = format!("{TOKEN_PREFIX}{}", random_secret(43));
        let now = now_ms();
        let record = JoinTokenRecord {
            token_id: format!("jt-{}", ferry_core::ids::random_hex_id(12)),
            hash: sha256_hex(token.as_bytes()),
            cvm_id,
            region,
            pool: req.pool,
            tenant,
            description: req.description,
            created_by: by.name.clone(),
            created_ms: now,
            expires_ms: now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            used_ms: None,
            used_by: None,
        };
        let copy = record.clone();
        self.db(move |s| s.put_join_token(&copy)).await?;
        tracing::info!(token_id = %record.token_id, cvm_id = %record.cvm_id, pool = record.pool, "join token created");
        let mut out = join_token_to_pb(&record);
        out.token = token;
        Ok(out)
    }

    /// Enroll: checks the token, consumes it, issues the credential and records the agent.
    pub async fn enroll(
        &self,
        req: pb::EnrollRequest,
    ) -> Result<(pb::EnrollResponse, Vec<String>), (ServiceError, Vec<String>)> {
        let hash = sha256_hex(req.join_token.trim().as_bytes());
        let found = {
            let key = hash.clone();
            self.db(move |s| s.get_join_token(&key))
                .await
                .map_err(|e| (e, vec![]))?
        };
        let Some(token) = found else {
            return Err((
                ServiceError::Unauthenticated(
                    "unknown join token: create one with `ferryctl agent join-token create`".into(),
                ),
                vec![],
            ));
        };
        let targets = vec![token.token_id.clone()];
        let refuse = |msg: String| Err((ServiceError::PermissionDenied(msg), targets.clone()));
        if token.used_ms.is_some() {
            return refuse(format!(
                "join token {} was already used: a join token enrolls one agent; create a new one",
                token.token_id
            ));
        }
        let now = now_ms();
        if now >= token.expires_ms {
            return refuse(format!(
                "join token {} expired at {}: create a new one",
                token.token_id,
                humantime::format_rfc3339_seconds(ms_to_system_time(token.expires_ms))
            ));
        }
        if !token.cvm_id.is_empty() && req.cvm_instance_id != token.cvm_id {
            let reported = if req.cvm_instance_id.is_empty() {
                "no instance id".to_owned()
            } else {
                req.cvm_instance_id.clone()
            };
            return refuse(format!(
                "join token {} is for CVM {}, but this host's metadata service reports {reported}: run the agent on that CVM, or create a token for this one",
                token.token_id, token.cvm_id
            ));
        }
        let agent_id = AgentId::generate();
        let issued = self
            .ca
            .issue(&req.csr_pem, agent_id.as_str())
            .map_err(|e| (ServiceError::invalid("csr_pem", e), targets.clone()))?;
        let consumed = {
            let key = hash.clone();
            let by = agent_id.to_string();
            self.db(move |s| s.consume_join_token(&key, now, &by))
                .await
                .map_err(|e| (e, targets.clone()))?
        };
        match consumed {
            ConsumeJoinToken::Consumed(_) => {}
            ConsumeJoinToken::Unknown | ConsumeJoinToken::AlreadyUsed(_) => {
                return refuse(format!(
                    "join token {} was already used: a join token enrolls one agent; create a new one",
                    token.token_id
                ));
            }
        }
        let mut credentials = vec![issued.digest.clone()];
        let secret = if self.settings.plaintext {
            let secret = random_secret(43);
            credentials.push(sha256_hex(secret.as_bytes()));
            Some(secret)
        } else {
            None
        };
        let record = AgentRecord {
            agent_id: agent_id.clone(),
            cvm_instance_id: token.cvm_id.clone(),
            region: if token.region.is_empty() {
                req.region.clone()
            } else {
                token.region.clone()
            },
            private_ips: vec![],
            version: req.version.chars().take(64).collect(),
            hostname: req.hostname.chars().take(255).collect(),
            pool: token.pool,
            capabilities: vec![],
            last_seen_ms: now,
            tenant: token.tenant.clone(),
            enrolled_ms: now,
            revoked_ms: None,
            credentials: credentials.clone(),
        };
        let superseded = {
            let copy = record.clone();
            self.db(move |s| {
                let mut superseded = Vec::new();
                // One agent per CVM: a newer enrollment (a reinstalled agent) replaces the older ones.
                if !copy.cvm_instance_id.is_empty() {
                    for mut old in s.list_agents()? {
                        if old.cvm_instance_id == copy.cvm_instance_id && old.is_active() {
                            old.revoked_ms = Some(now);
                            s.put_agent_durable(&old)?;
                            superseded.push(old.agent_id);
                        }
                    }
                }
                for digest in &copy.credentials {
                    s.put_credential(digest, &copy.agent_id)?;
                }
                s.put_agent_durable(&copy)?;
                Ok(superseded)
            })
            .await
            .map_err(|e| (e, targets.clone()))?
        };
        for old in &superseded {
            tracing::info!(agent_id = %old, by = %agent_id, "agent superseded by a newer enrollment for its CVM");
            self.registry.cancel(old);
        }
        tracing::info!(%agent_id, token_id = %token.token_id, cvm_id = %token.cvm_id, pool = token.pool, "agent enrolled");
        let mut targets = targets;
        targets.insert(0, agent_id.to_string());
        targets.extend(superseded.iter().map(|a| format!("superseded:{a}")));
        Ok((
            pb::EnrollResponse {
                agent_id: agent_id.to_string(),
                certificate_pem: issued.certificate_pem,
                ca_pem: self.ca.pem().to_owned(),
                not_after: Some(convert::timestamp(issued.not_after_ms)),
                agent_secret: secret.unwrap_or_default(),
                cvm_id: token.cvm_id,
                pool: token.pool,
            },
            targets,
        ))
    }

    /// The enrolled, unrevoked agent a session's credential belongs to.
    pub(crate) async fn authenticate_agent(
        &self,
        credential: AgentCredential<'_>,
    ) -> Result<AgentRecord, ServiceError> {
        let (digest, claimed) = match credential {
            AgentCredential::Certificate(der) => (sha256_hex(der), None),
            AgentCredential::Secret(token) if self.settings.plaintext => {
                let Some((id, secret)) = token.split_once('.') else {
                    return Err(ServiceError::Unauthenticated(
                        "malformed agent credential: enroll the agent with --join-token-file"
                            .into(),
                    ));
                };
                (sha256_hex(secret.as_bytes()), Some(id.to_owned()))
            }
            AgentCredential::Secret(_) | AgentCredential::None => {
                let how = if self.settings.plaintext {
                    "present the agent secret from the enrollment"
                } else {
                    "present the client certificate from the enrollment (mutual TLS)"
                };
                return Err(ServiceError::Unauthenticated(format!(
                    "no agent credential: {how}; a new agent enrolls with --join-token-file"
                )));
            }
        };
        let lookup = digest.clone();
        let agent = self
            .db(move |s| match s.agent_by_credential(&lookup)? {
                Some(id) => s.get_agent(&id),
                None => Ok(None),
            })
            .await?;
        let Some(agent) = agent else {
            return Err(ServiceError::Unauthenticated(
                "unknown agent credential: enroll the agent again with a new join token".into(),
            ));
        };
        if let Some(claimed) = claimed {
            if !constant_time_eq(claimed.as_bytes(), agent.agent_id.as_str().as_bytes()) {
                return Err(ServiceError::Unauthenticated(
                    "unknown agent credential: enroll the agent again with a new join token".into(),
                ));
            }
        }
        if !agent.credentials.iter().any(|c| c == &digest) {
            return Err(ServiceError::Unauthenticated(
                "unknown agent credential: enroll the agent again with a new join token".into(),
            ));
        }
        if agent.revoked_ms.is_some() {
            return Err(ServiceError::PermissionDenied(format!(
                "agent {} is revoked: enroll a new agent with a new join token",
                agent.agent_id
            )));
        }
        if agent.enrolled_ms == 0 {
            return Err(ServiceError::Unauthenticated(
                "the agent is not enrolled: enroll it with --join-token-file".into(),
            ));
        }
        Ok(agent)
    }

    /// Issues a renewed certificate over an authenticated session.
    pub(crate) async fn renew_certificate(
        &self,
        agent_id: &AgentId,
        csr_pem: &str,
    ) -> Result<pb::CertificateIssued, ServiceError> {
        let issued = self
            .ca
            .issue(csr_pem, agent_id.as_str())
            .map_err(|e| ServiceError::invalid("csr_pem", e))?;
        let id = agent_id.clone();
        let digest = issued.digest.clone();
        self.db(move |s| {
            let Some(mut agent) = s.get_agent(&id)? else {
                return Ok(());
            };
            s.put_credential(&digest, &id)?;
            agent.credentials.push(digest);
            // Keep the newest few: older certificates expire anyway.
            let excess = agent.credentials.len().saturating_sub(4);
            agent.credentials.drain(..excess);
            s.put_agent_durable(&agent)
        })
        .await?;
        tracing::info!(%agent_id, "agent certificate renewed");
        Ok(pb::CertificateIssued {
            certificate_pem: issued.certificate_pem,
            ca_pem: self.ca.pem().to_owned(),
            not_after: Some(convert::timestamp(issued.not_after_ms)),
        })
    }

    /// RevokeAgent: refuses the credential from now on and ends the live session.
    pub async fn revoke_agent(
        &self,
        raw_id: &str,
        reason: &str,
    ) -> Result<pb::Agent, ServiceError> {
        let id = AgentId::parse("agent_id", raw_id)?;
        check_text("reason", reason)?;
        let key = id.clone();
        let agent = self
            .db(move |s| {
                let Some(mut agent) = s.get_agent(&key)? else {
                    return Ok(None);
                };
                if agent.revoked_ms.is_none() {
                    agent.revoked_ms = Some(now_ms());
                    s.put_agent_durable(&agent)?;
                }
                Ok(Some(agent))
            })
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("agent {id} not found")))?;
        self.registry.cancel(&id);
        tracing::info!(agent_id = %id, "agent revoked");
        Ok(convert::agent_to_pb(&agent, false, vec![]))
    }
}

fn ms_to_system_time(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The operator-facing join token (never the token itself: only CreateJoinToken's answer carries it).
pub fn join_token_to_pb(t: &JoinTokenRecord) -> pb::JoinToken {
    pb::JoinToken {
        token_id: t.token_id.clone(),
        token: String::new(),
        cvm_id: t.cvm_id.clone(),
        region: t.region.clone(),
        pool: t.pool,
        tenant: t.tenant.clone(),
        create_time: Some(convert::timestamp(t.created_ms)),
        expire_time: Some(convert::timestamp(t.expires_ms)),
    }
}
