//! Multi-document transactions: sessions, `startTransaction`/`autocommit: false` statements,
//! `commitTransaction` and `abortTransaction`.
//!
//! Each open transaction works on a private copy of the collections it touches (taken at its
//! first access to each, which is its snapshot), whose writes are captured as `applyOps` inner
//! operations instead of oplog entries. A document the transaction writes is locked: another
//! transaction writing it, or a document that changed since the snapshot, aborts the writer
//! with WriteConflict (112, `TransientTransactionError`); a non-transactional write of a
//! locked document fails with WriteConflict too (a real server makes it wait). At commit the
//! written documents replace the committed ones in one step under the state lock and the
//! transaction is logged as `applyOps` (see `repl::log_apply_ops`); an abort logs nothing.
//! It must not hold the session table and the store lock at the same time.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bson::{doc, spec::BinarySubtype, Binary, Bson, Document, RawDocumentBuf};
use sha2::{Digest, Sha256};

use crate::commands::{Cmd, ConnState, Reply};
use crate::error::{CmdResult, CommandError};
use crate::repl::TxnSession;
use crate::server::Shared;
use crate::store::{OrdBson, Store, Topology};

type Snapshot = Option<BTreeMap<OrdBson, Arc<RawDocumentBuf>>>;

/// One open transaction.
pub struct Txn {
    number: i64,
    key: [u8; 16],
    /// `lsid` as logged: `{id, uid}`.
    lsid: Document,
    /// The transaction's copy of the collections it touched; writes are captured.
    shadow: Store,
    /// Documents of each touched collection at the transaction's first access (`None`: the
    /// collection did not exist).
    snapshots: BTreeMap<(String, String), Snapshot>,
    /// Documents written, in first-write order.
    written: Vec<(String, String, Bson)>,
    written_set: BTreeSet<(String, OrdBson)>,
    /// Captured operations already checked for conflicts.
    checked: usize,
}

#[derive(Default)]
struct Session {
    active: Option<Box<Txn>>,
    /// Highest txnNumber seen and what became of it.
    last_number: i64,
    last_outcome: Option<Outcome>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    InProgress,
    Committed,
    Aborted,
}

/// The sessions of one server.
#[derive(Default)]
pub struct Sessions {
    map: HashMap<[u8; 16], Session>,
}

thread_local! {
    /// The transaction of the command running on this thread (set only around synchronous
    /// handlers, so it never crosses an `.await`).
    static CURRENT: RefCell<Option<Box<Txn>>> = const { RefCell::new(None) };
}

/// Runs `f` on the current transaction's data when a transactional command is running on
/// this thread; gives `f` back otherwise.
pub(crate) fn with_current<T, F: FnOnce(&mut Store) -> T>(f: F) -> Result<T, F> {
    CURRENT.with(|c| match c.borrow_mut().as_mut() {
        Some(t) => Ok(f(&mut t.shadow)),
        None => Err(f),
    })
}

fn transient(mut e: CommandError) -> CommandError {
    let mut extra = e.extra.take().map(|b| *b).unwrap_or_default();
    extra.insert("errorLabels", vec!["TransientTransactionError"]);
    e.with_extra(extra)
}

fn no_such_transaction(n: i64, detail: &str) -> CommandError {
    transient(CommandError::new(
        251,
        format!("Transaction with {{ txnNumber: {n} }} {detail}"),
    ))
}

fn write_conflict() -> CommandError {
    transient(CommandError::new(
        112,
        "Write conflict during plan execution and yielding is disabled. :: Please retry your operation or multi-document transaction.",
    ))
}

fn session_key(cmd: &Cmd) -> CmdResult<[u8; 16]> {
    let lsid = cmd
        .body
        .get_document("lsid")
        .map_err(|_| CommandError::new(50768, "Transactions require a logical session id"))?;
    match lsid.get("id") {
        Some(Bson::Binary(b)) if b.bytes.len() == 16 => {
            let mut k = [0u8; 16];
            k.copy_from_slice(&b.bytes);
            Ok(k)
        }
        _ => Err(CommandError::bad_value("lsid.id must be a UUID")),
    }
}

fn txn_number(cmd: &Cmd) -> CmdResult<i64> {
    match cmd.body.get("txnNumber") {
        Some(Bson::Int64(n)) => Ok(*n),
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        _ => Err(CommandError::new(
            72,
            "'autocommit' field requires a transaction number to also be specified",
        )),
    }
}

/// The logged `lsid`: `{id, uid}` with `uid` = SHA-256 of "user@db", or of the empty string
/// without auth (`kNoAuthDigest`, mongodb/mongo `src/mongo/db/session/logical_session_id_helpers.cpp`).
fn logged_lsid(key: [u8; 16], user: Option<&str>) -> Document {
    let name = user.map(|u| format!("{u}@admin")).unwrap_or_default();
    let uid = Sha256::digest(name.as_bytes()).to_vec();
    doc! {
        "id": Binary { subtype: BinarySubtype::Uuid, bytes: key.to_vec() },
        "uid": Binary { subtype: BinarySubtype::Generic, bytes: uid },
    }
}

fn sessions<T>(shared: &Shared, f: impl FnOnce(&mut Sessions) -> T) -> T {
    let mut guard = match shared.sessions.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    f(&mut guard)
}

/// Releases the document locks of transaction `key`.
fn unlock(store: &mut Store, key: [u8; 16]) {
    if !store.txn_locks.is_empty() {
        store.txn_locks.retain(|_, v| *v != key);
    }
}

fn abort_txn(shared: &Shared, txn: Box<Txn>) {
    shared.with_store(|s| unlock(s, txn.key));
    sessions(shared, |m| {
        let s = m.map.entry(txn.key).or_default();
        if s.last_number == txn.number {
            s.last_outcome = Some(Outcome::Aborted);
        }
    });
}

/// The commands a transaction may run (the rest get 263).
fn allowed(name: &str) -> bool {
    matches!(
        name,
        "find"
            | "insert"
            | "update"
            | "delete"
            | "findAndModify"
            | "findandmodify"
            | "aggregate"
            | "distinct"
            | "getMore"
            | "killCursors"
    )
}

/// A transactional command in progress.
pub(crate) struct Running {
    key: [u8; 16],
}

/// Prepares a command that carries `autocommit: false`: starts or resumes its transaction
/// and makes its data current on this thread. `None` for ordinary commands and for
/// `commitTransaction`/`abortTransaction` (handled by [`commit`] and [`abort`]).
pub(crate) fn begin_command(
    shared: &Shared,
    conn: &ConnState,
    cmd: &Cmd,
) -> CmdResult<Option<Running>> {
    let Some(autocommit) = cmd.body.get("autocommit") else {
        return Ok(None);
    };
    if matches!(cmd.name.as_str(), "commitTransaction" | "abortTransaction") {
        return Ok(None);
    }
    if !matches!(autocommit, Bson::Boolean(false)) {
        return Err(CommandError::new(
            72,
            "autocommit field must be false if specified",
        ));
    }
    if !shared.is_replset() {
        return Err(CommandError::new(
            20,
            "Transaction numbers are only allowed on a replica set member or mongos",
        ));
    }
    let key = session_key(cmd)?;
    let number = txn_number(cmd)?;
    if !allowed(&cmd.name) {
        return Err(CommandError::new(
            263,
            format!("Cannot run '{}' in a multi-document transaction.", cmd.name),
        ));
    }
    if matches!(cmd.db.as_str(), "local" | "config" | "admin") {
        return Err(CommandError::new(
            263,
            format!(
                "Cannot run command against the '{}' database in a transaction.",
                cmd.db
            ),
        ));
    }
    let start = crate::value::truthy(cmd.body.get("startTransaction"));
    let (txn, replaced) = sessions(shared, |m| -> CmdResult<_> {
        let s = m.map.entry(key).or_default();
        if start {
            if number < s.last_number {
                return Err(CommandError::new(
                    225,
                    format!(
                        "Cannot start transaction {number} on session because a newer transaction {} has already started.",
                        s.last_number
                    ),
                ));
            }
            if number == s.last_number && s.last_outcome.is_some() {
                return Err(CommandError::new(
                    251,
                    format!("Transaction with {{ txnNumber: {number} }} has already been started"),
                ));
            }
            let replaced = s.active.take();
            let mut shadow = Store::new(Topology::Standalone, 0);
            shadow.capture = Some(Vec::new());
            s.last_number = number;
            s.last_outcome = Some(Outcome::InProgress);
            Ok((
                Box::new(Txn {
                    number,
                    key,
                    lsid: logged_lsid(key, conn.user.as_deref()),
                    shadow,
                    snapshots: BTreeMap::new(),
                    written: Vec::new(),
                    written_set: BTreeSet::new(),
                    checked: 0,
                }),
                replaced,
            ))
        } else {
            match s.active.take() {
                Some(t) if t.number == number => Ok((t, None)),
                other => {
                    s.active = other;
                    let detail =
                        if number == s.last_number && s.last_outcome == Some(Outcome::Committed) {
                            "has been committed."
                        } else if number == s.last_number {
                            "has been aborted."
                        } else {
                            "does not match any in-progress transactions."
                        };
                    Err(no_such_transaction(number, detail))
                }
            }
        }
    })?;
    if let Some(old) = replaced {
        shared.with_store(|s| unlock(s, old.key));
    }
    let mut txn = txn;
    if matches!(cmd.name.as_str(), "getMore" | "killCursors") {
        // Cursors hold materialised results: nothing to route.
        put_back(shared, txn);
        return Ok(None);
    }
    {
        let coll = cmd.collection()?;
        let is_write = !matches!(cmd.name.as_str(), "find" | "aggregate" | "distinct");
        let prepared = shared.with_store(|real| -> CmdResult<()> {
            let k = (cmd.db.clone(), coll.clone());
            if let Some(c) = real.coll(&cmd.db, &coll) {
                if c.is_capped() && is_write {
                    return Err(CommandError::new(
                        263,
                        format!("Collection '{}.{coll}' is a capped collection. Writes in transactions are not allowed on capped collections.", cmd.db),
                    ));
                }
            }
            if !txn.snapshots.contains_key(&k) {
                let snap = real.coll(&cmd.db, &coll).map(|c| c.docs.clone());
                if let Some(c) = real.coll(&cmd.db, &coll) {
                    txn.shadow
                        .dbs
                        .entry(cmd.db.clone())
                        .or_default()
                        .insert(coll.clone(), c.clone());
                }
                txn.snapshots.insert(k, snap);
            }
            Ok(())
        });
        if let Err(e) = prepared {
            put_back(shared, txn);
            return Err(e);
        }
    }
    CURRENT.with(|c| *c.borrow_mut() = Some(txn));
    Ok(Some(Running { key }))
}

fn put_back(shared: &Shared, txn: Box<Txn>) {
    sessions(shared, |m| {
        let s = m.map.entry(txn.key).or_default();
        if s.last_number == txn.number {
            s.active = Some(txn);
        }
    });
}

/// Ends a transactional command: checks its writes for conflicts, locks the written
/// documents and keeps the transaction open, or aborts it on an error (as the server does).
pub(crate) fn end_command(
    shared: &Shared,
    running: Running,
    result: CmdResult<Reply>,
) -> CmdResult<Reply> {
    let Some(mut txn) = CURRENT.with(|c| c.borrow_mut().take()) else {
        return result;
    };
    debug_assert_eq!(txn.key, running.key);
    let failed = match &result {
        Err(_) => true,
        Ok(Reply::Doc(d)) => d.contains_key("writeErrors"),
        Ok(Reply::Cursor(_)) => false,
    };
    if failed {
        abort_txn(shared, txn);
        return result.map_err(|e| match e.code {
            112 | 251 => transient(e),
            _ => e,
        });
    }
    // New writes of this command: (db, coll, _id).
    let mut fresh = Vec::new();
    if let Some(ops) = txn.shadow.capture.as_ref() {
        for op in ops.iter().skip(txn.checked) {
            let kind = op.get_str("op").unwrap_or("");
            let key_doc = match kind {
                "i" | "u" => op.get_document("o2").ok(),
                "d" => op.get_document("o").ok(),
                _ => None,
            };
            let (Some(k), Ok(ns)) = (key_doc, op.get_str("ns")) else {
                continue;
            };
            let Some((db, coll)) = ns.split_once('.') else {
                continue;
            };
            let id = match k.get("_id") {
                Ok(Some(v)) => Bson::try_from(v).unwrap_or(Bson::Null),
                _ => continue,
            };
            fresh.push((db.to_string(), coll.to_string(), id));
        }
        txn.checked = ops.len();
    }
    let key = txn.key;
    let conflict = shared.with_store(|real| {
        for (db, coll, id) in &fresh {
            let ns = format!("{db}.{coll}");
            let lk = (ns, OrdBson(id.clone()));
            if let Some(owner) = real.txn_locks.get(&lk) {
                if *owner != key {
                    return true;
                }
                continue;
            }
            let snap = txn
                .snapshots
                .get(&(db.clone(), coll.clone()))
                .and_then(|s| s.as_ref())
                .and_then(|m| m.get(&lk.1));
            let now = real.coll(db, coll).and_then(|c| c.docs.get(&lk.1));
            let same = match (snap, now) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if !same {
                return true;
            }
        }
        for (db, coll, id) in &fresh {
            real.txn_locks
                .insert((format!("{db}.{coll}"), OrdBson(id.clone())), key);
        }
        false
    });
    if conflict {
        abort_txn(shared, txn);
        return Err(write_conflict());
    }
    for (db, coll, id) in fresh {
        if txn
            .written_set
            .insert((format!("{db}.{coll}"), OrdBson(id.clone())))
        {
            txn.written.push((db, coll, id));
        }
    }
    put_back(shared, txn);
    result
}

/// The session key, the txnNumber and the open transaction (or what became of it).
type Ending = ([u8; 16], i64, Result<Box<Txn>, Outcome>);

fn take_for_end(shared: &Shared, cmd: &Cmd) -> CmdResult<Ending> {
    let key = session_key(cmd)?;
    let number = txn_number(cmd)?;
    let r = sessions(shared, |m| {
        let s = m.map.entry(key).or_default();
        match s.active.take() {
            Some(t) if t.number == number => Ok(t),
            other => {
                s.active = other;
                Err(if s.last_number == number {
                    s.last_outcome.unwrap_or(Outcome::Aborted)
                } else {
                    Outcome::Aborted
                })
            }
        }
    });
    Ok((key, number, r))
}

/// `commitTransaction` (admin).
pub(crate) fn commit(shared: &Shared, cmd: &Cmd) -> CmdResult<Reply> {
    let (key, number, taken) = take_for_end(shared, cmd)?;
    let mut txn = match taken {
        Ok(t) => t,
        // Committing again is allowed (retried commits).
        Err(Outcome::Committed) => return Ok(Reply::Doc(doc! {"ok": 1.0})),
        Err(_) => return Err(no_such_transaction(number, "has been aborted.")),
    };
    let ops = txn.shadow.capture.take().unwrap_or_default();
    let lsid = txn.lsid.clone();
    let applied = shared.with_store(|real| -> CmdResult<()> {
        unlock(real, key);
        if ops.is_empty() {
            return Ok(());
        }
        // Build the committed collections aside, then swap them in: all or nothing.
        let mut work = Store::new(Topology::Standalone, 0);
        work.capture = Some(Vec::new());
        let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
        for (db, coll, _) in &txn.written {
            touched.insert((db.clone(), coll.clone()));
        }
        for op in &ops {
            // Collections created by the transaction (`c` create operations).
            if op.get_str("op").is_ok_and(|k| k == "c") {
                if let (Ok(ns), Ok(o)) = (op.get_str("ns"), op.get_document("o")) {
                    if let (Some(db), Ok(name)) = (ns.strip_suffix(".$cmd"), o.get_str("create")) {
                        touched.insert((db.to_string(), name.to_string()));
                    }
                }
            }
        }
        for (db, coll) in &touched {
            let base = match real.coll(db, coll) {
                Some(c) => c.clone(),
                None => match txn.shadow.coll(db, coll) {
                    Some(c) => {
                        let mut c = c.clone();
                        c.docs.clear();
                        c.data_bytes = 0;
                        for idx in &mut c.indexes {
                            idx.entries.clear();
                        }
                        c
                    }
                    None => continue,
                },
            };
            work.dbs
                .entry(db.clone())
                .or_default()
                .insert(coll.clone(), base);
        }
        for (db, coll, id) in &txn.written {
            let key = OrdBson(id.clone());
            let fin = txn
                .shadow
                .coll(db, coll)
                .and_then(|c| c.docs.get(&key))
                .cloned();
            let cur = work.coll(db, coll).and_then(|c| c.docs.get(&key)).cloned();
            match (cur, fin) {
                (None, None) => {}
                (Some(_), None) => {
                    work.delete(db, coll, id)?;
                }
                (None, Some(raw)) => work.insert(db, coll, (*raw).clone())?,
                (Some(pre), Some(post)) => {
                    if !Arc::ptr_eq(&pre, &post) {
                        let pre = crate::commands::query::decode(&pre)?;
                        let post = crate::commands::query::decode(&post)?;
                        work.replace(db, coll, &pre, &post, Document::new())?;
                    }
                }
            }
        }
        let mut colls = BTreeMap::new();
        for (db, coll) in touched {
            if let Some(c) = work.dbs.get_mut(&db).and_then(|d| d.remove(&coll)) {
                colls.insert((db, coll), c);
            }
        }
        real.batch(|real| {
            real.put_collections(colls);
            let ts = real.log_apply_ops(
                ops,
                Some(TxnSession {
                    lsid: &lsid,
                    txn_number: number,
                }),
            );
            if let Some(ts) = ts {
                real.record_committed_txn(&lsid, number, ts);
            }
        });
        Ok(())
    });
    sessions(shared, |m| {
        let s = m.map.entry(key).or_default();
        if s.last_number == number {
            s.last_outcome = Some(if applied.is_ok() {
                Outcome::Committed
            } else {
                Outcome::Aborted
            });
        }
    });
    applied?;
    Ok(Reply::Doc(doc! {"ok": 1.0}))
}

/// `abortTransaction` (admin): discards the transaction; nothing is logged.
pub(crate) fn abort(shared: &Shared, cmd: &Cmd) -> CmdResult<Reply> {
    let (_, number, taken) = take_for_end(shared, cmd)?;
    match taken {
        Ok(t) => {
            abort_txn(shared, t);
            Ok(Reply::Doc(doc! {"ok": 1.0}))
        }
        Err(Outcome::Committed) => Err(CommandError::new(
            256,
            format!("Transaction with {{ txnNumber: {number} }} has been committed."),
        )),
        Err(_) => Err(no_such_transaction(number, "has been aborted.")),
    }
}

/// `endSessions`: open transactions of the ended sessions are aborted.
pub(crate) fn end_sessions(shared: &Shared, cmd: &Cmd) {
    let Ok(ids) = cmd.body.get_array("endSessions") else {
        return;
    };
    for v in ids {
        let Bson::Document(d) = v else { continue };
        let Some(Bson::Binary(b)) = d.get("id") else {
            continue;
        };
        if b.bytes.len() != 16 {
            continue;
        }
        let mut key = [0u8; 16];
        key.copy_from_slice(&b.bytes);
        let active = sessions(shared, |m| m.map.remove(&key).and_then(|s| s.active));
        if let Some(t) = active {
            shared.with_store(|s| unlock(s, t.key));
        }
    }
}

/// Aborts every open transaction (a failover).
pub(crate) fn abort_all(shared: &Shared) {
    let open: Vec<Box<Txn>> = sessions(shared, |m| {
        m.map
            .values_mut()
            .filter_map(|s| {
                let t = s.active.take();
                if t.is_some() {
                    s.last_outcome = Some(Outcome::Aborted);
                }
                t
            })
            .collect()
    });
    shared.with_store(|s| {
        for t in open {
            unlock(s, t.key);
        }
    });
}
