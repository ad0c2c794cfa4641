//! The VPS's own view of /proc (lxcfs + a per-VPS cpuset): memory, CPUs, uptime, load, disks
//! and swap inside a VPS are its own, not the host's; the view follows a live resize, survives
//! an agent restart, and fails closed (an error, never the host's figures) when lxcfs dies.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use paddock_agent::runtime::procview::{self, LxcfsConfig, ProcView, PROC_VIEW_FILES};
use paddock_agent::runtime::Limits;

/// A nano VPS: 256 MiB, 1 vCPU.
fn nano() -> Limits {
    Limits {
        vcpus: 1.0,
        memory_bytes: 256 << 20,
        pids_max: 256,
        disk_bytes: 64 << 20,
        ..Limits::default()
    }
}

/// (MemTotal, MemTotal - MemFree) in MiB from the VPS's /proc/meminfo, what procps `free -m`
/// shows. (busybox `free` takes its total from sysinfo(2), which lxcfs cannot change.)
fn free_mem(runtime: &paddock_agent::runtime::Runtime, vps_id: &str) -> (u64, u64) {
    parse_meminfo(&sh_ok(runtime, vps_id, "cat /proc/meminfo"))
}

fn parse_meminfo(meminfo: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {meminfo}"))
    };
    let total = field("MemTotal:");
    (total / 1024, (total - field("MemFree:")) / 1024)
}

fn count_lines(text: &str, pred: impl Fn(&str) -> bool) -> usize {
    text.lines().filter(|l| pred(l)).count()
}

fn is_cpu_n_line(line: &str) -> bool {
    line.strip_prefix("cpu")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_digit())
}

fn host_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn first_float(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("no number in {text:?}"))
}

#[test]
fn nano_vps_sees_its_own_memory_cpus_uptime_load_and_disks() {
    if !require_root() {
        return;
    }
    assert!(
        host_cpus() >= 2,
        "this test needs a host with at least 2 CPUs to tell 1 vCPU from the host"
    );
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let before_start = Instant::now();
    let init_pid = running_pid(
        &fixture
            .runtime
            .apply(&spec(&vps_id, nano()))
            .expect("apply"),
    );
    // Seeing one CPU is not being pinned to one: the init may run on every host CPU.
    let allowed = proc_status_field(init_pid, "Cpus_allowed_list:");
    let host_allowed = proc_status_field(std::process::id(), "Cpus_allowed_list:");
    assert_eq!(allowed, host_allowed, "the VPS is pinned");
    // A second VPS whose disk must not show up in the first one's diskstats.
    let other = fixture.new_vps_id();
    fixture
        .runtime
        .apply(&spec(&other, small_limits()))
        .expect("apply other");
    sh_ok(
        &fixture.runtime,
        &other,
        "dd if=/dev/zero of=/root/f bs=64k count=16 conv=fsync 2>/dev/null",
    );

    // Memory: the limit, not the host's 24 GB.
    let (total, _) = free_mem(&fixture.runtime, &vps_id);
    assert!(
        (255..=257).contains(&total),
        "MemTotal {total} MiB in a 256 MiB VPS"
    );
    let meminfo = sh_ok(&fixture.runtime, &vps_id, "cat /proc/meminfo");
    assert!(
        meminfo.contains("MemTotal:         262144 kB"),
        "meminfo: {meminfo}"
    );

    // CPUs: 1 vCPU is one CPU for nproc (affinity), cpuinfo, stat and cpu/online.
    let nproc = sh_ok(&fixture.runtime, &vps_id, "nproc");
    assert_eq!(nproc.trim(), "1", "nproc in a 1 vCPU VPS");
    let cpuinfo = sh_ok(&fixture.runtime, &vps_id, "cat /proc/cpuinfo");
    assert_eq!(
        count_lines(&cpuinfo, |l| l.starts_with("processor")),
        1,
        "{cpuinfo}"
    );
    let stat = sh_ok(&fixture.runtime, &vps_id, "cat /proc/stat");
    assert_eq!(count_lines(&stat, is_cpu_n_line), 1, "{stat}");
    let online = sh_ok(
        &fixture.runtime,
        &vps_id,
        "cat /sys/devices/system/cpu/online",
    );
    assert_eq!(online.trim(), "0", "cpu/online in a 1 vCPU VPS");

    // Uptime: since the VPS's init started, not the host's boot.
    let uptime = first_float(&sh_ok(&fixture.runtime, &vps_id, "cat /proc/uptime"));
    let host_uptime = first_float(&fs::read_to_string("/proc/uptime").expect("host uptime"));
    let since_start = before_start.elapsed().as_secs_f64();
    assert!(
        uptime <= since_start + 1.0 && uptime < host_uptime,
        "VPS uptime {uptime}s, started {since_start:.1}s ago, host up {host_uptime}s"
    );

    // lxcfs#203: /proc/loadavg counts the VPS's own tasks, not the host's.
    let loadavg = sh_ok(&fixture.runtime, &vps_id, "cat /proc/loadavg");
    let tasks: u64 = loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split('/').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("loadavg {loadavg:?}"));
    let vps_tasks = sh_ok(
        &fixture.runtime,
        &vps_id,
        "ls -d /proc/[0-9]*/task/* | wc -l",
    );
    let vps_tasks: u64 = vps_tasks.trim().parse().expect("task count");
    let host_loadavg = fs::read_to_string("/proc/loadavg").expect("host loadavg");
    assert!(
        tasks <= vps_tasks + 4,
        "/proc/loadavg in the VPS counts {tasks} tasks, the VPS has {vps_tasks} (host: {host_loadavg})"
    );

    // diskstats: only devices this VPS did IO on; never the other VPS's loop device.
    let other_name = fixture
        .runtime
        .loop_devices()
        .into_iter()
        .find(|l| l.contains(&other))
        .and_then(|l| l.split(" -> ").next().map(str::to_string))
        .expect("loop device of the other VPS");
    let diskstats = sh_ok(&fixture.runtime, &vps_id, "cat /proc/diskstats");
    assert!(
        !diskstats
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some(other_name.as_str())),
        "the other VPS's {other_name} is listed:\n{diskstats}"
    );

    // Every view file is a read-only mount (lxcfs; diskstats may be the empty file), also
    // /proc/swaps, whose content on a host without swap is the same header either way.
    let mountinfo = sh_ok(&fixture.runtime, &vps_id, "cat /proc/self/mountinfo");
    for target in PROC_VIEW_FILES {
        let virtualized = *target != "proc/diskstats" || procview::diskstats_virtualized();
        let line = mountinfo
            .lines()
            .find(|l| {
                l.split(' ').nth(4) == Some(format!("/{target}").as_str())
                    && (l.contains("fuse.lxcfs") || !virtualized)
            })
            .unwrap_or_else(|| panic!("/{target} is not a view mount:\n{mountinfo}"));
        let options = line.split(' ').nth(5).unwrap_or("");
        assert!(
            options.split(',').any(|o| o == "ro"),
            "/{target} is writable: {line}"
        );
    }
    let write = exec(
        &fixture.runtime,
        &vps_id,
        &["sh", "-c", "echo x > /proc/meminfo"],
    );
    assert_ne!(write.code, Some(0), "wrote to /proc/meminfo: {write:?}");

    // The views are locked like the masks: the VPS's root cannot uncover the host's files.
    for target in PROC_VIEW_FILES {
        for umount in ["umount", "umount -l"] {
            let out = exec(
                &fixture.runtime,
                &vps_id,
                &["sh", "-c", &format!("{umount} /{target}")],
            );
            assert_ne!(out.code, Some(0), "{umount} /{target} worked: {out:?}");
        }
    }
    let (total_mib, _) = free_mem(&fixture.runtime, &vps_id);
    assert_eq!(total_mib, 256, "meminfo after the umount attempts");
}

#[test]
fn meminfo_tracks_allocation_and_views_follow_live_resize_and_agent_restart() {
    if !require_root() {
        return;
    }
    assert!(host_cpus() >= 2, "needs a host with at least 2 CPUs");
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let mut spec = spec(&vps_id, nano());
    let init_pid = running_pid(&fixture.runtime.apply(&spec).expect("apply"));

    // A shell holding ~96 MiB shows up as used memory inside.
    let out = sh_ok(
        &fixture.runtime,
        &vps_id,
        "cat /proc/meminfo; echo ===; a=$(head -c 100000000 /dev/zero | tr '\\0' x); \
         cat /proc/meminfo; echo ${#a}",
    );
    let (first, second) = out.split_once("===").expect("two meminfos");
    let before = parse_meminfo(first);
    let during = parse_meminfo(second);
    assert!(
        during.1 >= before.1 + 80,
        "used memory {} MiB -> {} MiB while holding 96 MiB",
        before.1,
        during.1
    );

    // Live resize: 384 MiB, 1.5 vCPUs (documented rounding: up, so 2 CPUs).
    spec.limits.memory_bytes = 384 << 20;
    spec.limits.vcpus = 1.5;
    let observed = fixture.runtime.apply(&spec).expect("resize");
    assert_eq!(running_pid(&observed), init_pid, "resize restarted the VPS");
    let (total, _) = free_mem(&fixture.runtime, &vps_id);
    assert!(
        (383..=385).contains(&total),
        "free -m total {total} after resize"
    );
    assert_eq!(sh_ok(&fixture.runtime, &vps_id, "nproc").trim(), "2");
    let cpuinfo = sh_ok(&fixture.runtime, &vps_id, "cat /proc/cpuinfo");
    assert_eq!(
        count_lines(&cpuinfo, |l| l.starts_with("processor")),
        2,
        "1.5 vCPUs: {cpuinfo}"
    );

    // Back to 1 vCPU.
    spec.limits.vcpus = 1.0;
    fixture.runtime.apply(&spec).expect("resize down");
    assert_eq!(sh_ok(&fixture.runtime, &vps_id, "nproc").trim(), "1");

    // lxcfs#187 (meminfo turned into the host's after a while): a new agent over the same
    // state adopts the VPS; the view still reads the VPS's values, from new processes too.
    let restarted = fixture.restarted_runtime();
    let (total, _) = free_mem(&restarted, &vps_id);
    assert!(
        (383..=385).contains(&total),
        "free -m total {total} after restart"
    );
    assert_eq!(sh_ok(&restarted, &vps_id, "nproc").trim(), "1");
}

/// Stops the private lxcfs a test started (by its pid file) and unmounts it, even on panic.
struct PrivateLxcfs {
    dir: tempfile::TempDir,
}

impl PrivateLxcfs {
    fn mount_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }
    fn run_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("run")
    }
    fn pid(&self) -> Option<i32> {
        fs::read_to_string(self.run_dir().join("lxcfs.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }
    fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            wait_until("lxcfs exits", Duration::from_secs(10), || {
                !pid_running(pid as u32)
            });
        }
    }
}

impl Drop for PrivateLxcfs {
    fn drop(&mut self) {
        self.kill();
        while procview::is_lxcfs_mount(&self.mount_dir()) {
            if nix::mount::umount2(&self.mount_dir(), nix::mount::MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
}

/// lxcfs#187-style failure: when lxcfs dies, the VPS gets errors from its /proc view, never the
/// host's figures; the runtime starts a fresh lxcfs and a restarted VPS sees its values again.
#[test]
fn dead_lxcfs_fails_closed_and_is_replaced() {
    if !require_root() {
        return;
    }
    let private = PrivateLxcfs {
        dir: tempfile::Builder::new()
            .prefix("paddock-lxcfs-test")
            .tempdir()
            .expect("temp dir"),
    };
    let view = LxcfsConfig::new(private.mount_dir(), private.run_dir());
    let mut fixture = Fixture::with_proc_view(ProcView::Lxcfs(view));
    assert!(
        procview::is_lxcfs_mount(&private.mount_dir()),
        "the runtime did not start lxcfs at {}",
        private.mount_dir().display()
    );
    let first_pid = private.pid().expect("lxcfs pid file");
    let vps_id = fixture.new_vps_id();
    let mut spec = spec(&vps_id, nano());
    fixture.runtime.apply(&spec).expect("apply");
    let (total, _) = free_mem(&fixture.runtime, &vps_id);
    assert!((255..=257).contains(&total), "free -m total {total}");

    private.kill();
    let read = exec(&fixture.runtime, &vps_id, &["cat", "/proc/meminfo"]);
    assert_ne!(
        read.code,
        Some(0),
        "meminfo readable with lxcfs dead: {read:?}"
    );
    assert!(
        !read.stdout.contains("MemTotal"),
        "meminfo with lxcfs dead: {}",
        read.stdout
    );

    spec.power = paddock_agent::runtime::Power::Stopped;
    fixture.runtime.apply(&spec).expect("stop");
    spec.power = paddock_agent::runtime::Power::Running;
    fixture.runtime.apply(&spec).expect("start again");
    let second_pid = private.pid().expect("lxcfs pid file");
    assert_ne!(first_pid, second_pid, "lxcfs was not restarted");
    let (total, _) = free_mem(&fixture.runtime, &vps_id);
    assert!(
        (255..=257).contains(&total),
        "free -m total {total} after restart"
    );
}

/// `proc_view = "host"`: no lxcfs mounts in the VPS.
#[test]
fn host_proc_view_mounts_nothing() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::with_proc_view(ProcView::Host);
    let vps_id = fixture.new_vps_id();
    fixture
        .runtime
        .apply(&spec(&vps_id, nano()))
        .expect("apply");
    let mountinfo = sh_ok(&fixture.runtime, &vps_id, "cat /proc/self/mountinfo");
    assert!(!mountinfo.contains("lxcfs"), "{mountinfo}");
}

/// A missing lxcfs binary is a clear startup error naming the fix.
#[test]
fn missing_lxcfs_is_a_clear_startup_error() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut view = LxcfsConfig::new(dir.path().join("mnt"), dir.path().join("run"));
    view.binary = dir.path().join("no-such-lxcfs");
    let error = procview::ensure_running(&view).expect_err("started a missing lxcfs");
    let message = error.to_string();
    assert!(
        message.contains("apt-get install lxcfs") && message.contains("proc_view = \"host\""),
        "{message}"
    );
}

/// The total of `free -m`'s "Mem:" line (busybox takes it from sysinfo(2)).
fn free_total(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("Mem:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|total| total.parse().ok())
        .unwrap_or_else(|| panic!("no Mem: total in {out:?}"))
}

/// sysinfo(2), which lxcfs cannot cover (busybox `free` and `uptime` use it), answers with the
/// VPS's memory: for the init's descendants and for exec'd commands, also after a live resize.
#[test]
fn sysinfo_shows_the_vps_memory_for_init_children_and_exec() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    script_template(
        &fixture,
        "sysinfo-init",
        "#!/bin/sh\nfree -m > /init-free.txt\nexec sleep 100000\n",
        None,
    );
    let vps_id = fixture.new_vps_id();
    let mut spec = spec(&vps_id, nano());
    spec.template = "sysinfo-init".to_string();
    let init_pid = running_pid(&fixture.runtime.apply(&spec).expect("apply"));

    let mut init_free = String::new();
    wait_until("the init wrote free -m", Duration::from_secs(10), || {
        init_free = exec(&fixture.runtime, &vps_id, &["cat", "/init-free.txt"]).stdout;
        init_free.contains("Mem:")
    });
    let total = free_total(&init_free);
    assert!((255..=257).contains(&total), "init's free -m: {init_free}");

    let out = sh_ok(&fixture.runtime, &vps_id, "free -m");
    let total = free_total(&out);
    assert!((255..=257).contains(&total), "exec'd free -m: {out}");

    spec.limits.memory_bytes = 384 << 20;
    let observed = fixture.runtime.apply(&spec).expect("resize");
    assert_eq!(running_pid(&observed), init_pid, "resize restarted the VPS");
    let out = sh_ok(&fixture.runtime, &vps_id, "free -m");
    let total = free_total(&out);
    assert!((383..=385).contains(&total), "free -m after resize: {out}");
}
