//! What the runtime does to a VPS: recover, apply (create, build, rebuild, grow the disk,
//! start, stop), delete, and observe. Every step is journaled in the VPS's state
//! ([`super::state`]) so an interrupted one is finished or rolled back by [`Runtime::new`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::cgroups::VpsCgroup;
use super::isolation::capabilities;
use super::isolation::idmap::IdRange;
use super::isolation::procview::{self, ProcBind};
use super::isolation::rootfs::RootfsError;
use super::phases;
use super::process::console;
use super::process::helper::StartRequest;
use super::process::identity::ProcessIdentity;
use super::process::supervisor;
use super::spec::{disk_bytes, validate_spec, validate_vps_id};
use super::state::{self, ClosedRun, Phase, StateError, VpsState, STATE_VERSION};
use super::storage::{disk, disk_growth};
use super::usage;
use super::{ObservedState, Power, Runtime, RuntimeError, VpsObserved, VpsSpec};

/// Where agents before restart generations moved into each VPS's state kept them.
const LEGACY_RESTART_GENERATIONS: &str = "restart-generations.json";
use crate::fsutil::FromIo;
use crate::network;
use crate::template::metadata::{self, HaltSignal, HaltSignalSource};

impl Runtime {
    pub(super) fn recover(&self) -> Result<(), RuntimeError> {
        let trash = self.layout().trash_root();
        for entry in fs::read_dir(&trash)
            .map_err(StateError::io_err("read dir", &trash))
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
        self.import_restart_generations()
    }

    /// Agents before restart generations moved into each VPS's state kept them in one
    /// `restart-generations.json` in the state dir: folds that file into the states once (so an
    /// upgrade never repeats a restart) and removes it.
    fn import_restart_generations(&self) -> Result<(), RuntimeError> {
        let path = self.config().state_dir.join(LEGACY_RESTART_GENERATIONS);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(RuntimeError::Setup(StateError::io_err("read", &path)(
                    error,
                )))
            }
        };
        let applied: std::collections::HashMap<String, u64> = serde_json::from_slice(&bytes)
            .map_err(|source| {
                RuntimeError::Setup(StateError::Decode {
                    path: path.clone(),
                    source,
                })
            })?;
        for (vps_id, generation) in applied {
            if validate_vps_id(&vps_id).is_err() {
                continue;
            }
            let lock = self.vps_lock(&vps_id);
            let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(mut st) = self.load(&vps_id)? {
                if generation > st.restart_generation {
                    st.restart_generation = generation;
                    self.save(&st)?;
                }
            }
        }
        fs::remove_file(&path)
            .map_err(StateError::io_err("remove", &path))
            .map_err(RuntimeError::Setup)
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
    ///
    /// A `restart_generation` above the one last carried out restarts a VPS that runs (a stop,
    /// then the start) once: the generation is recorded in its state only after the apply
    /// succeeded, so a failed restart is tried again by the next apply.
    pub fn apply(&self, spec: &VpsSpec) -> Result<VpsObserved, RuntimeError> {
        validate_spec(spec)?;
        let vps_id = spec.vps_id.as_str();
        let lock = self.vps_lock(vps_id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let _timing = phases::begin();
        phases::mark("lock");

        let restart_due = spec.power == Power::Running
            && self.load(vps_id)?.is_some_and(|st| {
                st.phase == Phase::Ready && spec.restart_generation > st.restart_generation
            });
        if restart_due {
            let mut stopped = spec.clone();
            stopped.power = Power::Stopped;
            self.apply_locked(&stopped)?;
        }
        let observed = self.apply_locked(spec)?;
        if let Some(mut st) = self.load(vps_id)? {
            if spec.restart_generation > st.restart_generation {
                st.restart_generation = spec.restart_generation;
                self.save(&st)?;
            }
        }
        Ok(observed)
    }

    /// [`Self::apply`] without the restart, under the VPS's lock.
    fn apply_locked(&self, spec: &VpsSpec) -> Result<VpsObserved, RuntimeError> {
        let vps_id = spec.vps_id.as_str();
        let existing = match self.load(vps_id)? {
            Some(st) if matches!(st.phase, Phase::Ready | Phase::Rebuilding) => Some(st),
            Some(_) => {
                // A create or delete was interrupted: clean up, then build afresh.
                self.remove_vps(vps_id)?;
                None
            }
            None => None,
        };
        std::thread::scope(|scope| {
            // A new VPS that is to run: lxcfs is asked whether it answers while the create
            // waits on the disk.
            let proc_binds = (existing.is_none() && spec.power == Power::Running)
                .then(|| scope.spawn(|| self.proc_binds()));
            // `created`: its disk image was made by this call, so no loop device can back it.
            let (mut st, created) = match existing {
                Some(st) => (st, false),
                None => (self.create(spec)?, true),
            };
            phases::mark("load state");
            let converged = self.converge(&mut st, spec, created, proc_binds);
            // A VPS this apply created has no state on disk yet: the start or stop that
            // carries out its power state writes it. If that failed, it is recorded as it is,
            // stopped.
            if created && converged.is_err() {
                if let Err(error) = self.save(&st) {
                    tracing::error!(vps_id, %error, "recording the VPS whose first apply failed");
                }
            }
            converged
        })
    }

    /// The lxcfs files to bind over the VPS's /proc (none with the host's /proc); restarts
    /// lxcfs if it died since the agent started.
    fn proc_binds(&self) -> Result<Vec<ProcBind>, RuntimeError> {
        Ok(match &self.config().proc_view {
            procview::ProcView::Host => Vec::new(),
            procview::ProcView::Lxcfs(lxcfs) => procview::ensure_running(lxcfs)?,
        })
    }

    /// The rest of [`Self::apply_locked`] once the VPS exists (`created`: by this apply, so it
    /// has no state on disk yet; `proc_binds`: [`Self::proc_binds`] already under way).
    fn converge(
        &self,
        st: &mut VpsState,
        spec: &VpsSpec,
        created: bool,
        proc_binds: Option<ProcBindsCheck<'_>>,
    ) -> Result<VpsObserved, RuntimeError> {
        let vps_id = spec.vps_id.as_str();
        if st.phase == Phase::Rebuilding || spec.rebuild_generation > st.rebuild_generation {
            self.rebuild(st, spec)?;
        } else if st.template != spec.template {
            return Err(RuntimeError::TemplateMismatch {
                vps_id: vps_id.to_string(),
                current: st.template.clone(),
                requested: spec.template.clone(),
            });
        }

        let cgroup = self.cgroup(vps_id);
        let running = self.live_init(st)?;
        // A start below gives the run a cgroup of its own, made afresh with the limits; any
        // other apply updates the limits of the one there is, recreated after a node reboot
        // (where the state survives but cgroups do not).
        if !(spec.power == Power::Running && running.is_none()) {
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
        }
        let recorded = st.clone();
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
        // Unchanged (e.g. right after the create, whose first write is the start's or stop's
        // below): already on disk as it is.
        if *st != recorded {
            self.save(st)?;
        }
        phases::mark("state: apply");

        // Online while the VPS keeps running, before a start (so it boots with the bigger
        // filesystem), after a stop. A failure is reported after the power state has been
        // carried out, so it never keeps a VPS down or up; the growth stays pending.
        let stopping = spec.power == Power::Stopped && running.is_some();
        let grown_before = (!stopping).then(|| self.grow_disk(st, running.is_some()));
        phases::mark("disk growth check");
        match (spec.power, running) {
            (Power::Running, Some(_)) => self.apply_io(st, &cgroup)?,
            (Power::Running, None) => {
                self.kill(None, &cgroup, vps_id)?;
                phases::mark("empty the old cgroup");
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
                        self.save(st)?;
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
                phases::mark("cgroup for the run");
                cgroup
                    .apply_device_policy()
                    .map_err(|source| RuntimeError::Cgroup {
                        vps_id: vps_id.to_string(),
                        source,
                    })?;
                phases::mark("device policy");
                let (init, halt_signal, disk_device) = match self.start(st, created, proc_binds) {
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
                self.save(st)?;
                phases::mark("state: started");
                match disk_device {
                    Some(device) => cgroup.apply_io(&st.limits, device).map_err(|source| {
                        RuntimeError::Cgroup {
                            vps_id: vps_id.to_string(),
                            source,
                        }
                    })?,
                    None => self.apply_io(st, &cgroup)?,
                }
                phases::mark("IO limits");
                self.record_start_phases(vps_id);
            }
            (Power::Stopped, init) => {
                self.stop(st, init.as_ref(), &cgroup)?;
                if init.is_some() {
                    tracing::info!(vps_id, "stopped VPS");
                }
            }
        }
        match grown_before {
            Some(grown) => grown?,
            None => self.grow_disk(st, false)?,
        }
        Ok(self.observe(st))
    }

    /// Keeps the phases of the start just made (see [`phases`]) and logs them at debug level.
    fn record_start_phases(&self, vps_id: &str) {
        let Some(start_phases) = phases::take() else {
            return;
        };
        tracing::debug!(
            target: "paddock_agent::runtime::phases",
            vps_id,
            total_ms = start_phases.total().as_secs_f64() * 1000.0,
            phases = %start_phases,
            "start phases"
        );
        self.inner
            .start_phases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(vps_id.to_owned(), start_phases);
    }

    /// Where the time of the VPS's last start through this runtime went (until it is deleted).
    pub fn last_start_phases(&self, vps_id: &str) -> Option<phases::StartPhases> {
        self.inner
            .start_phases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(vps_id)
            .cloned()
    }

    /// Removes the VPS completely: kills every process, removes its cgroup in every hierarchy
    /// and its state directory (writable layer included). Absent is `Ok`.
    pub fn delete(&self, vps_id: &str) -> Result<(), RuntimeError> {
        validate_vps_id(vps_id)?;
        let lock = self.vps_lock(vps_id);
        let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        // An unreadable record must not block deletion: the cgroup and paths derive from the id.
        if let Ok(Some(mut st)) = self.layout().read_state(vps_id) {
            if st.phase != Phase::Deleting {
                st.phase = Phase::Deleting;
                self.save(&st)?;
            }
        }
        self.remove_vps(vps_id)?;
        // Still holding the VPS's lock: a call for the same id that already has the lock waits
        // for it and keeps the entry; any later one makes a new entry.
        self.forget_vps_lock(vps_id, &lock);
        drop(guard);
        Ok(())
    }

    /// Creates a VPS: its directory, id range, rootfs dirs and disk; returns its `Ready` state,
    /// which the caller writes (see [`Self::apply_locked`]). Rolls back on failure.
    pub(super) fn create(&self, spec: &VpsSpec) -> Result<VpsState, RuntimeError> {
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
            phase: Phase::Ready,
            hostname: spec.hostname.clone(),
            template: spec.template.clone(),
            limits: spec.limits.clone(),
            // What the apply that creates it records next anyway (no init runs yet).
            power: spec.power,
            init: None,
            halt_signal: None,
            ids: None,
            rebuild_generation: spec.rebuild_generation,
            restart_generation: spec.restart_generation,
            disk_grow_to: None,
            closed_run: None,
        };
        // Nothing is written here but the id range (durably, before anything uses it) and the
        // disk: the VPS's first state is written once, by the apply's start or stop. Until
        // then a crash leaves a directory without a state, which recovery removes together
        // with its range, as it removes a `Creating` one (the intent marker agents wrote
        // before).
        // The range's durable write and the disk's copy wait on the disk each: side by side.
        let (allocated, built) = std::thread::scope(|scope| {
            let allocating = scope.spawn(|| self.inner.ids.allocate(vps_id));
            let built = self.build(spec);
            let allocated = allocating.join().unwrap_or_else(|panic| {
                std::panic::resume_unwind(panic);
            });
            (allocated, built)
        });
        let built = allocated
            .map_err(|source| RuntimeError::Idmap {
                vps_id: vps_id.to_string(),
                source,
            })
            .map(|ids| st.ids = Some(ids))
            .and(built)
            .inspect(|_| phases::mark("id range (written beside the disk image)"));
        if let Err(error) = built {
            return Err(match self.remove_vps(vps_id) {
                Ok(()) => error,
                Err(cleanup) => RuntimeError::RollbackFailed {
                    error: Box::new(error),
                    cleanup: Box::new(cleanup),
                },
            });
        }
        tracing::info!(vps_id, template = spec.template, "created VPS");
        Ok(st)
    }

    /// The VPS's id range: the recorded one, else a newly allocated one, recorded in `st`.
    pub(super) fn allocate_ids(&self, st: &mut VpsState) -> Result<IdRange, RuntimeError> {
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

    fn build(&self, spec: &VpsSpec) -> Result<(), RuntimeError> {
        let vps_id = spec.vps_id.as_str();
        let rootfs = self.rootfs_layout(vps_id, &spec.template);
        rootfs.prepare().map_err(|source| RuntimeError::Rootfs {
            vps_id: vps_id.to_string(),
            source,
        })?;
        phases::mark("rootfs dirs");
        // The cgroup is made by `apply` (a start makes each run's afresh), not here: made here
        // it was removed and made again by the start that follows almost every create.
        self.new_disk(&rootfs.disk_image, disk_bytes(&spec.limits))
            .map_err(|source| RuntimeError::Disk {
                vps_id: vps_id.to_string(),
                source,
            })?;
        phases::mark("disk image");
        Ok(())
    }

    /// Makes `image` an empty ext4 disk of `size_bytes`: a copy of the node's blank image of
    /// that size (see [`super::storage::blank_image`]). Its root directory is given to the
    /// VPS's root when the start helper mounts it. Every caller writes the VPS's state next
    /// (durably, in the same directory), which makes the new disk's rename durable too.
    fn new_disk(&self, image: &Path, size_bytes: u64) -> Result<(), disk::DiskError> {
        let method = self.inner.blank_images.copy_to(image, size_bytes)?;
        tracing::debug!(image = %image.display(), size_bytes, method = method.as_str(), "new disk");
        Ok(())
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
        self.new_disk(&rootfs.disk_image, size).map_err(disk_err)?;
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
    pub(super) fn apply_io(&self, st: &VpsState, cgroup: &VpsCgroup) -> Result<(), RuntimeError> {
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
                .map_err(StateError::io_err("move to trash", &dir))
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
            .start_phases
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

    pub(super) fn kill(
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
    pub(super) fn stop(
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
    pub(super) fn template_halt_signal(&self, st: &VpsState) -> Result<HaltSignal, RuntimeError> {
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

    /// Starts the init; returns it, the halt signal its template says stops it, and its disk's
    /// loop device if the start helper told it. `image_new`: the disk image was made by this
    /// apply (no earlier run's mount can still hold it).
    fn start(
        &self,
        st: &mut VpsState,
        image_new: bool,
        proc_binds: Option<ProcBindsCheck<'_>>,
    ) -> Result<Started, RuntimeError> {
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
        phases::mark("rootfs check, halt signal");
        let disk_err = |source| RuntimeError::Disk {
            vps_id: vps_id.clone(),
            source,
        };
        let mut image_new = image_new;
        // A VPS from before per-VPS disks (or whose image was lost) gets an empty one.
        if disk::image_size(&rootfs.disk_image)
            .map_err(disk_err)?
            .is_none()
        {
            self.new_disk(&rootfs.disk_image, disk_bytes(&st.limits))
                .map_err(disk_err)?;
            image_new = true;
        }
        // After a quick stop/start the previous instance's mount may still be going away;
        // mounting the same ext4 twice would corrupt it. (A scan of every loop device: not
        // needed for an image made just now.)
        if !image_new {
            wait_for_detach(&rootfs.disk_image);
        }
        phases::mark("disk image check");
        // Also restarts lxcfs if it died since the agent started.
        let proc_binds = match proc_binds {
            Some(check) => check
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
            None => self.proc_binds()?,
        };
        phases::mark("lxcfs check");
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
        let (reply, helper_times) = supervisor::start_init(
            &self.config().helper_binary,
            &request,
            self.config().start_timeout,
        )
        .map_err(|source| RuntimeError::Supervisor {
            vps_id: vps_id.to_string(),
            source,
        })?;
        phases::mark_helper(&helper_times);
        Ok((reply.init, halt_signal, reply.disk_device))
    }

    /// The recorded init if it is still the same running process.
    pub(super) fn live_init(&self, st: &VpsState) -> Result<Option<ProcessIdentity>, RuntimeError> {
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

    pub(super) fn observe(&self, st: &VpsState) -> VpsObserved {
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
pub(super) struct RunEnding {
    incarnation: String,
    /// `/proc/<init>/ns/net`, open until the closing counters are read (`None`: not held).
    netns: Option<fs::File>,
}

impl RunEnding {
    /// `None` (closing counters are then not taken) if the cgroup is not there to name the run.
    pub(super) fn begin(vps_id: &str, init: &ProcessIdentity, cgroup: &VpsCgroup) -> Option<Self> {
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
    pub(super) fn close(self, vps_id: &str, cgroup: &VpsCgroup) -> Option<ClosedRun> {
        let cgroup_usage = match cgroup.read_usage() {
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

/// [`Runtime::proc_binds`] running beside the create of a VPS that is to start.
type ProcBindsCheck<'scope> =
    std::thread::ScopedJoinHandle<'scope, Result<Vec<ProcBind>, RuntimeError>>;

/// A started init, the halt signal that stops it, and its disk's loop device (major, minor)
/// if the start helper told it.
type Started = (ProcessIdentity, HaltSignal, Option<(u64, u64)>);

/// Waits (bounded) until no loop device is backed by `image` any more: the VPS's mount
/// namespace, and with it the disk's mount and autoclear loop device, goes away shortly after
/// its last process.
pub(super) fn wait_for_detach(image: &Path) {
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
