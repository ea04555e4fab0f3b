//! DATA_SYNC: copies the planned `_id` ranges, several in parallel. Each range is a reader (source
//! cursor, raw BSON, never decoded) feeding bounded batches through a bounded channel to writers doing
//! unordered `insert_many` on the destination, sized by document count and bytes. Re-copying a range
//! (after a crash or a transient error) ignores duplicate-key errors (11000) on `_id`, so it neither
//! duplicates nor loses documents; later changes come from the oplog replayed from `start_ts`.
//! Memory is bounded: copy_workers x (channel depth + writers + 1) batches of at most max_batch_bytes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use mongodb::bson::RawDocumentBuf;
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::Collection;
use tokio::sync::{mpsc, Mutex as AsyncMutex};

use crate::context::Ctx;
use crate::mongo::{self, Side};
use crate::plan::split_ns;
use crate::EngineError;

const CHANNEL_DEPTH: usize = 2;
const WRITERS_PER_RANGE: usize = 2;

/// Copies every unfinished range; returns when all are done or on cancel. A fatal error is recorded
/// with `ctx.fail` (which cancels the migration); only a bad checkpoint is returned directly.
pub(crate) async fn copy_all(ctx: Arc<Ctx>) -> Result<(), EngineError> {
    let work: Vec<(usize, usize)> = {
        let st = ctx.state();
        st.collections
            .iter()
            .enumerate()
            .flat_map(|(ci, c)| {
                c.ranges
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| !r.done)
                    .map(move |(ri, _)| (ci, ri))
            })
            .collect()
    };
    // Seed counters with what earlier runs finished.
    {
        let st = ctx.state();
        for (ci, c) in st.collections.iter().enumerate() {
            let ctr = ctx.counters(ci);
            let done: Vec<_> = c.ranges.iter().filter(|r| r.done).collect();
            ctr.docs
                .store(done.iter().map(|r| r.docs).sum(), Ordering::Relaxed);
            ctr.bytes
                .store(done.iter().map(|r| r.bytes).sum(), Ordering::Relaxed);
            ctr.ranges_done.store(done.len() as u32, Ordering::Relaxed);
        }
    }
    let workers = ctx.cfg.tuning.copy_workers.max(1);
    let results: Vec<Result<(), EngineError>> = futures::stream::iter(work)
        .map(|(ci, ri)| {
            let ctx = ctx.clone();
            async move { copy_range_retrying(ctx, ci, ri).await }
        })
        .buffer_unordered(workers)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

async fn copy_range_retrying(ctx: Arc<Ctx>, ci: usize, ri: usize) -> Result<(), EngineError> {
    if ctx.cancel.is_cancelled() {
        return Ok(());
    }
    let (ns, filter, avg, ordered) = {
        let st = ctx.state();
        let c = &st.collections[ci];
        let avg = c.bytes_estimated.checked_div(c.docs_estimated).unwrap_or(0);
        (
            c.ns.clone(),
            c.ranges[ri].filter(),
            avg,
            st.ordered.contains(&c.ns),
        )
    };
    let filter = filter?;
    let ctr = ctx.counters(ci);
    let mut started = std::time::Instant::now();
    let mut backoff = std::time::Duration::from_millis(200);
    // Since when, and on which side, this range has been failing (for the retry accounting).
    let mut failing: Option<(std::time::Instant, Side)> = None;
    loop {
        let mut docs = 0u64;
        let mut bytes = 0u64;
        let res = copy_range(
            &ctx,
            &ns,
            filter.clone(),
            avg,
            ordered,
            (&mut docs, &mut bytes),
            &ctr,
        )
        .await;
        if let Some((_, side)) = failing.filter(|_| res.is_ok()) {
            failing = None;
            ctx.retries.recovered(side);
        }
        match res {
            Ok(true) => {
                {
                    let mut st = ctx.state();
                    let r = &mut st.collections[ci].ranges[ri];
                    r.done = true;
                    r.docs = docs;
                    r.bytes = bytes;
                }
                ctr.ranges_done.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(task_id = %ctx.cfg.task_id, %ns, range = ri, docs, bytes, "range copied");
                ctx.emit_checkpoint().await;
                return Ok(());
            }
            Ok(false) => return Ok(()),
            Err(e) => {
                // Undo this attempt's progress; the range is copied again from its start.
                ctr.docs.fetch_sub(docs, Ordering::Relaxed);
                ctr.bytes.fetch_sub(bytes, Ordering::Relaxed);
                if docs > 0 {
                    // The attempt made progress: the retry budget counts from this failure.
                    started = std::time::Instant::now();
                    failing = None;
                }
                if let Some(resumed) = ctx.control.resumed_at() {
                    // Time spent paused (an idle cursor may time out meanwhile) is not a failure.
                    started = started.max(resumed);
                }
                if mongo::is_transient(&e.0) && started.elapsed() < ctx.retry_budget() {
                    tracing::warn!(error = %e.0, %ns, range = ri, side = e.1.name(), "range copy interrupted, retrying");
                    let (since, _) = *failing.get_or_insert((std::time::Instant::now(), e.1));
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Ok(()),
                        _ = ctx.retries.failed(e.1, since, ctx.retry_budget(), &e.0) => {}
                    }
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(3));
                    continue;
                }
                let err = mongo::RetryError {
                    transient: mongo::is_transient(&e.0),
                    error: e.0,
                    side: e.1,
                    budget: ctx.retry_budget(),
                }
                .into_engine("copy range", &ns);
                ctx.fail(err);
                return Ok(());
            }
        }
    }
}

struct SideError(MongoError, Side);

/// One attempt at a range. `Ok(true)`: copied; `Ok(false)`: cancelled. An `ordered` range (a capped
/// collection, whose destination evicts by its own insertion order) is read in the source's natural
/// order and written by one writer, so the destination's insertion order is the source's.
async fn copy_range(
    ctx: &Arc<Ctx>,
    ns: &str,
    filter: mongodb::bson::Document,
    avg_doc_bytes: u64,
    ordered: bool,
    (docs, bytes): (&mut u64, &mut u64),
    ctr: &Arc<crate::context::CollCounters>,
) -> Result<bool, SideError> {
    let (db, name) = split_ns(ns);
    let src: Collection<RawDocumentBuf> = ctx.src.database(db).collection(name);
    let dst: Collection<RawDocumentBuf> = ctx.dst.database(db).collection(name);
    let (tx, rx) = mpsc::channel::<Vec<RawDocumentBuf>>(CHANNEL_DEPTH);
    let rx = Arc::new(AsyncMutex::new(rx));
    let mut writers = Vec::new();
    let n_writers = if ordered { 1 } else { WRITERS_PER_RANGE };
    for _ in 0..n_writers {
        let rx = rx.clone();
        let dst = dst.clone();
        let cancel = ctx.cancel.clone();
        let ctr = ctr.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut b = 0u64;
            loop {
                let batch = { rx.lock().await.recv().await };
                let Some(batch) = batch else { return Ok((n, b)) };
                let bb: u64 = batch.iter().map(|d| d.as_bytes().len() as u64).sum();
                let count = batch.len() as u64;
                let res = tokio::select! {
                    _ = cancel.cancelled() => return Ok((n, b)),
                    r = dst.insert_many(&batch).ordered(false).bypass_document_validation(true) => r,
                };
                match res {
                    Ok(_) => {}
                    Err(e) if only_duplicate_ids(&e) => {}
                    Err(e) => return Err(SideError(e, Side::Destination)),
                }
                n += count;
                b += bb;
                ctr.docs.fetch_add(count, Ordering::Relaxed);
                ctr.bytes.fetch_add(bb, Ordering::Relaxed);
            }
        }));
    }
    let read_res = read_range(ctx, &src, filter, avg_doc_bytes, ordered, tx).await;
    let mut write_err = None;
    for w in writers {
        match w.await {
            Ok(Ok((n, b))) => {
                *docs += n;
                *bytes += b;
            }
            Ok(Err(e)) => write_err = Some(e),
            Err(join) => {
                write_err = Some(SideError(
                    MongoError::custom(format!("writer task failed: {join}")),
                    Side::Destination,
                ))
            }
        }
    }
    if let Some(e) = write_err {
        return Err(e);
    }
    let finished = read_res?;
    Ok(finished && !ctx.cancel.is_cancelled())
}

async fn read_range(
    ctx: &Arc<Ctx>,
    src: &Collection<RawDocumentBuf>,
    filter: mongodb::bson::Document,
    avg_doc_bytes: u64,
    ordered: bool,
    tx: mpsc::Sender<Vec<RawDocumentBuf>>,
) -> Result<bool, SideError> {
    let max_docs = ctx.max_batch_docs;
    let max_bytes = ctx.max_batch_bytes;
    // Cursor batches of about one insert batch, so a reply never holds much more than that in memory
    // (the server would otherwise fill up to 16 MiB per getMore).
    let cursor_batch = match avg_doc_bytes {
        0 => 1000,
        avg => (max_bytes as u64 / avg).clamp(100, max_docs as u64),
    };
    let mut find = src
        .find(filter)
        .batch_size(cursor_batch.min(u64::from(u32::MAX)) as u32);
    if ordered {
        find = find.sort(mongodb::bson::doc! {"$natural": 1});
    }
    // Paused: no new cursor is opened.
    if !ctx.wait_unpaused().await {
        return Ok(false);
    }
    let mut cursor = tokio::select! {
        _ = ctx.cancel.cancelled() => return Ok(false),
        c = find => c.map_err(|e| SideError(e, Side::Source))?,
    };
    let mut batch = Vec::with_capacity(1024);
    let mut batch_bytes = 0usize;
    // Batch bounds: the destination's, cut to ~1/10 s of the copy throttle; a batch ends early when
    // the throttle changes, so a new limit never waits behind a batch sized for the old one.
    let mut limits = ctx.copy_limit.watch();
    let mut caps = (max_docs, max_bytes);
    loop {
        if batch.is_empty() {
            // Before each batch: wait while paused (the cursor stays open, idle), then take the limits.
            if !ctx.wait_unpaused().await {
                return Ok(false);
            }
            caps = ctx.copy_limit.seen_caps(&mut limits, max_docs, max_bytes);
        }
        let more = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(false),
            m = cursor.advance() => m.map_err(|e| SideError(e, Side::Source))?,
        };
        if !more {
            break;
        }
        let doc = cursor.current().to_owned();
        batch_bytes += doc.as_bytes().len();
        batch.push(doc);
        let stale = limits.has_changed().unwrap_or(false);
        if batch.len() >= caps.0 || batch_bytes >= caps.1 || stale {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(1024));
            let bytes = std::mem::take(&mut batch_bytes);
            if !send_batch(ctx, &tx, full, bytes, stale).await {
                return Ok(false);
            }
        }
    }
    let stale = limits.has_changed().unwrap_or(false);
    if !batch.is_empty() && !send_batch(ctx, &tx, batch, batch_bytes, stale).await {
        return Ok(false);
    }
    Ok(true)
}

/// Charges a batch read from the source to the copy throttle (shared by all copy workers), then hands
/// it to the writers. `stale`: gathered under limits that changed since. `false`: cancelled, or the
/// writers are gone (they failed; the caller reports it).
async fn send_batch(
    ctx: &Ctx,
    tx: &mpsc::Sender<Vec<RawDocumentBuf>>,
    batch: Vec<RawDocumentBuf>,
    bytes: usize,
    stale: bool,
) -> bool {
    ctx.copy_limit
        .charge(batch.len() as u64, bytes as u64, stale, &ctx.cancel)
        .await
        && tx.send(batch).await.is_ok()
}

/// True when every write error of an unordered insert is a duplicate key (a re-copied document).
pub(crate) fn only_duplicate_ids(e: &MongoError) -> bool {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(im) => {
            im.write_concern_error.is_none()
                && im
                    .write_errors
                    .as_ref()
                    .is_some_and(|w| !w.is_empty() && w.iter().all(|we| we.code == 11000))
        }
        _ => false,
    }
}

/// Replaces the destination content of `ns` with the source's current content (used when a rename in
/// the copy window made the planned copy incomplete). Retries transient errors like a range copy.
pub(crate) async fn recopy_collection(ctx: &Arc<Ctx>, ns: &str) -> Result<(), EngineError> {
    let (db, name) = split_ns(ns);
    tracing::info!(task_id = %ctx.cfg.task_id, %ns, "re-copying collection renamed during the copy");
    ctx.dst_command(
        db,
        mongodb::bson::doc! {"delete": name, "deletes": [{"q": {}, "limit": 0}]},
    )
    .await
    .map_err(|e| e.into_engine("delete", ns))?;
    let ctr = Arc::new(crate::context::CollCounters::default());
    let started = std::time::Instant::now();
    let mut failing: Option<(std::time::Instant, Side)> = None;
    loop {
        let (mut docs, mut bytes) = (0, 0);
        let ordered = ctx.state().ordered.iter().any(|n| n == ns);
        match copy_range(
            ctx,
            ns,
            mongodb::bson::Document::new(),
            0,
            ordered,
            (&mut docs, &mut bytes),
            &ctr,
        )
        .await
        {
            Ok(_) => {
                if let Some((_, side)) = failing {
                    ctx.retries.recovered(side);
                }
                return Ok(());
            }
            Err(e) if mongo::is_transient(&e.0) && started.elapsed() < ctx.retry_budget() => {
                let (since, _) = *failing.get_or_insert((std::time::Instant::now(), e.1));
                ctx.retries
                    .failed(e.1, since, ctx.retry_budget(), &e.0)
                    .await;
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
            Err(e) => {
                let transient = mongo::is_transient(&e.0);
                return Err(mongo::RetryError {
                    error: e.0,
                    transient,
                    side: e.1,
                    budget: ctx.retry_budget(),
                }
                .into_engine("re-copy", ns));
            }
        }
    }
}
