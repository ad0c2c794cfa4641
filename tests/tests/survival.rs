//! The node survives its agent: `kill -9` of the agent leaves every VPS running and the
//! restarted agent re-adopts them (same init pids, exec works); an agent killed in the middle
//! of a create or a delete finishes or rolls back on restart, leaving the VPS fully there or
//! fully gone, with no leaked cgroup, mount, loop device, disk image or process.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paddock_tests::{binary, require_root, Cluster};

fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "acme"][..], args].concat()
}

fn show(cluster: &Cluster, name: &str) -> serde_json::Value {
    cluster.json(&with(&["show", name])).expect("show")
}

fn process_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("X");
        state != "Z" && state != "X"
    })
}

/// Loop devices backed by files under `dir`.
fn loop_devices_under(dir: &Path) -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let backing =
                        std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
                    Path::new(backing.trim())
                        .starts_with(dir)
                        .then(|| backing.trim().to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_running(cluster: &Cluster, name: &str) -> u64 {
    cluster
        .wait_until(&format!("{name} running"), Duration::from_secs(60), |c| {
            let vps = c.json(&with(&["show", name]))?;
            Ok(vps["state"] == "running" && vps["init_pid"].as_u64().unwrap_or(0) > 1)
        })
        .expect("running");
    show(cluster, name)["init_pid"].as_u64().expect("init pid")
}

/// Waits until `check` holds, polling fast (to catch the agent mid-operation).
fn poll(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn vpses_outlive_a_killed_agent_and_interrupted_operations_leave_no_trace() {
    if !require_root() {
        return;
    }
    let mut cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    let state_dir = cluster.agent_state_dir();

    // Three running VPSes, then kill -9 of the agent.
    let names = ["surv1", "surv2", "surv3"];
    let mut pids = Vec::new();
    for name in names {
        cluster
            .cli_ok(&with(&["create", name, "--plan", "nano", "--wait"]))
            .expect("create");
        pids.push(wait_running(&cluster, name));
    }
    cluster.kill_agent();
    for pid in &pids {
        assert!(process_alive(*pid), "init {pid} died with the agent");
    }
    cluster.start_agent().expect("restart agent");
    for (name, pid) in names.iter().zip(&pids) {
        assert_eq!(wait_running(&cluster, name), *pid, "{name} was restarted");
        let out = cluster
            .cli_ok(&with(&["exec", name, "--", "cat", "/proc/self/uid_map"]))
            .expect("exec after agent restart");
        assert!(out.trim().starts_with('0'), "{out}");
        // The VPS's own /proc view (lxcfs, which outlives the agent) still answers: nano is
        // 256 MiB and 1 vCPU.
        let meminfo = cluster
            .cli_ok(&with(&["exec", name, "--", "cat", "/proc/meminfo"]))
            .expect("meminfo after agent restart");
        assert!(meminfo.contains("MemTotal:         262144 kB"), "{meminfo}");
        let nproc = cluster
            .cli_ok(&with(&["exec", name, "--", "nproc"]))
            .expect("nproc after agent restart");
        assert_eq!(nproc.trim(), "1", "nproc in nano after agent restart");
    }

    // kill -9 in the middle of a create: after the restart the VPS is fully there.
    let before: Vec<_> = std::fs::read_dir(state_dir.join("vps"))
        .expect("vps dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    cluster
        .cli_ok(&with(&["create", "midcreate", "--plan", "nano"]))
        .expect("create without waiting");
    poll(
        "create to start on the agent",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(state_dir.join("vps"))
                .map(|d| d.flatten().any(|e| !before.contains(&e.file_name())))
                .unwrap_or(false)
        },
    );
    cluster.kill_agent();
    cluster.start_agent().expect("restart agent");
    let created_pid = wait_running(&cluster, "midcreate");
    let out = cluster
        .cli_ok(&with(&["exec", "midcreate", "--", "echo", "whole"]))
        .expect("exec");
    assert_eq!(out.trim(), "whole");
    let created_id = show(&cluster, "midcreate")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        loop_devices_under(&state_dir.join("vps").join(&created_id)).len(),
        1,
        "exactly one disk attached"
    );

    // kill -9 in the middle of a delete: after the restart it is fully gone.
    let victim = show(&cluster, "surv1");
    let victim_id = victim["id"].as_str().expect("id").to_string();
    let victim_pid = victim["init_pid"].as_u64().expect("pid");
    let mut delete = Command::new(binary("paddock"))
        .args(with(&["delete", "surv1", "--yes"]))
        .env("PADDOCK_CONFIG", cluster.dir.path().join("cli.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn delete");
    let victim_state = state_dir.join("vps").join(&victim_id).join("state.json");
    poll(
        "delete to start on the agent",
        Duration::from_secs(30),
        || std::fs::read_to_string(&victim_state).map_or(true, |s| s.contains("deleting")),
    );
    cluster.kill_agent();
    // The controller keeps the delete going; the CLI's wait is not needed.
    let _ = delete.kill();
    let _ = delete.wait();
    cluster.start_agent().expect("restart agent");
    cluster
        .wait_until("surv1 gone", Duration::from_secs(60), |c| {
            let list = c.json(&with(&["list"]))?;
            Ok(!list
                .as_array()
                .is_some_and(|l| l.iter().any(|v| v["name"] == "surv1")))
        })
        .expect("delete finished");
    cluster
        .wait_until("surv1 leftovers gone", Duration::from_secs(20), |c| {
            Ok(c.leftovers(&victim_id).is_empty()
                && !process_alive(victim_pid)
                && loop_devices_under(&state_dir.join("vps").join(&victim_id)).is_empty())
        })
        .expect("no leftovers");
    assert!(!state_dir.join("vps").join(&victim_id).exists());
    // The others never noticed.
    for (name, pid) in names[1..].iter().zip(&pids[1..]) {
        assert_eq!(wait_running(&cluster, name), *pid);
    }

    // Delete everything: no cgroup, mount, loop device, image or process remains.
    let mut ids = Vec::new();
    for name in ["surv2", "surv3", "midcreate"] {
        ids.push(show(&cluster, name)["id"].as_str().expect("id").to_string());
        cluster
            .cli_ok(&with(&["delete", name, "--yes"]))
            .expect("delete");
    }
    cluster
        .wait_until("all gone", Duration::from_secs(30), |c| {
            Ok(ids.iter().all(|id| c.leftovers(id).is_empty())
                && loop_devices_under(&state_dir).is_empty())
        })
        .expect("no leftovers");
    for pid in pids[1..].iter().chain([&created_pid]) {
        assert!(!process_alive(*pid), "process {pid} left behind");
    }
}
