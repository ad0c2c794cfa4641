//! Issue 5, end to end with real agents: VPSes spread over two nodes, and a
//! node that dies and comes back converges without a manual step.

use std::time::Duration;

use paddock_tests::{require_root, Cluster};

fn state_of(cluster: &Cluster, name: &str) -> String {
    cluster
        .json(&["--context", "acme", "show", name])
        .map(|vps| vps["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[test]
fn vpses_spread_across_two_nodes() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start_with_agents(2).expect("cluster with two agents");
    cluster.add_tenant("acme").expect("tenant");
    for name in ["web1", "web2", "web3", "web4"] {
        cluster
            .cli_ok(&[
                "--context",
                "acme",
                "create",
                name,
                "--plan",
                "nano",
                "--wait",
            ])
            .expect("create");
    }
    let list = cluster.json(&["--context", "acme", "list"]).expect("list");
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for vps in list.as_array().expect("array") {
        assert_eq!(vps["state"], "running", "{vps}");
        *per_node
            .entry(vps["node"].as_str().expect("node").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_node.len(), 2, "both nodes host VPSes: {per_node:?}");
    assert!(
        per_node.values().all(|count| *count == 2),
        "spread evenly: {per_node:?}"
    );
    for name in ["web1", "web2", "web3", "web4"] {
        cluster
            .cli_ok(&["--context", "acme", "delete", name, "--yes"])
            .expect("delete");
    }
}

#[test]
fn a_dead_node_goes_unknown_and_comes_back_without_help() {
    if !require_root() {
        return;
    }
    let mut cluster = Cluster::start().expect("cluster");
    cluster.add_tenant("acme").expect("tenant");
    cluster
        .cli_ok(&[
            "--context",
            "acme",
            "create",
            "web1",
            "--plan",
            "nano",
            "--wait",
        ])
        .expect("create");
    let before = cluster
        .json(&["--context", "acme", "show", "web1"])
        .expect("show");
    let init_pid = before["init_pid"].as_u64().expect("pid");

    cluster.kill_agent();
    cluster
        .wait_until("node offline, VPS unknown", Duration::from_secs(30), |c| {
            Ok(state_of(c, "web1") == "unknown")
        })
        .expect("unknown while the node is gone");
    let quota = cluster
        .json(&["--context", "acme", "quota"])
        .expect("quota");
    assert_eq!(
        quota["used"]["max_vps"], 1,
        "an unknown VPS still counts: {quota}"
    );

    cluster.start_agent().expect("agent back");
    cluster
        .wait_until("VPS running again", Duration::from_secs(30), |c| {
            Ok(state_of(c, "web1") == "running")
        })
        .expect("running after the node returns");
    let after = cluster
        .json(&["--context", "acme", "show", "web1"])
        .expect("show");
    assert_eq!(after["init_pid"].as_u64(), Some(init_pid), "not restarted");
    cluster
        .cli_ok(&["--context", "acme", "delete", "web1", "--yes"])
        .expect("delete");
}

#[test]
fn suspension_stops_vpses_and_unsuspension_restores_their_power_state() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("cluster");
    cluster.add_tenant("acme").expect("tenant");
    fn acme<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [&["--context", "acme"][..], args].concat()
    }
    cluster
        .cli_ok(&acme(&["create", "up", "--plan", "nano"]))
        .expect("create up");
    cluster
        .cli_ok(&acme(&["create", "down", "--plan", "nano"]))
        .expect("create down");
    cluster.cli_ok(&acme(&["stop", "down"])).expect("stop down");

    let admin = ["--context", "admin", "admin", "tenant"];
    cluster
        .cli_ok(&[&admin[..], &["suspend", "acme", "--reason", "unpaid"]].concat())
        .expect("suspend");
    cluster
        .wait_until("both suspended", Duration::from_secs(30), |c| {
            Ok(state_of(c, "up") == "suspended" && state_of(c, "down") == "suspended")
        })
        .expect("held stopped");
    let refused = cluster.cli(&acme(&["start", "up"])).expect("run");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("suspended"));

    cluster
        .cli_ok(&[&admin[..], &["unsuspend", "acme"]].concat())
        .expect("unsuspend");
    cluster
        .wait_until("power states restored", Duration::from_secs(30), |c| {
            Ok(state_of(c, "up") == "running" && state_of(c, "down") == "stopped")
        })
        .expect("each VPS back as its owner left it");
    for name in ["up", "down"] {
        cluster
            .cli_ok(&acme(&["delete", name, "--yes"]))
            .expect("delete");
    }
}
