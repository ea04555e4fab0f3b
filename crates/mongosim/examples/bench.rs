//! Throughput of mongosim through the Rust driver: unordered `insert_many` of 1 KB documents
//! and a full `find` scan. Run in release mode:
//! `cargo run --release -p mongosim --example bench -- 200000`.

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
    println!("documents: {n} x ~1 KB");
    println!(
        "insert_many (unordered, 10k per call): {:.0} docs/s",
        n as f64 / ins.as_secs_f64()
    );
    println!(
        "find scan ({seen} docs): {:.0} docs/s",
        seen as f64 / scan.as_secs_f64()
    );
    sim.shutdown().await;
    Ok(())
}
