//! `BackupService`: VPS backups for their tenant (or an admin naming the tenant).

use std::sync::Arc;

use paddock_proto::v1;
use paddock_proto::v1::backup_service_server::BackupService;
use tonic::{Request, Response, Status};

use crate::api::audit_target;
use crate::convert;
use crate::model::validate::ValidationError;
use crate::requests;
use crate::service::backups::RestoreTarget;
use crate::service::Controller;

pub struct BackupApi {
    pub controller: Arc<Controller>,
}

fn backup_target(tenant: &str, id: &str) -> String {
    if tenant.is_empty() {
        id.to_owned()
    } else {
        format!("{tenant}/{id}")
    }
}

#[tonic::async_trait]
impl BackupService for BackupApi {
    async fn create_backup(
        &self,
        request: Request<v1::CreateBackupRequest>,
    ) -> Result<Response<v1::Backup>, Status> {
        let vps = request.get_ref().vps.clone().unwrap_or_default();
        audit_target(&request, backup_target(&vps.tenant, &vps.name));
        let principal = self.controller.caller(&request)?;
        let backup = self
            .controller
            .backups()
            .create(&principal, &vps.tenant, &vps.name)
            .await?;
        Ok(Response::new(convert::backup(&backup)))
    }

    async fn list_backups(
        &self,
        request: Request<v1::ListBackupsRequest>,
    ) -> Result<Response<v1::ListBackupsResponse>, Status> {
        let principal = self.controller.caller(&request)?;
        let request = request.into_inner();
        let backups = self
            .controller
            .backups()
            .list(&principal, &request.tenant, &request.vps)?;
        Ok(Response::new(v1::ListBackupsResponse {
            backups: backups.iter().map(convert::backup).collect(),
        }))
    }

    async fn restore_backup(
        &self,
        request: Request<v1::RestoreBackupRequest>,
    ) -> Result<Response<v1::Vps>, Status> {
        let backup = request.get_ref().backup.clone().unwrap_or_default();
        audit_target(&request, backup_target(&backup.tenant, &backup.id));
        let principal = self.controller.caller(&request)?;
        let request_id = requests::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let target = match (request.to_name.is_empty(), request.in_place) {
            (false, false) => RestoreTarget::New(request.to_name),
            (true, true) => RestoreTarget::InPlace,
            _ => {
                return Err(ValidationError::new(
                    "to_name",
                    "give exactly one of to_name (a new VPS) or in_place",
                )
                .into())
            }
        };
        let vps = self
            .controller
            .backups()
            .restore(&principal, &backup.tenant, &backup.id, target, request_id)
            .await?;
        Ok(Response::new(super::vps::view(&self.controller, &vps)?))
    }

    async fn delete_backup(
        &self,
        request: Request<v1::BackupRef>,
    ) -> Result<Response<v1::Empty>, Status> {
        let backup = request.get_ref().clone();
        audit_target(&request, backup_target(&backup.tenant, &backup.id));
        let principal = self.controller.caller(&request)?;
        self.controller
            .backups()
            .delete(&principal, &backup.tenant, &backup.id)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }
}
