//! Unique and TTL indexes during a migration, as MongoDB's own tools do (reference §8.7, §10).
//!
//! The copy is not a point-in-time snapshot: an application swapping unique values between documents
//! leaves transient duplicates until the oplog is applied, so a unique index built on it fails with
//! E11000; and a destination TTL monitor, lagging behind the source, deletes documents the source has
//! just refreshed (a later `$v:1` update then matches nothing). So the destination gets every unique
//! index non-unique and every TTL index with its expiry paused (`expireAfterSeconds` = 2^31-1, as
//! mongosync does), and the source's definition is recorded in the checkpoint (`RelaxedIndex`). At
//! cut-over, once everything through the final timestamp is applied and the source is quiescent,
//! `restore` converts them back: `collMod` `prepareUnique` then `unique` (MongoDB 6.0+), or a rebuild
//! with the source's spec on older servers; TTL indexes get their real `expireAfterSeconds`. A
//! conversion that finds true duplicates fails the cut-over naming the duplicate keys, never silently.

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

use crate::context::Ctx;
use crate::mongo::{self, error_code, Side};
use crate::plan::split_ns;
use crate::state::{self, EngineState, RelaxedIndex};
use crate::EngineError;

/// `expireAfterSeconds` while a TTL index is paused: the largest value the server accepts.
pub(crate) const TTL_PAUSED: i32 = i32::MAX;

/// What the destination gets for a source index spec during the migration, and what to restore at
/// cut-over (`None` when the spec is created as is).
pub(crate) fn relax(ns: &str, spec: &Document) -> (Document, Option<RelaxedIndex>) {
    let name = spec.get_str("name").unwrap_or("").to_string();
    if name == "_id_" {
        return (spec.clone(), None);
    }
    let unique = spec.get_bool("unique").unwrap_or(false);
    let prepare_unique = spec.get_bool("prepareUnique").unwrap_or(false);
    let ttl = spec.get("expireAfterSeconds").cloned();
    if !unique && !prepare_unique && ttl.is_none() {
        return (spec.clone(), None);
    }
    let mut relaxed = spec.clone();
    relaxed.remove("unique");
    relaxed.remove("prepareUnique");
    if ttl.is_some() {
        relaxed.insert("expireAfterSeconds", TTL_PAUSED);
    }
    let record = RelaxedIndex {
        ns: ns.to_string(),
        name,
        unique,
        prepare_unique,
        ttl: ttl.map(state::to_ext),
        spec: state::to_ext(Bson::Document(spec.clone())),
    };
    (relaxed, Some(record))
}

/// Records (or replaces) relaxed indexes in the state.
pub(crate) fn remember(st: &mut EngineState, records: Vec<RelaxedIndex>) {
    for r in records {
        st.relaxed.retain(|x| !(x.ns == r.ns && x.name == r.name));
        st.relaxed.push(r);
    }
}

/// Forgets the relaxed indexes of `ns` (dropped collection), or of a whole database (`db.` prefix).
pub(crate) fn forget_ns(st: &mut EngineState, ns: &str) {
    st.relaxed.retain(|x| x.ns != ns);
}

pub(crate) fn forget_db(st: &mut EngineState, db: &str) {
    let prefix = format!("{db}.");
    st.relaxed.retain(|x| !x.ns.starts_with(&prefix));
}

pub(crate) fn forget_index(st: &mut EngineState, ns: &str, name: &str) {
    st.relaxed
        .retain(|x| !(x.ns == ns && (name == "*" || x.name == name)));
}

pub(crate) fn rename_ns(st: &mut EngineState, from: &str, to: &str) {
    forget_ns(st, to);
    for r in st.relaxed.iter_mut().filter(|r| r.ns == from) {
        r.ns = to.to_string();
    }
}

/// The destination's index specs of `ns` (empty if the collection is gone).
async fn destination_indexes(ctx: &Ctx, ns: &str) -> Result<Vec<Document>, EngineError> {
    let (db, name) = split_ns(ns);
    let database = ctx.dst.database(db);
    let cmd = doc! {"listIndexes": name};
    let res = mongo::retry(ctx.policy(), Side::Destination, "listIndexes", || async {
        database
            .run_cursor_command(cmd.clone())
            .await?
            .try_collect::<Vec<Document>>()
            .await
    })
    .await;
    match res {
        Ok(v) => Ok(v.unwrap_or_default()),
        Err(e) if error_code(&e.error) == Some(26) => Ok(Vec::new()),
        Err(e) => Err(e.into_engine("listIndexes", ns)),
    }
}

/// The destination's maxWireVersion (17 = MongoDB 6.0, which has collMod prepareUnique/unique).
async fn destination_wire_version(ctx: &Ctx) -> i32 {
    match ctx.dst_command("admin", doc! {"hello": 1}).await {
        Ok(Some(h)) => h.get_i32("maxWireVersion").unwrap_or(0),
        _ => 0,
    }
}

/// Cut-over: gives every relaxed index its source definition back. Idempotent (each index is checked
/// on the destination first and removed from the state once restored), so a crash in the middle
/// resumes where it stopped.
pub(crate) async fn restore(ctx: &Ctx) -> Result<(), EngineError> {
    let records = ctx.state().relaxed.clone();
    if records.is_empty() {
        return Ok(());
    }
    let wire = destination_wire_version(ctx).await;
    let mut failures = Vec::new();
    for r in records {
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        match restore_one(ctx, &r, wire).await {
            Ok(()) => {
                forget_index(&mut ctx.state(), &r.ns, &r.name);
                ctx.emit_checkpoint().await;
                tracing::info!(task_id = %ctx.cfg.task_id, ns = %r.ns, index = %r.name, unique = r.unique, "index restored to its source definition");
            }
            Err(Restore::Duplicates(detail)) => {
                failures.push(format!("index '{}' on {}: {detail}", r.name, r.ns))
            }
            Err(Restore::Engine(e)) => return Err(e),
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(EngineError::UniqueConversion {
        detail: failures.join("; "),
    })
}

enum Restore {
    Duplicates(String),
    Engine(EngineError),
}

impl From<EngineError> for Restore {
    fn from(e: EngineError) -> Self {
        Restore::Engine(e)
    }
}

async fn restore_one(ctx: &Ctx, r: &RelaxedIndex, wire: i32) -> Result<(), Restore> {
    let (db, coll) = split_ns(&r.ns);
    let current = destination_indexes(ctx, &r.ns).await?;
    let Some(cur) = current
        .iter()
        .find(|s| s.get_str("name").ok() == Some(r.name.as_str()))
    else {
        // Dropped since (its drop was applied): nothing to restore.
        return Ok(());
    };
    if let Some(ttl) = &r.ttl {
        let want = state::from_ext(ttl)?;
        if cur.get("expireAfterSeconds") != Some(&want) {
            coll_mod(
                ctx,
                db,
                coll,
                doc! {"name": &r.name, "expireAfterSeconds": want},
            )
            .await?;
        }
    }
    let is_unique = cur.get_bool("unique").unwrap_or(false);
    let is_prepared = cur.get_bool("prepareUnique").unwrap_or(false);
    if !r.unique && !r.prepare_unique {
        return Ok(());
    }
    if wire < 17 {
        // No collMod conversion before 6.0: rebuild with the source's spec.
        if r.unique && !is_unique {
            let spec = state::from_ext_doc(&r.spec)?;
            command(ctx, db, doc! {"dropIndexes": coll, "index": &r.name}, &r.ns).await?;
            let res = ctx
                .dst_command(db, doc! {"createIndexes": coll, "indexes": [spec]})
                .await;
            match res {
                Ok(_) => {}
                Err(e) if error_code(&e.error) == Some(11000) => {
                    return Err(Restore::Duplicates(format!(
                        "the destination holds duplicate keys: {}",
                        e.error
                    )))
                }
                Err(e) => return Err(e.into_engine("createIndexes", &r.ns).into()),
            }
        }
        return Ok(());
    }
    if !is_prepared && !is_unique {
        coll_mod(ctx, db, coll, doc! {"name": &r.name, "prepareUnique": true}).await?;
    }
    if r.unique && !is_unique {
        let res = ctx
            .dst_command(
                db,
                doc! {"collMod": coll, "index": {"name": &r.name, "unique": true}},
            )
            .await;
        match res {
            Ok(_) => {}
            Err(e) if error_code(&e.error) == Some(359) || error_code(&e.error) == Some(11000) => {
                return Err(Restore::Duplicates(duplicates_detail(&e.error)))
            }
            Err(e) => return Err(e.into_engine("collMod unique", &r.ns).into()),
        }
    }
    Ok(())
}

async fn coll_mod(ctx: &Ctx, db: &str, coll: &str, index: Document) -> Result<(), EngineError> {
    command(
        ctx,
        db,
        doc! {"collMod": coll, "index": index},
        &format!("{db}.{coll}"),
    )
    .await
}

async fn command(ctx: &Ctx, db: &str, cmd: Document, ns: &str) -> Result<(), EngineError> {
    let op = cmd.keys().next().cloned().unwrap_or_default();
    match ctx.dst_command(db, cmd).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(error_code(&e.error), Some(26) | Some(27)) => Ok(()),
        Err(e) => Err(e.into_engine(&op, ns)),
    }
}

/// The duplicate keys a failed conversion reports (CannotConvertIndexToUnique carries `violations:
/// [{ids: [...]}]` in its error info), as canonical extended JSON, at most 10 groups.
fn duplicates_detail(e: &mongodb::error::Error) -> String {
    let mut groups = Vec::new();
    let text = e.to_string();
    if let Some(info) = command_error_info(e) {
        if let Ok(v) = info.get_array("violations") {
            for g in v.iter().filter_map(Bson::as_document).take(10) {
                if let Ok(ids) = g.get_array("ids") {
                    let ids: Vec<String> = ids
                        .iter()
                        .map(|b| b.clone().into_canonical_extjson().to_string())
                        .collect();
                    groups.push(format!("[{}]", ids.join(", ")));
                }
            }
        }
    }
    if groups.is_empty() {
        format!("the destination holds duplicate keys ({text}); the source's unique index forbids them: compare those documents on both sides, fix the destination, then complete the task again")
    } else {
        format!(
            "the destination holds documents with duplicate keys, _id groups {}; the source's unique index forbids them: compare those documents on both sides, fix the destination, then complete the task again",
            groups.join(" ")
        )
    }
}

/// The raw server reply of a command error, when the driver kept it.
fn command_error_info(e: &mongodb::error::Error) -> Option<Document> {
    let raw = e.server_response()?;
    Document::try_from(raw).ok()
}
