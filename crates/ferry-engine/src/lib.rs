//! ferry-engine: the data plane of a migration, over the official MongoDB driver. It plans (collections,
//! views, options, `_id` ranges, the oplog start point), copies data in parallel as raw BSON, builds
//! indexes, spools and applies the oplog idempotently until cut-over, and rolls back what it created.
//! It obeys live operator controls (`MigrationControl`: stop, cut-over, `Throttle`, pause), and reports
//! progress, checkpoints and notes through its own types (`EngineEvent`) and must know nothing of
//! gRPC, sled or the coordinator; it must not depend on mongosim (tests only) nor on any behaviour of
//! mongosim that real MongoDB does not have.

mod apply;
mod context;
mod copy;
mod ddl;
pub mod diff;
mod error;
mod figures;
mod indexes;
mod mongo;
mod oplog;
mod plan;
mod raw;
mod replay;
mod retries;
mod spool;
mod state;
mod tail;
mod throttle;
mod types;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mongodb::bson::doc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use error::EngineError;
pub use replay::{
    apply_oplog_entries, apply_oplog_entries_tuned, apply_raw_oplog_entries, read_entries, replay,
    Replayed,
};
pub use types::{
    Checkpoint, CollectionProgress, Completion, Endpoint, EngineEvent, MigrationConfig,
    MigrationControl, OpTime, Outcome, Phase, ProgressSnapshot, Throttle, Tuning,
};

use context::Ctx;
use mongo::{Policy, Side};
use oplog::NsFilter;
use retries::Retries;
use state::EngineState;
use throttle::{Direction, Limiter};

const DEFAULT_MAX_WRITE_BATCH: usize = 100_000;
/// Byte budget of one insert batch (well under maxMessageSizeBytes; bounds memory per pipeline stage).
pub(crate) const BATCH_BYTE_BUDGET: usize = 2 << 20;
pub(crate) const BATCH_DOC_BUDGET: usize = 10_000;

/// Runs (or resumes) a migration until cut-over, stop, or a fatal error.
pub async fn run_migration(
    config: MigrationConfig,
    resume: Option<Checkpoint>,
    control: MigrationControl,
    events: mpsc::Sender<EngineEvent>,
) -> Result<Outcome, EngineError> {
    let started = Instant::now();
    config.tuning.validate()?;
    let budget = config.tuning.retry_budget;
    let stop = control.cancel_token().clone();
    let retries = Arc::new(Retries::new(
        Some(events.clone()),
        vec![
            config.source.password.clone(),
            config.destination.password.clone(),
        ],
    ));
    let policy = Policy {
        cancel: &stop,
        budget,
        retries: &retries,
    };
    let src = mongo::connect(&config.source, Side::Source).await?;
    let dst = mongo::connect(&config.destination, Side::Destination).await?;
    mongo::ping(&src, Side::Source, policy).await?;
    mongo::ping(&dst, Side::Destination, policy).await?;
    let (max_docs, max_bytes) = destination_limits(&dst, policy).await;
    let filter = NsFilter::new(&config.databases);

    let (st, start_ts, phase, last_applied) = match &resume {
        Some(cp) => {
            let st = EngineState::decode(&cp.engine_state)?;
            let start = cp
                .start_ts
                .ok_or_else(|| EngineError::BadCheckpoint("checkpoint without start_ts".into()))?;
            (st, start, cp.phase, cp.last_applied)
        }
        None => {
            // The start point is taken before any data is read (reference §8.6).
            let start = plan::oplog_edge(&src, policy, true).await?.ok_or_else(|| {
                EngineError::NoOplog {
                    detail: "no oplog entry found".into(),
                }
            })?;
            let oldest_txn = plan::oldest_open_txn(&src, policy).await;
            let mut st = plan::build(&src, policy, &filter, config.tuning.docs_per_range).await?;
            st.fetch_from = oldest_txn.filter(|t| *t < start).map(state::pair);
            st.rbid = tail::rollback_id(&src).await;
            (st, start, Phase::DataSync, None)
        }
    };
    let cancel = stop.child_token();
    let ctx = Arc::new(Ctx {
        cfg: config.clone(),
        src,
        dst,
        cancel: cancel.clone(),
        control: control.clone(),
        failure: Mutex::new(None),
        events,
        state: Mutex::new(st),
        filter,
        start_ts,
        live: Default::default(),
        spool: Mutex::new(None),
        max_batch_docs: max_docs,
        max_batch_bytes: max_bytes,
        retries: retries.clone(),
        copy_limit: Limiter::new(control.clone(), Direction::Copy),
        apply_limit: Limiter::new(control.clone(), Direction::Apply),
    });
    ctx.set_phase(phase);
    if let Some(t) = last_applied {
        ctx.set_last_applied(t);
    }
    {
        let st = ctx.state();
        ctx.live
            .applied
            .store(st.oplog_entries_applied, Ordering::Relaxed);
        // What was read but not applied before a restart is read again: both count from here.
        ctx.live
            .read
            .store(st.oplog_entries_applied, Ordering::Relaxed);
        ctx.live
            .indexes_built
            .store(st.indexes_built, Ordering::Relaxed);
        ctx.live
            .indexes_total
            .store(st.indexes_total, Ordering::Relaxed);
    }
    tracing::info!(task_id = %config.task_id, ?phase, start_ts = %start_ts, resumed = resume.is_some(), "migration starting");

    let done = CancellationToken::new();
    let progress = tokio::spawn(context::progress_loop(ctx.clone(), done.clone()));
    let poller = tokio::spawn(tail::poll_newest(ctx.clone(), done.clone()));
    let result = drive(ctx.clone(), phase, last_applied, done.clone(), started).await;
    done.cancel();
    let _ = progress.await;
    let _ = poller.await;

    if stop.is_cancelled() {
        tracing::info!(task_id = %config.task_id, "migration stopped by operator");
        return Ok(Outcome::Stopped);
    }
    if let Some(e) = ctx.take_failure() {
        return Err(e);
    }
    result
}

async fn drive(
    ctx: Arc<Ctx>,
    phase: Phase,
    last_applied: Option<OpTime>,
    done: CancellationToken,
    started: Instant,
) -> Result<Outcome, EngineError> {
    // Where the tailer starts: the resume point, or earlier for transactions still open there.
    let fetch_from = ctx.state().fetch_from.map(state::optime);
    let apply_from = match phase {
        Phase::OplogSync => last_applied.unwrap_or(ctx.start_ts),
        _ => ctx.start_ts,
    };
    let tail_from = fetch_from.map_or(apply_from, |f| f.min(apply_from));
    let spool_dir = ctx.cfg.spool_dir.join(sanitize(&ctx.cfg.task_id));
    let (writer, reader, handle) = spool::create(&spool_dir, ctx.cfg.tuning.spool_cap_bytes)?;
    *ctx.spool.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    let tail_done = CancellationToken::new();
    let tailer = tokio::spawn(tail::run_tailer(
        ctx.clone(),
        tail_from,
        apply_from,
        writer,
        tail_done.clone(),
    ));
    let res = phases(ctx.clone(), phase, apply_from, reader, started).await;
    tail_done.cancel();
    let _ = tailer.await;
    let _ = done;
    if let Err(e) = std::fs::remove_dir_all(&spool_dir) {
        tracing::debug!(error = %e, "spool directory not removed");
    }
    res
}

async fn phases(
    ctx: Arc<Ctx>,
    phase: Phase,
    apply_from: OpTime,
    reader: spool::SpoolReader,
    started: Instant,
) -> Result<Outcome, EngineError> {
    if phase == Phase::DataSync {
        ctx.emit(EngineEvent::PhaseChanged(Phase::DataSync)).await;
        plan::create_all(&ctx)
            .await
            .inspect_err(|_| ctx.cancel.cancel())?;
        ctx.emit_checkpoint().await;
        copy::copy_all(ctx.clone()).await?;
        if ctx.cancel.is_cancelled() {
            return Ok(Outcome::Stopped);
        }
        let copy_end = plan::oplog_edge(&ctx.src, ctx.policy(), true)
            .await?
            .unwrap_or(ctx.start_ts);
        ctx.state().copy_end = Some(state::pair(copy_end));
        ctx.set_phase(Phase::IndexCreation);
        ctx.emit_checkpoint().await;
    }
    if phase != Phase::OplogSync {
        ctx.set_phase(Phase::IndexCreation);
        ctx.emit(EngineEvent::PhaseChanged(Phase::IndexCreation))
            .await;
        plan::build_indexes(&ctx).await?;
        if ctx.cancel.is_cancelled() {
            return Ok(Outcome::Stopped);
        }
        ctx.set_phase(Phase::OplogSync);
        ctx.emit_checkpoint().await;
    }
    ctx.set_phase(Phase::OplogSync);
    ctx.emit(EngineEvent::PhaseChanged(Phase::OplogSync)).await;
    let copy_end = ctx
        .state()
        .copy_end
        .map(state::optime)
        .unwrap_or(ctx.start_ts);
    let applier = apply::Applier::new(ctx.clone(), apply_from, copy_end);
    let final_ts = match applier.run(reader).await {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(Outcome::Stopped),
        Err(e) => {
            ctx.fail(e);
            return Ok(Outcome::Stopped);
        }
    };
    // Everything through the final timestamp is applied and the source is quiescent: unique and TTL
    // indexes get their source definition back.
    indexes::restore(&ctx).await?;
    if ctx.cancel.is_cancelled() {
        return Ok(Outcome::Stopped);
    }
    let progress = ctx.snapshot(&figures::Rates::default());
    let secs = started.elapsed().as_secs_f64();
    let summary = format!(
        "migrated {} documents ({} bytes) in {} collections, {} indexes, applied {} oplog entries through {}; run took {:.1}s",
        progress.documents_copied,
        progress.bytes_copied,
        progress.collections.len(),
        progress.indexes_built,
        progress.oplog_entries_applied,
        final_ts,
        secs
    );
    tracing::info!(task_id = %ctx.cfg.task_id, %summary, "migration completed");
    Ok(Outcome::Completed(Completion {
        final_ts,
        progress,
        summary,
    }))
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Batch limits from the destination's `hello` (maxWriteBatchSize, maxMessageSizeBytes), capped by our budgets.
async fn destination_limits(dst: &mongodb::Client, policy: Policy<'_>) -> (usize, usize) {
    let hello = mongo::command(dst, policy, Side::Destination, "admin", doc! {"hello": 1}).await;
    let (mut docs, mut bytes) = (DEFAULT_MAX_WRITE_BATCH, 48_000_000usize);
    if let Ok(Some(h)) = hello {
        if let Ok(n) = h.get_i32("maxWriteBatchSize") {
            docs = n.max(1) as usize;
        }
        if let Ok(n) = h.get_i32("maxMessageSizeBytes") {
            bytes = n.max(1 << 20) as usize;
        }
    }
    (
        docs.min(BATCH_DOC_BUDGET),
        (bytes / 2).min(BATCH_BYTE_BUDGET),
    )
}

/// Drops on the destination exactly the namespaces this task created (per the checkpoint), newest
/// first; returns them. Pre-existing namespaces are never recorded, so never dropped.
pub async fn rollback(
    config: &MigrationConfig,
    checkpoint: Option<&Checkpoint>,
) -> Result<Vec<String>, EngineError> {
    let Some(cp) = checkpoint else {
        return Ok(Vec::new());
    };
    let st = EngineState::decode(&cp.engine_state)?;
    if st.created.is_empty() {
        return Ok(Vec::new());
    }
    let dst = mongo::connect(&config.destination, Side::Destination).await?;
    let cancel = CancellationToken::new();
    let retries = Retries::detached();
    let policy = Policy {
        cancel: &cancel,
        budget: config.tuning.retry_budget,
        retries: &retries,
    };
    let mut dropped = Vec::new();
    for ns in st.created.iter().rev() {
        let (db, name) = plan::split_ns(ns);
        let drop = doc! {"drop": name};
        match mongo::command(&dst, policy, Side::Destination, db, drop).await {
            Ok(_) => {}
            Err(e) if mongo::error_code(&e.error) == Some(26) => {}
            Err(e) => return Err(e.into_engine("drop", ns)),
        }
        tracing::info!(task_id = %config.task_id, %ns, "rolled back");
        dropped.push(ns.clone());
    }
    Ok(dropped)
}

/// The `(namespace, index name)` pairs a checkpoint's task keeps relaxed on the destination (non-unique,
/// TTL paused) until cut-over; a verifier compares their unique/TTL options as "pending", not as a
/// difference. Empty for an unreadable state.
pub fn relaxed_indexes(engine_state: &[u8]) -> Vec<(String, String)> {
    EngineState::decode(engine_state)
        .map(|st| st.relaxed.into_iter().map(|r| (r.ns, r.name)).collect())
        .unwrap_or_default()
}

/// The source's user databases: `(name, sizeOnDisk, empty)`; `admin`, `local` and `config` excluded.
pub async fn list_databases(source: &Endpoint) -> Result<Vec<(String, u64, bool)>, EngineError> {
    let src = mongo::connect(source, Side::Source).await?;
    let cancel = CancellationToken::new();
    let retries = Retries::detached();
    let policy = Policy {
        cancel: &cancel,
        budget: Tuning::default().retry_budget,
        retries: &retries,
    };
    let dbs = plan::databases(&src, policy).await?;
    Ok(dbs
        .into_iter()
        .filter(|(n, _, _)| !oplog::SYSTEM_DBS.contains(&n.as_str()))
        .collect())
}

/// Fuzzing hook (the `spool_segment` target): `bytes` as one spool segment, read back by the spool reader. Only
/// panics matter. Not part of the API.
#[doc(hidden)]
pub fn fuzz_spool_segment(bytes: &[u8]) {
    spool::fuzz_segment(bytes);
}

/// Fuzzing hook (the `engine_oplog` target): walks `bytes` with the raw element walker and, when they frame a BSON
/// document, parses them as an oplog entry. Results are ignored; only panics matter. Not part of the API.
#[doc(hidden)]
pub fn fuzz_parse_oplog_entry(bytes: &[u8]) {
    let _ = raw::elements(bytes);
    let Ok(doc) = mongodb::bson::RawDocument::from_bytes(bytes) else {
        return;
    };
    let _ = oplog::parse_entry(doc);
}
