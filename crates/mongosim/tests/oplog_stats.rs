//! `collStats` and `$collStats` on `local.oplog.rs` report what a real server reports for a capped collection
//! (mongodb/mongo `src/mongo/db/stats/storage_stats.cpp`): `capped: true`, `maxSize` (the configured cap), `size`
//! and `count` of the retained entries, scaled by `scale`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongosim::MongoSim;

#[tokio::test]
async fn oplog_collstats_and_collstats_stage_report_capacity_and_use() {
    let sim = MongoSim::builder()
        .replset("rs0")
        .oplog_size_mb(64)
        .start()
        .await
        .unwrap();
    let mut options = ClientOptions::parse(sim.uri()).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(5));
    let client = mongodb::Client::with_options(options).unwrap();
    client
        .database("shop")
        .collection::<Document>("orders")
        .insert_many((0..10).map(|i| doc! {"_id": i, "pad": "x".repeat(100)}))
        .await
        .unwrap();
    let local = client.database("local");
    let entries = local
        .collection::<Document>("oplog.rs")
        .count_documents(doc! {})
        .await
        .unwrap();

    let stats = local
        .run_command(doc! {"collStats": "oplog.rs"})
        .await
        .unwrap();
    assert_eq!(stats.get_bool("capped").ok(), Some(true), "{stats}");
    assert_eq!(stats.get_i64("maxSize").ok(), Some(64 << 20), "{stats}");
    assert_eq!(stats.get_i64("count").ok(), Some(entries as i64), "{stats}");
    let size = stats.get_i64("size").unwrap();
    assert!(size > 10 * 100 && size < 64 << 20, "{stats}");

    let scaled = local
        .run_command(doc! {"collStats": "oplog.rs", "scale": 1024})
        .await
        .unwrap();
    assert_eq!(scaled.get_i64("maxSize").ok(), Some(64 << 10), "{scaled}");
    assert_eq!(scaled.get_i64("size").ok(), Some(size / 1024), "{scaled}");
    assert_eq!(scaled.get_i32("scaleFactor").ok(), Some(1024), "{scaled}");

    let staged: Vec<Document> = local
        .collection::<Document>("oplog.rs")
        .aggregate([doc! {"$collStats": {"storageStats": {}}}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(staged.len(), 1, "{staged:?}");
    let storage = staged[0].get_document("storageStats").unwrap();
    assert_eq!(storage.get_bool("capped").ok(), Some(true), "{storage}");
    assert_eq!(storage.get_i64("maxSize").ok(), Some(64 << 20), "{storage}");
    assert_eq!(storage.get_i64("size").ok(), Some(size), "{storage}");
    assert_eq!(
        storage.get_i64("count").ok(),
        Some(entries as i64),
        "{storage}"
    );
    sim.shutdown().await;
}
