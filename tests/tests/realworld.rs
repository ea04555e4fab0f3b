//! End-to-end migrations of a source that behaves like a production application (issue #8): unique values swapped
//! between documents, hot keys, TTL-indexed documents refreshed while the source's TTL monitor deletes the expired
//! ones, a capped collection that evicts, small and >16 MiB multi-document transactions, views created, changed and
//! dropped, cross-database renames, and index builds that complete or are aborted while held by a fail point. The
//! writer runs from before StartTask until just before CompleteTask; afterwards the destination must equal the
//! source: documents byte for byte (capped collections in natural order too), collection options, view definitions
//! and indexes (canonical form, so unique and TTL indexes are back to their source definitions).
//!
//! Every write shape here is one mongosim logs the way a real 7.0 primary does (see crates/mongosim/README.md).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_e2e::{assert_same, phase, state, World};
use ferry_proto::v1 as pb;
use ferry_testkit::mongo::index_specs;
use ferry_testkit::wait_for;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document, RawDocumentBuf, Timestamp};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};

const MINUTE: Duration = Duration::from_secs(60);
const DB_A: &str = "rw_a";
const DB_B: &str = "rw_b";
const DATABASES: [&str; 2] = [DB_A, DB_B];
const USERS: i64 = 300;
const ORDERS: i64 = 3000;
/// `expireAfterSeconds` of `rw_a.sessions.lastSeen`: short, so documents expire for real during the test.
const SESSION_TTL_SECS: i32 = 2;
/// Sessions whose `lastSeen` is in 2100 ("remember me"): they never expire during the test.
const FOREVER_MS: i64 = 4_102_444_800_000;
/// The source's TTL monitor period.
const TTL_INTERVAL: Duration = Duration::from_millis(250);
/// Size of each document of the >16 MiB transaction (4 of them: 20 MiB).
const BLOB_BYTES: usize = 5 * 1024 * 1024;

/// SplitMix64: a small seeded generator (the test prints its seed; `FERRY_SEED` replays one).
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed_from_env_or_clock() -> u64 {
    std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// The source before the task is created: two databases with every kind of collection the writer touches.
async fn seed_source(src: &Client) -> anyhow::Result<()> {
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
struct Stats {
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
}

impl Stats {
    fn snapshot(&self) -> [u64; 12] {
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
        ]
        .map(|c| c.load(Ordering::SeqCst))
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

/// The application: rounds of production-like writes on the source until told to stop.
struct Writer {
    stop: Arc<AtomicBool>,
    big_txn_requested: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    stats: Arc<Stats>,
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
    fn start(world: &World, seed: u64) -> Self {
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
        let handle = tokio::spawn({
            let (stop, rounds, failure) = (stop.clone(), rounds.clone(), failure.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let round = rounds.load(Ordering::SeqCst);
                    if let Err(e) = ctx.round(round).await {
                        let e = e.context(format!("writer round {round}"));
                        *failure.lock().unwrap() = Some(format!("{e:#}"));
                        return Err(e);
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
            failure,
            handle,
        }
    }

    /// Fails when the writer stopped on an error.
    fn check(&self) -> anyhow::Result<()> {
        if let Some(e) = self.failure.lock().unwrap().as_ref() {
            bail!("the writer failed: {e}");
        }
        if self.handle.is_finished() && !self.stop.load(Ordering::SeqCst) {
            bail!("the writer stopped early");
        }
        Ok(())
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Waits until `n` more rounds are written (the writer's own failure ends the wait).
    async fn more(&self, n: u64) -> anyhow::Result<()> {
        let target = self.rounds() + n;
        wait_for(MINUTE, || async move {
            self.check()?;
            Ok((self.rounds() >= target).then_some(()))
        })
        .await
        .with_context(|| format!("waiting for writer round {target}"))
    }

    /// Waits until every kind of write happened again after `since` (a [`Stats::snapshot`]).
    async fn every_kind_since(&self, since: [u64; 12]) -> anyhow::Result<()> {
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
    async fn finish(self) -> anyhow::Result<Arc<Stats>> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await??;
        Ok(self.stats)
    }
}

impl WriterCtx {
    async fn round(&mut self, round: u64) -> anyhow::Result<()> {
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

/// Prints the task's phase changes (and copied documents) as they happen, for the test's output.
async fn print_timeline(
    world: &World,
    task_id: &str,
    started: Instant,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut watch = world
        .api
        .clone()
        .watch_task(pb::WatchTaskRequest {
            task_id: task_id.to_string(),
        })
        .await?
        .into_inner();
    Ok(tokio::spawn(async move {
        let mut last = (-1, -1);
        while let Ok(Some(t)) = watch.message().await {
            if (t.state, t.phase) != last {
                last = (t.state, t.phase);
                println!(
                    "  [{:>6.2}s] {:?} {:?}, copied {}",
                    started.elapsed().as_secs_f64(),
                    pb::TaskState::try_from(t.state).unwrap_or_default(),
                    pb::TaskPhase::try_from(t.phase).unwrap_or_default(),
                    t.progress.map(|p| p.documents_copied).unwrap_or(0)
                );
            }
        }
    }))
}

/// Waits until the task is in DATA_SYNC with documents copied, then for `updates` more task updates in DATA_SYNC;
/// returns at once if the task is past DATA_SYNC.
async fn wait_copying(world: &World, task_id: &str, updates: usize) -> anyhow::Result<pb::Task> {
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let copying = AtomicBool::new(false);
    world
        .wait_task(task_id, MINUTE, |t| {
            let data_sync = t.phase == phase(pb::TaskPhase::DataSync);
            if !data_sync && t.phase != phase(pb::TaskPhase::Unspecified) {
                return true;
            }
            if !copying.load(Ordering::SeqCst) {
                let copied = t.progress.as_ref().is_some_and(|p| p.documents_copied > 0);
                copying.store(data_sync && copied, Ordering::SeqCst);
                return data_sync && copied && updates == 0;
            }
            seen.fetch_add(1, Ordering::SeqCst) + 1 >= updates
        })
        .await
}

/// Where the agent is SIGKILLed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// In DATA_SYNC, after documents were copied and `updates` more task updates were seen (or as soon as the
    /// phase moved on, if it did first).
    DataSync { updates: usize },
    /// In OPLOG_SYNC, after `rounds` more writer rounds.
    OplogSync { rounds: u64 },
}

fn kill_plan(rng: &mut Rng) -> Vec<KillPoint> {
    let kills = 2 + rng.below(2) as usize;
    let mut plan = vec![KillPoint::DataSync {
        updates: rng.below(3) as usize,
    }];
    if kills == 3 {
        plan.push(if rng.below(2) == 0 {
            KillPoint::DataSync {
                updates: rng.below(3) as usize,
            }
        } else {
            KillPoint::OplogSync {
                rounds: 1 + rng.below(4),
            }
        });
    }
    plan.push(KillPoint::OplogSync {
        rounds: 1 + rng.below(6),
    });
    plan
}

async fn kill_and_restart(world: &mut World, task_id: &str, at: &str) -> anyhow::Result<()> {
    let before = world.get_task(task_id).await?;
    println!(
        "SIGKILL agent at {at}: phase {:?}, copied {}",
        pb::TaskPhase::try_from(before.phase).unwrap_or_default(),
        before
            .progress
            .as_ref()
            .map(|p| p.documents_copied)
            .unwrap_or(0)
    );
    world.agent.kill9().await?;
    world
        .wait_task(task_id, MINUTE, |t| !t.agent_connected)
        .await?;
    world.agent.restart().await?;
    let resumed = world
        .wait_task(task_id, MINUTE, |t| {
            t.agent_connected && t.epoch > before.epoch
        })
        .await?;
    assert_eq!(
        resumed.state,
        state(pb::TaskState::Running),
        "the task keeps running across the agent's death"
    );
    Ok(())
}

/// The whole scenario; `kills` = SIGKILL the agent at seeded random points.
async fn realistic_migration(kills: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = seed_from_env_or_clock();
    println!("seed {seed} (FERRY_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let mut world =
        World::start_configured(256, &[], |source| source.ttl_monitor_interval(TTL_INTERVAL))
            .await?;
    seed_source(&world.source_client).await?;
    let task_id = world.create_checked_task(&DATABASES).await?;

    let writer = Writer::start(&world, seed);
    writer.more(2).await?;
    let plan = if kills {
        kill_plan(&mut rng)
    } else {
        Vec::new()
    };
    println!("kill plan: {plan:?}");
    let data_sync_kills = plan
        .iter()
        .filter(|k| matches!(k, KillPoint::DataSync { .. }))
        .count();
    // Every destination reply delayed, so DATA_SYNC lasts long enough for the application to write during the copy
    // and for the agent to be killed in it (the source, and so the application, runs at full speed).
    world
        .dest
        .faults()
        .delay_replies(Some(Duration::from_millis(400)));
    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await?;
    let timeline = print_timeline(&world, &task_id, started).await?;
    // A >16 MiB transaction once the start point is taken, while the copy runs (or soon after).
    world
        .wait_task(&task_id, MINUTE, |t| {
            t.checkpoint.as_ref().is_some_and(|c| c.start_ts.is_some())
        })
        .await?;
    writer.big_txn_requested.store(true, Ordering::SeqCst);
    if data_sync_kills == 0 {
        let copying = wait_copying(&world, &task_id, 0).await?;
        writer.more(3).await?;
        println!(
            "writer rounds while copying: 3 from {:?}, copied {}",
            pb::TaskPhase::try_from(copying.phase).unwrap_or_default(),
            copying.progress.map(|p| p.documents_copied).unwrap_or(0)
        );
        world.dest.faults().delay_replies(None);
    }

    let mut data_sync_done = 0;
    for (n, point) in plan.iter().enumerate() {
        match *point {
            KillPoint::DataSync { updates } => {
                wait_copying(&world, &task_id, updates).await?;
                kill_and_restart(&mut world, &task_id, &format!("kill {n} ({point:?})")).await?;
                data_sync_done += 1;
                if data_sync_done == data_sync_kills {
                    world.dest.faults().delay_replies(None);
                }
            }
            KillPoint::OplogSync { rounds } => {
                world
                    .wait_task(&task_id, 2 * MINUTE, |t| {
                        t.phase == phase(pb::TaskPhase::OplogSync)
                    })
                    .await?;
                writer.more(rounds).await?;
                kill_and_restart(&mut world, &task_id, &format!("kill {n} ({point:?})")).await?;
            }
        }
    }

    world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.phase == phase(pb::TaskPhase::OplogSync)
        })
        .await?;
    println!("OPLOG_SYNC at {:?}", started.elapsed());
    // Every kind of write twice more while the task is in OPLOG_SYNC, a >16 MiB transaction included.
    for _ in 0..2 {
        let since = writer.stats.snapshot();
        writer.big_txn_requested.store(true, Ordering::SeqCst);
        writer.every_kind_since(since).await?;
    }
    let stats = writer.finish().await?;
    println!(
        "writer stopped at {:?}: {:?}",
        started.elapsed(),
        stats.snapshot()
    );

    // The application is stopped; the sessions it no longer refreshes expire and the source's TTL monitor deletes
    // them (logged like any delete) before the cut-over, so the source is quiescent when compared.
    let sessions = world
        .source_client
        .database(DB_A)
        .collection::<Document>("sessions");
    let sessions = &sessions;
    wait_for(Duration::from_secs(30), || async move {
        let expiring = sessions
            .count_documents(doc! { "lastSeen": { "$lt": DateTime::from_millis(FOREVER_MS) } })
            .await?;
        Ok((expiring == 0).then_some(()))
    })
    .await
    .context("the source's TTL monitor deletes every expired session")?;

    world
        .api
        .clone()
        .complete_task(pb::CompleteTaskRequest {
            task_id: task_id.clone(),
            require_verification: false,
        })
        .await?;
    let done = world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.state == state(pb::TaskState::Succeeded)
        })
        .await?;
    println!("SUCCEEDED at {:?}", started.elapsed());
    let start_ts = done
        .checkpoint
        .as_ref()
        .and_then(|c| c.start_ts.as_ref())
        .map(|t| Timestamp {
            time: t.seconds,
            increment: t.increment,
        })
        .context("the task's start point")?;
    assert_source_logged_every_shape(&world.source_client, start_ts).await?;

    let compared = assert_same(&world.source_client, &world.dest_client, &DATABASES).await?;
    assert_natural_order_equal(&world, DB_A, "events").await?;
    assert_restored_indexes(&world).await?;
    assert!(compared > 4000, "compared {compared} documents");
    let blobs = world
        .dest_client
        .database(DB_A)
        .collection::<Document>("blobs")
        .count_documents(doc! {})
        .await?;
    assert_eq!(blobs, 4, "the last >16 MiB transaction's documents");
    println!(
        "compared {compared} documents; total {:?}",
        started.elapsed()
    );
    timeline.abort();
    Ok(())
}

/// The source's oplog after the task's start point holds every shape the writer is meant to produce, so the
/// migration really had to apply each of them.
async fn assert_source_logged_every_shape(src: &Client, start_ts: Timestamp) -> anyhow::Result<()> {
    let entries: Vec<Document> = src
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! { "ts": { "$gt": start_ts } })
        .projection(doc! { "o.applyOps.o.data": 0 })
        .await?
        .try_collect()
        .await?;
    let sys_views = format!("{DB_A}.system.views");
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in &entries {
        let op = e.get_str("op").unwrap_or("");
        let ns = e.get_str("ns").unwrap_or("");
        let o = e.get_document("o").cloned().unwrap_or_default();
        let mut shape = |name| *counts.entry(name).or_default() += 1;
        match op {
            "c" if o.contains_key("startIndexBuild") => shape("startIndexBuild"),
            "c" if o.contains_key("commitIndexBuild") => shape("commitIndexBuild"),
            "c" if o.contains_key("abortIndexBuild") => shape("abortIndexBuild"),
            "c" if o
                .get_str("renameCollection")
                .is_ok_and(|f| f.starts_with("rw_b.tmp")) =>
            {
                shape("cross-db renameCollection")
            }
            "c" if o.contains_key("applyOps") => {
                if o.get_bool("partialTxn").unwrap_or(false) {
                    shape("partialTxn link");
                } else if e.contains_key("lsid") {
                    shape("transaction applyOps");
                } else if o
                    .get_array("applyOps")
                    .ok()
                    .and_then(|ops| ops.first())
                    .and_then(Bson::as_document)
                    .is_some_and(|d| d.get_str("op").ok() == Some("d"))
                {
                    shape("TTL batched deletes");
                }
            }
            "d" if ns == "rw_a.events" => shape("capped eviction"),
            "i" if ns == sys_views => shape("view insert"),
            "u" if ns == sys_views => shape("view update"),
            "d" if ns == sys_views => shape("view delete"),
            _ => {}
        }
    }
    println!(
        "source oplog since the start point: {} entries, {counts:?}",
        entries.len()
    );
    for shape in [
        "startIndexBuild",
        "commitIndexBuild",
        "abortIndexBuild",
        "cross-db renameCollection",
        "partialTxn link",
        "transaction applyOps",
        "TTL batched deletes",
        "capped eviction",
        "view insert",
        "view update",
        "view delete",
    ] {
        if counts.get(shape).copied().unwrap_or(0) == 0 {
            bail!("the source logged no '{shape}' after the start point: {counts:?}");
        }
    }
    Ok(())
}

/// A capped collection's documents in natural (insertion) order are the same on both sides.
async fn assert_natural_order_equal(world: &World, db: &str, coll: &str) -> anyhow::Result<()> {
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
async fn assert_restored_indexes(world: &World) -> anyhow::Result<()> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn realistic_writer_migrates_byte_for_byte_with_source_indexes() -> anyhow::Result<()> {
    realistic_migration(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn realistic_writer_survives_agent_kills() -> anyhow::Result<()> {
    realistic_migration(true).await
}
