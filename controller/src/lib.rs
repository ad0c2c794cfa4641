//! The Paddock controller: the provider's source of truth for tenants,
//! quotas, plans, nodes and VPSes, and the gRPC API in front of them.

pub mod agents;
pub mod api;
pub mod auth;
pub mod batch;
pub mod convert;
pub mod error;
pub mod init;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod placement;
pub mod requests;
pub mod service;
pub mod store;

use std::sync::Arc;

use paddock_config::ControllerConfig;
pub use service::Controller;

use crate::api::ServeError;
use crate::store::{Store, StoreError};

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
    #[error("loading the controller's certificates (run `paddock-controller init`): {0}")]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Opens the store and serves the API until `shutdown` resolves.
pub async fn run(
    config: ControllerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let store = init::open_store(&config)?;
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
    let pki = pki::Pki::load(&config.data_dir)?;
    serve_with(config, store, join_token, pki, listener, shutdown).await
}

/// Serves the API on `listener` over an already opened store (tests use
/// this to inspect the store while the controller runs).
pub async fn serve_with(
    config: ControllerConfig,
    store: Arc<dyn Store>,
    join_token: String,
    pki: pki::Pki,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), StartError> {
    // Creates, apply results and audit entries are gathered into batches where the store
    // gains from it.
    let batches_writes = store.batches_writes();
    let (reconciler, queue) = service::reconcile::channel(batches_writes);
    // On etcd several controllers may share the store; only the leader reconciles.
    let leadership = store.campaign(store::Candidate {
        identity: listener
            .local_addr()
            .map_or_else(|_| config.listen.to_string(), |addr| addr.to_string()),
        lease_ttl: std::time::Duration::from_secs(u64::from(config.leader_lease_secs)),
    })?;
    let controller = Arc::new(Controller {
        store,
        agents: agents::AgentPool::new(&pki, config.max_agent_connections as usize),
        reconciler,
        placements: placement::PlacementCache::new(if leadership.shared() {
            placement::SHARED_VIEW_TTL
        } else {
            placement::SOLE_VIEW_TTL
        }),
        creates: batch::Batcher::new(batches_writes),
        audits: batch::Batcher::new(batches_writes),
        active_migrations: Default::default(),
        join_token,
        pki,
        config,
        leadership,
    });
    let listen = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |addr| addr.to_string());
    tracing::info!(%listen, data_dir = %controller.config.data_dir.display(), "controller serving");
    let reconcile_task = service::reconcile::spawn(controller.clone(), queue);
    let migration_sweeper = service::migration::spawn_sweeper(controller.clone());
    let placement_task = placement::follow_store(controller.clone());
    let idle_closer = agents::AgentPool::spawn_idle_closer(controller.clone());
    let metrics_task = controller.config.metrics_listen.map(|addr| {
        let gauges = controller.clone();
        tokio::spawn(async move {
            let gauges: Arc<dyn Fn() -> metrics::Gauges + Send + Sync> =
                Arc::new(move || gauges.gauges());
            if let Err(error) = metrics::serve(addr, gauges).await {
                tracing::error!(%addr, %error, "metrics endpoint failed");
            }
        })
    });
    let watchers = controller.clone();
    let shutdown = async move {
        shutdown.await;
        // Open `WatchVps` streams would keep the server from finishing.
        watchers.store.vps_watchers().close();
    };
    let served = api::serve(controller.clone(), listener, shutdown).await;
    reconcile_task.abort();
    migration_sweeper.abort();
    placement_task.abort();
    idle_closer.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    controller.store.flush().await?;
    Ok(served?)
}
