//! Test harness: two mongosim servers (source and destination), an engine run in a task with its events
//! observable, and comparison helpers (byte-for-byte per collection sorted by `_id`, indexes, options).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_engine::{
    run_migration, Checkpoint, Endpoint, EngineError, EngineEvent, MigrationConfig,
    MigrationControl, Outcome, Phase, ProgressSnapshot, Tuning,
};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::options::ClientOptions;
use mongodb::Client;
use mongosim::MongoSim;
use tokio::task::JoinHandle;

pub const USER: &str = "root";
pub const PASSWORD: &str = "secret";

pub struct Pair {
    pub source: MongoSim,
    pub dest: MongoSim,
    pub src: Client,
    pub dst: Client,
    pub dir: tempfile::TempDir,
}

pub async fn sim(oplog_bytes: usize) -> Result<MongoSim> {
    Ok(MongoSim::builder()
        .replset("rs0")
        .user(USER, PASSWORD)
        .oplog_size_bytes(oplog_bytes)
        .start()
        .await?)
}

pub fn source_uri(sim: &MongoSim) -> String {
    format!("mongodb://{}/?directConnection=true", sim.addr())
}

pub async fn client(sim: &MongoSim) -> Result<Client> {
    let mut opts = ClientOptions::parse(source_uri(sim)).await?;
    opts.credential = Some(
        mongodb::options::Credential::builder()
            .username(USER.to_string())
            .password(PASSWORD.to_string())
            .source("admin".to_string())
            .build(),
    );
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    Ok(Client::with_options(opts)?)
}

pub async fn pair() -> Result<Pair> {
    pair_with_oplog(64 << 20).await
}

pub async fn pair_with_oplog(oplog_bytes: usize) -> Result<Pair> {
    let source = sim(oplog_bytes).await?;
    let dest = sim(64 << 20).await?;
    let src = client(&source).await?;
    let dst = client(&dest).await?;
    Ok(Pair {
        source,
        dest,
        src,
        dst,
        dir: tempfile::tempdir()?,
    })
}

impl Pair {
    pub fn config(&self, databases: &[&str]) -> MigrationConfig {
        MigrationConfig {
            task_id: "task-1".into(),
            source: Endpoint {
                uri: source_uri(&self.source),
                username: USER.into(),
                password: PASSWORD.into(),
            },
            destination: Endpoint {
                uri: self.dest.uri(),
                username: USER.into(),
                password: PASSWORD.into(),
            },
            databases: databases.iter().map(|s| s.to_string()).collect(),
            spool_dir: self.dir.path().join("spool"),
            tuning: Tuning {
                copy_workers: 4,
                docs_per_range: 300,
                apply_workers: 4,
                checkpoint_interval: Duration::from_millis(300),
                progress_interval: Duration::from_millis(200),
                spool_cap_bytes: 256 << 20,
                retry_budget: Duration::from_secs(120),
            },
        }
    }
}

/// What the test can observe of a running engine.
#[derive(Default)]
pub struct Seen {
    pub phases: Vec<Phase>,
    pub checkpoints: Vec<Checkpoint>,
    pub progress: Vec<ProgressSnapshot>,
    /// When each progress event arrived (same index as `progress`).
    pub progress_at: Vec<Instant>,
    /// `EngineEvent::Note`s: (kind, detail).
    pub notes: Vec<(String, String)>,
}

pub struct Run {
    pub control: MigrationControl,
    pub seen: Arc<Mutex<Seen>>,
    pub handle: JoinHandle<Result<Outcome, EngineError>>,
}

pub fn start(config: MigrationConfig, resume: Option<Checkpoint>) -> Run {
    start_with(config, resume, MigrationControl::new())
}

/// Like `start`, with controls set up by the caller (a throttle or pause from the start).
pub fn start_with(
    config: MigrationConfig,
    resume: Option<Checkpoint>,
    control: MigrationControl,
) -> Run {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let mut s = seen2.lock().unwrap();
            match ev {
                EngineEvent::PhaseChanged(p) => s.phases.push(p),
                EngineEvent::Checkpoint(c) => s.checkpoints.push(c),
                EngineEvent::Progress(p) => {
                    s.progress.push(p);
                    s.progress_at.push(Instant::now());
                }
                EngineEvent::Note { kind, detail } => s.notes.push((kind, detail)),
            }
        }
    });
    let handle = tokio::spawn(run_migration(config, resume, control.clone(), tx));
    Run {
        control,
        seen,
        handle,
    }
}

impl Run {
    /// Waits (up to `timeout`) until `cond` holds on what was seen.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Seen) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(&self.seen.lock().unwrap()) {
                return Ok(());
            }
            if self.handle.is_finished() {
                bail!("engine finished before: {what}");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("timed out waiting for: {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to `timeout`) until the engine reached OPLOG_SYNC.
    pub async fn wait_for_oplog_sync(&self, timeout: Duration) -> Result<()> {
        self.wait_for("oplog sync", timeout, |s| {
            s.phases.contains(&Phase::OplogSync)
        })
        .await
    }

    pub fn last_checkpoint(&self) -> Option<Checkpoint> {
        self.seen.lock().unwrap().checkpoints.last().cloned()
    }

    pub async fn finish(self, timeout: Duration) -> Result<Result<Outcome, EngineError>> {
        Ok(tokio::time::timeout(timeout, self.handle)
            .await
            .context("engine did not finish in time")??)
    }
}

/// Raw documents of a collection sorted by `_id`.
pub async fn dump(client: &Client, db: &str, coll: &str) -> Result<Vec<RawDocumentBuf>> {
    let c = client.database(db).collection::<RawDocumentBuf>(coll);
    Ok(c.find(doc! {})
        .sort(doc! {"_id": 1})
        .await?
        .try_collect()
        .await?)
}

pub async fn collections(client: &Client, db: &str) -> Result<Vec<Document>> {
    let mut v: Vec<Document> = client
        .database(db)
        .run_cursor_command(doc! {"listCollections": 1})
        .await?
        .try_collect()
        .await?;
    for d in &mut v {
        if let Ok(info) = d.get_document_mut("info") {
            info.remove("uuid");
        }
    }
    v.sort_by(|a, b| {
        a.get_str("name")
            .unwrap_or("")
            .cmp(b.get_str("name").unwrap_or(""))
    });
    Ok(v)
}

pub async fn indexes(client: &Client, db: &str, coll: &str) -> Result<Vec<Document>> {
    let mut v: Vec<Document> = client
        .database(db)
        .run_cursor_command(doc! {"listIndexes": coll})
        .await?
        .try_collect()
        .await?;
    v.sort_by(|a, b| {
        a.get_str("name")
            .unwrap_or("")
            .cmp(b.get_str("name").unwrap_or(""))
    });
    Ok(v)
}

/// Asserts source and destination are equal for the given databases: collections with options, every
/// document byte for byte sorted by `_id`, and indexes.
pub async fn assert_equal(p: &Pair, dbs: &[&str]) -> Result<()> {
    for db in dbs {
        let sc = collections(&p.src, db).await?;
        let dc = collections(&p.dst, db).await?;
        let names: Vec<&str> = sc.iter().filter_map(|d| d.get_str("name").ok()).collect();
        let dnames: Vec<&str> = dc.iter().filter_map(|d| d.get_str("name").ok()).collect();
        if names != dnames {
            bail!("{db}: collections differ: source {names:?} destination {dnames:?}");
        }
        for (s, d) in sc.iter().zip(dc.iter()) {
            if s.get_document("options").ok() != d.get_document("options").ok() {
                bail!("{db}: options differ: {s} vs {d}");
            }
        }
        for (name, s) in names.iter().zip(sc.iter()) {
            if s.get_str("type").unwrap_or("collection") != "collection" {
                continue;
            }
            let a = dump(&p.src, db, name).await?;
            let b = dump(&p.dst, db, name).await?;
            if a.len() != b.len() {
                bail!(
                    "{db}.{name}: {} documents on the source, {} on the destination",
                    a.len(),
                    b.len()
                );
            }
            for (x, y) in a.iter().zip(b.iter()) {
                if x.as_bytes() != y.as_bytes() {
                    bail!(
                        "{db}.{name}: documents differ:\n  source {:?}\n  dest   {:?}",
                        Document::try_from(x.as_ref())?,
                        Document::try_from(y.as_ref())?
                    );
                }
            }
            let si: Vec<Document> = indexes(&p.src, db, name)
                .await?
                .into_iter()
                .map(canonical_index)
                .collect();
            let di: Vec<Document> = indexes(&p.dst, db, name)
                .await?
                .into_iter()
                .map(canonical_index)
                .collect();
            if si != di {
                bail!("{db}.{name}: indexes differ:\n  source {si:?}\n  dest   {di:?}");
            }
        }
    }
    Ok(())
}

/// Index spec with its options in name order and whole numbers as Int64: `collMod` (which restores
/// unique and TTL indexes at cut-over) rewrites options at the end of the spec and
/// `expireAfterSeconds` as Int64 (mongodb/mongo `bson_collection_catalog_entry.cpp`); same index.
pub fn canonical_index(mut spec: Document) -> Document {
    let mut out = Document::new();
    if let Some(key) = spec.remove("key") {
        // Documents compare as maps; the order of an index key matters: compare it as a list of fields.
        let key = match key {
            mongodb::bson::Bson::Document(d) => mongodb::bson::Bson::Array(
                d.into_iter()
                    .map(|(k, v)| mongodb::bson::Bson::Document(doc! {k: v}))
                    .collect(),
            ),
            other => other,
        };
        out.insert("key", key);
    }
    let mut rest: Vec<(String, mongodb::bson::Bson)> = spec.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in rest {
        let v = match v {
            mongodb::bson::Bson::Int32(n) => mongodb::bson::Bson::Int64(i64::from(n)),
            other => other,
        };
        out.insert(k, v);
    }
    out
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
