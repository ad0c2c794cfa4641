//! Issue 7, the monthly transfer allowance end to end: a real VPS sends more
//! than its plan allows; a throttling plan gets its port shaped to the
//! overage rate on the host, a suspending plan gets its VPS stopped (and a
//! start refused), and lifting the limit puts each back as it was.

use std::process::Command;
use std::time::Duration;

use paddock_tests::{require_root, Cluster};

fn acme<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "acme"][..], args].concat()
}

fn admin<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "admin", "admin"][..], args].concat()
}

/// The `tc qdisc show` lines of the host veth `veth`.
fn qdiscs(veth: &str) -> String {
    let out = Command::new("tc")
        .args(["qdisc", "show", "dev", veth])
        .output()
        .expect("tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends about 8 × 3 × 16 KiB each way between the VPS and its gateway. The
/// session may end early: a suspending plan stops the VPS under it.
fn burn_transfer(cluster: &Cluster, vps: &str) {
    let gateway = cluster.gateway();
    cluster.sh(
        "acme",
        vps,
        &format!(
            "for i in 1 2 3 4 5 6 7 8; do ping -c 3 -s 16000 -W 2 {gateway} >/dev/null & done; wait"
        ),
    );
}

fn create_plan(cluster: &Cluster, name: &str, overage: &str) {
    cluster
        .cli_ok(&admin(&[
            "plan",
            "create",
            name,
            "--vcpus",
            "1",
            "--memory",
            "256MiB",
            "--disk",
            "1GiB",
            "--ipv4",
            "1",
            "--transfer",
            "256KiB",
            "--transfer-overage",
            overage,
        ]))
        .expect("create plan");
}

#[test]
fn a_used_up_allowance_throttles_or_suspends_a_real_vps_until_lifted() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    create_plan(&cluster, "capped", "throttle:2Mbit");
    create_plan(&cluster, "strict", "suspend");
    let plan = cluster
        .json(&admin(&["plan", "list"]))
        .expect("plans")
        .as_array()
        .and_then(|plans| plans.iter().find(|p| p["name"] == "capped").cloned())
        .expect("capped plan listed");
    assert_eq!(plan["transfer_overage"], "throttle");
    assert_eq!(plan["overage_rate_bits_per_sec"], 2_000_000);

    // Throttle: the host shapes both directions of the port to 2 Mbit/s.
    cluster
        .cli_ok(&acme(&["create", "t1", "--plan", "capped", "--wait"]))
        .unwrap_or_else(|e| panic!("create: {e}\n{}", cluster.log("agent.log")));
    let t1 = cluster.json(&acme(&["show", "t1"])).expect("show");
    let veth = cluster.host_veth(t1["id"].as_str().expect("id"));
    assert!(!qdiscs(&veth).contains("tbf"), "{}", qdiscs(&veth));
    burn_transfer(&cluster, "t1");
    cluster
        .wait_until("t1 throttled", Duration::from_secs(30), |c| {
            let shown = c.json(&acme(&["show", "t1"]))?;
            Ok(shown["transfer"]["limited"] == "throttle")
        })
        .expect("throttle applied in the controller");
    cluster
        .wait_until("tbf on the port", Duration::from_secs(30), |_| {
            Ok(qdiscs(&veth).contains("rate 2Mbit"))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", qdiscs(&veth)));
    let shown = cluster.json(&acme(&["show", "t1"])).expect("show");
    assert!(
        shown["transfer"]["used_bytes"].as_u64().unwrap_or(0) >= 256 << 10,
        "{shown}"
    );
    assert_eq!(shown["transfer"]["limited_rate_bits_per_sec"], 2_000_000);
    assert_eq!(shown["state"], "running");
    let table = cluster.cli_ok(&acme(&["show", "t1"])).expect("show");
    assert!(
        table.contains("throttled to 2 Mbit/s until"),
        "the detail view says why: {table}"
    );

    let lifted = cluster
        .cli_ok(&admin(&["lift-transfer-limit", "t1", "--tenant", "acme"]))
        .expect("lift");
    assert!(lifted.contains("transfer limit lifted"), "{lifted}");
    cluster
        .wait_until("port unshaped", Duration::from_secs(30), |_| {
            Ok(!qdiscs(&veth).contains("tbf"))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", qdiscs(&veth)));

    // Suspend: the VPS is stopped on the host and a start is refused.
    cluster
        .cli_ok(&acme(&["create", "s1", "--plan", "strict", "--wait"]))
        .unwrap_or_else(|e| panic!("create: {e}\n{}", cluster.log("agent.log")));
    burn_transfer(&cluster, "s1");
    cluster
        .wait_until("s1 suspended and stopped", Duration::from_secs(60), |c| {
            let shown = c.json(&acme(&["show", "s1"]))?;
            Ok(shown["state"] == "suspended" && shown["init_pid"] == 0)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log("controller.log")));
    let s1 = cluster.json(&acme(&["show", "s1"])).expect("show");
    assert_eq!(s1["transfer"]["limited"], "suspend");
    assert_eq!(s1["desired_power"], "running", "the owner's choice is kept");
    let procs: usize = cluster
        .vps_cgroup_dirs(s1["id"].as_str().expect("id"))
        .iter()
        .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .map(|procs| procs.lines().count())
        .sum();
    assert_eq!(procs, 0, "no process of the VPS runs on the host");
    let refused = cluster.cli(&acme(&["start", "s1"])).expect("run start");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("monthly transfer allowance"), "{stderr}");

    cluster
        .cli_ok(&admin(&["lift-transfer-limit", "s1", "--tenant", "acme"]))
        .expect("lift");
    cluster
        .wait_until("s1 running again", Duration::from_secs(60), |c| {
            let shown = c.json(&acme(&["show", "s1"]))?;
            Ok(shown["state"] == "running" && shown["init_pid"] != 0)
        })
        .expect("running after lift");

    for vps in ["t1", "s1"] {
        cluster
            .cli_ok(&acme(&["delete", vps, "--yes"]))
            .expect("delete");
    }
    cluster
        .wait_until("VPSes deleted", Duration::from_secs(60), |c| {
            Ok(c.json(&acme(&["list"]))?
                .as_array()
                .is_some_and(|l| l.is_empty()))
        })
        .expect("deleted");
}
