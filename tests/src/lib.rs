//! End-to-end tests of Ferry, driven the way an operator does: real `ferry-coordinator` and `ferry-agent` processes
//! (so they can be SIGKILLed), mongosim source and destination in-process, the public gRPC API and `ferryctl`.
//!
//! This library holds what the tests share: a [`World`] (source, destination, metadata stand-in, coordinator, agent),
//! the dataset covering every BSON type, the concurrent writer and the byte-for-byte comparison.

// Test support code: a panic here is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_proto::v1 as pb;
pub use ferry_testkit::process::CoordinatorOptions;
use ferry_testkit::process::{
    AgentProcess, Binaries, CoordinatorProcess, Metadata, MetadataServer, OperatorClient,
};
use futures::TryStreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{
    doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document, JavaScriptCodeWithScope,
    RawDocumentBuf, Regex, Timestamp,
};
use mongodb::Client;

pub mod netfault;
pub mod realistic;

static NEXT_NAME: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

pub const CVM_ID: &str = "ins-e2etest1";
pub const REGION: &str = "ap-guangzhou";
pub const INSTANCE_ID: &str = "cmgo-e2etest1";
pub const SOURCE_PASSWORD: &str = "src-Secret-7391";
pub const DEST_PASSWORD: &str = "dst-Secret-5520";
/// Password of the source user `reader`, who can read every database but not the oplog.
pub const READER_PASSWORD: &str = "rdr-Secret-0142";

/// A whole installation on loopback: mongosim source and destination, the metadata stand-in, a coordinator and one
/// CVM agent whose metadata matches the source.
pub struct World {
    pub dir: tempfile::TempDir,
    pub source: mongosim::MongoSim,
    pub dest: mongosim::MongoSim,
    pub source_client: Client,
    pub dest_client: Client,
    pub metadata: MetadataServer,
    pub coordinator: CoordinatorProcess,
    pub agent: AgentProcess,
    pub api: OperatorClient,
    /// The relays the agent (only) goes through, with [`WorldOptions::relays`].
    pub relays: Option<Relays>,
}

/// The agent's own paths to the source, the destination and the coordinator (see [`netfault`]).
pub struct Relays {
    pub source: netfault::Relay,
    pub dest: netfault::Relay,
    pub coordinator: netfault::Relay,
}

/// Prepares the agent's work directory before the agent starts.
pub type PrepareAgentDir<'a> = Box<dyn FnOnce(&Path) -> anyhow::Result<()> + Send + 'a>;

/// How [`World::start_opts`] sets things up.
pub struct WorldOptions<'a> {
    /// Size of the source's oplog.
    pub oplog_mb: usize,
    pub agent_args: &'a [&'a str],
    pub coordinator: CoordinatorOptions,
    /// The agent reaches the source, the destination and the coordinator through [`Relays`] (whose links the
    /// fault campaign can fault) while the application and the operator connect directly.
    pub relays: bool,
    /// Called with the agent's work directory before the agent starts (e.g. to mount a small filesystem on its
    /// data dir, `agent-data`).
    pub prepare_agent_dir: Option<PrepareAgentDir<'a>>,
}

impl Default for WorldOptions<'_> {
    fn default() -> Self {
        Self {
            oplog_mb: 64,
            agent_args: &[],
            coordinator: CoordinatorOptions::default(),
            relays: false,
            prepare_agent_dir: None,
        }
    }
}

impl World {
    /// Starts everything with a source oplog of `oplog_mb` MiB.
    pub async fn start(oplog_mb: usize) -> anyhow::Result<Self> {
        Self::start_with(oplog_mb, &[]).await
    }

    /// Like [`World::start`], with extra command-line arguments for the agent.
    pub async fn start_with(oplog_mb: usize, agent_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_configured(oplog_mb, agent_args, |source| source).await
    }

    /// Like [`World::start_with`], with the source's mongosim builder passed through `configure` first (e.g. a
    /// short TTL monitor interval).
    pub async fn start_configured(
        oplog_mb: usize,
        agent_args: &[&str],
        configure: impl FnOnce(mongosim::Builder) -> mongosim::Builder,
    ) -> anyhow::Result<Self> {
        Self::start_full(
            oplog_mb,
            agent_args,
            CoordinatorOptions::default(),
            configure,
        )
        .await
    }

    /// Like [`World::start_configured`], with the coordinator started with `options` (e.g. TLS).
    pub async fn start_full(
        oplog_mb: usize,
        agent_args: &[&str],
        options: CoordinatorOptions,
        configure: impl FnOnce(mongosim::Builder) -> mongosim::Builder,
    ) -> anyhow::Result<Self> {
        Self::start_opts(
            WorldOptions {
                oplog_mb,
                agent_args,
                coordinator: options,
                ..WorldOptions::default()
            },
            configure,
        )
        .await
    }

    /// Starts everything as `options` say, the source's mongosim builder passed through `configure` first.
    pub async fn start_opts(
        options: WorldOptions<'_>,
        configure: impl FnOnce(mongosim::Builder) -> mongosim::Builder,
    ) -> anyhow::Result<Self> {
        let bins = Binaries::locate()?;
        let dir = tempfile::tempdir()?;
        let source = configure(
            mongosim::MongoSim::builder()
                .replset("rs-src")
                .user("root", SOURCE_PASSWORD)
                .user_with_roles("reader", READER_PASSWORD, &[("readAnyDatabase", "admin")])
                .oplog_size_mb(options.oplog_mb),
        )
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
        let metadata = MetadataServer::start(Metadata {
            instance_id: CVM_ID.into(),
            region: REGION.into(),
            local_ipv4: source.addr().ip().to_string(),
        })
        .await?;
        let coordinator =
            CoordinatorProcess::start_with(&bins, dir.path(), options.coordinator).await?;
        let relays = if options.relays {
            Some(Relays {
                source: netfault::Relay::start(source.addr()).await?,
                dest: netfault::Relay::start(dest.addr()).await?,
                coordinator: netfault::Relay::start(coordinator.addr).await?,
            })
        } else {
            None
        };
        let agent_dir = dir.path().join("agent");
        if let Some(prepare) = options.prepare_agent_dir {
            std::fs::create_dir_all(&agent_dir)?;
            prepare(&agent_dir)?;
        }
        let agent = AgentProcess::start_routed(
            &bins,
            &agent_dir,
            &coordinator,
            relays.as_ref().map(|r| {
                let scheme = if coordinator.tls() { "https" } else { "http" };
                format!("{scheme}://{}", r.coordinator.addr())
            }),
            &metadata.url(),
            false,
            options.agent_args,
        )
        .await?;
        let api = coordinator.client().await?;
        let world = Self {
            dir,
            source,
            dest,
            source_client,
            dest_client,
            metadata,
            coordinator,
            agent,
            api,
            relays,
        };
        world.wait_agent_connected(Duration::from_secs(30)).await?;
        world.register_destination().await?;
        Ok(world)
    }

    async fn register_destination(&self) -> anyhow::Result<()> {
        self.api
            .clone()
            .register_instance(pb::RegisterInstanceRequest {
                instance: Some(pb::Instance {
                    instance_id: INSTANCE_ID.into(),
                    region: REGION.into(),
                    // Through the agent's relay a direct connection: the destination's hello names its own
                    // address, which replica-set discovery would switch to.
                    uri: match &self.relays {
                        Some(r) => format!("mongodb://{}/?directConnection=true", r.dest.addr()),
                        None => self.dest.uri(),
                    },
                    username: "admin".into(),
                    password: DEST_PASSWORD.into(),
                    ..Default::default()
                }),
            })
            .await?;
        Ok(())
    }

    /// A CVM task spec for the source, migrating `databases`.
    pub fn spec(&self, databases: &[&str]) -> pb::TaskSpec {
        pb::TaskSpec {
            name: format!(
                "e2e {}",
                NEXT_NAME.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            region: REGION.into(),
            kind: pb::TaskKind::Cvm as i32,
            cvm_id: CVM_ID.into(),
            mongo_host: self.source.addr().ip().to_string(),
            port: u32::from(
                self.relays
                    .as_ref()
                    .map_or(self.source.addr(), |r| r.source.addr())
                    .port(),
            ),
            username: "root".into(),
            password: SOURCE_PASSWORD.into(),
            destination_instance_id: INSTANCE_ID.into(),
            databases: databases.iter().map(|d| d.to_string()).collect(),
            require_verification: false,
            tenant: String::new(),
        }
    }

    /// Creates the task, runs the checks (they must pass) and returns its id.
    pub async fn create_checked_task(&self, databases: &[&str]) -> anyhow::Result<String> {
        let mut api = self.api.clone();
        let task = api
            .create_task(pb::CreateTaskRequest {
                spec: Some(self.spec(databases)),
            })
            .await?
            .into_inner();
        api.check_task(pb::CheckTaskRequest {
            task_id: task.id.clone(),
        })
        .await?;
        let checked = self
            .wait_task(&task.id, Duration::from_secs(60), |t| {
                t.state != state(pb::TaskState::Checking)
            })
            .await?;
        if checked.state != state(pb::TaskState::CheckPassed) {
            bail!(
                "checks did not pass: {} {:?}",
                checked.failure_reason,
                checked.checks
            );
        }
        Ok(task.id)
    }

    /// Waits until ListAgents shows no connected agent.
    pub async fn wait_agent_disconnected(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let agents = self
                .api
                .clone()
                .list_agents(pb::ListAgentsRequest::default())
                .await?
                .into_inner()
                .agents;
            if agents.iter().all(|a| !a.connected) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "an agent is still connected after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_agent_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let agents = self
                .api
                .clone()
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
                bail!(
                    "agent not connected after {timeout:?}; agent log:\n{}",
                    self.agent.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Watches the task until `done` holds (or it ends in FAILED when `done` does not accept that).
    pub async fn wait_task(
        &self,
        task_id: &str,
        timeout: Duration,
        done: impl Fn(&pb::Task) -> bool,
    ) -> anyhow::Result<pb::Task> {
        let mut watch = self
            .api
            .clone()
            .watch_task(pb::WatchTaskRequest {
                task_id: task_id.to_string(),
            })
            .await?
            .into_inner();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        loop {
            let next = tokio::time::timeout_at(deadline, watch.message()).await;
            let task = match next {
                Ok(Ok(Some(task))) => task,
                Ok(Ok(None)) | Ok(Err(_)) => {
                    // The stream ended (coordinator restarted, or the task ended): reopen it.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match self.api.clone().watch_task(pb::WatchTaskRequest { task_id: task_id.to_string() }).await {
                        Ok(stream) => watch = stream.into_inner(),
                        Err(_) if tokio::time::Instant::now() < deadline => continue,
                        Err(e) => return Err(e.into()),
                    }
                    continue;
                }
                Err(_) => bail!(
                    "task {task_id} did not reach the expected condition in {timeout:?}; last seen: {last:#?}\nagent log tail:\n{}",
                    tail(&self.agent.logs(), 40)
                ),
            };
            if done(&task) {
                return Ok(task);
            }
            if task.state == state(pb::TaskState::Failed) {
                bail!(
                    "task failed: {} (resumable {})\nagent log tail:\n{}",
                    task.failure_reason,
                    task.resumable,
                    tail(&self.agent.logs(), 40)
                );
            }
            last = Some(task);
        }
    }

    pub async fn get_task(&self, task_id: &str) -> anyhow::Result<pb::Task> {
        Ok(self
            .api
            .clone()
            .get_task(pb::GetTaskRequest {
                task_id: task_id.to_string(),
            })
            .await?
            .into_inner())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn state(s: pb::TaskState) -> i32 {
    s as i32
}

pub fn phase(p: pb::TaskPhase) -> i32 {
    p as i32
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub use ferry_testkit::mongo::client;
use ferry_testkit::mongo::index_specs;

/// One document holding every BSON type, deep nesting, and field names with dots and `$`.
pub fn every_type_document(i: i32) -> Document {
    let mut deep = doc! { "leaf": i };
    for level in 0..20 {
        deep = doc! { format!("l{level}"): deep };
    }
    doc! {
        "_id": i,
        "double": 1.5 * f64::from(i),
        "string": format!("text {i} ünïcødé"),
        "document": { "a": i, "b": { "c": "d" } },
        "array": [1, "two", { "three": 3 }, [4, 5]],
        "binary": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 2, 255] },
        "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: (0..16).collect() },
        "objectid": ObjectId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, (i % 256) as u8]),
        "bool": i % 2 == 0,
        "date": DateTime::from_millis(1_700_000_000_000 + i64::from(i)),
        "null": Bson::Null,
        "regex": Regex { pattern: "^ab+c$".try_into().expect("constant"), options: "i".try_into().expect("constant") },
        "javascript": Bson::JavaScriptCode("function() { return 1; }".into()),
        "javascript_scope": JavaScriptCodeWithScope { code: "function() { return x; }".into(), scope: doc! { "x": i } },
        "int32": i,
        "timestamp": Timestamp { time: 1_700_000_000, increment: i as u32 },
        "int64": i64::from(i) << 33,
        "decimal128": Decimal128::from_bytes([7; 16]),
        "minkey": Bson::MinKey,
        "maxkey": Bson::MaxKey,
        "deep": deep,
        "with.dot": "dotted",
        "$dollar": "dollar",
        "tags": ["a", "b", "c"],
        "counter": 0,
    }
}

/// Seeds `db.coll` with `n` every-type documents.
pub async fn seed_every_type(client: &Client, db: &str, coll: &str, n: i32) -> anyhow::Result<()> {
    let docs: Vec<Document> = (0..n).map(every_type_document).collect();
    for chunk in docs.chunks(500) {
        client
            .database(db)
            .collection::<Document>(coll)
            .insert_many(chunk.to_vec())
            .await?;
    }
    Ok(())
}

/// Every collection of `databases` on `client`, by name.
pub async fn collections(client: &Client, db: &str) -> anyhow::Result<Vec<String>> {
    let mut names = client.database(db).list_collection_names().await?;
    names.sort();
    Ok(names)
}

/// Asserts that every collection of `databases` is equal on both sides: same names, same options, same indexes,
/// and the same documents byte for byte when sorted by `_id`.
pub async fn assert_same(
    source: &Client,
    dest: &Client,
    databases: &[&str],
) -> anyhow::Result<u64> {
    let mut documents = 0;
    for db in databases {
        let names = collections(source, db).await?;
        let dest_names = collections(dest, db).await?;
        if names != dest_names {
            bail!("{db}: collections differ: source {names:?}, destination {dest_names:?}");
        }
        for coll in &names {
            let ns = format!("{db}.{coll}");
            let (oa, ob) = (
                collection_options(source, db, coll).await?,
                collection_options(dest, db, coll).await?,
            );
            if oa != ob {
                bail!("{ns}: options differ:\nsource      {oa:?}\ndestination {ob:?}");
            }
            if oa.contains_key("viewOn") {
                // A view has no documents or indexes of its own: its definition (viewOn, pipeline) is compared.
                continue;
            }
            let a = sorted_docs(source, db, coll)
                .await
                .with_context(|| format!("reading source {ns}"))?;
            let b = sorted_docs(dest, db, coll)
                .await
                .with_context(|| format!("reading destination {ns}"))?;
            if a.len() != b.len() {
                bail!(
                    "{ns}: {} documents on the source, {} on the destination",
                    a.len(),
                    b.len()
                );
            }
            for (x, y) in a.iter().zip(&b) {
                if x.as_bytes() != y.as_bytes() {
                    bail!(
                        "{ns}: documents differ:\nsource      {:?}\ndestination {:?}",
                        Document::try_from(x.as_ref()),
                        Document::try_from(y.as_ref())
                    );
                }
            }
            documents += a.len() as u64;
            let (ia, ib) = (
                index_specs(source, db, coll).await?,
                index_specs(dest, db, coll).await?,
            );
            if ia != ib {
                bail!("{ns}: indexes differ:\nsource      {ia:?}\ndestination {ib:?}");
            }
        }
    }
    Ok(documents)
}

async fn sorted_docs(client: &Client, db: &str, coll: &str) -> anyhow::Result<Vec<RawDocumentBuf>> {
    Ok(client
        .database(db)
        .collection::<RawDocumentBuf>(coll)
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?)
}

async fn collection_options(client: &Client, db: &str, coll: &str) -> anyhow::Result<Document> {
    let reply = client
        .database(db)
        .run_command(doc! { "listCollections": 1, "filter": { "name": coll } })
        .await?;
    let first = reply
        .get_document("cursor")?
        .get_array("firstBatch")?
        .first()
        .and_then(|b| b.as_document().cloned())
        .context("collection vanished")?;
    Ok(first.get_document("options").cloned().unwrap_or_default())
}

/// A small application doing every kind of write the issue lists, deterministic by `round`.
pub async fn write_round(client: &Client, db: &str, round: i32) -> anyhow::Result<()> {
    let coll = client.database(db).collection::<Document>("things");
    let base = 100_000 + round * 10;
    coll.insert_one(every_type_document(base)).await?;
    coll.insert_many((1..4).map(|k| every_type_document(base + k)))
        .await?;
    let target = round % 200;
    let updates = [
        doc! { "$set": { "string": format!("set {round}"), "document.b.c": round } },
        doc! { "$unset": { "null": "" } },
        doc! { "$inc": { "counter": 1, "int64": 5_i64 } },
        doc! { "$push": { "tags": { "$each": ["x", "y"], "$slice": -5 } } },
        doc! { "$pull": { "tags": "a" } },
        doc! { "$addToSet": { "tags": "z" } },
        doc! { "$rename": { "string": "renamed" } },
        doc! { "$min": { "int32": -1 } },
        doc! { "$max": { "double": 1.0e9 } },
        doc! { "$set": { "array.1": "changed", "array.2.three": 33 } },
        doc! { "$set": { "deep.l19.l18.l17": { "replaced": true } } },
    ];
    let update = updates[(round as usize) % updates.len()].clone();
    coll.update_one(doc! { "_id": target }, update).await?;
    coll.update_many(
        doc! { "_id": { "$gte": 150, "$lt": 160 } },
        doc! { "$inc": { "counter": 10 } },
    )
    .await?;
    coll.replace_one(
        doc! { "_id": base + 1 },
        doc! { "replaced": round, "with.dot": 1 },
    )
    .await?;
    coll.delete_one(doc! { "_id": base + 2 }).await?;
    coll.delete_many(doc! { "_id": { "$in": [target + 300, target + 301] } })
        .await?;
    coll.update_one(
        doc! { "_id": -round - 1 },
        doc! { "$set": { "upserted": true } },
    )
    .upsert(true)
    .await?;
    // DDL: a collection created, renamed and dropped; an index created and dropped.
    let database = client.database(db);
    let temp = format!("temp_{round}");
    database.create_collection(&temp).await?;
    database
        .collection::<Document>(&temp)
        .insert_one(doc! { "_id": 1, "r": round })
        .await?;
    if round % 3 == 0 {
        database.collection::<Document>(&temp).drop().await?;
    } else {
        client
            .database("admin")
            .run_command(doc! { "renameCollection": format!("{db}.{temp}"), "to": format!("{db}.kept_{round}") })
            .await?;
    }
    let index_name = format!("by_counter_{round}");
    database
        .run_command(doc! {
            "createIndexes": "things",
            "indexes": [ { "key": { "counter": 1, format!("f{round}"): -1 }, "name": &index_name } ],
        })
        .await?;
    if round % 2 == 0 {
        database
            .run_command(doc! { "dropIndexes": "things", "index": &index_name })
            .await?;
    }
    Ok(())
}
