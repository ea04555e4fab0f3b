//! Resumption: a run cancelled after some ranges finished resumes from its last checkpoint without
//! reading the finished ranges again (counted with the source's `find` commands), and still
//! compares every document.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{copy_db, pair, start_with};
use ferry_verify::{Mode, VerifyControl, VerifyError, VerifyEvent, VerifyStatus};
use mongodb::bson::{doc, Document};

const DOCS: i32 = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_does_not_reread_finished_ranges() {
    common::init_tracing();
    let p = pair().await.unwrap();
    let docs: Vec<Document> = (0..DOCS).map(|i| doc! {"_id": i, "v": i}).collect();
    p.src
        .database("r")
        .collection::<Document>("c")
        .insert_many(docs)
        .await
        .unwrap();
    copy_db(&p, "r").await.unwrap();
    let mut cfg = p.config(&["r"], Mode::Full);
    cfg.tuning.docs_per_range = 200;
    cfg.parallelism = 1;

    // Cancelled from the event stream once 6 ranges are done.
    let first = start_with(cfg.clone(), None, None, VerifyControl::new(), |ev, ctl| {
        if let VerifyEvent::Checkpoint(c) = ev {
            if c.ranges_done >= 6 {
                ctl.cancel();
            }
        }
    });
    let (res, seen) = first.finish(Duration::from_secs(60)).await.unwrap();
    assert!(matches!(res, Err(VerifyError::Cancelled)), "{res:?}");
    let cp = seen.checkpoints.last().cloned().unwrap();
    assert!(
        cp.ranges_done >= 6 && cp.ranges_done < cp.ranges_total,
        "{} of {}",
        cp.ranges_done,
        cp.ranges_total
    );
    // Ranges are split at sampled points: about 200 documents each.
    assert!(cp.documents_compared > 0 && cp.documents_compared < DOCS as u64);

    let before = p.source_finds().await.unwrap();
    let second = start_with(cfg, Some(cp.clone()), None, VerifyControl::new(), |_, _| {});
    let (res, _) = second.finish(Duration::from_secs(60)).await.unwrap();
    let report = res.unwrap();
    let after = p.source_finds().await.unwrap();
    assert_eq!(report.status, VerifyStatus::Passed, "{}", report.summary);
    assert_eq!(report.progress.documents_compared, DOCS as u64);
    // One source `find` per unfinished range, none for the finished ones.
    assert_eq!(
        (after - before) as u64,
        cp.ranges_total - cp.ranges_done,
        "finds in the resumed run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_is_rejected_with_a_clear_error() {
    let p = pair().await.unwrap();
    let cfg = p.config(&["r"], Mode::Full);
    let cp = ferry_verify::VerifyCheckpoint {
        phase: ferry_verify::VerifyPhase::Documents,
        ranges_done: 0,
        ranges_total: 0,
        documents_compared: 0,
        verify_state: b"{\"v\":42}".to_vec(),
    };
    let run = start_with(cfg, Some(cp), None, VerifyControl::new(), |_, _| {});
    let (res, _) = run.finish(Duration::from_secs(30)).await.unwrap();
    let err = res.unwrap_err();
    assert!(matches!(err, VerifyError::BadCheckpoint(_)), "{err}");
    assert!(err.to_string().contains("from scratch"), "{err}");
}
