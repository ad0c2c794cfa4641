//! Shared fixture of the runtime tests that run real VPSes as root: a runtime in its own temp
//! state dir and cgroup parent, the busybox template with the static isolation probe, exec with
//! stdin, and leak checks (cgroups, host mounts, loop devices, processes, id ranges).

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use paddock_agent::runtime::procview::{self, LxcfsConfig, ProcView};
use paddock_agent::runtime::{
    Limits, ObservedState, Power, Runtime, RuntimeConfig, VpsObserved, VpsSpec,
};
use paddock_agent::template;
use paddock_agent::template::metadata::{self, TemplateMetadata};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when running as root. Otherwise skips, unless `PADDOCK_REQUIRE_PRIVILEGED=1`, in which
/// case the test fails.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("PADDOCK_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("this test needs root and PADDOCK_REQUIRE_PRIVILEGED=1 is set");
    }
    eprintln!("skipping: needs root (set PADDOCK_REQUIRE_PRIVILEGED=1 to fail instead)");
    false
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// The isolation probe (tests/probe/probe.c), compiled once per test binary with
/// `gcc -static` so it runs in any template.
pub fn probe_binary() -> PathBuf {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/probe.c");
            // In cargo's scratch dir for tests, not /tmp: one file, replaced atomically by each
            // test binary, instead of one left behind per test process.
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let out = dir.join("paddock-probe");
            let building = dir.join(format!("paddock-probe.{}", std::process::id()));
            let status = Command::new("gcc")
                .args(["-static", "-O2", "-o"])
                .arg(&building)
                .arg(&source)
                .status()
                .expect("run gcc (the isolation probe needs gcc and static glibc)");
            assert!(status.success(), "compiling {}", source.display());
            std::fs::rename(&building, &out).expect("move the probe into place");
            out
        })
        .clone()
}

/// A runtime in its own temp state dir and cgroup parent; deletes its VPSes and the cgroup
/// parent on drop (also on panic).
pub struct Fixture {
    pub state_dir: TempDir,
    pub cgroup_parent: String,
    pub runtime: Runtime,
    pub vps_ids: Vec<String>,
    pub proc_view: ProcView,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_proc_view(lxcfs_view())
    }

    /// A fixture whose runtime uses `proc_view` for its VPSes' /proc.
    pub fn with_proc_view(proc_view: ProcView) -> Self {
        let state_dir = tempfile::Builder::new()
            .prefix("paddock-runtime-test")
            .tempdir()
            .expect("temp state dir");
        template::build_busybox(state_dir.path()).expect("busybox template");
        let probe_target = state_dir
            .path()
            .join("templates/busybox/rootfs/usr/bin/paddock-probe");
        fs::create_dir_all(probe_target.parent().expect("parent")).expect("usr/bin");
        fs::copy(probe_binary(), &probe_target).expect("copy probe into template");
        let cgroup_parent = unique("paddock-test");
        let mut runtime_config = config(state_dir.path(), &cgroup_parent);
        runtime_config.proc_view = proc_view.clone();
        let runtime = Runtime::new(runtime_config).expect("runtime");
        Self {
            state_dir,
            cgroup_parent,
            runtime,
            vps_ids: Vec::new(),
            proc_view,
        }
    }

    /// A fresh runtime over the same state, as after an agent restart.
    pub fn restarted_runtime(&self) -> Runtime {
        let mut runtime_config = config(self.state_dir.path(), &self.cgroup_parent);
        runtime_config.proc_view = self.proc_view.clone();
        Runtime::new(runtime_config).expect("runtime")
    }

    pub fn new_vps_id(&mut self) -> String {
        let vps_id = unique("vps");
        self.vps_ids.push(vps_id.clone());
        vps_id
    }

    pub fn vps_dir(&self, vps_id: &str) -> PathBuf {
        self.state_dir.path().join("vps").join(vps_id)
    }

    /// Asserts that nothing of `vps_id` remains: cgroup dirs, host mounts, loop devices,
    /// processes, files, its id range.
    pub fn assert_gone(&self, vps_id: &str, pids: &[u32]) {
        for dir in self.runtime.cgroup_paths(vps_id) {
            assert!(!dir.exists(), "cgroup {} left behind", dir.display());
        }
        let vps_dir = self.vps_dir(vps_id);
        assert!(!vps_dir.exists(), "{} left behind", vps_dir.display());
        assert_eq!(host_mounts_mention(&vps_dir), Vec::<String>::new());
        wait_until("loop devices detached", Duration::from_secs(10), || {
            self.runtime
                .loop_devices()
                .iter()
                .all(|l| !l.contains(vps_id))
        });
        for pid in pids {
            assert!(!pid_running(*pid), "process {pid} left behind");
        }
        assert_eq!(self.runtime.status(vps_id).expect("status"), None);
        let idmap =
            fs::read_to_string(self.state_dir.path().join("idmap.json")).unwrap_or_default();
        assert!(!idmap.contains(vps_id), "id range of {vps_id} not released");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for vps_id in &self.vps_ids {
            if let Err(e) = self.runtime.delete(vps_id) {
                eprintln!("cleanup: delete {vps_id}: {e}");
            }
            for path in self.runtime.cgroup_paths(vps_id) {
                if let Some(parent) = path.parent() {
                    let _ = fs::remove_dir(parent);
                }
            }
        }
    }
}

/// The binary the runtime re-executes for its helpers. PADDOCK_HELPER_BINARY: run the helpers
/// from another build (e.g. release, to measure the console supervisor's RSS).
pub fn helper_binary() -> PathBuf {
    std::env::var_os("PADDOCK_HELPER_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_paddock-agent")))
}

pub fn config(state_dir: &Path, cgroup_parent: &str) -> RuntimeConfig {
    RuntimeConfig {
        state_dir: state_dir.to_path_buf(),
        cgroup_parent: cgroup_parent.to_string(),
        stop_grace: Duration::from_secs(10),
        start_timeout: Duration::from_secs(60),
        helper_binary: helper_binary(),
        id_base: paddock_agent::runtime::idmap::DEFAULT_ID_BASE,
        proc_view: lxcfs_view(),
    }
}

/// The shared lxcfs every test runtime uses: the default mount dir (reused when running, never
/// stopped by a test), its log and pid file in a fixed dir under the temp dir.
pub fn lxcfs_view() -> ProcView {
    ProcView::Lxcfs(LxcfsConfig::new(
        procview::DEFAULT_LXCFS_DIR,
        std::env::temp_dir().join("paddock-test-lxcfs"),
    ))
}

pub fn spec(vps_id: &str, limits: Limits) -> VpsSpec {
    VpsSpec {
        vps_id: vps_id.to_string(),
        hostname: format!("host-{}", &vps_id[..vps_id.len().min(20)]),
        template: template::BUSYBOX.to_string(),
        limits,
        power: Power::Running,
        rebuild_generation: 0,
        restart_generation: 0,
    }
}

/// Limits for a small test VPS: 64 MiB memory, 64 MiB disk, 256 pids, 1 vCPU.
pub fn small_limits() -> Limits {
    Limits {
        vcpus: 1.0,
        memory_bytes: 64 << 20,
        pids_max: 256,
        disk_bytes: 64 << 20,
        ..Limits::default()
    }
}

#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` in the VPS through the runtime's exec, feeding `stdin`.
pub fn exec_with_input(runtime: &Runtime, vps_id: &str, command: &[&str], stdin: &[u8]) -> Output {
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio.block_on(async {
        let mut child = runtime.exec(vps_id, &command, &[]).expect("exec");
        if let Some(mut pipe) = child.stdin.take() {
            let _ = pipe.write_all(stdin).await;
        }
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
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

pub fn exec(runtime: &Runtime, vps_id: &str, command: &[&str]) -> Output {
    exec_with_input(runtime, vps_id, command, &[])
}

/// Runs a shell snippet in the VPS and requires exit code 0; returns stdout.
pub fn sh_ok(runtime: &Runtime, vps_id: &str, script: &str) -> String {
    let out = exec(runtime, vps_id, &["sh", "-c", script]);
    assert_eq!(out.code, Some(0), "`{script}` in {vps_id}: {out:?}");
    out.stdout
}

pub fn running_pid(observed: &VpsObserved) -> u32 {
    assert_eq!(observed.state, ObservedState::Running, "{observed:?}");
    observed.init_pid.expect("running VPS has an init pid")
}

pub fn pid_running(pid: u32) -> bool {
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

pub fn host_mounts_mention(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// The first of `files` found in any of the VPS's cgroup dirs (v1 and v2 names differ).
pub fn cgroup_value(runtime: &Runtime, vps_id: &str, files: &[&str]) -> String {
    for dir in runtime.cgroup_paths(vps_id) {
        for file in files {
            if let Ok(value) = fs::read_to_string(dir.join(file)) {
                return value.trim().to_string();
            }
        }
    }
    panic!("none of {files:?} in the cgroup of {vps_id}");
}

pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A copy of the fixture's busybox template named `name` whose `/sbin/init` is `script`, with
/// `metadata` as its `template.conf` (none: a template from before metadata). Lives in the
/// fixture's state dir, so it goes with it.
pub fn script_template(
    fixture: &Fixture,
    name: &str,
    script: &str,
    metadata: Option<&TemplateMetadata>,
) -> PathBuf {
    let templates = fixture.state_dir.path().join("templates");
    let dir = templates.join(name);
    fs::create_dir(&dir).expect("template dir");
    let status = Command::new("cp")
        .arg("-a")
        .arg(templates.join("busybox/rootfs"))
        .arg(dir.join("rootfs"))
        .status()
        .expect("run cp");
    assert!(status.success(), "copying the busybox rootfs");
    let init = dir.join("rootfs/sbin/init");
    fs::remove_file(&init).expect("remove busybox init link");
    fs::write(&init, script).expect("write init script");
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).expect("chmod init");
    if let Some(metadata) = metadata {
        metadata::write(&dir, metadata).expect("write template.conf");
    }
    dir
}

/// A line of `/proc/<pid>/status`, e.g. `Uid:`.
pub fn proc_status_field(pid: u32, field: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}
