//! Issue 12: the CLI's waits follow the controller's `WatchVps` stream through the real
//! CLI, controller and agent — create, stop, start, restart and delete each wait for their
//! state without polling `GetVps`.

use paddock_tests::{require_root, scrape_metrics, Cluster};
use serde_json::Value;

/// `GetVps` calls the controller answered so far, any status.
fn get_vps_calls(cluster: &Cluster) -> f64 {
    let metrics = scrape_metrics(cluster.metrics_port).expect("controller metrics");
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("paddock_grpc_requests_total{")
                && line.contains("method=\"/paddock.v1.VpsService/GetVps\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn acme<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "acme"][..], args].concat()
}

fn json_of(cluster: &Cluster, args: &[&str]) -> Value {
    cluster.json(&acme(args)).expect("paddock")
}

#[test]
fn waits_follow_the_stream_through_the_real_stack() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant acme");
    let polls_before = get_vps_calls(&cluster);

    let created = json_of(&cluster, &["create", "web1", "--plan", "nano", "--wait"]);
    assert_eq!(created["state"], "running", "{created}");
    let vps_id = created["id"].as_str().expect("id").to_owned();
    let first_init = created["init_pid"].as_u64().expect("init_pid");
    assert!(first_init > 1, "{created}");

    let stopped = json_of(&cluster, &["stop", "web1", "--wait"]);
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    let started = json_of(&cluster, &["start", "web1", "--wait"]);
    assert_eq!(started["state"], "running", "{started}");
    let start_init = started["init_pid"].as_u64().expect("init_pid");
    let restarted = json_of(&cluster, &["restart", "web1", "--wait"]);
    assert_eq!(restarted["state"], "running", "{restarted}");
    let restart_init = restarted["init_pid"].as_u64().expect("init_pid");
    assert!(
        restart_init > 1 && restart_init != start_init,
        "a new init after the restart: {start_init} then {restart_init}"
    );

    let deleted = cluster
        .cli_ok(&acme(&["delete", "web1", "--yes", "--wait"]))
        .expect("delete web1");
    assert_eq!(deleted.trim_end(), "vps web1 deleted");
    // `restart` reads the init it replaces once (GetVps) before it asks for the restart.
    assert_eq!(
        get_vps_calls(&cluster),
        polls_before + 1.0,
        "every wait followed the stream; none polled GetVps"
    );
    // Gone means gone: the controller no longer knows it and the node kept nothing.
    let shown = cluster.cli(&acme(&["show", "web1"])).expect("show");
    assert!(!shown.status.success());
    assert!(
        cluster.leftovers(&vps_id).is_empty(),
        "{:?}",
        cluster.leftovers(&vps_id)
    );
}
