//! Operating a running task with a fake agent: pause and resume reach the agent (and forbid CompleteTask while
//! paused), throttles reach it at once and with every re-assignment, the task's history lists what happened in
//! order with the principal of operator actions, and the metrics endpoint exposes tasks, agents and RPCs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use ferry_proto::v1 as pb;
use pb::agent_message::Body as A;
use pb::coordinator_message::Body as C;
use tonic::Code;

const CVM: &str = "ins-abc12345";

/// A task in RUNNING on `agent`; returns (task id, epoch of the StartMigration).
async fn running(op: &mut Operator, agent: &mut FakeAgent) -> (String, u64) {
    let t = create(op, cvm_spec("op", CVM, "pw")).await;
    op.check_task(pb::CheckTaskRequest {
        task_id: t.id.clone(),
    })
    .await
    .unwrap();
    let e = agent.recv().await.epoch;
    agent
        .send(&t.id, e, A::ChecksFinished(pb::ChecksFinished {}))
        .await;
    wait_task(op, &t.id, |t| t.state() == pb::TaskState::CheckPassed).await;
    op.start_task(pb::StartTaskRequest {
        task_id: t.id.clone(),
    })
    .await
    .unwrap();
    let start = agent.recv().await;
    assert!(
        matches!(start.body, Some(C::StartMigration(_))),
        "{start:?}"
    );
    (t.id, start.epoch)
}

#[tokio::test]
async fn pause_resume_and_throttle_reach_the_agent_and_survive_a_reassignment() {
    let coord = Coord::start().await;
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    let mut agent = FakeAgent::connect(&coord, "a", CVM, false).await;
    let (id, epoch) = running(&mut op, &mut agent).await;

    let throttle = pb::Throttle {
        copy_documents_per_second: 500,
        apply_bytes_per_second: 2_000_000,
        ..Default::default()
    };
    let t = op
        .set_task_throttle(pb::SetTaskThrottleRequest {
            task_id: id.clone(),
            throttle: Some(throttle),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.throttle, Some(throttle));
    let cmd = agent.recv().await;
    assert_eq!(cmd.epoch, epoch);
    assert_eq!(
        cmd.body,
        Some(C::SetThrottle(pb::SetThrottle {
            throttle: Some(throttle)
        }))
    );

    let t = op
        .pause_task(pb::PauseTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.paused);
    assert_eq!(
        agent.recv().await.body,
        Some(C::SetPaused(pb::SetPaused { paused: true }))
    );
    let err = op
        .complete_task(pb::CompleteTaskRequest {
            task_id: id.clone(),
            require_verification: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("ResumeTask first"),
        "{}",
        err.message()
    );
    let err = op
        .pause_task(pb::PauseTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The agent comes back: the migration is re-sent paused and throttled.
    drop(agent);
    wait_task(&mut op, &id, |t| !t.agent_connected).await;
    let mut agent = FakeAgent::connect(&coord, "a", CVM, false).await;
    let again = agent.recv().await;
    let Some(C::StartMigration(start)) = again.body else {
        panic!("{again:?}")
    };
    assert!(start.paused);
    assert_eq!(start.throttle, Some(throttle));

    op.resume_task(pb::ResumeTaskRequest {
        task_id: id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        agent.recv().await.body,
        Some(C::SetPaused(pb::SetPaused { paused: false }))
    );
    op.complete_task(pb::CompleteTaskRequest {
        task_id: id.clone(),
        require_verification: false,
    })
    .await
    .unwrap();
    // Not RUNNING any more: no pausing.
    let err = op
        .pause_task(pb::PauseTaskRequest { task_id: id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    coord.shutdown().await;
}

#[tokio::test]
async fn the_history_lists_what_happened_in_order_with_who_did_it() {
    let coord = Coord::start().await;
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    let mut agent = FakeAgent::connect(&coord, "h", CVM, false).await;
    let (id, epoch) = running(&mut op, &mut agent).await;
    agent
        .send(
            &id,
            epoch,
            A::PhaseChanged(pb::PhaseChanged {
                phase: pb::TaskPhase::OplogSync as i32,
            }),
        )
        .await;
    agent
        .send(
            &id,
            epoch,
            A::Note(pb::TaskNote {
                kind: "retry".into(),
                detail: "destination unreachable for 5 s, retrying".into(),
            }),
        )
        .await;
    wait_task(&mut op, &id, |t| t.phase() == pb::TaskPhase::OplogSync).await;
    op.pause_task(pb::PauseTaskRequest {
        task_id: id.clone(),
    })
    .await
    .unwrap();
    drop(agent);
    wait_task(&mut op, &id, |t| !t.agent_connected).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let events = loop {
        let page = op
            .list_task_events(pb::ListTaskEventsRequest {
                task_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if page.events.iter().any(|e| e.kind == "agent_disconnected") {
            break page.events;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:#?}", page.events);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let position = |kind: &str, detail: &str| {
        events
            .iter()
            .position(|e| e.kind == kind && e.detail.contains(detail))
            .unwrap_or_else(|| panic!("no {kind} {detail:?} in {kinds:?}"))
    };
    let order = [
        position("created", "\"op\""),
        position("operator", "CheckTask"),
        position("state", "NOT_STARTED -> CHECKING"),
        position("state", "CHECKING -> CHECK_PASSED"),
        position("operator", "StartTask"),
        position("state", "CHECK_PASSED -> RUNNING"),
        position("phase", "OPLOG_SYNC"),
        position("retry", "destination unreachable"),
        position("operator", "PauseTask"),
        position("paused", "paused"),
        position("agent_disconnected", ""),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order: {kinds:?}"
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    let operator = &events[position("operator", "StartTask")];
    assert_eq!(operator.principal, "admin");
    assert!(events
        .iter()
        .any(|e| e.kind == "assigned" && e.detail.contains(&format!("(epoch {epoch})"))));
    // Paging: two at a time, the same events.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = op
            .list_task_events(pb::ListTaskEventsRequest {
                task_id: id.clone(),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged.len(), events.len().max(paged.len()));
    assert_eq!(paged[..events.len()], events[..]);
    coord.shutdown().await;
}

#[tokio::test]
async fn the_metrics_endpoint_exposes_tasks_agents_and_rpcs() {
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    let coord = Coord::start_with_metrics(metrics_listener).await;
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    let mut agent = FakeAgent::connect(&coord, "m", CVM, false).await;
    let (id, epoch) = running(&mut op, &mut agent).await;
    agent
        .send(
            &id,
            epoch,
            A::Progress(pb::ProgressReport {
                progress: Some(pb::Progress {
                    documents_copied: 1234,
                    documents_estimated: 5000,
                    lag_seconds: 2.5,
                    spool_bytes: 800,
                    spool_cap_bytes: 1000,
                    catch_up_eta_seconds: -1,
                    ..Default::default()
                }),
            }),
        )
        .await;
    wait_task(&mut op, &id, |t| {
        t.progress
            .as_ref()
            .is_some_and(|p| p.documents_copied == 1234)
    })
    .await;
    let _ = op
        .get_task(pb::GetTaskRequest {
            task_id: "task-000000000000".into(),
        })
        .await;
    let body = http_get(metrics_addr, "/metrics").await;
    for needle in [
        "ferry_tasks{state=\"RUNNING\"} 1",
        &format!("ferry_task_documents_copied{{task_id=\"{id}\"}} 1234.0"),
        &format!("ferry_task_lag_seconds{{task_id=\"{id}\"}} 2.5"),
        &format!("ferry_task_catch_up_eta_seconds{{task_id=\"{id}\"}} -1.0"),
        &format!("ferry_task_agent_connected{{task_id=\"{id}\"}} 1.0"),
        "ferry_agents{state=\"connected\"} 1",
        "ferry_rpc_requests_total{service=\"MigrationService\",method=\"StartTask\",code=\"OK\"} 1",
        "ferry_rpc_requests_total{service=\"MigrationService\",method=\"GetTask\",code=\"NOT_FOUND\"} 1",
        "ferry_rpc_duration_seconds_count{service=\"MigrationService\",method=\"CreateTask\"} 1",
        "ferry_task_events_total{kind=\"created\"} 1",
        "# EOF",
    ] {
        assert!(body.contains(needle), "no {needle:?} in\n{body}");
    }
    coord.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("application/openmetrics-text"),
        "{response}"
    );
    response
}
