//! Agent reports: accepted only from the task's assigned agent under the task's current epoch (otherwise answered
//! with ReportRejected and nothing changes), then applied through the state machine and persisted.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_core::{AgentId, Event, Task, TaskId, STOPPED_BY_OPERATOR};
use ferry_proto::v1 as pb;
use pb::agent_message::Body;
use prost::Message;
use tokio::sync::oneshot;

use crate::convert::{self, now_ms};
use crate::coordinator::{Coordinator, PendingList};

/// The `CommandError.command` naming a ListDatabases command.
const LIST_DATABASES: &str = "list_databases";
use crate::error::ServiceError;
use crate::scheduler;

/// What to do with an accepted report once the task is loaded.
enum Persist {
    /// Durable before the next report is handled.
    Now,
    /// Progress: written without waiting for fsync (sled flushes about once a second).
    Lazy,
    Nothing,
}

impl Coordinator {
    /// Handles one task-scoped report from `agent_id`.
    pub(crate) async fn handle_report(
        &self,
        agent_id: &AgentId,
        msg: pb::AgentMessage,
    ) -> Result<(), ServiceError> {
        let Some(body) = msg.body else {
            return Ok(());
        };
        let body = match body {
            Body::Databases(report) => {
                self.answer_list(agent_id, report);
                return Ok(());
            }
            // ListDatabases is not a task command: its errors answer the pending call, never the task state.
            Body::CommandError(err) if err.command == LIST_DATABASES => {
                self.fail_list(agent_id, &msg.task_id, &err);
                return Ok(());
            }
            other => other,
        };
        let Ok(task_id) = TaskId::parse("task_id", &msg.task_id) else {
            self.reject(agent_id, &msg.task_id, 0, "unknown task");
            return Ok(());
        };
        // Refuse reports on tasks that are not this agent's before taking the lock (and without saying whose
        // they are).
        let key = task_id.clone();
        let assigned = self
            .db(move |s| s.get_task(&key))
            .await?
            .is_some_and(|t| t.agent_id.as_ref() == Some(agent_id));
        if !assigned {
            self.reject(agent_id, &msg.task_id, 0, "unknown task");
            return Ok(());
        }
        let _guard = self.write_lock.lock().await;
        let key = task_id.clone();
        let task = self.db(move |s| s.get_task(&key)).await?;
        let Some(mut task) = task.filter(|t| t.agent_id.as_ref() == Some(agent_id)) else {
            self.reject(agent_id, &msg.task_id, 0, "unknown task");
            return Ok(());
        };
        if task.epoch.0 != msg.epoch {
            let reason = format!("stale report: the task is at epoch {}", task.epoch);
            tracing::info!(task_id = %task.id, %agent_id, epoch = msg.epoch, current = %task.epoch, "report rejected");
            self.reject(agent_id, &msg.task_id, task.epoch.0, &reason);
            return Ok(());
        }
        if let Body::Note(note) = &body {
            let kind = if note.kind == "retry" {
                "retry"
            } else {
                "warning"
            };
            let detail: String = note.detail.chars().take(500).collect();
            self.record_task_event(&task.id, kind, format!("agent:{agent_id}"), detail)
                .await?;
            return Ok(());
        }
        if let Body::Verification(report) = body {
            if self.apply_verification_report(&mut task, report).await? {
                self.save_task(&task).await?;
            }
            return Ok(());
        }
        let persist = apply(&mut task, body);
        if end_verification_with_task(&mut task) {
            self.save_task(&task).await?;
            return Ok(());
        }
        match persist {
            Persist::Now => self.save_task(&task).await?,
            Persist::Lazy => {
                let copy = task.clone();
                self.db(move |s| s.put_task_lazy(&copy)).await?;
                self.notify(&task.id);
            }
            Persist::Nothing => {}
        }
        Ok(())
    }

    fn reject(&self, agent_id: &AgentId, task_id: &str, current_epoch: u64, reason: &str) {
        let msg = pb::CoordinatorMessage {
            task_id: task_id.to_owned(),
            epoch: current_epoch,
            body: Some(pb::coordinator_message::Body::ReportRejected(
                pb::ReportRejected {
                    reason: reason.to_owned(),
                    current_epoch,
                },
            )),
        };
        // Not connected any more: nothing to tell.
        let _ = self.registry.send(agent_id, msg);
    }

    fn answer_list(&self, agent_id: &AgentId, report: pb::DatabasesReport) {
        let mut pending = self
            .pending_lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match pending.remove(&report.request_id) {
            Some(p) if &p.agent_id == agent_id => {
                let _ = p.answer.send(report);
            }
            Some(entry) => {
                pending.insert(report.request_id, entry);
                tracing::warn!(%agent_id, request_id = report.request_id, "databases report from another agent");
            }
            None => {
                tracing::info!(%agent_id, request_id = report.request_id, "late databases report ignored")
            }
        }
    }

    /// An agent refused a ListDatabases command: answer its oldest pending call for that task with the error.
    fn fail_list(&self, agent_id: &AgentId, task_id: &str, err: &pb::CommandError) {
        let mut pending = self
            .pending_lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let oldest = pending
            .iter()
            .filter(|(_, p)| &p.agent_id == agent_id && p.task_id.as_str() == task_id)
            .map(|(id, _)| *id)
            .min();
        let Some(p) = oldest.and_then(|id| pending.remove(&id)) else {
            tracing::info!(%agent_id, task_id, "list_databases error with no pending call ignored");
            return;
        };
        let error = if err.unsupported {
            format!("unsupported by this agent: {}", err.message)
        } else {
            err.message.clone()
        };
        let _ = p.answer.send(pb::DatabasesReport {
            error,
            ..Default::default()
        });
    }

    /// Asks the task's agent (or an eligible connected one) for the source's databases.
    pub async fn list_source_databases(
        &self,
        raw_id: &str,
    ) -> Result<Vec<pb::SourceDatabase>, ServiceError> {
        let task = self.load_task(&Self::parse_task_id(raw_id)?).await?;
        let tasks = self.db(|s| s.list_tasks()).await?;
        let agent_id =
            scheduler::pick(&task, &self.registry.connected(), &tasks).ok_or_else(|| {
                ServiceError::FailedPrecondition(format!(
                    "no eligible agent is connected for task {}",
                    task.id
                ))
            })?;
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending_lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                request_id,
                PendingList {
                    agent_id: agent_id.clone(),
                    task_id: task.id.clone(),
                    answer: tx,
                },
            );
        let msg = pb::CoordinatorMessage {
            task_id: task.id.to_string(),
            epoch: task.epoch.0,
            body: Some(pb::coordinator_message::Body::ListDatabases(
                pb::ListDatabases {
                    request_id,
                    spec: Some(convert::spec_to_pb(&task.spec, true)),
                },
            )),
        };
        let outcome = match self.registry.send(&agent_id, msg) {
            Ok(()) => tokio::select! {
                answer = wait_answer(rx, self.settings.list_databases_timeout) => answer,
                () = self.cancel.cancelled() => Err(ServiceError::Unavailable("the coordinator is shutting down".into())),
            },
            Err(_) => Err(ServiceError::Unavailable(format!(
                "agent {agent_id} is not reachable"
            ))),
        };
        self.pending_lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&request_id);
        let report = outcome?;
        if !report.error.is_empty() {
            return Err(ServiceError::FailedPrecondition(format!(
                "agent {agent_id} could not list databases: {}",
                report.error
            )));
        }
        Ok(report.databases)
    }
}

async fn wait_answer(
    rx: oneshot::Receiver<pb::DatabasesReport>,
    timeout: Duration,
) -> Result<pb::DatabasesReport, ServiceError> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(_)) => Err(ServiceError::Unavailable(
            "the agent session ended before it answered".into(),
        )),
        Err(_) => Err(ServiceError::DeadlineExceeded(format!(
            "the agent did not answer within {timeout:?}"
        ))),
    }
}

/// Applies an accepted report to the task.
fn apply(task: &mut Task, body: Body) -> Persist {
    let now = now_ms();
    let state_before = task.state;
    match body {
        Body::CheckItem(report) => {
            let Some(item) = report.item else {
                return Persist::Nothing;
            };
            if task.state != ferry_core::TaskState::Checking {
                return Persist::Nothing;
            }
            // A bounded list: the agent's checks are a fixed set.
            if task.checks.len() >= 64 && !task.checks.iter().any(|c| c.id == item.id) {
                return Persist::Nothing;
            }
            task.upsert_check(convert::check_from_pb(item), now);
            Persist::Now
        }
        Body::ChecksFinished(_) => {
            let failed = task.failed_checks().join(", ");
            let (event, reason) = if failed.is_empty() {
                (Event::ChecksPassed, String::new())
            } else {
                (Event::ChecksFailed, format!("failed checks: {failed}"))
            };
            changed(task.on_event(event, &reason, false, now))
        }
        Body::Progress(report) => {
            let Some(progress) = report.progress else {
                return Persist::Nothing;
            };
            if let Some(phase) = convert::phase_from_pb(progress.phase) {
                task.phase = Some(phase);
            }
            task.progress = progress.encode_to_vec();
            task.update_time_ms = now;
            Persist::Lazy
        }
        Body::Checkpoint(report) => {
            let Some(cp) = report.checkpoint else {
                return Persist::Nothing;
            };
            task.checkpoint = Some(convert::checkpoint_from_pb(cp));
            task.update_time_ms = now;
            Persist::Now
        }
        Body::PhaseChanged(report) => {
            task.phase = convert::phase_from_pb(report.phase);
            task.update_time_ms = now;
            Persist::Now
        }
        Body::Completed(report) => {
            if let Some(p) = report.final_progress {
                task.progress = p.encode_to_vec();
            }
            changed(task.on_event(Event::Completed, "", false, now))
        }
        Body::Failed(report) => {
            changed(task.on_event(Event::Failed, &report.reason, report.resumable, now))
        }
        Body::Stopped(_) => changed(task.on_event(Event::Stopped, STOPPED_BY_OPERATOR, false, now)),
        Body::CommandError(report) => {
            let reason = if report.unsupported {
                format!(
                    "unsupported by this agent: {} ({})",
                    report.command, report.message
                )
            } else {
                format!("{}: {}", report.command, report.message)
            };
            changed(task.on_event(Event::CommandError, &reason, false, now))
        }
        Body::Hello(_)
        | Body::Heartbeat(_)
        | Body::Databases(_)
        | Body::Verification(_)
        | Body::RenewCertificate(_)
        | Body::Note(_) => Persist::Nothing,
    }
    .log(task, state_before)
}

/// A task that failed (or was stopped) ends the verification run it had going. True when it changed.
fn end_verification_with_task(task: &mut Task) -> bool {
    if task.state != ferry_core::TaskState::Failed {
        return false;
    }
    let Some(v) = task.verification.as_mut() else {
        return false;
    };
    if v.state != ferry_core::VerificationState::Running {
        return false;
    }
    v.state = ferry_core::VerificationState::Failed;
    v.finish_time_ms = Some(now_ms());
    let mut report = <pb::Verification as Message>::decode(v.report.as_slice()).unwrap_or_default();
    report.detail = format!("ended with the task: {}", task.failure_reason);
    v.report = report.encode_to_vec();
    true
}

fn changed(yes: bool) -> Persist {
    if yes {
        Persist::Now
    } else {
        Persist::Nothing
    }
}

impl Persist {
    fn log(self, task: &Task, before: ferry_core::TaskState) -> Self {
        if task.state != before {
            tracing::info!(task_id = %task.id, from = %before, to = %task.state, reason = %task.failure_reason, "task state changed");
        }
        self
    }
}
