//! The measurements: TCP connects and documented MongoDB commands (hello, buildInfo, listDatabases,
//! listCollections, find with limit 1, collStats or `$collStats`, dbStats) through the official driver.
//!
//! Owns [`CheckError`] and the mapping of driver errors onto it. Must not judge (that is `evaluate`) and
//! must not let a password into an error message: every driver message goes through [`redact`].

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, ServerAddress};
use mongodb::Client;

use crate::evaluate::{ExistingCollection, HelloFacts, OplogFacts, ServerVersion};
use crate::model::Endpoint;

/// Why a measurement failed; messages are already redacted.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The connection string does not parse.
    #[error("invalid connection string: {0}")]
    InvalidUri(String),
    /// The server rejected the credentials.
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// The user lacks a privilege (code 13).
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// No server could be reached or the connection broke.
    #[error("server not reachable: {0}")]
    Unreachable(String),
    /// Any other server or driver error.
    #[error("{0}")]
    Server(String),
    /// A reply lacked a field the check needs.
    #[error("unexpected reply: {0}")]
    Reply(String),
}

const AUTHENTICATION_FAILED: i32 = 18;
const UNAUTHORIZED: i32 = 13;

/// The password embedded in a connection string (`mongodb://user:PASSWORD@host/...`), if any.
pub(crate) fn uri_password(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// The secret to redact from messages about `endpoint`: its password, else the one in its URI.
pub(crate) fn endpoint_secret(endpoint: &Endpoint) -> &str {
    if endpoint.password.is_empty() {
        uri_password(&endpoint.uri).unwrap_or("")
    } else {
        &endpoint.password
    }
}

/// Replaces every occurrence of `secret` in `text`.
pub(crate) fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "<redacted>")
    }
}

impl CheckError {
    fn from_driver(error: &mongodb::error::Error, secret: &str) -> Self {
        let message = redact(&driver_message(error), secret);
        match error.kind.as_ref() {
            ErrorKind::Authentication { .. } => Self::Authentication(message),
            ErrorKind::Command(command) if command.code == AUTHENTICATION_FAILED => {
                Self::Authentication(message)
            }
            ErrorKind::Command(command) if command.code == UNAUTHORIZED => {
                Self::Unauthorized(redact(&command.message, secret))
            }
            ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. } => Self::Unreachable(message),
            ErrorKind::InvalidArgument { .. } => Self::InvalidUri(message),
            _ => Self::Server(message),
        }
    }
}

/// The driver's own words without its debug dump of labels and sources.
fn driver_message(error: &mongodb::error::Error) -> String {
    match error.kind.as_ref() {
        ErrorKind::Authentication { message, .. }
        | ErrorKind::ServerSelection { message, .. }
        | ErrorKind::InvalidArgument { message, .. }
        | ErrorKind::DnsResolve { message, .. }
        | ErrorKind::ConnectionPoolCleared { message, .. }
        | ErrorKind::InvalidResponse { message, .. } => message.clone(),
        ErrorKind::Command(command) => format!(
            "{} ({}): {}",
            command.code_name, command.code, command.message
        ),
        ErrorKind::Io(io) => io.to_string(),
        _ => error.to_string(),
    }
}

/// Connects to `host:port` over TCP within `timeout`; returns the address that answered.
pub(crate) async fn tcp_connect(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<SocketAddr, String> {
    let attempt = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await;
    match attempt {
        Ok(Ok(stream)) => stream
            .peer_addr()
            .map_err(|error| format!("connected but the peer address is unknown: {error}")),
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => Err(
            "connection refused (nothing listens on the port, or a firewall rejects it)"
                .to_string(),
        ),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "no answer within {} s (a security group or firewall drops the packets)",
            timeout.as_secs_f64()
        )),
    }
}

/// Resolves `host` to its addresses (an IP literal resolves to itself).
pub(crate) async fn resolve(host: &str, timeout: Duration) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, 0))).await {
        Ok(Ok(addrs)) => Ok(addrs.map(|addr| addr.ip()).collect()),
        Ok(Err(error)) => Err(format!("cannot resolve {host}: {error}")),
        Err(_) => Err(format!(
            "cannot resolve {host}: no answer within {timeout:?}"
        )),
    }
}

/// Parsed client options with the endpoint's credentials and short timeouts.
pub(crate) async fn client_options(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<ClientOptions, CheckError> {
    let secret = endpoint_secret(endpoint);
    let mut options = ClientOptions::parse(&endpoint.uri).await.map_err(|error| {
        let message = redact(&driver_message(&error), secret);
        // The driver may echo the percent-encoded form of the password, too.
        CheckError::InvalidUri(redact(&message, &endpoint.uri))
    })?;
    if !endpoint.username.is_empty() {
        let mut credential = options.credential.take().unwrap_or_default();
        credential.username = Some(endpoint.username.clone());
        credential.password = Some(endpoint.password.clone());
        options.credential = Some(credential);
    }
    options.app_name = Some("ferry-checks".to_string());
    options.connect_timeout = Some(timeout);
    options.server_selection_timeout = Some(timeout);
    options.max_pool_size = Some(2);
    Ok(options)
}

/// The `host:port` pairs of the parsed options.
pub(crate) fn tcp_hosts(options: &ClientOptions) -> Vec<(String, u16)> {
    options
        .hosts
        .iter()
        .filter_map(|address| match address {
            ServerAddress::Tcp { host, port } => Some((host.clone(), port.unwrap_or(27017))),
            _ => None,
        })
        .collect()
}

/// A connected, authenticated client and the secret to redact from its errors.
#[derive(Clone)]
pub(crate) struct Mongo {
    client: Client,
    secret: String,
}

impl std::fmt::Debug for Mongo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mongo").finish_non_exhaustive()
    }
}

impl Mongo {
    /// Builds a client and proves the credentials with a `ping` (which needs an authenticated connection).
    pub async fn connect(options: ClientOptions, secret: &str) -> Result<Self, CheckError> {
        let client = Client::with_options(options)
            .map_err(|error| CheckError::from_driver(&error, secret))?;
        let mongo = Self {
            client,
            secret: secret.to_string(),
        };
        mongo.command("admin", doc! { "ping": 1 }).await?;
        Ok(mongo)
    }

    fn map(&self, error: &mongodb::error::Error) -> CheckError {
        CheckError::from_driver(error, &self.secret)
    }

    async fn command(&self, db: &str, command: Document) -> Result<Document, CheckError> {
        self.client
            .database(db)
            .run_command(command)
            .await
            .map_err(|error| self.map(&error))
    }

    /// `hello`: the source's role in its replica set.
    pub async fn hello(&self) -> Result<(HelloFacts, Option<u64>), CheckError> {
        let reply = self.command("admin", doc! { "hello": 1 }).await?;
        let facts = HelloFacts {
            set_name: reply.get_str("setName").ok().map(str::to_string),
            writable_primary: reply.get_bool("isWritablePrimary").unwrap_or(false)
                || reply.get_bool("ismaster").unwrap_or(false),
            secondary: reply.get_bool("secondary").unwrap_or(false),
            arbiter_only: reply.get_bool("arbiterOnly").unwrap_or(false),
            mongos: reply.get_str("msg").is_ok_and(|msg| msg == "isdbgrid"),
            hosts: reply.get_array("hosts").map(Vec::len).unwrap_or(0),
        };
        let local_time = reply
            .get_datetime("localTime")
            .ok()
            .and_then(|time| u64::try_from(time.timestamp_millis() / 1000).ok());
        Ok((facts, local_time))
    }

    /// `buildInfo.version`.
    pub async fn version(&self) -> Result<ServerVersion, CheckError> {
        let reply = self.command("admin", doc! { "buildInfo": 1 }).await?;
        let text = reply
            .get_str("version")
            .map_err(|_| CheckError::Reply("buildInfo has no version".to_string()))?;
        ServerVersion::parse(text)
            .ok_or_else(|| CheckError::Reply(format!("buildInfo version {text:?} does not parse")))
    }

    /// `listDatabases`: names and `sizeOnDisk`.
    pub async fn databases(&self) -> Result<Vec<(String, u64)>, CheckError> {
        let reply = self
            .command("admin", doc! { "listDatabases": 1, "nameOnly": false })
            .await?;
        let entries = reply
            .get_array("databases")
            .map_err(|_| CheckError::Reply("listDatabases has no databases array".to_string()))?;
        Ok(entries
            .iter()
            .filter_map(Bson::as_document)
            .filter_map(|entry| {
                let name = entry.get_str("name").ok()?;
                let size = entry.get("sizeOnDisk").and_then(as_u64).unwrap_or(0);
                Some((name.to_string(), size))
            })
            .collect())
    }

    /// Collection names of `db`, without `system.*`.
    pub async fn collections(&self, db: &str) -> Result<Vec<String>, CheckError> {
        let mut names = self
            .client
            .database(db)
            .list_collection_names()
            .await
            .map_err(|error| self.map(&error))?;
        names.retain(|name| !name.starts_with("system."));
        names.sort();
        Ok(names)
    }

    /// Names of the real collections of `db` (`listCollections` filtered to `type: "collection"`), without
    /// `system.*`: the ones a read may touch. A view is never read, as reading it runs its pipeline on the server.
    pub async fn readable_collections(&self, db: &str) -> Result<Vec<String>, CheckError> {
        let mut names = self
            .client
            .database(db)
            .list_collection_names()
            .filter(doc! { "type": "collection" })
            .await
            .map_err(|error| self.map(&error))?;
        names.retain(|name| !name.starts_with("system."));
        names.sort();
        Ok(names)
    }

    /// Reads at most one document of `db.coll` (proves read access; tells whether it is empty).
    pub async fn first_document(
        &self,
        db: &str,
        coll: &str,
    ) -> Result<Option<RawDocumentBuf>, CheckError> {
        self.client
            .database(db)
            .collection::<RawDocumentBuf>(coll)
            .find_one(doc! {})
            .await
            .map_err(|error| self.map(&error))
    }

    /// Seconds of the `ts` of the oldest (`direction` 1) or newest (-1) oplog entry.
    async fn oplog_edge(&self, direction: i32) -> Result<Option<u32>, CheckError> {
        let entry = self
            .client
            .database("local")
            .collection::<Document>("oplog.rs")
            .find_one(doc! {})
            .sort(doc! { "$natural": direction })
            .projection(doc! { "ts": 1 })
            .await
            .map_err(|error| self.map(&error))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let ts = entry
            .get_timestamp("ts")
            .map_err(|_| CheckError::Reply("oplog entry without a ts timestamp".to_string()))?;
        Ok(Some(ts.time))
    }

    /// Oldest and newest oplog entries plus the oplog's size figures; `None` when the oplog is empty.
    pub async fn oplog(&self) -> Result<Option<OplogFacts>, CheckError> {
        let (Some(first), Some(last)) = (self.oplog_edge(1).await?, self.oplog_edge(-1).await?)
        else {
            return Ok(None);
        };
        let now = match self.hello().await {
            Ok((_, Some(now))) => now,
            _ => unix_now(),
        };
        // The size figures are optional: without them the window is the span between the edges.
        let (used_bytes, max_bytes, stats_error) = match self.oplog_size().await {
            Ok((used, max)) => (Some(used), Some(max), None),
            Err(reason) => (None, None, Some(reason)),
        };
        Ok(Some(OplogFacts {
            first_ts_secs: first,
            last_ts_secs: last,
            now_secs: now,
            used_bytes,
            max_bytes,
            stats_error,
        }))
    }

    /// `size` and `maxSize` of `local.oplog.rs`: from `collStats` (deprecated since 6.2, still served by 7.0/8.0),
    /// else from the `storageStats` of a `$collStats` stage. A real server appends `capped`, `max` and `maxSize`
    /// (the configured cap, `replSetResizeOplog` included) for every capped collection (mongodb/mongo
    /// `src/mongo/db/stats/storage_stats.cpp`, `_appendRecordStore`); `size` is the data size of the retained entries.
    async fn oplog_size(&self) -> Result<(u64, u64), String> {
        let command = match self
            .command("local", doc! { "collStats": "oplog.rs" })
            .await
        {
            Ok(reply) => match size_and_max(&reply) {
                Some(figures) => return Ok(figures),
                None => "collStats on local.oplog.rs reports no size/maxSize".to_string(),
            },
            Err(error) => format!("collStats on local.oplog.rs failed: {error}"),
        };
        let pipeline = vec![doc! { "$collStats": { "storageStats": {} } }];
        let stage = self
            .client
            .database("local")
            .collection::<Document>("oplog.rs")
            .aggregate(pipeline)
            .await;
        let stage = match stage {
            Ok(mut cursor) => match cursor.advance().await {
                Ok(true) => match cursor.deserialize_current() {
                    Ok(entry) => match entry
                        .get_document("storageStats")
                        .ok()
                        .and_then(size_and_max)
                    {
                        Some(figures) => return Ok(figures),
                        None => "$collStats reports no storageStats.size/maxSize".to_string(),
                    },
                    Err(error) => format!("$collStats reply does not decode: {error}"),
                },
                Ok(false) => "$collStats returned nothing".to_string(),
                Err(error) => format!("$collStats failed: {}", self.map(&error)),
            },
            Err(error) => format!("$collStats failed: {}", self.map(&error)),
        };
        Err(format!("{command}; {stage}"))
    }

    /// `dbStats.dataSize` of `db`, where reported.
    pub async fn data_size(&self, db: &str) -> Option<u64> {
        let reply = self.command(db, doc! { "dbStats": 1 }).await.ok()?;
        reply.get("dataSize").and_then(as_u64)
    }

    /// `dbStats` fsUsedSize and fsTotalSize, where reported.
    pub async fn filesystem(&self, db: &str) -> Option<(u64, u64)> {
        let reply = self.command(db, doc! { "dbStats": 1 }).await.ok()?;
        let used = reply.get("fsUsedSize").and_then(as_u64)?;
        let total = reply.get("fsTotalSize").and_then(as_u64)?;
        (total > 0).then_some((used, total))
    }

    /// The namespaces of `wanted` (db, collection) that exist on this server, and whether each is non-empty.
    pub async fn existing_collections(
        &self,
        wanted: &[(String, Vec<String>)],
    ) -> Result<Vec<ExistingCollection>, CheckError> {
        let mut existing = Vec::new();
        for (db, collections) in wanted {
            let here = self.collections(db).await?;
            for coll in collections.iter().filter(|coll| here.contains(coll)) {
                let non_empty = self.first_document(db, coll).await?.is_some();
                existing.push(ExistingCollection {
                    namespace: format!("{db}.{coll}"),
                    non_empty,
                });
            }
        }
        Ok(existing)
    }

    /// Drops the client without waiting for its background tasks.
    pub fn close(self) {
        drop(self.client);
    }
}

/// Reads a BSON number of any width as bytes or seconds.
fn as_u64(value: &Bson) -> Option<u64> {
    match value {
        Bson::Int32(v) => u64::try_from(*v).ok(),
        Bson::Int64(v) => u64::try_from(*v).ok(),
        Bson::Double(v) if v.is_finite() && *v >= 0.0 => Some(*v as u64),
        _ => None,
    }
}

/// `size` and `maxSize` of a capped collection's storage statistics (`maxSize` present only when capped).
fn size_and_max(stats: &Document) -> Option<(u64, u64)> {
    let used = stats.get("size").and_then(as_u64)?;
    let max = stats.get("maxSize").and_then(as_u64)?;
    Some((used, max))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_password_is_found() {
        assert_eq!(
            uri_password("mongodb://u:p%40ss@127.0.0.1:27017/?x=1"),
            Some("p%40ss")
        );
        assert_eq!(
            uri_password("mongodb://127.0.0.1:27017/?authSource=a@b"),
            None
        );
        assert_eq!(uri_password("mongodb://u@127.0.0.1/"), None);
    }

    #[test]
    fn redact_removes_the_password() {
        assert_eq!(redact("bad s3cret here", "s3cret"), "bad <redacted> here");
        assert_eq!(redact("nothing", ""), "nothing");
    }

    #[test]
    fn oplog_size_figures_need_both_size_and_max_size() {
        let stats = doc! {"size": 3_355_443i32, "count": 10i64, "capped": true, "max": -1i64, "maxSize": 1_038_090_240i64};
        assert_eq!(size_and_max(&stats), Some((3_355_443, 1_038_090_240)));
        assert_eq!(size_and_max(&doc! {"size": 10i64, "capped": false}), None);
        assert_eq!(size_and_max(&doc! {"maxSize": 10i64}), None);
    }

    #[test]
    fn numbers_of_any_width() {
        assert_eq!(as_u64(&Bson::Int32(5)), Some(5));
        assert_eq!(as_u64(&Bson::Int64(1 << 40)), Some(1 << 40));
        assert_eq!(as_u64(&Bson::Double(2.5)), Some(2));
        assert_eq!(as_u64(&Bson::Int32(-1)), None);
        assert_eq!(as_u64(&Bson::String("1".into())), None);
    }

    #[tokio::test]
    async fn tcp_connect_reports_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let error = tcp_connect("127.0.0.1", port, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(error.contains("refused"), "{error}");
    }

    #[tokio::test]
    async fn client_options_carry_credentials_and_timeouts() {
        let endpoint = Endpoint {
            uri: "mongodb://127.0.0.1:27017/?directConnection=true".into(),
            username: "root".into(),
            password: "secret".into(),
        };
        let options = client_options(&endpoint, Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(
            options.server_selection_timeout,
            Some(Duration::from_secs(3))
        );
        let credential = options.credential.unwrap();
        assert_eq!(credential.username.as_deref(), Some("root"));
        assert_eq!(
            tcp_hosts(&ClientOptions::parse(&endpoint.uri).await.unwrap()),
            vec![("127.0.0.1".to_string(), 27017)]
        );
    }
}
