//! The cgroup v2 manager: one directory in the unified hierarchy, with the memory, cpu, pids and
//! io controllers; devices through an eBPF program ([`device_filter`]).

use cgroups_rs::blkio::BlkIoController;
use cgroups_rs::cpu::CpuController;
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::{CgroupPid, Controller, Hierarchy};

use super::{
    effective_cpu_weight, kill_each, memory_limit, pids_max_value, swap_limit_v2, write_file,
    CgroupError, CgroupManager, Handle, ALLOWED_CHAR_DEVICES, CPU_PERIOD_US,
};
use crate::runtime::isolation::device_filter;
use crate::runtime::usage::CounterFiles;
use crate::runtime::Limits;

/// The controllers a VPS's cgroup enables.
const CONTROLLERS: &[&str] = &["memory", "cpu", "pids", "io"];

/// A VPS's cgroup on a unified (cgroup2-only) host.
pub(crate) struct V2Cgroup {
    handle: Handle,
}

impl V2Cgroup {
    /// `path` in the host's unified hierarchy; not created yet.
    pub fn open(path: &str) -> Self {
        let controllers = CONTROLLERS.iter().map(|c| (*c).to_string()).collect();
        Self::with_hierarchy(
            Box::new(cgroups_rs::hierarchies::V2::new()),
            path,
            Some(controllers),
        )
    }

    /// `path` in `hierarchy`, restricted to `controllers` if given (cgroups-rs checks those
    /// against the host's `/sys/fs/cgroup/cgroup.controllers`, whatever the hierarchy's root).
    fn with_hierarchy(
        hierarchy: Box<dyn Hierarchy>,
        path: &str,
        controllers: Option<Vec<String>>,
    ) -> Self {
        Self {
            handle: Handle::load(hierarchy, path, controllers),
        }
    }

    fn apply_memory(&self, limits: &Limits) -> Result<(), CgroupError> {
        let handle = &self.handle;
        let memory: &MemController = handle.controller("memory")?;
        memory
            .set_limit(memory_limit(limits.memory_bytes))
            .map_err(handle.err("set memory.max"))?;
        if memory.path().join("memory.swap.max").exists() {
            memory
                .set_memswap_limit(swap_limit_v2(limits.swap_bytes))
                .map_err(handle.err("set memory.swap.max"))?;
        }
        Ok(())
    }

    fn apply_cpu(&self, limits: &Limits) -> Result<(), CgroupError> {
        let handle = &self.handle;
        let cpu: &CpuController = handle.controller("cpu")?;
        let quota = super::cfs_quota_us(limits.vcpus).unwrap_or(-1);
        cpu.set_cfs_quota_and_period(Some(quota), Some(CPU_PERIOD_US))
            .map_err(handle.err("set cpu quota"))?;
        // cgroups-rs writes `cpu.weight` for shares on v2.
        let weight = effective_cpu_weight(limits.cpu_weight);
        cpu.set_shares(u64::from(weight))
            .map_err(handle.err("set cpu.weight"))
    }

    fn apply_pids(&self, limits: &Limits) -> Result<(), CgroupError> {
        let pids: &PidController = self.handle.controller("pids")?;
        pids.set_pid_max(pids_max_value(limits.pids_max))
            .map_err(self.handle.err("set pids.max"))
    }
}

/// One `io.max` line for `device`: all four limits in one write, `max` for 0 (unlimited).
fn io_max_line(limits: &Limits, (major, minor): (u64, u64)) -> String {
    let value = |v: u64| match v {
        0 => "max".to_string(),
        v => v.to_string(),
    };
    format!(
        "{major}:{minor} rbps={} wbps={} riops={} wiops={}",
        value(limits.io_read_bps),
        value(limits.io_write_bps),
        value(limits.io_read_iops),
        value(limits.io_write_iops)
    )
}

impl CgroupManager for V2Cgroup {
    fn path(&self) -> &str {
        &self.handle.path
    }

    fn paths(&self) -> Vec<std::path::PathBuf> {
        self.handle.paths()
    }

    fn counter_files(&self) -> CounterFiles {
        match self.handle.paths().first() {
            Some(dir) => CounterFiles::v2(dir),
            None => CounterFiles::default(),
        }
    }

    fn create(&self) -> Result<(), CgroupError> {
        self.handle.create()
    }

    fn apply_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        self.apply_memory(limits)?;
        self.apply_cpu(limits)?;
        self.apply_pids(limits)
    }

    /// An eBPF device program attached to the cgroup ([`device_filter`]).
    fn apply_device_policy(&self) -> Result<(), CgroupError> {
        for dir in self.paths() {
            device_filter::attach(&dir, ALLOWED_CHAR_DEVICES)?;
        }
        Ok(())
    }

    /// `io.max` (one line per device) and `io.weight`.
    fn apply_io(&self, limits: &Limits, device: (u64, u64)) -> Result<(), CgroupError> {
        let blkio: &BlkIoController = self.handle.controller("io")?;
        write_file(&blkio.path().join("io.max"), &io_max_line(limits, device))?;
        let weight = effective_cpu_weight(limits.cpu_weight);
        let path = blkio.path().join("io.weight");
        if path.exists() {
            write_file(&path, &format!("default {weight}"))?;
        }
        Ok(())
    }

    fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let task = CgroupPid::from(u64::from(pid));
        self.handle
            .cgroup
            .add_task_by_tgid(task)
            .map_err(self.handle.err(format!("add pid {pid} to")))?;
        self.handle.add_to_extra(pid)
    }

    fn procs(&self) -> Vec<u32> {
        self.handle.procs()
    }

    /// Atomically via `cgroup.kill` where the kernel has it (5.14+), else process by process.
    fn kill_all(&self) -> Vec<u32> {
        let procs = self.procs();
        if procs.is_empty() || self.handle.cgroup.kill().is_ok() {
            return procs;
        }
        kill_each(&procs);
        procs
    }

    /// Through `cgroup.freeze` (5.2+).
    fn set_frozen(&self, frozen: bool) -> Result<bool, CgroupError> {
        let Some(dir) = self.paths().into_iter().next() else {
            return Ok(false);
        };
        let file = dir.join("cgroup.freeze");
        if !file.exists() {
            return Ok(false);
        }
        write_file(&file, if frozen { "1" } else { "0" })?;
        Ok(true)
    }

    fn delete(&self) -> Result<(), CgroupError> {
        self.handle.delete()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use cgroups_rs::cgroup::Cgroup;
    use cgroups_rs::Subsystem;

    use super::*;
    use crate::runtime::cgroups::{cpu_max_line, relative_path};

    /// A cgroup v2 hierarchy rooted in a temp dir, offering memory, cpu, pids and io.
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
                Subsystem::BlkIo(BlkIoController::new(self.root.clone(), true)),
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

    /// A created cgroup in a fake hierarchy under `root`, its directory, and a file reader.
    fn fake(root: &Path) -> (V2Cgroup, PathBuf, impl Fn(&str) -> String) {
        let path = relative_path("/paddock/", "abc");
        assert_eq!(path, "paddock/vps-abc");
        let cgroup = V2Cgroup::with_hierarchy(
            Box::new(FakeV2 {
                root: root.to_path_buf(),
            }),
            &path,
            None,
        );
        cgroup.create().expect("create");
        let cg_dir = root.join(&path);
        assert_eq!(cgroup.paths(), vec![cg_dir.clone()]);
        assert_eq!(cgroup.counter_files(), CounterFiles::v2(&cg_dir));
        let dir = cg_dir.clone();
        let read =
            move |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        (cgroup, cg_dir, read)
    }

    #[test]
    fn writes_v2_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cgroup, cg_dir, read) = fake(dir.path());
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
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), cpu_max_line(1.5));
        assert_eq!(read("cpu.max"), "150000 100000");
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
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "max 100000");
        assert_eq!(read("cpu.weight"), "300");
        assert_eq!(read("pids.max"), "max");
    }

    #[test]
    fn writes_v2_io_max_and_weight() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cgroup, cg_dir, read) = fake(dir.path());
        fs::write(cg_dir.join("io.weight"), "default 100\n").expect("seed io.weight");
        let limits = Limits {
            cpu_weight: 50,
            io_read_bps: 1 << 20,
            io_write_bps: 0,
            io_read_iops: 100,
            io_write_iops: 200,
            ..Limits::default()
        };
        cgroup.apply_io(&limits, (7, 3)).expect("apply io");
        assert_eq!(
            read("io.max"),
            "7:3 rbps=1048576 wbps=max riops=100 wiops=200"
        );
        assert_eq!(read("io.weight"), "default 50");
    }

    #[test]
    fn adds_processes_and_freezes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cgroup, cg_dir, read) = fake(dir.path());
        cgroup.add_process(4242).expect("add");
        assert_eq!(read("cgroup.procs"), "4242");
        // No cgroup.freeze (a kernel before 5.2): nothing to freeze with.
        assert!(!cgroup.set_frozen(true).expect("no freezer"));
        fs::write(cg_dir.join("cgroup.freeze"), "0\n").expect("seed cgroup.freeze");
        assert!(cgroup.set_frozen(true).expect("freeze"));
        assert_eq!(read("cgroup.freeze"), "1");
        assert!(cgroup.set_frozen(false).expect("thaw"));
        assert_eq!(read("cgroup.freeze"), "0");
    }
}
