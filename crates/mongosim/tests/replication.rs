//! Oplog shapes of a 7.0 primary beyond single writes, through the Rust driver: multi-document
//! transactions (one `applyOps`, or a `partialTxn` chain), TTL deletes (batched `applyOps`),
//! capped collections (insertion order, `d` per eviction), strings with invalid UTF-8 kept
//! byte for byte, and the majority commit point with a simulated rollback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document, RawDocumentBuf, Timestamp};
use mongodb::options::ClientOptions;
use mongodb::Client;
use mongosim::MongoSim;
use sha2::{Digest, Sha256};

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

fn keys(d: &Document) -> Vec<&str> {
    d.keys().map(String::as_str).collect()
}

async fn uuid_of(c: &Client, db: &str, coll: &str) -> Bson {
    let r = c
        .database(db)
        .run_command(doc! {"listCollections": 1, "filter": {"name": coll}})
        .await
        .unwrap();
    r.get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .get_document("info")
        .unwrap()
        .get("uuid")
        .unwrap()
        .clone()
}

async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn committed_transaction_is_one_apply_ops_entry() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let coll = c.database("app").collection::<Document>("t");
    coll.insert_one(doc! {"_id": 1, "a": 1}).await.unwrap();
    coll.insert_one(doc! {"_id": 2, "a": 2}).await.unwrap();
    let ui = uuid_of(&c, "app", "t").await;

    let mut s = c.start_session().await.unwrap();
    s.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 3, "a": 3})
        .session(&mut s)
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a": 10}})
        .session(&mut s)
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 2})
        .session(&mut s)
        .await
        .unwrap();
    // Read your own writes inside; nothing is visible outside before the commit.
    let inside = coll
        .find_one(doc! {"_id": 3})
        .session(&mut s)
        .await
        .unwrap();
    assert_eq!(inside, Some(doc! {"_id": 3, "a": 3}));
    assert_eq!(coll.find_one(doc! {"_id": 3}).await.unwrap(), None);
    assert_eq!(
        coll.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "a": 1})
    );
    let before = oplog_tail(&c, 1).await;
    s.commit_transaction().await.unwrap();

    let last = oplog_tail(&c, 1).await.remove(0);
    assert_ne!(last, before[0]);
    assert_eq!(
        keys(&last),
        [
            "lsid",
            "txnNumber",
            "op",
            "ns",
            "o",
            "ts",
            "t",
            "v",
            "wall",
            "prevOpTime"
        ]
    );
    assert_eq!(last.get_str("op").unwrap(), "c");
    assert_eq!(last.get_str("ns").unwrap(), "admin.$cmd");
    let lsid = last.get_document("lsid").unwrap();
    assert_eq!(lsid.get("id"), s.id().get("id"));
    let uid = Sha256::digest(b"").to_vec();
    assert_eq!(
        lsid.get("uid"),
        Some(&Bson::Binary(mongodb::bson::Binary {
            subtype: mongodb::bson::spec::BinarySubtype::Generic,
            bytes: uid
        }))
    );
    assert_eq!(last.get_i64("txnNumber").unwrap(), 1);
    assert_eq!(
        last.get_document("prevOpTime").unwrap(),
        &doc! {"ts": Timestamp { time: 0, increment: 0 }, "t": -1i64}
    );
    let o = last.get_document("o").unwrap();
    assert_eq!(
        keys(o),
        ["applyOps"],
        "no partialTxn/count on a single entry"
    );
    let ops: Vec<Document> = o
        .get_array("applyOps")
        .unwrap()
        .iter()
        .map(|b| b.as_document().unwrap().clone())
        .collect();
    assert_eq!(
        ops,
        vec![
            doc! {"op": "i", "ns": "app.t", "ui": ui.clone(), "o": {"_id": 3, "a": 3}, "o2": {"_id": 3}},
            doc! {"op": "u", "ns": "app.t", "ui": ui.clone(), "o": {"$v": 2, "diff": {"u": {"a": 10}}}, "o2": {"_id": 1}},
            doc! {"op": "d", "ns": "app.t", "ui": ui, "o": {"_id": 2}},
        ]
    );
    let all: Vec<Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all, vec![doc! {"_id": 1, "a": 10}, doc! {"_id": 3, "a": 3}]);
    // config.transactions records the commit (not logged).
    let rec = c
        .database("config")
        .collection::<Document>("transactions")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.get_i64("txnNum").unwrap(), 1);
    assert_eq!(rec.get_str("state").unwrap(), "committed");
    assert_eq!(
        rec.get_document("lastWriteOpTime").unwrap().get("ts"),
        last.get("ts")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn aborted_transactions_log_nothing_and_conflicts_are_transient() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let coll = c.database("app").collection::<Document>("t");
    coll.insert_one(doc! {"_id": 1, "a": 1}).await.unwrap();
    let before = oplog_tail(&c, 1).await;

    let mut s = c.start_session().await.unwrap();
    s.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 2})
        .session(&mut s)
        .await
        .unwrap();
    s.abort_transaction().await.unwrap();
    assert_eq!(oplog_tail(&c, 1).await, before);
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);

    // Two transactions writing the same document: the second gets WriteConflict.
    let mut a = c.start_session().await.unwrap();
    let mut b = c.start_session().await.unwrap();
    a.start_transaction().await.unwrap();
    b.start_transaction().await.unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a": 2}})
        .session(&mut a)
        .await
        .unwrap();
    let err = coll
        .update_one(doc! {"_id": 1}, doc! {"$set": {"a": 3}})
        .session(&mut b)
        .await
        .unwrap_err();
    assert!(
        matches!(*err.kind, mongodb::error::ErrorKind::Command(ref ce) if ce.code == 112),
        "{err:?}"
    );
    assert!(err.contains_label("TransientTransactionError"));
    // A write outside any transaction on the locked document conflicts too.
    let err = coll
        .update_one(doc! {"_id": 1}, doc! {"$set": {"a": 4}})
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("112"), "{err:?}");
    a.commit_transaction().await.unwrap();
    assert_eq!(
        coll.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "a": 2})
    );
    // A snapshot read before another writer's commit, then a write: conflict.
    let mut r = c.start_session().await.unwrap();
    r.start_transaction().await.unwrap();
    coll.find_one(doc! {"_id": 1})
        .session(&mut r)
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a": 5}})
        .await
        .unwrap();
    let err = coll
        .update_one(doc! {"_id": 1}, doc! {"$set": {"a": 6}})
        .session(&mut r)
        .await
        .unwrap_err();
    assert!(err.contains_label("TransientTransactionError"), "{err:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn large_transaction_is_a_partial_txn_chain() {
    let sim = MongoSim::builder()
        .oplog_size_mb(256)
        .start()
        .await
        .unwrap();
    let c = client(&sim.uri()).await;
    let coll = c.database("app").collection::<Document>("big");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let pad = "x".repeat(1024 * 1024);
    let mut s = c.start_session().await.unwrap();
    s.start_transaction().await.unwrap();
    for i in 1..=20 {
        coll.insert_one(doc! {"_id": i, "pad": pad.clone()})
            .session(&mut s)
            .await
            .unwrap();
    }
    s.commit_transaction().await.unwrap();
    let entries = oplog_tail(&c, 2).await;
    let (first, second) = (&entries[0], &entries[1]);
    let n1 = first
        .get_document("o")
        .unwrap()
        .get_array("applyOps")
        .unwrap()
        .len();
    let n2 = second
        .get_document("o")
        .unwrap()
        .get_array("applyOps")
        .unwrap()
        .len();
    // Each insert serializes to 1,048,685 bytes (with the array overhead) and has a durable
    // size above 1 MiB: 15 fit under 16 MB, the 16th starts the next entry.
    assert_eq!((n1, n2), (15, 5));
    assert_eq!(
        keys(first.get_document("o").unwrap()),
        ["applyOps", "partialTxn"]
    );
    assert!(first
        .get_document("o")
        .unwrap()
        .get_bool("partialTxn")
        .unwrap());
    assert_eq!(
        first.get_document("prevOpTime").unwrap(),
        &doc! {"ts": Timestamp { time: 0, increment: 0 }, "t": -1i64}
    );
    assert_eq!(
        keys(second.get_document("o").unwrap()),
        ["applyOps", "count"]
    );
    assert_eq!(
        second.get_document("o").unwrap().get_i64("count").unwrap(),
        20
    );
    assert_eq!(
        second.get_document("prevOpTime").unwrap(),
        &doc! {"ts": first.get("ts").unwrap().clone(), "t": 1i64}
    );
    assert_eq!(first.get("lsid"), second.get("lsid"));
    assert_eq!(first.get("wall"), second.get("wall"));
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 21);
    sim.shutdown().await;
}

#[tokio::test]
async fn ttl_pass_logs_batched_deletes() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let db = c.database("app");
    let coll = db.collection::<Document>("sessions");
    coll.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"at": 1})
            .options(
                mongodb::options::IndexOptions::builder()
                    .expire_after(Duration::from_secs(3600))
                    .build(),
            )
            .build(),
    )
    .await
    .unwrap();
    let now = DateTime::now().timestamp_millis();
    let old = DateTime::from_millis(now - 7_200_000);
    let older = DateTime::from_millis(now - 9_000_000);
    let fresh = DateTime::from_millis(now);
    coll.insert_many(vec![
        doc! {"_id": 1, "at": old},
        doc! {"_id": 2, "at": [fresh, older]},
        doc! {"_id": 3, "at": fresh},
        doc! {"_id": 4, "at": "not a date"},
        doc! {"_id": 5},
    ])
    .await
    .unwrap();
    let ui = uuid_of(&c, "app", "sessions").await;
    assert_eq!(sim.run_ttl_pass(), 2);
    let last = oplog_tail(&c, 1).await.remove(0);
    assert_eq!(keys(&last), ["op", "ns", "o", "ts", "t", "v", "wall"]);
    assert_eq!(last.get_str("ns").unwrap(), "admin.$cmd");
    // Index order: the earliest date first (the array's earliest is `older`).
    assert_eq!(
        last.get_document("o").unwrap(),
        &doc! {"applyOps": [
            {"op": "d", "ns": "app.sessions", "ui": ui.clone(), "o": {"_id": 2}},
            {"op": "d", "ns": "app.sessions", "ui": ui, "o": {"_id": 1}},
        ]}
    );
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 3);
    assert_eq!(sim.run_ttl_pass(), 0);

    // collMod lowers expireAfterSeconds: the next pass uses the new value.
    db.run_command(
        doc! {"collMod": "sessions", "index": {"keyPattern": {"at": 1}, "expireAfterSeconds": 0}},
    )
    .await
    .unwrap();
    assert_eq!(sim.run_ttl_pass(), 1);
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);

    // 250 expired documents: batches of 100.
    let docs: Vec<Document> = (100..350).map(|i| doc! {"_id": i, "at": old}).collect();
    coll.insert_many(docs).await.unwrap();
    assert_eq!(sim.run_ttl_pass(), 250);
    let sizes: Vec<usize> = oplog_tail(&c, 3)
        .await
        .iter()
        .map(|e| {
            e.get_document("o")
                .unwrap()
                .get_array("applyOps")
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes, [100, 100, 50]);
    sim.shutdown().await;
}

#[tokio::test]
async fn ttl_monitor_runs_in_the_background_but_not_on_open_transactions() {
    let sim = MongoSim::builder()
        .ttl_monitor_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let c = client(&sim.uri()).await;
    let coll = c.database("app").collection::<Document>("e");
    coll.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"at": 1})
            .options(
                mongodb::options::IndexOptions::builder()
                    .expire_after(Duration::from_secs(0))
                    .build(),
            )
            .build(),
    )
    .await
    .unwrap();
    let past = DateTime::from_millis(DateTime::now().timestamp_millis() - 1000);
    // A transaction inserts an expired document: the monitor never sees it before commit.
    let mut s = c.start_session().await.unwrap();
    s.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 1, "at": past})
        .session(&mut s)
        .await
        .unwrap();
    assert_eq!(sim.run_ttl_pass(), 0);
    s.commit_transaction().await.unwrap();
    wait_for("the TTL monitor", async || {
        coll.count_documents(doc! {}).await.unwrap() == 0
    })
    .await;
    let last = oplog_tail(&c, 1).await.remove(0);
    assert!(last.get("lsid").is_none());
    assert_eq!(
        last.get_document("o")
            .unwrap()
            .get_array("applyOps")
            .unwrap()
            .len(),
        1
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn capped_collections_evict_in_insertion_order() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let db = c.database("app");
    db.run_command(doc! {"create": "log", "capped": true, "size": 100000, "max": 3})
        .await
        .unwrap();
    let coll = db.collection::<Document>("log");
    let ui = uuid_of(&c, "app", "log").await;
    for id in [5, 1, 9, 3] {
        coll.insert_one(doc! {"_id": id}).await.unwrap();
    }
    let tail = oplog_tail(&c, 2).await;
    assert_eq!(tail[0].get_str("op").unwrap(), "i");
    assert_eq!(tail[0].get_document("o").unwrap(), &doc! {"_id": 3});
    assert_eq!(
        keys(&tail[1]),
        ["op", "ns", "ui", "o", "ts", "t", "v", "wall"]
    );
    assert_eq!(tail[1].get_str("op").unwrap(), "d");
    assert_eq!(tail[1].get("ui"), Some(&ui));
    assert_eq!(tail[1].get_document("o").unwrap(), &doc! {"_id": 5});
    let ids =
        |v: Vec<Document>| -> Vec<i32> { v.iter().map(|d| d.get_i32("_id").unwrap()).collect() };
    let natural: Vec<Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids(natural), [1, 9, 3]);
    let reverse: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! {"$natural": -1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids(reverse), [3, 9, 1]);
    let hinted: Vec<Document> = coll
        .find(doc! {})
        .hint(mongodb::options::Hint::Keys(doc! {"$natural": -1}))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids(hinted), [3, 9, 1]);
    let by_id: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids(by_id), [1, 3, 9]);

    // By size: `size` 512 (rounded up from 300) holds 2 documents of 200 bytes.
    db.run_command(doc! {"create": "small", "capped": true, "size": 300})
        .await
        .unwrap();
    let small = db.collection::<Document>("small");
    let pad = "p".repeat(200 - 27);
    for i in 0..4 {
        small
            .insert_one(doc! {"_id": i, "pad": pad.clone()})
            .await
            .unwrap();
    }
    let left: Vec<Document> = small
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids(left), [2, 3]);
    let tail = oplog_tail(&c, 6).await;
    let ops: Vec<&str> = tail.iter().map(|e| e.get_str("op").unwrap()).collect();
    assert_eq!(ops, ["i", "i", "i", "d", "i", "d"]);
    sim.shutdown().await;
}

/// A document `{_id: 1, s: <bytes 'a' 0xff 0xfe 'b'>}` (invalid UTF-8).
fn invalid_utf8_doc() -> RawDocumentBuf {
    let s: &[u8] = b"a\xff\xfeb";
    let mut b = Vec::new();
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.push(0x10);
    b.extend_from_slice(b"_id\0");
    b.extend_from_slice(&1i32.to_le_bytes());
    b.push(0x02);
    b.extend_from_slice(b"s\0");
    b.extend_from_slice(&((s.len() + 1) as i32).to_le_bytes());
    b.extend_from_slice(s);
    b.push(0);
    b.push(0);
    let len = b.len() as i32;
    b[..4].copy_from_slice(&len.to_le_bytes());
    RawDocumentBuf::from_bytes(b).unwrap()
}

#[tokio::test]
async fn invalid_utf8_strings_are_kept_byte_for_byte() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let raw = invalid_utf8_doc();
    let coll = c.database("app").collection::<RawDocumentBuf>("bytes");
    coll.insert_one(raw.clone()).await.unwrap();
    let back = coll.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
    assert_eq!(back.as_bytes(), raw.as_bytes());
    let entry = c
        .database("local")
        .collection::<RawDocumentBuf>("oplog.rs")
        .find_one(doc! {"op": "i", "ns": "app.bytes"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.get_document("o").unwrap().as_bytes(), raw.as_bytes());
    // An update of another field keeps the string's bytes.
    c.database("app")
        .collection::<Document>("bytes")
        .update_one(doc! {"_id": 1}, doc! {"$set": {"n": 1}})
        .await
        .unwrap();
    let back = coll.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
    let mut expected = raw.clone();
    expected.append(mongodb::bson::raw::cstr!("n"), 1);
    assert_eq!(back.as_bytes(), expected.as_bytes());
    let u = oplog_tail(&c, 1).await.remove(0);
    assert_eq!(
        u.get_document("o").unwrap(),
        &doc! {"$v": 2, "diff": {"i": {"n": 1}}}
    );
    // A replacement carrying such bytes (what a migration tool's applier sends), on an existing
    // document and as an upsert, is stored and logged byte for byte.
    let app = c.database("app");
    for (id, upsert) in [(1, false), (7, true)] {
        let mut new = RawDocumentBuf::new();
        new.append(mongodb::bson::raw::cstr!("_id"), id);
        let bytes = raw.as_bytes();
        // Rebuild: {_id: id} + every element of `raw` but its _id (raw element bytes).
        let mut body = Vec::new();
        body.extend_from_slice(&new.as_bytes()[4..new.as_bytes().len() - 1]);
        let id_len = 1 + 4 + 4; // int32 _id element
        body.extend_from_slice(&bytes[4 + id_len..bytes.len() - 1]);
        let mut full = ((body.len() + 5) as i32).to_le_bytes().to_vec();
        full.extend_from_slice(&body);
        full.push(0);
        let replacement = RawDocumentBuf::from_bytes(full).unwrap();
        let mut stmt = RawDocumentBuf::new();
        let mut q = RawDocumentBuf::new();
        q.append(mongodb::bson::raw::cstr!("_id"), id);
        stmt.append(mongodb::bson::raw::cstr!("q"), q);
        stmt.append(mongodb::bson::raw::cstr!("u"), replacement.clone());
        stmt.append(mongodb::bson::raw::cstr!("upsert"), upsert);
        let mut updates = mongodb::bson::RawArrayBuf::new();
        updates.push(stmt);
        let mut cmd = RawDocumentBuf::new();
        cmd.append(mongodb::bson::raw::cstr!("update"), "bytes");
        cmd.append(mongodb::bson::raw::cstr!("updates"), updates);
        app.run_raw_command(cmd).await.unwrap();
        let back = coll.find_one(doc! {"_id": id}).await.unwrap().unwrap();
        assert_eq!(back.as_bytes(), replacement.as_bytes(), "_id {id}");
        let last = c
            .database("local")
            .collection::<RawDocumentBuf>("oplog.rs")
            .find_one(doc! {})
            .sort(doc! {"$natural": -1})
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            last.get_document("o").unwrap().as_bytes(),
            replacement.as_bytes(),
            "_id {id}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn majority_point_hold_and_rollback() {
    let sim = MongoSim::builder().start().await.unwrap();
    let c = client(&sim.uri()).await;
    let admin = c.database("admin");
    let coll = c.database("app").collection::<Document>("r");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let rbid = admin.run_command(doc! {"replSetGetRBID": 1}).await.unwrap();
    assert_eq!(rbid.get_i32("rbid").unwrap(), 1);
    let hello = admin.run_command(doc! {"hello": 1}).await.unwrap();
    let lw = hello.get_document("lastWrite").unwrap();
    assert_eq!(lw.get("opTime"), lw.get("majorityOpTime"));

    sim.hold_majority();
    let held = oplog_tail(&c, 1).await.remove(0);
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"x": 1}})
        .await
        .unwrap();
    let hello = admin.run_command(doc! {"hello": 1}).await.unwrap();
    let lw = hello.get_document("lastWrite").unwrap();
    let majority = doc! {"ts": held.get("ts").unwrap().clone(), "t": 1i64};
    assert_eq!(lw.get_document("majorityOpTime").unwrap(), &majority);
    assert_ne!(lw.get("opTime"), lw.get("majorityOpTime"));
    let st = admin
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
    let optimes = st.get_document("optimes").unwrap();
    assert_eq!(
        optimes.get_document("lastCommittedOpTime").unwrap(),
        &majority
    );
    assert_eq!(
        optimes.get_document("readConcernMajorityOpTime").unwrap(),
        &majority
    );
    // A majority read of the oplog stops at the majority point.
    let reply = c
        .database("local")
        .run_command(doc! {"find": "oplog.rs", "filter": {}, "sort": {"$natural": -1}, "limit": 1, "readConcern": {"level": "majority"}})
        .await
        .unwrap();
    let first = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    assert_eq!(first[0].as_document().unwrap(), &held);

    let rolled = sim.rollback_to_majority();
    assert_eq!(rolled, 2);
    wait_for("the driver to reconnect", async || {
        admin.run_command(doc! {"ping": 1}).await.is_ok()
    })
    .await;
    let all: Vec<Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all, vec![doc! {"_id": 1}]);
    let rbid = admin.run_command(doc! {"replSetGetRBID": 1}).await.unwrap();
    assert_eq!(rbid.get_i32("rbid").unwrap(), 2);
    let tail = oplog_tail(&c, 2).await;
    assert_eq!(tail[0], held);
    assert_eq!(tail[1].get_str("op").unwrap(), "n");
    assert_eq!(
        tail[1].get_document("o").unwrap(),
        &doc! {"msg": "new primary"}
    );
    assert_eq!(tail[1].get_i64("t").unwrap(), 2);
    let hello = admin.run_command(doc! {"hello": 1}).await.unwrap();
    let election = hello.get_object_id("electionId").unwrap();
    assert_eq!(
        election,
        ObjectId::parse_str("7fffffff0000000000000002").unwrap()
    );
    let lw = hello.get_document("lastWrite").unwrap();
    assert_eq!(lw.get("opTime"), lw.get("majorityOpTime"));
    coll.insert_one(doc! {"_id": 3}).await.unwrap();
    assert_eq!(oplog_tail(&c, 1).await[0].get_i64("t").unwrap(), 2);

    // A failover with nothing written past the majority point rolls nothing back: a new term and
    // primary, the same rollback id.
    sim.hold_majority();
    assert_eq!(sim.rollback_to_majority(), 0);
    wait_for("the driver to reconnect", async || {
        admin.run_command(doc! {"ping": 1}).await.is_ok()
    })
    .await;
    let rbid = admin.run_command(doc! {"replSetGetRBID": 1}).await.unwrap();
    assert_eq!(rbid.get_i32("rbid").unwrap(), 2);
    let tail = oplog_tail(&c, 1).await;
    assert_eq!(tail[0].get_i64("t").unwrap(), 3);
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);
    sim.shutdown().await;
}
