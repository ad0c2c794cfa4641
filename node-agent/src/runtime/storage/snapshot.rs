//! Snapshots of a VPS's disk: copies of its image stored beside it on the node
//! (`vps/<id>/snapshots/<name>.img` with `<name>.json` holding when it was taken, its size,
//! the bytes it occupies and how it was copied), so deleting the VPS deletes them.
//!
//! A snapshot of a running VPS is crash-consistent: its cgroup is frozen, the filesystem the
//! VPS sees is synced (`syncfs` on `/proc/<init>/root`: the overlay syncs its upper layer, the
//! ext4 on the loop device, into the image file), the image copied, and the cgroup thawed —
//! always, also when a step fails ([`Frozen`] thaws on drop).
//!
//! Copies are copy-on-write where the state dir's filesystem allows it (`FICLONE`: xfs with
//! reflink, btrfs), else sparse (only the data extents, found with `SEEK_DATA`/`SEEK_HOLE`,
//! through `copy_file_range`). Every copy goes to a temp file that is fsynced and renamed
//! into place, and has a deadline checked between chunks.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};
use serde::{Deserialize, Serialize};

use super::super::cgroups::VpsCgroup;
use super::super::lifecycle::wait_for_detach;
use super::super::spec::validate_vps_id;
use super::super::state::Phase;
use super::super::sys;
use super::super::{Runtime, RuntimeError};
use crate::fsutil::{self, FromIo, PRIVATE_FILE_MODE};

/// Longest snapshot name (the VPS name rule).
pub const MAX_NAME_LEN: usize = 63;
/// How much one `copy_file_range` call copies: the deadline is checked between chunks.
const CHUNK: usize = 16 << 20;
/// How long a freeze may take to settle (cgroup v2 reports it in `cgroup.events`).
const FREEZE_SETTLE: Duration = Duration::from_secs(5);
/// How long one snapshot copy or restore may take before it is abandoned.
pub const COPY_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// The directory of a VPS's snapshots, in its state dir.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// Errors taking, restoring, listing or deleting snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The name breaks the rule.
    #[error("invalid snapshot name {name:?}: {rule}")]
    InvalidName {
        /// The name.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A snapshot of that name exists.
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    /// No snapshot of that name.
    #[error("snapshot {0} not found")]
    NotFound(String),
    /// The VPS is being created, deleted or rebuilt.
    #[error("the VPS is {0}; try again when it is ready")]
    NotReady(&'static str),
    /// The VPS has no disk image yet (never started).
    #[error("the VPS has no disk image at {0}")]
    NoImage(PathBuf),
    /// The copy missed its deadline (the partial copy is removed).
    #[error("copying {from} to {to} did not finish within {limit:?}")]
    Deadline {
        /// The source.
        from: PathBuf,
        /// The target.
        to: PathBuf,
        /// The deadline.
        limit: Duration,
    },
    /// Freezing or thawing the VPS's cgroup failed.
    #[error("{operation} the VPS's cgroup: {message}")]
    Freezer {
        /// `freeze` or `thaw`.
        operation: &'static str,
        /// What failed.
        message: String,
    },
    /// A file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was done.
        operation: &'static str,
        /// On which file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl FromIo for SnapshotError {
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self::Io {
            operation,
            path,
            source,
        }
    }
}

impl From<fsutil::WriteError> for SnapshotError {
    fn from(error: fsutil::WriteError) -> Self {
        Self::Io {
            operation: error.operation,
            path: error.path,
            source: error.source,
        }
    }
}

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    /// `FICLONE`: the copy shares the source's blocks until either is written.
    Reflink,
    /// The data extents only, holes kept.
    Sparse,
}

impl CopyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reflink => "reflink",
            Self::Sparse => "sparse",
        }
    }
}

/// What is kept about a snapshot (`<name>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// When it was taken (Unix milliseconds).
    pub created_at_unix_ms: i64,
    /// The image's apparent size.
    pub size_bytes: u64,
    /// What the copy occupies on the node right after it was taken (st_blocks; a reflink
    /// counts its shared blocks too: the filesystem cannot tell them apart here).
    pub allocated_bytes: u64,
    pub method: CopyMethod,
    /// How long the copy took.
    pub duration_ms: u64,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub snapshot: SnapshotInfo,
    /// Whether the VPS ran before (it is stopped now; the caller starts it again).
    pub was_running: bool,
}

/// The snapshot name rule (the VPS name rule): 1 to 63 of `a-z`, `0-9`, `-`, starting with a
/// letter or digit and not ending with `-`.
pub fn validate_name(name: &str) -> Result<(), SnapshotError> {
    let invalid = |rule| SnapshotError::InvalidName {
        name: name.to_owned(),
        rule,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid("must be 1 to 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid("only a-z, 0-9 and '-'"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid("must not start or end with '-'"));
    }
    Ok(())
}

/// Copies `from` to `to` (a temp file beside it, fsynced, renamed into place, the directory
/// fsynced) by reflink if the filesystem can, else sparsely; gives up at `limit` (a zero
/// limit fails before copying). Nothing is left at `to` or beside it on failure.
pub fn copy_image(from: &Path, to: &Path, limit: Duration) -> Result<CopyMethod, SnapshotError> {
    copy_image_then(from, to, limit, DirSync::Now, |_, _| {
        Ok::<(), SnapshotError>(())
    })
}

/// When the rename that puts a copy in place is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirSync {
    /// The directory is fsynced right after the rename.
    Now,
    /// By the caller's next durable write into the same directory (its fsync of the
    /// directory covers the rename too); until then a crash may leave the old file, or none.
    WithNextWrite,
}

/// [`copy_image`], with `adjust` run on the complete copy (open for reading and writing, at
/// its temp path) before it is fsynced and renamed into place, and the rename made durable
/// as `dir_sync` says.
pub fn copy_image_then<E: From<SnapshotError>>(
    from: &Path,
    to: &Path,
    limit: Duration,
    dir_sync: DirSync,
    adjust: impl FnOnce(&File, &Path) -> Result<(), E>,
) -> Result<CopyMethod, E> {
    let started = Instant::now();
    let file_name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = to.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let (method, target) = copy_to_tmp(from, &tmp, to, started, limit)?;
        adjust(&target, &tmp)?;
        target
            .sync_all()
            .map_err(SnapshotError::io_err("fsync", &tmp))?;
        drop(target);
        fs::rename(&tmp, to).map_err(SnapshotError::io_err("rename into place", to))?;
        if dir_sync == DirSync::Now {
            let dir = to.parent().unwrap_or(Path::new("."));
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(SnapshotError::io_err("fsync dir", dir))?;
        }
        Ok(method)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The copy at `tmp`, not yet fsynced, and how it was made.
fn copy_to_tmp(
    from: &Path,
    tmp: &Path,
    to: &Path,
    started: Instant,
    limit: Duration,
) -> Result<(CopyMethod, File), SnapshotError> {
    let deadline = started + limit;
    let missed = || SnapshotError::Deadline {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        limit,
    };
    if Instant::now() >= deadline {
        return Err(missed());
    }
    let source = File::open(from).map_err(SnapshotError::io_err("open", from))?;
    let size = source
        .metadata()
        .map_err(SnapshotError::io_err("stat", from))?
        .len();
    let target = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(tmp)
        .map_err(SnapshotError::io_err("create", tmp))?;
    let method = match sys::ficlone(target.as_fd(), source.as_fd()) {
        Ok(()) => CopyMethod::Reflink,
        Err(Errno::EOPNOTSUPP | Errno::EXDEV | Errno::EINVAL | Errno::ENOTTY | Errno::ENOSYS) => {
            target
                .set_len(size)
                .map_err(SnapshotError::io_err("size", tmp))?;
            sparse_copy(&source, from, &target, tmp, size, deadline, missed)?;
            CopyMethod::Sparse
        }
        Err(errno) => {
            return Err(SnapshotError::Io {
                operation: "reflink (FICLONE)",
                path: tmp.to_path_buf(),
                source: errno.into(),
            })
        }
    };
    Ok((method, target))
}

/// Copies the data extents of `source` into `target` (already `size` long, all hole).
fn sparse_copy(
    source: &File,
    from: &Path,
    target: &File,
    tmp: &Path,
    size: u64,
    deadline: Instant,
    missed: impl Fn() -> SnapshotError,
) -> Result<(), SnapshotError> {
    use std::os::fd::AsRawFd;
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let mut offset: i64 = 0;
    while offset < size {
        let data = match lseek(source.as_raw_fd(), offset, Whence::SeekData) {
            Ok(data) => data,
            // No data after `offset`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(errno) => return Err(SnapshotError::io_err("seek data", from)(errno.into())),
        };
        let hole = match lseek(source.as_raw_fd(), data, Whence::SeekHole) {
            Ok(hole) => hole,
            Err(errno) => return Err(SnapshotError::io_err("seek hole", from)(errno.into())),
        };
        let mut read_at = data;
        let mut write_at = data;
        while read_at < hole {
            if Instant::now() >= deadline {
                return Err(missed());
            }
            let want = usize::try_from(hole - read_at).unwrap_or(CHUNK).min(CHUNK);
            let copied = match sys::copy_file_range(
                source.as_fd(),
                &mut read_at,
                target.as_fd(),
                &mut write_at,
                want,
            ) {
                Ok(copied) => copied,
                // Across filesystems (before Linux 5.19, or between types) or where the
                // filesystem has no copy_file_range: copy through a buffer.
                Err(Errno::EXDEV | Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => {
                    let copied = copy_through_buffer(source, from, read_at, target, tmp, want)?;
                    let step = i64::try_from(copied).unwrap_or(i64::MAX);
                    read_at += step;
                    write_at += step;
                    copied
                }
                Err(errno) => {
                    return Err(SnapshotError::io_err("copy_file_range to", tmp)(
                        errno.into(),
                    ))
                }
            };
            if copied == 0 {
                // The source shrank under us: what is left reads as zeros (a hole).
                break;
            }
        }
        offset = hole;
    }
    Ok(())
}

/// Copies up to `len` bytes at `offset` from `source` to the same offset of `target` with
/// pread/pwrite; the bytes copied (fewer at the source's end).
fn copy_through_buffer(
    source: &File,
    from: &Path,
    offset: i64,
    target: &File,
    tmp: &Path,
    len: usize,
) -> Result<usize, SnapshotError> {
    use std::os::unix::fs::FileExt;
    let offset = u64::try_from(offset).unwrap_or_default();
    let mut buffer = vec![0u8; len.min(1 << 20)];
    let mut done = 0usize;
    while done < len {
        let want = (len - done).min(buffer.len());
        let at = offset + done as u64;
        let read = source
            .read_at(&mut buffer[..want], at)
            .map_err(SnapshotError::io_err("read", from))?;
        if read == 0 {
            break;
        }
        target
            .write_all_at(&buffer[..read], at)
            .map_err(SnapshotError::io_err("write", tmp))?;
        done += read;
    }
    Ok(done)
}

/// A frozen cgroup, thawed when dropped (also on every error path).
struct Frozen<'a> {
    cgroup: &'a VpsCgroup,
    vps_id: &'a str,
}

impl<'a> Frozen<'a> {
    /// Freezes `cgroup`; `None` if the host has no freezer for it.
    fn freeze(cgroup: &'a VpsCgroup, vps_id: &'a str) -> Result<Option<Self>, SnapshotError> {
        let frozen = Self { cgroup, vps_id };
        match cgroup.set_frozen(true) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(error) => {
                // A partial freeze is thawed by `frozen`'s drop.
                return Err(SnapshotError::Freezer {
                    operation: "freeze",
                    message: error.to_string(),
                });
            }
        }
        frozen.settle();
        Ok(Some(frozen))
    }

    /// Waits (bounded) until cgroup v2 reports every task frozen; v1's freezer write returns
    /// once `freezer.state` is FROZEN.
    fn settle(&self) {
        let Some(events) = self
            .cgroup
            .paths()
            .into_iter()
            .next()
            .map(|dir| dir.join("cgroup.events"))
            .filter(|file| file.exists())
        else {
            return;
        };
        let deadline = Instant::now() + FREEZE_SETTLE;
        let mut pause = Duration::from_millis(1);
        loop {
            match fs::read_to_string(&events) {
                Ok(text) if text.lines().any(|line| line.trim() == "frozen 1") => return,
                Ok(_) => {}
                Err(_) => return,
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    vps_id = self.vps_id,
                    "cgroup not frozen after 5 s; copying anyway"
                );
                return;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(error) = self.cgroup.set_frozen(false) {
            tracing::error!(vps_id = self.vps_id, %error, "thawing the VPS's cgroup");
        }
    }
}

/// `syncfs` on the filesystem the process `pid` sees as `/`.
fn sync_root_of(pid: u32) -> Result<(), SnapshotError> {
    use std::os::fd::AsRawFd;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let dir = File::open(&root).map_err(SnapshotError::io_err("open", &root))?;
    nix::unistd::syncfs(dir.as_raw_fd())
        .map_err(|errno| SnapshotError::io_err("syncfs", &root)(errno.into()))
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Where a VPS's snapshots live.
struct Paths {
    dir: PathBuf,
}

impl Paths {
    fn image(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    fn meta(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn read(&self, name: &str) -> Result<Option<SnapshotInfo>, SnapshotError> {
        let meta = self.meta(name);
        let bytes = match fs::read(&meta) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(SnapshotError::io_err("read", &meta)(error)),
        };
        if !self.image(name).exists() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| SnapshotError::Io {
                operation: "parse",
                path: meta,
                source: io::Error::new(io::ErrorKind::InvalidData, error),
            })
    }
}

impl Runtime {
    fn snapshot_paths(&self, vps_id: &str) -> Paths {
        Paths {
            dir: self.layout().vps_dir(vps_id).join(SNAPSHOT_DIR),
        }
    }

    fn snapshot_err(vps_id: &str) -> impl Fn(SnapshotError) -> RuntimeError + '_ {
        move |source| RuntimeError::Snapshot {
            vps_id: vps_id.to_owned(),
            source,
        }
    }

    /// Takes snapshot `name` of the VPS's disk: frozen and synced while it runs, the copy
    /// bounded by `limit`, the cgroup thawed whatever happens.
    pub fn create_snapshot(
        &self,
        vps_id: &str,
        name: &str,
        limit: Duration,
    ) -> Result<SnapshotInfo, RuntimeError> {
        validate_vps_id(vps_id)?;
        let err = Self::snapshot_err(vps_id);
        validate_name(name).map_err(&err)?;
        let lock = self.vps_lock(vps_id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let st = self
            .load(vps_id)?
            .ok_or_else(|| RuntimeError::NotFound(vps_id.to_owned()))?;
        ready(st.phase).map_err(&err)?;
        let image = self.rootfs_layout(vps_id, &st.template).disk_image;
        if !image.exists() {
            return Err(err(SnapshotError::NoImage(image)));
        }
        let paths = self.snapshot_paths(vps_id);
        if paths.read(name).map_err(&err)?.is_some() {
            return Err(err(SnapshotError::AlreadyExists(name.to_owned())));
        }
        fsutil::create_private_dir_all(&paths.dir)
            .map_err(SnapshotError::from)
            .map_err(&err)?;
        let target = paths.image(name);
        let started = Instant::now();
        let method = match self.live_init(&st)? {
            Some(init) => {
                let cgroup = self.cgroup(vps_id);
                let frozen = Frozen::freeze(&cgroup, vps_id).map_err(&err)?;
                if frozen.is_none() {
                    tracing::warn!(
                        vps_id,
                        "no cgroup freezer: the snapshot is synced, not frozen"
                    );
                }
                sync_root_of(init.pid).map_err(&err)?;
                let method = copy_image(&image, &target, limit).map_err(&err)?;
                drop(frozen);
                method
            }
            None => copy_image(&image, &target, limit).map_err(&err)?,
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let metadata = fs::metadata(&target)
            .map_err(SnapshotError::io_err("stat", &target))
            .map_err(&err)?;
        let info = SnapshotInfo {
            name: name.to_owned(),
            created_at_unix_ms: now_unix_ms(),
            size_bytes: metadata.len(),
            allocated_bytes: metadata.blocks().saturating_mul(512),
            method,
            duration_ms,
        };
        let json = serde_json::to_vec_pretty(&info).unwrap_or_default();
        if let Err(error) = fsutil::write_atomic(&paths.meta(name), &json) {
            let _ = fs::remove_file(&target);
            return Err(err(error.into()));
        }
        tracing::info!(
            vps_id,
            snapshot = name,
            method = method.as_str(),
            duration_ms,
            "snapshot taken"
        );
        Ok(info)
    }

    /// The VPS's snapshots, by name. A VPS that does not exist has none.
    pub fn list_snapshots(&self, vps_id: &str) -> Result<Vec<SnapshotInfo>, RuntimeError> {
        validate_vps_id(vps_id)?;
        let err = Self::snapshot_err(vps_id);
        let paths = self.snapshot_paths(vps_id);
        let entries = match fs::read_dir(&paths.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(err(SnapshotError::io_err("read dir", &paths.dir)(error))),
        };
        let mut snapshots = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            if validate_name(name).is_err() {
                continue;
            }
            if let Some(info) = paths.read(name).map_err(&err)? {
                snapshots.push(info);
            }
        }
        snapshots.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(snapshots)
    }

    /// Replaces the VPS's disk with a copy of snapshot `name` (kept). A running VPS is
    /// stopped first and left stopped: the caller applies its spec to start it again.
    pub fn restore_snapshot(
        &self,
        vps_id: &str,
        name: &str,
        limit: Duration,
    ) -> Result<Restored, RuntimeError> {
        validate_vps_id(vps_id)?;
        let err = Self::snapshot_err(vps_id);
        validate_name(name).map_err(&err)?;
        let lock = self.vps_lock(vps_id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut st = self
            .load(vps_id)?
            .ok_or_else(|| RuntimeError::NotFound(vps_id.to_owned()))?;
        ready(st.phase).map_err(&err)?;
        let paths = self.snapshot_paths(vps_id);
        let snapshot = paths
            .read(name)
            .map_err(&err)?
            .ok_or_else(|| err(SnapshotError::NotFound(name.to_owned())))?;
        let image = self.rootfs_layout(vps_id, &st.template).disk_image;
        let running = self.live_init(&st)?;
        let was_running = running.is_some();
        if was_running {
            let cgroup = self.cgroup(vps_id);
            self.stop(&mut st, running.as_ref(), &cgroup)?;
            tracing::info!(vps_id, snapshot = name, "stopped VPS for a restore");
        }
        // The stopped run's mount may still be letting go of the image.
        wait_for_detach(&image);
        copy_image(&paths.image(name), &image, limit).map_err(&err)?;
        tracing::info!(vps_id, snapshot = name, was_running, "snapshot restored");
        Ok(Restored {
            snapshot,
            was_running,
        })
    }

    /// Removes snapshot `name`; `NotFound` if there is none.
    pub fn delete_snapshot(&self, vps_id: &str, name: &str) -> Result<(), RuntimeError> {
        validate_vps_id(vps_id)?;
        let err = Self::snapshot_err(vps_id);
        validate_name(name).map_err(&err)?;
        let lock = self.vps_lock(vps_id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let paths = self.snapshot_paths(vps_id);
        let meta = paths.meta(name);
        let image = paths.image(name);
        if !meta.exists() && !image.exists() {
            return Err(err(SnapshotError::NotFound(name.to_owned())));
        }
        // The metadata first: a half-deleted snapshot is not listed.
        for path in [&meta, &image] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(err(SnapshotError::io_err("remove", path)(error))),
            }
        }
        tracing::info!(vps_id, snapshot = name, "snapshot deleted");
        Ok(())
    }
}

fn ready(phase: Phase) -> Result<(), SnapshotError> {
    match phase {
        Phase::Ready => Ok(()),
        Phase::Creating => Err(SnapshotError::NotReady("being created")),
        Phase::Deleting => Err(SnapshotError::NotReady("being deleted")),
        Phase::Rebuilding => Err(SnapshotError::NotReady("being rebuilt")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    #[test]
    fn names_follow_the_vps_name_rule() {
        for good in ["a", "before-upgrade", "s1", &"x".repeat(63)] {
            validate_name(good).expect(good);
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a/b", "..", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("disk.img");
        let mut file = File::create(&from).expect("create");
        file.set_len(64 << 20).expect("size");
        file.seek(SeekFrom::Start(8 << 20)).expect("seek");
        file.write_all(b"hello").expect("write");
        file.seek(SeekFrom::Start(40 << 20)).expect("seek");
        file.write_all(&[7u8; 100_000]).expect("write");
        file.sync_all().expect("sync");
        let to = dir.path().join("copy.img");
        let method = copy_image(&from, &to, Duration::from_secs(60)).expect("copy");
        assert_eq!(fs::read(&from).expect("read"), fs::read(&to).expect("read"));
        let meta = fs::metadata(&to).expect("stat");
        assert_eq!(meta.len(), 64 << 20);
        if method == CopyMethod::Sparse {
            assert!(
                meta.blocks() * 512 < 8 << 20,
                "holes were filled: {}",
                meta.blocks()
            );
        }
    }

    #[test]
    fn a_copy_past_its_deadline_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("disk.img");
        fs::write(&from, b"data").expect("write");
        let to = dir.path().join("copy.img");
        let error = copy_image(&from, &to, Duration::ZERO).expect_err("deadline");
        assert!(matches!(error, SnapshotError::Deadline { .. }), "{error:?}");
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("disk.img")]);
    }
}
