//! Limits of a running VPS on the real kernel: OOM kill inside the VPS, pids max against a fork
//! bomb, CFS quota, IO throttling on the VPS's own disk, disk size as a hard quota, live resize
//! (same init) and rebuild (fresh writable layer, same disk). Timed checks use generous bounds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use paddock_agent::runtime::Limits;

#[test]
fn memory_pids_and_disk_limits_hold_inside_the_vps() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let neighbour = fixture.new_vps_id();
    let limits = Limits {
        memory_bytes: 32 << 20,
        pids_max: 48,
        ..small_limits()
    };
    let init_pid = running_pid(
        &fixture
            .runtime
            .apply(&spec(&vps_id, limits.clone()))
            .expect("apply"),
    );
    let neighbour_pid = running_pid(
        &fixture
            .runtime
            .apply(&spec(&neighbour, small_limits()))
            .expect("apply"),
    );

    // A memory hog is OOM-killed inside the VPS; the VPS and its neighbour live on.
    let hog = exec(&fixture.runtime, &vps_id, &["sh", "-c", "tail /dev/zero"]);
    assert_eq!(hog.code, Some(128 + 9), "memory hog not killed: {hog:?}");
    assert!(pid_running(init_pid) && pid_running(neighbour_pid));
    assert_eq!(
        sh_ok(&fixture.runtime, &vps_id, "echo alive").trim(),
        "alive"
    );

    // A fork bomb stops at pids.max.
    let bomb = exec(
        &fixture.runtime,
        &vps_id,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do sleep 60 >/dev/null 2>&1 & i=$((i+1)); done",
        ],
    );
    assert!(
        bomb.stderr.contains("fork"),
        "fork bomb never hit pids.max: {bomb:?}"
    );
    let current: u64 = cgroup_value(&fixture.runtime, &vps_id, &["pids.current"])
        .parse()
        .expect("pids.current");
    assert!(current <= 48, "pids.current {current} above pids.max");
    let failcnt = cgroup_value(&fixture.runtime, &vps_id, &["pids.events"]);
    assert!(failcnt.contains("max"), "pids.events {failcnt}");
    // Nothing more can fork in there (exec included) until the limit is raised.
    let mut raised = spec(
        &vps_id,
        Limits {
            pids_max: 256,
            ..limits.clone()
        },
    );
    raised.power = paddock_agent::runtime::Power::Running;
    assert_eq!(
        running_pid(&fixture.runtime.apply(&raised).expect("raise pids")),
        init_pid
    );
    sh_ok(&fixture.runtime, &vps_id, "killall sleep; true");

    // Writing past the disk size fails with ENOSPC inside; the host is untouched.
    let fill = exec(
        &fixture.runtime,
        &vps_id,
        &["sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=100"],
    );
    assert_ne!(
        fill.code,
        Some(0),
        "wrote 100 MiB on a 64 MiB disk: {fill:?}"
    );
    assert!(fill.stderr.contains("No space left on device"), "{fill:?}");
    let image = fixture.vps_dir(&vps_id).join("disk.img");
    assert_eq!(std::fs::metadata(&image).expect("image").len(), 64 << 20);
    sh_ok(&fixture.runtime, &vps_id, "rm /fill");
    assert!(pid_running(neighbour_pid));
}

#[test]
fn cpu_and_io_are_throttled_and_resize_is_live() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let limits = Limits {
        vcpus: 0.5,
        io_write_bps: 8 << 20,
        ..small_limits()
    };
    let mut spec = spec(&vps_id, limits);
    let init_pid = running_pid(&fixture.runtime.apply(&spec).expect("apply"));

    // 0.5 vCPU: a busy loop gets about half a core.
    let usage = |f: &Fixture| -> u64 {
        cgroup_value(&f.runtime, &vps_id, &["cpuacct.usage"])
            .parse()
            .unwrap_or(0)
    };
    let before = usage(&fixture);
    let started = Instant::now();
    let burn = exec(
        &fixture.runtime,
        &vps_id,
        &["sh", "-c", "timeout 4 sh -c 'while :; do :; done'; true"],
    );
    assert_eq!(burn.code, Some(0), "{burn:?}");
    let wall = started.elapsed().as_secs_f64();
    let cpu = (usage(&fixture) - before) as f64 / 1e9;
    let cores = cpu / wall;
    assert!(
        (0.3..=0.7).contains(&cores),
        "used {cores:.2} cores under 0.5 vCPU"
    );

    // 8 MiB/s write limit: 24 MiB of direct IO takes about 3 s.
    let started = Instant::now();
    let write = exec(
        &fixture.runtime,
        &vps_id,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/io bs=1M count=24 oflag=direct && rm /io",
        ],
    );
    let took = started.elapsed();
    assert_eq!(write.code, Some(0), "{write:?}");
    assert!(
        took >= Duration::from_secs_f64(1.8),
        "24 MiB at 8 MiB/s took only {took:?}"
    );
    let throttle = cgroup_value(
        &fixture.runtime,
        &vps_id,
        &["blkio.throttle.write_bps_device", "io.max"],
    );
    assert!(
        throttle.contains(&(8u64 << 20).to_string()),
        "throttle {throttle}"
    );

    // Resize: new limits on the same init.
    spec.limits = Limits {
        vcpus: 1.5,
        memory_bytes: 96 << 20,
        pids_max: 100,
        io_write_bps: 0,
        ..spec.limits.clone()
    };
    let observed = fixture.runtime.apply(&spec).expect("resize");
    assert_eq!(running_pid(&observed), init_pid, "resize restarted the VPS");
    assert_eq!(
        cgroup_value(
            &fixture.runtime,
            &vps_id,
            &["memory.limit_in_bytes", "memory.max"]
        ),
        (96u64 << 20).to_string()
    );
    assert_eq!(
        cgroup_value(&fixture.runtime, &vps_id, &["pids.max"]),
        "100"
    );
    assert_eq!(
        cgroup_value(&fixture.runtime, &vps_id, &["cpu.cfs_quota_us"]),
        "150000"
    );
    let throttle = cgroup_value(
        &fixture.runtime,
        &vps_id,
        &["blkio.throttle.write_bps_device", "io.max"],
    );
    assert!(
        !throttle.contains(&(8u64 << 20).to_string()),
        "throttle kept: {throttle}"
    );

    // Rebuild: fresh writable layer, same disk size, running again.
    sh_ok(&fixture.runtime, &vps_id, "echo data > /root/keep-me");
    spec.rebuild_generation = 1;
    let observed = fixture.runtime.apply(&spec).expect("rebuild");
    let rebuilt_pid = running_pid(&observed);
    assert_ne!(rebuilt_pid, init_pid);
    let gone = exec(&fixture.runtime, &vps_id, &["test", "-e", "/root/keep-me"]);
    assert_eq!(gone.code, Some(1), "file survived the rebuild");
    let image = fixture.vps_dir(&vps_id).join("disk.img");
    assert_eq!(std::fs::metadata(&image).expect("image").len(), 64 << 20);
    // Applying the same generation again does not rebuild again.
    let again = fixture.runtime.apply(&spec).expect("apply");
    assert_eq!(running_pid(&again), rebuilt_pid);

    fixture.runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[init_pid, rebuilt_pid]);
}
