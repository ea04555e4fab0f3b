//! The oplog watcher: tails the source's `local.oplog.rs` (tailable, awaitData) from the
//! verification's start time and queues every document of a compared collection that an insert,
//! update or delete touches (including those inside `applyOps`), with the entry's `ts` as its
//! `read_at`, so documents changed after they were compared are rechecked. Stops once it has seen
//! the stop time the run sets when the scan is done. Reads raw entries; decodes only `op`, `ns`,
//! `ts` and the `_id` element.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, RawDocument, RawDocumentBuf};
use mongodb::options::CursorType;
use tokio::sync::watch;

use crate::context::Ctx;
use crate::mongo::{self, error_code};
use crate::queue::{Entry, Reason};
use crate::raw;
use crate::types::OpTime;
use crate::VerifyError;

enum WatchErr {
    Mongo(mongodb::error::Error),
    Queue(VerifyError),
}

fn reached(last: OpTime, stop: &Option<OpTime>) -> bool {
    stop.is_some_and(|s| last >= s)
}

/// Tails from `from` (exclusive) until it has seen `stop_at` (once set) or the run is cancelled.
pub(crate) async fn watch(
    ctx: Arc<Ctx>,
    from: OpTime,
    mut stop_at: watch::Receiver<Option<OpTime>>,
) -> Result<(), VerifyError> {
    let selected: HashSet<String> = ctx
        .state()
        .collections
        .iter()
        .map(|c| c.ns.clone())
        .collect();
    let mut last = from;
    let budget = ctx.cfg.tuning.retry_budget;
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        // A dropped stop sender means the run is over.
        let gone = stop_at.has_changed().is_err();
        if gone || ctx.cancel.is_cancelled() || reached(last, &stop_at.borrow()) {
            return Ok(());
        }
        let before = last;
        let res = tail_once(&ctx, &selected, &mut last, &mut stop_at).await;
        if last != before {
            failing_since = None;
        }
        let e = match res {
            Ok(()) => continue,
            Err(WatchErr::Queue(e)) => return Err(e),
            Err(WatchErr::Mongo(e)) => e,
        };
        if error_code(&e) == Some(136) {
            return Err(VerifyError::OplogRolledOver {
                needed: last.to_string(),
            });
        }
        let since = *failing_since.get_or_insert_with(std::time::Instant::now);
        if !mongo::is_transient(&e) || since.elapsed() >= budget {
            let side = mongo::Side::Source;
            let err = mongo::RetryError {
                error: e,
                side,
                budget,
            };
            return Err(err.into_verify("tail", "local.oplog.rs"));
        }
        tracing::warn!(error = %e, last = %last, "oplog watcher interrupted, retrying");
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// One tailable cursor from `last`; returns when the cursor dies, the stop time is reached or the
/// run is cancelled.
async fn tail_once(
    ctx: &Ctx,
    selected: &HashSet<String>,
    last: &mut OpTime,
    stop_at: &mut watch::Receiver<Option<OpTime>>,
) -> Result<(), WatchErr> {
    let coll = ctx
        .src
        .database("local")
        .collection::<RawDocumentBuf>("oplog.rs");
    let find = coll
        .find(doc! {"ts": {"$gt": last.to_ts()}})
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(Duration::from_millis(500));
    let mut cursor = find.await.map_err(WatchErr::Mongo)?;
    loop {
        let more = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            r = stop_at.changed() => {
                if r.is_err() || reached(*last, &stop_at.borrow()) { return Ok(()); }
                continue;
            }
            m = cursor.advance() => m.map_err(WatchErr::Mongo)?,
        };
        if !more {
            return Ok(());
        }
        let entry = cursor.current();
        if let Some(ts) = entry.get_timestamp("ts").ok().map(OpTime::from_ts) {
            queue_touched(ctx, selected, entry, ts).map_err(WatchErr::Queue)?;
            *last = ts;
            *ctx.watcher_pos.lock().unwrap_or_else(|p| p.into_inner()) = Some(ts);
        }
        if reached(*last, &stop_at.borrow()) {
            return Ok(());
        }
    }
}

/// Queues the documents one oplog entry touches (recursing into `applyOps`).
fn queue_touched(
    ctx: &Ctx,
    selected: &HashSet<String>,
    entry: &RawDocument,
    ts: OpTime,
) -> Result<(), VerifyError> {
    let op = entry.get_str("op").unwrap_or("");
    let ns = entry.get_str("ns").unwrap_or("");
    let id_from = match op {
        "i" | "d" => "o",
        "u" => "o2",
        "c" => {
            if let Ok(ops) = entry
                .get_document("o")
                .and_then(|o| o.get_array("applyOps"))
            {
                for inner in ops.into_iter().flatten() {
                    if let Some(d) = inner.as_document() {
                        queue_touched(ctx, selected, d, ts)?;
                    }
                }
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    if !selected.contains(ns) {
        return Ok(());
    }
    let Ok(holder) = entry.get_document(id_from) else {
        return Ok(());
    };
    let Some(id) = raw::id_elem(holder.as_bytes()).map(|e| raw::id_doc(&e)) else {
        return Ok(());
    };
    ctx.queue.push(Entry {
        reason: Reason::Touch,
        attempts: 0,
        read_at: ts.pack(),
        ns: ns.to_string(),
        id,
    })
}
