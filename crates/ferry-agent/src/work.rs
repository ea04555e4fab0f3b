//! Executes coordinator commands with the checks (`ferry-checks`) and the data plane (`ferry-engine`):
//! RunChecks streams each item then `checks_finished`; StartMigration runs (or resumes) the engine and turns its
//! events into progress/checkpoint/phase reports; CompleteMigration requests the cut-over; StopMigration stops the
//! engine, rolls back what the task created and reports `stopped`; ListDatabases lists the source.
//!
//! Owns the mapping command -> local work; it must not touch the stream (replies go through the runner) and must
//! not roll anything back unless the coordinator asked for a stop (a shutdown or a rejected report only cancels).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ferry_proto::v1::{
    agent_message, CheckItemReport, CheckpointReport, ChecksFinished, CompleteMigration,
    DatabasesReport, ListDatabases, PhaseChanged, ProgressReport, RunChecks, SetPaused,
    SetThrottle, SourceDatabase, StartMigration, StopMigration, TaskFailed, TaskStopped,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::convert;
use crate::runner::{LocalTask, TaskReporter, TaskRunner, WorkKind};

/// Commands this build supports, advertised in the hello.
pub(crate) const CAPABILITIES: &[&str] = &["run_checks", "migrate", "list_databases"];

/// Engine events buffered between the engine and the reports queue.
const EVENTS_CAPACITY: usize = 64;

/// Control of a running migration.
#[derive(Clone)]
pub(crate) struct Control {
    engine: ferry_engine::MigrationControl,
    /// Set by StopMigration: after the engine stops, roll back and report `stopped`.
    stop_requested: Arc<AtomicBool>,
    /// What the task's verifier needs from the engine (applied position, relaxed indexes).
    tap: crate::verify::EngineTap,
    /// Set by CompleteMigration{verify}: the verification run that decides whether the cut-over succeeds.
    cut_over: Arc<std::sync::Mutex<Option<CompleteMigration>>>,
    /// The task as started here (the cut-over's verifier connects with it).
    spec: Option<ferry_proto::v1::TaskSpec>,
    destination: Option<ferry_proto::v1::Destination>,
}

/// The engine tap of the task's migration running here, if any (an online verification follows it).
pub(crate) fn engine_tap(runner: &TaskRunner, task_id: &str) -> Option<crate::verify::EngineTap> {
    let tasks = runner.tasks();
    tasks
        .get(task_id)
        .filter(|t| t.active() && t.kind == WorkKind::Migration)
        .and_then(|t| t.control.as_ref().map(|c| c.tap.clone()))
}

impl Control {
    /// Stops the local engine without rolling back (the coordinator moved the task elsewhere).
    pub(crate) fn abandon(&self) {
        self.engine.stop();
    }
}

pub(crate) fn run_checks(runner: &TaskRunner, task_id: String, epoch: u64, command: RunChecks) {
    let mut input = match convert::check_input(&command, &runner.identity()) {
        Ok(input) => input,
        Err(error) => return runner.reply_error(task_id, epoch, "run_checks", error.to_string()),
    };
    if input.copy_rate_bytes_per_second == 0 {
        let (rate, origin) = crate::copy_rate::choose(&runner.inner.config);
        input.copy_rate_bytes_per_second = rate;
        input.copy_rate_origin = origin;
    }
    let Some(registered) = register(runner, &task_id, epoch, WorkKind::Checks, None) else {
        return runner.reply_error(
            task_id,
            epoch,
            "run_checks",
            "a migration of this task is running on this agent".to_owned(),
        );
    };
    let Registered {
        reporter,
        cancel,
        generation,
        finished,
    } = registered;
    let span = tracing::info_span!("checks", %task_id, epoch);
    let runner_handle = runner.clone();
    runner.inner.tracker.spawn(
        async move {
            // Read the metadata service again: the checks report what the host says now, not at connect time.
            let config = &runner_handle.inner.config;
            let fresh =
                crate::identity::gather(&config.metadata_url, config.metadata_timeout).await;
            input.identity = convert::local_identity(&fresh);
            runner_handle.set_identity(fresh);
            let (items_tx, mut items_rx) = mpsc::channel(32);
            let checks = ferry_checks::run_checks(input, items_tx);
            tokio::pin!(checks);
            let mut checks_done = false;
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {
                        info!("checks cancelled");
                        break;
                    }
                    item = items_rx.recv() => match item {
                        Some(item) => reporter.send(agent_message::Body::CheckItem(CheckItemReport {
                            item: Some(convert::check_item_to_pb(&item)),
                        })).await,
                        None => {
                            if checks_done { break; }
                            // The sender was dropped with the checks future; wait for it below.
                            (&mut checks).await;
                            checks_done = true;
                        }
                    },
                    _all = &mut checks, if !checks_done => {
                        checks_done = true;
                    }
                }
            }
            if checks_done && !cancel.is_cancelled() {
                reporter
                    .send(agent_message::Body::ChecksFinished(ChecksFinished {}))
                    .await;
                info!("checks finished");
            }
            finish(&runner_handle, reporter.task_id(), generation, &finished);
        }
        .instrument(span),
    );
}

pub(crate) fn start_migration(
    runner: &TaskRunner,
    task_id: String,
    epoch: u64,
    command: StartMigration,
) {
    match migration_here(runner, &task_id, epoch) {
        Here::Active => {
            // Already running here (a reconnect): obey the new epoch, keep the engine, take the current limits.
            info!(%task_id, epoch, "migration already running here; adopted the new epoch");
            if let Some(control) = running_control(runner, &task_id, epoch) {
                control
                    .engine
                    .set_throttle(convert::throttle_from_pb(command.throttle.as_ref()));
                control.engine.set_paused(command.paused);
            }
            return;
        }
        Here::Ending(finished) => {
            info!(%task_id, epoch, "previous engine of this task still stopping; starting once it has");
            let runner_handle = runner.clone();
            runner.inner.tracker.spawn(async move {
                finished.cancelled().await;
                start_migration(&runner_handle, task_id, epoch, command);
            });
            return;
        }
        Here::Nothing => {}
    }
    let config = match migration_config(
        runner,
        &task_id,
        command.spec.as_ref(),
        command.destination.as_ref(),
    ) {
        Ok(config) => config,
        Err(error) => {
            return runner.reply_error(task_id, epoch, "start_migration", error.to_string())
        }
    };
    let resume = convert::checkpoint_from_pb(command.checkpoint.as_ref());
    let engine = ferry_engine::MigrationControl::new();
    engine.set_throttle(convert::throttle_from_pb(command.throttle.as_ref()));
    engine.set_paused(command.paused);
    let control = Control {
        engine,
        stop_requested: Arc::new(AtomicBool::new(false)),
        tap: crate::verify::EngineTap::new(),
        cut_over: Arc::default(),
        spec: command.spec.clone(),
        destination: command.destination.clone(),
    };
    let Some(Registered {
        reporter,
        cancel,
        generation,
        finished,
    }) = register(
        runner,
        &task_id,
        epoch,
        WorkKind::Migration,
        Some(control.clone()),
    )
    else {
        return runner.reply_error(
            task_id,
            epoch,
            "start_migration",
            "task is busy on this agent".to_owned(),
        );
    };
    let span = tracing::info_span!("migration", %task_id);
    info!(%task_id, epoch, resuming = resume.is_some(), "starting migration");
    let runner_handle = runner.clone();
    let data_dir = runner.inner.config.data_dir.clone();
    let verifier_runner = runner.clone();
    runner.inner.tracker.spawn(
        async move {
            migrate(
                config,
                resume,
                control,
                reporter.clone(),
                cancel,
                data_dir,
                verifier_runner,
            )
            .await;
            finish(&runner_handle, reporter.task_id(), generation, &finished);
        }
        .instrument(span),
    );
}

/// The control of the task's engine running here, which from now on obeys `epoch`; `None` when none runs.
fn running_control(runner: &TaskRunner, task_id: &str, epoch: u64) -> Option<Control> {
    let tasks = runner.tasks();
    tasks.get(task_id).filter(|t| t.active()).and_then(|task| {
        task.control.clone().inspect(|_| {
            task.epoch.fetch_max(epoch, Ordering::SeqCst);
        })
    })
}

/// SetThrottle: the running engine takes the new limits at once (a restarted one gets them with StartMigration).
pub(crate) fn set_throttle(runner: &TaskRunner, task_id: &str, epoch: u64, command: SetThrottle) {
    let throttle = convert::throttle_from_pb(command.throttle.as_ref());
    match running_control(runner, task_id, epoch) {
        Some(control) => {
            info!(%task_id, ?throttle, "throttle changed");
            control.engine.set_throttle(throttle);
        }
        None => info!(%task_id, "throttle changed for a migration not running here"),
    }
}

/// SetPaused: the running engine pauses or resumes copy and apply (the oplog keeps spooling).
pub(crate) fn set_paused(runner: &TaskRunner, task_id: &str, epoch: u64, command: SetPaused) {
    match running_control(runner, task_id, epoch) {
        Some(control) => {
            info!(%task_id, paused = command.paused, "pause changed");
            control.engine.set_paused(command.paused);
        }
        None => info!(%task_id, "pause changed for a migration not running here"),
    }
}

pub(crate) fn complete_migration(
    runner: &TaskRunner,
    task_id: String,
    epoch: u64,
    command: CompleteMigration,
) {
    let control = running_control(runner, &task_id, epoch);
    match control {
        Some(control) => {
            info!(%task_id, epoch, verify = command.verify, "cut-over requested");
            if command.verify {
                // An online run of this task is superseded by the cut-over's own.
                runner.inner.verifications.cancel(&task_id);
                *control.cut_over.lock().unwrap_or_else(|e| e.into_inner()) = Some(command);
            }
            control.engine.request_complete();
        }
        None => runner.reply_error(
            task_id,
            epoch,
            "complete_migration",
            "no migration of this task is running on this agent".to_owned(),
        ),
    }
}

pub(crate) fn stop_migration(
    runner: &TaskRunner,
    task_id: String,
    epoch: u64,
    command: StopMigration,
) {
    runner.inner.verifications.cancel(&task_id);
    let control = running_control(runner, &task_id, epoch);
    if let Some(control) = control {
        info!(%task_id, epoch, "stop requested; stopping the engine before rolling back");
        control.stop_requested.store(true, Ordering::SeqCst);
        control.engine.stop();
        return;
    }
    if let Here::Ending(finished) = migration_here(runner, &task_id, epoch) {
        let runner_handle = runner.clone();
        runner.inner.tracker.spawn(async move {
            finished.cancelled().await;
            stop_migration(&runner_handle, task_id, epoch, command);
        });
        return;
    }
    // Nothing running here (e.g. the agent restarted): roll back from the coordinator's checkpoint.
    let config = match migration_config(
        runner,
        &task_id,
        command.spec.as_ref(),
        command.destination.as_ref(),
    ) {
        Ok(config) => config,
        Err(error) => {
            return runner.reply_error(task_id, epoch, "stop_migration", error.to_string())
        }
    };
    let checkpoint = convert::checkpoint_from_pb(command.checkpoint.as_ref());
    let reporter = TaskReporter::new(
        task_id.clone(),
        Arc::new(AtomicU64::new(epoch)),
        runner.inner.reports_tx.clone(),
        Arc::clone(&runner.inner.metrics),
    );
    let span = tracing::info_span!("rollback", %task_id, epoch);
    runner.inner.tracker.spawn(
        async move {
            roll_back(&config, checkpoint.as_ref(), &reporter).await;
        }
        .instrument(span),
    );
}

pub(crate) fn list_databases(
    runner: &TaskRunner,
    task_id: String,
    epoch: u64,
    command: ListDatabases,
) {
    let source = match convert::engine_source(command.spec.as_ref()) {
        Ok(source) => source,
        Err(error) => {
            return runner.reply_databases_error(
                task_id,
                epoch,
                command.request_id,
                error.to_string(),
            )
        }
    };
    let reporter = TaskReporter::new(
        task_id,
        Arc::new(AtomicU64::new(epoch)),
        runner.inner.reports_tx.clone(),
        Arc::clone(&runner.inner.metrics),
    );
    let cancel = runner.inner.cancel.clone();
    runner.inner.tracker.spawn(async move {
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            result = ferry_engine::list_databases(&source) => result,
        };
        let report = match result {
            Ok(databases) => DatabasesReport {
                request_id: command.request_id,
                databases: databases
                    .into_iter()
                    .map(|(name, size_on_disk_bytes, empty)| SourceDatabase {
                        name,
                        size_on_disk_bytes,
                        empty,
                    })
                    .collect(),
                error: String::new(),
            },
            Err(error) => DatabasesReport {
                request_id: command.request_id,
                databases: Vec::new(),
                error: error.to_string(),
            },
        };
        reporter.send(agent_message::Body::Databases(report)).await;
    });
}

struct Registered {
    reporter: TaskReporter,
    cancel: CancellationToken,
    generation: u64,
    finished: CancellationToken,
}

/// Registers local work for a task. An existing checks run (or, for checks, an abandoned engine still stopping)
/// is replaced; an existing migration otherwise keeps the slot (returns None) so two engines never share a spool.
fn register(
    runner: &TaskRunner,
    task_id: &str,
    epoch: u64,
    kind: WorkKind,
    control: Option<Control>,
) -> Option<Registered> {
    let mut tasks = runner.tasks();
    if let Some(existing) = tasks.get(task_id) {
        if existing.kind == WorkKind::Migration
            && (existing.active() || kind == WorkKind::Migration)
        {
            return None;
        }
        existing.cancel.cancel();
    }
    let epoch_cell = Arc::new(AtomicU64::new(epoch));
    let cancel = runner.inner.cancel.child_token();
    let finished = CancellationToken::new();
    let generation = runner.next_generation();
    tasks.insert(
        task_id.to_owned(),
        LocalTask {
            epoch: epoch_cell.clone(),
            cancel: cancel.clone(),
            kind,
            generation,
            control,
            finished: finished.clone(),
        },
    );
    let reporter = TaskReporter::new(
        task_id.to_owned(),
        epoch_cell,
        runner.inner.reports_tx.clone(),
        Arc::clone(&runner.inner.metrics),
    );
    Some(Registered {
        reporter,
        cancel,
        generation,
        finished,
    })
}

/// Whether a migration of the task is here.
enum Here {
    /// Running and obeyed: moved to `epoch`.
    Active,
    /// Cancelled, still stopping: the token fires when it has.
    Ending(CancellationToken),
    Nothing,
}

fn migration_here(runner: &TaskRunner, task_id: &str, epoch: u64) -> Here {
    let tasks = runner.tasks();
    match tasks.get(task_id) {
        Some(task) if task.kind == WorkKind::Migration && task.active() => {
            task.epoch.fetch_max(epoch, Ordering::SeqCst);
            Here::Active
        }
        Some(task) if task.kind == WorkKind::Migration => Here::Ending(task.finished.clone()),
        _ => Here::Nothing,
    }
}

/// Removes the task's entry if it is still this run's, then signals that this run has ended.
fn finish(runner: &TaskRunner, task_id: &str, generation: u64, finished: &CancellationToken) {
    {
        let mut tasks = runner.tasks();
        if tasks
            .get(task_id)
            .is_some_and(|t| t.generation == generation)
        {
            tasks.remove(task_id);
        }
    }
    finished.cancel();
}

fn migration_config(
    runner: &TaskRunner,
    task_id: &str,
    spec: Option<&ferry_proto::v1::TaskSpec>,
    destination: Option<&ferry_proto::v1::Destination>,
) -> Result<ferry_engine::MigrationConfig, convert::ConvertError> {
    let safe_id = convert::safe_task_id(task_id)?;
    Ok(ferry_engine::MigrationConfig {
        task_id: safe_id.to_owned(),
        source: convert::engine_source(spec)?,
        destination: convert::engine_destination(destination)?,
        databases: spec.map(|s| s.databases.clone()).unwrap_or_default(),
        spool_dir: runner.inner.config.spool_dir(safe_id),
        tuning: ferry_engine::Tuning {
            spool_cap_bytes: runner.inner.config.spool_cap,
            retry_budget: runner.inner.config.retry_budget,
            ..ferry_engine::Tuning::default()
        },
    })
}

/// Runs the engine to its end, forwarding its events; reports the outcome (after the cut-over's verification
/// when one was asked for).
async fn migrate(
    config: ferry_engine::MigrationConfig,
    resume: Option<ferry_engine::Checkpoint>,
    control: Control,
    reporter: TaskReporter,
    cancel: CancellationToken,
    data_dir: std::path::PathBuf,
    runner: TaskRunner,
) {
    let (events_tx, mut events_rx) = mpsc::channel(EVENTS_CAPACITY);
    // A copy that starts from scratch and runs to its end measures this host's copy rate for later checks.
    let mut rate = resume.is_none().then_some(CopyRate {
        data_dir,
        started: None,
        bytes: 0,
    });
    let mut last_checkpoint = resume.clone();
    let engine =
        ferry_engine::run_migration(config.clone(), resume, control.engine.clone(), events_tx);
    tokio::pin!(engine);
    let mut cancelled = false;
    let result = loop {
        tokio::select! {
            result = &mut engine => break result,
            () = cancel.cancelled(), if !cancelled => {
                cancelled = true;
                control.engine.stop();
            }
            Some(event) = events_rx.recv() => {
                if let Some(rate) = rate.as_mut() {
                    rate.observe(&event);
                }
                control.tap.observe(&event);
                forward(event, &reporter, &mut last_checkpoint).await;
            }
        }
    };
    while let Ok(event) = events_rx.try_recv() {
        if let Some(rate) = rate.as_mut() {
            rate.observe(&event);
        }
        control.tap.observe(&event);
        forward(event, &reporter, &mut last_checkpoint).await;
    }
    if control.stop_requested.load(Ordering::SeqCst) {
        roll_back(&config, last_checkpoint.as_ref(), &reporter).await;
        return;
    }
    if cancelled || cancel.is_cancelled() {
        info!("migration cancelled locally (shutdown or reassigned); nothing rolled back");
        return;
    }
    match result {
        Ok(ferry_engine::Outcome::Completed(completion)) => {
            info!(summary = %completion.summary, "migration completed");
            let cut_over = *control.cut_over.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(verify) = cut_over {
                if let Some(failure) =
                    verify_after_cut_over(&runner, &control, &verify, &reporter).await
                {
                    reporter.send(agent_message::Body::Failed(failure)).await;
                    return;
                }
            }
            reporter
                .send(agent_message::Body::Completed(convert::completed_to_pb(
                    &completion,
                )))
                .await;
        }
        Ok(ferry_engine::Outcome::Stopped) => {
            warn!("engine stopped without a stop request");
        }
        Err(error) => {
            warn!(%error, resumable = error.resumable(), "migration failed");
            reporter
                .send(agent_message::Body::Failed(TaskFailed {
                    reason: error.to_string(),
                    resumable: error.resumable(),
                }))
                .await;
        }
    }
}

/// The cut-over's verification; `Some(failure)` to report instead of success. Everything through the cut-over
/// point is applied and the source is quiescent, so the verdict is final.
async fn verify_after_cut_over(
    runner: &TaskRunner,
    control: &Control,
    command: &CompleteMigration,
    reporter: &TaskReporter,
) -> Option<TaskFailed> {
    let mode = match ferry_proto::v1::VerifyMode::try_from(command.mode) {
        Ok(ferry_proto::v1::VerifyMode::Hashed) => ferry_verify::Mode::Hashed,
        _ => ferry_verify::Mode::Full,
    };
    let config = match crate::verify::verify_config(
        runner,
        reporter.task_id(),
        control.spec.as_ref(),
        control.destination.as_ref(),
        mode,
        Vec::new(),
    ) {
        Ok(c) => c,
        Err(error) => {
            return Some(TaskFailed {
                reason: format!("cut-over verification could not start: {error}"),
                resumable: true,
            })
        }
    };
    info!(
        run = command.run,
        "verifying the destination after the cut-over"
    );
    match crate::verify::verify_cut_over(config, command.run, reporter).await {
        Ok((true, summary)) => {
            info!(%summary, "cut-over verification passed");
            None
        }
        Ok((false, summary)) => Some(TaskFailed {
            reason: format!(
                "cut-over verification failed: {summary}; list the mismatches (ListMismatches, `ferryctl task \
                 mismatches`), fix the destination, then start the task again (StartTask resumes OPLOG_SYNC) and \
                 complete it again, or stop it (StopTask) to roll back"
            ),
            resumable: true,
        }),
        Err(why) => Some(TaskFailed {
            reason: format!(
                "cut-over verification could not finish: {why}; start the task again (StartTask) and complete it \
                 again"
            ),
            resumable: true,
        }),
    }
}

/// Measures a from-scratch DATA_SYNC: bytes copied over the time from its start to the next phase.
struct CopyRate {
    data_dir: std::path::PathBuf,
    started: Option<std::time::Instant>,
    bytes: u64,
}

impl CopyRate {
    fn observe(&mut self, event: &ferry_engine::EngineEvent) {
        match event {
            ferry_engine::EngineEvent::PhaseChanged(ferry_engine::Phase::DataSync) => {
                self.started = Some(std::time::Instant::now());
            }
            ferry_engine::EngineEvent::Progress(progress) => self.bytes = progress.bytes_copied,
            ferry_engine::EngineEvent::PhaseChanged(_) => {
                let Some(started) = self.started.take() else {
                    return;
                };
                match crate::copy_rate::record(&self.data_dir, self.bytes, started.elapsed()) {
                    Ok(Some(rate)) => info!(
                        rate_bytes_per_second = rate,
                        "copy rate measured for the oplog-window check"
                    ),
                    Ok(None) => {}
                    Err(error) => warn!(%error, "could not record the measured copy rate"),
                }
            }
            ferry_engine::EngineEvent::Checkpoint(_) | ferry_engine::EngineEvent::Note { .. } => {}
        }
    }
}

async fn forward(
    event: ferry_engine::EngineEvent,
    reporter: &TaskReporter,
    last_checkpoint: &mut Option<ferry_engine::Checkpoint>,
) {
    match event {
        ferry_engine::EngineEvent::PhaseChanged(phase) => {
            info!(?phase, "phase changed");
            reporter
                .send(agent_message::Body::PhaseChanged(PhaseChanged {
                    phase: convert::phase_to_pb(phase) as i32,
                }))
                .await;
        }
        ferry_engine::EngineEvent::Progress(progress) => {
            reporter.metrics.progress(reporter.task_id(), &progress);
            reporter.send_lossy(agent_message::Body::Progress(ProgressReport {
                progress: Some(convert::progress_to_pb(&progress)),
            }));
        }
        ferry_engine::EngineEvent::Note { kind, detail } => {
            info!(%kind, %detail, "note for the task's history");
            reporter
                .send(agent_message::Body::Note(ferry_proto::v1::TaskNote {
                    kind,
                    detail,
                }))
                .await;
        }
        ferry_engine::EngineEvent::Checkpoint(checkpoint) => {
            reporter
                .send(agent_message::Body::Checkpoint(CheckpointReport {
                    checkpoint: Some(convert::checkpoint_to_pb(&checkpoint)),
                }))
                .await;
            *last_checkpoint = Some(checkpoint);
        }
    }
}

/// Drops what the task created on the destination; reports `stopped` or a command error.
async fn roll_back(
    config: &ferry_engine::MigrationConfig,
    checkpoint: Option<&ferry_engine::Checkpoint>,
    reporter: &TaskReporter,
) {
    match ferry_engine::rollback(config, checkpoint).await {
        Ok(dropped) => {
            info!(dropped = dropped.len(), "rolled back");
            reporter
                .send(agent_message::Body::Stopped(TaskStopped {
                    dropped_namespaces: dropped,
                }))
                .await;
        }
        Err(error) => {
            warn!(%error, "rollback failed");
            reporter
                .send(agent_message::Body::CommandError(
                    ferry_proto::v1::CommandError {
                        command: "stop_migration".to_owned(),
                        message: format!("rollback failed: {error}"),
                        unsupported: false,
                    },
                ))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_engine::{EngineEvent, Phase, ProgressSnapshot};

    fn progress(bytes_copied: u64) -> EngineEvent {
        EngineEvent::Progress(ProgressSnapshot {
            phase: Phase::DataSync,
            bytes_copied,
            ..Default::default()
        })
    }

    #[test]
    fn the_end_of_a_from_scratch_copy_records_its_rate() {
        let dir = tempfile::tempdir().unwrap();
        let mut rate = CopyRate {
            data_dir: dir.path().to_path_buf(),
            started: None,
            bytes: 0,
        };
        rate.observe(&EngineEvent::PhaseChanged(Phase::DataSync));
        // The copy began 10 s ago and moved 1 GiB.
        rate.started = std::time::Instant::now().checked_sub(std::time::Duration::from_secs(10));
        rate.observe(&progress(1 << 30));
        assert_eq!(
            crate::copy_rate::load(dir.path()),
            None,
            "not before the copy ends"
        );
        rate.observe(&EngineEvent::PhaseChanged(Phase::IndexCreation));
        let measured = crate::copy_rate::load(dir.path()).unwrap();
        // 1 GiB over a little more than 10 s: about 102 MiB/s.
        assert!((95 << 20..=(103 << 20)).contains(&measured), "{measured}");
        // Later phase changes measure nothing more.
        rate.observe(&progress(1 << 20));
        rate.observe(&EngineEvent::PhaseChanged(Phase::OplogSync));
        assert_eq!(crate::copy_rate::load(dir.path()), Some(measured));
    }
}
