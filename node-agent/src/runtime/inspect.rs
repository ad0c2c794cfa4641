//! What exists for a VPS and the handles into a running one: status, list, exec, console,
//! and the paths metering and networking need.

use std::fs;
use std::path::PathBuf;
use std::sync::PoisonError;

use super::isolation::idmap::IdRange;
use super::process::console;
use super::process::exec::{self, ExecRequest, ResizeSender, TtySize};
use super::spec::{invalid, validate_command, validate_vps_id};
use super::state::{ClosedRun, Phase};
use super::storage::disk;
use super::usage::CounterFiles;
use super::{CgroupFiles, ObservedState, Runtime, RuntimeError, VpsObserved};

impl Runtime {
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
        self.cgroup_files(vps_id).paths
    }

    /// Host paths of the VPS's usage counter files, each in the one hierarchy that has it
    /// (they may not exist).
    pub fn counter_files(&self, vps_id: &str) -> CounterFiles {
        self.cgroup_files(vps_id).counters
    }

    fn cgroup_files(&self, vps_id: &str) -> CgroupFiles {
        let mut cache = self
            .inner
            .cgroup_paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache
            .entry(vps_id.to_string())
            .or_insert_with(|| {
                let cgroup = self.cgroup(vps_id);
                CgroupFiles {
                    paths: cgroup.paths(),
                    counters: cgroup.counter_files(),
                }
            })
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
}
