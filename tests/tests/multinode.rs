//! The fault suite on several nodes of one machine (issue 13, items 1-2): each scenario runs a
//! controller and three agents, each agent in its own network namespace
//! ([`paddock_tests::multinode`]), and ends with the leak check of `MultiNode::finish`.
//! A scenario that fails prints the nodes, the VPSes and the daemons' log tails.

use std::collections::BTreeMap;
use std::time::Instant;

use paddock_tests::multinode::{MultiNode, PLAN};
use paddock_tests::require_root;
use serde_json::Value;

/// Fails the test with the cluster's diagnostics.
fn fail(cluster: &MultiNode, what: impl std::fmt::Display) -> ! {
    panic!("{what}\n{}", cluster.diagnostics())
}

/// `create NAME --plan mn --wait` as `tenant`; returns the VPS as `show` prints it.
fn create(cluster: &MultiNode, tenant: &str, name: &str) -> Value {
    cluster
        .cli_ok(&[
            "--context",
            tenant,
            "create",
            name,
            "--plan",
            PLAN,
            "--wait",
        ])
        .unwrap_or_else(|error| fail(cluster, format!("create {name}: {error:#}")));
    show(cluster, tenant, name)
}

fn show(cluster: &MultiNode, tenant: &str, name: &str) -> Value {
    cluster
        .json(&["--context", tenant, "show", name])
        .unwrap_or_else(|error| fail(cluster, format!("show {name}: {error:#}")))
}

fn first_ipv4(vps: &Value) -> String {
    vps["ipv4"][0].as_str().unwrap_or_default().to_owned()
}

/// A TCP message from `client` to `server` (VPSes of `tenant`) over `server_ip`: `server`
/// listens with busybox `nc` in one exec while `client` connects from another.
fn tcp_message(cluster: &MultiNode, tenant: &str, client: &str, server: &str, server_ip: &str) {
    let message = format!("hello-from-{client}");
    let received = std::thread::scope(|scope| {
        let listener =
            scope.spawn(|| cluster.sh(tenant, server, "timeout 30 nc -l -p 7000 </dev/null"));
        let sent = cluster.sh(
            tenant,
            client,
            &format!(
                "for i in $(seq 1 40); do \
                 echo {message} | nc -w 3 {server_ip} 7000 && exit 0; sleep 0.5; done; exit 1"
            ),
        );
        let listened = listener.join().expect("listener thread");
        (sent, listened)
    });
    let (sent, listened) = received;
    let sent = sent.unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
    let listened = listened.unwrap_or_else(|error| fail(cluster, format!("{error:#}")));
    if !sent.status.success() || String::from_utf8_lossy(&listened.stdout).trim() != message {
        fail(
            cluster,
            format!(
                "TCP {client} -> {server} ({server_ip}) failed: client {}: {}; listener {}: {}{}",
                sent.status,
                String::from_utf8_lossy(&sent.stderr),
                listened.status,
                String::from_utf8_lossy(&listened.stdout),
                String::from_utf8_lossy(&listened.stderr)
            ),
        );
    }
}

/// How many VPSes each node holds, by node name.
fn per_node(vpses: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for vps in vpses {
        *counts
            .entry(vps["node"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// (a) Six VPSes over three nodes land 2-2-2 under `spread` and reach each other over TCP
/// across nodes (routed between the nodes' netns).
#[test]
fn spread_places_two_per_node_and_vpses_talk_across_nodes() {
    if !require_root() {
        return;
    }
    let started = Instant::now();
    let cluster = MultiNode::start(3).expect("start three nodes");
    cluster
        .add_tenant("acme", &[])
        .unwrap_or_else(|error| fail(&cluster, format!("{error:#}")));
    let names = ["s1", "s2", "s3", "s4", "s5", "s6"];
    let vpses: Vec<Value> = names
        .iter()
        .map(|name| create(&cluster, "acme", name))
        .collect();
    let counts = per_node(&vpses);
    let expected: BTreeMap<String, usize> = cluster
        .nodes
        .iter()
        .map(|node| (node.name.clone(), 2))
        .collect();
    if counts != expected {
        fail(&cluster, format!("placement {counts:?}, expected 2-2-2"));
    }
    for vps in &vpses {
        if vps["state"] != "running" {
            fail(&cluster, format!("{} is not running", vps["name"]));
        }
    }
    // One VPS per node; each talks to the next node's over TCP (a ring of three nodes).
    let mut by_node: Vec<&Value> = Vec::new();
    for node in &cluster.nodes {
        let vps = vpses
            .iter()
            .find(|vps| vps["node"] == node.name.as_str())
            .expect("a VPS on every node");
        by_node.push(vps);
    }
    for (i, client) in by_node.iter().enumerate() {
        let server = by_node[(i + 1) % by_node.len()];
        tcp_message(
            &cluster,
            "acme",
            client["name"].as_str().unwrap_or_default(),
            server["name"].as_str().unwrap_or_default(),
            &first_ipv4(server),
        );
    }
    cluster.finish();
    eprintln!("scenario (a) took {:?}", started.elapsed());
}
