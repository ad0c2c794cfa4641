//! Isolation end to end, as a tenant sees it through `paddock exec`: each VPS's root is root
//! of its own user namespace, mapped to its own non-overlapping range of host ids, and the
//! escapes a tenant would try are refused. (The full probe runs in node-agent/tests.)

use paddock_tests::{require_root, Cluster};

fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "acme"][..], args].concat()
}

#[test]
fn tenants_get_their_own_user_namespace_and_id_range() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    let mut ranges = Vec::new();
    for name in ["iso1", "iso2"] {
        cluster
            .cli_ok(&with(&["create", name, "--plan", "nano", "--wait"]))
            .expect("create");
        assert_eq!(
            cluster
                .cli_ok(&with(&["exec", name, "--", "id", "-u"]))
                .expect("id")
                .trim(),
            "0"
        );
        let map = cluster
            .cli_ok(&with(&["exec", name, "--", "cat", "/proc/self/uid_map"]))
            .expect("uid_map");
        let fields: Vec<u64> = map
            .split_whitespace()
            .map(|f| f.parse().expect("number"))
            .collect();
        assert_eq!(fields[0], 0, "{map}");
        assert!(fields[1] >= 100_000, "root maps to host id {}", fields[1]);
        ranges.push((fields[1], fields[1] + fields[2]));

        // The host sees the init as the unprivileged id.
        let pid = cluster.json(&with(&["show", name])).expect("show")["init_pid"]
            .as_u64()
            .expect("pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
        assert!(uid_line.contains(&fields[1].to_string()), "{uid_line}");

        for (what, script) in [
            ("load a module", "insmod /nonexistent.ko"),
            ("write /proc/sys", "echo 1 > /proc/sys/kernel/panic"),
            ("write /sys", "echo 1 > /sys/kernel/profiling"),
            ("create a block device", "mknod /tmp/sda b 8 0"),
            ("unmount a /proc mask", "umount /proc/keys"),
            ("unmount a read-only /proc path", "umount -l /proc/sys"),
            (
                "mount an unmasked proc",
                "mkdir -p /tmp/p && mount -t proc proc /tmp/p",
            ),
            ("see other disks", "grep loop /proc/partitions"),
            (
                "see host paths",
                "grep -e /var/lib -e /tmp/ /proc/self/mountinfo",
            ),
        ] {
            let out = cluster
                .cli(&with(&["exec", name, "--", "sh", "-c", script]))
                .expect("exec");
            assert_ne!(out.status.code(), Some(0), "could {what}");
        }
    }
    let (a, b) = (ranges[0], ranges[1]);
    assert!(a.1 <= b.0 || b.1 <= a.0, "ranges overlap: {ranges:?}");
    for name in ["iso1", "iso2"] {
        cluster
            .cli_ok(&with(&["delete", name, "--yes"]))
            .expect("delete");
    }
}
