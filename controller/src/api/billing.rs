//! `BillingService`: usage, lifecycle events, suspension.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use paddock_proto::v1;
use paddock_proto::v1::billing_service_server::BillingService;
use tonic::{Request, Response, Status};

use crate::api::audit_target;
use crate::convert;
use crate::error::ControllerError;
use crate::model::metering::UsageQuery;
use crate::service::Controller;

pub struct BillingApi {
    pub controller: Arc<Controller>,
}

/// A following `WatchEvents` stream reads the log when the store signals a commit; it also
/// rereads after this long without one, so an append a future store path forgot to signal is
/// late, never lost.
const EVENT_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

#[tonic::async_trait]
impl BillingService for BillingApi {
    async fn list_usage(
        &self,
        request: Request<v1::ListUsageRequest>,
    ) -> Result<Response<v1::ListUsageResponse>, Status> {
        let principal = self.controller.caller(&request)?;
        let request = request.into_inner();
        let tenant = self
            .controller
            .metering()
            .usage_scope(&principal, &request.tenant, false)?;
        let (from, to) = convert::usage_range(request.from.as_ref(), request.to.as_ref());
        let query = UsageQuery {
            tenant,
            vps: request.vps.clone(),
            from,
            to,
            daily: request.granularity() == v1::Granularity::Day,
        };
        let page = request.page.unwrap_or_default();
        let page =
            self.controller
                .metering()
                .list_usage(&query, page.page_size, &page.page_token)?;
        Ok(Response::new(v1::ListUsageResponse {
            records: page.rows.iter().map(convert::usage_record).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn tenant_usage_summary(
        &self,
        request: Request<v1::TenantUsageSummaryRequest>,
    ) -> Result<Response<v1::UsageSummary>, Status> {
        let principal = self.controller.caller(&request)?;
        let request = request.into_inner();
        let tenant = self
            .controller
            .metering()
            .usage_scope(&principal, &request.tenant, true)?;
        let (from, to) = convert::usage_range(request.from.as_ref(), request.to.as_ref());
        let summary = self.controller.metering().usage_summary(&UsageQuery {
            tenant,
            vps: String::new(),
            from,
            to,
            daily: false,
        })?;
        Ok(Response::new(v1::UsageSummary {
            tenant: summary.tenant,
            per_vps: summary.per_vps.iter().map(convert::usage_record).collect(),
            total: Some(convert::usage_record(&summary.total)),
        }))
    }

    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

    /// Replays the durable event log after the client's cursor, then follows
    /// it. Only flushed events are sent, so a cursor a client has seen can
    /// never be reused for another event after a controller crash.
    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.controller.billing(&request)?;
        let request = request.into_inner();
        if !request.tenant.is_empty() {
            crate::model::validate::name("tenant", &request.tenant)
                .map_err(ControllerError::from)?;
        }
        let controller = self.controller.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(128);
        tokio::spawn(async move {
            let mut cursor = request.after_cursor;
            let mut commits = controller.store.event_signal().subscribe();
            loop {
                // Marked seen before reading, so a commit after the read wakes the wait below.
                commits.borrow_and_update();
                let batch = match controller.store.list_events(cursor, 256) {
                    Ok(batch) => batch,
                    Err(error) => {
                        let _ = sender.send(Err(Status::from(error))).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    tokio::select! {
                        changed = commits.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            continue;
                        }
                        _ = tokio::time::sleep(EVENT_RECHECK) => continue,
                        _ = sender.closed() => return,
                    }
                }
                if let Err(error) = controller.store.flush().await {
                    let _ = sender.send(Err(Status::from(error))).await;
                    return;
                }
                for event in batch {
                    cursor = event.cursor;
                    if !request.tenant.is_empty() && event.tenant != request.tenant {
                        continue;
                    }
                    if sender.send(Ok(convert::event(&event))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn suspend_tenant(
        &self,
        request: Request<v1::BillingSuspendRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        audit_target(&request, request.get_ref().tenant.clone());
        self.controller.billing(&request)?;
        let request = request.into_inner();
        self.controller
            .tenants()
            .set_suspended(&request.tenant, true, &request.reason)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn unsuspend_tenant(
        &self,
        request: Request<v1::BillingSuspendRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        audit_target(&request, request.get_ref().tenant.clone());
        self.controller.billing(&request)?;
        self.controller
            .tenants()
            .set_suspended(&request.into_inner().tenant, false, "")
            .await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn lift_transfer_limit(
        &self,
        request: Request<v1::LiftTransferLimitRequest>,
    ) -> Result<Response<v1::LiftTransferLimitResponse>, Status> {
        let target = format!("{}/{}", request.get_ref().tenant, request.get_ref().vps);
        audit_target(&request, target);
        let principal = self.controller.billing(&request)?;
        let request = request.into_inner();
        let lifted = self
            .controller
            .metering()
            .lift_transfer_limit(&principal, &request.tenant, &request.vps)
            .await?;
        Ok(Response::new(v1::LiftTransferLimitResponse { lifted }))
    }
}
