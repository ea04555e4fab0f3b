//! Benchmark of the verifier alone (called by the project's bench script).
//!
//! Seeds N ~1 KiB documents over `--collections` collections into a source and a destination with the
//! same raw bytes (the same `RawDocumentBuf` batches inserted on both sides), then runs a full
//! verification (`Mode::Full`, offline: `applied = None`) and a hashed one (`Mode::Hashed`), each
//! timed and with its own peak RSS, and finally measures the source's scan ceiling (one raw cursor
//! per collection, in parallel, as in engine_bench) so the verifier's rate can be read as a ratio of
//! it. Prints `seeded:`, `verify:`, `verify_hashed:` and `scan_ceiling:` lines (`key=value`).
//!
//! The servers are given by `--source-uri` and `--dest-uri` (e.g. two `mongosim` processes, so the
//! peak RSS is the verifier's own); without them both are in-process mongosims (then peak RSS
//! includes them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark tool: failures abort the run

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry_verify::{
    run_verification, Endpoint, Mode, ReadPref, VerifyConfig, VerifyControl, VerifyStatus,
    VerifyTuning,
};
use mongodb::bson::{doc, RawDocumentBuf};
use mongodb::options::{ClientOptions, Credential};
use mongodb::Client;

#[derive(Parser, Debug)]
struct Args {
    /// Documents to seed on each side (~1 KiB each).
    #[arg(long, default_value_t = 200_000)]
    docs: u64,
    /// Collections the documents are spread over.
    #[arg(long, default_value_t = 4)]
    collections: u64,
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
    /// Ranges compared concurrently (`VerifyConfig::parallelism`).
    #[arg(long, default_value_t = 8)]
    parallelism: usize,
    /// Target documents per `_id` range (`VerifyTuning::docs_per_range`).
    #[arg(long, default_value_t = 50_000)]
    docs_per_range: u64,
    /// Documents per cursor batch (`VerifyTuning::batch_docs`).
    #[arg(long, default_value_t = 1000)]
    batch_docs: u32,
    /// Skip the hashed-mode run.
    #[arg(long)]
    no_hashed: bool,
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
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Resets the peak RSS to the current RSS (Linux `clear_refs`), so a peak covers what follows only.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The same document as engine_bench's `doc_1k`, built raw.
fn doc_1k(i: u64) -> Result<RawDocumentBuf> {
    let d = doc! {"_id": i as i64, "name": format!("user{i}"), "n": i as i64, "tags": ["a", "b", "c"], "pad": "x".repeat(900)};
    Ok(RawDocumentBuf::try_from(&d)?)
}

/// Inserts the same raw batches on both sides (same bytes, same order).
async fn seed(src: &Client, dst: &Client, docs: u64, colls: u64) -> Result<u64> {
    let mut bytes = 0u64;
    let per = docs.div_ceil(colls.max(1));
    for c in 0..colls {
        let name = format!("c{c}");
        let s = src.database("bench").collection::<RawDocumentBuf>(&name);
        let d = dst.database("bench").collection::<RawDocumentBuf>(&name);
        let mut i = c * per;
        let end = ((c + 1) * per).min(docs);
        while i < end {
            let batch = (i..(i + 2000).min(end))
                .map(doc_1k)
                .collect::<Result<Vec<_>>>()?;
            bytes += batch.iter().map(|b| b.as_bytes().len() as u64).sum::<u64>();
            let (a, b) = tokio::join!(
                s.insert_many(&batch).ordered(true),
                d.insert_many(&batch).ordered(true)
            );
            a?;
            b?;
            i += 2000;
        }
    }
    Ok(bytes)
}

/// The source's scan ceiling: one raw cursor per collection, in parallel (as in engine_bench).
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

fn config(args: &Args, source: &str, dest: &str, dir: &Path, mode: Mode) -> VerifyConfig {
    let ep = |uri: &str| Endpoint {
        uri: uri.to_string(),
        username: args.user.clone(),
        password: args.password.clone(),
    };
    VerifyConfig {
        task_id: format!("bench-{mode:?}").to_lowercase(),
        source: ep(source),
        destination: ep(dest),
        databases: vec!["bench".into()],
        mode,
        read_preference: ReadPref::Primary,
        max_docs_per_second: 0,
        parallelism: args.parallelism,
        work_dir: dir.to_path_buf(),
        relaxed_indexes: vec![],
        tuning: VerifyTuning {
            docs_per_range: args.docs_per_range,
            batch_docs: args.batch_docs,
            progress_interval: Duration::from_secs(1),
            ..VerifyTuning::default()
        },
    }
}

/// One offline verification: (documents compared, seconds, peak RSS MiB over the run).
async fn verify(cfg: VerifyConfig) -> Result<(u64, f64, f64)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let (_applied_tx, applied) = tokio::sync::watch::channel(None);
    reset_peak_rss();
    let t = Instant::now();
    let report = run_verification(cfg, None, VerifyControl::new(), applied, tx)
        .await
        .context("verification failed")?;
    let secs = t.elapsed().as_secs_f64();
    let rss = peak_rss_mib();
    drain.await?;
    if report.status != VerifyStatus::Passed {
        bail!("identical data did not verify: {}", report.summary);
    }
    Ok((report.progress.documents_compared, secs, rss))
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
    let mut sims = Vec::new();
    for _ in 0..2 {
        sims.push(
            mongosim::MongoSim::builder()
                .replset("rs0")
                .user(&args.user, &args.password)
                .start()
                .await?,
        );
    }
    let uri = |s: &mongosim::MongoSim| format!("mongodb://{}/?directConnection=true", s.addr());
    Ok(Servers {
        source_uri: uri(&sims[0]),
        dest_uri: uri(&sims[1]),
        _sims: sims,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let s = servers(&args).await?;
    let src = client(&s.source_uri, &args.user, &args.password).await?;
    let dst = client(&s.dest_uri, &args.user, &args.password).await?;
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let bytes = seed(&src, &dst, args.docs, args.collections).await?;
    println!(
        "seeded: docs={} bytes={bytes} seconds={:.1}",
        args.docs,
        t.elapsed().as_secs_f64()
    );
    let mut runs = vec![("verify", Mode::Full)];
    if !args.no_hashed {
        runs.push(("verify_hashed", Mode::Hashed));
    }
    let mut results = Vec::new();
    for (label, mode) in runs {
        let cfg = config(&args, &s.source_uri, &s.dest_uri, dir.path(), mode);
        results.push((label, verify(cfg).await?));
    }
    // Measured after the verifications so its buffers do not count in their peak RSS; best of two
    // passes, so the ratio is not flattered by a slow first pass.
    let (a, n) = scan_ceiling(&src, args.collections).await?;
    let (b, _) = scan_ceiling(&src, args.collections).await?;
    let scan = a.max(b);
    println!("scan_ceiling: docs_per_s={scan:.0} docs={n}");
    for (label, (docs, secs, rss)) in results {
        let dps = docs as f64 / secs;
        println!(
            "{label}: docs={docs} seconds={secs:.2} docs_per_s={dps:.0} scan_ceiling_docs_per_s={scan:.0} ratio={:.2} peak_rss_mib={rss:.0}",
            dps / scan.max(1.0)
        );
    }
    Ok(())
}
