//! The Paddock node agent: turns the controller's desired VPSes into real
//! system containers on this node and reports what exists.

pub mod applied;
pub mod bounded;
pub mod convert;
pub mod fault;
pub mod fsutil;
pub mod metering;
pub mod metrics;
pub mod network;
pub mod pki;
pub mod registration;
pub mod runtime;
pub mod service;
pub mod template;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use paddock_config::{AgentConfig, ProcViewKind};
use paddock_proto::v1::node_agent_server::NodeAgentServer;

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("node identity: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("locating the paddock-agent executable: {0}")]
    Executable(std::io::Error),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("usage metering: {0}")]
    Metering(#[from] metering::MeteringError),
    #[error("VPS networking: {0}")]
    Network(#[from] network::NetworkError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("backup store: {0}")]
    BackupStore(#[from] runtime::storage::s3::S3Error),
}

/// Re-adopts existing VPSes, serves the controller, registers and heartbeats
/// until `shutdown` resolves. VPSes keep running when the agent stops.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    // First: a bucket whose secret cannot be read is a config error to stop on, not a failure
    // of the first backup.
    let backup_store = runtime::storage::backup_store::BackupStore::from_config(&config)?;
    let runtime = Arc::new(runtime::Runtime::new(runtime::RuntimeConfig {
        state_dir: config.state_dir.clone(),
        cgroup_parent: config.cgroup_parent.clone(),
        stop_grace: Duration::from_secs(u64::from(config.stop_grace_secs)),
        start_timeout: Duration::from_secs(u64::from(config.start_timeout_secs)),
        helper_binary: std::env::current_exe().map_err(AgentError::Executable)?,
        id_base: config.id_base,
        proc_view: match config.proc_view {
            ProcViewKind::Host => runtime::procview::ProcView::Host,
            ProcViewKind::Lxcfs => runtime::procview::ProcView::Lxcfs(
                runtime::procview::LxcfsConfig::new(&config.lxcfs_dir, &config.state_dir),
            ),
        },
    })?);
    // Repair the ports of running VPSes and remove what a crash left behind.
    let running: Vec<(String, u32)> = runtime
        .list()?
        .into_iter()
        .filter_map(|vps| vps.init_pid.map(|pid| (vps.vps_id, pid)))
        .collect();
    let network = Arc::new(
        network::Network::start(
            network::NetworkConfig {
                bridge: config.bridge.clone(),
                uplink: config.uplink.clone(),
                ip_forward: config.ip_forward,
                port_gso_max_bytes: config.port_gso_max_bytes,
                state_dir: config.state_dir.join("network"),
                host_ports_open_to_vps: config.host_ports_open_to_vps.clone(),
                vps_isolation: config.vps_isolation,
            },
            &running,
        )
        .await?,
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: config.listen,
            source,
        })?;
    let node_name = config
        .node_name
        .clone()
        .unwrap_or_else(registration::default_node_name);
    let tls = pki::ensure_enrolled(
        &config.state_dir,
        &node_name,
        config.controller.all(),
        &config.controller_ca_file,
        &config.join_token_file,
        &config.advertised(),
    )
    .await?;
    let server_tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &tls.cert_pem,
            &tls.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(&tls.ca_pem));
    let identity = registration::NodeIdentity {
        node_name,
        address: config.advertised(),
        controllers: config.controller.all().to_vec(),
        tls,
    };
    tracing::info!(node = %identity.node_name, listen = %config.listen, state_dir = %config.state_dir.display(), "agent serving");
    let capacity = registration::capacity(&config.state_dir);
    let meter = Arc::new(metering::Meter::new(
        runtime.clone(),
        Some(network.clone()),
        &config.state_dir,
        Duration::from_secs(u64::from(config.usage_interval_secs)),
    )?);
    let metrics = Arc::new(metrics::Metrics::default());
    let mut server = tonic::transport::Server::builder()
        .tls_config(server_tls)?
        .layer(metrics::rpc_layer(metrics.clone()));
    let metrics_task = match config.metrics_listen {
        Some(addr) => serve_metrics(addr, metrics.clone(), runtime.clone(), meter.clone()).await,
        None => None,
    };
    let heartbeat = tokio::spawn(registration::run(
        identity,
        runtime.clone(),
        capacity,
        meter,
        metrics,
    ));
    let spool = runtime::storage::migration::MigrationSpool::new(&config.state_dir);
    // No transfer survives a restart: the controller retries or rolls the step back.
    if let Err(error) = spool.clear() {
        tracing::warn!(%error, "emptying the migration spool");
    }
    let service = service::AgentService::new(runtime, config.state_dir.clone())
        .with_network(network)
        .with_backup_store(backup_store);
    let served = server
        .add_service(NodeAgentServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await;
    heartbeat.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    Ok(served?)
}

/// Starts the metrics endpoint on `addr`. Metrics are auxiliary: an address
/// that cannot be bound is logged and the node keeps serving its VPSes.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<metrics::Metrics>,
    runtime: Arc<runtime::Runtime>,
    meter: Arc<metering::Meter>,
) -> Option<tokio::task::JoinHandle<()>> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%addr, %error, "metrics endpoint not started");
            return None;
        }
    };
    tracing::info!(%addr, "metrics endpoint serving");
    let scrape = Arc::new(move || metrics.scrape(&runtime, &meter));
    Some(tokio::spawn(paddock_telemetry::serve(listener, scrape)))
}
