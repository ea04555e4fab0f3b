//! Prometheus metrics of the agent (OpenMetrics text at `/metrics` on `--metrics-listen`, off by default):
//! process RSS, session state, running tasks, and per task the documents and bytes copied, oplog entries read and
//! applied, retries and errors (counters), lag and spool bytes (gauges). Counters follow the engine's cumulative
//! figures: they only grow, also across an engine restart that resumes from a lower checkpoint.
//!
//! Labels are bounded: task ids (tasks of this agent) and a fixed set of error kinds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    task_id: String,
    kind: String,
}

/// Error kinds counted (bounded).
pub const ERROR_KINDS: [&str; 3] = ["failed", "command_error", "report_rejected"];

/// The agent's metrics.
pub struct AgentMetrics {
    registry: Registry,
    rss: Gauge<i64, AtomicI64>,
    connected: Gauge<i64, AtomicI64>,
    running: Gauge<i64, AtomicI64>,
    documents: Family<TaskLabels, Counter>,
    bytes: Family<TaskLabels, Counter>,
    read: Family<TaskLabels, Counter>,
    applied: Family<TaskLabels, Counter>,
    retries: Family<TaskLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    lag: Family<TaskLabels, Gauge<f64, AtomicU64>>,
    spool: Family<TaskLabels, Gauge<i64, AtomicI64>>,
    /// Last cumulative figures seen per task (documents, bytes, read, applied, retries), to count only growth.
    last: Mutex<HashMap<String, [u64; 5]>>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let rss = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "ferry_agent_resident_memory_bytes",
            "Resident set size of the agent process",
            rss.clone(),
        );
        let connected = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "ferry_agent_session_connected",
            "1 while a session with the coordinator is open",
            connected.clone(),
        );
        let running = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "ferry_agent_tasks_running",
            "Migrations running in this agent",
            running.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<TaskLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let documents = counter(
            &mut registry,
            "ferry_agent_documents_copied",
            "Documents copied",
        );
        let bytes = counter(&mut registry, "ferry_agent_bytes_copied", "Bytes copied");
        let read = counter(
            &mut registry,
            "ferry_agent_oplog_entries_read",
            "Oplog entries read from the source",
        );
        let applied = counter(
            &mut registry,
            "ferry_agent_oplog_entries_applied",
            "Oplog entries applied",
        );
        let retries = counter(
            &mut registry,
            "ferry_agent_retries",
            "Transient failures retried",
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("ferry_agent_errors", "Task errors by kind", errors.clone());
        let lag = Family::<TaskLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "ferry_agent_lag_seconds",
            "Replication lag of the task",
            lag.clone(),
        );
        let spool = Family::<TaskLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "ferry_agent_spool_bytes",
            "Bytes in the task's oplog spool",
            spool.clone(),
        );
        Self {
            registry,
            rss,
            connected,
            running,
            documents,
            bytes,
            read,
            applied,
            retries,
            errors,
            lag,
            spool,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// A progress snapshot of `task_id`'s engine.
    pub fn progress(&self, task_id: &str, p: &ferry_engine::ProgressSnapshot) {
        let labels = TaskLabels {
            task_id: task_id.to_owned(),
        };
        let now = [
            p.documents_copied,
            p.bytes_copied,
            p.oplog_entries_read,
            p.oplog_entries_applied,
            p.retries,
        ];
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = last.entry(task_id.to_owned()).or_insert([0; 5]);
        for (i, family) in [
            &self.documents,
            &self.bytes,
            &self.read,
            &self.applied,
            &self.retries,
        ]
        .into_iter()
        .enumerate()
        {
            // Only growth counts: a resumed engine may restart below what was already counted.
            if now[i] > before[i] {
                family.get_or_create(&labels).inc_by(now[i] - before[i]);
                before[i] = now[i];
            } else {
                drop(family.get_or_create(&labels));
            }
        }
        self.lag.get_or_create(&labels).set(p.lag_seconds);
        self.spool
            .get_or_create(&labels)
            .set(i64::try_from(p.spool_bytes).unwrap_or(i64::MAX));
    }

    /// Counts an error of `task_id`; `kind` is one of [`ERROR_KINDS`].
    pub fn error(&self, task_id: &str, kind: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                task_id: task_id.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Whether a session is open.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// Migrations running.
    pub fn set_running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Encodes everything (refreshing the RSS first).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        if let Some(rss) = resident_bytes() {
            self.rss.set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The process's resident set size from `/proc/self/status` (`VmRSS`, kB); `None` where unavailable.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Serves `/metrics` on `listener` until `stop` is cancelled; `running` counts the tasks running here.
pub async fn serve(
    metrics: Arc<AgentMetrics>,
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
    running: impl Fn() -> usize + Clone + Send + Sync + 'static,
) {
    use axum::response::IntoResponse;
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            let running = running.clone();
            async move {
                metrics.set_running(running());
                match metrics.render() {
                    Ok(text) => (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(_) => (
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        "metrics unavailable",
                    )
                        .into_response(),
                }
            }
        }),
    );
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(%error, "the metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_only_grow_even_when_a_resumed_engine_restarts_lower() {
        let m = AgentMetrics::new();
        let mut p = ferry_engine::ProgressSnapshot {
            documents_copied: 100,
            ..Default::default()
        };
        m.progress("task-0123456789ab", &p);
        p.documents_copied = 40; // resumed from an older checkpoint
        m.progress("task-0123456789ab", &p);
        p.documents_copied = 150;
        m.progress("task-0123456789ab", &p);
        let text = m.render().unwrap();
        assert!(
            text.contains("ferry_agent_documents_copied_total{task_id=\"task-0123456789ab\"} 150"),
            "{text}"
        );
        assert!(text.contains("ferry_agent_resident_memory_bytes"));
    }
}
