//! `PlanService`: the sizes tenants choose from; admins create and delete them.

use std::sync::Arc;

use paddock_proto::v1;
use paddock_proto::v1::plan_service_server::PlanService;
use tonic::{Request, Response, Status};

use crate::api::audit_target;
use crate::convert;
use crate::error::ControllerError;
use crate::model::PlanRecord;
use crate::service::Controller;

pub struct PlanApi {
    pub controller: Arc<Controller>,
}

#[tonic::async_trait]
impl PlanService for PlanApi {
    async fn list_plans(
        &self,
        request: Request<v1::Empty>,
    ) -> Result<Response<v1::ListPlansResponse>, Status> {
        self.controller.caller(&request)?;
        let plans = self.controller.plans().list()?;
        Ok(Response::new(v1::ListPlansResponse {
            plans: plans.iter().map(convert::plan).collect(),
        }))
    }

    async fn create_plan(
        &self,
        request: Request<v1::CreatePlanRequest>,
    ) -> Result<Response<v1::Plan>, Status> {
        audit_target(
            &request,
            request
                .get_ref()
                .plan
                .as_ref()
                .map(|plan| plan.name.clone())
                .unwrap_or_default(),
        );
        self.controller.admin(&request)?;
        let plan = request.into_inner().plan.unwrap_or_default();
        let record = PlanRecord {
            transfer_overage: convert::transfer_overage_from(&plan)
                .map_err(ControllerError::from)?,
            name: plan.name,
            resources: convert::resources_from(&plan.resources.unwrap_or_default()),
            monthly_transfer_bytes: plan.monthly_transfer_bytes,
            max_snapshots: match plan.max_snapshots {
                0 => crate::model::snapshots::DEFAULT_MAX_SNAPSHOTS,
                max => max,
            },
        };
        let created = self.controller.plans().create(record).await?;
        Ok(Response::new(convert::plan(&created)))
    }

    async fn delete_plan(
        &self,
        request: Request<v1::DeletePlanRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        audit_target(&request, request.get_ref().name.clone());
        self.controller.admin(&request)?;
        self.controller
            .plans()
            .delete(&request.into_inner().name)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }
}
