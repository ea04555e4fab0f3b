//! Applying oplog entries outside a migration, with exactly the engine's rules: the operator tool
//! `ferry-agent replay` (support reproduces a failed entry), the samples tests, and saving the entry a
//! task failed on so that it can be replayed. Entries carry no credentials; nothing here logs one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mongodb::bson::{Bson, Document, RawDocumentBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::apply::Applier;
use crate::context::Ctx;
use crate::mongo::{self, Side};
use crate::oplog::{entry_ts, NsFilter};
use crate::state::EngineState;
use crate::throttle::{Direction, Limiter};
use crate::types::{Endpoint, MigrationConfig, MigrationControl, OpTime, Tuning};
use crate::EngineError;

/// Where a task's failed entries are kept (inside its spool directory, which the agent keeps under
/// its data dir).
fn failed_dir(cfg: &MigrationConfig) -> PathBuf {
    cfg.spool_dir.join("failed-entries")
}

/// Saves `entry` as one canonical extended JSON line (`<ts>.jsonl`, the `replay` input format) and as
/// raw BSON (`<ts>.bson`, byte-exact even for strings that are not valid UTF-8); returns the path to
/// give the operator.
pub(crate) fn save_failed_entry(
    cfg: &MigrationConfig,
    entry: &RawDocumentBuf,
) -> std::io::Result<PathBuf> {
    let dir = failed_dir(cfg);
    std::fs::create_dir_all(&dir)?;
    let ts = entry_ts(entry)
        .map(|t| format!("{}-{}", t.seconds, t.increment))
        .unwrap_or_else(|_| "unknown".into());
    let bson_path = dir.join(format!("{ts}.bson"));
    std::fs::write(&bson_path, entry.as_bytes())?;
    match Document::try_from(&**entry) {
        Ok(doc) => {
            let json_path = dir.join(format!("{ts}.jsonl"));
            let line = Bson::Document(doc).into_canonical_extjson().to_string();
            std::fs::write(&json_path, format!("{line}\n"))?;
            Ok(json_path)
        }
        Err(_) => Ok(bson_path),
    }
}

/// Reads entries from a file: one canonical extended JSON document per line (`.jsonl`), or
/// concatenated BSON documents (`.bson`, byte-exact).
pub fn read_entries(path: &Path) -> Result<Vec<RawDocumentBuf>, EngineError> {
    let bytes = std::fs::read(path)
        .map_err(|e| EngineError::Config(format!("cannot read {}: {e}", path.display())))?;
    if path.extension().is_some_and(|e| e == "bson") {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let len = bytes
                .get(at..at + 4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n >= 5 && at + n <= bytes.len())
                .ok_or_else(|| {
                    EngineError::Config(format!(
                        "{}: truncated or corrupt BSON at byte {at}",
                        path.display()
                    ))
                })?;
            let doc = RawDocumentBuf::from_bytes(bytes[at..at + len].to_vec()).map_err(|e| {
                EngineError::Config(format!("{}: bad BSON at byte {at}: {e}", path.display()))
            })?;
            out.push(doc);
            at += len;
        }
        return Ok(out);
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| EngineError::Config(format!("{} is not UTF-8 text: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            EngineError::Config(format!("{} line {}: not JSON: {e}", path.display(), i + 1))
        })?;
        let doc = match Bson::try_from(value) {
            Ok(Bson::Document(d)) => d,
            Ok(_) => {
                return Err(EngineError::Config(format!(
                    "{} line {}: not a document",
                    path.display(),
                    i + 1
                )))
            }
            Err(e) => {
                return Err(EngineError::Config(format!(
                    "{} line {}: not extended JSON: {e}",
                    path.display(),
                    i + 1
                )))
            }
        };
        out.push(
            RawDocumentBuf::try_from(&doc).map_err(|e| {
                EngineError::Config(format!("{} line {}: {e}", path.display(), i + 1))
            })?,
        );
    }
    Ok(out)
}

/// What `replay` did with one entry.
#[derive(Clone, Debug)]
pub struct Replayed {
    pub ts: String,
    pub op: String,
    pub namespace: String,
    pub result: Result<(), String>,
}

/// An applier against `destination` alone (the source side is the destination too: a `$v:2` target
/// missing on the destination is then skipped, as when it is gone from the source).
pub(crate) async fn standalone(
    destination: &Endpoint,
    databases: &[String],
    copy_end: OpTime,
    apply_workers: usize,
) -> Result<Applier, EngineError> {
    let dst = mongo::connect(destination, Side::Destination).await?;
    let zero = OpTime {
        seconds: 0,
        increment: 0,
    };
    let control = MigrationControl::new();
    let ctx = Arc::new(Ctx {
        cfg: MigrationConfig {
            task_id: "replay".into(),
            source: destination.clone(),
            destination: destination.clone(),
            databases: databases.to_vec(),
            spool_dir: PathBuf::new(),
            tuning: Tuning {
                apply_workers,
                ..Tuning::default()
            },
        },
        src: dst.clone(),
        dst,
        cancel: CancellationToken::new(),
        control: control.clone(),
        failure: Mutex::new(None),
        events: mpsc::channel(1024).0,
        state: Mutex::new(EngineState::new()),
        filter: NsFilter::new(databases),
        start_ts: zero,
        live: Default::default(),
        spool: Mutex::new(None),
        max_batch_docs: crate::BATCH_DOC_BUDGET,
        max_batch_bytes: crate::BATCH_BYTE_BUDGET,
        retries: Arc::new(crate::retries::Retries::detached()),
        copy_limit: Limiter::new(control.clone(), Direction::Copy),
        apply_limit: Limiter::new(control.clone(), Direction::Apply),
    });
    Ok(Applier::new(ctx, zero, copy_end))
}

/// Applies `entries` to `destination` in order with the engine's rules, one entry at a time, and says
/// what happened to each; stops at the first entry that fails. `databases` selects like a task's
/// database list (empty: every non-system database).
pub async fn replay(
    destination: &Endpoint,
    databases: &[String],
    entries: &[RawDocumentBuf],
) -> Result<Vec<Replayed>, EngineError> {
    let zero = OpTime {
        seconds: 0,
        increment: 0,
    };
    let mut applier = standalone(
        destination,
        databases,
        zero,
        Tuning::default().apply_workers,
    )
    .await?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let ts = entry_ts(e).map(|t| t.to_string()).unwrap_or("?".into());
        let op = e.get_str("op").unwrap_or("?").to_string();
        let namespace = e.get_str("ns").unwrap_or("?").to_string();
        let result = applier
            .apply_batch(std::slice::from_ref(e), zero)
            .await
            .map_err(|err| err.to_string());
        let failed = result.is_err();
        out.push(Replayed {
            ts,
            op,
            namespace,
            result,
        });
        if failed {
            break;
        }
    }
    Ok(out)
}

/// Applies oplog entries (as read from `local.oplog.rs`) to `destination` with the engine's idempotent
/// rules, in order, as one batch. For tests; not part of the stable API.
#[doc(hidden)]
pub async fn apply_oplog_entries(
    destination: &Endpoint,
    databases: &[String],
    entries: &[Document],
) -> Result<(), EngineError> {
    let mut raws = Vec::with_capacity(entries.len());
    for e in entries {
        raws.push(
            RawDocumentBuf::try_from(e)
                .map_err(|err| EngineError::Config(format!("entry is not valid BSON: {err}")))?,
        );
    }
    apply_raw_oplog_entries(destination, databases, &raws).await
}

/// Like `apply_oplog_entries` for raw entries (byte-exact, e.g. strings that are not valid UTF-8).
#[doc(hidden)]
pub async fn apply_raw_oplog_entries(
    destination: &Endpoint,
    databases: &[String],
    entries: &[RawDocumentBuf],
) -> Result<(), EngineError> {
    let zero = OpTime {
        seconds: 0,
        increment: 0,
    };
    apply_oplog_entries_tuned(
        destination,
        databases,
        entries,
        zero,
        Tuning::default().apply_workers,
    )
    .await
}

/// Like `apply_raw_oplog_entries` with a copy-end timestamp (entries at or before it replay the copy
/// window) and a number of apply workers.
#[doc(hidden)]
pub async fn apply_oplog_entries_tuned(
    destination: &Endpoint,
    databases: &[String],
    entries: &[RawDocumentBuf],
    copy_end: OpTime,
    apply_workers: usize,
) -> Result<(), EngineError> {
    let zero = OpTime {
        seconds: 0,
        increment: 0,
    };
    let mut applier = standalone(destination, databases, copy_end, apply_workers).await?;
    applier.apply_batch(entries, zero).await
}
