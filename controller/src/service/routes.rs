//! Host routes of shared pools (`model::routes`): each node's route set computed from the
//! store and sent to its agent (`SyncRoutes`) by the node's reconcile worker whenever it
//! differs from what the agent last acknowledged, and on full resyncs.

use std::collections::{BTreeSet, HashMap};

use paddock_proto::v1;
use tracing::{info, warn};

use crate::agents::{agent_error, AgentClient};
use crate::error::ControllerError;
use crate::model::routes::{self, HostRoute};
use crate::service::Controller;

impl Controller {
    /// The host routes `node` needs now: the addresses of the shared pools it spans that
    /// live on other nodes, via those nodes' underlay addresses.
    pub fn node_routes(&self, node: &str) -> Result<Vec<HostRoute>, ControllerError> {
        let pools = self.store.list_pools()?;
        let ids = routes::routed_vps_ids(node, &pools);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut vps_nodes = HashMap::new();
        for vps_id in ids {
            if let Some(vps) = self.store.get_vps(&vps_id)? {
                vps_nodes.insert(vps_id, vps.node);
            }
        }
        let holders: BTreeSet<&String> = vps_nodes.values().collect();
        let mut underlay = HashMap::new();
        for other in self.store.list_nodes()? {
            if other.name == node || !holders.contains(&other.name) {
                continue;
            }
            match routes::underlay_address(&other.address) {
                Some(address) => {
                    underlay.insert(other.name, address);
                }
                None => warn!(
                    node = %other.name,
                    address = %other.address,
                    "the node's address is not an IP: no route to its VPSes of shared pools"
                ),
            }
        }
        Ok(routes::node_routes(node, &pools, &vps_nodes, &underlay))
    }

    /// For every node in a shared pool, the nodes it shares one with.
    pub fn route_peers(&self) -> Result<HashMap<String, BTreeSet<String>>, ControllerError> {
        let pools = self.store.list_pools()?;
        let mut peers = HashMap::new();
        for pool in pools.iter().filter(|pool| pool.is_shared()) {
            for node in pool.span() {
                let found = routes::route_peers(&node, &pools);
                peers.insert(node, found);
            }
        }
        Ok(peers)
    }
}

/// Sends `node` its route set when it differs from `acked` (the digest the agent last
/// acknowledged) or on a full resync; records the new digest once the agent answered.
pub async fn sync(
    controller: &Controller,
    mut client: AgentClient,
    node: &str,
    full: bool,
    acked: &mut Option<String>,
) -> Result<(), ControllerError> {
    // A node in no shared pool needs none (and its passes read no pool).
    let wanted = if controller.reconciler.in_shared_pool(node) {
        controller.node_routes(node)?
    } else {
        Vec::new()
    };
    let digest = routes::digest(&wanted);
    if !full && acked.as_deref() == Some(digest.as_str()) {
        return Ok(());
    }
    let request = v1::AgentRoutes {
        routes: wanted
            .iter()
            .map(|route| v1::AgentRoute {
                destination: route.destination.clone(),
                via: route.via.to_string(),
            })
            .collect(),
    };
    match client.sync_routes(request).await {
        Ok(response) => {
            let result = response.into_inner();
            if result.added > 0 || result.removed > 0 {
                info!(
                    node,
                    routes = wanted.len(),
                    added = result.added,
                    removed = result.removed,
                    "host routes of shared pools synced"
                );
            }
        }
        // An agent from before shared pools has no routes to remove, and needs none
        // while it is in no shared pool.
        Err(status) if status.code() == tonic::Code::Unimplemented && wanted.is_empty() => {}
        Err(status) => return Err(agent_error(node, status)),
    }
    *acked = Some(digest);
    Ok(())
}
