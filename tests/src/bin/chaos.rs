//! `chaos`: a seeded fault campaign against whole migrations (`scripts/chaos --seed S --rounds R [--minutes M]`).
//!
//! Each round starts a mongosim source and destination, a coordinator and an enrolled agent (real processes),
//! seeds the source, runs an application writer during the migration, and injects 1–3 faults at random points of
//! the copy, the live apply, the cut-over and its verification: SIGKILL of the agent, of the coordinator, of both;
//! the agent restarted with an emptied spool dir; source or destination network outages (mongosim's outage fault:
//! connections closed, new ones refused; network namespaces are not used by this first campaign); command errors
//! and slow replies on the source; NotWritablePrimary on the destination's writes. The round ends with
//! CompleteTask with the product's verifier and an independent byte-for-byte comparison. One round in five ends with StopTask instead: the rollback must drop the task's
//! databases and leave a bystander database alone. A round passes when the destination equals the source, when the
//! task failed with a reason and, resumed with StartTask (resumable failures), then ends equal, or when the stop rolled
//! back exactly what the task created. A SUCCEEDED task whose destination differs is a false success: the round
//! fails. Faults aimed at the copy slow it with the product's own throttle so that they land in it. One round in
//! three runs the agent with a 4 s retry budget, so an outage can outlast it: the task then fails resumable and the
//! round resumes it with StartTask.
//!
//! Round `r` of a campaign uses seed `S + r`: `--seed S+r --rounds 1` replays it.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_e2e::{assert_same, phase, seed_every_type, state, write_round, World};
use ferry_proto::v1 as pb;

const MINUTE: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(
    about = "Seeded fault campaign against whole Ferry migrations (mongosim, real processes)"
)]
struct Args {
    /// Seed of the first round (round r uses seed + r).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rounds to run.
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    /// Stop starting new rounds after this many minutes (0: no limit).
    #[arg(long, default_value_t = 0)]
    minutes: u64,
    /// Documents seeded per round.
    #[arg(long, default_value_t = 3000)]
    docs: i32,
}

/// SplitMix64: a small seeded generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Where a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Copy,
    LiveApply,
    Completing,
}

/// What it does.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillAgent,
    KillCoordinator,
    KillBoth,
    AgentEmptySpool,
    SourceOutage(u64),
    DestinationOutage(u64),
    SourceErrors,
    SlowSource,
    /// NotWritablePrimary (10107) on the destination's next writes, as during a failover.
    DestinationNotPrimary,
}

fn plan(rng: &mut Rng) -> Vec<(At, Fault)> {
    let n = 1 + rng.below(3) as usize;
    let mut faults: Vec<(At, Fault)> = (0..n)
        .map(|_| {
            let at = match rng.below(3) {
                0 => At::Copy,
                1 => At::LiveApply,
                _ => At::Completing,
            };
            let fault = match rng.below(9) {
                0 => Fault::KillAgent,
                1 => Fault::KillCoordinator,
                2 => Fault::KillBoth,
                3 => Fault::AgentEmptySpool,
                4 => Fault::SourceOutage(2 + rng.below(6)),
                5 => Fault::DestinationOutage(2 + rng.below(6)),
                6 => Fault::SourceErrors,
                7 => Fault::DestinationNotPrimary,
                _ => Fault::SlowSource,
            };
            (at, fault)
        })
        .collect();
    faults.sort_by_key(|(at, _)| match at {
        At::Copy => 0,
        At::LiveApply => 1,
        At::Completing => 2,
    });
    faults
}

async fn inject(world: &mut World, task_id: &str, fault: Fault) -> anyhow::Result<()> {
    match fault {
        Fault::KillAgent => {
            world.agent.kill9().await?;
            world.agent.restart().await?;
        }
        Fault::KillCoordinator => {
            world.coordinator.kill9().await?;
            world.coordinator.restart().await?;
            world.api = world.coordinator.client().await?;
        }
        Fault::KillBoth => {
            world.agent.kill9().await?;
            world.coordinator.kill9().await?;
            world.coordinator.restart().await?;
            world.api = world.coordinator.client().await?;
            world.agent.restart().await?;
        }
        Fault::AgentEmptySpool => {
            world.agent.kill9().await?;
            let spool = world.agent.data_dir().join("spool").join(task_id);
            if spool.exists() {
                std::fs::remove_dir_all(&spool)?;
            }
            world.agent.restart().await?;
        }
        Fault::SourceOutage(s) => {
            world.source.faults().set_outage(true);
            tokio::time::sleep(Duration::from_secs(s)).await;
            world.source.faults().set_outage(false);
        }
        Fault::DestinationOutage(s) => {
            world.dest.faults().set_outage(true);
            tokio::time::sleep(Duration::from_secs(s)).await;
            world.dest.faults().set_outage(false);
        }
        Fault::SourceErrors => {
            // HostUnreachable (6) on the next reads: retried by the engine.
            world.source.faults().fail_command("getMore", 6, Some(3));
            world.source.faults().fail_command("find", 6, Some(2));
        }
        Fault::DestinationNotPrimary => {
            for command in ["insert", "update", "delete", "bulkWrite"] {
                world.dest.faults().fail_command(command, 10107, Some(2));
            }
        }
        Fault::SlowSource => {
            world
                .source
                .faults()
                .delay_replies(Some(Duration::from_millis(30)));
            tokio::time::sleep(Duration::from_secs(3)).await;
            world.source.faults().delay_replies(None);
        }
    }
    Ok(())
}

/// The application: write rounds until told to stop; errors (outages) are skipped like a retrying app would.
fn start_writer(
    client: mongodb::Client,
) -> (Arc<AtomicBool>, Arc<AtomicI32>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicI32::new(0));
    let (s, r) = (Arc::clone(&stop), Arc::clone(&rounds));
    let task = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            let round = r.load(Ordering::Relaxed);
            if write_round(&client, "app", round).await.is_ok() {
                r.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (stop, rounds, task)
}

async fn wait_at(world: &World, task_id: &str, at: At) -> anyhow::Result<()> {
    match at {
        At::Copy => {
            world
                .wait_task(task_id, 2 * MINUTE, |t| {
                    t.phase != phase(pb::TaskPhase::DataSync)
                        || t.progress.as_ref().is_some_and(|p| p.documents_copied > 0)
                })
                .await?;
        }
        At::LiveApply | At::Completing => {
            world
                .wait_task(task_id, 3 * MINUTE, |t| {
                    t.phase == phase(pb::TaskPhase::OplogSync)
                })
                .await?;
        }
    }
    Ok(())
}

/// The outcome of one round.
enum Outcome {
    /// SUCCEEDED and equal, after `resumes` resumptions of resumable failures.
    Equal { documents: u64, resumes: u32 },
    /// Failed for good with a reason (not resumable): no data was claimed to be migrated.
    FailedClearly(String),
    /// Stopped by the operator: the rollback dropped what the task created and nothing else.
    RolledBack,
}

/// A database on the destination that no task created: a rollback must leave it alone.
const BYSTANDER: &str = "bystander";

async fn complete(world: &mut World, task_id: &str) -> anyhow::Result<pb::Task> {
    let mut api = world.api.clone();
    api.complete_task(pb::CompleteTaskRequest {
        task_id: task_id.to_owned(),
        require_verification: true,
    })
    .await?;
    world
        .wait_task(task_id, 5 * MINUTE, |t| {
            t.state == state(pb::TaskState::Succeeded) || t.state == state(pb::TaskState::Failed)
        })
        .await
}

async fn round(seed: u64, docs: i32) -> anyhow::Result<(Vec<(At, Fault)>, bool, Outcome)> {
    let mut rng = Rng(seed);
    let faults = plan(&mut rng);
    // One round in three runs the agent with a 4 s retry budget: its outages (2-7 s) may then outlast it, the task
    // fails resumable, and the round resumes it with StartTask.
    let short_budget = rng.below(3) == 0;
    let agent_args: &[&str] = if short_budget {
        &["--retry-budget", "4s"]
    } else {
        &[]
    };
    let mut world = World::start_with(64, agent_args).await?;
    seed_every_type(&world.source_client, "app", "things", docs).await?;
    world
        .dest_client
        .database(BYSTANDER)
        .collection::<mongodb::bson::Document>("keep")
        .insert_one(mongodb::bson::doc! { "_id": 1, "note": "not the task's" })
        .await?;
    let task_id = world.create_checked_task(&["app"]).await?;
    let stop_instead = rng.below(5) == 0;
    // A fault aimed at the copy needs a copy long enough to land in: the product's own throttle slows it down.
    let slow_copy = faults.iter().any(|(at, _)| *at == At::Copy);
    if slow_copy {
        world
            .api
            .clone()
            .set_task_throttle(pb::SetTaskThrottleRequest {
                task_id: task_id.clone(),
                throttle: Some(pb::Throttle {
                    copy_documents_per_second: u64::try_from(docs / 3).unwrap_or(1000).max(100),
                    ..Default::default()
                }),
            })
            .await?;
    }
    let (stop, _rounds, writer) = start_writer(world.source_client.clone());
    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await?;
    let mut completing = false;
    let mut last: Option<pb::Task> = None;
    for (at, fault) in &faults {
        wait_at(&world, &task_id, *at).await?;
        if slow_copy && *at != At::Copy {
            world
                .api
                .clone()
                .set_task_throttle(pb::SetTaskThrottleRequest {
                    task_id: task_id.clone(),
                    throttle: Some(pb::Throttle::default()),
                })
                .await?;
        }
        if *at == At::Completing && !completing && !stop_instead {
            stop.store(true, Ordering::Relaxed);
            world
                .api
                .clone()
                .complete_task(pb::CompleteTaskRequest {
                    task_id: task_id.clone(),
                    require_verification: true,
                })
                .await?;
            completing = true;
        }
        inject(&mut world, &task_id, *fault).await?;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    world.source.faults().clear();
    world.dest.faults().clear();
    if slow_copy {
        world
            .api
            .clone()
            .set_task_throttle(pb::SetTaskThrottleRequest {
                task_id: task_id.clone(),
                throttle: Some(pb::Throttle::default()),
            })
            .await?;
    }
    if stop_instead {
        return stop_and_check(&mut world, &task_id)
            .await
            .map(|()| (faults, short_budget, Outcome::RolledBack));
    }
    let mut resumes = 0;
    loop {
        let task = if completing && last.is_none() {
            world
                .wait_task(&task_id, 5 * MINUTE, |t| {
                    t.state == state(pb::TaskState::Succeeded)
                        || t.state == state(pb::TaskState::Failed)
                })
                .await?
        } else {
            if !completing || last.is_some() {
                world
                    .wait_task(&task_id, 3 * MINUTE, |t| {
                        t.phase == phase(pb::TaskPhase::OplogSync)
                    })
                    .await?;
            }
            complete(&mut world, &task_id).await?
        };
        last = Some(task.clone());
        if task.state == state(pb::TaskState::Succeeded) {
            let documents = assert_same(&world.source_client, &world.dest_client, &["app"])
                .await
                .map_err(|e| anyhow::anyhow!("FALSE SUCCESS: the task SUCCEEDED but {e:#}"))?;
            return Ok((faults, short_budget, Outcome::Equal { documents, resumes }));
        }
        anyhow::ensure!(
            !task.failure_reason.is_empty(),
            "the task FAILED without a reason"
        );
        if !task.resumable {
            return Ok((
                faults,
                short_budget,
                Outcome::FailedClearly(task.failure_reason),
            ));
        }
        anyhow::ensure!(
            resumes < 3,
            "still failing after 3 resumptions: {}",
            task.failure_reason
        );
        resumes += 1;
        world
            .api
            .clone()
            .start_task(pb::StartTaskRequest {
                task_id: task_id.clone(),
            })
            .await?;
    }
}

/// StopTask: the task ends FAILED ("stopped by operator") and the destination holds nothing of the task's
/// databases any more, while the bystander database is untouched.
async fn stop_and_check(world: &mut World, task_id: &str) -> anyhow::Result<()> {
    let current = world.get_task(task_id).await?;
    if current.state == state(pb::TaskState::Running)
        || current.state == state(pb::TaskState::Completing)
        || (current.state == state(pb::TaskState::Failed) && current.resumable)
    {
        world
            .api
            .clone()
            .stop_task(pb::StopTaskRequest {
                task_id: task_id.to_owned(),
            })
            .await?;
    }
    let done = world
        .wait_task(task_id, 3 * MINUTE, |t| {
            t.state == state(pb::TaskState::Failed) && !t.resumable
        })
        .await?;
    anyhow::ensure!(
        done.failure_reason.contains("stopped by operator"),
        "the rollback did not finish as a stop: {}",
        done.failure_reason
    );
    let left = world
        .dest_client
        .database("app")
        .list_collection_names()
        .await?;
    anyhow::ensure!(left.is_empty(), "the rollback left {left:?} in app");
    let kept = world
        .dest_client
        .database(BYSTANDER)
        .collection::<mongodb::bson::Document>("keep")
        .count_documents(mongodb::bson::doc! {})
        .await?;
    anyhow::ensure!(
        kept == 1,
        "the rollback touched a database the task did not create"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let started = Instant::now();
        let (mut equal, mut clear, mut stopped, mut bad) = (0u64, 0u64, 0u64, 0u64);
        for r in 0..args.rounds {
            if args.minutes > 0 && started.elapsed() > Duration::from_secs(args.minutes * 60) {
                println!("time limit reached after {r} rounds");
                break;
            }
            let seed = args.seed + r;
            let t = Instant::now();
            let result = round(seed, args.docs).await;
            let secs = t.elapsed().as_secs_f64();
            match result {
                Ok((faults, short, Outcome::Equal { documents, resumes })) => {
                    equal += 1;
                    let budget = if short { " (retry budget 4s)" } else { "" };
                    println!(
                        "round {r} seed {seed} faults {faults:?}{budget} -> PASS equal ({documents} documents compared, {resumes} resumes) in {secs:.1}s"
                    );
                }
                Ok((faults, _, Outcome::FailedClearly(reason))) => {
                    clear += 1;
                    println!("round {r} seed {seed} faults {faults:?} -> PASS failed clearly: {reason} in {secs:.1}s");
                }
                Ok((faults, _, Outcome::RolledBack)) => {
                    stopped += 1;
                    println!(
                        "round {r} seed {seed} faults {faults:?} -> PASS stopped: rolled back exactly what it created in {secs:.1}s"
                    );
                }
                Err(error) => {
                    bad += 1;
                    println!("round {r} seed {seed} -> FAIL: {error:#} in {secs:.1}s");
                }
            }
        }
        println!(
            "chaos: {} rounds: {equal} equal, {stopped} stopped and rolled back, {clear} failed clearly, {bad} FAILED, in {:.0}s",
            equal + stopped + clear + bad,
            started.elapsed().as_secs_f64()
        );
        println!("{} passed, {bad} failed", equal + stopped + clear);
        anyhow::ensure!(bad == 0, "{bad} rounds failed");
        Ok(())
    })
}
