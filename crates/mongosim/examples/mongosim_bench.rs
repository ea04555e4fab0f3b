//! Throughput of mongosim through the Rust driver: unordered `insert_many` of 1 KB documents
//! and a full `find` scan, then the access paths a migration uses on the `_id` index (batched
//! `_id` updates like an oplog applier, `$in` lookups, a `$nor` range read, `$sample`).
//! Run in release mode:
//! `cargo run --release -p mongosim --example mongosim_bench -- 200000`.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::options::ClientOptions;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let sim = mongosim::MongoSim::builder()
        .oplog_size_mb(256)
        .start()
        .await?;
    let mut opts = ClientOptions::parse(sim.uri()).await?;
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    let client = mongodb::Client::with_options(opts)?;
    let coll = client.database("bench").collection::<Document>("docs");
    let pad = "x".repeat(1000);
    let docs: Vec<Document> = (0..n)
        .map(|i| doc! {"_id": i as i64, "pad": pad.clone()})
        .collect();
    let started = Instant::now();
    for chunk in docs.chunks(10_000) {
        coll.insert_many(chunk.to_vec()).ordered(false).await?;
    }
    let ins = started.elapsed();
    let raw = client
        .database("bench")
        .collection::<RawDocumentBuf>("docs");
    let started = Instant::now();
    let mut cursor = raw.find(doc! {}).await?;
    let mut seen = 0usize;
    while cursor.try_next().await?.is_some() {
        seen += 1;
    }
    let scan = started.elapsed();
    let extra = point_ops(&client, n).await?;
    println!("documents: {n} x ~1 KB");
    println!(
        "insert_many (unordered, 10k per call): {:.0} docs/s",
        n as f64 / ins.as_secs_f64()
    );
    println!(
        "find scan ({seen} docs): {:.0} docs/s",
        seen as f64 / scan.as_secs_f64()
    );
    for line in extra {
        println!("{line}");
    }
    sim.shutdown().await;
    Ok(())
}

/// Batched point writes and reads by `_id`; returns the report lines.
async fn point_ops(client: &mongodb::Client, n: usize) -> anyhow::Result<Vec<String>> {
    let db = client.database("bench");
    let coll = db.collection::<Document>("docs");
    let mut out = Vec::new();
    let batches = 20usize;
    let per = 1000usize;
    let started = Instant::now();
    for b in 0..batches {
        let updates: Vec<Document> = (0..per)
            .map(|k| {
                let id = ((b * per + k) * 7919 % n) as i64;
                doc! {"q": {"_id": id}, "u": {"$set": {"n": k as i32}}, "upsert": true}
            })
            .collect();
        db.run_command(doc! {"update": "docs", "updates": updates, "ordered": true})
            .await?;
    }
    out.push(format!(
        "update by _id (1000 statements per command): {:.0} writes/s",
        (batches * per) as f64 / started.elapsed().as_secs_f64()
    ));
    let started = Instant::now();
    let mut found = 0usize;
    for b in 0..batches {
        let ids: Vec<i64> = (0..per)
            .map(|k| ((b * per + k) * 104_729 % n) as i64)
            .collect();
        let docs: Vec<Document> = coll
            .find(doc! {"_id": {"$in": ids}})
            .await?
            .try_collect()
            .await?;
        found += docs.len();
    }
    out.push(format!(
        "find _id $in (1000 ids per query, {found} found): {:.0} docs/s",
        found as f64 / started.elapsed().as_secs_f64()
    ));
    let raw = db.collection::<RawDocumentBuf>("docs");
    let started = Instant::now();
    let mut cursor = raw
        .find(doc! {"$nor": [{"_id": {"$gte": (n / 10) as i64}}]})
        .await?;
    let mut seen = 0usize;
    while cursor.try_next().await?.is_some() {
        seen += 1;
    }
    out.push(format!(
        "find $nor [_id $gte n/10] ({seen} docs): {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    ));
    let started = Instant::now();
    let rounds = 10;
    for _ in 0..rounds {
        let sample: Vec<Document> = coll
            .aggregate(vec![
                doc! {"$sample": {"size": 1600}},
                doc! {"$project": {"_id": 1}},
                doc! {"$sort": {"_id": 1}},
            ])
            .await?
            .with_type::<Document>()
            .try_collect()
            .await?;
        anyhow::ensure!(sample.len() == 1600.min(n), "short sample");
    }
    out.push(format!(
        "$sample 1600 + $project _id + $sort: {:.1} ms per aggregate",
        started.elapsed().as_secs_f64() * 1000.0 / rounds as f64
    ));
    Ok(out)
}
