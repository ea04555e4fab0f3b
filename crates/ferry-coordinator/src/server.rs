//! Wiring: opens the store, the agent CA and the audit log, builds both ferry services (they authenticate each
//! call themselves), health and optional reflection (v1 and v1alpha), TLS (client certificates optional: agents
//! present theirs, operators may), HTTP/2 limits, and serves them on one listener until `shutdown` resolves.
//! Plaintext is refused unless the listener is on loopback. A janitor removes stale join tokens and agents.
//! Shutdown order: stop accepting RPCs and cancel sessions and watches, wait for them, flush sled.

use std::future::Future;
use std::sync::Arc;

use ferry_proto::v1::agent_service_server::AgentServiceServer;
use ferry_proto::v1::migration_service_server::MigrationServiceServer;
use ferry_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::agent_api::AgentApi;
use crate::audit::Auditor;
use crate::ca::AgentCa;
use crate::config::Config;
use crate::coordinator::{Coordinator, Settings, Trust};
use crate::migration_api::MigrationApi;
use crate::principal::Principals;

/// Largest message either service accepts.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How often the janitor runs.
const JANITOR_PERIOD: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs the coordinator on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_metrics(config, listener, None, shutdown).await
}

/// Like [`run`], also serving Prometheus metrics at `/metrics` on `metrics` when given.
pub async fn run_with_metrics(
    config: Config,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    if config.tls.is_none() && !addr.ip().is_loopback() {
        anyhow::bail!(
            "plaintext would send tokens and passwords in clear over {addr}: plaintext is only allowed on a \
             loopback address (127.0.0.0/8 or ::1); configure TLS"
        );
    }
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir)).await??;
    let ca = AgentCa::load_or_create(&config.data_dir, config.agent_cert_ttl)?;
    let principals = match &config.principals {
        Some(p) => p.clone(),
        None => {
            anyhow::ensure!(
                config.operator_token.is_set(),
                "no operator token and no principals file: nobody could call the operator API"
            );
            Principals::single_admin(&config.operator_token)
        }
    };
    let auditor = Auditor::new(store.clone(), config.audit_log.as_deref())?;
    let cancel = CancellationToken::new();
    let settings = Settings {
        heartbeat_interval: config.heartbeat_interval,
        list_databases_timeout: config.list_databases_timeout,
        plaintext: config.tls.is_none(),
        allow_private_sources: config.allow_private_sources,
        max_watchers: config.max_watchers,
    };
    let agent_ca_pem = ca.pem().as_bytes().to_vec();
    let trust = Trust {
        ca,
        principals,
        auditor,
    };
    let core = Arc::new(Coordinator::new(
        store.clone(),
        settings,
        trust,
        cancel.clone(),
    ));
    let recovered = core.db(|s| s.list_tasks()).await?.len();
    tracing::info!(tasks = recovered, data_dir = %config.data_dir.display(), "state recovered");

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<MigrationServiceServer<MigrationApi>>()
        .await;
    health_reporter
        .set_serving::<AgentServiceServer<AgentApi>>()
        .await;
    let reflection = if config.reflection {
        Some((
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()?,
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1alpha()?,
        ))
    } else {
        None
    };
    let (reflection_v1, reflection_v1alpha) = match reflection {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    };

    let migration = MigrationServiceServer::new(MigrationApi {
        core: Arc::clone(&core),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let agent = AgentServiceServer::new(AgentApi {
        core: Arc::clone(&core),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let mut builder = Server::builder()
        .layer(crate::metrics::RpcMetricsLayer(std::sync::Arc::clone(
            &core.metrics,
        )))
        .max_concurrent_streams(128)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .http2_max_header_list_size(16 * 1024)
        // Unary calls; a stream's timer ends when its response starts.
        .timeout(std::time::Duration::from_secs(120));
    if let Some(tls) = &config.tls {
        // Agents present certificates from the agent CA; operators may present theirs (their CA appended).
        let mut roots = agent_ca_pem;
        if let Some(ca) = &tls.client_ca {
            roots.push(b'\n');
            roots.extend_from_slice(ca);
        }
        let tls_config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&tls.cert, &tls.key))
            .client_ca_root(Certificate::from_pem(roots))
            .client_auth_optional(true)
            .timeout(std::time::Duration::from_secs(10));
        builder = builder.tls_config(tls_config)?;
    }
    let router = builder
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(migration)
        .add_service(agent);
    tracing::info!(%addr, tls = config.tls.is_some(), reflection = config.reflection, "serving");

    if let Some(metrics) = metrics {
        tracing::info!(addr = %metrics.local_addr()?, "serving metrics at /metrics");
        core.tracker.spawn(crate::metrics::serve(
            Arc::clone(&core),
            metrics,
            cancel.clone(),
        ));
    }
    let janitor_core = Arc::clone(&core);
    core.tracker.spawn(async move {
        loop {
            match janitor_core.clean_up(crate::convert::now_ms()).await {
                Ok((0, 0)) => {}
                Ok((tokens, agents)) => {
                    tracing::info!(tokens, agents, "removed stale join tokens and agents")
                }
                Err(error) => tracing::warn!(%error, "cleaning up stale records failed"),
            }
            tokio::select! {
                _ = janitor_core.cancel.cancelled() => return,
                _ = tokio::time::sleep(JANITOR_PERIOD) => {}
            }
        }
    });

    let stop = cancel.clone();
    let registry_core = Arc::clone(&core);
    let shutdown_then_cancel = async move {
        shutdown.await;
        tracing::info!("shutting down");
        health_reporter
            .set_not_serving::<MigrationServiceServer<MigrationApi>>()
            .await;
        stop.cancel();
        registry_core.registry.cancel_all();
    };
    let served = router
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown_then_cancel)
        .await;
    cancel.cancel();
    core.tracker.close();
    core.tracker.wait().await;
    tokio::task::spawn_blocking(move || store.flush()).await??;
    tracing::info!("stopped");
    served?;
    Ok(())
}
