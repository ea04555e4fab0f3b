//! Driver plumbing: clients from an `Endpoint` with the configured read preference, transient error
//! classification, the capped-backoff retry loop, commands, the source's newest oplog time, and point
//! reads that return the server's `operationTime`. Knows nothing of verification logic.

use std::future::{Future, IntoFuture};
use std::time::{Duration, Instant};

use bson::{doc, Document, RawDocumentBuf};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{ClientOptions, Credential, ReadPreference, SelectionCriteria};
use mongodb::Client;
use tokio_util::sync::CancellationToken;

use crate::types::{Endpoint, OpTime, ReadPref};
use crate::VerifyError;

/// Which side an operation talks to (for error messages).
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
const RETRYABLE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 43, 237, 175, 112,
];

/// Builds a client; credentials go into `ClientOptions`, never into the URI.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    side: Side,
    pref: ReadPref,
) -> Result<Client, VerifyError> {
    let mut opts = ClientOptions::parse(&endpoint.uri)
        .await
        .map_err(|e| VerifyError::Connect {
            side: side.name(),
            detail: format!("invalid uri: {e}"),
        })?;
    if !endpoint.username.is_empty() {
        let source = opts
            .credential
            .as_ref()
            .and_then(|c| c.source.clone())
            .unwrap_or_else(|| "admin".to_string());
        opts.credential = Some(
            Credential::builder()
                .username(endpoint.username.clone())
                .password(endpoint.password.clone())
                .source(source)
                .build(),
        );
    }
    let rp = match pref {
        ReadPref::Primary => ReadPreference::Primary,
        ReadPref::SecondaryPreferred => ReadPreference::SecondaryPreferred {
            options: Default::default(),
        },
    };
    opts.selection_criteria = Some(SelectionCriteria::ReadPreference(rp));
    opts.app_name = Some("ferry-verify".to_string());
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    opts.connect_timeout = Some(Duration::from_secs(5));
    opts.max_pool_size = Some(32);
    Client::with_options(opts).map_err(|e| VerifyError::Connect {
        side: side.name(),
        detail: e.to_string(),
    })
}

/// The server error code of a command failure, if any.
pub(crate) fn error_code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// Transient: network trouble, server selection timeouts, primary changes, retryable labels.
pub(crate) fn is_transient(e: &MongoError) -> bool {
    if e.contains_label("RetryableWriteError") || e.contains_label("ResumableChangeStreamError") {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(c) => RETRYABLE_CODES.contains(&c.code),
        _ => false,
    }
}

/// A driver error that retrying did not cure.
#[derive(Debug)]
pub(crate) struct RetryError {
    pub error: MongoError,
    pub side: Side,
    pub budget: Duration,
}

impl RetryError {
    pub(crate) fn into_verify(self, operation: &str, namespace: &str) -> VerifyError {
        if is_transient(&self.error) {
            VerifyError::Unavailable {
                side: self.side.name(),
                operation: format!("{operation} on {namespace}"),
                budget: self.budget,
                detail: self.error.to_string(),
            }
        } else {
            VerifyError::Command {
                side: self.side.name(),
                namespace: namespace.to_string(),
                operation: operation.to_string(),
                detail: self.error.to_string(),
            }
        }
    }
}

/// Runs `op` until it succeeds, fails permanently, `budget` runs out or `cancel` fires
/// (`Ok(None)`).
pub(crate) async fn retry<T, F, Fut>(
    cancel: &CancellationToken,
    budget: Duration,
    side: Side,
    what: &str,
    mut op: F,
) -> Result<Option<T>, RetryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, MongoError>>,
{
    let started = Instant::now();
    let mut backoff = BACKOFF_START;
    loop {
        let res = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            r = op() => r,
        };
        match res {
            Ok(v) => return Ok(Some(v)),
            Err(error) if is_transient(&error) && started.elapsed() < budget => {
                tracing::warn!(%error, side = side.name(), operation = what, "transient error, retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
            Err(error) => {
                return Err(RetryError {
                    error,
                    side,
                    budget,
                })
            }
        }
    }
}

/// Runs a command with retries; `Ok(None)` when cancelled.
pub(crate) async fn command(
    client: &Client,
    cancel: &CancellationToken,
    budget: Duration,
    side: Side,
    db: &str,
    cmd: Document,
) -> Result<Option<Document>, RetryError> {
    let database = client.database(db);
    retry(cancel, budget, side, "command", || {
        database.run_command(cmd.clone()).into_future()
    })
    .await
}

/// Runs a cursor command (listCollections, listIndexes) and collects its (small) result.
pub(crate) async fn cursor_command(
    client: &Client,
    cancel: &CancellationToken,
    budget: Duration,
    side: Side,
    db: &str,
    cmd: Document,
) -> Result<Option<Vec<Document>>, RetryError> {
    use futures::TryStreamExt;
    let database = client.database(db);
    retry(cancel, budget, side, "cursor command", || async {
        database
            .run_cursor_command(cmd.clone())
            .await?
            .try_collect::<Vec<Document>>()
            .await
    })
    .await
}

/// The source's newest oplog time (`hello.lastWrite.opTime.ts`); `None` without an oplog.
pub(crate) async fn newest_optime(
    client: &Client,
    cancel: &CancellationToken,
    budget: Duration,
) -> Result<Option<OpTime>, VerifyError> {
    let hello = command(
        client,
        cancel,
        budget,
        Side::Source,
        "admin",
        doc! {"hello": 1},
    )
    .await
    .map_err(|e| e.into_verify("hello", "admin"))?
    .unwrap_or_default();
    Ok(hello
        .get_document("lastWrite")
        .and_then(|w| w.get_document("opTime"))
        .and_then(|o| o.get_timestamp("ts"))
        .ok()
        .map(OpTime::from_ts))
}

/// The `_id` value of a `{_id: v}` document as a filter value (lossy for invalid UTF-8).
/// The `{_id: <value>}` filter of a queued `_id`, byte for byte (an `_id` string with invalid UTF-8 stays
/// exactly what the server stored, never a lossy look-alike that matches nothing).
pub(crate) fn id_filter(id_doc: &[u8]) -> Option<RawDocumentBuf> {
    let raw = RawDocumentBuf::from_bytes(id_doc.to_vec()).ok()?;
    raw.iter_elements().flatten().next()?;
    Some(raw)
}

/// Reads one document by `_id` (a raw filter, see `id_filter`); returns it (raw) and the server's
/// `operationTime` of the read.
pub(crate) async fn point_read(
    client: &Client,
    cancel: &CancellationToken,
    budget: Duration,
    side: Side,
    ns: &str,
    filter: &RawDocumentBuf,
) -> Result<Option<(Option<RawDocumentBuf>, Option<OpTime>)>, RetryError> {
    let (db, coll) = crate::plan::split_ns(ns);
    let database = client.database(db);
    let mut cmd = RawDocumentBuf::new();
    cmd.append(bson::raw::cstr!("find"), coll);
    cmd.append(bson::raw::cstr!("filter"), filter.clone());
    cmd.append(bson::raw::cstr!("limit"), 1i32);
    cmd.append(bson::raw::cstr!("singleBatch"), true);
    retry(cancel, budget, side, "point read", || async {
        let mut session = client.start_session().causal_consistency(false).await?;
        let mut cursor = database
            .run_raw_cursor_command(cmd.clone())
            .session(&mut session)
            .await?
            .with_type::<RawDocumentBuf>();
        let found = cursor.next(&mut session).await.transpose()?;
        Ok((found, session.operation_time().map(OpTime::from_ts)))
    })
    .await
}
