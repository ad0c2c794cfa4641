//! The cgroup v1 manager: one directory per mounted hierarchy (every controller cgroups-rs
//! knows, plus the hierarchies it has no type for and the hybrid cgroup2 mount, see
//! [`super::unmanaged_hierarchies`]).

use cgroups_rs::blkio::BlkIoController;
use cgroups_rs::cpu::CpuController;
use cgroups_rs::devices::{DevicePermissions, DeviceType, DevicesController};
use cgroups_rs::freezer::FreezerController;
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::{CgroupPid, Controller, Hierarchy, Subsystem};

use super::{
    effective_cpu_weight, kill_each, memory_limit, memsw_limit_v1, pids_max_value,
    unmanaged_v1_host_hierarchies, weight_to_blkio_weight, weight_to_shares, write_file,
    CgroupError, CgroupManager, Handle, ALLOWED_CHAR_DEVICES, CPU_PERIOD_US,
};
use crate::runtime::usage::CounterFiles;
use crate::runtime::Limits;

/// A VPS's cgroup on a v1 (legacy or hybrid) host.
pub(crate) struct V1Cgroup {
    handle: Handle,
}

impl V1Cgroup {
    /// `path` in every v1 hierarchy of the host; not created yet.
    pub fn open(path: &str) -> Self {
        let mut cgroup = Self::with_hierarchy(Box::new(cgroups_rs::hierarchies::V1::new()), path);
        let managed = cgroup.handle.paths();
        cgroup.handle.extra = unmanaged_v1_host_hierarchies(&managed)
            .into_iter()
            .map(|root| root.join(path))
            .collect();
        cgroup
    }

    /// `path` in the controllers of `hierarchy` only.
    fn with_hierarchy(hierarchy: Box<dyn Hierarchy>, path: &str) -> Self {
        Self {
            handle: Handle::load(hierarchy, path, None),
        }
    }

    fn apply_memory(&self, limits: &Limits) -> Result<(), CgroupError> {
        let handle = &self.handle;
        let memory: &MemController = handle.controller("memory")?;
        let memory_limit = memory_limit(limits.memory_bytes);
        // memory.limit_in_bytes must never exceed memory.memsw.limit_in_bytes, so raise the
        // combined limit first when growing and lower the memory limit first when shrinking.
        if !memory.path().join("memory.memsw.limit_in_bytes").exists() {
            return memory
                .set_limit(memory_limit)
                .map_err(handle.err("set memory.limit_in_bytes"));
        }
        let memsw = memsw_limit_v1(limits.memory_bytes, limits.swap_bytes);
        let current_memsw = memory.memswap().limit_in_bytes;
        let grows_past_memsw = memory_limit < 0 || memory_limit > current_memsw;
        if grows_past_memsw {
            memory
                .set_memswap_limit(memsw)
                .map_err(handle.err("set memory.memsw.limit_in_bytes"))?;
            memory
                .set_limit(memory_limit)
                .map_err(handle.err("set memory.limit_in_bytes"))
        } else {
            memory
                .set_limit(memory_limit)
                .map_err(handle.err("set memory.limit_in_bytes"))?;
            memory
                .set_memswap_limit(memsw)
                .map_err(handle.err("set memory.memsw.limit_in_bytes"))
        }
    }

    fn apply_cpu(&self, limits: &Limits) -> Result<(), CgroupError> {
        let handle = &self.handle;
        let cpu: &CpuController = handle.controller("cpu")?;
        let quota = super::cfs_quota_us(limits.vcpus).unwrap_or(-1);
        cpu.set_cfs_quota_and_period(Some(quota), Some(CPU_PERIOD_US))
            .map_err(handle.err("set cpu quota"))?;
        let weight = effective_cpu_weight(limits.cpu_weight);
        cpu.set_shares(weight_to_shares(weight))
            .map_err(handle.err("set cpu.shares"))
    }

    fn apply_pids(&self, limits: &Limits) -> Result<(), CgroupError> {
        let pids: &PidController = self.handle.controller("pids")?;
        pids.set_pid_max(pids_max_value(limits.pids_max))
            .map_err(self.handle.err("set pids.max"))
    }
}

impl CgroupManager for V1Cgroup {
    fn path(&self) -> &str {
        &self.handle.path
    }

    fn paths(&self) -> Vec<std::path::PathBuf> {
        self.handle.paths()
    }

    fn counter_files(&self) -> CounterFiles {
        let (mut cpuacct, mut memory, mut blkio) = (None, None, None);
        for subsystem in self.handle.cgroup.subsystems() {
            match subsystem {
                Subsystem::CpuAcct(c) => cpuacct = Some(c.path().to_path_buf()),
                Subsystem::Mem(c) => memory = Some(c.path().to_path_buf()),
                Subsystem::BlkIo(c) => blkio = Some(c.path().to_path_buf()),
                _ => {}
            }
        }
        CounterFiles::v1(cpuacct.as_deref(), memory.as_deref(), blkio.as_deref())
    }

    fn create(&self) -> Result<(), CgroupError> {
        self.handle.create()
    }

    fn apply_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        self.apply_memory(limits)?;
        self.apply_cpu(limits)?;
        self.apply_pids(limits)
    }

    /// Through the `devices` controller; the deny-all briefly covers everything.
    fn apply_device_policy(&self) -> Result<(), CgroupError> {
        let handle = &self.handle;
        let devices: &DevicesController = handle.controller("devices")?;
        devices
            .deny_device(DeviceType::All, -1, -1, &DevicePermissions::all())
            .map_err(handle.err("deny all devices in"))?;
        for (major, minor, name) in ALLOWED_CHAR_DEVICES {
            devices
                .allow_device(
                    DeviceType::Char,
                    *major,
                    *minor,
                    &[DevicePermissions::Read, DevicePermissions::Write],
                )
                .map_err(handle.err(format!("allow device {name} in")))?;
        }
        Ok(())
    }

    /// `blkio.throttle.*_device` (0 = unlimited) and `blkio.weight`.
    fn apply_io(&self, limits: &Limits, device: (u64, u64)) -> Result<(), CgroupError> {
        let handle = &self.handle;
        let blkio: &BlkIoController = handle.controller("blkio")?;
        let (major, minor) = device;
        blkio
            .throttle_read_bps_for_device(major, minor, limits.io_read_bps)
            .map_err(handle.err("set read bps"))?;
        blkio
            .throttle_write_bps_for_device(major, minor, limits.io_write_bps)
            .map_err(handle.err("set write bps"))?;
        blkio
            .throttle_read_iops_for_device(major, minor, limits.io_read_iops)
            .map_err(handle.err("set read iops"))?;
        blkio
            .throttle_write_iops_for_device(major, minor, limits.io_write_iops)
            .map_err(handle.err("set write iops"))?;
        let weight = effective_cpu_weight(limits.cpu_weight);
        let path = blkio.path().join("blkio.weight");
        if path.exists() {
            write_file(&path, &weight_to_blkio_weight(weight).to_string())?;
        }
        Ok(())
    }

    /// Hierarchies where the cgroup does not exist are skipped: a VPS started by an agent that
    /// did not create it there yet (`create` checks that a new VPS has them all).
    fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let task = CgroupPid::from(u64::from(pid));
        for subsystem in self.handle.cgroup.subsystems() {
            let controller = subsystem.to_controller();
            if controller.path().is_dir() {
                controller
                    .add_task_by_tgid(&task)
                    .map_err(self.handle.err(format!("add pid {pid} to")))?;
            }
        }
        self.handle.add_to_extra(pid)
    }

    fn procs(&self) -> Vec<u32> {
        self.handle.procs()
    }

    /// v1 has no `cgroup.kill`: process by process.
    fn kill_all(&self) -> Vec<u32> {
        let procs = self.procs();
        kill_each(&procs);
        procs
    }

    /// Through the `freezer` hierarchy (`freezer.state`).
    fn set_frozen(&self, frozen: bool) -> Result<bool, CgroupError> {
        let Ok(freezer) = self.handle.controller::<FreezerController>("freezer") else {
            return Ok(false);
        };
        if frozen {
            freezer.freeze().map_err(self.handle.err("freeze"))?;
        } else {
            freezer.thaw().map_err(self.handle.err("thaw"))?;
        }
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

    use super::*;
    use crate::runtime::cgroups::relative_path;

    /// A v1 host in a temp dir: one hierarchy per controller under `<root>/<controller>`.
    #[derive(Debug, Clone)]
    struct FakeV1 {
        root: PathBuf,
    }

    impl Hierarchy for FakeV1 {
        fn subsystems(&self) -> Vec<Subsystem> {
            let at = |name: &str| self.root.join(name);
            vec![
                Subsystem::BlkIo(BlkIoController::new(at("blkio"), false)),
                Subsystem::Mem(MemController::new(at("memory"), false)),
                Subsystem::Pid(PidController::new(at("pids"), false)),
                Subsystem::Cpu(CpuController::new(at("cpu"), false)),
                Subsystem::Devices(DevicesController::new(at("devices"))),
                Subsystem::Freezer(FreezerController::new(at("freezer"), false)),
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
            false
        }
    }

    fn fake(root: &Path) -> (V1Cgroup, impl Fn(&str, &str) -> String) {
        let path = relative_path("paddock", "abc");
        let cgroup = V1Cgroup::with_hierarchy(
            Box::new(FakeV1 {
                root: root.to_path_buf(),
            }),
            &path,
        );
        cgroup.create().expect("create");
        let root = root.to_path_buf();
        let read = move |controller: &str, file: &str| {
            let file = root.join(controller).join(&path).join(file);
            fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        };
        (cgroup, read)
    }

    #[test]
    fn creates_one_dir_per_hierarchy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cgroup, _) = fake(dir.path());
        let expected: Vec<PathBuf> = ["blkio", "cpu", "devices", "freezer", "memory", "pids"]
            .iter()
            .map(|c| dir.path().join(c).join("paddock/vps-abc"))
            .collect();
        assert_eq!(cgroup.paths(), expected);
        assert!(expected.iter().all(|p| p.is_dir()));
    }

    #[test]
    fn counters_are_read_from_their_own_hierarchy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cgroup, _) = fake(dir.path());
        let at = |c: &str, file: &str| dir.path().join(c).join("paddock/vps-abc").join(file);
        assert_eq!(
            cgroup.counter_files(),
            CounterFiles {
                // The fake host has no cpuacct hierarchy.
                cpu: None,
                memory: Some(at("memory", "memory.usage_in_bytes")),
                io: Some(at("blkio", "blkio.throttle.io_service_bytes")),
            }
        );
    }

    #[test]
    fn writes_v1_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cgroup, read) = fake(dir.path());
        // Without memsw accounting only the memory limit is written.
        let limits = Limits {
            vcpus: 1.5,
            cpu_weight: 0,
            memory_bytes: 256 << 20,
            swap_bytes: 64 << 20,
            pids_max: 512,
            ..Limits::default()
        };
        cgroup.apply_limits(&limits).expect("apply");
        assert_eq!(read("memory", "memory.limit_in_bytes"), "268435456");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "150000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu", "cpu.shares"), "1024");
        assert_eq!(read("pids", "pids.max"), "512");

        let unlimited = Limits {
            vcpus: 0.0,
            cpu_weight: 300,
            ..Limits::default()
        };
        cgroup.apply_limits(&unlimited).expect("apply unlimited");
        assert_eq!(read("memory", "memory.limit_in_bytes"), "-1");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "-1");
        assert_eq!(read("cpu", "cpu.shares"), "3072");
        assert_eq!(read("pids", "pids.max"), "max");
    }

    #[test]
    fn writes_memory_and_swap_where_memsw_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cgroup, read) = fake(dir.path());
        let memsw = dir
            .path()
            .join("memory/paddock/vps-abc/memory.memsw.limit_in_bytes");
        // What the kernel shows for an unlimited cgroup.
        fs::write(&memsw, "9223372036854771712\n").expect("seed memsw");
        let limits = Limits {
            memory_bytes: 256 << 20,
            swap_bytes: 64 << 20,
            ..Limits::default()
        };
        cgroup.apply_limits(&limits).expect("apply");
        assert_eq!(read("memory", "memory.limit_in_bytes"), "268435456");
        assert_eq!(
            read("memory", "memory.memsw.limit_in_bytes"),
            (320u64 << 20).to_string()
        );
        let unlimited = Limits::default();
        cgroup.apply_limits(&unlimited).expect("apply unlimited");
        assert_eq!(read("memory", "memory.limit_in_bytes"), "-1");
        assert_eq!(read("memory", "memory.memsw.limit_in_bytes"), "-1");
    }

    #[test]
    fn writes_v1_io_throttles_and_weight() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cgroup, read) = fake(dir.path());
        let blkio = dir.path().join("blkio/paddock/vps-abc");
        fs::write(blkio.join("blkio.weight"), "500\n").expect("seed weight");
        let limits = Limits {
            cpu_weight: 50,
            io_read_bps: 1 << 20,
            io_write_bps: 2 << 20,
            io_read_iops: 100,
            io_write_iops: 0,
            ..Limits::default()
        };
        cgroup.apply_io(&limits, (7, 3)).expect("apply io");
        assert_eq!(
            read("blkio", "blkio.throttle.read_bps_device"),
            "7:3 1048576"
        );
        assert_eq!(
            read("blkio", "blkio.throttle.write_bps_device"),
            "7:3 2097152"
        );
        assert_eq!(read("blkio", "blkio.throttle.read_iops_device"), "7:3 100");
        // 0 is v1's "no limit".
        assert_eq!(read("blkio", "blkio.throttle.write_iops_device"), "7:3 0");
        assert_eq!(read("blkio", "blkio.weight"), "250");
    }

    #[test]
    fn writes_v1_device_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cgroup, read) = fake(dir.path());
        cgroup.apply_device_policy().expect("devices");
        assert_eq!(read("devices", "devices.deny"), "a *:* rwm");
        // Each allow is its own write; a plain file keeps the last.
        assert_eq!(read("devices", "devices.allow"), "c 136:* rw");
    }

    #[test]
    fn adds_processes_and_freezes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cgroup, read) = fake(dir.path());
        cgroup.add_process(4242).expect("add");
        for controller in ["blkio", "cpu", "devices", "freezer", "memory", "pids"] {
            assert_eq!(read(controller, "cgroup.procs"), "4242", "{controller}");
        }
        assert!(cgroup.set_frozen(true).expect("freeze"));
        assert_eq!(read("freezer", "freezer.state"), "FROZEN");
        assert!(cgroup.set_frozen(false).expect("thaw"));
        assert_eq!(read("freezer", "freezer.state"), "THAWED");
    }

    #[test]
    fn reports_a_missing_controller() {
        #[derive(Debug, Clone)]
        struct OnlyMemory(PathBuf);
        impl Hierarchy for OnlyMemory {
            fn subsystems(&self) -> Vec<Subsystem> {
                vec![Subsystem::Mem(MemController::new(self.0.clone(), false))]
            }
            fn root(&self) -> PathBuf {
                self.0.clone()
            }
            fn root_control_group(&self) -> Cgroup {
                Cgroup::load(Box::new(self.clone()), "")
            }
            fn parent_control_group(&self, path: &str) -> Cgroup {
                let parent = Path::new(path).parent().unwrap_or(Path::new(""));
                Cgroup::load(Box::new(self.clone()), parent)
            }
            fn v2(&self) -> bool {
                false
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let cgroup = V1Cgroup::with_hierarchy(
            Box::new(OnlyMemory(dir.path().to_path_buf())),
            "paddock/vps-abc",
        );
        cgroup.create().expect("create");
        match cgroup.apply_limits(&Limits::default()) {
            Err(CgroupError::ControllerMissing { controller, .. }) => assert_eq!(controller, "cpu"),
            other => panic!("expected a missing cpu controller, got {other:?}"),
        }
        assert!(!cgroup.set_frozen(true).expect("no freezer"));
    }
}
