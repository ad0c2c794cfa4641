//! Issue 12, part 4: the periodic reconcile costs at most one `ListVps` per node (none for a
//! converged node whose heartbeats report the same), not one `ApplyVps` per VPS. Idle
//! converged VPSes are left alone tick after tick; a VPS that drifted behind the agent's back
//! is applied again.

use std::time::Duration;

use paddock_tests::{require_root, scrape_metrics, Cluster};

const APPLY: &str = "method=\"/paddock.v1.NodeAgent/ApplyVps\"";

/// ApplyVps calls the agent has served, whatever their outcome.
fn agent_applies(cluster: &Cluster) -> f64 {
    let text = scrape_metrics(cluster.agent_metrics_port).expect("scrape the agent");
    text.lines()
        .filter(|line| {
            line.starts_with("paddock_agent_grpc_requests_total{") && line.contains(APPLY)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A label-less counter of the controller, if it has it.
fn controller_counter(cluster: &Cluster, family: &str) -> Option<f64> {
    let text = scrape_metrics(cluster.metrics_port).expect("scrape the controller");
    text.lines()
        .find_map(|line| line.strip_prefix(family)?.strip_prefix(' ')?.parse().ok())
}

fn show(cluster: &Cluster, name: &str) -> serde_json::Value {
    cluster
        .json(&["--context", "acme", "show", name])
        .expect("show")
}

#[test]
fn idle_converged_vpses_are_not_applied_again_but_drift_is() {
    if !require_root() {
        return;
    }
    // The harness reconciles every 2 s.
    let cluster = Cluster::start().expect("cluster");
    cluster.add_tenant("acme").expect("tenant");
    let names = ["idle1", "idle2", "idle3"];
    for name in names {
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
    cluster
        .wait_until("all converged", Duration::from_secs(30), |c| {
            Ok(names
                .iter()
                .all(|name| show(c, name)["converged"] == serde_json::json!(true)))
        })
        .expect("converged");
    // Let any pass already under way finish, then watch several ticks.
    std::thread::sleep(Duration::from_secs(3));
    let before = agent_applies(&cluster);
    let converged_before = controller_counter(&cluster, "paddock_reconcile_converged_total");
    let skipped_before = controller_counter(&cluster, "paddock_reconcile_skipped_total");
    std::thread::sleep(Duration::from_secs(7));
    let idle_applies = agent_applies(&cluster) - before;
    assert_eq!(
        idle_applies, 0.0,
        "3 idle converged VPSes were applied {idle_applies} times in 7 s (3 reconcile ticks)"
    );
    let converged_after = controller_counter(&cluster, "paddock_reconcile_converged_total");
    let skipped_after = controller_counter(&cluster, "paddock_reconcile_skipped_total");
    // The ticks went on: each either ran a pass that found the VPSes converged, or was skipped
    // because the node was converged and its heartbeats reported the same since.
    let grew = |before: Option<f64>, after: Option<f64>| {
        before
            .zip(after)
            .map_or(0.0, |(before, after)| after - before)
    };
    let converged_vpses = grew(converged_before, converged_after);
    let skipped_passes = grew(skipped_before, skipped_after);
    assert!(
        converged_vpses / 3.0 + skipped_passes >= 2.0,
        "the ticks saw the node converged: {converged_vpses} VPSes found converged, \
         {skipped_passes} passes skipped"
    );

    // Drift behind the agent's back: the init of idle2 dies. The next pass
    // sees it stopped while it should run, and applies it again.
    let victim = show(&cluster, "idle2");
    let init_pid = victim["init_pid"].as_u64().expect("init pid");
    assert!(init_pid > 1, "{victim}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &init_pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let before_drift = agent_applies(&cluster);
    cluster
        .wait_until("idle2 running again", Duration::from_secs(30), |c| {
            let vps = show(c, "idle2");
            Ok(vps["state"] == "running"
                && vps["init_pid"].as_u64().is_some_and(|pid| pid != init_pid))
        })
        .expect("the drifted VPS is started again by the reconciler");
    assert!(
        agent_applies(&cluster) > before_drift,
        "the drifted VPS was applied again"
    );
    for name in names {
        cluster
            .cli_ok(&["--context", "acme", "delete", name, "--yes"])
            .expect("delete");
    }
}
