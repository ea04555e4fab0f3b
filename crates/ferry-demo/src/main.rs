//! `ferry-demo`: the README's first command. Starts a mongosim source seeded with a realistic dataset and a mongosim
//! destination, a local metadata endpoint, a coordinator and an agent (the real binaries), then drives the public
//! gRPC API as an operator would: register the instance, create the task, check, start, keep writing to the source,
//! watch progress, complete, verify. Prints a summary.
//!
//! It is a demo and a smoke test, not a product component: only it and the tests start mongosim.

mod dataset;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ferry_proto::v1 as pb;
use ferry_testkit::mongo::client;
use ferry_testkit::process::{
    AgentProcess, Binaries, CoordinatorOptions, CoordinatorProcess, Metadata, MetadataServer,
    OperatorClient,
};

/// Runs the whole Ferry flow locally against mongosim.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Documents to seed on the source, over five collections in three databases.
    #[arg(long, default_value_t = 1_000_000)]
    docs: u64,
    /// Writes per second the simulated application keeps doing during the migration.
    #[arg(long, default_value_t = 500)]
    write_rate: u64,
    /// Seconds to stay in OPLOG_SYNC with the application writing before cutting over.
    #[arg(long, default_value_t = 10)]
    oplog_seconds: u64,
    /// Folder with the ferry-coordinator and ferry-agent binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the work folder (logs, sled, spool) instead of deleting it at exit.
    #[arg(long)]
    keep: bool,
    /// Serve Prometheus metrics on the coordinator and the agent and scrape both every second during the run
    /// (the benchmark compares full-sync throughput with and without).
    #[arg(long)]
    metrics: bool,
}

const SOURCE_PASSWORD: &str = "demo-source-secret";
const DEST_PASSWORD: &str = "demo-destination-secret";
const CVM_ID: &str = "ins-demo0001";
const INSTANCE_ID: &str = "cmgo-demo0001";
const REGION: &str = "ap-guangzhou";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let work = tempfile::Builder::new().prefix("ferry-demo-").tempdir()?;
    let bins = match &args.bin_dir {
        Some(dir) => Binaries::in_dir(dir),
        None => Binaries::locate()?,
    };

    say("starting mongosim source (replica set rs-src) and destination (rs-dst)");
    let source = mongosim::MongoSim::builder()
        .replset("rs-src")
        .user("root", SOURCE_PASSWORD)
        .oplog_size_mb(2048)
        .start()
        .await?;
    let dest = mongosim::MongoSim::builder()
        .replset("rs-dst")
        .user("admin", DEST_PASSWORD)
        .oplog_size_mb(64)
        .start()
        .await?;
    let source_client = client(&source.uri(), "root", SOURCE_PASSWORD).await?;
    let dest_client = client(&dest.uri(), "admin", DEST_PASSWORD).await?;

    say(&format!(
        "seeding {} documents into databases {:?}",
        args.docs,
        dataset::DATABASES
    ));
    let seed_started = Instant::now();
    let (seeded_docs, seeded_bytes) = dataset::seed(&source_client, args.docs).await?;
    say(&format!(
        "seeded {seeded_docs} documents ({:.1} MiB) in {:.1} s",
        mib(seeded_bytes),
        seed_started.elapsed().as_secs_f64()
    ));

    let metadata = MetadataServer::start(Metadata {
        instance_id: CVM_ID.into(),
        region: REGION.into(),
        local_ipv4: source.addr().ip().to_string(),
    })
    .await?;
    // TLS on loopback, with the agent enrolled through a single-use join token for its CVM: it then authenticates
    // with the client certificate the coordinator's CA issued it (mutual TLS), as in production.
    let mut coordinator = CoordinatorProcess::start_with(
        &bins,
        work.path(),
        CoordinatorOptions {
            tls: true,
            extra_args: if args.metrics {
                vec!["--metrics-listen".into(), "127.0.0.1:0".into()]
            } else {
                vec![]
            },
        },
    )
    .await?;
    let agent_args: &[&str] = if args.metrics {
        &["--metrics-listen", "127.0.0.1:0"]
    } else {
        &[]
    };
    let mut agent = AgentProcess::start_with(
        &bins,
        &work.path().join("agent"),
        &coordinator,
        &metadata.url(),
        false,
        agent_args,
    )
    .await?;
    let scraper = if args.metrics {
        let targets = vec![
            coordinator
                .metrics_addr
                .context("the coordinator printed no metrics address")?,
            agent.metrics_addr().await?,
        ];
        Some(tokio::spawn(scrape_every_second(targets)))
    } else {
        None
    };
    say(&format!(
        "coordinator serving TLS on {}; agent enrolled for {CVM_ID} with a single-use join token and \
         authenticating with its own client certificate (logs in {})",
        coordinator.addr,
        work.path().display()
    ));

    let result = async {
        let mut api = coordinator.client().await?;
        drive(
            &args,
            &mut api,
            &source,
            &dest,
            &source_client,
            &dest_client,
        )
        .await
    }
    .await;
    if let Some(scraper) = scraper {
        scraper.abort();
        say("metrics were served by the coordinator and the agent and scraped every second");
    }
    if let Err(error) = agent.terminate().await {
        say(&format!("agent shutdown: {error:#}"));
    }
    if let Err(error) = coordinator.terminate().await {
        say(&format!("coordinator shutdown: {error:#}"));
    }
    if args.keep {
        let kept = work.keep();
        say(&format!("work folder kept: {}", kept.display()));
    }
    let summary = result?;
    println!();
    println!("==================== Ferry demo summary ====================");
    println!("documents migrated      {}", summary.documents);
    println!("bytes copied            {:.1} MiB", mib(summary.bytes));
    println!("full sync duration      {:.1} s", summary.sync_seconds);
    println!(
        "full sync throughput    {:.0} docs/s, {:.1} MiB/s",
        summary.docs_per_second, summary.mib_per_second
    );
    println!("oplog entries applied   {}", summary.oplog_applied);
    println!("lag at cut-over         {:.2} s", summary.lag_seconds);
    println!(
        "application writes      {} inserts, {} updates, {} deletes",
        summary.inserts, summary.updates, summary.deletes
    );
    println!("verification            {}", summary.verification);
    println!(
        "total demo time         {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("=============================================================");
    if !summary.verified {
        bail!("verification failed: the destination differs from the source");
    }
    Ok(())
}

struct Summary {
    documents: u64,
    bytes: u64,
    sync_seconds: f64,
    docs_per_second: f64,
    mib_per_second: f64,
    oplog_applied: u64,
    lag_seconds: f64,
    inserts: u64,
    updates: u64,
    deletes: u64,
    verification: String,
    verified: bool,
}

async fn drive(
    args: &Args,
    api: &mut OperatorClient,
    source: &mongosim::MongoSim,
    dest: &mongosim::MongoSim,
    source_client: &mongodb::Client,
    dest_client: &mongodb::Client,
) -> anyhow::Result<Summary> {
    say("waiting for the agent to connect");
    wait_for_agent(api).await?;

    say(&format!("RegisterInstance {INSTANCE_ID} ({REGION})"));
    api.register_instance(pb::RegisterInstanceRequest {
        instance: Some(pb::Instance {
            instance_id: INSTANCE_ID.into(),
            region: REGION.into(),
            uri: dest.uri(),
            username: "admin".into(),
            password: DEST_PASSWORD.into(),
            ..Default::default()
        }),
    })
    .await?;

    let spec = pb::TaskSpec {
        name: "demo: shop, analytics, crm".into(),
        region: REGION.into(),
        kind: pb::TaskKind::Cvm as i32,
        cvm_id: CVM_ID.into(),
        mongo_host: source.addr().ip().to_string(),
        port: u32::from(source.addr().port()),
        username: "root".into(),
        password: SOURCE_PASSWORD.into(),
        destination_instance_id: INSTANCE_ID.into(),
        databases: dataset::DATABASES.iter().map(|s| s.to_string()).collect(),
        require_verification: false,
        tenant: String::new(),
    };
    let task = api
        .create_task(pb::CreateTaskRequest { spec: Some(spec) })
        .await?
        .into_inner();
    let task_id = task.id.clone();
    say(&format!("CreateTask -> {task_id}"));

    say("CheckTask (parameter verification)");
    api.check_task(pb::CheckTaskRequest {
        task_id: task_id.clone(),
    })
    .await?;
    let checked = wait_until(api, &task_id, Duration::from_secs(120), |t| {
        t.state != pb::TaskState::Checking as i32
    })
    .await?;
    for item in &checked.checks {
        let status = pb::CheckStatus::try_from(item.status)
            .map(|s| s.as_str_name())
            .unwrap_or("?");
        println!(
            "    {:<24} {:<22} {}",
            item.id,
            status.trim_start_matches("CHECK_STATUS_"),
            item.message
        );
    }
    if checked.state != pb::TaskState::CheckPassed as i32 {
        bail!("checks did not pass: {}", checked.failure_reason);
    }

    let stop_writer = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(dataset::WriterStats::default());
    let writer = tokio::spawn(dataset::write_until(
        source_client.clone(),
        args.docs,
        args.write_rate,
        stop_writer.clone(),
        stats.clone(),
    ));
    say(&format!(
        "application writing ~{} ops/s to the source; StartTask",
        args.write_rate
    ));
    api.start_task(pb::StartTaskRequest {
        task_id: task_id.clone(),
    })
    .await?;

    let sync_started = Instant::now();
    let mut sync_seconds = None;
    let mut oplog_since = None;
    let mut last_print = Instant::now() - Duration::from_secs(5);
    let mut watch = api
        .watch_task(pb::WatchTaskRequest {
            task_id: task_id.clone(),
        })
        .await?
        .into_inner();
    loop {
        let task = tokio::time::timeout(Duration::from_secs(600), watch.message())
            .await
            .context("no task update for 10 minutes")??
            .context("watch stream ended before the task reached oplog sync")?;
        if task.state == pb::TaskState::Failed as i32 {
            stop_writer.store(true, Ordering::Relaxed);
            bail!("task failed: {}", task.failure_reason);
        }
        let phase = task.phase;
        if phase == pb::TaskPhase::OplogSync as i32 {
            sync_seconds.get_or_insert(sync_started.elapsed().as_secs_f64());
            oplog_since.get_or_insert(Instant::now());
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            print_progress(&task);
        }
        if let Some(since) = oplog_since {
            let lag = task
                .progress
                .as_ref()
                .map(|p| p.lag_seconds)
                .unwrap_or(f64::MAX);
            if since.elapsed() >= Duration::from_secs(args.oplog_seconds) && lag < 2.0 {
                break;
            }
        }
    }
    stop_writer.store(true, Ordering::Relaxed);
    writer.await.context("writer task")??;
    say("application stopped writing (cut-over); CompleteTask with verification required");
    api.complete_task(pb::CompleteTaskRequest {
        task_id: task_id.clone(),
        require_verification: true,
    })
    .await?;
    let done = wait_until(api, &task_id, Duration::from_secs(300), |t| {
        t.state == pb::TaskState::Succeeded as i32 || t.state == pb::TaskState::Failed as i32
    })
    .await?;
    if done.state != pb::TaskState::Succeeded as i32 {
        bail!("task did not succeed: {}", done.failure_reason);
    }
    let product = done.verification.clone().unwrap_or_default();
    let product_passed = product.state == pb::VerificationState::Passed as i32;
    let mismatches = product.confirmed.map_or(0, |c| {
        c.missing_on_destination + c.extra_on_destination + c.different + c.metadata
    });
    say(&format!(
        "task SUCCEEDED after Ferry's verifier (run {}) compared {} documents at cut-over: {} confirmed mismatches",
        product.run, product.documents_compared, mismatches
    ));
    say(
        "the demo's own independent check: every collection (sorted by _id, byte for byte) and its indexes",
    );

    let mut verified = true;
    let mut documents = 0;
    for (db, coll) in dataset::namespaces() {
        let report = verify::compare(source_client, dest_client, db, coll).await?;
        println!(
            "    {:<20} {:>9} docs  data {}  indexes {}  {}",
            report.namespace,
            report.documents,
            if report.equal { "equal" } else { "DIFFERENT" },
            if report.indexes_equal {
                "equal"
            } else {
                "DIFFERENT"
            },
            report.detail
        );
        verified &= report.equal && report.indexes_equal;
        documents += report.documents;
    }
    let progress = done.progress.unwrap_or_default();
    let sync_seconds = sync_seconds.unwrap_or_else(|| sync_started.elapsed().as_secs_f64());
    Ok(Summary {
        documents,
        bytes: progress.bytes_copied,
        sync_seconds,
        docs_per_second: progress.documents_copied as f64 / sync_seconds.max(0.001),
        mib_per_second: mib(progress.bytes_copied) / sync_seconds.max(0.001),
        oplog_applied: progress.oplog_entries_applied,
        lag_seconds: progress.lag_seconds,
        inserts: stats.inserts.load(Ordering::Relaxed),
        updates: stats.updates.load(Ordering::Relaxed),
        deletes: stats.deletes.load(Ordering::Relaxed),
        verification: match (verified, product_passed) {
            (true, true) => format!(
                "PASSED: destination equals source (Ferry's verifier: {} documents, 0 mismatches; the demo's own \
                 comparison agrees)",
                product.documents_compared
            ),
            (mine, theirs) => format!(
                "FAILED: the demo's comparison {}, Ferry's verifier {}",
                if mine { "passed" } else { "failed" },
                if theirs { "passed" } else { "failed" }
            ),
        },
        verified: verified && product_passed,
    })
}

fn print_progress(task: &pb::Task) {
    let state = pb::TaskState::try_from(task.state)
        .map(|s| s.as_str_name())
        .unwrap_or("?");
    let phase = pb::TaskPhase::try_from(task.phase)
        .map(|s| s.as_str_name())
        .unwrap_or("?");
    let Some(p) = &task.progress else {
        println!("    {state} {phase}");
        return;
    };
    let pct = if p.documents_estimated > 0 {
        100.0 * p.documents_copied as f64 / p.documents_estimated as f64
    } else {
        0.0
    };
    // Rates are over the last 10 s: the copy rate while copying, the apply rate (and the source's) afterwards.
    let rate = if task.phase == pb::TaskPhase::OplogSync as i32 {
        format!(
            "{:>6.0} applied/s (source {:.0}/s)",
            p.apply_entries_per_second, p.source_entries_per_second
        )
    } else {
        let eta = match p.eta_seconds {
            s if s >= 0 => format!("ETA {s}s"),
            _ => "ETA ?".to_owned(),
        };
        format!("{:>8.0} docs/s {eta}", p.documents_per_second)
    };
    println!(
        "    {:<10} {:<24} copied {:>9}/{:<9} ({pct:5.1}%) {rate}  indexes {}/{}  applied {:>7}  lag {:.2}s",
        state.trim_start_matches("TASK_STATE_"),
        phase.trim_start_matches("TASK_PHASE_"),
        p.documents_copied,
        p.documents_estimated,
        p.indexes_built,
        p.indexes_total,
        p.oplog_entries_applied,
        p.lag_seconds
    );
}

async fn wait_for_agent(api: &mut OperatorClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let agents = api
            .list_agents(pb::ListAgentsRequest::default())
            .await?
            .into_inner();
        if agents
            .agents
            .iter()
            .any(|a| a.connected && a.cvm_instance_id == CVM_ID)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agent did not connect within 60 s (see agent.log)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_until(
    api: &mut OperatorClient,
    task_id: &str,
    timeout: Duration,
    done: impl Fn(&pb::Task) -> bool,
) -> anyhow::Result<pb::Task> {
    let mut watch = api
        .watch_task(pb::WatchTaskRequest {
            task_id: task_id.to_string(),
        })
        .await?
        .into_inner();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let task = tokio::time::timeout(left, watch.message())
            .await
            .with_context(|| {
                format!("task {task_id} did not reach the expected state in {timeout:?}")
            })??
            .context("watch stream ended")?;
        if done(&task) {
            return Ok(task);
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Scrapes `/metrics` of every target once a second, as Prometheus would, until aborted.
async fn scrape_every_second(targets: Vec<std::net::SocketAddr>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        for addr in &targets {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
                let request =
                    format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                if stream.write_all(request.as_bytes()).await.is_ok() {
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn say(line: &str) {
    println!("[ferry-demo] {line}");
}
