//! Limits and lifecycle end to end through the CLI, controller and agent: the plan's limits
//! reach the VPS's cgroup and disk, and `rebuild` gives a running VPS a fresh root filesystem
//! on the same disk.

use std::time::Duration;

use paddock_tests::{require_root, Cluster};

fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "acme"][..], args].concat()
}

#[test]
fn plan_limits_reach_the_vps_and_rebuild_resets_its_disk() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    cluster
        .cli_ok(&with(&["create", "lim1", "--plan", "nano", "--wait"]))
        .expect("create");
    let vps = cluster.json(&with(&["show", "lim1"])).expect("show");
    let vps_id = vps["id"].as_str().expect("id").to_string();
    let disk_bytes = vps["disk_bytes"].as_u64().expect("disk bytes");

    // The plan's IO limits throttle the VPS's disk on the host (nano: 50 MiB/s, 500 IOPS).
    let throttles: String = cluster
        .vps_cgroup_dirs(&vps_id)
        .iter()
        .flat_map(|dir| {
            [
                "io.max",
                "blkio.throttle.read_bps_device",
                "blkio.throttle.write_bps_device",
                "blkio.throttle.read_iops_device",
                "blkio.throttle.write_iops_device",
            ]
            .map(|file| std::fs::read_to_string(dir.join(file)).unwrap_or_default())
        })
        .collect();
    let mib50 = (50u64 << 20).to_string();
    let v2 = ["rbps=", "wbps="]
        .iter()
        .all(|key| throttles.contains(&format!("{key}{mib50}")))
        && throttles.contains("riops=500")
        && throttles.contains("wiops=500");
    let v1 = throttles
        .lines()
        .filter(|line| line.ends_with(&format!(" {mib50}")) || line.ends_with(" 500"))
        .count()
        == 4;
    assert!(
        v1 || v2,
        "nano's IO limits on the host cgroup: {throttles:?}"
    );

    // The disk is the plan's size, as the VPS sees it.
    let df = cluster
        .cli_ok(&with(&["exec", "lim1", "--", "df", "-k", "/"]))
        .expect("df");
    let total_kib: u64 = df
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("df total");
    assert!(
        total_kib * 1024 <= disk_bytes && total_kib * 1024 > disk_bytes / 10 * 9,
        "disk of {total_kib} KiB for a {disk_bytes}-byte plan"
    );
    let image = cluster
        .agent_state_dir()
        .join("vps")
        .join(&vps_id)
        .join("disk.img");
    assert_eq!(std::fs::metadata(&image).expect("image").len(), disk_bytes);

    // Rebuild: the file written before is gone, the VPS runs again on the same disk.
    cluster
        .cli_ok(&with(&[
            "exec",
            "lim1",
            "--",
            "touch",
            "/root/before-rebuild",
        ]))
        .expect("touch");
    cluster
        .cli_ok(&with(&["rebuild", "lim1", "--yes"]))
        .expect("rebuild");
    cluster
        .wait_until("rebuilt", Duration::from_secs(60), |c| {
            let vps = c.json(&with(&["show", "lim1"]))?;
            if vps["state"] != "running" {
                return Ok(false);
            }
            let probe = c.cli(&with(&[
                "exec",
                "lim1",
                "--",
                "test",
                "-e",
                "/root/before-rebuild",
            ]))?;
            Ok(probe.status.code() == Some(1))
        })
        .expect("rebuild finished");
    assert_eq!(std::fs::metadata(&image).expect("image").len(), disk_bytes);

    cluster
        .cli_ok(&with(&["delete", "lim1", "--yes"]))
        .expect("delete");
    cluster
        .wait_until("gone", Duration::from_secs(30), |c| {
            Ok(c.leftovers(&vps_id).is_empty())
        })
        .expect("no leftovers");
}
