//! OPLOG_SYNC: reads spooled entries in order, applies only majority-committed ones (reference §8.5: an
//! entry above the source's majority commit point may still be rolled back by a failover), reassembles
//! transactions, and applies them idempotently (§8.7). CRUD runs in parallel by hash of (namespace,
//! `_id`) in `worker::Worker`s — or of the namespace alone for capped collections, whose destination
//! evicts by its own insertion order, so their writes keep the source's order. Unique indexes are kept
//! non-unique on the destination until cut-over (`indexes`), so documents swapping unique values apply
//! in parallel like any other. DDL entries and view definitions (CRUD on `<db>.system.views`) are
//! barriers (`ddl`). Entries up to the copy-end timestamp replay changes the copy may already contain:
//! duplicate-key errors there are expected and skipped (as MongoDB's initial sync does).
//!
//! Checkpoints pair `last_applied` with the oldest transaction still open at that point (`fetch_from`),
//! updated together at the end of every batch, so a checkpoint written at any time (a DDL barrier
//! included) resumes with every link of the transactions open there.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::RawDocumentBuf;

use crate::context::{Ctx, Majority};
use crate::oplog::{entry_ts, parse_entry, Entry, Op, TxnBuffer};
use crate::plan;
use crate::spool::SpoolReader;
use crate::state;
use crate::types::OpTime;
use crate::worker::{key_of, Worker};
use crate::EngineError;

const READ_BYTES: usize = 8 << 20;
/// How long to wait before asking the source's majority point again when the next entry is above it (doubling
/// up to `MAJORITY_WAIT_MAX` while it stays above).
const MAJORITY_WAIT: Duration = Duration::from_millis(5);
const MAJORITY_WAIT_MAX: Duration = Duration::from_millis(250);

pub(crate) struct Applier {
    pub(crate) ctx: Arc<Ctx>,
    txns: TxnBuffer,
    /// Entries at or before this point are already reflected (only transaction links are kept).
    apply_from: OpTime,
    pub(crate) copy_end: OpTime,
}

/// Kind of a namespace's ops for the applier.
enum Route {
    Crud,
    /// `<db>.system.views`: view definitions, applied as DDL.
    Views,
    /// `<db>.system.buckets.<name>`: a time-series collection's storage.
    Buckets,
    Skip,
}

impl Applier {
    pub(crate) fn new(ctx: Arc<Ctx>, apply_from: OpTime, copy_end: OpTime) -> Self {
        Self {
            ctx,
            txns: TxnBuffer::default(),
            apply_from,
            copy_end,
        }
    }

    /// Applies until cut-over (returns the final ts) or cancellation (returns `None`).
    pub(crate) async fn run(
        mut self,
        mut reader: SpoolReader,
    ) -> Result<Option<OpTime>, EngineError> {
        let ctx = self.ctx.clone();
        // Everything up to the apply start point is reflected on the destination: say so from the start, so a
        // verifier (and the lag figure) has a position even before the first entry is applied.
        if ctx.last_applied().is_none() {
            ctx.set_last_applied(self.apply_from);
        }
        let mut target: Option<OpTime> = None;
        let mut last_checkpoint = Instant::now();
        let interval = ctx.cfg.tuning.checkpoint_interval;
        // Entries read from the spool but above the majority commit point (at most one read's worth:
        // nothing more is read while they wait).
        let mut waiting: VecDeque<RawDocumentBuf> = VecDeque::new();
        let mut majority_wait = MAJORITY_WAIT;
        loop {
            if ctx.cancel.is_cancelled() {
                return Ok(None);
            }
            // Paused: nothing is applied (the tailer keeps spooling); a cut-over request waits too.
            if !ctx.wait_unpaused().await {
                return Ok(None);
            }
            if target.is_none() && ctx.control.complete_requested() {
                let newest = plan::oplog_edge(&ctx.src, ctx.policy(), true).await?;
                let t = newest.unwrap_or(self.copy_end).max(self.copy_end);
                tracing::info!(task_id = %ctx.cfg.task_id, target = %t, "cut-over requested: applying through the source's newest entry");
                target = Some(t);
            }
            let applied_to = ctx
                .last_applied()
                .unwrap_or(self.apply_from)
                .max(self.apply_from);
            if let Some(t) = target {
                if applied_to >= t {
                    self.checkpoint().await;
                    return Ok(Some(applied_to));
                }
            }
            if waiting.is_empty() {
                let (r, raws) = reader.read(READ_BYTES, Duration::from_millis(100)).await?;
                reader = r;
                waiting.extend(raws);
            }
            let ready = self.majority_prefix(&mut waiting)?;
            if !ready.is_empty() {
                majority_wait = MAJORITY_WAIT;
                // In chunks of ~1/10 s of the apply throttle (the whole batch when unlimited), each
                // charged before it is applied; a pause stops between chunks.
                let mut rest = &ready[..];
                while !rest.is_empty() {
                    if !ctx.wait_unpaused().await {
                        return Ok(None);
                    }
                    let caps = ctx.apply_limit.batch_caps(rest.len(), usize::MAX);
                    let (n, entries, bytes) = self.chunk(rest, caps);
                    let (chunk, tail) = rest.split_at(n);
                    if !ctx
                        .apply_limit
                        .charge(entries, bytes, false, &ctx.cancel)
                        .await
                    {
                        return Ok(None);
                    }
                    let applied_to = ctx
                        .last_applied()
                        .unwrap_or(self.apply_from)
                        .max(self.apply_from);
                    self.apply_batch(chunk, applied_to).await?;
                    if ctx.cancel.is_cancelled() {
                        return Ok(None);
                    }
                    rest = tail;
                    if !rest.is_empty() && last_checkpoint.elapsed() >= interval {
                        self.checkpoint().await;
                        last_checkpoint = Instant::now();
                    }
                }
            } else if !waiting.is_empty() {
                // The next entry is above the majority point the poller saw last: ask the source again soon (a
                // hello), so apply latency is the replication delay, not the poll interval; backing off while
                // the majority point stays behind (secondaries down) keeps the load on the source small.
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(majority_wait) => {}
                }
                crate::tail::refresh_majority(&ctx).await;
                majority_wait = (majority_wait * 2).min(MAJORITY_WAIT_MAX);
            }

            if last_checkpoint.elapsed() >= interval {
                self.checkpoint().await;
                last_checkpoint = Instant::now();
            }
        }
    }

    /// The length of the next chunk of `raws` to apply: at most `caps` (entries, bytes) of the entries
    /// that count (`NsFilter::counts`, past the apply start point), at least one entry; with the
    /// number and bytes of counted entries in it.
    fn chunk(&self, raws: &[RawDocumentBuf], caps: (usize, usize)) -> (usize, u64, u64) {
        let (mut entries, mut bytes) = (0usize, 0usize);
        for (i, raw) in raws.iter().enumerate() {
            if self.counts(raw) {
                entries += 1;
                bytes += raw.as_bytes().len();
            }
            if entries >= caps.0 || bytes >= caps.1 {
                return (i + 1, entries as u64, bytes as u64);
            }
        }
        (raws.len(), entries as u64, bytes as u64)
    }

    /// Whether an entry counts in `oplog_entries_applied` and the apply throttle.
    fn counts(&self, raw: &RawDocumentBuf) -> bool {
        entry_ts(raw).is_ok_and(|t| t > self.apply_from) && self.ctx.filter.counts(raw)
    }

    /// Takes the entries at or below the source's majority commit point off the front of `waiting`.
    fn majority_prefix(
        &self,
        waiting: &mut VecDeque<RawDocumentBuf>,
    ) -> Result<Vec<RawDocumentBuf>, EngineError> {
        let majority = self.ctx.majority();
        let mut ready = Vec::new();
        if majority == Majority::Unknown {
            return Ok(ready);
        }
        while let Some(front) = waiting.front() {
            let ts = entry_ts(front).map_err(|e| EngineError::Apply {
                ts: "?".into(),
                namespace: "local.oplog.rs".into(),
                detail: e.to_string(),
            })?;
            if matches!(majority, Majority::At(m) if ts > m) {
                break;
            }
            if let Some(raw) = waiting.pop_front() {
                ready.push(raw);
            }
        }
        Ok(ready)
    }

    /// Parses and applies a batch of raw oplog entries in order, then advances `last_applied` (and,
    /// after it, `fetch_from`: a checkpoint between the two only fetches more than it needs).
    pub(crate) async fn apply_batch(
        &mut self,
        raws: &[RawDocumentBuf],
        applied_to: OpTime,
    ) -> Result<(), EngineError> {
        let ctx = self.ctx.clone();
        let mut ops: Vec<(OpTime, Op)> = Vec::new();
        let mut last = None;
        for raw in raws {
            let parsed = parse_entry(raw).map_err(|e| EngineError::Apply {
                ts: entry_ts(raw).map(|t| t.to_string()).unwrap_or("?".into()),
                namespace: "local.oplog.rs".into(),
                detail: e.to_string(),
            });
            let (ts, entry) = match parsed {
                Ok(v) => v,
                Err(e) => return Err(self.keep_failed_entry(raws, e)),
            };
            last = Some(ts);
            if ts <= self.apply_from {
                // Before the resume point only transaction links matter; completed ones are dropped.
                if matches!(
                    entry,
                    Entry::TxnPart { .. } | Entry::Commit { .. } | Entry::Abort { .. }
                ) {
                    let _ = self.txns.feed(ts, entry);
                }
                continue;
            }
            for op in self.txns.feed(ts, entry) {
                ops.push((ts, op));
            }
        }
        if let Err(e) = self.apply_ops(ops).await {
            return Err(self.keep_failed_entry(raws, e));
        }
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        if let Some(t) = last {
            if t > applied_to {
                ctx.set_last_applied(t);
            }
        }
        ctx.state().fetch_from = self.txns.oldest_open().map(state::pair);
        let counted = raws.iter().filter(|r| self.counts(r)).count() as u64;
        ctx.live.applied.fetch_add(counted, Ordering::SeqCst);
        Ok(())
    }

    /// Saves the entry an apply error names (by its `ts`) under the spool directory and names the file
    /// in the error, so support can reproduce the failure with `ferry-agent replay`.
    fn keep_failed_entry(&self, raws: &[RawDocumentBuf], error: EngineError) -> EngineError {
        let EngineError::Apply {
            ts,
            namespace,
            detail,
        } = error
        else {
            return error;
        };
        if self.ctx.cfg.spool_dir.as_os_str().is_empty() {
            // Outside a task (replay, tests): nothing to keep.
            return EngineError::Apply {
                ts,
                namespace,
                detail,
            };
        }
        let entry = raws
            .iter()
            .find(|r| entry_ts(r).map(|t| t.to_string()) == Ok(ts.clone()));
        let Some(entry) = entry else {
            return EngineError::Apply {
                ts,
                namespace,
                detail,
            };
        };
        match crate::replay::save_failed_entry(&self.ctx.cfg, entry) {
            Ok(path) => EngineError::Apply {
                ts,
                namespace,
                detail: format!(
                    "{detail} (entry saved to {}; reproduce with `ferry-agent replay`)",
                    path.display()
                ),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot save the failed oplog entry");
                EngineError::Apply {
                    ts,
                    namespace,
                    detail,
                }
            }
        }
    }

    pub(crate) async fn checkpoint(&self) {
        self.ctx.emit_checkpoint().await;
    }

    fn route(&self, ns: &str) -> Route {
        let Some((db, coll)) = ns.split_once('.') else {
            return Route::Skip;
        };
        if !self.ctx.filter.db_selected(db) {
            return Route::Skip;
        }
        if coll == "system.views" {
            return Route::Views;
        }
        if coll.starts_with("system.buckets.") {
            return Route::Buckets;
        }
        if self.ctx.filter.ns_selected(ns) {
            Route::Crud
        } else {
            Route::Skip
        }
    }

    /// Applies ops in order: CRUD runs in parallel between barriers (DDL, view definitions).
    async fn apply_ops(&mut self, ops: Vec<(OpTime, Op)>) -> Result<(), EngineError> {
        let mut run: Vec<(OpTime, Op)> = Vec::new();
        for (ts, op) in ops {
            match op {
                Op::Command { db, cmd } => {
                    if !self.command_selected(&db, &cmd) {
                        continue;
                    }
                    self.apply_crud(std::mem::take(&mut run)).await?;
                    self.apply_command(ts, &db, cmd).await?;
                }
                other => match self.route(&other.namespace()) {
                    Route::Crud => run.push((ts, other)),
                    Route::Skip => {}
                    Route::Views => {
                        self.apply_crud(std::mem::take(&mut run)).await?;
                        self.apply_view_op(ts, other).await?;
                    }
                    Route::Buckets => {
                        return Err(EngineError::Unsupported {
                            namespace: other.namespace(),
                            detail: "writes to a time-series collection cannot be migrated yet: \
                                     exclude its database from the task, or drop the collection on the \
                                     source, then restart the migration"
                                .into(),
                        })
                    }
                },
            }
        }
        self.apply_crud(run).await
    }

    fn command_selected(&self, db: &str, cmd: &mongodb::bson::Document) -> bool {
        if self.ctx.filter.db_selected(db) {
            return true;
        }
        // A rename into a selected database still matters.
        cmd.get_str("to")
            .map(|to| self.ctx.filter.ns_selected(to))
            .unwrap_or(false)
    }

    fn worker_of(&self, op: &Op, workers: usize, ordered: &[String]) -> usize {
        let (ns, id) = key_of(op);
        let mut h = DefaultHasher::new();
        ns.hash(&mut h);
        if !ordered.contains(&ns) {
            id.hash(&mut h);
        }
        (h.finish() % workers as u64) as usize
    }

    async fn apply_crud(&self, ops: Vec<(OpTime, Op)>) -> Result<(), EngineError> {
        if ops.is_empty() {
            return Ok(());
        }
        let workers = self.ctx.cfg.tuning.apply_workers.max(1);
        let ordered = self.ctx.state().ordered.clone();
        let mut parts: Vec<Vec<(OpTime, Op)>> = (0..workers).map(|_| Vec::new()).collect();
        for (ts, op) in ops {
            let w = self.worker_of(&op, workers, &ordered);
            parts[w].push((ts, op));
        }
        let futs = parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| Worker::new(&self.ctx, self.copy_end).run(p));
        futures::future::try_join_all(futs).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::context::{pack, MAJORITY_UNBOUNDED};
    use crate::types::Endpoint;
    use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document, Timestamp};

    const T: fn(u32) -> OpTime = |i| OpTime {
        seconds: 1_700_000_000,
        increment: i,
    };

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::try_from(&d).unwrap()
    }

    fn ts(i: u32) -> Timestamp {
        Timestamp {
            time: 1_700_000_000,
            increment: i,
        }
    }

    /// An applier whose destination is never contacted: the entries below touch no selected namespace.
    async fn offline() -> Applier {
        let ep = Endpoint {
            uri: "mongodb://127.0.0.2:1/?serverSelectionTimeoutMS=100".into(),
            ..Endpoint::default()
        };
        crate::replay::standalone(&ep, &["selected".to_string()], T(0), 2)
            .await
            .unwrap()
    }

    fn lsid() -> Document {
        doc! {"id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] }}
    }

    /// Regression: a checkpoint written at a DDL barrier carried the `fetch_from` of the last periodic
    /// checkpoint, so a crash right after resumed past the first link of a transaction still open
    /// there. Every batch now leaves `fetch_from` paired with `last_applied`.
    #[tokio::test]
    async fn every_batch_leaves_fetch_from_paired_with_last_applied() {
        let mut a = offline().await;
        // A prepared transaction (sharded 2PC shape, reference §6.4) on an unselected database.
        let prepare = doc! {"op": "c", "ns": "admin.$cmd", "ts": ts(1), "lsid": lsid(), "txnNumber": 3i64,
        "o": {"applyOps": [{"op": "i", "ns": "other.c", "o": {"_id": 1}}], "prepare": true}};
        a.apply_batch(&[raw(prepare)], T(0)).await.unwrap();
        assert_eq!(a.ctx.last_applied(), Some(T(1)));
        assert_eq!(a.ctx.state().fetch_from, Some(crate::state::pair(T(1))));
        // A later batch without the commit: still open, still fetched from its first link.
        let noop = doc! {"op": "n", "ns": "", "ts": ts(2), "o": {"msg": "periodic noop"}};
        a.apply_batch(&[raw(noop)], T(1)).await.unwrap();
        let cp = a.ctx.checkpoint();
        assert_eq!(cp.last_applied, Some(T(2)));
        let st = crate::state::EngineState::decode(&cp.engine_state).unwrap();
        assert_eq!(st.fetch_from, Some(crate::state::pair(T(1))));
        // The commit closes it.
        let commit = doc! {"op": "c", "ns": "admin.$cmd", "ts": ts(3), "lsid": lsid(), "txnNumber": 3i64,
        "o": {"commitTransaction": 1, "commitTimestamp": ts(3)}};
        a.apply_batch(&[raw(commit)], T(2)).await.unwrap();
        assert_eq!(a.ctx.state().fetch_from, None);
    }

    #[tokio::test]
    async fn entries_above_the_majority_point_wait() {
        let a = offline().await;
        let e = |i| raw(doc! {"op": "n", "ns": "", "ts": ts(i), "o": {"msg": "x"}});
        let mut waiting: VecDeque<RawDocumentBuf> = (1..=5).map(e).collect();
        // Not read yet: nothing applies.
        assert!(a.majority_prefix(&mut waiting).unwrap().is_empty());
        a.ctx.live.majority.store(pack(T(3)), Ordering::SeqCst);
        let ready = a.majority_prefix(&mut waiting).unwrap();
        assert_eq!(ready.len(), 3);
        assert_eq!(waiting.len(), 2);
        assert!(a.majority_prefix(&mut waiting).unwrap().is_empty());
        a.ctx
            .live
            .majority
            .store(MAJORITY_UNBOUNDED, Ordering::SeqCst);
        assert_eq!(a.majority_prefix(&mut waiting).unwrap().len(), 2);
    }
}
