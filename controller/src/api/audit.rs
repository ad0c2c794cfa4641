//! `AuditService`: the admin's read of the audit trail, page by page.

use std::sync::Arc;

use paddock_proto::v1;
use paddock_proto::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::ControllerError;
use crate::service::Controller;

pub struct AuditApi {
    pub controller: Arc<Controller>,
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit(
        &self,
        request: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        self.controller.admin(&request)?;
        let page = request.into_inner().page.unwrap_or_default();
        let after_seq = if page.page_token.is_empty() {
            0
        } else {
            page.page_token.parse::<u64>().map_err(|_| {
                ControllerError::from(crate::model::validate::ValidationError::new(
                    "page.page_token",
                    "is not a token returned by ListAudit",
                ))
            })?
        };
        let limit = match page.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let entries = self
            .controller
            .store
            .list_audit(after_seq, limit)
            .map_err(ControllerError::from)?;
        let next_page_token = if entries.len() == limit {
            entries
                .last()
                .map(|e| e.seq.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListAuditResponse {
            entries: entries
                .iter()
                .map(|e| v1::AuditEntry {
                    seq: e.seq,
                    at: Some(convert::timestamp(e.at)),
                    actor: e.actor.clone(),
                    method: e.method.clone(),
                    target: e.target.clone(),
                    result: e.result.clone(),
                })
                .collect(),
            next_page_token,
        }))
    }
}
