//! `ferry-coordinator` binary: parses flags and the optional config file, initialises tracing, binds the
//! listener, installs SIGINT/SIGTERM handling and calls [`ferry_coordinator::run`]. Nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ferry_coordinator::config::{read_or_create_token, read_token};
use ferry_coordinator::{Config, FileConfig, TlsPem};

/// Ferry coordinator: durable task state, agent sessions and the operator API.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:7443.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (sled, secret key, generated tokens).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve without TLS. Meant for loopback and tests.
    #[arg(long)]
    plaintext: bool,
    /// File holding the admin's bearer token when no principals file is given; default: DATA_DIR/operator-token
    /// (generated when missing).
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
    /// Principals file: named operators with roles (admin, operator, viewer), tenants, and a token hash or a
    /// client-certificate subject. Replaces the single operator token.
    #[arg(long)]
    principals_file: Option<PathBuf>,
    /// Allow public-network tasks whose source is a loopback, link-local or private address (labs only).
    #[arg(long)]
    allow_private_sources: bool,
    /// Do not serve gRPC server reflection.
    #[arg(long)]
    no_reflection: bool,
    /// Also append every audit event as one JSON line to this file (for log shippers).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; prefer a loopback address).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Lifetime of the client certificates issued to agents, e.g. "30d" (renewed at two thirds of it).
    #[arg(long, value_parser = humantime::parse_duration)]
    agent_cert_ttl: Option<Duration>,
    /// TOML config file with the same settings; flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A maintenance command instead of serving.
    #[command(subcommand)]
    command: Option<Tool>,
    /// Server certificate (PEM).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to; enables mutual TLS.
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Heartbeat interval announced to agents, e.g. "2s" or "500ms".
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
}

/// Maintenance commands (run while the coordinator is stopped).
#[derive(Debug, clap::Subcommand)]
enum Tool {
    /// Replaces the key that seals passwords at rest (DATA_DIR/secret.key) and re-seals every stored secret.
    /// Crash-safe: run it again after an interruption.
    RotateKey {
        /// The coordinator's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Tool::RotateKey { data_dir }) = &args.command {
        let summary = ferry_store::rotate_key(data_dir)?;
        println!(
            "rotated the secret key of {}: re-sealed {} task and {} instance secrets",
            data_dir.display(),
            summary.tasks,
            summary.instances
        );
        return Ok(());
    }
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    init_tracing(
        args.log_format
            .as_deref()
            .or(file.log_format.as_deref())
            .unwrap_or("text"),
    )?;

    let listen = args
        .listen
        .or(file.listen)
        .context("--listen is required (or `listen` in the config file)")?;
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .context("--data-dir is required (or `data_dir` in the config)")?;
    let plaintext = args.plaintext || file.plaintext.unwrap_or(false);
    let token = |flag: Option<PathBuf>, from_file: Option<PathBuf>, default: &str| match flag
        .or(from_file)
    {
        Some(path) => read_token(&path),
        None => {
            let path = data_dir.join(default);
            tracing::info!(path = %path.display(), "using the token file in the data dir");
            read_or_create_token(&path)
        }
    };
    anyhow::ensure!(
        file.agent_token_file.is_none(),
        "agent_token_file is no longer supported: agents enroll with single-use join tokens \
         (`ferryctl agent join-token create`); remove it from the config file"
    );
    if plaintext && !listen.ip().is_loopback() {
        anyhow::bail!(
            "--plaintext would send tokens and passwords in clear over {listen}: plaintext is only allowed on a \
             loopback address (127.0.0.0/8 or ::1); serve TLS with --tls-cert and --tls-key instead"
        );
    }
    let principals = match args.principals_file.or(file.principals_file) {
        Some(path) => Some(ferry_coordinator::Principals::load(&path)?),
        None => None,
    };
    let operator_token = if principals.is_some() {
        ferry_core::Secret::default()
    } else {
        token(
            args.operator_token_file,
            file.operator_token_file,
            "operator-token",
        )?
    };
    let tls = load_tls(
        plaintext,
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
        args.tls_client_ca.or(file.tls_client_ca),
    )?;
    let mut config = Config::plaintext(data_dir, "");
    config.tls = tls;
    config.operator_token = operator_token;
    config.principals = principals;
    config.allow_private_sources =
        args.allow_private_sources || file.allow_private_sources.unwrap_or(false);
    config.reflection = !args.no_reflection && file.reflection.unwrap_or(true);
    config.audit_log = args.audit_log.or(file.audit_log);
    if let Some(ttl) = args.agent_cert_ttl.or(file.agent_cert_ttl) {
        anyhow::ensure!(
            ttl >= Duration::from_secs(60),
            "--agent-cert-ttl must be at least 1m, e.g. \"30d\""
        );
        config.agent_cert_ttl = ttl;
    }
    if let Some(interval) = args.heartbeat_interval.or(file.heartbeat_interval) {
        anyhow::ensure!(!interval.is_zero(), "--heartbeat-interval must be positive");
        config.heartbeat_interval = interval;
    }

    let metrics = match args.metrics_listen.or(file.metrics_listen) {
        Some(addr) => {
            let metrics = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?;
            println!("ferry-coordinator metrics on {}", metrics.local_addr()?);
            Some(metrics)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    println!("ferry-coordinator listening on {addr}");
    ferry_coordinator::run_with_metrics(config, listener, metrics, shutdown_signal()).await
}

fn load_tls(
    plaintext: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> anyhow::Result<Option<TlsPem>> {
    if plaintext {
        if cert.is_some() || key.is_some() {
            tracing::warn!("--plaintext given: ignoring the TLS certificate and key");
        }
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        anyhow::bail!("TLS needs --tls-cert and --tls-key (pass --plaintext to serve without TLS on loopback)");
    };
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    Ok(Some(TlsPem {
        cert: read(&cert)?,
        key: read(&key)?,
        client_ca: client_ca.as_ref().map(read).transpose()?,
    }))
}

fn init_tracing(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => anyhow::bail!("--log-format must be text or json, not {other:?}"),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops the coordinator");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
