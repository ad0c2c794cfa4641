//! The VPS root filesystem: an overlayfs of the read-only template, seen through an idmapped
//! mount so it appears owned by the VPS's root (lower), and the VPS's writable layer (upper +
//! work) on its own ext4 disk image ([`super::disk`]).
//!
//! Two halves, both in namespaces that die with the VPS, so nothing is ever mounted in the
//! host's mount namespace and nothing can leak there:
//! - [`RootfsLayout::mount_host_side`] runs in the start helper's private mount namespace as
//!   host root: disk, idmapped template and overlay (host-only filesystems and flags).
//! - [`RootfsLayout::enter`] runs in the VPS's init, as root of the VPS's user namespace: /proc
//!   (nosuid, noexec, nodev) with masked and read-only paths, a read-only /sys with
//!   /sys/firmware masked, a tmpfs /dev with only the allowed nodes, then `pivot_root`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, chown, fchdir, getcwd, pivot_root, Gid, Uid};
use serde::{Deserialize, Serialize};

use super::disk;
use super::idmap::{self, IdRange};
use super::procview::ProcBind;

/// Host device nodes bind-mounted into every VPS's /dev (plus `console`, the VPS's console
/// pty).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Files and directories hidden from the VPS: files get /dev/null, directories an empty
/// read-only tmpfs. Paths relative to the VPS root; missing ones are skipped.
pub const MASKED_PATHS: &[&str] = &[
    "proc/kcore",
    "proc/keys",
    "proc/timer_list",
    "proc/sched_debug",
    "proc/latency_stats",
    "proc/acpi",
    "proc/scsi",
    "sys/firmware",
];

/// Paths made read-only inside the VPS (relative to its root; missing ones are skipped).
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
    Disk(#[from] super::disk::DiskError),
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

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io {
        operation,
        path,
        source,
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
            fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
        }
        Ok(())
    }

    /// In the start helper, as host root, inside its private mount namespace: mounts the disk,
    /// creates the writable layer on it (owned by the VPS's root), mounts the idmapped template
    /// and the overlay on `merged`.
    pub fn mount_host_side(&self, ids: IdRange) -> Result<(), RootfsError> {
        make_private("/")?;
        disk::attach_and_mount(&self.disk_image, &self.disk)?;
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
        chown(&self.upper, root, root_group).map_err(|source| RootfsError::Io {
            operation: "chown",
            path: self.upper.clone(),
            source: io::Error::from(source),
        })?;
        let userns = idmap::mapped_userns(ids)?;
        idmap::idmapped_bind(&self.template, &self.lower, &userns)?;
        drop(userns);
        let options = self.overlay_options();
        mount_fs(
            "overlay",
            &self.merged,
            "overlay",
            MsFlags::empty(),
            Some(&options),
        )
    }

    fn overlay_options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={},xino=off",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        )
    }

    /// Container side, in the VPS's init (PID 1 of its pid namespace, root of its user and
    /// mount namespaces, before exec): mounts /proc, /sys and /dev with their masks and pivots
    /// into the merged tree. Afterwards the working directory is the new `/`.
    pub fn enter(&self, console: &Path, proc_binds: &[ProcBind]) -> Result<(), RootfsError> {
        let root = &self.merged;
        // The overlay came from the helper's (more privileged) namespace, so it is locked here
        // and cannot be pivoted into; a bind mount of it made in this namespace can.
        bind(root, root, MsFlags::MS_REC)?;
        let proc_dir = plain_dir(root, "proc")?;
        mount_fs(
            "proc",
            &proc_dir,
            "proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
            None,
        )?;
        let sys_dir = plain_dir(root, "sys")?;
        mount_fs(
            "sysfs",
            &sys_dir,
            "sysfs",
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
            None,
        )?;
        let dev_dir = plain_dir(root, "dev")?;
        mount_dev(&dev_dir, console)?;
        mask_paths(root)?;
        read_only_paths(root)?;
        bind_proc_view(root, proc_binds)?;
        pivot_into(root)
    }
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
        mount(
            None::<&str>,
            &path,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|source| RootfsError::Mount {
            fstype: "remount read-only",
            target: path.clone(),
            source,
        })?;
    }
    Ok(())
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
        bind(source, &path, MsFlags::empty())?;
        mount(
            None::<&str>,
            &path,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|source| RootfsError::Mount {
            fstype: "remount read-only",
            target: path.clone(),
            source,
        })?;
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

/// `root/name` as a plain directory, created if missing. A symlink (which the tenant could have
/// planted in the writable layer) or any other file type is refused rather than followed.
fn plain_dir(root: &Path, name: &str) -> Result<PathBuf, RootfsError> {
    let path = root.join(name);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_dir() => Ok(path),
        Ok(_) => Err(RootfsError::UnsafePath {
            path,
            reason: "mount point is not a plain directory",
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(&path).map_err(io_err("create dir", &path))?;
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

/// A tmpfs /dev with bind-mounted host nodes, a private devpts instance, /dev/shm and the
/// usual symlinks.
fn mount_dev(dev: &Path, console: &Path) -> Result<(), RootfsError> {
    mount_fs(
        "tmpfs",
        dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    let devices = DEVICES
        .iter()
        .map(|name| (*name, Path::new("/dev").join(name)))
        .chain([("console", console.to_path_buf())]);
    for (name, host) in devices {
        let target = dev.join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&target)
            .map_err(io_err("create device mount point", &target))?;
        mount(
            Some(&host),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| RootfsError::Mount {
            fstype: "bind",
            target: target.clone(),
            source,
        })?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(io_err("create dir", &pts))?;
    mount_fs(
        "devpts",
        &pts,
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(io_err("create dir", &shm))?;
    mount_fs(
        "shm",
        &shm,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        symlink(target, &path).map_err(io_err("symlink", &path))?;
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
    let old_root_dir = File::open("/").map_err(io_err("open", Path::new("/")))?;
    let new_root_dir = File::open(new_root).map_err(io_err("open", new_root))?;
    fchdir(new_root_dir.as_raw_fd()).map_err(pivot_err("fchdir"))?;
    pivot_root(".", ".").map_err(pivot_err("pivot_root"))?;
    fchdir(old_root_dir.as_raw_fd()).map_err(pivot_err("fchdir old root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(pivot_err("detach old root"))?;
    chdir("/").map_err(pivot_err("chdir /"))?;
    drop(old_root_dir);
    drop(new_root_dir);
    let cwd = getcwd().map_err(pivot_err("getcwd"))?;
    if cwd != Path::new("/") {
        return Err(RootfsError::CwdOutsideRoot { cwd });
    }
    Ok(())
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
            layout.overlay_options(),
            "lowerdir=/var/lib/paddock/vps/a1/lower,\
             upperdir=/var/lib/paddock/vps/a1/disk/upper,\
             workdir=/var/lib/paddock/vps/a1/disk/work,xino=off"
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
        assert!(plain_dir(dir.path(), "proc").is_err());
        assert_eq!(
            plain_dir(dir.path(), "sys").expect("created"),
            dir.path().join("sys")
        );
        assert!(dir.path().join("sys").is_dir());
    }
}
