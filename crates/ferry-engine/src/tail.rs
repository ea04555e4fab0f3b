//! The oplog tailer: a tailable, awaitData cursor on `local.oplog.rs` from a start point, verifying that
//! the start point still exists (reference §8.3), feeding raw entries into the spool. Re-issues the
//! query from the last seen `ts` after transient errors or a dead cursor; CappedPositionLost (136) or a
//! missing start point fail the migration. Also polls the source's newest `ts` for lag.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, RawDocumentBuf};
use mongodb::options::CursorType;
use mongodb::Collection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::context::{pack, Ctx, MAJORITY_UNBOUNDED};
use crate::mongo::{self, error_code, Policy, Side};
use crate::oplog::entry_ts;
use crate::spool::SpoolWriter;
use crate::types::OpTime;
use crate::EngineError;

const FLUSH_DOCS: usize = 2000;
const FLUSH_BYTES: usize = 4 << 20;
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Appends `docs` to the spool. A full disk is waited out for up to the retry budget, retrying every second with
/// the same batch (the oplog reader blocks meanwhile, so nothing is dropped); past it, or on any other error, the
/// migration fails (resumable: a resume starts a fresh spool from the checkpoint). None when it failed or was
/// cancelled.
async fn append(
    ctx: &Ctx,
    mut writer: SpoolWriter,
    mut docs: Vec<RawDocumentBuf>,
) -> Option<SpoolWriter> {
    let mut full_since: Option<Instant> = None;
    loop {
        let res = tokio::task::spawn_blocking(move || {
            let r = writer.append_blocking(&docs);
            (writer, docs, r)
        })
        .await;
        match res {
            Ok((w, _, Ok(()))) => {
                if let Some(since) = full_since {
                    tracing::info!(waited = ?since.elapsed(), "the agent's disk has room again; spooling resumed");
                }
                return Some(w);
            }
            Ok((w, d, Err(e @ EngineError::SpoolDiskFull { .. }))) => {
                let since = match full_since {
                    Some(since) => since,
                    None => {
                        tracing::warn!(error = %e, budget = ?ctx.retry_budget(), "the agent's disk is full: spooling waits for free space");
                        *full_since.insert(Instant::now())
                    }
                };
                if since.elapsed() >= ctx.retry_budget() {
                    ctx.fail(e);
                    return None;
                }
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                writer = w;
                docs = d;
            }
            Ok((_, _, Err(e))) => {
                ctx.fail(e);
                return None;
            }
            Err(e) => {
                ctx.fail(EngineError::Spool {
                    dir: ctx.cfg.spool_dir.display().to_string(),
                    detail: e.to_string(),
                });
                return None;
            }
        }
    }
}

/// Tails from `from` (inclusive) into the spool until `done` or the migration is cancelled. Never
/// throttled nor paused: whatever the source writes is spooled. Entries of the task past `count_after`
/// (the apply start point) are counted in `live.read` once spooled.
pub(crate) async fn run_tailer(
    ctx: Arc<Ctx>,
    from: OpTime,
    count_after: OpTime,
    writer: SpoolWriter,
    done: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<RawDocumentBuf>(4096);
    let reader_ctx = ctx.clone();
    let reader_done = done.clone();
    let reader = tokio::spawn(async move {
        if let Err(e) = read_oplog(&reader_ctx, from, tx, &reader_done).await {
            reader_ctx.fail(e);
        }
    });
    let mut writer = Some(writer);
    let mut batch: Vec<RawDocumentBuf> = Vec::new();
    let mut bytes = 0usize;
    let mut first_at: Option<Instant> = None;
    loop {
        let deadline = first_at.map(|t| t + FLUSH_EVERY);
        let got = tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = done.cancelled() => None,
            d = rx.recv() => d.map(Some).unwrap_or(None),
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d.into()).await, None => std::future::pending().await } } => None,
        };
        let closed = done.is_cancelled() || (got.is_none() && rx.is_closed() && rx.is_empty());
        if let Some(doc) = got {
            bytes += doc.as_bytes().len();
            batch.push(doc);
            first_at.get_or_insert_with(Instant::now);
            if batch.len() < FLUSH_DOCS && bytes < FLUSH_BYTES {
                continue;
            }
        }
        if !batch.is_empty() {
            let Some(w) = writer.take() else { break };
            let docs = std::mem::take(&mut batch);
            bytes = 0;
            first_at = None;
            let counted = docs
                .iter()
                .filter(|d| entry_ts(d).is_ok_and(|t| t > count_after) && ctx.filter.counts(d))
                .count() as u64;
            match append(&ctx, w, docs).await {
                Some(w) => {
                    ctx.live.read.fetch_add(counted, Ordering::SeqCst);
                    writer = Some(w);
                }
                None => break,
            }
        }
        if closed {
            break;
        }
    }
    reader.abort();
    let _ = reader.await;
}

async fn read_oplog(
    ctx: &Ctx,
    from: OpTime,
    tx: mpsc::Sender<RawDocumentBuf>,
    done: &CancellationToken,
) -> Result<(), EngineError> {
    let coll: Collection<RawDocumentBuf> = ctx.src.database("local").collection("oplog.rs");
    let mut last = from;
    let mut skip_first = false;
    let mut last_ok = Instant::now();
    let mut backoff = Duration::from_millis(100);
    // Since when the tail has been failing (for the retry accounting).
    let mut failing_since: Option<Instant> = None;
    loop {
        if ctx.cancel.is_cancelled() || done.is_cancelled() {
            return Ok(());
        }
        let before = last;
        let res = tail_once(&coll, ctx, &mut last, &mut skip_first, &tx, done).await;
        if last != before {
            // Progress was made: the retry budget and backoff start over.
            last_ok = Instant::now();
            backoff = Duration::from_millis(100);
            if failing_since.take().is_some() {
                ctx.retries.recovered(Side::Source);
            }
        }
        match res {
            Ok(()) => {
                // Dead cursor or shutdown: re-issue from the last seen entry.
                last_ok = Instant::now();
                if failing_since.take().is_some() {
                    ctx.retries.recovered(Side::Source);
                }
                if ctx.cancel.is_cancelled() || done.is_cancelled() || tx.is_closed() {
                    return Ok(());
                }
            }
            Err(TailError::Fatal(e @ EngineError::OplogRolledOver { .. })) => {
                return Err(rolled_back_or(ctx, last, e).await)
            }
            Err(TailError::Fatal(e)) => return Err(e),
            Err(TailError::Mongo(e)) if error_code(&e) == Some(136) => {
                return Err(EngineError::OplogRolledOver {
                    needed: last.to_string(),
                    detail: format!("CappedPositionLost: {e}"),
                })
            }
            Err(TailError::Mongo(e))
                if mongo::is_transient(&e) && last_ok.elapsed() < ctx.retry_budget() =>
            {
                tracing::warn!(error = %e, last = %last, "oplog tail interrupted, retrying");
                let since = *failing_since.get_or_insert_with(Instant::now);
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(()),
                    _ = done.cancelled() => return Ok(()),
                    _ = ctx.retries.failed(Side::Source, since, ctx.retry_budget(), &e) => {}
                }
            }
            Err(TailError::Mongo(e)) => {
                let transient = mongo::is_transient(&e);
                return Err(mongo::RetryError {
                    error: e,
                    transient,
                    side: Side::Source,
                    budget: ctx.retry_budget(),
                }
                .into_engine("tail oplog", "local.oplog.rs"));
            }
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            _ = done.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The start point is gone: rolled back by a failover (the rollback id changed, or older entries are
/// still there, reference §8.3) rather than rolled off the capped oplog.
async fn rolled_back_or(ctx: &Ctx, last: OpTime, rolled_off: EngineError) -> EngineError {
    let known = ctx.state().rbid;
    let now = rollback_id(&ctx.src).await;
    if let (Some(before), Some(now)) = (known, now) {
        if before != now {
            return EngineError::SourceRolledBack {
                detail: format!(
                    "replSetGetRBID changed from {before} to {now}; the entry at {last} is gone"
                ),
            };
        }
    }
    match crate::plan::oplog_edge(&ctx.src, ctx.policy(), false).await {
        Ok(Some(oldest)) if oldest < last => EngineError::SourceRolledBack {
            detail: format!(
                "the entry at {last} is gone while older entries (from {oldest}) remain"
            ),
        },
        _ => rolled_off,
    }
}

enum TailError {
    Mongo(mongodb::error::Error),
    Fatal(EngineError),
}

async fn tail_once(
    coll: &Collection<RawDocumentBuf>,
    ctx: &Ctx,
    last: &mut OpTime,
    skip_first: &mut bool,
    tx: &mpsc::Sender<RawDocumentBuf>,
    done: &CancellationToken,
) -> Result<(), TailError> {
    let find = coll
        .find(doc! {"ts": {"$gte": last.to_ts()}})
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(Duration::from_millis(500))
        .batch_size(1000);
    let mut cursor = tokio::select! {
        _ = ctx.cancel.cancelled() => return Ok(()),
        _ = done.cancelled() => return Ok(()),
        c = find => c.map_err(TailError::Mongo)?,
    };
    let mut first = true;
    loop {
        let more = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            _ = done.cancelled() => return Ok(()),
            m = cursor.advance() => m.map_err(TailError::Mongo)?,
        };
        if !more {
            return Ok(());
        }
        let raw = cursor.current();
        let ts = entry_ts(raw).map_err(|e| {
            TailError::Fatal(EngineError::Apply {
                ts: "?".into(),
                namespace: "local.oplog.rs".into(),
                detail: e.to_string(),
            })
        })?;
        if first {
            first = false;
            if ts != *last {
                return Err(TailError::Fatal(EngineError::OplogRolledOver {
                    needed: last.to_string(),
                    detail: format!("the oldest matching entry is {ts}"),
                }));
            }
            if *skip_first {
                continue;
            }
        }
        *last = ts;
        *skip_first = true;
        if tx.send(raw.to_owned()).await.is_err() {
            return Ok(());
        }
    }
}

/// Polls the source every `MONITOR_EVERY`: its newest oplog `ts` (lag), its majority commit point (how
/// far the applier may go, reference §8.5) and its rollback id (a change means writes were rolled back
/// after a failover: the task fails, since entries it read may have been undone); and every
/// `OLDEST_EVERY` (first at start) its oldest oplog `ts` (the oplog headroom of the resume point).
pub(crate) async fn poll_newest(ctx: Arc<Ctx>, done: CancellationToken) {
    let mut warned = false;
    let mut oldest_polled: Option<Instant> = None;
    let policy = Policy {
        cancel: &done,
        ..ctx.policy()
    };
    loop {
        match crate::plan::oplog_edge(&ctx.src, policy, true).await {
            Ok(Some(t)) => ctx.live.source_newest.store(pack(t), Ordering::SeqCst),
            Ok(None) => return,
            Err(error) => tracing::debug!(%error, "cannot read the source's newest oplog entry"),
        }
        if oldest_polled.is_none_or(|t| t.elapsed() >= OLDEST_EVERY) {
            oldest_polled = Some(Instant::now());
            match crate::plan::oplog_edge(&ctx.src, policy, false).await {
                Ok(Some(t)) => ctx.live.source_oldest.store(pack(t), Ordering::SeqCst),
                Ok(None) => return,
                Err(error) => {
                    tracing::debug!(%error, "cannot read the source's oldest oplog entry")
                }
            }
        }
        // A refresh that read a majority point also checked the rollback id; otherwise check it here.
        match refresh_majority(&ctx).await {
            Some(true) => {}
            read => {
                if read == Some(false) && !warned {
                    tracing::warn!(task_id = %ctx.cfg.task_id, "the source reports no majority commit point (hello.lastWrite.majorityOpTime): entries are applied as read, and a rollback after a failover cannot be excluded");
                    warned = true;
                }
                if !rollback_id_unchanged(&ctx).await.unwrap_or(true) {
                    return;
                }
            }
        }
        tokio::select! {
            _ = done.cancelled() => return,
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(MONITOR_EVERY) => {}
        }
    }
}

const MONITOR_EVERY: Duration = Duration::from_millis(250);
const OLDEST_EVERY: Duration = Duration::from_secs(30);

/// Reads the source's majority commit point into the context. `Some(true)`: read; `Some(false)`: the source
/// reports none (everything read may be applied); `None`: the source did not answer (nothing changes).
///
/// The rollback id is read after the majority point and must be unchanged: entries majority-committed before a
/// rollback are never rolled back, so a point read before an unchanged rollback id is safe to apply up to; a
/// changed one fails the task before anything rolled back (still in the spool) can be applied.
pub(crate) async fn refresh_majority(ctx: &Ctx) -> Option<bool> {
    match majority_point(&ctx.src).await {
        Ok(Some(t)) => {
            if !rollback_id_unchanged(ctx).await? {
                return None;
            }
            ctx.live.majority.fetch_max(pack(t), Ordering::SeqCst);
            Some(true)
        }
        Ok(None) => {
            ctx.live
                .majority
                .store(MAJORITY_UNBOUNDED, Ordering::SeqCst);
            Some(false)
        }
        Err(error) => {
            tracing::debug!(%error, "cannot read the source's majority commit point");
            None
        }
    }
}

/// Whether the source's rollback id is the one the task started with (`Some(true)` also when the task has none
/// to compare); a change fails the task (`Some(false)`); `None` when the source did not answer.
async fn rollback_id_unchanged(ctx: &Ctx) -> Option<bool> {
    let known = ctx.state().rbid;
    let Some(before) = known else {
        return Some(true);
    };
    let now = rollback_id(&ctx.src).await?;
    if now == before {
        return Some(true);
    }
    ctx.fail(EngineError::SourceRolledBack {
        detail: format!("replSetGetRBID changed from {before} to {now}"),
    });
    Some(false)
}

/// `hello.lastWrite.majorityOpTime.ts`; `Ok(None)` when the source does not report it.
async fn majority_point(src: &mongodb::Client) -> Result<Option<OpTime>, mongodb::error::Error> {
    let hello = src.database("admin").run_command(doc! {"hello": 1}).await?;
    Ok(hello
        .get_document("lastWrite")
        .ok()
        .and_then(|w| w.get_document("majorityOpTime").ok())
        .and_then(|m| m.get_timestamp("ts").ok())
        .map(OpTime::from_ts))
}

/// The source's rollback id (`replSetGetRBID`), if it answers.
pub(crate) async fn rollback_id(src: &mongodb::Client) -> Option<i64> {
    let reply = src
        .database("admin")
        .run_command(doc! {"replSetGetRBID": 1})
        .await
        .ok()?;
    match reply.get("rbid")? {
        mongodb::bson::Bson::Int32(n) => Some(i64::from(*n)),
        mongodb::bson::Bson::Int64(n) => Some(*n),
        _ => None,
    }
}
