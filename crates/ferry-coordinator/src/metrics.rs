//! Prometheus metrics of the coordinator (OpenMetrics text at `/metrics` on `--metrics-listen`): tasks by state,
//! per-task progress, rates, lag, spool, ETAs and verification (read from the stored tasks at scrape time), agents
//! by state, RPCs by method and code with latency histograms (a tower layer), and task events by kind.
//!
//! Label sets are bounded: task ids (as many as tasks), states, phases, tenants, method names from the service
//! descriptors (anything else is "other"), gRPC code names, event kinds. Never document ids or free text.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use ferry_proto::v1 as pb;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use prost::Message;

use crate::coordinator::Coordinator;
use crate::history::phase_name;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskInfoLabels {
    task_id: String,
    tenant: String,
    state: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    service: String,
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Per-task gauges, by metric name suffix (after `ferry_task_`).
const TASK_GAUGES: [(&str, &str); 22] = [
    ("paused", "1 while the task is paused"),
    ("agent_connected", "1 while the task's agent is connected"),
    ("documents_copied", "Documents copied"),
    ("documents_estimated", "Documents to copy (estimate)"),
    ("bytes_copied", "Bytes copied"),
    ("bytes_estimated", "Bytes to copy (estimate)"),
    ("oplog_entries_read", "Oplog entries read from the source"),
    (
        "oplog_entries_applied",
        "Oplog entries applied to the destination",
    ),
    (
        "lag_seconds",
        "Seconds between the source's newest oplog entry and the last applied",
    ),
    ("spool_bytes", "Bytes in the agent's oplog spool"),
    ("spool_cap_bytes", "Cap of the agent's oplog spool"),
    ("copy_documents_per_second", "Copy rate over the last 10 s"),
    ("copy_bytes_per_second", "Copy rate over the last 10 s"),
    ("apply_entries_per_second", "Apply rate over the last 10 s"),
    (
        "source_entries_per_second",
        "The source's oplog write rate over the last 10 s",
    ),
    (
        "copy_eta_seconds",
        "Seconds until the copy ends; -1 unknown",
    ),
    (
        "catch_up_eta_seconds",
        "Seconds until the lag is caught up; -1 unknown or not converging",
    ),
    (
        "spool_full_eta_seconds",
        "Seconds until the spool is full; -1 when it does not grow",
    ),
    (
        "oplog_headroom_seconds",
        "Seconds until the source oplog rolls past the resume point; -1 unknown",
    ),
    (
        "verification_documents_compared",
        "Documents compared by the newest verification run",
    ),
    (
        "verification_mismatches",
        "Confirmed mismatches of the newest verification run",
    ),
    ("retries", "Transient failures retried"),
];

/// The coordinator's metrics.
pub struct Metrics {
    registry: Registry,
    tasks: Family<StateLabels, Gauge>,
    task_info: Family<TaskInfoLabels, Gauge>,
    task_gauges: Vec<(&'static str, Family<TaskLabels, FloatGauge>)>,
    agents: Family<StateLabels, Gauge>,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabels, Histogram>,
    task_events: Family<KindLabels, Counter>,
    methods: HashSet<(String, String)>,
    /// One scrape at a time (the per-task families are refilled, then encoded).
    scrape: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let tasks = Family::<StateLabels, Gauge>::default();
        registry.register("ferry_tasks", "Tasks by state", tasks.clone());
        let task_info = Family::<TaskInfoLabels, Gauge>::default();
        registry.register(
            "ferry_task_info",
            "1 per task, with its tenant, state and phase",
            task_info.clone(),
        );
        let mut task_gauges = Vec::new();
        for (name, help) in TASK_GAUGES {
            let family = Family::<TaskLabels, FloatGauge>::default();
            registry.register(format!("ferry_task_{name}"), help, family.clone());
            task_gauges.push((name, family));
        }
        let agents = Family::<StateLabels, Gauge>::default();
        registry.register(
            "ferry_agents",
            "Enrolled agents: connected, disconnected, revoked",
            agents.clone(),
        );
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "ferry_rpc_requests",
            "gRPC calls by method and code",
            rpc_requests.clone(),
        );
        let rpc_duration = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.5, 14))
        });
        registry.register(
            "ferry_rpc_duration_seconds",
            "Time to the response (for streams: to the first response)",
            rpc_duration.clone(),
        );
        let task_events = Family::<KindLabels, Counter>::default();
        registry.register(
            "ferry_task_events",
            "Task history events recorded, by kind",
            task_events.clone(),
        );
        Self {
            registry,
            tasks,
            task_info,
            task_gauges,
            agents,
            rpc_requests,
            rpc_duration,
            task_events,
            methods: known_methods(),
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// Counts a task event.
    pub fn task_event(&self, kind: &str) {
        self.task_events
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Records one RPC by its path (`/package.Service/Method`).
    pub fn rpc(&self, path: &str, code: tonic::Code, elapsed: std::time::Duration) {
        let (service, method) = match path.trim_start_matches('/').split_once('/') {
            Some((service, method))
                if self
                    .methods
                    .contains(&(service.to_owned(), method.to_owned())) =>
            {
                (
                    service.rsplit('.').next().unwrap_or(service).to_owned(),
                    method.to_owned(),
                )
            }
            _ => ("other".to_owned(), "other".to_owned()),
        };
        self.rpc_duration
            .get_or_create(&MethodLabels {
                service: service.clone(),
                method: method.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.rpc_requests
            .get_or_create(&RpcLabels {
                service,
                method,
                code: crate::audit::code_name(code).to_owned(),
            })
            .inc();
    }

    /// Refills the task and agent families from the store and encodes everything.
    pub async fn render(&self, core: &Coordinator) -> Result<String, crate::error::ServiceError> {
        let _one = self.scrape.lock().await;
        let (tasks, agents) = core.db(|s| Ok((s.list_tasks()?, s.list_agents()?))).await?;
        self.tasks.clear();
        for state in ferry_core::TaskState::ALL {
            let n = tasks.iter().filter(|t| t.state == state).count();
            self.tasks
                .get_or_create(&StateLabels {
                    state: state.name().to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.task_info.clear();
        for (_, family) in &self.task_gauges {
            family.clear();
        }
        for task in &tasks {
            self.task_info
                .get_or_create(&TaskInfoLabels {
                    task_id: task.id.to_string(),
                    tenant: task.spec.tenant.clone(),
                    state: task.state.name().to_owned(),
                    phase: phase_name(task.phase).to_owned(),
                })
                .set(1);
            let connected = task
                .agent_id
                .as_ref()
                .is_some_and(|a| core.registry.is_connected(a));
            let progress = pb::Progress::decode(task.progress.as_slice()).unwrap_or_default();
            let verification = task
                .verification
                .as_ref()
                .and_then(|v| pb::Verification::decode(v.report.as_slice()).ok())
                .unwrap_or_default();
            let mismatches = verification.confirmed.map_or(0, |c| {
                c.missing_on_destination + c.extra_on_destination + c.different + c.metadata
            });
            let copy_eta = match progress.eta_seconds {
                s if s >= 0 => s as f64,
                _ => -1.0,
            };
            for (name, family) in &self.task_gauges {
                let value = match *name {
                    "paused" => f64::from(u8::from(task.paused)),
                    "agent_connected" => f64::from(u8::from(connected)),
                    "documents_copied" => progress.documents_copied as f64,
                    "documents_estimated" => progress.documents_estimated as f64,
                    "bytes_copied" => progress.bytes_copied as f64,
                    "bytes_estimated" => progress.bytes_estimated as f64,
                    "oplog_entries_read" => progress.oplog_entries_read as f64,
                    "oplog_entries_applied" => progress.oplog_entries_applied as f64,
                    "lag_seconds" => progress.lag_seconds,
                    "spool_bytes" => progress.spool_bytes as f64,
                    "spool_cap_bytes" => progress.spool_cap_bytes as f64,
                    "copy_documents_per_second" => progress.documents_per_second,
                    "copy_bytes_per_second" => progress.bytes_per_second,
                    "apply_entries_per_second" => progress.apply_entries_per_second,
                    "source_entries_per_second" => progress.source_entries_per_second,
                    "copy_eta_seconds" => copy_eta,
                    "catch_up_eta_seconds" => progress.catch_up_eta_seconds as f64,
                    "spool_full_eta_seconds" => progress.spool_full_eta_seconds as f64,
                    "oplog_headroom_seconds" => progress.oplog_headroom_seconds as f64,
                    "verification_documents_compared" => verification.documents_compared as f64,
                    "verification_mismatches" => mismatches as f64,
                    "retries" => progress.retries as f64,
                    _ => continue,
                };
                family
                    .get_or_create(&TaskLabels {
                        task_id: task.id.to_string(),
                    })
                    .set(value);
            }
        }
        let connected = agents
            .iter()
            .filter(|a| a.revoked_ms.is_none() && core.registry.is_connected(&a.agent_id))
            .count();
        let revoked = agents.iter().filter(|a| a.revoked_ms.is_some()).count();
        for (state, n) in [
            ("connected", connected),
            ("disconnected", agents.len() - connected - revoked),
            ("revoked", revoked),
        ] {
            self.agents
                .get_or_create(&StateLabels {
                    state: state.to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| crate::error::ServiceError::Internal(format!("encoding metrics: {e}")))?;
        Ok(out)
    }
}

/// `(package.Service, Method)` of every ferry and health/reflection method, from the descriptor sets.
fn known_methods() -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    for set in [
        ferry_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = format!("{package}.{}", service.name.unwrap_or_default());
                for method in service.method {
                    out.insert((name.clone(), method.name.unwrap_or_default()));
                }
            }
        }
    }
    out
}

/// A tower layer timing every gRPC call and counting it by method and code.
#[derive(Clone)]
pub struct RpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let started = Instant::now();
        let metrics = Arc::clone(&self.metrics);
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await;
            // Errors travel as trailers-only responses (grpc-status in the headers); a success's status comes in
            // the trailers, after this point: no grpc-status header means OK.
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.rpc(&path, code, started.elapsed());
            response
        })
    }
}

/// Serves `/metrics` on `listener` until `stop` is cancelled.
pub async fn serve(
    core: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) {
    use axum::response::IntoResponse;
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let core = Arc::clone(&core);
            async move {
                match core.metrics.render(&core).await {
                    Ok(text) => ([(http::header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
                    Err(error) => {
                        tracing::warn!(%error, "metrics scrape failed");
                        (
                            http::StatusCode::INTERNAL_SERVER_ERROR,
                            "metrics unavailable (see the coordinator log)",
                        )
                            .into_response()
                    }
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

/// The content type of the exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
