//! The Paddock controller: the provider's source of truth for tenants,
//! quotas, plans, nodes and VPSes, and the gRPC API in front of them.

pub mod agents;
pub mod api;
pub mod app;
pub mod auth;
pub mod convert;
pub mod error;
pub mod init;
pub mod nodes;
pub mod quota;
pub mod reconcile;
pub mod scheduler;
pub mod store;
pub mod tenants;
pub mod validate;
pub mod vps;

use std::sync::Arc;

pub use app::Controller;
use paddock_config::ControllerConfig;

use crate::api::ServeError;
use crate::store::{SledStore, StoreError};

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the join token {path}: {source} (run `paddock-controller init`)")]
    JoinToken {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Controller(#[from] error::ControllerError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Opens the store and serves the API until `shutdown` resolves.
pub async fn run(
    config: ControllerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let store = SledStore::open(&init::store_path(&config.data_dir))?;
    let join_token_path = init::join_token_path(&config.data_dir);
    let join_token = std::fs::read_to_string(&join_token_path)
        .map_err(|source| StartError::JoinToken {
            path: join_token_path.clone(),
            source,
        })?
        .trim()
        .to_owned();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let (reconciler, queue) = reconcile::channel();
    let controller = Arc::new(Controller {
        store: Arc::new(store),
        agents: agents::AgentPool::new(&join_token)?,
        reconciler,
        join_token,
        config,
    });
    tracing::info!(listen = %controller.config.listen, data_dir = %controller.config.data_dir.display(), "controller serving");
    let reconcile_task = reconcile::spawn(controller.clone(), queue);
    let served = api::serve(controller.clone(), listener, shutdown).await;
    reconcile_task.abort();
    controller.store.flush().await?;
    Ok(served?)
}
