//! `ferry.v1.AgentService`: Enroll (a join token, once, for the agent's own credential) and Connect (the agent
//! session). A session authenticates with the credential before anything else; the coordinator derives the agent's
//! id and binding from it. The first message must be a hello; the coordinator answers with a welcome, re-sends the
//! work of the agent's tasks (new epochs), then heartbeats both ways. One live session per agent: a second is
//! refused. The session ends when the stream ends, after 3 heartbeat intervals of silence, on revocation, after
//! too many malformed reports, or at shutdown; the agent is then shown disconnected and its tasks keep their state.
//!
//! Every report is validated and size-checked, and each session is rate limited, before anything takes a lock.

use std::sync::Arc;

use ferry_core::AgentRecord;
use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_service_server::AgentService;
use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::audit::{AuditEntry, Bucket};
use crate::convert::{self, now_ms};
use crate::coordinator::Coordinator;
use crate::enroll::AgentCredential;
use crate::error::ServiceError;
use crate::registry::Outbound;

/// Outbound queue depth of one session; a full queue drops the session (the agent reconnects).
const OUTBOUND_DEPTH: usize = 256;
/// Heartbeat intervals of silence after which an agent is disconnected.
const MISSED_BEATS: u32 = 3;
/// Reports per second one session may send (burst: twice that); beyond it the session is slowed down.
const REPORTS_PER_SECOND: f64 = 200.0;
/// Report bytes per second one session may send (burst: twice that).
const REPORT_BYTES_PER_SECOND: f64 = 16.0 * 1024.0 * 1024.0;
/// Malformed reports after which a session is ended.
const MAX_MALFORMED: u32 = 50;

/// The agent API.
pub struct AgentApi {
    pub(crate) core: Arc<Coordinator>,
}

fn peer_of<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = peer_of(&req);
        match self.core.enroll(req.into_inner()).await {
            Ok((response, targets)) => {
                let _ = self
                    .core
                    .auditor
                    .record(AuditEntry {
                        principal: format!("agent:{}", response.agent_id),
                        peer,
                        method: "Enroll",
                        targets,
                        code: tonic::Code::Ok,
                        detail: if response.pool {
                            "enrolled as a pool agent".into()
                        } else {
                            format!("enrolled for CVM {}", response.cvm_id)
                        },
                    })
                    .await;
                Ok(Response::new(response))
            }
            Err((error, targets)) => {
                let status = Status::from(error);
                self.core
                    .auditor
                    .record_failure(AuditEntry {
                        principal: "anonymous".into(),
                        peer,
                        method: "Enroll",
                        targets,
                        code: status.code(),
                        detail: status.message().to_owned(),
                    })
                    .await;
                Err(status)
            }
        }
    }

    type ConnectStream = ReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn connect(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let peer = peer_of(&req);
        let certs = req.peer_certs();
        let credential =
            AgentCredential::from_request(certs.as_deref().map(Vec::as_slice), req.metadata());
        let stored = match self.core.authenticate_agent(credential).await {
            Ok(agent) => agent,
            Err(error) => return Err(self.refuse(&peer, None, error).await),
        };
        let agent_id = stored.agent_id.clone();
        let mut inbound = req.into_inner();
        let silence = self.core.settings.heartbeat_interval * MISSED_BEATS;
        let first = match tokio::time::timeout(silence, inbound.message()).await {
            Ok(Ok(Some(msg))) => msg,
            Ok(Ok(None)) => return Err(Status::invalid_argument("stream ended before the hello")),
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::invalid_argument(
                    "no hello within 3 heartbeat intervals",
                ))
            }
        };
        let Some(pb::agent_message::Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument(
                "the first message of a session must be a hello",
            ));
        };
        if let Err(why) = check_hello(&stored, &hello) {
            return Err(self.refuse(&peer, Some(&stored), why).await);
        }
        let record = AgentRecord {
            private_ips: hello
                .private_ips
                .into_iter()
                .take(64)
                .map(|ip| ip.chars().take(64).collect())
                .collect(),
            version: hello.version.chars().take(64).collect(),
            hostname: hello.hostname.chars().take(255).collect(),
            capabilities: hello
                .capabilities
                .into_iter()
                .take(32)
                .map(|c| c.chars().take(64).collect())
                .collect(),
            last_seen_ms: now_ms(),
            ..stored
        };

        let (tx, rx) = mpsc::channel(OUTBOUND_DEPTH);
        let interval_ms =
            u32::try_from(self.core.settings.heartbeat_interval.as_millis()).unwrap_or(u32::MAX);
        let welcome = message(pb::coordinator_message::Body::Welcome(pb::Welcome {
            heartbeat_interval_ms: interval_ms,
            agent_id: agent_id.to_string(),
        }));
        tx.try_send(Ok(welcome))
            .map_err(|_| Status::internal("session queue"))?;
        let cancel = self.core.cancel.child_token();
        let Some(session_id) =
            self.core
                .registry
                .register(record.clone(), tx.clone(), cancel.clone())
        else {
            let error = ServiceError::AlreadyExists(
                "this agent already has a live session; a second one is refused (if the first is gone, the coordinator notices within 3 heartbeat intervals)".into(),
            );
            return Err(self.refuse(&peer, Some(&record), error).await);
        };
        let started = async {
            self.core.remember_agent(record.clone()).await?;
            tracing::info!(%agent_id, cvm_instance_id = %record.cvm_instance_id, pool = record.pool, %peer, "agent connected");
            self.core.reschedule(Some(&record)).await?;
            self.core
                .notify_agent_tasks(&agent_id, "agent_reconnected")
                .await
        }
        .await;
        if let Err(error) = started {
            // Never leave a registered session without its reader: the agent could not reconnect.
            self.core.registry.unregister(&agent_id, session_id);
            return Err(error.into());
        }

        let core = Arc::clone(&self.core);
        self.core.tracker.spawn(async move {
            run_session(&core, &record, session_id, &peer, inbound, tx, cancel).await;
            if core.registry.unregister(&record.agent_id, session_id) {
                tracing::info!(agent_id = %record.agent_id, "agent disconnected");
                let agent_id = record.agent_id.clone();
                if let Err(error) = core.touch_agent(&agent_id).await {
                    tracing::warn!(%error, %agent_id, "could not record the agent's last-seen time");
                }
                if !core.cancel.is_cancelled() {
                    if let Err(error) = core.reschedule(None).await {
                        tracing::warn!(%error, "rescheduling after a disconnect failed");
                    }
                }
                if let Err(error) = core.notify_agent_tasks(&agent_id, "agent_disconnected").await {
                    tracing::warn!(%error, "notifying watchers failed");
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl AgentApi {
    /// Audits a refused session and turns the reason into a status.
    async fn refuse(&self, peer: &str, agent: Option<&AgentRecord>, error: ServiceError) -> Status {
        let status = Status::from(error);
        self.core
            .auditor
            .record_failure(AuditEntry {
                principal: agent
                    .map(|a| format!("agent:{}", a.agent_id))
                    .unwrap_or_else(|| "anonymous".into()),
                peer: peer.to_owned(),
                method: "Connect",
                targets: agent
                    .map(|a| vec![a.agent_id.to_string()])
                    .unwrap_or_default(),
                code: status.code(),
                detail: status.message().to_owned(),
            })
            .await;
        status
    }
}

/// The hello must agree with the enrollment: same agent id, and a CVM agent's metadata must still name its CVM.
fn check_hello(stored: &AgentRecord, hello: &pb::AgentHello) -> Result<(), ServiceError> {
    if !hello.agent_id.is_empty() && hello.agent_id != stored.agent_id.as_str() {
        return Err(ServiceError::invalid(
            "hello.agent_id",
            "differs from the agent id of the credential",
        ));
    }
    if !stored.cvm_instance_id.is_empty() && hello.cvm_instance_id != stored.cvm_instance_id {
        return Err(ServiceError::PermissionDenied(format!(
            "agent {} is enrolled for CVM {}, but this host's metadata service reports {:?}: a copied data dir or disk image; enroll this host with its own join token",
            stored.agent_id, stored.cvm_instance_id, hello.cvm_instance_id
        )));
    }
    Ok(())
}

/// Size and shape limits of an agent report, checked before any lock. `Err` says what is wrong.
pub(crate) fn validate_report(msg: &pb::AgentMessage) -> Result<(), String> {
    use pb::agent_message::Body;
    let Some(body) = &msg.body else {
        return Ok(());
    };
    let size = msg.encoded_len();
    let (limit, what) = match body {
        Body::Hello(_) | Body::Heartbeat(_) | Body::PhaseChanged(_) | Body::ChecksFinished(_) => {
            (16 * 1024, "a control message")
        }
        Body::CheckItem(_)
        | Body::Failed(_)
        | Body::CommandError(_)
        | Body::RenewCertificate(_)
        | Body::Note(_) => (32 * 1024, "a check item, failure, note or request"),
        Body::Progress(_) | Body::Completed(_) | Body::Stopped(_) | Body::Databases(_) => {
            (1024 * 1024, "a progress or summary report")
        }
        Body::Checkpoint(_) | Body::Verification(_) => {
            (4 * 1024 * 1024, "a checkpoint or verification report")
        }
    };
    if size > limit {
        return Err(format!(
            "{what} of {size} bytes is over its {limit}-byte limit"
        ));
    }
    if !matches!(
        body,
        Body::Hello(_) | Body::Heartbeat(_) | Body::RenewCertificate(_) | Body::Databases(_)
    ) && ferry_core::TaskId::parse("task_id", &msg.task_id).is_err()
    {
        return Err("a task report without a valid task_id".into());
    }
    match body {
        Body::CheckItem(report) => {
            let Some(item) = &report.item else {
                return Err("a check item report without an item".into());
            };
            if item.id.is_empty()
                || item.id.len() > 64
                || item.name.len() > 200
                || item.message.len() > 8192
                || item.fix.len() > 8192
            {
                return Err("a check item with an id, name, message or fix out of bounds".into());
            }
        }
        Body::Verification(report) if report.new_mismatches.len() > 10_000 => {
            return Err("a verification report with more than 10000 new mismatches".into());
        }
        Body::Progress(report)
            if report
                .progress
                .as_ref()
                .is_some_and(|p| p.collections.len() > 10_000) =>
        {
            return Err("progress for more than 10000 collections".into());
        }
        _ => {}
    }
    Ok(())
}

fn message(body: pb::coordinator_message::Body) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        task_id: String::new(),
        epoch: 0,
        body: Some(body),
    }
}

/// Reads the agent's messages and heartbeats it until the session ends.
async fn run_session(
    core: &Coordinator,
    record: &AgentRecord,
    session_id: u64,
    peer: &str,
    mut inbound: Streaming<pb::AgentMessage>,
    tx: Outbound,
    cancel: CancellationToken,
) {
    let agent_id = &record.agent_id;
    let mut messages = Bucket::new(REPORTS_PER_SECOND, REPORTS_PER_SECOND * 2.0);
    let mut bytes = Bucket::new(REPORT_BYTES_PER_SECOND, REPORT_BYTES_PER_SECOND * 2.0);
    let mut malformed = 0u32;
    let mut last_renewal: Option<tokio::time::Instant> = None;
    let interval = core.settings.heartbeat_interval;
    let silence = interval * MISSED_BEATS;
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let deadline = tokio::time::sleep(silence);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                tracing::debug!(%agent_id, "session cancelled");
                return;
            }
            _ = beat.tick() => {
                let hb = message(pb::coordinator_message::Body::Heartbeat(pb::Heartbeat {
                    send_time: Some(convert::timestamp(now_ms())),
                }));
                if tx.try_send(Ok(hb)).is_err() {
                    tracing::info!(%agent_id, "agent session queue closed or full");
                    return;
                }
            }
            _ = &mut deadline => {
                tracing::warn!(%agent_id, silence_ms = silence.as_millis() as u64, "agent silent for 3 heartbeat intervals");
                return;
            }
            next = inbound.next() => {
                let msg = match next {
                    None => return,
                    Some(Err(status)) => {
                        tracing::info!(%agent_id, code = ?status.code(), "agent stream ended with an error");
                        return;
                    }
                    Some(Ok(msg)) => msg,
                };
                deadline.as_mut().reset(tokio::time::Instant::now() + silence);
                if !core.registry.is_current(agent_id, session_id) {
                    return;
                }
                // Slow a flooding agent down (only its own stream waits), before any validation work or lock.
                let wait = messages.take(1.0).max(bytes.take(msg.encoded_len() as f64));
                if !wait.is_zero() {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                if let Err(why) = validate_report(&msg) {
                    malformed += 1;
                    tracing::debug!(%agent_id, %why, "malformed agent report dropped");
                    if malformed >= MAX_MALFORMED {
                        tracing::warn!(%agent_id, malformed, "ending the session of an agent sending malformed reports");
                        core.auditor
                            .record_failure(AuditEntry {
                                principal: format!("agent:{agent_id}"),
                                peer: peer.to_owned(),
                                method: "Connect",
                                targets: vec![agent_id.to_string()],
                                code: tonic::Code::InvalidArgument,
                                detail: format!("session ended after {malformed} malformed reports; last: {why}"),
                            })
                            .await;
                        return;
                    }
                    continue;
                }
                match &msg.body {
                    Some(pb::agent_message::Body::Heartbeat(_)) => {
                        if let Err(error) = core.touch_agent(agent_id).await {
                            tracing::warn!(%error, %agent_id, "could not record the agent's last-seen time");
                        }
                    }
                    None => {}
                    Some(pb::agent_message::Body::Hello(_)) => {
                        tracing::warn!(%agent_id, "second hello on a session ignored");
                    }
                    Some(pb::agent_message::Body::RenewCertificate(renew)) => {
                        if last_renewal.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(60)) {
                            tracing::warn!(%agent_id, "certificate renewal requests faster than one a minute ignored");
                            continue;
                        }
                        last_renewal = Some(tokio::time::Instant::now());
                        match core.renew_certificate(agent_id, &renew.csr_pem).await {
                            Ok(issued) => {
                                let reply = message(pb::coordinator_message::Body::CertificateIssued(issued));
                                if tx.try_send(Ok(reply)).is_err() {
                                    return;
                                }
                            }
                            Err(error) => tracing::warn!(%error, %agent_id, "certificate renewal refused"),
                        }
                    }
                    Some(_) => {
                        if let Err(error) = core.handle_report(agent_id, msg).await {
                            tracing::error!(%error, %agent_id, "handling an agent report failed");
                        }
                    }
                }
            }
        }
    }
}
