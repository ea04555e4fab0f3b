#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are assertions
//! Crash and resume: the engine is stopped mid DATA_SYNC and mid OPLOG_SYNC (as a killed agent would
//! be) and a new run continues from the last `Checkpoint` event; the final state still equals the source.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use common::*;
use ferry_engine::{Outcome, Phase};
use mongodb::bson::{doc, Document};
use mongodb::Client;

async fn seed(src: &Client, n: i32) -> Result<()> {
    let c = src.database("app").collection::<Document>("items");
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        c.insert_many(
            chunk
                .iter()
                .map(|i| doc! {"_id": *i, "v": *i, "pad": "x".repeat(200)})
                .collect::<Vec<_>>(),
        )
        .await?;
    }
    src.database("app")
        .collection::<Document>("small")
        .insert_one(doc! {"_id": "a", "v": 1})
        .await?;
    Ok(())
}

fn spawn_writer(
    src: Client,
    stop: Arc<AtomicBool>,
    base: i32,
) -> tokio::task::JoinHandle<Result<i32>> {
    tokio::spawn(async move {
        let c = src.database("app").collection::<Document>("items");
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            c.insert_one(doc! {"_id": base + i, "v": -1}).await?;
            c.update_one(
                doc! {"_id": i % 3000},
                doc! {"$inc": {"v": 1}, "$set": {"w": i}},
            )
            .await?;
            c.delete_one(doc! {"_id": (i * 7) % 3000 + 1}).await?;
            i += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(i)
    })
}

/// Waits for an OPLOG_SYNC checkpoint with an applied position, stops the run there (a crash, as far as the resume
/// is concerned) and returns the newest such checkpoint.
async fn stop_at_an_oplog_checkpoint(run: Run) -> Result<ferry_engine::Checkpoint> {
    run.wait_for("an oplog checkpoint", Duration::from_secs(60), |s| {
        s.checkpoints
            .iter()
            .any(|c| c.phase == Phase::OplogSync && c.last_applied.is_some())
    })
    .await?;
    run.control.stop();
    let seen = run.seen.clone();
    assert!(matches!(
        run.finish(Duration::from_secs(30)).await??,
        Outcome::Stopped
    ));
    let cp = seen
        .lock()
        .unwrap()
        .checkpoints
        .iter()
        .rev()
        .find(|c| c.phase == Phase::OplogSync)
        .cloned()
        .expect("oplog checkpoint");
    Ok(cp)
}

/// Waits until the resumed run applied entries past `cp` (the application's writes after the crash).
async fn applied_past(run: &Run, cp: &ferry_engine::Checkpoint) -> Result<()> {
    run.wait_for(
        "entries applied after the resume",
        Duration::from_secs(30),
        |s| {
            s.checkpoints
                .iter()
                .any(|c| c.phase == Phase::OplogSync && c.last_applied > cp.last_applied)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_crash_in_data_sync_and_in_oplog_sync() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    seed(&p.src, 3000).await?;
    let mut config = p.config(&["app"]);
    config.tuning.docs_per_range = 150;
    config.tuning.copy_workers = 1;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(p.src.clone(), stop.clone(), 100_000);

    // Slow the destination so DATA_SYNC can be interrupted after a few ranges.
    p.dest
        .faults()
        .delay_replies(Some(Duration::from_millis(15)));
    let run = start(config.clone(), None);
    run.wait_for("a few ranges done", Duration::from_secs(60), |s| {
        s.checkpoints
            .iter()
            .filter(|c| c.phase == Phase::DataSync)
            .count()
            >= 6
    })
    .await?;
    run.control.stop();
    let cp = run.last_checkpoint().expect("checkpoint");
    assert!(matches!(
        run.finish(Duration::from_secs(30)).await??,
        Outcome::Stopped
    ));
    assert_eq!(cp.phase, Phase::DataSync);
    let state = String::from_utf8_lossy(&cp.engine_state).to_string();
    let done_before = state.matches("\"done\":true").count();
    let total_ranges = state.matches("\"done\":").count();
    assert!(
        done_before >= 1 && total_ranges > done_before,
        "{done_before}/{total_ranges}"
    );
    p.dest.faults().clear();

    // Second run: resumes DATA_SYNC, then is "killed" in OPLOG_SYNC.
    let run = start(config.clone(), Some(cp));
    run.wait_for("oplog sync", Duration::from_secs(60), |s| {
        s.phases.contains(&Phase::OplogSync)
    })
    .await?;
    {
        let s = run.seen.lock().unwrap();
        assert!(!s.phases.is_empty() && s.phases[0] == Phase::DataSync);
        // Only unfinished ranges are copied again: one checkpoint per re-copied range, plus one
        // after collection creation.
        let again = s
            .checkpoints
            .iter()
            .filter(|c| c.phase == Phase::DataSync)
            .count();
        assert!(
            again <= 1 + total_ranges - done_before,
            "{again} DataSync checkpoints, {done_before} of {total_ranges} ranges were done"
        );
    }
    let cp = stop_at_an_oplog_checkpoint(run).await?;

    // Third run: resumes OPLOG_SYNC from last_applied while the writer keeps going, then cuts over.
    let run = start(config, Some(cp.clone()));
    run.wait_for("oplog sync", Duration::from_secs(30), |s| {
        s.phases.contains(&Phase::OplogSync)
    })
    .await?;
    assert_eq!(run.seen.lock().unwrap().phases, vec![Phase::OplogSync]);
    applied_past(&run, &cp).await?;
    stop.store(true, Ordering::SeqCst);
    let rounds = writer.await??;
    assert!(rounds > 10);
    run.control.request_complete();
    let out = run.finish(Duration::from_secs(60)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    assert_equal(&p, &["app"]).await?;
    Ok(())
}

/// A spool segment's file name (`spool::seg_path`).
fn segment(dir: &std::path::Path, id: u64) -> std::path::PathBuf {
    dir.join(format!("oplog-{id:010}.bson"))
}

/// The torn entry a crash left in the first segment.
fn torn_entry() -> Vec<u8> {
    let entry = mongodb::bson::RawDocumentBuf::try_from(
        &doc! {"op": "i", "ns": "app.items", "o": {"_id": -42, "v": "garbage"}},
    )
    .unwrap()
    .into_bytes();
    entry[..entry.len() / 2].to_vec()
}

/// What a crash leaves in the task's spool dir (`<spool_dir>/<task id>`, where the engine spools): the first
/// segment cut in the middle of an entry, and a second segment of garbage.
fn tear_the_spool(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(segment(dir, 1), torn_entry()).unwrap();
    std::fs::write(segment(dir, 2), [0xff_u8; 300]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_spool_left_by_a_crash_is_discarded_and_the_resume_refetches_from_the_source(
) -> Result<()> {
    init_tracing();
    let p = pair().await?;
    seed(&p.src, 500).await?;
    let config = p.config(&["app"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(p.src.clone(), stop.clone(), 200_000);
    let run = start(config.clone(), None);
    // Where the engine spools: the torn segments below go exactly there.
    let spool = config.spool_dir.join(&config.task_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !segment(&spool, 1).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine never spooled into {}",
            spool.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cp = stop_at_an_oplog_checkpoint(run).await?;
    // The crash tore the spool; the source kept writing meanwhile.
    tear_the_spool(&spool);

    // The resume starts a fresh spool from the checkpoint's source position: the torn bytes are never applied.
    let run = start(config, Some(cp.clone()));
    run.wait_for("oplog sync", Duration::from_secs(30), |s| {
        s.phases.contains(&Phase::OplogSync)
    })
    .await?;
    applied_past(&run, &cp).await?;
    // The engine spools in that directory: it replaced what the crash left there.
    assert_ne!(std::fs::read(segment(&spool, 1)).ok(), Some(torn_entry()));
    assert_ne!(
        std::fs::read(segment(&spool, 2)).ok(),
        Some(vec![0xff_u8; 300])
    );
    stop.store(true, Ordering::SeqCst);
    writer.await??;
    run.control.request_complete();
    let out = run.finish(Duration::from_secs(60)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    assert_equal(&p, &["app"]).await?;
    let garbage = p
        .dst
        .database("app")
        .collection::<Document>("items")
        .count_documents(doc! {"_id": -42})
        .await?;
    assert_eq!(
        garbage, 0,
        "an entry from the torn spool reached the destination"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_checkpoint_fails_clearly_and_changes_nothing() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    seed(&p.src, 200).await?;
    let config = p.config(&["app"]);
    let run = start(config.clone(), None);
    let good = stop_at_an_oplog_checkpoint(run).await?;
    let before = p
        .dst
        .database("app")
        .collection::<Document>("items")
        .count_documents(doc! {})
        .await?;
    // Bytes flipped, cut short, or replaced: each resume fails with a checkpoint error before touching anything.
    let mut flipped = good.clone();
    flipped.engine_state[0] ^= 0x5a;
    let mut cut = good.clone();
    cut.engine_state.truncate(good.engine_state.len() / 3);
    let mut garbage = good.clone();
    garbage.engine_state = vec![0xff; 64];
    for (what, cp) in [("flipped", flipped), ("cut", cut), ("garbage", garbage)] {
        let run = start(config.clone(), Some(cp));
        let error = match run.finish(Duration::from_secs(30)).await? {
            Err(error) => error.to_string(),
            Ok(out) => panic!("{what}: a corrupted checkpoint was accepted: {out:?}"),
        };
        assert!(
            error.to_lowercase().contains("checkpoint"),
            "{what}: {error}"
        );
    }
    let after = p
        .dst
        .database("app")
        .collection::<Document>("items")
        .count_documents(doc! {})
        .await?;
    assert_eq!(before, after, "a bad checkpoint changed the destination");
    Ok(())
}
