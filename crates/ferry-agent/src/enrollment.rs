//! The agent's credential. On its first start the agent generates its own key pair, proves a single-use join token
//! once (`AgentService/Enroll`, with what its metadata service says about the host) and receives its agent id, a
//! client certificate from the coordinator's CA (and, from a plaintext loopback coordinator, a secret). All of it
//! is kept in `<data-dir>/enrollment.json` with mode 0600; later sessions authenticate with it. The certificate is
//! renewed over the session (a new key each time) once two thirds of its lifetime have passed.
//!
//! Must not: log the key, the secret or the join token, or keep them anywhere but that file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ferry_proto::v1::agent_service_client::AgentServiceClient;
use ferry_proto::v1::EnrollRequest;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::config::{AgentConfig, Secret};
use crate::{identity, session, AgentError};

/// File in the data dir holding the enrollment.
pub const ENROLLMENT_FILE: &str = "enrollment.json";

/// What the agent received at enrollment (and its latest renewal).
#[derive(Clone, Serialize, Deserialize)]
pub struct Enrollment {
    /// The agent id the coordinator chose.
    pub agent_id: String,
    /// The client certificate (PEM).
    pub certificate_pem: String,
    /// The private key of the certificate (PEM).
    pub key_pem: String,
    /// The coordinator's agent CA (PEM).
    pub ca_pem: String,
    /// Unix milliseconds.
    pub issued_ms: i64,
    /// Unix milliseconds.
    pub not_after_ms: i64,
    /// The session secret from a plaintext coordinator; empty otherwise.
    #[serde(default)]
    pub secret: String,
    /// What the agent is enrolled for (informational).
    #[serde(default)]
    pub cvm_id: String,
    #[serde(default)]
    pub pool: bool,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("agent_id", &self.agent_id)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ts_ms(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
        .unwrap_or(0)
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(ENROLLMENT_FILE)
}

impl Enrollment {
    /// Reads the enrollment, `None` when the agent never enrolled.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, AgentError> {
        let file = path(data_dir);
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AgentError::io(&file, e)),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file)
                .map_err(|e| AgentError::io(&file, e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(AgentError::Config(format!(
                    "{} holds the agent's private key but is readable by others (mode {:o}): chmod 600 it",
                    file.display(),
                    mode & 0o777
                )));
            }
        }
        serde_json::from_str(&text).map(Some).map_err(|e| {
            AgentError::Config(format!(
                "{} is corrupt ({e}): remove it and enroll again with a new --join-token-file",
                file.display()
            ))
        })
    }

    /// Writes the enrollment atomically with mode 0600.
    pub fn save(&self, data_dir: &Path) -> Result<(), AgentError> {
        std::fs::create_dir_all(data_dir).map_err(|e| AgentError::io(data_dir, e))?;
        let file = path(data_dir);
        let tmp = data_dir.join(format!("{ENROLLMENT_FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| AgentError::Config(format!("encoding the enrollment: {e}")))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut out = options.open(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
        std::io::Write::write_all(&mut out, text.as_bytes())
            .map_err(|e| AgentError::io(&tmp, e))?;
        out.sync_all().map_err(|e| AgentError::io(&tmp, e))?;
        std::fs::rename(&tmp, &file).map_err(|e| AgentError::io(&file, e))?;
        Ok(())
    }

    /// Whether two thirds of the certificate's lifetime have passed.
    pub fn renewal_due(&self) -> bool {
        let lifetime = self.not_after_ms - self.issued_ms;
        lifetime > 0 && now_ms() >= self.issued_ms + lifetime * 2 / 3
    }

    /// The value of `authorization` for a plaintext coordinator.
    pub fn bearer(&self) -> Option<Secret> {
        (!self.secret.is_empty())
            .then(|| Secret::new(format!("Bearer {}.{}", self.agent_id, self.secret)))
    }
}

/// A new key pair and a CSR for it: (key PEM, CSR PEM).
pub fn key_and_csr(agent_hint: &str) -> Result<(String, String), AgentError> {
    let key = rcgen::KeyPair::generate()
        .map_err(|e| AgentError::Config(format!("generating the agent key: {e}")))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agent_hint);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| AgentError::Config(format!("building the certificate request: {e}")))?;
    Ok((key.serialize_pem(), csr))
}

/// Enrolls with `join_token`: returns the saved enrollment. Refusals (used, expired, wrong CVM) are errors that a
/// new token fixes, so they are returned rather than retried.
pub async fn enroll(config: &AgentConfig, join_token: &Secret) -> Result<Enrollment, AgentError> {
    let host = identity::gather(&config.metadata_url, config.metadata_timeout).await;
    let (key_pem, csr_pem) = key_and_csr("ferry-agent")?;
    let channel = session::connect(config, None).await?;
    let response = AgentServiceClient::new(channel)
        .enroll(EnrollRequest {
            join_token: join_token.expose().to_owned(),
            csr_pem,
            cvm_instance_id: host.metadata.instance_id.clone().unwrap_or_default(),
            region: host.metadata.region.clone().unwrap_or_default(),
            hostname: host.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .await?
        .into_inner();
    let enrollment = Enrollment {
        agent_id: response.agent_id,
        certificate_pem: response.certificate_pem,
        key_pem,
        ca_pem: response.ca_pem,
        issued_ms: now_ms(),
        not_after_ms: ts_ms(response.not_after.as_ref()),
        secret: response.agent_secret,
        cvm_id: response.cvm_id,
        pool: response.pool,
    };
    enrollment.save(&config.data_dir)?;
    info!(agent_id = %enrollment.agent_id, cvm_id = %enrollment.cvm_id, pool = enrollment.pool,
        "enrolled with the coordinator");
    Ok(enrollment)
}

/// Applies a renewed certificate (for the key generated with its request) and saves it.
pub fn renewed(
    current: &Enrollment,
    key_pem: String,
    issued: &ferry_proto::v1::CertificateIssued,
) -> Enrollment {
    Enrollment {
        certificate_pem: issued.certificate_pem.clone(),
        key_pem,
        ca_pem: if issued.ca_pem.is_empty() {
            current.ca_pem.clone()
        } else {
            issued.ca_pem.clone()
        },
        issued_ms: now_ms(),
        not_after_ms: ts_ms(issued.not_after.as_ref()),
        ..current.clone()
    }
}

/// How long until the certificate should be renewed (zero when due).
pub fn until_renewal(e: &Enrollment) -> Duration {
    let due = e.issued_ms + (e.not_after_ms - e.issued_ms) * 2 / 3;
    Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Enrollment {
        Enrollment {
            agent_id: "agent-0123456789ab".into(),
            certificate_pem: "CERT".into(),
            key_pem: "KEY-SECRET".into(),
            ca_pem: "CA".into(),
            issued_ms: now_ms(),
            not_after_ms: now_ms() + 3_600_000,
            secret: "s3cret".into(),
            cvm_id: "ins-abcd1234".into(),
            pool: false,
        }
    }

    #[test]
    fn enrollment_is_saved_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Enrollment::load(dir.path()).unwrap().is_none());
        let e = sample();
        e.save(dir.path()).unwrap();
        let back = Enrollment::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.agent_id, e.agent_id);
        assert_eq!(back.key_pem, e.key_pem);
        assert!(!format!("{back:?}").contains("KEY-SECRET"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file = dir.path().join(ENROLLMENT_FILE);
            assert_eq!(
                std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
                0o600
            );
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = Enrollment::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_lifetime() {
        let mut e = sample();
        assert!(!e.renewal_due());
        e.issued_ms = now_ms() - 3_000_000;
        e.not_after_ms = now_ms() + 1_000_000;
        assert!(e.renewal_due());
        assert_eq!(until_renewal(&e), Duration::ZERO);
        assert_eq!(
            e.bearer().map(|b| b.expose().to_owned()).as_deref(),
            Some("Bearer agent-0123456789ab.s3cret")
        );
    }

    #[test]
    fn a_csr_is_made_for_a_fresh_key() {
        let (key, csr) = key_and_csr("x").unwrap();
        assert!(key.contains("PRIVATE KEY") && csr.contains("CERTIFICATE REQUEST"));
    }
}
