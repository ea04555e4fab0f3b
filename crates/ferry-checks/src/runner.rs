//! The run: executes the items in their fixed order, bounds each by the item timeout, streams each
//! finished item and skips (with the reason) what an earlier failure makes impossible.
//!
//! Owns the sequencing, the state carried between items (clients, database lists) and the wording of
//! skips, timeouts and connection failures. Must not hold the per-item rules (that is `evaluate`) nor
//! talk to MongoDB directly (that is `probe`).

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, info, Instrument as _};

use crate::evaluate::{self, format_secs, ServerVersion, Verdict};
use crate::model::*;
use crate::probe::{self, CheckError, Mongo};

/// Copy rate assumed when the task configures none: a conservative 16 MiB/s for one agent.
pub const DEFAULT_COPY_RATE_BYTES_PER_SECOND: u64 = 16 * 1024 * 1024;
/// Item timeout used when the input's is zero.
pub const DEFAULT_ITEM_TIMEOUT: Duration = Duration::from_secs(10);

const PUBLIC_NETWORK_SKIP: &str = "public-network task: no CVM to check";

/// Runs every item in [`ITEM_IDS`] order, sends each on `items` as soon as it finishes and returns all.
///
/// A closed `items` receiver does not stop the run: the returned list is still complete.
pub async fn run_checks(input: CheckInput, items: mpsc::Sender<CheckItem>) -> Vec<CheckItem> {
    let span = tracing::info_span!("checks", cvm_id = %input.cvm_id, kind = ?input.kind);
    Runner::new(input, items).run().instrument(span).await
}

/// What the destination probes found; measured once, reported by three items.
#[derive(Clone)]
struct Destination {
    reachable: (Verdict, Duration),
    auth: (Verdict, Duration),
    mongo: Result<Mongo, String>,
    version: Result<ServerVersion, String>,
}

impl Destination {
    /// A destination that could not be reached: `reason` skips login and everything after it.
    fn unusable(reachable: (Verdict, Duration), reason: String) -> Self {
        Self {
            reachable,
            auth: (Verdict::skipped(reason.clone()), Duration::ZERO),
            mongo: Err(reason.clone()),
            version: Err(reason),
        }
    }
}

/// What the privilege probe found on the source.
struct Privileges {
    databases: Option<Vec<(String, u64)>>,
    collections: Vec<(String, Vec<String>)>,
    /// What was proven in each readable database, for the message.
    proven: Vec<String>,
    problems: Vec<String>,
    oplog_readable: bool,
}

struct Runner {
    input: CheckInput,
    timeout: Duration,
    items_tx: mpsc::Sender<CheckItem>,
    done: Vec<CheckItem>,
    /// Why the source's TCP port did not answer, if it did not.
    source_unreachable: Option<String>,
    /// The authenticated source, or why items that need it are skipped.
    source: Result<Mongo, String>,
    /// listDatabases (name, sizeOnDisk), when the user may list them.
    source_databases: Option<Vec<(String, u64)>>,
    /// The databases to migrate with their collections (read in `source_privileges`).
    source_collections: Vec<(String, Vec<String>)>,
    /// Why `oplog_window` cannot run, if it cannot.
    oplog_blocked: Option<String>,
    source_data_bytes: Option<u64>,
    destination: Option<Destination>,
}

impl Runner {
    fn new(input: CheckInput, items_tx: mpsc::Sender<CheckItem>) -> Self {
        let timeout = if input.item_timeout.is_zero() {
            DEFAULT_ITEM_TIMEOUT
        } else {
            input.item_timeout
        };
        Self {
            input,
            timeout,
            items_tx,
            done: Vec::with_capacity(ITEM_IDS.len()),
            source_unreachable: None,
            source: Err(format!("source not connected (see {SOURCE_AUTH})")),
            source_databases: None,
            source_collections: Vec::new(),
            oplog_blocked: None,
            source_data_bytes: None,
            destination: None,
        }
    }

    async fn run(mut self) -> Vec<CheckItem> {
        self.cvm_items().await;
        self.source_reachable().await;
        self.source_auth().await;
        self.source_privileges().await;
        self.source_topology().await;
        self.versions().await;
        self.oplog_window().await;
        self.databases().await;
        self.destination_items().await;
        self.destination_conflicts().await;
        self.destination_capacity().await;
        if let Ok(mongo) = std::mem::replace(&mut self.source, Err(String::new())) {
            mongo.close();
        }
        if let Some(Destination {
            mongo: Ok(mongo), ..
        }) = self.destination.take()
        {
            mongo.close();
        }
        self.done
    }

    async fn record(&mut self, id: &'static str, duration: Duration, verdict: Verdict) {
        let item = CheckItem {
            id,
            name: item_name(id).to_string(),
            status: verdict.status,
            message: verdict.message,
            fix: verdict.fix,
            duration,
        };
        info!(item = id, status = %item.status, elapsed_ms = duration.as_millis() as u64, "check item finished");
        if self.items_tx.send(item.clone()).await.is_err() {
            debug!(item = id, "check item receiver is gone");
        }
        self.done.push(item);
    }

    /// Runs `probe` bounded by the item timeout.
    async fn within<T>(&self, probe: impl Future<Output = T>) -> Option<T> {
        tokio::time::timeout(self.timeout, probe).await.ok()
    }

    fn timed_out(&self, what: &str) -> Verdict {
        Verdict::fail(
            format!(
                "{what}: no answer within {} (item timeout)",
                format_secs(self.timeout.as_secs_f64())
            ),
            "check the network path and the server's load, then re-run the check",
        )
    }

    async fn cvm_items(&mut self) {
        if self.input.kind == TaskKind::PublicNetwork {
            for id in [CVM_IDENTITY, PRIVATE_IP, REGION] {
                self.record(id, Duration::ZERO, Verdict::skipped(PUBLIC_NETWORK_SKIP))
                    .await;
            }
            return;
        }
        let started = Instant::now();
        let verdict = evaluate::cvm_identity(&self.input.cvm_id, &self.input.identity);
        self.record(CVM_IDENTITY, started.elapsed(), verdict).await;

        let started = Instant::now();
        let verdict = match probe::resolve(&self.input.mongo_host, self.timeout).await {
            Ok(resolved) => evaluate::private_ip(
                &self.input.cvm_id,
                &self.input.mongo_host,
                &resolved,
                &self.input.identity,
            ),
            Err(reason) => Verdict::fail(
                reason,
                "set the task's MongoDB IP to the CVM's private IP (metadata local-ipv4)",
            ),
        };
        self.record(PRIVATE_IP, started.elapsed(), verdict).await;

        let started = Instant::now();
        let verdict = evaluate::region(&self.input.identity, &self.input.destination_region);
        self.record(REGION, started.elapsed(), verdict).await;
    }

    async fn source_reachable(&mut self) {
        let started = Instant::now();
        let (host, port) = (self.input.mongo_host.clone(), self.input.port);
        let verdict = match probe::tcp_connect(&host, port, self.timeout).await {
            Ok(peer) => Verdict::pass(format!(
                "TCP connect from the agent to {}{} succeeded in {} ms",
                format_target(&host, port),
                peer_note(&host, port, peer),
                started.elapsed().as_millis()
            )),
            Err(reason) => {
                self.source_unreachable =
                    Some(format!("source not reachable (see {SOURCE_REACHABLE})"));
                let fix = match self.input.kind {
                    TaskKind::Cvm => format!(
                        "open TCP port {port} to the agent in the security group of CVM {}, and check that mongod listens on {host} (net.bindIp)",
                        self.input.cvm_id
                    ),
                    TaskKind::PublicNetwork => format!(
                        "allow inbound TCP port {port} on {host} from the ferry agent pool in the source's security group or firewall, and check that mongod listens on a public address (net.bindIp)"
                    ),
                };
                Verdict::fail(
                    format!("TCP connect from the agent to {host}:{port} failed: {reason}"),
                    fix,
                )
            }
        };
        self.record(SOURCE_REACHABLE, started.elapsed(), verdict)
            .await;
    }

    async fn source_auth(&mut self) {
        if let Some(reason) = self.source_unreachable.clone() {
            self.source = Err(reason.clone());
            return self
                .record(SOURCE_AUTH, Duration::ZERO, Verdict::skipped(reason))
                .await;
        }
        let started = Instant::now();
        let endpoint = self.input.source.clone();
        let attempt = self.within(connect(&endpoint, self.timeout)).await;
        let user = endpoint.username.as_str();
        let verdict = match attempt {
            Some(Ok((mongo, auth_source))) => {
                self.source = Ok(mongo);
                if user.is_empty() {
                    Verdict::pass("connected without credentials (none configured)")
                } else {
                    Verdict::pass(format!(
                        "authenticated as {user} (authSource {auth_source})"
                    ))
                }
            }
            Some(Err(CheckError::Authentication(message))) => {
                self.source = Err(format!("source authentication failed (see {SOURCE_AUTH})"));
                Verdict::fail(
                    format!("user {user} could not authenticate on the source: {message}"),
                    "check the task's source user name and password; the user must exist in the authSource database (admin unless the URI sets authSource)",
                )
            }
            Some(Err(error)) => {
                self.source = Err(format!("cannot connect to the source (see {SOURCE_AUTH})"));
                Verdict::fail(
                    format!("cannot log into the source: {error}"),
                    "check the source connection string (TLS, replica set name) and that the port reaches mongod",
                )
            }
            None => {
                self.source = Err(format!("cannot connect to the source (see {SOURCE_AUTH})"));
                self.timed_out("logging into the source")
            }
        };
        self.record(SOURCE_AUTH, started.elapsed(), verdict).await;
    }

    async fn source_privileges(&mut self) {
        let mongo = match &self.source {
            Ok(mongo) => mongo.clone(),
            Err(reason) => {
                self.oplog_blocked = Some(reason.clone());
                let verdict = Verdict::skipped(reason.clone());
                return self
                    .record(SOURCE_PRIVILEGES, Duration::ZERO, verdict)
                    .await;
            }
        };
        let started = Instant::now();
        let selected = self.input.databases.clone();
        let Some(found) = self.within(privileges(&mongo, &selected)).await else {
            self.oplog_blocked = Some(format!("privileges unknown (see {SOURCE_PRIVILEGES})"));
            let verdict = self.timed_out("reading the source's databases and oplog");
            return self
                .record(SOURCE_PRIVILEGES, started.elapsed(), verdict)
                .await;
        };
        self.source_databases = found.databases;
        self.source_collections = found.collections;
        if !found.oplog_readable {
            self.oplog_blocked = Some(format!(
                "no read access to local.oplog.rs (see {SOURCE_PRIVILEGES})"
            ));
        }
        let user = &self.input.source.username;
        let verdict = if found.problems.is_empty() {
            Verdict::pass(format!(
                "user {user} can list databases, read {} and read local.oplog.rs",
                if found.proven.is_empty() {
                    "no selected database".to_string()
                } else {
                    found.proven.join(", ")
                }
            ))
        } else {
            Verdict::fail(
                format!("user {user} lacks privileges: {}", found.problems.join("; ")),
                format!(
                    "grant the source user read access, e.g. db.getSiblingDB(\"admin\").grantRolesToUser(\"{user}\", [{{role: \"readAnyDatabase\", db: \"admin\"}}, {{role: \"read\", db: \"local\"}}])"
                ),
            )
        };
        self.record(SOURCE_PRIVILEGES, started.elapsed(), verdict)
            .await;
    }

    async fn source_topology(&mut self) {
        let mongo = match &self.source {
            Ok(mongo) => mongo.clone(),
            Err(reason) => {
                let verdict = Verdict::skipped(reason.clone());
                return self.record(SOURCE_TOPOLOGY, Duration::ZERO, verdict).await;
            }
        };
        let started = Instant::now();
        let verdict = match self.within(mongo.hello()).await {
            Some(Ok((facts, _))) => evaluate::source_topology(&facts),
            Some(Err(error)) => Verdict::fail(
                format!("hello failed on the source: {error}"),
                "check that the source is a running mongod",
            ),
            None => self.timed_out("hello on the source"),
        };
        if verdict.status == CheckStatus::Fail && self.oplog_blocked.is_none() {
            self.oplog_blocked = Some(format!(
                "the source has no usable oplog (see {SOURCE_TOPOLOGY})"
            ));
        }
        self.record(SOURCE_TOPOLOGY, started.elapsed(), verdict)
            .await;
    }

    async fn versions(&mut self) {
        let mongo = match &self.source {
            Ok(mongo) => mongo.clone(),
            Err(reason) => {
                let verdict = Verdict::skipped(format!("source version unknown: {reason}"));
                return self.record(VERSIONS, Duration::ZERO, verdict).await;
            }
        };
        let started = Instant::now();
        let source_version = self.within(mongo.version()).await;
        let destination_version = self.destination().await.version.clone();
        let verdict = match (source_version, destination_version) {
            (None, _) => self.timed_out("buildInfo on the source"),
            (Some(Err(error)), _) => Verdict::fail(
                format!("cannot read the source's version: {error}"),
                "check that the source user can run buildInfo",
            ),
            (Some(Ok(_)), Err(reason)) => {
                Verdict::skipped(format!("destination version unknown: {reason}"))
            }
            (Some(Ok(source)), Ok(destination)) => evaluate::versions(&source, &destination),
        };
        self.record(VERSIONS, started.elapsed(), verdict).await;
    }

    async fn oplog_window(&mut self) {
        let mongo = match (&self.source, &self.oplog_blocked) {
            (Ok(mongo), None) => mongo.clone(),
            (Err(reason), _) | (Ok(_), Some(reason)) => {
                let verdict = Verdict::skipped(reason.clone());
                return self.record(OPLOG_WINDOW, Duration::ZERO, verdict).await;
            }
        };
        let Some(databases) = self.source_databases.clone() else {
            let verdict = Verdict::skipped(format!(
                "source data size unknown: cannot list databases (see {SOURCE_PRIVILEGES})"
            ));
            return self.record(OPLOG_WINDOW, Duration::ZERO, verdict).await;
        };
        let started = Instant::now();
        let (rate, origin) = match self.input.copy_rate_bytes_per_second {
            0 => (DEFAULT_COPY_RATE_BYTES_PER_SECOND, "default".to_owned()),
            given => (given, self.input.copy_rate_origin.clone()),
        };
        let measured = self
            .within(async {
                let bytes = source_data_bytes(&mongo, &self.source_collections, &databases).await;
                (bytes, mongo.oplog().await)
            })
            .await;
        let verdict = match measured {
            None => self.timed_out("reading the source's oplog"),
            Some((bytes, oplog)) => {
                self.source_data_bytes = Some(bytes);
                match oplog {
                    Ok(Some(facts)) => evaluate::oplog_window(&facts, bytes, rate, &origin),
                    Ok(None) => Verdict::fail(
                        "local.oplog.rs has no entries",
                        "check that the replica set is initiated and healthy (rs.status())",
                    ),
                    Err(error) => Verdict::fail(
                        format!("cannot read the oplog's first and last entries: {error}"),
                        "grant the source user read on the local database",
                    ),
                }
            }
        };
        self.record(OPLOG_WINDOW, started.elapsed(), verdict).await;
    }

    async fn databases(&mut self) {
        let started = Instant::now();
        let verdict = match (&self.source, &self.source_databases) {
            (Err(reason), _) => Verdict::skipped(reason.clone()),
            (Ok(_), None) => Verdict::skipped(format!(
                "cannot list the source's databases (see {SOURCE_PRIVILEGES})"
            )),
            (Ok(_), Some(databases)) => {
                let names: Vec<String> = databases.iter().map(|(name, _)| name.clone()).collect();
                evaluate::databases(&self.input.databases, &names).0
            }
        };
        self.record(DATABASES, started.elapsed(), verdict).await;
    }

    async fn destination_items(&mut self) {
        let Destination {
            reachable, auth, ..
        } = self.destination().await;
        self.record(DESTINATION_REACHABLE, reachable.1, reachable.0)
            .await;
        self.record(DESTINATION_AUTH, auth.1, auth.0).await;
    }

    async fn destination_conflicts(&mut self) {
        let mongo = match self.destination().await.mongo {
            Ok(mongo) => mongo,
            Err(reason) => {
                let verdict = Verdict::skipped(reason);
                return self
                    .record(DESTINATION_CONFLICTS, Duration::ZERO, verdict)
                    .await;
            }
        };
        if let Err(reason) = &self.source {
            let verdict = Verdict::skipped(format!("source collections unknown: {reason}"));
            return self
                .record(DESTINATION_CONFLICTS, Duration::ZERO, verdict)
                .await;
        }
        if self.source_databases.is_none() {
            let verdict = Verdict::skipped(format!(
                "source collections unknown: cannot list databases (see {SOURCE_PRIVILEGES})"
            ));
            return self
                .record(DESTINATION_CONFLICTS, Duration::ZERO, verdict)
                .await;
        }
        let started = Instant::now();
        let wanted = self.source_collections.clone();
        let count: usize = wanted.iter().map(|(_, colls)| colls.len()).sum();
        let verdict = match self.within(mongo.existing_collections(&wanted)).await {
            Some(Ok(existing)) => evaluate::destination_conflicts(count, &existing),
            Some(Err(error)) => Verdict::fail(
                format!("cannot list the destination's collections: {error}"),
                "grant the destination user readWriteAnyDatabase (or readWrite on the migrated databases)",
            ),
            None => self.timed_out("listing the destination's collections"),
        };
        self.record(DESTINATION_CONFLICTS, started.elapsed(), verdict)
            .await;
    }

    async fn destination_capacity(&mut self) {
        let mongo = match self.destination().await.mongo {
            Ok(mongo) => mongo,
            Err(reason) => {
                let verdict = Verdict::skipped(reason);
                return self
                    .record(DESTINATION_CAPACITY, Duration::ZERO, verdict)
                    .await;
            }
        };
        let started = Instant::now();
        let source_bytes = match (&self.source, &self.source_databases, self.source_data_bytes) {
            (_, _, Some(bytes)) => bytes,
            (Ok(source), Some(databases), None) => {
                let measured = self
                    .within(source_data_bytes(
                        source,
                        &self.source_collections,
                        databases,
                    ))
                    .await;
                let Some(bytes) = measured else {
                    let verdict = self.timed_out("dbStats on the source");
                    return self
                        .record(DESTINATION_CAPACITY, started.elapsed(), verdict)
                        .await;
                };
                bytes
            }
            (Err(reason), _, None) => {
                let verdict = Verdict::skipped(format!("source data size unknown: {reason}"));
                return self
                    .record(DESTINATION_CAPACITY, Duration::ZERO, verdict)
                    .await;
            }
            (Ok(_), None, None) => {
                let verdict = Verdict::skipped(format!(
                    "source data size unknown: cannot list databases (see {SOURCE_PRIVILEGES})"
                ));
                return self
                    .record(DESTINATION_CAPACITY, Duration::ZERO, verdict)
                    .await;
            }
        };
        let first_db = self.source_collections.first().map(|(db, _)| db.clone());
        let fs = self
            .within(async {
                match mongo.filesystem("admin").await {
                    Some(fs) => Some(fs),
                    None => match first_db {
                        Some(db) => mongo.filesystem(&db).await,
                        None => None,
                    },
                }
            })
            .await;
        let verdict = match fs {
            Some(fs) => evaluate::destination_capacity(fs, source_bytes),
            None => self.timed_out("dbStats on the destination"),
        };
        self.record(DESTINATION_CAPACITY, started.elapsed(), verdict)
            .await;
    }

    /// Probes the destination once (reachability, login, version) and keeps the results.
    async fn destination(&mut self) -> Destination {
        if let Some(destination) = &self.destination {
            return destination.clone();
        }
        let probed = self.probe_destination().await;
        self.destination = Some(probed.clone());
        probed
    }

    async fn probe_destination(&self) -> Destination {
        let endpoint = &self.input.destination;
        let started = Instant::now();
        let options = match probe::client_options(endpoint, self.timeout).await {
            Ok(options) => options,
            Err(error) => {
                let verdict = Verdict::fail(
                    error.to_string(),
                    "correct the destination instance's connection string in the coordinator's catalog",
                );
                return Destination::unusable(
                    (verdict, started.elapsed()),
                    format!("invalid destination connection string (see {DESTINATION_REACHABLE})"),
                );
            }
        };
        let reachable = self.destination_tcp(&probe::tcp_hosts(&options)).await;
        let reachable = (reachable, started.elapsed());
        if reachable.0.status == CheckStatus::Fail {
            return Destination::unusable(
                reachable,
                format!("destination not reachable (see {DESTINATION_REACHABLE})"),
            );
        }
        let started = Instant::now();
        let (auth, mongo) = self.destination_login(endpoint).await;
        let auth = (auth, started.elapsed());
        let version = match &mongo {
            Ok(mongo) => match self.within(mongo.version()).await {
                Some(Ok(version)) => Ok(version),
                Some(Err(error)) => Err(format!("buildInfo failed on the destination: {error}")),
                None => Err("buildInfo on the destination timed out".to_string()),
            },
            Err(reason) => Err(reason.clone()),
        };
        Destination {
            reachable,
            auth,
            mongo,
            version,
        }
    }

    /// The `destination_auth` verdict and the client, or why the items that need it are skipped.
    async fn destination_login(&self, endpoint: &Endpoint) -> (Verdict, Result<Mongo, String>) {
        let user = endpoint.username.as_str();
        let no_connection = format!("cannot connect to the destination (see {DESTINATION_AUTH})");
        match self.within(connect(endpoint, self.timeout)).await {
            Some(Ok((mongo, auth_source))) => {
                let message = if user.is_empty() {
                    "connected without credentials (none configured)".to_string()
                } else {
                    format!("authenticated as {user} (authSource {auth_source})")
                };
                (Verdict::pass(message), Ok(mongo))
            }
            Some(Err(CheckError::Authentication(message))) => (
                Verdict::fail(
                    format!("user {user} could not authenticate on the destination: {message}"),
                    "check the destination instance's user name and password in the coordinator's catalog",
                ),
                Err(format!("destination authentication failed (see {DESTINATION_AUTH})")),
            ),
            Some(Err(error)) => (
                Verdict::fail(
                    format!("cannot log into the destination: {error}"),
                    "check the destination connection string (TLS, replica set name)",
                ),
                Err(no_connection),
            ),
            None => (self.timed_out("logging into the destination"), Err(no_connection)),
        }
    }

    async fn destination_tcp(&self, hosts: &[(String, u16)]) -> Verdict {
        let mut failures = Vec::new();
        for (host, port) in hosts {
            match probe::tcp_connect(host, *port, self.timeout).await {
                Ok(peer) => {
                    return Verdict::pass(format!(
                        "TCP connect from the agent to {}{} succeeded",
                        format_target(host, *port),
                        peer_note(host, *port, peer)
                    ))
                }
                Err(reason) => failures.push(format!("{host}:{port}: {reason}")),
            }
        }
        if failures.is_empty() {
            return Verdict::fail(
                "the destination connection string names no TCP host",
                "correct the destination instance's connection string in the coordinator's catalog",
            );
        }
        let targets: Vec<String> = hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        Verdict::fail(
            format!("TCP connect from the agent to the destination failed: {}", failures.join("; ")),
            format!(
                "allow the agent's outbound traffic to {} and add the agent's address to the destination instance's security group or allowlist",
                targets.join(", ")
            ),
        )
    }
}

/// Client options, login and the effective authSource.
async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<(Mongo, String), CheckError> {
    let options = probe::client_options(endpoint, timeout).await?;
    let auth_source = options
        .credential
        .as_ref()
        .and_then(|credential| credential.source.clone())
        .unwrap_or_else(|| "admin".to_string());
    let mongo = Mongo::connect(options, probe::endpoint_secret(endpoint)).await?;
    Ok((mongo, auth_source))
}

/// listDatabases, listCollections and one read in each selected database, one read of the oplog.
async fn privileges(mongo: &Mongo, selected: &[String]) -> Privileges {
    let mut found = Privileges {
        databases: None,
        collections: Vec::new(),
        proven: Vec::new(),
        problems: Vec::new(),
        oplog_readable: true,
    };
    match mongo.databases().await {
        Ok(databases) => {
            let names: Vec<String> = databases.iter().map(|(name, _)| name.clone()).collect();
            let (_, migrate) = evaluate::databases(selected, &names);
            for db in migrate {
                match read_database(mongo, &db).await {
                    Ok(access) => {
                        found.proven.push(access.describe(&db));
                        found.collections.push((db, access.collections));
                    }
                    Err(error) => found
                        .problems
                        .push(format!("cannot read database {db}: {error}")),
                }
            }
            found.databases = Some(databases);
        }
        Err(error) => found
            .problems
            .push(format!("cannot run listDatabases: {error}")),
    }
    if let Err(error) = mongo.first_document("local", "oplog.rs").await {
        found.oplog_readable = false;
        found
            .problems
            .push(format!("cannot read local.oplog.rs: {error}"));
    }
    found
}

/// What `source_privileges` found in one database.
struct DatabaseAccess {
    /// Every collection and view (what the task migrates), without `system.*`.
    collections: Vec<String>,
    /// How many of them are real collections (`type: "collection"`).
    readable: usize,
}

impl DatabaseAccess {
    /// `shop (2 collection(s))`, or what was (not) read and why.
    fn describe(&self, db: &str) -> String {
        let listed = self.collections.len();
        let others = listed.saturating_sub(self.readable);
        match (self.readable, others) {
            (0, 0) => format!("{db} (no collection: listCollections allowed, nothing to read)"),
            (0, _) => format!(
                "{db} ({others} view(s) only: listCollections allowed; read not proven, as reading a view would run its pipeline on the source)"
            ),
            (_, 0) => format!("{db} ({listed} collection(s))"),
            (_, _) => format!(
                "{db} ({listed} collection(s), of which {others} view(s) not read)"
            ),
        }
    }
}

/// The collections and views of `db`, after proving a read on its first real collection. Views are never read:
/// a read of a view runs the view's whole pipeline on the customer's production source.
async fn read_database(mongo: &Mongo, db: &str) -> Result<DatabaseAccess, CheckError> {
    let collections = mongo.collections(db).await?;
    if collections.is_empty() {
        return Ok(DatabaseAccess {
            collections,
            readable: 0,
        });
    }
    let readable = mongo.readable_collections(db).await?;
    if let Some(first) = readable.first() {
        mongo.first_document(db, first).await?;
    }
    Ok(DatabaseAccess {
        collections,
        readable: readable.len(),
    })
}

/// Total data size of the databases to migrate: dbStats dataSize, or listDatabases sizeOnDisk where
/// dbStats says nothing.
async fn source_data_bytes(
    mongo: &Mongo,
    migrate: &[(String, Vec<String>)],
    listed: &[(String, u64)],
) -> u64 {
    let mut total = 0u64;
    for (db, _) in migrate {
        let size = match mongo.data_size(db).await {
            Some(size) => size,
            None => listed
                .iter()
                .find(|(name, _)| name == db)
                .map(|(_, size)| *size)
                .unwrap_or(0),
        };
        total = total.saturating_add(size);
    }
    total
}

/// `host:port`, with brackets around an IPv6 literal.
fn format_target(host: &str, port: u16) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{host}:{port}"),
    }
}

/// ` (1.2.3.4:27017)` when `host` is a name that resolved to `peer`; empty when it was the address itself.
fn peer_note(host: &str, port: u16, peer: std::net::SocketAddr) -> String {
    if format_target(host, port) == peer.to_string() {
        String::new()
    } else {
        format!(" ({peer})")
    }
}
