//! The VPS root filesystem: an overlayfs of the read-only template (lower) and the VPS's
//! writable layer (upper + work), mounted inside the VPS's own mount namespace together with
//! /proc, a read-only /sys and a minimal /dev, then made the root with `pivot_root`.
//!
//! Nothing is mounted in the host's mount namespace, so nothing can leak there: the mounts go
//! away with the VPS's last process. Issue 3 moves `upper`/`work` onto a per-VPS ext4 loop image
//! (a size-limited disk, like OpenVZ's ploop): that is `prepare` / a new `release` here.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, fchdir, getcwd, pivot_root};
use serde::{Deserialize, Serialize};

/// Host device nodes bind-mounted into every VPS's /dev.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

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

/// The directories that make up a VPS's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RootfsLayout {
    /// The read-only template rootfs (overlay lowerdir).
    pub lower: PathBuf,
    /// The VPS's writable layer (overlay upperdir).
    pub upper: PathBuf,
    /// overlayfs's work dir (same filesystem as `upper`).
    pub work: PathBuf,
    /// The mount point of the merged tree (only mounted inside the VPS's mount namespace).
    pub merged: PathBuf,
}

impl RootfsLayout {
    /// The layout of `vps_dir` on top of `template_rootfs`.
    pub fn new(vps_dir: &Path, template_rootfs: &Path) -> Self {
        Self {
            lower: template_rootfs.to_path_buf(),
            upper: vps_dir.join("overlay").join("upper"),
            work: vps_dir.join("overlay").join("work"),
            merged: vps_dir.join("rootfs"),
        }
    }

    /// Host side: creates the writable layer and mount point (idempotent).
    pub fn prepare(&self) -> Result<(), RootfsError> {
        for path in [&self.lower, &self.upper, &self.work, &self.merged] {
            check_overlay_path(path)?;
        }
        if !self.lower.is_dir() {
            return Err(RootfsError::LowerMissing {
                path: self.lower.clone(),
            });
        }
        for dir in [&self.upper, &self.work, &self.merged] {
            fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
        }
        Ok(())
    }

    fn overlay_options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        )
    }

    /// Container side, in the start helper's child (PID 1 of the new pid namespace, in the new
    /// mount namespace, before exec): mounts everything and pivots into the merged tree.
    /// Afterwards the working directory is the new `/`.
    pub fn enter(&self) -> Result<(), RootfsError> {
        // Nothing below may propagate back to the host.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|source| RootfsError::Mount {
            fstype: "propagation",
            target: PathBuf::from("/"),
            source,
        })?;
        let options = self.overlay_options();
        mount_fs(
            "overlay",
            &self.merged,
            "overlay",
            MsFlags::empty(),
            Some(&options),
        )?;
        let root = &self.merged;
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
        mount_dev(&dev_dir)?;
        pivot_into(root)
    }
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
fn mount_dev(dev: &Path) -> Result<(), RootfsError> {
    mount_fs(
        "tmpfs",
        dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
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
            "lowerdir=/var/lib/paddock/templates/busybox/rootfs,\
             upperdir=/var/lib/paddock/vps/a1/overlay/upper,\
             workdir=/var/lib/paddock/vps/a1/overlay/work"
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
