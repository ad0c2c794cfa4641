//! The VPS's control group, through cgroups-rs (v1 and v2): creation, limits (memory + swap,
//! CFS quota, CPU weight, pids, IO throttling on the VPS's own disk), the device policy
//! (deny everything but the nodes of a minimal /dev), membership, kill-all and removal.
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

use std::path::PathBuf;

use cgroups_rs::blkio::BlkIoController;
use cgroups_rs::cgroup::Cgroup;
use cgroups_rs::cpu::CpuController;
use cgroups_rs::devices::{DevicePermissions, DeviceType, DevicesController};
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::{CgroupPid, Controller, Hierarchy, MaxValue};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::runtime::isolation::device_filter;
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

const V2_CONTROLLERS: &[&str] = &["memory", "cpu", "pids", "io"];

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

/// The cgroup of one VPS, across all hierarchies it lives in.
pub(crate) struct VpsCgroup {
    cgroup: Cgroup,
    path: String,
    /// Its directories in the hierarchies of a v1 host that cgroups-rs does not manage: the
    /// hybrid cgroup2 mount, and v1 hierarchies it has no type for (e.g. `misc`, or a named one
    /// other than `name=systemd`).
    extra: Vec<PathBuf>,
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
    /// The VPS's cgroup in the host's hierarchy (`hierarchies::auto()`); not created yet.
    pub fn open(cgroup_parent: &str, vps_id: &str) -> Self {
        let hierarchy = cgroups_rs::hierarchies::auto();
        let path = relative_path(cgroup_parent, vps_id);
        if hierarchy.v2() {
            let controllers = V2_CONTROLLERS.iter().map(|c| (*c).to_string()).collect();
            return Self::with_hierarchy(hierarchy, &path, Some(controllers));
        }
        let mut cgroup = Self::with_hierarchy(hierarchy, &path, None);
        let managed = cgroup.paths();
        cgroup.extra = unmanaged_v1_host_hierarchies(&managed)
            .into_iter()
            .map(|root| root.join(&path))
            .collect();
        cgroup
    }

    /// The cgroup at `path` in `hierarchy`, restricted to `controllers` if given.
    fn with_hierarchy(
        hierarchy: Box<dyn Hierarchy>,
        path: &str,
        controllers: Option<Vec<String>>,
    ) -> Self {
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

    /// Host directories of this cgroup, one per hierarchy (deduplicated for co-mounted v1
    /// controllers such as `cpu,cpuacct`).
    pub fn paths(&self) -> Vec<PathBuf> {
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

    /// Whether the cgroup directory exists in any hierarchy.
    pub fn exists(&self) -> bool {
        self.paths().iter().any(|p| p.is_dir())
    }

    /// Creates the cgroup in every hierarchy; existing directories are kept.
    pub fn create(&self) -> Result<(), CgroupError> {
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

    /// Writes all limits; safe on a running VPS (a resize).
    pub fn apply_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        self.apply_memory(limits)?;
        self.apply_cpu(limits)?;
        self.apply_pids(limits)
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

    fn apply_memory(&self, limits: &Limits) -> Result<(), CgroupError> {
        let memory: &MemController = self.controller("memory")?;
        let memory_limit = memory_limit(limits.memory_bytes);
        if self.cgroup.v2() {
            memory
                .set_limit(memory_limit)
                .map_err(self.err("set memory.max"))?;
            if memory.path().join("memory.swap.max").exists() {
                memory
                    .set_memswap_limit(swap_limit_v2(limits.swap_bytes))
                    .map_err(self.err("set memory.swap.max"))?;
            }
            return Ok(());
        }
        // v1: memory.limit_in_bytes must never exceed memory.memsw.limit_in_bytes, so raise the
        // combined limit first when growing and lower the memory limit first when shrinking.
        if !memory.path().join("memory.memsw.limit_in_bytes").exists() {
            return memory
                .set_limit(memory_limit)
                .map_err(self.err("set memory.limit_in_bytes"));
        }
        let memsw = memsw_limit_v1(limits.memory_bytes, limits.swap_bytes);
        let current_memsw = memory.memswap().limit_in_bytes;
        let grows_past_memsw = memory_limit < 0 || memory_limit > current_memsw;
        if grows_past_memsw {
            memory
                .set_memswap_limit(memsw)
                .map_err(self.err("set memory.memsw.limit_in_bytes"))?;
            memory
                .set_limit(memory_limit)
                .map_err(self.err("set memory.limit_in_bytes"))
        } else {
            memory
                .set_limit(memory_limit)
                .map_err(self.err("set memory.limit_in_bytes"))?;
            memory
                .set_memswap_limit(memsw)
                .map_err(self.err("set memory.memsw.limit_in_bytes"))
        }
    }

    fn apply_cpu(&self, limits: &Limits) -> Result<(), CgroupError> {
        let cpu: &CpuController = self.controller("cpu")?;
        let quota = cfs_quota_us(limits.vcpus).unwrap_or(-1);
        cpu.set_cfs_quota_and_period(Some(quota), Some(CPU_PERIOD_US))
            .map_err(self.err("set cpu quota"))?;
        let weight = effective_cpu_weight(limits.cpu_weight);
        if self.cgroup.v2() {
            cpu.set_shares(u64::from(weight))
                .map_err(self.err("set cpu.weight"))
        } else {
            cpu.set_shares(weight_to_shares(weight))
                .map_err(self.err("set cpu.shares"))
        }
    }

    /// Denies every device, then allows [`ALLOWED_CHAR_DEVICES`] (read, write; no mknod):
    /// through the `devices` controller on v1, an eBPF device program on v2
    /// ([`device_filter`]). Must run while the cgroup is empty: on v1 the deny-all briefly
    /// covers everything.
    pub fn apply_device_policy(&self) -> Result<(), CgroupError> {
        if self.cgroup.v2() {
            for dir in self.paths() {
                device_filter::attach(&dir, ALLOWED_CHAR_DEVICES)?;
            }
            return Ok(());
        }
        let devices: &DevicesController = self.controller("devices")?;
        devices
            .deny_device(DeviceType::All, -1, -1, &DevicePermissions::all())
            .map_err(self.err("deny all devices in"))?;
        for (major, minor, name) in ALLOWED_CHAR_DEVICES {
            devices
                .allow_device(
                    DeviceType::Char,
                    *major,
                    *minor,
                    &[DevicePermissions::Read, DevicePermissions::Write],
                )
                .map_err(self.err(format!("allow device {name} in")))?;
        }
        Ok(())
    }

    /// Throttles IO on the VPS's disk (`major:minor` of its loop device); 0 = unlimited.
    /// The IO weight follows the CPU weight where the host's IO scheduler offers one.
    pub fn apply_io(&self, limits: &Limits, device: (u64, u64)) -> Result<(), CgroupError> {
        let blkio: &BlkIoController = self.controller("blkio")?;
        let (major, minor) = device;
        let v2 = self.cgroup.v2();
        let value = |v: u64| if v == 0 && v2 { u64::MAX } else { v };
        blkio
            .throttle_read_bps_for_device(major, minor, value(limits.io_read_bps))
            .map_err(self.err("set read bps"))?;
        blkio
            .throttle_write_bps_for_device(major, minor, value(limits.io_write_bps))
            .map_err(self.err("set write bps"))?;
        blkio
            .throttle_read_iops_for_device(major, minor, value(limits.io_read_iops))
            .map_err(self.err("set read iops"))?;
        blkio
            .throttle_write_iops_for_device(major, minor, value(limits.io_write_iops))
            .map_err(self.err("set write iops"))?;
        let weight = effective_cpu_weight(limits.cpu_weight);
        let (file, content) = if v2 {
            ("io.weight", format!("default {weight}"))
        } else {
            ("blkio.weight", weight_to_blkio_weight(weight).to_string())
        };
        let path = blkio.path().join(file);
        if path.exists() {
            std::fs::write(&path, &content).map_err(|source| CgroupError::Write {
                path: path.clone(),
                value: content.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn apply_pids(&self, limits: &Limits) -> Result<(), CgroupError> {
        let pids: &PidController = self.controller("pids")?;
        pids.set_pid_max(pids_max_value(limits.pids_max))
            .map_err(self.err("set pids.max"))
    }

    /// Moves process `pid` (all its threads) into the cgroup in every hierarchy. On v1,
    /// hierarchies where the cgroup does not exist are skipped: a VPS started by an agent that
    /// did not create it there yet (`create` checks that a new VPS has them all).
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let task = CgroupPid::from(u64::from(pid));
        if self.cgroup.v2() {
            self.cgroup
                .add_task_by_tgid(task)
                .map_err(self.err(format!("add pid {pid} to")))?;
        } else {
            for subsystem in self.cgroup.subsystems() {
                let controller = subsystem.to_controller();
                if controller.path().is_dir() {
                    controller
                        .add_task_by_tgid(&task)
                        .map_err(self.err(format!("add pid {pid} to")))?;
                }
            }
        }
        for dir in self.extra.iter().filter(|dir| dir.is_dir()) {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(|source| CgroupError::Write {
                path: procs.clone(),
                value: pid.to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// Pids of all processes in the cgroup (any hierarchy).
    pub fn procs(&self) -> Vec<u32> {
        self.cgroup
            .procs()
            .into_iter()
            .filter_map(|p| u32::try_from(p.pid).ok())
            .filter(|pid| *pid != 0)
            .collect()
    }

    /// Sends SIGKILL to everything in the cgroup: atomically via `cgroup.kill` where the kernel
    /// has it (v2, 5.14+), else process by process. Returns the pids that were still listed.
    pub fn kill_all(&self) -> Vec<u32> {
        let procs = self.procs();
        if procs.is_empty() {
            return procs;
        }
        if self.cgroup.v2() && self.cgroup.kill().is_ok() {
            return procs;
        }
        for pid in &procs {
            if let Ok(raw) = i32::try_from(*pid) {
                // ESRCH (already gone) is the expected race here.
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
        procs
    }

    /// Removes the cgroup from every hierarchy; absent is fine. The cgroup must be empty.
    pub fn delete(&self) -> Result<(), CgroupError> {
        if !self.exists() {
            return Ok(());
        }
        self.cgroup.delete().map_err(self.err("remove"))?;
        self.extra.iter().try_for_each(|dir| remove_cgroup_dir(dir))
    }

    /// The relative path, for messages.
    pub fn path(&self) -> &str {
        &self.path
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
    use std::fs;
    use std::path::Path;

    use cgroups_rs::Subsystem;

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

    /// A cgroup v2 hierarchy rooted in a temp dir, offering memory, cpu and pids.
    #[derive(Debug, Clone)]
    struct FakeV2 {
        root: PathBuf,
    }

    impl Hierarchy for FakeV2 {
        fn subsystems(&self) -> Vec<Subsystem> {
            vec![
                Subsystem::Mem(MemController::new(self.root.clone(), true)),
                Subsystem::Cpu(CpuController::new(self.root.clone(), true)),
                Subsystem::Pid(PidController::new(self.root.clone(), true)),
            ]
        }
        fn root(&self) -> PathBuf {
            self.root.clone()
        }
        fn root_control_group(&self) -> Cgroup {
            Cgroup::load(Box::new(self.clone()), "")
        }
        fn parent_control_group(&self, path: &str) -> Cgroup {
            let parent = Path::new(path).parent().unwrap_or(Path::new(""));
            Cgroup::load(Box::new(self.clone()), parent)
        }
        fn v2(&self) -> bool {
            true
        }
    }

    #[test]
    fn writes_v2_values_into_fake_hierarchy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hierarchy = FakeV2 {
            root: dir.path().to_path_buf(),
        };
        let path = relative_path("/paddock/", "abc");
        assert_eq!(path, "paddock/vps-abc");
        let cgroup = VpsCgroup::with_hierarchy(Box::new(hierarchy), &path, None);
        cgroup.create().expect("create");
        let cg_dir = dir.path().join(&path);
        assert_eq!(cgroup.paths(), vec![cg_dir.clone()]);
        // Files the kernel would provide in a fresh v2 cgroup.
        fs::write(cg_dir.join("cpu.max"), "max 100000\n").expect("seed cpu.max");
        fs::write(cg_dir.join("memory.swap.max"), "max\n").expect("seed swap");

        let limits = Limits {
            vcpus: 1.5,
            cpu_weight: 0,
            memory_bytes: 256 << 20,
            swap_bytes: 64 << 20,
            pids_max: 512,
            ..Limits::default()
        };
        cgroup.apply_limits(&limits).expect("apply");
        let read = |f: &str| fs::read_to_string(cg_dir.join(f)).expect(f);
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), cpu_max_line(1.5));
        assert_eq!(read("cpu.weight"), "100");
        assert_eq!(read("pids.max"), "512");

        let unlimited = Limits {
            vcpus: 0.0,
            cpu_weight: 300,
            memory_bytes: 0,
            swap_bytes: 0,
            pids_max: 0,
            ..Limits::default()
        };
        cgroup.apply_limits(&unlimited).expect("apply unlimited");
        assert_eq!(read("memory.max"), "max");
        assert_eq!(read("cpu.max"), "max 100000");
        assert_eq!(read("cpu.weight"), "300");
        assert_eq!(read("pids.max"), "max");
    }
}
