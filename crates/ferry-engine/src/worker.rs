//! One apply partition: CRUD ops of a set of keys, applied in order (reference §8.7). Consecutive
//! statements of the same kind and namespace are batched into one `update`/`delete`/`insert` command,
//! bounded by statement count AND bytes (a command may not exceed 16 MiB + 16 KiB on the server; many
//! `$v:2` updates of large documents become large replacements). Payloads stay raw BSON from the source
//! oplog to the destination command (`raw`), so strings with invalid UTF-8 are carried byte for byte.
//!
//! Inserts and replacements are upserting replacements by `_id`; `$v:1` updates are server-side updates
//! without upsert; a `$v:2` diff is applied exactly (§7.3) to the destination's current document and
//! written back as an upserting replacement (the result is the whole document as of that entry, like a
//! replacement entry). A `$v:2` target missing on the destination, or one that cannot be decoded (invalid
//! UTF-8), takes the source's current version, which is at or beyond the entry's pre-image, so later
//! entries converge on it (§7.6). A whole document with a top-level `$`-prefixed field (legal since 5.0)
//! cannot be a replacement, so it is written as delete-by-key then insert, back to back in this
//! partition.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, RawDocument, RawDocumentBuf};

use crate::context::Ctx;
use crate::diff::apply_diff;
use crate::mongo::{self, Side};
use crate::oplog::Op;
use crate::plan::split_ns;
use crate::raw::{self, Builder, Element};
use crate::types::OpTime;
use crate::EngineError;

const STMTS_PER_COMMAND: usize = 1000;
/// Bytes of statements per command: well under the server's 16 MiB + 16 KiB command limit, with room
/// for the command's own fields. One statement larger than this is sent alone (a 16 MiB document's
/// replacement still fits the limit).
pub(crate) const STMT_BYTES_PER_COMMAND: usize = 8 << 20;
/// `_id`s per prefetch query.
const PREFETCH_IDS: usize = 1000;

/// (namespace, `_id` type byte + value bytes).
pub(crate) type Key = (String, Vec<u8>);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Update,
    Delete,
    Insert,
}

struct Stmt {
    body: RawDocumentBuf,
    ts: OpTime,
    /// A duplicate-key error may be skipped after the copy window too (recovered source documents).
    tolerant: bool,
    key: Key,
}

/// The `_id` element of an op's document or key.
pub(crate) fn id_of(op: &Op) -> Option<Element<'_>> {
    match op {
        Op::Insert { doc, .. } => raw::field(doc, "_id"),
        Op::Replace { key, .. }
        | Op::UpdateModifier { key, .. }
        | Op::UpdateDiff { key, .. }
        | Op::Delete { key, .. } => raw::field(key, "_id"),
        Op::Command { .. } => None,
    }
}

pub(crate) fn key_of(op: &Op) -> Key {
    (
        op.namespace(),
        id_of(op).map(|e| raw::value_key(&e)).unwrap_or_default(),
    )
}

/// True if a replacement `update` would refuse `doc`: MongoDB 5.0+ stores top-level `$`-prefixed field
/// names (insert, upsert-insert) but never accepts them in a replacement document.
fn has_top_level_dollar(doc: &RawDocument) -> bool {
    raw::elements(doc.as_bytes())
        .is_some_and(|els| els.iter().any(|e| e.key.first() == Some(&b'$')))
}

pub(crate) struct Worker<'a> {
    ctx: &'a Ctx,
    copy_end: OpTime,
    cache: HashMap<Key, Option<RawDocumentBuf>>,
    dirty: HashSet<Key>,
    /// Keys whose `None` in `cache` comes from a delete of this batch (not from the destination).
    deleted: HashSet<Key>,
    /// Source documents of `$v:2` targets missing on the destination (`None`: not on the source either).
    recovered: HashMap<Key, Option<RawDocumentBuf>>,
    pending_ns: String,
    pending_kind: Kind,
    stmts: Vec<Stmt>,
    stmt_bytes: usize,
}

impl<'a> Worker<'a> {
    pub(crate) fn new(ctx: &'a Ctx, copy_end: OpTime) -> Self {
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
            stmt_bytes: 0,
        }
    }

    pub(crate) async fn run(mut self, ops: Vec<(OpTime, Op)>) -> Result<(), EngineError> {
        self.prefetch(&ops).await?;
        for (ts, op) in ops {
            let key = key_of(&op);
            match op {
                Op::Insert { ns, doc } => {
                    let Some(id) = raw::field(&doc, "_id") else {
                        return Err(EngineError::Apply {
                            ts: ts.to_string(),
                            namespace: ns,
                            detail: "insert without _id".into(),
                        });
                    };
                    let k = raw::single("_id", &id);
                    self.write_whole(&ns, ts, &k, &doc, false, &key).await?;
                    self.cached(key, Some(doc));
                }
                Op::Replace { ns, key: k, doc } => {
                    self.write_whole(&ns, ts, &k, &doc, false, &key).await?;
                    self.cached(key, Some(doc));
                }
                Op::UpdateModifier { ns, key: k, update } => {
                    let stmt = Builder::new()
                        .doc("q", &k)
                        .doc("u", &update)
                        .boolean("upsert", false)
                        .build();
                    self.push(&ns, Kind::Update, ts, false, &key, stmt).await?;
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
                    match current {
                        Some(current) => match diffed(&current, &diff) {
                            Ok(Some(new)) => {
                                self.write_whole(&ns, ts, &k, &new, false, &key).await?;
                                self.cached(key, Some(new));
                            }
                            Ok(None) => {
                                tracing::info!(%ns, %ts, "document or diff holds bytes that cannot be decoded (invalid UTF-8); writing the source's current version");
                                self.recover(&ns, ts, &k, key).await?;
                            }
                            Err(source) => {
                                return Err(EngineError::Diff {
                                    namespace: ns,
                                    source,
                                })
                            }
                        },
                        None if self.deleted.contains(&key) => {}
                        None => self.recover(&ns, ts, &k, key).await?,
                    }
                }
                Op::Delete { ns, key: k } => {
                    let stmt = Builder::new().doc("q", &k).int32("limit", 1).build();
                    self.push(&ns, Kind::Delete, ts, false, &key, stmt).await?;
                    self.cache.insert(key.clone(), None);
                    self.deleted.insert(key.clone());
                    self.dirty.insert(key);
                }
                Op::Command { .. } => {}
            }
        }
        self.flush().await
    }

    /// A `$v:2` target that is missing on the destination (deleted later on the source, gone with the
    /// copy, lost between the delete and insert of `write_whole` in a crash) or not decodable: the
    /// source's current version, if any, is at or beyond this entry's pre-image; write it as is and
    /// later entries converge on it (§7.6, §8.6). Not on the source either: skip (§8.7).
    async fn recover(
        &mut self,
        ns: &str,
        ts: OpTime,
        k: &RawDocument,
        key: Key,
    ) -> Result<(), EngineError> {
        let found = match self.recovered.remove(&key) {
            Some(found) => found,
            None => self.fetch_one(Side::Source, ns, k).await?,
        };
        let Some(found) = found else {
            self.deleted.insert(key.clone());
            self.cache.insert(key, None);
            return Ok(());
        };
        tracing::info!(%ns, %ts, "update target missing or undecodable on the destination; wrote the source's current version");
        self.write_whole(ns, ts, k, &found, true, &key).await?;
        self.cached(key, Some(found));
        Ok(())
    }

    fn cached(&mut self, key: Key, doc: Option<RawDocumentBuf>) {
        self.deleted.remove(&key);
        self.cache.insert(key.clone(), doc);
        self.dirty.insert(key);
    }

    /// Writes `doc` as the whole document at `k`: an upserting replacement; or, when it has a top-level
    /// `$`-prefixed field, which no replacement accepts on MongoDB 5.0-8.0, a delete by `k` then an
    /// insert. Both statements sit back to back in this key's partition, so no other write of the key
    /// comes between them; a crash in between leaves the key missing until the entry is replayed from
    /// the checkpoint: `i`/replacement entries rewrite it, and a `$v:2` entry finds it missing and takes
    /// the source's current version (see `recover`).
    async fn write_whole(
        &mut self,
        ns: &str,
        ts: OpTime,
        k: &RawDocument,
        doc: &RawDocument,
        tolerant: bool,
        key: &Key,
    ) -> Result<(), EngineError> {
        if has_top_level_dollar(doc) {
            let del = Builder::new().doc("q", k).int32("limit", 1).build();
            self.push(ns, Kind::Delete, ts, tolerant, key, del).await?;
            self.push(ns, Kind::Insert, ts, tolerant, key, doc.to_owned())
                .await
        } else {
            let stmt = Builder::new()
                .doc("q", k)
                .doc("u", doc)
                .boolean("upsert", true)
                .build();
            self.push(ns, Kind::Update, ts, tolerant, key, stmt).await
        }
    }

    /// Loads the current destination documents of every `$v:2` target in one query per namespace, and
    /// the source documents of those missing on the destination (see `recover`).
    async fn prefetch(&mut self, ops: &[(OpTime, Op)]) -> Result<(), EngineError> {
        let mut by_ns: HashMap<String, Vec<Element<'_>>> = HashMap::new();
        let mut seen: HashSet<Key> = HashSet::new();
        for (_, op) in ops {
            if let Op::UpdateDiff { ns, .. } = op {
                if let Some(id) = id_of(op) {
                    if seen.insert((ns.clone(), raw::value_key(&id))) {
                        by_ns.entry(ns.clone()).or_default().push(id);
                    }
                }
            }
        }
        for (ns, ids) in by_ns {
            for chunk in ids.chunks(PREFETCH_IDS) {
                let found = self.find_ids(Side::Destination, &ns, chunk).await?;
                let mut missing = Vec::new();
                for id in chunk {
                    let key = (ns.clone(), raw::value_key(id));
                    if !found.contains_key(&key.1) {
                        missing.push(*id);
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
                    let k = raw::value_key(&id);
                    let d = from_source.remove(&k);
                    self.recovered.insert((ns.clone(), k), d);
                }
            }
        }
        Ok(())
    }

    /// The documents of `ns` matching `filter` on one side, raw, by `_id` key.
    async fn find_raw(
        &self,
        side: Side,
        ns: &str,
        filter: RawDocumentBuf,
    ) -> Result<HashMap<Vec<u8>, RawDocumentBuf>, EngineError> {
        let (db, name) = split_ns(ns);
        let client = match side {
            Side::Source => &self.ctx.src,
            Side::Destination => &self.ctx.dst,
        };
        let database = client.database(db);
        let cmd = Builder::new()
            .string("find", name)
            .doc("filter", &filter)
            .build();
        let found = mongo::retry(self.ctx.policy(), side, "prefetch", || async {
            database
                .run_raw_cursor_command(cmd.clone())
                .await?
                .with_type::<RawDocumentBuf>()
                .try_collect::<Vec<RawDocumentBuf>>()
                .await
        })
        .await
        .map_err(|e| e.into_engine("find", ns))?
        .unwrap_or_default();
        Ok(found
            .into_iter()
            .filter_map(|d| Some((raw::value_key(&raw::field(&d, "_id")?), d)))
            .collect())
    }

    async fn find_ids(
        &self,
        side: Side,
        ns: &str,
        ids: &[Element<'_>],
    ) -> Result<HashMap<Vec<u8>, RawDocumentBuf>, EngineError> {
        let in_ = Builder::new().array_of_elements("$in", ids).build();
        let filter = Builder::new().doc("_id", &in_).build();
        self.find_raw(side, ns, filter).await
    }

    async fn fetch_one(
        &self,
        side: Side,
        ns: &str,
        key: &RawDocument,
    ) -> Result<Option<RawDocumentBuf>, EngineError> {
        Ok(self
            .find_raw(side, ns, key.to_owned())
            .await?
            .into_values()
            .next())
    }

    async fn push(
        &mut self,
        ns: &str,
        kind: Kind,
        ts: OpTime,
        tolerant: bool,
        key: &Key,
        body: RawDocumentBuf,
    ) -> Result<(), EngineError> {
        let size = body.as_bytes().len();
        if !self.stmts.is_empty()
            && (self.pending_ns != ns
                || self.pending_kind != kind
                || self.stmts.len() >= STMTS_PER_COMMAND
                || self.stmt_bytes + size > STMT_BYTES_PER_COMMAND)
        {
            self.flush().await?;
        }
        if self.stmts.is_empty() {
            self.pending_ns = ns.to_string();
            self.pending_kind = kind;
        }
        self.stmt_bytes += size;
        self.stmts.push(Stmt {
            body,
            ts,
            tolerant,
            key: key.clone(),
        });
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), EngineError> {
        if self.stmts.is_empty() {
            return Ok(());
        }
        let stmts = std::mem::take(&mut self.stmts);
        self.stmt_bytes = 0;
        self.dirty.clear();
        let ns = self.pending_ns.clone();
        let (db, coll) = split_ns(&ns);
        let mut start = 0usize;
        while start < stmts.len() {
            let bodies: Vec<&RawDocument> = stmts[start..].iter().map(|s| &*s.body).collect();
            let mut cmd = Builder::new();
            match self.pending_kind {
                Kind::Update => cmd
                    .string("update", coll)
                    .array_of_docs("updates", &bodies)
                    .boolean("ordered", true)
                    .boolean("bypassDocumentValidation", true),
                Kind::Delete => cmd
                    .string("delete", coll)
                    .array_of_docs("deletes", &bodies)
                    .boolean("ordered", true),
                Kind::Insert => cmd
                    .string("insert", coll)
                    .array_of_docs("documents", &bodies)
                    .boolean("ordered", true)
                    .boolean("bypassDocumentValidation", true),
            };
            let reply = self
                .ctx
                .dst_raw_command(db, cmd.build())
                .await
                .map_err(|e| e.into_engine("apply oplog batch", &ns))?;
            let Some(reply) = reply else { return Ok(()) };
            let Some((idx, code, errmsg)) = first_write_error(&reply) else {
                break;
            };
            let Some(stmt) = stmts.get(start + idx) else {
                return Err(EngineError::Apply {
                    ts: "?".into(),
                    namespace: ns.clone(),
                    detail: format!("write error {code} at an unknown statement: {errmsg}"),
                });
            };
            if code == 11000 && (stmt.ts <= self.copy_end || stmt.tolerant) {
                // Inside the copy window the copy may already hold a later state (initial sync ignores
                // these too); a recovered source document may collide with a value the destination
                // still holds at this point. Later entries of the key rewrite it. What this worker
                // believed about the key is void: the next op of the key reads the destination again.
                tracing::debug!(%ns, ts = %stmt.ts, "duplicate key while replaying; statement skipped");
                self.cache.remove(&stmt.key);
                self.deleted.remove(&stmt.key);
                self.recovered.remove(&stmt.key);
                start += idx + 1;
                continue;
            }
            return Err(EngineError::Apply {
                ts: stmt.ts.to_string(),
                namespace: ns.clone(),
                detail: format!("write error {code}: {errmsg}"),
            });
        }
        Ok(())
    }
}

/// `current` with `diff` applied, raw; `Ok(None)` when either cannot be decoded (invalid UTF-8).
fn diffed(
    current: &RawDocument,
    diff: &RawDocument,
) -> Result<Option<RawDocumentBuf>, crate::diff::DiffError> {
    let (Ok(cur), Ok(d)) = (Document::try_from(current), Document::try_from(diff)) else {
        return Ok(None);
    };
    let new = apply_diff(&cur, &d)?;
    Ok(RawDocumentBuf::try_from(&new).ok())
}

/// Index, code and message of the first write error of a write command's reply.
fn first_write_error(reply: &Document) -> Option<(usize, i32, String)> {
    let we = reply
        .get_array("writeErrors")
        .ok()?
        .iter()
        .filter_map(Bson::as_document)
        .next()?;
    let idx = match we.get("index") {
        Some(Bson::Int32(i)) => usize::try_from(*i).unwrap_or(0),
        Some(Bson::Int64(i)) => usize::try_from(*i).unwrap_or(0),
        _ => 0,
    };
    let code = match we.get("code") {
        Some(Bson::Int32(c)) => *c,
        Some(Bson::Int64(c)) => i32::try_from(*c).unwrap_or(0),
        _ => 0,
    };
    Some((idx, code, we.get_str("errmsg").unwrap_or("").to_string()))
}
