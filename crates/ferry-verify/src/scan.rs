//! The document comparison of `_id` ranges, several in parallel. Per range, one reader per side
//! (`find` with the range filter, sorted by `_id`, hint `_id_`, raw BSON, never decoded) feeds
//! bounded batches through a bounded channel into a single-pass merge by `_id` (`raw::cmp_ids`,
//! MongoDB's order): memory is at most parallelism x 2 sides x (CHANNEL_DEPTH + 2) batches of
//! `batch_docs` documents, whatever the collection size. Hashed mode first compares count + digest
//! (the server's `dbHash` for a collection that is one range) and merges only when they differ.
//! Differences are confirmed at once when the migration is not running (`applied` is `None`),
//! otherwise queued for a recheck. A range that finishes is recorded and checkpointed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, RawDocumentBuf};
use futures::StreamExt;
use mongodb::error::Error as MongoError;
use mongodb::options::Hint;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::context::Ctx;
use crate::mongo::{self, Side};
use crate::plan::split_ns;
use crate::queue::{Entry, Reason};
use crate::raw;
use crate::state::doc_key;
use crate::types::{Mismatch, MismatchKind, Mode, OpTime};
use crate::VerifyError;

const CHANNEL_DEPTH: usize = 2;

pub(crate) enum ScanError {
    Mongo(MongoError, Side),
    Cancelled,
    Fatal(VerifyError),
}

impl From<VerifyError> for ScanError {
    fn from(e: VerifyError) -> Self {
        ScanError::Fatal(e)
    }
}

/// Documents counted by one attempt at a range.
#[derive(Default)]
struct Tally {
    src: u64,
    dst: u64,
}

/// Compares every unfinished range; returns the first fatal error.
pub(crate) async fn scan_all(ctx: Arc<Ctx>) -> Result<(), VerifyError> {
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
    let results: Vec<Result<(), VerifyError>> = futures::stream::iter(work)
        .map(|(ci, ri)| scan_range(ctx.clone(), ci, ri))
        .buffer_unordered(ctx.cfg.parallelism.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// One range, retried from its start after transient errors (up to the retry budget).
async fn scan_range(ctx: Arc<Ctx>, ci: usize, ri: usize) -> Result<(), VerifyError> {
    let (ns, filter, whole) = {
        let st = ctx.state();
        let c = &st.collections[ci];
        (c.ns.clone(), c.ranges[ri].filter(), c.ranges.len() == 1)
    };
    let filter = filter?;
    let mut last_progress = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        let mut tally = Tally::default();
        let res = compare_range(&ctx, ci, &ns, &filter, whole, &mut tally).await;
        let live = &ctx.live[ci];
        live.src.fetch_sub(tally.src, Ordering::Relaxed);
        live.dst.fetch_sub(tally.dst, Ordering::Relaxed);
        match res {
            Ok(()) => {
                {
                    let mut st = ctx.state();
                    let r = &mut st.collections[ci].ranges[ri];
                    r.done = true;
                    r.src_docs = tally.src;
                    r.dst_docs = tally.dst;
                }
                tracing::debug!(task_id = %ctx.cfg.task_id, %ns, range = ri, src = tally.src, dst = tally.dst, "range compared");
                ctx.emit_checkpoint().await;
                return Ok(());
            }
            Err(ScanError::Cancelled) => return Ok(()),
            Err(ScanError::Fatal(e)) => return Err(e),
            Err(ScanError::Mongo(e, side)) => {
                if tally.src + tally.dst > 0 {
                    last_progress = Instant::now();
                }
                let budget = ctx.cfg.tuning.retry_budget;
                if !mongo::is_transient(&e) || last_progress.elapsed() >= budget {
                    let err = mongo::RetryError {
                        error: e,
                        side,
                        budget,
                    };
                    return Err(err.into_verify("compare range", &ns));
                }
                tracing::warn!(error = %e, %ns, range = ri, side = side.name(), "range comparison interrupted, retrying");
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(3));
            }
        }
    }
}

async fn compare_range(
    ctx: &Arc<Ctx>,
    ci: usize,
    ns: &str,
    filter: &bson::Document,
    whole: bool,
    tally: &mut Tally,
) -> Result<(), ScanError> {
    if ctx.cfg.mode == Mode::Hashed {
        let equal = if whole {
            db_hash_equal(ctx, ns).await?
        } else {
            digest_equal(ctx, ns, filter).await?
        };
        if let Some(n) = equal {
            tally.src = n.0;
            tally.dst = n.1;
            ctx.live[ci].src.fetch_add(n.0, Ordering::Relaxed);
            ctx.live[ci].dst.fetch_add(n.1, Ordering::Relaxed);
            return Ok(());
        }
        tracing::debug!(%ns, "digests differ; merging the range");
    }
    merge(ctx, ci, ns, filter, tally).await
}

/// A stream of one side's documents of a range, read ahead by a task through a bounded channel.
struct SideStream {
    rx: mpsc::Receiver<Vec<RawDocumentBuf>>,
    buf: std::vec::IntoIter<RawDocumentBuf>,
    reader: Option<JoinHandle<Result<bool, ScanError>>>,
    batches: u64,
}

impl SideStream {
    fn open(ctx: &Arc<Ctx>, side: Side, ns: &str, filter: &bson::Document) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let reader = tokio::spawn(read_side(
            ctx.clone(),
            side,
            ns.to_string(),
            filter.clone(),
            tx,
        ));
        Self {
            rx,
            buf: Vec::new().into_iter(),
            reader: Some(reader),
            batches: 0,
        }
    }

    /// The next document; `Ok(None)` only when the reader read the whole range.
    async fn next(&mut self) -> Result<Option<RawDocumentBuf>, ScanError> {
        loop {
            if let Some(d) = self.buf.next() {
                return Ok(Some(d));
            }
            match self.rx.recv().await {
                Some(b) => {
                    self.batches += 1;
                    self.buf = b.into_iter();
                }
                None => {
                    let Some(h) = self.reader.take() else {
                        return Ok(None);
                    };
                    return match h.await {
                        Ok(Ok(true)) => Ok(None),
                        Ok(Ok(false)) => Err(ScanError::Cancelled),
                        Ok(Err(e)) => Err(e),
                        Err(join) => Err(ScanError::Mongo(
                            MongoError::custom(format!("reader task failed: {join}")),
                            Side::Source,
                        )),
                    };
                }
            }
        }
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        if let Some(h) = self.reader.take() {
            h.abort();
        }
    }
}

/// Reads a range on one side in `_id` order; `Ok(false)` when cancelled or the merge is gone.
async fn read_side(
    ctx: Arc<Ctx>,
    side: Side,
    ns: String,
    filter: bson::Document,
    tx: mpsc::Sender<Vec<RawDocumentBuf>>,
) -> Result<bool, ScanError> {
    let (client, throttle) = match side {
        Side::Source => (&ctx.src, &ctx.src_throttle),
        Side::Destination => (&ctx.dst, &ctx.dst_throttle),
    };
    let (db, name) = split_ns(&ns);
    let coll = client.database(db).collection::<RawDocumentBuf>(name);
    let batch_docs = ctx.cfg.tuning.batch_docs as usize;
    let find = coll
        .find(filter)
        .sort(doc! {"_id": 1})
        .hint(Hint::Name("_id_".to_string()))
        .batch_size(ctx.cfg.tuning.batch_docs);
    let mut cursor = tokio::select! {
        _ = ctx.cancel.cancelled() => return Ok(false),
        c = find => c.map_err(|e| ScanError::Mongo(e, side))?,
    };
    let mut batch = Vec::with_capacity(batch_docs);
    loop {
        let more = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(false),
            m = cursor.advance() => m.map_err(|e| ScanError::Mongo(e, side))?,
        };
        if more {
            batch.push(cursor.current().to_owned());
            if batch.len() < batch_docs {
                continue;
            }
        }
        let n = batch.len() as u64;
        if !throttle.acquire(n, &ctx.cancel).await || !ctx.control.wait_unpaused(&ctx.cancel).await
        {
            return Ok(false);
        }
        if !batch.is_empty() {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_docs));
            if tx.send(full).await.is_err() {
                return Ok(false);
            }
        }
        if !more {
            return Ok(true);
        }
    }
}

/// Merges both sides of a range by `_id`, comparing documents byte for byte.
async fn merge(
    ctx: &Arc<Ctx>,
    ci: usize,
    ns: &str,
    filter: &bson::Document,
    tally: &mut Tally,
) -> Result<(), ScanError> {
    let mut a = SideStream::open(ctx, Side::Source, ns, filter);
    let mut b = SideStream::open(ctx, Side::Destination, ns, filter);
    let mut read_at = ReadAt::default();
    let live = &ctx.live[ci];
    let (mut x, mut y) = (a.next().await?, b.next().await?);
    loop {
        let order = match (&x, &y) {
            (None, None) => return Ok(()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(s), Some(d)) => raw::cmp_ids(s.as_bytes(), d.as_bytes()),
        };
        let (take_src, take_dst) = match order {
            std::cmp::Ordering::Less => (true, false),
            std::cmp::Ordering::Greater => (false, true),
            std::cmp::Ordering::Equal => (true, true),
        };
        let s = if take_src { x.take() } else { None };
        let d = if take_dst { y.take() } else { None };
        let (sb, db) = (
            s.as_ref().map(|v| v.as_bytes()),
            d.as_ref().map(|v| v.as_bytes()),
        );
        if sb != db {
            read_at.refresh(ctx, a.batches).await?;
            difference(ctx, ns, sb, db, read_at.ts).await?;
        }
        if take_src {
            tally.src += 1;
            live.src.fetch_add(1, Ordering::Relaxed);
            x = a.next().await?;
        }
        if take_dst {
            tally.dst += 1;
            live.dst.fetch_add(1, Ordering::Relaxed);
            y = b.next().await?;
        }
    }
}

/// The source's newest oplog time, fetched at most once per source batch (an upper bound of when
/// the batch was read).
#[derive(Default)]
struct ReadAt {
    batch: u64,
    ts: u64,
}

impl ReadAt {
    async fn refresh(&mut self, ctx: &Ctx, batch: u64) -> Result<(), ScanError> {
        if ctx.applied_now().is_none() || (self.batch == batch && self.ts > 0) {
            return Ok(());
        }
        let budget = ctx.cfg.tuning.retry_budget;
        let t = mongo::newest_optime(&ctx.src, &ctx.cancel, budget).await?;
        self.batch = batch;
        self.ts = t.map_or(0, OpTime::pack);
        Ok(())
    }
}

/// Builds the mismatch of two versions of a document (either may be absent).
pub(crate) fn describe(ns: &str, src: Option<&[u8]>, dst: Option<&[u8]>) -> Option<Mismatch> {
    let any = src.or(dst)?;
    let (kind, field_path, description) = match (src, dst) {
        (Some(_), None) => (
            MismatchKind::MissingOnDestination,
            None,
            "document missing on the destination".to_string(),
        ),
        (None, Some(_)) => (
            MismatchKind::ExtraOnDestination,
            None,
            "document only on the destination".to_string(),
        ),
        (Some(s), Some(d)) => {
            let path = raw::first_difference(s, d)?;
            let description = format!("documents differ at '{path}'");
            (MismatchKind::Different, Some(path), description)
        }
        (None, None) => return None,
    };
    Some(Mismatch {
        namespace: ns.to_string(),
        id: Some(raw::id_json(any)),
        kind,
        field_path,
        description,
    })
}

/// A document that differs: confirmed now when the migration is not running, else queued.
async fn difference(
    ctx: &Ctx,
    ns: &str,
    src: Option<&[u8]>,
    dst: Option<&[u8]>,
    read_at: u64,
) -> Result<(), ScanError> {
    let Some(any) = src.or(dst) else {
        return Ok(());
    };
    let Some(id) = raw::id_elem(any).map(|e| raw::id_doc(&e)) else {
        tracing::warn!(%ns, "document without _id skipped");
        return Ok(());
    };
    if ctx.applied_now().is_none() {
        if let Some(m) = describe(ns, src, dst) {
            ctx.confirm(doc_key(ns, &id), m).await;
        }
        return Ok(());
    }
    ctx.queue.push(Entry {
        reason: Reason::Diff,
        attempts: 0,
        read_at,
        ns: ns.to_string(),
        id,
    })?;
    Ok(())
}

/// Hashed mode on a range: `Some((source count, destination count))` when count and digest match.
async fn digest_equal(
    ctx: &Arc<Ctx>,
    ns: &str,
    filter: &bson::Document,
) -> Result<Option<(u64, u64)>, ScanError> {
    async fn digest(mut s: SideStream) -> Result<(u64, Vec<u8>), ScanError> {
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(d) = s.next().await? {
            h.update((d.as_bytes().len() as u32).to_le_bytes());
            h.update(d.as_bytes());
            n += 1;
        }
        Ok((n, h.finalize().to_vec()))
    }
    let a = digest(SideStream::open(ctx, Side::Source, ns, filter));
    let b = digest(SideStream::open(ctx, Side::Destination, ns, filter));
    let (a, b) = tokio::try_join!(a, b)?;
    Ok((a == b).then_some((a.0, b.0)))
}

/// Hashed mode on a whole collection: the servers' `dbHash` and `count`.
async fn db_hash_equal(ctx: &Arc<Ctx>, ns: &str) -> Result<Option<(u64, u64)>, ScanError> {
    let (db, name) = split_ns(ns);
    let budget = ctx.cfg.tuning.retry_budget;
    let mut out = Vec::with_capacity(2);
    for (client, side) in [(&ctx.src, Side::Source), (&ctx.dst, Side::Destination)] {
        let hash = mongo::command(
            client,
            &ctx.cancel,
            budget,
            side,
            db,
            doc! {"dbHash": 1, "collections": [name]},
        )
        .await;
        let hash = match hash {
            Ok(Some(r)) => r
                .get_document("collections")
                .ok()
                .and_then(|c| c.get_str(name).ok())
                .map(str::to_string),
            Ok(None) => return Err(ScanError::Cancelled),
            Err(e) => {
                tracing::debug!(%ns, error = %e.error, "dbHash unavailable; hashing the documents");
                None
            }
        };
        let Some(hash) = hash else {
            return digest_equal(ctx, ns, &bson::Document::new()).await;
        };
        let count = mongo::command(client, &ctx.cancel, budget, side, db, doc! {"count": name})
            .await
            .map_err(|e| ScanError::Mongo(e.error, side))?
            .ok_or(ScanError::Cancelled)?;
        let n = match count.get("n") {
            Some(bson::Bson::Int32(n)) => (*n).max(0) as u64,
            Some(bson::Bson::Int64(n)) => (*n).max(0) as u64,
            _ => 0,
        };
        out.push((hash, n));
    }
    match (out.first(), out.get(1)) {
        (Some(a), Some(b)) if a == b => Ok(Some((a.1, b.1))),
        _ => Ok(None),
    }
}
