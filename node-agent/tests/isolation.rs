//! Isolation of a VPS, asserted from inside it as its root (through the in-VPS probe and
//! busybox) and from the host: own user namespace and non-overlapping id ranges, refused
//! escapes (devices, sysrq, modules, kcore, keyring, file handles, io_uring, cgroup
//! release_agent, own limits, host processes, host hostname), masked /proc, read-only /sys,
//! minimal /dev, device cgroup, capability bounding set, nothing left after delete.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;
use paddock_agent::runtime::capabilities;
use paddock_agent::runtime::idmap::ID_RANGE_SIZE;

#[test]
fn a_vps_is_walled_off_from_the_host_and_from_other_vpses() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let first = fixture.new_vps_id();
    let second = fixture.new_vps_id();
    let host_hostname = nix::unistd::gethostname().expect("hostname");
    let mut init_pids = Vec::new();
    let mut ranges = Vec::new();

    for vps_id in [&first, &second] {
        let observed = fixture
            .runtime
            .apply(&spec(vps_id, small_limits()))
            .expect("apply");
        let init_pid = running_pid(&observed);
        init_pids.push(init_pid);

        // Root inside, an unprivileged id range outside.
        assert_eq!(sh_ok(&fixture.runtime, vps_id, "id -u").trim(), "0");
        let uid_map = sh_ok(&fixture.runtime, vps_id, "cat /proc/self/uid_map");
        let fields: Vec<u64> = uid_map
            .split_whitespace()
            .map(|f| f.parse().expect("numeric uid_map"))
            .collect();
        assert_eq!(fields.len(), 3, "uid_map {uid_map:?}");
        assert_eq!(fields[0], 0);
        assert!(
            fields[1] >= 100_000,
            "VPS root maps to host id {}",
            fields[1]
        );
        assert_eq!(fields[2], u64::from(ID_RANGE_SIZE));
        let gid_map = sh_ok(&fixture.runtime, vps_id, "cat /proc/self/gid_map");
        assert_eq!(
            gid_map.split_whitespace().collect::<Vec<_>>(),
            uid_map.split_whitespace().collect::<Vec<_>>()
        );
        let host_uid = proc_status_field(init_pid, "Uid:");
        assert!(
            host_uid
                .split_whitespace()
                .all(|id| id == fields[1].to_string()),
            "init runs as host uid {host_uid}, expected {}",
            fields[1]
        );
        let recorded = fixture
            .runtime
            .id_range(vps_id)
            .expect("id range")
            .expect("allocated");
        assert_eq!(u64::from(recorded.host_base), fields[1]);
        ranges.push(recorded);

        // The shared template appears owned by the VPS's root, and copy-up works.
        assert_eq!(
            sh_ok(&fixture.runtime, vps_id, "stat -c %u:%g /bin/busybox /etc").trim(),
            "0:0\n0:0"
        );
        sh_ok(
            &fixture.runtime,
            vps_id,
            "echo hi > /etc/probe-file && chown 1000:1000 /etc/probe-file",
        );

        // The probe tries every escape; each must be refused.
        let host_root = fs::metadata("/").expect("stat /").dev();
        let probe = exec(
            &fixture.runtime,
            vps_id,
            &[
                "/usr/bin/paddock-probe",
                &nix::sys::stat::major(host_root).to_string(),
                &nix::sys::stat::minor(host_root).to_string(),
                &std::process::id().to_string(),
            ],
        );
        eprintln!("probe in {vps_id}:\n{}", probe.stdout);
        assert_eq!(
            probe.code,
            Some(0),
            "probe:\n{}\n{}",
            probe.stdout,
            probe.stderr
        );
        assert!(!probe.stdout.contains("FAIL"), "{}", probe.stdout);

        // Host processes are invisible: only the VPS's own (small) pids.
        let pids = sh_ok(&fixture.runtime, vps_id, "ls /proc | grep -E '^[0-9]+$'");
        assert!(
            !pids.lines().any(|p| p == std::process::id().to_string()),
            "host pid visible: {pids}"
        );
        assert!(pids.lines().any(|p| p == "1"), "no init in {pids}");

        // Changing the hostname stays inside.
        sh_ok(&fixture.runtime, vps_id, "hostname changed-inside");
        assert_eq!(nix::unistd::gethostname().expect("hostname"), host_hostname);

        // Capability bounding set.
        let cap_bnd = sh_ok(&fixture.runtime, vps_id, "grep CapBnd /proc/self/status");
        let mask = u64::from_str_radix(cap_bnd.split_whitespace().nth(1).expect("mask"), 16)
            .expect("hex mask");
        assert_eq!(mask & capabilities::dropped_mask(), 0, "CapBnd {cap_bnd}");
        assert_ne!(
            mask & (1 << 21),
            0,
            "CAP_SYS_ADMIN (in its own namespaces) kept"
        );
        let seccomp = sh_ok(&fixture.runtime, vps_id, "grep Seccomp: /proc/self/status");
        assert!(seccomp.contains('2'), "seccomp filter mode: {seccomp}");
        let no_new_privs = sh_ok(
            &fixture.runtime,
            vps_id,
            "grep NoNewPrivs /proc/self/status",
        );
        assert!(
            no_new_privs.contains('0'),
            "setuid binaries keep working: {no_new_privs}"
        );

        // Minimal /dev, masked and read-only paths, read-only /sys, /proc flags.
        let mut dev: Vec<String> = sh_ok(&fixture.runtime, vps_id, "ls /dev")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        dev.sort();
        assert_eq!(
            dev,
            [
                "console", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
                "stdout", "tty", "urandom", "zero"
            ]
        );
        let mounts = sh_ok(&fixture.runtime, vps_id, "cat /proc/mounts");
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.get(1).copied() {
                Some("/proc") => {
                    for flag in ["nosuid", "nodev", "noexec"] {
                        assert!(fields[3].contains(flag), "/proc without {flag}: {line}");
                    }
                }
                Some("/sys") | Some("/proc/sys") | Some("/proc/sysrq-trigger") => {
                    assert!(fields[3].starts_with("ro"), "not read-only: {line}")
                }
                _ => {}
            }
        }
        // Only the root overlay's options name host paths (as with any overlay root); no host
        // mount is reachable.
        let state_dir = fixture.state_dir.path().to_string_lossy().into_owned();
        assert!(
            mounts
                .lines()
                .filter(|l| l.split_whitespace().nth(1) != Some("/"))
                .all(|l| !l.contains(&state_dir)),
            "host paths visible in the VPS's mounts:\n{mounts}"
        );
        // (This kernel may lack kcore / sysrq-trigger; those that exist must be masked.)
        assert_eq!(
            sh_ok(
                &fixture.runtime,
                vps_id,
                "cat /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug 2>/dev/null | wc -c"
            )
            .trim(),
            "0"
        );
        assert_eq!(
            sh_ok(&fixture.runtime, vps_id, "ls /sys/firmware | wc -l").trim(),
            "0"
        );
        let remount = exec(
            &fixture.runtime,
            vps_id,
            &["sh", "-c", "echo 1 > /proc/sys/kernel/panic"],
        );
        assert_ne!(remount.code, Some(0), "/proc/sys writable: {remount:?}");

        // Host side: the device cgroup denies everything but the /dev nodes (cgroup v1).
        if let Some(devices) = fixture
            .runtime
            .cgroup_paths(vps_id)
            .into_iter()
            .map(|dir| dir.join("devices.list"))
            .find(|file| file.exists())
        {
            let list = fs::read_to_string(&devices).expect("devices.list");
            assert!(!list.contains("a *:* rwm"), "devices allowed: {list}");
            assert!(list.contains("c 1:3 rw"), "null not allowed: {list}");
            assert!(
                !list.lines().any(|l| l.starts_with('b')),
                "block device allowed: {list}"
            );
        }
    }

    assert!(
        !ranges[0].overlaps(&ranges[1]),
        "ranges overlap: {ranges:?}"
    );
    // Files created by one VPS's root are not owned by the other's.
    let first_dir = fixture.vps_dir(&first);
    assert!(first_dir.join("disk.img").exists());

    for (vps_id, pid) in [(&first, init_pids[0]), (&second, init_pids[1])] {
        fixture.runtime.delete(vps_id).expect("delete");
        fixture.assert_gone(vps_id, &[pid]);
    }
}
