//! `SnapshotService`: unpack, call the domain (`service/snapshots.rs`), convert back.

use std::sync::Arc;

use paddock_proto::v1;
use paddock_proto::v1::snapshot_service_server::SnapshotService;
use tonic::{Request, Response, Status};

use crate::api::audit_target;
use crate::convert;
use crate::service::Controller;

pub struct SnapshotApi {
    pub controller: Arc<Controller>,
}

/// `tenant/vps/name` (or `vps/name` for a tenant's own) for the audit log.
fn target(snapshot: &v1::SnapshotRef) -> String {
    if snapshot.tenant.is_empty() {
        format!("{}/{}", snapshot.vps, snapshot.name)
    } else {
        format!("{}/{}/{}", snapshot.tenant, snapshot.vps, snapshot.name)
    }
}

#[tonic::async_trait]
impl SnapshotService for SnapshotApi {
    async fn create_snapshot(
        &self,
        request: Request<v1::SnapshotRef>,
    ) -> Result<Response<v1::Snapshot>, Status> {
        audit_target(&request, target(request.get_ref()));
        let principal = self.controller.caller(&request)?;
        let r = request.into_inner();
        let taken = self
            .controller
            .snapshots()
            .create(&principal, &r.tenant, &r.vps, &r.name)
            .await?;
        Ok(Response::new(convert::snapshot(
            &taken.vps,
            &taken.snapshot,
        )))
    }

    async fn list_snapshots(
        &self,
        request: Request<v1::ListSnapshotsRequest>,
    ) -> Result<Response<v1::ListSnapshotsResponse>, Status> {
        let principal = self.controller.caller(&request)?;
        let r = request.into_inner();
        let (vps, snapshots) = self
            .controller
            .snapshots()
            .list(&principal, &r.tenant, &r.vps)?;
        Ok(Response::new(v1::ListSnapshotsResponse {
            snapshots: snapshots
                .iter()
                .map(|snapshot| convert::snapshot(&vps, snapshot))
                .collect(),
        }))
    }

    async fn restore_snapshot(
        &self,
        request: Request<v1::SnapshotRef>,
    ) -> Result<Response<v1::Snapshot>, Status> {
        audit_target(&request, target(request.get_ref()));
        let principal = self.controller.caller(&request)?;
        let r = request.into_inner();
        let restored = self
            .controller
            .snapshots()
            .restore(&principal, &r.tenant, &r.vps, &r.name)
            .await?;
        Ok(Response::new(convert::snapshot(
            &restored.vps,
            &restored.snapshot,
        )))
    }

    async fn delete_snapshot(
        &self,
        request: Request<v1::SnapshotRef>,
    ) -> Result<Response<v1::Empty>, Status> {
        audit_target(&request, target(request.get_ref()));
        let principal = self.controller.caller(&request)?;
        let r = request.into_inner();
        self.controller
            .snapshots()
            .delete(&principal, &r.tenant, &r.vps, &r.name)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }
}
