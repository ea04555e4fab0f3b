//! `ferry.v1.AgentService/Connect`: the agent session. The first message must be a hello; the coordinator answers
//! with a welcome, re-sends the work of the agent's tasks (new epochs), then heartbeats both ways. The session ends
//! when the stream ends, after 3 heartbeat intervals of silence, when the same agent connects again, or at
//! shutdown; the agent is then shown disconnected and its tasks keep their state.

use std::sync::Arc;

use ferry_core::{AgentId, AgentRecord};
use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_service_server::AgentService;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{self, now_ms};
use crate::coordinator::Coordinator;
use crate::registry::Outbound;

/// Outbound queue depth of one session; a full queue drops the session (the agent reconnects).
const OUTBOUND_DEPTH: usize = 256;
/// Heartbeat intervals of silence after which an agent is disconnected.
const MISSED_BEATS: u32 = 3;

/// The agent API.
pub struct AgentApi {
    pub(crate) core: Arc<Coordinator>,
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type ConnectStream = ReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn connect(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
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
        let agent_id = AgentId::parse("hello.agent_id", &hello.agent_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let record = AgentRecord {
            agent_id: agent_id.clone(),
            cvm_instance_id: hello.cvm_instance_id,
            region: hello.region,
            private_ips: hello.private_ips,
            version: hello.version,
            hostname: hello.hostname,
            pool: hello.pool,
            capabilities: hello.capabilities,
            last_seen_ms: now_ms(),
        };
        self.core.remember_agent(record.clone()).await?;

        let (tx, rx) = mpsc::channel(OUTBOUND_DEPTH);
        let interval_ms =
            u32::try_from(self.core.settings.heartbeat_interval.as_millis()).unwrap_or(u32::MAX);
        let welcome = message(pb::coordinator_message::Body::Welcome(pb::Welcome {
            heartbeat_interval_ms: interval_ms,
        }));
        tx.try_send(Ok(welcome))
            .map_err(|_| Status::internal("session queue"))?;
        let cancel = self.core.cancel.child_token();
        let session_id = self
            .core
            .registry
            .register(record.clone(), tx.clone(), cancel.clone());
        tracing::info!(%agent_id, cvm_instance_id = %record.cvm_instance_id, pool = record.pool, "agent connected");
        self.core.reschedule(Some(&record)).await?;
        self.core.notify_agent_tasks(&agent_id).await?;

        let core = Arc::clone(&self.core);
        self.core.tracker.spawn(async move {
            run_session(&core, &record, session_id, inbound, tx, cancel).await;
            if core.registry.unregister(&record.agent_id, session_id) {
                tracing::info!(agent_id = %record.agent_id, "agent disconnected");
                let mut seen = record;
                seen.last_seen_ms = now_ms();
                let agent_id = seen.agent_id.clone();
                if let Err(error) = core.remember_agent(seen).await {
                    tracing::warn!(%error, %agent_id, "could not record the agent's last-seen time");
                }
                if !core.cancel.is_cancelled() {
                    if let Err(error) = core.reschedule(None).await {
                        tracing::warn!(%error, "rescheduling after a disconnect failed");
                    }
                }
                if let Err(error) = core.notify_agent_tasks(&agent_id).await {
                    tracing::warn!(%error, "notifying watchers failed");
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
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
    mut inbound: Streaming<pb::AgentMessage>,
    tx: Outbound,
    cancel: CancellationToken,
) {
    let agent_id = &record.agent_id;
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
                match &msg.body {
                    Some(pb::agent_message::Body::Heartbeat(_)) => {
                        let mut seen = record.clone();
                        seen.last_seen_ms = now_ms();
                        if let Err(error) = core.remember_agent(seen).await {
                            tracing::warn!(%error, %agent_id, "could not record the agent's last-seen time");
                        }
                    }
                    None => {}
                    Some(pb::agent_message::Body::Hello(_)) => {
                        tracing::warn!(%agent_id, "second hello on a session ignored");
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
