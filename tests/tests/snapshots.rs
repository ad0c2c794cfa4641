//! Snapshots through the CLI, end to end: a running VPS writes a file, is snapshotted,
//! changes the file, is restored (and runs again on its own), and reads the old content;
//! the quota, the JSON list, deleting a snapshot and deleting the VPS with its snapshots.

use std::time::Duration;

use paddock_tests::{require_root, Cluster};

fn acme<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "acme"][..], args].concat()
}

#[test]
fn snapshot_write_restore_read() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    cluster
        .cli_ok(&acme(&["create", "s1", "--plan", "nano", "--wait"]))
        .unwrap_or_else(|e| panic!("create: {e}\n{}", cluster.log("agent.log")));
    let vps_id = cluster.json(&acme(&["show", "s1"])).expect("show")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    cluster.sh_ok("acme", "s1", "echo version-1 > /state.txt");

    let taken = cluster
        .json(&acme(&["snapshot", "create", "s1", "before"]))
        .unwrap_or_else(|e| panic!("snapshot: {e}\n{}", cluster.log("agent.log")));
    assert_eq!(taken["name"], "before", "{taken}");
    let method = taken["method"].as_str().expect("method").to_owned();
    assert!(method == "sparse" || method == "reflink", "{taken}");
    assert!(
        taken["size_bytes"].as_u64().expect("size") >= 1 << 30,
        "{taken}"
    );
    let image = cluster
        .agent_state_dir()
        .join("vps")
        .join(&vps_id)
        .join("snapshots/before.img");
    assert!(image.exists(), "{} missing", image.display());

    let init_before = cluster.json(&acme(&["show", "s1"])).expect("show")["init_pid"].clone();
    cluster.sh_ok("acme", "s1", "echo version-2 > /state.txt");
    cluster
        .cli_ok(&acme(&["snapshot", "restore", "s1", "before", "--yes"]))
        .unwrap_or_else(|e| panic!("restore: {e}\n{}", cluster.log("agent.log")));
    let shown = cluster.json(&acme(&["show", "s1"])).expect("show");
    assert_eq!(shown["state"], "running", "{shown}");
    assert_ne!(
        shown["init_pid"], init_before,
        "restarted on the restored disk"
    );
    assert_eq!(
        cluster.sh_ok("acme", "s1", "cat /state.txt").trim(),
        "version-1"
    );

    // The list, as JSON and as a table; the quota (nano: 3) refuses a fourth.
    for name in ["second", "third"] {
        cluster
            .cli_ok(&acme(&["snapshot", "create", "s1", name]))
            .unwrap_or_else(|e| panic!("snapshot {name}: {e}"));
    }
    let listed = cluster
        .json(&acme(&["snapshot", "list", "s1"]))
        .expect("list");
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["before", "second", "third"]);
    let table = cluster
        .cli_ok(&acme(&["snapshot", "list", "s1"]))
        .expect("table");
    assert!(table.starts_with("NAME"), "{table}");
    let full = cluster
        .cli(&acme(&["snapshot", "create", "s1", "fourth"]))
        .expect("run");
    assert!(!full.status.success());
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(stderr.contains("snapshot quota exceeded"), "{stderr}");
    let missing = cluster
        .cli(&acme(&["snapshot", "restore", "s1", "nope", "--yes"]))
        .expect("run");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("not found"), "{stderr}");

    cluster
        .cli_ok(&acme(&["snapshot", "delete", "s1", "second"]))
        .expect("delete snapshot");
    assert!(!cluster
        .agent_state_dir()
        .join("vps")
        .join(&vps_id)
        .join("snapshots/second.img")
        .exists());
    // A leftover on the node under a free name (a create whose answer never reached the
    // store: the controller died mid-copy): a create of that name replaces it, not
    // `AlreadyExists` forever.
    let snapshots_dir = cluster
        .agent_state_dir()
        .join("vps")
        .join(&vps_id)
        .join("snapshots");
    for ext in ["img", "json"] {
        std::fs::copy(
            snapshots_dir.join(format!("before.{ext}")),
            snapshots_dir.join(format!("second.{ext}")),
        )
        .expect("make a leftover");
    }
    let retaken = cluster
        .json(&acme(&["snapshot", "create", "s1", "second"]))
        .unwrap_or_else(|e| panic!("create over a leftover: {e}\n{}", cluster.log("agent.log")));
    assert_eq!(retaken["name"], "second", "{retaken}");
    assert!(
        retaken["created_at"].as_str() > taken["created_at"].as_str(),
        "the leftover was kept: {retaken} vs {taken}"
    );
    cluster
        .cli_ok(&acme(&["snapshot", "delete", "s1", "second"]))
        .expect("delete snapshot");

    let events = cluster
        .json(&["--context", "admin", "admin", "audit"])
        .expect("audit");
    let audited = events.to_string();
    for method in ["CreateSnapshot", "RestoreSnapshot", "DeleteSnapshot"] {
        assert!(audited.contains(method), "{method} not audited: {audited}");
    }

    // Deleting the VPS deletes its snapshots on the node.
    cluster
        .cli_ok(&acme(&["delete", "s1", "--yes"]))
        .expect("delete VPS");
    cluster
        .wait_until("the VPS dir is gone", Duration::from_secs(30), |c| {
            Ok(!c.agent_state_dir().join("vps").join(&vps_id).exists())
        })
        .expect("VPS dir removed");
}
