//! Issue 15, end to end with the real agent: an agent whose list of controllers starts with
//! one that is down (a closed port) enrols, registers and runs its VPSes through the next.

use paddock_tests::{require_root, Cluster};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a loopback port")
}

#[test]
fn the_agent_enrols_and_runs_through_the_second_controller_when_the_first_is_down() {
    if !require_root() {
        return;
    }
    let dead = format!("https://127.0.0.1:{}", closed_port());
    let controllers = format!("[\"{dead}\", {{controller}}]");
    // `start` waits until the node is registered and online.
    let cluster = Cluster::start_with_config(&[], &[("controller", &controllers)])
        .expect("a cluster whose agent lists a dead controller first");
    assert!(
        cluster.agent_state_dir().join("tls/node.crt").is_file(),
        "the agent holds the certificate the live controller signed"
    );
    let log = cluster.log("agent.log");
    assert!(
        log.contains(&dead),
        "the agent tried the dead controller first and said so:\n{log}"
    );
    let enrolled = log
        .lines()
        .find(|line| line.contains("enrolled with the controller"))
        .unwrap_or_else(|| panic!("no enrolment in the agent's log:\n{log}"));
    assert!(
        enrolled.contains(&cluster.controller_url()) && !enrolled.contains(&dead),
        "the second controller enrolled the agent: {enrolled}"
    );
    cluster.add_tenant("acme").expect("tenant acme");
    let created = cluster
        .json(&[
            "--context",
            "acme",
            "create",
            "web1",
            "--plan",
            "nano",
            "--wait",
        ])
        .expect("create --wait through a node enrolled by the second controller");
    assert_eq!(created["state"], "running", "{created}");
    cluster
        .cli_ok(&["--context", "acme", "delete", "web1", "--yes", "--wait"])
        .expect("delete web1");
}
