//! Pre-migration checks end to end: a local HTTP server plays the cloud metadata service, the real agent runs the
//! items next to mongosim sources, the coordinator records them, and each scenario gives exactly the expected FAIL or
//! WARN item while the others PASS (or are SKIPPED because they depend on the failed one).

use std::time::Duration;

use ferry_e2e::{state, World, CVM_ID, DEST_PASSWORD, REGION, SOURCE_PASSWORD};
use ferry_proto::v1 as pb;
use ferry_testkit::process::Metadata;
use mongodb::bson::{doc, Document};

const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

async fn run_checks(world: &World, spec: pb::TaskSpec) -> anyhow::Result<pb::Task> {
    let mut api = world.api.clone();
    let task = api
        .create_task(pb::CreateTaskRequest { spec: Some(spec) })
        .await?
        .into_inner();
    api.check_task(pb::CheckTaskRequest {
        task_id: task.id.clone(),
    })
    .await?;
    world
        .wait_task(&task.id, CHECK_TIMEOUT, |t| {
            t.state == state(pb::TaskState::CheckPassed)
                || t.state == state(pb::TaskState::CheckFailed)
        })
        .await
}

/// One document in `shop.orders`, so the source has something to migrate.
async fn seed_one(sim: &mongosim::MongoSim) -> anyhow::Result<()> {
    let client = ferry_e2e::client(&sim.uri(), "root", SOURCE_PASSWORD).await?;
    client
        .database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! { "_id": 1 })
        .await?;
    Ok(())
}

fn status(task: &pb::Task, id: &str) -> pb::CheckStatus {
    task.checks
        .iter()
        .find(|c| c.id == id)
        .and_then(|c| pb::CheckStatus::try_from(c.status).ok())
        .unwrap_or(pb::CheckStatus::Unspecified)
}

/// Exactly `id` has `expected`; every other item is PASS or SKIPPED; the state follows.
fn assert_only(task: &pb::Task, id: &str, expected: pb::CheckStatus) {
    let items: Vec<String> = task
        .checks
        .iter()
        .map(|c| {
            format!(
                "{}={:?}: {} / fix: {}",
                c.id,
                pb::CheckStatus::try_from(c.status),
                c.message,
                c.fix
            )
        })
        .collect();
    assert_eq!(status(task, id), expected, "item {id} in {items:#?}");
    let item = task.checks.iter().find(|c| c.id == id);
    assert!(
        item.is_some_and(|c| !c.message.is_empty() && !c.fix.is_empty()),
        "{id} has facts and a fix: {items:#?}"
    );
    for c in &task.checks {
        if c.id != id {
            let s = pb::CheckStatus::try_from(c.status).unwrap_or(pb::CheckStatus::Unspecified);
            assert!(
                s == pb::CheckStatus::Pass || s == pb::CheckStatus::Skipped,
                "only {id} may fail, but {} is {s:?}: {items:#?}",
                c.id
            );
        }
    }
    let want = if expected == pb::CheckStatus::Fail {
        pb::TaskState::CheckFailed
    } else {
        pb::TaskState::CheckPassed
    };
    assert_eq!(task.state, state(want), "{items:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_good_passes_every_item_and_start_is_refused_before_the_checks() -> anyhow::Result<()> {
    let world = World::start(16).await?;
    let mut api = world.api.clone();
    let fresh = api
        .create_task(pb::CreateTaskRequest {
            spec: Some(world.spec(&[])),
        })
        .await?
        .into_inner();
    let refused = api
        .start_task(pb::StartTaskRequest {
            task_id: fresh.id.clone(),
        })
        .await;
    let status = refused.err().map(|s| (s.code(), s.message().to_string()));
    assert!(
        matches!(&status, Some((tonic::Code::FailedPrecondition, m)) if m.contains("NOT_STARTED")),
        "StartTask before the checks: {status:?}"
    );

    world
        .source_client
        .database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! { "_id": 1 })
        .await?;
    let task = run_checks(&world, world.spec(&["shop"])).await?;
    assert_eq!(
        task.state,
        state(pb::TaskState::CheckPassed),
        "{:#?}",
        task.checks
    );
    assert_eq!(
        task.checks.len(),
        15,
        "agent_available plus the agent's 14 items: {:#?}",
        task.checks
    );
    for c in &task.checks {
        assert_eq!(c.status, pb::CheckStatus::Pass as i32, "{c:?}");
    }
    // A passed task can start.
    api.start_task(pb::StartTaskRequest {
        task_id: task.id.clone(),
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scenario_fails_exactly_its_item() -> anyhow::Result<()> {
    let world = World::start(16).await?;
    let src = &world.source_client;
    src.database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! { "_id": 1 })
        .await?;

    // The metadata service says this VM is another instance.
    world.metadata.set(Metadata {
        instance_id: "ins-other999".into(),
        region: REGION.into(),
        local_ipv4: "127.0.0.1".into(),
    });
    let task = run_checks(&world, world.spec(&["shop"])).await?;
    assert_only(&task, "cvm_identity", pb::CheckStatus::Fail);

    // The agent's region is not the destination's.
    world.metadata.set(Metadata {
        instance_id: CVM_ID.into(),
        region: "ap-shanghai".into(),
        local_ipv4: "127.0.0.1".into(),
    });
    let task = run_checks(&world, world.spec(&["shop"])).await?;
    assert_only(&task, "region", pb::CheckStatus::Fail);
    world.metadata.set(Metadata {
        instance_id: CVM_ID.into(),
        region: REGION.into(),
        local_ipv4: "127.0.0.1".into(),
    });

    // A closed port: bind, note the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut spec = world.spec(&["shop"]);
    spec.port = u32::from(closed);
    let task = run_checks(&world, spec).await?;
    assert_only(&task, "source_reachable", pb::CheckStatus::Fail);
    let fix = task
        .checks
        .iter()
        .find(|c| c.id == "source_reachable")
        .map(|c| c.fix.clone())
        .unwrap_or_default();
    assert!(
        fix.contains(&closed.to_string()) && fix.to_lowercase().contains("security group"),
        "fix: {fix}"
    );

    // A wrong password.
    let mut spec = world.spec(&["shop"]);
    spec.password = format!("{SOURCE_PASSWORD}-wrong");
    assert_only(
        &run_checks(&world, spec).await?,
        "source_auth",
        pb::CheckStatus::Fail,
    );

    // A user who can read the databases but not the oplog.
    let mut spec = world.spec(&["shop"]);
    spec.username = "reader".into();
    spec.password = ferry_e2e::READER_PASSWORD.into();
    assert_only(
        &run_checks(&world, spec).await?,
        "source_privileges",
        pb::CheckStatus::Fail,
    );

    // A database that does not exist on the source.
    let task = run_checks(&world, world.spec(&["shop", "nosuchdb"])).await?;
    assert_only(&task, "databases", pb::CheckStatus::Fail);
    let message = task
        .checks
        .iter()
        .find(|c| c.id == "databases")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("nosuchdb"),
        "names the missing database: {message}"
    );

    // The destination already holds a non-empty collection of the same name.
    world
        .dest_client
        .database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! { "_id": 9 })
        .await?;
    assert_only(
        &run_checks(&world, world.spec(&["shop"])).await?,
        "destination_conflicts",
        pb::CheckStatus::Fail,
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_facts_that_forbid_an_online_migration_fail_their_item() -> anyhow::Result<()> {
    let world = World::start(16).await?;

    // A single node has no oplog.
    let single = mongosim::MongoSim::builder()
        .single_node()
        .user("root", SOURCE_PASSWORD)
        .start()
        .await?;
    seed_one(&single).await?;
    let mut spec = world.spec(&[]);
    spec.port = u32::from(single.addr().port());
    let task = run_checks(&world, spec).await?;
    assert_only(&task, "source_topology", pb::CheckStatus::Fail);
    let message = task
        .checks
        .iter()
        .find(|c| c.id == "source_topology")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("single node"), "{message}");

    // The MongoDB IP is not an address of this host (the source listens on 127.0.0.2, which no interface has).
    let elsewhere = mongosim::MongoSim::builder()
        .bind("127.0.0.2:0")
        .user("root", SOURCE_PASSWORD)
        .start()
        .await?;
    seed_one(&elsewhere).await?;
    let mut spec = world.spec(&[]);
    spec.mongo_host = "127.0.0.2".into();
    spec.port = u32::from(elsewhere.addr().port());
    world.metadata.set(Metadata {
        instance_id: CVM_ID.into(),
        region: REGION.into(),
        local_ipv4: "127.0.0.2".into(),
    });
    assert_only(
        &run_checks(&world, spec).await?,
        "private_ip",
        pb::CheckStatus::Fail,
    );

    // A destination whose disk has less room than the source's data: WARN (it does not block the migration).
    let full = mongosim::MongoSim::builder()
        .replset("rs-full")
        .user("admin", DEST_PASSWORD)
        .filesystem(10 << 30, 10 << 30)
        .start()
        .await?;
    world
        .api
        .clone()
        .register_instance(pb::RegisterInstanceRequest {
            instance: Some(pb::Instance {
                instance_id: "cmgo-fulldsk1".into(),
                region: REGION.into(),
                uri: full.uri(),
                username: "admin".into(),
                password: DEST_PASSWORD.into(),
                ..Default::default()
            }),
        })
        .await?;
    seed_one(&world.source).await?;
    world.metadata.set(Metadata {
        instance_id: CVM_ID.into(),
        region: REGION.into(),
        local_ipv4: "127.0.0.1".into(),
    });
    let mut spec = world.spec(&["shop"]);
    spec.destination_instance_id = "cmgo-fulldsk1".into();
    let task = run_checks(&world, spec).await?;
    assert_only(&task, "destination_capacity", pb::CheckStatus::Warn);
    let item = task
        .checks
        .iter()
        .find(|c| c.id == "destination_capacity")
        .map(|c| format!("{} / {}", c.message, c.fix))
        .unwrap_or_default();
    assert!(
        item.contains("free space 0 B") && item.contains("grow the destination's storage"),
        "{item}"
    );

    // System databases are refused when the task is created, naming the field.
    let refused = world
        .api
        .clone()
        .create_task(pb::CreateTaskRequest {
            spec: Some(world.spec(&["admin"])),
        })
        .await;
    let status = refused.err().map(|s| (s.code(), s.message().to_string()));
    assert!(
        matches!(&status, Some((tonic::Code::InvalidArgument, m)) if m.contains("databases") && m.contains("admin")),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oplog_window_shorter_than_the_copy_fails_and_no_agent_fails_agent_available(
) -> anyhow::Result<()> {
    // The agent estimates copies at 1 KiB/s: a few MiB of data outlast the fresh source's oplog window.
    let world = World::start_with(1, &["--estimated-copy-rate", "1KiB"]).await?;
    let coll = world
        .source_client
        .database("big")
        .collection::<Document>("blobs");
    coll.insert_many((0..40).map(|i| doc! { "_id": i, "b": "x".repeat(100_000) }))
        .await?;
    let task = run_checks(&world, world.spec(&["big"])).await?;
    assert_only(&task, "oplog_window", pb::CheckStatus::Fail);
    let message = task
        .checks
        .iter()
        .find(|c| c.id == "oplog_window")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("spool"),
        "mentions the agent's spool: {message}"
    );
    assert!(
        message.contains("oldest to newest entry; the oplog has rolled over"),
        "the 1 MiB oplog has rolled over, so its window is its span: {message}"
    );

    // A public-network task with no pool agent connected.
    let mut spec = world.spec(&["big"]);
    spec.kind = pb::TaskKind::PublicNetwork as i32;
    spec.cvm_id = String::new();
    let task = run_checks(&world, spec).await?;
    assert_eq!(task.state, state(pb::TaskState::CheckFailed));
    assert_eq!(
        status(&task, "agent_available"),
        pb::CheckStatus::Fail,
        "{:#?}",
        task.checks
    );
    Ok(())
}

/// A brand-new source with a view as its first collection passes the checks with default settings.
///
/// The replica set was created a moment ago, so its oplog spans about a second, yet its 990 MiB hold far more than
/// the copy of 32 MiB at the default 16 MiB/s: the window is estimated from the oplog's capacity and write rate. The
/// view `shop.aaa_recent` sorts before `orders`; mongosim cannot evaluate views, so reading it would fail the checks
/// (and on a real server would run its pipeline on the production source).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brand_new_source_with_a_view_as_its_first_collection_passes_the_checks_with_default_settings(
) -> anyhow::Result<()> {
    let world = World::start(990).await?;
    let shop = world.source_client.database("shop");
    shop.collection::<Document>("orders")
        .insert_many((0..64).map(|i| doc! { "_id": i, "b": "x".repeat(512 * 1024) }))
        .await?;
    shop.run_command(doc! {
        "create": "aaa_recent",
        "viewOn": "orders",
        "pipeline": [{ "$match": { "_id": { "$gte": 32 } } }],
    })
    .await?;
    let task = run_checks(&world, world.spec(&[])).await?;
    let items: Vec<String> = task
        .checks
        .iter()
        .map(|c| {
            format!(
                "{}={:?}: {}",
                c.id,
                pb::CheckStatus::try_from(c.status),
                c.message
            )
        })
        .collect();
    assert_eq!(task.state, state(pb::TaskState::CheckPassed), "{items:#?}");
    assert_eq!(task.checks.len(), 15, "{items:#?}");
    for c in &task.checks {
        assert_eq!(c.status, pb::CheckStatus::Pass as i32, "{items:#?}");
    }
    let message = |id: &str| {
        task.checks
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let privileges = message("source_privileges");
    assert!(
        privileges.contains("shop (2 collection(s), of which 1 view(s) not read)"),
        "{privileges}"
    );
    let window = message("oplog_window");
    assert!(
        window.starts_with("oplog not yet full: ") && window.contains(" of 990.0 MiB used over "),
        "{window}"
    );
    assert!(
        window.contains("at the current write rate") && window.contains("at 16.0 MiB/s, default"),
        "{window}"
    );
    Ok(())
}
