//! The real `ferry-coordinator` binary: killed with SIGKILL and restarted on the same data dir, every task,
//! instance, assignment and checkpoint is still there; secrets never reach its log or the sled files; SIGTERM
//! stops it cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use ferry_proto::v1 as pb;
use pb::agent_message::Body as A;
use pb::coordinator_message::Body as C;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

const TASK_PW: &str = "Task-Pw-Never-Shown-4471";
const INST_PW: &str = "Inst-Pw-Never-Shown-9203";
const CVM: &str = "ins-abc12345";

struct Proc {
    child: Child,
    addr: String,
}

async fn spawn(data: &Path, tokens: &Path, log: &Path) -> Proc {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-coordinator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--plaintext",
            "--heartbeat-interval",
            "500ms",
        ])
        .arg("--data-dir")
        .arg(data)
        .arg("--operator-token-file")
        .arg(tokens.join("operator"))
        .arg("--allow-private-sources")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("listening line in time")
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("ferry-coordinator listening on ")
        .expect(&line)
        .to_owned();
    Proc { child, addr }
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if std::fs::read(&p)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(p);
        }
    }
    found
}

/// Drops volatile fields for before/after comparison.
fn stable(mut t: pb::Task) -> pb::Task {
    t.agent_connected = false;
    t
}

#[tokio::test]
async fn sigkill_and_restart_keeps_everything_and_secrets_stay_out_of_logs_and_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let tokens = tmp.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    std::fs::write(tokens.join("operator"), format!("{OPERATOR_TOKEN}\n")).unwrap();
    let log = tmp.path().join("coordinator.log");

    let mut proc = spawn(&data, &tokens, &log).await;
    let ch = channel(&proc.addr).await;
    let mut op = operator_client(ch.clone(), Some(OPERATOR_TOKEN));
    op.register_instance(pb::RegisterInstanceRequest {
        instance: Some(instance("cmgo-6wk2mxa1", INST_PW)),
    })
    .await
    .unwrap();
    let idle = create(&mut op, cvm_spec("idle", CVM, TASK_PW)).await;
    let checking = create(&mut op, cvm_spec("checking", CVM, TASK_PW)).await;
    let running = create(&mut op, cvm_spec("running", CVM, TASK_PW)).await;
    let cred = enroll_on(ch.clone(), CVM, false).await;
    let mut agent = FakeAgent::connect_with(ch.clone(), &cred, CVM, false).await;
    op.check_task(pb::CheckTaskRequest {
        task_id: running.id.clone(),
    })
    .await
    .unwrap();
    let e = agent.recv().await.epoch;
    agent
        .send(&running.id, e, A::ChecksFinished(pb::ChecksFinished {}))
        .await;
    wait_task(&mut op, &running.id, |t| {
        t.state() == pb::TaskState::CheckPassed
    })
    .await;
    op.start_task(pb::StartTaskRequest {
        task_id: running.id.clone(),
    })
    .await
    .unwrap();
    let e = agent.recv().await.epoch;
    let checkpoint = pb::Checkpoint {
        engine_state: b"resume-here".to_vec(),
        ..Default::default()
    };
    agent
        .send(
            &running.id,
            e,
            A::Checkpoint(pb::CheckpointReport {
                checkpoint: Some(checkpoint),
            }),
        )
        .await;
    wait_task(&mut op, &running.id, |t| t.checkpoint.is_some()).await;
    op.check_task(pb::CheckTaskRequest {
        task_id: checking.id.clone(),
    })
    .await
    .unwrap();
    assert!(matches!(agent.recv().await.body, Some(C::RunChecks(_))));

    let before: Vec<pb::Task> = {
        let mut v = Vec::new();
        for id in [&idle.id, &checking.id, &running.id] {
            v.push(stable(get(&mut op, id).await));
        }
        v
    };
    let instances_before = op
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .unwrap()
        .into_inner();

    proc.child.kill().await.unwrap(); // SIGKILL
    drop(agent);
    let mut proc = spawn(&data, &tokens, &log).await;
    let ch = channel(&proc.addr).await;
    let mut op = operator_client(ch.clone(), Some(OPERATOR_TOKEN));
    for b in &before {
        let after = get(&mut op, &b.id).await;
        assert!(!after.agent_connected);
        assert_eq!(stable(after), *b, "task {} changed across SIGKILL", b.id);
    }
    assert_eq!(before[1].agent_id, cred.agent_id);
    assert_eq!(before[2].state(), pb::TaskState::Running);
    let instances_after = op
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(instances_after, instances_before);
    let agents = op
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert!(!agents[0].connected);

    // The agent returns with its enrolled credential (which survived the SIGKILL): both active tasks are re-sent
    // under new epochs, the running one with its checkpoint.
    let mut agent = FakeAgent::connect_with(ch.clone(), &cred, CVM, false).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(agent.recv().await);
    }
    for cmd in &got {
        let b = before.iter().find(|b| b.id == cmd.task_id).unwrap();
        assert_eq!(cmd.epoch, b.epoch + 1);
        match &cmd.body {
            Some(C::StartMigration(s)) => {
                assert_eq!(cmd.task_id, running.id);
                assert_eq!(s.checkpoint.as_ref().unwrap().engine_state, b"resume-here");
                assert_eq!(
                    s.spec.as_ref().unwrap().password,
                    TASK_PW,
                    "the secret survives restart sealed"
                );
                assert_eq!(s.destination.as_ref().unwrap().password, INST_PW);
            }
            Some(C::RunChecks(_)) => assert_eq!(cmd.task_id, checking.id),
            other => panic!("unexpected {other:?}"),
        }
    }

    // SIGTERM: clean exit.
    let pid = proc.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(WAIT, proc.child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    drop(agent);

    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("state recovered"), "log is captured");
    for secret in [TASK_PW, INST_PW, OPERATOR_TOKEN, &cred.secret] {
        assert!(!log_text.contains(secret), "{secret} leaked into the log");
    }
    for secret in [TASK_PW, INST_PW, OPERATOR_TOKEN, &cred.secret] {
        let leaked = files_containing(&data, secret.as_bytes());
        assert!(leaked.is_empty(), "{secret} in clear in {leaked:?}");
    }

    // Key rotation while stopped: every secret is re-sealed under a new key and still opens after a restart.
    let key_before = std::fs::read(data.join("secret.key")).unwrap();
    let rotated = Command::new(env!("CARGO_BIN_EXE_ferry-coordinator"))
        .arg("rotate-key")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert!(rotated.status.success(), "{rotated:?}");
    let said = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        said.contains("re-sealed 3 task and 1 instance secrets"),
        "{said}"
    );
    assert_ne!(std::fs::read(data.join("secret.key")).unwrap(), key_before);
    let mut proc = spawn(&data, &tokens, &log).await;
    let ch = channel(&proc.addr).await;
    let mut op = operator_client(ch.clone(), Some(OPERATOR_TOKEN));
    let tasks = op
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.len() == 3 && tasks.iter().all(|t| t.password_set));
    let mut agent = FakeAgent::connect_with(ch.clone(), &cred, CVM, false).await;
    let resent = agent.recv().await;
    let password = match &resent.body {
        Some(C::StartMigration(s)) => s.spec.as_ref().unwrap().password.clone(),
        Some(C::RunChecks(r)) => r.spec.as_ref().unwrap().password.clone(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(password, TASK_PW, "the secret opens under the new key");
    drop(agent);
    proc.child.kill().await.unwrap();
}
