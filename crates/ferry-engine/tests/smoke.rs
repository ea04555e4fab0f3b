#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are assertions
//! Smallest end-to-end run: copy, one oplog change of each CRUD kind, cut-over; and list_databases.
mod common;

use std::time::Duration;

use common::*;
use ferry_engine::{Outcome, Phase};
use mongodb::bson::doc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_copy_and_oplog() -> anyhow::Result<()> {
    init_tracing();
    let p = pair().await?;
    let c = p.src.database("app").collection("users");
    let docs: Vec<_> = (0..1000)
        .map(|i| doc! {"_id": i, "name": format!("user{i}"), "n": i * 2})
        .collect();
    c.insert_many(docs).await?;
    c.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"name": 1})
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .build(),
            )
            .build(),
    )
    .await?;
    let run = start(p.config(&["app"]), None);
    run.wait_for("oplog sync", Duration::from_secs(30), |s| {
        s.phases.contains(&Phase::OplogSync)
    })
    .await?;
    c.insert_one(doc! {"_id": 5000, "name": "late"}).await?;
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"x.y": 1}, "$inc": {"n": 5}})
        .await?;
    c.delete_one(doc! {"_id": 2}).await?;
    run.control.request_complete();
    let out = run.finish(Duration::from_secs(30)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    assert_equal(&p, &["app"]).await?;
    let dbs = ferry_engine::list_databases(&p.config(&[]).source).await?;
    let names: Vec<&str> = dbs.iter().map(|d| d.0.as_str()).collect();
    assert!(names.contains(&"app"), "{names:?}");
    assert!(!names
        .iter()
        .any(|n| ["admin", "local", "config"].contains(n)));
    Ok(())
}
