//! The VPS root filesystem: an overlayfs of the read-only template, seen through an idmapped
//! mount so it appears owned by the VPS's root (lower), and the VPS's writable layer (upper +
//! work) on its own ext4 disk image ([`crate::runtime::storage::disk`]).
//!
//! Everything is mounted by host root in the start helper's private mount namespace (owned by
//! the host's user namespace), so nothing is ever mounted in the host's mount namespace, and
//! the VPS gets its own mount namespace only afterwards, as a copy made from inside its user
//! namespace ([`enter_locked_root`]). The kernel locks every mount of such a copy: the VPS's
//! root cannot unmount or move them (which would reveal what they cover), nor clear their
//! read-only/nosuid/nodev/noexec flags, and as its /proc and /sys are not fully visible it
//! cannot mount a fresh, unmasked proc or sysfs either.
//! - [`RootfsLayout::mount_host_side`], in the start helper: disk, idmapped template and overlay
//!   (host-only filesystems and flags), and a tmpfs /dev with only the allowed nodes. The
//!   overlay is given paths relative to the VPS's directory, so the VPS's /proc/mounts names no
//!   host path.
//! - [`RootfsLayout::mount_vps_side`], in a short-lived host-root process that joined the VPS's
//!   pid and net namespaces (proc and sysfs show the namespaces of whoever mounts them): /proc
//!   (nosuid, noexec, nodev) with [`MASKED_PATHS`] and [`READ_ONLY_PATHS`], a read-only /sys,
//!   then `pivot_root` (which also moves the waiting init, in the same mount namespace, into
//!   the new root).
//! - [`enter_locked_root`], in the VPS's init as root of its user namespace: `unshare` of the
//!   mount namespace (the locked copy) and `chdir /`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fchmodat, mknod, FchmodatFlags, Mode, SFlag};
use nix::unistd::{chdir, chown, fchdir, getcwd, pivot_root, Gid, Uid};
use serde::{Deserialize, Serialize};

use super::idmap::{self, IdRange};
use super::procview::ProcBind;
use crate::fsutil::FromIo;
use crate::runtime::process::helper::step;
use crate::runtime::storage::disk;

/// Host device nodes bind-mounted into every VPS's /dev (plus `console`, the VPS's console
/// pty).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Files and directories hidden from the VPS: files get /dev/null, directories an empty
/// read-only tmpfs. Paths relative to the VPS root; missing ones are skipped. All are locked
/// (see the module doc).
///
/// The block device views (`/proc/partitions`, `/sys/block`, `/sys/class/block`,
/// `/sys/dev/block`, `/sys/devices/virtual/block`, the bdi lists) list every VPS's loop device,
/// its IO counters and its backing file (which names the VPS's id), and the ext4/jbd2 views
/// (`/proc/fs/ext4`, `/proc/fs/jbd2`, `/sys/fs/ext4`) every VPS disk's options, journal and
/// write counters, so they are hidden whole.
pub const MASKED_PATHS: &[&str] = &[
    "proc/kcore",
    "proc/keys",
    "proc/timer_list",
    "proc/sched_debug",
    "proc/latency_stats",
    "proc/acpi",
    "proc/scsi",
    "proc/partitions",
    "proc/fs/ext4",
    "proc/fs/jbd2",
    "sys/firmware",
    "sys/block",
    "sys/class/block",
    "sys/class/bdi",
    "sys/dev/block",
    "sys/devices/virtual/block",
    "sys/devices/virtual/bdi",
    "sys/fs/ext4",
];

/// Paths made read-only inside the VPS (relative to its root; missing ones are skipped). The
/// read-only flag is locked (see the module doc).
pub const READ_ONLY_PATHS: &[&str] = &[
    "proc/sys",
    "proc/sysrq-trigger",
    "proc/irq",
    "proc/bus",
    "proc/fs",
];

/// Errors preparing or mounting a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A filesystem operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// Where.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A mount failed.
    #[error("mount {fstype} on {target}: {source}")]
    Mount {
        /// Filesystem type, or `bind`/`propagation`.
        fstype: &'static str,
        /// The mount point.
        target: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// `pivot_root` or detaching the old root failed.
    #[error("{operation} into {new_root}: {source}")]
    Pivot {
        /// `pivot_root`, `umount old root`, `chdir`.
        operation: &'static str,
        /// The new root.
        new_root: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// A path cannot be used (e.g. it would break the overlayfs option string, or a mount point
    /// in the image is not a plain directory).
    #[error("unusable path {path}: {reason}")]
    UnsafePath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The VPS's disk failed.
    #[error(transparent)]
    Disk(#[from] crate::runtime::storage::disk::DiskError),
    /// Setting up the idmapped template failed.
    #[error(transparent)]
    Idmap(#[from] super::idmap::IdmapError),
    /// The template's root filesystem does not exist.
    #[error("template rootfs {path} does not exist")]
    LowerMissing {
        /// The expected template rootfs.
        path: PathBuf,
    },
    /// After pivot_root the working directory was not the new root.
    #[error("working directory is {cwd} after pivot_root, expected /")]
    CwdOutsideRoot {
        /// The actual working directory.
        cwd: PathBuf,
    },
}

impl FromIo for RootfsError {
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self::Io {
            operation,
            path,
            source,
        }
    }
}

/// The files and directories that make up a VPS's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RootfsLayout {
    /// The shared read-only template rootfs (owned by host root on disk).
    pub template: PathBuf,
    /// Mount point of the idmapped view of `template` (the overlay lowerdir).
    pub lower: PathBuf,
    /// The VPS's ext4 disk image.
    pub disk_image: PathBuf,
    /// Mount point of the disk.
    pub disk: PathBuf,
    /// The VPS's writable layer (overlay upperdir), on the disk.
    pub upper: PathBuf,
    /// overlayfs's work dir, on the disk.
    pub work: PathBuf,
    /// The mount point of the merged tree.
    pub merged: PathBuf,
}

impl RootfsLayout {
    /// The layout of `vps_dir` on top of `template_rootfs`.
    pub fn new(vps_dir: &Path, template_rootfs: &Path) -> Self {
        let disk = vps_dir.join("disk");
        Self {
            template: template_rootfs.to_path_buf(),
            lower: vps_dir.join("lower"),
            disk_image: vps_dir.join("disk.img"),
            upper: disk.join("upper"),
            work: disk.join("work"),
            disk,
            merged: vps_dir.join("rootfs"),
        }
    }

    /// Host side: checks the paths and creates the mount points (idempotent).
    pub fn prepare(&self) -> Result<(), RootfsError> {
        for path in [
            &self.template,
            &self.lower,
            &self.disk,
            &self.upper,
            &self.work,
            &self.merged,
        ] {
            check_overlay_path(path)?;
        }
        if !self.template.is_dir() {
            return Err(RootfsError::LowerMissing {
                path: self.template.clone(),
            });
        }
        for dir in [&self.lower, &self.disk, &self.merged] {
            fs::create_dir_all(dir).map_err(RootfsError::io_err("create dir", dir))?;
        }
        Ok(())
    }

    /// In the start helper, as host root, inside its private mount namespace: mounts the disk,
    /// creates the writable layer on it (owned by the VPS's root), mounts the idmapped template
    /// and the overlay on `merged`, and its /dev (with `console` as /dev/console). Returns the
    /// disk's loop device.
    pub fn mount_host_side(&self, ids: IdRange, console: &Path) -> Result<PathBuf, RootfsError> {
        let device = self.mount_root(ids)?;
        step("mount /dev");
        let dev_dir = plain_dir(&self.merged, "dev", ids)?;
        mount_dev(&dev_dir, console, ids)?;
        Ok(device)
    }

    /// The VPS's /dev as a start makes it (a tmpfs with the allowed device nodes, `console`
    /// as /dev/console), mounted at `dir` (an existing directory) instead of inside the
    /// rootfs: a CRIU restore takes it as the external mount it dumped /dev as.
    pub fn mount_dev_at(
        &self,
        dir: &Path,
        ids: IdRange,
        console: &Path,
    ) -> Result<(), RootfsError> {
        mount_dev(dir, console, ids)
    }

    /// [`Self::mount_host_side`] without /dev: the disk, the idmapped template and the
    /// overlay on `merged` (what a CRIU restore is given as the VPS's root; it brings back
    /// the VPS's own mounts from the checkpoint). Returns the disk's loop device.
    pub fn mount_root(&self, ids: IdRange) -> Result<PathBuf, RootfsError> {
        make_private("/")?;
        step("attach the disk");
        let device = disk::attach_and_mount(&self.disk_image, &self.disk)?;
        for dir in [&self.upper, &self.work] {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(RootfsError::Io {
                        operation: "create dir",
                        path: dir.clone(),
                        source,
                    })
                }
            }
        }
        let root = Some(Uid::from_raw(ids.host_base));
        let root_group = Some(Gid::from_raw(ids.host_base));
        // The disk's root too: a disk copied from a blank image comes with host root's.
        for dir in [&self.disk, &self.upper] {
            chown(dir, root, root_group).map_err(|source| RootfsError::Io {
                operation: "chown",
                path: dir.clone(),
                source: io::Error::from(source),
            })?;
        }
        step("idmapped template");
        let userns = idmap::mapped_userns(ids)?;
        idmap::idmapped_bind(&self.template, &self.lower, &userns)?;
        drop(userns);
        // overlayfs shows its layer paths in /proc/mounts as they were given: relative ones,
        // resolved against the working directory, show no host path to the VPS.
        step("overlay");
        let (base, options) = self.overlay_options()?;
        let previous = File::open(".").map_err(RootfsError::io_err("open", Path::new(".")))?;
        let base_dir = File::open(&base).map_err(RootfsError::io_err("open", &base))?;
        fchdir(base_dir.as_raw_fd()).map_err(|source| RootfsError::Io {
            operation: "chdir",
            path: base.clone(),
            source: io::Error::from(source),
        })?;
        let mounted = mount_fs(
            "overlay",
            &self.merged,
            "overlay",
            MsFlags::empty(),
            Some(&options),
        );
        fchdir(previous.as_raw_fd()).map_err(|source| RootfsError::Io {
            operation: "chdir back",
            path: PathBuf::from("."),
            source: io::Error::from(source),
        })?;
        mounted?;
        Ok(device)
    }

    /// The directory the overlay's layers are named relative to (the VPS's directory) and the
    /// overlay's options with those relative names.
    fn overlay_options(&self) -> Result<(PathBuf, String), RootfsError> {
        let base = self
            .merged
            .parent()
            .ok_or(RootfsError::UnsafePath {
                path: self.merged.clone(),
                reason: "has no parent directory",
            })?
            .to_path_buf();
        let relative = |path: &Path| {
            path.strip_prefix(&base)
                .map(Path::to_path_buf)
                .map_err(|_| RootfsError::UnsafePath {
                    path: path.to_path_buf(),
                    reason: "overlay layer outside the VPS's directory",
                })
        };
        let options = format!(
            "lowerdir={},upperdir={},workdir={},xino=off",
            relative(&self.lower)?.display(),
            relative(&self.upper)?.display(),
            relative(&self.work)?.display()
        );
        Ok((base, options))
    }

    /// As host root in the start helper's mount namespace, in a process that joined the VPS's
    /// pid and net namespaces (so proc and sysfs show the VPS's): mounts /proc and /sys with
    /// their masks into the merged tree and pivots into it, which also moves the init waiting
    /// in this mount namespace. `ids` owns mount points it has to create.
    pub fn mount_vps_side(&self, ids: IdRange, proc_binds: &[ProcBind]) -> Result<(), RootfsError> {
        let root = &self.merged;
        let proc_dir = plain_dir(root, "proc", ids)?;
        mount_fs(
            "proc",
            &proc_dir,
            "proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
            None,
        )?;
        let sys_dir = plain_dir(root, "sys", ids)?;
        mount_fs(
            "sysfs",
            &sys_dir,
            "sysfs",
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
            None,
        )?;
        mask_paths(root)?;
        read_only_paths(root)?;
        bind_proc_view(root, proc_binds)?;
        pivot_into(root)
    }
}

/// In the VPS's init, as root of its user namespace, after [`RootfsLayout::mount_vps_side`]
/// pivoted the shared mount namespace: takes a private copy of it, owned by the VPS's user
/// namespace, so every mount in it is locked, and makes `/` the working directory.
pub(crate) fn enter_locked_root() -> Result<(), RootfsError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|source| {
        RootfsError::Pivot {
            operation: "unshare mount namespace",
            new_root: PathBuf::from("/"),
            source,
        }
    })?;
    chdir_root(Path::new("/"))
}

/// `chdir /` and the check that the working directory really is the root (runc's
/// CVE-2024-21626 lesson: no process of a VPS starts with a working directory outside it).
/// `new_root` names the root for messages.
fn chdir_root(new_root: &Path) -> Result<(), RootfsError> {
    let pivot_err = |operation: &'static str| {
        let new_root = new_root.to_path_buf();
        move |source| RootfsError::Pivot {
            operation,
            new_root,
            source,
        }
    };
    chdir("/").map_err(pivot_err("chdir /"))?;
    let cwd = getcwd().map_err(pivot_err("getcwd"))?;
    if cwd != Path::new("/") {
        return Err(RootfsError::CwdOutsideRoot { cwd });
    }
    Ok(())
}

/// Stops mounts below `path` from propagating to or from other namespaces.
pub(crate) fn make_private(path: &str) -> Result<(), RootfsError> {
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|source| RootfsError::Mount {
        fstype: "propagation",
        target: PathBuf::from(path),
        source,
    })
}

/// Hides [`MASKED_PATHS`]: /dev/null over files, an empty read-only tmpfs over directories.
fn mask_paths(root: &Path) -> Result<(), RootfsError> {
    let null = root.join("dev/null");
    for relative in MASKED_PATHS {
        let path = root.join(relative);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            mount_fs(
                "tmpfs",
                &path,
                "tmpfs",
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,mode=555"),
            )?;
        } else {
            bind(&null, &path, MsFlags::empty())?;
        }
    }
    Ok(())
}

/// Makes [`READ_ONLY_PATHS`] read-only bind mounts of themselves.
fn read_only_paths(root: &Path) -> Result<(), RootfsError> {
    for relative in READ_ONLY_PATHS {
        let path = root.join(relative);
        if fs::symlink_metadata(&path).is_err() {
            continue;
        }
        bind(&path, &path, MsFlags::MS_REC)?;
        remount_read_only(&path, MsFlags::MS_NODEV)?;
    }
    Ok(())
}

/// Remounts the bind mount at `path` read-only, nosuid, noexec, plus `extra` flags.
fn remount_read_only(path: &Path, extra: MsFlags) -> Result<(), RootfsError> {
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC
            | extra,
        None::<&str>,
    )
    .map_err(|source| RootfsError::Mount {
        fstype: "remount read-only",
        target: path.to_path_buf(),
        source,
    })
}

/// The VPS's own /proc view ([`super::procview`]): each lxcfs file bind-mounted read-only over
/// its /proc (or /sys) counterpart. A target the kernel does not offer (e.g. /proc/swaps without
/// swap support) is skipped; a target that is not a regular file is refused.
fn bind_proc_view(root: &Path, binds: &[ProcBind]) -> Result<(), RootfsError> {
    for ProcBind { source, target } in binds {
        let path = root.join(target);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_file() => {}
            Ok(_) => {
                return Err(RootfsError::UnsafePath {
                    path,
                    reason: "/proc view target is not a regular file",
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(RootfsError::Io {
                    operation: "stat",
                    path,
                    source,
                })
            }
        }
        // A relative source is the VPS's own /dev/null (an emptied view, like the masks): a
        // device node, so its bind must not be nodev.
        let (source, nodev) = if source.is_relative() {
            (root.join(source), MsFlags::empty())
        } else {
            (source.clone(), MsFlags::MS_NODEV)
        };
        bind(&source, &path, MsFlags::empty())?;
        remount_read_only(&path, nodev)?;
    }
    Ok(())
}

fn bind(source: &Path, target: &Path, extra: MsFlags) -> Result<(), RootfsError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | extra,
        None::<&str>,
    )
    .map_err(|source| RootfsError::Mount {
        fstype: "bind",
        target: target.to_path_buf(),
        source,
    })
}

/// overlayfs options are comma-separated `key=value` pairs with `:`-separated lowerdirs, so
/// paths containing those characters cannot be passed safely.
pub(crate) fn check_overlay_path(path: &Path) -> Result<(), RootfsError> {
    let text = path.to_str().ok_or(RootfsError::UnsafePath {
        path: path.to_path_buf(),
        reason: "not valid UTF-8",
    })?;
    if text.contains([',', ':', '\\', '\n']) {
        return Err(RootfsError::UnsafePath {
            path: path.to_path_buf(),
            reason: "contains ',', ':', '\\' or a newline (overlayfs option separators)",
        });
    }
    if !path.is_absolute() {
        return Err(RootfsError::UnsafePath {
            path: path.to_path_buf(),
            reason: "not absolute",
        });
    }
    Ok(())
}

/// `root/name` as a plain directory, created if missing (owned by the VPS's root). A symlink
/// (which the tenant could have planted in the writable layer) or any other file type is refused
/// rather than followed.
fn plain_dir(root: &Path, name: &str, ids: IdRange) -> Result<PathBuf, RootfsError> {
    let path = root.join(name);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_dir() => Ok(path),
        Ok(_) => Err(RootfsError::UnsafePath {
            path,
            reason: "mount point is not a plain directory",
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(&path).map_err(RootfsError::io_err("create dir", &path))?;
            let owner = Some(Uid::from_raw(ids.host_base));
            let group = Some(Gid::from_raw(ids.host_base));
            chown(&path, owner, group).map_err(|source| RootfsError::Io {
                operation: "chown",
                path: path.clone(),
                source: io::Error::from(source),
            })?;
            Ok(path)
        }
        Err(source) => Err(RootfsError::Io {
            operation: "stat",
            path,
            source,
        }),
    }
}

fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    mount(Some(source), target, Some(fstype), flags, data).map_err(|source| RootfsError::Mount {
        fstype,
        target: target.to_path_buf(),
        source,
    })
}

/// A tmpfs /dev with the allowed device nodes, the console pty bind-mounted, a private devpts
/// instance, /dev/shm and the usual symlinks. Mounted by host root (before the helper joins the
/// VPS's device cgroup, which forbids mknod), so owners are given as host ids: /dev and
/// /dev/shm belong to the VPS's root, new ptys to its group 5 (tty).
fn mount_dev(dev: &Path, console: &Path, ids: IdRange) -> Result<(), RootfsError> {
    let root = ids.host_base;
    let tty_group = ids.host_base + 5;
    mount_fs(
        "tmpfs",
        dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some(&format!("mode=755,size=65536k,uid={root},gid={root}")),
    )?;
    // Nodes of their own (mknod by host root, allowed in a tmpfs the host's user namespace
    // owns) rather than bind mounts of the host's devtmpfs, whose mount options (its size is
    // half the host's RAM) would show in the VPS's /proc/mounts.
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        let rdev = fs::metadata(&host)
            .map_err(RootfsError::io_err("stat device", &host))?
            .rdev();
        let target = dev.join(name);
        mknod(
            &target,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            rdev,
        )
        .map_err(|source| RootfsError::Io {
            operation: "mknod",
            path: target.clone(),
            source: io::Error::from(source),
        })?;
        fchmodat(
            None,
            &target,
            Mode::from_bits_truncate(0o666),
            FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|source| RootfsError::Io {
            operation: "chmod",
            path: target.clone(),
            source: io::Error::from(source),
        })?;
    }
    // The console pty is the host's devpts node of the VPS's console.
    let target = dev.join("console");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(&target)
        .map_err(RootfsError::io_err("create device mount point", &target))?;
    bind(console, &target, MsFlags::empty())?;
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(RootfsError::io_err("create dir", &pts))?;
    mount_fs(
        "devpts",
        &pts,
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&format!(
            "newinstance,ptmxmode=0666,mode=0620,gid={tty_group}"
        )),
    )?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(RootfsError::io_err("create dir", &shm))?;
    mount_fs(
        "shm",
        &shm,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&format!("mode=1777,size=65536k,uid={root},gid={root}")),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        symlink(target, &path).map_err(RootfsError::io_err("symlink", &path))?;
    }
    Ok(())
}

/// `pivot_root(".", ".")` as runc does it: stack the old root on the new one, then detach it, so
/// no host mount stays reachable (or busy) from the VPS.
fn pivot_into(new_root: &Path) -> Result<(), RootfsError> {
    let pivot_err = |operation: &'static str| {
        let new_root = new_root.to_path_buf();
        move |source| RootfsError::Pivot {
            operation,
            new_root,
            source,
        }
    };
    // std opens with O_CLOEXEC; both fds are dropped before this function returns.
    let old_root_dir = File::open("/").map_err(RootfsError::io_err("open", Path::new("/")))?;
    let new_root_dir = File::open(new_root).map_err(RootfsError::io_err("open", new_root))?;
    fchdir(new_root_dir.as_raw_fd()).map_err(pivot_err("fchdir"))?;
    pivot_root(".", ".").map_err(pivot_err("pivot_root"))?;
    fchdir(old_root_dir.as_raw_fd()).map_err(pivot_err("fchdir old root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(pivot_err("detach old root"))?;
    drop(old_root_dir);
    drop(new_root_dir);
    chdir_root(new_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_options() {
        let layout = RootfsLayout::new(
            Path::new("/var/lib/paddock/vps/a1"),
            Path::new("/var/lib/paddock/templates/busybox/rootfs"),
        );
        assert_eq!(
            layout.overlay_options().expect("options"),
            (
                PathBuf::from("/var/lib/paddock/vps/a1"),
                "lowerdir=lower,upperdir=disk/upper,workdir=disk/work,xino=off".to_string()
            )
        );
        assert_eq!(layout.merged, Path::new("/var/lib/paddock/vps/a1/rootfs"));
    }

    #[test]
    fn rejects_paths_that_break_overlay_options() {
        assert!(check_overlay_path(Path::new("/a,b")).is_err());
        assert!(check_overlay_path(Path::new("/a:b")).is_err());
        assert!(check_overlay_path(Path::new("relative")).is_err());
        assert!(check_overlay_path(Path::new("/var/lib/paddock")).is_ok());
    }

    #[test]
    fn plain_dir_refuses_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        symlink("/etc", dir.path().join("proc")).expect("symlink");
        let ids = IdRange {
            host_base: nix::unistd::getuid().as_raw(),
            count: 1,
        };
        assert!(plain_dir(dir.path(), "proc", ids).is_err());
        assert_eq!(
            plain_dir(dir.path(), "sys", ids).expect("created"),
            dir.path().join("sys")
        );
        assert!(dir.path().join("sys").is_dir());
    }
}
