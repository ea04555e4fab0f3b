//! Behaviour beyond plain CRUD, through the Rust driver: oplog command entries and roll-off
//! (136), applyOps, aggregation stages, size/oplog-window reporting, version differences,
//! fault injection, and the real reply samples (hello, listCollections, listIndexes)
//! compared field by field with mongosim's replies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
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

async fn oplog_tail(c: &Client, n: usize) -> Vec<Document> {
    let mut v: Vec<Document> = c
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {})
        .sort(doc! {"$natural": -1})
        .limit(n as i64)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    v.reverse();
    v
}

#[tokio::test]
async fn ddl_is_logged_as_command_entries() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let db = c.database("app");
    db.create_collection("a").await.unwrap();
    db.collection::<Document>("a")
        .create_index(mongodb::IndexModel::builder().keys(doc! {"x": 1}).build())
        .await
        .unwrap();
    db.run_command(doc! {"collMod": "a", "validator": {"x": {"$exists": true}}})
        .await
        .unwrap();
    db.collection::<Document>("a")
        .drop_index("x_1")
        .await
        .unwrap();
    c.database("admin")
        .run_command(doc! {"renameCollection": "app.a", "to": "app.b"})
        .await
        .unwrap();
    // dropDatabase logs one drop per collection, then dropDatabase.
    db.drop().await.unwrap();
    let entries = oplog_tail(&c, 7).await;
    let cmds: Vec<String> = entries
        .iter()
        .map(|e| {
            assert_eq!(e.get_str("op").unwrap(), "c");
            assert_eq!(e.get_str("ns").unwrap(), "app.$cmd");
            assert_eq!(e.get_i64("v").unwrap(), 2);
            e.get_document("o").unwrap().keys().next().unwrap().clone()
        })
        .collect();
    assert_eq!(
        cmds,
        [
            "create",
            "createIndexes",
            "collMod",
            "dropIndexes",
            "renameCollection",
            "drop",
            "dropDatabase"
        ]
    );
    assert_eq!(
        entries[0]
            .get_document("o")
            .unwrap()
            .get_document("idIndex")
            .unwrap(),
        &doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    );
    assert!(matches!(
        entries[5].get_document("o2").unwrap().get("numRecords"),
        Some(Bson::Int32(0))
    ));
    // Strictly increasing ts on every entry.
    let all = oplog_tail(&c, 1000).await;
    for w in all.windows(2) {
        let (a, b) = (
            w[0].get_timestamp("ts").unwrap(),
            w[1].get_timestamp("ts").unwrap(),
        );
        assert!((a.time, a.increment) < (b.time, b.increment));
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn capped_oplog_rolls_off_and_a_lagging_tail_gets_136() {
    let sim = MongoSim::builder()
        .oplog_size_bytes(64 * 1024)
        .start()
        .await
        .unwrap();
    let c = client(&sim.uri()).await;
    let coll = c.database("app").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let oplog = c.database("local").collection::<Document>("oplog.rs");
    let first = oplog.find_one(doc! {}).await.unwrap().unwrap();
    let mut cursor = oplog
        .find(doc! {"ts": {"$gte": first.get_timestamp("ts").unwrap()}})
        .cursor_type(mongodb::options::CursorType::TailableAwait)
        .batch_size(1)
        .await
        .unwrap();
    cursor.try_next().await.unwrap().unwrap();
    let pad = "p".repeat(1000);
    coll.insert_many((1..200).map(|i| doc! {"_id": i, "pad": pad.clone()}))
        .await
        .unwrap();
    let status = c
        .database("admin")
        .run_command(doc! {"serverStatus": 1, "oplog": 1})
        .await
        .unwrap();
    let earliest = status
        .get_document("oplog")
        .unwrap()
        .get_timestamp("earliestOptime")
        .unwrap();
    assert!(
        earliest > first.get_timestamp("ts").unwrap(),
        "old entries must roll off"
    );
    let err = loop {
        match cursor.try_next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("tailable cursor ended"),
            Err(e) => break e,
        }
    };
    assert!(
        err.to_string().contains("CappedPositionLost") || err.to_string().contains("136"),
        "{err}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn apply_ops_replays_crud_diffs_and_commands() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let ops = vec![
        doc! {"op": "c", "ns": "app.$cmd", "o": {"create": "r"}},
        doc! {"op": "i", "ns": "app.r", "o": {"_id": 1, "a": 1, "l": [1, 2, 3]}},
        doc! {"op": "u", "ns": "app.r", "o2": {"_id": 1}, "o": {"$v": 2, "diff": {"u": {"a": 2}, "i": {"b": 1}, "sl": {"a": true, "l": 1}}}},
        doc! {"op": "u", "ns": "app.r", "o2": {"_id": 2}, "o": {"_id": 2, "z": 1}},
        doc! {"op": "i", "ns": "app.r", "o": {"_id": 3}},
        doc! {"op": "d", "ns": "app.r", "o": {"_id": 3}},
        doc! {"op": "c", "ns": "app.$cmd", "o": {"createIndexes": "r", "v": 2, "key": {"b": 1}, "name": "b_1"}},
        doc! {"op": "n", "ns": "", "o": {"msg": "periodic noop"}},
    ];
    let r = c
        .database("admin")
        .run_command(doc! {"applyOps": ops})
        .await
        .unwrap();
    assert_eq!(r.get_i32("applied").unwrap(), 8);
    let docs: Vec<Document> = c
        .database("app")
        .collection::<Document>("r")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        docs,
        vec![
            doc! {"_id": 1, "a": 2, "l": [1], "b": 1},
            doc! {"_id": 2, "z": 1}
        ]
    );
    let bad = doc! {"op": "u", "ns": "app.r", "o2": {"_id": 1}, "o": {"$v": 1, "$set": {"a": 3}}};
    let err = c
        .database("admin")
        .run_command(doc! {"applyOps": [bad]})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("4772600"), "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn aggregation_stages_and_size_reporting() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let coll = c.database("app").collection::<Document>("g");
    coll.insert_many((0..100).map(|i| doc! {"_id": i, "k": i % 3, "v": 2}))
        .await
        .unwrap();
    let run = |p: Vec<Document>| {
        let coll = coll.clone();
        async move {
            coll.aggregate(p)
                .await
                .unwrap()
                .try_collect::<Vec<Document>>()
                .await
                .unwrap()
        }
    };
    let total = run(vec![
        doc! {"$group": {"_id": null, "s": {"$sum": "$v"}, "n": {"$sum": 1}}},
    ])
    .await;
    assert_eq!(total, vec![doc! {"_id": null, "s": 200, "n": 100}]);
    let counted = run(vec![doc! {"$match": {"k": 1}}, doc! {"$count": "n"}]).await;
    assert_eq!(counted, vec![doc! {"n": 33}]);
    let page = run(vec![
        doc! {"$sort": {"_id": -1}},
        doc! {"$skip": 1},
        doc! {"$limit": 2},
        doc! {"$project": {"_id": 1}},
    ])
    .await;
    assert_eq!(page, vec![doc! {"_id": 98}, doc! {"_id": 97}]);
    assert_eq!(run(vec![doc! {"$sample": {"size": 7}}]).await.len(), 7);
    let buckets = run(vec![
        doc! {"$bucketAuto": {"groupBy": "$_id", "buckets": 4}},
    ])
    .await;
    assert_eq!(buckets.len(), 4);
    assert_eq!(buckets[0], doc! {"_id": {"min": 0, "max": 25}, "count": 25});
    let stats = run(vec![doc! {"$collStats": {"storageStats": {}, "count": {}}}]).await;
    let ss = stats[0].get_document("storageStats").unwrap();
    assert_eq!(ss.get_i64("count").unwrap(), 100);
    assert!(
        ss.get_i64("size").unwrap() > 0
            && ss.get_i64("storageSize").unwrap() >= ss.get_i64("size").unwrap()
    );
    let cs = c
        .database("app")
        .run_command(doc! {"collStats": "g"})
        .await
        .unwrap();
    assert_eq!(cs.get_i64("count").unwrap(), 100);
    assert!(cs.get_i64("avgObjSize").unwrap() > 0);
    let ds = c
        .database("app")
        .run_command(doc! {"dbStats": 1})
        .await
        .unwrap();
    assert_eq!(ds.get_i64("objects").unwrap(), 100);
    assert!(ds.get_f64("fsTotalSize").unwrap() > 0.0);
    let dbs = c.list_databases().await.unwrap();
    let app = dbs.iter().find(|d| d.name == "app").unwrap();
    assert!(app.size_on_disk > 0);
    let rs = c
        .database("admin")
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
    assert_eq!(rs.get_str("set").unwrap(), "rs0");
    rs.get_document("optimes")
        .unwrap()
        .get_document("appliedOpTime")
        .unwrap()
        .get_timestamp("ts")
        .unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn version_6_drop_of_missing_collection_is_26() {
    let sim = MongoSim::builder()
        .server_version("6.0.13")
        .start()
        .await
        .unwrap();
    let c = client(&sim.uri()).await;
    let hello = c
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert_eq!(hello.get_i32("maxWireVersion").unwrap(), 17);
    let err = c
        .database("app")
        .run_command(doc! {"drop": "missing"})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ns not found"), "{err}");
    sim.shutdown().await;
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    c.database("app")
        .run_command(doc! {"drop": "missing"})
        .await
        .unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn close_after_n_commands_and_delays() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let coll = c.database("app").collection::<Document>("f");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    sim.faults().close_connections_after(1);
    coll.find_one(doc! {}).await.unwrap();
    let err = coll.find_one(doc! {}).await.unwrap_err();
    assert!(
        matches!(*err.kind, mongodb::error::ErrorKind::Io(_)),
        "{err}"
    );
    coll.find_one(doc! {}).await.unwrap();
    sim.faults().delay_replies(Some(Duration::from_millis(200)));
    let started = std::time::Instant::now();
    coll.find_one(doc! {}).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    sim.faults().clear();
    c.database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {"failCommands": ["find"], "errorCode": 91}})
        .await
        .unwrap();
    let err = coll.find_one(doc! {}).await.unwrap_err();
    assert!(
        err.to_string().contains("91") || err.to_string().contains("ShutdownInProgress"),
        "{err}"
    );
    sim.shutdown().await;
}

fn type_family(v: &Bson) -> &'static str {
    match v {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => "number",
        Bson::String(_) => "string",
        Bson::Document(_) => "document",
        Bson::Array(_) => "array",
        Bson::Boolean(_) => "bool",
        Bson::Binary(_) => "binary",
        Bson::ObjectId(_) => "objectId",
        Bson::DateTime(_) => "date",
        Bson::Timestamp(_) => "timestamp",
        _ => "other",
    }
}

/// Every field of `sample` exists in `ours` with the same type; documents recurse, arrays
/// compare their first element. `skip` names fields the reference documents as different.
fn same_shape(path: &str, sample: &Document, ours: &Document, skip: &[&str]) {
    for (k, v) in sample {
        let p = format!("{path}.{k}");
        if skip.contains(&p.as_str()) {
            continue;
        }
        let o = ours
            .get(k)
            .unwrap_or_else(|| panic!("{p} missing from mongosim's reply {ours}"));
        assert_eq!(type_family(v), type_family(o), "{p}");
        // cursor.id must be exactly Int64, like the real server.
        if k == "id" {
            assert!(matches!(o, Bson::Int64(_)), "{p}");
        }
        match (v, o) {
            (Bson::Document(a), Bson::Document(b)) => same_shape(&p, a, b, skip),
            (Bson::Array(a), Bson::Array(b)) => {
                if let (Some(Bson::Document(x)), Some(Bson::Document(y))) = (a.first(), b.first()) {
                    same_shape(&format!("{p}[0]"), x, y, skip);
                }
            }
            _ => {}
        }
    }
}

/// Canonical extended JSON -> BSON for the wrappers the samples use.
fn ext_json(v: &serde_json::Value) -> Bson {
    use serde_json::Value;
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => Bson::Double(n.as_f64().unwrap()),
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(a) => Bson::Array(a.iter().map(ext_json).collect()),
        Value::Object(m) => {
            if let Some(Value::String(s)) = m.get("$numberInt") {
                return Bson::Int32(s.parse().unwrap());
            }
            if let Some(Value::String(s)) = m.get("$numberLong") {
                return Bson::Int64(s.parse().unwrap());
            }
            if let Some(Value::String(s)) = m.get("$oid") {
                return Bson::ObjectId(s.parse().unwrap());
            }
            if let Some(t) = m.get("$timestamp") {
                return Bson::Timestamp(mongodb::bson::Timestamp {
                    time: t["t"].as_u64().unwrap() as u32,
                    increment: t["i"].as_u64().unwrap() as u32,
                });
            }
            let mut d = Document::new();
            for (k, x) in m {
                d.insert(k.clone(), ext_json(x));
            }
            Bson::Document(d)
        }
    }
}

#[tokio::test]
async fn replies_have_the_fields_and_types_of_real_samples() {
    let samples: Vec<serde_json::Value> = include_str!("data/reply-samples.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sample = |kind: &str| -> Document {
        let v = samples.iter().find(|s| s["kind"] == kind).unwrap()["doc"].clone();
        match ext_json(&v) {
            Bson::Document(d) => d,
            other => panic!("{other}"),
        }
    };
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let admin = c.database("admin");
    let hello = admin
        .run_command(doc! {"hello": 1, "helloOk": true})
        .await
        .unwrap();
    same_shape(
        "hello",
        &sample("reply.hello.rsPrimary.sdamFixture"),
        &hello,
        &[],
    );

    let app = c.database("test");
    app.run_command(doc! {"create": "weather"}).await.unwrap();
    let lc = app
        .run_command(doc! {"listCollections": 1, "cursor": {}})
        .await
        .unwrap();
    // mongosim has no time-series collections: option contents differ by design.
    same_shape(
        "listCollections",
        &sample("reply.listCollections.timeseries"),
        &lc,
        &[
            "listCollections.cursor.firstBatch[0].options.timeseries",
            "listCollections.cursor.firstBatch[0].type",
        ],
    );
    app.collection::<Document>("contacts")
        .create_index(mongodb::IndexModel::builder().keys(doc! {"a": 1}).build())
        .await
        .unwrap();
    let li = app
        .run_command(doc! {"listIndexes": "contacts", "cursor": {}})
        .await
        .unwrap();
    // Index specs carry no 'ns' since 4.4 (reference §4).
    same_shape(
        "listIndexes",
        &sample("reply.listIndexes"),
        &li,
        &["listIndexes.cursor.firstBatch[0].ns"],
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn partitioning_helpers_min_max_split_vector_and_regex() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let coll = c.database("app").collection::<Document>("p");
    let pad = "x".repeat(1000);
    coll.insert_many((0..100).map(|i| doc! {"_id": i, "pad": pad.clone()}))
        .await
        .unwrap();
    let part: Vec<Document> = coll
        .find(doc! {})
        .hint(mongodb::options::Hint::Keys(doc! {"_id": 1}))
        .min(doc! {"_id": 10})
        .max(doc! {"_id": 20})
        .projection(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(part.first(), Some(&doc! {"_id": 10}));
    assert_eq!(part.len(), 10);
    let split = c
        .database("admin")
        .run_command(
            doc! {"splitVector": "app.p", "keyPattern": {"_id": 1}, "maxChunkSizeBytes": 20_000},
        )
        .await
        .unwrap();
    let keys = split.get_array("splitKeys").unwrap();
    assert!(keys.len() >= 9, "{split}");
    assert_eq!(keys[0], Bson::Document(doc! {"_id": 9}));
    let ops = c
        .database("local")
        .collection::<Document>("oplog.rs")
        .count_documents(doc! {"ns": {"$regex": "^app\\.p$"}, "op": "i"})
        .await
        .unwrap();
    assert_eq!(ops, 100);
    sim.shutdown().await;
}

#[tokio::test]
async fn many_concurrent_connections_are_served() {
    let sim = MongoSim::builder().start().await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let uri = sim.uri();
        tasks.push(tokio::spawn(async move {
            let c = client(&uri).await;
            let coll = c.database("app").collection::<Document>("conc");
            for i in 0..50 {
                coll.insert_one(doc! {"_id": t * 1000 + i}).await.unwrap();
                coll.find_one(doc! {"_id": t * 1000 + i})
                    .await
                    .unwrap()
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = client(&sim.uri()).await;
    let n = c
        .database("app")
        .collection::<Document>("conc")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(n, 800);
    let inserts = c
        .database("local")
        .collection::<Document>("oplog.rs")
        .count_documents(doc! {"op": "i", "ns": "app.conc"})
        .await
        .unwrap();
    assert_eq!(inserts, 800);
    sim.shutdown().await;
}

#[tokio::test]
async fn injected_retryable_write_errors_are_labelled_and_retried_by_the_driver() {
    let sim = MongoSim::builder().start().await.unwrap();
    let mut opts = ClientOptions::parse(sim.uri()).await.unwrap();
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    let c = Client::with_options(opts).unwrap();
    let coll = c.database("app").collection::<Document>("r");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    sim.faults().fail_command("insert", 91, Some(1));
    // The driver retries once on RetryableWriteError; the second attempt succeeds.
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn an_index_with_the_same_key_under_another_name_is_refused_with_85() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let db = c.database("t");
    db.run_command(doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_first"}]})
        .await
        .unwrap();
    // The same request again is a no-op, as on a real server.
    let again = db
        .run_command(doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_first"}]})
        .await
        .unwrap();
    assert_eq!(
        again.get_str("note").ok(),
        Some("all indexes already exist")
    );
    let err = db
        .run_command(
            doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_second"}]},
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("85") && text.contains("Index already exists with a different name: a_first"),
        "{text}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn id_lookups_ranges_and_sample_through_the_driver() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let coll = c.database("app").collection::<Document>("ids");
    let docs: Vec<Document> = vec![
        doc! {"_id": 1i64, "k": "long"},
        doc! {"_id": 2, "k": "int"},
        doc! {"_id": 2.5, "k": "double"},
        doc! {"_id": "2", "k": "string"},
        doc! {"_id": {"a": 1}, "k": "doc"},
        doc! {"_id": Bson::Null, "k": "null"},
    ];
    coll.insert_many(docs).await.unwrap();
    let ids = |filter: Document| {
        let coll = coll.clone();
        async move {
            coll.find(filter)
                .await
                .unwrap()
                .try_collect::<Vec<Document>>()
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.get_str("k").unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(doc! {"_id": 1.0}).await, ["long"]);
    assert_eq!(ids(doc! {"_id": {"$eq": 1i32}}).await, ["long"]);
    assert_eq!(ids(doc! {"_id": {"a": 1}}).await, ["doc"]);
    assert_eq!(
        ids(doc! {"_id": {"$in": [2.0, 2i64, "2", 1, 9, null]}}).await,
        ["null", "long", "int", "string"]
    );
    assert_eq!(
        ids(doc! {"$nor": [{"_id": {"$gte": 2}}]}).await,
        ["null", "long", "string", "doc"]
    );
    assert_eq!(
        ids(doc! {"_id": {"$gt": 1, "$lte": 2.5}}).await,
        ["int", "double"]
    );
    let r = coll
        .update_one(doc! {"_id": 2.0}, doc! {"$set": {"x": 1}})
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 1));
    let r = coll
        .delete_many(doc! {"_id": {"$in": [1, 1.0, 2.5]}})
        .await
        .unwrap();
    assert_eq!(r.deleted_count, 2);
    assert_eq!(
        coll.count_documents(doc! {"_id": {"$in": [2, "2"]}})
            .await
            .unwrap(),
        2
    );

    let many = c.database("app").collection::<Document>("many");
    let docs: Vec<Document> = (0..500).map(|i| doc! {"_id": i, "v": i * 2}).collect();
    many.insert_many(docs).await.unwrap();
    let sample: Vec<Document> = many
        .aggregate(vec![doc! {"$sample": {"size": 50}}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut seen: Vec<i32> = sample.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    for d in &sample {
        assert_eq!(d.get_i32("v").unwrap(), d.get_i32("_id").unwrap() * 2);
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 50);
    let all: Vec<Document> = many
        .aggregate(vec![doc! {"$sample": {"size": 1000}}, doc! {"$count": "n"}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all, vec![doc! {"n": 500}]);
    let matched: Vec<Document> = many
        .aggregate(vec![
            doc! {"$match": {"_id": {"$in": [7, 3, 3, 600]}}},
            doc! {"$project": {"v": 1, "_id": 0}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(matched, vec![doc! {"v": 6}, doc! {"v": 14}]);
    sim.shutdown().await;
}
