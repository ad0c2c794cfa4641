//! Nodes: registration, heartbeats, cordoning, and reaching their agents.

use std::collections::BTreeMap;

use chrono::Utc;
use paddock_proto::v1;
use tracing::{info, warn};

use crate::agents::{agent_error, AgentClient};
use crate::auth::{self, AuthError};
use crate::convert;
use crate::error::{ControllerError, Precondition};
use crate::model::node::{Enrollment, Heartbeat, Registration, Template};
use crate::model::scheduler::NodeView;
use crate::model::validate::{self, ValidationError};
use crate::model::NodeRecord;
use crate::pki;
use crate::service::reconcile::record_observed_of;
use crate::service::Controller;

/// Nodes: enrolment, registration, heartbeats, cordoning and reaching their agents. A view of the [`Controller`]'s shared state; get one with
/// [`Controller::nodes`].
pub struct Nodes<'a>(&'a Controller);

impl Controller {
    pub fn nodes(&self) -> Nodes<'_> {
        Nodes(self)
    }
}

impl std::ops::Deref for Nodes<'_> {
    type Target = Controller;

    fn deref(&self) -> &Controller {
        self.0
    }
}

impl Nodes<'_> {
    /// Checks the node join token an enrolling agent presents.
    pub fn check_join_token(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(), ControllerError> {
        let token = auth::bearer(metadata)?;
        if !auth::secrets_equal(token, &self.join_token) {
            return Err(AuthError::Invalid.into());
        }
        Ok(())
    }

    /// The node a request comes from, by its verified client certificate.
    pub fn node_of(peer_certs: Option<&[impl AsRef<[u8]>]>) -> Result<String, ControllerError> {
        let leaf = peer_certs
            .and_then(|certs| certs.first())
            .ok_or(AuthError::NodeCertificate("no client certificate"))?;
        let name = pki::common_name(leaf.as_ref())
            .ok_or(AuthError::NodeCertificate("certificate has no common name"))?;
        name.strip_prefix(pki::NODE_CN_PREFIX)
            .map(str::to_owned)
            .ok_or(AuthError::NodeCertificate("not a node certificate").into())
    }

    /// Requires the caller's certificate to belong to `node_name` and not to
    /// be revoked (issued before the node was last removed).
    pub fn check_node(
        &self,
        peer_certs: Option<&[impl AsRef<[u8]>]>,
        node_name: &str,
    ) -> Result<(), ControllerError> {
        let node = Self::node_of(peer_certs)?;
        if node != node_name {
            return Err(AuthError::Forbidden {
                needed: "the certificate of the node named in the request",
                actual: format!("node {node}"),
            }
            .into());
        }
        if let Some(removed_at) = self.store.node_revoked_at(&node)? {
            let issued = peer_certs
                .and_then(|certs| certs.first())
                .and_then(|leaf| pki::not_before(leaf.as_ref()));
            if issued.is_none_or(|issued| issued <= removed_at) {
                return Err(AuthError::NodeRevoked {
                    node,
                    removed_at: removed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Removes a drained node that hosts no VPS and no pool, and revokes its
    /// certificates: its agent can no longer register or heartbeat, and the
    /// name can only come back by enrolling again with the join token.
    pub async fn remove(&self, name: &str) -> Result<(), ControllerError> {
        validate::name("name", name)?;
        let node = self
            .store
            .get_node(name)?
            .ok_or_else(|| ControllerError::not_found("node", name))?;
        if !node.cordoned {
            return Err(Precondition::NodeNotDrained {
                node: name.to_owned(),
            }
            .into());
        }
        let hosted: Vec<String> = self
            .store
            .list_vps_on_node(name)?
            .into_iter()
            .map(|vps| format!("{}/{}", vps.tenant, vps.name))
            .collect();
        if !hosted.is_empty() {
            return Err(Precondition::NodeHostsVps {
                node: name.to_owned(),
                vpses: hosted,
            }
            .into());
        }
        let pools: Vec<String> = self
            .store
            .list_pools()?
            .into_iter()
            .filter(|pool| pool.spans(name))
            .map(|pool| pool.name)
            .collect();
        if !pools.is_empty() {
            return Err(Precondition::NodeHasPools {
                node: name.to_owned(),
                pools,
            }
            .into());
        }
        // Whole seconds, as certificates carry them: one signed in this
        // second is revoked too (enrolment waits for the next one).
        let removed_at =
            chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_else(Utc::now);
        self.store.remove_node(name, removed_at)?;
        self.commit().await?;
        self.placements.invalidate();
        self.agents.forget(name);
        info!(node = %name, "node removed; its certificates are revoked");
        Ok(())
    }

    /// Signs an enrolling node's certificate request.
    pub async fn enroll(&self, request: &Enrollment) -> Result<String, ControllerError> {
        validate::name("node_name", &request.node_name)?;
        if request.subject_alt_names.is_empty() {
            return Err(ValidationError::new(
                "subject_alt_names",
                "at least the address the controller dials must be given",
            )
            .into());
        }
        // Valid from now (whole seconds), which must be after the name's last
        // revocation: re-enrolling in the very second of a removal waits for the next.
        let mut now = Utc::now();
        if let Some(removed_at) = self.store.node_revoked_at(&request.node_name)? {
            let next = removed_at + chrono::Duration::seconds(1);
            if let Ok(wait) = (next - now).to_std() {
                tokio::time::sleep(wait).await;
                now = Utc::now();
            }
        }
        let not_before = chrono::DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
        let certificate = self
            .pki
            .sign_node(
                &request.node_name,
                &request.csr_pem,
                &request.subject_alt_names,
                not_before,
            )
            .map_err(|error| match error {
                pki::PkiError::BadSan(_) => ControllerError::Invalid(ValidationError::new(
                    "subject_alt_names",
                    error.to_string(),
                )),
                pki::PkiError::BadCsr(_) => {
                    ControllerError::Invalid(ValidationError::new("csr_pem", error.to_string()))
                }
                other => Precondition::Signing(other).into(),
            })?;
        info!(node = %request.node_name, "node enrolled");
        Ok(certificate)
    }

    /// Records (or refreshes) a node; cordon state and labels survive re-registration.
    pub async fn register(&self, request: Registration) -> Result<NodeRecord, ControllerError> {
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
            capacity: request.capacity.unwrap_or_default(),
            cordoned: existing.as_ref().is_some_and(|n| n.cordoned),
            labels: existing.map(|n| n.labels).unwrap_or_default(),
            last_heartbeat: Utc::now(),
            agent_version: request.agent_version,
        };
        self.store.put_node(&node)?;
        self.commit().await?;
        self.placements.invalidate();
        info!(node = %node.name, address = %node.address, "node registered");
        self.reconciler.kick(&node.name);
        Ok(node)
    }

    /// Refreshes a node's liveness and records what it reports of its VPSes.
    pub fn heartbeat(&self, request: Heartbeat) -> Result<(), ControllerError> {
        let Some(mut node) = self.store.get_node(&request.node_name)? else {
            return Err(ControllerError::not_found("node", &request.node_name));
        };
        let was_online = self.node_online(&node, Utc::now());
        node.last_heartbeat = Utc::now();
        let new_capacity = request
            .capacity
            .filter(|capacity| *capacity != node.capacity);
        let capacity_changed = new_capacity.is_some();
        if let Some(capacity) = new_capacity {
            node.capacity = capacity;
        }
        self.store.put_node(&node)?;
        if capacity_changed {
            // Forgotten once stored, so a view rebuilt meanwhile cannot keep the old one.
            self.placements.invalidate();
        }
        // A report that repeats the last one recorded (the usual heartbeat) reads no VPS.
        let reports = self.reconciler.reports();
        let digest = reports.hear(&node.name, &request.reports);
        if !reports.unchanged(&node.name, digest) {
            for (vps_id, observed) in request.reports {
                match self.store.get_vps(&vps_id)? {
                    Some(vps) if vps.node == node.name => record_observed_of(self, &vps, observed)?,
                    Some(_) => {
                        warn!(node = %node.name, vps_id = %vps_id, "node reports a VPS placed elsewhere")
                    }
                    None => {}
                }
            }
            reports.recorded(&node.name, digest);
        }
        self.metering().record_usages(&node.name, &request.usage)?;
        if !was_online {
            self.placements.invalidate();
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
    pub async fn list_templates(&self) -> Result<Vec<Template>, ControllerError> {
        let mut templates = BTreeMap::new();
        for node in self.store.list_nodes()? {
            if !self.node_online(&node, Utc::now()) {
                continue;
            }
            let mut client = self.agents.client(&node.name, &node.address)?;
            match client.list_templates(v1::Empty {}).await {
                Ok(response) => {
                    for template in response.into_inner().templates {
                        templates
                            .entry(template.name.clone())
                            .or_insert_with(|| convert::template_from(template));
                    }
                }
                Err(status) => {
                    warn!(node = %node.name, error = %agent_error(&node.name, status), "listing templates")
                }
            }
        }
        Ok(templates.into_values().collect())
    }

    /// One node with what is promised on it and how many VPSes it has.
    pub fn get(&self, name: &str) -> Result<(NodeRecord, NodeView, u32), ControllerError> {
        validate::name("name", name)?;
        self.node_views()?
            .into_iter()
            .find(|(record, _, _)| record.name == name)
            .ok_or_else(|| ControllerError::not_found("node", name))
    }

    pub async fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut NodeRecord),
    ) -> Result<(NodeRecord, NodeView, u32), ControllerError> {
        validate::name("name", name)?;
        let mut node = self
            .store
            .get_node(name)?
            .ok_or_else(|| ControllerError::not_found("node", name))?;
        change(&mut node);
        self.store.put_node(&node)?;
        self.commit().await?;
        self.placements.invalidate();
        self.nodes().get(name)
    }
}
