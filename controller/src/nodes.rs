//! Nodes: registration, heartbeats, cordoning, and reaching their agents.

use std::collections::BTreeMap;

use chrono::Utc;
use paddock_proto::v1;
use tracing::{info, warn};

use crate::agents::{agent_error, AgentClient};
use crate::app::Controller;
use crate::auth::{self, AuthError};
use crate::convert;
use crate::error::ControllerError;
use crate::reconcile::record_observed;
use crate::store::NodeRecord;
use crate::validate::{self, ValidationError};

impl Controller {
    /// Checks the node join token an agent presents.
    pub fn check_node(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(), ControllerError> {
        let token = auth::bearer(metadata)?;
        if !auth::secrets_equal(token, &self.join_token) {
            return Err(AuthError::Invalid.into());
        }
        Ok(())
    }

    /// Records (or refreshes) a node; cordon state and labels survive re-registration.
    pub async fn register_node(
        &self,
        request: v1::RegisterRequest,
    ) -> Result<NodeRecord, ControllerError> {
        validate::name("node_name", &request.node_name)?;
        if !request.address.starts_with("http://") && !request.address.starts_with("https://") {
            return Err(
                ValidationError::new("address", "must be an http:// or https:// URL").into(),
            );
        }
        let existing = self.store.get_node(&request.node_name)?;
        let node = NodeRecord {
            name: request.node_name.clone(),
            address: request.address,
            capacity: request
                .capacity
                .as_ref()
                .map(convert::capacity_from)
                .unwrap_or_default(),
            cordoned: existing.as_ref().is_some_and(|n| n.cordoned),
            labels: existing.map(|n| n.labels).unwrap_or_default(),
            last_heartbeat: Utc::now(),
            agent_version: request.agent_version,
        };
        self.store.put_node(&node)?;
        self.commit().await?;
        info!(node = %node.name, address = %node.address, "node registered");
        self.reconciler.kick(&node.name);
        Ok(node)
    }

    /// Refreshes a node's liveness and records what it reports of its VPSes.
    pub fn heartbeat(&self, request: v1::HeartbeatRequest) -> Result<(), ControllerError> {
        let Some(mut node) = self.store.get_node(&request.node_name)? else {
            return Err(ControllerError::not_found("node", &request.node_name));
        };
        let was_online = self.node_online(&node, Utc::now());
        node.last_heartbeat = Utc::now();
        if let Some(capacity) = &request.capacity {
            node.capacity = convert::capacity_from(capacity);
        }
        self.store.put_node(&node)?;
        for status in &request.vps {
            match self.store.get_vps(&status.vps_id)? {
                Some(vps) if vps.node == node.name => record_observed(self, &vps.vps_id, status)?,
                Some(_) => {
                    warn!(node = %node.name, vps_id = %status.vps_id, "node reports a VPS placed elsewhere")
                }
                None => {}
            }
        }
        if !was_online {
            info!(node = %node.name, "node is back online");
            self.reconciler.kick(&node.name);
        }
        Ok(())
    }

    /// A client for the agent of `node`, or `Unavailable` if it is offline.
    pub fn agent_for(&self, node: &str) -> Result<AgentClient, ControllerError> {
        let record = self
            .store
            .get_node(node)?
            .ok_or_else(|| ControllerError::not_found("node", node))?;
        if !self.node_online(&record, Utc::now()) {
            return Err(ControllerError::NodeUnavailable {
                node: node.to_owned(),
                message: "no heartbeat recently; the node is offline".to_owned(),
            });
        }
        self.agents.client(&record.name, &record.address)
    }

    /// Templates installed on any online node.
    pub async fn list_templates(&self) -> Result<Vec<v1::Template>, ControllerError> {
        let mut templates = BTreeMap::new();
        for node in self.store.list_nodes()? {
            if !self.node_online(&node, Utc::now()) {
                continue;
            }
            let mut client = self.agents.client(&node.name, &node.address)?;
            match client.list_templates(v1::Empty {}).await {
                Ok(response) => {
                    for template in response.into_inner().templates {
                        templates.entry(template.name.clone()).or_insert(template);
                    }
                }
                Err(status) => {
                    warn!(node = %node.name, error = %agent_error(&node.name, status), "listing templates")
                }
            }
        }
        Ok(templates.into_values().collect())
    }

    pub fn get_node(&self, name: &str) -> Result<v1::Node, ControllerError> {
        validate::name("name", name)?;
        self.node_views()?
            .into_iter()
            .find(|(record, _, _)| record.name == name)
            .map(|(record, view, count)| convert::node(&record, &view, count))
            .ok_or_else(|| ControllerError::not_found("node", name))
    }

    pub async fn update_node(
        &self,
        name: &str,
        change: impl FnOnce(&mut NodeRecord),
    ) -> Result<v1::Node, ControllerError> {
        validate::name("name", name)?;
        let mut node = self
            .store
            .get_node(name)?
            .ok_or_else(|| ControllerError::not_found("node", name))?;
        change(&mut node);
        self.store.put_node(&node)?;
        self.commit().await?;
        self.get_node(name)
    }
}
