//! Verification runs on this agent (issue #9): StartVerification runs the product verifier (`ferry-verify`) next to
//! the source, online against the local engine's applied position while the task's migration runs here, otherwise
//! with the source taken as quiescent; its progress, newly confirmed mismatches and checkpoints go up as
//! VerificationReports. A new run of the same task replaces the old one; the same run sent again (after a
//! reconnect) only adopts the new epoch. The cut-over's verification (CompleteMigration{verify}) runs inside the
//! migration (`work::migrate`) through [`verify_cut_over`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ferry_proto::v1 as pb;
use ferry_verify::{
    Mismatch, MismatchKind, Mode, OpTime, VerifyCheckpoint, VerifyConfig, VerifyControl,
    VerifyEvent, VerifyPhase, VerifyProgress, VerifyStatus,
};
use pb::agent_message;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};

use crate::convert;
use crate::runner::{TaskReporter, TaskRunner};

/// Mismatches sent in one report (the coordinator accepts at most this many).
const MISMATCHES_PER_REPORT: usize = 1000;
const EVENTS_CAPACITY: usize = 256;
/// How long an online run waits for the engine's first applied position.
const APPLIED_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A verification run going on here.
pub(crate) struct VerifyRun {
    run: u64,
    epoch: Arc<AtomicU64>,
    control: VerifyControl,
}

/// Runs by task id.
#[derive(Default)]
pub(crate) struct VerifyRuns(Mutex<HashMap<String, VerifyRun>>);

impl VerifyRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VerifyRun>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cancels the task's run, if any.
    pub(crate) fn cancel(&self, task_id: &str) {
        if let Some(r) = self.lock().remove(task_id) {
            r.control.cancel();
        }
    }
}

/// What a migration running here tells its task's verifier.
#[derive(Clone)]
pub(crate) struct EngineTap {
    /// The engine's last applied oplog time (`None` before OPLOG_SYNC).
    pub(crate) applied: watch::Sender<Option<OpTime>>,
    /// Indexes the engine keeps relaxed until cut-over (from its last checkpoint).
    pub(crate) relaxed: Arc<Mutex<Vec<(String, String)>>>,
}

impl EngineTap {
    pub(crate) fn new() -> Self {
        Self {
            applied: watch::Sender::new(None),
            relaxed: Arc::default(),
        }
    }

    /// Follows the engine's events.
    pub(crate) fn observe(&self, event: &ferry_engine::EngineEvent) {
        match event {
            ferry_engine::EngineEvent::Progress(p) => {
                if let Some(t) = p.last_applied {
                    self.applied.send_replace(Some(OpTime {
                        seconds: t.seconds,
                        increment: t.increment,
                    }));
                }
            }
            ferry_engine::EngineEvent::Checkpoint(cp) => {
                let relaxed = ferry_engine::relaxed_indexes(&cp.engine_state);
                *self.relaxed.lock().unwrap_or_else(|e| e.into_inner()) = relaxed;
            }
            ferry_engine::EngineEvent::PhaseChanged(_) | ferry_engine::EngineEvent::Note { .. } => {
            }
        }
    }
}

fn mode_from_pb(mode: i32) -> Mode {
    match pb::VerifyMode::try_from(mode) {
        Ok(pb::VerifyMode::Hashed) => Mode::Hashed,
        _ => Mode::Full,
    }
}

/// The verifier's configuration for a task (work dir `<data-dir>/verify/<task>`).
pub(crate) fn verify_config(
    runner: &TaskRunner,
    task_id: &str,
    spec: Option<&pb::TaskSpec>,
    destination: Option<&pb::Destination>,
    mode: Mode,
    relaxed: Vec<(String, String)>,
) -> Result<VerifyConfig, convert::ConvertError> {
    let safe_id = convert::safe_task_id(task_id)?;
    let source = convert::engine_source(spec)?;
    let dest = convert::engine_destination(destination)?;
    let endpoint = |e: ferry_engine::Endpoint| ferry_verify::Endpoint {
        uri: e.uri,
        username: e.username,
        password: e.password,
    };
    Ok(VerifyConfig {
        task_id: safe_id.to_owned(),
        source: endpoint(source),
        destination: endpoint(dest),
        databases: spec.map(|s| s.databases.clone()).unwrap_or_default(),
        mode,
        read_preference: ferry_verify::ReadPref::default(),
        max_docs_per_second: 0,
        parallelism: 4,
        work_dir: runner.inner.config.data_dir.join("verify").join(safe_id),
        relaxed_indexes: relaxed,
        tuning: ferry_verify::VerifyTuning {
            retry_budget: runner.inner.config.retry_budget,
            ..ferry_verify::VerifyTuning::default()
        },
    })
}

/// StartVerification.
pub(crate) fn start_verification(
    runner: &TaskRunner,
    task_id: String,
    epoch: u64,
    command: pb::StartVerification,
) {
    {
        let runs = runner.inner.verifications.lock();
        if let Some(r) = runs.get(&task_id).filter(|r| r.run == command.run) {
            r.epoch.fetch_max(epoch, Ordering::SeqCst);
            info!(%task_id, epoch, run = command.run, "verification already running here; adopted the new epoch");
            return;
        }
    }
    runner.inner.verifications.cancel(&task_id);
    let tap = crate::work::engine_tap(runner, &task_id);
    let relaxed = tap
        .as_ref()
        .map(|t| t.relaxed.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .unwrap_or_default();
    let config = match verify_config(
        runner,
        &task_id,
        command.spec.as_ref(),
        command.destination.as_ref(),
        mode_from_pb(command.mode),
        relaxed,
    ) {
        Ok(c) => c,
        Err(error) => {
            return runner.reply_error(task_id, epoch, "start_verification", error.to_string())
        }
    };
    let applied = match &tap {
        Some(t) => t.applied.subscribe(),
        None => watch::Sender::new(None).subscribe(),
    };
    let resume = (!command.checkpoint.is_empty()).then(|| VerifyCheckpoint {
        phase: VerifyPhase::Documents,
        ranges_done: 0,
        ranges_total: 0,
        documents_compared: 0,
        verify_state: command.checkpoint.clone(),
    });
    let epoch_cell = Arc::new(AtomicU64::new(epoch));
    let control = VerifyControl::new();
    runner.inner.verifications.lock().insert(
        task_id.clone(),
        VerifyRun {
            run: command.run,
            epoch: epoch_cell.clone(),
            control: control.clone(),
        },
    );
    let reporter = TaskReporter::new(
        task_id.clone(),
        epoch_cell,
        runner.inner.reports_tx.clone(),
        Arc::clone(&runner.inner.metrics),
    );
    let cancel = runner.inner.cancel.clone();
    let runner_handle = runner.clone();
    let run = command.run;
    let online = tap.is_some();
    let span = tracing::info_span!("verification", %task_id, run);
    info!(%task_id, epoch, run, online = tap.is_some(), resuming = resume.is_some(), "starting verification");
    runner.inner.tracker.spawn(
        async move {
            let shutdown = {
                let control = control.clone();
                async move {
                    cancel.cancelled().await;
                    control.cancel();
                }
            };
            let work = async {
                let mut applied = applied;
                if online {
                    // The engine reports its applied position with its next progress event: an online run must
                    // not start without it (it would take lag for differences).
                    let got = tokio::time::timeout(APPLIED_WAIT, async {
                        applied.wait_for(|a| a.is_some()).await.is_ok()
                    })
                    .await
                    .unwrap_or(false);
                    if !got {
                        let v = pb::Verification {
                            run,
                            state: pb::VerificationState::Failed as i32,
                            detail: "the migration reported no applied oplog position: verify again once the \
                                     task is in OPLOG_SYNC"
                                .into(),
                            ..Default::default()
                        };
                        reporter
                            .send(agent_message::Body::Verification(pb::VerificationReport {
                                verification: Some(v),
                                ..Default::default()
                            }))
                            .await;
                        return;
                    }
                }
                verify(config, resume, control, applied, run, &reporter).await;
            };
            tokio::select! {
                _ = work => {}
                () = shutdown => {}
            }
            let mut runs = runner_handle.inner.verifications.lock();
            if runs.get(reporter.task_id()).is_some_and(|r| r.run == run) {
                runs.remove(reporter.task_id());
            }
        }
        .instrument(span),
    );
}

/// The cut-over's verification, inside the migration: the source is quiescent, the verdict final. `Ok(true)`
/// when it passed; `Ok(false)` with mismatches (reported as they were confirmed); `Err` when it could not finish.
pub(crate) async fn verify_cut_over(
    config: VerifyConfig,
    run: u64,
    reporter: &TaskReporter,
) -> Result<(bool, String), String> {
    let applied = watch::Sender::new(None).subscribe();
    match verify(config, None, VerifyControl::new(), applied, run, reporter).await {
        Some(report) => Ok((report.status == VerifyStatus::Passed, report.summary)),
        None => Err("the verification did not finish (see the task's verification for why)".into()),
    }
}

/// Runs one verification and forwards its events; `None` when it failed to run (reported as FAILED with why).
async fn verify(
    config: VerifyConfig,
    resume: Option<VerifyCheckpoint>,
    control: VerifyControl,
    applied: watch::Receiver<Option<OpTime>>,
    run: u64,
    reporter: &TaskReporter,
) -> Option<ferry_verify::VerifyReport> {
    let (tx, mut rx) = mpsc::channel(EVENTS_CAPACITY);
    let verifier = ferry_verify::run_verification(config, resume, control, applied, tx);
    tokio::pin!(verifier);
    let mut fwd = Forwarder {
        run,
        pending: Vec::new(),
        checkpoint: Vec::new(),
        last: None,
    };
    let result = loop {
        tokio::select! {
            r = &mut verifier => break r,
            Some(event) = rx.recv() => fwd.event(event, reporter).await,
        }
    };
    while let Ok(event) = rx.try_recv() {
        fwd.event(event, reporter).await;
    }
    match result {
        Ok(report) => {
            info!(status = ?report.status, summary = %report.summary, "verification finished");
            let mut v = progress_to_pb(&report.progress, run);
            v.state = status_to_pb(report.status) as i32;
            v.phase = "done".into();
            v.eta_seconds = 0;
            if report.mismatches_truncated {
                v.detail = "more mismatches were confirmed than are listed".into();
            }
            fwd.flush(v, reporter).await;
            Some(report)
        }
        Err(ferry_verify::VerifyError::Cancelled) => {
            info!("verification cancelled");
            None
        }
        Err(error) => {
            warn!(%error, "verification failed");
            let mut v = fwd.last.clone().unwrap_or_else(|| pb::Verification {
                run,
                ..Default::default()
            });
            v.state = pb::VerificationState::Failed as i32;
            v.detail = error.to_string();
            fwd.flush(v, reporter).await;
            None
        }
    }
}

struct Forwarder {
    run: u64,
    pending: Vec<pb::Mismatch>,
    checkpoint: Vec<u8>,
    last: Option<pb::Verification>,
}

impl Forwarder {
    async fn event(&mut self, event: VerifyEvent, reporter: &TaskReporter) {
        match event {
            VerifyEvent::Mismatch(m) => {
                self.pending.push(mismatch_to_pb(&m));
                if self.pending.len() >= MISMATCHES_PER_REPORT {
                    let v = self.last.clone().unwrap_or_else(|| pb::Verification {
                        run: self.run,
                        state: pb::VerificationState::Running as i32,
                        ..Default::default()
                    });
                    self.flush(v, reporter).await;
                }
            }
            VerifyEvent::Checkpoint(cp) => {
                self.checkpoint = cp.verify_state;
                let v = self.last.clone().unwrap_or_else(|| pb::Verification {
                    run: self.run,
                    state: pb::VerificationState::Running as i32,
                    ..Default::default()
                });
                self.flush(v, reporter).await;
            }
            VerifyEvent::Progress(p) => {
                let v = progress_to_pb(&p, self.run);
                self.last = Some(v.clone());
                if self.pending.is_empty() && self.checkpoint.is_empty() {
                    reporter.send_lossy(agent_message::Body::Verification(
                        pb::VerificationReport {
                            verification: Some(v),
                            ..Default::default()
                        },
                    ));
                } else {
                    self.flush(v, reporter).await;
                }
            }
        }
    }

    /// Sends `v` with the mismatches and checkpoint gathered so far (never lost: waits for room).
    async fn flush(&mut self, v: pb::Verification, reporter: &TaskReporter) {
        let mut mismatches = std::mem::take(&mut self.pending);
        let rest = if mismatches.len() > MISMATCHES_PER_REPORT {
            mismatches.split_off(MISMATCHES_PER_REPORT)
        } else {
            Vec::new()
        };
        reporter
            .send(agent_message::Body::Verification(pb::VerificationReport {
                verification: Some(v.clone()),
                new_mismatches: mismatches,
                checkpoint: std::mem::take(&mut self.checkpoint),
            }))
            .await;
        if !rest.is_empty() {
            self.pending = rest;
            Box::pin(self.flush(v, reporter)).await;
        }
    }
}

fn status_to_pb(s: VerifyStatus) -> pb::VerificationState {
    match s {
        VerifyStatus::Running => pb::VerificationState::Running,
        VerifyStatus::Passed => pb::VerificationState::Passed,
        VerifyStatus::Failed => pb::VerificationState::Failed,
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn progress_to_pb(p: &VerifyProgress, run: u64) -> pb::Verification {
    pb::Verification {
        state: status_to_pb(p.status) as i32,
        mode: 0,
        phase: match p.phase {
            VerifyPhase::Metadata => "metadata",
            VerifyPhase::Documents => "documents",
            VerifyPhase::Rechecking => "rechecking",
        }
        .into(),
        documents_compared: p.documents_compared,
        documents_total: p.documents_estimated,
        confirmed: Some(pb::MismatchCounts {
            missing_on_destination: p.confirmed.missing_on_destination,
            extra_on_destination: p.confirmed.extra_on_destination,
            different: p.confirmed.different,
            metadata: p.confirmed.metadata,
        }),
        pending: p.pending,
        collections: p
            .collections
            .iter()
            .map(|c| pb::CollectionVerification {
                namespace: c.namespace.clone(),
                documents_source: c.source_documents,
                documents_destination: c.destination_documents,
                mismatches: c.mismatches,
                done: c.done,
            })
            .collect(),
        start_time: Some(timestamp(p.started_at)),
        finish_time: p.finished_at.map(timestamp),
        eta_seconds: p.eta_seconds.unwrap_or(0),
        at_cut_over: false,
        detail: String::new(),
        run,
    }
}

fn mismatch_to_pb(m: &Mismatch) -> pb::Mismatch {
    pb::Mismatch {
        namespace: m.namespace.clone(),
        id: m.id.clone().unwrap_or_default(),
        kind: match m.kind {
            MismatchKind::MissingOnDestination => pb::MismatchKind::MissingOnDestination,
            MismatchKind::ExtraOnDestination => pb::MismatchKind::ExtraOnDestination,
            MismatchKind::Different => pb::MismatchKind::Different,
            MismatchKind::Metadata => pb::MismatchKind::Metadata,
        } as i32,
        field_path: m.field_path.clone().unwrap_or_default(),
        detail: m.description.clone(),
    }
}
