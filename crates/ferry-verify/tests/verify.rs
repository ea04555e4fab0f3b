//! Verification of a quiescent pair (`applied` is `None`): equal data passes in both modes, each kind
//! of damage is reported exactly, and `_id`s of mixed types merge correctly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{copy_db, pair, start, summary, Pair};
use ferry_verify::{Mode, VerifyStatus};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};

const ORDERS: i32 = 2500;
const USERS: i32 = 300;

async fn seed_shop(p: &Pair) -> anyhow::Result<()> {
    let db = p.src.database("shop");
    db.run_command(doc! {"create": "users", "validator": {"email": {"$exists": true}}})
        .await?;
    let orders: Vec<Document> = (0..ORDERS)
        .map(|i| {
            doc! {"_id": i, "a": i % 10, "sku": format!("sku-{i}"), "nested": {"b": {"c": [1, 2, 3]}},
            "at": DateTime::from_millis(1_700_000_000_000 + i64::from(i)), "tag": "t"}
        })
        .collect();
    db.collection::<Document>("orders")
        .insert_many(orders)
        .await?;
    let users: Vec<Document> = (0..USERS)
        .map(|i| doc! {"_id": format!("user-{i:05}"), "email": format!("u{i}@example.com")})
        .collect();
    db.collection::<Document>("users")
        .insert_many(users)
        .await?;
    db.run_command(doc! {"createIndexes": "orders", "indexes": [
        {"key": {"a": 1}, "name": "a_1"},
        {"key": {"sku": 1}, "name": "sku_1", "unique": true},
        {"key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 3600},
    ]})
    .await?;
    db.run_command(doc! {"create": "big_orders", "viewOn": "orders", "pipeline": [{"$match": {"a": {"$gt": 5}}}]})
        .await?;
    copy_db(p, "shop").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_source_and_destination_pass_in_both_modes() {
    common::init_tracing();
    let p = pair().await.unwrap();
    seed_shop(&p).await.unwrap();
    for mode in [Mode::Full, Mode::Hashed] {
        let run = start(p.config(&["shop"], mode));
        let (res, seen) = run.finish(Duration::from_secs(60)).await.unwrap();
        let report = res.unwrap();
        assert_eq!(
            report.status,
            VerifyStatus::Passed,
            "{mode:?}: {}",
            report.summary
        );
        assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
        let total = u64::from((ORDERS + USERS) as u32);
        assert_eq!(report.progress.documents_compared, total, "{mode:?}");
        let orders = report
            .progress
            .collections
            .iter()
            .find(|c| c.namespace == "shop.orders")
            .unwrap();
        assert!(orders.ranges_total > 1, "orders is split into ranges");
        assert!(orders.done);
        assert_eq!(orders.destination_documents, ORDERS as u64);
        assert!(seen.mismatches.is_empty());
        assert!(!seen.checkpoints.is_empty());
        assert!(report.progress.finished_at.is_some());
    }
}

async fn damage(p: &Pair) -> anyhow::Result<()> {
    let db = p.dst.database("shop");
    let orders = db.collection::<Document>("orders");
    orders.delete_one(doc! {"_id": 10}).await?;
    orders
        .update_one(doc! {"_id": 20}, doc! {"$set": {"nested.b.c.1": 99}})
        .await?;
    orders
        .insert_one(doc! {"_id": 100_000, "a": 1, "sku": "extra"})
        .await?;
    db.run_command(doc! {"dropIndexes": "orders", "index": "a_1"})
        .await?;
    db.run_command(doc! {"collMod": "users", "validator": {"email": {"$type": "string"}}})
        .await?;
    db.run_command(doc! {"collMod": "big_orders", "viewOn": "orders", "pipeline": [{"$match": {"a": {"$gt": 6}}}]})
        .await?;
    db.run_command(doc! {"create": "onlydst"}).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_on_the_destination_is_reported_exactly() {
    common::init_tracing();
    let p = pair().await.unwrap();
    seed_shop(&p).await.unwrap();
    damage(&p).await.unwrap();
    let int = |n: i32| Some(format!(r#"{{"$numberInt":"{n}"}}"#));
    let s = |x: &str| x.to_string();
    let expected = vec![
        (s("shop.big_orders"), s("Metadata"), None, None),
        (s("shop.onlydst"), s("Metadata"), None, None),
        (
            s("shop.orders"),
            s("Different"),
            int(20),
            Some(s("nested.b.c.1")),
        ),
        (
            s("shop.orders"),
            s("ExtraOnDestination"),
            int(100_000),
            None,
        ),
        (s("shop.orders"), s("Metadata"), None, None),
        (s("shop.orders"), s("MissingOnDestination"), int(10), None),
        (s("shop.users"), s("Metadata"), None, None),
    ];
    for mode in [Mode::Full, Mode::Hashed] {
        let run = start(p.config(&["shop"], mode));
        let (res, seen) = run.finish(Duration::from_secs(60)).await.unwrap();
        let report = res.unwrap();
        assert_eq!(report.status, VerifyStatus::Failed, "{mode:?}");
        assert_eq!(summary(&report.mismatches), expected, "{mode:?}");
        assert_eq!(summary(&seen.mismatches), expected, "{mode:?}: events");
        let describe = |ns: &str| {
            report
                .mismatches
                .iter()
                .find(|m| m.namespace == ns && m.id.is_none())
                .map(|m| m.description.clone())
                .unwrap()
        };
        assert!(
            describe("shop.orders").contains("index a_1 missing"),
            "{}",
            describe("shop.orders")
        );
        assert!(describe("shop.users").contains("options differ"));
        assert!(describe("shop.big_orders").contains("view definition differs"));
        assert!(describe("shop.onlydst").contains("only on the destination"));
        let c = report.progress.confirmed;
        assert_eq!(
            (
                c.missing_on_destination,
                c.extra_on_destination,
                c.different,
                c.metadata
            ),
            (1, 1, 1, 4)
        );
        assert_eq!(report.progress.documents_compared, (ORDERS + USERS) as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_type_ids_merge_in_bson_order() {
    common::init_tracing();
    let p = pair().await.unwrap();
    let mut ids: Vec<Bson> = Vec::new();
    ids.extend((0..200).map(Bson::Int32));
    ids.extend((200..300).map(|n| Bson::Int64(n as i64)));
    ids.extend((0..100).map(|n| Bson::Double(f64::from(n) + 0.5)));
    ids.extend((0..100).map(|n| Bson::String(format!("s{n:03}"))));
    ids.extend((0..100).map(|_| Bson::ObjectId(ObjectId::new())));
    ids.extend((0..20).map(|n| Bson::DateTime(DateTime::from_millis(n))));
    ids.push(Bson::Document(doc! {"k": 1, "j": "x"}));
    ids.push(Bson::Null);
    ids.push(Bson::Boolean(true));
    let docs: Vec<Document> = ids
        .iter()
        .map(|id| doc! {"_id": id.clone(), "v": 1})
        .collect();
    let total = docs.len() as u64 + 2;
    p.src
        .database("m")
        .collection::<Document>("c")
        .insert_many(docs)
        .await
        .unwrap();
    copy_db(&p, "m").await.unwrap();
    // Same _id to MongoDB (1000 == 1000.0, 1001 == NumberLong(1001)), other bytes.
    let src = p.src.database("m").collection::<Document>("c");
    let dst = p.dst.database("m").collection::<Document>("c");
    src.insert_one(doc! {"_id": 1000i32, "v": 1}).await.unwrap();
    dst.insert_one(doc! {"_id": 1000.0f64, "v": 1})
        .await
        .unwrap();
    src.insert_one(doc! {"_id": 1001i64, "v": 1}).await.unwrap();
    dst.insert_one(doc! {"_id": 1001i32, "v": 1}).await.unwrap();
    let mut cfg = p.config(&["m"], Mode::Full);
    cfg.tuning.docs_per_range = 100;
    cfg.tuning.batch_docs = 37;
    let run = start(cfg);
    let (res, _) = run.finish(Duration::from_secs(60)).await.unwrap();
    let report = res.unwrap();
    let s = |x: &str| x.to_string();
    assert_eq!(
        summary(&report.mismatches),
        vec![
            (
                s("m.c"),
                s("Different"),
                Some(s(r#"{"$numberInt":"1000"}"#)),
                Some(s("_id"))
            ),
            (
                s("m.c"),
                s("Different"),
                Some(s(r#"{"$numberLong":"1001"}"#)),
                Some(s("_id"))
            ),
        ]
    );
    assert_eq!(report.progress.documents_compared, total);
    let c = &report.progress.collections[0];
    assert!(c.ranges_total > 3, "split into ranges: {c:?}");
    assert_eq!(c.destination_documents, total);
}
