//! The container runtime against the real kernel: real namespaces, overlayfs, cgroups and the
//! real `paddock-agent` binary as helper. Needs root; with `PADDOCK_REQUIRE_PRIVILEGED=1` a
//! non-root run fails instead of skipping.
//!
//! Every test uses its own state dir, VPS ids and cgroup parent, and a guard that deletes what
//! it created even when the test panics; the tests then check that nothing was left behind.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{require_root, Fixture};
use paddock_agent::runtime::{
    Limits, ObservedState, Power, Runtime, RuntimeError, VpsObserved, VpsSpec,
};
use paddock_agent::template;

fn spec(vps_id: &str, memory_bytes: u64, power: Power) -> VpsSpec {
    VpsSpec {
        vps_id: vps_id.to_string(),
        hostname: format!("host-{}", &vps_id[..vps_id.len().min(20)]),
        template: template::BUSYBOX.to_string(),
        limits: Limits {
            vcpus: 0.5,
            memory_bytes,
            pids_max: 256,
            disk_bytes: 64 << 20,
            ..Limits::default()
        },
        power,
        rebuild_generation: 0,
        restart_generation: 0,
    }
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn exec(runtime: &Runtime, vps_id: &str, command: &[&str], env: &[&str]) -> Output {
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio.block_on(async {
        let mut child = runtime.exec(vps_id, &command, &env).expect("exec");
        drop(child.stdin.take());
        let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("exec timed out")
            .expect("wait");
        Output {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
}

fn memory_limit_on_host(runtime: &Runtime, vps_id: &str) -> u64 {
    for dir in runtime.cgroup_paths(vps_id) {
        for file in ["memory.limit_in_bytes", "memory.max"] {
            if let Ok(value) = fs::read_to_string(dir.join(file)) {
                return value.trim().parse().expect("numeric memory limit");
            }
        }
    }
    panic!("no memory cgroup file for {vps_id}");
}

/// The first of `files` found in any of the VPS's cgroup dirs (v1 and v2 names differ).
fn cgroup_value(runtime: &Runtime, vps_id: &str, files: &[&str]) -> String {
    for dir in runtime.cgroup_paths(vps_id) {
        for file in files {
            if let Ok(value) = fs::read_to_string(dir.join(file)) {
                return value.trim().to_string();
            }
        }
    }
    panic!("none of {files:?} in the cgroup of {vps_id}");
}

fn cgroup_procs(runtime: &Runtime, vps_id: &str) -> Vec<String> {
    runtime
        .cgroup_paths(vps_id)
        .iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

fn pid_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("X");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

fn parent_pid(pid: u32) -> u32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    rest.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ppid")
}

fn host_mounts_mention(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_string)
        .collect()
}

fn wait_for_file_containing(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let content = fs::read_to_string(path).unwrap_or_default();
        if content.contains(needle) || Instant::now() > deadline {
            return content;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn running_pid(observed: &VpsObserved) -> u32 {
    assert_eq!(observed.state, ObservedState::Running, "{observed:?}");
    observed.init_pid.expect("running VPS has an init pid")
}

/// Asserts that nothing of `vps_id` remains: cgroup dirs, host mounts, processes, files.
fn assert_gone(fixture: &Fixture, vps_id: &str, pids: &[u32]) {
    for dir in fixture.runtime.cgroup_paths(vps_id) {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    let vps_dir = fixture.vps_dir(vps_id);
    assert!(!vps_dir.exists(), "{} left behind", vps_dir.display());
    assert_eq!(host_mounts_mention(&vps_dir), Vec::<String>::new());
    for pid in pids {
        assert!(!pid_running(*pid), "process {pid} left behind");
    }
    assert_eq!(fixture.runtime.status(vps_id).expect("status"), None);
}

#[test]
fn vps_lifecycle_on_the_real_kernel() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let mut spec = spec(&vps_id, 64 << 20, Power::Running);

    // Create + start.
    let observed = fixture.runtime.apply(&spec).expect("apply");
    let init_pid = running_pid(&observed);
    assert_ne!(
        parent_pid(init_pid),
        std::process::id(),
        "the init must not be a child of the agent"
    );
    assert_eq!(
        host_mounts_mention(&fixture.vps_dir(&vps_id)),
        Vec::<String>::new(),
        "the VPS's mounts must not be visible on the host"
    );
    let console = wait_for_file_containing(&fixture.vps_dir(&vps_id).join("console.log"), "booted");
    assert!(
        console.contains(&format!("paddock: {} booted", spec.hostname)),
        "console: {console}"
    );

    // exec: hostname, PID 1, process isolation, exit codes, env, network and root isolation.
    let out = exec(&fixture.runtime, &vps_id, &["hostname"], &[]);
    assert_eq!(
        (out.code, out.stdout.trim()),
        (Some(0), spec.hostname.as_str())
    );
    let out = exec(&fixture.runtime, &vps_id, &["cat", "/proc/1/cmdline"], &[]);
    assert!(
        out.stdout.trim_end_matches('\0').ends_with("init"),
        "pid 1 cmdline: {:?}",
        out.stdout
    );
    let out = exec(&fixture.runtime, &vps_id, &["ps"], &[]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.len() <= 5 && lines.iter().any(|l| l.contains("init")),
        "ps inside the VPS:\n{}",
        out.stdout
    );
    assert!(!out.stdout.contains("cargo") && !out.stdout.contains("paddock-agent"));
    let out = exec(&fixture.runtime, &vps_id, &["sh", "-c", "exit 7"], &[]);
    assert_eq!(out.code, Some(7));
    let out = exec(&fixture.runtime, &vps_id, &["sh", "-c", "kill -9 $$"], &[]);
    assert_eq!(out.code, Some(128 + 9));
    let out = exec(&fixture.runtime, &vps_id, &["no-such-command"], &[]);
    assert_eq!(out.code, Some(127), "stderr: {}", out.stderr);
    let out = exec(
        &fixture.runtime,
        &vps_id,
        &["sh", "-c", "echo $FOO $HOME $PATH"],
        &["FOO=bar"],
    );
    assert_eq!(out.stdout.trim(), "bar /root /usr/sbin:/usr/bin:/sbin:/bin");
    let out = exec(&fixture.runtime, &vps_id, &["ls", "/sys/class/net"], &[]);
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        vec!["lo"]
    );
    let out = exec(
        &fixture.runtime,
        &vps_id,
        &["cat", "/proc/self/mountinfo"],
        &[],
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some("/") && l.contains(" - overlay ")),
        "root is not the overlay:\n{}",
        out.stdout
    );
    assert!(!out.stdout.contains(" /work") && !out.stdout.contains("/sys/fs/cgroup/memory"));
    let out = exec(&fixture.runtime, &vps_id, &["cat", "/etc/os-release"], &[]);
    assert!(out.stdout.contains("Paddock busybox"));
    assert_eq!(memory_limit_on_host(&fixture.runtime, &vps_id), 64 << 20);
    let quota = cgroup_value(&fixture.runtime, &vps_id, &["cpu.cfs_quota_us", "cpu.max"]);
    assert!(
        quota == "50000" || quota == "50000 100000",
        "cpu quota {quota}"
    );
    assert_eq!(
        cgroup_value(&fixture.runtime, &vps_id, &["pids.max"]),
        "256"
    );
    let out = exec(
        &fixture.runtime,
        &vps_id,
        &["cat", "/proc/self/cgroup"],
        &[],
    );
    assert!(
        out.stdout
            .lines()
            .all(|l| !l.contains("memory:") || l.ends_with(":/")),
        "the cgroup namespace is rooted at the VPS cgroup:\n{}",
        out.stdout
    );

    // Resize in place: same init, new limit.
    spec.limits.memory_bytes = 96 << 20;
    let observed = fixture.runtime.apply(&spec).expect("resize");
    assert_eq!(
        running_pid(&observed),
        init_pid,
        "a resize must not restart"
    );
    assert_eq!(memory_limit_on_host(&fixture.runtime, &vps_id), 96 << 20);
    let observed = fixture.runtime.apply(&spec).expect("idempotent apply");
    assert_eq!(running_pid(&observed), init_pid);

    // Stop: nothing left in the cgroup.
    spec.power = Power::Stopped;
    let observed = fixture.runtime.apply(&spec).expect("stop");
    assert_eq!(observed.state, ObservedState::Stopped, "{observed:?}");
    assert_eq!(observed.init_pid, None);
    assert!(!pid_running(init_pid));
    assert_eq!(
        cgroup_procs(&fixture.runtime, &vps_id),
        Vec::<String>::new()
    );
    assert!(matches!(
        fixture.runtime.exec(&vps_id, &["true".to_string()], &[]),
        Err(RuntimeError::NotRunning(_))
    ));
    assert_eq!(
        fixture.runtime.apply(&spec).expect("stop again").state,
        ObservedState::Stopped
    );

    // Start again; the writable layer survived the restart.
    spec.power = Power::Running;
    let observed = fixture.runtime.apply(&spec).expect("start again");
    let second_pid = running_pid(&observed);
    assert_ne!(second_pid, init_pid);
    let out = exec(
        &fixture.runtime,
        &vps_id,
        &["sh", "-c", "echo kept > /root/f"],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    // Agent restart: a new Runtime adopts the running VPS without restarting it.
    let restarted = fixture.restarted_runtime();
    let observed = restarted
        .status(&vps_id)
        .expect("status")
        .expect("VPS known after restart");
    assert_eq!(running_pid(&observed), second_pid);
    let observed = restarted.apply(&spec).expect("apply after restart");
    assert_eq!(
        running_pid(&observed),
        second_pid,
        "adoption must not restart"
    );
    let out = exec(&restarted, &vps_id, &["cat", "/root/f"], &[]);
    assert_eq!(out.stdout.trim(), "kept");
    assert_eq!(restarted.list().expect("list"), vec![observed]);

    // Delete: nothing remains; a second delete is fine.
    restarted.delete(&vps_id).expect("delete");
    assert_gone(&fixture, &vps_id, &[init_pid, second_pid]);
    restarted.delete(&vps_id).expect("delete twice");
    fixture
        .runtime
        .delete(&vps_id)
        .expect("delete from the other instance");
}

#[test]
fn dead_init_is_seen_as_stopped_and_restarted_by_apply() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let spec = spec(&vps_id, 64 << 20, Power::Running);
    let first_pid = running_pid(&fixture.runtime.apply(&spec).expect("apply"));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first_pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill init");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cgroup_procs(&fixture.runtime, &vps_id).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    let observed = fixture.restarted_runtime().status(&vps_id).expect("status");
    let observed = observed.expect("still known");
    assert_eq!(observed.state, ObservedState::Stopped, "{observed:?}");
    assert!(observed.message.contains("exited"), "{observed:?}");

    let second_pid = running_pid(&fixture.runtime.apply(&spec).expect("restart"));
    assert_ne!(second_pid, first_pid);
    fixture.runtime.delete(&vps_id).expect("delete");
    assert_gone(&fixture, &vps_id, &[first_pid, second_pid]);
}

/// A restart generation above the one carried out restarts a running VPS once; the generation
/// is kept in the VPS's state, so a restarted agent does not repeat it; an agent that kept
/// generations in the old `restart-generations.json` has them folded into the states.
#[test]
fn restart_generations_restart_once_and_survive_the_agent() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let mut spec = spec(&vps_id, 64 << 20, Power::Running);
    spec.restart_generation = 3;
    // A new VPS starts at the generation it is created with: nothing to restart.
    let first = running_pid(&fixture.runtime.apply(&spec).expect("create"));
    assert_eq!(
        running_pid(&fixture.runtime.apply(&spec).expect("again")),
        first
    );

    spec.restart_generation = 4;
    let second = running_pid(&fixture.runtime.apply(&spec).expect("restart"));
    assert_ne!(second, first, "generation 4 restarts the VPS");
    assert!(!pid_running(first), "the first init is gone");
    // Carried out once, also by a restarted agent.
    assert_eq!(
        running_pid(&fixture.runtime.apply(&spec).expect("same")),
        second
    );
    let restarted = fixture.restarted_runtime();
    assert_eq!(running_pid(&restarted.apply(&spec).expect("same")), second);

    // An older agent's file: generation 7 was carried out already; it is folded into the
    // state when the runtime starts, and the file is gone.
    let legacy = fixture.state_dir.path().join("restart-generations.json");
    fs::write(&legacy, format!("{{\"{vps_id}\":7}}")).expect("legacy file");
    let upgraded = fixture.restarted_runtime();
    assert!(
        !legacy.exists(),
        "the legacy file is removed once folded in"
    );
    spec.restart_generation = 7;
    assert_eq!(
        running_pid(&upgraded.apply(&spec).expect("no repeat")),
        second
    );
    spec.restart_generation = 8;
    let third = running_pid(&upgraded.apply(&spec).expect("restart"));
    assert_ne!(third, second);

    // A stopped VPS takes a restart request as carried out: it stays stopped.
    spec.power = Power::Stopped;
    upgraded.apply(&spec).expect("stop");
    spec.restart_generation = 9;
    let stopped = upgraded.apply(&spec).expect("stopped restart");
    assert_eq!(stopped.state, ObservedState::Stopped);

    fixture.runtime.delete(&vps_id).expect("delete");
    assert_gone(&fixture, &vps_id, &[first, second, third]);
}

#[test]
fn created_stopped_vps_and_bad_input() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();

    // Created stopped: cgroup with limits, no process.
    let vps_id = fixture.new_vps_id();
    let observed = fixture
        .runtime
        .apply(&spec(&vps_id, 128 << 20, Power::Stopped))
        .expect("create stopped");
    assert_eq!(observed.state, ObservedState::Stopped);
    assert_eq!(memory_limit_on_host(&fixture.runtime, &vps_id), 128 << 20);
    assert_eq!(
        cgroup_procs(&fixture.runtime, &vps_id),
        Vec::<String>::new()
    );

    // A different template for an existing VPS is refused.
    let mut other = spec(&vps_id, 128 << 20, Power::Stopped);
    other.template = "debian-12".into();
    assert!(matches!(
        fixture.runtime.apply(&other),
        Err(RuntimeError::TemplateMismatch { .. })
    ));

    // A missing template or an invalid spec creates nothing.
    let missing_id = fixture.new_vps_id();
    let mut missing = spec(&missing_id, 64 << 20, Power::Running);
    missing.template = "no-such-template".into();
    match fixture.runtime.apply(&missing) {
        Err(RuntimeError::TemplateMissing(name)) => assert_eq!(name, "no-such-template"),
        other => panic!("expected TemplateMissing, got {other:?}"),
    }
    let mut bad = spec(&missing_id, 64 << 20, Power::Running);
    bad.limits.vcpus = f64::NAN;
    assert!(matches!(
        fixture.runtime.apply(&bad),
        Err(RuntimeError::InvalidArgument {
            field: "limits.vcpus",
            ..
        })
    ));
    assert!(!fixture.vps_dir(&missing_id).exists());
    for dir in fixture.runtime.cgroup_paths(&missing_id) {
        assert!(!dir.exists(), "{}", dir.display());
    }
    assert!(matches!(
        fixture.runtime.status("../etc"),
        Err(RuntimeError::InvalidArgument {
            field: "vps_id",
            ..
        })
    ));
    assert!(matches!(
        fixture
            .runtime
            .exec(&missing_id, &["true".to_string()], &[]),
        Err(RuntimeError::NotFound(_))
    ));

    fixture.runtime.delete(&vps_id).expect("delete");
    assert_gone(&fixture, &vps_id, &[]);
}

/// A create writes no state of its own: the start that follows writes the VPS's first one.
/// An agent that crashed in between (here: the state removed after the start) leaves a
/// directory with a disk, an id range and a running init, but no state: a restarted agent
/// removes all of it and frees the range.
#[test]
fn a_create_interrupted_before_its_first_state_write_is_removed_on_restart() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let pid = running_pid(
        &fixture
            .runtime
            .apply(&spec(&vps_id, 64 << 20, Power::Running))
            .expect("create running"),
    );
    let range = fixture
        .runtime
        .id_range(&vps_id)
        .expect("id range")
        .expect("a range");
    let idmap = fixture.state_dir.path().join("idmap.json");
    let allocations = fs::read_to_string(&idmap).expect("idmap.json");
    assert!(
        allocations.contains(&vps_id),
        "the range is durable before the start: {allocations}"
    );
    fs::remove_file(fixture.vps_dir(&vps_id).join("state.json")).expect("remove state");

    let restarted = fixture.restarted_runtime();
    assert_eq!(restarted.list().expect("list"), Vec::new());
    assert_gone(&fixture, &vps_id, &[pid]);
    let allocations = fs::read_to_string(&idmap).expect("idmap.json");
    assert!(
        !allocations.contains(&vps_id),
        "the range stays allocated: {allocations}"
    );
    // The next VPS gets the freed range.
    let next = fixture.new_vps_id();
    restarted
        .apply(&spec(&next, 64 << 20, Power::Stopped))
        .expect("create next");
    assert_eq!(restarted.id_range(&next).expect("id range"), Some(range));
    restarted.delete(&next).expect("delete next");
}

#[test]
fn interrupted_create_and_delete_are_cleaned_up_on_restart() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();

    // A create that crashed after its intent marker, with a cgroup already made.
    let creating = fixture.new_vps_id();
    fixture
        .runtime
        .apply(&spec(&creating, 64 << 20, Power::Stopped))
        .expect("create");
    let state_file = fixture.vps_dir(&creating).join("state.json");
    let record = fs::read_to_string(&state_file).expect("state");
    fs::write(&state_file, record.replace("\"ready\"", "\"creating\"")).expect("rewrite");

    // A delete that crashed while its VPS was still running.
    let deleting = fixture.new_vps_id();
    let pid = running_pid(
        &fixture
            .runtime
            .apply(&spec(&deleting, 64 << 20, Power::Running))
            .expect("create running"),
    );
    let state_file = fixture.vps_dir(&deleting).join("state.json");
    let record = fs::read_to_string(&state_file).expect("state");
    fs::write(&state_file, record.replace("\"ready\"", "\"deleting\"")).expect("rewrite");

    // A VPS dir without any record (crash before the intent marker).
    let bare = fixture.new_vps_id();
    fs::create_dir_all(fixture.vps_dir(&bare).join("overlay")).expect("mkdir");

    let restarted = fixture.restarted_runtime();
    assert_eq!(restarted.list().expect("list"), Vec::new());
    assert_gone(&fixture, &creating, &[]);
    assert_gone(&fixture, &deleting, &[pid]);
    assert_gone(&fixture, &bare, &[]);
}
