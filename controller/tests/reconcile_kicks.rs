//! What a create costs its node: the pass it kicks applies the new VPS without listing the
//! node first (one call, not two); the periodic pass lists the node and checks the rest.

mod common;
#[allow(dead_code)]
#[path = "common/fake_agent.rs"]
mod fake_agent;

use std::time::{Duration, Instant};

use common::{start, with_token};
use fake_agent::FakeAgent;
use paddock_proto::v1;

/// Polls `check` until it holds, for up to a minute.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_is_applied_without_listing_its_node() {
    let api = start().await;
    let agent = FakeAgent::start(
        "node-k",
        vec![format!("https://127.0.0.1:{}", api.port)],
        &api.ca_pem,
        &api.join,
        Duration::from_millis(300),
    )
    .await;
    // The node's registration kicks a pass that lists it.
    eventually("the first pass over the node", || agent.lists() > 0).await;
    // The VPSes go to the fake node: the harness's agentless node is drained, the fake
    // node has a pool.
    v1::node_service_client::NodeServiceClient::new(api.channel.clone())
        .drain_node(with_token(
            v1::GetNodeRequest {
                name: "node-a".into(),
            },
            &api.admin,
        ))
        .await
        .expect("drain node-a");
    api.create_pool(v1::Pool {
        name: "pool-k".into(),
        node: "node-k".into(),
        cidr: "10.203.0.0/16".into(),
        gateway: "10.203.0.1".into(),
        nat: true,
        ..v1::Pool::default()
    })
    .await
    .expect("pool on node-k");
    let acme = api.tenant("acme", 10).await;
    const CREATES: u64 = 8;
    let before = agent.lists();
    for index in 0..CREATES {
        let vps = api
            .create_vps(&acme, "", &format!("web{index}"))
            .await
            .expect("create");
        assert_eq!(vps.node, "node-k");
        eventually(&format!("web{index} applied"), || {
            agent.applied(&vps.id).is_some()
        })
        .await;
    }
    // Each create's pass applied its VPS; listings came only from periodic passes (one per
    // reconcile tick, 10 s), not one per create as when every kicked pass listed the node.
    let listed = agent.lists() - before;
    assert!(
        listed < CREATES,
        "{listed} listings for {CREATES} creates: the kicked passes list the node"
    );
}
