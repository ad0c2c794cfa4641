//! The VPS's control group: creation, limits (memory + swap, CFS quota, CPU weight, pids, IO
//! throttling on the VPS's own disk), the device policy (deny everything but the nodes of a
//! minimal /dev), membership, freezing, usage, kill-all and removal.
//!
//! One [`CgroupManager`] trait with one implementation per cgroup version: [`v1::V1Cgroup`]
//! and [`v2::V2Cgroup`], both through cgroups-rs (plus direct writes where it has no call or
//! writes a file per value, e.g. v2 `io.max`), chosen once per process from the host's
//! [`CgroupMode`]. [`VpsCgroup`] is the VPS's cgroup for the host's mode.
//!
//! Each VPS gets `<cgroup_parent>/vps-<id>` in every hierarchy: on v2 the unified one; on v1 every
//! mounted v1 hierarchy (the limited controllers, and also cpuset — its `cpus`/`mems` copied from
//! the parent —, freezer, `name=systemd`, ..., through cgroups-rs; any hierarchy cgroups-rs has
//! no type for, e.g. `misc`, directly) plus the hybrid cgroup2 mount if there is one.
//! The start helper joins all of them before the VPS's cgroup namespace is created, so whatever
//! hierarchy the VPS mounts shows only its own subtree, never the host's processes or other
//! VPSes.
//!
//! cpuset (v1): the VPS's own cpuset cgroup keeps all of its parent's CPUs (no
//! pinning: the scheduler may run it anywhere, the CFS quota bounds its CPU time). lxcfs looks
//! up the CFS quota at the reader's *cpuset* path, so without it the quota-based view of
//! /proc/cpuinfo, /proc/stat and cpu/online ([`crate::runtime::isolation::procview`]) showed every host CPU. The
//! number of CPUs a VPS sees is [`visible_cpus`]: ⌈vcpus⌉ (1 → 1, 1.5 → 2, 0.25 → 1), capped at
//! the host's; `nproc` (sched_getaffinity) gets the same from [`crate::runtime::isolation::sysinfo`].

mod v1;
mod v2;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cgroups_rs::cgroup::Cgroup;
use cgroups_rs::{Controller, Hierarchy, MaxValue};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::runtime::isolation::device_filter;
use crate::runtime::usage::{self, CgroupUsage, CounterFiles, UsageError};
use crate::runtime::Limits;

/// CFS period for every VPS, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel's smallest accepted CFS quota, in microseconds.
pub const MIN_CPU_QUOTA_US: i64 = 1_000;
/// cgroup v2 `cpu.weight` default; `Limits::cpu_weight == 0` means this.
pub const DEFAULT_CPU_WEIGHT: u32 = 100;
/// cgroup v2 `cpu.weight` range.
pub const MAX_CPU_WEIGHT: u32 = 10_000;
/// cgroup v1 `cpu.shares` that corresponds to the default weight.
pub const DEFAULT_CPU_SHARES: u64 = 1024;

/// Character devices a VPS may open (type, major, minor; -1 = any): the nodes of its /dev.
pub const ALLOWED_CHAR_DEVICES: &[(i64, i64, &str)] = &[
    (1, 3, "null"),
    (1, 5, "zero"),
    (1, 7, "full"),
    (1, 8, "random"),
    (1, 9, "urandom"),
    (5, 0, "tty"),
    (5, 1, "console"),
    (5, 2, "ptmx"),
    (136, -1, "pts/*"),
];

/// Errors managing a VPS cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// cgroups-rs failed an operation on the cgroup.
    #[error("{operation} cgroup {path}: {source}")]
    Cgroups {
        /// What was being done (`create`, `set memory.max`, ...).
        operation: String,
        /// The cgroup, relative to the hierarchy root(s).
        path: String,
        /// The cgroups-rs error (boxed: it is large).
        source: Box<cgroups_rs::error::Error>,
    },
    /// A needed controller is not available in this hierarchy.
    #[error("cgroup {path}: controller {controller} is not available on this host")]
    ControllerMissing {
        /// The cgroup.
        path: String,
        /// `memory`, `cpu` or `pids`.
        controller: &'static str,
    },
    /// Loading or attaching the v2 device program failed.
    #[error(transparent)]
    DeviceFilter(#[from] device_filter::DeviceFilterError),
    /// Writing a control file directly failed.
    #[error("write {value:?} to {path}: {source}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A cgroup directory operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// `mkdir`, `read dir`, `rmdir`.
        operation: &'static str,
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The cgroup directory was not created (cgroups-rs only logs mkdir failures).
    #[error("create cgroup dir {path}: directory missing after create")]
    NotCreated {
        /// The host path that should exist.
        path: PathBuf,
    },
}

/// Which cgroup version the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Legacy or hybrid: one hierarchy per controller (plus, hybrid, a controller-less cgroup2).
    V1,
    /// Unified: one cgroup2 hierarchy.
    V2,
}

impl CgroupMode {
    /// The host's mode, detected at the first call in this process and kept: the runtime asks
    /// once when it starts, each helper process once when it needs a cgroup.
    pub fn host() -> Self {
        static MODE: OnceLock<CgroupMode> = OnceLock::new();
        *MODE.get_or_init(|| {
            if cgroups_rs::hierarchies::is_cgroup2_unified_mode() {
                Self::V2
            } else {
                Self::V1
            }
        })
    }
}

/// What the runtime does with the cgroup of one VPS. One implementation per cgroup version
/// ([`v1::V1Cgroup`], [`v2::V2Cgroup`]), chosen by [`CgroupMode`].
pub(crate) trait CgroupManager: Send + Sync {
    /// The cgroup path relative to the hierarchy root(s), for messages.
    fn path(&self) -> &str;

    /// Host directories of this cgroup, one per hierarchy (deduplicated for co-mounted v1
    /// controllers such as `cpu,cpuacct`).
    fn paths(&self) -> Vec<PathBuf>;

    /// Creates the cgroup in every hierarchy; existing directories are kept.
    fn create(&self) -> Result<(), CgroupError>;

    /// Writes the memory (+ swap), CPU (quota and weight) and pids limits; safe on a running
    /// VPS (a resize).
    fn apply_limits(&self, limits: &Limits) -> Result<(), CgroupError>;

    /// Denies every device, then allows [`ALLOWED_CHAR_DEVICES`] (read, write; no mknod).
    /// Must run while the cgroup is empty.
    fn apply_device_policy(&self) -> Result<(), CgroupError>;

    /// Throttles IO on the VPS's disk (`major:minor` of its loop device); 0 = unlimited.
    /// The IO weight follows the CPU weight where the host's IO scheduler offers one.
    fn apply_io(&self, limits: &Limits, device: (u64, u64)) -> Result<(), CgroupError>;

    /// Moves process `pid` (all its threads) into the cgroup in every hierarchy.
    fn add_process(&self, pid: u32) -> Result<(), CgroupError>;

    /// Pids of all processes in the cgroup (any hierarchy).
    fn procs(&self) -> Vec<u32>;

    /// Sends SIGKILL to everything in the cgroup. Returns the pids that were still listed.
    fn kill_all(&self) -> Vec<u32>;

    /// Freezes (`true`) or thaws the cgroup's processes where the host has a freezer;
    /// `Ok(false)`: there is none.
    // Not on the lifecycle's path yet (stop and kill do not freeze); tested per version.
    #[allow(dead_code)]
    fn set_frozen(&self, frozen: bool) -> Result<bool, CgroupError>;

    /// Removes the cgroup from every hierarchy; absent is fine. The cgroup must be empty.
    fn delete(&self) -> Result<(), CgroupError>;

    /// Where the cgroup's usage counters are: each in the one directory that has it.
    fn counter_files(&self) -> CounterFiles;

    /// What the cgroup counts (CPU, memory, IO), read from its control files.
    fn read_usage(&self) -> Result<CgroupUsage, UsageError> {
        usage::read_counters(&self.counter_files())
    }
}

/// The cgroup of one VPS, across all hierarchies it lives in, managed for the host's
/// [`CgroupMode`]. Derefs to its [`CgroupManager`].
pub(crate) struct VpsCgroup {
    manager: Box<dyn CgroupManager>,
}

/// The cgroup path of a VPS relative to the hierarchy root(s).
pub(crate) fn relative_path(cgroup_parent: &str, vps_id: &str) -> String {
    let parent = cgroup_parent.trim_matches('/');
    if parent.is_empty() {
        format!("vps-{vps_id}")
    } else {
        format!("{parent}/vps-{vps_id}")
    }
}

impl VpsCgroup {
    /// The VPS's cgroup in the host's hierarchies ([`CgroupMode::host`]); not created yet.
    pub fn open(cgroup_parent: &str, vps_id: &str) -> Self {
        Self::open_in(CgroupMode::host(), cgroup_parent, vps_id)
    }

    /// The VPS's cgroup in the host's hierarchies of `mode`; not created yet.
    pub fn open_in(mode: CgroupMode, cgroup_parent: &str, vps_id: &str) -> Self {
        let path = relative_path(cgroup_parent, vps_id);
        let manager: Box<dyn CgroupManager> = match mode {
            CgroupMode::V1 => Box::new(v1::V1Cgroup::open(&path)),
            CgroupMode::V2 => Box::new(v2::V2Cgroup::open(&path)),
        };
        Self { manager }
    }
}

impl std::ops::Deref for VpsCgroup {
    type Target = dyn CgroupManager;

    fn deref(&self) -> &Self::Target {
        self.manager.as_ref()
    }
}

/// What both managers keep: the cgroups-rs handle over the hierarchies it knows, the relative
/// path, and directories in hierarchies cgroups-rs does not manage.
struct Handle {
    cgroup: Cgroup,
    path: String,
    /// Its directories in the hierarchies of a v1 host that cgroups-rs does not manage: the
    /// hybrid cgroup2 mount, and v1 hierarchies it has no type for (e.g. `misc`, or a named one
    /// other than `name=systemd`).
    extra: Vec<PathBuf>,
}

impl Handle {
    /// The cgroup at `path` in `hierarchy`, restricted to `controllers` if given.
    fn load(hierarchy: Box<dyn Hierarchy>, path: &str, controllers: Option<Vec<String>>) -> Self {
        let cgroup = match controllers {
            Some(controllers) => {
                Cgroup::load_with_specified_controllers(hierarchy, path, controllers)
            }
            None => Cgroup::load(hierarchy, path),
        };
        Self {
            cgroup,
            path: path.to_string(),
            extra: Vec::new(),
        }
    }

    fn err(
        &self,
        operation: impl Into<String>,
    ) -> impl FnOnce(cgroups_rs::error::Error) -> CgroupError {
        let path = self.path.clone();
        let operation = operation.into();
        move |source| CgroupError::Cgroups {
            operation,
            path,
            source: Box::new(source),
        }
    }

    fn controller<'a, T>(&'a self, controller: &'static str) -> Result<&'a T, CgroupError>
    where
        &'a T: From<&'a cgroups_rs::Subsystem>,
        T: Controller + cgroups_rs::ControllIdentifier,
    {
        self.cgroup
            .controller_of::<T>()
            .ok_or_else(|| CgroupError::ControllerMissing {
                path: self.path.clone(),
                controller,
            })
    }

    fn paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self
            .cgroup
            .subsystems()
            .iter()
            .map(|s| s.to_controller().path().to_path_buf())
            .chain(self.extra.iter().cloned())
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    fn create(&self) -> Result<(), CgroupError> {
        self.cgroup.create().map_err(self.err("create"))?;
        for dir in &self.extra {
            std::fs::create_dir_all(dir).map_err(|source| CgroupError::Io {
                operation: "mkdir",
                path: dir.clone(),
                source,
            })?;
        }
        if let Some(path) = self.paths().into_iter().find(|p| !p.is_dir()) {
            return Err(CgroupError::NotCreated { path });
        }
        Ok(())
    }

    /// Writes `pid` into `cgroup.procs` of every extra directory that exists.
    fn add_to_extra(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.extra.iter().filter(|dir| dir.is_dir()) {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn procs(&self) -> Vec<u32> {
        self.cgroup
            .procs()
            .into_iter()
            .filter_map(|p| u32::try_from(p.pid).ok())
            .filter(|pid| *pid != 0)
            .collect()
    }

    fn delete(&self) -> Result<(), CgroupError> {
        if !self.paths().iter().any(|p| p.is_dir()) {
            return Ok(());
        }
        self.cgroup.delete().map_err(self.err("remove"))?;
        self.extra.iter().try_for_each(|dir| remove_cgroup_dir(dir))
    }
}

/// Writes one control file directly.
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// SIGKILL to each of `procs`, one by one.
fn kill_each(procs: &[u32]) {
    for pid in procs {
        if let Ok(raw) = i32::try_from(*pid) {
            // ESRCH (already gone) is the expected race here.
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

/// Mount points of the host's cgroup hierarchies (a v1 host) that none of `managed` (the
/// cgroups-rs controller dirs) lies in: the hybrid cgroup2 mount (`/sys/fs/cgroup/unified` under
/// systemd) and v1 hierarchies cgroups-rs has no type for. One mount point per hierarchy.
fn unmanaged_v1_host_hierarchies(managed: &[PathBuf]) -> Vec<PathBuf> {
    unmanaged_hierarchies(&crate::runtime::isolation::mountinfo::read(), managed)
}

/// [`unmanaged_v1_host_hierarchies`] of a list of mounts.
fn unmanaged_hierarchies(
    mounts: &[crate::runtime::isolation::mountinfo::Mount],
    managed: &[PathBuf],
) -> Vec<PathBuf> {
    // (hierarchy, mount point): the super options name the hierarchy (controllers or name).
    let mounts: Vec<(String, PathBuf)> = mounts
        .iter()
        .filter(|mount| mount.root == "/" && matches!(mount.fstype.as_str(), "cgroup" | "cgroup2"))
        .map(|mount| {
            (
                format!("{} {}", mount.fstype, mount.super_options),
                mount.mount_point.clone(),
            )
        })
        .collect();
    let mut seen: Vec<&str> = mounts
        .iter()
        .filter(|(_, point)| managed.iter().any(|dir| dir.starts_with(point)))
        .map(|(hierarchy, _)| hierarchy.as_str())
        .collect();
    let mut roots = Vec::new();
    for (hierarchy, point) in &mounts {
        if !seen.contains(&hierarchy.as_str()) {
            seen.push(hierarchy);
            roots.push(point.clone());
        }
    }
    roots
}

/// Removes a cgroup directory and any child cgroups the VPS made in it (deepest first); absent is
/// fine. The cgroups must be empty.
fn remove_cgroup_dir(dir: &std::path::Path) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Io {
                operation: "read dir",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_dir(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Io {
            operation: "rmdir",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Whole CPUs a VPS with `vcpus` sees: ⌈vcpus⌉, at least 1; `None` (all) for 0 (unlimited).
pub fn visible_cpus(vcpus: f64) -> Option<usize> {
    if !vcpus.is_finite() || vcpus <= 0.0 {
        return None;
    }
    // Validated specs keep vcpus small.
    Some((vcpus.ceil() as usize).max(1))
}

/// Parses a kernel CPU list (`0-3,8,10-11`); malformed parts are ignored.
pub fn parse_cpu_list(list: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    cpus.extend(a..=b);
                }
            }
            None => {
                if let Ok(cpu) = part.parse() {
                    cpus.push(cpu);
                }
            }
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    cpus
}

/// The CFS quota for `vcpus` CPUs per `CPU_PERIOD_US`; `None` (unlimited) for 0.
pub fn cfs_quota_us(vcpus: f64) -> Option<i64> {
    if !vcpus.is_finite() || vcpus <= 0.0 {
        return None;
    }
    // Validated specs keep vcpus far below the point where this could overflow.
    let quota = (vcpus * CPU_PERIOD_US as f64).round() as i64;
    Some(quota.max(MIN_CPU_QUOTA_US))
}

/// The cgroup v2 `cpu.max` line for `vcpus` (what cgroups-rs writes).
#[cfg(test)]
pub fn cpu_max_line(vcpus: f64) -> String {
    match cfs_quota_us(vcpus) {
        Some(quota) => format!("{quota} {CPU_PERIOD_US}"),
        None => format!("max {CPU_PERIOD_US}"),
    }
}

/// The v2 weight for a `Limits::cpu_weight` (0 = default), clamped to 1..=10000.
pub fn effective_cpu_weight(cpu_weight: u32) -> u32 {
    if cpu_weight == 0 {
        DEFAULT_CPU_WEIGHT
    } else {
        cpu_weight.clamp(1, MAX_CPU_WEIGHT)
    }
}

/// Converts a v2 weight to v1 shares proportionally, so the defaults map onto each other
/// (100 → 1024), clamped to the kernel's 2..=262144.
pub fn weight_to_shares(weight: u32) -> u64 {
    (u64::from(weight) * DEFAULT_CPU_SHARES / u64::from(DEFAULT_CPU_WEIGHT)).clamp(2, 262_144)
}

/// v1 `blkio.weight` (10..=1000) for a v2-style weight (default 100 -> 500).
pub fn weight_to_blkio_weight(weight: u32) -> u64 {
    (u64::from(weight) * 5).clamp(10, 1000)
}

/// Memory hard limit for cgroups-rs (`-1` = unlimited for 0).
pub fn memory_limit(memory_bytes: u64) -> i64 {
    if memory_bytes == 0 {
        -1
    } else {
        i64::try_from(memory_bytes).unwrap_or(i64::MAX)
    }
}

/// v1 `memory.memsw.limit_in_bytes` = memory + swap (`-1` when memory is unlimited).
pub fn memsw_limit_v1(memory_bytes: u64, swap_bytes: u64) -> i64 {
    if memory_bytes == 0 {
        -1
    } else {
        i64::try_from(memory_bytes.saturating_add(swap_bytes)).unwrap_or(i64::MAX)
    }
}

/// v2 `memory.swap.max` (swap only; 0 = no swap).
pub fn swap_limit_v2(swap_bytes: u64) -> i64 {
    i64::try_from(swap_bytes).unwrap_or(i64::MAX)
}

/// `pids.max` (0 = unlimited).
pub fn pids_max_value(pids_max: u64) -> MaxValue {
    if pids_max == 0 {
        MaxValue::Max
    } else {
        MaxValue::Value(i64::try_from(pids_max).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_values() {
        assert_eq!(cfs_quota_us(0.0), None);
        assert_eq!(cfs_quota_us(1.0), Some(100_000));
        assert_eq!(cfs_quota_us(1.5), Some(150_000));
        assert_eq!(cfs_quota_us(0.001), Some(MIN_CPU_QUOTA_US));
        assert_eq!(cfs_quota_us(f64::NAN), None);
        assert_eq!(cpu_max_line(2.25), "225000 100000");
        assert_eq!(cpu_max_line(0.0), "max 100000");
        assert_eq!(effective_cpu_weight(0), 100);
        assert_eq!(effective_cpu_weight(50_000), 10_000);
        assert_eq!(weight_to_shares(100), 1024);
        assert_eq!(weight_to_shares(1), 10);
        assert_eq!(weight_to_shares(10_000), 102_400);
    }

    #[test]
    fn finds_the_hierarchies_cgroups_rs_does_not_manage() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/misc rw,relatime - cgroup cgroup rw,misc
39 31 0:35 / /mnt/misc-again rw,relatime - cgroup cgroup rw,misc
40 31 0:37 /sub /mnt/partial rw,relatime - cgroup cgroup rw,name=other
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:29 / /mnt/cpu-again rw,relatime - cgroup cgroup rw,cpu
";
        let managed = [
            PathBuf::from("/sys/fs/cgroup/cpu/paddock/vps-a"),
            PathBuf::from("/sys/fs/cgroup/freezer/paddock/vps-a"),
        ];
        assert_eq!(
            unmanaged_hierarchies(
                &crate::runtime::isolation::mountinfo::parse(mountinfo),
                &managed
            ),
            [
                PathBuf::from("/sys/fs/cgroup/misc"),
                PathBuf::from("/sys/fs/cgroup/unified")
            ]
        );
    }

    #[test]
    fn cpuset_values() {
        assert_eq!(visible_cpus(0.0), None);
        assert_eq!(visible_cpus(0.25), Some(1));
        assert_eq!(visible_cpus(1.0), Some(1));
        assert_eq!(visible_cpus(1.5), Some(2));
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
    }

    #[test]
    fn memory_values() {
        assert_eq!(memory_limit(0), -1);
        assert_eq!(memory_limit(64 << 20), 64 << 20);
        assert_eq!(memsw_limit_v1(64 << 20, 32 << 20), 96 << 20);
        assert_eq!(memsw_limit_v1(0, 32 << 20), -1);
        assert_eq!(swap_limit_v2(0), 0);
        assert_eq!(pids_max_value(0), MaxValue::Max);
        assert_eq!(pids_max_value(128), MaxValue::Value(128));
    }
}
