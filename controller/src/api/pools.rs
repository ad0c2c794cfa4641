//! `PoolService`: admin management of the nodes' IPv4 address pools.

use std::sync::Arc;

use paddock_proto::v1;
use paddock_proto::v1::pool_service_server::PoolService;
use tonic::{Request, Response, Status};

use crate::api::audit_target;
use crate::convert;
use crate::service::pools::CreatePool;
use crate::service::Controller;

/// Serves `PoolService`; admin tokens only.
pub struct PoolApi {
    pub controller: Arc<Controller>,
}

#[tonic::async_trait]
impl PoolService for PoolApi {
    async fn create_pool(
        &self,
        request: Request<v1::CreatePoolRequest>,
    ) -> Result<Response<v1::Pool>, Status> {
        audit_target(
            &request,
            request
                .get_ref()
                .pool
                .as_ref()
                .map(|pool| pool.name.clone())
                .unwrap_or_default(),
        );
        self.controller.admin(&request)?;
        let pool = request.into_inner().pool.unwrap_or_default();
        let record = self
            .controller
            .pools()
            .create(CreatePool {
                name: pool.name,
                node: pool.node,
                nodes: pool.nodes,
                cidr: pool.cidr,
                gateway: pool.gateway,
                range_start: pool.range_start,
                range_end: pool.range_end,
                ipv6_prefix: pool.ipv6_prefix,
                nat: pool.nat,
            })
            .await?;
        Ok(Response::new(convert::pool(&record)))
    }

    async fn list_pools(
        &self,
        request: Request<v1::Empty>,
    ) -> Result<Response<v1::ListPoolsResponse>, Status> {
        self.controller.admin(&request)?;
        let pools = self.controller.pools().list()?;
        Ok(Response::new(v1::ListPoolsResponse {
            pools: pools.iter().map(convert::pool).collect(),
        }))
    }

    async fn get_pool(
        &self,
        request: Request<v1::GetPoolRequest>,
    ) -> Result<Response<v1::Pool>, Status> {
        self.controller.admin(&request)?;
        let pool = self.controller.pools().get(&request.into_inner().name)?;
        Ok(Response::new(convert::pool(&pool)))
    }

    async fn delete_pool(
        &self,
        request: Request<v1::GetPoolRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        audit_target(&request, request.get_ref().name.clone());
        self.controller.admin(&request)?;
        self.controller
            .pools()
            .delete(&request.into_inner().name)
            .await?;
        Ok(Response::new(v1::Empty {}))
    }
}
