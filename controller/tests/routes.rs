//! The host routes of a shared pool, driven by a real controller: three fake agents (which
//! record what `SyncRoutes` sends them) share one pool; every node but the one holding a VPS
//! is told to route its address to that node's underlay address, and after the VPS is
//! deleted no node keeps a route. The kernel side runs in `node-agent/tests/routes.rs`, the
//! whole path across real nodes in `tests/tests/migrate.rs`.

mod common;
#[allow(dead_code)]
#[path = "common/fake_agent.rs"]
mod fake_agent;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{start, with_token};
use fake_agent::FakeAgent;
use paddock_proto::v1;

/// Polls `check` until it returns `Some`, for up to a minute.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_other_node_of_a_shared_pool_routes_a_vps_address_until_it_is_deleted() {
    let api = start().await;
    let url = format!("https://127.0.0.1:{}", api.port);
    let names = ["node-r1", "node-r2", "node-r3"];
    let mut agents = Vec::new();
    for name in names {
        agents.push(
            FakeAgent::start(
                name,
                vec![url.clone()],
                &api.ca_pem,
                &api.join,
                Duration::from_millis(300),
            )
            .await,
        );
    }
    // A private (NAT) pool cannot span nodes: its tenant isolation is per node.
    let refused = api
        .create_pool(v1::Pool {
            name: "private".into(),
            nodes: names.iter().map(|name| (*name).to_owned()).collect(),
            cidr: "10.205.0.0/24".into(),
            gateway: "10.205.0.1".into(),
            nat: true,
            ..v1::Pool::default()
        })
        .await
        .expect_err("a private pool across nodes is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("must be public"), "{refused:?}");
    api.create_pool(v1::Pool {
        name: "shared".into(),
        nodes: names.iter().map(|name| (*name).to_owned()).collect(),
        cidr: "10.204.0.0/24".into(),
        gateway: "10.204.0.1".into(),
        ..v1::Pool::default()
    })
    .await
    .expect("shared pool");
    api.tenants()
        .create_tenant(with_token(
            v1::CreateTenantRequest {
                name: "acme".into(),
                quota: Some(v1::Quota {
                    max_vps: 5,
                    vcpus: 10.0,
                    memory_bytes: 1 << 34,
                    disk_bytes: 1 << 40,
                    ipv4_count: 5,
                }),
            },
            &api.admin,
        ))
        .await
        .expect("tenant");
    let token = api.token(v1::Role::Tenant, "acme").await;
    let vps = api
        .create_vps(&token, "", "web")
        .await
        .expect("create in the shared pool");
    let address = vps.ipv4.first().cloned().expect("an address");
    assert!(address.starts_with("10.204.0."), "{address}");
    let holder = names
        .iter()
        .position(|name| *name == vps.node)
        .expect("placed on a node of the pool");
    let destination = format!("{address}/32");
    // Fake agents listen on loopback: their underlay address is 127.0.0.1.
    for (index, agent) in agents.iter().enumerate() {
        let routes = eventually(&format!("{} synced", names[index]), || {
            let routes = agent.routes();
            let wanted = index == holder || routes.contains_key(&destination);
            wanted.then_some(routes)
        })
        .await;
        if index == holder {
            assert!(routes.is_empty(), "the holder routes nothing: {routes:?}");
        } else {
            let expected: HashMap<String, String> =
                [(destination.clone(), "127.0.0.1".to_owned())].into();
            assert_eq!(routes, expected, "{}", names[index]);
        }
    }
    api.vps()
        .delete_vps(with_token(
            v1::VpsRef {
                tenant: String::new(),
                name: "web".into(),
            },
            &token,
        ))
        .await
        .expect("delete");
    for (index, agent) in agents.iter().enumerate() {
        eventually(&format!("{} without routes", names[index]), || {
            agent.routes().is_empty().then_some(())
        })
        .await;
    }
}
