//! Benchmark of the engine alone (called by the project's bench script).
//!
//! `full` mode: seeds N ~1 KiB documents into a source, measures the source's scan ceiling (one raw
//! cursor per collection, in parallel) and the destination's bulk-insert ceiling (raw unordered
//! `insert_many`, in parallel), then runs a full sync and prints docs/s, MB/s and peak RSS.
//! `oplog` mode: migrates a small data set, then drives a sustained write load at `--rate` writes/s for
//! `--seconds` and prints apply throughput and end-to-end lag p50/p99 (probe documents written to the
//! source and polled on the destination). With `--verify-online`, an online verification
//! (`ferry_verify::run_verification`, fed the engine's `last_applied` from its progress events) is
//! started once the engine is in OPLOG_SYNC and re-run until the write load ends; the line then says
//! `workload=verify-online`.
//!
//! By default both servers are in-process mongosims (then peak RSS includes them); pass `--source-uri`
//! and `--dest-uri` (e.g. two `mongosim` processes) to measure the engine's own RSS.
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark tool: failures abort the run

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry_engine::{
    run_migration, Endpoint, EngineEvent, MigrationConfig, MigrationControl, Outcome, Phase, Tuning,
};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::options::{ClientOptions, Credential};
use mongodb::Client;

#[derive(Parser, Debug)]
struct Args {
    /// `full` (copy throughput) or `oplog` (apply throughput and lag).
    #[arg(long, default_value = "full")]
    mode: String,
    /// Documents to seed (~1 KiB each).
    #[arg(long, default_value_t = 200_000)]
    docs: u64,
    /// Collections the documents are spread over.
    #[arg(long, default_value_t = 4)]
    collections: u64,
    /// Writes per second in `oplog` mode.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Duration of the write load in `oplog` mode.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long)]
    source_uri: Option<String>,
    #[arg(long)]
    dest_uri: Option<String>,
    #[arg(long, default_value = "root")]
    user: String,
    #[arg(
        long,
        env = "BENCH_PASSWORD",
        default_value = "secret",
        hide_default_value = true
    )]
    password: String,
    #[arg(long, default_value_t = 8)]
    copy_workers: usize,
    #[arg(long, default_value_t = 8)]
    apply_workers: usize,
    #[arg(long, default_value_t = 50_000)]
    docs_per_range: u64,
    /// Concurrent writer tasks in `oplog` mode.
    #[arg(long, default_value_t = 4)]
    writers: u64,
    /// Skip the scan/insert ceiling measurements.
    #[arg(long)]
    no_ceilings: bool,
    /// `oplog` mode workload: `plain` (inserts and `$inc` updates spread over the documents) or
    /// `unique-hot` (the same rate on a collection with a unique secondary index: inserts with unique
    /// emails, half the updates on 16 hot documents per writer, and a unique-value swap between two
    /// documents every tick, `a.email=tmp; b.email=old_a; a.email=old_b`).
    #[arg(long, default_value = "plain")]
    workload: String,
    /// `oplog` mode: run online verifications of the migration (one after the other) while the write
    /// load runs.
    #[arg(long)]
    verify_online: bool,
}

async fn client(uri: &str, user: &str, password: &str) -> Result<Client> {
    let mut opts = ClientOptions::parse(uri).await?;
    opts.credential = Some(
        Credential::builder()
            .username(user.to_string())
            .password(password.to_string())
            .source("admin".to_string())
            .build(),
    );
    opts.max_pool_size = Some(64);
    Ok(Client::with_options(opts)?)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn doc_1k(i: u64) -> Document {
    doc! {"_id": i as i64, "name": format!("user{i}"), "n": i as i64, "tags": ["a", "b", "c"], "pad": "x".repeat(900)}
}

async fn seed(src: &Client, docs: u64, colls: u64) -> Result<u64> {
    let db = src.database("bench");
    let mut bytes = 0u64;
    let per = docs.div_ceil(colls);
    for c in 0..colls {
        let coll = db.collection::<Document>(&format!("c{c}"));
        let mut i = c * per;
        let end = ((c + 1) * per).min(docs);
        while i < end {
            let batch: Vec<Document> = (i..(i + 2000).min(end)).map(doc_1k).collect();
            bytes += batch
                .iter()
                .map(|d| d.to_vec().map(|v| v.len() as u64).unwrap_or(0))
                .sum::<u64>();
            coll.insert_many(batch).await?;
            i += 2000;
        }
    }
    Ok(bytes)
}

async fn scan_ceiling(src: &Client, colls: u64) -> Result<(f64, u64)> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..colls {
        let coll = src
            .database("bench")
            .collection::<RawDocumentBuf>(&format!("c{c}"));
        tasks.push(tokio::spawn(async move {
            let mut cur = coll.find(doc! {}).batch_size(10_000).await?;
            let mut n = 0u64;
            while cur.advance().await? {
                std::hint::black_box(cur.current());
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await??;
    }
    Ok((n as f64 / t.elapsed().as_secs_f64(), n))
}

async fn insert_ceiling(src: &Client, dst: &Client, colls: u64) -> Result<f64> {
    // Pre-read raw batches so only the insert side is timed.
    let mut batches: Vec<(u64, Vec<RawDocumentBuf>)> = Vec::new();
    for c in 0..colls {
        let coll = src
            .database("bench")
            .collection::<RawDocumentBuf>(&format!("c{c}"));
        let docs: Vec<RawDocumentBuf> = coll
            .find(doc! {})
            .limit(50_000)
            .await?
            .try_collect()
            .await?;
        for chunk in docs.chunks(2000) {
            batches.push((c, chunk.to_vec()));
        }
    }
    let total: usize = batches.iter().map(|b| b.1.len()).sum();
    let t = Instant::now();
    let mut tasks = Vec::new();
    let per_task = batches.len().div_ceil(8).max(1);
    for part in batches.chunks(per_task).map(|p| p.to_vec()) {
        let dst = dst.clone();
        tasks.push(tokio::spawn(async move {
            for (c, b) in part {
                dst.database("ceiling")
                    .collection::<RawDocumentBuf>(&format!("c{c}"))
                    .insert_many(&b)
                    .ordered(false)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    dst.database("ceiling").drop().await?;
    Ok(rate)
}

struct Servers {
    _sims: Vec<mongosim::MongoSim>,
    source_uri: String,
    dest_uri: String,
}

async fn servers(args: &Args) -> Result<Servers> {
    if let (Some(s), Some(d)) = (&args.source_uri, &args.dest_uri) {
        return Ok(Servers {
            _sims: Vec::new(),
            source_uri: s.clone(),
            dest_uri: d.clone(),
        });
    }
    let oplog_mb = 2048;
    let a = mongosim::MongoSim::builder()
        .replset("rs0")
        .user(&args.user, &args.password)
        .oplog_size_mb(oplog_mb)
        .start()
        .await?;
    let b = mongosim::MongoSim::builder()
        .replset("rs0")
        .user(&args.user, &args.password)
        .oplog_size_mb(oplog_mb)
        .start()
        .await?;
    let source_uri = format!("mongodb://{}/?directConnection=true", a.addr());
    let dest_uri = b.uri();
    Ok(Servers {
        _sims: vec![a, b],
        source_uri,
        dest_uri,
    })
}

fn config(args: &Args, s: &Servers, dir: &std::path::Path) -> MigrationConfig {
    MigrationConfig {
        task_id: "bench".into(),
        source: Endpoint {
            uri: s.source_uri.clone(),
            username: args.user.clone(),
            password: args.password.clone(),
        },
        destination: Endpoint {
            uri: s.dest_uri.clone(),
            username: args.user.clone(),
            password: args.password.clone(),
        },
        databases: vec!["bench".into()],
        spool_dir: dir.to_path_buf(),
        tuning: Tuning {
            copy_workers: args.copy_workers,
            docs_per_range: args.docs_per_range,
            apply_workers: args.apply_workers,
            ..Tuning::default()
        },
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let s = servers(&args).await?;
    let src = client(&s.source_uri, &args.user, &args.password).await?;
    let dst = client(&s.dest_uri, &args.user, &args.password).await?;
    let dir = tempfile::tempdir()?;
    let docs = if args.mode == "oplog" {
        args.docs.min(20_000)
    } else {
        args.docs
    };
    let t = Instant::now();
    let bytes = seed(&src, docs, args.collections).await?;
    println!(
        "seeded: docs={docs} bytes={bytes} seconds={:.1}",
        t.elapsed().as_secs_f64()
    );
    match args.mode.as_str() {
        "full" => full(&args, &s, &src, &dst, dir.path(), docs, bytes).await,
        "oplog" => oplog(&args, &s, &src, &dst, dir.path()).await,
        other => bail!("unknown mode {other}"),
    }
}

async fn full(
    args: &Args,
    s: &Servers,
    src: &Client,
    dst: &Client,
    dir: &std::path::Path,
    docs: u64,
    bytes: u64,
) -> Result<()> {
    // Peak RSS is reset here (Linux clear_refs) so it covers the migration only; the ceilings are
    // measured afterwards so their buffers do not count.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let control = MigrationControl::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let t = Instant::now();
    let handle = tokio::spawn(run_migration(
        config(args, s, dir),
        None,
        control.clone(),
        tx,
    ));
    let mut copy_secs = None;
    let mut plan_secs = 0.0;
    while let Some(ev) = rx.recv().await {
        if let EngineEvent::PhaseChanged(Phase::DataSync) = ev {
            plan_secs = t.elapsed().as_secs_f64();
        }
        if let EngineEvent::PhaseChanged(Phase::IndexCreation) = ev {
            copy_secs = Some(t.elapsed().as_secs_f64());
        }
        if let EngineEvent::PhaseChanged(Phase::OplogSync) = ev {
            control.request_complete();
        }
    }
    let out = handle.await?.context("migration failed")?;
    let total = t.elapsed().as_secs_f64();
    let Outcome::Completed(c) = out else {
        bail!("not completed")
    };
    let copy = copy_secs.unwrap_or(total);
    println!(
        "full_sync: docs={docs} bytes={bytes} plan_seconds={plan_secs:.2} copy_seconds={copy:.2} total_seconds={total:.2} docs_per_s={:.0} mb_per_s={:.1} peak_rss_mib={:.0}",
        docs as f64 / copy,
        bytes as f64 / copy / 1e6,
        peak_rss_mib()
    );
    println!("summary: {}", c.summary);
    if !args.no_ceilings {
        let (scan, n) = scan_ceiling(src, args.collections).await?;
        println!("scan_ceiling: docs_per_s={scan:.0} docs={n}");
        let ins = insert_ceiling(src, dst, args.collections).await?;
        println!("insert_ceiling: docs_per_s={ins:.0}");
    }
    Ok(())
}

async fn oplog(
    args: &Args,
    s: &Servers,
    src: &Client,
    dst: &Client,
    dir: &std::path::Path,
) -> Result<()> {
    let control = MigrationControl::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let handle = tokio::spawn(run_migration(
        config(args, s, dir),
        None,
        control.clone(),
        tx,
    ));
    let unique = args.workload == "unique-hot";
    if unique {
        src.database("bench")
            .run_command(doc! {"createIndexes": "load", "indexes": [{"key": {"email": 1}, "name": "email_1", "unique": true}]})
            .await?;
    }
    let in_sync = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(AtomicU64::new(0));
    // The engine's applied position, as the verifier wants it (what the agent feeds it).
    let (applied_tx, applied_rx) = tokio::sync::watch::channel(None::<ferry_verify::OpTime>);
    {
        let in_sync = in_sync.clone();
        let applied = applied.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                match ev {
                    EngineEvent::PhaseChanged(Phase::OplogSync) => {
                        in_sync.store(true, Ordering::SeqCst)
                    }
                    EngineEvent::Progress(p) => {
                        applied.store(p.oplog_entries_applied, Ordering::SeqCst);
                        if let Some(t) = p.last_applied {
                            applied_tx.send_replace(Some(ferry_verify::OpTime {
                                seconds: t.seconds,
                                increment: t.increment,
                            }));
                        }
                    }
                    _ => {}
                }
            }
        });
    }
    while !in_sync.load(Ordering::SeqCst) {
        if handle.is_finished() {
            bail!("migration ended early: {:?}", handle.await?);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let verifier = if args.verify_online {
        let mut rx = applied_rx.clone();
        rx.wait_for(|a| a.is_some()).await?;
        Some(tokio::spawn(verify_loop(
            verify_config(args, s, dir),
            applied_rx,
            stop.clone(),
        )))
    } else {
        None
    };
    let written = Arc::new(AtomicU64::new(0));
    let start_applied = applied.load(Ordering::SeqCst);
    let t = Instant::now();
    // Writers: every 10 ms, rate/100 writes (half inserts, half updates), spread over the writer tasks.
    let mut writers = Vec::new();
    for w in 0..args.writers.max(1) {
        let src = src.clone();
        let stop = stop.clone();
        let written = written.clone();
        let per_tick = (args.rate / 100 / args.writers.max(1)).max(2);
        writers.push(tokio::spawn(async move {
            let coll = src.database("bench").collection::<Document>("load");
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut next = w * 1_000_000_000;
            let first = next;
            let mut round = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let ins = per_tick / 2;
                let docs: Vec<Document> = (next..next + ins)
                    .map(|i| doc! {"_id": i as i64, "v": 0, "email": format!("e{i}"), "pad": "y".repeat(200)})
                    .collect();
                if !docs.is_empty() {
                    coll.insert_many(docs).await?;
                }
                let mut updates = per_tick - ins;
                if unique && next >= first + 16 {
                    // One unique swap (3 updates) between two of this writer's documents.
                    let a = first + 16 + round % (next - first - 16).max(1);
                    let b = first + (round * 7) % 16;
                    let ea = format!("e{a}");
                    let eb = format!("e{b}");
                    let (a, b) = (a as i64, b as i64);
                    let cur = |id: i64| {
                        let coll = coll.clone();
                        async move {
                            anyhow::Ok(
                                coll.find_one(doc! {"_id": id})
                                    .await?
                                    .and_then(|d| d.get_str("email").ok().map(str::to_string)),
                            )
                        }
                    };
                    let ca = cur(a).await?.unwrap_or(ea);
                    let cb = cur(b).await?.unwrap_or(eb);
                    coll.update_one(doc! {"_id": a}, doc! {"$set": {"email": format!("tmp-{w}")}})
                        .await?;
                    coll.update_one(doc! {"_id": b}, doc! {"$set": {"email": &ca}})
                        .await?;
                    coll.update_one(doc! {"_id": a}, doc! {"$set": {"email": &cb}})
                        .await?;
                    updates = updates.saturating_sub(3);
                    round += 1;
                }
                let ids: Vec<i64> = if unique {
                    // Hot keys: this writer's first 16 documents.
                    (0..updates).map(|k| (first + k % 16) as i64).collect()
                } else {
                    (next..next + updates)
                        .map(|i| i.saturating_sub(ins) as i64)
                        .collect()
                };
                for chunk in ids.chunks(16) {
                    coll.update_many(doc! {"_id": {"$in": chunk.to_vec()}}, doc! {"$inc": {"v": 1}})
                        .await?;
                }
                next += ins.max(1);
                written.fetch_add(per_tick, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    // Probe: end-to-end lag of a write, sampled every 100 ms.
    let mut lags = Vec::new();
    let probe_src = src.database("bench").collection::<Document>("probe");
    let probe_dst = dst.database("bench").collection::<Document>("probe");
    let mut k = 0i64;
    while t.elapsed() < Duration::from_secs(args.seconds) {
        let sent = Instant::now();
        probe_src.insert_one(doc! {"_id": k}).await?;
        loop {
            if probe_dst.find_one(doc! {"_id": k}).await?.is_some() {
                break;
            }
            if sent.elapsed() > Duration::from_secs(60) {
                bail!("probe {k} never arrived");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lags.push(sent.elapsed().as_secs_f64());
        k += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let verified = match verifier {
        Some(v) => Some(v.await??),
        None => None,
    };
    control.request_complete();
    let out = handle.await?.context("migration failed")?;
    let applied_total = match &out {
        Outcome::Completed(c) => c.progress.oplog_entries_applied,
        Outcome::Stopped => applied.load(Ordering::SeqCst),
    };
    lags.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let workload = if args.verify_online {
        "verify-online"
    } else {
        args.workload.as_str()
    };
    let verify_stats = verified
        .map(|v| {
            format!(
                " verify_runs={} verify_runs_finished={} verify_runs_passed={} verify_docs_compared={} verify_docs_per_s={:.0}",
                v.runs,
                v.finished,
                v.passed,
                v.docs,
                v.docs as f64 / secs
            )
        })
        .unwrap_or_default();
    println!(
        "oplog_apply: workload={workload} target_rate={} achieved_write_rate={:.0} apply_entries_per_s={:.0} lag_p50_ms={:.0} lag_p99_ms={:.0} probes={} peak_rss_mib={:.0}{verify_stats}",
        args.rate,
        written.load(Ordering::Relaxed) as f64 / secs,
        applied_total.saturating_sub(start_applied) as f64 / secs,
        pct(0.5) * 1000.0,
        pct(0.99) * 1000.0,
        lags.len(),
        peak_rss_mib()
    );
    Ok(())
}

fn verify_config(args: &Args, s: &Servers, dir: &std::path::Path) -> ferry_verify::VerifyConfig {
    let ep = |uri: &str| ferry_verify::Endpoint {
        uri: uri.to_string(),
        username: args.user.clone(),
        password: args.password.clone(),
    };
    ferry_verify::VerifyConfig {
        task_id: "bench-verify".into(),
        source: ep(&s.source_uri),
        destination: ep(&s.dest_uri),
        databases: vec!["bench".into()],
        mode: ferry_verify::Mode::Full,
        read_preference: ferry_verify::ReadPref::SecondaryPreferred,
        max_docs_per_second: 0,
        parallelism: 4,
        work_dir: dir.join("verify"),
        relaxed_indexes: vec![],
        tuning: ferry_verify::VerifyTuning::default(),
    }
}

/// What the online verifications did while the write load ran.
struct Verified {
    /// Verifications started.
    runs: u64,
    /// Verifications that reached a verdict (the last one is usually cancelled when the load ends).
    finished: u64,
    /// Of those, the ones that passed.
    passed: u64,
    /// Documents compared over all runs.
    docs: u64,
}

/// Runs online verifications one after the other until `stop`; the running one is then cancelled.
async fn verify_loop(
    base: ferry_verify::VerifyConfig,
    applied: tokio::sync::watch::Receiver<Option<ferry_verify::OpTime>>,
    stop: Arc<AtomicBool>,
) -> Result<Verified> {
    let mut v = Verified {
        runs: 0,
        finished: 0,
        passed: 0,
        docs: 0,
    };
    while !stop.load(Ordering::SeqCst) {
        let mut cfg = base.clone();
        cfg.task_id = format!("{}-{}", base.task_id, v.runs);
        v.runs += 1;
        let control = ferry_verify::VerifyControl::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let compared = Arc::new(AtomicU64::new(0));
        let drain = {
            let compared = compared.clone();
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    if let ferry_verify::VerifyEvent::Progress(p) = ev {
                        compared.store(p.documents_compared, Ordering::Relaxed);
                    }
                }
            })
        };
        let run = tokio::spawn(ferry_verify::run_verification(
            cfg,
            None,
            control.clone(),
            applied.clone(),
            tx,
        ));
        let canceller = {
            let stop = stop.clone();
            let control = control.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                control.cancel();
            })
        };
        let out = run.await?;
        canceller.abort();
        drain.await?;
        match out {
            Ok(report) => {
                v.finished += 1;
                if report.status == ferry_verify::VerifyStatus::Passed {
                    v.passed += 1;
                }
                v.docs += report.progress.documents_compared;
            }
            Err(ferry_verify::VerifyError::Cancelled) => {
                v.docs += compared.load(Ordering::Relaxed);
            }
            Err(e) => bail!("online verification failed: {e}"),
        }
    }
    Ok(v)
}
