//! The container runtime: turns a [`VpsSpec`] into a running system container (own init as
//! PID 1; user namespace with its own host id range; pid/mount/uts/ipc/net/cgroup namespaces;
//! overlayfs root over an idmapped template with the writable layer on the VPS's own ext4 disk
//! image; masked /proc, read-only /sys, minimal /dev, device cgroup, seccomp filter, reduced
//! capability bounding set; cgroup limits) and reports what exists.
//!
//! The API is blocking and idempotent; the gRPC layer calls it from `spawn_blocking`. State
//! lives on disk under `state_dir` (see [`state`]) and in the kernel, never only in memory, so a
//! restarted agent re-adopts running VPSes and finishes or rolls back interrupted operations.
//!
//! Privileged work (fork, unshare, setns, mounts) happens in re-executed helper processes
//! (`helper_binary __internal ...`, see [`run_internal`]), never in the multi-threaded agent.

pub mod cgroups;
pub mod checkpoint;
mod error;
mod inspect;
pub mod isolation;
mod lifecycle;
pub mod phases;
pub mod process;
mod spec;
mod state;
pub mod storage;
pub(crate) mod sys;
pub mod usage;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use self::cgroups::{CgroupError, ALLOWED_CHAR_DEVICES};
use self::cgroups::{CgroupMode, VpsCgroup};
pub use self::checkpoint::{CheckpointError, CheckpointOptions, CheckpointReport, DumpStats};
pub use self::error::RuntimeError;
pub use self::isolation::capabilities::{self, CapabilityError};
pub use self::isolation::device_filter;
use self::isolation::idmap::IdAllocator;
pub use self::isolation::idmap::{self, IdRange, IdmapError};
pub use self::isolation::namespaces::NamespaceError;
pub use self::isolation::procview;
use self::isolation::rootfs::RootfsLayout;
pub use self::isolation::rootfs::{RootfsError, MASKED_PATHS, READ_ONLY_PATHS};
pub use self::isolation::seccomp::{self, SeccompError};
use self::isolation::sysinfo;
pub use self::process::console;
pub use self::process::exec::{
    ResizeSender, TtySize, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SETUP_FAILED,
};
pub use self::process::helper::HelperError;
pub use self::process::identity::ProcessError;
pub use self::process::supervisor::SupervisorError;
pub use self::spec::{
    validate_vps_id, Limits, ObservedState, Power, VpsObserved, VpsSpec, MAX_VCPUS,
    MIN_MEMORY_BYTES,
};
pub use self::state::{ClosedRun, StateError};
use self::state::{Layout, VpsState};
pub use self::storage::disk::{self, DiskError};
pub use self::storage::disk_growth::DiskGrowthError;
pub use self::storage::snapshot::{CopyMethod, Restored, SnapshotError, SnapshotInfo};

/// First argument that makes `paddock-agent` run a runtime helper instead of the agent.
pub const INTERNAL_ARG: &str = "__internal";

/// Entry point of the re-executed helpers: `paddock-agent __internal <helper> <json>`.
///
/// `main` must call this before starting any threads (the helpers fork and setns) with the
/// arguments after `__internal`, and exit with the returned code.
pub fn run_internal(args: Vec<OsString>) -> i32 {
    process::helper::run(args)
}

/// Node-level settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Root of all runtime state: `templates/`, `vps/<id>/`, `trash/`. Must be absolute and must
    /// not contain `,` or `:` (overlayfs option syntax).
    pub state_dir: PathBuf,
    /// cgroup under which every VPS gets `vps-<id>` (relative to each hierarchy root).
    pub cgroup_parent: String,
    /// How long a stop waits for the init to power off before SIGKILL.
    pub stop_grace: Duration,
    /// Deadline of the start helper and of each helper or disk tool on the start path; one
    /// that misses it is killed and the start fails naming the step.
    pub start_timeout: Duration,
    /// The `paddock-agent` executable, re-executed with [`INTERNAL_ARG`] for helpers.
    pub helper_binary: PathBuf,
    /// First host id handed to VPS user namespaces (each VPS gets the next free
    /// [`idmap::ID_RANGE_SIZE`] ids; ranges in /etc/subuid and /etc/subgid are skipped).
    pub id_base: u32,
    /// Which /proc the VPSes see: their own values from lxcfs, or the host's.
    pub proc_view: procview::ProcView,
}

/// The node's container runtime. Cheap to clone; all clones share per-VPS locks.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    config: RuntimeConfig,
    layout: Layout,
    ids: IdAllocator,
    /// One lock per VPS id, so concurrent calls for the same VPS serialise while different
    /// VPSes proceed in parallel.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// [`Runtime::cgroup_paths`] and [`Runtime::counter_files`] by VPS id: they follow from
    /// the id and the host's cgroup mounts, and finding them reads /proc/self/mountinfo twice,
    /// which metering would otherwise do for every VPS at every round.
    cgroup_paths: Mutex<HashMap<String, CgroupFiles>>,
    /// Where each VPS's last start spent its time ([`Runtime::last_start_phases`]).
    start_phases: Mutex<HashMap<String, phases::StartPhases>>,
    /// The host's cgroup version, detected once at start: picks the cgroup manager.
    cgroup_mode: CgroupMode,
    /// Formatted empty disks, one per size, copied for each new VPS disk.
    blank_images: storage::blank_image::BlankImages,
}

/// Where one VPS's cgroup is: its directories and its counter files.
#[derive(Clone)]
struct CgroupFiles {
    paths: Vec<PathBuf>,
    counters: usage::CounterFiles,
}

impl Runtime {
    /// Validates the config, creates the state directories, and recovers from a previous run:
    /// rolls back interrupted creates, finishes interrupted deletes and adopts VPSes whose init
    /// is still running (without touching them).
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        spec::validate_config(&config)?;
        let layout = Layout {
            state_dir: config.state_dir.clone(),
        };
        layout.create_dirs().map_err(RuntimeError::Setup)?;
        layout.restrict_existing().map_err(RuntimeError::Setup)?;
        // A missing or broken lxcfs is a startup error, not a silent fall back to host values.
        if let procview::ProcView::Lxcfs(lxcfs) = &config.proc_view {
            procview::ensure_running(lxcfs)?;
        }
        let blank_images = storage::blank_image::BlankImages::new(
            config.state_dir.join(storage::blank_image::DIR_NAME),
        );
        let runtime = Self {
            inner: Arc::new(Inner {
                ids: IdAllocator::new(&config.state_dir, config.id_base),
                config,
                layout,
                locks: Mutex::new(HashMap::new()),
                cgroup_paths: Mutex::new(HashMap::new()),
                start_phases: Mutex::new(HashMap::new()),
                cgroup_mode: CgroupMode::host(),
                blank_images,
            }),
        };
        runtime.recover()?;
        Ok(runtime)
    }

    /// The VPS's sysinfo server socket, when VPSes get their own /proc view.
    fn sysinfo_socket(&self, vps_id: &str) -> Option<PathBuf> {
        match self.config().proc_view {
            procview::ProcView::Host => None,
            procview::ProcView::Lxcfs(_) => {
                Some(self.layout().vps_dir(vps_id).join(sysinfo::SOCKET_NAME))
            }
        }
    }

    fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    fn vps_lock(&self, vps_id: &str) -> Arc<Mutex<()>> {
        let mut locks = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        locks.entry(vps_id.to_string()).or_default().clone()
    }

    /// Drops `vps_id`'s entry from the lock map (its VPS was deleted), unless another call
    /// holds or waits for `lock`. Exact: a lock is only cloned under the map's lock, so with it
    /// held the map's and the caller's are the only references when nobody else has one.
    fn forget_vps_lock(&self, vps_id: &str, lock: &Arc<Mutex<()>>) {
        let mut locks = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ours = locks
            .get(vps_id)
            .is_some_and(|entry| Arc::ptr_eq(entry, lock));
        if ours && Arc::strong_count(lock) == 2 {
            locks.remove(vps_id);
        }
    }

    fn cgroup(&self, vps_id: &str) -> VpsCgroup {
        VpsCgroup::open_in(self.inner.cgroup_mode, &self.config().cgroup_parent, vps_id)
    }

    fn load(&self, vps_id: &str) -> Result<Option<VpsState>, RuntimeError> {
        self.layout()
            .read_state(vps_id)
            .map_err(|source| RuntimeError::State {
                vps_id: vps_id.to_string(),
                source,
            })
    }

    fn save(&self, st: &VpsState) -> Result<(), RuntimeError> {
        self.layout()
            .write_state(st)
            .map_err(|source| RuntimeError::State {
                vps_id: st.vps_id.clone(),
                source,
            })
    }

    fn rootfs_layout(&self, vps_id: &str, template: &str) -> RootfsLayout {
        RootfsLayout::new(
            &self.layout().vps_dir(vps_id),
            &self.layout().template_rootfs(template),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_can_be_shared_across_threads() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Runtime>();
    }

    fn lock_entries(runtime: &Runtime) -> Vec<String> {
        let locks = runtime.inner.locks.lock().expect("locks");
        let mut ids: Vec<String> = locks.keys().cloned().collect();
        ids.sort();
        ids
    }

    #[test]
    fn delete_forgets_the_vps_lock_unless_another_call_has_it() {
        let state_dir = tempfile::tempdir().expect("tempdir");
        let runtime = Runtime::new(RuntimeConfig {
            state_dir: state_dir.path().to_path_buf(),
            cgroup_parent: format!("paddock-lock-test-{}", std::process::id()),
            stop_grace: Duration::from_secs(1),
            start_timeout: Duration::from_secs(1),
            helper_binary: std::env::current_exe().expect("test binary"),
            id_base: idmap::DEFAULT_ID_BASE,
            proc_view: procview::ProcView::Host,
        })
        .expect("runtime");
        // Deleting an absent VPS takes and forgets its lock.
        runtime.delete("gone").expect("delete absent");
        assert!(lock_entries(&runtime).is_empty());

        // A call that already took the lock (e.g. an apply waiting for it) keeps the entry, so
        // it and any later call for the id still share one lock.
        let waiting = runtime.vps_lock("busy");
        runtime.delete("busy").expect("delete");
        assert_eq!(lock_entries(&runtime), ["busy"]);
        assert!(Arc::ptr_eq(&waiting, &runtime.vps_lock("busy")));
        drop(waiting);
        runtime.delete("busy").expect("delete again");
        assert!(lock_entries(&runtime).is_empty());
    }
}
