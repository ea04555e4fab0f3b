//! Verification runs (issue #9): VerifyTask starts the product verifier on the task's agent, the agent's
//! VerificationReports update the task's `verification` and append confirmed mismatches to the store (paged by
//! ListMismatches), and a verification still running is resumed from its checkpoint when the task is reassigned.
//! The verifier itself runs in the agent; the coordinator only keeps its state.

use ferry_core::{Action, Task, TaskPhase, TaskState, Verification, VerificationState, VerifyMode};
use ferry_proto::v1 as pb;
use pb::coordinator_message::Body;
use prost::Message;

use crate::convert::{self, now_ms};
use crate::coordinator::Coordinator;
use crate::error::ServiceError;
use crate::scheduler;

/// Mismatches kept per run: the counts in the report stay exact beyond it.
pub(crate) const MAX_STORED_MISMATCHES: u64 = 100_000;
/// Mismatches accepted from one report.
const MAX_MISMATCHES_PER_REPORT: usize = 1_000;
/// Size cap of a stored verification report or checkpoint.
const MAX_STATE_BYTES: usize = 4 << 20;

pub(crate) fn mode_from_pb(mode: i32) -> VerifyMode {
    match pb::VerifyMode::try_from(mode) {
        Ok(pb::VerifyMode::Hashed) => VerifyMode::Hashed,
        _ => VerifyMode::Full,
    }
}

pub(crate) fn mode_to_pb(mode: VerifyMode) -> pb::VerifyMode {
    match mode {
        VerifyMode::Full => pb::VerifyMode::Full,
        VerifyMode::Hashed => pb::VerifyMode::Hashed,
    }
}

/// The operator-facing verification: the agent's last report, with the coordinator's own facts over it.
pub(crate) fn verification_to_pb(v: &Verification) -> pb::Verification {
    let mut out = pb::Verification::decode(v.report.as_slice()).unwrap_or_default();
    out.run = v.run;
    out.mode = mode_to_pb(v.mode) as i32;
    out.at_cut_over = v.at_cut_over;
    out.state = match v.state {
        VerificationState::Running => pb::VerificationState::Running,
        VerificationState::Passed => pb::VerificationState::Passed,
        VerificationState::Failed => pb::VerificationState::Failed,
    } as i32;
    out.start_time = Some(convert::timestamp(v.start_time_ms));
    out.finish_time = v.finish_time_ms.map(convert::timestamp);
    if out.phase.is_empty() {
        out.phase = "starting".into();
    }
    out
}

impl Coordinator {
    /// VerifyTask: a new run on a task in OPLOG_SYNC (online) or SUCCEEDED (source quiescent).
    pub async fn verify_task(&self, raw_id: &str, mode: i32) -> Result<Task, ServiceError> {
        let id = Self::parse_task_id(raw_id)?;
        let _guard = self.write_lock.lock().await;
        let mut task = self.load_task(&id).await?;
        task.check(Action::Verify)?;
        if task.state == TaskState::Running && task.phase != Some(TaskPhase::OplogSync) {
            return Err(ServiceError::FailedPrecondition(format!(
                "task {} is RUNNING in {}: verification compares a destination that is in sync; VerifyTask once \
                 the task is in OPLOG_SYNC",
                task.id,
                task.phase
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_else(|| "no phase yet".into())
            )));
        }
        let destination = self.check_destination(&task.spec).await?;
        let mode = mode_from_pb(mode);
        // Only the newest run is listed: its predecessors' mismatches go.
        let key = task.id.clone();
        self.db(move |s| s.delete_mismatches(&key)).await?;
        task.verification = Some(Verification::start(
            task.verification.as_ref(),
            mode,
            false,
            now_ms(),
        ));
        task.update_time_ms = now_ms();
        if task.state == TaskState::Succeeded {
            // No engine runs any more: any eligible agent can verify; a new assignment makes old reports stale.
            let tasks = self.db(|s| s.list_tasks()).await?;
            let agent_id = scheduler::pick(&task, &self.registry.connected(), &tasks)
                .ok_or_else(|| {
                    ServiceError::FailedPrecondition(format!(
                        "no eligible agent is connected for task {}: start the agent on the source host",
                        task.id
                    ))
                })?;
            self.assign(&mut task, agent_id);
        }
        self.save_task(&task).await?;
        self.send_verification(&task, &destination);
        tracing::info!(task_id = %task.id, run = task.verification.as_ref().map_or(0, |v| v.run), ?mode, "verification started");
        Ok(task)
    }

    /// Sends StartVerification for the task's running verification (new or to resume).
    pub(crate) fn send_verification(&self, task: &Task, destination: &ferry_core::Instance) {
        let Some(v) = &task.verification else { return };
        if v.state != VerificationState::Running || v.at_cut_over {
            return;
        }
        self.send_command(
            task,
            Body::StartVerification(pb::StartVerification {
                spec: Some(convert::spec_to_pb(&task.spec, true)),
                destination: Some(convert::destination_to_pb(destination)),
                mode: mode_to_pb(v.mode) as i32,
                run: v.run,
                checkpoint: v.checkpoint.clone(),
            }),
        );
    }

    /// ListMismatches: the newest run's confirmed mismatches, in the order they were confirmed.
    pub async fn list_mismatches(
        &self,
        raw_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<pb::ListMismatchesResponse, ServiceError> {
        let id = Self::parse_task_id(raw_id)?;
        let task = self.load_task(&id).await?;
        let (size, from) = crate::coordinator::seq_page(page_size, page_token)?;
        let Some(v) = task.verification.clone() else {
            return Ok(pb::ListMismatchesResponse::default());
        };
        let run = v.run;
        let page = self
            .db(move |s| s.list_mismatches(&id, run, from, size + 1))
            .await?;
        let mut mismatches = Vec::with_capacity(page.len());
        let mut next_page_token = String::new();
        for (i, (seq, raw)) in page.into_iter().enumerate() {
            if i == size {
                next_page_token = seq.to_string();
                break;
            }
            mismatches.push(pb::Mismatch::decode(raw.as_slice()).unwrap_or_default());
        }
        Ok(pb::ListMismatchesResponse {
            mismatches,
            next_page_token,
            total: v.stored_mismatches,
            run,
        })
    }

    /// An accepted VerificationReport: validated and size-capped, its mismatches stored, the task updated.
    /// Reports of an older run are ignored.
    pub(crate) async fn apply_verification_report(
        &self,
        task: &mut Task,
        report: pb::VerificationReport,
    ) -> Result<bool, ServiceError> {
        let Some(v) = task.verification.as_mut() else {
            return Ok(false);
        };
        let Some(progress) = report.verification else {
            return Ok(false);
        };
        if progress.run != v.run || v.state != VerificationState::Running {
            tracing::info!(task_id = %task.id, run = progress.run, current = v.run, "report of another verification run ignored");
            return Ok(false);
        }
        let encoded = progress.encode_to_vec();
        if encoded.len() <= MAX_STATE_BYTES {
            v.report = encoded;
        }
        if !report.checkpoint.is_empty() && report.checkpoint.len() <= MAX_STATE_BYTES {
            v.checkpoint = report.checkpoint;
        }
        let room = MAX_STORED_MISMATCHES.saturating_sub(v.stored_mismatches) as usize;
        let fresh: Vec<Vec<u8>> = report
            .new_mismatches
            .iter()
            .take(MAX_MISMATCHES_PER_REPORT.min(room))
            .map(|m| m.encode_to_vec())
            .collect();
        if !fresh.is_empty() {
            let (id, run, first) = (task.id.clone(), v.run, v.stored_mismatches);
            let n = fresh.len() as u64;
            self.db(move |s| s.put_mismatches(&id, run, first, &fresh))
                .await?;
            v.stored_mismatches += n;
        }
        let now = now_ms();
        match pb::VerificationState::try_from(progress.state) {
            Ok(pb::VerificationState::Passed) => {
                v.state = VerificationState::Passed;
                v.finish_time_ms = Some(now);
            }
            Ok(pb::VerificationState::Failed) => {
                v.state = VerificationState::Failed;
                v.finish_time_ms = Some(now);
            }
            _ => {}
        }
        if v.state != VerificationState::Running {
            tracing::info!(task_id = %task.id, run = v.run, state = ?v.state, mismatches = v.stored_mismatches, "verification finished");
        }
        task.update_time_ms = now;
        Ok(true)
    }
}
