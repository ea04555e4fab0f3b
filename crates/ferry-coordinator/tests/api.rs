//! Operator API behaviour: status codes for illegal transitions, bad fields, missing and duplicate objects, and
//! authentication on both services.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use ferry_proto::v1 as pb;
use pb::agent_message::Body as A;
use pb::coordinator_message::Body as C;
use tonic::Code;

const POOL_AGENT: &str = "agent-00000000000a";

/// Drives a fresh public-network task (served by the pool agent) into `target`; returns its id.
async fn drive(
    op: &mut Operator,
    agent: &mut FakeAgent,
    n: usize,
    target: pb::TaskState,
) -> String {
    use pb::TaskState as S;
    if target == S::CheckFailed {
        // A CVM task whose CVM has no agent fails its checks at once.
        let t = create(op, cvm_spec(&format!("t{n}"), "ins-nobody00", "pw")).await;
        let t = op
            .check_task(pb::CheckTaskRequest {
                task_id: t.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.state(), S::CheckFailed);
        assert_eq!(t.checks[0].id, "agent_available");
        assert!(t.checks[0]
            .fix
            .contains("install and start ferry-agent on CVM ins-nobody00"));
        return t.id;
    }
    let t = create(op, public_spec(&format!("t{n}"))).await;
    if target == S::NotStarted {
        return t.id;
    }
    let id = t.id;
    op.check_task(pb::CheckTaskRequest {
        task_id: id.clone(),
    })
    .await
    .unwrap();
    let cmd = agent.recv().await;
    assert!(matches!(cmd.body, Some(C::RunChecks(_))), "{cmd:?}");
    let epoch = cmd.epoch;
    match target {
        S::Checking => return id,
        S::Failed => {
            let t = op
                .stop_task(pb::StopTaskRequest {
                    task_id: id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(t.state(), S::Failed);
            assert_eq!(t.failure_reason, "stopped by operator");
            return id;
        }
        _ => {}
    }
    agent
        .send(
            &id,
            epoch,
            check_item("source_reachable", pb::CheckStatus::Pass),
        )
        .await;
    agent
        .send(&id, epoch, A::ChecksFinished(pb::ChecksFinished {}))
        .await;
    wait_task(op, &id, |t| t.state() == S::CheckPassed).await;
    if target == S::CheckPassed {
        return id;
    }
    op.start_task(pb::StartTaskRequest {
        task_id: id.clone(),
    })
    .await
    .unwrap();
    let cmd = agent.recv().await;
    assert!(matches!(cmd.body, Some(C::StartMigration(_))), "{cmd:?}");
    let epoch = cmd.epoch;
    if target == S::Running {
        return id;
    }
    if target == S::Stopping {
        op.stop_task(pb::StopTaskRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap();
        assert!(matches!(agent.recv().await.body, Some(C::StopMigration(_))));
        return id;
    }
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
    if target == S::Completing {
        return id;
    }
    agent
        .send(&id, epoch, A::Completed(pb::TaskCompleted::default()))
        .await;
    wait_task(op, &id, |t| t.state() == S::Succeeded).await;
    id
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Check,
    Start,
    Complete,
    Stop,
    Update,
    Delete,
}

async fn act(op: &mut Operator, a: Act, id: &str) -> Result<(), tonic::Status> {
    let task_id = id.to_owned();
    match a {
        Act::Check => op
            .check_task(pb::CheckTaskRequest { task_id })
            .await
            .map(drop),
        Act::Start => op
            .start_task(pb::StartTaskRequest { task_id })
            .await
            .map(drop),
        Act::Complete => op
            .complete_task(pb::CompleteTaskRequest {
                task_id,
                require_verification: false,
            })
            .await
            .map(drop),
        Act::Stop => op
            .stop_task(pb::StopTaskRequest { task_id })
            .await
            .map(drop),
        Act::Update => op
            .update_task(pb::UpdateTaskRequest {
                task_id,
                spec: Some(public_spec(&format!("u-{id}"))),
            })
            .await
            .map(drop),
        Act::Delete => op
            .delete_task(pb::DeleteTaskRequest { task_id })
            .await
            .map(drop),
    }
}

#[tokio::test]
async fn every_illegal_transition_is_failed_precondition_naming_state_and_allowed_actions() {
    use pb::TaskState as S;
    use Act::*;
    // (state, its name, actions that are legal in it)
    let table: [(S, &str, &[Act]); 9] = [
        (S::NotStarted, "NOT_STARTED", &[Check, Update, Delete]),
        (S::Checking, "CHECKING", &[Stop]),
        (
            S::CheckPassed,
            "CHECK_PASSED",
            &[Check, Start, Update, Delete],
        ),
        (S::CheckFailed, "CHECK_FAILED", &[Check, Update, Delete]),
        (S::Running, "RUNNING", &[Complete, Stop]),
        (S::Completing, "COMPLETING", &[Stop]),
        (S::Succeeded, "SUCCEEDED", &[Delete]),
        (S::Stopping, "STOPPING", &[]),
        (S::Failed, "FAILED", &[Delete]),
    ];
    let coord = Coord::start().await;
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    let mut agent = FakeAgent::connect(&coord, POOL_AGENT, "", true).await;
    let mut checked = 0;
    for (n, (target, name, legal)) in table.iter().enumerate() {
        let id = drive(&mut op, &mut agent, n, *target).await;
        let before = get(&mut op, &id).await;
        assert_eq!(before.state(), *target, "drive({name})");
        for a in [Check, Start, Complete, Stop, Update, Delete] {
            if legal.contains(&a) {
                continue;
            }
            let err = act(&mut op, a, &id)
                .await
                .expect_err(&format!("{a:?} in {name} must fail"));
            assert_eq!(
                err.code(),
                Code::FailedPrecondition,
                "{a:?} in {name}: {err:?}"
            );
            assert!(
                err.message().contains(&format!("task is {name}")),
                "{}",
                err.message()
            );
            assert!(
                err.message().contains("allowed actions"),
                "{}",
                err.message()
            );
            for l in legal.iter() {
                let rpc = format!("{l:?}Task");
                assert!(
                    err.message().contains(&rpc),
                    "{} should list {rpc}",
                    err.message()
                );
            }
            checked += 1;
        }
        let after = get(&mut op, &id).await;
        assert_eq!(
            after.state(),
            before.state(),
            "a refused action changed {name}"
        );
        assert_eq!(after.epoch, before.epoch);
    }
    assert_eq!(checked, 54 - 16);
    coord.shutdown().await;
}

#[tokio::test]
async fn every_bad_field_is_invalid_argument_naming_it() {
    let coord = Coord::start().await;
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    op.register_instance(pb::RegisterInstanceRequest {
        instance: Some(pb::Instance {
            region: "ap-shanghai".into(),
            ..instance("cmgo-other001", "x")
        }),
    })
    .await
    .unwrap();
    type Mutate = fn(&mut pb::TaskSpec);
    let cases: Vec<(&str, Mutate)> = vec![
        ("spec.name", |s| s.name = String::new()),
        ("spec.name", |s| s.name = "n".repeat(61)),
        ("spec.region", |s| s.region = String::new()),
        ("spec.region", |s| s.region = "Guangzhou!".into()),
        ("spec.kind", |s| s.kind = 0),
        ("spec.cvm_id", |s| s.cvm_id = "ins-12".into()),
        ("spec.cvm_id", |s| s.cvm_id = "INS-ABCDEFGH".into()),
        ("spec.cvm_id", |s| {
            s.kind = pb::TaskKind::PublicNetwork as i32
        }),
        ("spec.mongo_host", |s| s.mongo_host = "127.0.0.256".into()),
        ("spec.mongo_host", |s| s.mongo_host = "not an ip".into()),
        ("spec.mongo_host", |s| s.mongo_host = String::new()),
        ("spec.port", |s| s.port = 0),
        ("spec.port", |s| s.port = 65536),
        ("spec.username", |s| s.username = String::new()),
        ("spec.destination_instance_id", |s| {
            s.destination_instance_id = "cmgo-".into()
        }),
        ("spec.destination_instance_id", |s| {
            s.destination_instance_id = "cmgo-unknown1".into()
        }),
        ("spec.region", |s| {
            s.destination_instance_id = "cmgo-other001".into()
        }),
        ("spec.databases", |s| s.databases = vec!["admin".into()]),
        ("spec.databases", |s| s.databases = vec!["local".into()]),
        ("spec.databases", |s| s.databases = vec!["config".into()]),
        ("spec.databases", |s| {
            s.databases = vec!["shop".into(), "shop".into()]
        }),
        ("spec.databases", |s| s.databases = vec![String::new()]),
    ];
    for (field, mutate) in cases {
        let mut spec = cvm_spec("bad", "ins-abc12345", "pw");
        mutate(&mut spec);
        let err = op
            .create_task(pb::CreateTaskRequest { spec: Some(spec) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "expected {field}, got {}",
            err.message()
        );
    }
    let err = op
        .create_task(pb::CreateTaskRequest { spec: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    type MutateInstance = fn(&mut pb::Instance);
    let cases: Vec<(&str, MutateInstance)> = vec![
        ("instance.instance_id", |i| i.instance_id = "mongo-1".into()),
        ("instance.region", |i| i.region = String::new()),
        ("instance.uri", |i| i.uri = "http://127.0.0.1".into()),
        ("instance.uri", |i| {
            i.uri = "mongodb://u:p@127.0.0.1:27017".into()
        }),
        ("instance.username", |i| i.username = String::new()),
    ];
    for (field, mutate) in cases {
        let mut inst = instance("cmgo-abcdefgh", "pw");
        mutate(&mut inst);
        let err = op
            .register_instance(pb::RegisterInstanceRequest {
                instance: Some(inst),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "expected {field}, got {}",
            err.message()
        );
    }
    for bad_id in ["", "task-XYZ", "nope"] {
        let err = op
            .get_task(pb::GetTaskRequest {
                task_id: bad_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with("task_id:"), "{}", err.message());
    }
    let err = op
        .list_tasks(pb::ListTasksRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("page_size:"));
    coord.shutdown().await;
}

#[tokio::test]
async fn not_found_and_already_exists() {
    let coord = Coord::start().await;
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    let err = op
        .register_instance(pb::RegisterInstanceRequest {
            instance: Some(instance("cmgo-6wk2mxa1", "x")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    create(&mut op, cvm_spec("dup", "ins-abc12345", "pw")).await;
    let err = op
        .create_task(pb::CreateTaskRequest {
            spec: Some(cvm_spec("dup", "ins-abc12345", "pw")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    let missing = "task-000000000000";
    assert_eq!(
        op.get_task(pb::GetTaskRequest {
            task_id: missing.into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        op.start_task(pb::StartTaskRequest {
            task_id: missing.into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        op.delete_task(pb::DeleteTaskRequest {
            task_id: missing.into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    let err = op
        .watch_task(pb::WatchTaskRequest {
            task_id: missing.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = op
        .delete_instance(pb::DeleteInstanceRequest {
            instance_id: "cmgo-zzzzzzzz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // An instance still used by a task cannot go.
    let err = op
        .delete_instance(pb::DeleteInstanceRequest {
            instance_id: "cmgo-6wk2mxa1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    coord.shutdown().await;
}

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthenticated_on_both_services() {
    let coord = Coord::start().await;
    let channel = coord.channel().await;
    let cred = coord.enroll("pool", "", true).await;
    let agent_bearer = bearer(&cred);
    for token in [None, Some("wrong-token"), Some(agent_bearer.as_str())] {
        let mut op = operator_client(channel.clone(), token);
        let err = op
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "operator token {token:?}"
        );
        assert!(!err.message().contains(OPERATOR_TOKEN));
    }
    let forged = format!("{}.not-the-secret", cred.agent_id);
    for token in [
        None,
        Some("wrong-token"),
        Some(OPERATOR_TOKEN),
        Some(forged.as_str()),
    ] {
        let first = pb::AgentMessage {
            body: Some(A::Hello(hello("agent-00000000000b", "", true))),
            ..Default::default()
        };
        let err = open_session(channel.clone(), token, first)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "agent token {token:?}");
    }
    // The right tokens work, and a session must open with a hello.
    let mut op = operator_client(channel.clone(), Some(OPERATOR_TOKEN));
    op.list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap();
    let first = pb::AgentMessage {
        body: Some(A::Heartbeat(pb::Heartbeat::default())),
        ..Default::default()
    };
    let err = open_session(channel.clone(), Some(&agent_bearer), first)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    coord.shutdown().await;
}

#[tokio::test]
async fn list_tasks_filters_and_pages() {
    let coord = Coord::start().await;
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(create(&mut op, public_spec(&format!("p{n}"))).await.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = op
            .list_tasks(pb::ListTasksRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.tasks.len() <= 2);
        seen.extend(page.tasks.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    ids.sort();
    assert_eq!(seen, ids);
    let none = op
        .list_tasks(pb::ListTasksRequest {
            region: "ap-beijing".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.tasks.is_empty());
    let not_started = op
        .list_tasks(pb::ListTasksRequest {
            state: pb::TaskState::NotStarted as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(not_started.tasks.len(), 5);
    let running = op
        .list_tasks(pb::ListTasksRequest {
            state: pb::TaskState::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(running.tasks.is_empty());
    coord.shutdown().await;
}

#[tokio::test]
async fn update_keeps_the_stored_password_only_while_the_data_stays_where_it_was() {
    let coord = Coord::start().await;
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    let t = create(&mut op, cvm_spec("upd", "ins-abc12345", "first-pw")).await;
    let mut spec = cvm_spec("upd2", "ins-abc12345", "");
    spec.databases = vec!["shop".into(), "crm".into()];
    let t = op
        .update_task(pb::UpdateTaskRequest {
            task_id: t.id,
            spec: Some(spec),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.password_set);
    assert_eq!(t.spec.as_ref().unwrap().name, "upd2");

    // Pointing the task at another source (or destination) without the password would send the stored password
    // there: refused, naming what moved.
    for (what, change) in [
        (
            "port",
            (|s: &mut pb::TaskSpec| s.port = 27018) as fn(&mut pb::TaskSpec),
        ),
        ("mongo_host", |s| s.mongo_host = "127.0.0.9".into()),
        ("cvm_id", |s| s.cvm_id = "ins-zzz99999".into()),
    ] {
        let mut spec = cvm_spec("upd2", "ins-abc12345", "");
        change(&mut spec);
        let err = op
            .update_task(pb::UpdateTaskRequest {
                task_id: t.id.clone(),
                spec: Some(spec),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}");
        assert!(
            err.message().contains("spec.password") && err.message().contains(what),
            "{what}: {}",
            err.message()
        );
    }
    let unchanged = get(&mut op, &t.id).await;
    assert_eq!(unchanged.spec.as_ref().unwrap().port, 27017);
    // With the password given again, the retarget is accepted.
    let mut spec = cvm_spec("upd2", "ins-abc12345", "second-pw");
    spec.port = 27018;
    let t = op
        .update_task(pb::UpdateTaskRequest {
            task_id: t.id,
            spec: Some(spec),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.spec.unwrap().port, 27018);
    coord.shutdown().await;
}

#[tokio::test]
async fn watch_streams_are_capped_and_a_closed_one_frees_its_slot() {
    let coord = Coord::start_with(|c| c.max_watchers = 2).await;
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    let t = create(&mut op, cvm_spec("w", "ins-abc12345", "pw")).await;
    let watch = |mut op: Operator, id: String| async move {
        op.watch_task(pb::WatchTaskRequest { task_id: id }).await
    };
    let first = watch(op.clone(), t.id.clone()).await.unwrap();
    let _second = watch(op.clone(), t.id.clone()).await.unwrap();
    let err = watch(op.clone(), t.id.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("at most 2"), "{}", err.message());
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match watch(op.clone(), t.id.clone()).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot was never freed"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    coord.shutdown().await;
}

#[tokio::test]
async fn public_network_sources_on_private_addresses_are_refused_unless_allowed() {
    let coord = Coord::start_with(|c| c.allow_private_sources = false).await;
    let mut op = coord.operator().await;
    register_default_instance(&mut op).await;
    for host in [
        "localhost",
        "127.0.0.1",
        "10.0.0.5",
        "169.254.0.23",
        "192.168.1.9",
    ] {
        let mut spec = public_spec(&format!("p {host}"));
        spec.mongo_host = host.into();
        let err = op
            .create_task(pb::CreateTaskRequest { spec: Some(spec) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{host}");
        assert!(
            err.message().starts_with("spec.mongo_host"),
            "{host}: {}",
            err.message()
        );
    }
    let mut spec = public_spec("p public");
    spec.mongo_host = "mongo.example.com".into();
    op.create_task(pb::CreateTaskRequest { spec: Some(spec) })
        .await
        .unwrap();
    // CVM tasks name the CVM's private address: allowed.
    create(&mut op, cvm_spec("cvm private", "ins-abc12345", "pw")).await;
    coord.shutdown().await;
}
