//! The kernel namespaces of a VPS: which ones it gets (all but the mount namespace created at
//! once by `clone3` in the start helper, so every one is owned by the VPS's user namespace; the
//! init unshares its mount namespace later, see `rootfs`) and joining them from the exec helper
//! through `/proc/<init>/ns/*` (the user namespace first).

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::Pid;

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

impl Namespace {
    /// The network namespace (sysfs shows the mounter's).
    pub const NET: Self = Self {
        flag: CloneFlags::CLONE_NEWNET,
        name: "net",
    };
    /// The pid namespace (proc shows the mounter's).
    pub const PID: Self = Self {
        flag: CloneFlags::CLONE_NEWPID,
        name: "pid",
    };
}

/// The namespaces every VPS gets, in the order they are joined by `exec`: the user namespace
/// first (it grants the capabilities needed to join the others, which it owns), the mount
/// namespace last, because after it `/proc` is the container's.
pub(crate) const VPS_NAMESPACES: &[Namespace] = &[
    Namespace {
        flag: CloneFlags::CLONE_NEWUSER,
        name: "user",
    },
    Namespace {
        flag: CloneFlags::CLONE_NEWIPC,
        name: "ipc",
    },
    Namespace {
        flag: CloneFlags::CLONE_NEWUTS,
        name: "uts",
    },
    Namespace::NET,
    Namespace::PID,
    Namespace {
        flag: CloneFlags::CLONE_NEWCGROUP,
        name: "cgroup",
    },
    Namespace {
        flag: CloneFlags::CLONE_NEWNS,
        name: "mnt",
    },
];

/// `struct clone_args` of clone3(2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The namespaces `clone_into_vps_namespaces` creates: all of [`VPS_NAMESPACES`] but the mount
/// namespace, which the init unshares later.
fn cloned_namespaces() -> impl Iterator<Item = &'static Namespace> {
    VPS_NAMESPACES
        .iter()
        .filter(|ns| ns.flag != CloneFlags::CLONE_NEWNS)
}

/// Forks a child in fresh instances of all [`VPS_NAMESPACES`] but the mount namespace, every one
/// owned by the child's new user namespace; the child is PID 1 of its pid namespace and stays in
/// the caller's mount namespace, where host root prepares its filesystems before the child
/// unshares a (locked) copy of it. Returns the child's pid in the parent and `None` in the child
/// (like fork: no new stack). The child has no id mappings yet: the parent writes them (see
/// `idmap::write_id_maps`).
///
/// # Safety
/// Like `fork`: the caller must be single-threaded, so the child is a complete copy.
pub(crate) unsafe fn clone_into_vps_namespaces() -> Result<Option<Pid>, NamespaceError> {
    let flags = cloned_namespaces().fold(CloneFlags::empty(), |acc, ns| acc | ns.flag);
    let args = CloneArgs {
        flags: u64::from(flags.bits() as u32),
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; with stack 0 the child continues
    // on a copy of the parent's stack, exactly like fork, which the caller's contract makes
    // sound.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        0 => Ok(None),
        pid if pid > 0 => Ok(Some(Pid::from_raw(pid as i32))),
        _ => Err(NamespaceError::Unshare {
            namespaces: cloned_namespaces()
                .map(|ns| ns.name)
                .collect::<Vec<_>>()
                .join(","),
            source: Errno::last(),
        }),
    }
}

/// Gives the start helper a private mount namespace (owned by the host's user namespace) in
/// which it mounts the VPS's disk and overlay; the init's namespace is a copy of it.
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

/// Opens `/proc/<pid>/ns/<name>` of namespace `ns` (close-on-exec: std opens with O_CLOEXEC).
pub(crate) fn open_namespace(pid: u32, ns: Namespace) -> Result<OwnedFd, NamespaceError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/{}", ns.name));
    File::open(&path)
        .map(OwnedFd::from)
        .map_err(|source| NamespaceError::Open { path, source })
}

/// Joins namespace `ns` through its file `fd`.
pub(crate) fn join_namespace(fd: &OwnedFd, ns: Namespace) -> Result<(), NamespaceError> {
    setns(fd, ns.flag).map_err(|source| NamespaceError::Join {
        namespace: ns.name,
        source,
    })
}

/// Opens the namespace files of process `pid` (close-on-exec), in join order.
pub(crate) fn open_namespaces(pid: u32) -> Result<Vec<(Namespace, OwnedFd)>, NamespaceError> {
    VPS_NAMESPACES
        .iter()
        .map(|ns| Ok((*ns, open_namespace(pid, *ns)?)))
        .collect()
}

/// Joins the given namespaces in order. The caller must be single-threaded (required for `mnt`).
pub(crate) fn join_namespaces(namespaces: &[(Namespace, OwnedFd)]) -> Result<(), NamespaceError> {
    namespaces
        .iter()
        .try_for_each(|(ns, fd)| join_namespace(fd, *ns))
}
