//! OPLOG_SYNC: reads spooled entries in order, reassembles transactions, and applies them idempotently
//! (reference §8.7): inserts and replacements as upserting replacements by `_id`, `$v:1` updates as
//! server-side updates without upsert, `$v:2` diffs applied exactly (§7.3) to the destination's current
//! document and written back as a replacement, deletes by key. A whole document with a top-level
//! `$`-prefixed field (legal since 5.0) cannot be a replacement (the server refuses it), so it is written
//! as delete-by-key then insert, back to back in the key's partition (see `write_whole`). A `$v:2` target
//! missing on the destination is looked up on the source: if the source has it, its current version is
//! written (it is at or beyond the entry's pre-image, so later entries converge, §7.6) — this also heals
//! a crash between that delete and insert. CRUD runs in parallel by hash of
//! (namespace, `_id`) — or of the namespace alone when it has a secondary unique index, so those apply
//! in source order — and DDL entries are barriers. Entries up to the copy-end timestamp replay changes
//! the copy may already contain: duplicate-key errors there are expected and skipped (as MongoDB's
//! initial sync does); afterwards they fail the task.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::future::IntoFuture;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

use crate::context::Ctx;
use crate::diff::apply_diff;
use crate::mongo::{self, error_code, Side};
use crate::oplog::{parse_entry, Entry, Op, TxnBuffer};
use crate::plan::{self, split_ns};
use crate::spool::SpoolReader;
use crate::state;
use crate::types::OpTime;
use crate::EngineError;

const READ_BYTES: usize = 8 << 20;
const STMTS_PER_COMMAND: usize = 1000;

pub(crate) struct Applier {
    ctx: Arc<Ctx>,
    txns: TxnBuffer,
    /// Entries at or before this point are already reflected (only transaction links are kept).
    apply_from: OpTime,
    copy_end: OpTime,
    unique: HashSet<String>,
}

impl Applier {
    pub(crate) fn new(
        ctx: Arc<Ctx>,
        apply_from: OpTime,
        copy_end: OpTime,
        unique: HashSet<String>,
    ) -> Self {
        Self {
            ctx,
            txns: TxnBuffer::default(),
            apply_from,
            copy_end,
            unique,
        }
    }

    /// Applies until cut-over (returns the final ts) or cancellation (returns `None`).
    pub(crate) async fn run(
        mut self,
        mut reader: SpoolReader,
    ) -> Result<Option<OpTime>, EngineError> {
        let ctx = self.ctx.clone();
        let mut target: Option<OpTime> = None;
        let mut last_checkpoint = Instant::now();
        let interval = ctx.cfg.tuning.checkpoint_interval;
        loop {
            if ctx.cancel.is_cancelled() {
                return Ok(None);
            }
            if target.is_none() && ctx.control.complete_requested() {
                let newest =
                    plan::oplog_edge(&ctx.src, &ctx.cancel, ctx.retry_budget(), true).await?;
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
            let (r, raws) = reader.read(READ_BYTES, Duration::from_millis(100)).await?;
            reader = r;
            if !raws.is_empty() {
                self.apply_batch(&raws, applied_to).await?;
                if ctx.cancel.is_cancelled() {
                    return Ok(None);
                }
            }
            if last_checkpoint.elapsed() >= interval {
                self.checkpoint().await;
                last_checkpoint = Instant::now();
            }
        }
    }

    /// Parses and applies a batch of raw oplog entries in order, then advances `last_applied`.
    pub(crate) async fn apply_batch(
        &mut self,
        raws: &[mongodb::bson::RawDocumentBuf],
        applied_to: OpTime,
    ) -> Result<(), EngineError> {
        let ctx = self.ctx.clone();
        let mut ops: Vec<(OpTime, Op)> = Vec::new();
        let mut last = None;
        for raw in raws {
            let (ts, entry) = parse_entry(raw).map_err(|e| EngineError::Apply {
                ts: "?".into(),
                namespace: "local.oplog.rs".into(),
                detail: e.to_string(),
            })?;
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
                if self.selected(&op) {
                    ops.push((ts, op));
                }
            }
        }
        self.apply_ops(ops).await?;
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        if let Some(t) = last {
            if t > applied_to {
                ctx.set_last_applied(t);
            }
        }
        ctx.live
            .applied
            .fetch_add(raws.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn checkpoint(&self) {
        {
            let mut st = self.ctx.state();
            st.fetch_from = self.txns.oldest_open().map(state::pair);
        }
        self.ctx.emit_checkpoint().await;
    }

    fn selected(&self, op: &Op) -> bool {
        match op {
            Op::Command { db, cmd } => {
                if !self.ctx.filter.db_selected(db) {
                    // A rename into a selected database still matters.
                    return cmd
                        .get_str("to")
                        .map(|to| self.ctx.filter.ns_selected(to))
                        .unwrap_or(false);
                }
                true
            }
            other => self.ctx.filter.ns_selected(&other.namespace()),
        }
    }

    /// Applies ops in order: CRUD runs in parallel between DDL barriers.
    async fn apply_ops(&mut self, ops: Vec<(OpTime, Op)>) -> Result<(), EngineError> {
        let mut run: Vec<(OpTime, Op)> = Vec::new();
        for (ts, op) in ops {
            if let Op::Command { db, cmd } = op {
                self.apply_crud(std::mem::take(&mut run)).await?;
                self.apply_command(ts, &db, cmd).await?;
            } else {
                run.push((ts, op));
            }
        }
        self.apply_crud(run).await
    }

    fn worker_of(&self, op: &Op, workers: usize) -> usize {
        let ns = op.namespace();
        let mut h = DefaultHasher::new();
        ns.hash(&mut h);
        if !self.unique.contains(&ns) {
            id_bytes(op).hash(&mut h);
        }
        (h.finish() % workers as u64) as usize
    }

    async fn apply_crud(&self, ops: Vec<(OpTime, Op)>) -> Result<(), EngineError> {
        if ops.is_empty() {
            return Ok(());
        }
        let workers = self.ctx.cfg.tuning.apply_workers.max(1);
        let mut parts: Vec<Vec<(OpTime, Op)>> = (0..workers).map(|_| Vec::new()).collect();
        for (ts, op) in ops {
            let w = self.worker_of(&op, workers);
            parts[w].push((ts, op));
        }
        let futs = parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| Worker::new(&self.ctx, self.copy_end).run(p));
        futures::future::try_join_all(futs).await?;
        Ok(())
    }

    async fn apply_command(
        &mut self,
        ts: OpTime,
        db: &str,
        mut cmd: Document,
    ) -> Result<(), EngineError> {
        let ctx = self.ctx.clone();
        let o2 = cmd.remove("$o2");
        let _ = o2;
        let Some(name) = cmd.keys().next().cloned() else {
            return Ok(());
        };
        let target = cmd.get_str(&name).unwrap_or("").to_string();
        let ns = format!("{db}.{target}");
        let tolerate = |e: &mongo::RetryError, codes: &[i32]| {
            error_code(&e.error).is_some_and(|c| codes.contains(&c))
        };
        tracing::info!(task_id = %ctx.cfg.task_id, command = %name, %ns, %ts, "applying DDL");
        match name.as_str() {
            "create" => {
                if target.starts_with("system.") {
                    return Ok(());
                }
                let mut existing = plan::dest_names(&ctx, db).await?;
                let mut opts = cmd.clone();
                opts.remove("create");
                plan::create_namespace(&ctx, &ns, &opts, &mut existing).await?;
            }
            "drop" => {
                let r = ctx.dst_command(db, doc! {"drop": &target}).await;
                if let Err(e) = r {
                    if !tolerate(&e, &[26]) {
                        return Err(e.into_engine("drop", &ns));
                    }
                }
            }
            "dropDatabase" => {
                ctx.dst_command(db, doc! {"dropDatabase": 1})
                    .await
                    .map_err(|e| e.into_engine("dropDatabase", db))?;
            }
            "renameCollection" => {
                let from = cmd.get_str("renameCollection").unwrap_or("").to_string();
                let to = cmd.get_str("to").unwrap_or("").to_string();
                let drop_target = match cmd.get("dropTarget") {
                    Some(Bson::Boolean(b)) => *b,
                    Some(Bson::Binary(_)) => true,
                    _ => false,
                };
                let from_sel = ctx.filter.ns_selected(&from);
                let to_sel = ctx.filter.ns_selected(&to);
                if from_sel && !to_sel {
                    let (fdb, fname) = split_ns(&from);
                    let r = ctx.dst_command(fdb, doc! {"drop": fname}).await;
                    if let Err(e) = r {
                        if !tolerate(&e, &[26]) {
                            return Err(e.into_engine("drop", &from));
                        }
                    }
                    return Ok(());
                }
                if !from_sel {
                    return Err(EngineError::Unsupported {
                        namespace: to,
                        detail: format!("renamed from {from}, which is not migrated; include that database or restart the migration"),
                    });
                }
                let (tdb, tname) = split_ns(&to);
                let mut existing = plan::dest_names(&ctx, tdb).await?;
                if !existing.contains(tname) {
                    let mut st = ctx.state();
                    if !st.created.iter().any(|c| c == &to) {
                        st.created.push(to.clone());
                    }
                }
                ctx.emit_checkpoint().await;
                let r = ctx
                    .dst_command(
                        "admin",
                        doc! {"renameCollection": &from, "to": &to, "dropTarget": drop_target},
                    )
                    .await;
                let r = match r {
                    // The target exists only on the destination (copied after the source renamed
                    // into it): the source replaced it, so do the same.
                    Err(e) if tolerate(&e, &[48]) => {
                        ctx.dst_command(
                            "admin",
                            doc! {"renameCollection": &from, "to": &to, "dropTarget": true},
                        )
                        .await
                    }
                    other => other,
                };
                if let Err(e) = r {
                    if !tolerate(&e, &[26]) {
                        return Err(e.into_engine("renameCollection", &from));
                    }
                }
                existing.insert(tname.to_string());
                if ts <= self.copy_end {
                    // A rename inside the copy window may have moved documents the copy never saw
                    // (they were under the old name when it was listed): take the target's current
                    // content from the source; later entries replay idempotently on top of it.
                    crate::copy::recopy_collection(&ctx, &to).await?;
                }
                if self.unique.remove(&from) {
                    self.unique.insert(to);
                }
            }
            "createIndexes" => {
                let mut spec = cmd.clone();
                spec.remove("createIndexes");
                self.create_indexes(ts, db, &target, vec![spec]).await?;
            }
            "commitIndexBuild" => {
                let specs: Vec<Document> = cmd
                    .get_array("indexes")
                    .map(|a| a.iter().filter_map(Bson::as_document).cloned().collect())
                    .unwrap_or_default();
                self.create_indexes(ts, db, &target, specs).await?;
            }
            "startIndexBuild" | "abortIndexBuild" => {}
            "dropIndexes" | "deleteIndexes" => {
                let index = cmd
                    .get("index")
                    .cloned()
                    .unwrap_or(Bson::String("*".into()));
                let r = ctx
                    .dst_command(db, doc! {"dropIndexes": &target, "index": index})
                    .await;
                if let Err(e) = r {
                    if !tolerate(&e, &[26, 27]) {
                        return Err(e.into_engine("dropIndexes", &ns));
                    }
                }
            }
            "collMod" => {
                let r = ctx.dst_command(db, cmd.clone()).await;
                if let Err(e) = r {
                    if !tolerate(&e, &[26, 27]) {
                        return Err(e.into_engine("collMod", &ns));
                    }
                }
            }
            other => {
                tracing::warn!(task_id = %ctx.cfg.task_id, command = other, %ns, %ts, "skipping oplog command that has no destination equivalent");
            }
        }
        Ok(())
    }

    async fn create_indexes(
        &mut self,
        ts: OpTime,
        db: &str,
        coll: &str,
        specs: Vec<Document>,
    ) -> Result<(), EngineError> {
        let ns = format!("{db}.{coll}");
        if specs.is_empty() {
            return Ok(());
        }
        let unique = specs.iter().any(|s| s.get_bool("unique").unwrap_or(false));
        let r = self
            .ctx
            .dst_command(db, doc! {"createIndexes": coll, "indexes": specs})
            .await;
        match r {
            Ok(_) => {}
            Err(e) if error_code(&e.error).is_some_and(|c| [85, 86, 68].contains(&c)) => {}
            Err(e) if error_code(&e.error) == Some(11000) && ts <= self.copy_end => {
                tracing::warn!(%ns, %ts, "unique index build hit a transient duplicate during replay; it is retried at the next barrier");
            }
            Err(e) => return Err(e.into_engine("createIndexes", &ns)),
        }
        if unique {
            self.unique.insert(ns);
        }
        Ok(())
    }
}

fn id_of(op: &Op) -> Option<&Bson> {
    match op {
        Op::Insert { doc, .. } => doc.get("_id"),
        Op::Replace { key, .. }
        | Op::UpdateModifier { key, .. }
        | Op::UpdateDiff { key, .. }
        | Op::Delete { key, .. } => key.get("_id"),
        Op::Command { .. } => None,
    }
}

fn id_key(id: &Bson) -> Vec<u8> {
    doc! {"_id": id.clone()}.to_vec().unwrap_or_default()
}

fn id_bytes(op: &Op) -> Vec<u8> {
    id_of(op).map(id_key).unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Update,
    Delete,
    Insert,
}

/// True if a replacement `update` would refuse `doc`: MongoDB 5.0+ stores top-level `$`-prefixed field
/// names (insert, upsert-insert) but never accepts them in a replacement document.
fn has_top_level_dollar(doc: &Document) -> bool {
    doc.keys().any(|k| k.starts_with('$'))
}

type Key = (String, Vec<u8>);

/// Applies one partition of CRUD ops sequentially, batching consecutive statements of the same kind
/// and namespace into one `update`/`delete` command.
struct Worker<'a> {
    ctx: &'a Ctx,
    copy_end: OpTime,
    cache: HashMap<Key, Option<Document>>,
    dirty: HashSet<Key>,
    /// Keys whose `None` in `cache` comes from a delete of this batch (not from the destination).
    deleted: HashSet<Key>,
    /// Source documents of `$v:2` targets missing on the destination (`None`: not on the source either).
    recovered: HashMap<Key, Option<Document>>,
    pending_ns: String,
    pending_kind: Kind,
    stmts: Vec<Document>,
    /// Per statement: its entry's `ts`, and whether a duplicate-key error may be skipped after the copy
    /// window too (writes of source documents recovered for a missing target).
    stmt_ts: Vec<(OpTime, bool)>,
}

impl<'a> Worker<'a> {
    fn new(ctx: &'a Ctx, copy_end: OpTime) -> Self {
        Self {
            ctx,
            copy_end,
            cache: HashMap::new(),
            dirty: HashSet::new(),
            deleted: HashSet::new(),
            recovered: HashMap::new(),
            pending_ns: String::new(),
            pending_kind: Kind::Update,
            stmts: Vec::new(),
            stmt_ts: Vec::new(),
        }
    }

    async fn run(mut self, ops: Vec<(OpTime, Op)>) -> Result<(), EngineError> {
        self.prefetch(&ops).await?;
        for (ts, op) in ops {
            let key = (op.namespace(), id_bytes(&op));
            match op {
                Op::Insert { ns, doc } => {
                    let Some(id) = doc.get("_id").cloned() else {
                        return Err(EngineError::Apply {
                            ts: ts.to_string(),
                            namespace: ns,
                            detail: "insert without _id".into(),
                        });
                    };
                    self.write_whole(&ns, ts, doc! {"_id": id}, &doc, true, false)
                        .await?;
                    self.cached(key, Some(doc));
                }
                Op::Replace { ns, key: k, doc } => {
                    self.write_whole(&ns, ts, k, &doc, true, false).await?;
                    self.cached(key, Some(doc));
                }
                Op::UpdateModifier { ns, key: k, update } => {
                    self.push(
                        &ns,
                        Kind::Update,
                        (ts, false),
                        doc! {"q": k, "u": update, "upsert": false},
                    )
                    .await?;
                    self.cache.remove(&key);
                    self.deleted.remove(&key);
                    self.dirty.insert(key);
                }
                Op::UpdateDiff { ns, key: k, diff } => {
                    let current = match self.cache.get(&key) {
                        Some(c) => c.clone(),
                        None => {
                            if self.dirty.contains(&key) {
                                self.flush().await?;
                            }
                            self.fetch_one(Side::Destination, &ns, &k).await?
                        }
                    };
                    let new = match current {
                        Some(current) => {
                            apply_diff(&current, &diff).map_err(|source| EngineError::Diff {
                                namespace: ns.clone(),
                                source,
                            })?
                        }
                        None if self.deleted.contains(&key) => continue,
                        None => {
                            // Missing on the destination: deleted later on the source, gone with the
                            // copy, or lost between the delete and insert of `write_whole` (crash).
                            // The source's current version (if any) is at or beyond this entry's
                            // pre-image: write it as is; later entries converge on it (§7.6, §8.6).
                            let found = match self.recovered.remove(&key) {
                                Some(found) => found,
                                None => self.fetch_one(Side::Source, &ns, &k).await?,
                            };
                            let Some(found) = found else {
                                // Not on the source either: skip (reference §8.7).
                                self.deleted.insert(key.clone());
                                self.cache.insert(key, None);
                                continue;
                            };
                            tracing::info!(%ns, %ts, "update target missing on the destination; wrote the source's current version");
                            self.write_whole(&ns, ts, k, &found, true, true).await?;
                            self.cached(key, Some(found));
                            continue;
                        }
                    };
                    self.write_whole(&ns, ts, k, &new, false, false).await?;
                    self.cached(key, Some(new));
                }
                Op::Delete { ns, key: k } => {
                    self.push(&ns, Kind::Delete, (ts, false), doc! {"q": k, "limit": 1})
                        .await?;
                    self.cache.insert(key.clone(), None);
                    self.deleted.insert(key.clone());
                    self.dirty.insert(key);
                }
                Op::Command { .. } => {}
            }
        }
        self.flush().await
    }

    fn cached(&mut self, key: Key, doc: Option<Document>) {
        self.deleted.remove(&key);
        self.cache.insert(key.clone(), doc);
        self.dirty.insert(key);
    }

    /// Writes `doc` as the whole document at `key`: an upserting (or, with `upsert` false, plain)
    /// replacement; or, when it has a top-level `$`-prefixed field, which no replacement accepts on
    /// MongoDB 5.0-8.0, a delete by `key` then an insert. Both statements sit back to back in this
    /// key's partition, so no other write of the key comes between them; a crash in between leaves the
    /// key missing until the entry is replayed from the checkpoint: `i`/replacement entries rewrite it,
    /// and a `$v:2` entry finds it missing and takes the source's current version (see `run`).
    async fn write_whole(
        &mut self,
        ns: &str,
        ts: OpTime,
        key: Document,
        doc: &Document,
        upsert: bool,
        tolerant: bool,
    ) -> Result<(), EngineError> {
        if has_top_level_dollar(doc) {
            self.push(
                ns,
                Kind::Delete,
                (ts, tolerant),
                doc! {"q": key, "limit": 1},
            )
            .await?;
            self.push(ns, Kind::Insert, (ts, tolerant), doc.clone())
                .await
        } else {
            self.push(
                ns,
                Kind::Update,
                (ts, tolerant),
                doc! {"q": key, "u": doc.clone(), "upsert": upsert},
            )
            .await
        }
    }

    /// Loads the current destination documents of every `$v:2` target in one query per namespace, and
    /// the source documents of those missing on the destination (see `run`).
    async fn prefetch(&mut self, ops: &[(OpTime, Op)]) -> Result<(), EngineError> {
        let mut by_ns: HashMap<String, Vec<Bson>> = HashMap::new();
        let mut seen: HashSet<Key> = HashSet::new();
        for (_, op) in ops {
            if let Op::UpdateDiff { ns, key, .. } = op {
                if let Some(id) = key.get("_id") {
                    if seen.insert((ns.clone(), id_key(id))) {
                        by_ns.entry(ns.clone()).or_default().push(id.clone());
                    }
                }
            }
        }
        for (ns, ids) in by_ns {
            for chunk in ids.chunks(1000) {
                let found = self.find_ids(Side::Destination, &ns, chunk).await?;
                let mut missing = Vec::new();
                for id in chunk {
                    let key = (ns.clone(), id_key(id));
                    if !found.contains_key(&key.1) {
                        missing.push(id.clone());
                    }
                    self.cache.insert(key, None);
                }
                for (k, d) in found {
                    self.cache.insert((ns.clone(), k), Some(d));
                }
                if missing.is_empty() {
                    continue;
                }
                let mut from_source = self.find_ids(Side::Source, &ns, &missing).await?;
                for id in missing {
                    let k = id_key(&id);
                    let d = from_source.remove(&k);
                    self.recovered.insert((ns.clone(), k), d);
                }
            }
        }
        Ok(())
    }

    /// The documents of `ns` with these `_id`s on one side, by `id_key`.
    async fn find_ids(
        &self,
        side: Side,
        ns: &str,
        ids: &[Bson],
    ) -> Result<HashMap<Vec<u8>, Document>, EngineError> {
        let (db, name) = split_ns(ns);
        let client = match side {
            Side::Source => &self.ctx.src,
            Side::Destination => &self.ctx.dst,
        };
        let coll = client.database(db).collection::<Document>(name);
        let filter = doc! {"_id": {"$in": ids.to_vec()}};
        let found = mongo::retry(
            &self.ctx.cancel,
            self.ctx.retry_budget(),
            side,
            "prefetch",
            || async {
                coll.find(filter.clone())
                    .await?
                    .try_collect::<Vec<Document>>()
                    .await
            },
        )
        .await
        .map_err(|e| e.into_engine("find", ns))?
        .unwrap_or_default();
        Ok(found
            .into_iter()
            .filter_map(|d| Some((id_key(d.get("_id")?), d)))
            .collect())
    }

    async fn fetch_one(
        &self,
        side: Side,
        ns: &str,
        key: &Document,
    ) -> Result<Option<Document>, EngineError> {
        let (db, name) = split_ns(ns);
        let client = match side {
            Side::Source => &self.ctx.src,
            Side::Destination => &self.ctx.dst,
        };
        let coll = client.database(db).collection::<Document>(name);
        Ok(mongo::retry(
            &self.ctx.cancel,
            self.ctx.retry_budget(),
            side,
            "find",
            || coll.find_one(key.clone()).into_future(),
        )
        .await
        .map_err(|e| e.into_engine("find", ns))?
        .flatten())
    }

    async fn push(
        &mut self,
        ns: &str,
        kind: Kind,
        ts: (OpTime, bool),
        stmt: Document,
    ) -> Result<(), EngineError> {
        if !self.stmts.is_empty()
            && (self.pending_ns != ns
                || self.pending_kind != kind
                || self.stmts.len() >= STMTS_PER_COMMAND)
        {
            self.flush().await?;
        }
        if self.stmts.is_empty() {
            self.pending_ns = ns.to_string();
            self.pending_kind = kind;
        }
        self.stmts.push(stmt);
        self.stmt_ts.push(ts);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), EngineError> {
        if self.stmts.is_empty() {
            return Ok(());
        }
        let stmts = std::mem::take(&mut self.stmts);
        let stmt_ts = std::mem::take(&mut self.stmt_ts);
        self.dirty.clear();
        let ns = self.pending_ns.clone();
        let (db, coll) = split_ns(&ns);
        let mut start = 0usize;
        while start < stmts.len() {
            let batch: Vec<Document> = stmts[start..].to_vec();
            let cmd = match self.pending_kind {
                Kind::Update => {
                    doc! {"update": coll, "updates": batch, "ordered": true, "bypassDocumentValidation": true}
                }
                Kind::Delete => doc! {"delete": coll, "deletes": batch, "ordered": true},
                Kind::Insert => {
                    doc! {"insert": coll, "documents": batch, "ordered": true, "bypassDocumentValidation": true}
                }
            };
            let reply = self
                .ctx
                .dst_command(db, cmd)
                .await
                .map_err(|e| e.into_engine("apply oplog batch", &ns))?;
            let Some(reply) = reply else { return Ok(()) };
            let first_err = reply
                .get_array("writeErrors")
                .ok()
                .and_then(|a| a.iter().filter_map(Bson::as_document).next().cloned());
            let Some(we) = first_err else { break };
            let idx = match we.get("index") {
                Some(Bson::Int32(i)) => *i as usize,
                Some(Bson::Int64(i)) => *i as usize,
                _ => 0,
            };
            let code = match we.get("code") {
                Some(Bson::Int32(c)) => *c,
                Some(Bson::Int64(c)) => *c as i32,
                _ => 0,
            };
            let (ts, tolerant) = stmt_ts.get(start + idx).copied().unwrap_or((
                OpTime {
                    seconds: 0,
                    increment: 0,
                },
                false,
            ));
            if code == 11000 && ts <= self.copy_end {
                tracing::debug!(%ns, %ts, "duplicate key while replaying the copy window; skipped");
                start += idx + 1;
                continue;
            }
            if code == 11000 && tolerant {
                // A source version written ahead of its time collides with a unique value the
                // destination still holds at this point; later entries of the key rewrite it.
                tracing::warn!(%ns, %ts, "duplicate key writing a recovered source document; skipped");
                start += idx + 1;
                continue;
            }
            return Err(EngineError::Apply {
                ts: ts.to_string(),
                namespace: ns.clone(),
                detail: format!("write error {code}: {}", we.get_str("errmsg").unwrap_or("")),
            });
        }
        Ok(())
    }
}
