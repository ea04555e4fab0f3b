//! Wiring: opens the store, builds both ferry services (each behind its bearer-token interceptor), health and
//! reflection (v1 and v1alpha), optional TLS, and serves them on one listener until `shutdown` resolves. Shutdown
//! order: stop accepting RPCs and cancel sessions and watches, wait for them, flush sled.

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
use crate::auth::bearer;
use crate::config::Config;
use crate::coordinator::{Coordinator, Settings};
use crate::migration_api::MigrationApi;

/// Runs the coordinator on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir)).await??;
    let cancel = CancellationToken::new();
    let settings = Settings {
        heartbeat_interval: config.heartbeat_interval,
        list_databases_timeout: config.list_databases_timeout,
    };
    let core = Arc::new(Coordinator::new(store.clone(), settings, cancel.clone()));
    let recovered = core.db(|s| s.list_tasks()).await?.len();
    tracing::info!(tasks = recovered, data_dir = %config.data_dir.display(), "state recovered");

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<MigrationServiceServer<MigrationApi>>()
        .await;
    health_reporter
        .set_serving::<AgentServiceServer<AgentApi>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let migration = MigrationServiceServer::with_interceptor(
        MigrationApi {
            core: Arc::clone(&core),
        },
        bearer(config.operator_token.clone(), "operator"),
    );
    let agent = AgentServiceServer::with_interceptor(
        AgentApi {
            core: Arc::clone(&core),
        },
        bearer(config.agent_token.clone(), "agent"),
    );

    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let mut tls_config =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            tls_config = tls_config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(tls_config)?;
    }
    let addr = listener.local_addr()?;
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(migration)
        .add_service(agent);
    tracing::info!(%addr, tls = config.tls.is_some(), "serving");

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
