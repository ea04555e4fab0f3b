//! The agent's local work: one entry per task it is acting on (checks or a migration), keyed by task id, each with
//! the epoch of the command it obeys and a cancellation token.
//!
//! Owns dispatching coordinator commands and turning local results into reports (stamped with the task id and the
//! current epoch). It must not talk to the stream directly: reports go through the bounded reports channel that the
//! session forwards, so work survives a reconnect. Commands this build cannot execute are answered with an explicit
//! `CommandError{unsupported: true}`, never a fake success.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ferry_proto::v1::{
    agent_message, coordinator_message, AgentMessage, CommandError, CoordinatorMessage,
    DatabasesReport, ReportRejected, RunningTask,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::identity::HostIdentity;

/// Message of a `CommandError` for a command this agent cannot execute.
pub const UNSUPPORTED: &str = "unsupported by this agent";

/// What a local task is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WorkKind {
    /// Running the pre-migration checks.
    Checks,
    /// Running the data plane.
    Migration,
}

/// One task the agent is acting on.
pub(crate) struct LocalTask {
    /// Epoch of the latest command obeyed for this task; reports carry it.
    pub(crate) epoch: Arc<AtomicU64>,
    /// Cancels the local work (ReportRejected, shutdown).
    pub(crate) cancel: CancellationToken,
    pub(crate) kind: WorkKind,
    /// Distinguishes successive runs of the same task, so a finished run removes only itself.
    pub(crate) generation: u64,
    /// Engine control of a running migration.
    pub(crate) control: Option<crate::work::Control>,
    /// Cancelled when the work has fully ended (engine returned, rollback done): a new run of the same task
    /// waits for it so two engines never share a spool.
    pub(crate) finished: CancellationToken,
}

impl LocalTask {
    /// Still obeyed (not cancelled by a rejection or shutdown).
    pub(crate) fn active(&self) -> bool {
        !self.cancel.is_cancelled()
    }
}

/// Sends reports for one task, stamped with its current epoch.
#[derive(Clone)]
pub(crate) struct TaskReporter {
    task_id: String,
    epoch: Arc<AtomicU64>,
    reports_tx: mpsc::Sender<AgentMessage>,
    pub(crate) metrics: Arc<crate::metrics::AgentMetrics>,
}

impl TaskReporter {
    pub(crate) fn new(
        task_id: String,
        epoch: Arc<AtomicU64>,
        reports_tx: mpsc::Sender<AgentMessage>,
        metrics: Arc<crate::metrics::AgentMetrics>,
    ) -> Self {
        Self {
            task_id,
            epoch,
            reports_tx,
            metrics,
        }
    }

    pub(crate) fn task_id(&self) -> &str {
        &self.task_id
    }

    fn envelope(&self, body: agent_message::Body) -> AgentMessage {
        AgentMessage {
            task_id: self.task_id.clone(),
            epoch: self.epoch.load(Ordering::SeqCst),
            body: Some(body),
        }
    }

    /// Sends a report that must not be lost (waits for room in the queue).
    pub(crate) async fn send(&self, body: agent_message::Body) {
        match &body {
            agent_message::Body::Failed(_) => self.metrics.error(&self.task_id, "failed"),
            agent_message::Body::CommandError(_) => {
                self.metrics.error(&self.task_id, "command_error")
            }
            _ => {}
        }
        if self.reports_tx.send(self.envelope(body)).await.is_err() {
            warn!(task_id = %self.task_id, "reports channel closed, report dropped");
        }
    }

    /// Sends a report that may be dropped when the queue is full (progress: a newer one follows).
    pub(crate) fn send_lossy(&self, body: agent_message::Body) {
        if self.reports_tx.try_send(self.envelope(body)).is_err() {
            tracing::debug!(task_id = %self.task_id, "reports queue full, progress dropped");
        }
    }
}

/// Handle to the agent's local work. Cheap to clone.
#[derive(Clone)]
pub(crate) struct TaskRunner {
    pub(crate) inner: Arc<RunnerInner>,
}

pub(crate) struct RunnerInner {
    pub(crate) config: AgentConfig,
    pub(crate) reports_tx: mpsc::Sender<AgentMessage>,
    tasks: Mutex<HashMap<String, LocalTask>>,
    identity: Mutex<HostIdentity>,
    pub(crate) tracker: TaskTracker,
    pub(crate) cancel: CancellationToken,
    next_generation: AtomicU64,
    /// Verification runs, by task (next to, not instead of, the task's other local work).
    pub(crate) verifications: crate::verify::VerifyRuns,
    pub(crate) metrics: Arc<crate::metrics::AgentMetrics>,
}

impl TaskRunner {
    pub(crate) fn new(
        config: AgentConfig,
        reports_tx: mpsc::Sender<AgentMessage>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(RunnerInner {
                config,
                reports_tx,
                tasks: Mutex::new(HashMap::new()),
                identity: Mutex::new(HostIdentity::default()),
                tracker: TaskTracker::new(),
                cancel,
                next_generation: AtomicU64::new(1),
                verifications: crate::verify::VerifyRuns::default(),
                metrics: Arc::new(crate::metrics::AgentMetrics::new()),
            }),
        }
    }

    pub(crate) fn tasks(&self) -> MutexGuard<'_, HashMap<String, LocalTask>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map itself stays consistent.
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_identity(&self, identity: HostIdentity) {
        *self
            .inner
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = identity;
    }

    pub(crate) fn identity(&self) -> HostIdentity {
        self.inner
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.inner.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Migrations running in this process, for the hello after a reconnect.
    pub(crate) fn running(&self) -> Vec<RunningTask> {
        let mut running: Vec<RunningTask> = self
            .tasks()
            .iter()
            .filter(|(_, t)| t.kind == WorkKind::Migration && t.active())
            .map(|(id, t)| RunningTask {
                task_id: id.clone(),
                epoch: t.epoch.load(Ordering::SeqCst),
            })
            .collect();
        running.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        running
    }

    /// Commands this build supports, for the hello.
    pub(crate) fn capabilities(&self) -> Vec<String> {
        crate::work::CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect()
    }

    /// Acts on one command from the coordinator. Never blocks: work is spawned, replies are queued.
    pub(crate) fn handle(&self, message: CoordinatorMessage) {
        let CoordinatorMessage {
            task_id,
            epoch,
            body,
        } = message;
        let Some(body) = body else {
            // A command this build does not know (a newer coordinator's oneof variant decodes as no body).
            if !task_id.is_empty() {
                self.reply_unsupported(task_id, epoch, "unknown");
            }
            return;
        };
        use coordinator_message::Body;
        match body {
            Body::Welcome(_) | Body::Heartbeat(_) | Body::CertificateIssued(_) => {}
            Body::RunChecks(command) => crate::work::run_checks(self, task_id, epoch, command),
            Body::StartMigration(command) => {
                crate::work::start_migration(self, task_id, epoch, command)
            }
            Body::CompleteMigration(command) => {
                crate::work::complete_migration(self, task_id, epoch, command)
            }
            Body::StopMigration(command) => {
                crate::work::stop_migration(self, task_id, epoch, command)
            }
            Body::ListDatabases(command) => {
                crate::work::list_databases(self, task_id, epoch, command)
            }
            Body::ReportRejected(rejected) => self.on_report_rejected(&task_id, &rejected),
            Body::StartVerification(command) => {
                crate::verify::start_verification(self, task_id, epoch, command)
            }
            Body::SetThrottle(command) => crate::work::set_throttle(self, &task_id, epoch, command),
            Body::SetPaused(command) => crate::work::set_paused(self, &task_id, epoch, command),
        }
    }

    /// The coordinator refused a report: stop acting on the task unless we already obey a newer (or equal) epoch
    /// than the one the coordinator holds (a stale report queued before we adopted the new epoch).
    fn on_report_rejected(&self, task_id: &str, rejected: &ReportRejected) {
        let tasks = self.tasks();
        let Some(task) = tasks.get(task_id).filter(|t| t.active()) else {
            info!(%task_id, reason = %rejected.reason, "report rejected for a task not running here");
            return;
        };
        let local_epoch = task.epoch.load(Ordering::SeqCst);
        if rejected.current_epoch != 0 && local_epoch >= rejected.current_epoch {
            info!(%task_id, local_epoch, current_epoch = rejected.current_epoch, reason = %rejected.reason,
                "stale report rejected; local work already on the current epoch");
            return;
        }
        warn!(%task_id, local_epoch, current_epoch = rejected.current_epoch, reason = %rejected.reason,
            "report rejected by the coordinator; cancelling local work");
        self.inner.metrics.error(task_id, "report_rejected");
        self.inner.verifications.cancel(task_id);
        // The entry stays until the work has ended (see `LocalTask::finished`).
        task.cancel.cancel();
        if let Some(control) = &task.control {
            control.abandon();
        }
    }

    /// Queues a reply that is not tied to a running local task.
    pub(crate) fn reply(&self, task_id: String, epoch: u64, body: agent_message::Body) {
        let tx = self.inner.reports_tx.clone();
        let message = AgentMessage {
            task_id,
            epoch,
            body: Some(body),
        };
        self.inner.tracker.spawn(async move {
            if tx.send(message).await.is_err() {
                warn!("reports channel closed, reply dropped");
            }
        });
    }

    /// Replies `CommandError{unsupported}` for `command`.
    pub(crate) fn reply_unsupported(&self, task_id: String, epoch: u64, command: &str) {
        warn!(%task_id, epoch, command, "command unsupported by this agent");
        self.reply(
            task_id,
            epoch,
            agent_message::Body::CommandError(CommandError {
                command: command.to_owned(),
                message: UNSUPPORTED.to_owned(),
                unsupported: true,
            }),
        );
    }

    /// Replies `CommandError` (supported command that could not be acted on).
    pub(crate) fn reply_error(&self, task_id: String, epoch: u64, command: &str, message: String) {
        warn!(%task_id, epoch, command, %message, "command failed");
        self.reply(
            task_id,
            epoch,
            agent_message::Body::CommandError(CommandError {
                command: command.to_owned(),
                message,
                unsupported: false,
            }),
        );
    }

    /// Replies a failed `DatabasesReport`.
    pub(crate) fn reply_databases_error(
        &self,
        task_id: String,
        epoch: u64,
        request_id: u64,
        error: String,
    ) {
        self.reply(
            task_id,
            epoch,
            agent_message::Body::Databases(DatabasesReport {
                request_id,
                databases: Vec::new(),
                error,
            }),
        );
    }

    /// Cancels every local task and waits for them (shutdown).
    pub(crate) async fn shutdown(&self) {
        {
            let tasks = self.tasks();
            for task in tasks.values() {
                task.cancel.cancel();
            }
        }
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner() -> (TaskRunner, mpsc::Receiver<AgentMessage>) {
        let (tx, rx) = mpsc::channel(16);
        let config = AgentConfig::new("http://127.0.0.1:1", "unused");
        (TaskRunner::new(config, tx, CancellationToken::new()), rx)
    }

    fn insert_migration(runner: &TaskRunner, task_id: &str, epoch: u64) -> CancellationToken {
        let cancel = CancellationToken::new();
        runner.tasks().insert(
            task_id.to_owned(),
            LocalTask {
                epoch: Arc::new(AtomicU64::new(epoch)),
                cancel: cancel.clone(),
                kind: WorkKind::Migration,
                generation: runner.next_generation(),
                control: None,
                finished: CancellationToken::new(),
            },
        );
        cancel
    }

    fn rejected(task_id: &str, current_epoch: u64) -> CoordinatorMessage {
        CoordinatorMessage {
            task_id: task_id.to_owned(),
            epoch: 0,
            body: Some(coordinator_message::Body::ReportRejected(ReportRejected {
                reason: "stale epoch".to_owned(),
                current_epoch,
            })),
        }
    }

    #[test]
    fn a_rejection_for_a_newer_epoch_cancels_the_local_work() {
        let (runner, _rx) = runner();
        let cancel = insert_migration(&runner, "task-a", 4);
        assert_eq!(runner.running().len(), 1);
        runner.handle(rejected("task-a", 5));
        assert!(cancel.is_cancelled());
        assert!(
            runner.running().is_empty(),
            "a cancelled engine is not advertised as running"
        );
    }

    #[test]
    fn a_rejection_of_a_stale_queued_report_is_ignored_once_the_new_epoch_is_adopted() {
        let (runner, _rx) = runner();
        let cancel = insert_migration(&runner, "task-a", 5);
        runner.handle(rejected("task-a", 5));
        assert!(!cancel.is_cancelled());
        assert_eq!(runner.running()[0].epoch, 5);
    }

    #[tokio::test]
    async fn an_unknown_command_is_answered_unsupported_with_task_and_epoch() {
        let (runner, mut rx) = runner();
        runner.handle(CoordinatorMessage {
            task_id: "task-a".to_owned(),
            epoch: 3,
            body: None,
        });
        let reply = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((reply.task_id.as_str(), reply.epoch), ("task-a", 3));
        match reply.body {
            Some(agent_message::Body::CommandError(error)) => {
                assert!(error.unsupported);
                assert_eq!(error.message, UNSUPPORTED);
            }
            other => panic!("{other:?}"),
        }
    }
}
