//! Reads: `find`, `getMore`, `killCursors`, `count`, `distinct`, and the shared selection
//! helpers (candidate scan with `_id` ranges, sort, skip/limit, projection) used by
//! `aggregate` and the write commands.
//!
//! Owns query evaluation over the store, including tailable/awaitData cursors on
//! `local.oplog.rs`. It must not modify data and never waits while holding a lock.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document, RawDocumentBuf};

use super::cursor::{next_batch, Cursor, Source, DEFAULT_FIRST_BATCH};
use super::{Cmd, ConnState, CursorReply, Reply};
use crate::error::{CmdResult, CommandError};
use crate::filter;
use crate::idplan::{self, IdPlan};
use crate::oplog::ts_key;
use crate::server::Shared;
use crate::store::{Collection, OrdBson, Store};
use crate::value::{as_i64, compare, get_path};

/// Decodes a stored document.
///
/// Strings with invalid UTF-8 (stored byte for byte, as a real server stores them) decode
/// with U+FFFD in their place, for matching and updates; the stored bytes are unchanged.
pub fn decode(raw: &RawDocumentBuf) -> CmdResult<Document> {
    match Document::try_from(raw.as_ref()) {
        Ok(d) => Ok(d),
        Err(e) => bson::Utf8Lossy::<Document>::try_from(raw.as_ref())
            .map(|d| d.0)
            .map_err(|_| CommandError::new(22, e.to_string())),
    }
}

fn id_bounds(filter: &Document) -> Option<(Bound<OrdBson>, Bound<OrdBson>)> {
    let cond = filter.get("_id")?;
    match cond {
        Bson::Document(ops) if ops.keys().next().is_some_and(|k| k.starts_with('$')) => {
            let mut lo = Bound::Unbounded;
            let mut hi = Bound::Unbounded;
            for (op, v) in ops {
                match op.as_str() {
                    "$gt" => lo = Bound::Excluded(OrdBson(v.clone())),
                    "$gte" => lo = Bound::Included(OrdBson(v.clone())),
                    "$lt" => hi = Bound::Excluded(OrdBson(v.clone())),
                    "$lte" => hi = Bound::Included(OrdBson(v.clone())),
                    "$eq" => {
                        lo = Bound::Included(OrdBson(v.clone()));
                        hi = Bound::Included(OrdBson(v.clone()));
                    }
                    _ => return None,
                }
            }
            // An empty or inverted range matches nothing; BTreeMap::range would panic.
            let inverted = match (&lo, &hi) {
                (
                    Bound::Included(a) | Bound::Excluded(a),
                    Bound::Included(b) | Bound::Excluded(b),
                ) => {
                    a > b
                        || (a == b
                            && !(matches!(lo, Bound::Included(_))
                                && matches!(hi, Bound::Included(_))))
                }
                _ => false,
            };
            if inverted {
                let z = OrdBson(Bson::MinKey);
                return Some((Bound::Included(z.clone()), Bound::Excluded(z)));
            }
            Some((lo, hi))
        }
        Bson::Document(_) | Bson::Array(_) | Bson::RegularExpression(_) => None,
        v => Some((
            Bound::Included(OrdBson(v.clone())),
            Bound::Included(OrdBson(v.clone())),
        )),
    }
}

fn natural_direction(sort: Option<&Document>) -> Option<bool> {
    let Some(sort) = sort else {
        return Some(true);
    };
    if sort.is_empty() {
        return Some(true);
    }
    if sort.len() == 1 {
        let (k, v) = sort.iter().next()?;
        if k == "_id" || k == "$natural" {
            return Some(as_i64(v).unwrap_or(1) >= 0);
        }
    }
    None
}

/// Selected documents: raw, with their decoded form when it was needed.
pub struct Selected {
    /// Raw documents in result order.
    pub docs: Vec<Arc<RawDocumentBuf>>,
}

/// `_id` index bounds (from `min`/`max`).
pub type IdRange = (Bound<OrdBson>, Bound<OrdBson>);

/// Filter + sort + skip + limit over one collection.
pub fn select(
    c: &Collection,
    filter: &Document,
    sort: Option<&Document>,
    skip: usize,
    limit: Option<usize>,
) -> CmdResult<Selected> {
    select_in(c, filter, sort, skip, limit, None)
}

/// Like [`select`], restricted to an explicit `_id` range (`min`/`max` with `hint: {_id: 1}`).
///
/// Candidates come from the `_id` intervals of [`crate::idplan`] (point lookups for
/// equality/`$in`, seeks for ranges and `$nor` complements), in `_id` order; they are
/// re-checked with the full filter unless the plan is exact. Filters that could fail to
/// evaluate keep the older, simpler `_id` bounds so errors surface exactly as before.
pub fn select_in(
    c: &Collection,
    filter: &Document,
    sort: Option<&Document>,
    skip: usize,
    limit: Option<usize>,
    range: Option<IdRange>,
) -> CmdResult<Selected> {
    if let (Some(n), None) = (c.natural.as_ref(), &range) {
        // A capped collection's `$natural` order (and its default order) is insertion order.
        let dir = match sort {
            None => Some(true),
            Some(s) if s.is_empty() => Some(true),
            Some(s) if s.len() == 1 && s.contains_key("$natural") => {
                Some(s.get("$natural").and_then(as_i64).unwrap_or(1) >= 0)
            }
            _ => None,
        };
        if let Some(forward) = dir {
            return select_capped(c, n, filter, forward, skip, limit);
        }
    }
    let natural = natural_direction(sort);
    let mut plan = if filter.is_empty() {
        IdPlan::all(true)
    } else if idplan::never_errors(filter) {
        idplan::plan(filter)
    } else {
        match id_bounds(filter) {
            Some((lo, hi)) if idplan::is_empty(&lo, &hi) => IdPlan {
                intervals: Vec::new(),
                exact: false,
            },
            Some(b) => IdPlan {
                intervals: vec![b],
                exact: false,
            },
            None => IdPlan::all(false),
        }
    };
    if let Some((lo, hi)) = range {
        let r = if idplan::is_empty(&lo, &hi) {
            Vec::new()
        } else {
            vec![(lo, hi)]
        };
        plan = plan.intersect(&IdPlan {
            intervals: r,
            exact: true,
        });
    }
    let only_id = idplan::only_id(filter);
    let check = !filter.is_empty() && !plan.exact;
    let reverse = matches!(natural, Some(false));
    let mut intervals: Box<dyn Iterator<Item = &crate::idplan::Interval>> = if reverse {
        Box::new(plan.intervals.iter().rev())
    } else {
        Box::new(plan.intervals.iter())
    };
    let mut out: Vec<Arc<RawDocumentBuf>> = Vec::new();
    // With natural order, skip/limit can stop the scan early.
    let early_stop = natural.is_some();
    let mut skipped = 0usize;
    'outer: for (lo, hi) in &mut intervals {
        let iter = c.docs.range((lo.clone(), hi.clone())).map(|(_, v)| v);
        let iter: Box<dyn Iterator<Item = &Arc<RawDocumentBuf>>> = if reverse {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        for raw in iter {
            let keep = if !check {
                true
            } else if only_id {
                let id = crate::store::raw_id(raw)?;
                filter::matches(&doc! {"_id": id}, filter)?
            } else {
                filter::matches(&decode(raw)?, filter)?
            };
            if !keep {
                continue;
            }
            if early_stop {
                if skipped < skip {
                    skipped += 1;
                    continue;
                }
                if limit.is_some_and(|l| out.len() >= l) {
                    break 'outer;
                }
            }
            out.push(raw.clone());
        }
    }
    if natural.is_none() {
        if let Some(spec) = sort {
            let mut keyed: Vec<(Document, Arc<RawDocumentBuf>)> = Vec::with_capacity(out.len());
            for raw in out {
                keyed.push((decode(&raw)?, raw));
            }
            keyed.sort_by(|a, b| sort_cmp(&a.0, &b.0, spec));
            out = keyed.into_iter().map(|(_, r)| r).collect();
        }
        if skip > 0 {
            out.drain(..skip.min(out.len()));
        }
        if let Some(l) = limit {
            out.truncate(l);
        }
    }
    Ok(Selected { docs: out })
}

/// Filter + skip + limit over a capped collection in insertion order.
fn select_capped(
    c: &Collection,
    n: &crate::store::Natural,
    filter: &Document,
    forward: bool,
    skip: usize,
    limit: Option<usize>,
) -> CmdResult<Selected> {
    let ids: Box<dyn Iterator<Item = &OrdBson>> = if forward {
        Box::new(n.ids())
    } else {
        Box::new(n.ids().rev())
    };
    let mut out = Vec::new();
    let mut skipped = 0;
    for id in ids {
        let Some(raw) = c.docs.get(id) else {
            continue;
        };
        if !filter.is_empty() && !filter::matches(&decode(raw)?, filter)? {
            continue;
        }
        if skipped < skip {
            skipped += 1;
            continue;
        }
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        out.push(raw.clone());
    }
    Ok(Selected { docs: out })
}

/// Compares two documents by a sort specification.
pub fn sort_cmp(a: &Document, b: &Document, spec: &Document) -> Ordering {
    for (k, dir) in spec {
        let desc = as_i64(dir).unwrap_or(1) < 0;
        let va = get_path(a, k).unwrap_or(&Bson::Null);
        let vb = get_path(b, k).unwrap_or(&Bson::Null);
        let c = compare(va, vb);
        let c = if desc { c.reverse() } else { c };
        if c != Ordering::Equal {
            return c;
        }
    }
    Ordering::Equal
}

/// Applies an inclusion or exclusion projection.
pub fn project(d: &Document, proj: &Document) -> CmdResult<Document> {
    if proj.is_empty() {
        return Ok(d.clone());
    }
    let include_id = proj
        .get("_id")
        .is_none_or(|v| crate::value::truthy(Some(v)));
    let fields: Vec<(&String, bool)> = proj
        .iter()
        .filter(|(k, _)| k.as_str() != "_id")
        .map(|(k, v)| (k, crate::value::truthy(Some(v))))
        .collect();
    let inclusion = fields.iter().any(|(_, inc)| *inc);
    if inclusion && fields.iter().any(|(_, inc)| !inc) {
        return Err(CommandError::new(
            31254,
            "Cannot do exclusion on field in inclusion projection",
        ));
    }
    if inclusion || fields.is_empty() {
        let mut out = Document::new();
        for (k, v) in d {
            if k == "_id" {
                if include_id {
                    out.insert(k.clone(), v.clone());
                }
                continue;
            }
            let subs: Vec<&str> = fields
                .iter()
                .filter_map(|(f, _)| {
                    if f.as_str() == k {
                        Some("")
                    } else {
                        f.strip_prefix(k.as_str()).and_then(|r| r.strip_prefix('.'))
                    }
                })
                .collect();
            if subs.is_empty() {
                continue;
            }
            if subs.contains(&"") {
                out.insert(k.clone(), v.clone());
            } else if let Bson::Document(sub) = v {
                let mut p = Document::new();
                for s in subs {
                    p.insert(s, 1);
                }
                p.insert("_id", 0);
                out.insert(k.clone(), project(sub, &p)?);
            }
        }
        Ok(out)
    } else {
        let mut out = d.clone();
        if !include_id {
            out.remove("_id");
        }
        for (f, _) in fields {
            crate::update::unset_path(&mut out, f);
        }
        Ok(out)
    }
}

fn encode(d: &Document) -> CmdResult<Arc<RawDocumentBuf>> {
    RawDocumentBuf::try_from(d)
        .map(Arc::new)
        .map_err(|e| CommandError::new(22, e.to_string()))
}

fn oplog_start(filter: &Document) -> Option<(u64, bool)> {
    if let Some(Bson::Document(ops)) = filter.get("ts") {
        if let Some(Bson::Timestamp(t)) = ops.get("$gte") {
            return Some((ts_key(*t), true));
        }
        if let Some(Bson::Timestamp(t)) = ops.get("$gt") {
            return Some((ts_key(*t), false));
        }
    }
    if let Some(Bson::Array(items)) = filter.get("$and") {
        for it in items {
            if let Bson::Document(d) = it {
                if let Some(s) = oplog_start(d) {
                    return Some(s);
                }
            }
        }
    }
    None
}

/// Reads up to `max_docs` matching oplog entries after position `last`.
fn oplog_batch(
    store: &Store,
    last: &mut u64,
    start_inclusive: bool,
    filter: &Document,
    max_docs: usize,
    majority: bool,
) -> CmdResult<Vec<Arc<RawDocumentBuf>>> {
    let Some(oplog) = store.oplog.as_ref() else {
        return Ok(Vec::new());
    };
    let bound = majority_bound(store, majority);
    let from = oplog.position_after(*last, start_inclusive);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for e in oplog.iter_from(from) {
        if out.len() >= max_docs || bytes >= super::cursor::BATCH_BYTES || ts_key(e.ts) > bound {
            break;
        }
        *last = ts_key(e.ts);
        if filter.is_empty() || filter::matches(&decode(&e.doc)?, filter)? {
            bytes += e.doc.as_bytes().len();
            out.push(e.doc.clone());
        }
    }
    Ok(out)
}

/// The newest oplog position a read may see: the majority commit point for
/// `readConcern: {level: "majority"}` (entries share the visibility of the writes they
/// record; change streams read the oplog this way), everything otherwise.
fn majority_bound(store: &Store, majority: bool) -> u64 {
    if majority {
        ts_key(store.majority_point().0)
    } else {
        u64::MAX
    }
}

fn read_concern_majority(cmd: &Cmd) -> bool {
    cmd.body
        .get_document("readConcern")
        .ok()
        .and_then(|rc| rc.get_str("level").ok())
        .is_some_and(|l| l == "majority")
}

fn usize_arg(cmd: &Cmd, key: &str) -> CmdResult<Option<usize>> {
    match cmd.int_arg(key)? {
        None => Ok(None),
        Some(v) if v < 0 => Err(CommandError::bad_value(format!(
            "BSON field '{key}' value must be >= 0, actual value '{v}'"
        ))),
        Some(v) => Ok(Some(v as usize)),
    }
}

fn min_max_range(cmd: &Cmd) -> CmdResult<Option<IdRange>> {
    let min = cmd.doc_arg("min")?;
    let max = cmd.doc_arg("max")?;
    if min.is_none() && max.is_none() {
        return Ok(None);
    }
    let bound = |d: &Option<Document>, upper: bool| -> CmdResult<Bound<OrdBson>> {
        match d {
            None => Ok(Bound::Unbounded),
            Some(d) if d.len() == 1 && d.contains_key("_id") => {
                let v = OrdBson(d.get("_id").cloned().unwrap_or(Bson::Null));
                Ok(if upper {
                    Bound::Excluded(v)
                } else {
                    Bound::Included(v)
                })
            }
            Some(_) => Err(CommandError::new(
                51174,
                "mongosim supports 'min'/'max' only on the _id index (hint: {_id: 1})",
            )),
        }
    };
    let lo = bound(&min, false)?;
    let hi = bound(&max, true)?;
    if let (Bound::Included(a), Bound::Excluded(b)) = (&lo, &hi) {
        if a >= b {
            let z = OrdBson(Bson::MinKey);
            return Ok(Some((Bound::Included(z.clone()), Bound::Excluded(z))));
        }
    }
    Ok(Some((lo, hi)))
}

/// `find`.
pub fn find(shared: &Arc<Shared>, conn: &ConnState, cmd: &Cmd) -> CmdResult<Reply> {
    shared.count_op(1);
    let coll = cmd.collection()?;
    let ns = format!("{}.{}", cmd.db, coll);
    let filter = cmd.doc_arg("filter")?.unwrap_or_default();
    let sort = cmd.doc_arg("sort")?;
    let projection = cmd.doc_arg("projection")?;
    let skip = usize_arg(cmd, "skip")?.unwrap_or(0);
    let mut limit = cmd.int_arg("limit")?;
    let mut single_batch = cmd.flag("singleBatch");
    if let Some(l) = limit {
        if l < 0 {
            limit = Some(-l);
            single_batch = true;
        }
    }
    let limit = limit.filter(|l| *l > 0).map(|l| l as usize);
    let batch_size = usize_arg(cmd, "batchSize")?;
    let tailable = cmd.flag("tailable");
    let await_data = cmd.flag("awaitData");
    if await_data && !tailable {
        return Err(CommandError::failed_to_parse(
            "Cannot set 'awaitData' without also setting 'tailable'",
        ));
    }
    let first_max = batch_size.unwrap_or(DEFAULT_FIRST_BATCH);
    let range = min_max_range(cmd)?;
    let is_oplog = cmd.db == "local" && coll == "oplog.rs";
    let majority = read_concern_majority(cmd);
    // `hint: {$natural: ±1}` without a sort scans in natural order.
    let sort = match (sort, cmd.doc_arg("hint").ok().flatten()) {
        (None, Some(h)) if h.len() == 1 && h.contains_key("$natural") => Some(h),
        (s, _) => s,
    };

    if is_oplog && tailable {
        let start = oplog_start(&filter);
        let (last, inclusive) = start.unwrap_or((0, true));
        let mut last = last;
        let max = first_max.min(limit.unwrap_or(usize::MAX));
        let docs =
            shared.with_store(|s| oplog_batch(s, &mut last, inclusive, &filter, max, majority))?;
        // The position marks the last entry examined; an empty scan keeps the start point.
        let (pos, _) = if docs.is_empty() && inclusive && start.is_some() {
            (last.saturating_sub(1), ())
        } else {
            (last, ())
        };
        let bytes = docs.iter().map(|d| d.as_bytes().len()).sum();
        let id = shared.with_cursors(|c| {
            c.insert(Cursor {
                ns: ns.clone(),
                source: Source::Oplog {
                    last: pos,
                    filter: filter.clone(),
                    await_data,
                    majority,
                },
                remaining: limit.map(|l| l.saturating_sub(docs.len())),
                user: conn.user.clone(),
                no_timeout: cmd.flag("noCursorTimeout"),
            })
        });
        return Ok(Reply::Cursor(CursorReply {
            id,
            ns,
            first: true,
            docs,
            bytes,
            extra: None,
        }));
    }
    if tailable {
        let capped = shared.with_store(|s| s.coll(&cmd.db, &coll).is_some_and(|c| c.is_capped()));
        if !capped {
            return Err(CommandError::bad_value(format!(
                "error processing query: ns={ns} tailable cursor requested on non capped collection"
            )));
        }
    }

    let mut docs: VecDeque<Arc<RawDocumentBuf>> = shared.with_store(|s| -> CmdResult<_> {
        if is_oplog {
            let Some(oplog) = s.oplog.as_ref() else {
                return Ok(VecDeque::new());
            };
            let (from_key, inclusive) = oplog_start(&filter).unwrap_or((0, true));
            let from = oplog.position_after(from_key, inclusive);
            let bound = majority_bound(s, majority);
            let reverse = matches!(natural_direction(sort.as_ref()), Some(false));
            let mut out = VecDeque::new();
            let entries: Box<dyn Iterator<Item = &crate::oplog::Entry>> = if reverse {
                Box::new(oplog.iter_from(from).rev())
            } else {
                Box::new(oplog.iter_from(from))
            };
            let mut skipped = 0;
            for e in entries {
                if ts_key(e.ts) > bound {
                    if reverse {
                        continue;
                    }
                    break;
                }
                if !filter.is_empty() && !filter::matches(&decode(&e.doc)?, &filter)? {
                    continue;
                }
                if skipped < skip {
                    skipped += 1;
                    continue;
                }
                if limit.is_some_and(|l| out.len() >= l) {
                    break;
                }
                out.push_back(e.doc.clone());
            }
            return Ok(out);
        }
        match s.coll(&cmd.db, &coll) {
            None => Ok(VecDeque::new()),
            Some(c) if c.is_view() => {
                Err(CommandError::new(166, "mongosim does not evaluate views"))
            }
            Some(c) => Ok(
                select_in(c, &filter, sort.as_ref(), skip, limit, range.clone())?
                    .docs
                    .into(),
            ),
        }
    })?;
    if let Some(p) = &projection {
        let mut projected = VecDeque::with_capacity(docs.len());
        for raw in docs {
            projected.push_back(encode(&project(&decode(&raw)?, p)?)?);
        }
        docs = projected;
    }
    let (batch, bytes) = next_batch(&mut docs, first_max);
    let id = if single_batch || docs.is_empty() {
        0
    } else {
        shared.with_cursors(|c| {
            c.insert(Cursor {
                ns: ns.clone(),
                source: Source::Docs(docs),
                remaining: None,
                user: conn.user.clone(),
                no_timeout: cmd.flag("noCursorTimeout"),
            })
        })
    };
    Ok(Reply::Cursor(CursorReply {
        id,
        ns,
        first: true,
        docs: batch,
        bytes,
        extra: None,
    }))
}

/// `getMore` (waits up to `maxTimeMS`, default 1 s, on awaitData oplog cursors).
pub async fn get_more(shared: &Arc<Shared>, conn: &ConnState, cmd: &Cmd) -> CmdResult<Reply> {
    shared.count_op(4);
    let id = match cmd.first_value() {
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Int32(i)) => i64::from(*i),
        _ => {
            return Err(CommandError::type_mismatch(
                "BSON field 'getMore.getMore' is the wrong type, expected type 'long'",
            ))
        }
    };
    let coll = cmd.body.get_str("collection").map_err(|_| {
        CommandError::new(
            40414,
            "BSON field 'getMore.collection' is missing but a required field",
        )
    })?;
    let batch_size = usize_arg(cmd, "batchSize")?.filter(|b| *b > 0);
    let max_time = cmd.int_arg("maxTimeMS")?.unwrap_or(1000).max(0) as u64;
    let Some(mut cursor) = shared.with_cursors(|c| c.take(id)) else {
        return Err(CommandError::new(43, format!("cursor id {id} not found")));
    };
    let ns = format!("{}.{}", cmd.db, coll);
    if cursor.user != conn.user && !shared.config.users.is_empty() {
        shared.with_cursors(|c| c.put(id, cursor));
        return Err(CommandError::new(
            13,
            format!("cursor id {id} was not created by the authenticated user"),
        ));
    }
    if cursor.ns != ns {
        let wanted = cursor.ns.clone();
        shared.with_cursors(|c| c.put(id, cursor));
        return Err(CommandError::new(
            13,
            format!("Requested getMore on namespace '{ns}', but cursor belongs to a different namespace {wanted}"),
        ));
    }
    let max_docs = batch_size
        .unwrap_or(usize::MAX)
        .min(cursor.remaining.unwrap_or(usize::MAX));
    let deadline = Instant::now() + Duration::from_millis(max_time);
    let (docs, exhausted) = match &mut cursor.source {
        Source::Docs(docs) => {
            let (batch, _) = next_batch(docs, max_docs);
            let done = docs.is_empty();
            (batch, done)
        }
        Source::Oplog {
            last,
            filter,
            await_data,
            majority,
        } => loop {
            let step = shared.with_store(|s| -> CmdResult<_> {
                let Some(oplog) = s.oplog.as_ref() else {
                    return Ok((Vec::new(), None));
                };
                if let Some(first) = oplog.first() {
                    if ts_key(first.ts) > *last && *last != 0 {
                        return Err(CommandError::new(
                            136,
                            format!("CollectionScan died due to position in capped collection being deleted. Last seen record id: RecordId({last})"),
                        ));
                    }
                }
                let rx = oplog.subscribe();
                let batch = oplog_batch(s, last, false, filter, max_docs, *majority)?;
                Ok((batch, Some(rx)))
            });
            let (batch, rx) = match step {
                Ok(v) => v,
                Err(e) => return Err(e),
            };
            if !batch.is_empty() || !*await_data {
                break (batch, false);
            }
            let Some(mut rx) = rx else {
                break (batch, false);
            };
            let now = Instant::now();
            if now >= deadline {
                break (batch, false);
            }
            tokio::select! {
                _ = shared.cancel.cancelled() => break (batch, true),
                _ = tokio::time::sleep(deadline - now) => {}
                _ = rx.changed() => {}
            }
        },
    };
    if let Some(r) = cursor.remaining.as_mut() {
        *r = r.saturating_sub(docs.len());
    }
    let limit_reached = cursor.remaining == Some(0);
    let bytes = docs.iter().map(|d| d.as_bytes().len()).sum();
    let out_id = if exhausted || limit_reached {
        0
    } else {
        shared.with_cursors(|c| c.put(id, cursor));
        id
    };
    Ok(Reply::Cursor(CursorReply {
        id: out_id,
        ns,
        first: false,
        docs,
        bytes,
        extra: None,
    }))
}

/// `killCursors`.
pub fn kill_cursors(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let ids = cmd.body.get_array("cursors").map_err(|_| {
        CommandError::new(
            40414,
            "BSON field 'killCursors.cursors' is missing but a required field",
        )
    })?;
    let mut killed = Vec::new();
    let mut not_found = Vec::new();
    for v in ids {
        let id = as_i64(v).unwrap_or(0);
        if shared.with_cursors(|c| c.kill(id)) {
            killed.push(Bson::Int64(id));
        } else {
            not_found.push(Bson::Int64(id));
        }
    }
    Ok(Reply::Doc(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
        "ok": 1.0,
    }))
}

/// `count`.
pub fn count(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    let query = cmd.doc_arg("query")?.unwrap_or_default();
    let skip = usize_arg(cmd, "skip")?.unwrap_or(0);
    let limit = cmd
        .int_arg("limit")?
        .filter(|l| *l != 0)
        .map(|l| l.unsigned_abs() as usize);
    let n = shared.with_store(|s| -> CmdResult<usize> {
        if cmd.db == "local" && coll == "oplog.rs" {
            let Some(o) = s.oplog.as_ref() else {
                return Ok(0);
            };
            let mut n = 0usize;
            for e in o.iter_from(0) {
                if query.is_empty() || filter::matches(&decode(&e.doc)?, &query)? {
                    n += 1;
                }
            }
            return Ok(n.saturating_sub(skip).min(limit.unwrap_or(usize::MAX)));
        }
        match s.coll(&cmd.db, &coll) {
            None => Ok(0),
            Some(c) if query.is_empty() => Ok(c
                .docs
                .len()
                .saturating_sub(skip)
                .min(limit.unwrap_or(usize::MAX))),
            Some(c) => Ok(select(c, &query, None, skip, limit)?.docs.len()),
        }
    })?;
    Ok(Reply::Doc(
        doc! {"n": i32::try_from(n).unwrap_or(i32::MAX), "ok": 1.0},
    ))
}

/// `distinct`.
pub fn distinct(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    let key = cmd
        .body
        .get_str("key")
        .map_err(|_| CommandError::failed_to_parse("distinct needs a string 'key'"))?
        .to_string();
    let query = cmd.doc_arg("query")?.unwrap_or_default();
    let docs = shared.with_store(|s| -> CmdResult<Vec<Arc<RawDocumentBuf>>> {
        Ok(match s.coll(&cmd.db, &coll) {
            None => Vec::new(),
            Some(c) => select(c, &query, None, 0, None)?.docs,
        })
    })?;
    let mut values: Vec<Bson> = Vec::new();
    for raw in docs {
        let d = decode(&raw)?;
        let mut found = Vec::new();
        let parts: Vec<&str> = key.split('.').collect();
        let root = Bson::Document(d);
        crate::value::collect_path(&root, &parts, &mut found);
        for v in found {
            let items: Vec<&Bson> = match v {
                Bson::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for it in items {
                if !values.iter().any(|x| crate::value::values_equal(x, it)) {
                    values.push(it.clone());
                }
            }
        }
    }
    values.sort_by(compare);
    Ok(Reply::Doc(doc! {"values": values, "ok": 1.0}))
}

/// `splitVector` on `{_id: 1}`: split keys so each chunk holds about half of `maxChunkSize`.
pub fn split_vector(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let ns = cmd
        .first_value()
        .and_then(|v| v.as_str())
        .ok_or_else(|| CommandError::type_mismatch("splitVector needs a namespace string"))?
        .to_string();
    let (db, coll) = crate::store::split_ns(&ns)?;
    let pattern = cmd.doc_arg("keyPattern")?.unwrap_or_default();
    if pattern.keys().collect::<Vec<_>>() != ["_id"] {
        return Err(CommandError::bad_value(
            "mongosim supports splitVector only on {_id: 1}",
        ));
    }
    let max_bytes = match (
        cmd.int_arg("maxChunkSizeBytes")?,
        cmd.int_arg("maxChunkSize")?,
    ) {
        (Some(b), _) => b,
        (None, Some(mb)) => mb * 1024 * 1024,
        (None, None) => {
            return Err(CommandError::bad_value(
                "need to specify the desired max chunk size",
            ))
        }
    }
    .max(1);
    let max_points = cmd.int_arg("maxSplitPoints")?.filter(|m| *m > 0);
    let keys = shared.with_store(|s| -> CmdResult<Vec<Bson>> {
        let Some(c) = s.coll(db, coll) else {
            return Ok(Vec::new());
        };
        if c.docs.is_empty() {
            return Ok(Vec::new());
        }
        let avg = c.avg_obj_size().max(1);
        let per_chunk = ((max_bytes / (2 * avg)).max(1)) as usize;
        let mut out = Vec::new();
        for (i, k) in c.docs.keys().enumerate() {
            if i > 0 && i % per_chunk == 0 {
                out.push(Bson::Document(doc! {"_id": k.0.clone()}));
                if max_points.is_some_and(|m| out.len() as i64 >= m) {
                    break;
                }
            }
        }
        Ok(out)
    })?;
    Ok(Reply::Doc(
        doc! {"timeMillis": 0i32, "splitKeys": keys, "ok": 1.0},
    ))
}

#[cfg(test)]
mod tests {
    //! The `_id` access paths against a brute-force scan of the same collection.

    use super::*;
    use crate::store::Topology;
    use proptest::prelude::*;

    /// What `select` returned before `_id` access paths: every document, decoded and matched.
    fn reference(
        c: &Collection,
        filter: &Document,
        sort: Option<&Document>,
        skip: usize,
        limit: Option<usize>,
    ) -> CmdResult<Vec<Arc<RawDocumentBuf>>> {
        let mut v = Vec::new();
        for raw in c.docs.values() {
            if filter::matches(&decode(raw)?, filter)? {
                v.push(raw.clone());
            }
        }
        match natural_direction(sort) {
            Some(true) => {}
            Some(false) => v.reverse(),
            None => {
                let spec = sort.cloned().unwrap_or_default();
                let mut keyed = Vec::new();
                for raw in v {
                    keyed.push((decode(&raw)?, raw));
                }
                keyed.sort_by(|a, b| sort_cmp(&a.0, &b.0, &spec));
                v = keyed.into_iter().map(|(_, r)| r).collect();
            }
        }
        let mut v: Vec<_> = v.into_iter().skip(skip).collect();
        if let Some(l) = limit {
            v.truncate(l);
        }
        Ok(v)
    }

    fn store_with(ids: &[Bson]) -> Store {
        let mut s = Store::new(Topology::ReplicaSet, 1 << 20);
        s.create_collection("db", "c", Document::new()).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let d = doc! {"_id": id.clone(), "v": (i % 3) as i32};
            // Duplicates (1 vs 1.0 ...) are rejected like the server does.
            let _ = s.insert("db", "c", RawDocumentBuf::try_from(&d).unwrap());
        }
        s
    }

    fn check(
        s: &Store,
        filter: &Document,
        sort: Option<&Document>,
        skip: usize,
        limit: Option<usize>,
    ) {
        let c = s.coll("db", "c").unwrap();
        let fast = select(c, filter, sort, skip, limit).map(|r| r.docs);
        let slow = reference(c, filter, sort, skip, limit);
        match (fast, slow) {
            (Ok(a), Ok(b)) => {
                let a: Vec<&[u8]> = a.iter().map(|d| d.as_bytes()).collect();
                let b: Vec<&[u8]> = b.iter().map(|d| d.as_bytes()).collect();
                assert_eq!(
                    a, b,
                    "filter {filter} sort {sort:?} skip {skip} limit {limit:?}"
                );
            }
            (Err(a), Err(b)) => assert_eq!(a.code, b.code, "filter {filter}"),
            (a, b) => panic!(
                "filter {filter}: fast {:?} vs scan {:?}",
                a.map(|v| v.len()),
                b.map(|v| v.len())
            ),
        }
    }

    fn id_value() -> impl Strategy<Value = Bson> {
        prop_oneof![
            (-4i32..4).prop_map(Bson::Int32),
            (-4i64..4).prop_map(Bson::Int64),
            (-8i32..8).prop_map(|h| Bson::Double(f64::from(h) / 2.0)),
            Just(Bson::Double(f64::NAN)),
            Just(Bson::Double(f64::INFINITY)),
            Just(Bson::Double(f64::NEG_INFINITY)),
            Just(Bson::Double(-0.0)),
            Just(Bson::Double(9_007_199_254_740_992.0)),
            (0i64..3).prop_map(|d| Bson::Int64(9_007_199_254_740_992 + d)),
            Just(Bson::Int64(i64::MAX)),
            Just(Bson::Double(9_223_372_036_854_775_808.0)),
            prop::sample::select(vec!["", "a", "ab", "b"]).prop_map(|s| Bson::String(s.into())),
            (0u8..3).prop_map(|b| Bson::ObjectId(bson::oid::ObjectId::from_bytes([b; 12]))),
            any::<bool>().prop_map(Bson::Boolean),
            Just(Bson::Null),
            (0i32..3).prop_map(|a| Bson::Document(doc! {"a": a})),
            Just(Bson::Document(Document::new())),
            (-2i64..2).prop_map(|ms| Bson::DateTime(bson::DateTime::from_millis(ms))),
            (0u32..2).prop_map(|t| Bson::Timestamp(bson::Timestamp {
                time: t,
                increment: 1
            })),
            (0u8..2).prop_map(|b| Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: vec![b; usize::from(b)],
            })),
            Just(Bson::MinKey),
            Just(Bson::MaxKey),
        ]
    }

    fn range_op() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["$gt", "$gte", "$lt", "$lte"])
    }

    fn id_filter() -> impl Strategy<Value = Document> {
        let leaf = prop_oneof![
            id_value().prop_map(|v| doc! {"_id": v}),
            id_value().prop_map(|v| doc! {"_id": {"$eq": v}}),
            prop::collection::vec(id_value(), 0..5).prop_map(|v| {
                let mut with_dups = v.clone();
                with_dups.extend(v);
                doc! {"_id": {"$in": with_dups}}
            }),
            (range_op(), id_value()).prop_map(|(op, v)| doc! {"_id": {op: v}}),
            (range_op(), id_value(), range_op(), id_value())
                .prop_map(|(a, x, b, y)| doc! {"_id": {a: x, b: y}}),
            (id_value(), id_value()).prop_map(|(x, y)| doc! {"_id": {"$gte": x, "$ne": y}}),
            (prop::collection::vec(id_value(), 1..4), id_value())
                .prop_map(|(v, n)| doc! {"_id": {"$in": v, "$nin": [n]}}),
            (id_value(), 0i32..3).prop_map(|(v, k)| doc! {"_id": v, "v": k}),
            (range_op(), id_value(), 0i32..3)
                .prop_map(|(op, v, k)| doc! {"v": {"$ne": k}, "_id": {op: v}}),
            Just(doc! {}),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..3).prop_map(
                    |v| doc! {"$and": v.into_iter().map(Bson::Document).collect::<Vec<_>>()}
                ),
                prop::collection::vec(inner.clone(), 1..3).prop_map(
                    |v| doc! {"$or": v.into_iter().map(Bson::Document).collect::<Vec<_>>()}
                ),
                prop::collection::vec(inner, 1..3).prop_map(
                    |v| doc! {"$nor": v.into_iter().map(Bson::Document).collect::<Vec<_>>()}
                ),
            ]
        })
    }

    fn sort_spec() -> impl Strategy<Value = Option<Document>> {
        prop_oneof![
            Just(None),
            Just(Some(doc! {"_id": 1})),
            Just(Some(doc! {"_id": -1})),
            Just(Some(doc! {"$natural": -1})),
            Just(Some(doc! {"v": 1})),
            Just(Some(doc! {"v": -1, "_id": -1})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(768))]
        #[test]
        fn id_access_paths_equal_a_full_scan(
            ids in prop::collection::vec(id_value(), 0..30),
            filter in id_filter(),
            sort in sort_spec(),
            skip in 0usize..3,
            limit in prop::option::of(1usize..5),
        ) {
            let s = store_with(&ids);
            check(&s, &filter, sort.as_ref(), skip, limit);
            check(&s, &filter, sort.as_ref(), 0, None);
        }
    }

    #[test]
    fn numeric_ids_are_equal_across_types_and_lookups_are_exact() {
        let ids = [
            Bson::Int64(1),
            Bson::Int32(2),
            Bson::Double(3.0),
            Bson::Double(2.5),
            Bson::String("1".into()),
            Bson::Int64(9_007_199_254_740_993),
            Bson::Int64(9_007_199_254_740_992),
        ];
        let s = store_with(&ids);
        let c = s.coll("db", "c").unwrap();
        assert_eq!(c.docs.len(), ids.len());
        let n = |f: Document| select(c, &f, None, 0, None).unwrap().docs.len();
        for one in [Bson::Int32(1), Bson::Int64(1), Bson::Double(1.0)] {
            assert_eq!(n(doc! {"_id": one.clone()}), 1);
            assert_eq!(n(doc! {"_id": {"$eq": one.clone()}}), 1);
        }
        assert_eq!(
            n(doc! {"_id": {"$in": [1, 1.0, 1i64, 2.0, 2, "1", 4, null]}}),
            3
        );
        assert_eq!(n(doc! {"_id": {"$in": []}}), 0);
        assert_eq!(n(doc! {"_id": 4}), 0);
        assert_eq!(n(doc! {"_id": {"$gte": 2, "$lt": 3}}), 2);
        // 2^53 + 1 is not equal to the double 2^53 (exact integer/double comparison).
        assert_eq!(n(doc! {"_id": 9_007_199_254_740_992.0f64}), 1);
        assert_eq!(n(doc! {"_id": {"$gt": 9_007_199_254_740_992.0f64}}), 1);
        assert_eq!(n(doc! {"$nor": [{"_id": {"$gte": 2}}]}), 2);
        // A malformed filter still fails like a scan.
        assert!(select(c, &doc! {"_id": {"$in": 5}}, None, 0, None).is_err());
    }

    #[test]
    fn plans_seek_instead_of_scanning() {
        let p = idplan::plan(&doc! {"_id": {"$in": [3, 1, 3, 2.0]}});
        assert!(p.exact);
        assert_eq!(p.intervals.len(), 3);
        let p = idplan::plan(&doc! {"$nor": [{"_id": {"$gte": 10}}]});
        assert!(p.exact && !p.is_full());
        let p = idplan::plan(&doc! {"_id": {"$gte": 10, "$lt": 20}});
        assert!(p.exact && p.intervals.len() == 1);
        assert!(idplan::plan(&doc! {"a": 1}).is_full());
    }
}
