//! ferry-verify: the built-in verifier. It compares a migration's source and destination: every
//! document by `_id` as raw bytes, counts, collection options, indexes, views and namespaces
//! present on one side only; online while the migration is in OPLOG_SYNC (differences and
//! documents the oplog touches go to a bounded disk-backed recheck queue and are re-read once the
//! migration's applier has passed the time they were read), resumable from checkpoints, with
//! memory flat in the data size. It reports progress, checkpoints and confirmed mismatches through
//! its own types (`VerifyEvent`) and, like the engine, knows nothing of gRPC, sled or the
//! coordinator; it must not depend on mongosim (tests only).
//!
//! Modules: `types` (public API), `error`, `raw` (BSON order and diffs on raw bytes), `mongo`
//! (driver plumbing), `metadata`, `plan` (ranges), `scan` (range merge, hashed mode), `queue`
//! (the on-disk recheck queue), `recheck`, `oplog` (the watcher), `throttle`, `state`
//! (checkpoint payload), `context` (the run's shared state and events).

mod context;
mod error;
mod metadata;
mod mongo;
mod oplog;
mod plan;
mod queue;
mod raw;
mod recheck;
mod scan;
mod state;
mod throttle;
mod types;

use std::sync::Arc;

use bson::doc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use error::VerifyError;
pub use types::{
    CollectionSummary, Endpoint, Mismatch, MismatchCounts, MismatchKind, Mode, OpTime, ReadPref,
    VerifyCheckpoint, VerifyConfig, VerifyControl, VerifyEvent, VerifyPhase, VerifyProgress,
    VerifyReport, VerifyStatus, VerifyTuning,
};

use context::Ctx;
use mongo::Side;
use state::VerifyState;

/// Runs (or resumes) a verification until it has a verdict, is cancelled (`Err(Cancelled)`, after
/// a last checkpoint) or fails.
///
/// `applied` is the migration's last applied oplog time; `None` when the migration is not running
/// (after cut-over: the source is quiescent and every difference is final at once).
pub async fn run_verification(
    config: VerifyConfig,
    resume: Option<VerifyCheckpoint>,
    control: VerifyControl,
    applied: watch::Receiver<Option<OpTime>>,
    events: mpsc::Sender<VerifyEvent>,
) -> Result<VerifyReport, VerifyError> {
    config.validate()?;
    let cancel = control.cancel_token().clone();
    let src = mongo::connect(&config.source, Side::Source, config.read_preference).await?;
    let dst = mongo::connect(
        &config.destination,
        Side::Destination,
        config.read_preference,
    )
    .await?;
    ping(&src, Side::Source, &cancel, &config).await?;
    ping(&dst, Side::Destination, &cancel, &config).await?;
    let online = applied.borrow().is_some();
    let resumed = resume.is_some();
    let (mut st, found) = match resume {
        Some(cp) => (VerifyState::decode(&cp.verify_state)?, Vec::new()),
        None => prepare(&src, &dst, &config, &cancel, online).await?,
    };
    if online && st.start_ts.is_none() {
        return Err(VerifyError::NoOplog {
            detail: "hello reports no lastWrite".into(),
        });
    }
    let queue_pos = resumed.then_some((st.queue_gen, st.queue_head));
    let dir = config.work_dir.join(sanitize(&config.task_id));
    let queue = queue::RecheckQueue::open(&dir, config.tuning.recheck_queue_cap_bytes, queue_pos)?;
    if online && !st.metadata_done {
        st.metadata_deferred = true;
    }
    st.metadata_done = true;
    let ctx = Arc::new(Ctx::new(
        config,
        (src, dst),
        control.clone(),
        applied,
        events,
        st,
        queue,
    ));
    tracing::info!(task_id = %ctx.cfg.task_id, online, resumed, "verification starting");
    if !online {
        for (key, m) in found {
            ctx.confirm(key, m).await;
        }
    }
    ctx.set_phase(VerifyPhase::Documents);
    ctx.emit_checkpoint().await;
    let done = CancellationToken::new();
    let progress = tokio::spawn(context::progress_loop(ctx.clone(), done.clone()));
    documents(ctx.clone()).await;
    if ctx.state().metadata_deferred && !ctx.cancel.is_cancelled() {
        final_metadata(&ctx).await;
    }
    done.cancel();
    let _ = progress.await;
    finish(ctx).await
}

/// First run: the start time, the metadata comparison and the plan.
async fn prepare(
    src: &mongodb::Client,
    dst: &mongodb::Client,
    config: &VerifyConfig,
    cancel: &CancellationToken,
    online: bool,
) -> Result<(VerifyState, Vec<(String, Mismatch)>), VerifyError> {
    let budget = config.tuning.retry_budget;
    let mut st = VerifyState::new();
    // Taken before anything is read: the oplog watcher starts here.
    st.start_ts = mongo::newest_optime(src, cancel, budget)
        .await?
        .map(OpTime::pack);
    let meta = metadata::compare(src, dst, config, cancel).await?;
    st.collections = plan::build(
        src,
        cancel,
        budget,
        &meta.collections,
        config.tuning.docs_per_range,
    )
    .await?;
    tracing::info!(task_id = %config.task_id, collections = st.collections.len(), metadata_differences = meta.mismatches.len(), online, "verification planned");
    Ok((st, meta.mismatches))
}

/// The documents phase: scan, oplog watcher and rechecks, until the queue is drained.
async fn documents(ctx: Arc<Ctx>) {
    let producers_done = CancellationToken::new();
    let (stop_tx, stop_rx) = watch::channel(None);
    let watch_from = {
        let st = ctx.state();
        st.watcher_ts.or(st.start_ts).map(OpTime::unpack)
    };
    let watcher = match (ctx.applied_now(), watch_from) {
        (Some(_), Some(from)) => Some(tokio::spawn(oplog::watch(ctx.clone(), from, stop_rx))),
        _ => None,
    };
    let rechecks = tokio::spawn(recheck::run(ctx.clone(), producers_done.clone()));
    if let Err(e) = scan::scan_all(ctx.clone()).await {
        ctx.fail(e);
    }
    if !ctx.cancel.is_cancelled() {
        ctx.set_phase(VerifyPhase::Rechecking);
        ctx.emit_checkpoint().await;
        let budget = ctx.cfg.tuning.retry_budget;
        match mongo::newest_optime(&ctx.src, &ctx.cancel, budget).await {
            Ok(end) => {
                stop_tx.send_replace(Some(end.unwrap_or_default()));
            }
            Err(e) => ctx.fail(e),
        }
    }
    if let Some(w) = watcher {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => ctx.fail(e),
            Err(e) => ctx.fail(VerifyError::Config(format!("oplog watcher panicked: {e}"))),
        }
    }
    producers_done.cancel();
    match rechecks.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => ctx.fail(e),
        Err(e) => ctx.fail(VerifyError::Config(format!("recheck loop panicked: {e}"))),
    }
}

/// The metadata pass of an online run, again, once the applier has passed the present.
async fn final_metadata(ctx: &Ctx) {
    let budget = ctx.cfg.tuning.retry_budget;
    let now = match mongo::newest_optime(&ctx.src, &ctx.cancel, budget).await {
        Ok(t) => t,
        Err(e) => return ctx.fail(e),
    };
    let mut rx = ctx.applied.clone();
    tokio::select! {
        _ = ctx.cancel.cancelled() => return,
        _ = rx.wait_for(|a| match (a, now) { (Some(a), Some(n)) => *a >= n, _ => true }) => {}
    }
    match metadata::compare(&ctx.src, &ctx.dst, &ctx.cfg, &ctx.cancel).await {
        Ok(meta) => {
            for (key, m) in meta.mismatches {
                ctx.confirm(key, m).await;
            }
            ctx.state().metadata_deferred = false;
        }
        Err(e) => ctx.fail(e),
    }
}

async fn finish(ctx: Arc<Ctx>) -> Result<VerifyReport, VerifyError> {
    ctx.emit_checkpoint().await;
    if let Some(e) = ctx.take_failure() {
        tracing::warn!(task_id = %ctx.cfg.task_id, error = %e, "verification failed");
        return Err(e);
    }
    if ctx.control.cancel_token().is_cancelled() {
        tracing::info!(task_id = %ctx.cfg.task_id, "verification cancelled");
        return Err(VerifyError::Cancelled);
    }
    let progress = ctx.snapshot(true);
    ctx.emit(VerifyEvent::Progress(progress.clone())).await;
    let (mismatches, truncated) = {
        let st = ctx.state();
        let o = st.overflow;
        let truncated = o.missing + o.extra + o.different + o.metadata > 0;
        (
            st.confirmed.values().cloned().collect::<Vec<_>>(),
            truncated,
        )
    };
    let c = progress.confirmed;
    let summary = format!(
        "{:?}: compared {} documents in {} collections; {} missing on the destination, {} extra, {} different, {} metadata differences, {} pending",
        progress.status,
        progress.documents_compared,
        progress.collections.len(),
        c.missing_on_destination,
        c.extra_on_destination,
        c.different,
        c.metadata,
        progress.pending
    );
    tracing::info!(task_id = %ctx.cfg.task_id, %summary, "verification finished");
    Ok(VerifyReport {
        status: progress.status,
        progress,
        mismatches,
        mismatches_truncated: truncated,
        summary,
    })
}

async fn ping(
    client: &mongodb::Client,
    side: Side,
    cancel: &CancellationToken,
    config: &VerifyConfig,
) -> Result<(), VerifyError> {
    let budget = config
        .tuning
        .retry_budget
        .min(std::time::Duration::from_secs(10));
    match mongo::command(client, cancel, budget, side, "admin", doc! {"ping": 1}).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(VerifyError::Cancelled),
        Err(e) => Err(VerifyError::Connect {
            side: side.name(),
            detail: e.error.to_string(),
        }),
    }
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => c,
            _ => '_',
        })
        .collect()
}
