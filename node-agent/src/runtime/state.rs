//! The runtime's on-disk state: the directory layout under `state_dir`, and each VPS's
//! `state.json` journal, written atomically (tmp + fsync + rename + fsync dir) so that a crash
//! at any point leaves either the old or the new record.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::usage::IoCounters;
use super::{Limits, Power};
use crate::fsutil::FromIo;
use crate::runtime::isolation::idmap::IdRange;
use crate::runtime::process::identity::ProcessIdentity;
use crate::template::metadata::HaltSignal;

/// Errors reading or writing runtime state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A filesystem operation on the state directory failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done (`create dir`, `write`, `rename`, ...).
        operation: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `state.json` exists but cannot be decoded.
    #[error("decode {path}: {source}")]
    Decode {
        /// The state file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The record could not be encoded (should not happen).
    #[error("encode state for {path}: {source}")]
    Encode {
        /// The state file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Attaches the operation and path to an `io::Error`.
impl FromIo for StateError {
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self::Io {
            operation,
            path,
            source,
        }
    }
}

/// Where a multi-step operation on a VPS stands: the intent marker that makes create and delete
/// restartable after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Create started; rootfs dirs and cgroup may be half-built. Rolled back on recovery.
    Creating,
    /// Fully created; the VPS may be running or stopped.
    Ready,
    /// Delete started; processes, cgroup and files may be partly gone. Finished on recovery.
    Deleting,
    /// Rebuild started: the VPS is stopped and its disk may be half re-made. The next apply
    /// (which carries the same rebuild generation) redoes it.
    Rebuilding,
}

/// The persisted record of one VPS (`state_dir/vps/<id>/state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VpsState {
    /// Format version of this record.
    pub version: u32,
    pub vps_id: String,
    pub phase: Phase,
    pub hostname: String,
    pub template: String,
    pub limits: Limits,
    /// The last desired power state the runtime was asked for.
    pub power: Power,
    /// The running init, if the runtime started one and has not seen it stop.
    pub init: Option<ProcessIdentity>,
    /// The signal that halts `init` cleanly, resolved from the template when the init was last
    /// started (so a template rebuilt or removed under a running VPS cannot change it). `None`
    /// in records from before halt signals: resolved from the template at stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt_signal: Option<HaltSignal>,
    /// The host id range mapped into the VPS's user namespace.
    #[serde(default)]
    pub ids: Option<IdRange>,
    /// The last rebuild generation carried out.
    #[serde(default)]
    pub rebuild_generation: u64,
    /// The last restart generation carried out (see [`super::VpsSpec::restart_generation`]).
    #[serde(default)]
    pub restart_generation: u64,
    /// Intent marker of a disk growth to this many bytes that is not known to have finished
    /// (the image may be extended while its filesystem is not yet). Written before the image
    /// is touched, cleared after the filesystem grew; a set marker is redone (growth is
    /// idempotent) by the next apply and when the agent starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_grow_to: Option<u64>,
    /// The final counters of the last run a stop ended, for the meter to report what that run
    /// used after its last sample. Replaced at every stop; `None` before the first one, in
    /// records from before closing counters, and when they could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_run: Option<ClosedRun>,
}

/// The counters of a run as they stood when it ended: read after its init exited and before
/// its cgroup (and, for network, its veth) went away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedRun {
    /// The run's incarnation, as the meter named it (`<cgroup inode>-<init start time>`).
    pub incarnation: String,
    /// Cumulative CPU time of the run.
    pub cpu_usage_ns: u64,
    /// The highest memory charge of the run.
    pub memory_peak_bytes: u64,
    /// Cumulative IO on the VPS's disk.
    pub io: IoCounters,
    /// Bytes the VPS received on its port (0 without a port).
    pub net_rx_bytes: u64,
    /// Bytes the VPS sent on its port (0 without a port).
    pub net_tx_bytes: u64,
    /// When the counters were read (after the init had exited).
    pub ended_at_unix_ms: i64,
}

/// Current `VpsState::version`.
pub(crate) const STATE_VERSION: u32 = 2;

/// The directory layout under `state_dir`.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub state_dir: PathBuf,
}

impl Layout {
    pub fn vps_root(&self) -> PathBuf {
        self.state_dir.join("vps")
    }

    pub fn templates_root(&self) -> PathBuf {
        self.state_dir.join("templates")
    }

    /// Where deleted VPS directories are moved before being removed, so a half-removed tree is
    /// never mistaken for a VPS.
    pub fn trash_root(&self) -> PathBuf {
        self.state_dir.join("trash")
    }

    pub fn vps_dir(&self, vps_id: &str) -> PathBuf {
        self.vps_root().join(vps_id)
    }

    pub fn state_file(&self, vps_id: &str) -> PathBuf {
        self.vps_dir(vps_id).join("state.json")
    }

    pub fn console_log(&self, vps_id: &str) -> PathBuf {
        self.vps_dir(vps_id).join("console.log")
    }

    /// A template's directory: its `rootfs` and its metadata file.
    pub fn template_dir(&self, template: &str) -> PathBuf {
        self.templates_root().join(template)
    }

    pub fn template_rootfs(&self, template: &str) -> PathBuf {
        self.template_dir(template).join("rootfs")
    }

    /// Creates the top-level directories.
    pub fn create_dirs(&self) -> Result<(), StateError> {
        for dir in [
            self.state_dir.clone(),
            self.vps_root(),
            self.templates_root(),
            self.trash_root(),
        ] {
            create_private_dir(&dir)?;
        }
        Ok(())
    }

    /// Narrows what an older agent left readable by others (tenant disks, state files,
    /// logs): the state dir and its top-level entries, and each VPS's directory and files,
    /// become root-only. Template trees keep their modes (they are the VPSes' `/`).
    pub fn restrict_existing(&self) -> Result<(), StateError> {
        let restrict = |dir: &Path| {
            crate::fsutil::restrict_entries(dir).map_err(|e| StateError::Io {
                operation: e.operation,
                path: e.path,
                source: e.source,
            })
        };
        restrict(&self.state_dir)?;
        for root in [self.vps_root(), self.trash_root()] {
            if !root.is_dir() {
                continue;
            }
            restrict(&root)?;
            for (_, dir) in subdirs(&root)? {
                restrict(&dir)?;
            }
        }
        Ok(())
    }

    /// The ids of all VPS directories (with or without a state file).
    pub fn vps_ids(&self) -> Result<Vec<String>, StateError> {
        let mut ids: Vec<String> = subdirs(&self.vps_root())?
            .into_iter()
            .filter_map(|(name, _)| name)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Reads a VPS's state; `Ok(None)` if there is no state file.
    pub fn read_state(&self, vps_id: &str) -> Result<Option<VpsState>, StateError> {
        let path = self.state_file(vps_id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    operation: "read",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Decode { path, source })
    }

    /// Writes a VPS's state atomically and durably.
    pub fn write_state(&self, state: &VpsState) -> Result<(), StateError> {
        let path = self.state_file(&state.vps_id);
        let bytes = serde_json::to_vec_pretty(state).map_err(|source| StateError::Encode {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes)
    }
}

/// The directories directly in `root`: their names (`None` when not UTF-8) and paths.
fn subdirs(root: &Path) -> Result<Vec<(Option<String>, PathBuf)>, StateError> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(root).map_err(StateError::io_err("read dir", root))? {
        let entry = entry.map_err(StateError::io_err("read dir", root))?;
        let path = entry.path();
        if entry
            .file_type()
            .map_err(StateError::io_err("stat", &path))?
            .is_dir()
        {
            dirs.push((entry.file_name().to_str().map(str::to_string), path));
        }
    }
    Ok(dirs)
}

/// Creates `dir` (and missing parents) root-only, narrowing it if it existed wider.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    crate::fsutil::create_private_dir_all(dir).map_err(|e| StateError::Io {
        operation: e.operation,
        path: e.path,
        source: e.source,
    })
}

/// Replaces `path` with `bytes` durably ([`crate::fsutil::write_atomic`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    crate::fsutil::write_atomic(path, bytes).map_err(|e| StateError::Io {
        operation: e.operation,
        path: e.path,
        source: e.source,
    })
}

/// Removes a directory tree; absent is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<(), StateError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Io {
            operation: "remove tree",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(vps_id: &str) -> VpsState {
        VpsState {
            version: STATE_VERSION,
            vps_id: vps_id.into(),
            phase: Phase::Ready,
            hostname: "web1".into(),
            template: "busybox".into(),
            limits: Limits {
                vcpus: 1.5,
                memory_bytes: 64 << 20,
                pids_max: 100,
                ..Limits::default()
            },
            power: Power::Running,
            init: Some(ProcessIdentity {
                pid: 42,
                start_time: 7,
                boot_id: "b".into(),
            }),
            halt_signal: Some(HaltSignal::SYSVINIT),
            ids: None,
            rebuild_generation: 0,
            restart_generation: 0,
            disk_grow_to: None,
            closed_run: None,
        }
    }

    #[test]
    fn state_round_trips_and_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout {
            state_dir: dir.path().to_path_buf(),
        };
        layout.create_dirs().expect("dirs");
        assert_eq!(layout.read_state("a").expect("read"), None);
        fs::create_dir(layout.vps_dir("a")).expect("mkdir");
        let state = sample("a");
        layout.write_state(&state).expect("write");
        assert_eq!(layout.read_state("a").expect("read"), Some(state.clone()));
        let mut next = state;
        next.phase = Phase::Deleting;
        layout.write_state(&next).expect("overwrite");
        assert_eq!(layout.read_state("a").expect("read"), Some(next));
        assert_eq!(layout.vps_ids().expect("ids"), vec!["a".to_string()]);
        let leftovers: Vec<_> = fs::read_dir(layout.vps_dir("a"))
            .expect("read dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left behind");
    }

    #[test]
    fn records_from_before_halt_signals_still_decode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout {
            state_dir: dir.path().to_path_buf(),
        };
        layout.create_dirs().expect("dirs");
        fs::create_dir(layout.vps_dir("old")).expect("mkdir");
        let mut record = serde_json::to_value(sample("old")).expect("encode");
        let fields = record.as_object_mut().expect("object");
        assert_eq!(fields.remove("halt_signal"), Some("SIGPWR".into()));
        fs::write(
            layout.state_file("old"),
            serde_json::to_vec(&record).expect("encode"),
        )
        .expect("write");
        let state = layout.read_state("old").expect("read").expect("present");
        assert_eq!(state.halt_signal, None);
        assert_eq!(state.init, sample("old").init);

        // No halt signal is written as no field at all, as before.
        layout.write_state(&state).expect("write");
        let text = fs::read_to_string(layout.state_file("old")).expect("read");
        assert!(!text.contains("halt_signal"), "{text}");
    }

    #[test]
    fn disk_growth_marker_round_trips_and_is_absent_when_unset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout {
            state_dir: dir.path().to_path_buf(),
        };
        layout.create_dirs().expect("dirs");
        fs::create_dir(layout.vps_dir("g")).expect("mkdir");
        let mut state = sample("g");
        layout.write_state(&state).expect("write");
        let text = fs::read_to_string(layout.state_file("g")).expect("read");
        assert!(!text.contains("disk_grow_to"), "{text}");
        state.disk_grow_to = Some(3 << 30);
        layout.write_state(&state).expect("write");
        assert_eq!(
            layout.read_state("g").expect("read").expect("present"),
            state
        );
    }

    #[test]
    fn closed_run_round_trips_and_older_records_have_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout {
            state_dir: dir.path().to_path_buf(),
        };
        layout.create_dirs().expect("dirs");
        fs::create_dir(layout.vps_dir("c")).expect("mkdir");
        // A record written before closing counters existed.
        let record = serde_json::to_value(sample("c")).expect("encode");
        assert!(record.get("closed_run").is_none(), "{record}");
        fs::write(
            layout.state_file("c"),
            serde_json::to_vec(&record).expect("encode"),
        )
        .expect("write");
        let mut state = layout.read_state("c").expect("read").expect("present");
        assert_eq!(state.closed_run, None);
        state.closed_run = Some(ClosedRun {
            incarnation: "4242-777".into(),
            cpu_usage_ns: 3_000_000_000,
            memory_peak_bytes: 64 << 20,
            io: IoCounters {
                read_bytes: 1,
                write_bytes: 2,
                read_ops: 3,
                write_ops: 4,
            },
            net_rx_bytes: 5,
            net_tx_bytes: 6,
            ended_at_unix_ms: 1_700_000_000_000,
        });
        layout.write_state(&state).expect("write");
        assert_eq!(
            layout.read_state("c").expect("read").expect("present"),
            state
        );
    }

    #[test]
    fn corrupt_state_is_reported_with_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout {
            state_dir: dir.path().to_path_buf(),
        };
        layout.create_dirs().expect("dirs");
        fs::create_dir(layout.vps_dir("b")).expect("mkdir");
        fs::write(layout.state_file("b"), b"{not json").expect("write");
        let err = layout.read_state("b").expect_err("must fail");
        assert!(err.to_string().contains("state.json"), "{err}");
    }
}
