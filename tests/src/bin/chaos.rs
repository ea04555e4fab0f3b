//! `chaos`: a seeded fault campaign against whole migrations (`scripts/chaos --seed S --rounds R [--minutes M]`).
//!
//! Each round starts a mongosim source and destination, a coordinator and an enrolled agent (real processes), seeds
//! the source, runs two applications during the migration (the realistic writer of issue #8, `realistic::Writer`:
//! unique-value swaps, hot keys, small and >16 MiB transactions, TTL refreshes, capped inserts, views, cross-database
//! renames, index builds that abort; and `write_round`: every update operator over documents of every BSON type),
//! and injects 1–3 seeded faults at points of every phase: planning (right after StartTask), the copy (slowed by the
//! product's throttle so the fault lands in it), the index build (held on the destination by a fail point while the
//! fault strikes), the live apply, the cut-over (after CompleteTask, while it applies and verifies), a verification
//! run of its own (VerifyTask after the task SUCCEEDED) and the rollback (after StopTask).
//!
//! Faults: SIGKILL of the agent, of the coordinator, of both; the agent restarted with an emptied spool dir; command
//! errors and slow replies on the source and the destination, NotWritablePrimary on the destination; a failover of
//! the source that rolls back what was written past its held majority point; and, with `--netns` (`scripts/chaos`
//! runs the campaign in private network and mount namespaces when it can), real network faults on the agent's own
//! links to the source, the destination and the coordinator (`netfault`: kernel traffic control on the namespace's
//! loopback: blackholes of 5–90 s, slow and lossy links) and the agent's disk filling up (its data dir is a 64 MiB
//! tmpfs; a ballast file takes every free byte for 3–15 s). Without `--netns`, mongosim's outage fault (connections
//! closed, new ones refused) stands in for the link faults and there is no disk fault.
//!
//! A round passes when the task SUCCEEDED after the product's verifier and an independent byte-for-byte comparison
//! says the destination equals the source (resumable failures on the way are resumed with StartTask, as an operator
//! would); when it failed for good with a reason and StopTask then rolled back exactly what it created; or when it
//! was stopped and the rollback dropped what the task created and left a bystander database alone. A SUCCEEDED task
//! whose destination differs is a false success, and a verification that confirms mismatches on an equal
//! destination is a false alarm: both fail the round. One round in five ends with StopTask; one in three runs the
//! agent with a 4 s retry budget, so outages can outlast it and the task is resumed. See docs/reliability.md.
//!
//! Round `r` of a campaign uses seed `S + r`: `--seed S+r --rounds 1` replays it (in the same mode, `--netns` or not).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ferry_e2e::netfault::{Link, LinkFault, Links};
use ferry_e2e::realistic::{self, Writer};
use ferry_e2e::{
    assert_same, phase, seed_every_type, state, write_round, PrepareAgentDir, World, WorldOptions,
};
use ferry_proto::v1 as pb;
use ferry_testkit::Rng;

const MINUTE: Duration = Duration::from_secs(60);
/// The databases a round migrates: `write_round`'s and the realistic writer's.
const DATABASES: [&str; 3] = ["app", realistic::DB_A, realistic::DB_B];
/// Size of the agent's data-dir filesystem with `--netns`.
const AGENT_DISK_MB: u64 = 64;

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
    /// Documents seeded per round in `app.things` (the realistic writer's databases come on top).
    #[arg(long, default_value_t = 3000)]
    docs: i32,
    /// This process runs in private network and mount namespaces (scripts/chaos sets them up): use real link
    /// faults (traffic control on the namespace's loopback) and a small filesystem for the agent's data dir.
    #[arg(long)]
    netns: bool,
    /// Keep each round's coordinator and agent logs in DIR/round-<seed>/ (they are deleted with the round
    /// otherwise).
    #[arg(long, value_name = "DIR")]
    keep_logs: Option<std::path::PathBuf>,
    /// Print each round's seeded plan (faults, where they strike, stop or complete, retry budget) without running.
    #[arg(long)]
    dry_run: bool,
}

/// Where a fault strikes, in the order of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum At {
    Planning,
    Copy,
    IndexBuild,
    LiveApply,
    Completing,
    Verifying,
    RollingBack,
}

/// One of the agent's links.
#[derive(Debug, Clone, Copy)]
enum Peer {
    Source,
    Destination,
    Coordinator,
}

/// What a fault does.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillAgent,
    KillCoordinator,
    KillBoth,
    AgentEmptySpool,
    /// A real fault on the agent's link to a peer for some seconds (`--netns`).
    Link(Peer, LinkFault, u64),
    /// mongosim's outage fault for some seconds (without `--netns`).
    SourceOutage(u64),
    DestinationOutage(u64),
    /// The agent's disk full for some seconds (`--netns`).
    DiskFull(u64),
    /// HostUnreachable on the source's next find/getMore.
    SourceErrors,
    /// HostUnreachable on the destination's next inserts and updates.
    DestinationErrors,
    SlowSource,
    /// 30 ms replies from the destination for 3 s.
    SlowDestination,
    /// NotWritablePrimary (10107) on the destination's next writes, as during a failover.
    DestinationNotPrimary,
    /// A failover of the source with rollback: its majority commit point held for some seconds while the
    /// applications write, then the writes past it rolled back (`replSetGetRBID` goes up, connections drop).
    SourceFailover(u64),
}

struct Plan {
    faults: Vec<(At, Fault)>,
    stop_instead: bool,
    short_budget: bool,
}

fn plan(rng: &mut Rng, netns: bool) -> Plan {
    let stop_instead = rng.below(5) == 0;
    let short_budget = rng.below(3) == 0;
    let phases: &[At] = if stop_instead {
        &[
            At::Planning,
            At::Copy,
            At::IndexBuild,
            At::LiveApply,
            At::RollingBack,
        ]
    } else {
        &[
            At::Planning,
            At::Copy,
            At::IndexBuild,
            At::LiveApply,
            At::Completing,
            At::Verifying,
        ]
    };
    let n = 1 + rng.below(3) as usize;
    let mut faults: Vec<(At, Fault)> = (0..n)
        .map(|_| {
            let at = phases[rng.below(phases.len() as u64) as usize];
            let fault = match rng.below(14) {
                0 => Fault::KillAgent,
                1 => Fault::KillCoordinator,
                2 => Fault::KillBoth,
                3 => Fault::AgentEmptySpool,
                4 | 5 => {
                    let peer = match rng.below(3) {
                        0 => Peer::Source,
                        1 => Peer::Destination,
                        _ => Peer::Coordinator,
                    };
                    match (netns, peer) {
                        (true, _) => {
                            let (kind, secs) = match rng.below(3) {
                                0 => (LinkFault::Blackhole, rng.between(5, 90)),
                                1 => (LinkFault::Slow, rng.between(5, 20)),
                                _ => (LinkFault::Lossy, rng.between(5, 20)),
                            };
                            Fault::Link(peer, kind, secs)
                        }
                        (false, Peer::Source) => Fault::SourceOutage(rng.between(2, 7)),
                        (false, Peer::Destination) => Fault::DestinationOutage(rng.between(2, 7)),
                        (false, Peer::Coordinator) => Fault::KillCoordinator,
                    }
                }
                6 if netns => Fault::DiskFull(rng.between(3, 15)),
                6 => Fault::AgentEmptySpool,
                7 => Fault::SourceErrors,
                8 => Fault::DestinationErrors,
                9 => Fault::DestinationNotPrimary,
                10 => Fault::SlowSource,
                11 => Fault::SlowDestination,
                12 => Fault::SourceFailover(rng.between(1, 3)),
                _ => Fault::KillAgent,
            };
            (at, fault)
        })
        .collect();
    faults.sort_by_key(|(at, _)| *at);
    Plan {
        faults,
        stop_instead,
        short_budget,
    }
}

/// The netns-only machinery of a round: the agent's links and its small disk.
struct NetFaults {
    links: Links,
    source: Link,
    dest: Link,
    coordinator: Link,
}

impl NetFaults {
    fn link(&self, peer: Peer) -> Link {
        match peer {
            Peer::Source => self.source,
            Peer::Destination => self.dest,
            Peer::Coordinator => self.coordinator,
        }
    }
}

/// A tmpfs mounted on the agent's data dir; lazily unmounted when dropped.
struct AgentDisk(std::path::PathBuf);

impl AgentDisk {
    fn mount(dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={AGENT_DISK_MB}m,mode=0700"))
            .arg("tmpfs")
            .arg(dir)
            .status()
            .context("running mount")?;
        anyhow::ensure!(
            status.success(),
            "mount -t tmpfs on {} failed",
            dir.display()
        );
        Ok(())
    }
}

impl Drop for AgentDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Takes every free byte of the agent's disk for `secs`, then frees it.
async fn fill_disk(world: &World, secs: u64) -> anyhow::Result<()> {
    let ballast = world.agent.data_dir().join("ballast");
    let path = ballast.clone();
    let filled = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        use std::io::Write;
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(_) => break,
            }
        }
        Ok(total)
    })
    .await??;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    std::fs::remove_file(&ballast).with_context(|| format!("freeing {filled} ballast bytes"))?;
    Ok(())
}

async fn inject(
    world: &mut World,
    net: Option<&NetFaults>,
    task_id: &str,
    fault: Fault,
) -> anyhow::Result<()> {
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
        Fault::Link(peer, kind, secs) => {
            let net = net.context("a link fault needs --netns")?;
            let link = net.link(peer);
            net.links.set(link, Some(kind))?;
            tokio::time::sleep(Duration::from_secs(secs)).await;
            net.links.set(link, None)?;
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
        Fault::DiskFull(secs) => fill_disk(world, secs).await?,
        Fault::SourceErrors => {
            // HostUnreachable (6) on the next reads: retried by the engine.
            world.source.faults().fail_command("getMore", 6, Some(3));
            world.source.faults().fail_command("find", 6, Some(2));
        }
        Fault::DestinationErrors => {
            for command in ["insert", "update", "bulkWrite"] {
                world.dest.faults().fail_command(command, 6, Some(2));
            }
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
        Fault::SlowDestination => {
            world
                .dest
                .faults()
                .delay_replies(Some(Duration::from_millis(30)));
            tokio::time::sleep(Duration::from_secs(3)).await;
            world.dest.faults().delay_replies(None);
        }
        Fault::SourceFailover(secs) => {
            world.source.hold_majority();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let rolled_back = world.source.rollback_to_majority();
            world.source.release_majority();
            println!("  source failover: {rolled_back} oplog entries rolled back");
        }
    }
    Ok(())
}

/// The two applications of a round.
struct Apps {
    realistic: Writer,
    simple_stop: Arc<AtomicBool>,
    simple: tokio::task::JoinHandle<()>,
    stopped: bool,
}

impl Apps {
    fn start(world: &World, seed: u64) -> Self {
        let realistic = Writer::start_with(world, seed, true);
        let simple_stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicI32::new(0));
        let client = world.source_client.clone();
        let stop = Arc::clone(&simple_stop);
        // Errors (outages, faults) are skipped like a retrying application would.
        let simple = tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let round = rounds.load(Ordering::Relaxed);
                let _ = write_round(&client, "app", round).await;
                rounds.fetch_add(1, Ordering::Relaxed);
                // Pacing of the application (each round does five DDL operations), not a synchronisation.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            realistic,
            simple_stop,
            simple,
            stopped: false,
        }
    }

    /// Stops both (the cut-over's quiescence) and waits for the source's TTL monitor to catch up.
    async fn stop(&mut self, world: &World) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.simple_stop.store(true, Ordering::Relaxed);
        if let Err(e) = (&mut self.simple).await {
            // The application, not Ferry: its driver can panic when a failover drops every connection.
            println!("  the write_round application crashed: {e}");
        }
        if let Err(e) = self.realistic.stop().await {
            println!("  the realistic application stopped: {e:#}");
        }
        realistic::source_ttl_caught_up(&world.source_client).await
    }
}

/// Waits until `done` holds, resuming the task (StartTask, at most 3 times in a round) when a fault made it fail
/// resumable, as an operator would. `Some(reason)` when the task failed for good instead.
async fn wait_running(
    world: &World,
    task_id: &str,
    timeout: Duration,
    resumes: &mut u32,
    done: impl Fn(&pb::Task) -> bool,
) -> anyhow::Result<Option<String>> {
    loop {
        let task = world
            .wait_task(task_id, timeout, |t| {
                done(t) || t.state == state(pb::TaskState::Failed)
            })
            .await?;
        if task.state != state(pb::TaskState::Failed) {
            return Ok(None);
        }
        if let Some(reason) = resume_failed(world, task_id, task, resumes).await? {
            return Ok(Some(reason));
        }
    }
}

/// A FAILED task: resumed with StartTask when its failure is resumable (at most 3 times in a round), or its reason
/// when it failed for good.
async fn resume_failed(
    world: &World,
    task_id: &str,
    task: pb::Task,
    resumes: &mut u32,
) -> anyhow::Result<Option<String>> {
    anyhow::ensure!(
        !task.failure_reason.is_empty(),
        "the task FAILED without a reason"
    );
    if !task.resumable {
        return Ok(Some(task.failure_reason));
    }
    anyhow::ensure!(
        *resumes < 3,
        "still failing after 3 resumptions: {}",
        task.failure_reason
    );
    *resumes += 1;
    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.to_owned(),
        })
        .await?;
    Ok(None)
}

/// Waits for the point `at` of the migration (`Some(reason)`: the task failed for good first). A fault at the
/// cut-over or the rollback that follows another one there strikes at once.
async fn wait_at(
    world: &World,
    task_id: &str,
    at: At,
    resumes: &mut u32,
) -> anyhow::Result<Option<String>> {
    let past_copy = |t: &pb::Task| {
        t.phase == phase(pb::TaskPhase::IndexCreation) || t.phase == phase(pb::TaskPhase::OplogSync)
    };
    let timeout = match at {
        At::Planning | At::Verifying => return Ok(None),
        At::Copy => 2 * MINUTE,
        At::IndexBuild => 3 * MINUTE,
        At::LiveApply | At::Completing | At::RollingBack => 5 * MINUTE,
    };
    wait_running(world, task_id, timeout, resumes, |t| match at {
        At::Copy => {
            past_copy(t)
                || (t.phase == phase(pb::TaskPhase::DataSync)
                    && t.progress.as_ref().is_some_and(|p| p.documents_copied > 0))
        }
        At::IndexBuild => past_copy(t),
        _ => t.phase == phase(pb::TaskPhase::OplogSync),
    })
    .await
}

/// The outcome of one round.
enum Outcome {
    /// SUCCEEDED and equal, after `resumes` resumptions of resumable failures.
    Equal { documents: u64, resumes: u32 },
    /// Failed for good with a reason (not resumable): no data was claimed to be migrated, and StopTask then rolled
    /// back exactly what the task created.
    FailedClearly(String),
    /// Stopped by the operator: the rollback dropped what the task created and nothing else.
    RolledBack,
}

/// A database on the destination that no task created: a rollback must leave it alone.
const BYSTANDER: &str = "bystander";

async fn throttle(world: &World, task_id: &str, copy_per_second: u64) -> anyhow::Result<()> {
    world
        .api
        .clone()
        .set_task_throttle(pb::SetTaskThrottleRequest {
            task_id: task_id.to_owned(),
            throttle: Some(pb::Throttle {
                copy_documents_per_second: copy_per_second,
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

async fn complete(world: &World, task_id: &str) -> anyhow::Result<()> {
    world
        .api
        .clone()
        .complete_task(pb::CompleteTaskRequest {
            task_id: task_id.to_owned(),
            require_verification: true,
        })
        .await?;
    Ok(())
}

async fn stop(world: &World, task_id: &str) -> anyhow::Result<()> {
    world
        .api
        .clone()
        .stop_task(pb::StopTaskRequest {
            task_id: task_id.to_owned(),
        })
        .await?;
    Ok(())
}

/// What a round saw besides its outcome.
#[derive(Default)]
struct Seen {
    /// Where each fault landed: the task's state and phase when it struck.
    landed: Vec<String>,
    /// The engine's retries of transient failures, as the task reported them at the end.
    retries: u64,
    /// Times the agent logged that its disk was full and the spool waited for space.
    disk_full_waits: usize,
}

async fn round(
    seed: u64,
    docs: i32,
    netns: bool,
    keep_logs: Option<&std::path::Path>,
) -> (Plan, Seen, anyhow::Result<(Outcome, &'static str)>) {
    let mut rng = Rng(seed);
    let plan = plan(&mut rng, netns);
    let mut seen = Seen::default();
    let result = run_round(seed, docs, netns, &plan, &mut seen, keep_logs).await;
    (plan, seen, result)
}

/// The task's state and phase, for the report.
fn where_now(t: &pb::Task) -> String {
    let name = pb::TaskState::try_from(t.state)
        .map(|s| s.as_str_name().trim_start_matches("TASK_STATE_").to_owned())
        .unwrap_or_default();
    if t.state == state(pb::TaskState::Running) || t.state == state(pb::TaskState::Completing) {
        let phase = pb::TaskPhase::try_from(t.phase)
            .map(|p| p.as_str_name().trim_start_matches("TASK_PHASE_").to_owned())
            .unwrap_or_default();
        format!("{name}/{phase}")
    } else {
        name
    }
}

async fn run_round(
    seed: u64,
    docs: i32,
    netns: bool,
    plan: &Plan,
    seen: &mut Seen,
    keep_logs: Option<&std::path::Path>,
) -> anyhow::Result<(Outcome, &'static str)> {
    let agent_args: &[&str] = if plan.short_budget {
        &["--retry-budget", "4s"]
    } else {
        &[]
    };
    let mut world = World::start_opts(
        WorldOptions {
            agent_args,
            relays: true,
            prepare_agent_dir: netns.then(|| {
                Box::new(|work: &std::path::Path| AgentDisk::mount(&work.join("agent-data")))
                    as PrepareAgentDir
            }),
            ..WorldOptions::default()
        },
        |source| source.ttl_monitor_interval(realistic::TTL_INTERVAL),
    )
    .await?;
    let _disk = netns.then(|| AgentDisk(world.agent.data_dir()));
    let mut task_id = String::new();
    let result = drive(&mut world, seed, docs, netns, plan, seen, &mut task_id).await;
    if let Ok(task) = world.get_task(&task_id).await {
        seen.retries = task.progress.map(|p| p.retries).unwrap_or_default();
    }
    seen.disk_full_waits = world
        .agent
        .logs()
        .matches("the agent's disk is full: spooling waits")
        .count();
    if let Some(dir) = keep_logs {
        if let Err(e) = copy_logs(world.path(), &dir.join(format!("round-{seed}"))) {
            println!("  could not keep the logs of round {seed}: {e:#}");
        }
    }
    result
}

/// Copies the `*.log` and `*.out` files of a round's directory (the coordinator's, and the agent's below `agent/`).
fn copy_logs(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    for (src, dst) in [
        (from.to_path_buf(), to.to_path_buf()),
        (from.join("agent"), to.join("agent")),
    ] {
        std::fs::create_dir_all(&dst)?;
        for entry in std::fs::read_dir(&src)? {
            let path = entry?.path();
            let keep = path.extension().is_some_and(|e| e == "log" || e == "out");
            if keep {
                if let Some(name) = path.file_name() {
                    std::fs::copy(&path, dst.join(name))?;
                }
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    world: &mut World,
    seed: u64,
    docs: i32,
    netns: bool,
    plan: &Plan,
    seen: &mut Seen,
    task_id_out: &mut String,
) -> anyhow::Result<(Outcome, &'static str)> {
    let net = if netns {
        let relays = world.relays.as_ref().context("relays")?;
        let mut links = Links::install()?;
        let source = links.add(relays.source.addr().port())?;
        let dest = links.add(relays.dest.addr().port())?;
        let coordinator = links.add(relays.coordinator.addr().port())?;
        Some(NetFaults {
            links,
            source,
            dest,
            coordinator,
        })
    } else {
        None
    };
    seed_every_type(&world.source_client, "app", "things", docs).await?;
    realistic::seed_source(&world.source_client).await?;
    world
        .dest_client
        .database(BYSTANDER)
        .collection::<mongodb::bson::Document>("keep")
        .insert_one(mongodb::bson::doc! { "_id": 1, "note": "not the task's" })
        .await?;
    let task_id = world.create_checked_task(&DATABASES).await?;
    task_id_out.clone_from(&task_id);
    let has = |at: At| plan.faults.iter().any(|(a, _)| *a == at);
    // A fault aimed at the copy needs a copy long enough to land in: the product's own throttle slows it down.
    let mut throttled = has(At::Copy);
    if throttled {
        throttle(world, &task_id, 1000).await?;
    }
    // A fault aimed at the index build strikes while the destination holds the build before its commit.
    if has(At::IndexBuild) {
        world
            .dest
            .faults()
            .set_fail_point("hangIndexBuildBeforeCommit", true);
    }
    let mut apps = Apps::start(world, seed);
    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await?;
    let mut completing = false;
    let mut stopping = false;
    let mut verifying = false;
    let mut resumes = 0;
    let mut failed_for_good = None;
    for (at, fault) in &plan.faults {
        if *at == At::Verifying && !verifying {
            apps.stop(world).await?;
            release(world, &task_id, &mut throttled).await?;
            let outcome = finish(world, &task_id, completing, &mut resumes).await?;
            if let Outcome::FailedClearly(_) = &outcome {
                stop_and_check(world, &task_id, false).await?;
                return Ok((outcome, "-"));
            }
            verify(world, &task_id).await?;
            verifying = true;
        }
        let already = (*at == At::Completing && completing) || (*at == At::RollingBack && stopping);
        if !already {
            if let Some(reason) = wait_at(world, &task_id, *at, &mut resumes).await? {
                failed_for_good = Some(reason);
                break;
            }
        }
        if *at > At::Copy && throttled {
            throttle(world, &task_id, 0).await?;
            throttled = false;
        }
        if *at == At::Completing && !completing {
            apps.stop(world).await?;
            complete(world, &task_id).await?;
            completing = true;
        }
        if *at == At::RollingBack && !stopping {
            apps.stop(world).await?;
            stop(world, &task_id).await?;
            stopping = true;
        }
        let now = world.get_task(&task_id).await?;
        let verification = now.verification.as_ref().filter(|_| verifying).map(|v| {
            let state = pb::VerificationState::try_from(v.state)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("VERIFICATION_STATE_")
                        .to_owned()
                })
                .unwrap_or_default();
            format!(", verification run {} {state}", v.run)
        });
        seen.landed.push(format!(
            "{}{}",
            where_now(&now),
            verification.unwrap_or_default()
        ));
        inject(world, net.as_ref(), &task_id, *fault).await?;
        if *at == At::IndexBuild {
            world
                .dest
                .faults()
                .set_fail_point("hangIndexBuildBeforeCommit", false);
        }
    }
    apps.stop(world).await?;
    if let Some(reason) = failed_for_good {
        // A fault made the task fail for good (e.g. a failover that rolled back source writes): the rest of the
        // plan is moot; the failure must be clear and StopTask must roll back exactly what the task created.
        world.source.faults().clear();
        world.dest.faults().clear();
        if let Some(net) = &net {
            for peer in [Peer::Source, Peer::Destination, Peer::Coordinator] {
                net.links.set(net.link(peer), None)?;
            }
        }
        stop_and_check(world, &task_id, false).await?;
        return Ok((Outcome::FailedClearly(reason), "-"));
    }
    if let Some(net) = &net {
        for peer in [Peer::Source, Peer::Destination, Peer::Coordinator] {
            net.links.set(net.link(peer), None)?;
        }
    }
    if verifying {
        return check_verification(world, &task_id).await.map(|documents| {
            (
                Outcome::Equal { documents, resumes },
                "verify-only run under faults: passed",
            )
        });
    }
    if !stopping {
        release(world, &task_id, &mut throttled).await?;
    } else {
        world.source.faults().clear();
        world.dest.faults().clear();
    }
    if plan.stop_instead {
        return stop_and_check(world, &task_id, stopping)
            .await
            .map(|()| (Outcome::RolledBack, "-"));
    }
    let outcome = finish(world, &task_id, completing, &mut resumes).await?;
    if let Outcome::FailedClearly(_) = &outcome {
        // A permanent failure must still roll back exactly what the task created.
        stop_and_check(world, &task_id, false).await?;
        return Ok((outcome, "-"));
    }
    Ok((outcome, "at cut-over"))
}

/// Lifts every mongosim fault, fail point and the copy throttle.
async fn release(world: &World, task_id: &str, throttled: &mut bool) -> anyhow::Result<()> {
    world.source.faults().clear();
    world.dest.faults().clear();
    // The throttle of a task that ended (failed for good) needs no lifting, and cannot be changed.
    let ended = world.get_task(task_id).await?;
    let done = ended.state == state(pb::TaskState::Failed) && !ended.resumable;
    if std::mem::take(throttled) && !done {
        throttle(world, task_id, 0).await?;
    }
    Ok(())
}

/// Brings the task to an end: CompleteTask (unless already sent), StartTask again after resumable failures. Checks
/// a SUCCEEDED destination independently.
async fn finish(
    world: &mut World,
    task_id: &str,
    completing: bool,
    resumes: &mut u32,
) -> anyhow::Result<Outcome> {
    let mut sent = completing;
    loop {
        if !sent {
            let failed = wait_running(world, task_id, 5 * MINUTE, resumes, |t| {
                t.phase == phase(pb::TaskPhase::OplogSync)
            })
            .await?;
            if let Some(reason) = failed {
                return Ok(Outcome::FailedClearly(reason));
            }
            complete(world, task_id).await?;
        }
        sent = false;
        let task = world
            .wait_task(task_id, 5 * MINUTE, |t| {
                t.state == state(pb::TaskState::Succeeded)
                    || t.state == state(pb::TaskState::Failed)
            })
            .await?;
        if task.state == state(pb::TaskState::Succeeded) {
            let documents = compare(world)
                .await
                .map_err(|e| anyhow::anyhow!("FALSE SUCCESS: the task SUCCEEDED but {e:#}"))?;
            return Ok(Outcome::Equal {
                documents,
                resumes: *resumes,
            });
        }
        if let Some(reason) = resume_failed(world, task_id, task, resumes).await? {
            return Ok(Outcome::FailedClearly(reason));
        }
    }
}

/// The independent comparison: every migrated database byte for byte (documents, options, indexes), and the capped
/// collection in natural order.
async fn compare(world: &World) -> anyhow::Result<u64> {
    let documents = assert_same(&world.source_client, &world.dest_client, &DATABASES).await?;
    realistic::assert_natural_order_equal(world, realistic::DB_A, "events").await?;
    Ok(documents)
}

async fn verify(world: &World, task_id: &str) -> anyhow::Result<()> {
    world
        .api
        .clone()
        .verify_task(pb::VerifyTaskRequest {
            task_id: task_id.to_owned(),
            mode: pb::VerifyMode::Full as i32,
        })
        .await?;
    Ok(())
}

fn verification_done(t: &pb::Task) -> bool {
    t.verification.as_ref().is_some_and(|v| {
        v.state == pb::VerificationState::Passed as i32
            || v.state == pb::VerificationState::Failed as i32
    })
}

/// After faults during a verify-only run of a SUCCEEDED (and independently equal) task: the run passed, or it could
/// not finish and says why without confirming any mismatch, and a new run then passes. A confirmed mismatch on an
/// equal destination is a false alarm.
async fn check_verification(world: &World, task_id: &str) -> anyhow::Result<u64> {
    let documents = compare(world).await?;
    for attempt in 0..3 {
        let task = world
            .wait_task(task_id, 5 * MINUTE, verification_done)
            .await?;
        let v = task.verification.unwrap_or_default();
        let confirmed = v.confirmed.unwrap_or_default();
        let mismatches = confirmed.missing_on_destination
            + confirmed.extra_on_destination
            + confirmed.different
            + confirmed.metadata;
        anyhow::ensure!(
            mismatches == 0,
            "FALSE ALARM: verification confirmed {mismatches} mismatches ({confirmed:?}) on an equal destination: {}",
            v.detail
        );
        if v.state == pb::VerificationState::Passed as i32 {
            return Ok(documents);
        }
        anyhow::ensure!(
            !v.detail.is_empty(),
            "a verification FAILED with no mismatch and no reason"
        );
        println!(
            "  verification run {} could not finish: {} (attempt {attempt}); running it again",
            v.run, v.detail
        );
        verify(world, task_id).await?;
        world
            .wait_task(task_id, MINUTE, |t| {
                t.verification.as_ref().is_some_and(|x| x.run > v.run)
            })
            .await?;
    }
    anyhow::bail!("verification still not passing after 3 runs")
}

/// StopTask (unless already sent): the task ends FAILED ("stopped by operator") and the destination holds nothing
/// of the task's databases any more, while the bystander database is untouched.
async fn stop_and_check(world: &mut World, task_id: &str, sent: bool) -> anyhow::Result<()> {
    let current = world.get_task(task_id).await?;
    if !sent
        && (current.state == state(pb::TaskState::Running)
            || current.state == state(pb::TaskState::Completing)
            || (current.state == state(pb::TaskState::Failed)
                && current.failure_reason != "stopped by operator"))
    {
        stop(world, task_id).await?;
    }
    let mut done = world
        .wait_task(task_id, 5 * MINUTE, |t| {
            t.state == state(pb::TaskState::Failed) && !t.resumable
        })
        .await;
    // A rollback that failed resumable (its destination unreachable for longer than the retry budget) is stopped
    // again, as an operator would.
    for _ in 0..3 {
        let Err(e) = &done else { break };
        let now = world.get_task(task_id).await?;
        if !(now.state == state(pb::TaskState::Failed) && now.resumable) {
            anyhow::bail!("{e:#}");
        }
        stop(world, task_id).await?;
        done = world
            .wait_task(task_id, 5 * MINUTE, |t| {
                t.state == state(pb::TaskState::Failed) && !t.resumable
            })
            .await;
    }
    let done = done?;
    anyhow::ensure!(
        done.failure_reason.contains("stopped by operator"),
        "the rollback did not finish as a stop: {}",
        done.failure_reason
    );
    for db in DATABASES {
        let left = world
            .dest_client
            .database(db)
            .list_collection_names()
            .await?;
        anyhow::ensure!(left.is_empty(), "the rollback left {left:?} in {db}");
    }
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

fn describe(plan: &Plan, seen: &Seen) -> String {
    let faults: Vec<String> = plan
        .faults
        .iter()
        .enumerate()
        .map(|(i, (at, fault))| match seen.landed.get(i) {
            Some(landed) => format!("{at:?}: {fault:?} in {landed}"),
            None => format!("{at:?}: {fault:?}"),
        })
        .collect();
    let mut s = format!("[{}] retries {}", faults.join(", "), seen.retries);
    if seen.disk_full_waits > 0 {
        s.push_str(&format!(", disk-full waits {}", seen.disk_full_waits));
    }
    if plan.short_budget {
        s.push_str(" (retry budget 4s)");
    }
    if plan.stop_instead {
        s.push_str(" (StopTask)");
    }
    s
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.dry_run {
        for r in 0..args.rounds {
            let seed = args.seed + r;
            let plan = plan(&mut Rng(seed), args.netns);
            println!(
                "round {r} seed {seed} faults {}",
                describe(&plan, &Seen::default())
            );
        }
        return Ok(());
    }
    if args.netns && !ferry_e2e::netfault::in_private_netns() {
        anyhow::bail!("--netns: this process is not in a private network namespace (run scripts/chaos, which creates one)");
    }
    if args.netns {
        // A fresh network namespace starts with its loopback down.
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .context("running ip (iproute2)")?;
        anyhow::ensure!(up.success(), "ip link set lo up failed");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let started = Instant::now();
        println!(
            "chaos: network faults: {}",
            if args.netns {
                "real (traffic control on the agent's links in a private network namespace), disk-full faults on a 64 MiB tmpfs"
            } else {
                "mongosim outages (no private network namespace), no disk-full faults"
            }
        );
        let (mut equal, mut clear, mut stopped, mut bad) = (0u64, 0u64, 0u64, 0u64);
        for r in 0..args.rounds {
            if args.minutes > 0 && started.elapsed() > Duration::from_secs(args.minutes * 60) {
                println!("time limit reached after {r} rounds");
                break;
            }
            let seed = args.seed + r;
            let t = Instant::now();
            let (plan, seen, result) = round(seed, args.docs, args.netns, args.keep_logs.as_deref()).await;
            let secs = t.elapsed().as_secs_f64();
            let faults = describe(&plan, &seen);
            match result {
                Ok((Outcome::Equal { documents, resumes }, verified)) => {
                    equal += 1;
                    println!(
                        "round {r} seed {seed} faults {faults} -> PASS equal ({documents} documents compared, {resumes} resumes, verified {verified}) in {secs:.1}s"
                    );
                }
                Ok((Outcome::FailedClearly(reason), _)) => {
                    clear += 1;
                    println!("round {r} seed {seed} faults {faults} -> PASS failed clearly, then StopTask rolled back exactly what it created: {reason} in {secs:.1}s");
                }
                Ok((Outcome::RolledBack, _)) => {
                    stopped += 1;
                    println!(
                        "round {r} seed {seed} faults {faults} -> PASS stopped: rolled back exactly what it created in {secs:.1}s"
                    );
                }
                Err(error) => {
                    bad += 1;
                    println!("round {r} seed {seed} faults {faults} -> FAIL: {error:#} in {secs:.1}s");
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
