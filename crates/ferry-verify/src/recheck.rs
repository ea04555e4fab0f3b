//! The recheck loop: takes queued documents whose `read_at` the migration's applier has passed,
//! re-reads each on the source (noting the read's `operationTime` t1), waits until the applier has
//! passed t1, re-reads it on the destination and compares. Equal: resolved. Different with the
//! migration not running (`applied` is `None`): confirmed, final. Different while it runs: the
//! source is read once more; if the document changed meanwhile it is queued again (up to
//! `max_recheck_attempts`, then left pending), if another entry for it is still queued that one
//! decides, otherwise it is confirmed: the destination had every source change up to t1 and the
//! source did not change after t1. Runs until the producers (scan, oplog watcher) are done and the
//! queue is empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::context::Ctx;
use crate::mongo::{self, Side};
use crate::queue::{Entry, Reason};
use crate::scan::describe;
use crate::state::doc_key;
use crate::types::{Mismatch, OpTime};
use crate::VerifyError;

const BATCH: usize = 64;
const CONCURRENCY: usize = 8;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

enum Outcome {
    Resolved,
    Confirmed(Mismatch),
    /// A later queued entry for the same document decides.
    Deferred,
    Requeue(Entry),
    LeftPending,
}

/// Runs until `producers_done` fired and the queue is drained, or the run is cancelled.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    producers_done: CancellationToken,
) -> Result<(), VerifyError> {
    let mut applied = ctx.applied.clone();
    let mut last_checkpoint = Instant::now();
    loop {
        if !ctx.control.wait_unpaused(&ctx.cancel).await {
            return Ok(());
        }
        // Read before taking: when the producers are done, everything they queued is in the file.
        let finished = producers_done.is_cancelled();
        let batch = ctx.queue.take_ready(*applied.borrow_and_update(), BATCH)?;
        if batch.is_empty() {
            if finished && ctx.queue.is_empty() {
                return Ok(());
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                _ = applied.changed() => {}
                _ = ctx.queue.pushed.notified() => {}
                _ = producers_done.cancelled(), if !finished => {}
                // The applier may be waiting on nothing new: look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            continue;
        }
        let outcomes: Vec<(Entry, Result<Option<Outcome>, VerifyError>)> =
            futures::stream::iter(batch)
                .map(|e| {
                    let ctx = ctx.clone();
                    async move {
                        let r = recheck_one(&ctx, &e).await;
                        (e, r)
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        let mut done = Vec::with_capacity(outcomes.len());
        for (e, r) in outcomes {
            match r? {
                // Cancelled: the entry stays queued (the head does not move past it).
                None => return Ok(()),
                Some(o) => apply(&ctx, &e, o).await?,
            }
            done.push(e);
        }
        ctx.queue.finish(&done)?;
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            last_checkpoint = Instant::now();
            ctx.emit_checkpoint().await;
        }
    }
}

async fn apply(ctx: &Ctx, e: &Entry, o: Outcome) -> Result<(), VerifyError> {
    ctx.rechecked
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let key = doc_key(&e.ns, &e.id);
    match o {
        Outcome::Resolved => ctx.resolve(&key),
        Outcome::Confirmed(m) => ctx.confirm(key, m).await,
        Outcome::Deferred => {}
        Outcome::Requeue(next) => ctx.queue.push(next)?,
        Outcome::LeftPending => {
            tracing::warn!(ns = %e.ns, "document keeps changing on the source; left pending");
            ctx.left_pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key);
        }
    }
    Ok(())
}

type Read = (Option<bson::RawDocumentBuf>, Option<OpTime>);

async fn read(
    ctx: &Ctx,
    side: Side,
    e: &Entry,
    f: &bson::RawDocumentBuf,
) -> Result<Option<Read>, VerifyError> {
    let (client, throttle) = match side {
        Side::Source => (&ctx.src, &ctx.src_throttle),
        Side::Destination => (&ctx.dst, &ctx.dst_throttle),
    };
    if !throttle.acquire(1, &ctx.cancel).await {
        return Ok(None);
    }
    let budget = ctx.cfg.tuning.retry_budget;
    mongo::point_read(client, &ctx.cancel, budget, side, &e.ns, f)
        .await
        .map_err(|err| err.into_verify("recheck", &e.ns))
}

/// Waits until the applier has passed `t` (or the migration stopped: `Some(true)`, final);
/// `None` when cancelled.
async fn wait_applied(ctx: &Ctx, t: Option<OpTime>) -> Option<bool> {
    let mut rx = ctx.applied.clone();
    let res = tokio::select! {
        _ = ctx.cancel.cancelled() => return None,
        r = rx.wait_for(|a| match (a, t) {
            (None, _) => true,
            (Some(a), Some(t)) => *a >= t,
            (Some(_), None) => true,
        }) => r,
    };
    match res {
        Ok(v) => Some(v.is_none()),
        // The sender is gone: nothing will advance any more; treat as final.
        Err(_) => Some(true),
    }
}

/// `Ok(None)` when cancelled.
async fn recheck_one(ctx: &Ctx, e: &Entry) -> Result<Option<Outcome>, VerifyError> {
    let Some(filter) = mongo::id_filter(&e.id) else {
        tracing::warn!(ns = %e.ns, "queued _id cannot be read back; skipped");
        return Ok(Some(Outcome::Resolved));
    };
    let Some((s1, t1)) = read(ctx, Side::Source, e, &filter).await? else {
        return Ok(None);
    };
    let Some(is_final) = wait_applied(ctx, t1).await else {
        return Ok(None);
    };
    let Some((d1, _)) = read(ctx, Side::Destination, e, &filter).await? else {
        return Ok(None);
    };
    let (sb, db) = (
        s1.as_ref().map(|d| d.as_bytes()),
        d1.as_ref().map(|d| d.as_bytes()),
    );
    let Some(m) = describe(&e.ns, sb, db) else {
        return Ok(Some(Outcome::Resolved));
    };
    if is_final {
        return Ok(Some(Outcome::Confirmed(m)));
    }
    let Some((s2, t2)) = read(ctx, Side::Source, e, &filter).await? else {
        return Ok(None);
    };
    if s2.as_ref().map(|d| d.as_bytes()) != sb {
        if e.attempts.saturating_add(1) >= ctx.cfg.tuning.max_recheck_attempts {
            return Ok(Some(Outcome::LeftPending));
        }
        return Ok(Some(Outcome::Requeue(Entry {
            reason: Reason::Diff,
            attempts: e.attempts + 1,
            read_at: t2.or(t1).map_or(e.read_at, OpTime::pack),
            ns: e.ns.clone(),
            id: e.id.clone(),
        })));
    }
    if ctx.queue.others_queued(&e.ns, &e.id) {
        return Ok(Some(Outcome::Deferred));
    }
    Ok(Some(Outcome::Confirmed(m)))
}
