//! Verification runs through the public API with a fake agent: VerifyTask only in OPLOG_SYNC or SUCCEEDED, the
//! StartVerification command, reports that update the task and store mismatches (paged by ListMismatches), a run
//! resumed from its checkpoint when the agent comes back, stale runs ignored, and CompleteTask with verification.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use ferry_proto::v1 as pb;
use pb::agent_message::Body as A;
use pb::coordinator_message::Body as C;
use tonic::Code;

const CVM: &str = "ins-abc12345";
const AGENT: &str = "agent-0000000000c1";

async fn running(coord: &Coord, agent: &mut FakeAgent) -> (Operator, String, u64) {
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    let id = create(&mut op, cvm_spec("v", CVM, "pw")).await.id;
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
    let epoch = agent.recv().await.epoch;
    (op, id, epoch)
}

fn report(run: u64, state: pb::VerificationState, compared: u64) -> pb::Verification {
    pb::Verification {
        run,
        state: state as i32,
        phase: "documents".into(),
        documents_compared: compared,
        documents_total: 100,
        ..Default::default()
    }
}

fn mismatch(i: u64) -> pb::Mismatch {
    pb::Mismatch {
        namespace: "shop.orders".into(),
        id: format!("{{\"$numberInt\":\"{i}\"}}"),
        kind: pb::MismatchKind::Different as i32,
        field_path: "total".into(),
        detail: String::new(),
    }
}

#[tokio::test]
async fn verify_task_runs_online_in_oplog_sync_and_its_mismatches_page() {
    let coord = Coord::start().await;
    let mut agent = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    let (mut op, id, epoch) = running(&coord, &mut agent).await;

    // Not in OPLOG_SYNC yet: refused, naming the phase.
    let err = op
        .verify_task(pb::VerifyTaskRequest {
            task_id: id.clone(),
            mode: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("OPLOG_SYNC"), "{}", err.message());

    agent
        .send(
            &id,
            epoch,
            A::PhaseChanged(pb::PhaseChanged {
                phase: pb::TaskPhase::OplogSync as i32,
            }),
        )
        .await;
    wait_task(&mut op, &id, |t| t.phase() == pb::TaskPhase::OplogSync).await;
    let t = op
        .verify_task(pb::VerifyTaskRequest {
            task_id: id.clone(),
            mode: pb::VerifyMode::Hashed as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let v = t.verification.unwrap();
    assert_eq!((v.run, v.state()), (1, pb::VerificationState::Running));
    let cmd = agent.recv().await;
    let Some(C::StartVerification(start)) = cmd.body else {
        panic!("{cmd:?}")
    };
    assert_eq!((start.run, start.mode()), (1, pb::VerifyMode::Hashed));
    assert_eq!(
        start.spec.unwrap().password,
        "pw",
        "the agent gets what it needs"
    );
    assert!(start.checkpoint.is_empty());

    // Progress with mismatches and a checkpoint.
    agent
        .send(
            &id,
            epoch,
            A::Verification(pb::VerificationReport {
                verification: Some(report(1, pb::VerificationState::Running, 40)),
                new_mismatches: (0..150).map(mismatch).collect(),
                checkpoint: b"ranges:0-3".to_vec(),
            }),
        )
        .await;
    let t = wait_task(&mut op, &id, |t| {
        t.verification
            .as_ref()
            .is_some_and(|v| v.documents_compared == 40)
    })
    .await;
    assert_eq!(t.verification.unwrap().mode(), pb::VerifyMode::Hashed);
    let page = op
        .list_mismatches(pb::ListMismatchesRequest {
            task_id: id.clone(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((page.total, page.run, page.mismatches.len()), (150, 1, 100));
    assert_eq!(page.mismatches[0], mismatch(0));
    let rest = op
        .list_mismatches(pb::ListMismatchesRequest {
            task_id: id.clone(),
            page_size: 100,
            page_token: page.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.mismatches.len(), 50);
    assert_eq!(rest.mismatches[49], mismatch(149));
    assert!(rest.next_page_token.is_empty());
    let bad = op
        .list_mismatches(pb::ListMismatchesRequest {
            task_id: id.clone(),
            page_size: 10,
            page_token: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // The agent restarts: the run resumes from its checkpoint under a new epoch.
    drop(agent);
    wait_task(&mut op, &id, |t| !t.agent_connected).await;
    let mut again = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    let restart = again.recv().await;
    assert!(
        matches!(restart.body, Some(C::StartMigration(_))),
        "{restart:?}"
    );
    let resume = again.recv().await;
    let Some(C::StartVerification(start)) = resume.body else {
        panic!("{resume:?}")
    };
    assert_eq!(
        (start.run, start.checkpoint.as_slice()),
        (1, &b"ranges:0-3"[..])
    );
    let epoch = resume.epoch;

    // A report of an older run is ignored; the verdict of this one lands.
    again
        .send(
            &id,
            epoch,
            A::Verification(pb::VerificationReport {
                verification: Some(report(0, pb::VerificationState::Passed, 99)),
                ..Default::default()
            }),
        )
        .await;
    again
        .send(
            &id,
            epoch,
            A::Verification(pb::VerificationReport {
                verification: Some(report(1, pb::VerificationState::Failed, 100)),
                ..Default::default()
            }),
        )
        .await;
    let t = wait_task(&mut op, &id, |t| {
        t.verification
            .as_ref()
            .is_some_and(|v| v.state() != pb::VerificationState::Running)
    })
    .await;
    let v = t.verification.unwrap();
    assert_eq!(
        (v.state(), v.documents_compared),
        (pb::VerificationState::Failed, 100)
    );
    assert!(v.finish_time.is_some());
    coord.shutdown().await;
}

#[tokio::test]
async fn complete_task_with_verification_asks_the_agent_to_verify_the_cut_over() {
    let coord = Coord::start().await;
    let mut agent = FakeAgent::connect(&coord, AGENT, CVM, false).await;
    let (mut op, id, epoch) = running(&coord, &mut agent).await;
    let t = op
        .complete_task(pb::CompleteTaskRequest {
            task_id: id.clone(),
            require_verification: true,
        })
        .await
        .unwrap()
        .into_inner();
    let v = t.verification.unwrap();
    assert!(v.at_cut_over && v.run == 1, "{v:?}");
    let cmd = agent.recv().await;
    let Some(C::CompleteMigration(complete)) = cmd.body else {
        panic!("{cmd:?}")
    };
    assert!(complete.verify);
    assert_eq!(complete.run, 1);
    // Mismatches at cut-over: the agent fails the task resumable; the verification ends FAILED with its list.
    agent
        .send(
            &id,
            epoch,
            A::Verification(pb::VerificationReport {
                verification: Some(report(1, pb::VerificationState::Failed, 100)),
                new_mismatches: vec![mismatch(7)],
                checkpoint: Vec::new(),
            }),
        )
        .await;
    agent
        .send(
            &id,
            epoch,
            A::Failed(pb::TaskFailed {
                reason: "cut-over verification found 1 mismatch".into(),
                resumable: true,
            }),
        )
        .await;
    let t = wait_task(&mut op, &id, |t| t.state() == pb::TaskState::Failed).await;
    assert!(t.resumable);
    assert_eq!(
        t.verification.unwrap().state(),
        pb::VerificationState::Failed
    );
    let page = op
        .list_mismatches(pb::ListMismatchesRequest {
            task_id: id.clone(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.mismatches, vec![mismatch(7)]);
    // Not verifiable while FAILED; a SUCCEEDED task is (see the e2e tests).
    let err = op
        .verify_task(pb::VerifyTaskRequest {
            task_id: id.clone(),
            mode: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    coord.shutdown().await;
}
