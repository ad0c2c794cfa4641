//! Start latency: create+start, stop and delete of a busybox VPS through the agent's own
//! runtime API (in process, no controller, no gRPC), beside runc (and crun) running an OCI
//! bundle of the same busybox rootfs with the same namespaces, user namespace mapping (the same
//! id range size) and cgroup limits. Runs alternate between the agent and the OCI runtimes, so
//! a slow phase of the machine hits all of them.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paddock_agent::runtime::phases::StartPhases;
use paddock_agent::runtime::{idmap, Limits};
use serde_json::json;

use crate::node::{unique_tag, Node};
use crate::report::{Row, ScenarioReport};
use crate::stats::Samples;
use crate::Options;

/// The limits both sides get: 1 vCPU (CFS quota 100 ms per 100 ms), 64 MiB, 256 pids.
fn limits() -> Limits {
    Limits {
        vcpus: 1.0,
        memory_bytes: 64 << 20,
        pids_max: 256,
        disk_bytes: 64 << 20,
        ..Limits::default()
    }
}

/// Picks one phase's samples out of a [`Cycle`].
type Phase = fn(&Cycle) -> &Samples;

/// The samples of one runtime, per phase.
#[derive(Default)]
struct Cycle {
    start: Samples,
    stop: Samples,
    delete: Samples,
    whole: Samples,
}

impl Cycle {
    fn record(&mut self, start: Duration, stop: Duration, delete: Duration) {
        self.start.push_ms(start);
        self.stop.push_ms(stop);
        self.delete.push_ms(delete);
        self.whole.push_ms(start + stop + delete);
    }
}

pub fn run(options: &Options, report: &mut ScenarioReport) -> Result<()> {
    let runs = options.iterations(50, 3);
    let limits = limits();
    let mut node = Node::start(options, false)?;
    let oci = OciBench::new(&node.busybox_rootfs(), &limits)?;
    report.note(format!(
        "{runs} cycles each, alternating. Paddock: the agent's runtime API in process \
         (`Runtime::apply` running on a new VPS = create + start, `apply` stopped, `delete`), \
         busybox template, lxcfs /proc view; start includes the VPS's 64 MiB ext4 disk image, \
         loop device, idmapped overlayfs root, seccomp, and ends when the init has exec'd. \
         No network port (runc gets none either; both have a new empty netns)."
    ));
    report.note(format!(
        "runc {}: `runc run -d` of an OCI bundle of a copy of the same busybox rootfs (a plain \
         directory, chowned to the mapped root: no disk image, no overlay), namespaces user \
         (65536 ids), pid, mount, uts, ipc, net, cgroup; memory 64 MiB, pids 256, CPU quota \
         100000/100000 us (cgroupfs); `runc kill` with busybox init's halt signal (SIGUSR2), \
         sent again after 1 s and at doubling intervals as the agent does, until the init is \
         gone; `runc delete`. Each sample includes spawning the \
         runc process.",
        oci.version("runc")
    ));
    report.note(
        "Durability: an agent start answers only once the VPS is on disk (the id range table \
         and the new disk image fsynced, the VPS's state.json written with fsync, rename and a \
         directory fsync; the ext4 mount flushes the disk through the loop device, which \
         fsyncs the image). `runc run -d` makes no fsync call (strace).",
    );
    report.note(
        "Before each stop (not timed) the bench waits until the init takes the halt signal \
         (blocked for sigtimedwait, /proc SigBlk, or waiting in it): until then busybox init, a PID 1 without a \
         handler, ignores it, on either runtime.",
    );
    report.note(
        "stop is dominated by busybox init's own power-off: on SIGUSR2 it runs its shutdown \
         actions, sends SIGTERM to every process, waits about 1 s, sends SIGKILL, waits again, \
         then exits; both the agent and runc wait for that (the agent's grace is 10 s).",
    );
    let mut agent = Cycle::default();
    let mut phases = PhaseSamples::default();
    let mut runc = Cycle::default();
    let mut crun = Cycle::default();
    let mut crun_error: Option<String> = None;
    // A failed cycle ends the loop; what was measured before it is still reported.
    let mut failure = None;
    for run in 0..runs {
        let cycle = (|| -> Result<()> {
            let vps_id = format!("bench-start-{run}");
            let started = Instant::now();
            let init_pid = node.create_start(&vps_id, &limits, None)?;
            let start = started.elapsed();
            if let Some(start_phases) = node.runtime.last_start_phases(&vps_id) {
                phases.record(&start_phases);
            }
            // Not timed: busybox init ignores the halt signal until it takes it (see the note).
            wait_catches(init_pid as i32, libc::SIGUSR2)?;
            let stopping = Instant::now();
            node.stop(&vps_id, &limits)?;
            let stop = stopping.elapsed();
            let deleting = Instant::now();
            node.delete(&vps_id)?;
            agent.record(start, stop, deleting.elapsed());

            let (start, stop, delete) = oci.cycle("runc", run)?;
            runc.record(start, stop, delete);

            if crun_error.is_none() {
                match oci.cycle("crun", run) {
                    Ok((start, stop, delete)) => crun.record(start, stop, delete),
                    Err(error) => crun_error = Some(format!("{error:#}")),
                }
            }
            Ok(())
        })();
        if let Err(error) = cycle {
            failure = Some(error.context(format!("cycle {run}")));
            break;
        }
    }
    let rows: [(&str, Phase); 4] = [
        ("start (create+start)", |c| &c.start),
        ("stop", |c| &c.stop),
        ("delete", |c| &c.delete),
        ("whole cycle", |c| &c.whole),
    ];
    for (name, pick) in rows {
        report.row(
            Row::median(&format!("agent {name}"), "ms", pick(&agent))?
                .against_median(&format!("runc {name}"), pick(&runc))?,
        );
    }
    if let Some(note) = phases.note() {
        report.note(note);
    }
    match crun_error {
        None => {
            for (name, pick) in rows {
                report.row(
                    Row::median(&format!("agent {name} (vs crun)"), "ms", pick(&agent))?
                        .against_median(&format!("crun {name}"), pick(&crun))?,
                );
            }
        }
        Some(error) => {
            report.note(format!(
                "crun {}: no number, it could not run the same bundle on this host (cgroup \
                 mode {}): {error}",
                oci.version("crun"),
                crate::report::Host::detect(&options.bin_dir).cgroup_mode
            ));
        }
    }
    failure.map_or(Ok(()), Err)
}

/// The agent's start phases ([`paddock_agent::runtime::phases`]) over all cycles, in the order
/// they first ran.
#[derive(Default)]
struct PhaseSamples {
    names: Vec<String>,
    samples: std::collections::HashMap<String, Samples>,
}

impl PhaseSamples {
    fn record(&mut self, start_phases: &StartPhases) {
        for (name, took) in &start_phases.phases {
            if !self.samples.contains_key(name) {
                self.names.push(name.clone());
            }
            self.samples.entry(name.clone()).or_default().push_ms(*took);
        }
    }

    /// One line: each phase's median in ms (phases under 0.05 ms left out).
    fn note(&self) -> Option<String> {
        let parts: Vec<String> = self
            .names
            .iter()
            .filter_map(|name| {
                let median = self.samples.get(name)?.median()?;
                (median >= 0.05).then(|| format!("{name} {median:.2}"))
            })
            .collect();
        (!parts.is_empty()).then(|| {
            format!(
                "Where the agent's start goes, median ms per phase (`Runtime::last_start_phases`; \
                 `helper:` rows are the start helper's steps, timed by the helper): {}",
                parts.join(", ")
            )
        })
    }
}

/// OCI bundles of the busybox rootfs for runc and crun, with their own state roots, container
/// ids and cgroup parent; `Drop` deletes every container and cgroup they made.
struct OciBench {
    dir: tempfile::TempDir,
    tag: String,
    cgroup_parent: String,
}

impl OciBench {
    fn new(template_rootfs: &Path, limits: &Limits) -> Result<Self> {
        let tag = unique_tag();
        let dir = tempfile::Builder::new()
            .prefix("paddock-bench-oci-")
            .tempdir()
            .context("OCI bundle dir")?;
        let bench = Self {
            dir,
            cgroup_parent: format!("paddock-bench-oci-{tag}"),
            tag,
        };
        let rootfs = bench.dir.path().join("rootfs");
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(template_rootfs)
                .arg(&rootfs),
        )?;
        // The mapped root owns the tree, as on an image unpacked for a user namespace.
        let host_id = Self::host_id_base();
        run_ok(
            Command::new("chown")
                .args(["-R", "-h", &format!("{host_id}:{host_id}")])
                .arg(&rootfs),
        )?;
        let config = bench.config(&rootfs, limits, host_id);
        fs::write(
            bench.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )
        .context("writing config.json")?;
        Ok(bench)
    }

    /// A range outside the agent's (which starts at 100000 and grows by 65536 per VPS).
    fn host_id_base() -> u32 {
        2_000_000_000 + (std::process::id() % 1000) * idmap::ID_RANGE_SIZE
    }

    fn config(&self, rootfs: &Path, limits: &Limits, host_id: u32) -> serde_json::Value {
        let period_us: u64 = 100_000;
        let quota_us = (limits.vcpus * period_us as f64) as i64;
        let mapping =
            json!([{ "containerID": 0, "hostID": host_id, "size": idmap::ID_RANGE_SIZE }]);
        let caps = json!([
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_RAW",
            "CAP_SYS_CHROOT",
            "CAP_AUDIT_WRITE",
            "CAP_SETFCAP",
            "CAP_NET_ADMIN",
            "CAP_SYS_ADMIN"
        ]);
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 0, "gid": 0 },
                "args": ["/sbin/init"],
                "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": caps, "effective": caps, "permitted": caps
                },
                "noNewPrivileges": false
            },
            "root": { "path": rootfs, "readonly": false },
            "hostname": "bench",
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                  "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                  "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
                { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                  "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
                { "destination": "/sys", "type": "sysfs", "source": "sysfs",
                  "options": ["nosuid", "noexec", "nodev", "ro"] }
            ],
            "linux": {
                "uidMappings": mapping,
                "gidMappings": mapping,
                "namespaces": [
                    { "type": "user" }, { "type": "pid" }, { "type": "mount" }, { "type": "uts" },
                    { "type": "ipc" }, { "type": "network" }, { "type": "cgroup" }
                ],
                "cgroupsPath": format!("/{}/CONTAINER", self.cgroup_parent),
                "resources": {
                    "devices": [{ "allow": false, "access": "rwm" }],
                    "memory": { "limit": limits.memory_bytes },
                    "pids": { "limit": limits.pids_max },
                    "cpu": { "quota": quota_us, "period": period_us }
                },
                "maskedPaths": [
                    "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                    "/proc/scsi", "/sys/firmware"
                ],
                "readonlyPaths": [
                    "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                    "/proc/sysrq-trigger"
                ]
            }
        })
    }

    fn state_root(&self, runtime: &str) -> PathBuf {
        self.dir.path().join(format!("state-{runtime}"))
    }

    fn container_id(&self, runtime: &str, run: usize) -> String {
        format!("pdkbench-{}-{runtime}-{run}", self.tag)
    }

    fn version(&self, runtime: &str) -> String {
        Command::new(runtime)
            .arg("--version")
            .output()
            .ok()
            .and_then(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| format!("{runtime} (not installed)"))
    }

    fn command(&self, runtime: &str) -> Command {
        let mut command = Command::new(runtime);
        command
            .arg("--root")
            .arg(self.state_root(runtime))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// One run + kill-and-wait + delete; the bundle's cgroup path names this container.
    fn cycle(&self, runtime: &str, run: usize) -> Result<(Duration, Duration, Duration)> {
        let id = self.container_id(runtime, run);
        // Each container gets its own cgroup under the bench's parent.
        let config_path = self.dir.path().join("config.json");
        let text = fs::read_to_string(&config_path)?;
        let cgroup = format!("/{}/{id}", self.cgroup_parent);
        let mut config: serde_json::Value = serde_json::from_str(&text)?;
        config["linux"]["cgroupsPath"] = json!(cgroup);
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let pid_file = self.dir.path().join(format!("{id}.pid"));

        let started = Instant::now();
        run_ok(
            self.command(runtime)
                .args(["run", "-d", "--pid-file"])
                .arg(&pid_file)
                .arg("--bundle")
                .arg(self.dir.path())
                .arg(&id),
        )
        .with_context(|| format!("{runtime} run"))?;
        let start = started.elapsed();
        let pid: i32 = fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?
            .trim()
            .parse()
            .context("pid file")?;

        wait_catches(pid, libc::SIGUSR2)?;
        let stopping = Instant::now();
        // Like the agent's stop: the halt signal again after 1 s, then at doubling intervals.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut interval = Duration::from_secs(1);
        let mut sent = false;
        loop {
            let kill = run_ok(self.command(runtime).args(["kill", &id, "USR2"]));
            // A resend may find the init already on its way out ("container not running").
            if !sent {
                kill.with_context(|| format!("{runtime} kill"))?;
                sent = true;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if wait_exited(pid, interval.min(remaining))? {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{runtime} container {id}: init {pid} still running after 30 s");
            }
            interval = interval.saturating_mul(2);
        }
        let stop = stopping.elapsed();

        let deleting = Instant::now();
        run_ok(self.command(runtime).args(["delete", &id]))
            .with_context(|| format!("{runtime} delete"))?;
        Ok((start, stop, deleting.elapsed()))
    }
}

impl Drop for OciBench {
    fn drop(&mut self) {
        for runtime in ["runc", "crun"] {
            let root = self.state_root(runtime);
            let Ok(entries) = fs::read_dir(&root) else {
                continue;
            };
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                if id.starts_with("pdkbench-") {
                    let _ = self
                        .command(runtime)
                        .args(["delete", "--force", &id])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        crate::node::purge_cgroup_everywhere(&self.cgroup_parent);
    }
}

/// Runs a command, failing with its stderr unless it exits 0. stderr goes through a file, not
/// a pipe: a container started with `run -d` inherits it and would hold a pipe open forever.
fn run_ok(command: &mut Command) -> Result<()> {
    let mut stderr = tempfile::tempfile().context("stderr file")?;
    let status = command
        .stderr(stderr.try_clone()?)
        .status()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !status.success() {
        let mut text = String::new();
        stderr.seek(SeekFrom::Start(0))?;
        stderr.read_to_string(&mut text)?;
        bail!(
            "{:?} {:?}: {status}: {}",
            command.get_program(),
            command.get_args().collect::<Vec<_>>(),
            text.trim()
        );
    }
    Ok(())
}

/// Waits until process `pid` takes `signal`: it has a handler for it, blocks it to collect it
/// with sigtimedwait as busybox init does (`SigCgt` or `SigBlk` in /proc), or sits in
/// sigtimedwait (which unblocks the signals it waits for while it waits).
fn wait_catches(pid: i32, signal: i32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let bit = 1u64 << (signal - 1);
    loop {
        let taken = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .map(|status| {
                status
                    .lines()
                    .filter_map(|line| {
                        line.strip_prefix("SigCgt:")
                            .or_else(|| line.strip_prefix("SigBlk:"))
                            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                    })
                    .fold(0, |mask, set| mask | set)
            });
        let waiting = fs::read_to_string(format!("/proc/{pid}/wchan"))
            .is_ok_and(|wchan| wchan.contains("sigtimedwait"));
        match taken {
            Some(mask) if mask & bit != 0 || waiting => return Ok(()),
            None => bail!("init {pid} is gone before it could be stopped"),
            Some(_) if Instant::now() >= deadline => {
                bail!("init {pid} does not take signal {signal} after 10 s")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Waits up to `timeout` until `pid` is gone or a zombie (this machine's PID 1 may never reap
/// it); returns whether it is.
fn wait_exited(pid: i32, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
            });
        match state.as_deref() {
            None | Some("Z") | Some("X") => return Ok(true),
            Some(_) if Instant::now() >= deadline => return Ok(false),
            Some(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}
