//! Catalog commands: `listDatabases`, `listCollections`, `listIndexes`, `create`, `drop`,
//! `dropDatabase`, `renameCollection`, `createIndexes`, `dropIndexes`, `collMod`,
//! `collStats`, `dbStats`, `dbHash`.
//!
//! Owns the reply shapes of catalog and size commands. It must not implement CRUD.

use std::sync::Arc;

use bson::{doc, Bson, Document, RawDocumentBuf};

use super::{Cmd, ConnState, CursorReply, Reply};
use crate::error::{CmdResult, CommandError};
use crate::server::Shared;
use crate::store::Collection;

fn cursor_of(ns: String, docs: Vec<Document>, batch: Option<usize>) -> CmdResult<Reply> {
    let _ = batch;
    let mut raws = Vec::with_capacity(docs.len());
    let mut bytes = 0;
    for d in docs {
        let r = RawDocumentBuf::try_from(&d).map_err(|e| CommandError::new(22, e.to_string()))?;
        bytes += r.as_bytes().len();
        raws.push(Arc::new(r));
    }
    Ok(Reply::Cursor(CursorReply {
        id: 0,
        ns,
        first: true,
        docs: raws,
        bytes,
        extra: None,
    }))
}

fn db_size(colls: Option<&std::collections::BTreeMap<String, Collection>>) -> i64 {
    colls
        .map(|m| {
            m.values()
                .map(|c| c.storage_size() + c.indexes.iter().map(|i| c.index_size(i)).sum::<i64>())
                .sum()
        })
        .unwrap_or(0)
}

/// `listDatabases`.
pub fn list_databases(shared: &Arc<Shared>, _conn: &ConnState, cmd: &Cmd) -> CmdResult<Reply> {
    let name_only = cmd.flag("nameOnly");
    let filter = cmd.doc_arg("filter")?.unwrap_or_default();
    let (mut dbs, total) = shared.with_store(|s| {
        let mut names: Vec<String> = s.dbs.keys().cloned().collect();
        for sys in ["admin", "config", "local"] {
            if !names.iter().any(|n| n == sys) {
                names.push(sys.to_string());
            }
        }
        names.sort();
        let mut total = 0i64;
        let mut out = Vec::new();
        for n in names {
            let mut size = db_size(s.dbs.get(&n));
            if n == "local" {
                size += s.oplog.as_ref().map(|o| o.bytes() as i64).unwrap_or(0);
            }
            let size = size.max(8192);
            total += size;
            let empty = s.dbs.get(&n).is_none_or(|d| d.is_empty()) && n != "local";
            out.push(doc! {"name": n, "sizeOnDisk": size, "empty": empty});
        }
        (out, total)
    });
    if !filter.is_empty() {
        let mut kept = Vec::new();
        for d in dbs {
            if crate::filter::matches(&d, &filter)? {
                kept.push(d);
            }
        }
        dbs = kept;
    }
    if name_only {
        let names: Vec<Bson> = dbs
            .iter()
            .map(|d| Bson::Document(doc! {"name": d.get_str("name").unwrap_or("")}))
            .collect();
        return Ok(Reply::Doc(doc! {"databases": names, "ok": 1.0}));
    }
    Ok(Reply::Doc(doc! {
        "databases": dbs,
        "totalSize": total,
        "totalSizeMb": total / (1024 * 1024),
        "ok": 1.0,
    }))
}

/// `listCollections`.
pub fn list_collections(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let filter = cmd.doc_arg("filter")?.unwrap_or_default();
    let name_only = cmd.flag("nameOnly");
    let entries = shared.with_store(|s| {
        let mut out = Vec::new();
        if let Some(colls) = s.dbs.get(&cmd.db) {
            for (name, c) in colls {
                // A time-series collection is listed as type "timeseries" with its
                // `timeseries` options and `info: {readOnly: false}`; its buckets collection
                // and `system.views` are listed as collections.
                if c.is_view() && c.options.contains_key("timeseries") {
                    let mut options = Document::new();
                    for k in ["timeseries", "expireAfterSeconds", "collation"] {
                        if let Some(v) = c.options.get(k) {
                            options.insert(k, v.clone());
                        }
                    }
                    out.push(doc! {"name": name.clone(), "type": "timeseries", "options": options, "info": {"readOnly": false}});
                    continue;
                }
                let kind = if c.is_view() { "view" } else { "collection" };
                let mut e = doc! {"name": name.clone(), "type": kind, "options": c.options.clone()};
                if c.is_view() {
                    e.insert("info", doc! {"readOnly": true});
                } else if c.options.contains_key("clusteredIndex") {
                    e.insert("info", doc! {"readOnly": false, "uuid": c.uuid});
                } else {
                    e.insert("info", doc! {"readOnly": false, "uuid": c.uuid});
                    e.insert("idIndex", doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"});
                }
                out.push(e);
            }
        }
        if cmd.db == "local" && s.oplog.is_some() {
            out.push(doc! {
                "name": "oplog.rs", "type": "collection",
                "options": {"capped": true, "size": s.oplog.as_ref().map(|o| o.cap_bytes() as i64).unwrap_or(0), "autoIndexId": false},
                "info": {"readOnly": false, "uuid": bson::Uuid::from_bytes([0u8; 16])},
            });
        }
        out
    });
    let mut kept = Vec::new();
    for e in entries {
        if filter.is_empty() || crate::filter::matches(&e, &filter)? {
            if name_only {
                kept.push(doc! {"name": e.get_str("name").unwrap_or(""), "type": e.get_str("type").unwrap_or("")});
            } else {
                kept.push(e);
            }
        }
    }
    cursor_of(format!("{}.$cmd.listCollections", cmd.db), kept, None)
}

/// `listIndexes`.
///
/// In-progress index builds are listed like ready indexes by default; `includeBuildUUIDs:
/// true` turns each in-progress one into `{spec, buildUUID}`, `includeIndexBuildInfo: true`
/// turns every entry into `{spec}` and in-progress ones into `{spec, indexBuildInfo:
/// {buildUUID, ...}}` (src/mongo/db/catalog/list_indexes.cpp, `listIndexesInLock`;
/// src/mongo/db/commands/list_indexes.cpp).
pub fn list_indexes(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    let with_uuids = cmd.flag("includeBuildUUIDs");
    let with_info = cmd.flag("includeIndexBuildInfo");
    if with_uuids && with_info {
        return Err(CommandError::new(
            72,
            "The includeBuildUUIDs flag and includeIndexBuildInfo flag cannot both be set to true",
        ));
    }
    let specs = shared.with_store(|s| {
        s.coll(&cmd.db, &coll).map(|c| {
            let mut out: Vec<Document> = c
                .indexes
                .iter()
                .map(|i| {
                    if with_info {
                        doc! {"spec": i.spec.clone()}
                    } else {
                        i.spec.clone()
                    }
                })
                .collect();
            for (spec, uuid) in s.building_indexes(&cmd.db, &coll) {
                out.push(if with_uuids {
                    doc! {"spec": spec, "buildUUID": uuid}
                } else if with_info {
                    doc! {"spec": spec, "indexBuildInfo": {"buildUUID": uuid}}
                } else {
                    spec
                });
            }
            out
        })
    });
    let Some(specs) = specs else {
        return Err(CommandError::ns_not_found(format!(
            "ns does not exist: {}.{coll}",
            cmd.db
        )));
    };
    cursor_of(format!("{}.{coll}", cmd.db), specs, None)
}

/// `create`.
pub fn create(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    let mut options = Document::new();
    for (k, v) in &cmd.body {
        match k.as_str() {
            "create"
            | "$db"
            | "lsid"
            | "$clusterTime"
            | "writeConcern"
            | "txnNumber"
            | "$readPreference"
            | "comment"
            | "apiVersion"
            | "apiStrict"
            | "apiDeprecationErrors"
            | "autocommit"
            | "startTransaction"
            | "readConcern" => {}
            "capped"
            | "size"
            | "max"
            | "validator"
            | "validationLevel"
            | "validationAction"
            | "collation"
            | "viewOn"
            | "pipeline"
            | "storageEngine"
            | "indexOptionDefaults"
            | "changeStreamPreAndPostImages"
            | "expireAfterSeconds"
            | "clusteredIndex"
            | "timeseries"
            | "encryptedFields" => {
                let v = match (k.as_str(), v) {
                    ("size", Bson::Int32(i)) => Bson::Int32(*i),
                    ("collation", Bson::Document(c)) => Bson::Document(full_collation(c)),
                    _ => v.clone(),
                };
                options.insert(k.clone(), v);
            }
            other => {
                return Err(CommandError::new(
                    40415,
                    format!("BSON field 'create.{other}' is an unknown field."),
                ))
            }
        }
    }
    if crate::value::truthy(options.get("capped")) && !options.contains_key("size") {
        return Err(CommandError::new(
            72,
            "the 'size' field is required when 'capped' is true",
        ));
    }
    shared.with_store(|s| s.create_collection(&cmd.db, &coll, options))?;
    Ok(Reply::Doc(doc! {"ok": 1.0}))
}

/// Expands a collation to the full spec the server echoes.
fn full_collation(c: &Document) -> Document {
    let locale = c.get_str("locale").unwrap_or("simple").to_string();
    if locale == "simple" {
        return doc! {"locale": "simple"};
    }
    let mut out = doc! {
        "locale": locale,
        "caseLevel": false,
        "caseFirst": "off",
        "strength": 3i32,
        "numericOrdering": false,
        "alternate": "non-ignorable",
        "maxVariable": "punct",
        "normalization": false,
        "backwards": false,
        "version": "57.1",
    };
    for (k, v) in c {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// `drop` (7.0: ok on a missing collection; 6.0: 26).
pub fn drop(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    let ns = format!("{}.{coll}", cmd.db);
    let n_indexes = shared.with_store(|s| {
        let n = s.coll(&cmd.db, &coll).map(|c| c.indexes.len() as i32);
        if n.is_some() {
            s.drop_collection(&cmd.db, &coll);
        }
        n
    });
    match n_indexes {
        Some(n) => Ok(Reply::Doc(doc! {"nIndexesWas": n, "ns": ns, "ok": 1.0})),
        None if shared.config.major() < 7 => Err(CommandError::ns_not_found("ns not found")),
        None => Ok(Reply::Doc(doc! {"ok": 1.0})),
    }
}

/// `dropDatabase`.
pub fn drop_database(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    if matches!(cmd.db.as_str(), "admin" | "local" | "config") {
        return Err(CommandError::new(
            20,
            format!("Dropping the '{}' database is prohibited.", cmd.db),
        ));
    }
    shared.with_store(|s| {
        if s.dbs.contains_key(&cmd.db) {
            s.drop_database(&cmd.db);
        }
    });
    Ok(Reply::Doc(doc! {"ok": 1.0}))
}

/// `renameCollection` (admin).
pub fn rename(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    if cmd.db != "admin" {
        return Err(CommandError::new(
            13,
            "renameCollection may only be run against the admin database.",
        ));
    }
    let from = cmd
        .first_value()
        .and_then(|v| v.as_str())
        .ok_or_else(|| CommandError::type_mismatch("renameCollection needs a namespace string"))?
        .to_string();
    let to = cmd
        .body
        .get_str("to")
        .map_err(|_| CommandError::type_mismatch("renameCollection needs 'to'"))?
        .to_string();
    let drop_target = cmd.flag("dropTarget");
    shared.with_store(|s| s.rename(&from, &to, drop_target))?;
    Ok(Reply::Doc(doc! {"ok": 1.0}))
}

/// The fail points that hold a two-phase index build after `startIndexBuild`
/// (src/mongo/db/index_builds_coordinator.cpp).
pub const INDEX_BUILD_FAIL_POINTS: [&str; 3] = [
    "hangAfterStartingIndexBuild",
    "hangAfterSettingUpIndexBuild",
    "hangIndexBuildBeforeCommit",
];

/// Waits while an index build fail point is on and the build was not aborted; then commits
/// (or returns the abort error).
async fn finish_index_build(shared: &Arc<Shared>, uuid: bson::Uuid) -> CmdResult<i32> {
    loop {
        let mut fp = shared.faults.fail_points_changed();
        let mut builds = shared.with_store(|s| s.index_builds().subscribe());
        let aborted = shared.with_store(|s| s.index_build_aborted(uuid));
        let held = INDEX_BUILD_FAIL_POINTS
            .iter()
            .any(|n| shared.faults.fail_point(n));
        if aborted.is_some() || !held {
            break;
        }
        tokio::select! {
            _ = fp.changed() => {}
            _ = builds.changed() => {}
            _ = shared.cancel.cancelled() => {
                return Err(CommandError::new(11600, "interrupted at shutdown"));
            }
        }
    }
    shared.with_store(|s| s.commit_index_build(uuid))
}

/// `createIndexes`: at once on an empty collection, as a two-phase build otherwise.
pub async fn create_indexes(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    let specs: Vec<Document> = cmd
        .body
        .get_array("indexes")
        .map_err(|_| {
            CommandError::new(
                40414,
                "BSON field 'createIndexes.indexes' is missing but a required field",
            )
        })?
        .iter()
        .map(|v| match v {
            Bson::Document(d) => {
                let mut d = d.clone();
                if let Ok(c) = d.get_document("collation") {
                    let full = full_collation(c);
                    d.insert("collation", full);
                }
                Ok(d)
            }
            _ => Err(CommandError::type_mismatch("index specs must be documents")),
        })
        .collect::<CmdResult<_>>()?;
    if specs.is_empty() {
        return Err(CommandError::bad_value(
            "Must specify at least one index to create",
        ));
    }
    let started = shared.with_store(|s| s.start_index_build(&cmd.db, &coll, specs))?;
    let (before, after, created, noop) = match started {
        crate::store::IndexBuildStart::Done(b, a, c, n) => (b, a, c, n),
        crate::store::IndexBuildStart::Started { uuid, before } => {
            let after = finish_index_build(shared, uuid).await?;
            (before, after, false, false)
        }
    };
    let mut r = doc! {
        "numIndexesBefore": before,
        "numIndexesAfter": after,
        "createdCollectionAutomatically": created,
    };
    if noop {
        r.insert("note", "all indexes already exist");
    } else if shared.is_replset() {
        r.insert("commitQuorum", "votingMembers");
    }
    r.insert("ok", 1.0);
    Ok(Reply::Doc(r))
}

/// `dropIndexes`.
pub fn drop_indexes(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    let which = cmd.body.get("index").cloned().ok_or_else(|| {
        CommandError::new(
            40414,
            "BSON field 'dropIndexes.index' is missing but a required field",
        )
    })?;
    let was = shared.with_store(|s| s.drop_indexes(&cmd.db, &coll, &which))?;
    Ok(Reply::Doc(doc! {"nIndexesWas": was, "ok": 1.0}))
}

/// `collMod`.
pub fn coll_mod(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    let mut r = shared.with_store(|s| s.coll_mod(&cmd.db, &coll, &cmd.body))?;
    r.insert("ok", 1.0);
    Ok(Reply::Doc(r))
}

/// Storage statistics of a collection (`collStats`, `$collStats.storageStats`).
pub fn storage_stats(ns: &str, c: Option<&Collection>, scale: i64) -> Document {
    let scale = scale.max(1);
    let Some(c) = c else {
        return doc! {"ns": ns, "size": 0i64, "count": 0i64, "storageSize": 0i64, "totalIndexSize": 0i64, "totalSize": 0i64, "indexSizes": {}, "nindexes": 0i32, "scaleFactor": scale as i32, "capped": false};
    };
    let mut index_sizes = Document::new();
    let mut total_index = 0i64;
    for i in &c.indexes {
        let sz = c.index_size(i);
        total_index += sz;
        index_sizes.insert(i.name.clone(), sz / scale);
    }
    let mut d = doc! {
        "ns": ns,
        "size": c.data_bytes as i64 / scale,
        "count": c.docs.len() as i64,
        "avgObjSize": c.avg_obj_size(),
        "numOrphanDocs": 0i32,
        "storageSize": c.storage_size() / scale,
        "freeStorageSize": 0i64,
        "capped": c.is_capped(),
        "nindexes": c.indexes.len() as i32,
        "indexBuilds": [],
        "totalIndexSize": total_index / scale,
        "totalSize": (c.storage_size() + total_index) / scale,
        "indexSizes": index_sizes,
        "scaleFactor": scale as i32,
    };
    if c.is_capped() {
        if let Some(max) = c.options.get("max") {
            d.insert("max", max.clone());
        }
        if let Some(size) = c.options.get("size") {
            d.insert("maxSize", size.clone());
        }
    }
    d
}

/// Storage statistics of `local.oplog.rs` (`collStats`, `$collStats.storageStats`): like a real server's for a
/// capped collection, `capped: true`, `max` and `maxSize` (the configured cap) next to `size` and `count`.
pub fn oplog_storage_stats(ns: &str, o: &crate::oplog::Oplog, scale: i64) -> Document {
    let scale = scale.max(1);
    let n = o.len() as i64;
    let b = o.bytes() as i64;
    doc! {"ns": ns, "size": b / scale, "count": n, "avgObjSize": if n > 0 { b / n } else { 0 }, "storageSize": b / scale, "capped": true, "max": -1i64, "maxSize": o.cap_bytes() as i64 / scale, "nindexes": 0i32, "totalIndexSize": 0i64, "indexSizes": {}, "scaleFactor": scale as i32}
}

/// `collStats`.
pub fn coll_stats(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let coll = cmd.collection()?;
    let scale = cmd.int_arg("scale")?.unwrap_or(1);
    let ns = format!("{}.{coll}", cmd.db);
    let d = shared.with_store(|s| {
        if cmd.db == "local" && coll == "oplog.rs" {
            if let Some(o) = s.oplog.as_ref() {
                return Some(oplog_storage_stats(&ns, o, scale));
            }
        }
        s.coll(&cmd.db, &coll)
            .map(|c| storage_stats(&ns, Some(c), scale))
    });
    match d {
        Some(mut d) => {
            d.insert("ok", 1.0);
            Ok(Reply::Doc(d))
        }
        None => Err(CommandError::ns_not_found(format!(
            "Collection [{ns}] not found."
        ))),
    }
}

/// `dbStats`.
pub fn db_stats(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let scale = cmd.int_arg("scale")?.unwrap_or(1).max(1);
    let d =
        shared.with_store(|s| {
            let colls = s.dbs.get(&cmd.db);
            let (
                mut n_colls,
                mut n_views,
                mut objects,
                mut data,
                mut storage,
                mut n_idx,
                mut idx_size,
            ) = (0i64, 0i64, 0i64, 0i64, 0i64, 0i64, 0i64);
            for c in colls.into_iter().flat_map(|m| m.values()) {
                if c.is_view() {
                    n_views += 1;
                    continue;
                }
                n_colls += 1;
                objects += c.docs.len() as i64;
                data += c.data_bytes as i64;
                storage += c.storage_size();
                n_idx += c.indexes.len() as i64;
                idx_size += c.indexes.iter().map(|i| c.index_size(i)).sum::<i64>();
            }
            doc! {
                "db": cmd.db.clone(),
                "collections": n_colls,
                "views": n_views,
                "objects": objects,
                "avgObjSize": if objects > 0 { data as f64 / objects as f64 } else { 0.0 },
                "dataSize": (data / scale) as f64,
                "storageSize": (storage / scale) as f64,
                "indexes": n_idx,
                "indexSize": (idx_size / scale) as f64,
                "totalSize": ((storage + idx_size) / scale) as f64,
                "scaleFactor": scale as f64,
                "fsUsedSize": shared.config.fs_used_bytes as f64 / scale as f64,
                "fsTotalSize": shared.config.fs_total_bytes as f64 / scale as f64,
                "ok": 1.0,
            }
        });
    Ok(Reply::Doc(d))
}

/// `dbHash`.
pub fn db_hash(shared: &Arc<Shared>, cmd: &Cmd) -> CmdResult<Reply> {
    let only: Option<Vec<String>> = cmd.body.get_array("collections").ok().map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    });
    let started = std::time::Instant::now();
    let (per, md5, capped, uuids) = shared.with_store(|s| s.db_hash(&cmd.db, only.as_deref()));
    Ok(Reply::Doc(doc! {
        "host": shared.host.clone(),
        "collections": per,
        "capped": capped,
        "uuids": uuids,
        "md5": md5,
        "timeMillis": started.elapsed().as_millis() as i64,
        "ok": 1.0,
    }))
}
