//! Issue 2, end to end: a tenant creates a real VPS through the real CLI,
//! controller and agent, looks inside it, and deletes it without a trace.

use std::time::Duration;

use paddock_tests::{require_root, Cluster};

#[test]
fn create_exec_limits_and_delete_a_real_vps() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant acme");
    fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [&["--context", "acme"][..], args].concat()
    }

    cluster
        .cli_ok(&with(&["create", "web1", "--plan", "nano", "--wait"]))
        .expect("create web1");
    let vps = cluster.json(&with(&["show", "web1"])).expect("show");
    assert_eq!(vps["name"], "web1");
    assert_eq!(vps["tenant"], "acme");
    assert_eq!(vps["state"], "running", "{vps}");
    assert_eq!(vps["node"], cluster.node_name.as_str());
    assert_eq!(vps["plan"], "nano");
    assert_eq!(vps["memory_bytes"], 256u64 << 20);
    assert_eq!(vps["disk_bytes"], 2u64 << 30);
    assert!(vps["ipv4"].is_array());
    assert!(chrono_like(&vps["created_at"]), "{}", vps["created_at"]);
    let vps_id = vps["id"].as_str().expect("id").to_owned();
    let init_pid = vps["init_pid"].as_u64().expect("init_pid");
    assert!(init_pid > 1);

    let list = cluster.json(&with(&["list"])).expect("list");
    let names: Vec<_> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(names, vec!["web1"]);

    // What the tenant sees from inside.
    let hostname = cluster
        .cli_ok(&with(&["exec", "web1", "--", "hostname"]))
        .expect("hostname");
    assert_eq!(hostname.trim(), "web1");
    // busybox init renames itself to "init"; its executable is the template's busybox.
    let init = cluster
        .cli_ok(&with(&["exec", "web1", "--", "cat", "/proc/1/comm"]))
        .expect("comm");
    assert_eq!(init.trim(), "init", "PID 1 of the VPS");
    let init_exe = cluster
        .cli_ok(&with(&["exec", "web1", "--", "readlink", "/proc/1/exe"]))
        .expect("exe");
    assert_eq!(
        init_exe.trim(),
        "/bin/busybox",
        "PID 1 runs the template's /sbin/init"
    );
    let ps = cluster
        .cli_ok(&with(&["exec", "web1", "--", "ps", "-o", "pid,comm"]))
        .expect("ps");
    let processes: Vec<&str> = ps.lines().skip(1).collect();
    assert!(
        processes.len() <= 4,
        "ps inside the VPS sees only its own processes: {ps}"
    );
    assert!(
        processes
            .iter()
            .any(|line| line.trim_start().starts_with("1 ")),
        "{ps}"
    );
    let exited = cluster
        .cli(&with(&[
            "exec",
            "web1",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ]))
        .expect("exec");
    assert_eq!(exited.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&exited.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&exited.stderr), "err\n");

    // What the host enforces.
    let memory_limits: Vec<u64> = cluster
        .vps_cgroup_dirs(&vps_id)
        .into_iter()
        .filter_map(|dir| {
            ["memory.limit_in_bytes", "memory.max"]
                .iter()
                .find_map(|file| std::fs::read_to_string(dir.join(file)).ok())
        })
        .map(|text| text.trim().parse().expect("limit is a number"))
        .collect();
    assert_eq!(
        memory_limits,
        vec![256u64 << 20],
        "memory limit of the VPS cgroup"
    );

    // Stop and start keep the VPS; the init is a new process after start.
    cluster.cli_ok(&with(&["stop", "web1"])).expect("stop");
    assert_eq!(
        cluster.json(&with(&["show", "web1"])).expect("show")["state"],
        "stopped"
    );
    assert!(
        !process_alive(init_pid),
        "init {init_pid} still alive after stop"
    );
    cluster.cli_ok(&with(&["start", "web1"])).expect("start");
    let started = cluster.json(&with(&["show", "web1"])).expect("show");
    assert_eq!(started["state"], "running");
    let init_pid = started["init_pid"].as_u64().expect("pid");

    // Delete leaves nothing behind.
    cluster
        .cli_ok(&with(&["delete", "web1", "--yes"]))
        .expect("delete");
    let gone = cluster
        .cli(&with(&["show", "web1"]))
        .expect("show after delete");
    assert!(!gone.status.success());
    assert_eq!(
        cluster.json(&with(&["list"])).expect("list"),
        serde_json::json!([])
    );
    cluster
        .wait_until("init gone", Duration::from_secs(10), |_| {
            Ok(!process_alive(init_pid))
        })
        .expect("init exits");
    assert_eq!(cluster.leftovers(&vps_id), Vec::<String>::new());
    assert!(!cluster.agent_state_dir().join("vps").join(&vps_id).exists());
}

#[test]
fn bad_input_is_refused_and_stores_nothing() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant acme");

    let bad_name = cluster
        .cli(&["--context", "acme", "create", "../etc", "--plan", "nano"])
        .expect("run");
    assert_ne!(bad_name.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&bad_name.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("name") && stderr.contains("^[a-z][a-z0-9-]{0,62}$"),
        "{stderr}"
    );

    let bad_plan = cluster
        .cli(&["--context", "acme", "create", "web1", "--plan", "nosuch"])
        .expect("run");
    assert_ne!(bad_plan.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&bad_plan.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("plan") && stderr.contains("nosuch"),
        "{stderr}"
    );

    assert_eq!(
        cluster.json(&["--context", "acme", "list"]).expect("list"),
        serde_json::json!([])
    );

    // No token, and a wrong token: Unauthenticated, said clearly.
    cluster
        .cli_ok(&[
            "context",
            "add",
            "nobody",
            "--controller",
            &cluster.controller_url(),
            "--ca-cert",
            &cluster.ca_cert(),
            "--token",
            "pdk_0000_wrong",
        ])
        .expect("context");
    let wrong = cluster.cli(&["--context", "nobody", "list"]).expect("run");
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("not authenticated"), "{stderr}");
    let no_token = std::process::Command::new(paddock_tests::binary("paddock"))
        .args(["list"])
        .env("PADDOCK_CONFIG", cluster.dir.path().join("none.toml"))
        .env("PADDOCK_CONTROLLER", cluster.controller_url())
        .env("PADDOCK_TOKEN", "")
        .output()
        .expect("run");
    assert_ne!(no_token.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&no_token.stderr)
            .trim()
            .lines()
            .count(),
        1
    );
}

fn chrono_like(value: &serde_json::Value) -> bool {
    // RFC 3339: 2026-11-29T02:31:53Z or with an offset / fraction.
    value.as_str().is_some_and(|s| {
        s.len() >= 20
            && s.as_bytes()[4] == b'-'
            && s.as_bytes()[10] == b'T'
            && (s.ends_with('Z') || s.contains('+'))
    })
}

fn process_alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
}
