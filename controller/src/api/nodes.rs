//! `NodeService` and the agents' `AgentRegistry`.

use std::sync::Arc;

use paddock_proto::v1;
use paddock_proto::v1::agent_registry_server::AgentRegistry;
use paddock_proto::v1::node_service_server::NodeService;
use tonic::{Request, Response, Status};

use crate::api::audit_target;
use crate::convert;
use crate::service::migration::MigrateVps;
use crate::service::Controller;

pub struct NodeApi {
    pub controller: Arc<Controller>,
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list_nodes(
        &self,
        request: Request<v1::Empty>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        self.controller.admin(&request)?;
        let nodes = self
            .controller
            .node_views()?
            .iter()
            .map(|(record, view, count)| convert::node(record, view, *count))
            .collect();
        Ok(Response::new(v1::ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        request: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        self.controller.admin(&request)?;
        let (record, view, count) = self.controller.nodes().get(&request.into_inner().name)?;
        Ok(Response::new(convert::node(&record, &view, count)))
    }

    async fn migrate_vps(
        &self,
        request: Request<v1::MigrateVpsRequest>,
    ) -> Result<Response<v1::Migration>, Status> {
        let target = format!("{}/{}", request.get_ref().tenant, request.get_ref().name);
        audit_target(&request, target);
        self.controller.admin(&request)?;
        let request = request.into_inner();
        let outcome = self
            .controller
            .migrations()
            .migrate(MigrateVps {
                tenant: request.tenant,
                name: request.name,
                to_node: request.to_node,
                allow_new_address: request.allow_new_address,
                live: request.live,
                allow_cold: request.allow_cold,
            })
            .await?;
        Ok(Response::new(convert::migration(
            &outcome.record,
            outcome.duration,
            outcome.cold_because.as_deref(),
        )))
    }

    async fn drain_node(
        &self,
        request: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        audit_target(&request, request.get_ref().name.clone());
        self.controller.admin(&request)?;
        let name = request.into_inner().name;
        let (record, view, count) = self
            .controller
            .nodes()
            .update(&name, |node| node.cordoned = true)
            .await?;
        Ok(Response::new(convert::node(&record, &view, count)))
    }

    async fn undrain_node(
        &self,
        request: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        audit_target(&request, request.get_ref().name.clone());
        self.controller.admin(&request)?;
        let name = request.into_inner().name;
        let (record, view, count) = self
            .controller
            .nodes()
            .update(&name, |node| node.cordoned = false)
            .await?;
        Ok(Response::new(convert::node(&record, &view, count)))
    }

    async fn set_node_labels(
        &self,
        request: Request<v1::SetNodeLabelsRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        audit_target(&request, request.get_ref().name.clone());
        self.controller.admin(&request)?;
        let request = request.into_inner();
        let labels = request.labels.into_iter().collect();
        let (record, view, count) = self
            .controller
            .nodes()
            .update(&request.name, |node| node.labels = labels)
            .await?;
        Ok(Response::new(convert::node(&record, &view, count)))
    }

    async fn remove_node(
        &self,
        request: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        audit_target(&request, request.get_ref().name.clone());
        self.controller.admin(&request)?;
        self.controller
            .nodes()
            .remove(&request.into_inner().name)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }
}

pub struct RegistryApi {
    pub controller: Arc<Controller>,
}

fn peer_certs<T>(request: &Request<T>) -> Option<Vec<Vec<u8>>> {
    request
        .peer_certs()
        .map(|certs| certs.iter().map(|cert| cert.to_vec()).collect())
}

#[tonic::async_trait]
impl AgentRegistry for RegistryApi {
    async fn enroll(
        &self,
        request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        audit_target(&request, request.get_ref().node_name.clone());
        self.controller
            .nodes()
            .check_join_token(request.metadata())?;
        let certificate_pem = self
            .controller
            .nodes()
            .enroll(&convert::enrollment(request.get_ref()))
            .await?;
        Ok(Response::new(v1::EnrollResponse {
            certificate_pem,
            ca_pem: self.controller.pki.ca_cert_pem.clone(),
        }))
    }

    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        audit_target(&request, request.get_ref().node_name.clone());
        self.controller.nodes().check_node(
            peer_certs(&request).as_deref(),
            &request.get_ref().node_name,
        )?;
        self.controller
            .nodes()
            .register(convert::registration(request.into_inner()))
            .await?;
        Ok(Response::new(v1::RegisterResponse {
            heartbeat_interval_secs: self.controller.config.heartbeat_interval_secs,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        self.controller.nodes().check_node(
            peer_certs(&request).as_deref(),
            &request.get_ref().node_name,
        )?;
        self.controller
            .nodes()
            .heartbeat(convert::heartbeat(request.into_inner()))?;
        Ok(Response::new(v1::HeartbeatResponse {}))
    }
}
