//! Writes: `insert`, `update`, `delete`, `findAndModify` and `applyOps`.
//!
//! Owns statement-level semantics (ordered/unordered, `writeErrors`, upserts, multi) and the
//! choice of oplog form for updates (operator updates as `$v: 2` diffs from pre/post image,
//! replacements as full documents). It must not frame replies or wait while holding a lock.

use std::sync::Arc;

use bson::{doc, oid::ObjectId, Bson, Document, RawDocument, RawDocumentBuf};

use super::query::{decode, project, select};
use super::{Cmd, Reply};
use crate::diff;
use crate::error::{CmdResult, CommandError};
use crate::rawbuf::RawWriter;
use crate::server::Shared;
use crate::store::Store;
use crate::update::{self, UpdateSpec};

fn write_error(index: usize, e: &CommandError) -> Bson {
    let mut d = doc! {"index": index as i32, "code": e.code};
    for (k, v) in e.extra.iter().flat_map(|d| d.iter()) {
        d.insert(k.clone(), v.clone());
    }
    d.insert("errmsg", e.errmsg.clone());
    Bson::Document(d)
}

fn ordered(cmd: &Cmd) -> bool {
    cmd.body
        .get("ordered")
        .is_none_or(|v| crate::value::truthy(Some(v)))
}

fn check_writable(db: &str, coll: &str) -> CmdResult<()> {
    if db == "local" && coll == "oplog.rs" {
        return Err(CommandError::new(20, "cannot write to 'local.oplog.rs'"));
    }
    crate::store::check_coll_name(db, coll)
}

/// `insert`.
pub fn insert(shared: &Arc<Shared>, cmd: &mut Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    check_writable(&cmd.db, &coll)?;
    let docs = cmd.take_docs("documents")?;
    if docs.len() > 100_000 {
        return Err(CommandError::new(
            16,
            "Write batch sizes must be between 1 and 100000",
        ));
    }
    let ordered = ordered(cmd);
    let mut n = 0i32;
    let mut errors = Vec::new();
    shared.with_store(|s| {
        s.batch(|s| {
            for (i, d) in docs.into_iter().enumerate() {
                let r = if d.as_bytes().len() > crate::wire::MAX_BSON_OBJECT_SIZE {
                    Err(CommandError::new(10334, "object to insert too large"))
                } else {
                    s.insert(&cmd.db, &coll, d)
                };
                match r {
                    Ok(()) => n += 1,
                    Err(e) => {
                        errors.push(write_error(i, &e));
                        if ordered {
                            break;
                        }
                    }
                }
            }
        })
    });
    shared.count_ops(0, n as u64);
    let mut r = doc! {"n": n};
    if !errors.is_empty() {
        r.insert("writeErrors", errors);
    }
    r.insert("ok", 1.0);
    Ok(Reply::Doc(r))
}

/// Result of one update statement.
struct UpdateOutcome {
    matched: usize,
    modified: usize,
    upserted: Option<Bson>,
    /// Pre and post image of the (last) touched document, for findAndModify.
    images: Option<(Option<Document>, Document)>,
}

fn oplog_form(spec: &UpdateSpec, pre: &Document, post: &Document) -> Option<Document> {
    match spec {
        UpdateSpec::Replacement(_) => {
            if diff::docs_binary_equal(pre, post) {
                None
            } else {
                Some(post.clone())
            }
        }
        UpdateSpec::Operators(_) => diff::update_entry(pre, post, false),
        UpdateSpec::Pipeline(_) => diff::update_entry(pre, post, true),
    }
}

/// Puts `_id` first (generating one when missing), as the server stores upserts.
fn id_first(d: Document) -> Document {
    let mut out = Document::new();
    let id = d
        .get("_id")
        .cloned()
        .unwrap_or_else(|| Bson::ObjectId(ObjectId::new()));
    out.insert("_id", id);
    for (k, v) in d {
        if k != "_id" {
            out.insert(k, v);
        }
    }
    out
}

/// A replacement's raw bytes with `_id` first: `id_elem` (the stored document's, or the upsert's) then
/// every other element of `u` as sent, so strings that are not valid UTF-8 are kept as given.
fn raw_replacement(u: &RawDocument, id: &Bson) -> Option<RawDocumentBuf> {
    let bytes = u.as_bytes();
    let mut w = RawWriter::with_capacity(bytes.len() + 32);
    w.value("_id", id);
    let mut off = 4usize;
    for el in u.iter_elements() {
        let el = el.ok()?;
        let key = el.key().as_str();
        let len = 2 + key.len() + el.size();
        if key != "_id" {
            w.raw_element(bytes.get(off..off + len)?);
        }
        off += len;
    }
    RawDocumentBuf::from_bytes(w.finish()).ok()
}

#[allow(clippy::too_many_arguments)]
fn run_update(
    s: &mut Store,
    db: &str,
    coll: &str,
    q: &Document,
    spec: &UpdateSpec,
    multi: bool,
    upsert: bool,
    sort: Option<&Document>,
    raw_u: Option<&RawDocument>,
) -> CmdResult<UpdateOutcome> {
    if multi && matches!(spec, UpdateSpec::Replacement(_)) {
        return Err(CommandError::failed_to_parse(
            "multi update is not supported for replacement-style update",
        ));
    }
    let targets: Vec<Arc<RawDocumentBuf>> = match s.coll(db, coll) {
        Some(c) => select(c, q, sort, 0, if multi { None } else { Some(1) })?.docs,
        None => Vec::new(),
    };
    let mut out = UpdateOutcome {
        matched: targets.len(),
        modified: 0,
        upserted: None,
        images: None,
    };
    for raw in targets {
        let pre = decode(&raw)?;
        let post = update::apply(&pre, spec, false)?;
        let exact = match (spec, raw_u) {
            (UpdateSpec::Replacement(_), Some(u)) => {
                post.get("_id").and_then(|id| raw_replacement(u, id))
            }
            _ => None,
        };
        match exact {
            Some(new_raw) if new_raw.as_bytes() != raw.as_bytes() => {
                s.replace_raw(db, coll, &pre, &post, new_raw)?;
                out.modified += 1;
            }
            Some(_) => {}
            None => {
                if let Some(o) = oplog_form(spec, &pre, &post) {
                    s.replace(db, coll, &pre, &post, o)?;
                    out.modified += 1;
                }
            }
        }
        out.images = Some((Some(pre), post));
    }
    if out.matched == 0 && upsert {
        let seed = match spec {
            UpdateSpec::Replacement(r) => {
                let mut d = r.clone();
                if !d.contains_key("_id") {
                    if let Some(id) = update::upsert_seed(q).get("_id") {
                        d.insert("_id", id.clone());
                    }
                }
                d
            }
            other => {
                let base = id_first(update::upsert_seed(q));
                update::apply(&base, other, true)?
            }
        };
        let doc = id_first(seed);
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        let exact = match (spec, raw_u) {
            (UpdateSpec::Replacement(_), Some(u)) => raw_replacement(u, &id),
            _ => None,
        };
        let raw = match exact {
            Some(raw) => raw,
            None => {
                RawDocumentBuf::try_from(&doc).map_err(|e| CommandError::new(22, e.to_string()))?
            }
        };
        s.insert(db, coll, raw)?;
        out.upserted = Some(id);
        out.images = Some((None, doc));
    }
    Ok(out)
}

/// `update`.
pub fn update(shared: &Arc<Shared>, cmd: &mut Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    check_writable(&cmd.db, &coll)?;
    let stmts = cmd.take_docs("updates")?;
    let ordered = ordered(cmd);
    let mut n = 0usize;
    let mut modified = 0usize;
    let mut upserted = Vec::new();
    let mut errors = Vec::new();
    shared.with_store(|s| {
        for (i, raw) in stmts.iter().enumerate() {
            let r = (|| -> CmdResult<UpdateOutcome> {
                let st = decode(raw)?;
                let q = st.get_document("q").cloned().unwrap_or_default();
                let u = st.get("u").ok_or_else(|| {
                    CommandError::new(
                        40414,
                        "BSON field 'update.updates.u' is missing but a required field",
                    )
                })?;
                let spec = UpdateSpec::parse(u)?;
                let multi = crate::value::truthy(st.get("multi"));
                let upsert = crate::value::truthy(st.get("upsert"));
                let raw_u = raw.get_document("u").ok();
                run_update(s, &cmd.db, &coll, &q, &spec, multi, upsert, None, raw_u)
            })();
            match r {
                Ok(o) => {
                    n += o.matched;
                    modified += o.modified;
                    if let Some(id) = o.upserted {
                        n += 1;
                        upserted.push(Bson::Document(doc! {"index": i as i32, "_id": id}));
                    }
                }
                Err(e) => {
                    errors.push(write_error(i, &e));
                    if ordered {
                        break;
                    }
                }
            }
        }
    });
    shared.count_op(2);
    let mut r = doc! {"n": n as i32, "nModified": modified as i32};
    if !upserted.is_empty() {
        r.insert("upserted", upserted);
    }
    if !errors.is_empty() {
        r.insert("writeErrors", errors);
    }
    r.insert("ok", 1.0);
    Ok(Reply::Doc(r))
}

/// `delete`.
pub fn delete(shared: &Arc<Shared>, cmd: &mut Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    check_writable(&cmd.db, &coll)?;
    let stmts = cmd.take_docs("deletes")?;
    let ordered = ordered(cmd);
    let mut n = 0usize;
    let mut errors = Vec::new();
    shared.with_store(|s| {
        for (i, raw) in stmts.iter().enumerate() {
            let r = (|| -> CmdResult<usize> {
                let st = decode(raw)?;
                let q = st.get_document("q").cloned().unwrap_or_default();
                let limit = st.get("limit").and_then(crate::value::as_i64).unwrap_or(0);
                let targets = match s.coll(&cmd.db, &coll) {
                    Some(c) => {
                        select(c, &q, None, 0, if limit == 1 { Some(1) } else { None })?.docs
                    }
                    None => Vec::new(),
                };
                let mut k = 0;
                for raw in targets {
                    let id = crate::store::raw_id(&raw)?;
                    if s.delete(&cmd.db, &coll, &id)? {
                        k += 1;
                    }
                }
                Ok(k)
            })();
            match r {
                Ok(k) => n += k,
                Err(e) => {
                    errors.push(write_error(i, &e));
                    if ordered {
                        break;
                    }
                }
            }
        }
    });
    shared.count_op(3);
    let mut r = doc! {"n": n as i32};
    if !errors.is_empty() {
        r.insert("writeErrors", errors);
    }
    r.insert("ok", 1.0);
    Ok(Reply::Doc(r))
}

/// `findAndModify`.
pub fn find_and_modify(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    check_writable(&cmd.db, &coll)?;
    let q = cmd.doc_arg("query")?.unwrap_or_default();
    let sort = cmd.doc_arg("sort")?;
    let fields = cmd.doc_arg("fields")?;
    let remove = cmd.flag("remove");
    let new = cmd.flag("new");
    let upsert = cmd.flag("upsert");
    let (value, last_error) = shared.with_store(|s| -> CmdResult<(Option<Document>, Document)> {
        if remove {
            let target = match s.coll(&cmd.db, &coll) {
                Some(c) => select(c, &q, sort.as_ref(), 0, Some(1))?.docs.into_iter().next(),
                None => None,
            };
            let Some(raw) = target else {
                return Ok((None, doc! {"n": 0}));
            };
            let d = decode(&raw)?;
            let id = crate::store::raw_id(&raw)?;
            s.delete(&cmd.db, &coll, &id)?;
            return Ok((Some(d), doc! {"n": 1}));
        }
        let u = cmd
            .body
            .get("update")
            .ok_or_else(|| CommandError::new(9, "Either an update or remove=true must be specified"))?;
        let spec = UpdateSpec::parse(u)?;
        let o = run_update(s, &cmd.db, &coll, &q, &spec, false, upsert, sort.as_ref(), None)?;
        let mut le = doc! {"n": (o.matched + usize::from(o.upserted.is_some())) as i32, "updatedExisting": o.matched > 0};
        if let Some(id) = &o.upserted {
            le.insert("upserted", id.clone());
        }
        let value = o.images.and_then(|(pre, post)| if new { Some(post) } else { pre });
        Ok((value, le))
    })?;
    let value = match (value, fields) {
        (Some(v), Some(f)) => Bson::Document(project(&v, &f)?),
        (Some(v), None) => Bson::Document(v),
        (None, _) => Bson::Null,
    };
    Ok(Reply::Doc(
        doc! {"lastErrorObject": last_error, "value": value, "ok": 1.0},
    ))
}

/// `applyOps` with CRUD and command entries, as a replication tool sends them.
pub fn apply_ops(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let ops = cmd
        .body
        .get_array("applyOps")
        .map_err(|_| CommandError::failed_to_parse("applyOps must be an array"))?
        .clone();
    let always_upsert = cmd
        .body
        .get("alwaysUpsert")
        .is_none_or(|v| crate::value::truthy(Some(v)));
    let mut results = Vec::new();
    shared.with_store(|s| -> CmdResult<()> {
        for op in &ops {
            let Bson::Document(entry) = op else {
                return Err(CommandError::failed_to_parse(
                    "applyOps entries must be documents",
                ));
            };
            apply_entry(s, entry, always_upsert)?;
            results.push(Bson::Boolean(true));
        }
        Ok(())
    })?;
    Ok(Reply::Doc(
        doc! {"applied": results.len() as i32, "results": results, "ok": 1.0},
    ))
}

fn apply_entry(s: &mut Store, entry: &Document, always_upsert: bool) -> CmdResult<()> {
    let op = entry
        .get_str("op")
        .map_err(|_| CommandError::failed_to_parse("oplog entry needs 'op'"))?;
    let ns = entry.get_str("ns").unwrap_or("");
    let o = entry
        .get_document("o")
        .map_err(|_| CommandError::failed_to_parse("oplog entry needs an 'o' document"))?;
    match op {
        "n" => Ok(()),
        "i" => {
            let (db, coll) = crate::store::split_ns(ns)?;
            let id = o
                .get("_id")
                .cloned()
                .ok_or_else(|| CommandError::bad_value("insert without _id"))?;
            let existing = s
                .coll(db, coll)
                .and_then(|c| c.docs.get(&crate::store::OrdBson(id.clone())).cloned());
            match existing {
                Some(raw) => {
                    let pre = decode(&raw)?;
                    if !diff::docs_binary_equal(&pre, o) {
                        s.replace(db, coll, &pre, o, o.clone())?;
                    }
                    Ok(())
                }
                None => {
                    let raw = RawDocumentBuf::try_from(o)
                        .map_err(|e| CommandError::new(22, e.to_string()))?;
                    s.insert(db, coll, raw)
                }
            }
        }
        "d" => {
            let (db, coll) = crate::store::split_ns(ns)?;
            let id = o.get("_id").cloned().unwrap_or(Bson::Null);
            s.delete(db, coll, &id).map(|_| ())
        }
        "u" => {
            let (db, coll) = crate::store::split_ns(ns)?;
            let key = entry
                .get_document("o2")
                .map_err(|_| CommandError::failed_to_parse("update entry needs 'o2'"))?;
            let id = key.get("_id").cloned().unwrap_or(Bson::Null);
            let existing = s
                .coll(db, coll)
                .and_then(|c| c.docs.get(&crate::store::OrdBson(id.clone())).cloned());
            let version = o.get("$v").and_then(crate::value::as_i64);
            let post_of = |pre: &Document| -> CmdResult<Document> {
                match version {
                    Some(2) => {
                        let d = o.get_document("diff").map_err(|_| {
                            CommandError::failed_to_parse("$v: 2 update needs 'diff'")
                        })?;
                        diff::apply_diff(pre, d).map_err(|e| CommandError::new(4728000, e))
                    }
                    Some(v) => Err(CommandError::new(
                        4772600,
                        format!("Unsupported $v value {v} in oplog update entry"),
                    )),
                    None => {
                        let spec = UpdateSpec::parse(&Bson::Document(o.clone()))?;
                        update::apply(pre, &spec, false)
                    }
                }
            };
            match existing {
                Some(raw) => {
                    let pre = decode(&raw)?;
                    let post = post_of(&pre)?;
                    let form = if version == Some(2) {
                        Some(o.clone())
                    } else {
                        diff::update_entry(&pre, &post, false)
                    };
                    if let Some(form) = form {
                        if !diff::docs_binary_equal(&pre, &post) {
                            s.replace(db, coll, &pre, &post, form)?;
                        }
                    }
                    Ok(())
                }
                None if always_upsert => {
                    let base = doc! {"_id": id};
                    let post = id_first(post_of(&base)?);
                    let raw = RawDocumentBuf::try_from(&post)
                        .map_err(|e| CommandError::new(22, e.to_string()))?;
                    s.insert(db, coll, raw)
                }
                None => Err(CommandError::new(
                    26,
                    format!("Failed to apply update: no document with _id {id} in {ns}"),
                )),
            }
        }
        "c" => {
            let db = ns.strip_suffix(".$cmd").unwrap_or(ns);
            let Some((name, arg)) = o.iter().next() else {
                return Err(CommandError::failed_to_parse("empty command entry"));
            };
            let coll = arg.as_str().unwrap_or("").to_string();
            match name.as_str() {
                "create" => {
                    let mut opts = o.clone();
                    opts.remove("create");
                    opts.remove("idIndex");
                    s.create_collection(db, &coll, opts)
                }
                "drop" => {
                    s.drop_collection(db, &coll);
                    Ok(())
                }
                "dropDatabase" => {
                    s.drop_database(db);
                    Ok(())
                }
                "renameCollection" => {
                    let to = o
                        .get_str("to")
                        .map_err(|_| CommandError::failed_to_parse("rename needs 'to'"))?;
                    let drop_target = o
                        .get("dropTarget")
                        .is_some_and(|v| !matches!(v, Bson::Boolean(false)));
                    s.rename(&coll, to, drop_target)
                }
                "createIndexes" => {
                    let mut spec = o.clone();
                    spec.remove("createIndexes");
                    s.create_indexes(db, &coll, vec![spec]).map(|_| ())
                }
                "dropIndexes" => {
                    let which = o.get("index").cloned().unwrap_or(Bson::Null);
                    s.drop_indexes(db, &coll, &which).map(|_| ())
                }
                "collMod" => s.coll_mod(db, &coll, o).map(|_| ()),
                "applyOps" => {
                    let Bson::Array(inner) = arg else {
                        return Err(CommandError::failed_to_parse("applyOps must be an array"));
                    };
                    for e in inner {
                        if let Bson::Document(d) = e {
                            apply_entry(s, d, always_upsert)?;
                        }
                    }
                    Ok(())
                }
                other => Err(CommandError::bad_value(format!(
                    "unsupported command in applyOps: {other}"
                ))),
            }
        }
        other => Err(CommandError::bad_value(format!("invalid op type: {other}"))),
    }
}
