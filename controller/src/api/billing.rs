//! `BillingService` and `AuditService`: declared now, implemented by the
//! metering and controller issues. Callers get `Unimplemented`, never fake data.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use paddock_proto::v1;
use paddock_proto::v1::audit_service_server::AuditService;
use paddock_proto::v1::billing_service_server::BillingService;
use tonic::{Request, Response, Status};

use crate::app::Controller;
use crate::error::ControllerError;

pub struct BillingApi {
    pub controller: Arc<Controller>,
}

const METERING: &str = "metering and billing (billing issue)";

#[tonic::async_trait]
impl BillingService for BillingApi {
    async fn list_usage(
        &self,
        request: Request<v1::ListUsageRequest>,
    ) -> Result<Response<v1::ListUsageResponse>, Status> {
        self.controller.caller(request.metadata())?;
        Err(ControllerError::Unimplemented(METERING).into())
    }

    async fn tenant_usage_summary(
        &self,
        request: Request<v1::TenantUsageSummaryRequest>,
    ) -> Result<Response<v1::UsageSummary>, Status> {
        self.controller.caller(request.metadata())?;
        Err(ControllerError::Unimplemented(METERING).into())
    }

    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.controller.caller(request.metadata())?;
        Err(ControllerError::Unimplemented(METERING).into())
    }

    async fn suspend_tenant(
        &self,
        request: Request<v1::BillingSuspendRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        self.controller.caller(request.metadata())?;
        Err(ControllerError::Unimplemented(METERING).into())
    }

    async fn unsuspend_tenant(
        &self,
        request: Request<v1::BillingSuspendRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        self.controller.caller(request.metadata())?;
        Err(ControllerError::Unimplemented(METERING).into())
    }
}

pub struct AuditApi {
    pub controller: Arc<Controller>,
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit(
        &self,
        request: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        self.controller.admin(request.metadata())?;
        Err(ControllerError::Unimplemented("the audit log (controller issue)").into())
    }
}
