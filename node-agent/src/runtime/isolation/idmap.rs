//! User-id isolation of a VPS: every VPS gets its own, non-overlapping range of 65536 host ids
//! (allocated here and persisted in `state_dir/idmap.json`), mapped to ids 0..65535 of its user
//! namespace, so root inside is an unprivileged id outside.
//!
//! The shared read-only template is owned by host root on disk; it appears owned by the VPS's
//! root through an idmapped mount (`mount_setattr(MOUNT_ATTR_IDMAP)`), so it is never copied or
//! chowned per VPS and stays shared in the page cache.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe2, ForkResult};
use serde::{Deserialize, Serialize};

use crate::fsutil::FromIo;
use crate::runtime::state;
use crate::runtime::sys;

/// Ids per VPS: a full 16-bit range, so every distribution's users and groups fit.
pub const ID_RANGE_SIZE: u32 = 65_536;
/// Default first host id handed out to VPSes (above the usual system and login ids).
pub const DEFAULT_ID_BASE: u32 = 100_000;

/// Errors allocating id ranges or setting up user namespaces.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    /// A file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// Where.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The allocation table could not be read or written.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The allocation table is corrupt.
    #[error("decode {path}: {source}")]
    Decode {
        /// The table.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// No free range is left below the top of the 32-bit id space.
    #[error("no free {ID_RANGE_SIZE}-id range left above {base}")]
    Exhausted {
        /// The configured base.
        base: u32,
    },
    /// A system call failed.
    #[error("{operation}: {source}")]
    Sys {
        /// The call.
        operation: &'static str,
        /// The errno.
        source: Errno,
    },
}

fn sys_err(operation: &'static str) -> impl FnOnce(Errno) -> IdmapError {
    move |source| IdmapError::Sys { operation, source }
}

impl FromIo for IdmapError {
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self::Io {
            operation,
            path,
            source,
        }
    }
}

/// A contiguous range of host ids mapped to ids `0..count` inside a VPS (uids and gids alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// The host id of the VPS's root.
    pub host_base: u32,
    /// How many ids are mapped.
    pub count: u32,
}

impl IdRange {
    /// The `uid_map` / `gid_map` line.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_base, self.count)
    }

    fn end(&self) -> u64 {
        u64::from(self.host_base) + u64::from(self.count)
    }

    /// Whether the two ranges share any id.
    pub fn overlaps(&self, other: &IdRange) -> bool {
        u64::from(self.host_base) < other.end() && u64::from(other.host_base) < self.end()
    }
}

/// Parses `/etc/subuid` / `/etc/subgid` (`name:start:count` lines), ignoring malformed lines.
pub fn parse_subid(content: &str) -> Vec<IdRange> {
    content
        .lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let _owner = fields.next()?;
            let host_base = fields.next()?.parse().ok()?;
            let count = fields.next()?.parse().ok()?;
            Some(IdRange { host_base, count })
        })
        .collect()
}

/// Hands out non-overlapping ranges, one per VPS, persisted in `state_dir/idmap.json`.
pub(crate) struct IdAllocator {
    path: PathBuf,
    base: u32,
    /// Ranges delegated to host users in /etc/subuid and /etc/subgid: never handed out.
    reserved: Vec<IdRange>,
    lock: Mutex<()>,
}

impl IdAllocator {
    /// The allocator for `state_dir`, avoiding the host's subordinate id ranges.
    pub fn new(state_dir: &Path, base: u32) -> Self {
        let reserved = ["/etc/subuid", "/etc/subgid"]
            .iter()
            .filter_map(|file| fs::read_to_string(file).ok())
            .flat_map(|content| parse_subid(&content))
            .collect();
        Self {
            path: state_dir.join("idmap.json"),
            base,
            reserved,
            lock: Mutex::new(()),
        }
    }

    fn load(&self) -> Result<BTreeMap<String, IdRange>, IdmapError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| IdmapError::Decode {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(IdmapError::Io {
                operation: "read",
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn save(&self, table: &BTreeMap<String, IdRange>) -> Result<(), IdmapError> {
        let bytes = serde_json::to_vec_pretty(table).map_err(|source| IdmapError::Decode {
            path: self.path.clone(),
            source,
        })?;
        Ok(state::write_atomic(&self.path, &bytes)?)
    }

    /// The VPS's range: the one already recorded, else the lowest free slot (persisted before
    /// it is returned).
    pub fn allocate(&self, vps_id: &str) -> Result<IdRange, IdmapError> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut table = self.load()?;
        if let Some(range) = table.get(vps_id) {
            return Ok(*range);
        }
        let range = pick_free(self.base, &self.reserved, table.values())
            .ok_or(IdmapError::Exhausted { base: self.base })?;
        table.insert(vps_id.to_string(), range);
        self.save(&table)?;
        Ok(range)
    }

    /// Gives the VPS exactly `range` (a restored checkpoint's user namespace keeps the id maps
    /// it had): true if the VPS has it now, false if it already has another or `range`
    /// overlaps a reserved or another VPS's range (nothing is recorded then).
    pub fn allocate_exact(&self, vps_id: &str, range: IdRange) -> Result<bool, IdmapError> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut table = self.load()?;
        if let Some(current) = table.get(vps_id) {
            return Ok(*current == range);
        }
        let taken = self.reserved.iter().any(|r| r.overlaps(&range))
            || table.values().any(|r| r.overlaps(&range));
        if taken {
            return Ok(false);
        }
        table.insert(vps_id.to_string(), range);
        self.save(&table)?;
        Ok(true)
    }

    /// Frees the VPS's range; absent is fine.
    pub fn release(&self, vps_id: &str) -> Result<(), IdmapError> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut table = self.load()?;
        if table.remove(vps_id).is_some() {
            self.save(&table)?;
        }
        Ok(())
    }

    /// Frees the ranges of VPSes for which `exists` is false (left by a crash).
    pub fn retain(&self, exists: impl Fn(&str) -> bool) -> Result<(), IdmapError> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut table = self.load()?;
        let before = table.len();
        table.retain(|vps_id, _| exists(vps_id));
        if table.len() != before {
            self.save(&table)?;
        }
        Ok(())
    }
}

/// The lowest `base + n * ID_RANGE_SIZE` range overlapping neither `reserved` nor `used`.
fn pick_free<'a>(
    base: u32,
    reserved: &[IdRange],
    used: impl Iterator<Item = &'a IdRange> + Clone,
) -> Option<IdRange> {
    (0u64..)
        .map(|n| u64::from(base) + n * u64::from(ID_RANGE_SIZE))
        .take_while(|start| start + u64::from(ID_RANGE_SIZE) <= u64::from(u32::MAX))
        .filter_map(|start| u32::try_from(start).ok())
        .map(|host_base| IdRange {
            host_base,
            count: ID_RANGE_SIZE,
        })
        .find(|candidate| {
            !reserved.iter().any(|r| r.overlaps(candidate))
                && !used.clone().any(|r| r.overlaps(candidate))
        })
}

/// Writes `range` as the uid and gid map of process `pid` (which must have just entered a new
/// user namespace). The writer must be privileged in the parent namespace.
pub(crate) fn write_id_maps(pid: i32, range: IdRange) -> Result<(), IdmapError> {
    for file in ["uid_map", "gid_map"] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        let mut map = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(IdmapError::io_err("open", &path))?;
        map.write_all(range.map_line().as_bytes())
            .map_err(IdmapError::io_err("write", &path))?;
    }
    Ok(())
}

/// A user namespace with `range` mapped, for idmapped mounts: a short-lived child unshares it,
/// its namespace file is opened, and the child exits. Call from a single-threaded helper.
pub(crate) fn mapped_userns(range: IdRange) -> Result<OwnedFd, IdmapError> {
    let (ready_read, ready_write) = pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe2"))?;
    let (hold_read, hold_write) = pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe2"))?;
    // SAFETY: the callers (the start helper) are single-threaded, so the child is a complete
    // copy of the process; it only unshares, writes and reads pipes, and _exits.
    match unsafe { fork() }.map_err(sys_err("fork"))? {
        ForkResult::Child => {
            drop(ready_read);
            drop(hold_write);
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let mut ready = File::from(ready_write);
            let _ = ready.write_all(if ok { b"1" } else { b"0" });
            drop(ready);
            let mut hold = File::from(hold_read);
            let mut byte = [0u8; 1];
            let _ = hold.read(&mut byte);
            crate::runtime::sys::exit_now(0)
        }
        ForkResult::Parent { child } => {
            drop(ready_write);
            drop(hold_read);
            let mut byte = [0u8; 1];
            let got = File::from(ready_read).read(&mut byte);
            let result = match got {
                Ok(1) if byte[0] == b'1' => write_id_maps(child.as_raw(), range).and_then(|()| {
                    let path = PathBuf::from(format!("/proc/{child}/ns/user"));
                    File::open(&path)
                        .map(OwnedFd::from)
                        .map_err(IdmapError::io_err("open", &path))
                }),
                _ => Err(IdmapError::Sys {
                    operation: "unshare user namespace",
                    source: Errno::EPERM,
                }),
            };
            drop(hold_write);
            let _ = waitpid(child, None);
            result
        }
    }
}

fn c_path(path: &Path) -> Result<CString, IdmapError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| IdmapError::Io {
        operation: "encode path",
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

/// Mounts a read-only, nosuid, nodev copy of `source` at `target`, with file ownership shifted
/// through `userns` (on-disk id `n` appears as the host id that `n` maps to in `userns`).
pub(crate) fn idmapped_bind(
    source: &Path,
    target: &Path,
    userns: &OwnedFd,
) -> Result<(), IdmapError> {
    let source_c = c_path(source)?;
    let target_c = c_path(target)?;
    let tree = sys::open_tree_clone(&source_c).map_err(sys_err("open_tree (clone template)"))?;
    sys::mount_setattr_idmap(tree.as_fd(), userns.as_fd())
        .map_err(sys_err("mount_setattr (idmap template)"))?;
    sys::move_mount(tree.as_fd(), &target_c).map_err(sys_err("move_mount (idmapped template)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_lines_and_overlap() {
        let a = IdRange {
            host_base: 100_000,
            count: ID_RANGE_SIZE,
        };
        assert_eq!(a.map_line(), "0 100000 65536\n");
        let b = IdRange {
            host_base: 165_536,
            count: ID_RANGE_SIZE,
        };
        assert!(!a.overlaps(&b));
        let c = IdRange {
            host_base: 165_535,
            count: 1,
        };
        assert!(a.overlaps(&c));
        assert!(!b.overlaps(&c));
    }

    #[test]
    fn parses_subid_files() {
        let ranges = parse_subid("alice:100000:65536\n# junk\nbob:231072:65536\nbad:x:1\n");
        assert_eq!(
            ranges,
            vec![
                IdRange {
                    host_base: 100_000,
                    count: 65_536
                },
                IdRange {
                    host_base: 231_072,
                    count: 65_536
                },
            ]
        );
    }

    #[test]
    fn allocates_lowest_free_slot_avoiding_subids_and_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut allocator = IdAllocator::new(dir.path(), DEFAULT_ID_BASE);
        // A host user owns the first slot.
        allocator.reserved = vec![IdRange {
            host_base: 100_000,
            count: 65_536,
        }];
        let a = allocator.allocate("a").expect("a");
        assert_eq!(a.host_base, 165_536);
        let b = allocator.allocate("b").expect("b");
        assert_eq!(b.host_base, 231_072);
        assert_eq!(allocator.allocate("a").expect("again"), a);
        allocator.release("a").expect("release");
        let c = allocator.allocate("c").expect("c");
        assert_eq!(c.host_base, 165_536, "freed slot is reused");
        let reloaded = IdAllocator::new(dir.path(), DEFAULT_ID_BASE);
        assert_eq!(reloaded.load().expect("load").len(), 2);
        reloaded.retain(|vps_id| vps_id == "b").expect("retain");
        assert_eq!(
            reloaded.load().expect("load").keys().collect::<Vec<_>>(),
            vec!["b"]
        );
    }

    #[test]
    fn exhaustion_is_reported() {
        let used = [IdRange {
            host_base: u32::MAX - ID_RANGE_SIZE,
            count: ID_RANGE_SIZE,
        }];
        assert_eq!(pick_free(u32::MAX - ID_RANGE_SIZE, &[], used.iter()), None);
    }
}
