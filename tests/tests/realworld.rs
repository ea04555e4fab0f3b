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

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_e2e::realistic::{
    assert_natural_order_equal, assert_restored_indexes, seed_source, source_ttl_caught_up, Rng,
    Writer, DATABASES, DB_A, TTL_INTERVAL,
};
use ferry_e2e::{assert_same, phase, state, World};
use ferry_proto::v1 as pb;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;

const MINUTE: Duration = Duration::from_secs(60);

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
    source_ttl_caught_up(&world.source_client).await?;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn realistic_writer_migrates_byte_for_byte_with_source_indexes() -> anyhow::Result<()> {
    realistic_migration(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn realistic_writer_survives_agent_kills() -> anyhow::Result<()> {
    realistic_migration(true).await
}
