#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are assertions
//! Operator controls of a running migration: a live throttle of the copy and of the apply (measured from
//! the progress events), pause and resume in DATA_SYNC and in OPLOG_SYNC (the oplog keeps spooling,
//! cut-over waits for the resume), stop while paused, and the figures reported meanwhile.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;
use ferry_engine::{MigrationControl, Outcome, Phase, ProgressSnapshot, Throttle};
use mongodb::bson::{doc, Document};
use mongodb::Client;

const COPY_LIMIT: u64 = 1000;
const APPLY_LIMIT: u64 = 500;
/// Batches read or applied before a limit is set are still written after it: the measured window starts later.
const WARM_UP: Duration = Duration::from_millis(1500);
const WINDOW: Duration = Duration::from_secs(10);

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

/// Inserts `per_tick` documents every 20 ms (one oplog entry each) until `stop`; returns how many.
fn spawn_writer(
    src: Client,
    stop: Arc<AtomicBool>,
    per_tick: i32,
) -> tokio::task::JoinHandle<Result<i32>> {
    tokio::spawn(async move {
        let c = src.database("app").collection::<Document>("live");
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            c.insert_many(
                (n..n + per_tick)
                    .map(|i| doc! {"_id": i, "v": "y".repeat(50)})
                    .collect::<Vec<_>>(),
            )
            .await?;
            n += per_tick;
        }
        Ok(n)
    })
}

/// The rate of `value` between the first progress event at or after `from` and the last at or before
/// `to`: (per second, seconds measured).
fn rate_between(
    s: &Seen,
    from: Instant,
    to: Instant,
    value: impl Fn(&ProgressSnapshot) -> u64,
) -> (f64, f64) {
    let events: Vec<(Instant, u64)> = s
        .progress_at
        .iter()
        .zip(s.progress.iter())
        .filter(|(at, _)| **at >= from && **at <= to)
        .map(|(at, p)| (*at, value(p)))
        .collect();
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        panic!("no progress events in the window");
    };
    let secs = last.0.duration_since(first.0).as_secs_f64();
    assert!(secs > 0.0, "one progress event in the window");
    ((last.1 as f64 - first.1 as f64) / secs, secs)
}

/// The last progress event: (when it arrived, what it says).
fn last_event(run: &Run) -> (Instant, ProgressSnapshot) {
    let s = run.seen.lock().unwrap();
    (
        *s.progress_at.last().expect("a progress event"),
        s.progress.last().cloned().expect("a progress event"),
    )
}

/// Waits until progress events arrive at or after `at` (the events are the clock of the observation).
async fn wait_events_until(run: &Run, what: &str, at: Instant) -> Result<()> {
    let timeout = at.saturating_duration_since(Instant::now()) + Duration::from_secs(20);
    run.wait_for(what, timeout, |s| {
        s.progress_at.last().is_some_and(|t| *t >= at)
    })
    .await
}

fn within(measured: f64, want: f64, share: f64) -> bool {
    (measured - want).abs() <= want * share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_throttle_holds_the_rate_and_lifting_it_restores_the_speed() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let total = 30_000;
    seed(&p.src, total).await?;
    let mut config = p.config(&["app"]);
    config.tuning.docs_per_range = 5_000;
    let run = start(config, None);
    run.wait_for("data sync", Duration::from_secs(30), |s| {
        s.phases.contains(&Phase::DataSync)
    })
    .await?;
    run.control.set_throttle(Throttle {
        copy_documents_per_second: COPY_LIMIT,
        ..Throttle::default()
    });
    assert_eq!(run.control.throttle().copy_documents_per_second, COPY_LIMIT);
    let from = Instant::now() + WARM_UP;
    let to = from + WINDOW;
    wait_events_until(&run, "10 s of throttled copy", to).await?;
    let (throttled, secs) =
        rate_between(&run.seen.lock().unwrap(), from, to, |p| p.documents_copied);
    let (_, last) = last_event(&run);
    assert_eq!(
        last.phase,
        Phase::DataSync,
        "the copy ended while throttled"
    );
    assert!(
        within(throttled, COPY_LIMIT as f64, 0.2),
        "copy at {throttled:.0} docs/s over {secs:.1} s under a limit of {COPY_LIMIT}"
    );
    // The reported rate is the last 10 s, all of it throttled.
    assert!(
        within(last.documents_per_second, COPY_LIMIT as f64, 0.2),
        "reported {:.0} docs/s",
        last.documents_per_second
    );
    assert!(last.eta_seconds.is_some_and(|s| s > 0), "{last:?}");

    // Lifted: the waits owed under the limit end at once.
    let (t0, before) = last_event(&run);
    run.control.set_throttle(Throttle::default());
    let until = Instant::now() + Duration::from_secs(2);
    run.wait_for(
        "2 s of unthrottled copy, or its end",
        Duration::from_secs(30),
        |s| {
            s.progress_at.last().is_some_and(|t| *t >= until)
                || s.progress.last().is_some_and(|p| {
                    p.phase != Phase::DataSync || p.documents_copied >= total as u64
                })
        },
    )
    .await?;
    let (t1, after) = last_event(&run);
    let lifted = (after.documents_copied - before.documents_copied) as f64
        / t1.duration_since(t0).as_secs_f64();
    assert!(
        lifted >= 3.0 * COPY_LIMIT as f64,
        "copy at {lifted:.0} docs/s after lifting the limit"
    );
    run.control.request_complete();
    let out = run.finish(Duration::from_secs(120)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    assert_equal(&p, &["app"]).await?;
    println!(
        "copy throttle {COPY_LIMIT} docs/s: measured {throttled:.0} docs/s over {secs:.1} s (reported {:.0}); lifted: {lifted:.0} docs/s",
        last.documents_per_second
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_throttle_holds_the_rate_and_lifting_it_catches_up() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    seed(&p.src, 500).await?;
    let run = start(p.config(&["app"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(60)).await?;
    run.control.set_throttle(Throttle {
        apply_entries_per_second: APPLY_LIMIT,
        ..Throttle::default()
    });
    // About 1500 entries/s: three times the limit.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(p.src.clone(), stop.clone(), 30);
    let from = Instant::now() + WARM_UP;
    let to = from + WINDOW;
    wait_events_until(&run, "10 s of throttled apply", to).await?;
    let (throttled, secs) = rate_between(&run.seen.lock().unwrap(), from, to, |p| {
        p.oplog_entries_applied
    });
    let (_, last) = last_event(&run);
    assert!(
        within(throttled, APPLY_LIMIT as f64, 0.2),
        "apply at {throttled:.0} entries/s over {secs:.1} s under a limit of {APPLY_LIMIT}"
    );
    assert!(
        within(last.apply_entries_per_second, APPLY_LIMIT as f64, 0.2),
        "reported {:.0} entries/s",
        last.apply_entries_per_second
    );
    // Falling behind, and saying so.
    assert!(
        last.source_entries_per_second > 1.2 * APPLY_LIMIT as f64,
        "the writer wrote {:.0} entries/s",
        last.source_entries_per_second
    );
    assert!(last.oplog_entries_read > last.oplog_entries_applied);
    assert!(
        !last.converging && last.catch_up_eta_seconds.is_none(),
        "{last:?}"
    );
    // The copy ended more than 10 s ago: its rates are 0, not a slowly decaying average.
    assert_eq!(last.documents_per_second, 0.0);
    assert_eq!(last.bytes_per_second, 0.0);
    assert!(last.spool_bytes > 0 && last.spool_full_eta_seconds.is_some());

    stop.store(true, Ordering::SeqCst);
    let written = writer.await?? as u64;
    let (t0, before) = last_event(&run);
    run.control.set_throttle(Throttle::default());
    run.wait_for("caught up", Duration::from_secs(60), |s| {
        s.progress.last().is_some_and(|p| {
            p.oplog_entries_applied >= written && p.oplog_entries_applied == p.oplog_entries_read
        })
    })
    .await?;
    let (t1, after) = last_event(&run);
    let caught_up_in = t1.duration_since(t0).as_secs_f64();
    let lifted = (after.oplog_entries_applied - before.oplog_entries_applied) as f64 / caught_up_in;
    assert!(
        lifted >= 3.0 * APPLY_LIMIT as f64,
        "apply at {lifted:.0} entries/s after lifting the limit"
    );
    assert_eq!(after.catch_up_eta_seconds, Some(0));
    assert!(after.converging);
    assert!(after.retries == 0, "{after:?}");
    run.control.request_complete();
    let out = run.finish(Duration::from_secs(60)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    assert_equal(&p, &["app"]).await?;
    println!(
        "apply throttle {APPLY_LIMIT} entries/s: measured {throttled:.0} entries/s over {secs:.1} s (reported {:.0}, source {:.0}); lifted: {} pending applied in {caught_up_in:.1} s ({lifted:.0} entries/s)",
        last.apply_entries_per_second,
        last.source_entries_per_second,
        after.oplog_entries_applied - before.oplog_entries_applied
    );
    Ok(())
}

/// The time since which `value` has not changed in the paused progress events, if the last one is paused.
fn still_since(s: &Seen, value: impl Fn(&ProgressSnapshot) -> u64) -> Option<(Instant, u64)> {
    let last = s.progress.last().filter(|p| p.paused)?;
    let v = value(last);
    let mut since = *s.progress_at.last()?;
    for (p, at) in s.progress.iter().zip(s.progress_at.iter()).rev() {
        if !p.paused || value(p) != v {
            break;
        }
        since = *at;
    }
    Some((since, v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_the_copy_freezes_it_and_resuming_finishes_it() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    let total = 20_000;
    seed(&p.src, total).await?;
    let mut config = p.config(&["app"]);
    config.tuning.docs_per_range = 2_000;
    // Started with a throttle, so the copy is still running when it is paused.
    let control = MigrationControl::with_throttle(Throttle {
        copy_documents_per_second: 2_000,
        ..Throttle::default()
    });
    let run = start_with(config, None, control);
    run.wait_for("some documents copied", Duration::from_secs(30), |s| {
        s.progress
            .last()
            .is_some_and(|p| p.phase == Phase::DataSync && p.documents_copied >= 2_000)
    })
    .await?;
    run.control.set_paused(true);
    assert!(run.control.is_paused());
    // Batches read before the pause are still written: wait until the copy stands still.
    run.wait_for("the copy stands still", Duration::from_secs(10), |s| {
        still_since(s, |p| p.documents_copied).is_some_and(|(since, _)| {
            s.progress_at
                .last()
                .is_some_and(|t| t.duration_since(since) >= Duration::from_millis(400))
        })
    })
    .await?;
    let (i0, copied) = {
        let s = run.seen.lock().unwrap();
        (
            s.progress.len(),
            s.progress.last().unwrap().documents_copied,
        )
    };
    let until = Instant::now() + Duration::from_secs(2);
    wait_events_until(&run, "2 s paused", until).await?;
    {
        let s = run.seen.lock().unwrap();
        let paused = &s.progress[i0..];
        assert!(paused.len() >= 5, "{} progress events in 2 s", paused.len());
        for e in paused {
            assert!(e.paused && e.phase == Phase::DataSync, "{e:?}");
            assert_eq!(e.documents_copied, copied, "the copy went on while paused");
        }
    }
    assert!(copied < total as u64, "the copy ended before the pause");
    run.control.set_paused(false);
    run.control.set_throttle(Throttle::default());
    run.wait_for("progress in oplog sync", Duration::from_secs(60), |s| {
        s.progress
            .last()
            .is_some_and(|p| p.phase == Phase::OplogSync)
    })
    .await?;
    let (_, after) = last_event(&run);
    assert!(!after.paused);
    assert_eq!(after.documents_copied, total as u64);
    run.control.request_complete();
    let out = run.finish(Duration::from_secs(60)).await??;
    assert!(matches!(out, Outcome::Completed(_)), "{out:?}");
    assert_equal(&p, &["app"]).await?;
    println!("paused the copy at {copied} of {total} documents for 2 s; resumed and completed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_the_apply_keeps_spooling_and_cut_over_waits_for_the_resume() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    seed(&p.src, 500).await?;
    let run = start(p.config(&["app"]), None);
    run.wait_for_oplog_sync(Duration::from_secs(60)).await?;
    run.control.set_paused(true);
    run.wait_for("a paused progress event", Duration::from_secs(10), |s| {
        s.progress.last().is_some_and(|p| p.paused)
    })
    .await?;
    let (i0, t0, base) = {
        let s = run.seen.lock().unwrap();
        (
            s.progress.len() - 1,
            *s.progress_at.last().unwrap(),
            s.progress.last().cloned().unwrap(),
        )
    };
    // 3000 entries written on the source while paused.
    let live = p.src.database("app").collection::<Document>("live");
    for chunk in (0..3000).collect::<Vec<i32>>().chunks(100) {
        live.insert_many(
            chunk
                .iter()
                .map(|i| doc! {"_id": *i, "v": "z".repeat(200)})
                .collect::<Vec<_>>(),
        )
        .await?;
    }
    let spooled_at = t0 + Duration::from_secs(2);
    run.wait_for(
        "the writes spooled, 2 s paused",
        Duration::from_secs(30),
        |s| {
            s.progress_at.last().is_some_and(|t| *t >= spooled_at)
                && s.progress
                    .last()
                    .is_some_and(|p| p.oplog_entries_read >= base.oplog_entries_read + 3000)
        },
    )
    .await?;
    let (_, last) = last_event(&run);
    {
        let s = run.seen.lock().unwrap();
        for e in &s.progress[i0..] {
            assert!(e.paused, "{e:?}");
            assert_eq!(
                e.oplog_entries_applied, base.oplog_entries_applied,
                "applied while paused"
            );
        }
    }
    assert!(
        last.spool_bytes > base.spool_bytes + 3000 * 200,
        "spool {} -> {}",
        base.spool_bytes,
        last.spool_bytes
    );
    assert_eq!(last.apply_entries_per_second, 0.0);
    assert!(last.source_entries_per_second > 0.0);
    assert!(
        !last.converging && last.catch_up_eta_seconds.is_none(),
        "{last:?}"
    );
    assert!(last.spool_full_eta_seconds.is_some(), "{last:?}");
    assert!(last.oplog_headroom_seconds.is_some(), "{last:?}");
    assert_eq!(last.spool_cap_bytes, 256 << 20);

    // Cut-over asked while paused waits for the resume.
    run.control.request_complete();
    let until = Instant::now() + Duration::from_secs(1);
    wait_events_until(&run, "1 s of cut-over requested while paused", until).await?;
    let (_, still) = last_event(&run);
    assert_eq!(still.oplog_entries_applied, base.oplog_entries_applied);
    run.control.set_paused(false);
    let out = run.finish(Duration::from_secs(60)).await??;
    let Outcome::Completed(done) = out else {
        panic!("{out:?}")
    };
    assert!(!done.progress.paused);
    assert!(done.progress.oplog_entries_applied >= base.oplog_entries_applied + 3000);
    assert_eq!(
        done.progress.oplog_entries_applied,
        done.progress.oplog_entries_read
    );
    assert_equal(&p, &["app"]).await?;
    println!(
        "paused apply: spool {} -> {} bytes, read {} -> {} entries, applied stayed {}; completed after resume with {} applied",
        base.spool_bytes,
        last.spool_bytes,
        base.oplog_entries_read,
        last.oplog_entries_read,
        base.oplog_entries_applied,
        done.progress.oplog_entries_applied
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_started_paused_copies_nothing_and_stops_promptly() -> Result<()> {
    init_tracing();
    let p = pair().await?;
    seed(&p.src, 2000).await?;
    let control = MigrationControl::new();
    control.set_paused(true);
    let run = start_with(p.config(&["app"]), None, control);
    run.wait_for("1 s of paused progress", Duration::from_secs(30), |s| {
        s.progress.len() >= 5
    })
    .await?;
    {
        let s = run.seen.lock().unwrap();
        for e in &s.progress {
            assert!(e.paused && e.phase == Phase::DataSync, "{e:?}");
            assert_eq!(e.documents_copied, 0);
        }
    }
    let asked = Instant::now();
    run.control.stop();
    let out = run.finish(Duration::from_secs(10)).await??;
    assert!(matches!(out, Outcome::Stopped), "{out:?}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    Ok(())
}
