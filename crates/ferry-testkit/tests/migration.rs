//! The agent's data-plane wiring end to end, in process: checks pass against mongosim, StartTask runs the engine
//! to OPLOG_SYNC with progress and checkpoints, an agent restart re-assigns the task with a new epoch and it
//! resumes, CompleteTask succeeds with the documents on the destination; StopTask rolls back and fails the task.
//! Every log line of the coordinator, agent, engine and checks (captured in process) stays free of passwords.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ferry_proto::v1 as pb;
use ferry_testkit::Sandbox;
use mongodb::bson::{doc, Document};

const TIMEOUT: Duration = Duration::from_secs(60);
const SOURCE_PASSWORD: &str = "src-Secret-1234";
const DEST_PASSWORD: &str = "dst-Secret-5678";
const INSTANCE_ID: &str = "cmgo-sbxdest1";

/// Log lines of everything in this test binary (one global subscriber).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                "info,ferry_agent=debug,ferry_coordinator=debug,ferry_engine=debug,ferry_checks=debug,ferry_store=debug",
            )
            .with_writer(move || SharedWriter(sink.clone()))
            .try_init();
        buffer
    })
    .clone()
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log buffer is shared by every test of this binary, which run in parallel: each caller names only lines
/// its own test is sure to have produced by now.
fn assert_logs_free_of_passwords(expected: &[&str]) {
    let logs = logs();
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    for line in expected {
        assert!(text.contains(line), "agent logs not captured: no {line:?}");
    }
    for secret in [
        SOURCE_PASSWORD,
        DEST_PASSWORD,
        ferry_testkit::OPERATOR_TOKEN,
        // Join tokens and the agent's private key.
        "fjt-",
        "PRIVATE KEY",
    ] {
        assert!(!text.contains(secret), "a secret reached the logs");
    }
}

struct World {
    sandbox: Sandbox,
    source: mongosim::MongoSim,
    dest: mongosim::MongoSim,
    api: ferry_testkit::process::OperatorClient,
}

async fn client(uri: &str, user: &str, password: &str) -> mongodb::Client {
    let mut options = mongodb::options::ClientOptions::parse(uri).await.unwrap();
    options.credential = Some(
        mongodb::options::Credential::builder()
            .username(user.to_owned())
            .password(password.to_owned())
            .build(),
    );
    options.server_selection_timeout = Some(Duration::from_secs(5));
    mongodb::Client::with_options(options).unwrap()
}

/// Registers `dest` as the catalog's destination instance.
async fn register_destination(
    api: &mut ferry_testkit::process::OperatorClient,
    dest: &mongosim::MongoSim,
) {
    api.register_instance(pb::RegisterInstanceRequest {
        instance: Some(pb::Instance {
            instance_id: INSTANCE_ID.into(),
            region: "ap-guangzhou".into(),
            uri: dest.uri(),
            username: "admin".into(),
            password: DEST_PASSWORD.into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
}

async fn world() -> World {
    logs();
    let source = mongosim::MongoSim::builder()
        .replset("rs-src")
        .user("root", SOURCE_PASSWORD)
        .start()
        .await
        .unwrap();
    let dest = mongosim::MongoSim::builder()
        .replset("rs-dst")
        .user("admin", DEST_PASSWORD)
        .start()
        .await
        .unwrap();
    let sandbox = Sandbox::builder().agents(1).build().await.unwrap();
    sandbox.wait_for_agents(1, TIMEOUT).await.unwrap();
    let mut api = sandbox.client().await.unwrap();
    register_destination(&mut api, &dest).await;
    World {
        sandbox,
        source,
        dest,
        api,
    }
}

impl World {
    async fn seed(&self, docs: i32) {
        let source = client(&self.source.uri(), "root", SOURCE_PASSWORD).await;
        let items: Vec<Document> = (0..docs)
            .map(|i| doc! {"_id": i, "n": i, "s": "x".repeat(64)})
            .collect();
        source
            .database("shop")
            .collection::<Document>("orders")
            .insert_many(items)
            .await
            .unwrap();
    }

    async fn dest_count(&self) -> u64 {
        let dest = client(&self.dest.uri(), "admin", DEST_PASSWORD).await;
        dest.database("shop")
            .collection::<Document>("orders")
            .count_documents(doc! {})
            .await
            .unwrap()
    }

    async fn checked_task(&self) -> String {
        let spec = pb::TaskSpec {
            name: "sandbox migration".into(),
            region: "ap-guangzhou".into(),
            kind: pb::TaskKind::Cvm as i32,
            cvm_id: "ins-sbx00000".into(),
            mongo_host: self.source.addr().ip().to_string(),
            port: u32::from(self.source.addr().port()),
            username: "root".into(),
            password: SOURCE_PASSWORD.into(),
            destination_instance_id: INSTANCE_ID.into(),
            databases: vec!["shop".into()],
            require_verification: false,
            tenant: String::new(),
        };
        let mut api = self.api.clone();
        let task = api
            .create_task(pb::CreateTaskRequest { spec: Some(spec) })
            .await
            .unwrap()
            .into_inner();
        api.check_task(pb::CheckTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap();
        let checked = self
            .sandbox
            .wait_for_task(&task.id, TIMEOUT, |t| {
                t.state != pb::TaskState::Checking as i32
            })
            .await
            .unwrap();
        let items: Vec<String> = checked
            .checks
            .iter()
            .map(|c| {
                format!(
                    "{} {:?} {} {}",
                    c.id,
                    pb::CheckStatus::try_from(c.status),
                    c.message,
                    c.fix
                )
            })
            .collect();
        assert_eq!(
            checked.state,
            pb::TaskState::CheckPassed as i32,
            "{}\n{}",
            checked.failure_reason,
            items.join("\n")
        );
        // Every agent-side item plus agent_available was reported.
        assert!(checked.checks.len() >= 15, "{}", items.join("\n"));
        task.id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_start_restart_agent_complete() {
    let mut world = world().await;
    world.seed(500).await;
    let task_id = world.checked_task().await;

    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await
        .unwrap();
    let running = world
        .sandbox
        .wait_for_task(&task_id, TIMEOUT, |t| {
            t.phase == pb::TaskPhase::OplogSync as i32
                && t.checkpoint.is_some()
                && t.progress.is_some()
        })
        .await
        .unwrap();
    assert_eq!(running.state, pb::TaskState::Running as i32);

    // The agent goes away: the task keeps its state; it comes back and the task resumes under a new epoch.
    world.sandbox.kill_agent(0).await.unwrap();
    world
        .sandbox
        .wait_for_task(&task_id, TIMEOUT, |t| !t.agent_connected)
        .await
        .unwrap();
    world.sandbox.restart_agent(0).await.unwrap();
    let back = world
        .sandbox
        .wait_for_task(&task_id, TIMEOUT, |t| {
            t.agent_connected && t.epoch > running.epoch
        })
        .await
        .unwrap();
    assert_eq!(
        back.state,
        pb::TaskState::Running as i32,
        "{}",
        back.failure_reason
    );

    // The coordinator restarts while the engine runs: the agent keeps its engine, reconnects (hello.running),
    // adopts the new epoch, and the task goes on (stale reports in flight are rejected without harm).
    world.sandbox.restart_coordinator().await.unwrap();
    let adopted = world
        .sandbox
        .wait_for_task(&task_id, TIMEOUT, |t| {
            t.agent_connected && t.epoch > back.epoch
        })
        .await
        .unwrap();
    assert_eq!(
        adopted.state,
        pb::TaskState::Running as i32,
        "{}",
        adopted.failure_reason
    );
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
    assert!(
        logs.contains("adopted the new epoch"),
        "the running engine was not kept across the reconnect"
    );
    let mut api = world.sandbox.client().await.unwrap();
    world
        .sandbox
        .wait_for_task(&task_id, TIMEOUT, |t| {
            t.phase == pb::TaskPhase::OplogSync as i32
        })
        .await
        .unwrap();

    api.complete_task(pb::CompleteTaskRequest {
        task_id: task_id.clone(),
        require_verification: false,
    })
    .await
    .unwrap();
    let done = world
        .sandbox
        .wait_for_state(&task_id, pb::TaskState::Succeeded, TIMEOUT)
        .await
        .unwrap();
    assert!(done.failure_reason.is_empty(), "{}", done.failure_reason);
    assert_eq!(world.dest_count().await, 500);
    world.sandbox.shutdown().await.unwrap();
    assert_logs_free_of_passwords(&["connected to the coordinator", "starting migration"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_rolls_back_and_fails_the_task() {
    let world = world().await;
    world.seed(100).await;
    let task_id = world.checked_task().await;
    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await
        .unwrap();
    world
        .sandbox
        .wait_for_task(&task_id, TIMEOUT, |t| {
            t.phase == pb::TaskPhase::OplogSync as i32
        })
        .await
        .unwrap();
    assert_eq!(world.dest_count().await, 100);
    world
        .api
        .clone()
        .stop_task(pb::StopTaskRequest {
            task_id: task_id.clone(),
        })
        .await
        .unwrap();
    let stopped = world
        .sandbox
        .wait_for_state(&task_id, pb::TaskState::Failed, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(stopped.failure_reason, "stopped by operator");
    assert_eq!(
        world.dest_count().await,
        0,
        "the task's collection was dropped"
    );

    // ListSourceDatabases goes through the agent.
    let databases = world
        .api
        .clone()
        .list_source_databases(pb::ListSourceDatabasesRequest { task_id })
        .await
        .unwrap()
        .into_inner()
        .databases;
    assert!(databases.iter().any(|d| d.name == "shop"), "{databases:?}");
    world.sandbox.shutdown().await.unwrap();
    assert_logs_free_of_passwords(&["connected to the coordinator", "starting migration"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_agent_runs_public_network_checks() {
    logs();
    let source = mongosim::MongoSim::builder()
        .replset("rs-src")
        .user("root", SOURCE_PASSWORD)
        .start()
        .await
        .unwrap();
    let dest = mongosim::MongoSim::builder()
        .replset("rs-dst")
        .user("admin", DEST_PASSWORD)
        .start()
        .await
        .unwrap();
    let sandbox = Sandbox::builder()
        .agents(1)
        .agent(ferry_testkit::AgentSetup::pool())
        .build()
        .await
        .unwrap();
    sandbox.wait_for_agents(2, TIMEOUT).await.unwrap();
    let mut api = sandbox.client().await.unwrap();
    register_destination(&mut api, &dest).await;
    let spec = pb::TaskSpec {
        name: "public".into(),
        region: "ap-guangzhou".into(),
        kind: pb::TaskKind::PublicNetwork as i32,
        cvm_id: String::new(),
        mongo_host: source.addr().ip().to_string(),
        port: u32::from(source.addr().port()),
        username: "root".into(),
        password: SOURCE_PASSWORD.into(),
        destination_instance_id: INSTANCE_ID.into(),
        databases: Vec::new(),
        require_verification: false,
        tenant: String::new(),
    };
    let task = api
        .create_task(pb::CreateTaskRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner();
    api.check_task(pb::CheckTaskRequest {
        task_id: task.id.clone(),
    })
    .await
    .unwrap();
    let checked = sandbox
        .wait_for_task(&task.id, TIMEOUT, |t| {
            t.state != pb::TaskState::Checking as i32
        })
        .await
        .unwrap();
    let items: Vec<String> = checked
        .checks
        .iter()
        .map(|c| {
            format!(
                "{} {:?} {}",
                c.id,
                pb::CheckStatus::try_from(c.status),
                c.message
            )
        })
        .collect();
    assert_eq!(
        checked.state,
        pb::TaskState::CheckPassed as i32,
        "{}\n{}",
        checked.failure_reason,
        items.join("\n")
    );
    // The pool agent (index 1), not the CVM agent, ran them.
    assert_eq!(Some(checked.agent_id), sandbox.agent_id(1));
    sandbox.shutdown().await.unwrap();
    assert_logs_free_of_passwords(&["connected to the coordinator"]);
}
