//! Coordinator configuration: what `run` needs (already loaded: tokens and PEMs read), plus the TOML file format
//! and token-file helpers used by `main.rs`. Must not: print token or key contents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_core::Secret;
use serde::Deserialize;

/// TLS material, PEM-encoded.
#[derive(Clone)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// When set, agents and operators must present a client certificate signed by this CA.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("client_ca", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where sled, the secret key, the agent CA and generated tokens live.
    pub data_dir: PathBuf,
    /// `None` means plaintext: refused unless the listener is on a loopback address.
    pub tls: Option<TlsPem>,
    /// Without a principals file: the bearer token of the one principal, `admin`.
    pub operator_token: Secret,
    /// Named principals with roles and tenants; replaces `operator_token` when set.
    pub principals: Option<crate::principal::Principals>,
    /// Heartbeat interval announced to agents.
    pub heartbeat_interval: Duration,
    /// How long ListSourceDatabases waits for the agent.
    pub list_databases_timeout: Duration,
    /// Public-network tasks may name loopback, link-local and private addresses (labs and tests only).
    pub allow_private_sources: bool,
    /// Serve gRPC server reflection.
    pub reflection: bool,
    /// A JSON-lines copy of the audit log, for log shippers.
    pub audit_log: Option<PathBuf>,
    /// Lifetime of the client certificates issued to agents (renewed over the session at two thirds).
    pub agent_cert_ttl: Duration,
    /// Most WatchTask streams open at once.
    pub max_watchers: usize,
}

impl Config {
    /// A plaintext config with the given operator token and defaults: for tests. Private sources are allowed (the
    /// tests' sources are on loopback).
    pub fn plaintext(data_dir: PathBuf, operator_token: &str) -> Self {
        Self {
            data_dir,
            tls: None,
            operator_token: Secret::new(operator_token),
            principals: None,
            heartbeat_interval: Duration::from_secs(2),
            list_databases_timeout: Duration::from_secs(30),
            allow_private_sources: true,
            reflection: true,
            audit_log: None,
            agent_cert_ttl: Duration::from_secs(30 * 24 * 3600),
            max_watchers: 256,
        }
    }
}

/// The TOML config file; every field may also come from a flag (flags win).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on, e.g. "127.0.0.1:7443".
    pub listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Serve without TLS (loopback and tests only).
    pub plaintext: Option<bool>,
    pub operator_token_file: Option<PathBuf>,
    /// Gone: agents enroll with join tokens. Kept only to explain that when an old file sets it.
    pub agent_token_file: Option<PathBuf>,
    /// Principals file (TOML `[[principal]]` tables).
    pub principals_file: Option<PathBuf>,
    /// Allow public-network tasks on loopback, link-local and private addresses.
    pub allow_private_sources: Option<bool>,
    /// Serve gRPC reflection (default true).
    pub reflection: Option<bool>,
    /// JSON-lines copy of the audit log.
    pub audit_log: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Lifetime of agent certificates, e.g. "30d".
    #[serde(default, with = "humantime_serde")]
    pub agent_cert_ttl: Option<Duration>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// e.g. "2s".
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// "text" or "json".
    pub log_format: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))
    }
}

/// Reads a token file (trimmed); an empty file is an error.
pub fn read_token(path: &Path) -> anyhow::Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("token file {} is empty", path.display());
    }
    Ok(Secret::new(token))
}

/// Reads `path`, or creates it (mode 0600) with a random token when missing.
pub fn read_or_create_token(path: &Path) -> anyhow::Result<Secret> {
    if path.exists() {
        return read_token(path);
    }
    use rand::Rng;
    let token: String = {
        let mut rng = rand::thread_rng();
        (0..40)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)]))
            .collect()
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = ferry_store::create_private_file(path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, token.as_bytes())?;
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_parses() {
        let text = include_str!("../../../deploy/coordinator.example.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(file.heartbeat_interval, Some(Duration::from_secs(2)));
        assert!(file.tls_cert.is_some() && file.principals_file.is_some());
        assert!(file.agent_token_file.is_none());
        assert_eq!(
            file.agent_cert_ttl,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
    }

    #[test]
    fn the_shipped_example_principals_parse() {
        let text = include_str!("../../../deploy/principals.example.toml");
        let principals = crate::Principals::parse(text).unwrap();
        assert!(principals.uses_certificates());
        assert_eq!(
            principals.by_token("foo").map(|p| p.name),
            Some("platform-admin".into())
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(
            toml::from_str::<FileConfig>("listen = \"127.0.0.1:1\"\nlisten_addr = \"x\"").is_err()
        );
    }

    #[test]
    fn generated_token_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator-token");
        let first = read_or_create_token(&path).unwrap();
        assert!(first.is_set());
        assert_eq!(read_or_create_token(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "  \n").unwrap();
        assert!(read_token(&path).is_err());
    }
}
