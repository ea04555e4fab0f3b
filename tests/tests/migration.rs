//! End-to-end migrations through the gRPC API: every BSON type under a concurrent writer, agent SIGKILLs in both
//! long phases, StopTask's rollback, failures that must never be reported as success, and a resumable failure
//! resumed by StartTask.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_e2e::{assert_same, phase, seed_every_type, state, write_round, World};
use ferry_proto::v1 as pb;
use mongodb::bson::{doc, Document};
use mongodb::options::{CreateCollectionOptions, IndexOptions};
use mongodb::IndexModel;

const MINUTE: Duration = Duration::from_secs(60);

/// Collections with options, views and indexes of every kind the engine must reproduce.
async fn seed_app(world: &World, things: i32) -> anyhow::Result<()> {
    let src = &world.source_client;
    let app = src.database("app");
    app.create_collection("capped_log")
        .capped(true)
        .size(1024 * 1024)
        .max(1000)
        .await?;
    app.create_collection("validated")
        .validator(doc! { "n": { "$exists": true } })
        .await?;
    app.create_collection("things").await?;
    seed_every_type(src, "app", "things", things).await?;
    let capped = app.collection::<Document>("capped_log");
    capped
        .insert_many((0..50).map(|i| doc! { "_id": i, "line": format!("log {i}") }))
        .await?;
    app.collection::<Document>("validated")
        .insert_many((0..20).map(|i| doc! { "_id": i, "n": i }))
        .await?;
    let things_coll = app.collection::<Document>("things");
    things_coll
        .create_index(
            IndexModel::builder()
                .keys(doc! { "int64": 1 })
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .partial_filter_expression(doc! { "int64": { "$exists": true } })
                        .name("unique_int64".to_string())
                        .build(),
                )
                .build(),
        )
        .await?;
    things_coll
        .create_index(
            IndexModel::builder()
                .keys(doc! { "tags": 1 })
                .options(IndexOptions::builder().sparse(true).build())
                .build(),
        )
        .await?;
    things_coll
        .create_index(
            IndexModel::builder()
                .keys(doc! { "date": -1 })
                .options(
                    IndexOptions::builder()
                        .expire_after(Duration::from_secs(10 * 365 * 86_400))
                        .build(),
                )
                .build(),
        )
        .await?;
    let opts = CreateCollectionOptions::builder()
        .view_on("things".to_string())
        .pipeline(vec![doc! { "$match": { "bool": true } }])
        .build();
    app.create_collection("even_things")
        .with_options(opts)
        .await?;
    let other = src.database("other").collection::<Document>("plain");
    other
        .insert_many((0..2000).map(|i| doc! { "_id": i, "v": i, "pad": "x".repeat(200) }))
        .await?;
    Ok(())
}

/// A concurrent application: write rounds on the source until finished, counted.
struct Writer {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicI32>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Writer {
    fn start(world: &World) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicI32::new(0));
        let client = world.source_client.clone();
        let handle = tokio::spawn({
            let (stop, rounds) = (stop.clone(), rounds.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let round = rounds.load(Ordering::Relaxed);
                    write_round(&client, "app", round).await?;
                    rounds.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            }
        });
        Self {
            stop,
            rounds,
            handle,
        }
    }

    fn rounds(&self) -> i32 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Waits (a minute at most) until at least `at_least` rounds are written.
    async fn until(&self, at_least: i32) {
        let deadline = tokio::time::Instant::now() + MINUTE;
        while self.rounds() < at_least && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for `n` more rounds than written so far.
    async fn more(&self, n: i32) {
        self.until(self.rounds() + n).await;
    }

    /// The application stops writing (cut-over); its errors fail the test.
    async fn finish(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await?
    }
}

/// Waits for OPLOG_SYNC, lets the writer write `rounds` more rounds, stops it, completes the task and checks that
/// the destination equals the source.
async fn writes_then_complete_and_compare(
    world: &World,
    task_id: &str,
    writer: Writer,
    rounds: i32,
) -> anyhow::Result<(pb::Task, u64)> {
    world
        .wait_task(task_id, 2 * MINUTE, |t| {
            t.phase == phase(pb::TaskPhase::OplogSync)
        })
        .await?;
    writer.more(rounds).await;
    writer.finish().await?;
    let done = complete(world, task_id).await?;
    let compared = assert_same(&world.source_client, &world.dest_client, &["app", "other"]).await?;
    Ok((done, compared))
}

async fn complete(world: &World, task_id: &str) -> anyhow::Result<pb::Task> {
    world
        .api
        .clone()
        .complete_task(pb::CompleteTaskRequest {
            task_id: task_id.to_string(),
            require_verification: false,
        })
        .await?;
    world
        .wait_task(task_id, 2 * MINUTE, |t| {
            t.state == state(pb::TaskState::Succeeded)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bson_type_with_concurrent_writer_ends_byte_for_byte_equal() -> anyhow::Result<()> {
    let world = World::start(256).await?;
    seed_app(&world, 400).await?;
    let task_id = world.create_checked_task(&["app", "other"]).await?;

    let writer = Writer::start(&world);
    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await?;
    let (done, compared) = writes_then_complete_and_compare(&world, &task_id, writer, 12).await?;
    let progress = done.progress.unwrap_or_default();
    assert!(
        progress.documents_copied > 0,
        "final progress has copied documents: {progress:?}"
    );
    assert!(compared > 2400, "compared {compared} documents");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sigkilled_in_data_sync_and_in_oplog_sync_resumes_and_ends_equal(
) -> anyhow::Result<()> {
    let mut world = World::start(256).await?;
    seed_app(&world, 3000).await?;
    let task_id = world.create_checked_task(&["app", "other"]).await?;
    let writer = Writer::start(&world);

    // Slow the source's cursors down so DATA_SYNC lasts long enough to be interrupted, and kill the agent as
    // soon as the task is in it (waiting for copied documents to show in a progress report as well made the
    // test miss a short copy under load: the whole copy can land between two reports).
    start_slowed(&world, &task_id, Duration::from_millis(150)).await?;
    let before = world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.phase == phase(pb::TaskPhase::DataSync)
        })
        .await?;
    world.agent.kill9().await?;
    world
        .wait_task(&task_id, MINUTE, |t| !t.agent_connected)
        .await?;
    world.source.faults().clear();
    world.agent.restart().await?;
    let resumed = world
        .wait_task(&task_id, MINUTE, |t| {
            t.agent_connected && t.epoch > before.epoch
        })
        .await?;
    assert_eq!(
        resumed.state,
        state(pb::TaskState::Running),
        "the task keeps running across the agent's death"
    );

    world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.phase == phase(pb::TaskPhase::OplogSync)
        })
        .await?;
    writer.more(5).await;
    let in_oplog = world.get_task(&task_id).await?;
    world.agent.kill9().await?;
    // Writes that land while no agent runs must still arrive.
    writer.more(5).await;
    world.agent.restart().await?;
    world
        .wait_task(&task_id, MINUTE, |t| {
            t.agent_connected && t.epoch > in_oplog.epoch
        })
        .await?;
    writes_then_complete_and_compare(&world, &task_id, writer, 5).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_task_rolls_back_exactly_what_the_task_created() -> anyhow::Result<()> {
    let world = World::start(64).await?;
    seed_app(&world, 200).await?;
    // The destination already has data of its own, in a migrated database and in another one.
    let dst = &world.dest_client;
    dst.database("app")
        .collection::<Document>("preexisting")
        .insert_one(doc! { "_id": 1, "mine": true })
        .await?;
    dst.database("keep")
        .collection::<Document>("existing")
        .insert_one(doc! { "_id": 1 })
        .await?;

    let task_id = world.create_checked_task(&["app", "other"]).await?;
    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await?;
    world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.phase == phase(pb::TaskPhase::OplogSync)
        })
        .await?;
    assert!(ferry_e2e::collections(dst, "app")
        .await?
        .contains(&"things".to_string()));

    world
        .api
        .clone()
        .stop_task(pb::StopTaskRequest {
            task_id: task_id.clone(),
        })
        .await?;
    let stopped = expect_failure(&world, &task_id).await?;
    assert_eq!(stopped.state, state(pb::TaskState::Failed));
    assert!(
        stopped.failure_reason.contains("stopped by operator"),
        "reason: {}",
        stopped.failure_reason
    );

    assert_eq!(
        ferry_e2e::collections(dst, "app").await?,
        vec!["preexisting".to_string()]
    );
    assert_eq!(
        ferry_e2e::collections(dst, "other").await?,
        Vec::<String>::new()
    );
    assert_eq!(
        ferry_e2e::collections(dst, "keep").await?,
        vec!["existing".to_string()]
    );
    let mine = dst
        .database("app")
        .collection::<Document>("preexisting")
        .count_documents(doc! {})
        .await?;
    assert_eq!(mine, 1, "the destination's own documents are untouched");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spool_cap_reached_fails_the_task_with_the_reason() -> anyhow::Result<()> {
    let world = World::start_with(256, &["--spool-cap", "1MiB"]).await?;
    seed_app(&world, 1000).await?;
    let task_id = world.create_checked_task(&["app", "other"]).await?;
    // A slow copy while the application writes several MiB of oplog: more than the 1 MiB spool holds.
    start_slowed(&world, &task_id, Duration::from_millis(200)).await?;
    world
        .wait_task(&task_id, MINUTE, |t| {
            t.phase == phase(pb::TaskPhase::DataSync)
        })
        .await?;
    write_big_documents(&world).await?;
    let failed = expect_failure(&world, &task_id).await?;
    assert!(
        failed.failure_reason.to_lowercase().contains("spool"),
        "reason names the spool: {}",
        failed.failure_reason
    );
    assert!(!failed.resumable, "a full spool cannot be resumed from");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_oplog_rolled_past_the_resume_point_fails_the_task_with_the_reason(
) -> anyhow::Result<()> {
    // A 2 MiB source oplog. The agent dies during DATA_SYNC; while it is away the application writes far more than
    // the oplog holds, so the point the agent must resume from is gone. The task must fail saying so.
    let mut world = World::start(2).await?;
    // Less data than the 2 MiB oplog holds, so the checks pass; the roll-over happens later.
    seed_app(&world, 300).await?;
    let task_id = world.create_checked_task(&["app", "other"]).await?;
    start_slowed(&world, &task_id, Duration::from_millis(150)).await?;
    world
        .wait_task(&task_id, MINUTE, |t| {
            t.phase == phase(pb::TaskPhase::DataSync)
                && t.checkpoint.as_ref().is_some_and(|c| c.start_ts.is_some())
        })
        .await?;
    world.agent.kill9().await?;
    write_big_documents(&world).await?;
    world.source.faults().clear();
    world.agent.restart().await?;
    let failed = expect_failure(&world, &task_id).await?;
    assert!(
        failed.failure_reason.to_lowercase().contains("oplog"),
        "reason names the oplog: {}",
        failed.failure_reason
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_beyond_the_retry_budget_fails_resumable_and_start_task_resumes_it(
) -> anyhow::Result<()> {
    let world = World::start_with(256, &["--retry-budget", "2s"]).await?;
    seed_app(&world, 3000).await?;
    let task_id = world.create_checked_task(&["app", "other"]).await?;
    let writer = Writer::start(&world);
    start_slowed(&world, &task_id, Duration::from_millis(300)).await?;
    // As soon as the engine reports (it runs, preferably still copying: a report with copied documents can come
    // after the whole copy under load).
    world
        .wait_task(&task_id, 2 * MINUTE, |t| t.progress.is_some())
        .await?;

    // The destination goes away for longer than the agent's retry budget.
    world.dest.faults().set_outage(true);
    let failed = world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.state == state(pb::TaskState::Failed)
        })
        .await?;
    assert!(failed.resumable, "an outage is resumable: {failed:?}");
    assert!(
        failed.failure_reason.contains("destination") && failed.failure_reason.contains("resume"),
        "the reason names the destination and says the task can resume: {}",
        failed.failure_reason
    );
    let checkpoint = failed.checkpoint.clone();
    assert!(
        checkpoint.as_ref().is_some_and(|c| c.start_ts.is_some()),
        "the failed task keeps its checkpoint (at least the oplog start point): {checkpoint:?}"
    );

    // Fixed: StartTask resumes the failed task from its checkpoint, with a new assignment.
    world.dest.faults().set_outage(false);
    world.source.faults().clear();
    let resumed = world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(resumed.state, state(pb::TaskState::Running));
    assert!(!resumed.resumable && resumed.failure_reason.is_empty());
    assert_eq!(
        resumed.checkpoint, checkpoint,
        "resume starts from the checkpoint"
    );
    assert!(resumed.epoch > failed.epoch);
    writes_then_complete_and_compare(&world, &task_id, writer, 5).await?;
    Ok(())
}

/// Slows every reply of the source (so DATA_SYNC lasts), then starts the task.
async fn start_slowed(world: &World, task_id: &str, delay: Duration) -> anyhow::Result<()> {
    world.source.faults().delay_replies(Some(delay));
    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.to_string(),
        })
        .await?;
    Ok(())
}

/// About 4 MiB of oplog: 64 documents of 64 KiB in `app.big`.
async fn write_big_documents(world: &World) -> anyhow::Result<()> {
    let big = world
        .source_client
        .database("app")
        .collection::<Document>("big");
    for i in 0..64 {
        big.insert_one(doc! { "_id": i, "blob": "b".repeat(64 * 1024) })
            .await?;
    }
    Ok(())
}

/// Waits for FAILED; success or a timeout fails the test.
async fn expect_failure(world: &World, task_id: &str) -> anyhow::Result<pb::Task> {
    match world
        .wait_task(task_id, 2 * MINUTE, |t| {
            t.state == state(pb::TaskState::Succeeded)
        })
        .await
    {
        Ok(task) => anyhow::bail!("the task was reported as a success: {task:?}"),
        Err(e) if e.to_string().contains("task failed") => world.get_task(task_id).await,
        Err(e) => Err(e),
    }
}
