//! The product verifier end to end, through the gRPC API with the real coordinator and agent (issue #9): a clean
//! migration verifies PASSED; damage made on the destination after the cut-over is reported exactly; an online
//! verification under a live writer converges while a document damaged during the run is confirmed; a verification
//! survives the agent's SIGKILL; and a verified cut-over with a damaged destination does not report success.

use std::time::Duration;

use ferry_e2e::{phase, state, World};
use ferry_proto::v1 as pb;
use ferry_testkit::process::Binaries;
use mongodb::bson::{doc, Document};

/// Runs the real ferryctl against the world's coordinator.
async fn ferryctl(world: &World, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let bins = Binaries::locate()?;
    Ok(tokio::process::Command::new(bins.path("ferryctl"))
        .arg("--coordinator")
        .arg(world.coordinator.url())
        .arg("--plaintext")
        .arg("--token-file")
        .arg(world.coordinator.operator_token_file())
        .args(args)
        .output()
        .await?)
}

const MINUTE: Duration = Duration::from_secs(60);

async fn seed(world: &World, n: i32) -> anyhow::Result<()> {
    let shop = world.source_client.database("shop");
    let orders = shop.collection::<Document>("orders");
    orders
        .insert_many((0..n).map(|i| {
            doc! {"_id": i, "customer": format!("c{}", i % 97), "total": i * 3, "address": {"zip": format!("{:05}", i)}}
        }))
        .await?;
    shop.run_command(doc! {"createIndexes": "orders", "indexes": [
        {"key": {"customer": 1}, "name": "customer_1"},
        {"key": {"address.zip": 1}, "name": "zip_unique", "unique": true},
    ]})
    .await?;
    shop.run_command(doc! {"create": "big_orders", "viewOn": "orders", "pipeline": [{"$match": {"total": {"$gt": 100}}}]})
        .await?;
    shop.collection::<Document>("customers")
        .insert_many(
            (0..97).map(|i| doc! {"_id": format!("c{i}"), "name": format!("customer {i}")}),
        )
        .await?;
    Ok(())
}

async fn migrate_to_oplog_sync(world: &World) -> anyhow::Result<String> {
    let task_id = world.create_checked_task(&["shop"]).await?;
    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await?;
    world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.phase == phase(pb::TaskPhase::OplogSync)
        })
        .await?;
    Ok(task_id)
}

async fn complete(world: &World, task_id: &str, verify: bool) -> anyhow::Result<pb::Task> {
    world
        .api
        .clone()
        .complete_task(pb::CompleteTaskRequest {
            task_id: task_id.to_string(),
            require_verification: verify,
        })
        .await?;
    world
        .wait_task(task_id, 2 * MINUTE, |t| {
            t.state == state(pb::TaskState::Succeeded) || t.state == state(pb::TaskState::Failed)
        })
        .await
}

async fn verify(
    world: &World,
    task_id: &str,
    mode: pb::VerifyMode,
) -> anyhow::Result<pb::Verification> {
    let t = world
        .api
        .clone()
        .verify_task(pb::VerifyTaskRequest {
            task_id: task_id.to_string(),
            mode: mode as i32,
        })
        .await?
        .into_inner();
    let run = t.verification.map_or(0, |v| v.run);
    let done = world
        .wait_task(task_id, 2 * MINUTE, |t| {
            t.verification
                .as_ref()
                .is_some_and(|v| v.run == run && v.state != pb::VerificationState::Running as i32)
        })
        .await?;
    Ok(done.verification.unwrap_or_default())
}

async fn mismatches(world: &World, task_id: &str) -> anyhow::Result<Vec<pb::Mismatch>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = world
            .api
            .clone()
            .list_mismatches(pb::ListMismatchesRequest {
                task_id: task_id.to_string(),
                page_size: 50,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        out.extend(page.mismatches);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

fn confirmed(v: &pb::Verification) -> u64 {
    v.confirmed.as_ref().map_or(0, |c| {
        c.missing_on_destination + c.extra_on_destination + c.different + c.metadata
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_migration_verifies_and_damage_after_cut_over_is_reported_exactly(
) -> anyhow::Result<()> {
    let world = World::start(64).await?;
    seed(&world, 1500).await?;
    let task_id = migrate_to_oplog_sync(&world).await?;
    let done = complete(&world, &task_id, false).await?;
    assert_eq!(done.state, state(pb::TaskState::Succeeded));

    for mode in [pb::VerifyMode::Full, pb::VerifyMode::Hashed] {
        let v = verify(&world, &task_id, mode).await?;
        assert_eq!(
            v.state,
            pb::VerificationState::Passed as i32,
            "{mode:?}: {v:?}"
        );
        assert_eq!(
            v.documents_compared,
            1500 + 97,
            "{mode:?}: every source document"
        );
        assert_eq!(confirmed(&v), 0);
    }

    // Damage the destination directly.
    let dst = world.dest_client.database("shop");
    let orders = dst.collection::<Document>("orders");
    orders.delete_one(doc! {"_id": 10}).await?;
    orders
        .update_one(doc! {"_id": 20}, doc! {"$set": {"address.zip": "99999"}})
        .await?;
    orders
        .insert_one(
            doc! {"_id": 100_000, "customer": "intruder", "total": 0, "address": {"zip": "x"}},
        )
        .await?;
    dst.run_command(doc! {"dropIndexes": "orders", "index": "customer_1"})
        .await?;
    dst.run_command(doc! {"collMod": "customers", "validator": {"name": {"$exists": true}}})
        .await?;

    let v = verify(&world, &task_id, pb::VerifyMode::Full).await?;
    assert_eq!(v.state, pb::VerificationState::Failed as i32, "{v:?}");
    let c = v.confirmed.unwrap_or_default();
    assert_eq!(
        (
            c.missing_on_destination,
            c.extra_on_destination,
            c.different
        ),
        (1, 1, 1),
        "{v:?}"
    );
    assert!(c.metadata >= 2, "index and option: {v:?}");
    let found = mismatches(&world, &task_id).await?;
    let doc_level: Vec<(String, String, i32, String)> = found
        .iter()
        .filter(|m| m.kind != pb::MismatchKind::Metadata as i32)
        .map(|m| {
            (
                m.namespace.clone(),
                m.id.clone(),
                m.kind,
                m.field_path.clone(),
            )
        })
        .collect();
    let int = |i: i32| format!("{{\"$numberInt\":\"{i}\"}}");
    assert!(
        doc_level.contains(&(
            "shop.orders".into(),
            int(10),
            pb::MismatchKind::MissingOnDestination as i32,
            String::new()
        )),
        "{doc_level:?}"
    );
    assert!(
        doc_level.contains(&(
            "shop.orders".into(),
            int(100_000),
            pb::MismatchKind::ExtraOnDestination as i32,
            String::new()
        )),
        "{doc_level:?}"
    );
    assert!(
        doc_level.contains(&(
            "shop.orders".into(),
            int(20),
            pb::MismatchKind::Different as i32,
            "address.zip".into()
        )),
        "{doc_level:?}"
    );
    assert_eq!(doc_level.len(), 3, "nothing else: {doc_level:?}");
    let meta: Vec<String> = found
        .iter()
        .filter(|m| m.kind == pb::MismatchKind::Metadata as i32)
        .map(|m| format!("{} {}", m.namespace, m.detail))
        .collect();
    assert!(
        meta.iter()
            .any(|m| m.contains("shop.orders") && m.contains("customer_1")),
        "{meta:?}"
    );
    assert!(
        meta.iter().any(|m| m.contains("shop.customers")),
        "{meta:?}"
    );

    // The same through ferryctl: `task verify --wait` exits 4 with the per-collection table, `task mismatches`
    // lists them (table and JSON).
    let out = ferryctl(&world, &["task", "verify", &task_id, "--wait"]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("shop.orders") && stdout.contains("MISMATCHES"),
        "{stdout}"
    );
    let out = ferryctl(&world, &["task", "mismatches", &task_id]).await?;
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("MISSING_ON_DESTINATION") && table.contains("address.zip"),
        "{table}"
    );
    let out = ferryctl(
        &world,
        &["--output", "json", "task", "mismatches", &task_id],
    )
    .await?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        json["mismatches"].as_array().map(Vec::len),
        Some(found.len()),
        "{json}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_verification_converges_under_a_writer_and_confirms_real_damage(
) -> anyhow::Result<()> {
    let world = World::start(64).await?;
    seed(&world, 1500).await?;
    let task_id = migrate_to_oplog_sync(&world).await?;
    // A live writer on the source during the whole verification.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let orders = world
            .source_client
            .database("shop")
            .collection::<Document>("orders");
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0i32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                orders
                    .update_one(doc! {"_id": i % 1500}, doc! {"$inc": {"total": 1}})
                    .await?;
                orders
                    .insert_one(doc! {"_id": 10_000 + i, "customer": "new", "total": 1, "address": {"zip": format!("n{i}")}})
                    .await?;
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(i)
        })
    };
    let t = world
        .api
        .clone()
        .verify_task(pb::VerifyTaskRequest {
            task_id: task_id.clone(),
            mode: 0,
        })
        .await?
        .into_inner();
    let run = t.verification.map_or(0, |v| v.run);
    // Damage one document on the destination while the run goes on: the source never touches it again.
    world
        .dest_client
        .database("shop")
        .collection::<Document>("customers")
        .update_one(doc! {"_id": "c5"}, doc! {"$set": {"name": "tampered"}})
        .await?;
    let v = world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.verification
                .as_ref()
                .is_some_and(|v| v.run == run && v.state != pb::VerificationState::Running as i32)
        })
        .await?
        .verification
        .unwrap_or_default();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await??;
    assert!(
        written > 10,
        "the writer ran during the verification ({written} rounds)"
    );
    let found = mismatches(&world, &task_id).await?;
    if found.len() != 1 {
        for line in world.agent.logs().lines().filter(|l| l.contains("verif")) {
            eprintln!("agent: {line}");
        }
    }
    // Lagging documents converged; only the real damage is confirmed.
    assert_eq!(found.len(), 1, "{found:?} / {v:?}");
    assert_eq!(found[0].namespace, "shop.customers");
    assert_eq!(found[0].id, "\"c5\"");
    assert_eq!(found[0].field_path, "name");
    assert_eq!(v.pending, 0, "{v:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verification_resumes_after_the_agent_is_killed() -> anyhow::Result<()> {
    let mut world = World::start(64).await?;
    seed(&world, 3000).await?;
    let task_id = migrate_to_oplog_sync(&world).await?;
    complete(&world, &task_id, false).await?;
    // Slow the source so the run lasts long enough to be interrupted after some ranges.
    world
        .source
        .faults()
        .delay_replies(Some(Duration::from_millis(40)));
    let t = world
        .api
        .clone()
        .verify_task(pb::VerifyTaskRequest {
            task_id: task_id.clone(),
            mode: 0,
        })
        .await?
        .into_inner();
    let run = t.verification.map_or(0, |v| v.run);
    let before = world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.verification
                .as_ref()
                .is_some_and(|v| v.documents_compared >= 200)
        })
        .await?;
    let compared_before = before.verification.unwrap_or_default().documents_compared;
    world.agent.kill9().await?;
    world
        .wait_task(&task_id, MINUTE, |t| !t.agent_connected)
        .await?;
    world.agent.restart().await?;
    world.source.faults().delay_replies(None);
    let done = world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.verification
                .as_ref()
                .is_some_and(|v| v.run == run && v.state != pb::VerificationState::Running as i32)
        })
        .await?;
    let v = done.verification.unwrap_or_default();
    assert_eq!(v.state, pb::VerificationState::Passed as i32, "{v:?}");
    assert_eq!(v.run, run, "the same run resumed, not a new one");
    assert_eq!(v.documents_compared, 3000 + 97, "{v:?}");
    assert!(compared_before > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verified_cut_over_with_a_damaged_destination_does_not_succeed() -> anyhow::Result<()> {
    let world = World::start(64).await?;
    seed(&world, 500).await?;
    let task_id = migrate_to_oplog_sync(&world).await?;
    world
        .dest_client
        .database("shop")
        .collection::<Document>("orders")
        .delete_one(doc! {"_id": 7})
        .await?;
    let done = complete(&world, &task_id, true).await?;
    assert_eq!(done.state, state(pb::TaskState::Failed), "{done:?}");
    assert!(done.resumable, "the operator can fix and resume: {done:?}");
    assert!(
        done.failure_reason.contains("verification"),
        "{}",
        done.failure_reason
    );
    let v = done.verification.unwrap_or_default();
    assert!(v.at_cut_over);
    assert_eq!(v.state, pb::VerificationState::Failed as i32);
    let found = mismatches(&world, &task_id).await?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, "{\"$numberInt\":\"7\"}");
    assert_eq!(found[0].kind, pb::MismatchKind::MissingOnDestination as i32);
    Ok(())
}
