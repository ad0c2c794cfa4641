//! The Paddock node agent: turns the controller's desired VPSes into real
//! system containers on this node and reports what exists.

pub mod convert;
pub mod generations;
pub mod registration;
pub mod runtime;
pub mod service;
pub mod template;

use std::sync::Arc;
use std::time::Duration;

use paddock_config::AgentConfig;
use paddock_proto::v1::node_agent_server::NodeAgentServer;

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reading the join token {path}: {source}")]
    JoinToken {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("locating the paddock-agent executable: {0}")]
    Executable(std::io::Error),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    Generations(#[from] generations::GenerationError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Re-adopts existing VPSes, serves the controller, registers and heartbeats
/// until `shutdown` resolves. VPSes keep running when the agent stops.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let join_token = std::fs::read_to_string(&config.join_token_file)
        .map_err(|source| AgentError::JoinToken {
            path: config.join_token_file.clone(),
            source,
        })?
        .trim()
        .to_owned();
    let runtime = Arc::new(runtime::Runtime::new(runtime::RuntimeConfig {
        state_dir: config.state_dir.clone(),
        cgroup_parent: config.cgroup_parent.clone(),
        stop_grace: Duration::from_secs(u64::from(config.stop_grace_secs)),
        helper_binary: std::env::current_exe().map_err(AgentError::Executable)?,
    })?);
    let restarts = Arc::new(generations::RestartGenerations::load(&config.state_dir)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: config.listen,
            source,
        })?;
    let identity = registration::NodeIdentity {
        node_name: config
            .node_name
            .clone()
            .unwrap_or_else(registration::default_node_name),
        address: config.advertised(),
        controller: config.controller.clone(),
        join_token: join_token.clone(),
    };
    tracing::info!(node = %identity.node_name, listen = %config.listen, state_dir = %config.state_dir.display(), "agent serving");
    let capacity = registration::capacity(&config.state_dir);
    let heartbeat = tokio::spawn(registration::run(identity, runtime.clone(), capacity));
    let service =
        service::AgentService::new(runtime, config.state_dir.clone(), join_token, restarts);
    let served = tonic::transport::Server::builder()
        .add_service(NodeAgentServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await;
    heartbeat.abort();
    Ok(served?)
}
