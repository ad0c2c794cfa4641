//! The runtime API's error.

use std::io;
use std::path::PathBuf;

use super::cgroups::CgroupError;
use super::checkpoint::CheckpointError;
use super::isolation::idmap::IdmapError;
use super::isolation::procview;
use super::isolation::rootfs::RootfsError;
use super::process::identity::ProcessError;
use super::process::supervisor::SupervisorError;
use super::state::StateError;
use super::storage::disk::DiskError;
use super::storage::disk_growth::DiskGrowthError;
use super::storage::snapshot::SnapshotError;
use crate::template::metadata::MetadataError;

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
    /// A snapshot of the VPS's disk failed or was refused.
    #[error("vps {vps_id}: {source}")]
    Snapshot {
        /// The VPS.
        vps_id: String,
        /// What failed.
        source: SnapshotError,
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
    /// Taking, checking or restoring a backup failed (nothing of the VPS was changed).
    #[error("vps {vps_id}: {source}")]
    Backup {
        /// The VPS.
        vps_id: String,
        /// What failed (boxed: it is large and rare).
        source: Box<super::storage::backup::BackupError>,
    },
    /// Checkpointing the VPS with CRIU, or restoring it from a checkpoint, failed or was
    /// refused (a refused dump leaves the VPS running).
    #[error("vps {vps_id}: {source}")]
    Checkpoint {
        /// The VPS.
        vps_id: String,
        /// What failed.
        source: CheckpointError,
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
