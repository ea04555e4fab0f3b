#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are assertions
//! Every oplog entry of `tests/data/oplog-samples.jsonl` applied by the engine to a matching pre-image
//! on a destination gives the server's documented result (reference/mongodb.md §6-§7).
mod common;

use anyhow::Result;
use common::*;
use ferry_engine::{apply_oplog_entries, Endpoint};
use mongodb::bson::{doc, oid::ObjectId, Bson, Document, Timestamp};

fn samples() -> Vec<(String, Document)> {
    include_str!("data/oplog-samples.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let Bson::Document(d) = Bson::try_from(v["doc"].clone()).unwrap() else {
                panic!()
            };
            (v["kind"].as_str().unwrap().to_string(), d)
        })
        .collect()
}

fn sample(kind: &str, nth: usize) -> Document {
    samples()
        .into_iter()
        .filter(|(k, _)| k == kind)
        .nth(nth)
        .map(|(_, d)| d)
        .unwrap()
}

fn oid(s: &str) -> ObjectId {
    ObjectId::parse_str(s).unwrap()
}

fn update_entry(ns: &str, id: Bson, o: Document, i: u32) -> Document {
    doc! {"op": "u", "ns": ns, "o": o, "o2": {"_id": id}, "ts": Timestamp { time: 1_700_000_000, increment: i }}
}

async fn get(p: &Pair, ns: &str, id: Bson) -> Option<Document> {
    let (db, c) = ns.split_once('.').unwrap();
    p.dst
        .database(db)
        .collection::<Document>(c)
        .find_one(doc! {"_id": id})
        .await
        .unwrap()
}

async fn put(p: &Pair, ns: &str, d: Document) {
    let (db, c) = ns.split_once('.').unwrap();
    p.dst
        .database(db)
        .collection::<Document>(c)
        .insert_one(d)
        .await
        .unwrap();
}

fn endpoint(p: &Pair) -> Endpoint {
    Endpoint {
        uri: p.dest.uri(),
        username: USER.into(),
        password: PASSWORD.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_and_ddl_samples_give_the_servers_result() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let ep = endpoint(&p);
    let all: Vec<String> = Vec::new();

    // zz.test: insert, replacement, $v:1 update, delete (MongoShake 4.2 samples).
    put(
        &p,
        "zz.test",
        doc! {"_id": oid("5e537cf27dc0f30426f01b77"), "kick": 0},
    )
    .await;
    put(
        &p,
        "zz.test",
        doc! {"_id": oid("5e5384f97dc0f30426f01b79"), "kick": 9},
    )
    .await;
    let entries = vec![
        sample("oplog.insert", 0),
        sample("oplog.delete", 0),
        sample("oplog.update.replacement", 0),
        sample("oplog.update.v1", 0),
    ];
    apply_oplog_entries(&ep, &all, &entries).await?;
    assert_eq!(
        get(&p, "zz.test", oid("5e4fa224a6717632d6ee2e85").into()).await,
        Some(doc! {"_id": oid("5e4fa224a6717632d6ee2e85"), "kick": 1})
    );
    assert_eq!(
        get(&p, "zz.test", oid("5e537cf27dc0f30426f01b77").into()).await,
        None
    );
    assert_eq!(
        get(&p, "zz.test", oid("5e5384f97dc0f30426f01b79").into()).await,
        Some(doc! {"_id": oid("5e5384f97dc0f30426f01b79"), "kick": 10, "plus_field": 2})
    );
    // Re-applying is idempotent.
    apply_oplog_entries(&ep, &all, &entries).await?;
    assert_eq!(
        get(&p, "zz.test", oid("5e5384f97dc0f30426f01b79").into()).await,
        Some(doc! {"_id": oid("5e5384f97dc0f30426f01b79"), "kick": 10, "plus_field": 2})
    );

    // test.c (4.4 samples): insert, $v:1 update, replacement of a missing doc (upsert), delete.
    apply_oplog_entries(
        &ep,
        &all,
        &[sample("oplog.insert", 1), sample("oplog.update.v1", 1)],
    )
    .await?;
    assert_eq!(
        get(&p, "test.c", oid("627a1f83b95fae5fca006bac").into()).await,
        Some(doc! {"_id": oid("627a1f83b95fae5fca006bac"), "a": 1, "b": 3})
    );
    apply_oplog_entries(
        &ep,
        &all,
        &[
            sample("oplog.update.replacement", 1),
            sample("oplog.delete", 1),
        ],
    )
    .await?;
    assert_eq!(
        get(&p, "test.c", oid("627a2492b95fae5fca006bad").into()).await,
        Some(doc! {"_id": oid("627a2492b95fae5fca006bad"), "b": 2})
    );
    assert_eq!(
        get(&p, "test.c", oid("627a1f83b95fae5fca006bac").into()).await,
        None
    );

    // $v:2 diffs (server jstests) on the pre-images of reference §7.4.
    let v2: Vec<Document> = samples()
        .into_iter()
        .filter(|(k, _)| k == "oplog.update.o.v2")
        .map(|(_, d)| d)
        .collect();
    let cases = vec![
        (
            doc! {"_id": 3, "a": 5, "b": 1},
            doc! {"_id": 3, "a": 5, "b": 3},
        ),
        (
            doc! {"_id": 8, "a": 2, "b": {"c": 1}},
            doc! {"_id": 8, "a": 2, "b": {"c": 1, "d": 2}},
        ),
        (
            doc! {"_id": 100, "a": 1, "b": 2, "arrayForSubdiff": ["G", {"a": "M"}, 1, 2, 3], "arrayForReplacement": [0, 1, 2, 3], "giantStr": "G"},
            doc! {"_id": 100, "a": 2, "b": 2, "arrayForSubdiff": ["G", {"a": "M", "b": 3}], "arrayForReplacement": [0], "giantStr": "G", "c": 3},
        ),
        (
            doc! {"_id": 5, "a": 1, "doc": {"x": 1}, "arr": [{"x": 1, "y": 2}], "arr_a": [1], "arr_b": [[1, 3]], "arr_c": [["S", 1, 2, 3], "M"],
            "obj": {"x": {"a": 1, "b": 1, "c": ["M", 1, 2, 3], "str": "M"}}},
            doc! {"_id": 5, "arr": [{"y": 2}], "arr_a": [2], "arr_b": [[2, 3]], "arr_c": [["S"], "M"], "obj": {"x": {"b": 2, "c": ["M"], "str": "M"}}},
        ),
    ];
    assert_eq!(v2.len(), cases.len());
    for (n, (o, (pre, want))) in v2.into_iter().zip(cases).enumerate() {
        let id = pre.get("_id").cloned().unwrap();
        put(&p, "v2.docs", pre).await;
        let entry = update_entry("v2.docs", id.clone(), o, n as u32 + 1);
        apply_oplog_entries(&ep, &all, std::slice::from_ref(&entry)).await?;
        let got = get(&p, "v2.docs", id.clone()).await.unwrap();
        assert_eq!(got, want, "sample {n}");
        let keys: Vec<&String> = got.keys().collect();
        let want_keys: Vec<&String> = want.keys().collect();
        assert_eq!(keys, want_keys, "field order of sample {n}");
        apply_oplog_entries(&ep, &all, &[entry]).await?;
        assert_eq!(
            get(&p, "v2.docs", id).await.unwrap(),
            want,
            "idempotent re-apply of sample {n}"
        );
    }

    // DDL: create, createIndexes (single phase and two-phase commit), dropIndexes, collMod, rename, drop,
    // dropDatabase.
    apply_oplog_entries(&ep, &all, &[sample("oplog.command.create", 0)]).await?;
    assert!(p
        .dst
        .database("zhongli")
        .list_collection_names()
        .await?
        .contains(&"test_create_collection".to_string()));
    put(&p, "zhongli.test", doc! {"_id": 1, "a": 1, "b": 1}).await;
    let start = sample("oplog.command.startIndexBuild", 0);
    let mut commit = start.clone();
    let mut o = commit.get_document("o")?.clone();
    let build = o.remove("startIndexBuild").unwrap();
    let mut o2 = doc! {"commitIndexBuild": build};
    o2.extend(o);
    commit.insert("o", o2);
    apply_oplog_entries(&ep, &all, &[start, commit]).await?;
    let names = |v: Vec<Document>| {
        v.iter()
            .map(|d| d.get_str("name").unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(indexes(&p.dst, "zhongli", "test").await?),
        vec!["_id_", "a_1", "b_1"]
    );
    apply_oplog_entries(&ep, &all, &[sample("oplog.command.collMod", 0)]).await?;
    let a1 = indexes(&p.dst, "zhongli", "test")
        .await?
        .into_iter()
        .find(|d| d.get_str("name").ok() == Some("a_1"))
        .unwrap();
    assert_eq!(a1.get_bool("hidden").ok(), Some(true));
    apply_oplog_entries(&ep, &all, &[sample("oplog.command.dropIndexes", 0)]).await?;
    assert_eq!(
        names(indexes(&p.dst, "zhongli", "test").await?),
        vec!["_id_", "b_1"]
    );

    put(&p, "test.car", doc! {"_id": 1, "count": 1, "type": "x"}).await;
    apply_oplog_entries(
        &ep,
        &all,
        &[
            sample("oplog.command.createIndexes.singlePhase", 0),
            sample("oplog.command.commitIndexBuild", 0),
        ],
    )
    .await?;
    assert_eq!(
        names(indexes(&p.dst, "test", "car").await?),
        vec!["_id_", "count_1", "type_1"]
    );

    apply_oplog_entries(&ep, &all, &[sample("oplog.command.renameCollection", 0)]).await?;
    let zz = p.dst.database("zz").list_collection_names().await?;
    assert_eq!(zz, vec!["test_collection_rename".to_string()]);
    put(&p, "zz.test", doc! {"_id": 1}).await;
    apply_oplog_entries(&ep, &all, &[sample("oplog.command.drop", 0)]).await?;
    assert_eq!(
        p.dst.database("zz").list_collection_names().await?,
        vec!["test_collection_rename".to_string()]
    );
    apply_oplog_entries(&ep, &all, &[sample("oplog.command.dropDatabase", 0)]).await?;
    assert!(p
        .dst
        .database("zz")
        .list_collection_names()
        .await?
        .is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_samples_apply_only_when_committed() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let ep = endpoint(&p);
    let partial = sample("oplog.command.applyOps.partialTxn", 0);
    let prepare = sample("oplog.command.applyOps.prepare", 0);
    let commit = sample("oplog.command.commitTransaction", 0);
    let abort = sample("oplog.command.abortTransaction", 0);
    // Partial + prepare, then abort: nothing applied.
    apply_oplog_entries(&ep, &[], &[partial.clone(), prepare.clone(), abort]).await?;
    assert!(p
        .dst
        .database("test")
        .list_collection_names()
        .await?
        .is_empty());
    // Partial + prepare + commit of the same transaction: everything applied.
    let same_txn = |mut d: Document| {
        d.insert("lsid", commit.get_document("lsid").unwrap().clone());
        d.insert("txnNumber", commit.get("txnNumber").unwrap().clone());
        d
    };
    apply_oplog_entries(
        &ep,
        &[],
        &[same_txn(partial.clone()), same_txn(prepare.clone()), commit],
    )
    .await?;
    let n = p
        .dst
        .database("test")
        .collection::<Document>("foo")
        .count_documents(doc! {})
        .await?;
    let inner = |d: &Document| {
        d.get_document("o")
            .unwrap()
            .get_array("applyOps")
            .unwrap()
            .len() as u64
    };
    assert_eq!(n, inner(&partial) + inner(&prepare));
    Ok(())
}

fn t(i: u32) -> Timestamp {
    Timestamp {
        time: 1_700_000_100,
        increment: i,
    }
}

fn uuid(b: u8) -> Bson {
    Bson::Binary(mongodb::bson::Binary {
        subtype: mongodb::bson::spec::BinarySubtype::Uuid,
        bytes: vec![b; 16],
    })
}

/// The shapes of issue #8 exactly as a 7.0 primary logs them, each applied to a matching pre-image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_shapes_apply_to_their_pre_images() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let ep = endpoint(&p);
    let all: Vec<String> = Vec::new();
    put(&p, "app.items", doc! {"_id": 1, "a": 1}).await;

    // Views: CRUD on <db>.system.views (durable_view_catalog.cpp), no command entry.
    let view = doc! {"_id": "app.v", "viewOn": "items", "pipeline": [{"$match": {"a": 1}}]};
    apply_oplog_entries(&ep, &all, &[doc! {"op": "i", "ns": "app.system.views", "ui": uuid(1), "o": view.clone(), "o2": {"_id": "app.v"}, "ts": t(1)}]).await?;
    let opts = |names: Vec<Document>| {
        names
            .into_iter()
            .find(|c| c.get_str("name").ok() == Some("v"))
            .map(|c| c.get_document("options").unwrap().clone())
    };
    let v = opts(collections(&p.dst, "app").await?).unwrap();
    assert_eq!(v.get_array("pipeline")?.len(), 1);
    let changed = doc! {"_id": "app.v", "viewOn": "items", "pipeline": []};
    apply_oplog_entries(&ep, &all, &[doc! {"op": "u", "ns": "app.system.views", "ui": uuid(1), "o": changed, "o2": {"_id": "app.v"}, "ts": t(2)}]).await?;
    let v = opts(collections(&p.dst, "app").await?).unwrap();
    assert!(v.get_array("pipeline")?.is_empty(), "{v}");
    apply_oplog_entries(&ep, &all, &[doc! {"op": "d", "ns": "app.system.views", "ui": uuid(1), "o": {"_id": "app.v"}, "ts": t(3)}]).await?;
    assert!(opts(collections(&p.dst, "app").await?).is_none());

    // TTL and multi deletes since 6.1: one applyOps without lsid (op_observer_impl.cpp,
    // onBatchedWriteCommit), applied at once.
    for i in 10..13 {
        put(&p, "app.items", doc! {"_id": i}).await;
    }
    let batched = doc! {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [
        {"op": "d", "ns": "app.items", "ui": uuid(2), "o": {"_id": 10}},
        {"op": "d", "ns": "app.items", "ui": uuid(2), "o": {"_id": 11}},
    ]}, "ts": t(4)};
    apply_oplog_entries(&ep, &all, &[batched]).await?;
    assert!(get(&p, "app.items", Bson::Int32(10)).await.is_none());
    assert!(get(&p, "app.items", Bson::Int32(12)).await.is_some());

    // A large unprepared transaction: partialTxn links, then the terminal entry with count
    // (transaction_operations.cpp); nothing applies before the terminal one.
    let lsid = doc! {"id": uuid(3), "uid": Bson::Binary(mongodb::bson::Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: vec![0; 32] })};
    let link = |i: u32, ops: Vec<Document>, last: bool| {
        let mut o = doc! {"applyOps": ops};
        if last {
            o.insert("count", 3i64);
        } else {
            o.insert("partialTxn", true);
        }
        doc! {"op": "c", "ns": "admin.$cmd", "lsid": lsid.clone(), "txnNumber": 7i64, "o": o, "ts": t(i),
        "prevOpTime": {"ts": if i == 5 { Timestamp { time: 0, increment: 0 } } else { t(i - 1) }, "t": if i == 5 { -1i64 } else { 1i64 }}}
    };
    let ins = |id: i32| doc! {"op": "i", "ns": "app.txn", "ui": uuid(4), "o": {"_id": id}, "o2": {"_id": id}};
    apply_oplog_entries(
        &ep,
        &all,
        &[link(5, vec![ins(1)], false), link(6, vec![ins(2)], false)],
    )
    .await?;
    assert!(get(&p, "app.txn", Bson::Int32(1)).await.is_none());
    apply_oplog_entries(
        &ep,
        &all,
        &[
            link(5, vec![ins(1)], false),
            link(6, vec![ins(2)], false),
            link(7, vec![ins(3)], true),
        ],
    )
    .await?;
    for id in 1..=3 {
        assert!(get(&p, "app.txn", Bson::Int32(id)).await.is_some());
    }

    // Cross-database rename (rename_collection.cpp, renameBetweenDBs): temp collection in the target
    // database, batched inserts, same-database rename onto the target, drop of the source.
    put(&p, "a.x", doc! {"_id": 1}).await;
    put(&p, "a.x", doc! {"_id": 2}).await;
    let tmp = "tmpAb3c9.renameCollection";
    let rename = vec![
        doc! {"op": "c", "ns": "b.$cmd", "ui": uuid(5), "o": {"create": tmp, "temp": true, "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}, "ts": t(8)},
        doc! {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [
            {"op": "i", "ns": format!("b.{tmp}"), "ui": uuid(5), "o": {"_id": 1}, "o2": {"_id": 1}},
            {"op": "i", "ns": format!("b.{tmp}"), "ui": uuid(5), "o": {"_id": 2}, "o2": {"_id": 2}},
        ]}, "ts": t(9)},
        doc! {"op": "c", "ns": "b.$cmd", "ui": uuid(5), "o": {"renameCollection": format!("b.{tmp}"), "to": "b.y", "stayTemp": false}, "ts": t(10)},
        doc! {"op": "c", "ns": "a.$cmd", "ui": uuid(6), "o": {"drop": "x"}, "o2": {"numRecords": 2}, "ts": t(11)},
    ];
    apply_oplog_entries(&ep, &all, &rename).await?;
    assert!(p
        .dst
        .database("a")
        .list_collection_names()
        .await?
        .is_empty());
    assert_eq!(
        p.dst.database("b").list_collection_names().await?,
        vec!["y".to_string()]
    );
    let y = collections(&p.dst, "b").await?;
    assert!(
        y[0].get_document("options")?.get("temp").is_none(),
        "created as an ordinary collection"
    );
    assert_eq!(
        p.dst
            .database("b")
            .collection::<Document>("y")
            .count_documents(doc! {})
            .await?,
        2
    );

    // A time-series collection (create_collection.cpp, _createTimeseries): refused, never dropped.
    let ts_create = doc! {"op": "c", "ns": "app.$cmd", "ui": uuid(7), "o": {"create": "system.buckets.m",
    "validator": {"$jsonSchema": {"bsonType": "object"}}, "clusteredIndex": true,
    "timeseries": {"timeField": "t", "granularity": "seconds", "bucketMaxSpanSeconds": 3600}}, "ts": t(12)};
    let err = apply_oplog_entries(&ep, &all, &[ts_create])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("time-series"), "{err}");
    Ok(())
}
