//! The Ferry agent: a daemon on the source host that dials out to the coordinator (so it works behind NAT and
//! outbound-only security groups), identifies itself from what it reads locally (cloud metadata, interfaces),
//! heartbeats, and executes the coordinator's commands (checks, migration, database listing), streaming reports
//! back with the task id and the assignment epoch of the command they answer.
//!
//! Owns the agent session, the local identity and the task runner. It must not decide task state (the coordinator
//! does), must not fake success for a command it cannot run, and must never log or report secrets.
//!
//! Entry point: [`run`], which tests call in-process; `main.rs` only parses flags and installs signal handling.

pub mod backoff;
pub mod config;
mod convert;
pub mod copy_rate;
pub mod enrollment;
pub mod identity;
pub mod metrics;
pub mod replay;
mod runner;
mod session;
mod verify;
mod work;

use std::future::Future;
use std::path::Path;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{AgentConfig, Args, Command, LogFormat, ReplayArgs, Secret};
pub use runner::UNSUPPORTED;

/// Capacity of the reports queue shared by all local tasks (survives reconnects).
const REPORTS_CAPACITY: usize = 1024;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Invalid configuration (flags, config file, data dir content).
    #[error("configuration: {0}")]
    Config(String),
    /// Local file IO.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// Could not reach the coordinator.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The coordinator answered with an error status.
    #[error("coordinator: {code:?}: {message}", code = .0.code(), message = .0.message())]
    Status(#[from] tonic::Status),
    /// The coordinator broke the session protocol.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl AgentError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// `error: cause: cause...`, skipping a cause whose text its parent already ends with.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The agent's enrollment: the saved one, or a new one made with the join token (retrying while the coordinator is
/// unreachable; a refused token is an error that only a new token fixes).
async fn enrollment_or_enroll(
    config: &AgentConfig,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<enrollment::Enrollment>, AgentError> {
    if let Some(saved) = enrollment::Enrollment::load(&config.data_dir)? {
        return Ok(Some(saved));
    }
    let Some(join_token) = &config.join_token else {
        return Err(AgentError::Config(format!(
            "this agent is not enrolled ({} has no {}): create a join token with `ferryctl agent join-token create` and pass it with --join-token-file",
            config.data_dir.display(),
            enrollment::ENROLLMENT_FILE
        )));
    };
    let mut backoff = backoff::Backoff::new(config.reconnect_initial, config.reconnect_max);
    loop {
        match enrollment::enroll(config, join_token).await {
            Ok(e) => return Ok(Some(e)),
            Err(AgentError::Status(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                ) =>
            {
                return Err(AgentError::Config(format!(
                    "the coordinator refused the enrollment: {}",
                    status.message()
                )));
            }
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(error = %error_chain(&error), delay_ms = delay.as_millis() as u64,
                    "enrollment failed; retrying");
                tokio::select! {
                    () = shutdown.as_mut() => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Runs the agent until `shutdown` completes: loads its enrollment (or enrolls with the join token), then keeps a
/// session with the coordinator open, reconnecting with capped exponential backoff and jitter. Local work
/// survives reconnects; on shutdown it is cancelled (without rolling anything back) and awaited.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    config.validate()?;
    tokio::pin!(shutdown);
    let Some(enrolled) = enrollment_or_enroll(&config, &mut shutdown).await? else {
        return Ok(());
    };
    let agent_id = enrolled.agent_id.clone();
    info!(%agent_id, coordinator = %config.coordinator, cvm_id = %enrolled.cvm_id, pool = enrolled.pool,
        "ferry-agent starting");
    let credential = std::sync::Mutex::new(enrolled);

    let cancel = CancellationToken::new();
    let (reports_tx, mut reports_rx) = mpsc::channel(REPORTS_CAPACITY);
    let runner = runner::TaskRunner::new(config.clone(), reports_tx, cancel.child_token());
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            AgentError::Config(format!("cannot bind the metrics address {addr}: {e}"))
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| AgentError::Config(e.to_string()))?;
        println!("ferry-agent metrics on {local}");
        info!(addr = %local, "serving metrics at /metrics");
        let metrics = std::sync::Arc::clone(&runner.inner.metrics);
        let tasks = runner.clone();
        runner.inner.tracker.spawn(metrics::serve(
            metrics,
            listener,
            cancel.clone(),
            move || tasks.running().len(),
        ));
    }

    let sessions = async {
        let mut backoff = backoff::Backoff::new(config.reconnect_initial, config.reconnect_max);
        let mut carry = None;
        loop {
            let outcome = session::run_session(
                &config,
                &credential,
                &runner,
                &mut reports_rx,
                &mut carry,
                &cancel,
            )
            .await;
            if outcome.established {
                backoff.reset();
            }
            match outcome.result {
                Ok(session::SessionEnd::Shutdown) => return,
                Ok(session::SessionEnd::Closed) => {
                    info!(%agent_id, "coordinator closed the session")
                }
                Err(AgentError::Status(status))
                    if matches!(
                        status.code(),
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                    ) =>
                {
                    warn!(%agent_id, message = %status.message(),
                        "coordinator refused this agent's credential");
                }
                Err(AgentError::Status(status)) if status.code() == tonic::Code::AlreadyExists => {
                    info!(%agent_id, message = %status.message(), "a previous session is still open; retrying");
                }
                Err(error) => {
                    warn!(%agent_id, error = %error_chain(&error), "session with the coordinator failed")
                }
            }
            let delay = backoff.next_delay();
            info!(%agent_id, delay_ms = delay.as_millis() as u64, "reconnecting");
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    };

    tokio::select! {
        () = sessions => {}
        () = &mut shutdown => {
            info!(%agent_id, "shutting down");
            cancel.cancel();
        }
    }
    runner.shutdown().await;
    info!(%agent_id, "ferry-agent stopped");
    Ok(())
}
