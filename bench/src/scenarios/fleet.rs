//! A dense node for the density and agent-restart scenarios: the real controller and agent
//! (the test harness's `Cluster`), with the node labelled to overcommit, a /22 pool beside the
//! cluster's /24, a small plan and a tenant whose quota fits hundreds of VPSes — the set-up
//! `docs/ARCHITECTURE.md` ("Dense nodes") describes. Also the host-side measurements both
//! scenarios take: which processes serve a VPS, their PSS, CPU time, init pids.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use paddock_tests::Cluster;

/// The tenant (and CLI context) the fleet's VPSes belong to.
pub const TENANT: &str = "fleet";
/// The plan of the fleet's VPSes: a tenth of a CPU, 64 MiB, a 256 MiB disk (the smallest allowed; an ext4 image
/// of ~10 MiB on the host; the shipped `nano` plan's 2 GiB disk takes ~66 MiB each).
pub const PLAN: &str = "dense";

/// Overcommit labels that let 500 `dense` VPSes onto a 2-core, 24 GiB node.
pub const LABELS: &[&str] = &[
    "paddock.io/cpu-overcommit=32",
    "paddock.io/memory-overcommit=4",
    "paddock.io/disk-overcommit=4",
];

/// A cluster set up for many VPSes on its one node.
pub struct Fleet {
    pub cluster: Cluster,
    /// Names of the VPSes created so far, in order.
    pub names: Vec<String>,
    /// Creates refused because the node was (briefly) offline — its heartbeats late under the
    /// burst — and retried.
    pub offline_retries: AtomicUsize,
}

/// The shipped configs' intervals (`config/controller.toml`, `config/agent.toml`), where the
/// test harness has short ones: for measuring what an idle node costs as deployed.
pub const PRODUCT_CONTROLLER_CONFIG: &[(&str, &str)] = &[
    ("heartbeat_interval_secs", "5"),
    ("node_offline_after_secs", "30"),
    ("reconcile_interval_secs", "10"),
];
/// See [`PRODUCT_CONTROLLER_CONFIG`].
pub const PRODUCT_AGENT_CONFIG: &[(&str, &str)] = &[("usage_interval_secs", "10")];

impl Fleet {
    /// A fleet on a cluster with the test harness's short intervals.
    pub fn start() -> Result<Self> {
        Self::on(Cluster::start()?)
    }

    /// A fleet on a cluster with the product's intervals ([`PRODUCT_CONTROLLER_CONFIG`]).
    pub fn start_with_product_intervals() -> Result<Self> {
        Self::on(Cluster::start_with_config(
            PRODUCT_CONTROLLER_CONFIG,
            PRODUCT_AGENT_CONFIG,
        )?)
    }

    fn on(cluster: Cluster) -> Result<Self> {
        cluster.add_tenant(TENANT)?;
        let admin = |args: &[&str]| -> Result<String> {
            let mut all = vec!["--context", "admin", "admin"];
            all.extend_from_slice(args);
            cluster.cli_ok(&all)
        };
        let mut label = vec!["node", "label", cluster.node_name.as_str()];
        label.extend_from_slice(LABELS);
        admin(&label)?;
        admin(&[
            "plan", "create", PLAN, "--vcpus", "0.1", "--memory", "64MiB", "--disk", "256MiB",
            "--pids", "128",
        ])?;
        admin(&[
            "tenant",
            "set-quota",
            TENANT,
            "--max-vps",
            "1000",
            "--vcpus",
            "200",
            "--memory",
            "128GiB",
            "--disk",
            "256GiB",
            "--ipv4",
            "1100",
        ])?;
        // A /22 of its own per process, beside the cluster's /24 (253 addresses).
        let pid = std::process::id();
        let second = 16 + pid % 16;
        let third = 4 * ((pid / 16) % 60);
        cluster.create_pool(
            "pool-dense",
            &format!("172.{second}.{third}.0/22"),
            &format!("172.{second}.{third}.1"),
        )?;
        Ok(Self {
            cluster,
            names: Vec::new(),
            offline_retries: AtomicUsize::new(0),
        })
    }

    /// Creates VPSes (without waiting, a few CLI calls at a time) until there are `total`,
    /// then waits until all of them run.
    pub fn grow_to(&mut self, total: usize) -> Result<()> {
        let new: Vec<String> = (self.names.len()..total)
            .map(|index| format!("d{index}"))
            .collect();
        for batch in new.chunks(8) {
            let results: Vec<Result<()>> = thread::scope(|scope| {
                let handles: Vec<_> = batch
                    .iter()
                    .map(|name| scope.spawn(|| self.create_no_wait(name)))
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| {
                        handle
                            .join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("create thread panicked")))
                    })
                    .collect()
            });
            for result in results {
                result?;
            }
        }
        self.names.extend(new);
        self.wait_all_running(Duration::from_secs(120 + 2 * total as u64))
    }

    fn create_no_wait(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let output = loop {
            let output = self.cluster.cli(&[
                "--context",
                TENANT,
                "create",
                name,
                "--plan",
                PLAN,
                "--no-wait",
            ])?;
            let offline = String::from_utf8_lossy(&output.stderr).contains("none online");
            if output.status.success() || !offline || Instant::now() > deadline {
                break output;
            }
            self.offline_retries.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(500));
        };
        ensure!(
            output.status.success(),
            "create {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// The fleet's VPSes as the controller sees them: name → (state, init pid).
    pub fn listed(&self) -> Result<BTreeMap<String, (String, u32)>> {
        let list = self.cluster.json(&["--context", TENANT, "list"])?;
        let mut found = BTreeMap::new();
        for vps in list.as_array().context("list is not an array")? {
            let name = vps["name"].as_str().unwrap_or_default().to_owned();
            let state = vps["state"].as_str().unwrap_or_default().to_owned();
            let pid = vps["init_pid"].as_u64().unwrap_or(0) as u32;
            found.insert(name, (state, pid));
        }
        Ok(found)
    }

    /// Waits until the controller reports every VPS of the fleet running.
    pub fn wait_all_running(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let listed = self.listed()?;
            let running = self
                .names
                .iter()
                .filter(|name| {
                    listed
                        .get(*name)
                        .is_some_and(|(state, _)| state == "running")
                })
                .count();
            if running == self.names.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let stuck: Vec<String> = self
                    .names
                    .iter()
                    .filter_map(|name| {
                        let (state, _) = listed.get(name)?;
                        (state != "running").then(|| format!("{name}: {state}"))
                    })
                    .take(10)
                    .collect();
                bail!(
                    "{running} of {} VPSes running after {timeout:?}; e.g. {stuck:?}",
                    self.names.len()
                );
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Creates one more VPS with `create --wait`, returns how long that took, and deletes it.
    pub fn time_one_start(&self, name: &str) -> Result<Duration> {
        let started = Instant::now();
        let created = self
            .cluster
            .cli(&["--context", TENANT, "create", name, "--plan", PLAN])?;
        let took = started.elapsed();
        ensure!(
            created.status.success(),
            "create {name}: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        self.cluster
            .cli_ok(&["--context", TENANT, "delete", name, "--yes"])?;
        Ok(took)
    }

    /// The VPS cgroups of the node (one per VPS), in the first hierarchy that has them.
    pub fn vps_cgroups(&self) -> Vec<std::path::PathBuf> {
        for root in paddock_tests::cgroup_roots() {
            let parent = root.join(&self.cluster.cgroup_parent);
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            let dirs: Vec<_> = entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| {
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vps-"))
                })
                .collect();
            if !dirs.is_empty() {
                return dirs;
            }
        }
        Vec::new()
    }
}

/// The processes of a VPS cgroup, split into the VPS's own (inside its pid namespace) and the
/// host-side ones serving it (console supervisor, sysinfo server), by their `NSpid` line.
pub fn cgroup_processes(cgroup: &Path) -> (Vec<u32>, Vec<u32>) {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    let mut guest = Vec::new();
    let mut host = Vec::new();
    for pid in procs
        .lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
    {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let levels = status
            .lines()
            .find_map(|line| line.strip_prefix("NSpid:"))
            .map_or(0, |ids| ids.split_whitespace().count());
        match levels {
            0 => {}
            1 => host.push(pid),
            _ => guest.push(pid),
        }
    }
    (guest, host)
}

/// The init of a VPS cgroup: the process that is pid 1 of its namespace.
pub fn init_pid(cgroup: &Path) -> Option<u32> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).ok()?;
    procs
        .lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|status| {
                    let ids = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
                    Some(ids.split_whitespace().nth(1) == Some("1"))
                })
                .unwrap_or(false)
        })
}

/// Proportional set size of a process in KiB (`/proc/PID/smaps_rollup`), 0 if it is gone.
pub fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Pss:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system, its own and its reaped children's) of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14-17 of stat: 11-14 after the command.
    let ticks: u64 = fields
        .get(11..15)
        .context("short stat")?
        .iter()
        .map(|field| field.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Cores a process used over `window` (CPU seconds / wall seconds).
pub fn cpu_cores(pid: u32, window: Duration) -> Result<f64> {
    let before = cpu_seconds(pid)?;
    let started = Instant::now();
    thread::sleep(window);
    let after = cpu_seconds(pid)?;
    Ok((after - before) / started.elapsed().as_secs_f64())
}

/// `memory.stat`'s kernel memory of a cgroup in KiB (v2 `kernel`, else v1
/// `memory.kmem.usage_in_bytes`), if the hierarchy reports it.
pub fn cgroup_kernel_kib(cgroup_dirs: &[std::path::PathBuf]) -> Option<u64> {
    for dir in cgroup_dirs {
        if let Ok(stat) = std::fs::read_to_string(dir.join("memory.stat")) {
            if let Some(bytes) = stat
                .lines()
                .find_map(|line| line.strip_prefix("kernel "))
                .and_then(|value| value.trim().parse::<u64>().ok())
            {
                return Some(bytes / 1024);
            }
        }
        if let Ok(usage) = std::fs::read_to_string(dir.join("memory.kmem.usage_in_bytes")) {
            if let Ok(bytes) = usage.trim().parse::<u64>() {
                return Some(bytes / 1024);
            }
        }
    }
    None
}
