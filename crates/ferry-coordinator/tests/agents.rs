//! Agent sessions: assignment epochs, stale reports, reconnects, heartbeat timeouts, resume with checkpoints,
//! ListSourceDatabases, WatchTask, and that passwords only travel inside the agent stream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::time::Duration;

use common::*;
use ferry_proto::v1 as pb;
use pb::agent_message::Body as A;
use pb::coordinator_message::Body as C;
use prost::Message;
use tonic::Code;

const CVM: &str = "ins-abc12345";
const AGENT: &str = "agent-0000000000c1";

async fn setup(coord: &Coord) -> Operator {
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    op
}

#[tokio::test]
async fn reconnect_bumps_the_epoch_and_a_report_with_the_old_epoch_is_rejected() {
    let coord = Coord::start().await;
    let mut op = setup(&coord).await;
    let t = create(&mut op, cvm_spec("e", CVM, "task-pw-1")).await;
    let mut agent = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    let t = op
        .check_task(pb::CheckTaskRequest {
            task_id: t.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.state(), pb::TaskState::Checking);
    assert_eq!(t.agent_id, agent.agent_id);
    assert!(t.agent_connected);
    let cmd = agent.recv().await;
    let Some(C::RunChecks(run)) = &cmd.body else {
        panic!("{cmd:?}")
    };
    assert_eq!(cmd.task_id, t.id);
    assert_eq!(cmd.epoch, t.epoch);
    // Secrets travel to the agent, and only there.
    assert_eq!(run.spec.as_ref().unwrap().password, "task-pw-1");
    assert_eq!(run.destination.as_ref().unwrap().password, "inst-pw");
    let old_epoch = cmd.epoch;

    // A second session with the same credential is refused while the first is live (it would otherwise receive
    // the first's tasks); the first keeps its task and its epoch.
    let cred = coord.enroll(AGENT, CVM, false).await;
    let second = pb::AgentMessage {
        body: Some(A::Hello(hello(&cred.agent_id, CVM, false))),
        ..Default::default()
    };
    let err = open_session(coord.channel().await, Some(&bearer(&cred)), second)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    let still = get(&mut op, &t.id).await;
    assert!(still.agent_connected);
    assert_eq!(still.epoch, old_epoch);

    // The first session ends; the agent comes back: the task is re-sent under a new epoch.
    drop(agent);
    wait_task(&mut op, &t.id, |t| !t.agent_connected).await;
    let mut again = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    let cmd = again.recv().await;
    assert!(matches!(cmd.body, Some(C::RunChecks(_))), "{cmd:?}");
    assert_eq!(cmd.epoch, old_epoch + 1);
    let before = get(&mut op, &t.id).await;
    assert_eq!(before.epoch, old_epoch + 1);

    // A report with the old epoch is rejected and changes nothing.
    again
        .send(
            &t.id,
            old_epoch,
            check_item("source_reachable", pb::CheckStatus::Fail),
        )
        .await;
    again
        .send(&t.id, old_epoch, A::ChecksFinished(pb::ChecksFinished {}))
        .await;
    let rej = again.recv().await;
    let Some(C::ReportRejected(r)) = &rej.body else {
        panic!("{rej:?}")
    };
    assert_eq!(rej.task_id, t.id);
    assert_eq!(r.current_epoch, old_epoch + 1);
    assert!(matches!(
        again.recv().await.body,
        Some(C::ReportRejected(_))
    ));
    let after = get(&mut op, &t.id).await;
    assert_eq!(after, before, "a stale report must not change the task");

    // Another agent cannot report on the task either.
    let other = FakeAgent::connect(&coord, "agent-0000000000c2", "ins-zzz99999", false).await;
    let mut other = other;
    other
        .send(
            &t.id,
            old_epoch + 1,
            A::ChecksFinished(pb::ChecksFinished {}),
        )
        .await;
    assert!(matches!(
        other.recv().await.body,
        Some(C::ReportRejected(_))
    ));

    // The current epoch is accepted.
    again
        .send(
            &t.id,
            old_epoch + 1,
            check_item("source_reachable", pb::CheckStatus::Fail),
        )
        .await;
    again
        .send(
            &t.id,
            old_epoch + 1,
            A::ChecksFinished(pb::ChecksFinished {}),
        )
        .await;
    let done = wait_task(&mut op, &t.id, |t| t.state() == pb::TaskState::CheckFailed).await;
    assert!(
        done.failure_reason.contains("source_reachable"),
        "{}",
        done.failure_reason
    );
    assert!(done
        .checks
        .iter()
        .any(|c| c.id == "agent_available" && c.status() == pb::CheckStatus::Pass));
    coord.shutdown().await;
}

#[tokio::test]
async fn silent_agent_is_disconnected_and_its_task_resumes_when_it_returns() {
    let coord = Coord::start_with(|c| c.heartbeat_interval = Duration::from_millis(300)).await;
    let mut op = setup(&coord).await;
    let t = create(&mut op, cvm_spec("hb", CVM, "pw")).await;
    let mut agent = FakeAgent::connect_silent(&coord, AGENT, CVM, false).await;
    op.check_task(pb::CheckTaskRequest {
        task_id: t.id.clone(),
    })
    .await
    .unwrap();
    let first = agent.recv().await;
    // The agent stays silent (no heartbeats) but keeps its stream open.
    let t1 = wait_task(&mut op, &t.id, |t| !t.agent_connected).await;
    assert_eq!(
        t1.state(),
        pb::TaskState::Checking,
        "the task keeps its state"
    );
    assert_eq!(t1.agent_id, agent.agent_id);
    drop(agent);

    let mut back = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    let cmd = back.recv().await;
    assert!(matches!(cmd.body, Some(C::RunChecks(_))));
    assert!(cmd.epoch > first.epoch);
    let t2 = wait_task(&mut op, &t.id, |t| t.agent_connected).await;
    assert_eq!(t2.epoch, cmd.epoch);
    // A heartbeating agent stays connected: let 4 heartbeat intervals pass (the silence limit is 3).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(get(&mut op, &t.id).await.agent_connected);
    coord.shutdown().await;
}

#[tokio::test]
async fn running_task_resumes_from_its_checkpoint_and_stop_rolls_back() {
    let coord = Coord::start().await;
    let mut op = setup(&coord).await;
    let mut agent = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    let (id, cmd) = checked_and_started(&mut op, &mut agent, "run").await;
    let Some(C::StartMigration(start)) = &cmd.body else {
        panic!("{cmd:?}")
    };
    assert!(start.checkpoint.is_none());
    let e = cmd.epoch;
    let checkpoint = pb::Checkpoint {
        phase: pb::TaskPhase::DataSync as i32,
        start_ts: Some(pb::OplogTimestamp {
            seconds: 1_700_000_000,
            increment: 3,
        }),
        engine_state: b"ranges:1,2".to_vec(),
        ..Default::default()
    };
    agent
        .send(
            &id,
            e,
            A::Checkpoint(pb::CheckpointReport {
                checkpoint: Some(checkpoint.clone()),
            }),
        )
        .await;
    agent
        .send(
            &id,
            e,
            A::Progress(pb::ProgressReport {
                progress: Some(pb::Progress {
                    documents_copied: 42,
                    phase: pb::TaskPhase::DataSync as i32,
                    ..Default::default()
                }),
            }),
        )
        .await;
    wait_task(&mut op, &id, |t| {
        t.progress
            .as_ref()
            .is_some_and(|p| p.documents_copied == 42)
    })
    .await;
    drop(agent);
    wait_task(&mut op, &id, |t| !t.agent_connected).await;

    let mut back = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    let cmd = back.recv().await;
    let Some(C::StartMigration(start)) = &cmd.body else {
        panic!("{cmd:?}")
    };
    assert_eq!(
        start.checkpoint.as_ref().unwrap().engine_state,
        checkpoint.engine_state
    );
    assert_eq!(
        start.checkpoint.as_ref().unwrap().start_ts,
        checkpoint.start_ts
    );
    assert_eq!(cmd.epoch, e + 1);

    op.stop_task(pb::StopTaskRequest {
        task_id: id.clone(),
    })
    .await
    .unwrap();
    let cmd = back.recv().await;
    let Some(C::StopMigration(stop)) = &cmd.body else {
        panic!("{cmd:?}")
    };
    assert!(stop.checkpoint.is_some() && stop.destination.is_some() && stop.spec.is_some());
    assert_eq!(get(&mut op, &id).await.state(), pb::TaskState::Stopping);
    back.send(&id, cmd.epoch, A::Stopped(pb::TaskStopped::default()))
        .await;
    let t = wait_task(&mut op, &id, |t| t.state() == pb::TaskState::Failed).await;
    assert_eq!(t.failure_reason, "stopped by operator");
    coord.shutdown().await;
}

#[tokio::test]
async fn start_without_agent_waits_and_unsupported_commands_are_recorded() {
    let coord = Coord::start().await;
    let mut op = setup(&coord).await;
    let t = create(&mut op, public_spec("pub")).await;
    let id = t.id.clone();
    // No pool agent: checks fail with agent_available.
    let t = op
        .check_task(pb::CheckTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.state(), pb::TaskState::CheckFailed);
    let mut pool = FakeAgent::connect(&coord, "agent-0000000000d1", "", true).await;
    op.check_task(pb::CheckTaskRequest {
        task_id: id.clone(),
    })
    .await
    .unwrap();
    let e = pool.recv().await.epoch;
    let pool1_id = pool.agent_id.clone();
    pool.send(&id, e, A::ChecksFinished(pb::ChecksFinished {}))
        .await;
    wait_task(&mut op, &id, |t| t.state() == pb::TaskState::CheckPassed).await;
    drop(pool);
    wait_task(&mut op, &id, |t| !t.agent_connected).await;
    let t = op
        .start_task(pb::StartTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.state(), pb::TaskState::Running);
    assert!(!t.agent_connected);

    // A different pool agent arrives and gets the migration.
    let mut pool2 = FakeAgent::connect(&coord, "agent-0000000000d2", "", true).await;
    let cmd = pool2.recv().await;
    assert!(matches!(cmd.body, Some(C::StartMigration(_))), "{cmd:?}");
    pool2
        .send(
            &id,
            cmd.epoch,
            A::CommandError(pb::CommandError {
                command: "start_migration".into(),
                message: "migration is delivered by a later issue".into(),
                unsupported: true,
            }),
        )
        .await;
    let t = wait_task(&mut op, &id, |t| t.state() == pb::TaskState::Failed).await;
    assert!(
        t.failure_reason.contains("unsupported by this agent"),
        "{}",
        t.failure_reason
    );
    assert_eq!(t.agent_id, pool2.agent_id);

    let agents = op
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 2);
    assert!(agents
        .iter()
        .any(|a| a.agent_id == pool2.agent_id && a.connected));
    assert!(agents
        .iter()
        .any(|a| a.agent_id == pool1_id && !a.connected));
    coord.shutdown().await;
}

#[tokio::test]
async fn list_source_databases_asks_the_agent() {
    let coord = Coord::start_with(|c| c.list_databases_timeout = Duration::from_millis(300)).await;
    let mut op = setup(&coord).await;
    let t = create(&mut op, cvm_spec("dbs", CVM, "pw")).await;
    let err = op
        .list_source_databases(pb::ListSourceDatabasesRequest {
            task_id: t.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let mut agent = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    let mut op2 = op.clone();
    let id = t.id.clone();
    let call = tokio::spawn(async move {
        op2.list_source_databases(pb::ListSourceDatabasesRequest { task_id: id })
            .await
    });
    let cmd = agent.recv().await;
    let Some(C::ListDatabases(req)) = &cmd.body else {
        panic!("{cmd:?}")
    };
    agent
        .send(
            &t.id,
            cmd.epoch,
            A::Databases(pb::DatabasesReport {
                request_id: req.request_id,
                databases: vec![pb::SourceDatabase {
                    name: "shop".into(),
                    size_on_disk_bytes: 4096,
                    empty: false,
                }],
                error: String::new(),
            }),
        )
        .await;
    let dbs = call.await.unwrap().unwrap().into_inner().databases;
    assert_eq!(dbs.len(), 1);
    assert_eq!(dbs[0].name, "shop");
    // No answer: DeadlineExceeded.
    let err = op
        .list_source_databases(pb::ListSourceDatabasesRequest {
            task_id: t.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    // An agent that cannot list answers with a command error: the call fails with it, the task is untouched.
    let unanswered = agent.recv().await;
    assert!(matches!(unanswered.body, Some(C::ListDatabases(_))));
    let before = get(&mut op, &t.id).await;
    let mut op3 = op.clone();
    let id = t.id.clone();
    let call = tokio::spawn(async move {
        op3.list_source_databases(pb::ListSourceDatabasesRequest { task_id: id })
            .await
    });
    let cmd = agent.recv().await;
    assert!(matches!(cmd.body, Some(C::ListDatabases(_))), "{cmd:?}");
    agent
        .send(
            &t.id,
            cmd.epoch,
            A::CommandError(pb::CommandError {
                command: "list_databases".into(),
                message: "not implemented yet".into(),
                unsupported: true,
            }),
        )
        .await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("unsupported by this agent"),
        "{}",
        err.message()
    );
    assert_eq!(get(&mut op, &t.id).await, before);
    coord.shutdown().await;
}

#[tokio::test]
async fn watch_task_streams_changes_until_the_end_and_never_a_password() {
    let coord = Coord::start().await;
    let mut op = setup(&coord).await;
    let password = "watch-secret-pw-31337";
    let t = create(&mut op, cvm_spec("w", CVM, password)).await;
    let id = t.id.clone();
    let mut stream = op
        .watch_task(pb::WatchTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.state(), pb::TaskState::NotStarted);
    let mut agent = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    op.check_task(pb::CheckTaskRequest {
        task_id: id.clone(),
    })
    .await
    .unwrap();
    let e = agent.recv().await.epoch;
    agent
        .send(&id, e, A::ChecksFinished(pb::ChecksFinished {}))
        .await;
    wait_task(&mut op, &id, |t| t.state() == pb::TaskState::CheckPassed).await;
    op.start_task(pb::StartTaskRequest {
        task_id: id.clone(),
    })
    .await
    .unwrap();
    let e = agent.recv().await.epoch;
    op.complete_task(pb::CompleteTaskRequest {
        task_id: id.clone(),
        require_verification: false,
    })
    .await
    .unwrap();
    assert!(matches!(
        agent.recv().await.body,
        Some(C::CompleteMigration(_))
    ));
    agent
        .send(
            &id,
            e,
            A::Completed(pb::TaskCompleted {
                final_progress: Some(pb::Progress {
                    documents_copied: 7,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .await;
    let mut states = vec![first.state()];
    let mut all = vec![first];
    while let Some(t) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("stream ends in time")
        .unwrap()
    {
        states.push(t.state());
        all.push(t);
    }
    assert_eq!(states.last(), Some(&pb::TaskState::Succeeded));
    for s in [
        pb::TaskState::Checking,
        pb::TaskState::CheckPassed,
        pb::TaskState::Running,
    ] {
        assert!(states.contains(&s), "{states:?}");
    }
    assert_eq!(
        all.last()
            .unwrap()
            .progress
            .as_ref()
            .unwrap()
            .documents_copied,
        7
    );
    for t in &all {
        let bytes = t.encode_to_vec();
        assert!(!bytes
            .windows(password.len())
            .any(|w| w == password.as_bytes()));
        assert!(t.password_set);
    }
    let listed = op
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!listed
        .encode_to_vec()
        .windows(password.len())
        .any(|w| w == password.as_bytes()));
    let instances = op
        .list_instances(pb::ListInstancesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(instances
        .instances
        .iter()
        .all(|i| i.password.is_empty() && i.password_set));
    coord.shutdown().await;
}

/// Creates a CVM task, passes its checks and starts it; returns its id and the command the agent received.
async fn checked_and_started(
    op: &mut Operator,
    agent: &mut FakeAgent,
    name: &str,
) -> (String, pb::CoordinatorMessage) {
    let id = create(op, cvm_spec(name, CVM, "pw")).await.id;
    op.check_task(pb::CheckTaskRequest {
        task_id: id.clone(),
    })
    .await
    .unwrap();
    let e = agent.recv().await.epoch;
    agent
        .send(&id, e, A::ChecksFinished(pb::ChecksFinished {}))
        .await;
    wait_task(op, &id, |t| t.state() == pb::TaskState::CheckPassed).await;
    op.start_task(pb::StartTaskRequest {
        task_id: id.clone(),
    })
    .await
    .unwrap();
    (id, agent.recv().await)
}

/// Drives a CVM task to RUNNING with a checkpoint in OPLOG_SYNC; returns (task id, epoch, checkpoint).
async fn running_with_checkpoint(
    op: &mut Operator,
    agent: &mut FakeAgent,
    name: &str,
) -> (String, u64, pb::Checkpoint) {
    let (id, cmd) = checked_and_started(op, agent, name).await;
    assert!(matches!(cmd.body, Some(C::StartMigration(_))), "{cmd:?}");
    let checkpoint = pb::Checkpoint {
        phase: pb::TaskPhase::OplogSync as i32,
        start_ts: Some(pb::OplogTimestamp {
            seconds: 1_700_000_000,
            increment: 3,
        }),
        last_applied: Some(pb::OplogTimestamp {
            seconds: 1_700_000_100,
            increment: 1,
        }),
        engine_state: b"ranges:all".to_vec(),
        ..Default::default()
    };
    agent
        .send(
            &id,
            cmd.epoch,
            A::Checkpoint(pb::CheckpointReport {
                checkpoint: Some(checkpoint.clone()),
            }),
        )
        .await;
    wait_task(op, &id, |t| t.checkpoint.is_some()).await;
    (id, cmd.epoch, checkpoint)
}

async fn fail(agent: &FakeAgent, id: &str, epoch: u64, resumable: bool) {
    agent
        .send(
            id,
            epoch,
            A::Failed(pb::TaskFailed {
                reason: "destination unreachable for 120s".into(),
                resumable,
            }),
        )
        .await;
}

#[tokio::test]
async fn a_resumable_failure_resumes_from_its_checkpoint_on_start_task() {
    let coord = Coord::start().await;
    let mut op = setup(&coord).await;
    let mut agent = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    let (id, e, checkpoint) = running_with_checkpoint(&mut op, &mut agent, "r").await;
    fail(&agent, &id, e, true).await;
    let failed = wait_task(&mut op, &id, |t| t.state() == pb::TaskState::Failed).await;
    assert!(failed.resumable);
    assert_eq!(failed.failure_reason, "destination unreachable for 120s");

    // CheckTask is not among the actions of a resumable failure; the error lists the ones that are.
    let err = op
        .check_task(pb::CheckTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("FAILED (resumable)")
            && err
                .message()
                .contains("StartTask, StopTask, SetTaskThrottle, DeleteTask"),
        "{}",
        err.message()
    );

    let resumed = op
        .start_task(pb::StartTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.state(), pb::TaskState::Running);
    assert_eq!(resumed.phase(), pb::TaskPhase::OplogSync);
    assert!(!resumed.resumable);
    assert!(resumed.failure_reason.is_empty());
    let cmd = agent.recv().await;
    let Some(C::StartMigration(start)) = &cmd.body else {
        panic!("{cmd:?}")
    };
    assert!(cmd.epoch > e, "a resume is a new assignment");
    let got = start
        .checkpoint
        .as_ref()
        .expect("resume carries the checkpoint");
    assert_eq!(got.engine_state, checkpoint.engine_state);
    assert_eq!(got.last_applied, checkpoint.last_applied);

    // The failed run's epoch can no longer write state.
    fail(&agent, &id, e, false).await;
    agent
        .send(
            &id,
            cmd.epoch,
            A::Progress(pb::ProgressReport {
                progress: Some(pb::Progress {
                    documents_copied: 7,
                    phase: pb::TaskPhase::OplogSync as i32,
                    ..Default::default()
                }),
            }),
        )
        .await;
    // Reports are handled in order: once the new epoch's progress shows, the stale failure was seen first.
    let after = wait_task(&mut op, &id, |t| {
        t.progress.as_ref().is_some_and(|p| p.documents_copied == 7)
    })
    .await;
    assert_eq!(after.state(), pb::TaskState::Running);
    coord.shutdown().await;
}

#[tokio::test]
async fn any_failure_can_be_rolled_back_once_and_only_a_resumable_one_restarts() {
    let coord = Coord::start().await;
    let mut op = setup(&coord).await;
    let mut agent = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    let (id, e, checkpoint) = running_with_checkpoint(&mut op, &mut agent, "s").await;
    fail(&agent, &id, e, true).await;
    wait_task(&mut op, &id, |t| t.state() == pb::TaskState::Failed).await;
    let stopping = op
        .stop_task(pb::StopTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopping.state(), pb::TaskState::Stopping);
    assert!(!stopping.resumable);
    let cmd = agent.recv().await;
    let Some(C::StopMigration(stop)) = &cmd.body else {
        panic!("{cmd:?}")
    };
    assert_eq!(
        stop.checkpoint.as_ref().map(|c| c.engine_state.clone()),
        Some(checkpoint.engine_state)
    );
    agent
        .send(&id, cmd.epoch, A::Stopped(pb::TaskStopped::default()))
        .await;
    let stopped = wait_task(&mut op, &id, |t| t.state() == pb::TaskState::Failed).await;
    assert_eq!(stopped.failure_reason, "stopped by operator");
    assert!(!stopped.resumable);

    // A stopped task has nothing left to roll back: a second StopTask says so.
    let err = op
        .stop_task(pb::StopTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("nothing left to roll back"),
        "{}",
        err.message()
    );

    // A permanent failure: StartTask is refused and says why; StopTask still rolls back what it created (the
    // rollback gets the failed run's checkpoint, which lists the namespaces it created).
    let (id2, e2, checkpoint2) = running_with_checkpoint(&mut op, &mut agent, "p").await;
    fail(&agent, &id2, e2, false).await;
    let failed = wait_task(&mut op, &id2, |t| t.state() == pb::TaskState::Failed).await;
    assert!(!failed.resumable);
    let err = op
        .start_task(pb::StartTaskRequest {
            task_id: id2.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("not resumable"), "{}", err.message());
    assert!(err.message().contains("StopTask"), "{}", err.message());
    let stopping = op
        .stop_task(pb::StopTaskRequest {
            task_id: id2.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopping.state(), pb::TaskState::Stopping);
    let cmd = agent.recv().await;
    let Some(C::StopMigration(stop)) = &cmd.body else {
        panic!("{cmd:?}")
    };
    assert_eq!(
        stop.checkpoint.as_ref().map(|c| c.engine_state.clone()),
        Some(checkpoint2.engine_state)
    );
    agent
        .send(&id2, cmd.epoch, A::Stopped(pb::TaskStopped::default()))
        .await;
    let stopped = wait_task(&mut op, &id2, |t| {
        t.state() == pb::TaskState::Failed && t.failure_reason == "stopped by operator"
    })
    .await;
    assert!(!stopped.resumable);
    coord.shutdown().await;
}
