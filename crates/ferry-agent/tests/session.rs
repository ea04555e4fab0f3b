//! Agent session tests against a fake coordinator (an in-test AgentService) and a local metadata HTTP server:
//! enrollment (once, with the join token and the metadata's instance id), hello content and the enrolled
//! credential, metadata read over HTTP, unsupported commands answered with CommandError, and reconnection with
//! backoff (same agent_id) after the coordinator restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use ferry_agent::identity;
use ferry_agent::{AgentConfig, Secret};
use ferry_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use ferry_proto::v1::{
    agent_message, coordinator_message, AgentHello, AgentMessage, CoordinatorMessage,
    ListDatabases, RunChecks, StartMigration, StopMigration, Welcome,
};
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

const TIMEOUT: Duration = Duration::from_secs(10);
const TOKEN: &str = "agent-enrollment-token";

/// One agent connection as seen by the fake coordinator.
struct Conn {
    authorization: Option<String>,
    inbound: Streaming<AgentMessage>,
    outbound: mpsc::Sender<Result<CoordinatorMessage, Status>>,
}

#[derive(Clone)]
struct FakeCoordinator {
    conns: mpsc::Sender<Conn>,
    enrollments: std::sync::Arc<std::sync::Mutex<Vec<ferry_proto::v1::EnrollRequest>>>,
}

/// The secret the fake coordinator issues at enrollment.
const SECRET: &str = "s3cret";

type OutStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for FakeCoordinator {
    type ConnectStream = OutStream;

    async fn enroll(
        &self,
        request: Request<ferry_proto::v1::EnrollRequest>,
    ) -> Result<Response<ferry_proto::v1::EnrollResponse>, Status> {
        let request = request.into_inner();
        if request.join_token != TOKEN {
            return Err(Status::unauthenticated("unknown join token"));
        }
        let mut enrollments = self.enrollments.lock().unwrap();
        enrollments.push(request);
        Ok(Response::new(ferry_proto::v1::EnrollResponse {
            agent_id: format!("agent-{:012x}", enrollments.len()),
            agent_secret: SECRET.into(),
            pool: true,
            ..Default::default()
        }))
    }

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (tx, rx) = mpsc::channel(64);
        let conn = Conn {
            authorization,
            inbound: request.into_inner(),
            outbound: tx,
        };
        self.conns
            .send(conn)
            .await
            .map_err(|_| Status::unavailable("test gone"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves the fake coordinator on `listener` until `stop` is cancelled.
fn serve(listener: TcpListener, stop: CancellationToken) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(8);
    let service = AgentServiceServer::new(FakeCoordinator {
        conns: tx,
        enrollments: Default::default(),
    });
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
            .await;
    });
    rx
}

/// A tiny metadata service answering the three paths with fixed values (404 elsewhere).
async fn metadata_server(instance_id: &str, region: &str, ip: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let values = [
        ("/latest/meta-data/instance-id", instance_id.to_owned()),
        ("/latest/meta-data/placement/region", region.to_owned()),
        ("/latest/meta-data/local-ipv4", ip.to_owned()),
    ];
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let values = values.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut len = 0;
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let body = values
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, v)| v.clone());
                let response = match body {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_owned()
                    }
                };
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

fn agent_config(
    coordinator: SocketAddr,
    metadata: SocketAddr,
    data_dir: &std::path::Path,
) -> AgentConfig {
    let mut config = AgentConfig::new(format!("http://{coordinator}"), data_dir);
    config.plaintext = true;
    config.metadata_url = format!("http://{metadata}/latest/meta-data/");
    config.join_token = Some(Secret::new(TOKEN));
    config.reconnect_initial = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(200);
    config.metadata_timeout = Duration::from_millis(500);
    config.connect_timeout = Duration::from_millis(500);
    config
}

async fn next_conn(conns: &mut mpsc::Receiver<Conn>) -> Conn {
    tokio::time::timeout(TIMEOUT, conns.recv())
        .await
        .expect("no agent connection in time")
        .expect("server gone")
}

/// Next message that is not a heartbeat.
async fn next_report(conn: &mut Conn) -> AgentMessage {
    loop {
        let message = tokio::time::timeout(TIMEOUT, conn.inbound.next())
            .await
            .expect("no message in time")
            .expect("stream ended")
            .expect("stream error");
        if !matches!(message.body, Some(agent_message::Body::Heartbeat(_))) {
            return message;
        }
    }
}

async fn hello(conn: &mut Conn) -> AgentHello {
    match next_report(conn).await.body {
        Some(agent_message::Body::Hello(hello)) => hello,
        other => panic!("first message is not a hello: {other:?}"),
    }
}

async fn welcome(conn: &Conn, heartbeat_interval_ms: u32) {
    conn.outbound
        .send(Ok(CoordinatorMessage {
            task_id: String::new(),
            epoch: 0,
            body: Some(coordinator_message::Body::Welcome(Welcome {
                heartbeat_interval_ms,
                agent_id: String::new(),
            })),
        }))
        .await
        .unwrap();
}

async fn command(conn: &Conn, task_id: &str, epoch: u64, body: coordinator_message::Body) {
    conn.outbound
        .send(Ok(CoordinatorMessage {
            task_id: task_id.to_owned(),
            epoch,
            body: Some(body),
        }))
        .await
        .unwrap();
}

#[tokio::test]
async fn metadata_is_read_from_a_local_http_server() {
    let addr = metadata_server("ins-abcd1234", "ap-guangzhou", "127.0.0.7").await;
    let metadata = identity::fetch_metadata(
        &format!("http://{addr}/latest/meta-data"),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(metadata.instance_id.as_deref(), Some("ins-abcd1234"));
    assert_eq!(metadata.region.as_deref(), Some("ap-guangzhou"));
    assert_eq!(metadata.local_ipv4.as_deref(), Some("127.0.0.7"));
    assert_eq!(metadata.error, None);
}

#[tokio::test]
async fn metadata_failure_is_not_fatal_and_keeps_the_error() {
    // A port nobody listens on: bind, take the port, close.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let metadata = identity::fetch_metadata(
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(metadata.instance_id, None);
    assert_eq!(metadata.region, None);
    let error = metadata.error.expect("error kept for the checks");
    assert!(error.contains("instance-id"), "{error}");

    // A server that answers 404 for everything.
    let addr = metadata_server("x", "y", "z").await;
    let metadata =
        identity::fetch_metadata(&format!("http://{addr}/other/"), Duration::from_secs(2)).await;
    assert_eq!(metadata.instance_id, None);
    assert!(metadata.error.unwrap().contains("404"));
}

#[tokio::test]
async fn hello_carries_identity_and_token_and_unknown_commands_get_unsupported_command_error() {
    let metadata = metadata_server("ins-abcd1234", "ap-guangzhou", "127.0.0.7").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coordinator = listener.local_addr().unwrap();
    let stop_server = CancellationToken::new();
    let mut conns = serve(listener, stop_server.clone());
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(coordinator, metadata, data_dir.path());
    config.pool = true;
    let stop_agent = CancellationToken::new();
    let agent = tokio::spawn(ferry_agent::run(
        config,
        stop_agent.clone().cancelled_owned(),
    ));

    let mut conn = next_conn(&mut conns).await;
    let hello = hello(&mut conn).await;
    // The session presents the enrolled credential, never the join token.
    assert_eq!(
        conn.authorization.as_deref(),
        Some(format!("Bearer {}.{SECRET}", hello.agent_id).as_str())
    );
    assert!(
        identity::is_valid_agent_id(&hello.agent_id),
        "{}",
        hello.agent_id
    );
    assert_eq!(hello.cvm_instance_id, "ins-abcd1234");
    assert_eq!(hello.region, "ap-guangzhou");
    assert!(
        hello.private_ips.contains(&"127.0.0.7".to_owned()),
        "{:?}",
        hello.private_ips
    );
    assert!(hello.pool);
    assert!(hello.running.is_empty());
    let stored = ferry_agent::enrollment::Enrollment::load(data_dir.path())
        .unwrap()
        .unwrap();
    assert_eq!(stored.agent_id, hello.agent_id);

    welcome(&conn, 100).await;
    // Heartbeats flow once welcomed.
    let beat = tokio::time::timeout(TIMEOUT, conn.inbound.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(beat.body, Some(agent_message::Body::Heartbeat(_))),
        "{beat:?}"
    );

    assert_eq!(
        hello.capabilities,
        vec!["run_checks", "migrate", "list_databases"]
    );

    // A command this agent does not know (a newer coordinator's oneof variant arrives without a body).
    conn.outbound
        .send(Ok(CoordinatorMessage {
            task_id: "task-0123456789ab".to_owned(),
            epoch: 7,
            body: None,
        }))
        .await
        .unwrap();
    let report = next_report(&mut conn).await;
    assert_eq!(
        (report.task_id.as_str(), report.epoch),
        ("task-0123456789ab", 7)
    );
    match report.body {
        Some(agent_message::Body::CommandError(error)) => {
            assert!(error.unsupported, "{error:?}");
            assert_eq!(error.message, ferry_agent::UNSUPPORTED);
        }
        other => panic!("expected an unsupported CommandError, got {other:?}"),
    }

    // Malformed commands are refused with a CommandError naming the problem (never a fake success).
    for (epoch, (name, body)) in (1u64..).zip([
        (
            "run_checks",
            coordinator_message::Body::RunChecks(RunChecks::default()),
        ),
        (
            "start_migration",
            coordinator_message::Body::StartMigration(StartMigration::default()),
        ),
        (
            "stop_migration",
            coordinator_message::Body::StopMigration(StopMigration::default()),
        ),
    ]) {
        command(&conn, "task-0123456789ab", epoch, body).await;
        let report = next_report(&mut conn).await;
        assert_eq!(report.task_id, "task-0123456789ab");
        assert_eq!(report.epoch, epoch);
        match report.body {
            Some(agent_message::Body::CommandError(error)) => {
                assert!(!error.unsupported, "{error:?}");
                assert_eq!(error.command, name);
                assert!(error.message.contains("spec"), "{error:?}");
            }
            other => panic!("expected a CommandError for {name}, got {other:?}"),
        }
    }
    // CompleteMigration for a task not running here.
    command(
        &conn,
        "task-0123456789ab",
        8,
        coordinator_message::Body::CompleteMigration(Default::default()),
    )
    .await;
    match next_report(&mut conn).await.body {
        Some(agent_message::Body::CommandError(error)) => {
            assert!(error.message.contains("no migration"), "{error:?}")
        }
        other => panic!("expected a CommandError, got {other:?}"),
    }
    command(
        &conn,
        "task-0123456789ab",
        9,
        coordinator_message::Body::ListDatabases(ListDatabases {
            request_id: 42,
            spec: None,
        }),
    )
    .await;
    let report = next_report(&mut conn).await;
    assert_eq!(report.epoch, 9);
    match report.body {
        Some(agent_message::Body::Databases(databases)) => {
            assert_eq!(databases.request_id, 42);
            assert!(databases.error.contains("spec"), "{databases:?}");
        }
        other => panic!("expected a DatabasesReport, got {other:?}"),
    }

    stop_agent.cancel();
    tokio::time::timeout(TIMEOUT, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    stop_server.cancel();
}

#[tokio::test]
async fn agent_reconnects_with_the_same_id_after_the_coordinator_restarts() {
    let metadata = metadata_server("ins-abcd1234", "ap-guangzhou", "127.0.0.7").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coordinator = listener.local_addr().unwrap();
    let stop_first = CancellationToken::new();
    let mut conns = serve(listener, stop_first.clone());
    let data_dir = tempfile::tempdir().unwrap();
    let stop_agent = CancellationToken::new();
    let agent = tokio::spawn(ferry_agent::run(
        agent_config(coordinator, metadata, data_dir.path()),
        stop_agent.clone().cancelled_owned(),
    ));

    let mut conn = next_conn(&mut conns).await;
    let first = hello(&mut conn).await;
    welcome(&conn, 100).await;

    // The coordinator goes away: stop accepting, end the stream.
    stop_first.cancel();
    drop(conn);
    drop(conns);

    // The agent retries against a closed port (backoff) until the coordinator comes back on the same address.
    let listener = loop {
        match TcpListener::bind(coordinator).await {
            Ok(listener) => break listener,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let stop_second = CancellationToken::new();
    let mut conns = serve(listener, stop_second.clone());
    let mut conn = next_conn(&mut conns).await;
    let second = hello(&mut conn).await;
    assert_eq!(second.agent_id, first.agent_id);
    welcome(&conn, 100).await;

    // A coordinator that goes silent (no heartbeats) is dropped after three intervals and redialled.
    let mut third_conn = next_conn(&mut conns).await;
    let third = hello(&mut third_conn).await;
    assert_eq!(third.agent_id, first.agent_id);
    drop(conn);

    stop_agent.cancel();
    tokio::time::timeout(TIMEOUT, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    stop_second.cancel();
}

#[tokio::test]
async fn a_restarted_agent_keeps_its_id() {
    let metadata = metadata_server("ins-abcd1234", "ap-guangzhou", "127.0.0.7").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coordinator = listener.local_addr().unwrap();
    let stop_server = CancellationToken::new();
    let mut conns = serve(listener, stop_server.clone());
    let data_dir = tempfile::tempdir().unwrap();

    let mut ids = Vec::new();
    for _ in 0..2 {
        let stop_agent = CancellationToken::new();
        let agent = tokio::spawn(ferry_agent::run(
            agent_config(coordinator, metadata, data_dir.path()),
            stop_agent.clone().cancelled_owned(),
        ));
        let mut conn = next_conn(&mut conns).await;
        ids.push(hello(&mut conn).await.agent_id);
        stop_agent.cancel();
        tokio::time::timeout(TIMEOUT, agent)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    assert_eq!(ids[0], ids[1]);
    stop_server.cancel();
}
