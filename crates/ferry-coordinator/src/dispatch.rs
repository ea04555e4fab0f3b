//! Commands to agents: assignment (epoch bump, persisted before any command is sent), the command set each state
//! needs, and rescheduling when agents come and go.

use ferry_core::{AgentId, AgentRecord, CheckStatus, Instance, Task, TaskState};
use ferry_proto::v1 as pb;
use pb::coordinator_message::Body;

use crate::convert;
use crate::coordinator::Coordinator;
use crate::error::ServiceError;
use crate::registry::SendError;
use crate::scheduler;

impl Coordinator {
    /// Assigns `task` to `agent_id` under a new epoch. The caller persists the task before sending anything.
    pub(crate) fn assign(&self, task: &mut Task, agent_id: AgentId) {
        task.epoch = task.epoch.next();
        tracing::info!(task_id = %task.id, %agent_id, epoch = %task.epoch, "task assigned");
        task.agent_id = Some(agent_id);
    }

    /// Queues one command for the task's agent, stamped with the task id and current epoch.
    pub(crate) fn send_command(&self, task: &Task, body: Body) {
        let Some(agent_id) = &task.agent_id else {
            return;
        };
        let msg = pb::CoordinatorMessage {
            task_id: task.id.to_string(),
            epoch: task.epoch.0,
            body: Some(body),
        };
        match self.registry.send(agent_id, msg) {
            Ok(()) => {}
            Err(SendError::NotConnected) => {
                tracing::info!(task_id = %task.id, %agent_id, "agent not connected: command sent when it returns");
            }
            Err(SendError::SessionDropped) => {
                tracing::warn!(task_id = %task.id, %agent_id, "command not delivered: agent must reconnect");
            }
        }
    }

    /// Sends what the agent needs to (re)start the work of the task's current state.
    pub(crate) fn send_for_state(&self, task: &Task, destination: &Instance) {
        let instance = destination;
        let spec = Some(convert::spec_to_pb(&task.spec, true));
        let destination = Some(convert::destination_to_pb(destination));
        let checkpoint = task.checkpoint.as_ref().map(convert::checkpoint_to_pb);
        match task.state {
            TaskState::Checking => {
                let options = pb::CheckOptions {
                    agent_available: true,
                    ..Default::default()
                };
                self.send_command(
                    task,
                    Body::RunChecks(pb::RunChecks {
                        spec,
                        destination,
                        options: Some(options),
                    }),
                );
            }
            TaskState::Running | TaskState::Completing => {
                self.send_command(
                    task,
                    Body::StartMigration(pb::StartMigration {
                        spec,
                        destination: destination.clone(),
                        checkpoint,
                        throttle: Some(convert::throttle_to_pb(&task.throttle)),
                        paused: task.paused,
                    }),
                );
                if task.state == TaskState::Completing {
                    // A cut-over requested before this (re)assignment still has to happen.
                    self.send_command(task, self.complete_command(task));
                } else {
                    // An online verification still running resumes from its checkpoint.
                    self.send_verification(task, instance);
                }
            }
            TaskState::Succeeded => self.send_verification(task, instance),
            TaskState::Stopping => {
                self.send_command(
                    task,
                    Body::StopMigration(pb::StopMigration {
                        spec,
                        destination,
                        checkpoint,
                    }),
                );
            }
            _ => {}
        }
    }

    /// Gives work to agents: every active task whose agent is gone (or unassigned) goes to an eligible connected
    /// agent, and every active task of `fresh` (an agent that just said hello: its new session knows nothing) is
    /// re-sent. Each such task gets a new epoch, persisted before its commands are sent.
    pub(crate) async fn reschedule(&self, fresh: Option<&AgentRecord>) -> Result<(), ServiceError> {
        let _guard = self.write_lock.lock().await;
        let tasks = self.db(|s| s.list_tasks()).await?;
        let connected = self.registry.connected();
        // Active tasks, and finished ones whose verification run still needs an agent.
        let verifying = |t: &Task| {
            t.state == TaskState::Succeeded
                && t.verification.as_ref().is_some_and(|v| {
                    v.state == ferry_core::VerificationState::Running && !v.at_cut_over
                })
        };
        for task in tasks.iter().filter(|t| t.state.is_active() || verifying(t)) {
            let orphan = task
                .agent_id
                .as_ref()
                .is_none_or(|a| !self.registry.is_connected(a));
            let mine = fresh.is_some_and(|f| task.agent_id.as_ref() == Some(&f.agent_id));
            if !orphan && !mine {
                continue;
            }
            let Some(agent_id) = scheduler::pick(task, &connected, &tasks) else {
                continue;
            };
            let mut task = task.clone();
            let dest_id = task.spec.destination_instance_id.clone();
            let Some(destination) = self.db(move |s| s.get_instance(&dest_id)).await? else {
                tracing::warn!(task_id = %task.id, "destination instance missing: task not resumed");
                continue;
            };
            if task.state == TaskState::Checking {
                // Checks re-run from scratch; keep only the coordinator's agent_available item.
                task.checks
                    .retain(|c| c.id == "agent_available" && c.status == CheckStatus::Pass);
            }
            self.assign(&mut task, agent_id);
            self.save_task(&task).await?;
            self.send_for_state(&task, &destination);
        }
        Ok(())
    }

    /// Tells watchers of the agent's tasks that its connectivity changed, and records it in the history of its
    /// unfinished tasks (`kind`: "agent_reconnected" or "agent_disconnected").
    pub(crate) async fn notify_agent_tasks(
        &self,
        agent_id: &AgentId,
        kind: &'static str,
    ) -> Result<(), ServiceError> {
        let tasks = self.db(|s| s.list_tasks()).await?;
        for t in tasks
            .iter()
            .filter(|t| t.agent_id.as_ref() == Some(agent_id))
        {
            if !t.state.is_terminal() {
                let detail = match kind {
                    "agent_disconnected" => format!("agent {agent_id} disconnected"),
                    _ => format!("agent {agent_id} connected"),
                };
                self.record_task_event(&t.id, kind, crate::history::COORDINATOR.to_owned(), detail)
                    .await?;
            }
            self.notify(&t.id);
        }
        Ok(())
    }
}
