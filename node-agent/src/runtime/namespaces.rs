//! The kernel namespaces of a VPS: which ones it gets (unshared by the start helper before it
//! forks the init) and joining them from the exec helper through `/proc/<init>/ns/*`.
//!
//! Issue 3 adds the user namespace: it is unshared first (and joined first), with the
//! VPS's uid/gid range mapped by the helper's parent before the child continues.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sched::{setns, unshare, CloneFlags};

/// Errors creating or joining namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// `unshare(2)` failed.
    #[error("unshare {namespaces}: {source}")]
    Unshare {
        /// The namespaces requested.
        namespaces: String,
        /// The errno.
        source: Errno,
    },
    /// Opening `/proc/<pid>/ns/<name>` failed.
    #[error("open {path}: {source}")]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `setns(2)` failed.
    #[error("setns {namespace}: {source}")]
    Join {
        /// The namespace name (`mnt`, `pid`, ...).
        namespace: &'static str,
        /// The errno.
        source: Errno,
    },
}

/// One namespace type: its clone flag and its name under `/proc/<pid>/ns/`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Namespace {
    pub flag: CloneFlags,
    pub name: &'static str,
}

/// The namespaces every VPS gets, in the order they are joined by `exec`: the mount namespace
/// last, because after it `/proc` is the container's. (Issue 3: `user` goes first.)
pub(crate) const VPS_NAMESPACES: &[Namespace] = &[
    Namespace {
        flag: CloneFlags::CLONE_NEWIPC,
        name: "ipc",
    },
    Namespace {
        flag: CloneFlags::CLONE_NEWUTS,
        name: "uts",
    },
    Namespace {
        flag: CloneFlags::CLONE_NEWNET,
        name: "net",
    },
    Namespace {
        flag: CloneFlags::CLONE_NEWPID,
        name: "pid",
    },
    Namespace {
        flag: CloneFlags::CLONE_NEWCGROUP,
        name: "cgroup",
    },
    Namespace {
        flag: CloneFlags::CLONE_NEWNS,
        name: "mnt",
    },
];

/// Moves the calling (single-threaded) start helper into fresh VPS namespaces, except the
/// mount namespace (see [`unshare_mount_namespace`]). The pid namespace applies to children
/// only: the next forked child becomes PID 1. Must be called after joining the VPS's cgroup, so
/// the cgroup namespace is rooted there.
pub(crate) fn unshare_vps_namespaces() -> Result<(), NamespaceError> {
    unshare_flags(
        VPS_NAMESPACES
            .iter()
            .filter(|ns| ns.flag != CloneFlags::CLONE_NEWNS)
            .fold(CloneFlags::empty(), |acc, ns| acc | ns.flag),
    )
}

/// Gives the forked init its own mount namespace. Done in the child rather than the helper
/// because `pivot_root` re-roots every process of the mount namespace, and the helper must keep
/// seeing the host's `/proc` to report the init's identity.
pub(crate) fn unshare_mount_namespace() -> Result<(), NamespaceError> {
    unshare_flags(CloneFlags::CLONE_NEWNS)
}

fn unshare_flags(flags: CloneFlags) -> Result<(), NamespaceError> {
    unshare(flags).map_err(|source| NamespaceError::Unshare {
        namespaces: VPS_NAMESPACES
            .iter()
            .filter(|ns| flags.contains(ns.flag))
            .map(|ns| ns.name)
            .collect::<Vec<_>>()
            .join(","),
        source,
    })
}

/// Opens the namespace files of process `pid` (close-on-exec), in join order.
pub(crate) fn open_namespaces(pid: u32) -> Result<Vec<(Namespace, OwnedFd)>, NamespaceError> {
    VPS_NAMESPACES
        .iter()
        .map(|ns| {
            let path = PathBuf::from(format!("/proc/{pid}/ns/{}", ns.name));
            // std opens files with O_CLOEXEC.
            File::open(&path)
                .map(|file| (*ns, OwnedFd::from(file)))
                .map_err(|source| NamespaceError::Open { path, source })
        })
        .collect()
}

/// Joins the given namespaces in order. The caller must be single-threaded (required for `mnt`).
pub(crate) fn join_namespaces(namespaces: &[(Namespace, OwnedFd)]) -> Result<(), NamespaceError> {
    for (ns, fd) in namespaces {
        setns(fd, ns.flag).map_err(|source| NamespaceError::Join {
            namespace: ns.name,
            source,
        })?;
    }
    Ok(())
}
