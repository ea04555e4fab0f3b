//! The realistic application of issue #8, shared by `tests/tests/realworld.rs` and the fault campaign (`chaos`):
//! unique values swapped between documents, hot keys, TTL-indexed documents refreshed while the source's TTL monitor
//! deletes the expired ones, a capped collection that evicts, small and >16 MiB multi-document transactions, views
//! created, changed and dropped, cross-database renames, and index builds that complete or are aborted while held
//! by a fail point. Every write shape here is one mongosim logs the way a real 7.0 primary does (see
//! crates/mongosim/README.md).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_testkit::mongo::index_specs;
use ferry_testkit::wait_for;
pub use ferry_testkit::Rng;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document, RawDocumentBuf};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};

use crate::World;

const MINUTE: Duration = Duration::from_secs(60);

pub const DB_A: &str = "rw_a";
pub const DB_B: &str = "rw_b";
pub const DATABASES: [&str; 2] = [DB_A, DB_B];
pub const USERS: i64 = 300;
pub const ORDERS: i64 = 3000;
/// `expireAfterSeconds` of `rw_a.sessions.lastSeen`: short, so documents expire for real during the test.
pub const SESSION_TTL_SECS: i32 = 2;
/// Sessions whose `lastSeen` is in 2100 ("remember me"): they never expire during the test.
pub const FOREVER_MS: i64 = 4_102_444_800_000;
/// The source's TTL monitor period.
pub const TTL_INTERVAL: Duration = Duration::from_millis(250);
/// Size of each document of the >16 MiB transaction (4 of them: 20 MiB).
pub const BLOB_BYTES: usize = 5 * 1024 * 1024;

/// The source before the task is created: two databases with every kind of collection the writer touches.
pub async fn seed_source(src: &Client) -> anyhow::Result<()> {
    let a = src.database(DB_A);
    let b = src.database(DB_B);

    let users = a.collection::<Document>("users");
    users
        .insert_many((0..USERS).map(|i| {
            doc! { "_id": i, "email": format!("user{i}@example.com"), "name": format!("User {i}"), "logins": 0_i64 }
        }))
        .await?;
    users
        .create_index(
            IndexModel::builder()
                .keys(doc! { "email": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await?;

    let now = DateTime::now().timestamp_millis();
    let sessions = a.collection::<Document>("sessions");
    // 200 sessions expiring one after the other over the first seconds of the test, 100 that never do.
    sessions
        .insert_many((0..300_i64).map(|i| {
            let last_seen = if i < 200 {
                now - i64::from(SESSION_TTL_SECS) * 1000 + i * 40
            } else {
                FOREVER_MS
            };
            doc! { "_id": i, "user": i % USERS, "lastSeen": DateTime::from_millis(last_seen), "hits": 0 }
        }))
        .await?;
    sessions
        .create_index(
            IndexModel::builder()
                .keys(doc! { "lastSeen": 1 })
                .options(
                    IndexOptions::builder()
                        .expire_after(Duration::from_secs(SESSION_TTL_SECS as u64))
                        .build(),
                )
                .build(),
        )
        .await?;

    a.create_collection("events")
        .capped(true)
        .size(16 * 1024)
        .max(100)
        .await?;
    let events = a.collection::<Document>("events");
    for i in 0..150 {
        events
            .insert_one(doc! { "seq": i, "kind": "seed", "pad": "e".repeat(64) })
            .await?;
    }

    a.collection::<Document>("counters")
        .insert_many(
            (0..4).map(
                |i| doc! { "_id": format!("hot{i}"), "hits": 0_i64, "balance": 1_000_000_i64 },
            ),
        )
        .await?;
    a.collection::<Document>("orders")
        .insert_many((0..ORDERS).map(|i| {
            doc! { "_id": i, "user": i % USERS, "total": (i * 37 % 1000) as f64 / 10.0, "status": "new",
                   "lines": [{ "sku": format!("sku-{}", i % 50), "qty": (i % 5) + 1 }], "pad": "o".repeat(1500) }
        }))
        .await?;
    a.collection::<Document>("orders")
        .create_index(
            IndexModel::builder()
                .keys(doc! { "user": 1, "_id": -1 })
                .build(),
        )
        .await?;
    a.create_collection("active_users")
        .view_on("users".to_string())
        .pipeline(vec![doc! { "$match": { "logins": { "$gt": 0 } } }])
        .await?;

    b.collection::<Document>("ledger")
        .insert_many((0..1000_i64).map(|i| doc! { "_id": format!("seed{i:04}"), "account": format!("hot{}", i % 4), "amount": i }))
        .await?;
    b.create_collection("big_entries")
        .view_on("ledger".to_string())
        .pipeline(vec![
            doc! { "$match": { "amount": { "$gte": 500 } } },
            doc! { "$sort": { "amount": -1 } },
        ])
        .await?;
    Ok(())
}

/// How many times the writer did each kind of write, so the test can wait until every kind happened in a phase.
#[derive(Default)]
pub struct Stats {
    swaps: AtomicU64,
    hot_incs: AtomicU64,
    ttl_refreshes: AtomicU64,
    capped_inserts: AtomicU64,
    small_txns: AtomicU64,
    big_txns: AtomicU64,
    views_created: AtomicU64,
    views_modified: AtomicU64,
    views_dropped: AtomicU64,
    cross_db_renames: AtomicU64,
    aborted_builds: AtomicU64,
    completed_builds: AtomicU64,
    legacy_writes: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> [u64; 13] {
        [
            &self.swaps,
            &self.hot_incs,
            &self.ttl_refreshes,
            &self.capped_inserts,
            &self.small_txns,
            &self.big_txns,
            &self.views_created,
            &self.views_modified,
            &self.views_dropped,
            &self.cross_db_renames,
            &self.aborted_builds,
            &self.completed_builds,
            &self.legacy_writes,
        ]
        .map(|c| c.load(Ordering::SeqCst))
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

/// The application: rounds of production-like writes on the source until told to stop.
pub struct Writer {
    stop: Arc<AtomicBool>,
    pub big_txn_requested: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    pub stats: Arc<Stats>,
    /// Rounds that failed (tolerant mode).
    errors: Arc<AtomicU64>,
    /// The writer's error, once it failed (the test reports it).
    failure: Arc<Mutex<Option<String>>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

struct WriterCtx {
    client: Client,
    source: mongosim::Faults,
    rng: Rng,
    stats: Arc<Stats>,
    big_txn_requested: Arc<AtomicBool>,
    big_txns: u64,
    /// Names of the views the writer created and has not dropped yet, oldest first.
    views: Vec<String>,
    /// Names of the completed index builds not dropped yet, oldest first.
    built: Vec<String>,
}

impl Writer {
    /// Starts the application; its first error stops it and fails [`Writer::check`].
    pub fn start(world: &World, seed: u64) -> Self {
        Self::start_with(world, seed, false)
    }

    /// Like [`Writer::start`]; when `tolerant`, a round that fails (an outage of the source, a fault) is counted in
    /// [`Writer::errors`] and the application goes on with the next round, as a retrying application does.
    pub fn start_with(world: &World, seed: u64, tolerant: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(Stats::default());
        let big_txn_requested = Arc::new(AtomicBool::new(true));
        let mut ctx = WriterCtx {
            client: world.source_client.clone(),
            source: world.source.faults(),
            rng: Rng(seed.rotate_left(17) ^ 0xA5A5_A5A5),
            stats: stats.clone(),
            big_txn_requested: big_txn_requested.clone(),
            big_txns: 0,
            views: Vec::new(),
            built: Vec::new(),
        };
        let failure = Arc::new(Mutex::new(None));
        let errors = Arc::new(AtomicU64::new(0));
        let handle = tokio::spawn({
            let (stop, rounds, failure, errors) = (
                stop.clone(),
                rounds.clone(),
                failure.clone(),
                errors.clone(),
            );
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let round = rounds.load(Ordering::SeqCst);
                    if let Err(e) = ctx.round(round).await {
                        let e = e.context(format!("writer round {round}"));
                        if !tolerant {
                            *failure.lock().unwrap() = Some(format!("{e:#}"));
                            return Err(e);
                        }
                        errors.fetch_add(1, Ordering::SeqCst);
                        // A failed round's fail point must not hold the next index builds.
                        ctx.source
                            .set_fail_point("hangIndexBuildBeforeCommit", false);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    rounds.fetch_add(1, Ordering::SeqCst);
                    // Pacing of the application, not a synchronisation.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(())
            }
        });
        Self {
            stop,
            big_txn_requested,
            rounds,
            stats,
            errors,
            failure,
            handle,
        }
    }

    /// Rounds that failed and were skipped (tolerant mode).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::SeqCst)
    }

    /// Fails when the writer stopped on an error.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(e) = self.failure.lock().unwrap().as_ref() {
            bail!("the writer failed: {e}");
        }
        if self.handle.is_finished() && !self.stop.load(Ordering::SeqCst) {
            bail!("the writer stopped early");
        }
        Ok(())
    }

    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Waits until `n` more rounds are written (the writer's own failure ends the wait).
    pub async fn more(&self, n: u64) -> anyhow::Result<()> {
        let target = self.rounds() + n;
        wait_for(MINUTE, || async move {
            self.check()?;
            Ok((self.rounds() >= target).then_some(()))
        })
        .await
        .with_context(|| format!("waiting for writer round {target}"))
    }

    /// Waits until every kind of write happened again after `since` (a [`Stats::snapshot`]).
    pub async fn every_kind_since(&self, since: [u64; 13]) -> anyhow::Result<()> {
        wait_for(MINUTE, || async move {
            self.check()?;
            let now = self.stats.snapshot();
            Ok(now.iter().zip(since).all(|(n, s)| *n > s).then_some(()))
        })
        .await
        .with_context(|| {
            format!(
                "every kind of write since {since:?}; now {:?}",
                self.stats.snapshot()
            )
        })
    }

    /// Stops the application (cut-over); its errors fail the test.
    pub async fn finish(mut self) -> anyhow::Result<Arc<Stats>> {
        self.stop().await?;
        Ok(self.stats)
    }

    /// Stops the application and waits for its last round; its errors (not tolerated) are returned. Call once.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        (&mut self.handle).await?
    }
}

impl WriterCtx {
    async fn round(&mut self, round: u64) -> anyhow::Result<()> {
        self.legacy_driver(round).await?;
        self.swap_emails(round).await?;
        self.hot_keys().await?;
        self.refresh_sessions(round).await?;
        self.capped_inserts(round).await?;
        self.small_transaction(round).await?;
        if self.big_txn_requested.swap(false, Ordering::SeqCst) {
            self.big_transaction().await?;
        }
        if round.is_multiple_of(3) {
            self.views(round).await?;
        }
        if round % 4 == 1 {
            self.cross_db_rename(round).await?;
        }
        if round % 5 == 2 {
            self.index_builds(round).await?;
        }
        Ok(())
    }

    /// An old driver that stores strings as it got them, invalid UTF-8 included (real servers keep such bytes as
    /// given, reference §1): a new document, a `$inc` on an older one (a `$v:2` diff next to the invalid string),
    /// and every fourth round an older one deleted and inserted again with another invalid string.
    async fn legacy_driver(&mut self, round: u64) -> anyhow::Result<()> {
        let legacy = self
            .client
            .database(DB_A)
            .collection::<RawDocumentBuf>("legacy");
        let id = round as i64;
        let bad = [
            &[0xff, 0xfe][..],
            format!("latin-1 {round} caf").as_bytes(),
            &[0xe9],
        ]
        .concat();
        legacy.insert_one(legacy_doc(id, &bad, 0)?).await?;
        self.client
            .database(DB_A)
            .collection::<Document>("legacy")
            .update_one(doc! { "_id": id / 2 }, doc! { "$inc": { "n": 1 } })
            .await?;
        if round % 4 == 3 {
            // The driver refuses a replacement it cannot read back as UTF-8: the old application deletes and
            // inserts again.
            let other = [b"\xc3(".as_slice(), &[0xc3, 0x28, 0x80]].concat();
            legacy.delete_one(doc! { "_id": id / 3 }).await?;
            legacy.insert_one(legacy_doc(id / 3, &other, 7)?).await?;
        }
        bump(&self.stats.legacy_writes);
        Ok(())
    }

    /// Swaps the unique `email` of two users as an application must: through a temporary value.
    async fn swap_emails(&mut self, round: u64) -> anyhow::Result<()> {
        let users = self.client.database(DB_A).collection::<Document>("users");
        for k in 0..3 {
            let a = self.rng.below(USERS as u64) as i64;
            let b = (a + 1 + self.rng.below(USERS as u64 - 1) as i64) % USERS;
            let email = |id: i64| {
                let users = users.clone();
                async move {
                    let d = users
                        .find_one(doc! { "_id": id })
                        .await?
                        .context("user vanished")?;
                    anyhow::Ok(d.get_str("email")?.to_string())
                }
            };
            let (old_a, old_b) = (email(a).await?, email(b).await?);
            users
                .update_one(
                    doc! { "_id": a },
                    doc! { "$set": { "email": format!("swap-{round}-{k}@tmp") } },
                )
                .await?;
            users
                .update_one(doc! { "_id": b }, doc! { "$set": { "email": old_a } })
                .await?;
            users
                .update_one(doc! { "_id": a }, doc! { "$set": { "email": old_b } })
                .await?;
            bump(&self.stats.swaps);
        }
        Ok(())
    }

    async fn hot_keys(&mut self) -> anyhow::Result<()> {
        let counters = self
            .client
            .database(DB_A)
            .collection::<Document>("counters");
        for _ in 0..8 {
            let key = format!("hot{}", self.rng.below(4));
            counters
                .update_one(doc! { "_id": key }, doc! { "$inc": { "hits": 1_i64 } })
                .await?;
            bump(&self.stats.hot_incs);
        }
        Ok(())
    }

    /// Sessions seen again: `lastSeen` set to now by upsert (an expired, deleted session comes back), a new
    /// session, and a "remember me" session touched.
    async fn refresh_sessions(&mut self, round: u64) -> anyhow::Result<()> {
        let sessions = self
            .client
            .database(DB_A)
            .collection::<Document>("sessions");
        for _ in 0..4 {
            let id = self.rng.below(200) as i64;
            sessions
                .update_one(
                    doc! { "_id": id },
                    doc! { "$set": { "lastSeen": DateTime::now() }, "$inc": { "hits": 1 } },
                )
                .upsert(true)
                .await?;
        }
        sessions
            .insert_one(doc! { "_id": 1000 + round as i64, "user": (round as i64) % USERS, "lastSeen": DateTime::now(), "hits": 1 })
            .await?;
        let forever = 200 + self.rng.below(100) as i64;
        sessions
            .update_one(doc! { "_id": forever }, doc! { "$inc": { "hits": 1 } })
            .await?;
        bump(&self.stats.ttl_refreshes);
        Ok(())
    }

    async fn capped_inserts(&mut self, round: u64) -> anyhow::Result<()> {
        let events = self.client.database(DB_A).collection::<Document>("events");
        for k in 0..4 {
            events
                .insert_one(doc! { "seq": (round * 4 + k) as i64, "kind": "app", "pad": "e".repeat(40 + (k as usize) * 16) })
                .await?;
        }
        bump(&self.stats.capped_inserts);
        Ok(())
    }

    /// A transfer between two hot accounts and a ledger entry in the other database, in one transaction.
    async fn small_transaction(&mut self, round: u64) -> anyhow::Result<()> {
        let from = format!("hot{}", self.rng.below(4));
        let to = format!("hot{}", self.rng.below(4));
        let amount = 1 + self.rng.below(100) as i64;
        let user = self.rng.below(USERS as u64) as i64;
        let counters = self
            .client
            .database(DB_A)
            .collection::<Document>("counters");
        let users = self.client.database(DB_A).collection::<Document>("users");
        let ledger = self.client.database(DB_B).collection::<Document>("ledger");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut s = self.client.start_session().await?;
            s.start_transaction().await?;
            let body = async {
                counters
                    .update_one(
                        doc! { "_id": &from },
                        doc! { "$inc": { "balance": -amount } },
                    )
                    .session(&mut s)
                    .await?;
                counters
                    .update_one(doc! { "_id": &to }, doc! { "$inc": { "balance": amount } })
                    .session(&mut s)
                    .await?;
                ledger
                    .insert_one(doc! { "_id": format!("r{round}"), "from": &from, "to": &to, "amount": amount })
                    .session(&mut s)
                    .await?;
                users
                    .update_one(doc! { "_id": user }, doc! { "$inc": { "logins": 1_i64 }, "$set": { "lastTxn": round as i64 } })
                    .session(&mut s)
                    .await?;
                if round % 7 == 3 {
                    ledger
                        .delete_one(doc! { "_id": format!("seed{:04}", round % 1000) })
                        .session(&mut s)
                        .await?;
                }
                s.commit_transaction().await
            }
            .await;
            match body {
                Ok(()) => break,
                Err(e) if e.contains_label("TransientTransactionError") && attempts < 5 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        bump(&self.stats.small_txns);
        Ok(())
    }

    /// One transaction over 16 MiB (logged as a partialTxn chain): four 5 MiB documents inserted, the previous
    /// four deleted.
    async fn big_transaction(&mut self) -> anyhow::Result<()> {
        let n = self.big_txns;
        let blobs = self.client.database(DB_A).collection::<Document>("blobs");
        let mut s = self.client.start_session().await?;
        s.start_transaction().await?;
        for k in 0..4u8 {
            let data = "x".repeat(BLOB_BYTES - 64) + &format!("{k}");
            blobs
                .insert_one(doc! { "_id": format!("blob{n}-{k}"), "n": n as i64, "data": data })
                .session(&mut s)
                .await?;
        }
        if n > 0 {
            for k in 0..4 {
                blobs
                    .delete_one(doc! { "_id": format!("blob{}-{k}", n - 1) })
                    .session(&mut s)
                    .await?;
            }
        }
        s.commit_transaction().await?;
        self.big_txns += 1;
        bump(&self.stats.big_txns);
        Ok(())
    }

    /// A view created on `users`, the oldest one re-pointed to `orders` with another pipeline (collMod viewOn +
    /// pipeline), and one dropped when more than three exist.
    async fn views(&mut self, round: u64) -> anyhow::Result<()> {
        let a = self.client.database(DB_A);
        let name = format!("v_{round}");
        a.create_collection(&name)
            .view_on("users".to_string())
            .pipeline(vec![
                doc! { "$match": { "logins": { "$gte": (round % 5) as i64 } } },
                doc! { "$project": { "email": 1, "logins": 1 } },
            ])
            .await?;
        self.views.push(name);
        bump(&self.stats.views_created);
        if let Some(oldest) = self.views.first() {
            a.run_command(doc! {
                "collMod": oldest,
                "viewOn": "orders",
                "pipeline": [ { "$match": { "status": "new", "user": (round as i64) % USERS } } ],
            })
            .await?;
            bump(&self.stats.views_modified);
        }
        if self.views.len() > 3 {
            let oldest = self.views.remove(0);
            a.collection::<Document>(&oldest).drop().await?;
            bump(&self.stats.views_dropped);
        }
        Ok(())
    }

    /// A staging collection (with a unique index) filled in `rw_a`, then moved to `rw_b` by `renameCollection`.
    async fn cross_db_rename(&mut self, round: u64) -> anyhow::Result<()> {
        let staging = format!("staging_{round}");
        let coll = self.client.database(DB_A).collection::<Document>(&staging);
        coll.insert_many(
            (0..30_i64).map(
                |i| doc! { "_id": i, "batch": round as i64, "ref": format!("ref-{round}-{i}") },
            ),
        )
        .await?;
        coll.create_index(
            IndexModel::builder()
                .keys(doc! { "ref": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await?;
        self.client
            .database("admin")
            .run_command(doc! {
                "renameCollection": format!("{DB_A}.{staging}"),
                "to": format!("{DB_B}.archive_{round}"),
            })
            .await?;
        bump(&self.stats.cross_db_renames);
        Ok(())
    }

    /// An index build held by `hangIndexBuildBeforeCommit` and aborted by `dropIndexes` (the source logs
    /// startIndexBuild + abortIndexBuild), then one that completes (startIndexBuild + commitIndexBuild).
    async fn index_builds(&mut self, round: u64) -> anyhow::Result<()> {
        let a = self.client.database(DB_A);
        let held = format!("held_{round}");
        self.source
            .set_fail_point("hangIndexBuildBeforeCommit", true);
        let build = tokio::spawn({
            let a = a.clone();
            let held = held.clone();
            async move {
                a.run_command(doc! {
                    "createIndexes": "orders",
                    "indexes": [ { "key": { "status": 1, "total": -1 }, "name": held } ],
                })
                .await
            }
        });
        let client = &self.client;
        let held_name = held.as_str();
        let listed = wait_for(Duration::from_secs(20), || async move {
            let specs = index_specs(client, DB_A, "orders").await?;
            Ok(specs
                .iter()
                .any(|s| s.get_str("name").ok() == Some(held_name))
                .then_some(()))
        })
        .await;
        let dropped = a
            .run_command(doc! { "dropIndexes": "orders", "index": &held })
            .await;
        self.source
            .set_fail_point("hangIndexBuildBeforeCommit", false);
        listed.context("the held index build is listed")?;
        dropped.context("dropIndexes of the held build")?;
        match build.await? {
            Err(e)
                if format!("{e}").contains("276")
                    || format!("{e:?}").contains("IndexBuildAborted") => {}
            other => {
                bail!("the held index build should end with IndexBuildAborted (276): {other:?}")
            }
        }
        bump(&self.stats.aborted_builds);

        let built = format!("built_{round}");
        a.run_command(doc! {
            "createIndexes": "orders",
            "indexes": [ { "key": { "lines.sku": 1, format!("attr{round}"): 1 }, "name": &built, "partialFilterExpression": { "user": { "$gte": (round % 7) as i64 } } } ],
        })
        .await?;
        self.built.push(built);
        bump(&self.stats.completed_builds);
        if self.built.len() > 3 {
            let oldest = self.built.remove(0);
            a.run_command(doc! { "dropIndexes": "orders", "index": oldest })
                .await?;
        }
        Ok(())
    }
}

/// `{_id: id, s: <bad as a BSON string>, n: n}`, built byte by byte: the string's bytes are not checked for UTF-8,
/// as an old driver's were not.
fn legacy_doc(id: i64, bad: &[u8], n: i32) -> anyhow::Result<RawDocumentBuf> {
    let mut body = Vec::new();
    body.push(0x12);
    body.extend_from_slice(b"_id\0");
    body.extend_from_slice(&id.to_le_bytes());
    body.push(0x02);
    body.extend_from_slice(b"s\0");
    body.extend_from_slice(&i32::try_from(bad.len() + 1)?.to_le_bytes());
    body.extend_from_slice(bad);
    body.push(0);
    body.push(0x10);
    body.extend_from_slice(b"n\0");
    body.extend_from_slice(&n.to_le_bytes());
    let mut bytes = i32::try_from(body.len() + 5)?.to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes.push(0);
    Ok(RawDocumentBuf::from_bytes(bytes)?)
}

/// Waits until the source's TTL monitor deleted every session that can expire (the application no longer refreshes
/// them), so that a cut-over compares a quiescent source.
pub async fn source_ttl_caught_up(source: &Client) -> anyhow::Result<()> {
    let sessions = source.database(DB_A).collection::<Document>("sessions");
    let sessions = &sessions;
    wait_for(Duration::from_secs(30), || async move {
        let expiring = sessions
            .count_documents(doc! { "lastSeen": { "$lt": DateTime::from_millis(FOREVER_MS) } })
            .await?;
        Ok((expiring == 0).then_some(()))
    })
    .await
    .context("the source's TTL monitor deletes every expired session")
}

/// A capped collection's documents in natural (insertion) order are the same on both sides.
pub async fn assert_natural_order_equal(world: &World, db: &str, coll: &str) -> anyhow::Result<()> {
    let read = |client: &Client| {
        let c = client.database(db).collection::<RawDocumentBuf>(coll);
        async move {
            anyhow::Ok(
                c.find(doc! {})
                    .sort(doc! { "$natural": 1 })
                    .await?
                    .try_collect::<Vec<_>>()
                    .await?,
            )
        }
    };
    let (a, b) = (
        read(&world.source_client).await?,
        read(&world.dest_client).await?,
    );
    if a.len() != b.len() {
        bail!(
            "{db}.{coll}: {} documents on the source, {} on the destination",
            a.len(),
            b.len()
        );
    }
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if x.as_bytes() != y.as_bytes() {
            bail!(
                "{db}.{coll}: natural order differs at {i}:\nsource      {:?}\ndestination {:?}",
                Document::try_from(x.as_ref()),
                Document::try_from(y.as_ref())
            );
        }
    }
    Ok(())
}

/// Unique and TTL indexes have their source definitions back; no aborted build exists on the destination.
pub async fn assert_restored_indexes(world: &World) -> anyhow::Result<()> {
    let dst = &world.dest_client;
    let users = index_specs(dst, DB_A, "users").await?;
    let email = users
        .iter()
        .find(|s| s.get_str("name").ok() == Some("email_1"))
        .context("email_1 on the destination")?;
    assert_eq!(email.get_bool("unique").ok(), Some(true), "{email:?}");
    let sessions = index_specs(dst, DB_A, "sessions").await?;
    let ttl = sessions
        .iter()
        .find(|s| s.get_str("name").ok() == Some("lastSeen_1"))
        .context("lastSeen_1 on the destination")?;
    assert_eq!(
        ttl.get("expireAfterSeconds"),
        Some(&Bson::Int64(i64::from(SESSION_TTL_SECS))),
        "{ttl:?}"
    );
    let orders = index_specs(dst, DB_A, "orders").await?;
    let names: Vec<&str> = orders
        .iter()
        .filter_map(|s| s.get_str("name").ok())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("held_")),
        "an aborted index build exists on the destination: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("built_")),
        "the completed index builds exist: {names:?}"
    );
    Ok(())
}
