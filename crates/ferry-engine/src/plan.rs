//! Metadata: the oplog start point (reference §8.6), listing collections/views/indexes, estimating sizes,
//! splitting collections into `_id` ranges, creating collections (same options) and views on the
//! destination (recording each namespace in the state *before* creating it), and INDEX_CREATION.
//!
//! Range splitting uses `$sample` + `$sort` on `_id` (cheap random cursor on real servers, reference
//! §10; `splitVector` needs extra privileges and `$bucketAuto` is a full sorted scan). Split points are
//! taken from the dominant `_id` type only; the first range is the complement of `{_id: {$gte: p1}}` so
//! documents whose `_id` has another BSON type are never skipped.

use std::collections::HashSet;
use std::future::IntoFuture;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

use crate::context::Ctx;
use crate::mongo::{self, error_code, Policy, Side};
use crate::oplog::NsFilter;
use crate::state::{self, CollState, EngineState, ViewState};
use crate::types::OpTime;
use crate::EngineError;

/// Newest (or oldest) entry of the source oplog.
pub(crate) async fn oplog_edge(
    src: &Client,
    policy: Policy<'_>,
    newest: bool,
) -> Result<Option<OpTime>, EngineError> {
    let coll = src.database("local").collection::<Document>("oplog.rs");
    let dir = if newest { -1 } else { 1 };
    let found = mongo::retry(policy, Side::Source, "read oplog edge", || {
        coll.find_one(doc! {})
            .sort(doc! {"$natural": dir})
            .projection(doc! {"ts": 1})
            .into_future()
    })
    .await
    .map_err(|e| e.into_engine("find", "local.oplog.rs"))?;
    let Some(found) = found else { return Ok(None) };
    match found {
        Some(d) => match d.get_timestamp("ts") {
            Ok(ts) => Ok(Some(OpTime::from_ts(ts))),
            Err(_) => Err(EngineError::NoOplog {
                detail: "oplog entry without ts".into(),
            }),
        },
        None => Err(EngineError::NoOplog {
            detail: "local.oplog.rs is empty or missing".into(),
        }),
    }
}

/// Oldest `startOpTime` of transactions open on the source (reference §8.6 beginFetching).
pub(crate) async fn oldest_open_txn(src: &Client, policy: Policy<'_>) -> Option<OpTime> {
    let coll = src
        .database("config")
        .collection::<Document>("transactions");
    let filter = doc! {"state": {"$in": ["inProgress", "prepared"]}};
    let res = mongo::retry(policy, Side::Source, "read open transactions", || async {
        coll.find(filter.clone())
            .await?
            .try_collect::<Vec<Document>>()
            .await
    })
    .await;
    let docs = match res {
        Ok(Some(d)) => d,
        Ok(None) => return None,
        Err(e) => {
            tracing::debug!(error = %e.error, "cannot read config.transactions; assuming no open transactions");
            return None;
        }
    };
    docs.iter()
        .filter_map(|d| d.get_document("startOpTime").ok()?.get_timestamp("ts").ok())
        .map(OpTime::from_ts)
        .min()
}

/// `(name, sizeOnDisk, empty)` of the source's databases.
pub(crate) async fn databases(
    src: &Client,
    policy: Policy<'_>,
) -> Result<Vec<(String, u64, bool)>, EngineError> {
    let reply = mongo::command(
        src,
        policy,
        Side::Source,
        "admin",
        doc! {"listDatabases": 1},
    )
    .await
    .map_err(|e| e.into_engine("listDatabases", "admin"))?
    .unwrap_or_default();
    let mut out = Vec::new();
    if let Ok(dbs) = reply.get_array("databases") {
        for d in dbs.iter().filter_map(Bson::as_document) {
            let Ok(name) = d.get_str("name") else {
                continue;
            };
            let size = match d.get("sizeOnDisk") {
                Some(Bson::Int64(n)) => *n as u64,
                Some(Bson::Int32(n)) => *n as u64,
                Some(Bson::Double(n)) => *n as u64,
                _ => 0,
            };
            out.push((name.to_string(), size, d.get_bool("empty").unwrap_or(false)));
        }
    }
    Ok(out)
}

async fn list_collections(
    client: &Client,
    policy: Policy<'_>,
    side: Side,
    db: &str,
) -> Result<Vec<Document>, EngineError> {
    let database = client.database(db);
    mongo::retry(policy, side, "listCollections", || async {
        database
            .run_cursor_command(doc! {"listCollections": 1})
            .await?
            .try_collect::<Vec<Document>>()
            .await
    })
    .await
    .map_err(|e| e.into_engine("listCollections", db))
    .map(Option::unwrap_or_default)
}

fn num(d: &Document, key: &str) -> u64 {
    match d.get(key) {
        Some(Bson::Int32(n)) => (*n).max(0) as u64,
        Some(Bson::Int64(n)) => (*n).max(0) as u64,
        Some(Bson::Double(n)) => n.max(0.0) as u64,
        _ => 0,
    }
}

/// Builds the plan: collections (with estimates and ranges) and views of the selected databases.
pub(crate) async fn build(
    src: &Client,
    policy: Policy<'_>,
    filter: &NsFilter,
    docs_per_range: u64,
) -> Result<EngineState, EngineError> {
    let mut st = EngineState::new();
    let dbs = databases(src, policy).await?;
    for (db, _, _) in dbs.iter().filter(|(db, _, _)| filter.db_selected(db)) {
        for entry in list_collections(src, policy, Side::Source, db).await? {
            let Ok(name) = entry.get_str("name") else {
                continue;
            };
            let ns = format!("{db}.{name}");
            if !filter.ns_selected(&ns) {
                continue;
            }
            let options = entry.get_document("options").cloned().unwrap_or_default();
            match entry.get_str("type").unwrap_or("collection") {
                "collection" => {
                    // Capped collections evict in insertion order: copied as one range in natural
                    // order, applied in one partition (`ordered`).
                    let capped = options.get_bool("capped").unwrap_or(false);
                    let per_range = if capped { 0 } else { docs_per_range };
                    let coll = estimate_and_split(src, policy, db, name, options, per_range).await?;
                    if capped {
                        st.ordered.push(ns.clone());
                    }
                    st.collections.push(coll);
                }
                "view" => st.views.push(ViewState { ns, options: state::to_ext(Bson::Document(options)) }),
                other => {
                    return Err(EngineError::Unsupported {
                        namespace: ns,
                        detail: format!("collections of type '{other}' (time series) cannot be migrated yet; exclude this database or drop the collection"),
                    })
                }
            }
        }
    }
    Ok(st)
}

async fn estimate_and_split(
    src: &Client,
    policy: Policy<'_>,
    db: &str,
    name: &str,
    options: Document,
    docs_per_range: u64,
) -> Result<CollState, EngineError> {
    let ns = format!("{db}.{name}");
    let count = mongo::command(src, policy, Side::Source, db, doc! {"count": name})
        .await
        .map(|r| r.map(|d| num(&d, "n")).unwrap_or(0))
        .unwrap_or(0);
    let size = mongo::command(src, policy, Side::Source, db, doc! {"collStats": name})
        .await
        .map(|r| r.map(|d| num(&d, "size")).unwrap_or(0))
        .unwrap_or(0);
    let n_ranges = if docs_per_range == 0 {
        1
    } else {
        count.div_ceil(docs_per_range).clamp(1, 4096) as usize
    };
    let mut splits = Vec::new();
    if n_ranges > 1 {
        let sample_size = (n_ranges as u64 * 16).min(count).max(1) as i64;
        let coll = src.database(db).collection::<Document>(name);
        let pipeline = vec![
            doc! {"$sample": {"size": sample_size}},
            doc! {"$project": {"_id": 1}},
            doc! {"$sort": {"_id": 1}},
        ];
        let sample = mongo::retry(policy, Side::Source, "sample _id", || async {
            coll.aggregate(pipeline.clone())
                .await?
                .try_collect::<Vec<Document>>()
                .await
        })
        .await;
        match sample {
            Ok(Some(docs)) => {
                let ids: Vec<Bson> = docs
                    .into_iter()
                    .filter_map(|mut d| d.remove("_id"))
                    .collect();
                splits = state::pick_splits(&ids, n_ranges);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(%ns, error = %e.error, "cannot sample _id; copying the collection as one range")
            }
        }
    }
    Ok(CollState {
        ns,
        options: state::to_ext(Bson::Document(options)),
        docs_estimated: count,
        bytes_estimated: size,
        ranges: state::ranges_from_splits(splits),
    })
}

pub(crate) fn split_ns(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

/// Names of the collections and views existing on the destination in `db`.
pub(crate) async fn dest_names(ctx: &Ctx, db: &str) -> Result<HashSet<String>, EngineError> {
    Ok(
        list_collections(&ctx.dst, ctx.policy(), Side::Destination, db)
            .await?
            .iter()
            .filter_map(|d| d.get_str("name").ok().map(str::to_string))
            .collect(),
    )
}

/// Creates `ns` with `options` unless it exists; records it as created (and checkpoints) first.
pub(crate) async fn create_namespace(
    ctx: &Ctx,
    ns: &str,
    options: &Document,
    existing: &mut HashSet<String>,
) -> Result<(), EngineError> {
    let (db, name) = split_ns(ns);
    if existing.contains(name) {
        return Ok(());
    }
    {
        let mut st = ctx.state();
        // The first view of a database creates `<db>.system.views` (mongodb/mongo
        // `src/mongo/db/catalog/create_collection.cpp`, `_createSystemDotViewsIfNecessary`): the
        // task created it too, and rollback drops it after the view.
        let views = format!("{db}.system.views");
        if options.contains_key("viewOn")
            && !existing.contains("system.views")
            && !st.created.contains(&views)
        {
            st.created.push(views);
        }
        if !st.created.iter().any(|c| c == ns) {
            st.created.push(ns.to_string());
        }
    }
    ctx.emit_checkpoint().await;
    let mut cmd = doc! {"create": name};
    for (k, v) in options {
        // idIndex: the default _id index is identical (same collation); some servers reject the field.
        // temp: a cross-database rename's temporary collection (dropped by a server restart): created
        // as an ordinary collection, renamed onto its target later, rolled back like any other.
        if k != "create" && k != "$o2" && k != "uuid" && k != "idIndex" && k != "temp" {
            cmd.insert(k.clone(), v.clone());
        }
    }
    match ctx.dst_command(db, cmd).await {
        Ok(_) => {}
        Err(e) if error_code(&e.error) == Some(48) => {}
        Err(e) => return Err(e.into_engine("create", ns)),
    }
    existing.insert(name.to_string());
    if options.contains_key("viewOn") {
        existing.insert("system.views".to_string());
    }
    tracing::info!(task_id = %ctx.cfg.task_id, %ns, "created on destination");
    Ok(())
}

/// Creates every planned collection, then every view (views after their sources, retried in rounds so
/// views on views work).
pub(crate) async fn create_all(ctx: &Ctx) -> Result<(), EngineError> {
    let (colls, views) = {
        let st = ctx.state();
        let c: Vec<(String, serde_json::Value)> = st
            .collections
            .iter()
            .map(|c| (c.ns.clone(), c.options.clone()))
            .collect();
        let v: Vec<(String, serde_json::Value)> = st
            .views
            .iter()
            .map(|v| (v.ns.clone(), v.options.clone()))
            .collect();
        (c, v)
    };
    let mut existing: std::collections::HashMap<String, HashSet<String>> = Default::default();
    for (ns, opts) in &colls {
        let db = split_ns(ns).0.to_string();
        if !existing.contains_key(&db) {
            let names = dest_names(ctx, &db).await?;
            existing.insert(db.clone(), names);
        }
        let opts = state::from_ext_doc(opts)?;
        let set = existing.entry(db).or_default();
        create_namespace(ctx, ns, &opts, set).await?;
    }
    let mut pending: Vec<(String, Document)> = Vec::new();
    for (ns, opts) in &views {
        pending.push((ns.clone(), state::from_ext_doc(opts)?));
    }
    for _round in 0..8 {
        if pending.is_empty() {
            break;
        }
        let mut failed = Vec::new();
        let mut last_err = None;
        for (ns, opts) in pending {
            let db = split_ns(&ns).0.to_string();
            if !existing.contains_key(&db) {
                let names = dest_names(ctx, &db).await?;
                existing.insert(db.clone(), names);
            }
            let set = existing.entry(db).or_default();
            if let Err(e) = create_namespace(ctx, &ns, &opts, set).await {
                last_err = Some(e);
                failed.push((ns, opts));
            }
        }
        pending = failed;
        if let (false, Some(e)) = (pending.is_empty(), last_err) {
            tracing::debug!(error = %e, "view creation round failed; retrying");
        }
    }
    if let Some((ns, _)) = pending.first() {
        return Err(EngineError::Command {
            side: "destination",
            namespace: ns.clone(),
            operation: "create view".into(),
            detail: "the view could not be created after its sources".into(),
        });
    }
    Ok(())
}

/// The index specs of `ns` on one side; `Ok(None)` when the collection is gone. With
/// `finished_only`, index builds still in progress are left out: `listIndexes` lists them like finished
/// ones, and only with `includeBuildUUIDs: true` does it mark them, as `{spec, buildUUID}` (mongodb/mongo
/// `src/mongo/db/catalog/list_indexes.cpp`, `listIndexesInLock`). A build in progress is planned by its
/// `commitIndexBuild` entry, which the oplog brings later (or never, when it aborts).
async fn index_specs(
    client: &Client,
    policy: Policy<'_>,
    side: Side,
    ns: &str,
    finished_only: bool,
) -> Result<Option<Vec<Document>>, EngineError> {
    let (db, name) = split_ns(ns);
    let database = client.database(db);
    let run = |cmd: Document| {
        let database = database.clone();
        async move {
            mongo::retry(policy, side, "listIndexes", || async {
                database
                    .run_cursor_command(cmd.clone())
                    .await?
                    .try_collect::<Vec<Document>>()
                    .await
            })
            .await
        }
    };
    let res = if finished_only {
        match run(doc! {"listIndexes": name, "includeBuildUUIDs": true}).await {
            // A server that does not know the option (code 40415, unknown field): plain listing.
            Err(e) if error_code(&e.error) == Some(40415) => run(doc! {"listIndexes": name}).await,
            other => other,
        }
    } else {
        run(doc! {"listIndexes": name}).await
    };
    let specs = match res {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(Some(Vec::new())),
        Err(e) if error_code(&e.error) == Some(26) => return Ok(None),
        Err(e) => return Err(e.into_engine("listIndexes", ns)),
    };
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        if s.contains_key("buildUUID") {
            let index = s
                .get_document("spec")
                .ok()
                .and_then(|d| d.get_str("name").ok())
                .unwrap_or("?");
            tracing::info!(%ns, index, "index build in progress on the source; it is created when the oplog commits it");
            continue;
        }
        out.push(s);
    }
    Ok(Some(out))
}

/// The destination's index specs of `ns` (empty when the collection is gone).
pub(crate) async fn list_indexes(ctx: &Ctx, ns: &str) -> Result<Vec<Document>, EngineError> {
    Ok(
        index_specs(&ctx.dst, ctx.policy(), Side::Destination, ns, false)
            .await?
            .unwrap_or_default(),
    )
}

/// A view's current definition on the source (`viewOn`, `pipeline`, `collation`), if it is a view.
pub(crate) async fn source_view(
    ctx: &Ctx,
    db: &str,
    view: &str,
) -> Result<Option<Document>, EngineError> {
    let database = ctx.src.database(db);
    let cmd = doc! {"listCollections": 1, "filter": {"name": view, "type": "view"}};
    let found = mongo::retry(ctx.policy(), Side::Source, "listCollections", || async {
        database
            .run_cursor_command(cmd.clone())
            .await?
            .try_collect::<Vec<Document>>()
            .await
    })
    .await
    .map_err(|e| e.into_engine("listCollections", db))?
    .unwrap_or_default();
    Ok(found
        .into_iter()
        .next()
        .and_then(|d| d.get_document("options").ok().cloned()))
}

/// INDEX_CREATION: every finished secondary index of every planned collection, same options, except
/// that unique and TTL indexes are relaxed until cut-over (`indexes`).
pub(crate) async fn build_indexes(ctx: &Ctx) -> Result<(), EngineError> {
    use std::sync::atomic::Ordering;
    let namespaces = ctx.planned_namespaces();
    let mut work = Vec::new();
    for ns in &namespaces {
        let specs = index_specs(&ctx.src, ctx.policy(), Side::Source, ns, true).await?;
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        let Some(specs) = specs else { continue };
        let specs: Vec<Document> = specs
            .into_iter()
            .filter(|s| s.get_str("name").map(|n| n != "_id_").unwrap_or(false))
            .map(|mut s| {
                s.remove("ns");
                s
            })
            .collect();
        if !specs.is_empty() {
            work.push((ns.clone(), specs));
        }
    }
    let total: usize = work.iter().map(|(_, s)| s.len()).sum();
    ctx.live.indexes_total.store(total as u32, Ordering::SeqCst);
    ctx.live.indexes_built.store(0, Ordering::SeqCst);
    for (ns, specs) in work {
        // Paused: no new index build starts on the destination.
        if !ctx.wait_unpaused().await {
            return Ok(());
        }
        let (db, name) = split_ns(&ns);
        let n = specs.len() as u32;
        let mut relaxed = Vec::with_capacity(specs.len());
        let mut records = Vec::new();
        for spec in &specs {
            let (s, r) = crate::indexes::relax(&ns, spec);
            relaxed.push(s);
            records.extend(r);
        }
        if !records.is_empty() {
            // Recorded before the build, so a crash cannot leave a relaxed index nobody restores.
            crate::indexes::remember(&mut ctx.state(), records);
            ctx.emit_checkpoint().await;
        }
        let cmd = doc! {"createIndexes": name, "indexes": relaxed};
        match ctx.dst_command(db, cmd).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => {}
            Err(e) if matches!(error_code(&e.error), Some(85) | Some(86) | Some(68)) => {
                tracing::warn!(%ns, error = %e.error, "index already exists with other options on the destination");
            }
            Err(e) => return Err(e.into_engine("createIndexes", &ns)),
        }
        ctx.live.indexes_built.fetch_add(n, Ordering::SeqCst);
        tracing::info!(task_id = %ctx.cfg.task_id, %ns, indexes = n, "indexes built");
    }
    Ok(())
}
