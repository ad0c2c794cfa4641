//! `TenantService` and `TokenService`.

use std::sync::Arc;

use paddock_proto::v1;
use paddock_proto::v1::tenant_service_server::TenantService;
use paddock_proto::v1::token_service_server::TokenService;
use tonic::{Request, Response, Status};

use crate::api::audit_target;
use crate::convert;
use crate::error::ControllerError;
use crate::model::validate::ValidationError;
use crate::model::Role;
use crate::service::Controller;

pub struct TenantApi {
    pub controller: Arc<Controller>,
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(
        &self,
        request: Request<v1::CreateTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        audit_target(&request, request.get_ref().name.clone());
        self.controller.admin(&request)?;
        let request = request.into_inner();
        let quota = request.quota.as_ref().map(convert::quota_from);
        let tenant = self
            .controller
            .tenants()
            .create(&request.name, quota)
            .await?;
        Ok(Response::new(convert::tenant(&tenant)))
    }

    async fn get_tenant(
        &self,
        request: Request<v1::GetTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        self.controller.admin(&request)?;
        let tenant = self.controller.tenants().get(&request.into_inner().name)?;
        Ok(Response::new(convert::tenant(&tenant)))
    }

    async fn list_tenants(
        &self,
        request: Request<v1::ListTenantsRequest>,
    ) -> Result<Response<v1::ListTenantsResponse>, Status> {
        self.controller.admin(&request)?;
        let tenants = self
            .controller
            .store
            .list_tenants()
            .map_err(ControllerError::from)?;
        Ok(Response::new(v1::ListTenantsResponse {
            tenants: tenants.iter().map(convert::tenant).collect(),
            next_page_token: String::new(),
        }))
    }

    async fn set_quota(
        &self,
        request: Request<v1::SetQuotaRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        audit_target(&request, request.get_ref().name.clone());
        self.controller.admin(&request)?;
        let request = request.into_inner();
        let quota = request.quota.as_ref().map(convert::quota_from);
        let tenant = self
            .controller
            .tenants()
            .set_quota(&request.name, quota)
            .await?;
        Ok(Response::new(convert::tenant(&tenant)))
    }

    async fn delete_tenant(
        &self,
        request: Request<v1::DeleteTenantRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        audit_target(&request, request.get_ref().name.clone());
        self.controller.admin(&request)?;
        self.controller
            .tenants()
            .delete(&request.into_inner().name)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn suspend_tenant(
        &self,
        request: Request<v1::SuspendTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        audit_target(&request, request.get_ref().name.clone());
        self.controller.admin(&request)?;
        let request = request.into_inner();
        let tenant = self
            .controller
            .tenants()
            .set_suspended(&request.name, true, &request.reason)
            .await?;
        Ok(Response::new(convert::tenant(&tenant)))
    }

    async fn unsuspend_tenant(
        &self,
        request: Request<v1::UnsuspendTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        audit_target(&request, request.get_ref().name.clone());
        self.controller.admin(&request)?;
        let tenant = self
            .controller
            .tenants()
            .set_suspended(&request.into_inner().name, false, "")
            .await?;
        Ok(Response::new(convert::tenant(&tenant)))
    }

    async fn get_my_quota(
        &self,
        request: Request<v1::Empty>,
    ) -> Result<Response<v1::QuotaReport>, Status> {
        let principal = self.controller.caller(&request)?;
        let tenant = self.controller.tenants().my_tenant(&principal)?;
        Ok(Response::new(v1::QuotaReport {
            tenant: tenant.name.clone(),
            limit: Some(convert::quota(&tenant.quota)),
            used: Some(convert::quota(&tenant.used)),
        }))
    }
}

pub struct TokenApi {
    pub controller: Arc<Controller>,
}

fn role_from(role: v1::Role) -> Result<Role, ValidationError> {
    match role {
        v1::Role::Admin => Ok(Role::Admin),
        v1::Role::Tenant => Ok(Role::Tenant),
        v1::Role::Billing => Ok(Role::Billing),
        v1::Role::Unspecified => Err(ValidationError::new(
            "role",
            "must be ROLE_ADMIN, ROLE_TENANT or ROLE_BILLING",
        )),
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        // A tenant token's target is its tenant; admin and billing tokens have none.
        let target = match request.get_ref().role() {
            v1::Role::Tenant => request.get_ref().tenant.clone(),
            other => format!("{other:?}").to_lowercase(),
        };
        audit_target(&request, target);
        self.controller.admin(&request)?;
        let request = request.into_inner();
        let role = role_from(request.role()).map_err(ControllerError::from)?;
        let expires_at = match &request.expires_at {
            None => None,
            Some(at) => Some(convert::from_timestamp(at).ok_or_else(|| {
                ControllerError::from(ValidationError::new("expires_at", "is not a valid time"))
            })?),
        };
        let (token, record) = self
            .controller
            .tenants()
            .create_token(role, &request.tenant, request.description, expires_at)
            .await?;
        Ok(Response::new(v1::CreateTokenResponse {
            token,
            info: Some(convert::token_info(&record)),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        self.controller.admin(&request)?;
        let tenant = request.into_inner().tenant;
        let tokens = self
            .controller
            .store
            .list_tokens()
            .map_err(ControllerError::from)?;
        Ok(Response::new(v1::ListTokensResponse {
            tokens: tokens
                .iter()
                .filter(|t| tenant.is_empty() || t.tenant.as_deref() == Some(tenant.as_str()))
                .map(convert::token_info)
                .collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        audit_target(&request, request.get_ref().token_id.clone());
        self.controller.admin(&request)?;
        self.controller
            .tenants()
            .revoke_token(&request.into_inner().token_id)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }
}
