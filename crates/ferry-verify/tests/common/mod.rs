//! Test harness: two mongosim servers (source and destination), copying a database raw (documents
//! as `RawDocumentBuf`, same options, indexes and views), a verification run in a task with its
//! events observable, and the source's `find` counter.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_verify::{
    run_verification, Endpoint, Mismatch, Mode, OpTime, ReadPref, VerifyCheckpoint, VerifyConfig,
    VerifyControl, VerifyError, VerifyEvent, VerifyProgress, VerifyReport, VerifyTuning,
};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::options::ClientOptions;
use mongodb::Client;
use mongosim::MongoSim;
use tokio::sync::watch;
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

pub async fn sim() -> Result<MongoSim> {
    Ok(MongoSim::builder()
        .replset("rs0")
        .user(USER, PASSWORD)
        .start()
        .await?)
}

pub fn uri(sim: &MongoSim) -> String {
    format!("mongodb://{}/?directConnection=true", sim.addr())
}

pub async fn client(sim: &MongoSim) -> Result<Client> {
    let mut opts = ClientOptions::parse(uri(sim)).await?;
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
    let source = sim().await?;
    let dest = sim().await?;
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
    pub fn config(&self, databases: &[&str], mode: Mode) -> VerifyConfig {
        let ep = |s: &MongoSim| Endpoint {
            uri: uri(s),
            username: USER.into(),
            password: PASSWORD.into(),
        };
        VerifyConfig {
            task_id: "task-1".into(),
            source: ep(&self.source),
            destination: ep(&self.dest),
            databases: databases.iter().map(|s| s.to_string()).collect(),
            mode,
            read_preference: ReadPref::SecondaryPreferred,
            max_docs_per_second: 0,
            parallelism: 3,
            work_dir: self.dir.path().join("verify"),
            relaxed_indexes: vec![],
            tuning: VerifyTuning {
                docs_per_range: 400,
                batch_docs: 100,
                progress_interval: Duration::from_millis(100),
                ..VerifyTuning::default()
            },
        }
    }

    /// Source `find` commands so far (`serverStatus.opcounters.query`).
    pub async fn source_finds(&self) -> Result<i64> {
        let st = self
            .src
            .database("admin")
            .run_command(doc! {"serverStatus": 1})
            .await?;
        let q = st.get_document("opcounters")?.get("query").cloned();
        Ok(match q {
            Some(Bson::Int64(n)) => n,
            Some(Bson::Int32(n)) => i64::from(n),
            other => bail!("opcounters.query: {other:?}"),
        })
    }
}

/// The source's newest oplog time (what a migration that applied everything would report).
pub async fn newest(client: &Client) -> Result<OpTime> {
    let hello = client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await?;
    let ts = hello
        .get_document("lastWrite")?
        .get_document("opTime")?
        .get_timestamp("ts")?;
    Ok(OpTime {
        seconds: ts.time,
        increment: ts.increment,
    })
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

/// Copies `db` from the source to the destination: collections with their options, documents raw,
/// secondary indexes, then views.
pub async fn copy_db(p: &Pair, db: &str) -> Result<()> {
    let colls: Vec<Document> = p
        .src
        .database(db)
        .run_cursor_command(doc! {"listCollections": 1})
        .await?
        .try_collect()
        .await?;
    let mut views = Vec::new();
    for c in colls {
        let name = c.get_str("name")?.to_string();
        if name.starts_with("system.") {
            continue;
        }
        let options = c.get_document("options").cloned().unwrap_or_default();
        if c.get_str("type")? == "view" {
            views.push((name, options));
            continue;
        }
        let mut create = doc! {"create": &name};
        create.extend(options);
        p.dst.database(db).run_command(create).await?;
        let docs = dump(&p.src, db, &name).await?;
        if !docs.is_empty() {
            p.dst
                .database(db)
                .collection::<RawDocumentBuf>(&name)
                .insert_many(&docs)
                .await?;
        }
        let specs: Vec<Document> = p
            .src
            .database(db)
            .run_cursor_command(doc! {"listIndexes": &name})
            .await?
            .try_collect()
            .await?;
        let specs: Vec<Document> = specs
            .into_iter()
            .filter(|s| s.get_str("name").ok() != Some("_id_"))
            .collect();
        if !specs.is_empty() {
            p.dst
                .database(db)
                .run_command(doc! {"createIndexes": &name, "indexes": specs})
                .await?;
        }
    }
    for (name, options) in views {
        let mut create = doc! {"create": &name};
        create.extend(options);
        p.dst.database(db).run_command(create).await?;
    }
    Ok(())
}

/// What the test can observe of a running verification.
#[derive(Default)]
pub struct Seen {
    pub checkpoints: Vec<VerifyCheckpoint>,
    pub mismatches: Vec<Mismatch>,
    pub progress: Vec<VerifyProgress>,
}

pub struct Run {
    pub control: VerifyControl,
    pub applied: Arc<watch::Sender<Option<OpTime>>>,
    pub seen: Arc<Mutex<Seen>>,
    pub handle: JoinHandle<Result<VerifyReport, VerifyError>>,
    collector: JoinHandle<()>,
}

/// Starts a verification; `on_event` runs in the collector for every event (with the control).
pub fn start_with(
    config: VerifyConfig,
    resume: Option<VerifyCheckpoint>,
    applied: Option<OpTime>,
    control: VerifyControl,
    on_event: impl Fn(&VerifyEvent, &VerifyControl) + Send + 'static,
) -> Run {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let (applied_tx, applied_rx) = watch::channel(applied);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    let ctl = control.clone();
    let collector = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            on_event(&ev, &ctl);
            let mut s = seen2.lock().unwrap();
            match ev {
                VerifyEvent::Checkpoint(c) => s.checkpoints.push(c),
                VerifyEvent::Mismatch(m) => s.mismatches.push(m),
                VerifyEvent::Progress(p) => s.progress.push(p),
            }
        }
    });
    let handle = tokio::spawn(run_verification(
        config,
        resume,
        control.clone(),
        applied_rx,
        tx,
    ));
    Run {
        control,
        applied: Arc::new(applied_tx),
        seen,
        handle,
        collector,
    }
}

pub fn start(config: VerifyConfig) -> Run {
    start_with(config, None, None, VerifyControl::new(), |_, _| {})
}

impl Run {
    /// Waits for the run to end and for every event it sent to be collected.
    pub async fn finish(
        self,
        timeout: Duration,
    ) -> Result<(Result<VerifyReport, VerifyError>, Seen)> {
        let res = tokio::time::timeout(timeout, self.handle)
            .await
            .context("verification did not finish in time")??;
        self.collector.await?;
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        Ok((res, seen))
    }

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
                bail!("verification finished before: {what}");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("timed out waiting for: {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `(namespace, kind, id, field path)` of each mismatch, sorted: what the tests compare exactly.
pub fn summary(ms: &[Mismatch]) -> Vec<(String, String, Option<String>, Option<String>)> {
    let mut v: Vec<_> = ms
        .iter()
        .map(|m| {
            (
                m.namespace.clone(),
                format!("{:?}", m.kind),
                m.id.clone(),
                m.field_path.clone(),
            )
        })
        .collect();
    v.sort();
    v
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
