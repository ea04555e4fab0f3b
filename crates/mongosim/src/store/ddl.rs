//! DDL whose oplog shapes are not one command entry: views (CRUD on `<db>.system.views`),
//! cross-database renames (temp collection + copy + rename + drop), two-phase index builds
//! (`startIndexBuild` / `commitIndexBuild` / `abortIndexBuild`), collMod index conversions
//! (`prepareUnique`, `unique`, `forceNonUnique`, TTL) and time-series collections
//! (`system.buckets.<name>` + a view). Every shape names the MongoDB 7.0 server source file
//! it comes from (github.com/mongodb/mongo).
//!
//! Owns these write paths only; plain CRUD and single-entry DDL stay in `store.rs`.

use super::*;

/// One two-phase index build that has logged `startIndexBuild` and not yet committed.
#[derive(Debug)]
pub struct IndexBuild {
    /// `indexBuildUUID`.
    pub uuid: Uuid,
    /// Database.
    pub db: String,
    /// Collection.
    pub coll: String,
    /// The indexes being built (not yet in the collection's catalog).
    pub indexes: Vec<Index>,
    /// Set once aborted (by `dropIndexes`): the error the waiting `createIndexes` returns.
    pub aborted: Option<CommandError>,
}

/// The index builds in progress and a change signal for the `createIndexes` calls waiting on
/// them.
#[derive(Debug)]
pub struct IndexBuilds {
    /// Builds started and not yet committed (or aborted and not yet collected).
    pub active: Vec<IndexBuild>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for IndexBuilds {
    fn default() -> Self {
        let (changed, _) = tokio::sync::watch::channel(0);
        Self {
            active: Vec::new(),
            changed,
        }
    }
}

impl IndexBuilds {
    /// A receiver that changes whenever a build is aborted or finished.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }
}

/// What `createIndexes` did under the lock.
#[derive(Debug)]
pub enum IndexBuildStart {
    /// Finished: (numIndexesBefore, numIndexesAfter, createdCollectionAutomatically, noop).
    Done(i32, i32, bool, bool),
    /// A two-phase build logged `startIndexBuild`; finish it with [`Store::commit_index_build`].
    Started {
        /// `indexBuildUUID`.
        uuid: Uuid,
        /// numIndexesBefore.
        before: i32,
    },
}

/// Maximum inserts per batched `applyOps` entry of a cross-database rename
/// (`maxNumberOfInsertsBatchInsertsForRenameAcrossDatabases`).
pub const RENAME_BATCH_MAX_INSERTS: usize = 500;
/// Maximum bytes per batched `applyOps` entry of a cross-database rename
/// (`maxSizeOfBatchedInsertsForRenameAcrossDatabasesBytes`).
pub const RENAME_BATCH_MAX_BYTES: usize = 4 * 1024 * 1024;

fn raw_of(d: &Document) -> CmdResult<RawDocumentBuf> {
    RawDocumentBuf::try_from(d).map_err(|e| CommandError::new(22, e.to_string()))
}

fn doc_of(raw: &RawDocumentBuf) -> CmdResult<Document> {
    Document::try_from(raw.as_ref()).map_err(|e| CommandError::new(22, e.to_string()))
}

/// `{ok: false, code, codeName, errmsg, ...extra}` as `Status::serializeErrorToBSON` writes
/// it after `causeBuilder.appendBool("ok", 0)` (src/mongo/db/op_observer/op_observer_impl.cpp,
/// `onAbortIndexBuild`).
fn abort_cause(e: &CommandError) -> Document {
    let mut cause = doc! {"ok": false};
    for (k, v) in e.to_document() {
        if k != "ok" {
            cause.insert(k, v);
        }
    }
    cause
}

/// A random `tmpXXXXX.renameCollection` name: `makeUniqueCollectionName` replaces each `%`
/// of the model with a random alphanumeric character (src/mongo/db/catalog/rename_collection.cpp).
fn tmp_rename_name(taken: impl Fn(&str) -> bool) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::thread_rng();
    loop {
        let tag: String = (0..5)
            .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
            .collect();
        let name = format!("tmp{tag}.renameCollection");
        if !taken(&name) {
            return name;
        }
    }
}

impl Store {
    /// The index builds in progress.
    pub fn index_builds(&self) -> &IndexBuilds {
        &self.builds
    }

    // ----------------------------------------------------------------------------- views

    /// `create` with `viewOn`: no command entry. The server creates `<db>.system.views` first
    /// if missing, in its own write unit (a plain `create` with `idIndex`:
    /// src/mongo/db/catalog/create_collection.cpp, `_createSystemDotViewsIfNecessary`), then
    /// inserts the definition `{_id: "<db>.<view>", viewOn, pipeline[, collation]}` into it
    /// (src/mongo/db/views/durable_view_catalog.cpp, `DurableViewCatalogImpl::upsert`), logged
    /// as an ordinary `i` on `<db>.system.views`.
    pub(super) fn create_view(&mut self, db: &str, name: &str, options: Document) -> CmdResult<()> {
        let view_on = match options.get("viewOn") {
            Some(Bson::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(CommandError::type_mismatch(
                    "BSON field 'create.viewOn' is the wrong type, expected type 'string'",
                ))
            }
        };
        let pipeline = match options.get("pipeline") {
            None => Vec::new(),
            Some(Bson::Array(a)) => a.clone(),
            Some(_) => {
                return Err(CommandError::type_mismatch(
                    "BSON field 'create.pipeline' is the wrong type, expected type 'array'",
                ))
            }
        };
        // _createView: a view on a buckets collection only comes with a time-series collection.
        if view_on.starts_with("system.buckets.") && !options.contains_key("timeseries") {
            return Err(CommandError::new(
                73,
                "Cannot create view on a system.buckets namespace except by creating a time-series collection",
            ));
        }
        let mut def = doc! {"_id": format!("{db}.{name}"), "viewOn": view_on.clone(), "pipeline": pipeline.clone()};
        if let Some(c) = options.get("collation") {
            def.insert("collation", c.clone());
        }
        if self.coll(db, "system.views").is_none() {
            self.create_collection(db, "system.views", Document::new())?;
        }
        // The catalog entry keeps the listCollections options of the view.
        let mut cat = doc! {"viewOn": view_on, "pipeline": pipeline};
        for (k, v) in &options {
            if k != "viewOn" && k != "pipeline" {
                cat.insert(k.clone(), v.clone());
            }
        }
        self.dbs
            .entry(db.to_string())
            .or_default()
            .insert(name.to_string(), Collection::new(cat));
        self.insert(db, "system.views", raw_of(&def)?)
    }

    /// `collMod` of a view (`viewOn`/`pipeline`): no collMod entry ("view operations are
    /// observed as operations on the system.views collection", src/mongo/db/catalog/coll_mod.cpp);
    /// the definition is replaced in `<db>.system.views`: a `u` whose `o` is the whole new
    /// definition and `o2` is `{_id: "<db>.<view>"}` (`args.update = view; args.criteria =
    /// BSON("_id" << name)`, src/mongo/db/views/durable_view_catalog.cpp).
    pub(super) fn modify_view(
        &mut self,
        db: &str,
        name: &str,
        cmd: &Document,
    ) -> CmdResult<Document> {
        let Some(view) = self.coll(db, name).filter(|c| c.is_view()) else {
            return Err(CommandError::ns_not_found("ns does not exist"));
        };
        let mut options = view.options.clone();
        for (k, v) in cmd {
            match k.as_str() {
                "collMod" | "$db" | "lsid" | "$clusterTime" | "writeConcern" | "txnNumber"
                | "$readPreference" | "comment" | "apiVersion" => {}
                "viewOn" => match v {
                    Bson::String(_) => {
                        options.insert("viewOn", v.clone());
                    }
                    _ => return Err(CommandError::new(72, "'viewOn' option must be a string")),
                },
                "pipeline" => match v {
                    Bson::Array(_) => {
                        options.insert("pipeline", v.clone());
                    }
                    _ => return Err(CommandError::new(72, "not a valid aggregation pipeline")),
                },
                other => {
                    return Err(CommandError::new(
                        72,
                        format!("option not supported on a view: {other}"),
                    ))
                }
            }
        }
        let id = format!("{db}.{name}");
        let pre = self
            .coll(db, "system.views")
            .and_then(|c| c.docs.get(&OrdBson(Bson::String(id.clone()))))
            .map(|r| doc_of(r))
            .transpose()?
            .unwrap_or_else(|| doc! {"_id": id.clone()});
        let mut post = doc! {
            "_id": id,
            "viewOn": options.get("viewOn").cloned().unwrap_or(Bson::Null),
            "pipeline": options.get("pipeline").cloned().unwrap_or(Bson::Array(Vec::new())),
        };
        if let Some(c) = options.get("collation") {
            post.insert("collation", c.clone());
        }
        if let Some(c) = self.coll_mut(db, name) {
            c.options = options;
        }
        self.replace(db, "system.views", &pre, &post, post.clone())?;
        Ok(Document::new())
    }

    /// `drop` of a view: a `d` of its definition on `<db>.system.views`
    /// (src/mongo/db/views/durable_view_catalog.cpp, `DurableViewCatalogImpl::remove`).
    pub(super) fn drop_view(&mut self, db: &str, name: &str) -> bool {
        let Some(c) = self.dbs.get_mut(db).and_then(|d| d.remove(name)) else {
            return false;
        };
        let _ = self.delete(db, "system.views", &Bson::String(format!("{db}.{name}")));
        // A time-series collection's buckets go with its view.
        if c.options.contains_key("timeseries") {
            if let Some(Bson::String(on)) = c.options.get("viewOn") {
                let on = on.clone();
                self.drop_collection(db, &on);
            }
        }
        true
    }

    // --------------------------------------------------------------- cross-database rename

    /// `renameCollection` across databases, as `renameBetweenDBs`
    /// (src/mongo/db/catalog/rename_collection.cpp) logs it on 7.0:
    /// 1. `create` of `<targetDb>.tmpXXXXX.renameCollection` with the source's options, a new
    ///    UUID and `idIndex`;
    /// 2. one `createIndexes` per secondary index (`createIndexesOnEmptyCollection`);
    /// 3. the documents: batches of up to 500 inserts / 4 MiB, each batch of more than one
    ///    document one `applyOps` entry on `admin.$cmd` (a `kGroupForTransaction` write unit,
    ///    no `lsid`) whose operations are `{op: "i", ns, ui, o, o2: {_id}}`
    ///    (`MutableOplogEntry::makeInsertOperation`, op_observer_impl.cpp), a batch of one a
    ///    plain `i` (SERVER-82450 added the limits in 7.0.6); capped collections with indexes
    ///    are never batched;
    /// 4. `renameCollection` of the temp collection to the target within the target database
    ///    (`stayTemp: false`, `dropTarget: <uuid>` + `o2: {numRecords}` when it replaced one);
    /// 5. `drop` of the source.
    pub(super) fn rename_across_dbs(
        &mut self,
        fdb: &str,
        fcoll: &str,
        tdb: &str,
        tcoll: &str,
        drop_target: bool,
    ) -> CmdResult<()> {
        let Some(src) = self.coll(fdb, fcoll).cloned() else {
            return Err(CommandError::ns_not_found(
                "source namespace does not exist",
            ));
        };
        if src.is_view() {
            return Err(CommandError::new(
                166,
                format!("cannot rename view: {fdb}.{fcoll}"),
            ));
        }
        if let Some(t) = self.coll(tdb, tcoll) {
            if t.is_view() {
                return Err(CommandError::new(
                    48,
                    format!("a view already exists with that name: {tdb}.{tcoll}"),
                ));
            }
            if !drop_target {
                return Err(CommandError::new(48, "target namespace exists"));
            }
        }
        let tmp = tmp_rename_name(|n| self.coll(tdb, n).is_some());
        self.create_collection(tdb, &tmp, src.options.clone())?;
        let specs: Vec<Document> = src
            .indexes
            .iter()
            .filter(|i| !i.is_id())
            .map(|i| i.spec.clone())
            .collect();
        if !specs.is_empty() {
            self.create_indexes(tdb, &tmp, specs)?;
        }
        // Copy the documents (and the unique index entries) without re-validating them.
        let ui = {
            let Some(t) = self.coll_mut(tdb, &tmp) else {
                return Err(CommandError::ns_not_found("temporary collection vanished"));
            };
            t.docs = src.docs.clone();
            t.data_bytes = src.data_bytes;
            for idx in t.indexes.iter_mut() {
                if let Some(s) = src.indexes.iter().find(|i| i.name == idx.name) {
                    idx.entries = s.entries.clone();
                }
            }
            t.uuid
        };
        // "Inserts to indexed capped collections cannot be batched" (`_id` counts).
        let batchable = !src.is_capped() || src.indexes.is_empty();
        let tmp_ns = format!("{tdb}.{tmp}");
        let docs: Vec<(Bson, Arc<RawDocumentBuf>)> = src
            .docs
            .iter()
            .map(|(k, v)| (k.0.clone(), v.clone()))
            .collect();
        let mut i = 0;
        while i < docs.len() {
            let mut end = i + 1;
            let mut bytes = docs[i].1.as_bytes().len();
            while batchable
                && end < docs.len()
                && end - i < RENAME_BATCH_MAX_INSERTS
                && bytes + docs[end].1.as_bytes().len() <= RENAME_BATCH_MAX_BYTES
            {
                bytes += docs[end].1.as_bytes().len();
                end += 1;
            }
            let ts = self.clock.tick();
            if end - i == 1 {
                let (id, raw) = &docs[i];
                self.append_entry_sized(
                    raw.as_bytes().len() + 256,
                    |w| {
                        w.str("op", "i");
                        w.str("ns", &tmp_ns);
                        w.uuid("ui", ui);
                        w.doc_bytes("o", raw.as_bytes());
                        w.value("o2", &Bson::Document(doc! {"_id": id.clone()}));
                    },
                    ts,
                );
            } else {
                let mut ops = Vec::with_capacity(end - i);
                for (id, raw) in &docs[i..end] {
                    ops.push(Bson::Document(doc! {
                        "op": "i",
                        "ns": tmp_ns.clone(),
                        "ui": ui,
                        "o": doc_of(raw)?,
                        "o2": {"_id": id.clone()},
                    }));
                }
                let o = doc! {"applyOps": ops};
                self.append_entry_sized(
                    bytes + 256 * (end - i),
                    |w| {
                        w.str("op", "c");
                        w.str("ns", "admin.$cmd");
                        w.value("o", &Bson::Document(o));
                    },
                    ts,
                );
            }
            i = end;
        }
        self.rename(&tmp_ns, &format!("{tdb}.{tcoll}"), drop_target)?;
        self.drop_collection(fdb, fcoll);
        Ok(())
    }

    // ------------------------------------------------------------ two-phase index builds

    /// `createIndexes`. On a missing or empty collection the indexes are created at once and
    /// logged as one `createIndexes` entry each (`createIndexesOnEmptyCollection`). On a
    /// non-empty collection the build is two-phase (src/mongo/db/index_builds_coordinator.cpp):
    /// `{startIndexBuild: coll, indexBuildUUID, indexes: [specs]}` now, and
    /// [`Store::commit_index_build`] later logs `commitIndexBuild` (same fields) or, on a
    /// duplicate key, `abortIndexBuild` with `cause` (src/mongo/db/op_observer/op_observer_impl.cpp).
    pub fn start_index_build(
        &mut self,
        db: &str,
        coll: &str,
        specs: Vec<Document>,
    ) -> CmdResult<IndexBuildStart> {
        let empty = self.coll(db, coll).is_none_or(|c| c.docs.is_empty());
        if empty {
            let (b, a, created, noop) = self.create_indexes(db, coll, specs)?;
            return Ok(IndexBuildStart::Done(b, a, created, noop));
        }
        let Some(c) = self.coll(db, coll) else {
            return Err(CommandError::ns_not_found("ns not found"));
        };
        if c.is_view() {
            return Err(CommandError::new(
                166,
                format!("Namespace {db}.{coll} is a view, not a collection"),
            ));
        }
        let before = c.indexes.len() as i32;
        let mut planned: Vec<Index> = Vec::new();
        for spec in specs {
            let mut norm = doc! {"v": 2};
            for (k, v) in &spec {
                if k != "v" && k != "ns" {
                    norm.insert(k.clone(), v.clone());
                }
            }
            let idx = Index::from_spec(norm)?;
            if let Some(existing) = c.indexes.iter().find(|i| i.name == idx.name) {
                if existing.key != idx.key {
                    return Err(CommandError::new(86, format!(
                        "An existing index has the same name as the requested index. When index names are not specified, they are auto generated and can cause conflicts. Please refer to our documentation. Requested index: {}, existing index: {}",
                        idx.spec, existing.spec
                    )));
                }
                if !same_options(&existing.spec, &idx.spec) {
                    return Err(CommandError::new(85, format!(
                        "An equivalent index already exists with the same name but different options. Requested index: {}, existing index: {}",
                        idx.spec, existing.spec
                    )));
                }
                continue;
            }
            if let Some(existing) = c.indexes.iter().find(|i| i.key == idx.key) {
                return Err(CommandError::new(
                    85,
                    format!(
                        "Index already exists with a different name: {}",
                        existing.name
                    ),
                ));
            }
            if self
                .builds
                .active
                .iter()
                .filter(|b| b.aborted.is_none() && b.db == db && b.coll == coll)
                .any(|b| b.indexes.iter().any(|i| i.name == idx.name))
            {
                return Err(CommandError::new(
                    68,
                    format!("index already building: {}", idx.name),
                ));
            }
            planned.push(idx);
        }
        if planned.is_empty() {
            return Ok(IndexBuildStart::Done(before, before, false, true));
        }
        let ui = c.uuid;
        let uuid = Uuid::new();
        let specs: Vec<Bson> = planned
            .iter()
            .map(|i| Bson::Document(i.spec.clone()))
            .collect();
        self.log_command(
            db,
            Some(ui),
            doc! {"startIndexBuild": coll, "indexBuildUUID": uuid, "indexes": specs},
            None,
        );
        self.builds.active.push(IndexBuild {
            uuid,
            db: db.to_string(),
            coll: coll.to_string(),
            indexes: planned,
            aborted: None,
        });
        Ok(IndexBuildStart::Started { uuid, before })
    }

    /// The abort error of a build, if `dropIndexes` aborted it.
    pub fn index_build_aborted(&self, uuid: Uuid) -> Option<CommandError> {
        self.builds
            .active
            .iter()
            .find(|b| b.uuid == uuid)
            .and_then(|b| b.aborted.clone())
    }

    /// Finishes a build started by [`Store::start_index_build`]: checks unique constraints
    /// over the whole collection, then logs `commitIndexBuild` and returns numIndexesAfter;
    /// on a duplicate key logs `abortIndexBuild` with `cause: {ok: false, code: 11000,
    /// codeName, errmsg, keyPattern, keyValue}` and returns the DuplicateKey error; if the
    /// build was aborted meanwhile returns the abort error.
    pub fn commit_index_build(&mut self, uuid: Uuid) -> CmdResult<i32> {
        let Some(pos) = self.builds.active.iter().position(|b| b.uuid == uuid) else {
            return Err(CommandError::new(276, "index build vanished"));
        };
        let mut build = self.builds.active.remove(pos);
        self.builds.bump();
        if let Some(e) = build.aborted.take() {
            return Err(e);
        }
        let ns = format!("{}.{}", build.db, build.coll);
        let Some(c) = self.coll_mut(&build.db, &build.coll) else {
            return Err(CommandError::new(
                276,
                format!("collection {ns} dropped during the index build"),
            ));
        };
        let ui = c.uuid;
        let mut failure = None;
        'outer: for idx in build.indexes.iter_mut() {
            if !idx.unique {
                continue;
            }
            for (id, raw) in &c.docs {
                let d = Document::try_from(raw.as_ref().as_ref())
                    .map_err(|e| CommandError::new(22, e.to_string()))?;
                if let Some(k) = idx.key_of(&d) {
                    if idx.entries.contains_key(&k) {
                        failure = Some(idx.dup_error(&ns, &k));
                        break 'outer;
                    }
                    idx.entries.insert(k, id.clone());
                }
            }
        }
        let specs: Vec<Bson> = build
            .indexes
            .iter()
            .map(|i| Bson::Document(i.spec.clone()))
            .collect();
        if let Some(e) = failure {
            self.log_command(
                &build.db,
                Some(ui),
                doc! {"abortIndexBuild": build.coll.clone(), "indexBuildUUID": uuid, "indexes": specs, "cause": abort_cause(&e)},
                None,
            );
            return Err(e);
        }
        c.indexes.extend(build.indexes);
        let after = c.indexes.len() as i32;
        self.log_command(
            &build.db,
            Some(ui),
            doc! {"commitIndexBuild": build.coll.clone(), "indexBuildUUID": uuid, "indexes": specs},
            None,
        );
        Ok(after)
    }

    /// The in-progress index specs of a collection with their build UUIDs.
    pub fn building_indexes(&self, db: &str, coll: &str) -> Vec<(Document, Uuid)> {
        self.builds
            .active
            .iter()
            .filter(|b| b.aborted.is_none() && b.db == db && b.coll == coll)
            .flat_map(|b| b.indexes.iter().map(move |i| (i.spec.clone(), b.uuid)))
            .collect()
    }

    /// `dropIndexes` naming indexes that are still building aborts their build
    /// (src/mongo/db/catalog/drop_indexes.cpp, `abortIndexBuildByIndexNames` with the reason
    /// "dropIndexes command"; the cause is `Status{IndexBuildAborted, reason}`,
    /// src/mongo/db/index_builds_coordinator.cpp): `{abortIndexBuild: coll, indexBuildUUID,
    /// indexes, cause: {ok: false, code: 276, codeName: "IndexBuildAborted", errmsg:
    /// "dropIndexes command"}}`. `"*"` aborts every build of the collection and lets the ready
    /// indexes be dropped too. Returns `Some(nIndexesWas)` when the request named only
    /// building indexes.
    pub(super) fn abort_builds_for_drop(
        &mut self,
        db: &str,
        coll: &str,
        which: &Bson,
    ) -> Option<i32> {
        let ready: Vec<String> = self
            .coll(db, coll)?
            .indexes
            .iter()
            .map(|i| i.name.clone())
            .collect();
        let live = |b: &IndexBuild| b.aborted.is_none() && b.db == db && b.coll == coll;
        let hits: Vec<Uuid> = self
            .builds
            .active
            .iter()
            .filter(|b| live(b))
            .filter(|b| {
                b.indexes.iter().any(|i| match which {
                    Bson::String(s) if s == "*" => true,
                    Bson::String(s) => &i.name == s && !ready.contains(s),
                    Bson::Array(a) => a.iter().any(|n| n.as_str() == Some(i.name.as_str())),
                    Bson::Document(k) => &i.key == k,
                    _ => false,
                })
            })
            .map(|b| b.uuid)
            .collect();
        if hits.is_empty() {
            return None;
        }
        let total = ready.len() as i32
            + self
                .builds
                .active
                .iter()
                .filter(|b| live(b))
                .map(|b| b.indexes.len() as i32)
                .sum::<i32>();
        let ui = self.coll(db, coll).map(|c| c.uuid);
        let e = CommandError::new(276, "dropIndexes command");
        for uuid in hits {
            let Some(b) = self.builds.active.iter_mut().find(|b| b.uuid == uuid) else {
                continue;
            };
            b.aborted = Some(e.clone());
            let specs: Vec<Bson> = b
                .indexes
                .iter()
                .map(|i| Bson::Document(i.spec.clone()))
                .collect();
            let o = doc! {"abortIndexBuild": coll, "indexBuildUUID": uuid, "indexes": specs, "cause": abort_cause(&e)};
            self.log_command(db, ui, o, None);
        }
        self.builds.bump();
        match which {
            Bson::String(s) if s == "*" => None,
            _ => Some(total),
        }
    }

    // ------------------------------------------------------------ collMod index options

    /// The `index` option of `collMod` on a collection, as src/mongo/db/catalog/coll_mod.cpp
    /// (`parseCollModRequest`) and coll_mod_index.cpp (`processCollModIndexRequest`) apply it.
    /// Returns (the `index` field of the oplog entry, `indexOptions_old` for `o2`, reply
    /// fields); the first two are `None` when nothing changed. The oplog `index` is
    /// normalised to the index name (`makeCollModCmdObj`, op_observer_util.cpp): `{name,
    /// expireAfterSeconds (Int64), hidden, unique, prepareUnique, forceNonUnique}` with only
    /// the options that were applied.
    #[allow(clippy::type_complexity)]
    pub(super) fn coll_mod_index(
        c: &mut Collection,
        ns: &str,
        spec: &Document,
    ) -> CmdResult<(Option<Document>, Option<Document>, Document)> {
        for k in spec.keys() {
            if !matches!(
                k.as_str(),
                "name"
                    | "keyPattern"
                    | "expireAfterSeconds"
                    | "hidden"
                    | "unique"
                    | "prepareUnique"
                    | "forceNonUnique"
            ) {
                return Err(CommandError::new(
                    40415,
                    format!("BSON field 'collMod.index.{k}' is an unknown field."),
                ));
            }
        }
        let name = spec.get("name");
        let kp = spec.get("keyPattern");
        if name.is_some() && kp.is_some() {
            return Err(CommandError::new(
                72,
                "Cannot specify both key pattern and name.",
            ));
        }
        let as_bool = |field: &str| -> CmdResult<Option<bool>> {
            match spec.get(field) {
                None => Ok(None),
                Some(Bson::Boolean(b)) => Ok(Some(*b)),
                Some(other) => Err(CommandError::type_mismatch(format!(
                    "BSON field 'collMod.index.{field}' is the wrong type '{}', expected type 'bool'",
                    crate::update::type_name(other)
                ))),
            }
        };
        let hidden = as_bool("hidden")?;
        let unique = as_bool("unique")?;
        let prepare = as_bool("prepareUnique")?;
        let force = as_bool("forceNonUnique")?;
        let expire = match spec.get("expireAfterSeconds") {
            None => None,
            Some(v) => Some(crate::value::as_i64(v).ok_or_else(|| {
                CommandError::type_mismatch(
                    "BSON field 'collMod.index.expireAfterSeconds' is the wrong type, expected a number",
                )
            })?),
        };
        if name.is_none() && kp.is_none() {
            return Err(CommandError::new(
                72,
                "Must specify either index name or key pattern.",
            ));
        }
        if expire.is_none()
            && hidden.is_none()
            && unique.is_none()
            && prepare.is_none()
            && force.is_none()
        {
            return Err(CommandError::new(
                72,
                "no expireAfterSeconds, hidden, unique, or prepareUnique field",
            ));
        }
        if unique.is_some() && force.is_some() {
            return Err(CommandError::new(
                72,
                "collMod does not support 'unique' and 'forceNonUnique' options at the same time",
            ));
        }
        if expire.is_some() && c.is_capped() {
            return Err(CommandError::new(
                72,
                "TTL indexes are not supported for capped collections.",
            ));
        }
        let pos = match (name, kp) {
            (Some(Bson::String(n)), _) => {
                c.indexes.iter().position(|i| &i.name == n).ok_or_else(|| {
                    CommandError::new(27, format!("cannot find index {n} for ns {ns}"))
                })?
            }
            (Some(_), _) => {
                return Err(CommandError::type_mismatch("Index name must be a string."))
            }
            (None, Some(Bson::Document(k))) => {
                let found: Vec<usize> = c
                    .indexes
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| &i.key == k)
                    .map(|(p, _)| p)
                    .collect();
                match found.as_slice() {
                    [p] => *p,
                    [] => {
                        return Err(CommandError::new(
                            27,
                            format!("cannot find index {k} for ns {ns}"),
                        ))
                    }
                    _ => {
                        return Err(CommandError::new(
                            7,
                            format!(
                                "index keyPattern {k} matches {} indexes, must use index name.",
                                found.len()
                            ),
                        ))
                    }
                }
            }
            _ => {
                return Err(CommandError::type_mismatch(
                    "Key pattern must be an object.",
                ))
            }
        };
        let old = c.indexes[pos].spec.clone();
        let is_id = c.indexes[pos].is_id();
        let is_unique = crate::value::truthy(old.get("unique")) || is_id;
        let is_prepare = crate::value::truthy(old.get("prepareUnique"));
        let is_hidden = crate::value::truthy(old.get("hidden"));
        let mut modifications = 0;
        if expire.is_some() {
            modifications += 1;
            if !old.contains_key("expireAfterSeconds") {
                if is_id {
                    return Err(CommandError::new(
                        72,
                        "the _id field does not support TTL indexes",
                    ));
                }
                if c.indexes[pos].key.len() != 1 {
                    return Err(CommandError::new(
                        72,
                        "TTL indexes are single-field indexes, compound indexes do not support TTL",
                    ));
                }
            }
        }
        let mut do_unique = false;
        if let Some(u) = unique {
            modifications += 1;
            if !u {
                return Err(CommandError::bad_value("Cannot make index non-unique"));
            }
            if !is_unique {
                if !is_prepare {
                    return Err(CommandError::new(
                        72,
                        "Cannot make index unique with 'prepareUnique=false'. Run collMod to set it first.",
                    ));
                }
                do_unique = true;
            }
        }
        let mut do_hidden = None;
        if let Some(h) = hidden {
            modifications += 1;
            if is_id {
                return Err(CommandError::bad_value("can't hide _id index"));
            }
            if h != is_hidden {
                do_hidden = Some(h);
            }
        }
        let mut do_prepare = None;
        if let Some(p) = prepare {
            modifications += 1;
            if p != is_prepare && !is_unique {
                do_prepare = Some(p);
            }
        }
        let mut do_force = false;
        if let Some(f) = force {
            modifications += 1;
            if !f {
                return Err(CommandError::bad_value(
                    "'forceNonUnique: false' is not supported",
                ));
            }
            do_force = is_unique && !is_id;
        }
        if prepare.is_some() && modifications > 1 {
            return Err(CommandError::new(
                72,
                "prepareUnique cannot be combined with any other modification.",
            ));
        }
        // Unique conversion scans the index for duplicates first and refuses with
        // CannotConvertIndexToUnique (359) and `violations: [{ids: [...]}]`
        // (coll_mod_index.cpp, `scanIndexForDuplicates` / `buildConvertUniqueErrorStatus`).
        if do_unique {
            let idx = &c.indexes[pos];
            let mut groups: BTreeMap<Vec<OrdBson>, Vec<Bson>> = BTreeMap::new();
            for (id, raw) in &c.docs {
                let d = Document::try_from(raw.as_ref().as_ref())
                    .map_err(|e| CommandError::new(22, e.to_string()))?;
                if let Some(k) = idx.key_of(&d) {
                    groups.entry(k).or_default().push(id.0.clone());
                }
            }
            let violations: Vec<Bson> = groups
                .into_values()
                .filter(|ids| ids.len() > 1)
                .map(|ids| Bson::Document(doc! {"ids": ids}))
                .collect();
            if !violations.is_empty() {
                return Err(CommandError::new(
                    359,
                    "Cannot convert the index to unique. Please resolve conflicting documents before running collMod again.",
                )
                .with_extra(doc! {"violations": violations}));
            }
        }
        // Catalog updates: each option is removed and re-appended at the end of the spec
        // (src/mongo/db/storage/bson_collection_catalog_entry.cpp, `update*Setting`).
        let set = |spec: &mut Document, k: &str, v: Option<Bson>| {
            spec.remove(k);
            if let Some(v) = v {
                spec.insert(k, v);
            }
        };
        let mut reply = Document::new();
        let mut o2 = Document::new();
        let mut oplog = doc! {"name": c.indexes[pos].name.clone()};
        let mut changed = false;
        let mut new_spec = old.clone();
        if let Some(e) = expire {
            changed = true;
            let old_e = old.get("expireAfterSeconds").and_then(crate::value::as_i64);
            if old_e != Some(e) {
                set(&mut new_spec, "expireAfterSeconds", Some(Bson::Int64(e)));
            }
            if let Some(o) = old_e {
                reply.insert("expireAfterSeconds_old", o);
                o2.insert("expireAfterSeconds", o);
            }
            reply.insert("expireAfterSeconds_new", e);
            oplog.insert("expireAfterSeconds", e);
        }
        if let Some(h) = do_hidden {
            changed = true;
            set(&mut new_spec, "hidden", h.then_some(Bson::Boolean(true)));
            reply.insert("hidden_old", is_hidden);
            reply.insert("hidden_new", h);
            o2.insert("hidden", is_hidden);
            oplog.insert("hidden", h);
        }
        if do_unique {
            changed = true;
            set(&mut new_spec, "unique", Some(Bson::Boolean(true)));
            // "Resets 'prepareUnique' to false after converting to unique index".
            set(&mut new_spec, "prepareUnique", None);
            reply.insert("unique_new", true);
            oplog.insert("unique", true);
        }
        if let Some(p) = do_prepare {
            changed = true;
            set(
                &mut new_spec,
                "prepareUnique",
                p.then_some(Bson::Boolean(true)),
            );
            reply.insert("prepareUnique_old", is_prepare);
            reply.insert("prepareUnique_new", p);
            o2.insert("prepareUnique", is_prepare);
            oplog.insert("prepareUnique", p);
        }
        if do_force {
            changed = true;
            set(&mut new_spec, "unique", None);
            reply.insert("forceNonUnique_new", true);
            oplog.insert("forceNonUnique", true);
        }
        if !changed {
            return Ok((None, None, reply));
        }
        // Enforcement: a unique or prepareUnique index refuses new duplicate keys.
        let enforce = crate::value::truthy(new_spec.get("unique"))
            || crate::value::truthy(new_spec.get("prepareUnique"))
            || is_id;
        let was_enforced = c.indexes[pos].unique;
        let mut entries = BTreeMap::new();
        if enforce && !was_enforced {
            let idx = &c.indexes[pos];
            for (id, raw) in &c.docs {
                let d = Document::try_from(raw.as_ref().as_ref())
                    .map_err(|e| CommandError::new(22, e.to_string()))?;
                if let Some(k) = idx.key_of(&d) {
                    entries.entry(k).or_insert_with(|| id.clone());
                }
            }
        }
        let idx = &mut c.indexes[pos];
        idx.spec = new_spec;
        if enforce && !was_enforced {
            idx.entries = entries;
        } else if !enforce {
            idx.entries.clear();
        }
        idx.unique = enforce;
        Ok((Some(oplog), Some(o2), reply))
    }

    // ------------------------------------------------------------------- time series

    /// `create` with `timeseries`, as `_createTimeseries` (src/mongo/db/catalog/create_collection.cpp)
    /// logs it on 7.0:
    /// 1. `create` of `system.buckets.<name>` with the options in `CollectionOptions::appendBSON`
    ///    order (src/mongo/db/catalog/collection_options.cpp): `validator` (the bucket
    ///    `$jsonSchema` of `_createTimeseries`), `clusteredIndex: true` (legacy format, so no
    ///    `idIndex`), [`expireAfterSeconds`], `timeseries: {timeField, metaField,
    ///    granularity, bucketMaxSpanSeconds}` (granularity defaults to "seconds", 3600 s);
    /// 2. with a metaField, `createIndexes` of `<meta>_1_<time>_1` on the buckets
    ///    (`_createDefaultTimeseriesIndex`, spec `{v: 2, name, key: {meta: 1,
    ///    control.min.<time>: 1, control.max.<time>: 1}}`);
    /// 3. the view `<name>` on the buckets with the pipeline `generateViewPipeline` builds
    ///    (src/mongo/db/timeseries/timeseries_options.cpp): `[{$_internalUnpackBucket:
    ///    {timeField, metaField, bucketMaxSpanSeconds}}]`, i.e. `system.views` created if
    ///    needed and an `i` of the definition.
    pub(super) fn create_timeseries(
        &mut self,
        db: &str,
        name: &str,
        options: Document,
    ) -> CmdResult<()> {
        let Ok(ts) = options.get_document("timeseries") else {
            return Err(CommandError::type_mismatch(
                "BSON field 'create.timeseries' is the wrong type, expected type 'object'",
            ));
        };
        let Ok(time_field) = ts.get_str("timeField") else {
            return Err(CommandError::new(
                40414,
                "BSON field 'timeseries.timeField' is missing but a required field",
            ));
        };
        let time_field = time_field.to_string();
        let meta_field = ts.get_str("metaField").ok().map(String::from);
        let granularity = ts.get_str("granularity").unwrap_or("seconds").to_string();
        let span: i32 = match granularity.as_str() {
            "seconds" => 3600,
            "minutes" => 86400,
            "hours" => 2_592_000,
            other => {
                return Err(CommandError::bad_value(format!(
                    "Enumeration value '{other}' for field 'timeseries.granularity' is not a valid value."
                )))
            }
        };
        let buckets = format!("system.buckets.{name}");
        if self.coll(db, &buckets).is_some() {
            return Err(CommandError::new(
                48,
                format!("Bucket Collection already exists. NS: {db}.{buckets}"),
            ));
        }
        let mut tso = doc! {"timeField": time_field.clone()};
        if let Some(m) = &meta_field {
            tso.insert("metaField", m.clone());
        }
        tso.insert("granularity", granularity);
        tso.insert("bucketMaxSpanSeconds", span);
        let minmax = doc! {
            "bsonType": "object",
            "required": [time_field.clone()],
            "properties": {time_field.clone(): {"bsonType": "date"}},
        };
        let validator = doc! {"$jsonSchema": {
            "bsonType": "object",
            "required": ["_id", "control", "data"],
            "properties": {
                "_id": {"bsonType": "objectId"},
                "control": {
                    "bsonType": "object",
                    "required": ["version", "min", "max"],
                    "properties": {
                        "version": {"bsonType": "number"},
                        "min": minmax.clone(),
                        "max": minmax,
                        "closed": {"bsonType": "bool"},
                        "count": {"bsonType": "number", "minimum": 1},
                    },
                    "additionalProperties": false,
                },
                "data": {"bsonType": "object"},
                "meta": {},
            },
            "additionalProperties": false,
        }};
        let mut bopts = doc! {"validator": validator, "clusteredIndex": true};
        if let Some(e) = options.get("expireAfterSeconds") {
            bopts.insert("expireAfterSeconds", e.clone());
        }
        bopts.insert("timeseries", tso.clone());
        let mut c = Collection::new(bopts.clone());
        // Clustered by _id: no `_id_` index in listIndexes.
        c.indexes.clear();
        let ui = c.uuid;
        self.dbs
            .entry(db.to_string())
            .or_default()
            .insert(buckets.clone(), c);
        let mut o = doc! {"create": buckets.clone()};
        o.extend(bopts);
        self.log_command(db, Some(ui), o, None);
        if let Some(m) = &meta_field {
            let spec = doc! {
                "v": 2,
                "name": format!("{m}_1_{time_field}_1"),
                "key": {"meta": 1, format!("control.min.{time_field}"): 1, format!("control.max.{time_field}"): 1},
            };
            let idx = Index::from_spec(spec.clone())?;
            if let Some(c) = self.coll_mut(db, &buckets) {
                c.indexes.push(idx);
            }
            let mut o = doc! {"createIndexes": buckets.clone()};
            o.extend(spec);
            self.log_command(db, Some(ui), o, None);
        }
        let mut unpack = doc! {"timeField": time_field};
        if let Some(m) = meta_field {
            unpack.insert("metaField", m);
        }
        unpack.insert("bucketMaxSpanSeconds", span);
        let mut vopts = doc! {
            "viewOn": buckets,
            "pipeline": [{"$_internalUnpackBucket": unpack}],
        };
        if let Some(col) = options.get("collation") {
            vopts.insert("collation", col.clone());
        }
        vopts.insert("timeseries", tso);
        if let Some(e) = options.get("expireAfterSeconds") {
            vopts.insert("expireAfterSeconds", e.clone());
        }
        self.create_view(db, name, vopts)
    }

    /// `true` when `db.coll` is a time-series collection (its view).
    pub fn is_timeseries(&self, db: &str, coll: &str) -> bool {
        self.coll(db, coll)
            .is_some_and(|c| c.is_view() && c.options.contains_key("timeseries"))
    }

    /// An insert into a time-series collection: one bucket per measurement (a simplification
    /// of the server's bucket catalog), in the 7.0 uncompressed bucket shape `{_id, control:
    /// {version: 1, min, max}, meta?, data: {<field>: {"0": value}}}` with `control.min.<time>`
    /// rounded down to the bucket rounding of the granularity and the bucket `_id` an ObjectId
    /// whose timestamp is that minimum (src/mongo/db/timeseries/bucket_catalog/), logged as an
    /// `i` on `<db>.system.buckets.<coll>`.
    pub fn insert_measurement(
        &mut self,
        db: &str,
        coll: &str,
        raw: RawDocumentBuf,
    ) -> CmdResult<()> {
        let Some(view) = self.coll(db, coll) else {
            return Err(CommandError::ns_not_found("ns not found"));
        };
        let Ok(ts) = view.options.get_document("timeseries") else {
            return Err(CommandError::ns_not_found("not a time-series collection"));
        };
        let time_field = ts.get_str("timeField").unwrap_or("timestamp").to_string();
        let meta_field = ts.get_str("metaField").ok().map(String::from);
        let rounding: i64 = match ts.get_str("granularity").unwrap_or("seconds") {
            "minutes" => 3600,
            "hours" => 86400,
            _ => 60,
        };
        let buckets = match view.options.get("viewOn") {
            Some(Bson::String(s)) => s.clone(),
            _ => format!("system.buckets.{coll}"),
        };
        let (raw, _) = with_id(raw)?;
        let m = doc_of(&raw)?;
        let t = match m.get(&time_field) {
            Some(Bson::DateTime(t)) => *t,
            _ => {
                return Err(CommandError::bad_value(format!(
                    "'{time_field}' must be present and contain a valid BSON UTC datetime value"
                )))
            }
        };
        let min_secs = t.timestamp_millis().div_euclid(1000).div_euclid(rounding) * rounding;
        let rounded = bson::DateTime::from_millis(min_secs * 1000);
        let mut min = Document::new();
        let mut max = Document::new();
        let mut data = Document::new();
        let mut meta = None;
        for (k, v) in m {
            if Some(&k) == meta_field.as_ref() {
                meta = Some(v);
                continue;
            }
            if k == time_field {
                min.insert(k.clone(), rounded);
            } else {
                min.insert(k.clone(), v.clone());
            }
            max.insert(k.clone(), v.clone());
            data.insert(k, doc! {"0": v});
        }
        let mut oid = ObjectId::new().bytes();
        let secs = u32::try_from(min_secs.max(0)).unwrap_or(u32::MAX);
        oid[..4].copy_from_slice(&secs.to_be_bytes());
        let mut bucket = doc! {
            "_id": ObjectId::from_bytes(oid),
            "control": {"version": 1, "min": min, "max": max},
        };
        if let Some(v) = meta {
            bucket.insert("meta", v);
        }
        bucket.insert("data", data);
        self.insert(db, &buckets, raw_of(&bucket)?)
    }
}
