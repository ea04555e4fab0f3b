//! End-to-end control plane: agents killed and restarted, and secrets that never leak, driven through the gRPC API
//! and the real ferryctl binary.

use std::process::Output;
use std::time::Duration;

use ferry_e2e::{state, World, CVM_ID, DEST_PASSWORD, SOURCE_PASSWORD};
use ferry_proto::v1 as pb;
use ferry_testkit::process::Binaries;

async fn ferryctl(world: &World, args: &[&str]) -> anyhow::Result<Output> {
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

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_agent_comes_back_with_its_id_and_its_task_gets_a_new_epoch() -> anyhow::Result<()>
{
    let mut world = World::start(16).await?;
    let task_id = world.create_checked_task(&[]).await?;
    let checked = world.get_task(&task_id).await?;
    let agents = world
        .api
        .clone()
        .list_agents(pb::ListAgentsRequest::default())
        .await?
        .into_inner()
        .agents;
    let agent_id = agents
        .iter()
        .find(|a| a.cvm_instance_id == CVM_ID)
        .map(|a| a.agent_id.clone());
    assert_eq!(
        Some(checked.agent_id.clone()),
        agent_id,
        "the CVM's agent ran the checks"
    );

    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await?;
    let running = world
        .wait_task(&task_id, Duration::from_secs(60), |t| {
            t.phase == pb::TaskPhase::OplogSync as i32
        })
        .await?;
    world.agent.kill9().await?;
    let orphan = world
        .wait_task(&task_id, Duration::from_secs(30), |t| !t.agent_connected)
        .await?;
    assert_eq!(
        orphan.state,
        state(pb::TaskState::Running),
        "losing the agent does not fail the task"
    );
    let agents = world
        .api
        .clone()
        .list_agents(pb::ListAgentsRequest::default())
        .await?
        .into_inner()
        .agents;
    assert!(
        agents
            .iter()
            .any(|a| Some(&a.agent_id) == agent_id.as_ref() && !a.connected),
        "{agents:?}"
    );

    world.agent.restart().await?;
    let back = world
        .wait_task(&task_id, Duration::from_secs(30), |t| t.agent_connected)
        .await?;
    assert_eq!(
        back.agent_id, checked.agent_id,
        "same agent id after a restart"
    );
    assert!(
        back.epoch > running.epoch,
        "re-assigned with a new epoch: {} -> {}",
        running.epoch,
        back.epoch
    );
    world
        .wait_task(&task_id, Duration::from_secs(60), |t| {
            t.phase == pb::TaskPhase::OplogSync as i32
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_ferryctl_output_api_responses_or_logs() -> anyhow::Result<()> {
    let world = World::start(16).await?;
    let pw_file = world.path().join("source.pw");
    std::fs::write(&pw_file, format!("{SOURCE_PASSWORD}\n"))?;
    let port = world.source.addr().port().to_string();
    let create = ferryctl(
        &world,
        &[
            "--output",
            "json",
            "task",
            "create",
            "--name",
            "secret test",
            "--region",
            ferry_e2e::REGION,
            "--kind",
            "cvm",
            "--cvm-id",
            CVM_ID,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--username",
            "root",
            "--password-file",
            pw_file.to_str().unwrap_or_default(),
            "--destination",
            ferry_e2e::INSTANCE_ID,
        ],
    )
    .await?;
    assert!(
        create.status.success(),
        "ferryctl task create failed: {}",
        text(&create)
    );
    let created: serde_json::Value = serde_json::from_slice(&create.stdout)?;
    let task_id = created["id"].as_str().unwrap_or_default().to_string();
    assert!(task_id.starts_with("task-"), "{created}");

    let check = ferryctl(&world, &["task", "check", &task_id, "--wait"]).await?;
    assert!(check.status.success(), "{}", text(&check));
    let mut outputs = vec![create, check];
    for args in [
        vec!["task", "get", &task_id],
        vec!["--output", "json", "task", "get", &task_id],
        vec!["task", "list"],
        vec!["--output", "json", "task", "list"],
        vec!["instance", "list"],
        vec!["--output", "json", "instance", "list"],
        vec!["agent", "list"],
    ] {
        let out = ferryctl(&world, &args).await?;
        assert!(out.status.success(), "ferryctl {args:?}: {}", text(&out));
        outputs.push(out);
    }
    for out in &outputs {
        let all = text(out);
        assert!(
            !all.contains(SOURCE_PASSWORD) && !all.contains(DEST_PASSWORD),
            "password in ferryctl output: {all}"
        );
    }

    let task = world.get_task(&task_id).await?;
    assert!(task.spec.as_ref().is_some_and(|s| s.password.is_empty()) && task.password_set);
    let listed = world
        .api
        .clone()
        .list_tasks(pb::ListTasksRequest::default())
        .await?
        .into_inner();
    assert!(!format!("{listed:?}").contains(SOURCE_PASSWORD));
    let instances = world
        .api
        .clone()
        .list_instances(pb::ListInstancesRequest::default())
        .await?
        .into_inner();
    assert!(
        !format!("{instances:?}").contains(DEST_PASSWORD)
            && instances.instances.iter().all(|i| i.password_set)
    );
    let mut watch = world
        .api
        .clone()
        .watch_task(pb::WatchTaskRequest {
            task_id: task_id.clone(),
        })
        .await?
        .into_inner();
    let snapshot = watch.message().await?;
    assert!(!format!("{snapshot:?}").contains(SOURCE_PASSWORD));

    let logs = format!("{}{}", world.coordinator.logs(), world.agent.logs());
    assert!(!logs.is_empty(), "the processes log something");
    assert!(
        !logs.contains(SOURCE_PASSWORD) && !logs.contains(DEST_PASSWORD),
        "password in a log"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferryctl_reports_server_errors_with_a_nonzero_exit_code() -> anyhow::Result<()> {
    let world = World::start(16).await?;
    let missing = ferryctl(&world, &["task", "get", "task-000000000000"]).await?;
    assert!(!missing.status.success());
    assert!(
        text(&missing).to_lowercase().contains("not found"),
        "{}",
        text(&missing)
    );
    let task_id = world.create_checked_task(&[]).await?;
    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await?;
    let illegal = ferryctl(&world, &["task", "start", &task_id]).await?;
    assert!(!illegal.status.success());
    assert!(
        text(&illegal).contains("RUNNING"),
        "names the current state: {}",
        text(&illegal)
    );
    Ok(())
}
