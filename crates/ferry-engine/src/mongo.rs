//! Driver plumbing: building clients from an `Endpoint`, classifying driver errors as transient or
//! permanent, and the capped-backoff retry loop. Knows nothing of migration logic.

use std::future::{Future, IntoFuture};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{ClientOptions, Credential};
use mongodb::Client;
use tokio_util::sync::CancellationToken;

use crate::retries::Retries;
use crate::types::Endpoint;
use crate::EngineError;

/// Which end of the migration an operation talks to (for error messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Source,
    Destination,
}

impl Side {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(3);

/// Builds a client; credentials go into `ClientOptions`, never into the URI.
pub(crate) async fn connect(endpoint: &Endpoint, side: Side) -> Result<Client, EngineError> {
    let mut opts = ClientOptions::parse(&endpoint.uri)
        .await
        .map_err(|e| EngineError::Connect {
            side: side.name(),
            detail: format!("invalid uri: {e}"),
        })?;
    if !endpoint.username.is_empty() {
        opts.credential = Some(
            Credential::builder()
                .username(endpoint.username.clone())
                .password(endpoint.password.clone())
                .source(
                    opts.credential
                        .as_ref()
                        .and_then(|c| c.source.clone())
                        .or_else(|| Some("admin".to_string())),
                )
                .build(),
        );
    }
    opts.app_name = Some("ferry-engine".to_string());
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    opts.connect_timeout = Some(Duration::from_secs(5));
    opts.max_pool_size = Some(64);
    Client::with_options(opts).map_err(|e| EngineError::Connect {
        side: side.name(),
        detail: e.to_string(),
    })
}

const RETRYABLE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 43, 237, 175, 112,
];

/// The server error code of a command failure, if any.
pub(crate) fn error_code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

/// Transient: network trouble, server selection timeouts, primary changes, retryable labels.
pub(crate) fn is_transient(e: &MongoError) -> bool {
    if e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError")
        || e.contains_label("ResumableChangeStreamError")
    {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(c) => RETRYABLE_CODES.contains(&c.code),
        ErrorKind::Authentication { message, .. } => {
            message.contains("connection") || message.contains("I/O")
        }
        _ => false,
    }
}

/// How an operation is retried: transient failures until `cancel` fires or `budget` runs out (counted
/// from the operation's start: the last progress, since any success returns), each one accounted in
/// `retries`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy<'a> {
    pub cancel: &'a CancellationToken,
    pub budget: Duration,
    pub retries: &'a Retries,
}

/// Runs `op` until it succeeds, fails permanently, the budget runs out or the policy's `cancel` fires.
/// Returns `Ok(None)` when cancelled.
pub(crate) async fn retry<T, F, Fut>(
    policy: Policy<'_>,
    side: Side,
    what: &str,
    mut op: F,
) -> Result<Option<T>, RetryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, MongoError>>,
{
    let Policy {
        cancel,
        budget,
        retries,
    } = policy;
    let started = Instant::now();
    let mut backoff = BACKOFF_START;
    let mut attempt: u32 = 0;
    loop {
        let res = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            r = op() => r,
        };
        match res {
            Ok(v) => {
                if attempt > 0 {
                    retries.recovered(side);
                }
                return Ok(Some(v));
            }
            Err(error) if is_transient(&error) && started.elapsed() < budget => {
                attempt += 1;
                tracing::warn!(%error, attempt, side = side.name(), operation = what, "transient error, retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = retries.failed(side, started, budget, &error) => {}
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
            Err(error) => {
                let transient = is_transient(&error);
                return Err(RetryError {
                    error,
                    transient,
                    side,
                    budget,
                });
            }
        }
    }
}

/// A driver error that retrying did not cure.
#[derive(Debug)]
pub(crate) struct RetryError {
    pub error: MongoError,
    pub transient: bool,
    pub side: Side,
    /// The retry budget that ran out (for the operator's message).
    pub budget: Duration,
}

impl RetryError {
    pub(crate) fn into_engine(self, operation: &str, namespace: &str) -> EngineError {
        if self.transient {
            EngineError::Unavailable {
                side: self.side.name(),
                operation: format!("{operation} on {namespace}"),
                budget: self.budget,
                detail: self.error.to_string(),
            }
        } else {
            EngineError::Command {
                side: self.side.name(),
                namespace: namespace.to_string(),
                operation: operation.to_string(),
                detail: self.error.to_string(),
            }
        }
    }
}

/// Runs a command with retries; `Ok(None)` when cancelled.
pub(crate) async fn command(
    client: &Client,
    policy: Policy<'_>,
    side: Side,
    db: &str,
    cmd: Document,
) -> Result<Option<Document>, RetryError> {
    match mongodb::bson::RawDocumentBuf::try_from(&cmd) {
        Ok(raw) => raw_command(client, policy, side, db, raw).await,
        Err(e) => Err(RetryError {
            error: MongoError::custom(format!("command is not valid BSON: {e}")),
            transient: false,
            side,
            budget: policy.budget,
        }),
    }
}

/// Runs a raw command (payloads never decoded) with retries; `Ok(None)` when cancelled.
pub(crate) async fn raw_command(
    client: &Client,
    policy: Policy<'_>,
    side: Side,
    db: &str,
    cmd: mongodb::bson::RawDocumentBuf,
) -> Result<Option<Document>, RetryError> {
    let database = client.database(db);
    retry(policy, side, "command", || {
        database.run_raw_command(cmd.clone()).into_future()
    })
    .await
}

/// `ping` used to fail fast with a clear message when an endpoint is unreachable at start.
pub(crate) async fn ping(
    client: &Client,
    side: Side,
    policy: Policy<'_>,
) -> Result<(), EngineError> {
    match command(client, policy, side, "admin", doc! {"ping": 1}).await {
        Ok(_) => Ok(()),
        Err(e) => Err(EngineError::Connect {
            side: side.name(),
            detail: e.error.to_string(),
        }),
    }
}
