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

pub mod capabilities;
mod cgroups;
pub mod console;
pub mod device_filter;
pub mod disk;
mod disk_growth;
mod exec;
mod helper;
pub mod idmap;
mod mountinfo;
mod namespaces;
mod process;
pub mod procview;
mod rootfs;
pub mod seccomp;
mod state;
mod supervisor;
mod sysinfo;
pub mod usage;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use self::capabilities::CapabilityError;
use self::cgroups::VpsCgroup;
pub use self::cgroups::{CgroupError, ALLOWED_CHAR_DEVICES};
pub use self::disk::DiskError;
pub use self::disk_growth::DiskGrowthError;
use self::exec::ExecRequest;
pub use self::exec::{
    ResizeSender, TtySize, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SETUP_FAILED,
};
pub use self::helper::HelperError;
use self::helper::StartRequest;
use self::idmap::IdAllocator;
pub use self::idmap::{IdRange, IdmapError};
pub use self::namespaces::NamespaceError;
pub use self::process::ProcessError;
use self::process::ProcessIdentity;
pub use self::rootfs::RootfsError;
use self::rootfs::RootfsLayout;
pub use self::rootfs::{MASKED_PATHS, READ_ONLY_PATHS};
pub use self::seccomp::SeccompError;
pub use self::state::{ClosedRun, StateError};
use self::state::{Layout, Phase, VpsState, STATE_VERSION};
pub use self::supervisor::SupervisorError;
use crate::network;
use crate::template::metadata::{self, HaltSignal, HaltSignalSource, MetadataError};

/// First argument that makes `paddock-agent` run a runtime helper instead of the agent.
pub const INTERNAL_ARG: &str = "__internal";

/// Largest vcpus value accepted in [`Limits`].
pub const MAX_VCPUS: f64 = 1024.0;
/// Smallest non-zero memory limit accepted in [`Limits`].
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;

/// Entry point of the re-executed helpers: `paddock-agent __internal <helper> <json>`.
///
/// `main` must call this before starting any threads (the helpers fork and setns) with the
/// arguments after `__internal`, and exit with the returned code.
pub fn run_internal(args: Vec<OsString>) -> i32 {
    helper::run(args)
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

/// Desired power state of a VPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    /// The init should be running.
    Running,
    /// No process of the VPS should exist.
    Stopped,
}

/// Resource limits of a VPS, enforced through its cgroup and its disk image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// CPUs worth of CFS quota (fractional allowed); 0 = unlimited.
    pub vcpus: f64,
    /// cgroup v2 style weight 1..=10000 (v1 shares are derived); 0 = default (100).
    pub cpu_weight: u32,
    /// Memory hard limit; 0 = unlimited.
    pub memory_bytes: u64,
    /// Swap allowed on top of memory (v1: only where memsw accounting exists).
    pub swap_bytes: u64,
    /// Maximum number of tasks; 0 = unlimited.
    pub pids_max: u64,
    /// Size of the VPS's disk image; 0 = [`disk::DEFAULT_DISK_BYTES`]. A larger value grows
    /// the disk in place (online while the VPS runs); a disk never shrinks, so a smaller value
    /// keeps the current size.
    #[serde(default)]
    pub disk_bytes: u64,
    /// Read bytes/s on the VPS's disk; 0 = unlimited.
    #[serde(default)]
    pub io_read_bps: u64,
    /// Write bytes/s on the VPS's disk; 0 = unlimited.
    #[serde(default)]
    pub io_write_bps: u64,
    /// Read operations/s on the VPS's disk; 0 = unlimited.
    #[serde(default)]
    pub io_read_iops: u64,
    /// Write operations/s on the VPS's disk; 0 = unlimited.
    #[serde(default)]
    pub io_write_iops: u64,
}

/// What should exist for one VPS.
#[derive(Debug, Clone, PartialEq)]
pub struct VpsSpec {
    /// Stable id; 1-64 of `[A-Za-z0-9_-]`, starting alphanumeric. Names paths and the cgroup.
    pub vps_id: String,
    /// Hostname inside the VPS (applied at the next start).
    pub hostname: String,
    /// Template name under `state_dir/templates/`; fixed at creation.
    pub template: String,
    /// Resource limits, updated in place on a running VPS.
    pub limits: Limits,
    /// Whether the init should run.
    pub power: Power,
    /// Bumped to rebuild: a higher value than last carried out gives the VPS a fresh writable
    /// layer (a new filesystem on the same disk) from `template`, once.
    pub rebuild_generation: u64,
}

/// Observed state of a VPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedState {
    /// The recorded init is alive.
    Running,
    /// No init is running.
    Stopped,
    /// The runtime cannot tell (e.g. unreadable state); see the message.
    Error,
}

/// What exists for one VPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpsObserved {
    /// The VPS id.
    pub vps_id: String,
    /// Its hostname, which is its name in the controller; empty if its state is unreadable.
    pub hostname: String,
    /// Running, stopped or error.
    pub state: ObservedState,
    /// Host pid of the VPS's init while running.
    pub init_pid: Option<u32>,
    /// Human-readable detail.
    pub message: String,
}

/// Errors of the runtime API.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A spec field or argument breaks a rule.
    #[error("invalid {field}: {rule}")]
    InvalidArgument {
        /// The field (`vps_id`, `hostname`, `limits.vcpus`, `command`, ...).
        field: &'static str,
        /// The rule it breaks.
        rule: String,
    },
    /// A [`RuntimeConfig`] field is unusable.
    #[error("invalid runtime config {field}: {rule}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Why.
        rule: String,
    },
    /// The VPSes' /proc view (lxcfs) is not available.
    #[error("VPS /proc view: {0}")]
    ProcView(#[from] procview::ProcViewError),
    /// No such VPS on this node.
    #[error("vps {0} not found")]
    NotFound(String),
    /// The VPS exists but is not running (exec).
    #[error("vps {0} is not running")]
    NotRunning(String),
    /// The requested template has not been built on this node.
    #[error("template {0} is not installed on this node")]
    TemplateMissing(String),
    /// The VPS's template has unreadable or invalid metadata (`template.conf`).
    #[error("vps {vps_id}: template {template}: {source}")]
    TemplateMetadata {
        /// The VPS.
        vps_id: String,
        /// Its template.
        template: String,
        /// What is wrong with the metadata.
        source: MetadataError,
    },
    /// apply asked for a different template than the VPS was created from (use rebuild).
    #[error("vps {vps_id} was created from template {current}, not {requested}")]
    TemplateMismatch {
        /// The VPS.
        vps_id: String,
        /// Its template.
        current: String,
        /// The requested one.
        requested: String,
    },
    /// Runtime-wide state (directories under `state_dir`) failed.
    #[error("runtime state: {0}")]
    Setup(#[source] StateError),
    /// The VPS's state files failed.
    #[error("vps {vps_id}: {source}")]
    State {
        /// The VPS.
        vps_id: String,
        /// What failed.
        source: StateError,
    },
    /// The VPS's cgroup failed.
    #[error("vps {vps_id}: {source}")]
    Cgroup {
        /// The VPS.
        vps_id: String,
        /// What failed.
        source: CgroupError,
    },
    /// The VPS's root filesystem failed.
    #[error("vps {vps_id}: {source}")]
    Rootfs {
        /// The VPS.
        vps_id: String,
        /// What failed.
        source: RootfsError,
    },
    /// Inspecting the VPS's init failed.
    #[error("vps {vps_id}: {source}")]
    Process {
        /// The VPS.
        vps_id: String,
        /// What failed.
        source: ProcessError,
    },
    /// Starting or stopping the VPS failed.
    #[error("vps {vps_id}: {source}")]
    Supervisor {
        /// The VPS.
        vps_id: String,
        /// What failed.
        source: SupervisorError,
    },
    /// The exec helper could not be spawned.
    #[error("vps {vps_id}: spawn exec helper {path}: {source}")]
    ExecSpawn {
        /// The VPS.
        vps_id: String,
        /// The helper binary.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Allocating the VPS's id range failed.
    #[error("vps {vps_id}: {source}")]
    Idmap {
        /// The VPS.
        vps_id: String,
        /// What failed.
        source: IdmapError,
    },
    /// The VPS's disk image failed.
    #[error("vps {vps_id}: {source}")]
    Disk {
        /// The VPS.
        vps_id: String,
        /// What failed.
        source: DiskError,
    },
    /// Growing the VPS's disk failed at the step `source` names. The image is never shrunk;
    /// the growth is redone by the next apply and when the agent starts.
    #[error("vps {vps_id}: grow disk {image} to {target_bytes} bytes: {source}")]
    DiskGrowth {
        /// The VPS.
        vps_id: String,
        /// Its disk image.
        image: PathBuf,
        /// The size asked for.
        target_bytes: u64,
        /// The step that failed and why (boxed: it is large and rare).
        source: Box<DiskGrowthError>,
    },
    /// A multi-step operation failed and rolling it back failed too.
    #[error("{error}; rollback also failed: {cleanup}")]
    RollbackFailed {
        /// The original error.
        error: Box<RuntimeError>,
        /// The cleanup error.
        cleanup: Box<RuntimeError>,
    },
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
    /// [`Runtime::cgroup_paths`] by VPS id: they follow from the id and the host's cgroup
    /// mounts, and finding them reads /proc/self/mountinfo twice, which metering would
    /// otherwise do for every VPS at every round.
    cgroup_paths: Mutex<HashMap<String, Vec<PathBuf>>>,
}

impl Runtime {
    /// Validates the config, creates the state directories, and recovers from a previous run:
    /// rolls back interrupted creates, finishes interrupted deletes and adopts VPSes whose init
    /// is still running (without touching them).
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        validate_config(&config)?;
        let layout = Layout {
            state_dir: config.state_dir.clone(),
        };
        layout.create_dirs().map_err(RuntimeError::Setup)?;
        layout.restrict_existing().map_err(RuntimeError::Setup)?;
        // A missing or broken lxcfs is a startup error, not a silent fall back to host values.
        if let procview::ProcView::Lxcfs(lxcfs) = &config.proc_view {
            procview::ensure_running(lxcfs)?;
        }
        let runtime = Self {
            inner: Arc::new(Inner {
                ids: IdAllocator::new(&config.state_dir, config.id_base),
                config,
                layout,
                locks: Mutex::new(HashMap::new()),
                cgroup_paths: Mutex::new(HashMap::new()),
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

    fn cgroup(&self, vps_id: &str) -> VpsCgroup {
        VpsCgroup::open(&self.config().cgroup_parent, vps_id)
    }

    fn recover(&self) -> Result<(), RuntimeError> {
        let trash = self.layout().trash_root();
        for entry in fs::read_dir(&trash)
            .map_err(state::io_err("read dir", &trash))
            .map_err(RuntimeError::Setup)?
            .flatten()
        {
            if let Err(e) = state::remove_tree(&entry.path()) {
                tracing::error!(error = %e, "purging trash");
            }
        }
        let ids = self.layout().vps_ids().map_err(RuntimeError::Setup)?;
        for vps_id in ids {
            if let Err(e) = self.recover_vps(&vps_id) {
                tracing::error!(vps_id, error = %e, "recovering VPS state");
            }
        }
        // Ranges allocated by a create that crashed before its directory existed.
        let layout = self.layout().clone();
        if let Err(e) = self
            .inner
            .ids
            .retain(|vps_id| layout.vps_dir(vps_id).is_dir())
        {
            tracing::error!(error = %e, "pruning id allocations");
        }
        Ok(())
    }

    fn recover_vps(&self, vps_id: &str) -> Result<(), RuntimeError> {
        let lock = self.vps_lock(vps_id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        match self.load(vps_id)? {
            // Crashed between creating the directory and writing the intent marker.
            None => self.remove_vps(vps_id),
            Some(st) if st.phase == Phase::Creating => {
                tracing::info!(vps_id, "rolling back interrupted create");
                self.remove_vps(vps_id)
            }
            Some(st) if st.phase == Phase::Deleting => {
                tracing::info!(vps_id, "finishing interrupted delete");
                self.remove_vps(vps_id)
            }
            Some(mut st) => {
                if st.phase == Phase::Ready && st.disk_grow_to.is_some() {
                    tracing::info!(vps_id, "finishing interrupted disk growth");
                    let running = matches!(self.live_init(&st), Ok(Some(_)));
                    if let Err(error) = self.grow_disk(&mut st, running) {
                        tracing::error!(vps_id, %error, "finishing interrupted disk growth");
                    }
                }
                let observed = self.observe(&st);
                tracing::info!(vps_id, state = ?observed.state, init_pid = ?observed.init_pid, "adopted VPS");
                Ok(())
            }
        }
    }

    /// Makes the VPS match `spec`: creates its rootfs and cgroup if missing, writes the limits
    /// (in place, also on a running VPS), and starts or stops it to match `spec.power`.
    ///
    /// Blocks while starting (until the init has exec'd) and while stopping (up to
    /// `stop_grace` plus the kill timeout). A stop sends the init its template's halt signal
    /// (see [`crate::template::metadata`]) as resolved when the init was started.
    pub fn apply(&self, spec: &VpsSpec) -> Result<VpsObserved, RuntimeError> {
        validate_spec(spec)?;
        let vps_id = spec.vps_id.as_str();
        let lock = self.vps_lock(vps_id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);

        let mut st = match self.load(vps_id)? {
            Some(st) if matches!(st.phase, Phase::Ready | Phase::Rebuilding) => st,
            Some(_) => {
                // A create or delete was interrupted: clean up, then build afresh.
                self.remove_vps(vps_id)?;
                self.create(spec)?
            }
            None => self.create(spec)?,
        };
        if st.phase == Phase::Rebuilding || spec.rebuild_generation > st.rebuild_generation {
            self.rebuild(&mut st, spec)?;
        } else if st.template != spec.template {
            return Err(RuntimeError::TemplateMismatch {
                vps_id: vps_id.to_string(),
                current: st.template,
                requested: spec.template.clone(),
            });
        }

        let cgroup = self.cgroup(vps_id);
        // Recreated after a node reboot, where the state survives but cgroups do not.
        cgroup.create().map_err(|source| RuntimeError::Cgroup {
            vps_id: vps_id.to_string(),
            source,
        })?;
        cgroup
            .apply_limits(&spec.limits)
            .map_err(|source| RuntimeError::Cgroup {
                vps_id: vps_id.to_string(),
                source,
            })?;

        let running = self.live_init(&st)?;
        let image = self.rootfs_layout(vps_id, &st.template).disk_image;
        if let Ok(Some(size)) = disk::image_size(&image) {
            let requested = spec.limits.disk_bytes;
            // Logged once per change, not at every reconcile.
            if requested != 0 && requested < size && requested != st.limits.disk_bytes {
                tracing::warn!(
                    vps_id,
                    disk_bytes = size,
                    requested,
                    "a disk never shrinks; keeping the current size"
                );
            }
        }
        st.limits = spec.limits.clone();
        st.hostname = spec.hostname.clone();
        st.power = spec.power;
        // Set while the last run's init exited by itself (no stop recorded its end).
        let exited_init = st.init.clone().filter(|_| running.is_none());
        st.init = running.clone();
        self.save(&st)?;

        // Online while the VPS keeps running, before a start (so it boots with the bigger
        // filesystem), after a stop. A failure is reported after the power state has been
        // carried out, so it never keeps a VPS down or up; the growth stays pending.
        let stopping = spec.power == Power::Stopped && running.is_some();
        let grown_before = (!stopping).then(|| self.grow_disk(&mut st, running.is_some()));
        match (spec.power, running) {
            (Power::Running, Some(_)) => self.apply_io(&st, &cgroup)?,
            (Power::Running, None) => {
                self.kill(None, &cgroup, vps_id)?;
                // A run whose init exited by itself (a poweroff inside, a crash) left what it
                // used in its cgroup: keep that as the closed run before the cgroup is
                // replaced. Its veth went with its netns, so no network bytes.
                if let Some(ending) = exited_init
                    .as_ref()
                    .and_then(|init| RunEnding::after_exit(vps_id, init, &cgroup))
                {
                    let known = st.closed_run.as_ref().map(|run| run.incarnation.as_str());
                    if known != Some(ending.incarnation.as_str()) {
                        st.closed_run = ending.close(vps_id, &cgroup);
                        self.save(&st)?;
                    }
                }
                // Each run gets a new cgroup, so its counters start from zero
                // under a new inode: metering sees a new incarnation and never
                // counts an earlier run's CPU and IO again.
                let cgroup_err = |source| RuntimeError::Cgroup {
                    vps_id: vps_id.to_string(),
                    source,
                };
                cgroup.delete().map_err(cgroup_err)?;
                cgroup.create().map_err(cgroup_err)?;
                cgroup.apply_limits(&spec.limits).map_err(cgroup_err)?;
                cgroup
                    .apply_device_policy()
                    .map_err(|source| RuntimeError::Cgroup {
                        vps_id: vps_id.to_string(),
                        source,
                    })?;
                let (init, halt_signal) = match self.start(&mut st) {
                    Ok(started) => started,
                    // A start that failed or missed its deadline may have left its init,
                    // console supervisor or sysinfo server in the cgroup: none may stay.
                    Err(error) => {
                        return Err(match self.kill(None, &cgroup, vps_id) {
                            Ok(()) => error,
                            Err(cleanup) => RuntimeError::RollbackFailed {
                                error: Box::new(error),
                                cleanup: Box::new(cleanup),
                            },
                        })
                    }
                };
                tracing::info!(vps_id, pid = init.pid, %halt_signal, "started VPS");
                st.init = Some(init);
                st.halt_signal = Some(halt_signal);
                self.save(&st)?;
                self.apply_io(&st, &cgroup)?;
            }
            (Power::Stopped, init) => {
                self.stop(&mut st, init.as_ref(), &cgroup)?;
                if init.is_some() {
                    tracing::info!(vps_id, "stopped VPS");
                }
            }
        }
        match grown_before {
            Some(grown) => grown?,
            None => self.grow_disk(&mut st, false)?,
        }
        Ok(self.observe(&st))
    }

    /// Removes the VPS completely: kills every process, removes its cgroup in every hierarchy
    /// and its state directory (writable layer included). Absent is `Ok`.
    pub fn delete(&self, vps_id: &str) -> Result<(), RuntimeError> {
        validate_vps_id(vps_id)?;
        let lock = self.vps_lock(vps_id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        // An unreadable record must not block deletion: the cgroup and paths derive from the id.
        if let Ok(Some(mut st)) = self.layout().read_state(vps_id) {
            if st.phase != Phase::Deleting {
                st.phase = Phase::Deleting;
                self.save(&st)?;
            }
        }
        self.remove_vps(vps_id)
    }

    /// The observed state of one VPS, `None` if it does not exist.
    pub fn status(&self, vps_id: &str) -> Result<Option<VpsObserved>, RuntimeError> {
        validate_vps_id(vps_id)?;
        match self.layout().read_state(vps_id) {
            Ok(Some(st)) => Ok(Some(self.observe(&st))),
            Ok(None) => Ok(None),
            Err(e) => Ok(Some(VpsObserved {
                vps_id: vps_id.to_string(),
                hostname: String::new(),
                state: ObservedState::Error,
                init_pid: None,
                message: e.to_string(),
            })),
        }
    }

    /// The observed state of every VPS on this node, sorted by id.
    pub fn list(&self) -> Result<Vec<VpsObserved>, RuntimeError> {
        let ids = self.layout().vps_ids().map_err(RuntimeError::Setup)?;
        let mut all = Vec::with_capacity(ids.len());
        for vps_id in ids {
            if validate_vps_id(&vps_id).is_err() {
                continue;
            }
            if let Some(observed) = self.status(&vps_id)? {
                all.push(observed);
            }
        }
        Ok(all)
    }

    /// Runs `command` inside the running VPS (all its namespaces and its cgroup), with
    /// `PATH`, `HOME=/root`, `TERM` defaults overridden/extended by `env` (`KEY=VALUE`).
    ///
    /// stdin, stdout and stderr are piped. The child's exit status is the command's exit code
    /// (128 + signal if it was killed; 125 if the helper could not set up, 126/127 for a
    /// command that cannot be executed / is not found). Dropping the child kills the command.
    /// Must be called within a tokio runtime context (e.g. from `spawn_blocking`).
    pub fn exec(
        &self,
        vps_id: &str,
        command: &[String],
        env: &[String],
    ) -> Result<tokio::process::Child, RuntimeError> {
        self.spawn_exec(vps_id, command, env, None)
            .map(|(child, _)| child)
    }

    /// Like [`Runtime::exec`], but the command runs on a new pseudo-terminal of the VPS (its
    /// controlling terminal, stdin/stdout/stderr) with the given window size. The child's
    /// stdout carries the terminal's output (stderr stays empty); the [`ResizeSender`]
    /// changes the window size.
    pub fn exec_tty(
        &self,
        vps_id: &str,
        command: &[String],
        env: &[String],
        size: TtySize,
    ) -> Result<(tokio::process::Child, ResizeSender), RuntimeError> {
        let (child, resize) = self.spawn_exec(vps_id, command, env, Some(size))?;
        let resize = resize.ok_or_else(|| invalid("tty", "no resize channel"))?;
        Ok((child, resize))
    }

    fn spawn_exec(
        &self,
        vps_id: &str,
        command: &[String],
        env: &[String],
        tty: Option<TtySize>,
    ) -> Result<(tokio::process::Child, Option<ResizeSender>), RuntimeError> {
        validate_vps_id(vps_id)?;
        validate_command(command, env)?;
        let st = self
            .load(vps_id)?
            .filter(|st| st.phase == Phase::Ready)
            .ok_or_else(|| RuntimeError::NotFound(vps_id.to_string()))?;
        let init = self
            .live_init(&st)?
            .ok_or_else(|| RuntimeError::NotRunning(vps_id.to_string()))?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RuntimeError::InvalidArgument {
                field: "context",
                rule: "exec must be called within a tokio runtime".into(),
            });
        }
        let request = ExecRequest {
            vps_id: vps_id.to_string(),
            cgroup_parent: self.config().cgroup_parent.clone(),
            init,
            command: command.to_vec(),
            env: env.to_vec(),
            tty,
            sysinfo_socket: self.sysinfo_socket(vps_id),
        };
        exec::spawn(&self.config().helper_binary, &request).map_err(|source| {
            RuntimeError::ExecSpawn {
                vps_id: vps_id.to_string(),
                path: self.config().helper_binary.clone(),
                source,
            }
        })
    }

    /// The final counters of the VPS's last run that a stop ended (see [`ClosedRun`]), if any.
    pub fn closed_run(&self, vps_id: &str) -> Result<Option<ClosedRun>, RuntimeError> {
        validate_vps_id(vps_id)?;
        Ok(self.load(vps_id)?.and_then(|st| st.closed_run))
    }

    /// Host paths of the VPS's cgroup directories, one per hierarchy (they may not exist).
    pub fn cgroup_paths(&self, vps_id: &str) -> Vec<PathBuf> {
        let mut cache = self
            .inner
            .cgroup_paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache
            .entry(vps_id.to_string())
            .or_insert_with(|| self.cgroup(vps_id).paths())
            .clone()
    }

    /// The VPS's network namespace (`/proc/<init>/ns/net`) while it runs, for attaching its
    /// network port. The namespace is owned by the VPS's user namespace; host root can still
    /// move links into it.
    pub fn netns_path(&self, vps_id: &str) -> Result<Option<PathBuf>, RuntimeError> {
        Ok(self
            .status(vps_id)?
            .and_then(|observed| observed.init_pid)
            .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net"))))
    }

    /// The host id range mapped into the VPS's user namespace, once allocated.
    pub fn id_range(&self, vps_id: &str) -> Result<Option<IdRange>, RuntimeError> {
        validate_vps_id(vps_id)?;
        Ok(self.load(vps_id)?.and_then(|st| st.ids))
    }

    /// Loop devices backed by files under the runtime's state dir (for leak checks).
    pub fn loop_devices(&self) -> Vec<String> {
        disk::loop_devices_under(&self.config().state_dir)
    }

    /// The socket of the running VPS's console supervisor (protocol: [`console::frame`]).
    pub fn console_socket(&self, vps_id: &str) -> Result<PathBuf, RuntimeError> {
        validate_vps_id(vps_id)?;
        let st = self
            .load(vps_id)?
            .filter(|st| st.phase == Phase::Ready)
            .ok_or_else(|| RuntimeError::NotFound(vps_id.to_string()))?;
        if self.live_init(&st)?.is_none() {
            return Err(RuntimeError::NotRunning(vps_id.to_string()));
        }
        Ok(console::socket_path(&self.layout().vps_dir(vps_id)))
    }

    /// The pid of the running VPS's console supervisor, if it recorded one.
    pub fn console_supervisor_pid(&self, vps_id: &str) -> Option<u32> {
        let pid_file = self.layout().vps_dir(vps_id).join("console.pid");
        fs::read_to_string(pid_file).ok()?.trim().parse().ok()
    }

    /// The path of the VPS's console log (everything the console showed).
    pub fn console_log_path(&self, vps_id: &str) -> PathBuf {
        self.layout().console_log(vps_id)
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

    /// Creates a VPS: intent marker first, then rootfs dirs and cgroup, then `Ready`. Rolls back
    /// on failure.
    fn create(&self, spec: &VpsSpec) -> Result<VpsState, RuntimeError> {
        let vps_id = spec.vps_id.as_str();
        if !self.layout().template_rootfs(&spec.template).is_dir() {
            return Err(RuntimeError::TemplateMissing(spec.template.clone()));
        }
        let dir = self.layout().vps_dir(vps_id);
        state::create_private_dir(&dir).map_err(|source| RuntimeError::State {
            vps_id: vps_id.to_string(),
            source,
        })?;
        let mut st = VpsState {
            version: STATE_VERSION,
            vps_id: vps_id.to_string(),
            phase: Phase::Creating,
            hostname: spec.hostname.clone(),
            template: spec.template.clone(),
            limits: spec.limits.clone(),
            power: Power::Stopped,
            init: None,
            halt_signal: None,
            ids: None,
            rebuild_generation: spec.rebuild_generation,
            disk_grow_to: None,
            closed_run: None,
        };
        self.save(&st)?;
        let built = self
            .allocate_ids(&mut st)
            .and_then(|ids| self.build(spec, ids));
        if let Err(error) = built {
            return Err(match self.remove_vps(vps_id) {
                Ok(()) => error,
                Err(cleanup) => RuntimeError::RollbackFailed {
                    error: Box::new(error),
                    cleanup: Box::new(cleanup),
                },
            });
        }
        st.phase = Phase::Ready;
        self.save(&st)?;
        tracing::info!(vps_id, template = spec.template, "created VPS");
        Ok(st)
    }

    /// The VPS's id range: the recorded one, else a newly allocated one, recorded in `st`.
    fn allocate_ids(&self, st: &mut VpsState) -> Result<IdRange, RuntimeError> {
        if let Some(ids) = st.ids {
            return Ok(ids);
        }
        let ids = self
            .inner
            .ids
            .allocate(&st.vps_id)
            .map_err(|source| RuntimeError::Idmap {
                vps_id: st.vps_id.clone(),
                source,
            })?;
        st.ids = Some(ids);
        self.save(st)?;
        Ok(ids)
    }

    fn build(&self, spec: &VpsSpec, ids: IdRange) -> Result<(), RuntimeError> {
        let vps_id = spec.vps_id.as_str();
        let rootfs = self.rootfs_layout(vps_id, &spec.template);
        rootfs.prepare().map_err(|source| RuntimeError::Rootfs {
            vps_id: vps_id.to_string(),
            source,
        })?;
        disk::create_image(&rootfs.disk_image, disk_bytes(&spec.limits), ids).map_err(
            |source| RuntimeError::Disk {
                vps_id: vps_id.to_string(),
                source,
            },
        )?;
        let cgroup = self.cgroup(vps_id);
        cgroup
            .create()
            .and_then(|()| cgroup.apply_limits(&spec.limits))
            .and_then(|()| cgroup.apply_device_policy())
            .map_err(|source| RuntimeError::Cgroup {
                vps_id: vps_id.to_string(),
                source,
            })
    }

    /// Stops the VPS and gives it a fresh filesystem on its disk (same size, or the spec's if
    /// larger) from `spec.template`. Journaled as [`Phase::Rebuilding`], so an interrupted
    /// rebuild is redone.
    fn rebuild(&self, st: &mut VpsState, spec: &VpsSpec) -> Result<(), RuntimeError> {
        let vps_id = spec.vps_id.clone();
        if !self.layout().template_rootfs(&spec.template).is_dir() {
            return Err(RuntimeError::TemplateMissing(spec.template.clone()));
        }
        if st.phase != Phase::Rebuilding {
            st.phase = Phase::Rebuilding;
            st.template = spec.template.clone();
            st.rebuild_generation = spec.rebuild_generation.max(st.rebuild_generation);
            self.save(st)?;
        }
        let cgroup = self.cgroup(&vps_id);
        let init = self.live_init(st)?;
        self.stop(st, init.as_ref(), &cgroup)?;
        let ids = self.allocate_ids(st)?;
        let rootfs = self.rootfs_layout(&vps_id, &st.template);
        let disk_err = |source| RuntimeError::Disk {
            vps_id: vps_id.clone(),
            source,
        };
        let size = disk::image_size(&rootfs.disk_image)
            .map_err(disk_err)?
            .unwrap_or_default()
            .max(disk_bytes(&spec.limits));
        // The old filesystem is gone once the last mount of it (in the VPS's namespaces) is.
        wait_for_detach(&rootfs.disk_image);
        disk::create_image(&rootfs.disk_image, size, ids).map_err(disk_err)?;
        // The fresh filesystem fills the image: no growth is pending any more.
        st.disk_grow_to = None;
        st.phase = Phase::Ready;
        self.save(st)?;
        tracing::info!(vps_id, template = st.template, "rebuilt VPS");
        Ok(())
    }

    /// Grows the VPS's disk when its limits, or an interrupted growth, ask for more than the
    /// image has: the intent marker ([`VpsState::disk_grow_to`]) first, then the image, then
    /// its filesystem (online if the VPS runs), then the marker is cleared. Never shrinks.
    /// Without an image there is nothing to grow: the next start creates it at full size.
    /// `vps_running`: whether the VPS's init runs (if not, a previous instance's loop device
    /// is given time to go away, so the growth can be done offline).
    fn grow_disk(&self, st: &mut VpsState, vps_running: bool) -> Result<(), RuntimeError> {
        let vps_id = st.vps_id.clone();
        let rootfs = self.rootfs_layout(&vps_id, &st.template);
        let image = &rootfs.disk_image;
        let size = disk::image_size(image).map_err(|source| RuntimeError::Disk {
            vps_id: vps_id.clone(),
            source,
        })?;
        let Some(size) = size else {
            if st.disk_grow_to.take().is_some() {
                self.save(st)?;
            }
            return Ok(());
        };
        let wanted = disk_bytes(&st.limits);
        // A pending target at or below the image size: the image grew, its filesystem may not.
        let target_bytes = match st.disk_grow_to {
            Some(pending) => pending.max(wanted).max(size),
            None if wanted > size => wanted,
            None => return Ok(()),
        };
        if st.disk_grow_to != Some(target_bytes) {
            st.disk_grow_to = Some(target_bytes);
            self.save(st)?;
        }
        let growth_err = |source| RuntimeError::DiskGrowth {
            vps_id: vps_id.clone(),
            image: image.clone(),
            target_bytes,
            source: Box::new(source),
        };
        // The helper's mount point (in its own namespace); normally made at create.
        fs::create_dir_all(&rootfs.disk).map_err(|source| RuntimeError::Rootfs {
            vps_id: vps_id.clone(),
            source: RootfsError::Io {
                operation: "create dir",
                path: rootfs.disk.clone(),
                source,
            },
        })?;
        if vps_running && !capabilities::has_effective(capabilities::CAP_SYS_RESOURCE) {
            // The kernel resizes a mounted ext4 only for CAP_SYS_RESOURCE (containers and
            // some sandboxes drop it). The growth stays pending, shown in the VPS's status,
            // and is done offline at its next stop or start.
            tracing::warn!(
                vps_id,
                target_bytes,
                "online disk growth needs CAP_SYS_RESOURCE; growing at the next stop or start"
            );
            return Ok(());
        }
        if !vps_running {
            wait_for_detach(image);
        }
        let growth = disk_growth::grow(
            &self.config().helper_binary,
            image,
            &rootfs.disk,
            target_bytes,
            self.config().start_timeout,
        )
        .map_err(growth_err)?;
        st.disk_grow_to = None;
        self.save(st)?;
        match &growth.online {
            Some(fs) => {
                if !fs.online {
                    // The VPS went away meanwhile and the helper attached the image itself;
                    // that loop device goes with the helper's namespace.
                    wait_for_detach(image);
                }
                tracing::info!(
                    vps_id,
                    image = %image.display(),
                    old_bytes = growth.image.old_bytes,
                    new_bytes = growth.image.new_bytes,
                    fs_bytes_before = fs.fs_bytes_before,
                    fs_bytes_after = fs.fs_bytes_after,
                    device = %fs.device.display(),
                    "grew disk online"
                );
            }
            None => tracing::info!(
                vps_id,
                image = %image.display(),
                old_bytes = growth.image.old_bytes,
                new_bytes = growth.image.new_bytes,
                "grew disk offline"
            ),
        }
        Ok(())
    }

    /// Applies the IO limits to the running VPS's loop device.
    fn apply_io(&self, st: &VpsState, cgroup: &VpsCgroup) -> Result<(), RuntimeError> {
        let image = self.rootfs_layout(&st.vps_id, &st.template).disk_image;
        match disk::loop_device_of(&image) {
            Some(device) => {
                cgroup
                    .apply_io(&st.limits, device)
                    .map_err(|source| RuntimeError::Cgroup {
                        vps_id: st.vps_id.clone(),
                        source,
                    })
            }
            None => {
                tracing::warn!(
                    vps_id = st.vps_id,
                    "no loop device for the running VPS's disk"
                );
                Ok(())
            }
        }
    }

    /// Kills everything, removes the cgroup and the VPS directory (via the trash, so a crash
    /// mid-removal never leaves a half-deleted VPS that looks real).
    fn remove_vps(&self, vps_id: &str) -> Result<(), RuntimeError> {
        let init = self
            .layout()
            .read_state(vps_id)
            .ok()
            .flatten()
            .and_then(|st| st.init);
        let cgroup = self.cgroup(vps_id);
        self.kill(init.as_ref(), &cgroup, vps_id)?;
        cgroup.delete().map_err(|source| RuntimeError::Cgroup {
            vps_id: vps_id.to_string(),
            source,
        })?;
        let dir = self.layout().vps_dir(vps_id);
        let state_err = |source| RuntimeError::State {
            vps_id: vps_id.to_string(),
            source,
        };
        if dir.exists() {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let trash = self.layout().trash_root().join(format!("{vps_id}-{nanos}"));
            fs::rename(&dir, &trash)
                .map_err(state::io_err("move to trash", &dir))
                .map_err(state_err)?;
            state::remove_tree(&trash).map_err(state_err)?;
            tracing::info!(vps_id, "deleted VPS");
        }
        self.inner
            .cgroup_paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(vps_id);
        self.inner
            .ids
            .release(vps_id)
            .map_err(|source| RuntimeError::Idmap {
                vps_id: vps_id.to_string(),
                source,
            })
    }

    fn kill(
        &self,
        init: Option<&ProcessIdentity>,
        cgroup: &VpsCgroup,
        vps_id: &str,
    ) -> Result<(), RuntimeError> {
        supervisor::kill_all(init, cgroup).map_err(|source| RuntimeError::Supervisor {
            vps_id: vps_id.to_string(),
            source,
        })
    }

    /// Graceful stop of `init` (the live init of `st`) with its halt signal, then SIGKILL for
    /// whatever is left in the cgroup. The run's closing counters are recorded in
    /// [`VpsState::closed_run`] and saved together with the init being gone.
    fn stop(
        &self,
        st: &mut VpsState,
        init: Option<&ProcessIdentity>,
        cgroup: &VpsCgroup,
    ) -> Result<(), RuntimeError> {
        let halt_signal = match (init, st.halt_signal) {
            (Some(_), None) => self.legacy_halt_signal(st),
            (_, halt_signal) => halt_signal.unwrap_or(HaltSignal::DEFAULT),
        };
        let ending = init.and_then(|init| RunEnding::begin(&st.vps_id, init, cgroup));
        supervisor::stop(init, cgroup, halt_signal, self.config().stop_grace).map_err(
            |source| RuntimeError::Supervisor {
                vps_id: st.vps_id.clone(),
                source,
            },
        )?;
        if let Some(ending) = ending {
            st.closed_run = ending.close(&st.vps_id, cgroup);
        }
        st.init = None;
        self.save(st)
    }

    /// The halt signal for an init started by an agent from before halt signals: the
    /// template's as it is now, or the signal those agents sent if that cannot be read.
    fn legacy_halt_signal(&self, st: &VpsState) -> HaltSignal {
        match self.template_halt_signal(st) {
            Ok(halt_signal) => halt_signal,
            Err(error) => {
                tracing::warn!(
                    vps_id = st.vps_id,
                    %error,
                    halt_signal = %HaltSignal::DEFAULT,
                    "no halt signal recorded and the template's is unreadable; using the default"
                );
                HaltSignal::DEFAULT
            }
        }
    }

    /// The halt signal of `st`'s template: from its metadata, else guessed from its rootfs.
    fn template_halt_signal(&self, st: &VpsState) -> Result<HaltSignal, RuntimeError> {
        let dir = self.layout().template_dir(&st.template);
        let (halt_signal, source) =
            metadata::halt_signal(&dir).map_err(|source| RuntimeError::TemplateMetadata {
                vps_id: st.vps_id.clone(),
                template: st.template.clone(),
                source,
            })?;
        if source == HaltSignalSource::Guessed {
            tracing::info!(
                vps_id = st.vps_id,
                template = st.template,
                %halt_signal,
                "template has no metadata; halt signal guessed from its rootfs"
            );
        }
        Ok(halt_signal)
    }

    /// Starts the init; returns it and the halt signal its template says stops it.
    fn start(&self, st: &mut VpsState) -> Result<(ProcessIdentity, HaltSignal), RuntimeError> {
        let vps_id = st.vps_id.clone();
        let rootfs = self.rootfs_layout(&vps_id, &st.template);
        // Idempotent; also re-checks that the template is still there.
        rootfs.prepare().map_err(|source| RuntimeError::Rootfs {
            vps_id: vps_id.clone(),
            source,
        })?;
        // Read now, with the template the init boots from; kept for as long as the init runs.
        let halt_signal = self.template_halt_signal(st)?;
        let ids = self.allocate_ids(st)?;
        let disk_err = |source| RuntimeError::Disk {
            vps_id: vps_id.clone(),
            source,
        };
        // A VPS from before per-VPS disks (or whose image was lost) gets an empty one.
        if disk::image_size(&rootfs.disk_image)
            .map_err(disk_err)?
            .is_none()
        {
            disk::create_image(&rootfs.disk_image, disk_bytes(&st.limits), ids)
                .map_err(disk_err)?;
        }
        // After a quick stop/start the previous instance's mount may still be going away;
        // mounting the same ext4 twice would corrupt it.
        wait_for_detach(&rootfs.disk_image);
        // Also restarts lxcfs if it died since the agent started.
        let proc_binds = match &self.config().proc_view {
            procview::ProcView::Host => Vec::new(),
            procview::ProcView::Lxcfs(lxcfs) => procview::ensure_running(lxcfs)?,
        };
        let request = StartRequest {
            vps_id: vps_id.clone(),
            hostname: st.hostname.clone(),
            cgroup_parent: self.config().cgroup_parent.clone(),
            rootfs,
            console_log: self.layout().console_log(&vps_id),
            console_socket: console::socket_path(&self.layout().vps_dir(&vps_id)),
            console_pid_file: self.layout().vps_dir(&vps_id).join("console.pid"),
            ids,
            proc_binds,
            sysinfo_socket: self.sysinfo_socket(&vps_id),
        };
        let init = supervisor::start_init(
            &self.config().helper_binary,
            &request,
            self.config().start_timeout,
        )
        .map_err(|source| RuntimeError::Supervisor {
            vps_id: vps_id.to_string(),
            source,
        })?;
        Ok((init, halt_signal))
    }

    /// The recorded init if it is still the same running process.
    fn live_init(&self, st: &VpsState) -> Result<Option<ProcessIdentity>, RuntimeError> {
        match &st.init {
            Some(init) => match init.is_alive() {
                Ok(true) => Ok(Some(init.clone())),
                Ok(false) => Ok(None),
                Err(source) => Err(RuntimeError::Process {
                    vps_id: st.vps_id.clone(),
                    source,
                }),
            },
            None => Ok(None),
        }
    }

    fn observe(&self, st: &VpsState) -> VpsObserved {
        let (state, init_pid, message) = match st.phase {
            Phase::Creating => (ObservedState::Stopped, None, "being created".to_string()),
            Phase::Deleting => (ObservedState::Stopped, None, "being deleted".to_string()),
            Phase::Rebuilding => (ObservedState::Stopped, None, "being rebuilt".to_string()),
            Phase::Ready => match self.live_init(st) {
                Ok(Some(init)) => (
                    ObservedState::Running,
                    Some(init.pid),
                    match st.disk_grow_to {
                        Some(bytes) => format!(
                            "running, init pid {}; its disk grows to {} at its next stop or start",
                            init.pid,
                            paddock_config::ByteSize(bytes)
                        ),
                        None => format!("running, init pid {}", init.pid),
                    },
                ),
                Ok(None) => match (&st.init, st.power) {
                    (Some(init), Power::Running) => (
                        ObservedState::Stopped,
                        None,
                        format!(
                            "init (pid {}) exited unexpectedly; see {}",
                            init.pid,
                            self.layout().console_log(&st.vps_id).display()
                        ),
                    ),
                    _ => (ObservedState::Stopped, None, "stopped".to_string()),
                },
                Err(e) => (ObservedState::Error, None, e.to_string()),
            },
        };
        VpsObserved {
            vps_id: st.vps_id.clone(),
            hostname: st.hostname.clone(),
            state,
            init_pid,
            message,
        }
    }
}

/// What a stop takes before it signals the init, so it can read the run's closing counters
/// once the init has exited: the run's incarnation (its cgroup's inode, before anything
/// deletes the cgroup) and a hold on its network namespace, which keeps the namespace, and
/// with it the veth pair and its counters, alive after the init exits.
struct RunEnding {
    incarnation: String,
    /// `/proc/<init>/ns/net`, open until the closing counters are read (`None`: not held).
    netns: Option<fs::File>,
}

impl RunEnding {
    /// `None` (closing counters are then not taken) if the cgroup is not there to name the run.
    fn begin(vps_id: &str, init: &ProcessIdentity, cgroup: &VpsCgroup) -> Option<Self> {
        let inode = match usage::cgroup_inode(&cgroup.paths()) {
            Ok(Some(inode)) => inode,
            Ok(None) => return None,
            Err(error) => {
                tracing::warn!(vps_id, %error, "naming the run for its closing counters");
                return None;
            }
        };
        let path = PathBuf::from(format!("/proc/{}/ns/net", init.pid));
        let netns = match fs::File::open(&path) {
            // Opened after the identity check that found the init: the pid may have been
            // reused since, so the init must still be the same process with the file open.
            Ok(file) if matches!(init.is_alive(), Ok(true)) => Some(file),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(vps_id, path = %path.display(), %error, "holding the network namespace for the closing counters");
                None
            }
        };
        Some(Self {
            incarnation: usage::incarnation(inode, init.start_time),
            netns,
        })
    }

    /// For a run whose init already exited: its name only (its network namespace is gone).
    fn after_exit(vps_id: &str, init: &ProcessIdentity, cgroup: &VpsCgroup) -> Option<Self> {
        match usage::cgroup_inode(&cgroup.paths()) {
            Ok(Some(inode)) => Some(Self {
                incarnation: usage::incarnation(inode, init.start_time),
                netns: None,
            }),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(vps_id, %error, "naming the exited run for its closing counters");
                None
            }
        }
    }

    /// Reads the closing counters (the init has exited and the cgroup is empty), then lets
    /// the network namespace go. `None` if the cgroup could not be read.
    fn close(self, vps_id: &str, cgroup: &VpsCgroup) -> Option<ClosedRun> {
        let cgroup_usage = match usage::read_cgroup_usage(&cgroup.paths()) {
            Ok(cgroup_usage) => cgroup_usage,
            Err(error) => {
                tracing::warn!(vps_id, %error, "reading the run's closing counters");
                return None;
            }
        };
        // No veth: the VPS had no port, nothing crossed the wire.
        let net = network::counters::read_port(&network::host_ifname(vps_id)).unwrap_or_default();
        let ended_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        drop(self.netns);
        Some(ClosedRun {
            incarnation: self.incarnation,
            cpu_usage_ns: cgroup_usage.cpu_usage_ns,
            memory_peak_bytes: cgroup_usage.memory_peak_bytes,
            io: cgroup_usage.io,
            net_rx_bytes: net.rx_bytes,
            net_tx_bytes: net.tx_bytes,
            ended_at_unix_ms,
        })
    }
}

/// The disk size for `limits` (0 means the default).
fn disk_bytes(limits: &Limits) -> u64 {
    if limits.disk_bytes == 0 {
        disk::DEFAULT_DISK_BYTES
    } else {
        limits.disk_bytes
    }
}

/// Waits (bounded) until no loop device is backed by `image` any more: the VPS's mount
/// namespace, and with it the disk's mount and autoclear loop device, goes away shortly after
/// its last process.
fn wait_for_detach(image: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Usually a few milliseconds: look again soon, then every 20 ms.
    let mut pause = Duration::from_millis(1);
    while disk::loop_device_of(image).is_some() {
        if std::time::Instant::now() >= deadline {
            tracing::warn!(image = %image.display(), "disk still attached after 10s");
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn invalid(field: &'static str, rule: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidArgument {
        field,
        rule: rule.into(),
    }
}

fn validate_vps_id(vps_id: &str) -> Result<(), RuntimeError> {
    let mut chars = vps_id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if first_ok && rest_ok && vps_id.len() <= 64 {
        Ok(())
    } else {
        Err(invalid(
            "vps_id",
            "must be 1-64 characters of [A-Za-z0-9_-] starting with a letter or digit",
        ))
    }
}

fn validate_hostname(hostname: &str) -> Result<(), RuntimeError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if hostname.len() <= 64 && hostname.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(invalid(
            "hostname",
            "must be at most 64 characters of dot-separated labels of [A-Za-z0-9-], \
             not starting or ending with '-'",
        ))
    }
}

/// Template names are directory names under `state_dir/templates`.
pub(crate) fn validate_template_name(template: &str) -> Result<(), RuntimeError> {
    let mut chars = template.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if first_ok && rest_ok && template.len() <= 63 && !template.contains("..") {
        Ok(())
    } else {
        Err(invalid(
            "template",
            "must be 1-63 characters of [a-z0-9._-] starting with a letter or digit",
        ))
    }
}

fn validate_limits(limits: &Limits) -> Result<(), RuntimeError> {
    if !limits.vcpus.is_finite() || limits.vcpus < 0.0 || limits.vcpus > MAX_VCPUS {
        return Err(invalid(
            "limits.vcpus",
            format!("must be between 0 (unlimited) and {MAX_VCPUS}"),
        ));
    }
    if limits.cpu_weight > cgroups::MAX_CPU_WEIGHT {
        return Err(invalid(
            "limits.cpu_weight",
            format!("must be 0 (default) or 1-{}", cgroups::MAX_CPU_WEIGHT),
        ));
    }
    if limits.memory_bytes != 0 && limits.memory_bytes < MIN_MEMORY_BYTES {
        return Err(invalid(
            "limits.memory_bytes",
            format!("must be 0 (unlimited) or at least {MIN_MEMORY_BYTES}"),
        ));
    }
    for (field, value) in [
        ("limits.memory_bytes", limits.memory_bytes),
        ("limits.swap_bytes", limits.swap_bytes),
        ("limits.pids_max", limits.pids_max),
    ] {
        if i64::try_from(value).is_err() {
            return Err(invalid(field, format!("must be at most {}", i64::MAX)));
        }
    }
    if limits.disk_bytes != 0 && limits.disk_bytes < disk::MIN_DISK_BYTES {
        return Err(invalid(
            "limits.disk_bytes",
            format!("must be 0 (default) or at least {}", disk::MIN_DISK_BYTES),
        ));
    }
    if limits.memory_bytes.checked_add(limits.swap_bytes).is_none() {
        return Err(invalid("limits.swap_bytes", "memory + swap overflows"));
    }
    Ok(())
}

fn validate_spec(spec: &VpsSpec) -> Result<(), RuntimeError> {
    validate_vps_id(&spec.vps_id)?;
    validate_hostname(&spec.hostname)?;
    validate_template_name(&spec.template)?;
    validate_limits(&spec.limits)
}

fn validate_command(command: &[String], env: &[String]) -> Result<(), RuntimeError> {
    if command.first().is_none_or(|program| program.is_empty()) {
        return Err(invalid("command", "must name a program"));
    }
    if command.iter().any(|arg| arg.contains('\0')) {
        return Err(invalid("command", "must not contain NUL bytes"));
    }
    for entry in env {
        match entry.split_once('=') {
            Some((key, _)) if !key.is_empty() && !entry.contains('\0') => {}
            _ => {
                return Err(invalid(
                    "env",
                    "entries must be KEY=VALUE without NUL bytes",
                ))
            }
        }
    }
    Ok(())
}

fn validate_config(config: &RuntimeConfig) -> Result<(), RuntimeError> {
    rootfs::check_overlay_path(&config.state_dir).map_err(|e| RuntimeError::InvalidConfig {
        field: "state_dir",
        rule: e.to_string(),
    })?;
    let parent = config.cgroup_parent.trim_matches('/');
    let parent_ok = !parent.is_empty()
        && parent.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        });
    if !parent_ok {
        return Err(RuntimeError::InvalidConfig {
            field: "cgroup_parent",
            rule: "must be a relative cgroup path of [A-Za-z0-9._-] components".into(),
        });
    }
    if !config.helper_binary.is_file() {
        return Err(RuntimeError::InvalidConfig {
            field: "helper_binary",
            rule: format!("{} is not a file", config.helper_binary.display()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VpsSpec {
        VpsSpec {
            vps_id: "vps-1".into(),
            hostname: "web1.example".into(),
            template: "busybox".into(),
            limits: Limits {
                vcpus: 1.0,
                memory_bytes: 64 << 20,
                ..Limits::default()
            },
            power: Power::Running,
            rebuild_generation: 0,
        }
    }

    #[test]
    fn runtime_can_be_shared_across_threads() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Runtime>();
    }

    #[test]
    fn accepts_a_good_spec() {
        validate_spec(&spec()).expect("valid");
    }

    #[test]
    fn rejects_bad_fields_naming_them() {
        let cases: Vec<(VpsSpec, &str)> = vec![
            (
                VpsSpec {
                    vps_id: "../x".into(),
                    ..spec()
                },
                "vps_id",
            ),
            (
                VpsSpec {
                    vps_id: String::new(),
                    ..spec()
                },
                "vps_id",
            ),
            (
                VpsSpec {
                    hostname: "-bad".into(),
                    ..spec()
                },
                "hostname",
            ),
            (
                VpsSpec {
                    hostname: "a".repeat(65),
                    ..spec()
                },
                "hostname",
            ),
            (
                VpsSpec {
                    template: "../etc".into(),
                    ..spec()
                },
                "template",
            ),
            (
                VpsSpec {
                    limits: Limits {
                        vcpus: -1.0,
                        ..spec().limits
                    },
                    ..spec()
                },
                "limits.vcpus",
            ),
            (
                VpsSpec {
                    limits: Limits {
                        memory_bytes: 1,
                        ..spec().limits
                    },
                    ..spec()
                },
                "limits.memory_bytes",
            ),
            (
                VpsSpec {
                    limits: Limits {
                        cpu_weight: 10_001,
                        ..spec().limits
                    },
                    ..spec()
                },
                "limits.cpu_weight",
            ),
        ];
        for (bad, field) in cases {
            match validate_spec(&bad) {
                Err(RuntimeError::InvalidArgument { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{bad:?}: expected invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn validates_exec_arguments() {
        assert!(validate_command(&[], &[]).is_err());
        assert!(validate_command(&["ls".into()], &["NOEQUALS".into()]).is_err());
        assert!(validate_command(&["ls".into()], &["=x".into()]).is_err());
        validate_command(&["ls".into(), "-l".into()], &["A=b".into()]).expect("valid");
    }
}
