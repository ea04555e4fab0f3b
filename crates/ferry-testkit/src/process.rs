//! Real processes for end-to-end tests and the demo: the `ferry-coordinator` and `ferry-agent` binaries started as
//! children (so a test can SIGKILL them), a stand-in for the cloud metadata service, and an authenticated operator
//! client. Everything listens on 127.0.0.1 with OS-chosen ports and lives in a folder the caller owns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_proto::v1::migration_service_client::MigrationServiceClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Where the built binaries are. Tests run from `target/<profile>/deps/`, the binaries sit in `target/<profile>/`.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// The folder of the running executable's parent (tests) or of the executable itself (the demo).
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut dir = exe
            .parent()
            .context("executable has no folder")?
            .to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let found = Self { dir };
        for name in ["ferry-coordinator", "ferry-agent"] {
            if !found.path(name).exists() {
                bail!(
                    "{} not found: build the binaries first (cargo build -p ferry-coordinator -p ferry-agent -p ferryctl)",
                    found.path(name).display()
                );
            }
        }
        Ok(found)
    }

    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Values the metadata stand-in serves; tests change them to play a wrong CVM, another region, etc.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub instance_id: String,
    pub region: String,
    pub local_ipv4: String,
}

/// Serves `instance-id`, `placement/region` and `local-ipv4` like the Tencent Cloud metadata service.
pub struct MetadataServer {
    addr: SocketAddr,
    values: Arc<Mutex<Metadata>>,
    task: JoinHandle<()>,
}

impl MetadataServer {
    pub async fn start(metadata: Metadata) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let values = Arc::new(Mutex::new(metadata));
        let shared = values.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let values = shared.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0_u8; 4096];
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    let request = String::from_utf8_lossy(&buf[..n]);
                    let path = request
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("/")
                        .trim_end_matches('/')
                        .to_string();
                    let value = {
                        let m = values
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                        if path.ends_with("/instance-id") {
                            Some(m.instance_id.clone())
                        } else if path.ends_with("/placement/region") {
                            Some(m.region.clone())
                        } else if path.ends_with("/local-ipv4") {
                            Some(m.local_ipv4.clone())
                        } else {
                            None
                        }
                    };
                    let response = match value {
                        Some(v) if !v.is_empty() => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{v}",
                            v.len()
                        ),
                        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(Self { addr, values, task })
    }

    /// Base URL, ending in `/`.
    pub fn url(&self) -> String {
        format!("http://{}/latest/meta-data/", self.addr)
    }

    pub fn set(&self, metadata: Metadata) {
        *self
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = metadata;
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn write_secret(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, format!("{value}\n"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// How to start a [`CoordinatorProcess`].
#[derive(Clone, Debug, Default)]
pub struct CoordinatorOptions {
    /// Serve TLS with a fresh CA and server certificate for 127.0.0.1 (clients and agents trust the CA).
    pub tls: bool,
    /// Extra command-line arguments, e.g. `--principals-file F`.
    pub extra_args: Vec<String>,
}

/// The coordinator binary as a child process, restartable on the same data dir (and the same port).
pub struct CoordinatorProcess {
    bins: Binaries,
    work: PathBuf,
    pub addr: SocketAddr,
    pub operator_token: String,
    /// Where it serves `/metrics` (with `--metrics-listen` among the extra arguments).
    pub metrics_addr: Option<SocketAddr>,
    options: CoordinatorOptions,
    child: Option<Child>,
    restarts: u32,
}

impl CoordinatorProcess {
    /// Starts a plaintext (loopback) coordinator with its data dir, token files and logs under `work`.
    pub async fn start(bins: &Binaries, work: &Path) -> anyhow::Result<Self> {
        Self::start_with(bins, work, CoordinatorOptions::default()).await
    }

    /// Starts a coordinator with `options`.
    pub async fn start_with(
        bins: &Binaries,
        work: &Path,
        options: CoordinatorOptions,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work)?;
        let mut this = Self {
            bins: bins.clone(),
            work: work.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            operator_token: format!("op-{:016x}", rand::random::<u64>()),
            metrics_addr: None,
            options,
            child: None,
            restarts: 0,
        };
        write_secret(&this.operator_token_file(), &this.operator_token)?;
        if this.options.tls {
            let tls = crate::SandboxTls::generate()?;
            std::fs::write(this.work.join("server.pem"), &tls.cert_pem)?;
            write_secret(&this.work.join("server.key"), &tls.key_pem)?;
            std::fs::write(this.ca_file(), &tls.ca_pem)?;
        }
        this.spawn().await?;
        Ok(this)
    }

    /// Whether it serves TLS.
    pub fn tls(&self) -> bool {
        self.options.tls
    }

    /// The CA (PEM file) that signed the TLS server certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.work.join("ca.pem")
    }

    pub fn operator_token_file(&self) -> PathBuf {
        self.work.join("operator-token")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.work.join("coordinator-data")
    }

    /// Every log file this coordinator wrote so far (one per start).
    pub fn logs(&self) -> String {
        (0..=self.restarts)
            .filter_map(|i| {
                std::fs::read_to_string(self.work.join(format!("coordinator-{i}.log"))).ok()
            })
            .collect()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log =
            std::fs::File::create(self.work.join(format!("coordinator-{}.log", self.restarts)))?;
        let mut command = Command::new(self.bins.path("ferry-coordinator"));
        command
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--operator-token-file")
            .arg(self.operator_token_file())
            .arg("--allow-private-sources")
            .args(&self.options.extra_args);
        if self.options.tls {
            command
                .arg("--tls-cert")
                .arg(self.work.join("server.pem"))
                .arg("--tls-key")
                .arg(self.work.join("server.key"));
        } else {
            command.arg("--plaintext");
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting ferry-coordinator")?;
        let (addr, metrics) = wait_listening(
            &mut child,
            self.work.join(format!("coordinator-{}.out", self.restarts)),
        )
        .await?;
        self.addr = addr;
        self.metrics_addr = metrics;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, no goodbye.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts again on the same data dir and port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await?;
        self.restarts += 1;
        self.spawn().await
    }

    /// SIGTERM, then wait up to 10 s.
    pub async fn terminate(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        terminate(self.child.take()).await
    }

    /// An operator client with the bearer token attached to every call.
    pub async fn client(&self) -> anyhow::Result<OperatorClient> {
        self.client_with_token(&self.operator_token).await
    }

    /// An operator client presenting `token`.
    pub async fn client_with_token(&self, token: &str) -> anyhow::Result<OperatorClient> {
        let mut endpoint = Channel::from_shared(self.url())?;
        if self.options.tls {
            let ca = std::fs::read(self.ca_file())?;
            endpoint = endpoint.tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )?;
        }
        let channel = endpoint.connect().await?;
        let value = format!("Bearer {token}")
            .parse()
            .context("token is not valid header text")?;
        Ok(MigrationServiceClient::with_interceptor(
            channel,
            BearerToken(value),
        ))
    }

    pub fn url(&self) -> String {
        if self.options.tls {
            format!("https://{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        }
    }
}

/// The agent binary as a child process, restartable on the same data dir.
pub struct AgentProcess {
    bins: Binaries,
    work: PathBuf,
    coordinator_url: String,
    /// The coordinator's CA when it serves TLS.
    tls_ca: Option<PathBuf>,
    join_token_file: PathBuf,
    metadata_url: String,
    pool: bool,
    extra_args: Vec<String>,
    child: Option<Child>,
    restarts: u32,
}

impl AgentProcess {
    pub async fn start(
        bins: &Binaries,
        work: &Path,
        coordinator: &CoordinatorProcess,
        metadata_url: &str,
        pool: bool,
    ) -> anyhow::Result<Self> {
        Self::start_with(bins, work, coordinator, metadata_url, pool, &[]).await
    }

    /// Like [`AgentProcess::start`], with extra command-line arguments.
    pub async fn start_with(
        bins: &Binaries,
        work: &Path,
        coordinator: &CoordinatorProcess,
        metadata_url: &str,
        pool: bool,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_routed(
            bins,
            work,
            coordinator,
            None,
            metadata_url,
            pool,
            extra_args,
        )
        .await
    }

    /// Like [`AgentProcess::start_with`], the agent reaching the coordinator at `coordinator_url` when given
    /// (e.g. through a relay whose link can be faulted) instead of its own address.
    pub async fn start_routed(
        bins: &Binaries,
        work: &Path,
        coordinator: &CoordinatorProcess,
        coordinator_url: Option<String>,
        metadata_url: &str,
        pool: bool,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work)?;
        // Enrollment, as an operator does it: a join token for this agent's CVM (read from its metadata
        // service) or for the pool.
        let join_token_file = work.join("join-token");
        if !join_token_file.exists() {
            let mut op = coordinator.client().await?;
            let cvm = if pool {
                None
            } else {
                Some((
                    http_get(&format!("{metadata_url}instance-id")).await?,
                    http_get(&format!("{metadata_url}placement/region")).await?,
                ))
            };
            let token =
                create_join_token(&mut op, cvm.as_ref().map(|(c, r)| (c.as_str(), r.as_str())))
                    .await?;
            write_secret(&join_token_file, &token)?;
        }
        let mut this = Self {
            bins: bins.clone(),
            work: work.to_path_buf(),
            coordinator_url: coordinator_url.unwrap_or_else(|| coordinator.url()),
            tls_ca: coordinator.tls().then(|| coordinator.ca_file()),
            join_token_file,
            metadata_url: metadata_url.to_string(),
            pool,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            child: None,
            restarts: 0,
        };
        this.spawn()?;
        Ok(this)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.work.join("agent-data")
    }

    /// The agent id from its enrollment (None before it enrolled).
    pub fn agent_id(&self) -> Option<String> {
        ferry_agent::enrollment::Enrollment::load(&self.data_dir())
            .ok()
            .flatten()
            .map(|e| e.agent_id)
    }

    /// Where the running agent serves `/metrics` (with `--metrics-listen` among its arguments), waiting up to 30 s
    /// for it to say so.
    pub async fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        let out = self.work.join(format!("agent-{}.out", self.restarts));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .filter_map(|l| l.split("ferry-agent metrics on ").nth(1))
                .next_back()
            {
                return addr
                    .trim()
                    .parse()
                    .with_context(|| format!("bad metrics address {addr:?}"));
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the agent did not print its metrics address within 30 s:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; returns its status.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("the agent is not running")?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .with_context(|| format!("the agent did not exit within {timeout:?}"))??;
        self.child = None;
        Ok(status)
    }

    pub fn logs(&self) -> String {
        (0..=self.restarts)
            .flat_map(|i| ["log", "out"].map(|ext| self.work.join(format!("agent-{i}.{ext}"))))
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .collect()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.work.join(format!("agent-{}.log", self.restarts)))?;
        let out = std::fs::File::create(self.work.join(format!("agent-{}.out", self.restarts)))?;
        let mut command = Command::new(self.bins.path("ferry-agent"));
        command
            .arg("--coordinator")
            .arg(&self.coordinator_url)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--metadata-url")
            .arg(&self.metadata_url)
            .arg("--join-token-file")
            .arg(&self.join_token_file)
            .env("RUST_LOG", "info")
            .stdout(out)
            .stderr(log)
            .kill_on_drop(true);
        match &self.tls_ca {
            Some(ca) => command.arg("--tls-ca").arg(ca),
            None => command.arg("--plaintext"),
        };
        if self.pool {
            command.arg("--pool");
        }
        command.args(&self.extra_args);
        self.child = Some(command.spawn().context("starting ferry-agent")?);
        Ok(())
    }

    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await?;
        self.restarts += 1;
        self.spawn()
    }

    pub async fn terminate(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        terminate(self.child.take()).await
    }
}

async fn terminate(child: Option<Child>) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let Some(mut child) = child else {
        return Ok(None);
    };
    if let Some(pid) = child.id() {
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await?;
    }
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => Ok(Some(status?)),
        Err(_) => {
            child.kill().await?;
            bail!("did not exit within 10 s of SIGTERM")
        }
    }
}

/// Creates a join token for a CVM agent (`cvm`: instance id and region) or a pool agent (`None`).
pub async fn create_join_token(
    op: &mut OperatorClient,
    cvm: Option<(&str, &str)>,
) -> anyhow::Result<String> {
    let (cvm_id, region) = cvm.unwrap_or_default();
    let token = op
        .create_join_token(ferry_proto::v1::CreateJoinTokenRequest {
            cvm_id: cvm_id.to_owned(),
            region: region.to_owned(),
            pool: cvm.is_none(),
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await
        .context("CreateJoinToken")?
        .into_inner();
    Ok(token.token)
}

/// The body of a plain HTTP GET (the metadata stand-in), trimmed.
async fn http_get(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http URL: {url}"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response).await?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(body.trim().to_owned())
}

/// Reads a child's stdout until "listening on ADDR", then keeps copying it to `log` until the child closes it.
async fn wait_listening(
    child: &mut Child,
    log: PathBuf,
) -> anyhow::Result<(SocketAddr, Option<SocketAddr>)> {
    let stdout = child.stdout.take().context("stdout not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut metrics = None;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .context("no 'listening on' line within 30 s")??
            .context("the process exited before listening (see its log)")?;
        if let Some(addr) = line.split("metrics on ").nth(1) {
            metrics = Some(
                addr.trim()
                    .parse()
                    .with_context(|| format!("bad address in {line:?}"))?,
            );
            continue;
        }
        if let Some(addr) = line.split("listening on ").nth(1) {
            let addr: SocketAddr = addr
                .trim()
                .parse()
                .with_context(|| format!("bad address in {line:?}"))?;
            // Ends when the child closes its stdout (exit or kill).
            tokio::spawn(async move {
                let Ok(mut file) = tokio::fs::File::create(log).await else {
                    return;
                };
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = file.write_all(format!("{line}\n").as_bytes()).await;
                }
            });
            return Ok((addr, metrics));
        }
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct BearerToken(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type OperatorClient = MigrationServiceClient<InterceptedService<Channel, BearerToken>>;

/// A MigrationService client that sends `token` on every call.
pub async fn operator_client(addr: SocketAddr, token: &str) -> anyhow::Result<OperatorClient> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let value = format!("Bearer {token}")
        .parse()
        .context("token is not valid header text")?;
    Ok(MigrationServiceClient::with_interceptor(
        channel,
        BearerToken(value),
    ))
}
