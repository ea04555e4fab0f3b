//! DDL barriers of OPLOG_SYNC: command entries (reference §6.3) and view definitions, each applied on
//! the destination with the tolerances of §8.7, keeping the task's records (created namespaces, relaxed
//! indexes, capped namespaces) in step.
//!
//! Shapes as the server logs them:
//! - views: no command entry; `i`/`u`/`d` on `<db>.system.views` with `o: {_id: "<db>.<view>", viewOn,
//!   pipeline[, collation]}` (mongodb/mongo `src/mongo/db/views/durable_view_catalog.cpp`; change streams
//!   read view events from those entries, `src/mongo/db/pipeline/change_stream_filter_helpers.cpp`);
//! - index builds on non-empty collections: `startIndexBuild`, then `commitIndexBuild` or
//!   `abortIndexBuild` (`src/mongo/db/op_observer/op_observer_impl.cpp`); on empty ones `createIndexes`;
//! - cross-database renames (4.2+): a temporary collection created in the target database, inserts, a
//!   same-database `renameCollection` onto the target and a `drop` of the source
//!   (`src/mongo/db/catalog/rename_collection.cpp`), each applied as it comes;
//! - time-series collections: `create` of `system.buckets.<name>` plus a view on it: refused (not
//!   silently dropped).

use mongodb::bson::{doc, Bson, Document, RawDocument};

use crate::apply::Applier;
use crate::indexes;
use crate::mongo::{error_code, RetryError};
use crate::oplog::Op;
use crate::plan::{self, split_ns};
use crate::types::OpTime;
use crate::EngineError;

fn tolerate(e: &RetryError, codes: &[i32]) -> bool {
    error_code(&e.error).is_some_and(|c| codes.contains(&c))
}

fn time_series(ns: &str) -> EngineError {
    EngineError::Unsupported {
        namespace: ns.to_string(),
        detail: "time-series collections cannot be migrated yet: exclude this database from the task, or \
                 drop the collection on the source, then restart the migration"
            .into(),
    }
}

impl Applier {
    pub(crate) async fn apply_command(
        &mut self,
        ts: OpTime,
        db: &str,
        mut cmd: Document,
    ) -> Result<(), EngineError> {
        let ctx = self.ctx.clone();
        let o2 = cmd.remove("$o2");
        let Some(name) = cmd.keys().next().cloned() else {
            return Ok(());
        };
        let target = cmd.get_str(&name).unwrap_or("").to_string();
        let ns = format!("{db}.{target}");
        tracing::info!(task_id = %ctx.cfg.task_id, command = %name, %ns, %ts, "applying DDL");
        match name.as_str() {
            "create" => {
                if target.starts_with("system.buckets.") || cmd.contains_key("timeseries") {
                    return Err(time_series(&ns));
                }
                if target.starts_with("system.") {
                    return Ok(());
                }
                if cmd
                    .get_str("viewOn")
                    .is_ok_and(|v| v.starts_with("system.buckets."))
                {
                    return Err(time_series(&ns));
                }
                let mut existing = plan::dest_names(&ctx, db).await?;
                let mut opts = cmd.clone();
                opts.remove("create");
                if opts.get_bool("capped").unwrap_or(false) {
                    let mut st = ctx.state();
                    if !st.ordered.contains(&ns) {
                        st.ordered.push(ns.clone());
                    }
                }
                plan::create_namespace(&ctx, &ns, &opts, &mut existing).await?;
            }
            "drop" => {
                if target.starts_with("system.buckets.") {
                    return Ok(());
                }
                self.drop_collection(db, &target).await?;
            }
            "dropDatabase" => {
                ctx.dst_command(db, doc! {"dropDatabase": 1})
                    .await
                    .map_err(|e| e.into_engine("dropDatabase", db))?;
                let mut st = ctx.state();
                indexes::forget_db(&mut st, db);
                let prefix = format!("{db}.");
                st.ordered.retain(|n| !n.starts_with(&prefix));
            }
            "renameCollection" => self.rename(ts, &cmd).await?,
            "createIndexes" => {
                let mut spec = cmd.clone();
                spec.remove("createIndexes");
                self.create_indexes(db, &target, vec![spec]).await?;
            }
            "commitIndexBuild" => {
                self.create_indexes(db, &target, index_specs(&cmd)).await?;
            }
            "abortIndexBuild" => {
                // The source never finished it: make sure the destination does not keep it.
                for spec in index_specs(&cmd) {
                    let Ok(index) = spec.get_str("name") else {
                        continue;
                    };
                    self.drop_index(db, &target, Bson::String(index.to_string()))
                        .await?;
                }
            }
            "startIndexBuild" => {}
            "dropIndexes" | "deleteIndexes" => {
                let index = cmd
                    .get("index")
                    .cloned()
                    .unwrap_or(Bson::String("*".into()));
                // By key pattern: the dropped spec (o2) names it.
                let index = match (&index, &o2) {
                    (Bson::Document(_), Some(Bson::Document(spec))) => spec
                        .get_str("name")
                        .map(|n| Bson::String(n.to_string()))
                        .unwrap_or(index),
                    _ => index,
                };
                self.drop_index(db, &target, index).await?;
            }
            "collMod" => self.coll_mod(db, &target, cmd).await?,
            other => {
                tracing::warn!(task_id = %ctx.cfg.task_id, command = other, %ns, %ts, "skipping oplog command that has no destination equivalent");
            }
        }
        Ok(())
    }

    async fn drop_collection(&mut self, db: &str, coll: &str) -> Result<(), EngineError> {
        let ns = format!("{db}.{coll}");
        let r = self.ctx.dst_command(db, doc! {"drop": coll}).await;
        if let Err(e) = r {
            if !tolerate(&e, &[26]) {
                return Err(e.into_engine("drop", &ns));
            }
        }
        let mut st = self.ctx.state();
        indexes::forget_ns(&mut st, &ns);
        st.ordered.retain(|n| n != &ns);
        Ok(())
    }

    async fn drop_index(&mut self, db: &str, coll: &str, index: Bson) -> Result<(), EngineError> {
        let ns = format!("{db}.{coll}");
        let r = self
            .ctx
            .dst_command(db, doc! {"dropIndexes": coll, "index": index.clone()})
            .await;
        if let Err(e) = r {
            if !tolerate(&e, &[26, 27]) {
                return Err(e.into_engine("dropIndexes", &ns));
            }
        }
        if let Bson::String(name) = index {
            indexes::forget_index(&mut self.ctx.state(), &ns, &name);
        }
        Ok(())
    }

    async fn rename(&mut self, ts: OpTime, cmd: &Document) -> Result<(), EngineError> {
        let ctx = self.ctx.clone();
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
            return self.drop_collection(fdb, fname).await;
        }
        if !from_sel {
            return Err(EngineError::Unsupported {
                namespace: to,
                detail: format!("renamed from {from}, which is not migrated; include that database or restart the migration"),
            });
        }
        let (tdb, tname) = split_ns(&to);
        let existing = plan::dest_names(&ctx, tdb).await?;
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
            // The target exists only on the destination (copied after the source renamed into it):
            // the source replaced it, so do the same.
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
        {
            let mut st = ctx.state();
            indexes::rename_ns(&mut st, &from, &to);
            let was_ordered = st.ordered.contains(&from);
            st.ordered.retain(|n| n != &from && n != &to);
            if was_ordered {
                st.ordered.push(to.clone());
            }
        }
        if ts <= self.copy_end {
            // A rename inside the copy window may have moved documents the copy never saw (they were
            // under the old name when it was listed): take the target's current content from the
            // source; later entries replay idempotently on top of it.
            crate::copy::recopy_collection(&ctx, &to).await?;
        }
        Ok(())
    }

    /// `collMod`: unique/prepareUnique/TTL changes of an index update the recorded source definition
    /// (the destination keeps them relaxed until cut-over); everything else is applied as logged.
    async fn coll_mod(
        &mut self,
        db: &str,
        coll: &str,
        mut cmd: Document,
    ) -> Result<(), EngineError> {
        let ns = format!("{db}.{coll}");
        if let Ok(index) = cmd.get_document("index").cloned() {
            let mut rest = index.clone();
            let deferred: Vec<(String, Bson)> = ["unique", "prepareUnique", "expireAfterSeconds"]
                .iter()
                .filter_map(|k| rest.remove(*k).map(|v| (k.to_string(), v)))
                .collect();
            if !deferred.is_empty() {
                let name = self.index_name(&ns, &index).await?;
                self.defer_index_options(&ns, &name, &deferred).await?;
                let has_other = rest.keys().any(|k| k != "name" && k != "keyPattern");
                if has_other {
                    cmd.insert("index", rest);
                } else {
                    cmd.remove("index");
                }
            }
        }
        if cmd.len() <= 1 {
            return Ok(());
        }
        let r = self.ctx.dst_command(db, cmd).await;
        if let Err(e) = r {
            if !tolerate(&e, &[26, 27]) {
                return Err(e.into_engine("collMod", &ns));
            }
        }
        Ok(())
    }

    /// The name of the index a `collMod` addresses by `name` or `keyPattern`.
    async fn index_name(&self, ns: &str, index: &Document) -> Result<String, EngineError> {
        if let Ok(n) = index.get_str("name") {
            return Ok(n.to_string());
        }
        let Ok(key) = index.get_document("keyPattern") else {
            return Ok(String::new());
        };
        let specs = plan::list_indexes(&self.ctx, ns).await?;
        Ok(specs
            .iter()
            .find(|s| s.get_document("key").ok() == Some(key))
            .and_then(|s| s.get_str("name").ok())
            .unwrap_or("")
            .to_string())
    }

    /// Records unique/prepareUnique/TTL options set on the source for an index; the destination index
    /// stays relaxed (a TTL newly set on a plain index is paused on the destination too).
    async fn defer_index_options(
        &mut self,
        ns: &str,
        name: &str,
        options: &[(String, Bson)],
    ) -> Result<(), EngineError> {
        if name.is_empty() {
            return Ok(());
        }
        let existing = self
            .ctx
            .state()
            .relaxed
            .iter()
            .find(|r| r.ns == ns && r.name == name)
            .cloned();
        let mut spec = match &existing {
            Some(r) => crate::state::from_ext_doc(&r.spec)?,
            None => {
                let specs = plan::list_indexes(&self.ctx, ns).await?;
                match specs
                    .into_iter()
                    .find(|s| s.get_str("name").ok() == Some(name))
                {
                    Some(s) => s,
                    None => return Ok(()),
                }
            }
        };
        for (k, v) in options {
            match (k.as_str(), v) {
                ("unique" | "prepareUnique", Bson::Boolean(false)) => {
                    spec.remove(k);
                }
                _ => {
                    spec.insert(k.clone(), v.clone());
                }
            }
        }
        let (_, record) = indexes::relax(ns, &spec);
        let needs_pause = options.iter().any(|(k, _)| k == "expireAfterSeconds");
        {
            let mut st = self.ctx.state();
            indexes::forget_index(&mut st, ns, name);
            if let Some(r) = record {
                indexes::remember(&mut st, vec![r]);
            }
        }
        if needs_pause {
            let (db, coll) = split_ns(ns);
            let cmd = doc! {"collMod": coll, "index": {"name": name, "expireAfterSeconds": indexes::TTL_PAUSED}};
            if let Err(e) = self.ctx.dst_command(db, cmd).await {
                if !tolerate(&e, &[26, 27]) {
                    return Err(e.into_engine("collMod", ns));
                }
            }
        }
        self.ctx.emit_checkpoint().await;
        Ok(())
    }

    pub(crate) async fn create_indexes(
        &mut self,
        db: &str,
        coll: &str,
        specs: Vec<Document>,
    ) -> Result<(), EngineError> {
        let ns = format!("{db}.{coll}");
        if specs.is_empty() {
            return Ok(());
        }
        let mut relaxed_specs = Vec::with_capacity(specs.len());
        let mut records = Vec::new();
        for spec in &specs {
            let (s, r) = indexes::relax(&ns, spec);
            relaxed_specs.push(s);
            records.extend(r);
        }
        if !records.is_empty() {
            indexes::remember(&mut self.ctx.state(), records);
            self.ctx.emit_checkpoint().await;
        }
        let r = self
            .ctx
            .dst_command(db, doc! {"createIndexes": coll, "indexes": relaxed_specs})
            .await;
        match r {
            Ok(_) => {}
            Err(e) if tolerate(&e, &[85, 86, 68]) => {}
            Err(e) => return Err(e.into_engine("createIndexes", &ns)),
        }
        Ok(())
    }

    /// A view definition change: CRUD on `<db>.system.views`.
    pub(crate) async fn apply_view_op(&mut self, ts: OpTime, op: Op) -> Result<(), EngineError> {
        let ns = op.namespace();
        let (db, _) = split_ns(&ns);
        let db = db.to_string();
        let view_id = |d: &RawDocument| d.get_str("_id").ok().map(str::to_string);
        match op {
            Op::Insert { doc, .. } | Op::Replace { doc, .. } => {
                let def = Document::try_from(&*doc).map_err(|e| EngineError::Apply {
                    ts: ts.to_string(),
                    namespace: ns.clone(),
                    detail: format!("view definition is not decodable: {e}"),
                })?;
                let Some(id) = def.get_str("_id").ok().map(str::to_string) else {
                    return Ok(());
                };
                self.put_view(ts, &db, &id, &def).await
            }
            Op::UpdateModifier { key, .. } | Op::UpdateDiff { key, .. } => {
                // Partial update of a definition: take the source's current definition.
                let Some(id) = view_id(&key) else {
                    return Ok(());
                };
                let view = id
                    .strip_prefix(&format!("{db}."))
                    .unwrap_or(&id)
                    .to_string();
                match plan::source_view(&self.ctx, &db, &view).await? {
                    Some(def) => self.put_view(ts, &db, &id, &def).await,
                    None => Ok(()),
                }
            }
            Op::Delete { key, .. } => {
                let Some(id) = view_id(&key) else {
                    return Ok(());
                };
                let view = id
                    .strip_prefix(&format!("{db}."))
                    .unwrap_or(&id)
                    .to_string();
                self.drop_collection(&db, &view).await
            }
            Op::Command { .. } => Ok(()),
        }
    }

    /// Creates the view `id` (`<db>.<view>`) with definition `def` (`viewOn`, `pipeline`, `collation`),
    /// or changes it to that definition if it exists.
    async fn put_view(
        &mut self,
        ts: OpTime,
        db: &str,
        id: &str,
        def: &Document,
    ) -> Result<(), EngineError> {
        let view = id.strip_prefix(&format!("{db}.")).unwrap_or(id).to_string();
        let ns = format!("{db}.{view}");
        let view_on = def.get_str("viewOn").unwrap_or("").to_string();
        if view_on.starts_with("system.buckets.") {
            return Err(time_series(&ns));
        }
        let pipeline = def.get_array("pipeline").cloned().unwrap_or_default();
        let existing = plan::dest_names(&self.ctx, db).await?;
        if existing.contains(&view) {
            let r = self
                .ctx
                .dst_command(
                    db,
                    doc! {"collMod": &view, "viewOn": &view_on, "pipeline": pipeline},
                )
                .await;
            return r
                .map(|_| ())
                .map_err(|e| e.into_engine("collMod view", &ns));
        }
        let mut opts = doc! {"viewOn": &view_on, "pipeline": pipeline};
        if let Ok(c) = def.get_document("collation") {
            opts.insert("collation", c.clone());
        }
        let mut existing = existing;
        tracing::info!(task_id = %self.ctx.cfg.task_id, %ns, %ts, "creating view");
        plan::create_namespace(&self.ctx, &ns, &opts, &mut existing).await
    }
}

fn index_specs(cmd: &Document) -> Vec<Document> {
    cmd.get_array("indexes")
        .map(|a| a.iter().filter_map(Bson::as_document).cloned().collect())
        .unwrap_or_default()
}
