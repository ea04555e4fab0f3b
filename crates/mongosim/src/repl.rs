//! Replication-level behaviour of the primary: `applyOps` chains (transactions and batched
//! writes), the majority commit point with simulated rollback, and the TTL monitor's pass.
//!
//! Owns the shapes of those oplog entries, each traced to the server source in a comment. It
//! must not parse commands or touch the network; like `store` it runs under the state lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};

use crate::error::CmdResult;
use crate::oplog::ts_key;
use crate::rawbuf::RawWriter;
use crate::store::{MajorityHold, OrdBson, Store};

/// `BSONObjMaxUserSize`: the packing limit of one `applyOps` entry of a transaction
/// (`maxSizeOfTransactionOperationsInSingleOplogEntryBytes`).
pub const APPLY_OPS_SIZE_LIMIT: usize = 16 * 1024 * 1024;

/// `TransactionOperations::ApplyOpsInfo::kBSONArrayElementOverhead`.
const ARRAY_ELEMENT_OVERHEAD: usize = 8;

/// Stand-in for `sizeof(DurableReplOperation) + sizeof(std::vector<StmtId>)`, the fixed part of
/// `DurableOplogEntry::getDurableReplOperationSize` (a C++ object size: an estimate here).
const DURABLE_OP_FIXED: usize = 256;

/// `batchedDeletesTargetBatchDocs` default (mongodb/mongo
/// `src/mongo/db/exec/batched_delete_stage.idl`; jstests/noPassthrough/batched_multi_deletes.js
/// "docsPerBatchDefault = 100").
pub const BATCHED_DELETE_DOCS: usize = 100;

/// `batchedDeletesTargetStagedDocBytes` default (30 MiB).
pub const BATCHED_DELETE_BYTES: usize = 30 * 1024 * 1024;

/// The session fields of a transaction's entries.
pub struct TxnSession<'a> {
    /// `lsid` as the server logs it (`{id, uid}`).
    pub lsid: &'a Document,
    /// `txnNumber`.
    pub txn_number: i64,
}

fn durable_size(op: &RawDocumentBuf) -> usize {
    let ns = op.get_str("ns").map_or(0, str::len);
    let o = op.get_document("o").map_or(0, |d| d.as_bytes().len());
    let o2 = op.get_document("o2").map_or(0, |d| d.as_bytes().len());
    DURABLE_OP_FIXED + ns + o + o2
}

/// Splits operations into `applyOps` entries like `packOperationsIntoApplyOps`
/// (mongodb/mongo `src/mongo/db/transaction/transaction_operations.cpp`): an operation starts
/// a new entry when the entry already holds one and its serialized size plus the operation's
/// durable size would exceed 16 MB.
pub fn pack(ops: Vec<RawDocumentBuf>) -> Vec<Vec<RawDocumentBuf>> {
    let mut out: Vec<Vec<RawDocumentBuf>> = Vec::new();
    let mut cur: Vec<RawDocumentBuf> = Vec::new();
    let mut total = 0usize;
    for op in ops {
        if !cur.is_empty() && total + durable_size(&op) > APPLY_OPS_SIZE_LIMIT {
            out.push(std::mem::take(&mut cur));
            total = 0;
        }
        total += op.as_bytes().len() + ARRAY_ELEMENT_OVERHEAD;
        cur.push(op);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn optime_doc(w: &mut RawWriter, key: &str, ts: Timestamp, t: i64) {
    let at = w.begin_sub(0x03, key);
    w.timestamp("ts", ts);
    w.i64("t", t);
    w.end_sub(at);
}

impl Store {
    /// Logs `ops` as `applyOps` entries on `admin.$cmd`, all with one wall clock.
    ///
    /// With a session (a committed unprepared transaction,
    /// `TransactionOperations::logOplogEntries` in `transaction_operations.cpp` and
    /// `OpObserverImpl::onUnpreparedTransactionCommit` in
    /// `src/mongo/db/op_observer/op_observer_impl.cpp`): every entry carries `lsid`,
    /// `txnNumber` and `prevOpTime` (the first `{ts: Timestamp(0, 0), t: -1}`, then the previous
    /// entry's optime); all but the last have `o.partialTxn: true`; the last of a chain of
    /// several has `o.count` (Int64, the number of operations) and no `partialTxn`.
    ///
    /// Without a session (a batched write, `OpObserverImpl::onBatchedWriteCommit`): one entry
    /// with neither `lsid` nor `prevOpTime` ("Remove 'prevOpTime' when replicating as a single
    /// applyOps oplog entry").
    ///
    /// Returns the optime of the last entry (`None` when there was nothing to log).
    pub fn log_apply_ops(
        &mut self,
        ops: Vec<RawDocumentBuf>,
        session: Option<TxnSession<'_>>,
    ) -> Option<Timestamp> {
        if ops.is_empty() || self.oplog.is_none() {
            return None;
        }
        let total = ops.len() as i64;
        let chunks = match session {
            Some(_) => pack(ops),
            None => vec![ops],
        };
        let n = chunks.len();
        let wall = bson::DateTime::now().timestamp_millis();
        let mut prev: Option<Timestamp> = None;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let first = i == 0;
            let last = i + 1 == n;
            let ts = self.clock.tick();
            let term = self.term;
            let cap = chunk.iter().map(|o| o.as_bytes().len() + 8).sum::<usize>() + 256;
            let session = session.as_ref();
            self.append_entry_with(
                cap,
                |w| {
                    if let Some(s) = session {
                        w.value("lsid", &Bson::Document(s.lsid.clone()));
                        w.i64("txnNumber", s.txn_number);
                    }
                    w.str("op", "c");
                    w.str("ns", "admin.$cmd");
                    let o = w.begin_sub(0x03, "o");
                    let arr = w.begin_sub(0x04, "applyOps");
                    for (k, op) in chunk.iter().enumerate() {
                        w.indexed_doc_bytes(k, op.as_bytes());
                    }
                    w.end_sub(arr);
                    if session.is_some() {
                        if !last {
                            w.value("partialTxn", &Bson::Boolean(true));
                        }
                        if last && !first {
                            w.i64("count", total);
                        }
                    }
                    w.end_sub(o);
                },
                |w| {
                    if session.is_some() {
                        match prev {
                            None => optime_doc(
                                w,
                                "prevOpTime",
                                Timestamp {
                                    time: 0,
                                    increment: 0,
                                },
                                -1,
                            ),
                            Some(p) => optime_doc(w, "prevOpTime", p, term),
                        }
                    }
                },
                ts,
                wall,
            );
            prev = Some(ts);
        }
        prev
    }

    /// The majority commit point: `(optime, term, wall ms)`; the newest optime unless held.
    pub fn majority_point(&self) -> (Timestamp, i64, i64) {
        match &self.majority_hold {
            Some(h) => (h.ts, h.term, h.wall_ms),
            None => (self.optime(), self.term, self.last_write_ms),
        }
    }

    /// Freezes the majority point at the current optime, keeping the data as it is now.
    pub fn hold_majority(&mut self) {
        if self.majority_hold.is_none() {
            self.majority_hold = Some(MajorityHold {
                ts: self.optime(),
                term: self.term,
                wall_ms: self.last_write_ms,
                dbs: self.dbs.clone(),
            });
        }
    }

    /// Lets the majority point follow the newest optime again.
    pub fn release_majority(&mut self) {
        self.majority_hold = None;
    }

    /// A failover with rollback: entries after the majority point disappear with their data
    /// effects, the rollback id and the term go up and the new primary writes
    /// `{msg: "new primary"}`. Returns the number of entries rolled back (0 when the majority
    /// point was not held, or nothing was written past it: nothing can be lost then, but the
    /// failover still happens).
    ///
    /// The rollback id only goes up when entries were rolled back: a server increments it in
    /// the rollback itself (`RollbackImpl::_runPhaseFromAbortToReconstructPreparedTxns` calls
    /// `ReplicationProcess::incrementRollbackID`, mongodb/mongo
    /// `src/mongo/db/repl/rollback_impl.cpp`), which a member whose oplog is a prefix of the
    /// new primary's never enters.
    pub fn rollback_to_majority(&mut self) -> usize {
        let mut rolled = 0;
        if let Some(h) = self.majority_hold.take() {
            if let Some(o) = self.oplog.as_mut() {
                rolled = o.truncate_after(ts_key(h.ts));
            }
            if rolled > 0 {
                self.dbs = h.dbs;
                self.last_write_ms = h.wall_ms;
                self.rbid += 1;
            }
        }
        self.txn_locks.clear();
        self.term += 1;
        self.log_noop(doc! {"msg": "new primary"});
        rolled
    }

    /// One pass of the TTL monitor at `now_ms`; returns the number of documents deleted.
    ///
    /// Follows `TTLMonitor::_deleteExpiredWithIndex` (mongodb/mongo `src/mongo/db/ttl.cpp`):
    /// for every single-field index with a numeric `expireAfterSeconds` (read from the index
    /// spec at each pass, so a collMod change applies), documents whose indexed value is a
    /// date `<= now - expireAfterSeconds` (an array matches through its earliest date, as the
    /// multikey index scan does) are deleted in index order, skipping capped collections and
    /// views. Since 6.1 the deletes are batched (`ttlMonitorBatchDeletes`): each batch of up
    /// to 100 documents is one `applyOps` entry without `lsid` holding `d` operations
    /// (`OpObserverImpl::onBatchedWriteCommit`, `batched_delete_stage.cpp`). Documents written
    /// by an open transaction are skipped (a real TTL delete hits a write conflict on them).
    pub fn ttl_pass(&mut self, now_ms: i64) -> usize {
        struct Job {
            db: String,
            coll: String,
            ids: Vec<Bson>,
        }
        let mut jobs = Vec::new();
        for (db, colls) in &self.dbs {
            if db == "local" {
                continue;
            }
            for (name, c) in colls {
                if c.is_view() || c.is_capped() || c.docs.is_empty() {
                    continue;
                }
                for idx in &c.indexes {
                    if idx.is_id() || idx.key.len() != 1 {
                        continue;
                    }
                    let Some(eas) = idx
                        .spec
                        .get("expireAfterSeconds")
                        .filter(|v| matches!(v, Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_)))
                        .and_then(crate::value::as_f64)
                        .filter(|f| f.is_finite())
                    else {
                        continue;
                    };
                    let Some((field, dir)) = idx.key.iter().next() else {
                        continue;
                    };
                    let ascending = crate::value::as_f64(dir).unwrap_or(1.0) >= 0.0;
                    let expiry = now_ms.saturating_sub((eas * 1000.0) as i64);
                    let partial = idx.spec.get_document("partialFilterExpression").ok();
                    let mut hits: Vec<(i64, Bson)> = Vec::new();
                    for (id, raw) in &c.docs {
                        let Some(date) = earliest_date(raw, field) else {
                            continue;
                        };
                        if date > expiry {
                            continue;
                        }
                        if let Some(p) = partial {
                            let d = crate::commands::query::decode(raw).unwrap_or_default();
                            if !crate::filter::matches(&d, p).unwrap_or(false) {
                                continue;
                            }
                        }
                        let key = (format!("{db}.{name}"), id.clone());
                        if self.txn_locks.contains_key(&key) {
                            continue;
                        }
                        hits.push((date, id.0.clone()));
                    }
                    hits.sort_by(|a, b| {
                        let o = a.0.cmp(&b.0);
                        if ascending {
                            o
                        } else {
                            o.reverse()
                        }
                    });
                    jobs.push(Job {
                        db: db.clone(),
                        coll: name.clone(),
                        ids: hits.into_iter().map(|(_, id)| id).collect(),
                    });
                }
            }
        }
        let mut deleted = 0;
        for job in jobs {
            let mut batch: Vec<Bson> = Vec::new();
            let mut bytes = 0usize;
            let mut ids = job.ids.into_iter().peekable();
            while let Some(id) = ids.next() {
                let size = self
                    .coll(&job.db, &job.coll)
                    .and_then(|c| c.docs.get(&OrdBson(id.clone())))
                    .map(|d| d.as_bytes().len());
                let Some(size) = size else {
                    continue;
                };
                bytes += size;
                batch.push(id);
                if batch.len() >= BATCHED_DELETE_DOCS
                    || bytes >= BATCHED_DELETE_BYTES
                    || ids.peek().is_none()
                {
                    deleted += self.batched_delete(&job.db, &job.coll, std::mem::take(&mut batch));
                    bytes = 0;
                }
            }
            if !batch.is_empty() {
                deleted += self.batched_delete(&job.db, &job.coll, batch);
            }
        }
        deleted
    }

    /// Deletes `ids` as one batch: the `d` operations go into one `applyOps` entry.
    fn batched_delete(&mut self, db: &str, coll: &str, ids: Vec<Bson>) -> usize {
        let outer = self.capture.replace(Vec::new());
        let mut n = 0;
        for id in &ids {
            if matches!(self.delete(db, coll, id), Ok(true)) {
                n += 1;
            }
        }
        let ops = std::mem::replace(&mut self.capture, outer).unwrap_or_default();
        match self.capture.as_mut() {
            // Already inside a capture (never the case for the monitor): pass the ops up.
            Some(outer_ops) => outer_ops.extend(ops),
            None => {
                self.log_apply_ops(ops, None);
            }
        }
        n
    }

    /// Upserts `config.transactions` for a committed transaction without logging it (the
    /// primary's session-table write is not an oplog entry of its own; secondaries derive it
    /// from the `applyOps`): `{_id: lsid, txnNum, lastWriteOpTime, lastWriteDate, state}`
    /// (mongodb/mongo `src/mongo/db/session/session_txn_record.idl`).
    pub fn record_committed_txn(&mut self, lsid: &Document, txn_number: i64, ts: Timestamp) {
        let outer = self.capture.replace(Vec::new());
        let d = doc! {
            "_id": lsid.clone(),
            "txnNum": txn_number,
            "lastWriteOpTime": {"ts": ts, "t": self.term},
            "lastWriteDate": bson::DateTime::from_millis(self.last_write_ms),
            "state": "committed",
        };
        let result: CmdResult<()> = (|| {
            if self.coll("config", "transactions").is_none() {
                self.create_collection("config", "transactions", Document::new())?;
            }
            let id = Bson::Document(lsid.clone());
            self.delete("config", "transactions", &id)?;
            let raw = RawDocumentBuf::try_from(&d)
                .map_err(|e| crate::error::CommandError::new(22, e.to_string()))?;
            self.insert("config", "transactions", raw)
        })();
        if let Err(error) = result {
            tracing::warn!(%error, "could not record the transaction in config.transactions");
        }
        self.capture = outer;
    }

    /// Replaces whole collections (a transaction's commit), without logging.
    pub(crate) fn put_collections(
        &mut self,
        colls: BTreeMap<(String, String), crate::store::Collection>,
    ) {
        for ((db, name), c) in colls {
            self.dbs.entry(db).or_default().insert(name, c);
        }
    }
}

/// The earliest date of the value at `path` (a date, or the dates of an array).
fn earliest_date(raw: &Arc<RawDocumentBuf>, path: &str) -> Option<i64> {
    let mut v = Bson::Document(crate::commands::query::decode(raw).ok()?);
    for part in path.split('.') {
        v = match v {
            Bson::Document(mut d) => d.remove(part)?,
            _ => return None,
        };
    }
    match v {
        Bson::DateTime(d) => Some(d.timestamp_millis()),
        Bson::Array(items) => items
            .iter()
            .filter_map(|i| match i {
                Bson::DateTime(d) => Some(d.timestamp_millis()),
                _ => None,
            })
            .min(),
        _ => None,
    }
}
