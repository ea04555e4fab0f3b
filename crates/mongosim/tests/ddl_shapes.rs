//! The oplog shapes of DDL that a real 7.0 primary does not log as one command entry, driven
//! through the Rust driver and read back from `local.oplog.rs`: views (CRUD on
//! `system.views`), cross-database renames, two-phase index builds (with a held build aborted
//! by dropIndexes), collMod index conversions and time-series collections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::options::ClientOptions;
use mongodb::Client;
use mongosim::MongoSim;

async fn client(uri: &str) -> Client {
    let mut opts = ClientOptions::parse(uri).await.unwrap();
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    opts.retry_reads = Some(false);
    opts.retry_writes = Some(false);
    Client::with_options(opts).unwrap()
}

async fn last_ts(c: &Client) -> Timestamp {
    let e = c
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await
        .unwrap()
        .unwrap();
    e.get_timestamp("ts").unwrap()
}

/// Oplog entries after `after`, without the periodic no-ops.
async fn entries_after(c: &Client, after: Timestamp) -> Vec<Document> {
    c.database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {"ts": {"$gt": after}, "op": {"$ne": "n"}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

fn o(e: &Document) -> &Document {
    e.get_document("o").unwrap()
}

fn o2(e: &Document) -> &Document {
    e.get_document("o2").unwrap()
}

async fn list_collections(c: &Client, db: &str) -> Vec<Document> {
    let r = c
        .database(db)
        .run_command(doc! {"listCollections": 1, "cursor": {}})
        .await
        .unwrap();
    r.get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|b| b.as_document().unwrap().clone())
        .collect()
}

async fn list_indexes(c: &Client, db: &str, coll: &str, extra: Document) -> Vec<Document> {
    let mut cmd = doc! {"listIndexes": coll, "cursor": {}};
    cmd.extend(extra);
    let r = c.database(db).run_command(cmd).await.unwrap();
    r.get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|b| b.as_document().unwrap().clone())
        .collect()
}

fn code_of(e: &mongodb::error::Error) -> i32 {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => c.code,
        other => panic!("not a command error: {other:?}"),
    }
}

async fn wait_for(mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in 10 s"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn views_are_inserts_updates_and_deletes_on_system_views() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let db = c.database("app");
    db.collection::<Document>("src")
        .insert_one(doc! {"_id": 1, "a": 1})
        .await
        .unwrap();
    let t0 = last_ts(&c).await;
    db.run_command(doc! {"create": "v", "viewOn": "src", "pipeline": [{"$match": {"a": 1}}]})
        .await
        .unwrap();
    let e = entries_after(&c, t0).await;
    assert_eq!(e.len(), 2, "{e:?}");
    // system.views is created first: a plain create with idIndex.
    assert_eq!(e[0].get_str("op").unwrap(), "c");
    assert_eq!(e[0].get_str("ns").unwrap(), "app.$cmd");
    assert!(e[0].get("ui").is_some());
    assert_eq!(
        o(&e[0]),
        &doc! {"create": "system.views", "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
    );
    // The view itself: no create entry, an insert of its definition.
    assert_eq!(e[1].get_str("op").unwrap(), "i");
    assert_eq!(e[1].get_str("ns").unwrap(), "app.system.views");
    assert_eq!(
        o(&e[1]),
        &doc! {"_id": "app.v", "viewOn": "src", "pipeline": [{"$match": {"a": 1}}]}
    );
    assert_eq!(o2(&e[1]), &doc! {"_id": "app.v"});

    // A second view: system.views exists, one insert only.
    let t1 = last_ts(&c).await;
    db.run_command(doc! {"create": "w", "viewOn": "src"})
        .await
        .unwrap();
    let e = entries_after(&c, t1).await;
    assert_eq!(e.len(), 1);
    assert_eq!(
        o(&e[0]),
        &doc! {"_id": "app.w", "viewOn": "src", "pipeline": []}
    );

    // collMod of a view: a replacement update of the definition, no collMod entry.
    let t2 = last_ts(&c).await;
    db.run_command(doc! {"collMod": "v", "pipeline": [{"$match": {"a": 2}}]})
        .await
        .unwrap();
    let e = entries_after(&c, t2).await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].get_str("op").unwrap(), "u");
    assert_eq!(e[0].get_str("ns").unwrap(), "app.system.views");
    assert_eq!(
        o(&e[0]),
        &doc! {"_id": "app.v", "viewOn": "src", "pipeline": [{"$match": {"a": 2}}]}
    );
    assert_eq!(o2(&e[0]), &doc! {"_id": "app.v"});

    // listCollections: views as "view", system.views as a collection.
    let lc = list_collections(&c, "app").await;
    let find = |n: &str| lc.iter().find(|d| d.get_str("name").unwrap() == n).unwrap();
    assert_eq!(find("v").get_str("type").unwrap(), "view");
    assert_eq!(
        find("v").get_document("options").unwrap(),
        &doc! {"viewOn": "src", "pipeline": [{"$match": {"a": 2}}]}
    );
    assert_eq!(find("system.views").get_str("type").unwrap(), "collection");

    // drop of a view: a delete of the definition.
    let t3 = last_ts(&c).await;
    db.collection::<Document>("v").drop().await.unwrap();
    let e = entries_after(&c, t3).await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].get_str("op").unwrap(), "d");
    assert_eq!(e[0].get_str("ns").unwrap(), "app.system.views");
    assert_eq!(o(&e[0]), &doc! {"_id": "app.v"});
    assert!(!list_collections(&c, "app")
        .await
        .iter()
        .any(|d| d.get_str("name").unwrap() == "v"));
    sim.shutdown().await;
}

#[tokio::test]
async fn cross_database_rename_is_temp_create_copy_rename_and_drop() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let src = c.database("a").collection::<Document>("x");
    src.insert_many([
        doc! {"_id": 1, "k": "p"},
        doc! {"_id": 2, "k": "q"},
        doc! {"_id": 3, "k": "r"},
    ])
    .await
    .unwrap();
    src.create_index(mongodb::IndexModel::builder().keys(doc! {"k": 1}).build())
        .await
        .unwrap();
    let target = c.database("b").collection::<Document>("y");
    target.insert_one(doc! {"_id": 9}).await.unwrap();
    let src_ui = list_collections(&c, "a").await[0]
        .get_document("info")
        .unwrap()
        .get("uuid")
        .cloned()
        .unwrap();
    let target_ui = list_collections(&c, "b").await[0]
        .get_document("info")
        .unwrap()
        .get("uuid")
        .cloned()
        .unwrap();
    let t0 = last_ts(&c).await;
    c.database("admin")
        .run_command(doc! {"renameCollection": "a.x", "to": "b.y", "dropTarget": true})
        .await
        .unwrap();
    let e = entries_after(&c, t0).await;
    assert_eq!(e.len(), 5, "{e:#?}");
    // 1. the temp collection in the target database, with the source's options.
    assert_eq!(e[0].get_str("ns").unwrap(), "b.$cmd");
    let tmp = o(&e[0]).get_str("create").unwrap().to_string();
    assert!(
        tmp.len() == "tmpXXXXX.renameCollection".len()
            && tmp.starts_with("tmp")
            && tmp.ends_with(".renameCollection"),
        "{tmp}"
    );
    assert_eq!(
        o(&e[0]),
        &doc! {"create": tmp.clone(), "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
    );
    let tmp_ui = e[0].get("ui").cloned().unwrap();
    assert_ne!(tmp_ui, src_ui);
    // 2. its indexes, one createIndexes each.
    assert_eq!(
        o(&e[1]),
        &doc! {"createIndexes": tmp.clone(), "v": 2, "key": {"k": 1}, "name": "k_1"}
    );
    // 3. the documents, batched into one applyOps on admin.$cmd without lsid.
    assert_eq!(e[2].get_str("op").unwrap(), "c");
    assert_eq!(e[2].get_str("ns").unwrap(), "admin.$cmd");
    assert!(e[2].get("lsid").is_none() && e[2].get("ui").is_none());
    let ops = o(&e[2]).get_array("applyOps").unwrap();
    let tmp_ns = format!("b.{tmp}");
    let want: Vec<Bson> = [("p", 1), ("q", 2), ("r", 3)]
        .iter()
        .map(|(k, id)| {
            Bson::Document(doc! {"op": "i", "ns": tmp_ns.clone(), "ui": tmp_ui.clone(), "o": {"_id": id, "k": k}, "o2": {"_id": id}})
        })
        .collect();
    assert_eq!(ops, &want);
    // 4. rename of the temp collection over the target, within the target database.
    assert_eq!(e[3].get_str("ns").unwrap(), "b.$cmd");
    assert_eq!(e[3].get("ui"), Some(&tmp_ui));
    assert_eq!(
        o(&e[3]),
        &doc! {"renameCollection": tmp_ns, "to": "b.y", "stayTemp": false, "dropTarget": target_ui}
    );
    assert_eq!(o2(&e[3]), &doc! {"numRecords": 1});
    // 5. drop of the source.
    assert_eq!(e[4].get_str("ns").unwrap(), "a.$cmd");
    assert_eq!(e[4].get("ui"), Some(&src_ui));
    assert_eq!(o(&e[4]), &doc! {"drop": "x"});
    assert_eq!(o2(&e[4]), &doc! {"numRecords": 3});
    assert_eq!(target.count_documents(doc! {}).await.unwrap(), 3);

    // A single document is a plain insert, not an applyOps.
    c.database("a")
        .collection::<Document>("one")
        .insert_one(doc! {"_id": 7})
        .await
        .unwrap();
    let t1 = last_ts(&c).await;
    c.database("admin")
        .run_command(doc! {"renameCollection": "a.one", "to": "b.one"})
        .await
        .unwrap();
    let e = entries_after(&c, t1).await;
    let kinds: Vec<&str> = e.iter().map(|x| x.get_str("op").unwrap()).collect();
    assert_eq!(kinds, ["c", "i", "c", "c"], "{e:#?}");
    assert!(e[1].get_str("ns").unwrap().starts_with("b.tmp"));
    assert_eq!(o(&e[1]), &doc! {"_id": 7});
    assert_eq!(o2(&e[1]), &doc! {"_id": 7});
    assert!(o(&e[2]).get("dropTarget").is_none() && e[2].get("o2").is_none());

    // Same database: still one renameCollection entry.
    let t2 = last_ts(&c).await;
    c.database("admin")
        .run_command(doc! {"renameCollection": "b.one", "to": "b.two"})
        .await
        .unwrap();
    let e = entries_after(&c, t2).await;
    assert_eq!(e.len(), 1);
    assert_eq!(
        o(&e[0]),
        &doc! {"renameCollection": "b.one", "to": "b.two", "stayTemp": false}
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn index_builds_are_two_phase_on_non_empty_collections() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let db = c.database("app");
    // Empty collection: one createIndexes entry per index.
    db.create_collection("empty").await.unwrap();
    let t0 = last_ts(&c).await;
    db.run_command(doc! {"createIndexes": "empty", "indexes": [
    {"key": {"a": 1}, "name": "a_1"}, {"key": {"b": 1}, "name": "b_1"}]})
        .await
        .unwrap();
    let e = entries_after(&c, t0).await;
    assert_eq!(e.len(), 2);
    assert_eq!(
        o(&e[0]),
        &doc! {"createIndexes": "empty", "v": 2, "key": {"a": 1}, "name": "a_1"}
    );
    assert_eq!(
        o(&e[1]),
        &doc! {"createIndexes": "empty", "v": 2, "key": {"b": 1}, "name": "b_1"}
    );

    // Non-empty collection: startIndexBuild then commitIndexBuild with the same fields.
    let coll = db.collection::<Document>("full");
    coll.insert_many([doc! {"_id": 1, "a": 1}, doc! {"_id": 2, "a": 1}])
        .await
        .unwrap();
    let t1 = last_ts(&c).await;
    db.run_command(doc! {"createIndexes": "full", "indexes": [
    {"key": {"a": 1}, "name": "a_1"}, {"key": {"b": 1}, "name": "b_1"}]})
        .await
        .unwrap();
    let e = entries_after(&c, t1).await;
    assert_eq!(e.len(), 2, "{e:#?}");
    let uuid = o(&e[0]).get("indexBuildUUID").cloned().unwrap();
    assert!(
        matches!(uuid, Bson::Binary(ref b) if b.subtype == mongodb::bson::spec::BinarySubtype::Uuid)
    );
    let specs = vec![
        Bson::Document(doc! {"v": 2, "key": {"a": 1}, "name": "a_1"}),
        Bson::Document(doc! {"v": 2, "key": {"b": 1}, "name": "b_1"}),
    ];
    assert_eq!(
        o(&e[0]),
        &doc! {"startIndexBuild": "full", "indexBuildUUID": uuid.clone(), "indexes": specs.clone()}
    );
    assert_eq!(
        o(&e[1]),
        &doc! {"commitIndexBuild": "full", "indexBuildUUID": uuid, "indexes": specs}
    );
    assert_eq!(e[0].get("ui"), e[1].get("ui"));

    // A unique build meeting duplicates: startIndexBuild, abortIndexBuild with cause 11000.
    let t2 = last_ts(&c).await;
    let err = db
        .run_command(doc! {"createIndexes": "full", "indexes": [
        {"key": {"a": -1}, "name": "a_u", "unique": true}]})
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), 11000);
    let e = entries_after(&c, t2).await;
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(o(&e[0]).contains_key("startIndexBuild"));
    let abort = o(&e[1]);
    assert_eq!(abort.get_str("abortIndexBuild").unwrap(), "full");
    assert_eq!(abort.get("indexBuildUUID"), o(&e[0]).get("indexBuildUUID"));
    assert_eq!(
        abort.get_array("indexes").unwrap(),
        &vec![Bson::Document(
            doc! {"v": 2, "key": {"a": -1}, "name": "a_u", "unique": true}
        )]
    );
    let cause = abort.get_document("cause").unwrap();
    assert!(!cause.get_bool("ok").unwrap());
    assert_eq!(cause.get_i32("code").unwrap(), 11000);
    assert_eq!(cause.get_str("codeName").unwrap(), "DuplicateKey");
    assert!(cause
        .get_str("errmsg")
        .unwrap()
        .starts_with("E11000 duplicate key error collection: app.full index: a_u"));
    assert_eq!(cause.get_document("keyValue").unwrap(), &doc! {"a": 1});
    let names: Vec<String> = list_indexes(&c, "app", "full", doc! {})
        .await
        .iter()
        .map(|i| i.get_str("name").unwrap().to_string())
        .collect();
    assert_eq!(names, ["_id_", "a_1", "b_1"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_held_index_build_is_listed_and_aborted_by_drop_indexes() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let db = c.database("app");
    db.collection::<Document>("c")
        .insert_one(doc! {"_id": 1, "x": 1})
        .await
        .unwrap();
    // The server's test command holds the build after startIndexBuild.
    c.database("admin")
        .run_command(doc! {"configureFailPoint": "hangAfterStartingIndexBuild", "mode": "alwaysOn"})
        .await
        .unwrap();
    let t0 = last_ts(&c).await;
    let builder = {
        let db = db.clone();
        tokio::spawn(async move {
            db.run_command(
                doc! {"createIndexes": "c", "indexes": [{"key": {"x": 1}, "name": "x_1"}]},
            )
            .await
        })
    };
    // Wait until the build is in progress (listed with its build UUID).
    wait_for(async || {
        list_indexes(&c, "app", "c", doc! {"includeBuildUUIDs": true})
            .await
            .iter()
            .any(|i| i.contains_key("buildUUID"))
    })
    .await;
    let with_uuid = list_indexes(&c, "app", "c", doc! {"includeBuildUUIDs": true}).await;
    let start = entries_after(&c, t0).await;
    assert_eq!(start.len(), 1);
    let build_uuid = o(&start[0]).get("indexBuildUUID").cloned().unwrap();
    assert_eq!(
        with_uuid[1],
        doc! {"spec": {"v": 2, "key": {"x": 1}, "name": "x_1"}, "buildUUID": build_uuid.clone()}
    );
    // By default an in-progress index is listed like a ready one.
    let plain = list_indexes(&c, "app", "c", doc! {}).await;
    assert_eq!(plain[1], doc! {"v": 2, "key": {"x": 1}, "name": "x_1"});
    let info = list_indexes(&c, "app", "c", doc! {"includeIndexBuildInfo": true}).await;
    assert_eq!(
        info[0],
        doc! {"spec": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
    );
    assert_eq!(
        info[1]
            .get_document("indexBuildInfo")
            .unwrap()
            .get("buildUUID"),
        Some(&build_uuid)
    );
    // The createIndexes call has not returned.
    assert!(!builder.is_finished());
    // dropIndexes aborts the build: abortIndexBuild with cause IndexBuildAborted.
    db.run_command(doc! {"dropIndexes": "c", "index": "x_1"})
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), builder)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(code_of(&err), 276);
    let e = entries_after(&c, t0).await;
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(
        o(&e[1]),
        &doc! {
            "abortIndexBuild": "c",
            "indexBuildUUID": build_uuid,
            "indexes": [{"v": 2, "key": {"x": 1}, "name": "x_1"}],
            "cause": {"ok": false, "code": 276, "codeName": "IndexBuildAborted", "errmsg": "dropIndexes command"},
        }
    );
    assert_eq!(list_indexes(&c, "app", "c", doc! {}).await.len(), 1);

    // The Rust API: hold, then release -> the build commits.
    c.database("admin")
        .run_command(doc! {"configureFailPoint": "hangAfterStartingIndexBuild", "mode": "off"})
        .await
        .unwrap();
    sim.faults()
        .set_fail_point("hangIndexBuildBeforeCommit", true);
    let t1 = last_ts(&c).await;
    let builder = {
        let db = db.clone();
        tokio::spawn(async move {
            db.run_command(
                doc! {"createIndexes": "c", "indexes": [{"key": {"x": 1}, "name": "x_1"}]},
            )
            .await
        })
    };
    wait_for(async || !entries_after(&c, t1).await.is_empty()).await;
    assert!(!builder.is_finished());
    sim.faults()
        .set_fail_point("hangIndexBuildBeforeCommit", false);
    let reply = tokio::time::timeout(Duration::from_secs(10), builder)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.get_i32("numIndexesAfter").unwrap(), 2);
    let e = entries_after(&c, t1).await;
    assert!(o(&e[0]).contains_key("startIndexBuild"));
    assert!(o(&e[1]).contains_key("commitIndexBuild"));
    sim.shutdown().await;
}

#[tokio::test]
async fn coll_mod_converts_indexes_to_unique_and_ttl() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let db = c.database("app");
    let coll = db.collection::<Document>("c");
    coll.insert_many([doc! {"_id": 1, "a": 1}, doc! {"_id": 2, "a": 1}])
        .await
        .unwrap();
    coll.create_index(mongodb::IndexModel::builder().keys(doc! {"a": 1}).build())
        .await
        .unwrap();
    let ui = list_collections(&c, "app").await[0]
        .get_document("info")
        .unwrap()
        .get("uuid")
        .cloned()
        .unwrap();
    // unique without prepareUnique first: InvalidOptions.
    let err = db
        .run_command(doc! {"collMod": "c", "index": {"keyPattern": {"a": 1}, "unique": true}})
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), 72);
    // prepareUnique: true.
    let t0 = last_ts(&c).await;
    let r = db
        .run_command(
            doc! {"collMod": "c", "index": {"keyPattern": {"a": 1}, "prepareUnique": true}},
        )
        .await
        .unwrap();
    assert!(!r.get_bool("prepareUnique_old").unwrap());
    assert!(r.get_bool("prepareUnique_new").unwrap());
    let e = entries_after(&c, t0).await;
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].get("ui"), Some(&ui));
    assert_eq!(
        o(&e[0]),
        &doc! {"collMod": "c", "index": {"name": "a_1", "prepareUnique": true}}
    );
    assert_eq!(
        o2(&e[0]),
        &doc! {"collectionOptions_old": {"uuid": ui.clone()}, "indexOptions_old": {"prepareUnique": false}}
    );
    let idx = list_indexes(&c, "app", "c", doc! {}).await;
    assert_eq!(
        idx[1],
        doc! {"v": 2, "key": {"a": 1}, "name": "a_1", "prepareUnique": true}
    );
    // New duplicates are refused while prepareUnique is set.
    let err = coll.insert_one(doc! {"_id": 3, "a": 1}).await.unwrap_err();
    assert!(format!("{err}").contains("E11000"), "{err}");
    // Existing duplicates: CannotConvertIndexToUnique with the violations.
    let r = db
        .run_command(doc! {"collMod": "c", "index": {"name": "a_1", "unique": true}})
        .await
        .unwrap_err();
    assert_eq!(code_of(&r), 359);
    coll.delete_one(doc! {"_id": 2}).await.unwrap();
    let t1 = last_ts(&c).await;
    let r = db
        .run_command(doc! {"collMod": "c", "index": {"name": "a_1", "unique": true}})
        .await
        .unwrap();
    assert!(r.get_bool("unique_new").unwrap());
    let e = entries_after(&c, t1).await;
    assert_eq!(e.len(), 1);
    assert_eq!(
        o(&e[0]),
        &doc! {"collMod": "c", "index": {"name": "a_1", "unique": true}}
    );
    assert_eq!(
        o2(&e[0]),
        &doc! {"collectionOptions_old": {"uuid": ui.clone()}, "indexOptions_old": {}}
    );
    let idx = list_indexes(&c, "app", "c", doc! {}).await;
    assert_eq!(
        idx[1],
        doc! {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": true}
    );

    // A non-TTL single-field index becomes a TTL index (5.1+).
    coll.create_index(mongodb::IndexModel::builder().keys(doc! {"t": 1}).build())
        .await
        .unwrap();
    let t2 = last_ts(&c).await;
    let r = db
        .run_command(
            doc! {"collMod": "c", "index": {"keyPattern": {"t": 1}, "expireAfterSeconds": 60}},
        )
        .await
        .unwrap();
    assert!(r.get("expireAfterSeconds_old").is_none());
    assert_eq!(r.get("expireAfterSeconds_new"), Some(&Bson::Int64(60)));
    let e = entries_after(&c, t2).await;
    assert_eq!(
        o(&e[0]),
        &doc! {"collMod": "c", "index": {"name": "t_1", "expireAfterSeconds": 60i64}}
    );
    assert_eq!(
        o2(&e[0]),
        &doc! {"collectionOptions_old": {"uuid": ui.clone()}, "indexOptions_old": {}}
    );
    // Then its expireAfterSeconds changes: the old value in o2.
    let t3 = last_ts(&c).await;
    db.run_command(doc! {"collMod": "c", "index": {"name": "t_1", "expireAfterSeconds": 120}})
        .await
        .unwrap();
    let e = entries_after(&c, t3).await;
    assert_eq!(
        o(&e[0]),
        &doc! {"collMod": "c", "index": {"name": "t_1", "expireAfterSeconds": 120i64}}
    );
    assert_eq!(
        o2(&e[0]),
        &doc! {"collectionOptions_old": {"uuid": ui}, "indexOptions_old": {"expireAfterSeconds": 60i64}}
    );
    let idx = list_indexes(&c, "app", "c", doc! {}).await;
    assert_eq!(
        idx[2],
        doc! {"v": 2, "key": {"t": 1}, "name": "t_1", "expireAfterSeconds": 120i64}
    );
    // A compound index cannot become a TTL index.
    coll.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"p": 1, "q": 1})
            .build(),
    )
    .await
    .unwrap();
    let err = db
        .run_command(doc! {"collMod": "c", "index": {"name": "p_1_q_1", "expireAfterSeconds": 5}})
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), 72);
    sim.shutdown().await;
}

#[tokio::test]
async fn coll_mod_unique_conversion_reports_violations() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let db = c.database("app");
    let coll = db.collection::<Document>("c");
    coll.insert_many([
        doc! {"_id": 1, "a": 100},
        doc! {"_id": 2, "a": 100},
        doc! {"_id": 3, "a": 5},
    ])
    .await
    .unwrap();
    coll.create_index(mongodb::IndexModel::builder().keys(doc! {"a": 1}).build())
        .await
        .unwrap();
    db.run_command(doc! {"collMod": "c", "index": {"name": "a_1", "prepareUnique": true}})
        .await
        .unwrap();
    let err = db
        .run_command(doc! {"collMod": "c", "index": {"name": "a_1", "unique": true}})
        .await
        .unwrap_err();
    let mongodb::error::ErrorKind::Command(ce) = err.kind.as_ref() else {
        panic!("{err}")
    };
    assert_eq!(ce.code, 359);
    assert_eq!(ce.code_name, "CannotConvertIndexToUnique");
    assert_eq!(
        ce.message,
        "Cannot convert the index to unique. Please resolve conflicting documents before running collMod again."
    );
    // The reply carries `violations: [{ids: [1, 2]}]`.
    let reply: Document = err.server_response().unwrap().try_into().unwrap();
    assert_eq!(
        reply.get_array("violations").unwrap(),
        &vec![Bson::Document(doc! {"ids": [1, 2]})]
    );
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn time_series_collections_are_buckets_plus_a_view() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let db = c.database("ts");
    let t0 = last_ts(&c).await;
    db.run_command(doc! {"create": "weather", "timeseries": {"timeField": "t", "metaField": "m"}})
        .await
        .unwrap();
    let e = entries_after(&c, t0).await;
    assert_eq!(e.len(), 4, "{e:#?}");
    let tso = doc! {"timeField": "t", "metaField": "m", "granularity": "seconds", "bucketMaxSpanSeconds": 3600};
    let minmax =
        doc! {"bsonType": "object", "required": ["t"], "properties": {"t": {"bsonType": "date"}}};
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
    assert_eq!(e[0].get_str("ns").unwrap(), "ts.$cmd");
    assert_eq!(
        o(&e[0]),
        &doc! {"create": "system.buckets.weather", "validator": validator, "clusteredIndex": true, "timeseries": tso.clone()}
    );
    let bucket_ui = e[0].get("ui").cloned().unwrap();
    assert_eq!(
        o(&e[1]),
        &doc! {"createIndexes": "system.buckets.weather", "v": 2, "name": "m_1_t_1", "key": {"meta": 1, "control.min.t": 1, "control.max.t": 1}}
    );
    assert_eq!(o(&e[2]).get_str("create").unwrap(), "system.views");
    assert_eq!(e[3].get_str("op").unwrap(), "i");
    assert_eq!(e[3].get_str("ns").unwrap(), "ts.system.views");
    assert_eq!(
        o(&e[3]),
        &doc! {"_id": "ts.weather", "viewOn": "system.buckets.weather", "pipeline": [
        {"$_internalUnpackBucket": {"timeField": "t", "metaField": "m", "bucketMaxSpanSeconds": 3600}}]}
    );
    // listCollections: the time-series view, its buckets and system.views.
    let lc = list_collections(&c, "ts").await;
    let find = |n: &str| lc.iter().find(|d| d.get_str("name").unwrap() == n).unwrap();
    assert_eq!(
        find("weather"),
        &doc! {"name": "weather", "type": "timeseries", "options": {"timeseries": tso.clone()}, "info": {"readOnly": false}}
    );
    let b = find("system.buckets.weather");
    assert_eq!(b.get_str("type").unwrap(), "collection");
    assert_eq!(
        b.get_document("options")
            .unwrap()
            .get_document("timeseries")
            .unwrap(),
        &tso
    );
    assert!(b.get("idIndex").is_none());
    assert_eq!(find("system.views").get_str("type").unwrap(), "collection");

    // A measurement goes into a bucket document.
    let when = mongodb::bson::DateTime::from_millis(1_700_000_123_456);
    let t1 = last_ts(&c).await;
    db.collection::<Document>("weather")
        .insert_one(doc! {"_id": 1, "t": when, "m": "a", "temp": 12})
        .await
        .unwrap();
    let e = entries_after(&c, t1).await;
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].get_str("op").unwrap(), "i");
    assert_eq!(e[0].get_str("ns").unwrap(), "ts.system.buckets.weather");
    assert_eq!(e[0].get("ui"), Some(&bucket_ui));
    let bucket = o(&e[0]);
    let id = bucket.get_object_id("_id").unwrap();
    let rounded = mongodb::bson::DateTime::from_millis(1_700_000_100_000);
    assert_eq!(id.timestamp().timestamp_millis(), 1_700_000_100_000);
    assert_eq!(
        bucket,
        &doc! {
            "_id": id,
            "control": {"version": 1, "min": {"_id": 1, "t": rounded, "temp": 12}, "max": {"_id": 1, "t": when, "temp": 12}},
            "meta": "a",
            "data": {"_id": {"0": 1}, "t": {"0": when}, "temp": {"0": 12}},
        }
    );
    sim.shutdown().await;
}
