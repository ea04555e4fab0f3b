//! Operating a running migration end to end, with real processes: Prometheus metrics scraped from the coordinator
//! and the agent during the run (families exist, counters only grow, copied documents at the end equal the
//! migrated count), a copy throttle that holds the measured rate and lifting it, pause and resume in DATA_SYNC and
//! in OPLOG_SYNC (no progress while paused, the spool keeps growing with the source's writes), a coordinator
//! SIGKILL in the middle, and the task's history afterwards: every transition in order, operator actions with
//! their principal. With `FERRY_METRICS_DUMP=DIR` the scrapes are written there for `scripts/metrics-check`,
//! which parses them with the Prometheus project's own parser.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_e2e::{
    assert_same, phase, seed_every_type, state, write_round, CoordinatorOptions, World,
};
use ferry_proto::v1 as pb;

const MINUTE: Duration = Duration::from_secs(60);
const COPY_LIMIT: u64 = 1500;

async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .ok_or_else(|| anyhow::anyhow!("no HTTP body: {response}"))?;
    Ok(body)
}

/// `name{labels} value` lines as a map (OpenMetrics text; comments skipped).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Scrapes both endpoints every 250 ms into memory (and `FERRY_METRICS_DUMP` when set) until dropped.
struct Scraper {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<Vec<(String, String)>>>,
}

impl Scraper {
    fn start(coordinator: std::net::SocketAddr, agent: std::net::SocketAddr) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                // A killed coordinator is skipped (its scrape fails) until it is back.
                if let (Ok(c), Ok(a)) = (scrape(coordinator).await, scrape(agent).await) {
                    out.push((c, a));
                }
                tokio::select! {
                    _ = stopped.changed() => return Ok(out),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
        Self { stop, task }
    }

    async fn finish(self) -> anyhow::Result<Vec<(String, String)>> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}

/// Documents copied as the task reports them, over `window` (rate per second).
async fn copy_rate(world: &World, task_id: &str, window: Duration) -> anyhow::Result<f64> {
    let copied = |t: &pb::Task| t.progress.as_ref().map_or(0, |p| p.documents_copied);
    let first = world.get_task(task_id).await?;
    let started = Instant::now();
    // Progress reports arrive every 0.5 s: sample the last one seen at the end of the window.
    tokio::time::sleep(window).await;
    let last = world.get_task(task_id).await?;
    Ok((copied(&last) - copied(&first)) as f64 / started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_migration_is_throttled_paused_resumed_and_observed_through_metrics_and_history(
) -> anyhow::Result<()> {
    let options = CoordinatorOptions {
        extra_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..Default::default()
    };
    let mut world =
        World::start_full(256, &["--metrics-listen", "127.0.0.1:0"], options, |s| s).await?;
    let coordinator_metrics = world
        .coordinator
        .metrics_addr
        .ok_or_else(|| anyhow::anyhow!("the coordinator printed no metrics address"))?;
    let agent_metrics = world.agent.metrics_addr().await?;
    let seeded = 30_000;
    seed_every_type(&world.source_client, "app", "things", seeded).await?;
    let task_id = world.create_checked_task(&["app"]).await?;
    let scraper = Scraper::start(coordinator_metrics, agent_metrics);
    let mut api = world.api.clone();

    // A copy throttle set before the start holds the copy rate.
    api.set_task_throttle(pb::SetTaskThrottleRequest {
        task_id: task_id.clone(),
        throttle: Some(pb::Throttle {
            copy_documents_per_second: COPY_LIMIT,
            ..Default::default()
        }),
    })
    .await?;
    api.start_task(pb::StartTaskRequest {
        task_id: task_id.clone(),
    })
    .await?;
    world
        .wait_task(&task_id, MINUTE, |t| {
            t.phase == phase(pb::TaskPhase::DataSync)
                && t.progress.as_ref().is_some_and(|p| p.documents_copied > 0)
        })
        .await?;
    let throttled = copy_rate(&world, &task_id, Duration::from_secs(10)).await?;
    eprintln!("copy rate throttled to {COPY_LIMIT}/s: {throttled:.0}/s");
    assert!(
        (throttled - COPY_LIMIT as f64).abs() <= COPY_LIMIT as f64 * 0.2,
        "copy rate {throttled:.0}/s is not within 20 % of {COPY_LIMIT}/s"
    );

    // Paused in DATA_SYNC: nothing is copied.
    api.pause_task(pb::PauseTaskRequest {
        task_id: task_id.clone(),
    })
    .await?;
    world
        .wait_task(&task_id, MINUTE, |t| {
            t.progress.as_ref().is_some_and(|p| p.paused)
        })
        .await?;
    let paused_at = world.get_task(&task_id).await?;
    let still = copy_rate(&world, &task_id, Duration::from_secs(2)).await?;
    assert_eq!(still, 0.0, "documents were copied while paused");
    assert_eq!(paused_at.state, state(pb::TaskState::Running));

    // Resumed and unthrottled: the copy runs at full speed and finishes.
    api.resume_task(pb::ResumeTaskRequest {
        task_id: task_id.clone(),
    })
    .await?;
    api.set_task_throttle(pb::SetTaskThrottleRequest {
        task_id: task_id.clone(),
        throttle: Some(pb::Throttle::default()),
    })
    .await?;
    world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.phase == phase(pb::TaskPhase::OplogSync)
        })
        .await?;

    // Paused in OPLOG_SYNC: nothing is applied while the source's writes are spooled.
    api.pause_task(pb::PauseTaskRequest {
        task_id: task_id.clone(),
    })
    .await?;
    let before = world
        .wait_task(&task_id, MINUTE, |t| {
            t.progress.as_ref().is_some_and(|p| p.paused)
        })
        .await?
        .progress
        .unwrap_or_default();
    for round in 0..3 {
        write_round(&world.source_client, "app", round).await?;
    }
    let grown = world
        .wait_task(&task_id, MINUTE, |t| {
            t.progress.as_ref().is_some_and(|p| {
                p.oplog_entries_read > before.oplog_entries_read
                    && p.spool_bytes > before.spool_bytes
            })
        })
        .await?
        .progress
        .unwrap_or_default();
    assert_eq!(
        grown.oplog_entries_applied, before.oplog_entries_applied,
        "entries were applied while paused"
    );

    // The coordinator dies and comes back: the pause and the history survive.
    world.coordinator.kill9().await?;
    world.coordinator.restart().await?;
    let mut api = world.coordinator.client().await?;
    world.api = api.clone();
    let after_restart = world
        .wait_task(&task_id, MINUTE, |t| t.agent_connected)
        .await?;
    assert!(
        after_restart.paused,
        "the pause survives a coordinator SIGKILL"
    );
    api.resume_task(pb::ResumeTaskRequest {
        task_id: task_id.clone(),
    })
    .await?;
    api.complete_task(pb::CompleteTaskRequest {
        task_id: task_id.clone(),
        require_verification: true,
    })
    .await?;
    let done = world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.state == state(pb::TaskState::Succeeded)
        })
        .await?;
    let compared = assert_same(&world.source_client, &world.dest_client, &["app"]).await?;
    let copied = done.progress.as_ref().map_or(0, |p| p.documents_copied);
    assert_eq!(
        copied, seeded as u64,
        "the copy copied every seeded document"
    );
    assert!(compared >= seeded as u64);

    // Metrics: scraped all along; the new coordinator's endpoint is where it was announced again.
    let final_coordinator = scrape(
        world
            .coordinator
            .metrics_addr
            .unwrap_or(coordinator_metrics),
    )
    .await?;
    let final_agent = scrape(agent_metrics).await?;
    let mut scrapes = scraper.finish().await?;
    scrapes.push((final_coordinator, final_agent));
    assert!(scrapes.len() > 10, "{} scrapes", scrapes.len());
    let mut last: HashMap<String, f64> = HashMap::new();
    for (_, agent) in &scrapes {
        for (name, value) in samples(agent) {
            if name.contains("_total") {
                if let Some(before) = last.get(&name) {
                    assert!(value >= *before, "{name} went down: {before} -> {value}");
                }
                last.insert(name, value);
            }
        }
    }
    let (coordinator_text, agent_text) = scrapes.last().cloned().unwrap_or_default();
    let agent_samples = samples(&agent_text);
    let copied_metric = agent_samples
        .get(&format!(
            "ferry_agent_documents_copied_total{{task_id=\"{task_id}\"}}"
        ))
        .copied();
    assert_eq!(copied_metric, Some(seeded as f64), "{agent_text}");
    for family in [
        "ferry_agent_resident_memory_bytes",
        "ferry_agent_oplog_entries_applied_total",
        "ferry_agent_session_connected 1",
    ] {
        assert!(agent_text.contains(family), "no {family} in\n{agent_text}");
    }
    for family in [
        "ferry_tasks{state=\"SUCCEEDED\"} 1",
        &format!("ferry_task_documents_copied{{task_id=\"{task_id}\"}} {seeded}.0"),
        "ferry_rpc_requests_total{service=\"MigrationService\",method=\"ResumeTask\",code=\"OK\"} 1",
        "ferry_agents{state=\"connected\"} 1",
    ] {
        assert!(
            coordinator_text.contains(family),
            "no {family} in\n{coordinator_text}"
        );
    }
    if let Ok(dir) = std::env::var("FERRY_METRICS_DUMP") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        // The coordinator was restarted before the last scrape: its counters start again from zero there, as
        // Prometheus expects of a new process; the file names say which process ("generation") a scrape is from.
        let last_index = scrapes.len() - 1;
        for (i, (c, a)) in scrapes.iter().enumerate() {
            let generation = usize::from(i == last_index);
            std::fs::write(dir.join(format!("coordinator-{generation}-{i:04}.txt")), c)?;
            std::fs::write(dir.join(format!("agent-0-{i:04}.txt")), a)?;
        }
        std::fs::write(
            dir.join("expected.json"),
            format!("{{\"task_id\": \"{task_id}\", \"documents\": {seeded}}}"),
        )?;
    }

    // History: every transition in order, operator actions with their principal, also from before the SIGKILL.
    let mut events = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_task_events(pb::ListTaskEventsRequest {
                task_id: task_id.clone(),
                page_size: 1000,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let find = |kind: &str, detail: &str| {
        events
            .iter()
            .position(|e| e.kind == kind && e.detail.contains(detail))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no {kind} {detail:?} in the history:\n{}",
                    events
                        .iter()
                        .map(|e| format!("{} {} {} {}", e.seq, e.kind, e.principal, e.detail))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })
    };
    let order = [
        find("created", "")?,
        find("state", "NOT_STARTED -> CHECKING")?,
        find("state", "CHECKING -> CHECK_PASSED")?,
        find("throttle", "copy 1500 docs/s")?,
        find("state", "CHECK_PASSED -> RUNNING")?,
        find("phase", "DATA_SYNC")?,
        find("paused", "")?,
        find("resumed", "")?,
        find("phase", "-> INDEX_CREATION")?,
        find("phase", "-> OPLOG_SYNC")?,
        find("agent_reconnected", "")?,
        find("operator", "CompleteTask requested: with verification")?,
        find("state", "RUNNING -> COMPLETING")?,
        find("state", "COMPLETING -> SUCCEEDED")?,
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "history out of order: {order:?}"
    );
    for e in events.iter().filter(|e| e.kind == "operator") {
        assert_eq!(e.principal, "admin", "{e:?}");
    }
    Ok(())
}
