//! The audit log: every mutating operator call, enrollment, revocation and authentication failure, written
//! durably to sled (and, optionally, appended as one JSON line to a file for log shippers) before the call
//! returns. Authentication failures are rate-limited (an attacker must not fill the disk): beyond the budget they
//! are counted, and the count is written with the next recorded failure.
//!
//! Must not: record a secret (callers pass ids and reasons, never tokens or passwords).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ferry_store::{AuditRecord, Store};

use crate::convert::now_ms;
use crate::error::ServiceError;

/// Recorded authentication failures per second (burst: twice that).
const FAILURES_PER_SECOND: f64 = 20.0;

/// One event to record.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub principal: String,
    pub peer: String,
    pub method: &'static str,
    pub targets: Vec<String>,
    pub code: tonic::Code,
    pub detail: String,
}

/// A token bucket.
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` tokens if there are enough.
    pub(crate) fn try_take(&mut self, n: f64) -> bool {
        self.refill();
        if self.tokens >= n {
            self.tokens -= n;
            return true;
        }
        false
    }

    /// Takes `n` tokens (going into debt) and returns how long to wait before the debt is paid.
    pub(crate) fn take(&mut self, n: f64) -> std::time::Duration {
        self.refill();
        self.tokens -= n;
        if self.tokens >= 0.0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64(-self.tokens / self.rate)
    }
}

/// Writes audit records.
pub struct Auditor {
    store: Store,
    file: Option<Mutex<std::fs::File>>,
    failures: Mutex<Bucket>,
    suppressed: AtomicU64,
}

impl Auditor {
    /// `file`: an optional JSON-lines copy (appended, created 0600 when missing).
    pub fn new(store: Store, file: Option<&Path>) -> anyhow::Result<Self> {
        let file = match file {
            None => None,
            Some(path) => {
                let mut options = std::fs::OpenOptions::new();
                options.append(true).create(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let f = options.open(path).map_err(|e| {
                    anyhow::anyhow!("opening the audit log {}: {e}", path.display())
                })?;
                Some(Mutex::new(f))
            }
        };
        Ok(Self {
            store,
            file,
            failures: Mutex::new(Bucket::new(FAILURES_PER_SECOND, FAILURES_PER_SECOND * 2.0)),
            suppressed: AtomicU64::new(0),
        })
    }

    /// Records `entry` durably. A failure to record is logged and returned.
    pub async fn record(&self, entry: AuditEntry) -> Result<(), ServiceError> {
        let record = AuditRecord {
            seq: 0,
            time_ms: now_ms(),
            principal: entry.principal,
            peer: entry.peer,
            method: entry.method.to_owned(),
            targets: entry.targets,
            code: code_name(entry.code).to_owned(),
            detail: truncate(&entry.detail, 500),
        };
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.append_audit(record))
            .await
            .map_err(|e| ServiceError::Internal(format!("audit task: {e}")))?
            .map_err(|e| {
                tracing::error!(error = %e, "could not write an audit record");
                ServiceError::from(e)
            })?;
        if let Some(file) = &self.file {
            let line = serde_json::to_string(&stored).unwrap_or_default();
            let mut f = file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(error) = writeln!(f, "{line}") {
                tracing::error!(%error, "could not append to the audit log file");
            }
        }
        Ok(())
    }

    /// Records an authentication or authorization failure, within the failure budget.
    pub async fn record_failure(&self, mut entry: AuditEntry) {
        let allowed = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_take(1.0);
        if !allowed {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            entry.detail = format!(
                "{} (+{suppressed} similar failures not recorded: over {FAILURES_PER_SECOND}/s)",
                entry.detail
            );
        }
        let _ = self.record(entry).await;
    }
}

impl crate::coordinator::Coordinator {
    /// ListAuditEvents: oldest first, filtered; the page token is the last seq returned.
    pub async fn list_audit(
        &self,
        req: ferry_proto::v1::ListAuditEventsRequest,
    ) -> Result<ferry_proto::v1::ListAuditEventsResponse, ServiceError> {
        let (size, after) = crate::coordinator::seq_page(req.page_size, &req.page_token)?;
        let ms = |ts: &Option<prost_types::Timestamp>| {
            ts.as_ref()
                .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
        };
        let (start, end) = (ms(&req.start_time), ms(&req.end_time));
        let task = req.task_id;
        let principal = req.principal;
        let mut records = self
            .db(move |s| {
                s.list_audit(after, size + 1, |r| {
                    (task.is_empty() || r.targets.iter().any(|t| t == &task))
                        && (principal.is_empty() || r.principal == principal)
                        && start.is_none_or(|s| r.time_ms >= s)
                        && end.is_none_or(|e| r.time_ms < e)
                })
            })
            .await?;
        let next_page_token = if records.len() > size {
            records.truncate(size);
            records
                .last()
                .map(|r| r.seq.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ferry_proto::v1::ListAuditEventsResponse {
            events: records
                .into_iter()
                .map(|r| ferry_proto::v1::AuditEvent {
                    seq: r.seq,
                    time: Some(crate::convert::timestamp(r.time_ms)),
                    principal: r.principal,
                    peer: r.peer,
                    method: r.method,
                    targets: r.targets,
                    code: r.code,
                    detail: r.detail,
                })
                .collect(),
            next_page_token,
        })
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// "OK", "PERMISSION_DENIED", ...
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refuses_beyond_its_burst_and_charges_debt_as_waiting_time() {
        let mut b = Bucket::new(10.0, 2.0);
        assert!(b.try_take(1.0) && b.try_take(1.0));
        assert!(!b.try_take(1.0));
        let wait = b.take(1.0);
        assert!(wait > std::time::Duration::from_millis(50), "{wait:?}");
    }

    #[test]
    fn long_details_are_cut_on_a_char_boundary() {
        let text = "é".repeat(400);
        let cut = truncate(&text, 501);
        assert!(cut.len() <= 504 && cut.ends_with('…'));
    }
}
