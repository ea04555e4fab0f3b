#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are assertions
//! Failure handling: spool cap, a source oplog that rolled past the resume point, rollback of exactly
//! what the task created, transient connection cuts that recover, and operator-actionable errors.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use common::*;
use ferry_engine::{rollback, EngineError, Outcome, Phase};
use mongodb::bson::{doc, Document};
use mongodb::Client;

async fn seed(src: &Client, n: i32) -> Result<()> {
    let c = src.database("app").collection::<Document>("items");
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        c.insert_many(
            chunk
                .iter()
                .map(|i| doc! {"_id": *i, "pad": "x".repeat(100)})
                .collect::<Vec<_>>(),
        )
        .await?;
    }
    Ok(())
}

async fn churn(src: &Client, from: i32, n: i32) -> Result<()> {
    let c = src.database("app").collection::<Document>("churn");
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(200) {
        c.insert_many(
            chunk
                .iter()
                .map(|i| doc! {"_id": *i, "pad": "y".repeat(1000)})
                .collect::<Vec<_>>(),
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_cap_fails_the_task_with_the_reason() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    seed(&p.src, 2000).await?;
    let mut config = p.config(&["app"]);
    config.tuning.spool_cap_bytes = 100_000;
    config.tuning.copy_workers = 1;
    config.tuning.docs_per_range = 100;
    p.dest
        .faults()
        .delay_replies(Some(Duration::from_millis(20)));
    let run = start(config, None);
    run.wait_for("copy started", Duration::from_secs(30), |s| {
        s.phases.contains(&Phase::DataSync)
    })
    .await?;
    churn(&p.src, 0, 400).await?;
    let err = run
        .finish(Duration::from_secs(60))
        .await?
        .expect_err("must fail");
    assert!(matches!(err, EngineError::SpoolFull { .. }), "{err}");
    assert!(!err.resumable());
    assert!(err.to_string().contains("spool_cap_bytes"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_point_rolled_off_the_source_oplog_fails_clearly() -> Result<()> {
    init_tracing();
    let p = pair_with_oplog(256 << 10).await?;
    seed(&p.src, 1000).await?;
    let mut config = p.config(&["app"]);
    config.tuning.copy_workers = 1;
    config.tuning.docs_per_range = 100;
    p.dest
        .faults()
        .delay_replies(Some(Duration::from_millis(20)));
    let run = start(config.clone(), None);
    run.wait_for("a range done", Duration::from_secs(30), |s| {
        s.checkpoints.len() >= 3
    })
    .await?;
    run.control.stop();
    let cp = run.last_checkpoint().expect("checkpoint");
    let _ = run.finish(Duration::from_secs(30)).await?;
    p.dest.faults().clear();
    // While the agent is down the source writes far more than its 256 KiB oplog holds.
    churn(&p.src, 0, 1000).await?;
    let run = start(config, Some(cp));
    let err = run
        .finish(Duration::from_secs(60))
        .await?
        .expect_err("must fail");
    assert!(matches!(err, EngineError::OplogRolledOver { .. }), "{err}");
    assert!(err.to_string().contains("oplog"), "{err}");
    assert!(!err.resumable());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_then_rollback_drops_exactly_what_the_task_created() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    seed(&p.src, 500).await?;
    p.src
        .database("app")
        .collection::<Document>("shared")
        .insert_one(doc! {"_id": 1})
        .await?;
    p.src
        .database("app")
        .run_command(doc! {"create": "v", "viewOn": "items", "pipeline": []})
        .await?;
    // Pre-existing on the destination: must survive.
    p.dst
        .database("app")
        .collection::<Document>("shared")
        .insert_one(doc! {"_id": 1})
        .await?;
    p.dst
        .database("keep")
        .collection::<Document>("me")
        .insert_one(doc! {"_id": 1})
        .await?;
    let config = p.config(&["app"]);
    let run = start(config.clone(), None);
    run.wait_for("oplog sync", Duration::from_secs(30), |s| {
        s.phases.contains(&Phase::OplogSync)
    })
    .await?;
    // A collection created on the source during OPLOG_SYNC is created (and later rolled back) too.
    p.src
        .database("app")
        .collection::<Document>("later")
        .insert_one(doc! {"_id": 1})
        .await?;
    run.wait_for("later created", Duration::from_secs(30), |s| {
        s.checkpoints
            .last()
            .is_some_and(|c| String::from_utf8_lossy(&c.engine_state).contains("app.later"))
    })
    .await?;
    run.control.stop();
    let cp = run.last_checkpoint();
    assert!(matches!(
        run.finish(Duration::from_secs(30)).await??,
        Outcome::Stopped
    ));
    let mut dropped = rollback(&config, cp.as_ref()).await?;
    dropped.sort();
    // The view's creation also created `app.system.views` on the destination (as on a real server).
    assert_eq!(
        dropped,
        vec!["app.items", "app.later", "app.system.views", "app.v"]
    );
    let names = p.dst.database("app").list_collection_names().await?;
    assert_eq!(names, vec!["shared".to_string()]);
    assert_eq!(
        p.dst.database("keep").list_collection_names().await?,
        vec!["me".to_string()]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cuts_on_both_sides_recover() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    seed(&p.src, 3000).await?;
    let mut config = p.config(&["app"]);
    config.tuning.docs_per_range = 200;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let src = p.src.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = src.database("app").collection::<Document>("items");
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                c.update_one(doc! {"_id": i % 3000}, doc! {"$set": {"w": i}})
                    .await?;
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(i)
        })
    };
    // Destination cut during the copy: every insert closes the connection for a while.
    p.dest.faults().close_on_command("insert", None);
    let run = start(config, None);
    run.wait_for("copy started", Duration::from_secs(30), |s| {
        s.phases.contains(&Phase::DataSync)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.dest.faults().clear();
    run.wait_for("oplog sync", Duration::from_secs(60), |s| {
        s.phases.contains(&Phase::OplogSync)
    })
    .await?;
    // Source cut during OPLOG_SYNC: the oplog tail and every read fail for a while.
    p.source.faults().close_on_command("getMore", None);
    p.source.faults().close_on_command("find", None);
    p.source.faults().drop_connections();
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.source.faults().clear();
    stop.store(true, Ordering::SeqCst);
    writer.await??;
    run.control.request_complete();
    let out = run.finish(Duration::from_secs(60)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    assert_equal(&p, &["app"]).await?;
    Ok(())
}

/// Updates `app.items` (ids below `n`) every 2 ms until `stop`; returns how many it wrote.
fn spawn_updater(
    src: Client,
    stop: Arc<AtomicBool>,
    n: i32,
) -> tokio::task::JoinHandle<Result<i32>> {
    tokio::spawn(async move {
        let c = src.database("app").collection::<Document>("items");
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            c.update_one(doc! {"_id": i % n}, doc! {"$set": {"w": i}})
                .await?;
            i += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::Ok(i)
    })
}

/// Waits (up to `timeout`) until `client` answers a ping again after an outage.
async fn wait_reachable(client: &Client, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match client.database("admin").run_command(doc! {"ping": 1}).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("still unreachable after {timeout:?}: {e}")
            }
            Err(_) => {}
        }
    }
}

/// Inserts `n` documents from `from`, updates and deletes some of the seeded ones: every kind of
/// oplog entry, in `app.items`.
async fn write_changes(src: &Client, from: i32, n: i32) -> Result<()> {
    let c = src.database("app").collection::<Document>("items");
    c.insert_many(
        (from..from + n)
            .map(|i| doc! {"_id": i, "pad": "z".repeat(50)})
            .collect::<Vec<_>>(),
    )
    .await?;
    for i in 0..n {
        c.update_one(
            doc! {"_id": i * 3},
            doc! {"$inc": {"k": 1}, "$set": {"at": from}},
        )
        .await?;
    }
    c.delete_many(doc! {"_id": {"$gte": from / 10, "$lt": from / 10 + n / 4}})
        .await?;
    Ok(())
}

/// Exactly one `retry` note, for a long outage of `side`, naming the budget and no credentials.
fn assert_one_retry_note(seen: &Seen, side: &str) -> String {
    let notes: Vec<&(String, String)> = seen.notes.iter().filter(|(k, _)| k == "retry").collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let detail = &notes[0].1;
    assert!(
        detail.starts_with(&format!("{side} unreachable for "))
            && detail.contains("retrying (budget 120 s): "),
        "{detail}"
    );
    assert!(!detail.contains(PASSWORD), "{detail}");
    detail.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_destination_outage_during_copy_recovers() -> Result<()> {
    init_tracing();
    let began = std::time::Instant::now();
    let p = pair().await?;
    seed(&p.src, 10_000).await?;
    let mut config = p.config(&["app"]);
    config.tuning.docs_per_range = 100;
    config.tuning.copy_workers = 2;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_updater(p.src.clone(), stop.clone(), 10_000);
    // Slow enough that the copy (100 ranges) takes seconds, so the outage finds it running.
    p.dest
        .faults()
        .delay_replies(Some(Duration::from_millis(100)));
    let run = start(config, None);
    run.wait_for("documents copied", Duration::from_secs(30), |s| {
        s.progress
            .last()
            .is_some_and(|p| p.phase == Phase::DataSync && p.documents_copied > 0)
    })
    .await?;
    p.dest.faults().set_outage(true);
    let copy_done = |run: &Run| {
        run.seen
            .lock()
            .unwrap()
            .phases
            .contains(&Phase::IndexCreation)
    };
    assert!(!copy_done(&run), "the copy ended before the outage began");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!copy_done(&run), "the copy went on during the outage");
    assert!(
        !run.handle.is_finished(),
        "the engine gave up during the outage"
    );
    p.dest.faults().set_outage(false);
    p.dest.faults().delay_replies(None);
    run.wait_for("oplog sync", Duration::from_secs(60), |s| {
        s.phases.contains(&Phase::OplogSync)
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    let updates = writer.await??;
    run.control.request_complete();
    let seen = run.seen.clone();
    let out = run.finish(Duration::from_secs(60)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    wait_reachable(&p.dst, Duration::from_secs(30)).await?;
    assert_equal(&p, &["app"]).await?;
    // The operator heard of the outage once, without credentials; the retries were counted.
    let note = assert_one_retry_note(&seen.lock().unwrap(), "destination");
    let Outcome::Completed(done) = out else {
        unreachable!()
    };
    assert!(done.progress.retries > 0);
    println!("note: {note}; {} retries", done.progress.retries);
    println!(
        "a_30_second_destination_outage_during_copy_recovers: {updates} concurrent updates, {:.1}s",
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_source_outage_during_oplog_sync_recovers() -> Result<()> {
    init_tracing();
    let began = std::time::Instant::now();
    let p = pair().await?;
    seed(&p.src, 3000).await?;
    let run = start(p.config(&["app"]), None);
    run.wait_for("oplog sync", Duration::from_secs(60), |s| {
        s.phases.contains(&Phase::OplogSync)
    })
    .await?;
    // Changes still being tailed when the source disappears.
    write_changes(&p.src, 100_000, 400).await?;
    p.source.faults().set_outage(true);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        !run.handle.is_finished(),
        "the engine gave up during the outage"
    );
    p.source.faults().set_outage(false);
    wait_reachable(&p.src, Duration::from_secs(30)).await?;
    write_changes(&p.src, 200_000, 400).await?;
    run.control.request_complete();
    let seen = run.seen.clone();
    let out = run.finish(Duration::from_secs(60)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    let note = assert_one_retry_note(&seen.lock().unwrap(), "source");
    println!("note: {note}");
    for id in [100_000, 100_399, 200_000, 200_399] {
        let found = p
            .dst
            .database("app")
            .collection::<Document>("items")
            .find_one(doc! {"_id": id})
            .await?;
        assert!(found.is_some(), "write {id} missing on the destination");
    }
    assert_equal(&p, &["app"]).await?;
    println!(
        "a_30_second_source_outage_during_oplog_sync_recovers: {:.1}s",
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_retry_budget_fails_resumable() -> Result<()> {
    init_tracing();
    let began = std::time::Instant::now();
    let p = pair().await?;
    seed(&p.src, 3000).await?;
    let mut config = p.config(&["app"]);
    config.tuning.retry_budget = Duration::from_secs(2);
    config.tuning.docs_per_range = 100;
    config.tuning.copy_workers = 2;
    p.dest
        .faults()
        .delay_replies(Some(Duration::from_millis(100)));
    let run = start(config.clone(), None);
    run.wait_for("a range copied", Duration::from_secs(30), |s| {
        s.checkpoints.len() >= 3
    })
    .await?;
    // The outage lasts until the engine gives up.
    p.dest.faults().set_outage(true);
    let cut = std::time::Instant::now();
    let seen = run.seen.clone();
    let err = run
        .finish(Duration::from_secs(60))
        .await?
        .expect_err("must fail once the budget is spent");
    let gave_up_after = cut.elapsed();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Unavailable { .. }), "{msg}");
    assert!(err.resumable(), "{msg}");
    assert!(msg.starts_with("destination unreachable"), "{msg}");
    assert!(msg.contains("retry budget (2s)"), "{msg}");
    assert!(
        msg.contains("restore connectivity to the destination")
            && msg.contains("StartTask")
            && msg.contains("resume from its last checkpoint"),
        "{msg}"
    );
    // Changes made while the task is down come from the oplog after the resume.
    write_changes(&p.src, 100_000, 300).await?;
    p.dest.faults().set_outage(false);
    p.dest.faults().delay_replies(None);

    let cp = seen.lock().unwrap().checkpoints.last().cloned();
    let cp = cp.expect("a checkpoint before the failure");
    assert_eq!(cp.phase, Phase::DataSync);
    let run = start(config, Some(cp));
    run.wait_for("oplog sync", Duration::from_secs(60), |s| {
        s.phases.contains(&Phase::OplogSync)
    })
    .await?;
    run.control.request_complete();
    let out = run.finish(Duration::from_secs(60)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    wait_reachable(&p.dst, Duration::from_secs(30)).await?;
    assert_equal(&p, &["app"]).await?;
    println!(
        "an_outage_longer_than_the_retry_budget_fails_resumable: gave up {:.1}s into the outage, {:.1}s in all; {msg}",
        gave_up_after.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    Ok(())
}
