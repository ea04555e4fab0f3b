//! The demo's dataset: a few databases of realistic documents, seeded in bulk, and an application that keeps
//! writing (inserts, updates with several operators, deletes) while the migration runs.
//!
//! It talks to the source only through the official driver, as an application would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mongodb::bson::{doc, oid::ObjectId, DateTime, Decimal128, Document};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One seeded collection: where it lives, what share of the documents it gets, how to make one.
struct CollectionPlan {
    db: &'static str,
    coll: &'static str,
    /// Share of the total document count, in percent.
    share: u64,
    make: fn(i64, &mut StdRng) -> Document,
}

const PLAN: &[CollectionPlan] = &[
    CollectionPlan {
        db: "shop",
        coll: "orders",
        share: 40,
        make: order,
    },
    CollectionPlan {
        db: "shop",
        coll: "customers",
        share: 10,
        make: customer,
    },
    CollectionPlan {
        db: "shop",
        coll: "products",
        share: 5,
        make: product,
    },
    CollectionPlan {
        db: "analytics",
        coll: "events",
        share: 35,
        make: event,
    },
    CollectionPlan {
        db: "crm",
        coll: "contacts",
        share: 10,
        make: customer,
    },
];

/// The databases the demo migrates.
pub const DATABASES: &[&str] = &["shop", "analytics", "crm"];

const STATUSES: &[&str] = &["new", "paid", "shipped", "delivered", "returned"];
const CITIES: &[&str] = &[
    "Guangzhou",
    "Shenzhen",
    "Shanghai",
    "Beijing",
    "Chengdu",
    "Hangzhou",
];

fn order(id: i64, rng: &mut StdRng) -> Document {
    let items: Vec<Document> = (0..rng.gen_range(1..5))
        .map(|_| {
            doc! {
                "sku": format!("SKU-{:06}", rng.gen_range(0..100_000)),
                "qty": rng.gen_range(1..10),
                "price": Decimal128::from_bytes(rng.gen::<[u8; 16]>()),
            }
        })
        .collect();
    doc! {
        "_id": id,
        "customer_id": rng.gen_range(0..1_000_000_i64),
        "status": STATUSES[rng.gen_range(0..STATUSES.len())],
        "items": items,
        "total_cents": rng.gen_range(100..1_000_000_i64),
        "created_at": DateTime::from_millis(1_700_000_000_000 + rng.gen_range(0..40_000_000_000_i64)),
        "shipping": { "city": CITIES[rng.gen_range(0..CITIES.len())], "zip": format!("{:06}", rng.gen_range(0..999_999)) },
        "note": lorem(rng, 200),
    }
}

fn customer(id: i64, rng: &mut StdRng) -> Document {
    doc! {
        "_id": id,
        "name": format!("customer {id}"),
        "email": format!("user{id}@example.com"),
        "tier": rng.gen_range(0..4),
        "tags": ["demo", STATUSES[rng.gen_range(0..STATUSES.len())]],
        "address": { "city": CITIES[rng.gen_range(0..CITIES.len())], "street": lorem(rng, 40) },
        "signup": DateTime::from_millis(1_600_000_000_000 + rng.gen_range(0..100_000_000_000_i64)),
        "bio": lorem(rng, 300),
    }
}

fn product(id: i64, rng: &mut StdRng) -> Document {
    doc! {
        "_id": id,
        "sku": format!("SKU-{id:06}"),
        "title": lorem(rng, 60),
        "price_cents": rng.gen_range(100..100_000),
        "stock": rng.gen_range(0..10_000),
        "attributes": { "color": "blue", "weight_g": rng.gen_range(10..5000), "dims": [1.5, 2.5, rng.gen::<f64>()] },
        "description": lorem(rng, 400),
    }
}

fn event(id: i64, rng: &mut StdRng) -> Document {
    let kind = ["view", "click", "buy", "search"][rng.gen_range(0..4)];
    doc! {
        "_id": id,
        "oid": ObjectId::new(),
        "kind": kind,
        "session": format!("{:016x}", rng.gen::<u64>()),
        "at": DateTime::from_millis(1_720_000_000_000 + rng.gen_range(0..10_000_000_000_i64)),
        "payload": { "path": format!("/p/{}", rng.gen_range(0..10_000)), "ms": rng.gen_range(1..5000), "ok": rng.gen_bool(0.95) },
        "ua": lorem(rng, 120),
    }
}

fn lorem(rng: &mut StdRng, len: usize) -> String {
    const WORDS: &[&str] = &[
        "lorem", "ipsum", "dolor", "sit", "amet", "ferry", "mongo", "oplog", "replica", "set",
    ];
    let mut s = String::with_capacity(len + 8);
    while s.len() < len {
        s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
        s.push(' ');
    }
    s
}

/// Documents per collection for a total of `total` documents.
fn counts(total: u64) -> Vec<u64> {
    PLAN.iter()
        .map(|p| (total * p.share / 100).max(1))
        .collect()
}

/// Seeds every collection of the plan with `total` documents in all, plus secondary indexes.
/// Returns (documents, approximate BSON bytes).
pub async fn seed(client: &Client, total: u64) -> anyhow::Result<(u64, u64)> {
    let mut docs_written = 0_u64;
    let mut bytes_written = 0_u64;
    let mut rng = StdRng::seed_from_u64(7);
    for (plan, n) in PLAN.iter().zip(counts(total)) {
        let coll = client.database(plan.db).collection::<Document>(plan.coll);
        let mut batch = Vec::with_capacity(1000);
        for i in 0..n {
            let doc = (plan.make)(i as i64, &mut rng);
            bytes_written += doc.to_vec().map(|v| v.len() as u64).unwrap_or(0);
            batch.push(doc);
            if batch.len() == 1000 {
                coll.insert_many(std::mem::take(&mut batch))
                    .ordered(false)
                    .await
                    .with_context(|| format!("seeding {}.{}", plan.db, plan.coll))?;
            }
        }
        if !batch.is_empty() {
            coll.insert_many(batch)
                .ordered(false)
                .await
                .with_context(|| format!("seeding {}.{}", plan.db, plan.coll))?;
        }
        docs_written += n;
    }
    let shop = client.database("shop");
    shop.collection::<Document>("orders")
        .create_index(
            IndexModel::builder()
                .keys(doc! { "customer_id": 1, "created_at": -1 })
                .build(),
        )
        .await?;
    shop.collection::<Document>("customers")
        .create_index(
            IndexModel::builder()
                .keys(doc! { "email": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await?;
    client
        .database("analytics")
        .collection::<Document>("events")
        .create_index(
            IndexModel::builder()
                .keys(doc! { "at": 1 })
                .options(
                    IndexOptions::builder()
                        .expire_after(Duration::from_secs(86_400 * 3650))
                        .build(),
                )
                .build(),
        )
        .await?;
    Ok((docs_written, bytes_written))
}

/// Counters of the concurrent application writer.
#[derive(Default)]
pub struct WriterStats {
    pub inserts: AtomicU64,
    pub updates: AtomicU64,
    pub deletes: AtomicU64,
}

/// Keeps writing to the source at about `ops_per_second` until `stop` is set: inserts of new documents, updates
/// with `$set`/`$inc`/`$push`, and deletes, on every collection of the plan.
pub async fn write_until(
    client: Client,
    total: u64,
    ops_per_second: u64,
    stop: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(11);
    let sizes = counts(total);
    let mut next_id: Vec<i64> = sizes.iter().map(|n| *n as i64).collect();
    let tick = Duration::from_millis(20);
    let per_tick = (ops_per_second / 50).max(1);
    let mut interval = tokio::time::interval(tick);
    while !stop.load(Ordering::Relaxed) {
        interval.tick().await;
        for _ in 0..per_tick {
            let which = rng.gen_range(0..PLAN.len());
            let plan = &PLAN[which];
            let coll = client.database(plan.db).collection::<Document>(plan.coll);
            let existing = rng.gen_range(0..next_id[which].max(1));
            match rng.gen_range(0..10) {
                0..=3 => {
                    let doc = (plan.make)(next_id[which], &mut rng);
                    next_id[which] += 1;
                    coll.insert_one(doc).await.context("writer insert")?;
                    stats.inserts.fetch_add(1, Ordering::Relaxed);
                }
                4..=8 => {
                    let update = match rng.gen_range(0..3) {
                        0 => doc! { "$set": { "status": "updated", "touched": DateTime::now() } },
                        1 => doc! { "$inc": { "version": 1 } },
                        _ => {
                            doc! { "$push": { "history": { "at": DateTime::now(), "n": rng.gen_range(0..100) } } }
                        }
                    };
                    coll.update_one(doc! { "_id": existing }, update)
                        .await
                        .context("writer update")?;
                    stats.updates.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    coll.delete_one(doc! { "_id": existing })
                        .await
                        .context("writer delete")?;
                    stats.deletes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}

/// Every (db, collection) the plan seeds.
pub fn namespaces() -> impl Iterator<Item = (&'static str, &'static str)> {
    PLAN.iter().map(|p| (p.db, p.coll))
}
