#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are assertions
//! Shapes a real MongoDB 7.0 primary writes, produced live by mongosim (which traces each to the
//! server's source) or built as the server logs them, through the engine: unique swaps and TTL refreshes
//! with indexes relaxed until cut-over, large `$v:2` updates batched by bytes, copy-window duplicates,
//! view definitions as `system.views` CRUD, aborted index builds, capped collections, cross-database
//! renames, invalid UTF-8, time series, transactions, majority and rollback.
mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use ferry_engine::{apply_oplog_entries, apply_oplog_entries_tuned, Endpoint, OpTime, Outcome};
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::Client;

fn endpoint_of(p: &Pair) -> Endpoint {
    Endpoint {
        uri: p.dest.uri(),
        username: USER.into(),
        password: PASSWORD.into(),
    }
}

fn raw(d: &Document) -> RawDocumentBuf {
    RawDocumentBuf::try_from(d).unwrap()
}

fn ts(i: u32) -> Timestamp {
    Timestamp {
        time: 1_700_000_000,
        increment: i,
    }
}

async fn index_named(client: &Client, db: &str, coll: &str, name: &str) -> Option<Document> {
    indexes(client, db, coll)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.get_str("name").ok() == Some(name))
}

async fn oplog_since(client: &Client, from: Timestamp) -> Vec<Document> {
    use futures::TryStreamExt;
    client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {"ts": {"$gt": from}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

async fn newest_ts(client: &Client) -> Timestamp {
    client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await
        .unwrap()
        .unwrap()
        .get_timestamp("ts")
        .unwrap()
}

/// Regression (issue #8): an application swapping unique values while the copy ran made the copy hold
/// a transient duplicate, and the unique index build failed the task for good with E11000. Unique
/// indexes are now non-unique and TTL indexes paused on the destination until cut-over, which restores
/// both from the source's definition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_swaps_and_ttl_refreshes_during_the_copy_converge_and_indexes_are_restored(
) -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let users = p.src.database("app").collection::<Document>("users");
    let docs: Vec<Document> = (0..600)
        .map(|i| doc! {"_id": i, "email": format!("u{i}@x"), "n": 0})
        .collect();
    users.insert_many(docs).await?;
    users
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"email": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await?;
    let sessions = p.src.database("app").collection::<Document>("sessions");
    sessions
        .insert_many((0..50).map(|i| doc! {"_id": i, "lastSeen": mongodb::bson::DateTime::now()}))
        .await?;
    p.src
        .database("app")
        .run_command(doc! {"createIndexes": "sessions", "indexes": [{"key": {"lastSeen": 1}, "name": "ttl", "expireAfterSeconds": 3600}]})
        .await?;

    // Slow the source so the copy's ranges are read far apart in time while the writer swaps.
    p.source
        .faults()
        .delay_replies(Some(Duration::from_millis(15)));
    let mut config = p.config(&["app"]);
    config.tuning.docs_per_range = 50;
    config.tuning.copy_workers = 2;
    let run = start(config, None);
    let writer = {
        let users = users.clone();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            for round in 0..200u32 {
                // Swap the emails of two documents at opposite ends of the key range.
                let (a, b) = (round as i32 % 300, 599 - (round as i32 % 300));
                let ea = format!("u{a}@x");
                let eb = format!("u{b}@x");
                let cur_a: String = users
                    .find_one(doc! {"_id": a})
                    .await?
                    .and_then(|d| d.get_str("email").ok().map(str::to_string))
                    .unwrap_or(ea);
                let cur_b: String = users
                    .find_one(doc! {"_id": b})
                    .await?
                    .and_then(|d| d.get_str("email").ok().map(str::to_string))
                    .unwrap_or(eb);
                users
                    .update_one(doc! {"_id": a}, doc! {"$set": {"email": "tmp"}})
                    .await?;
                users
                    .update_one(doc! {"_id": b}, doc! {"$set": {"email": &cur_a}})
                    .await?;
                users
                    .update_one(doc! {"_id": a}, doc! {"$set": {"email": &cur_b}})
                    .await?;
                // A TTL refresh.
                sessions
                    .update_one(
                        doc! {"_id": (round % 50) as i32},
                        doc! {"$set": {"lastSeen": mongodb::bson::DateTime::now()}},
                    )
                    .await?;
            }
            anyhow::Ok(())
        })
    };
    run.wait_for_oplog_sync(Duration::from_secs(60)).await?;
    // While the migration runs the destination's indexes are relaxed.
    let email = index_named(&p.dst, "app", "users", "email_1")
        .await
        .unwrap();
    assert_eq!(email.get_bool("unique").ok(), None, "{email}");
    let ttl = index_named(&p.dst, "app", "sessions", "ttl").await.unwrap();
    assert_eq!(
        ttl.get("expireAfterSeconds"),
        Some(&Bson::Int32(i32::MAX)),
        "{ttl}"
    );
    writer.await??;
    p.source.faults().delay_replies(None);
    run.control.request_complete();
    let out = run.finish(Duration::from_secs(60)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    assert_equal(&p, &["app"]).await?;
    let email = index_named(&p.dst, "app", "users", "email_1")
        .await
        .unwrap();
    assert_eq!(email.get_bool("unique").ok(), Some(true));
    Ok(())
}

/// A destination that holds true duplicates at cut-over (here: written directly on it) cannot get the
/// source's unique index back: the task fails, resumable, naming the `_id`s; never a silent success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_over_with_true_duplicates_fails_naming_them() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let users = p.src.database("app").collection::<Document>("users");
    users
        .insert_many((0..10).map(|i| doc! {"_id": i, "email": format!("u{i}@x")}))
        .await?;
    p.src
        .database("app")
        .run_command(doc! {"createIndexes": "users", "indexes": [{"key": {"email": 1}, "name": "email_1", "unique": true}]})
        .await?;
    let run = start(p.config(&["app"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(30)).await?;
    p.dst
        .database("app")
        .collection::<Document>("users")
        .insert_one(doc! {"_id": 100, "email": "u3@x"})
        .await?;
    run.control.request_complete();
    let err = run.finish(Duration::from_secs(60)).await?.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("email_1") && msg.contains("100") && msg.contains('3'),
        "{msg}"
    );
    assert!(
        err.resumable(),
        "the operator can fix the destination and resume: {msg}"
    );
    Ok(())
}

/// Regression (issue #8): apply batches were sized by count only; many `$v:2` updates of large
/// documents became replacements whose one command exceeded 16 MiB + 16 KiB, the server refused it, and
/// every resume replayed the same batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_updates_of_large_documents_are_batched_by_bytes() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let big = "x".repeat(5 << 20);
    for i in 0..4 {
        p.dst
            .database("big")
            .collection::<Document>("docs")
            .insert_one(doc! {"_id": i, "blob": &big, "n": 0})
            .await?;
    }
    // Four `$v:2` diffs (reference §7.2 shape), applied by one worker: 4 replacements of 5 MiB.
    let entries: Vec<RawDocumentBuf> = (0..4)
        .map(|i| {
            raw(
                &doc! {"op": "u", "ns": "big.docs", "o": {"$v": 2, "diff": {"u": {"n": 1}}},
                "o2": {"_id": i}, "ts": ts(i as u32 + 1)},
            )
        })
        .collect();
    let zero = OpTime {
        seconds: 0,
        increment: 0,
    };
    apply_oplog_entries_tuned(&endpoint_of(&p), &[], &entries, zero, 1).await?;
    let n = p
        .dst
        .database("big")
        .collection::<Document>("docs")
        .count_documents(doc! {"n": 1})
        .await?;
    assert_eq!(n, 4);
    Ok(())
}

/// Regression (issue #8): a write skipped as a copy-window duplicate left the apply cache believing the
/// document existed, so a later update of it in the same batch matched nothing and it was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_copy_window_duplicate_does_not_lose_a_later_update() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let c = p.dst.database("app").collection::<Document>("users");
    c.insert_one(doc! {"_id": 2, "email": "x"}).await?;
    // A unique index the destination already enforces (e.g. one created by hand).
    p.dst
        .database("app")
        .run_command(doc! {"createIndexes": "users", "indexes": [{"key": {"email": 1}, "name": "email_1", "unique": true}]})
        .await?;
    let entries = vec![
        // A insert collides with B's email (the copy holds B's older state): skipped in the window.
        raw(
            &doc! {"op": "i", "ns": "app.users", "o": {"_id": 1, "email": "x", "n": 0}, "ts": ts(1)},
        ),
        // B moves away, then A is updated: A must exist afterwards.
        raw(
            &doc! {"op": "u", "ns": "app.users", "o": {"$v": 2, "diff": {"u": {"email": "y"}}}, "o2": {"_id": 2}, "ts": ts(2)},
        ),
        raw(
            &doc! {"op": "u", "ns": "app.users", "o": {"$v": 2, "diff": {"u": {"n": 1}}}, "o2": {"_id": 1}, "ts": ts(3)},
        ),
    ];
    let copy_end = OpTime {
        seconds: 1_700_000_000,
        increment: 10,
    };
    apply_oplog_entries_tuned(&endpoint_of(&p), &[], &entries, copy_end, 1).await?;
    assert_eq!(
        c.find_one(doc! {"_id": 1}).await?,
        Some(doc! {"_id": 1, "email": "x", "n": 1})
    );
    assert_eq!(
        c.find_one(doc! {"_id": 2}).await?,
        Some(doc! {"_id": 2, "email": "y"})
    );
    Ok(())
}

/// Views live and die as CRUD on `<db>.system.views` (mongosim writes them as the server does): created,
/// changed by collMod, dropped during OPLOG_SYNC, and a view created during the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_created_changed_and_dropped_during_the_migration_follow_the_source() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let db = p.src.database("app");
    db.collection::<Document>("items")
        .insert_many((0..20).map(|i| doc! {"_id": i, "a": i % 3}))
        .await?;
    db.run_command(doc! {"create": "keep", "viewOn": "items", "pipeline": [{"$match": {"a": 1}}]})
        .await?;
    db.run_command(doc! {"create": "gone", "viewOn": "items", "pipeline": []})
        .await?;
    let run = start(p.config(&["app"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(30)).await?;
    let from = newest_ts(&p.src).await;
    db.run_command(doc! {"create": "fresh", "viewOn": "items", "pipeline": [{"$match": {"a": 2}}]})
        .await?;
    db.run_command(doc! {"collMod": "keep", "viewOn": "items", "pipeline": [{"$match": {"a": 0}}]})
        .await?;
    db.run_command(doc! {"drop": "gone"}).await?;
    // The shapes really are system.views CRUD, no create/collMod/drop command entry.
    let ops: Vec<(String, String)> = oplog_since(&p.src, from)
        .await
        .iter()
        .map(|e| {
            (
                e.get_str("op").unwrap().to_string(),
                e.get_str("ns").unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        vec![
            ("i".to_string(), "app.system.views".to_string()),
            ("u".to_string(), "app.system.views".to_string()),
            ("d".to_string(), "app.system.views".to_string()),
        ]
    );
    run.control.request_complete();
    assert!(matches!(
        run.finish(Duration::from_secs(30)).await??,
        Outcome::Completed(_)
    ));
    assert_equal(&p, &["app"]).await?;
    let names = p.dst.database("app").list_collection_names().await?;
    assert!(names.contains(&"fresh".to_string()) && !names.contains(&"gone".to_string()));
    Ok(())
}

/// An index build the source aborts (dropIndexes of a build held in progress: `startIndexBuild` then
/// `abortIndexBuild`) is neither planned from `listIndexes` (which lists it while it runs) nor left on
/// the destination; one that commits is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_index_builds_never_reach_the_destination() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let db = p.src.database("app");
    db.collection::<Document>("items")
        .insert_many((0..50).map(|i| doc! {"_id": i, "a": i, "b": i % 5}))
        .await?;
    // A unique build held in progress while the migration plans its indexes.
    p.source
        .faults()
        .set_fail_point("hangIndexBuildBeforeCommit", true);
    let builder = {
        let db = db.clone();
        tokio::spawn(async move {
            db.run_command(doc! {"createIndexes": "items", "indexes": [{"key": {"a": 1}, "name": "a_1", "unique": true}]})
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while index_named(&p.src, "app", "items", "a_1").await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "build never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = start(p.config(&["app"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(30)).await?;
    assert!(
        index_named(&p.dst, "app", "items", "a_1").await.is_none(),
        "an unfinished build was copied"
    );
    db.run_command(doc! {"dropIndexes": "items", "index": "a_1"})
        .await?;
    assert!(builder.await?.is_err(), "the held build ends aborted");
    p.source
        .faults()
        .set_fail_point("hangIndexBuildBeforeCommit", false);
    db.run_command(doc! {"createIndexes": "items", "indexes": [{"key": {"b": 1}, "name": "b_1"}]})
        .await?;
    run.control.request_complete();
    assert!(matches!(
        run.finish(Duration::from_secs(30)).await??,
        Outcome::Completed(_)
    ));
    assert_equal(&p, &["app"]).await?;
    assert!(index_named(&p.dst, "app", "items", "a_1").await.is_none());
    assert!(index_named(&p.dst, "app", "items", "b_1").await.is_some());
    Ok(())
}

/// The abort of a build the destination already has (e.g. created from an earlier plan) drops it:
/// `startIndexBuild` + `abortIndexBuild` as the server logs them (`op_observer_impl.cpp`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_index_build_entries_drop_the_index() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    p.dst
        .database("app")
        .collection::<Document>("items")
        .insert_one(doc! {"_id": 1, "a": 1})
        .await?;
    let spec = doc! {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": true};
    let uuid = Bson::Binary(mongodb::bson::Binary {
        subtype: mongodb::bson::spec::BinarySubtype::Uuid,
        bytes: vec![9; 16],
    });
    let start_e = doc! {"op": "c", "ns": "app.$cmd", "ts": ts(1), "o": {"startIndexBuild": "items", "indexBuildUUID": uuid.clone(), "indexes": [spec.clone()]}};
    let commit = doc! {"op": "c", "ns": "app.$cmd", "ts": ts(2), "o": {"commitIndexBuild": "items", "indexBuildUUID": uuid.clone(), "indexes": [spec.clone()]}};
    let abort = doc! {"op": "c", "ns": "app.$cmd", "ts": ts(3), "o": {"abortIndexBuild": "items", "indexBuildUUID": uuid, "indexes": [spec],
    "cause": {"ok": false, "code": 276, "codeName": "IndexBuildAborted", "errmsg": "dropIndexes command"}}};
    let ep = endpoint_of(&p);
    apply_oplog_entries(&ep, &[], &[start_e.clone(), commit]).await?;
    let a1 = index_named(&p.dst, "app", "items", "a_1").await.unwrap();
    assert_eq!(
        a1.get_bool("unique").ok(),
        None,
        "kept non-unique until cut-over: {a1}"
    );
    apply_oplog_entries(&ep, &[], &[start_e, abort]).await?;
    assert!(index_named(&p.dst, "app", "items", "a_1").await.is_none());
    Ok(())
}

/// Capped collections evict by insertion order, and the source logs each eviction as a `d` (5.0+):
/// copied in natural order and applied in one partition, the destination keeps the same documents in
/// the same natural order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_collections_keep_the_sources_natural_order() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let db = p.src.database("app");
    db.run_command(doc! {"create": "log", "capped": true, "size": 1 << 20, "max": 40})
        .await?;
    let log = db.collection::<Document>("log");
    // Descending `_id`s: natural order differs from `_id` order.
    for i in (0..30).rev() {
        log.insert_one(doc! {"_id": i, "seq": 30 - i}).await?;
    }
    let run = start(p.config(&["app"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(30)).await?;
    for i in (100..160).rev() {
        log.insert_one(doc! {"_id": i, "seq": 160 - i}).await?;
    }
    run.control.request_complete();
    assert!(matches!(
        run.finish(Duration::from_secs(30)).await??,
        Outcome::Completed(_)
    ));
    let natural = |c: Client| async move {
        use futures::TryStreamExt;
        let v: Vec<Document> = c
            .database("app")
            .collection::<Document>("log")
            .find(doc! {})
            .sort(doc! {"$natural": 1})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        v
    };
    let a = natural(p.src.clone()).await;
    let b = natural(p.dst.clone()).await;
    assert_eq!(a.len(), 40);
    assert_eq!(a, b);
    Ok(())
}

/// A cross-database rename (4.2+: temp collection in the target database, inserts, a same-database
/// rename onto the target, a drop of the source) during OPLOG_SYNC ends as on the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_database_renames_follow_the_source() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    p.src
        .database("a")
        .collection::<Document>("x")
        .insert_many((0..25).map(|i| doc! {"_id": i, "v": i}))
        .await?;
    p.src
        .database("a")
        .run_command(doc! {"createIndexes": "x", "indexes": [{"key": {"v": 1}, "name": "v_1"}]})
        .await?;
    p.src
        .database("b")
        .collection::<Document>("keep")
        .insert_one(doc! {"_id": 1})
        .await?;
    let run = start(p.config(&["a", "b"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(30)).await?;
    let from = newest_ts(&p.src).await;
    p.src
        .database("admin")
        .run_command(doc! {"renameCollection": "a.x", "to": "b.y"})
        .await?;
    let cmds: Vec<String> = oplog_since(&p.src, from)
        .await
        .iter()
        .filter(|e| e.get_str("op").ok() == Some("c"))
        .filter_map(|e| e.get_document("o").ok()?.keys().next().cloned())
        .collect();
    assert_eq!(cmds.first().map(String::as_str), Some("create"), "{cmds:?}");
    assert!(
        cmds.contains(&"renameCollection".to_string())
            && cmds.last().map(String::as_str) == Some("drop"),
        "{cmds:?}"
    );
    run.control.request_complete();
    assert!(matches!(
        run.finish(Duration::from_secs(30)).await??,
        Outcome::Completed(_)
    ));
    assert_equal(&p, &["a", "b"]).await?;
    Ok(())
}

/// Regression (issue #8): strings with invalid UTF-8 (stored by old drivers; the server does not
/// validate them) were copied as raw bytes but refused by the applier as a malformed entry, stalling
/// the task forever. Inserts, replacements and `$v:2` updates of such documents now migrate byte for
/// byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_strings_migrate_byte_for_byte() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    // {_id: i, s: "\xff\xfeold", n: 0} built byte by byte.
    let doc_with_bad_string = |id: i32| -> RawDocumentBuf {
        let mut body = Vec::new();
        body.push(0x10);
        body.extend_from_slice(b"_id\0");
        body.extend_from_slice(&id.to_le_bytes());
        body.push(0x02);
        body.extend_from_slice(b"s\0");
        let s = [0xff, 0xfe, b'o', b'l', b'd', 0];
        body.extend_from_slice(&(s.len() as i32).to_le_bytes());
        body.extend_from_slice(&s);
        body.push(0x10);
        body.extend_from_slice(b"n\0");
        body.extend_from_slice(&0i32.to_le_bytes());
        let mut bytes = ((body.len() + 5) as i32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        bytes.push(0);
        RawDocumentBuf::from_bytes(bytes).unwrap()
    };
    let raw_coll = p.src.database("app").collection::<RawDocumentBuf>("legacy");
    raw_coll.insert_one(doc_with_bad_string(1)).await?;
    let run = start(p.config(&["app"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(30)).await?;
    raw_coll.insert_one(doc_with_bad_string(2)).await?;
    let plain = p.src.database("app").collection::<Document>("legacy");
    plain
        .update_one(doc! {"_id": 1}, doc! {"$inc": {"n": 1}})
        .await?;
    plain
        .update_one(doc! {"_id": 2}, doc! {"$set": {"t": "new"}})
        .await?;
    run.control.request_complete();
    let out = run.finish(Duration::from_secs(30)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    let a = dump(&p.src, "app", "legacy").await?;
    let b = dump(&p.dst, "app", "legacy").await?;
    assert_eq!(a.len(), 2);
    assert_eq!(
        a.iter().map(|d| d.as_bytes().to_vec()).collect::<Vec<_>>(),
        b.iter().map(|d| d.as_bytes().to_vec()).collect::<Vec<_>>()
    );
    assert!(a[0].as_bytes().windows(2).any(|w| w == [0xff, 0xfe]));
    Ok(())
}

/// A time-series collection created during the migration fails the task with a clear reason instead
/// of being silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_series_collection_created_during_the_migration_fails_clearly() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    p.src
        .database("app")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": 1})
        .await?;
    let run = start(p.config(&["app"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(30)).await?;
    p.src
        .database("app")
        .run_command(doc! {"create": "metrics", "timeseries": {"timeField": "t"}})
        .await?;
    let err = run.finish(Duration::from_secs(30)).await?.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("time-series") && msg.contains("metrics"),
        "{msg}"
    );
    assert!(!err.resumable());
    Ok(())
}

/// Multi-document transactions through driver sessions, small and over 16 MiB (a `partialTxn` chain),
/// apply at their commit; an aborted one leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_small_and_large_apply_at_commit() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let c = p.src.database("app").collection::<Document>("acct");
    c.insert_many((0..10).map(|i| doc! {"_id": i, "bal": 100}))
        .await?;
    let run = start(p.config(&["app"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(30)).await?;
    let mut session = p.src.start_session().await?;
    for k in 0..5 {
        session.start_transaction().await?;
        c.update_one(doc! {"_id": k}, doc! {"$inc": {"bal": -10}})
            .session(&mut session)
            .await?;
        c.update_one(doc! {"_id": k + 5}, doc! {"$inc": {"bal": 10}})
            .session(&mut session)
            .await?;
        session.commit_transaction().await?;
    }
    let big = "y".repeat(5 << 20);
    session.start_transaction().await?;
    for i in 0..4 {
        c.insert_one(doc! {"_id": 100 + i, "blob": &big})
            .session(&mut session)
            .await?;
    }
    session.commit_transaction().await?;
    session.start_transaction().await?;
    c.insert_one(doc! {"_id": 999})
        .session(&mut session)
        .await?;
    session.abort_transaction().await?;
    let chain = p
        .src
        .database("local")
        .collection::<Document>("oplog.rs")
        .count_documents(doc! {"o.partialTxn": true})
        .await?;
    assert!(chain >= 1, "the large transaction is a partialTxn chain");
    run.control.request_complete();
    assert!(matches!(
        run.finish(Duration::from_secs(60)).await??,
        Outcome::Completed(_)
    ));
    assert_equal(&p, &["app"]).await?;
    Ok(())
}

/// Only majority-committed entries are applied (reference §8.5); a failover that rolls back writes
/// (the rollback id changes) fails the task with that reason, and what was rolled back never reached
/// the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_above_the_majority_point_wait_and_a_rollback_fails_the_task() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let c = p.src.database("app").collection::<Document>("c");
    c.insert_one(doc! {"_id": 1}).await?;
    let run = start(p.config(&["app"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(30)).await?;
    p.source.hold_majority();
    c.insert_one(doc! {"_id": 2}).await?;
    // Wait until the engine has read past it (the tailer spooled it) and applied what it may.
    let newest = OpTime {
        seconds: newest_ts(&p.src).await.time,
        increment: newest_ts(&p.src).await.increment,
    };
    run.wait_for("source newest seen", Duration::from_secs(10), |s| {
        s.progress
            .last()
            .and_then(|p| p.source_newest)
            .is_some_and(|n| n >= newest)
    })
    .await?;
    run.wait_for("another progress report", Duration::from_secs(10), |s| {
        s.progress.len() >= 3
    })
    .await?;
    let dc = p.dst.database("app").collection::<Document>("c");
    assert!(
        dc.find_one(doc! {"_id": 2}).await?.is_none(),
        "applied before majority"
    );
    let undone = p.source.rollback_to_majority();
    assert!(undone >= 1);
    let err = run.finish(Duration::from_secs(30)).await?.unwrap_err();
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert!(dc.find_one(doc! {"_id": 2}).await?.is_none());
    Ok(())
}

/// An entry the applier fails on is kept (extended JSON and raw BSON) under the task's spool dir, and
/// the failure names the file so support can replay it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_a_task_fails_on_is_saved_and_named() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    p.src
        .database("app")
        .collection::<Document>("users")
        .insert_one(doc! {"_id": 1, "email": "a"})
        .await?;
    // The destination already has the collection with a unique index of its own and a document
    // holding the value the source will write next.
    let du = p.dst.database("app").collection::<Document>("users");
    du.insert_one(doc! {"_id": 99, "email": "b"}).await?;
    p.dst
        .database("app")
        .run_command(doc! {"createIndexes": "users", "indexes": [{"key": {"email": 1}, "name": "email_1", "unique": true}]})
        .await?;
    let run = start(p.config(&["app"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(30)).await?;
    p.src
        .database("app")
        .collection::<Document>("users")
        .insert_one(doc! {"_id": 2, "email": "b"})
        .await?;
    let err = run.finish(Duration::from_secs(30)).await?.unwrap_err();
    let msg = err.to_string();
    let start = msg.find("entry saved to ").expect(&msg) + "entry saved to ".len();
    let path = msg[start..].split(';').next().unwrap().trim();
    let saved = ferry_engine::read_entries(std::path::Path::new(path))?;
    assert_eq!(saved.len(), 1);
    let entry = Document::try_from(saved[0].as_ref())?;
    assert_eq!(entry.get_str("op")?, "i");
    assert_eq!(entry.get_document("o")?, &doc! {"_id": 2, "email": "b"});
    let raw_copy = std::path::Path::new(path).with_extension("bson");
    assert_eq!(
        ferry_engine::read_entries(&raw_copy)?[0].as_bytes(),
        saved[0].as_bytes()
    );
    Ok(())
}
