//! mongosim: an in-memory MongoDB 6.0/7.0 replica-set primary (or standalone) that speaks the
//! wire protocol, for Ferry's tests and demo.
//!
//! Owns a faithful-enough server for the official drivers: OP_MSG and the legacy OP_QUERY
//! handshake, `hello` as a replica-set primary, SCRAM auth, CRUD, cursors, indexes, the
//! oplog (with `$v: 2` diffs) and fault injection. It must not depend on the Ferry engine or
//! share code that interprets MongoDB semantics with it, and it is never used by product
//! code except in tests and the demo.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let sim = mongosim::MongoSim::builder().replset("rs0").user("root", "secret").start().await?;
//! println!("{}", sim.uri());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

pub mod auth;
mod commands;
pub mod diff;
pub mod error;
pub mod faults;
pub mod filter;
pub mod idplan;
pub mod index;
pub mod oplog;
mod rawbuf;
pub mod repl;
mod server;
pub mod store;
mod ttl;
mod txn;
pub mod update;
pub mod value;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::faults::Faults;

/// Errors starting or running a mongosim server.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Binding the listener failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Reading the bound address failed.
    #[error("cannot read the local address: {0}")]
    LocalAddr(std::io::Error),
}

/// Everything a server instance is configured with.
#[derive(Clone)]
pub struct Config {
    /// Replica-set name; `None` runs a standalone (no oplog, no `setName`).
    pub replset: Option<String>,
    /// Users (auth is on when non-empty).
    pub users: Vec<auth::User>,
    /// Reported server version, e.g. "7.0.14".
    pub server_version: String,
    /// Oplog cap in bytes.
    pub oplog_bytes: usize,
    /// Interval of periodic no-op oplog entries.
    pub noop_interval: Duration,
    /// Accept `configureFailPoint` (the real server's `enableTestCommands`).
    pub test_commands: bool,
    /// Size of the filesystem holding the data, as `dbStats.fsTotalSize` reports it (bytes).
    pub fs_total_bytes: u64,
    /// Bytes used on that filesystem, as `dbStats.fsUsedSize` reports it.
    pub fs_used_bytes: u64,
    /// Interval between TTL monitor passes (`ttlMonitorSleepSecs`, 60 s).
    pub ttl_interval: Duration,
}

/// `dbStats.fsTotalSize` unless configured: 100 GiB.
pub const DEFAULT_FS_TOTAL_BYTES: u64 = 100 << 30;
/// `dbStats.fsUsedSize` unless configured: 10 GiB.
pub const DEFAULT_FS_USED_BYTES: u64 = 10 << 30;

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("replset", &self.replset)
            .field(
                "users",
                &self.users.iter().map(|u| &u.name).collect::<Vec<_>>(),
            )
            .field("server_version", &self.server_version)
            .field("oplog_bytes", &self.oplog_bytes)
            .field("fs_total_bytes", &self.fs_total_bytes)
            .field("fs_used_bytes", &self.fs_used_bytes)
            .finish()
    }
}

impl Config {
    /// `maxWireVersion` for the configured version (17 for 6.0, 21 for 7.0).
    pub fn max_wire_version(&self) -> i32 {
        match self
            .server_version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
        {
            Some(6) => 17,
            Some(8) => 25,
            _ => 21,
        }
    }

    /// Major version number.
    pub fn major(&self) -> u32 {
        self.server_version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(7)
    }
}

/// Builder for an in-process server.
#[derive(Debug)]
pub struct Builder {
    config: Config,
    bind: String,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            config: Config {
                replset: Some("rs0".into()),
                users: Vec::new(),
                server_version: "7.0.14".into(),
                oplog_bytes: 64 * 1024 * 1024,
                noop_interval: Duration::from_secs(10),
                test_commands: true,
                fs_total_bytes: DEFAULT_FS_TOTAL_BYTES,
                fs_used_bytes: DEFAULT_FS_USED_BYTES,
                ttl_interval: Duration::from_secs(60),
            },
            bind: "127.0.0.1:0".into(),
        }
    }
}

impl Builder {
    /// Runs as a replica-set primary named `name` (the default, "rs0").
    pub fn replset(mut self, name: &str) -> Self {
        self.config.replset = Some(name.to_string());
        self
    }

    /// Runs as a standalone: no `setName`, no oplog.
    pub fn single_node(mut self) -> Self {
        self.config.replset = None;
        self
    }

    /// Adds a root user (auth is on when at least one user exists).
    pub fn user(self, name: &str, password: &str) -> Self {
        self.user_with_roles(name, password, &[("root", "admin")])
    }

    /// Adds a user with explicit roles, e.g. `&[("read", "app")]` or
    /// `&[("readAnyDatabase", "admin")]` (which cannot read `local.oplog.rs`).
    pub fn user_with_roles(mut self, name: &str, password: &str, roles: &[(&str, &str)]) -> Self {
        let roles = roles
            .iter()
            .map(|(r, d)| auth::Role {
                role: (*r).to_string(),
                db: (*d).to_string(),
            })
            .collect();
        self.config
            .users
            .push(auth::User::new(name, password, roles));
        self
    }

    /// Reported server version ("7.0.14" by default; "6.0.x" switches to 6.0 behaviour).
    pub fn server_version(mut self, v: &str) -> Self {
        self.config.server_version = v.to_string();
        self
    }

    /// Oplog cap in MiB.
    pub fn oplog_size_mb(mut self, mb: usize) -> Self {
        self.config.oplog_bytes = mb.max(1) * 1024 * 1024;
        self
    }

    /// Oplog cap in bytes (for tests of roll-over).
    pub fn oplog_size_bytes(mut self, bytes: usize) -> Self {
        self.config.oplog_bytes = bytes;
        self
    }

    /// Interval of the periodic no-op writer (10 s like the server).
    pub fn noop_interval(mut self, d: Duration) -> Self {
        self.config.noop_interval = d;
        self
    }

    /// Interval between TTL monitor passes (60 s like the server's `ttlMonitorSleepSecs`).
    /// [`MongoSim::run_ttl_pass`] runs one pass at once.
    pub fn ttl_monitor_interval(mut self, d: Duration) -> Self {
        self.config.ttl_interval = d;
        self
    }

    /// Enables or disables `configureFailPoint` (enabled by default in-process).
    pub fn test_commands(mut self, on: bool) -> Self {
        self.config.test_commands = on;
        self
    }

    /// Filesystem figures `dbStats` reports (`fsTotalSize`, `fsUsedSize`, in bytes before
    /// `scale`); 100 GiB with 10 GiB used by default. Taken as given (`used_bytes` may even
    /// exceed `total_bytes`), so tests can model a full or a nearly full disk.
    pub fn filesystem(mut self, total_bytes: u64, used_bytes: u64) -> Self {
        self.config.fs_total_bytes = total_bytes;
        self.config.fs_used_bytes = used_bytes;
        self
    }

    /// Address to bind ("127.0.0.1:0" by default).
    pub fn bind(mut self, addr: &str) -> Self {
        self.bind = addr.to_string();
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Binds and starts serving.
    pub async fn start(self) -> Result<MongoSim, SimError> {
        let listener = TcpListener::bind(&self.bind)
            .await
            .map_err(|source| SimError::Bind {
                addr: self.bind.clone(),
                source,
            })?;
        MongoSim::serve(self.config, listener)
    }
}

/// A running server. Dropping it does not stop it; call [`MongoSim::shutdown`].
pub struct MongoSim {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for MongoSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoSim")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MongoSim {
    /// A builder with the defaults: replica set "rs0", no auth, version "7.0.14".
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Serves on an already bound listener (used by the binary).
    pub fn serve(config: Config, listener: TcpListener) -> Result<Self, SimError> {
        let addr = listener.local_addr().map_err(SimError::LocalAddr)?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let shared = Arc::new(server::Shared::new(
            config,
            addr,
            cancel.clone(),
            tracker.clone(),
        ));
        tracker.spawn(server::accept_loop(shared.clone(), listener));
        tracker.spawn(server::noop_writer(shared.clone()));
        tracker.spawn(ttl::monitor(shared.clone()));
        Ok(Self {
            addr,
            shared,
            cancel,
            tracker,
        })
    }

    /// `mongodb://127.0.0.1:PORT/?replicaSet=rs0` (no credentials), or without
    /// `replicaSet` for a standalone.
    pub fn uri(&self) -> String {
        match &self.shared.config.replset {
            Some(rs) => format!("mongodb://{}/?replicaSet={rs}", self.addr),
            None => format!("mongodb://{}/", self.addr),
        }
    }

    /// The URI with credentials and `authSource=admin` embedded.
    pub fn uri_with_credentials(&self, user: &str, password: &str) -> String {
        let base = self.uri();
        let rest = base.trim_start_matches("mongodb://");
        let sep = if rest.contains('?') { "&" } else { "?" };
        format!("mongodb://{user}:{password}@{rest}{sep}authSource=admin")
    }

    /// Bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Fault injection handle.
    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }

    /// Writes a no-op oplog entry now (as the periodic writer would).
    pub fn write_noop(&self) {
        self.shared
            .with_store(|s| s.log_noop(bson::doc! {"msg": "periodic noop"}));
    }

    /// Runs one TTL monitor pass now (as the background monitor does every
    /// `ttl_monitor_interval`); returns the number of documents it deleted.
    pub fn run_ttl_pass(&self) -> usize {
        ttl::run_pass(&self.shared)
    }

    /// Freezes the majority commit point at the current optime: later writes are applied
    /// and logged but not majority-committed (`hello.lastWrite.majorityOpTime`,
    /// `replSetGetStatus.optimes.lastCommittedOpTime` and majority reads of the oplog stay
    /// there). The data as of now is kept for [`MongoSim::rollback_to_majority`].
    pub fn hold_majority(&self) {
        self.shared.with_store(|s| s.hold_majority());
    }

    /// Lets the majority commit point follow the newest optime again.
    pub fn release_majority(&self) {
        self.shared.with_store(|s| s.release_majority());
    }

    /// Simulates a failover with rollback: oplog entries after the majority point are
    /// removed and their data effects undone, `replSetGetRBID` goes up, the term goes up
    /// (`t` of new entries, `electionId`), a `{msg: "new primary"}` no-op is written, open
    /// transactions are aborted, every cursor is closed and every connection is dropped.
    /// Returns the number of oplog entries rolled back.
    pub fn rollback_to_majority(&self) -> usize {
        txn::abort_all(&self.shared);
        let n = self.shared.with_store(|s| s.rollback_to_majority());
        self.shared.with_cursors(|c| c.clear());
        self.shared.faults.drop_connections();
        n
    }

    /// Stops accepting, closes every connection and waits for all tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}
