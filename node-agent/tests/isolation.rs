//! Isolation of a VPS, asserted from inside it as its root (through the in-VPS probe and
//! busybox) and from the host: own user namespace and non-overlapping id ranges, refused
//! escapes (devices, sysrq, modules, kcore, keyring, file handles, io_uring, cgroup
//! release_agent, own limits, host processes, host hostname), masked /proc, read-only /sys,
//! minimal /dev, device cgroup, capability bounding set, nothing left after delete; masks and
//! read-only mounts the VPS's root cannot unmount, move, remount or get around with a fresh
//! proc/sysfs; no host path, no other VPS's disk and no cgroup but its own visible inside.

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
        // No host path is visible (not even in the root overlay's options).
        let state_dir = fixture.state_dir.path().to_string_lossy().into_owned();
        assert!(
            mounts.lines().all(|l| !l.contains(&state_dir)),
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

/// Paths the runtime masks or makes read-only inside a VPS (those the kernel has).
const MASKED: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/acpi",
    "/proc/scsi",
    "/proc/partitions",
    "/proc/fs/ext4",
    "/proc/fs/jbd2",
    "/sys/firmware",
    "/sys/block",
    "/sys/class/block",
    "/sys/class/bdi",
    "/sys/dev/block",
    "/sys/devices/virtual/block",
    "/sys/devices/virtual/bdi",
    "/sys/fs/ext4",
];
const READ_ONLY: &[&str] = &[
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

/// Runs `script` in the VPS; every line it prints starting with `ESCAPED` is an attempt that
/// succeeded.
fn escapes(runtime: &paddock_agent::runtime::Runtime, vps_id: &str, script: &str) -> Vec<String> {
    let out = exec(runtime, vps_id, &["sh", "-c", script]);
    eprintln!("{vps_id}: {}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout
        .lines()
        .filter(|l| l.starts_with("ESCAPED"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_vps_root_cannot_unmount_move_or_remount_its_masks() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    fixture
        .runtime
        .apply(&spec(&vps_id, small_limits()))
        .expect("apply");
    let mut script = String::from("mkdir -p /tmp/d && touch /tmp/f\n");
    for path in MASKED
        .iter()
        .chain(READ_ONLY)
        .chain(&["/proc", "/sys", "/dev", "/dev/null"])
    {
        script.push_str(&format!(
            "if [ -e {path} ]; then\n\
             umount {path} && echo ESCAPED umount {path}\n\
             umount -l {path} && echo ESCAPED umount -l {path}\n\
             if [ -d {path} ]; then t=/tmp/d; else t=/tmp/f; fi\n\
             mount -o move {path} $t && echo ESCAPED move {path}\n\
             fi\n"
        ));
    }
    // A bind of a tree without its locked masks would reveal what they cover; a recursive one
    // keeps them.
    for path in ["/proc", "/sys", "/dev"] {
        script.push_str(&format!(
            "mount -o bind {path} /tmp/d && echo ESCAPED bind {path} && umount /tmp/d\n"
        ));
    }
    script.push_str(
        "mount -o rbind /proc /tmp/d && [ \"$(cat /tmp/d/keys | wc -c)\" != 0 ] \
         && echo ESCAPED rbind /proc\n\
         umount -l /tmp/d\n",
    );
    for path in READ_ONLY.iter().chain(&["/sys"]) {
        script.push_str(&format!(
            "if [ -e {path} ]; then\n\
             mount -o remount,bind,rw {path} && echo ESCAPED remount rw {path}\n\
             mount -o remount,rw {path} && echo ESCAPED remount rw {path}\n\
             fi\n"
        ));
    }
    script.push_str(
        "mount -t proc proc /tmp/d && echo ESCAPED fresh proc && umount /tmp/d\n\
         mount -t sysfs sysfs /tmp/d && echo ESCAPED fresh sysfs && umount /tmp/d\n\
         mount -o remount,rw,suid,exec,dev /proc && echo ESCAPED proc flags\n\
         true\n",
    );
    let escaped = escapes(&fixture.runtime, &vps_id, &script);
    assert_eq!(escaped, Vec::<String>::new());

    // Everything is still in place.
    assert_eq!(
        sh_ok(
            &fixture.runtime,
            &vps_id,
            "cat /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /proc/partitions \
             2>/dev/null | wc -c"
        )
        .trim(),
        "0"
    );
    assert_eq!(
        sh_ok(
            &fixture.runtime,
            &vps_id,
            "find /sys/firmware /sys/block /sys/class/block -mindepth 1 | wc -l"
        )
        .trim(),
        "0"
    );
    let mounts = sh_ok(&fixture.runtime, &vps_id, "cat /proc/mounts");
    for path in READ_ONLY.iter().chain(&["/sys"]) {
        if let Some(line) = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(path))
        {
            assert!(
                line.split_whitespace()
                    .nth(3)
                    .is_some_and(|o| o.starts_with("ro")),
                "{line}"
            );
        }
    }
    let denied = exec(
        &fixture.runtime,
        &vps_id,
        &["sh", "-c", "echo 1 > /proc/sys/kernel/panic"],
    );
    assert_ne!(denied.code, Some(0), "/proc/sys writable: {denied:?}");
}

/// The host's cgroup hierarchies as `(fstype, mount options selecting it)`.
fn host_cgroup_hierarchies() -> Vec<(String, String)> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut hierarchies = Vec::new();
    for line in mountinfo.lines() {
        let Some((_, fs)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = fs.split_whitespace().collect();
        match fields.first().copied() {
            Some("cgroup2") => hierarchies.push(("cgroup2".to_string(), String::new())),
            Some("cgroup") => {
                let options: Vec<&str> = fields
                    .get(2)
                    .copied()
                    .unwrap_or("")
                    .split(',')
                    .filter(|o| !["rw", "ro", "clone_children", "nsdelegate"].contains(o))
                    .filter(|o| !o.starts_with("release_agent="))
                    .collect();
                hierarchies.push(("cgroup".to_string(), options.join(",")));
            }
            _ => {}
        }
    }
    hierarchies.sort();
    hierarchies.dedup();
    hierarchies
}

#[test]
fn a_vps_sees_no_host_paths_no_other_disks_and_only_its_own_cgroups() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let ids = [fixture.new_vps_id(), fixture.new_vps_id()];
    let hierarchies = host_cgroup_hierarchies();
    assert!(!hierarchies.is_empty(), "no cgroup hierarchy on the host");
    let state_dir = fixture.state_dir.path().to_string_lossy().into_owned();
    let mut init_pids = Vec::new();
    for vps_id in &ids {
        let observed = fixture
            .runtime
            .apply(&spec(vps_id, small_limits()))
            .expect("apply");
        init_pids.push(running_pid(&observed));
    }
    for (vps_id, init_pid) in ids.iter().zip(&init_pids) {
        // Host paths: neither the state dir nor any VPS id, not even in the root overlay's
        // options.
        let mounts = sh_ok(
            &fixture.runtime,
            vps_id,
            "cat /proc/mounts /proc/self/mountinfo /proc/1/mountinfo",
        );
        eprintln!("{vps_id} mounts:\n{mounts}");
        for needle in [state_dir.as_str(), "/var/lib", "/tmp/", &ids[0], &ids[1]] {
            let leaks: Vec<&str> = mounts.lines().filter(|l| l.contains(needle)).collect();
            assert!(leaks.is_empty(), "{vps_id} sees {needle:?} in: {leaks:#?}");
        }

        // No block device of any VPS: no loop devices, IO counters or backing files.
        assert_eq!(
            sh_ok(
                &fixture.runtime,
                vps_id,
                "cat /proc/partitions | wc -c; \
                 find /sys/block /sys/class/block /sys/dev/block /sys/devices/virtual/block \
                      -mindepth 1 2>/dev/null | wc -l; \
                 find /sys -name backing_file 2>/dev/null | wc -l; \
                 find /proc/fs /sys/fs /sys/class /sys/devices/virtual \
                      -name 'loop[0-9]*' -o -name '7:*' 2>/dev/null | wc -l"
            )
            .split_whitespace()
            .collect::<Vec<_>>(),
            ["0", "0", "0", "0"]
        );

        // Host side: the init sits in the VPS's own cgroup in every hierarchy.
        let cgroups = fs::read_to_string(format!("/proc/{init_pid}/cgroup")).expect("cgroup");
        for line in cgroups.lines() {
            assert!(
                line.ends_with(&format!("/vps-{vps_id}")),
                "{vps_id}'s init is outside its cgroup: {line}"
            );
        }
        // Host side: nothing but the VPS's processes and its own helpers (console supervisor,
        // exec helper: host-side processes of the VPS, which cgroup2 lists as pid 0 inside) is
        // in any of its cgroups.
        let vps_pid_ns = fs::read_link(format!("/proc/{init_pid}/ns/pid")).expect("pid ns");
        let agent = fs::canonicalize(helper_binary()).expect("agent binary");
        for dir in fixture.runtime.cgroup_paths(vps_id) {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let in_vps =
                    fs::read_link(format!("/proc/{pid}/ns/pid")).ok() == Some(vps_pid_ns.clone());
                let helper = fs::read_link(format!("/proc/{pid}/exe")).ok() == Some(agent.clone());
                assert!(
                    in_vps || helper,
                    "foreign process {pid} in {}",
                    dir.display()
                );
            }
        }
        // Inside: every hierarchy it mounts is rooted at its own cgroup and lists only its own
        // processes (pid 0: a process outside its pid namespace, i.e. its own helpers).
        let mut script = String::from("mkdir -p /tmp/cg\n");
        for (fstype, options) in &hierarchies {
            let option_arg = if options.is_empty() {
                String::new()
            } else {
                format!("-o {options}")
            };
            let root_marker = if fstype == "cgroup2" {
                "[ ! -e /tmp/cg/cgroup.events ]"
            } else {
                "[ -e /tmp/cg/release_agent ]"
            };
            script.push_str(&format!(
                "if mount -t {fstype} {option_arg} cgroup /tmp/cg; then\n\
                 {root_marker} && echo ESCAPED host root of {fstype} {options}\n\
                 for f in $(find /tmp/cg -name cgroup.procs); do\n\
                   while read p; do\n\
                     [ \"$p\" = 0 ] || [ -d /proc/$p ] \
                       || echo ESCAPED foreign pid $p in {fstype} {options}\n\
                   done < $f\n\
                 done\n\
                 umount /tmp/cg\n\
                 else echo ESCAPED? cannot mount {fstype} {options}; fi\n"
            ));
        }
        let escaped = escapes(&fixture.runtime, vps_id, &script);
        assert_eq!(escaped, Vec::<String>::new());
    }
    for (vps_id, pid) in ids.iter().zip(&init_pids) {
        let paths = fixture.runtime.cgroup_paths(vps_id);
        assert!(
            paths.len() >= hierarchies.len(),
            "{} cgroup dirs for {} hierarchies: {paths:?}",
            paths.len(),
            hierarchies.len()
        );
        fixture.runtime.delete(vps_id).expect("delete");
        fixture.assert_gone(vps_id, &[*pid]);
    }
}
