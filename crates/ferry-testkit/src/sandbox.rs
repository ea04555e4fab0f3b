//! The in-process sandbox: coordinator + metadata servers + agents in this test's runtime, each on its own
//! loopback port and temp dir, so tests run in parallel.
//!
//! Owns starting, stopping and restarting those pieces; it must not reach into coordinator or agent internals
//! (only their public `run` entry points and the public gRPC contract).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_proto::v1::{GetTaskRequest, ListAgentsRequest, Task, TaskState};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::process::{operator_client, Metadata, MetadataServer, OperatorClient};

/// Operator bearer token of every sandbox.
pub const OPERATOR_TOKEN: &str = "sandbox-operator-token";

/// How often [`wait_for`] probes.
const POLL: Duration = Duration::from_millis(20);

/// What one sandbox agent reads from its metadata server, and whether it joins the pool.
#[derive(Clone, Debug)]
pub struct AgentSetup {
    /// Served by the agent's metadata server.
    pub metadata: Metadata,
    /// Serves public-network tasks.
    pub pool: bool,
}

impl AgentSetup {
    /// An agent on CVM `instance_id` in `region` with private IP `local_ipv4` (use 127.x addresses).
    pub fn cvm(instance_id: &str, region: &str, local_ipv4: &str) -> Self {
        Self {
            metadata: Metadata {
                instance_id: instance_id.to_owned(),
                region: region.to_owned(),
                local_ipv4: local_ipv4.to_owned(),
            },
            pool: false,
        }
    }

    /// A pool agent (public-network tasks) with no CVM metadata.
    pub fn pool() -> Self {
        Self {
            metadata: Metadata::default(),
            pool: true,
        }
    }

    /// Default for agent `index`: CVM `ins-sbx000NN` in ap-guangzhou, private IP 127.0.0.1.
    pub fn default_cvm(index: usize) -> Self {
        Self::cvm(
            &format!("ins-sbx{:05}", index % 100_000),
            "ap-guangzhou",
            "127.0.0.1",
        )
    }
}

/// TLS material for a sandbox coordinator (PEM): its certificate must name 127.0.0.1 (IP SAN).
#[derive(Clone)]
pub struct SandboxTls {
    /// Server certificate chain.
    pub cert_pem: String,
    /// Server private key.
    pub key_pem: String,
    /// CA that signed the server certificate; agents and `client()` trust it.
    pub ca_pem: String,
}

impl std::fmt::Debug for SandboxTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SandboxTls(<pem>)")
    }
}

impl SandboxTls {
    /// A fresh CA and a server certificate for 127.0.0.1 and localhost, signed by it.
    pub fn generate() -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
            .signed_by(&key, &ca, &ca_key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: ca.pem(),
        })
    }
}

/// Configures a [`Sandbox`].
#[derive(Debug)]
pub struct SandboxBuilder {
    agents: Vec<AgentSetup>,
    heartbeat_interval: Duration,
    tls: Option<SandboxTls>,
    agent_cert_ttl: Option<Duration>,
}

impl SandboxBuilder {
    /// Adds `n` CVM agents with default metadata (see [`AgentSetup::default_cvm`]).
    pub fn agents(mut self, n: usize) -> Self {
        let start = self.agents.len();
        self.agents
            .extend((start..start + n).map(AgentSetup::default_cvm));
        self
    }

    /// Adds one agent.
    pub fn agent(mut self, setup: AgentSetup) -> Self {
        self.agents.push(setup);
        self
    }

    /// Heartbeat interval the coordinator announces (default 200 ms, so disconnects are seen fast).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Lifetime of the client certificates the coordinator issues to agents (default 30 days).
    pub fn agent_cert_ttl(mut self, ttl: Duration) -> Self {
        self.agent_cert_ttl = Some(ttl);
        self
    }

    /// Serves TLS (agents and `client()` then use https and trust `tls.ca_pem`).
    pub fn tls(mut self, tls: SandboxTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Starts the coordinator and every agent (does not wait for the agents to connect: see
    /// [`Sandbox::wait_for_agents`]).
    pub async fn build(self) -> anyhow::Result<Sandbox> {
        let dir = tempfile::tempdir().context("sandbox temp dir")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ca_file = match &self.tls {
            Some(tls) => {
                let path = dir.path().join("ca.pem");
                std::fs::write(&path, &tls.ca_pem).context("writing the sandbox CA")?;
                Some(path)
            }
            None => None,
        };
        let mut sandbox = Sandbox {
            addr,
            agent_cert_ttl: self.agent_cert_ttl,
            heartbeat_interval: self.heartbeat_interval,
            tls: self.tls,
            ca_file,
            coordinator: None,
            agents: Vec::new(),
            dir,
        };
        sandbox.start_coordinator_on(listener);
        let mut client = None;
        for (index, setup) in self.agents.into_iter().enumerate() {
            let metadata = MetadataServer::start(setup.metadata.clone()).await?;
            let data_dir = sandbox.dir.path().join(format!("agent-{index}"));
            if client.is_none() {
                client = Some(
                    wait_for(Duration::from_secs(10), || async {
                        Ok(sandbox.client().await.ok())
                    })
                    .await
                    .context("the sandbox coordinator does not answer")?,
                );
            }
            let Some(op) = client.as_mut() else {
                bail!("no operator client");
            };
            let cvm = (!setup.pool).then_some((
                setup.metadata.instance_id.as_str(),
                setup.metadata.region.as_str(),
            ));
            let join_token = crate::process::create_join_token(op, cvm).await?;
            let mut agent = SandboxAgent {
                setup,
                metadata,
                data_dir,
                running: None,
            };
            agent.start(&sandbox.url(), sandbox.ca_file.as_deref(), Some(join_token));
            sandbox.agents.push(agent);
        }
        Ok(sandbox)
    }
}

struct Running {
    cancel: CancellationToken,
    join: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        match tokio::time::timeout(Duration::from_secs(15), self.join).await {
            Ok(joined) => joined.context("task panicked")?,
            Err(_) => bail!("did not stop within 15 s"),
        }
    }
}

struct SandboxAgent {
    setup: AgentSetup,
    metadata: MetadataServer,
    data_dir: PathBuf,
    running: Option<Running>,
}

impl SandboxAgent {
    fn start(
        &mut self,
        coordinator_url: &str,
        ca_file: Option<&std::path::Path>,
        join_token: Option<String>,
    ) {
        let mut config = ferry_agent::AgentConfig::new(coordinator_url, &self.data_dir);
        config.plaintext = ca_file.is_none();
        config.tls_ca = ca_file.map(std::path::Path::to_path_buf);
        config.pool = self.setup.pool;
        config.metadata_url = self.metadata.url();
        config.join_token = join_token.map(ferry_agent::Secret::new);
        config.reconnect_initial = Duration::from_millis(50);
        config.reconnect_max = Duration::from_millis(500);
        config.metadata_timeout = Duration::from_secs(1);
        config.connect_timeout = Duration::from_secs(1);
        let cancel = CancellationToken::new();
        let shutdown = cancel.clone().cancelled_owned();
        let join = tokio::spawn(async move { Ok(ferry_agent::run(config, shutdown).await?) });
        self.running = Some(Running { cancel, join });
    }
}

/// A running in-process Ferry: see the crate docs.
pub struct Sandbox {
    addr: SocketAddr,
    agent_cert_ttl: Option<Duration>,
    heartbeat_interval: Duration,
    tls: Option<SandboxTls>,
    ca_file: Option<PathBuf>,
    coordinator: Option<Running>,
    agents: Vec<SandboxAgent>,
    // Last: removed after everything above is dropped.
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// A builder with no agents.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder {
            agents: Vec::new(),
            heartbeat_interval: Duration::from_millis(200),
            tls: None,
            agent_cert_ttl: None,
        }
    }

    /// The coordinator's address (127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA file agents trust (TLS sandboxes only).
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    /// The coordinator's data dir.
    pub fn coordinator_data_dir(&self) -> PathBuf {
        self.dir.path().join("coordinator")
    }

    /// The sandbox's temp dir (for token files and other test files).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A MigrationService client with the operator token.
    pub async fn client(&self) -> anyhow::Result<OperatorClient> {
        let Some(tls) = &self.tls else {
            return operator_client(self.addr, OPERATOR_TOKEN).await;
        };
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
        let channel = tonic::transport::Channel::from_shared(self.url())?
            .tls_config(config)?
            .connect()
            .await?;
        let token = format!("Bearer {OPERATOR_TOKEN}")
            .parse()
            .context("token header")?;
        Ok(
            ferry_proto::v1::migration_service_client::MigrationServiceClient::with_interceptor(
                channel,
                crate::process::BearerToken(token),
            ),
        )
    }

    /// Number of agents.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// The agent id agent `index` received at enrollment (None before it enrolled).
    pub fn agent_id(&self, index: usize) -> Option<String> {
        let agent = self.agents.get(index)?;
        ferry_agent::enrollment::Enrollment::load(&agent.data_dir)
            .ok()
            .flatten()
            .map(|e| e.agent_id)
    }

    /// The data dir of agent `index`.
    pub fn agent_data_dir(&self, index: usize) -> Option<PathBuf> {
        self.agents.get(index).map(|a| a.data_dir.clone())
    }

    /// The metadata server of agent `index` (change what it serves with `set`).
    pub fn metadata(&self, index: usize) -> Option<&MetadataServer> {
        self.agents.get(index).map(|a| &a.metadata)
    }

    fn agent_mut(&mut self, index: usize) -> anyhow::Result<&mut SandboxAgent> {
        let count = self.agents.len();
        self.agents
            .get_mut(index)
            .with_context(|| format!("no agent {index} (sandbox has {count})"))
    }

    /// Stops agent `index` (its session ends; its local work is cancelled, nothing is rolled back).
    pub async fn kill_agent(&mut self, index: usize) -> anyhow::Result<()> {
        let agent = self.agent_mut(index)?;
        if let Some(running) = agent.running.take() {
            running
                .stop()
                .await
                .with_context(|| format!("stopping agent {index}"))?;
        }
        Ok(())
    }

    /// Starts agent `index` again on the same data dir (same agent id).
    pub async fn restart_agent(&mut self, index: usize) -> anyhow::Result<()> {
        self.kill_agent(index).await?;
        let url = self.url();
        let ca_file = self.ca_file.clone();
        self.agent_mut(index)?.start(&url, ca_file.as_deref(), None);
        Ok(())
    }

    fn start_coordinator_on(&mut self, listener: TcpListener) {
        let mut config =
            ferry_coordinator::Config::plaintext(self.coordinator_data_dir(), OPERATOR_TOKEN);
        config.heartbeat_interval = self.heartbeat_interval;
        config.list_databases_timeout = Duration::from_secs(10);
        if let Some(ttl) = self.agent_cert_ttl {
            config.agent_cert_ttl = ttl;
        }
        config.tls = self.tls.as_ref().map(|tls| ferry_coordinator::TlsPem {
            cert: tls.cert_pem.clone().into_bytes(),
            key: tls.key_pem.clone().into_bytes(),
            client_ca: None,
        });
        let cancel = CancellationToken::new();
        let shutdown = cancel.clone().cancelled_owned();
        let join = tokio::spawn(ferry_coordinator::run(config, listener, shutdown));
        self.coordinator = Some(Running { cancel, join });
    }

    /// Stops the coordinator (graceful) and starts it again on the same data dir and port.
    pub async fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        if let Some(running) = self.coordinator.take() {
            running.stop().await.context("stopping the coordinator")?;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "coordinator port not free yet");
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => return Err(error).context("re-binding the coordinator port"),
            }
        };
        self.start_coordinator_on(listener);
        Ok(())
    }

    /// Waits until `n` agents are connected (ListAgents).
    pub async fn wait_for_agents(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let client = self.client().await?;
        wait_for(timeout, || {
            let mut client = client.clone();
            async move {
                let agents = client
                    .list_agents(ListAgentsRequest {
                        page_size: 1000,
                        page_token: String::new(),
                    })
                    .await?
                    .into_inner()
                    .agents;
                let connected = agents.iter().filter(|a| a.connected).count();
                Ok((connected >= n).then_some(()))
            }
        })
        .await
        .with_context(|| format!("waiting for {n} connected agents"))
    }

    /// Waits until task `task_id` is in `state`; the error says which state it was in last.
    pub async fn wait_for_state(
        &self,
        task_id: &str,
        state: TaskState,
        timeout: Duration,
    ) -> anyhow::Result<Task> {
        self.wait_for_task(task_id, timeout, |task| task.state == state as i32)
            .await
            .with_context(|| format!("waiting for task {task_id} to be {}", state.as_str_name()))
    }

    /// Waits until `predicate` holds for task `task_id`; the error shows the last snapshot.
    pub async fn wait_for_task(
        &self,
        task_id: &str,
        timeout: Duration,
        predicate: impl Fn(&Task) -> bool,
    ) -> anyhow::Result<Task> {
        let client = self.client().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let task = client
                .clone()
                .get_task(GetTaskRequest {
                    task_id: task_id.to_owned(),
                })
                .await?
                .into_inner();
            if predicate(&task) {
                return Ok(task);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?}; last seen: state {}, failure {:?}, agent {:?} connected={}, epoch {}",
                    TaskState::try_from(task.state).map(|s| s.as_str_name()).unwrap_or("?"),
                    task.failure_reason,
                    task.agent_id,
                    task.agent_connected,
                    task.epoch
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops every agent, then the coordinator.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for index in 0..self.agents.len() {
            self.kill_agent(index).await?;
        }
        if let Some(running) = self.coordinator.take() {
            running.stop().await.context("stopping the coordinator")?;
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for agent in &self.agents {
            if let Some(running) = &agent.running {
                running.cancel.cancel();
            }
        }
        if let Some(running) = &self.coordinator {
            running.cancel.cancel();
        }
    }
}

/// Polls `probe` until it returns `Some` (or an error), at most `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}
