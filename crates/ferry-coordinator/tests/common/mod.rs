//! Test helpers: an in-process coordinator on 127.0.0.1:0 with a temp data dir, operator clients with and without
//! tokens, and a fake agent speaking the raw AgentService protocol.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use ferry_coordinator::Config;
use ferry_proto::v1 as pb;
use pb::agent_service_client::AgentServiceClient;
use pb::migration_service_client::MigrationServiceClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

pub const OPERATOR_TOKEN: &str = "op-token-0123456789";
pub const WAIT: Duration = Duration::from_secs(10);

/// An enrolled fake agent's credential.
#[derive(Clone, Debug)]
pub struct Cred {
    pub agent_id: String,
    pub secret: String,
    pub certificate_pem: String,
    pub key_pem: String,
}

pub struct Coord {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// Fake agents enrolled so far, by the name the test gave them.
    enrolled: std::sync::Mutex<std::collections::HashMap<String, Cred>>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Coord {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_full(tweak, None).await
    }

    /// A coordinator also serving metrics on `metrics`.
    pub async fn start_with_metrics(metrics: tokio::net::TcpListener) -> Self {
        Self::start_full(|_| {}, Some(metrics)).await
    }

    async fn start_full(
        tweak: impl FnOnce(&mut Config),
        metrics: Option<tokio::net::TcpListener>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::plaintext(dir.path().to_path_buf(), OPERATOR_TOKEN);
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(ferry_coordinator::run_with_metrics(
            config,
            listener,
            metrics,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            dir,
            enrolled: Default::default(),
            stop: Some(stop),
            join: Some(join),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn operator(&self) -> Operator {
        operator_client(self.channel().await, Some(OPERATOR_TOKEN))
    }

    /// Enrolls a fake agent called `name` (once per name: later calls return the same credential) for `cvm`, or
    /// for the pool.
    pub async fn enroll(&self, name: &str, cvm: &str, pool: bool) -> Cred {
        if let Some(cred) = self.enrolled.lock().unwrap().get(name) {
            return cred.clone();
        }
        let cred = enroll_on(self.channel().await, cvm, pool).await;
        self.enrolled
            .lock()
            .unwrap()
            .insert(name.to_owned(), cred.clone());
        cred
    }

    /// Stops the coordinator gracefully and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(join) = self.join.take() {
            tokio::time::timeout(WAIT, join)
                .await
                .expect("coordinator stops in time")
                .unwrap()
                .unwrap();
        }
    }
}

pub type Operator = MigrationServiceClient<InterceptedService<Channel, TokenInterceptor>>;

#[derive(Clone)]
pub struct TokenInterceptor(Option<String>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    }
}

pub fn operator_client(channel: Channel, token: Option<&str>) -> Operator {
    MigrationServiceClient::with_interceptor(channel, TokenInterceptor(token.map(str::to_owned)))
}

pub fn instance(id: &str, password: &str) -> pb::Instance {
    pb::Instance {
        instance_id: id.into(),
        region: "ap-guangzhou".into(),
        uri: "mongodb://127.0.0.1:27018/?replicaSet=rs0".into(),
        username: "admin".into(),
        password: password.into(),
        ..Default::default()
    }
}

pub fn cvm_spec(name: &str, cvm: &str, password: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        name: name.into(),
        region: "ap-guangzhou".into(),
        kind: pb::TaskKind::Cvm as i32,
        cvm_id: cvm.into(),
        mongo_host: "127.0.0.1".into(),
        port: 27017,
        username: "root".into(),
        password: password.into(),
        destination_instance_id: "cmgo-6wk2mxa1".into(),
        databases: vec!["shop".into()],
        require_verification: false,
        tenant: String::new(),
    }
}

pub fn public_spec(name: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        kind: pb::TaskKind::PublicNetwork as i32,
        cvm_id: String::new(),
        mongo_host: "localhost".into(),
        ..cvm_spec(name, "", "pw")
    }
}

pub async fn register_default_instance(op: &mut Operator) {
    op.register_instance(pb::RegisterInstanceRequest {
        instance: Some(instance("cmgo-6wk2mxa1", "inst-pw")),
    })
    .await
    .unwrap();
}

pub async fn create(op: &mut Operator, spec: pb::TaskSpec) -> pb::Task {
    op.create_task(pb::CreateTaskRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner()
}

pub async fn get(op: &mut Operator, id: &str) -> pb::Task {
    op.get_task(pb::GetTaskRequest { task_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Polls GetTask until `pred` holds.
pub async fn wait_task(op: &mut Operator, id: &str, pred: impl Fn(&pb::Task) -> bool) -> pb::Task {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let t = get(op, id).await;
        if pred(&t) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached; last task: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fake agent: the raw protocol, driven by the test.
pub struct FakeAgent {
    pub agent_id: String,
    pub tx: mpsc::Sender<pb::AgentMessage>,
    pub rx: Streaming<pb::CoordinatorMessage>,
}

pub fn hello(agent_id: &str, cvm: &str, pool: bool) -> pb::AgentHello {
    pb::AgentHello {
        agent_id: agent_id.into(),
        cvm_instance_id: cvm.into(),
        region: "ap-guangzhou".into(),
        private_ips: vec!["127.0.0.1".into()],
        version: "test".into(),
        hostname: "fake".into(),
        capabilities: vec![
            "run_checks".into(),
            "migrate".into(),
            "list_databases".into(),
        ],
        pool,
        ..Default::default()
    }
}

/// A join token for `cvm` (or the pool), created by the admin.
pub async fn join_token(channel: Channel, cvm: &str, pool: bool) -> String {
    operator_client(channel, Some(OPERATOR_TOKEN))
        .create_join_token(pb::CreateJoinTokenRequest {
            cvm_id: cvm.into(),
            region: if pool {
                String::new()
            } else {
                "ap-guangzhou".into()
            },
            pool,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// A CSR for a fresh key: (key PEM, CSR PEM).
pub fn key_and_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key.serialize_pem(), csr)
}

/// Enrolls with a fresh join token, as the agent on `cvm` (or a pool agent) would.
pub async fn enroll_on(channel: Channel, cvm: &str, pool: bool) -> Cred {
    let token = join_token(channel.clone(), cvm, pool).await;
    let (key_pem, csr_pem) = key_and_csr();
    let response = AgentServiceClient::new(channel)
        .enroll(pb::EnrollRequest {
            join_token: token,
            csr_pem,
            cvm_instance_id: cvm.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    Cred {
        agent_id: response.agent_id,
        secret: response.agent_secret,
        certificate_pem: response.certificate_pem,
        key_pem,
    }
}

/// The session credential of a plaintext coordinator.
pub fn bearer(cred: &Cred) -> String {
    format!("{}.{}", cred.agent_id, cred.secret)
}

/// Opens a session; the stream result (and first message) is returned raw for negative tests.
pub async fn open_session(
    channel: Channel,
    token: Option<&str>,
    first: pb::AgentMessage,
) -> Result<
    (
        mpsc::Sender<pb::AgentMessage>,
        Streaming<pb::CoordinatorMessage>,
    ),
    Status,
> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await.unwrap();
    let mut req = Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let resp = AgentServiceClient::new(channel).connect(req).await?;
    Ok((tx, resp.into_inner()))
}

impl FakeAgent {
    /// Enrolls (once per `name`) and connects, heartbeating in the background.
    pub async fn connect(coord: &Coord, name: &str, cvm: &str, pool: bool) -> Self {
        let cred = coord.enroll(name, cvm, pool).await;
        Self::connect_with(coord.channel().await, &cred, cvm, true).await
    }

    /// Enrolls (once per `name`) and connects without heartbeating.
    pub async fn connect_silent(coord: &Coord, name: &str, cvm: &str, pool: bool) -> Self {
        let cred = coord.enroll(name, cvm, pool).await;
        Self::connect_with(coord.channel().await, &cred, cvm, false).await
    }

    /// Connects with `cred` on `channel` (a bearer secret on plaintext channels; TLS channels carry the client
    /// certificate themselves), heartbeating every 200 ms when `heartbeat`, until the FakeAgent is dropped.
    pub async fn connect_with(channel: Channel, cred: &Cred, cvm: &str, heartbeat: bool) -> Self {
        let first = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Hello(hello(
                &cred.agent_id,
                cvm,
                false,
            ))),
            ..Default::default()
        };
        let token = (!cred.secret.is_empty()).then(|| bearer(cred));
        let (tx, mut rx) = open_session(channel, token.as_deref(), first)
            .await
            .unwrap();
        let welcome = next_msg(&mut rx).await;
        assert!(
            matches!(
                welcome.body,
                Some(pb::coordinator_message::Body::Welcome(_))
            ),
            "{welcome:?}"
        );
        let agent = Self {
            agent_id: cred.agent_id.clone(),
            tx,
            rx,
        };
        if heartbeat {
            let weak = agent.tx.downgrade();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    let Some(tx) = weak.upgrade() else { return };
                    let beat = pb::AgentMessage {
                        body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat::default())),
                        ..Default::default()
                    };
                    if tx.send(beat).await.is_err() {
                        return;
                    }
                }
            });
        }
        agent
    }

    /// The next non-heartbeat message.
    pub async fn recv(&mut self) -> pb::CoordinatorMessage {
        loop {
            let msg = next_msg(&mut self.rx).await;
            if !matches!(msg.body, Some(pb::coordinator_message::Body::Heartbeat(_))) {
                return msg;
            }
        }
    }

    pub async fn send(&self, task_id: &str, epoch: u64, body: pb::agent_message::Body) {
        self.tx
            .send(pb::AgentMessage {
                task_id: task_id.into(),
                epoch,
                body: Some(body),
            })
            .await
            .unwrap();
    }

    pub async fn heartbeat(&self) {
        self.tx
            .send(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat::default())),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

pub async fn next_msg(rx: &mut Streaming<pb::CoordinatorMessage>) -> pb::CoordinatorMessage {
    tokio::time::timeout(WAIT, rx.message())
        .await
        .expect("a message in time")
        .expect("stream ok")
        .expect("stream open")
}

pub fn check_item(id: &str, status: pb::CheckStatus) -> pb::agent_message::Body {
    pb::agent_message::Body::CheckItem(pb::CheckItemReport {
        item: Some(pb::CheckItem {
            id: id.into(),
            name: id.into(),
            status: status as i32,
            ..Default::default()
        }),
    })
}

pub fn state(t: &pb::Task) -> pb::TaskState {
    t.state()
}
