//! Growing a VPS's disk through the CLI, end to end: the controller grows
//! the record (and the tenant's usage), the agent grows the image and its
//! filesystem — online where the node's agent has CAP_SYS_RESOURCE, at the
//! next restart where it has not — and a disk never shrinks.

use std::time::Duration;

use paddock_tests::{require_root, Cluster};

const GIB: u64 = 1 << 30;

fn acme<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "acme"][..], args].concat()
}

/// The size of the VPS's root filesystem as it sees it (`df`, bytes).
fn guest_disk_bytes(cluster: &Cluster) -> u64 {
    let df = cluster.sh_ok("acme", "d1", "df -Pk / | tail -n 1");
    let kib: u64 = df
        .split_whitespace()
        .nth(1)
        .and_then(|blocks| blocks.parse().ok())
        .unwrap_or_else(|| panic!("df output: {df}"));
    kib * 1024
}

fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

#[test]
fn a_disk_grows_through_the_cli_and_never_shrinks() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    cluster
        .cli_ok(&acme(&["create", "d1", "--plan", "nano", "--wait"]))
        .unwrap_or_else(|e| panic!("create: {e}\n{}", cluster.log("agent.log")));
    let before = guest_disk_bytes(&cluster);
    assert!(before <= 2 * GIB, "nano's 2 GiB disk shows {before} bytes");
    let init_pid = cluster.json(&acme(&["show", "d1"])).expect("show")["init_pid"].clone();

    cluster
        .cli_ok(&acme(&["resize", "d1", "--disk", "3GiB"]))
        .unwrap_or_else(|e| panic!("resize: {e}\n{}", cluster.log("agent.log")));
    let shown = cluster.json(&acme(&["show", "d1"])).expect("show");
    assert_eq!(shown["disk_bytes"], 3 * GIB);
    assert_eq!(shown["state"], "running", "{shown}");
    let quota = cluster.json(&acme(&["quota"])).expect("quota");
    assert_eq!(quota["used"]["disk_bytes"], 3 * GIB, "{quota}");

    if has_cap_sys_resource() {
        cluster
            .wait_until(
                "the guest sees the bigger disk",
                Duration::from_secs(30),
                |c| Ok(guest_disk_bytes(c) > 2 * GIB + GIB / 2),
            )
            .expect("grown online");
        let shown = cluster.json(&acme(&["show", "d1"])).expect("show");
        assert_eq!(shown["init_pid"], init_pid, "grown without a restart");
    } else {
        // The node cannot resize a mounted filesystem: it says when it will.
        cluster
            .wait_until("the deferral is reported", Duration::from_secs(30), |c| {
                let shown = c.json(&acme(&["show", "d1"]))?;
                Ok(shown["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("disk grows to 3.0 GiB at its next")))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(guest_disk_bytes(&cluster), before);
        cluster.cli_ok(&acme(&["restart", "d1"])).expect("restart");
    }
    let after = guest_disk_bytes(&cluster);
    assert!(
        after > 2 * GIB + GIB / 2,
        "the guest sees {after} bytes on a 3 GiB disk (before: {before})"
    );
    cluster.sh_ok(
        "acme",
        "d1",
        "dd if=/dev/zero of=/root/big bs=1M count=256 2>/dev/null && sync && rm /root/big",
    );

    // Shrinking is refused, and changes nothing.
    let refused = cluster
        .cli(&acme(&["resize", "d1", "--disk", "1GiB"]))
        .expect("run resize");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("a disk cannot shrink"), "{stderr}");
    assert_eq!(
        cluster.json(&acme(&["show", "d1"])).expect("show")["disk_bytes"],
        3 * GIB
    );

    cluster
        .cli_ok(&acme(&["delete", "d1", "--yes"]))
        .expect("delete");
    cluster
        .wait_until("VPS deleted", Duration::from_secs(60), |c| {
            Ok(c.json(&acme(&["list"]))?
                .as_array()
                .is_some_and(|l| l.is_empty()))
        })
        .expect("deleted");
}
