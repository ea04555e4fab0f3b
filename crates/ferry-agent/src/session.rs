//! One session with the coordinator: dial, send the hello, wait for the welcome, then heartbeat, forward reports
//! and hand commands to the runner until the stream ends, goes silent for three heartbeat intervals, or the agent
//! shuts down. The reconnect loop with backoff lives in `lib.rs`.
//!
//! Owns the wire; it must not execute commands itself (the runner does) nor retry (the caller does).

use std::time::{Duration, SystemTime};

use ferry_proto::v1::agent_service_client::AgentServiceClient;
use ferry_proto::v1::{agent_message, coordinator_message, AgentHello, AgentMessage, Heartbeat};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info};

use crate::config::AgentConfig;
use crate::enrollment::{self, Enrollment};
use crate::identity;
use crate::runner::TaskRunner;
use crate::AgentError;

/// How long to wait for the coordinator's welcome after the hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Missed heartbeat intervals after which the coordinator is considered gone.
const MISSED_BEATS: u32 = 3;
/// Lower bound of the heartbeat interval whatever the coordinator says.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
/// Outbound queue of one session.
const OUTBOUND_CAPACITY: usize = 256;

/// How a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// The agent is shutting down.
    Shutdown,
    /// The coordinator closed the stream.
    Closed,
}

/// Result of one session: whether the welcome was received (resets the backoff) and how it ended.
pub(crate) struct SessionOutcome {
    pub(crate) established: bool,
    pub(crate) result: Result<SessionEnd, AgentError>,
}

/// Opens a channel to the coordinator (TLS unless `plaintext`), presenting the enrollment's client certificate
/// when there is one.
pub(crate) async fn connect(
    config: &AgentConfig,
    enrollment: Option<&Enrollment>,
) -> Result<Channel, AgentError> {
    let mut endpoint = Endpoint::from_shared(config.coordinator.clone())
        .map_err(|e| {
            AgentError::Config(format!(
                "invalid coordinator URL {}: {e}",
                config.coordinator
            ))
        })?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    if !config.plaintext {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &config.tls_ca {
            let pem = tokio::fs::read(ca)
                .await
                .map_err(|e| AgentError::io(ca, e))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(e) = enrollment {
            tls = tls.identity(Identity::from_pem(&e.certificate_pem, &e.key_pem));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect().await?)
}

/// Runs one session; `carry` holds a report that could not be sent by the previous session.
pub(crate) async fn run_session(
    config: &AgentConfig,
    credential: &std::sync::Mutex<Enrollment>,
    runner: &TaskRunner,
    reports_rx: &mut mpsc::Receiver<AgentMessage>,
    carry: &mut Option<AgentMessage>,
    cancel: &CancellationToken,
) -> SessionOutcome {
    let mut established = false;
    let result = tokio::select! {
        biased;
        () = cancel.cancelled() => Ok(SessionEnd::Shutdown),
        result = session(config, credential, runner, reports_rx, carry, cancel, &mut established) => result,
    };
    SessionOutcome {
        established,
        result,
    }
}

async fn session(
    config: &AgentConfig,
    credential: &std::sync::Mutex<Enrollment>,
    runner: &TaskRunner,
    reports_rx: &mut mpsc::Receiver<AgentMessage>,
    carry: &mut Option<AgentMessage>,
    cancel: &CancellationToken,
    established: &mut bool,
) -> Result<SessionEnd, AgentError> {
    let current = credential
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let agent_id = current.agent_id.as_str();
    let host = identity::gather(&config.metadata_url, config.metadata_timeout).await;
    runner.set_identity(host.clone());
    let hello = AgentHello {
        agent_id: agent_id.to_owned(),
        cvm_instance_id: host.metadata.instance_id.clone().unwrap_or_default(),
        region: host.metadata.region.clone().unwrap_or_default(),
        private_ips: host.private_ips(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname: host.hostname.clone(),
        uptime_seconds: host.uptime_seconds.unwrap_or(0),
        capabilities: runner.capabilities(),
        running: runner.running(),
        pool: config.pool,
    };

    let channel = connect(config, Some(&current)).await?;
    let (out_tx, out_rx) = mpsc::channel::<AgentMessage>(OUTBOUND_CAPACITY);
    out_tx
        .send(AgentMessage {
            task_id: String::new(),
            epoch: 0,
            body: Some(agent_message::Body::Hello(hello)),
        })
        .await
        .map_err(|_| AgentError::Protocol("outbound stream closed before the hello".to_owned()))?;
    let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
    if config.plaintext {
        if let Some(bearer) = current.bearer() {
            let value: MetadataValue<_> = bearer.expose().parse().map_err(|_| {
                AgentError::Config(
                    "the enrollment secret contains characters not allowed in a header".to_owned(),
                )
            })?;
            request.metadata_mut().insert("authorization", value);
        }
    }
    let mut inbound = AgentServiceClient::new(channel)
        .connect(request)
        .await?
        .into_inner();

    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
        Err(_) => {
            return Err(AgentError::Protocol(
                "no welcome from the coordinator".to_owned(),
            ))
        }
        Ok(Err(status)) => return Err(status.into()),
        Ok(Ok(None)) => return Ok(SessionEnd::Closed),
        Ok(Ok(Some(message))) => match message.body {
            Some(coordinator_message::Body::Welcome(welcome)) => welcome,
            other => {
                // Only the kind: a command body carries passwords and must never reach a log line.
                return Err(AgentError::Protocol(format!(
                    "expected a welcome, got {}",
                    body_kind(other.as_ref())
                )));
            }
        },
    };
    *established = true;
    runner.inner.metrics.set_connected(true);
    let _disconnected = Disconnected(&runner.inner.metrics);
    let interval =
        Duration::from_millis(u64::from(welcome.heartbeat_interval_ms)).max(MIN_HEARTBEAT);
    info!(%agent_id, coordinator = %config.coordinator, heartbeat_ms = interval.as_millis() as u64,
        "connected to the coordinator");

    if let Some(message) = carry.take() {
        if let Err(error) = out_tx.send(message).await {
            *carry = Some(error.0);
            return Ok(SessionEnd::Closed);
        }
    }

    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    // The key of a renewal request in flight, and when it was sent.
    let mut renewing: Option<(String, Instant)> = None;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(SessionEnd::Shutdown),
            message = inbound.message() => match message {
                Ok(Some(message)) => {
                    last_seen = Instant::now();
                    debug!(task_id = %message.task_id, epoch = message.epoch,
                        command = body_kind(message.body.as_ref()), "command received");
                    if let Some(coordinator_message::Body::CertificateIssued(issued)) = &message.body {
                        if let Some((key_pem, _)) = renewing.take() {
                            let mut guard = credential.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            let next = enrollment::renewed(&guard, key_pem, issued);
                            match next.save(&config.data_dir) {
                                Ok(()) => {
                                    info!(%agent_id, "client certificate renewed");
                                    *guard = next;
                                }
                                Err(error) => tracing::warn!(%agent_id, %error, "could not save the renewed certificate"),
                            }
                        }
                        continue;
                    }
                    runner.handle(message);
                }
                Ok(None) => return Ok(SessionEnd::Closed),
                Err(status) => return Err(status.into()),
            },
            _ = heartbeat.tick() => {
                if last_seen.elapsed() > interval * MISSED_BEATS {
                    return Err(AgentError::Protocol(format!(
                        "coordinator silent for {} ms", last_seen.elapsed().as_millis()
                    )));
                }
                let beat = AgentMessage {
                    task_id: String::new(),
                    epoch: 0,
                    body: Some(agent_message::Body::Heartbeat(Heartbeat {
                        send_time: Some(prost_types::Timestamp::from(SystemTime::now())),
                    })),
                };
                if out_tx.try_send(beat).is_err() {
                    debug!("outbound queue full, heartbeat skipped");
                }
                let due = !config.plaintext
                    && renewing.as_ref().is_none_or(|(_, sent)| sent.elapsed() > Duration::from_secs(120))
                    && credential.lock().unwrap_or_else(std::sync::PoisonError::into_inner).renewal_due();
                if due {
                    let (key_pem, csr_pem) = enrollment::key_and_csr(agent_id)?;
                    let ask = AgentMessage {
                        task_id: String::new(),
                        epoch: 0,
                        body: Some(agent_message::Body::RenewCertificate(
                            ferry_proto::v1::RenewCertificate { csr_pem },
                        )),
                    };
                    if out_tx.try_send(ask).is_ok() {
                        info!(%agent_id, "asking the coordinator to renew the client certificate");
                        renewing = Some((key_pem, Instant::now()));
                    }
                }
            }
            report = reports_rx.recv() => match report {
                Some(report) => {
                    if let Err(error) = out_tx.send(report).await {
                        *carry = Some(error.0);
                        return Ok(SessionEnd::Closed);
                    }
                }
                None => return Ok(SessionEnd::Shutdown),
            },
        }
    }
}

/// Marks the session closed in the metrics when the session ends, however it ends.
struct Disconnected<'a>(&'a crate::metrics::AgentMetrics);

impl Drop for Disconnected<'_> {
    fn drop(&mut self) {
        self.0.set_connected(false);
    }
}

/// The name of a coordinator message's body, for logs (never the body itself: commands carry passwords).
pub(crate) fn body_kind(body: Option<&coordinator_message::Body>) -> &'static str {
    use coordinator_message::Body;
    match body {
        None => "nothing",
        Some(Body::Welcome(_)) => "welcome",
        Some(Body::Heartbeat(_)) => "heartbeat",
        Some(Body::RunChecks(_)) => "run_checks",
        Some(Body::StartMigration(_)) => "start_migration",
        Some(Body::CompleteMigration(_)) => "complete_migration",
        Some(Body::StopMigration(_)) => "stop_migration",
        Some(Body::ListDatabases(_)) => "list_databases",
        Some(Body::ReportRejected(_)) => "report_rejected",
        Some(Body::StartVerification(_)) => "start_verification",
        Some(Body::CertificateIssued(_)) => "certificate_issued",
        Some(Body::SetThrottle(_)) => "set_throttle",
        Some(Body::SetPaused(_)) => "set_paused",
    }
}
