//! Trust, end to end with real processes: enrollment with single-use join tokens, scheduling by the enrolled
//! identity only, one session per agent, revocation, a migration over TLS with an agent authenticated by its own
//! certificate, and every refused attempt in the audit log. Attacks are made the way an attacker on a customer's
//! CVM would: with the agent's own credential file and raw gRPC.

use std::time::{Duration, SystemTime};

use ferry_e2e::{
    assert_same, phase, seed_every_type, state, write_round, CoordinatorOptions, World, CVM_ID,
};
use ferry_proto::v1 as pb;
use ferry_testkit::process::{AgentProcess, Binaries};
use tonic::transport::Channel;

const MINUTE: Duration = Duration::from_secs(60);

/// The enrolled agent's credential, read from its data dir as a root user of the CVM could.
fn stolen_credential(world: &World) -> anyhow::Result<ferry_agent::enrollment::Enrollment> {
    ferry_agent::enrollment::Enrollment::load(&world.agent.data_dir())?
        .ok_or_else(|| anyhow::anyhow!("the agent never enrolled"))
}

/// A raw agent session, open while it lives.
#[derive(Debug)]
struct RawSession {
    _tx: tokio::sync::mpsc::Sender<pb::AgentMessage>,
    _inbound: tonic::Streaming<pb::CoordinatorMessage>,
    first: pb::CoordinatorMessage,
}

/// Opens a raw agent session with `bearer` and `hello`; returns it (with the first coordinator message) or the
/// refusal.
async fn raw_session(
    url: &str,
    bearer: &str,
    hello: pb::AgentHello,
) -> Result<RawSession, tonic::Status> {
    let channel = Channel::from_shared(url.to_owned())
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(hello)),
        ..Default::default()
    })
    .await
    .map_err(|_| tonic::Status::internal("queue"))?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {bearer}")
            .parse()
            .map_err(|_| tonic::Status::internal("header"))?,
    );
    let mut inbound = pb::agent_service_client::AgentServiceClient::new(channel)
        .connect(request)
        .await?
        .into_inner();
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| tonic::Status::internal("stream ended"))?;
    Ok(RawSession {
        _tx: tx,
        _inbound: inbound,
        first,
    })
}

fn hello(agent_id: &str, cvm: &str, pool: bool) -> pb::AgentHello {
    pb::AgentHello {
        agent_id: agent_id.into(),
        cvm_instance_id: cvm.into(),
        region: "ap-guangzhou".into(),
        pool,
        ..Default::default()
    }
}

/// Every audit event (admin view).
async fn audit(
    world_api: &ferry_testkit::process::OperatorClient,
) -> anyhow::Result<Vec<pb::AuditEvent>> {
    let mut events = Vec::new();
    let mut token = String::new();
    loop {
        let page = world_api
            .clone()
            .list_audit_events(pb::ListAuditEventsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return Ok(events);
        }
        token = page.next_page_token;
    }
}

fn has(events: &[pb::AuditEvent], method: &str, code: &str, needle: &str) -> bool {
    events.iter().any(|e| {
        e.method == method
            && e.code == code
            && (e.detail.contains(needle)
                || e.targets.iter().any(|t| t.contains(needle))
                || e.principal.contains(needle))
    })
}

async fn wait_logs(agent: &AgentProcess, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if agent.logs().contains(needle) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in the agent log within {timeout:?}:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_runs_over_tls_with_an_agent_that_enrolled_and_authenticates_with_its_certificate(
) -> anyhow::Result<()> {
    let options = CoordinatorOptions {
        tls: true,
        ..Default::default()
    };
    let world = World::start_full(64, &[], options, |s| s).await?;
    assert!(world.coordinator.url().starts_with("https://"));
    let enrolled = stolen_credential(&world)?;
    assert!(
        enrolled.secret.is_empty() && enrolled.certificate_pem.contains("BEGIN CERTIFICATE"),
        "a TLS coordinator issues a certificate and no bearer secret"
    );
    assert_eq!(enrolled.cvm_id, CVM_ID);

    seed_every_type(&world.source_client, "app", "things", 300).await?;
    let task_id = world.create_checked_task(&["app"]).await?;
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
    for round in 0..3 {
        write_round(&world.source_client, "app", round).await?;
    }
    world
        .api
        .clone()
        .complete_task(pb::CompleteTaskRequest {
            task_id: task_id.clone(),
            require_verification: true,
        })
        .await?;
    let done = world
        .wait_task(&task_id, 2 * MINUTE, |t| {
            t.state == state(pb::TaskState::Succeeded)
        })
        .await?;
    assert_eq!(done.agent_id, enrolled.agent_id);
    let compared = assert_same(&world.source_client, &world.dest_client, &["app"]).await?;
    assert!(compared >= 300, "compared {compared}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_that_are_reused_expired_or_for_another_cvm_are_refused_and_audited(
) -> anyhow::Result<()> {
    let world = World::start(16).await?;
    let bins = Binaries::locate()?;
    let mut api = world.api.clone();

    // Reused: the token the first agent enrolled with.
    let used = std::fs::read_to_string(world.dir.path().join("agent").join("join-token"))?;
    // For another CVM.
    let other = api
        .create_join_token(pb::CreateJoinTokenRequest {
            cvm_id: "ins-other001".into(),
            region: "ap-guangzhou".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    // Expired: a one-second token, used once its expiry has passed.
    let short = api
        .create_join_token(pb::CreateJoinTokenRequest {
            cvm_id: CVM_ID.into(),
            region: "ap-guangzhou".into(),
            ttl_seconds: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    let expiry = short.expire_time.unwrap_or_default();
    while SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs()
        <= u64::try_from(expiry.seconds)?
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (name, token, why) in [
        ("reused", used.trim().to_owned(), "already used"),
        ("other-cvm", other.token.clone(), "is for CVM ins-other001"),
        ("expired", short.token.clone(), "expired"),
    ] {
        let work = world.dir.path().join(name);
        std::fs::create_dir_all(&work)?;
        std::fs::write(work.join("join-token"), &token)?;
        let mut agent = AgentProcess::start(
            &bins,
            &work,
            &world.coordinator,
            &world.metadata.url(),
            false,
        )
        .await?;
        let status = agent.wait_exit(MINUTE).await?;
        assert!(!status.success(), "{name}: the agent must not start");
        assert!(agent.logs().contains(why), "{name}: {}", agent.logs());
        assert!(agent.agent_id().is_none(), "{name}: no enrollment written");
    }
    let agents = api
        .list_agents(pb::ListAgentsRequest::default())
        .await?
        .into_inner()
        .agents;
    assert_eq!(
        agents.len(),
        1,
        "only the first agent is enrolled: {agents:?}"
    );

    let events = audit(&world.api).await?;
    assert!(
        has(&events, "Enroll", "PERMISSION_DENIED", "already used"),
        "{events:#?}"
    );
    assert!(has(&events, "Enroll", "PERMISSION_DENIED", &other.token_id));
    assert!(has(&events, "Enroll", "PERMISSION_DENIED", &short.token_id));
    assert!(has(&events, "Enroll", "OK", &agents[0].agent_id));
    for e in &events {
        for secret in [&other.token, &short.token, &used] {
            assert!(
                !format!("{e:?}").contains(secret.trim()),
                "a token in the audit log"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_scheduled_by_its_enrollment_never_by_what_its_hello_claims(
) -> anyhow::Result<()> {
    let mut world = World::start(16).await?;
    let mut api = world.api.clone();
    // A task for another CVM and a pool task: the CVM agent is eligible for neither.
    let mut other_cvm = world.spec(&[]);
    other_cvm.cvm_id = "ins-other001".into();
    let mut pool = world.spec(&[]);
    pool.kind = pb::TaskKind::PublicNetwork as i32;
    pool.cvm_id = String::new();
    let mut ids = Vec::new();
    for spec in [other_cvm, pool] {
        let task = api
            .create_task(pb::CreateTaskRequest { spec: Some(spec) })
            .await?
            .into_inner();
        let checked = api
            .check_task(pb::CheckTaskRequest {
                task_id: task.id.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(
            checked.state,
            state(pb::TaskState::CheckFailed),
            "{checked:?}"
        );
        assert!(checked.agent_id.is_empty());
        ids.push(task.id);
    }

    // The CVM's root user takes the agent's credential and connects claiming another CVM and pool membership.
    let stolen = stolen_credential(&world)?;
    world.agent.kill9().await?;
    world.wait_agent_disconnected(MINUTE).await?;
    let bearer = format!("{}.{}", stolen.agent_id, stolen.secret);
    let url = world.coordinator.url();
    let refused = raw_session(&url, &bearer, hello(&stolen.agent_id, "ins-other001", true))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        !refused.message().contains("task-"),
        "no task ids in a refusal"
    );
    // Claiming pool membership with its real CVM gets a session, but still no pool task.
    let session = raw_session(&url, &bearer, hello(&stolen.agent_id, CVM_ID, true)).await?;
    assert!(matches!(
        session.first.body,
        Some(pb::coordinator_message::Body::Welcome(_))
    ));
    world.wait_agent_connected(MINUTE).await?;
    for id in &ids {
        let checked = api
            .check_task(pb::CheckTaskRequest {
                task_id: id.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(checked.state, state(pb::TaskState::CheckFailed));
        assert!(checked.agent_id.is_empty(), "{checked:?}");
    }
    drop(session);
    let events = audit(&world.api).await?;
    assert!(
        has(&events, "Connect", "PERMISSION_DENIED", "ins-other001"),
        "{events:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_is_refused_and_a_revoked_agent_cannot_come_back() -> anyhow::Result<()> {
    let world = World::start(16).await?;
    let task_id = world.create_checked_task(&[]).await?;
    world
        .api
        .clone()
        .start_task(pb::StartTaskRequest {
            task_id: task_id.clone(),
        })
        .await?;
    let running = world
        .wait_task(&task_id, MINUTE, |t| {
            t.phase == phase(pb::TaskPhase::OplogSync)
        })
        .await?;

    // Anyone holding the agent's credential cannot displace its live session.
    let stolen = stolen_credential(&world)?;
    let bearer = format!("{}.{}", stolen.agent_id, stolen.secret);
    let refused = raw_session(
        &world.coordinator.url(),
        &bearer,
        hello(&stolen.agent_id, CVM_ID, false),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    let after = world.get_task(&task_id).await?;
    assert!(after.agent_connected);
    assert_eq!(
        (after.epoch, after.agent_id.as_str()),
        (running.epoch, stolen.agent_id.as_str())
    );

    // The admin revokes the agent with ferryctl: its session ends and its credential is refused from then on.
    let bins = Binaries::locate()?;
    let out = tokio::process::Command::new(bins.path("ferryctl"))
        .arg("--coordinator")
        .arg(world.coordinator.url())
        .arg("--plaintext")
        .arg("--token-file")
        .arg(world.coordinator.operator_token_file())
        .args([
            "agent",
            "revoke",
            &stolen.agent_id,
            "--reason",
            "CVM decommissioned",
        ])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    world
        .wait_task(&task_id, MINUTE, |t| !t.agent_connected)
        .await?;
    wait_logs(&world.agent, "refused this agent's credential", MINUTE).await?;
    let refused = raw_session(
        &world.coordinator.url(),
        &bearer,
        hello(&stolen.agent_id, CVM_ID, false),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(!world.get_task(&task_id).await?.agent_connected);

    let events = audit(&world.api).await?;
    assert!(
        has(&events, "Connect", "ALREADY_EXISTS", &stolen.agent_id),
        "{events:#?}"
    );
    assert!(has(&events, "RevokeAgent", "OK", &stolen.agent_id));
    assert!(has(&events, "Connect", "PERMISSION_DENIED", "revoked"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_a_non_loopback_address_exits_with_a_clear_error() -> anyhow::Result<()> {
    let bins = Binaries::locate()?;
    let dir = tempfile::tempdir()?;
    // 0.0.0.0 is refused before anything binds, so no traffic leaves loopback.
    let out = tokio::process::Command::new(bins.path("ferry-coordinator"))
        .args(["--listen", "0.0.0.0:0", "--plaintext", "--data-dir"])
        .arg(dir.path())
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("only allowed on a loopback address") && stderr.contains("--tls-cert"),
        "{stderr}"
    );
    Ok(())
}
