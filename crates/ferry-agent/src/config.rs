//! Agent configuration: command-line flags, the optional TOML file, and the validated [`AgentConfig`].
//!
//! Owns parsing and validation only; it must not connect anywhere. Secrets (the enrollment token) are held in
//! [`Secret`], whose `Debug` is redacted, so a config can be logged safely.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::AgentError;

/// Default base URL of the Tencent Cloud metadata service.
pub const DEFAULT_METADATA_URL: &str = "http://metadata.tencentyun.com/latest/meta-data/";

/// A secret string (token). Never printed: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, to put on the wire. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything the agent needs to run, validated.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Coordinator URL, `https://host:port` (or `http://` with `plaintext`).
    pub coordinator: String,
    /// Where the agent keeps its id (`agent-id`) and the engines' spools (`spool/<task_id>`).
    pub data_dir: PathBuf,
    /// Base URL of the cloud metadata service (paths `instance-id`, `placement/region`, `local-ipv4`).
    pub metadata_url: String,
    /// Single-use join token for the first start (enrollment); unused once enrolled.
    pub join_token: Option<Secret>,
    /// Talk plaintext HTTP/2 to the coordinator (loopback and tests only).
    pub plaintext: bool,
    /// Extra CA (PEM) to trust for the coordinator's TLS certificate.
    pub tls_ca: Option<PathBuf>,
    /// Serve public-network tasks.
    pub pool: bool,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Reconnect delay ceiling.
    pub reconnect_max: Duration,
    /// Timeout of each metadata request.
    pub metadata_timeout: Duration,
    /// Timeout of the TCP/TLS connection to the coordinator.
    pub connect_timeout: Duration,
    /// Copy rate (bytes/s) the `oplog_window` check assumes when the coordinator gives none; `None` = the checks'
    /// default. Set it from a measured migration of this host to make the check's estimate honest.
    pub estimated_copy_rate: Option<u64>,
    /// Cap of the on-disk oplog spool of one task (bytes); reaching it fails the task with that reason.
    pub spool_cap: u64,
    /// How long the engine retries a source or destination that stopped answering (counted from the last
    /// progress) before it fails the task as resumable.
    pub retry_budget: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl AgentConfig {
    /// A config with defaults for everything but the coordinator URL and the data dir.
    pub fn new(coordinator: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            coordinator: coordinator.into(),
            data_dir: data_dir.into(),
            metadata_url: DEFAULT_METADATA_URL.to_owned(),
            join_token: None,
            plaintext: false,
            tls_ca: None,
            pool: false,
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            metadata_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            estimated_copy_rate: None,
            spool_cap: ferry_engine::Tuning::default().spool_cap_bytes,
            retry_budget: ferry_engine::Tuning::default().retry_budget,
            metrics_listen: None,
        }
    }

    /// Checks what can be checked without IO.
    pub fn validate(&self) -> Result<(), AgentError> {
        let url = self.coordinator.as_str();
        if let Some(rest) = url.strip_prefix("http://") {
            if !self.plaintext {
                return Err(AgentError::Config(format!(
                    "coordinator URL {url} is plaintext http: use https, or pass --plaintext (loopback and tests only)"
                )));
            }
            if !ferry_core::net::is_loopback_authority(rest) {
                return Err(AgentError::Config(format!(
                    "--plaintext would send the agent's credential and customers' passwords in clear to {url}: \
                     plaintext is only allowed to a loopback coordinator (127.0.0.0/8, ::1, localhost); use https"
                )));
            }
        } else if url.starts_with("https://") {
            if self.plaintext {
                return Err(AgentError::Config(format!(
                    "coordinator URL {url} is https but --plaintext was given: use http:// with --plaintext"
                )));
            }
        } else {
            return Err(AgentError::Config(format!(
                "coordinator URL {url:?} must start with https:// (or http:// with --plaintext)"
            )));
        }
        if !(self.metadata_url.starts_with("http://") || self.metadata_url.starts_with("https://"))
        {
            return Err(AgentError::Config(format!(
                "metadata URL {:?} must start with http:// or https://",
                self.metadata_url
            )));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(AgentError::Config("data dir must not be empty".to_owned()));
        }
        if self.retry_budget.is_zero() {
            return Err(AgentError::Config(
                "retry budget must be more than 0, e.g. \"120s\"".to_owned(),
            ));
        }
        Ok(())
    }

    /// `<data-dir>/spool/<task_id>`: the engine's spool dir of a task.
    pub fn spool_dir(&self, task_id: &str) -> PathBuf {
        self.data_dir.join("spool").join(task_id)
    }
}

/// `ferry-agent` command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "Ferry agent: runs checks and migrations on a source host"
)]
pub struct Args {
    /// Coordinator URL, e.g. https://coordinator.example:7443 (http:// only with --plaintext).
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Directory for the agent id and the oplog spools.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Base URL of the cloud metadata service.
    #[arg(long)]
    pub metadata_url: Option<String>,
    /// File holding a join token (`ferryctl agent join-token create`): used once, on the first start, to enroll.
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// Plaintext HTTP/2 to the coordinator (loopback and tests only).
    #[arg(long)]
    pub plaintext: bool,
    /// Informational only: pool membership comes from the join token (`--pool` when it is created).
    #[arg(long)]
    pub pool: bool,
    /// CA certificate (PEM) to trust for the coordinator.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// TOML config file with the same settings (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Copy rate per second assumed by the oplog-window check, e.g. "16MiB" (default: the rate measured by this
    /// agent's last full copy of at least 64 MiB, else 16 MiB/s).
    #[arg(long, value_parser = parse_size)]
    pub estimated_copy_rate: Option<u64>,
    /// Cap of each task's on-disk oplog spool, e.g. "8GiB" (default 8 GiB).
    #[arg(long, value_parser = parse_size)]
    pub spool_cap: Option<u64>,
    /// How long an unreachable source or destination is retried before the task fails (resumable), e.g. "120s"
    /// or "5m" (default 120s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retry_budget: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; prefer a loopback address).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A tool to run instead of the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `ferry-agent` tools.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Applies oplog entries from FILE to a destination, in order, with exactly the engine's rules
    /// (unique and TTL indexes relaxed as during a migration), and prints what it did with each.
    /// When a task fails on an oplog entry, the agent saves that entry under
    /// `<data-dir>/spool/<task>/failed-entries/` and the failure names the file: replay it here to
    /// reproduce the failure.
    Replay(ReplayArgs),
}

/// `ferry-agent replay` arguments.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Destination URI, e.g. mongodb://10.0.0.5:27017/?replicaSet=rs0 (credentials go in --username and
    /// --password-file, never in the URI).
    #[arg(long)]
    pub destination_uri: String,
    /// Destination user (authSource admin unless the URI says otherwise).
    #[arg(long)]
    pub username: Option<String>,
    /// File holding the destination user's password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Database to apply (repeatable); default: every non-system database.
    #[arg(long = "database")]
    pub databases: Vec<String>,
    /// Entries: one canonical extended JSON entry per line (`.jsonl`), or raw BSON documents
    /// (`.bson`, byte-exact).
    pub file: PathBuf,
}

/// Parses a size such as `1048576`, `512KiB`, `16MiB`, `8GiB`, `10MB` (decimal units) into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a size: write a whole number with an optional unit, e.g. 16MiB")
    })?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}: use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    number
        .checked_mul(factor)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("{text:?} must be more than 0 and less than 16 EiB"))
}

/// The TOML config file (`--config`); every field is optional and flags override it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Coordinator URL.
    pub coordinator: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Metadata service base URL.
    pub metadata_url: Option<String>,
    /// File holding a join token, used once to enroll.
    pub join_token_file: Option<PathBuf>,
    /// Plaintext HTTP/2 (loopback and tests only).
    pub plaintext: Option<bool>,
    /// Join the public-network pool.
    pub pool: Option<bool>,
    /// CA certificate (PEM) to trust.
    pub tls_ca: Option<PathBuf>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// First reconnect delay, e.g. "500ms".
    #[serde(default, with = "humantime_serde")]
    pub reconnect_initial: Option<Duration>,
    /// Reconnect delay ceiling, e.g. "30s".
    #[serde(default, with = "humantime_serde")]
    pub reconnect_max: Option<Duration>,
    /// Copy rate per second assumed by the oplog-window check, e.g. "16MiB".
    pub estimated_copy_rate: Option<String>,
    /// Cap of each task's on-disk oplog spool, e.g. "8GiB".
    pub spool_cap: Option<String>,
    /// How long an unreachable source or destination is retried before the task fails (resumable), e.g. "120s".
    #[serde(default, with = "humantime_serde")]
    pub retry_budget: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl FileConfig {
    /// Reads and parses a TOML config file.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            AgentError::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| AgentError::Config(format!("invalid config file {}: {e}", path.display())))
    }
}

/// Reads a token file (trimmed). An empty file is an error.
pub fn read_token_file(path: &Path) -> Result<Secret, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        AgentError::Config(format!("cannot read token file {}: {e}", path.display()))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AgentError::Config(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(token))
}

impl Args {
    /// Merges flags over the config file into a validated [`AgentConfig`] and the log format.
    pub fn into_config(self) -> Result<(AgentConfig, LogFormat), AgentError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let coordinator = self
            .coordinator
            .or(file.coordinator)
            .ok_or_else(|| AgentError::Config("--coordinator is required".to_owned()))?;
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .ok_or_else(|| AgentError::Config("--data-dir is required".to_owned()))?;
        let mut config = AgentConfig::new(coordinator, data_dir);
        if let Some(url) = self.metadata_url.or(file.metadata_url) {
            config.metadata_url = url;
        }
        if let Some(path) = self.join_token_file.or(file.join_token_file) {
            config.join_token = Some(read_token_file(&path)?);
        }
        config.plaintext = self.plaintext || file.plaintext.unwrap_or(false);
        config.pool = self.pool || file.pool.unwrap_or(false);
        config.tls_ca = self.tls_ca.or(file.tls_ca);
        if let Some(d) = file.reconnect_initial {
            config.reconnect_initial = d;
        }
        if let Some(d) = file.reconnect_max {
            config.reconnect_max = d;
        }
        let file_size = |value: Option<String>, field: &str| -> Result<Option<u64>, AgentError> {
            value
                .map(|v| parse_size(&v).map_err(|e| AgentError::Config(format!("{field}: {e}"))))
                .transpose()
        };
        config.estimated_copy_rate = match self.estimated_copy_rate {
            Some(rate) => Some(rate),
            None => file_size(file.estimated_copy_rate, "estimated_copy_rate")?,
        };
        if let Some(cap) = match self.spool_cap {
            Some(cap) => Some(cap),
            None => file_size(file.spool_cap, "spool_cap")?,
        } {
            config.spool_cap = cap;
        }
        if let Some(budget) = self.retry_budget.or(file.retry_budget) {
            config.retry_budget = budget;
        }
        config.metrics_listen = self.metrics_listen.or(file.metrics_listen);
        config.validate()?;
        Ok((
            config,
            self.log_format.or(file.log_format).unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn plaintext_is_only_allowed_to_a_loopback_coordinator() {
        for (url, ok) in [
            ("http://127.0.0.1:7070", true),
            ("http://127.0.0.2:7070/", true),
            ("http://[::1]:7070", true),
            ("http://localhost:7070", true),
            ("http://10.0.0.5:7070", false),
            ("http://coordinator.example:7070", false),
            ("http://127.0.0.1.nip.io:7070", false),
        ] {
            let mut config = AgentConfig::new(url, "/tmp/x");
            config.plaintext = true;
            let result = config.validate();
            assert_eq!(result.is_ok(), ok, "{url}: {result:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains("only allowed to a loopback"), "{e}");
            }
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        let mut config = AgentConfig::new("https://127.0.0.1:1", "/nonexistent");
        config.join_token = Some(Secret::new("s3cr3t-token"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t-token"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let file: FileConfig =
            toml::from_str(include_str!("../../../deploy/agent.example.toml")).unwrap();
        assert_eq!(file.log_format, Some(LogFormat::Json));
        assert_eq!(file.reconnect_max, Some(Duration::from_secs(30)));
        assert_eq!(file.metadata_url.as_deref(), Some(DEFAULT_METADATA_URL));
        assert_eq!(file.spool_cap.as_deref().map(parse_size), Some(Ok(8 << 30)));
        assert_eq!(
            file.estimated_copy_rate.as_deref().map(parse_size),
            Some(Ok(16 << 20))
        );
        assert_eq!(file.retry_budget, Some(Duration::from_secs(120)));
    }

    #[test]
    fn retry_budget_flag_parses_and_zero_is_refused() {
        let args = Args::try_parse_from([
            "ferry-agent",
            "--coordinator",
            "https://127.0.0.1:1",
            "--data-dir",
            "d",
            "--retry-budget",
            "5m",
        ])
        .unwrap();
        let (config, _) = args.into_config().unwrap();
        assert_eq!(config.retry_budget, Duration::from_secs(300));
        let args = Args::try_parse_from([
            "ferry-agent",
            "--coordinator",
            "https://127.0.0.1:1",
            "--data-dir",
            "d",
            "--retry-budget",
            "0s",
        ])
        .unwrap();
        let err = args.into_config().unwrap_err().to_string();
        assert!(err.contains("retry budget must be more than 0"), "{err}");
        assert!(Args::try_parse_from(["ferry-agent", "--retry-budget", "soon"]).is_err());
    }

    #[test]
    fn sizes_parse_with_units_and_bad_ones_say_why() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size("lots").unwrap_err().contains("e.g. 16MiB"));
    }

    #[test]
    fn plaintext_must_be_explicit() {
        let config = AgentConfig::new("http://127.0.0.1:1", "d");
        assert!(config.validate().is_err());
        let mut config = AgentConfig::new("http://127.0.0.1:1", "d");
        config.plaintext = true;
        assert!(config.validate().is_ok());
        let mut config = AgentConfig::new("https://127.0.0.1:1", "d");
        config.plaintext = true;
        assert!(config.validate().is_err());
        assert!(AgentConfig::new("127.0.0.1:1", "d").validate().is_err());
    }

    #[test]
    fn flags_override_file_and_unknown_fields_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "tok\n").unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            format!(
                "coordinator = \"https://127.0.0.1:7443\"\ndata_dir = \"x\"\npool = true\nreconnect_max = \"5s\"\njoin_token_file = {:?}\n",
                token.display().to_string()
            ),
        )
        .unwrap();
        let args = Args::parse_from([
            "ferry-agent",
            "--config",
            file.to_str().unwrap(),
            "--coordinator",
            "http://127.0.0.1:1",
            "--plaintext",
        ]);
        let (config, format) = args.into_config().unwrap();
        assert_eq!(config.coordinator, "http://127.0.0.1:1");
        assert_eq!(config.data_dir, PathBuf::from("x"));
        assert!(config.pool);
        assert_eq!(config.reconnect_max, Duration::from_secs(5));
        assert_eq!(config.join_token.unwrap().expose(), "tok");
        assert_eq!(format, LogFormat::Text);

        std::fs::write(&file, "coordinatr = \"x\"\n").unwrap();
        let args = Args::parse_from(["ferry-agent", "--config", file.to_str().unwrap()]);
        let err = args.into_config().unwrap_err().to_string();
        assert!(err.contains("coordinatr"), "{err}");
    }
}
