//! The gRPC surface: thin services over the domain, plus health and reflection.

mod audit;
mod authorize;
mod backups;
mod billing;
mod nodes;
mod observe;
mod plans;
mod pools;
mod snapshots;
mod status;
mod tenants;
mod vps;

use std::net::SocketAddr;
use std::sync::Arc;

use paddock_proto::v1;
use tonic::transport::Server;

pub use self::observe::{audit_target, AuditTarget};
use crate::service::Controller;

/// Why the gRPC server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves every controller service on `listener` until `shutdown` resolves.
pub async fn serve(
    controller: Arc<Controller>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    use v1::agent_registry_server::AgentRegistryServer;
    use v1::audit_service_server::AuditServiceServer;
    use v1::backup_service_server::BackupServiceServer;
    use v1::billing_service_server::BillingServiceServer;
    use v1::node_service_server::NodeServiceServer;
    use v1::plan_service_server::PlanServiceServer;
    use v1::pool_service_server::PoolServiceServer;
    use v1::snapshot_service_server::SnapshotServiceServer;
    use v1::tenant_service_server::TenantServiceServer;
    use v1::token_service_server::TokenServiceServer;
    use v1::vps_service_server::VpsServiceServer;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<VpsServiceServer<vps::VpsApi>>()
        .await;
    health_reporter
        .set_serving::<TenantServiceServer<tenants::TenantApi>>()
        .await;
    health_reporter
        .set_serving::<AgentRegistryServer<nodes::RegistryApi>>()
        .await;
    // Both reflection versions: grpcurl speaks v1, while Python's grpcio-reflection,
    // grpcui, Postman and older grpcurl speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let c = || controller.clone();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &controller.pki.cert_pem,
            &controller.pki.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(
            &controller.pki.ca_cert_pem,
        ))
        // Users authenticate with tokens; only agents present certificates.
        .client_auth_optional(true);
    Server::builder()
        .tls_config(tls)?
        .layer(paddock_telemetry::RpcLayer::new(observe::Observer {
            controller: controller.clone(),
        }))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(VpsServiceServer::new(vps::VpsApi { controller: c() }))
        .add_service(TenantServiceServer::new(tenants::TenantApi {
            controller: c(),
        }))
        .add_service(TokenServiceServer::new(tenants::TokenApi {
            controller: c(),
        }))
        .add_service(PlanServiceServer::new(plans::PlanApi { controller: c() }))
        .add_service(NodeServiceServer::new(nodes::NodeApi { controller: c() }))
        .add_service(PoolServiceServer::new(pools::PoolApi { controller: c() }))
        .add_service(AgentRegistryServer::new(nodes::RegistryApi {
            controller: c(),
        }))
        .add_service(BillingServiceServer::new(billing::BillingApi {
            controller: c(),
        }))
        .add_service(AuditServiceServer::new(audit::AuditApi { controller: c() }))
        .add_service(SnapshotServiceServer::new(snapshots::SnapshotApi {
            controller: c(),
        }))
        .add_service(BackupServiceServer::new(backups::BackupApi {
            controller: c(),
        }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;
    Ok(())
}
