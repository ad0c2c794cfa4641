//! The controller's shared state, handed to every gRPC service and background task.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use paddock_config::ControllerConfig;

use crate::agents::AgentPool;
use crate::auth::{self, Principal};
use crate::error::ControllerError;
use crate::model::scheduler::NodeView;
use crate::model::{Capacity, NodeAllocationRecord, NodeRecord, VpsRecord};
use crate::service::reconcile::ReconcileHandle;
use crate::store::{Store, StoreError};

/// Everything a request handler needs; cheap to share behind an `Arc`.
pub struct Controller {
    pub store: Arc<dyn Store>,
    pub config: ControllerConfig,
    pub agents: AgentPool,
    pub reconciler: ReconcileHandle,
    /// The scheduler's in-memory view of the nodes (see `placement.rs`).
    pub placements: crate::placement::PlacementCache,
    /// Creates on their way to the store, in batches (`batch.rs`).
    pub creates: crate::batch::Batcher<VpsRecord, Result<VpsRecord, StoreError>>,
    /// Audit entries on their way to the store, in batches.
    pub audits: crate::batch::Batcher<crate::model::AuditRecord, Result<u64, StoreError>>,
    /// The migrations this process drives right now (`service::migration`).
    pub active_migrations: crate::service::migration::ActiveMigrations,
    /// Shared secret a new agent presents once, to enrol and get its certificate.
    pub join_token: String,
    /// The CA and the controller's TLS identity.
    pub pki: crate::pki::Pki,
    /// Whether this controller leads the ones sharing the store (runs the reconcile workers).
    pub leadership: crate::store::Leadership,
}

impl Controller {
    /// Makes every mutation so far durable; called before acknowledging one.
    pub async fn commit(&self) -> Result<(), ControllerError> {
        Ok(self.store.flush().await?)
    }

    /// Whether a node's last heartbeat is recent enough to call it online.
    pub fn node_online(&self, node: &NodeRecord, now: DateTime<Utc>) -> bool {
        let silence = now.signed_duration_since(node.last_heartbeat);
        silence.num_seconds() < i64::from(self.config.node_offline_after_secs)
    }

    /// How much longer a node online at `now` stays online without another heartbeat.
    pub fn online_for(&self, node: &NodeRecord, now: DateTime<Utc>) -> std::time::Duration {
        let threshold = chrono::Duration::seconds(i64::from(self.config.node_offline_after_secs));
        (node.last_heartbeat + threshold - now)
            .to_std()
            .unwrap_or_default()
    }

    /// Every node with what is promised on it, for scheduling and `admin node list`:
    /// one pass over the nodes and their allocation summaries, never over every VPS.
    pub fn node_views(&self) -> Result<Vec<(NodeRecord, NodeView, u32)>, ControllerError> {
        let nodes = self.store.list_nodes()?;
        let mut allocations: HashMap<String, NodeAllocationRecord> =
            self.store.node_allocations()?.into_iter().collect();
        let now = Utc::now();
        Ok(nodes
            .into_iter()
            .map(|node| {
                let allocation = allocations.remove(&node.name).unwrap_or_default();
                let view = NodeView {
                    name: node.name.clone(),
                    online: self.node_online(&node, now),
                    cordoned: node.cordoned,
                    capacity: node.capacity.clone(),
                    allocated: Capacity {
                        vcpus: allocation.vcpus,
                        memory_bytes: allocation.memory_bytes,
                        disk_bytes: allocation.disk_bytes,
                    },
                    free_ipv4: allocation.free_ipv4,
                    pools: allocation.pools,
                    shared_pools: allocation.shared_pools,
                    labels: node.labels.clone(),
                };
                (node, view, allocation.vps_count)
            })
            .collect())
    }

    /// Resolves which tenant a VPS request acts on: a tenant token always acts
    /// on its own tenant; an admin names one; billing tokens manage no VPSes.
    pub fn vps_scope(
        &self,
        principal: &Principal,
        requested: &str,
    ) -> Result<String, ControllerError> {
        match principal {
            Principal::Tenant { tenant, .. } => {
                if !requested.is_empty() && requested != tenant {
                    // Do not reveal whether the other tenant exists.
                    return Err(ControllerError::not_found("tenant", requested));
                }
                Ok(tenant.clone())
            }
            Principal::Admin { .. } => {
                if requested.is_empty() {
                    return Err(crate::model::validate::ValidationError::new(
                        "tenant",
                        "is required with an admin token (name the tenant that owns the VPS)",
                    )
                    .into());
                }
                crate::model::validate::name("tenant", requested)?;
                Ok(requested.to_owned())
            }
            Principal::Billing { .. } => Err(auth::AuthError::Forbidden {
                needed: "a tenant or admin token",
                actual: principal.actor(),
            }
            .into()),
        }
    }

    /// Gauges for the metrics endpoint: VPSes by state, nodes by status.
    pub fn gauges(&self) -> crate::metrics::Gauges {
        let mut vps_by_state: std::collections::BTreeMap<String, f64> = [
            "pending",
            "running",
            "stopped",
            "error",
            "unknown",
            "suspended",
            "deleting",
        ]
        .into_iter()
        .map(|state| (state.to_owned(), 0.0))
        .collect();
        let mut nodes = (0.0, 0.0);
        if let Ok(views) = self.node_views() {
            for (_, view, _) in &views {
                if view.online {
                    nodes.0 += 1.0;
                } else {
                    nodes.1 += 1.0;
                }
            }
        }
        for vps in self.store.list_vps(None).unwrap_or_default() {
            if let Ok(context) = self.vps().context(&vps) {
                let state =
                    crate::convert::vps_state(&vps, context.node_online, context.held(&vps));
                let name = state
                    .as_str_name()
                    .trim_start_matches("VPS_STATE_")
                    .to_lowercase();
                *vps_by_state.entry(name).or_default() += 1.0;
            }
        }
        let leader = if self.leadership.current().is_some() {
            1.0
        } else {
            0.0
        };
        vec![
            (
                "paddock_leader",
                "1 while this controller leads (runs the reconcile workers), else 0.",
                vec![(String::new(), leader)],
            ),
            (
                "paddock_vps",
                "VPSes by state.",
                vps_by_state
                    .into_iter()
                    .map(|(state, count)| (format!("state=\"{state}\""), count))
                    .collect(),
            ),
            (
                "paddock_nodes",
                "Nodes by status.",
                vec![
                    ("status=\"online\"".to_owned(), nodes.0),
                    ("status=\"offline\"".to_owned(), nodes.1),
                ],
            ),
        ]
    }

    /// Looks a VPS up by tenant and name; `NotFound` is the same whether it
    /// does not exist or belongs to someone else.
    pub fn find_vps(&self, tenant: &str, name: &str) -> Result<VpsRecord, ControllerError> {
        self.store
            .find_vps(tenant, name)?
            .ok_or_else(|| ControllerError::not_found("VPS", name))
    }
}
