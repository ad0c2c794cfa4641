//! Raw system calls the runtime makes through libc and nix's ioctl macros (loop devices, ext4
//! resize, pidfds, the mount API, ...), each behind a thin safe wrapper: the `unsafe` and its
//! `// SAFETY:` argument live here, the callers stay safe code.
//!
//! Not here (yet): calls whose safety depends on the caller's situation and so stay `unsafe`
//! where they are made, with their own `// SAFETY:` comments: `fork`/`clone3` (the caller
//! must be single-threaded), `pre_exec` closures, BPF program loading
//! (`isolation/device_filter.rs`), the seccomp notification ioctls of `isolation/sysinfo.rs`,
//! and fds taken over from raw numbers.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// Ends this process at once with `code`: no atexit handlers, no stdio flushing (a forked
/// child must not flush its parent's buffers a second time).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe, always sound to call, and never returns.
    unsafe { libc::_exit(code) }
}

/// `prctl(PR_CAPBSET_DROP, cap)`: removes `cap` from the calling thread's bounding set.
pub(crate) fn capbset_drop(cap: libc::c_int) -> Result<(), Errno> {
    let cap = libc::c_ulong::try_from(cap).map_err(|_| Errno::EINVAL)?;
    // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes integers only and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// `flock(fd, LOCK_EX)`: waits for an exclusive lock, held until every copy of `fd` is closed.
pub(crate) fn flock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: flock only takes an fd, borrowed for the call so it stays open; no memory is
    // passed.
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `pidfd_open(pid, 0)`: a pidfd for `pid`, owned by the caller.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new fd or -1; no memory is
    // shared with the kernel.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if ret < 0 {
        return Err(Errno::last());
    }
    let raw_fd = i32::try_from(ret).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw_fd) })
}

/// `pidfd_send_signal(pidfd, signo, NULL, 0)`.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signo: libc::c_int) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal with a pidfd borrowed for the call, a signal number (the kernel
    // rejects invalid ones with EINVAL), a null siginfo (the kernel fills in a default one) and
    // no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signo,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: marks every fd from `first` upwards
/// close-on-exec.
pub(crate) fn close_range_cloexec(first: u32) -> Result<(), Errno> {
    // SAFETY: close_range only changes fd flags of this process; it touches no memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, TIOCSCTTY, 0)`: makes the terminal at `fd` the controlling terminal of the
/// calling session leader. Async-signal-safe (used between fork and exec).
pub(crate) fn set_controlling_terminal(fd: libc::c_int) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an int argument; no memory is passed. A bad fd is EBADF.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// `sysinfo(2)` of the host (as this process sees it); all zero if the call fails.
pub(crate) fn sysinfo() -> libc::sysinfo {
    // SAFETY: all-zero is a valid sysinfo (plain integers); sysinfo(2) fills it.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo writes one struct sysinfo into `info`, a live local.
    unsafe { libc::sysinfo(&mut info) };
    info
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | AT_RECURSIVE | O_CLOEXEC)`: a detached copy
/// of the mount tree at `path`, owned by the caller.
pub(crate) fn open_tree_clone(path: &CStr) -> Result<OwnedFd, Errno> {
    let flags =
        mount_api::OPEN_TREE_CLONE | mount_api::AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: open_tree takes a NUL-terminated path that outlives the call and flags, and
    // returns a new fd (or -1); no memory is shared with the kernel beyond the call.
    let raw = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if raw < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(raw).map_err(|_| Errno::EBADF)?;
    // SAFETY: open_tree returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, ...)`: makes every mount of the
/// detached `tree` read-only, nosuid, nodev and idmapped through the user namespace `userns`.
pub(crate) fn mount_setattr_idmap(
    tree: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
) -> Result<(), Errno> {
    let attr = mount_api::MountAttr {
        attr_set: mount_api::MOUNT_ATTR_IDMAP
            | mount_api::MOUNT_ATTR_RDONLY
            | mount_api::MOUNT_ATTR_NOSUID
            | mount_api::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).unwrap_or_default(),
    };
    let empty = c"";
    // SAFETY: `attr` is a valid mount_attr of the size passed, `empty` a valid C string, and
    // both fds are borrowed, so open, for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | mount_api::AT_RECURSIVE,
            &attr as *const mount_api::MountAttr,
            std::mem::size_of::<mount_api::MountAttr>(),
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `move_mount(tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attaches the detached
/// `tree` at `target`.
pub(crate) fn move_mount(tree: BorrowedFd<'_>, target: &CStr) -> Result<(), Errno> {
    let empty = c"";
    // SAFETY: both paths are valid C strings that outlive the call and the tree fd is borrowed,
    // so open, during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            mount_api::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Constants and the struct of the new mount API (open_tree, mount_setattr, move_mount).
mod mount_api {
    pub(super) const OPEN_TREE_CLONE: libc::c_uint = 1;
    pub(super) const AT_RECURSIVE: libc::c_uint = 0x8000;
    pub(super) const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
    pub(super) const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
    pub(super) const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
    pub(super) const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    pub(super) const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

    /// `struct mount_attr` of mount_setattr(2).
    #[repr(C)]
    pub(super) struct MountAttr {
        pub(super) attr_set: u64,
        pub(super) attr_clr: u64,
        pub(super) propagation: u64,
        pub(super) userns_fd: u64,
    }
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, program)` on the calling thread: what the kernel
/// returns (0, or the listener fd with `SECCOMP_FILTER_FLAG_NEW_LISTENER`). `EINVAL` for a
/// program longer than `u16::MAX` instructions.
pub(crate) fn seccomp_set_mode_filter(
    program: &[seccompiler::sock_filter],
    flags: libc::c_ulong,
) -> Result<libc::c_long, Errno> {
    let len = u16::try_from(program.len()).map_err(|_| Errno::EINVAL)?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `program`, which stays alive for the call; seccompiler's
    // sock_filter has the kernel's layout (u16, u8, u8, u32). The kernel only reads (copies) the
    // program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

/// [`seccomp_set_mode_filter`] with `SECCOMP_FILTER_FLAG_NEW_LISTENER`: the filter's
/// notification listener (close-on-exec), owned by the caller.
pub(crate) fn seccomp_filter_with_listener(
    program: &[seccompiler::sock_filter],
) -> Result<OwnedFd, Errno> {
    let rc = seccomp_set_mode_filter(program, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER)?;
    let fd = i32::try_from(rc).map_err(|_| Errno::EBADF)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `LO_FLAGS_AUTOCLEAR`: the loop device detaches itself when its last user closes it.
pub(crate) const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `ioctl(control, LOOP_CTL_GET_FREE)` on `/dev/loop-control`: the number of a free loop
/// device (made if needed).
pub(crate) fn loop_ctl_get_free(control: BorrowedFd<'_>) -> Result<libc::c_int, Errno> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
    unsafe { ioctl::loop_ctl_get_free(control.as_raw_fd()) }
}

/// `ioctl(loop_dev, LOOP_CONFIGURE)`: backs the loop device with `backing`, with `lo_flags`.
pub(crate) fn loop_configure(
    loop_dev: BorrowedFd<'_>,
    backing: BorrowedFd<'_>,
    lo_flags: u32,
) -> Result<(), Errno> {
    let config = ioctl::LoopConfig {
        fd: u32::try_from(backing.as_raw_fd()).unwrap_or_default(),
        block_size: 0,
        info: ioctl::LoopInfo64 {
            lo_flags,
            ..ioctl::LoopInfo64::empty()
        },
        reserved: [0; 8],
    };
    // SAFETY: `config` is a fully initialised loop_config that outlives the call; the kernel
    // only reads it.
    unsafe { ioctl::loop_configure(loop_dev.as_raw_fd(), &config) }.map(drop)
}

/// `ioctl(loop_dev, LOOP_SET_CAPACITY)`: the loop device takes the backing file's new size.
pub(crate) fn loop_set_capacity(loop_dev: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: LOOP_SET_CAPACITY takes no argument; the fd is borrowed for the call.
    unsafe { ioctl::loop_set_capacity(loop_dev.as_raw_fd()) }.map(drop)
}

/// `ioctl(loop_dev, LOOP_GET_STATUS64)`: the (device, inode) of the loop device's backing
/// file; `ENXIO` if it has none.
pub(crate) fn loop_backing_file(loop_dev: BorrowedFd<'_>) -> Result<(u64, u64), Errno> {
    let mut info = ioctl::LoopInfo64::empty();
    // SAFETY: LOOP_GET_STATUS64 writes one loop_info64 into `info`, which is a live, correctly
    // laid out struct (see the layout test).
    unsafe { ioctl::loop_get_status64(loop_dev.as_raw_fd(), &mut info) }?;
    Ok((info.lo_device, info.lo_inode))
}

/// `ioctl(dir, EXT4_IOC_RESIZE_FS, &blocks)`: grows the mounted ext4 that `dir` (a directory
/// on it) belongs to, to `blocks` blocks.
pub(crate) fn ext4_resize_fs(dir: BorrowedFd<'_>, blocks: u64) -> Result<(), Errno> {
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) from the pointer, which
    // points at a live local.
    unsafe { ioctl::ext4_ioc_resize_fs(dir.as_raw_fd(), &blocks) }.map(drop)
}

/// `ioctl(dst, FICLONE, src)`: makes `dst` share all of `src`'s blocks (a reflink copy, on
/// xfs with reflink or btrfs). `EOPNOTSUPP`/`EXDEV`/`EINVAL`/`ENOTTY` where the filesystem
/// cannot.
pub(crate) fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: FICLONE takes the source fd as its integer argument; both fds are borrowed
    // for the call and nothing is read or written through pointers.
    unsafe { ioctl::ficlone(dst.as_raw_fd(), src.as_raw_fd()) }.map(drop)
}

/// `copy_file_range(2)` of up to `len` bytes from `src` at `*off_in` to `dst` at
/// `*off_out`, advancing both offsets; the bytes copied (0 at the source's end).
pub(crate) fn copy_file_range(
    src: BorrowedFd<'_>,
    off_in: &mut i64,
    dst: BorrowedFd<'_>,
    off_out: &mut i64,
    len: usize,
) -> Result<usize, Errno> {
    // SAFETY: both offsets point at live, exclusively borrowed i64s (loff_t) the kernel
    // reads and updates; the fds are borrowed for the call; flags must be 0.
    let copied =
        unsafe { libc::copy_file_range(src.as_raw_fd(), off_in, dst.as_raw_fd(), off_out, len, 0) };
    usize::try_from(copied).map_err(|_| Errno::last())
}

/// The raw ioctls (generated by nix; `unsafe` to call) and the kernel structs they pass.
mod ioctl {
    pub(super) const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    pub(super) const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    pub(super) const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
    pub(super) const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
    /// ext4's `EXT4_IOC_RESIZE_FS`: `_IOW('f', 16, __u64)`.
    pub(super) const EXT4_IOC_MAGIC: u8 = b'f';
    pub(super) const EXT4_IOC_RESIZE_FS_NR: u8 = 16;

    /// `struct loop_info64`.
    #[repr(C)]
    pub(super) struct LoopInfo64 {
        pub(super) lo_device: u64,
        pub(super) lo_inode: u64,
        pub(super) lo_rdevice: u64,
        pub(super) lo_offset: u64,
        pub(super) lo_sizelimit: u64,
        pub(super) lo_number: u32,
        pub(super) lo_encrypt_type: u32,
        pub(super) lo_encrypt_key_size: u32,
        pub(super) lo_flags: u32,
        pub(super) lo_file_name: [u8; 64],
        pub(super) lo_crypt_name: [u8; 64],
        pub(super) lo_encrypt_key: [u8; 32],
        pub(super) lo_init: [u64; 2],
    }

    impl LoopInfo64 {
        pub(super) const fn empty() -> Self {
            Self {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: 0,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            }
        }
    }

    /// `struct loop_config`.
    #[repr(C)]
    pub(super) struct LoopConfig {
        pub(super) fd: u32,
        pub(super) block_size: u32,
        pub(super) info: LoopInfo64,
        pub(super) reserved: [u64; 8],
    }

    nix::ioctl_none_bad!(loop_ctl_get_free, LOOP_CTL_GET_FREE);
    nix::ioctl_write_ptr_bad!(loop_configure, LOOP_CONFIGURE, LoopConfig);
    nix::ioctl_none_bad!(loop_set_capacity, LOOP_SET_CAPACITY);
    nix::ioctl_write_int_bad!(ficlone, libc::FICLONE);
    nix::ioctl_read_bad!(loop_get_status64, LOOP_GET_STATUS64, LoopInfo64);
    nix::ioctl_write_ptr!(
        ext4_ioc_resize_fs,
        EXT4_IOC_MAGIC,
        EXT4_IOC_RESIZE_FS_NR,
        u64
    );
}

/// `llistxattr(path)`: the names of `path`'s extended attributes (not following a symlink).
pub(crate) fn list_xattrs(path: &std::path::Path) -> io::Result<Vec<Vec<u8>>> {
    let c_path = path_cstring(path)?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: c_path is a NUL-terminated string alive for the call; buf is a writable
        // buffer of exactly buf.len() bytes, which is the size passed.
        let n = unsafe {
            libc::llistxattr(
                c_path.as_ptr(),
                buf.as_mut_ptr().cast::<libc::c_char>(),
                buf.len(),
            )
        };
        if n >= 0 {
            let n = usize::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            return Ok(buf[..n]
                .split(|b| *b == 0)
                .filter(|name| !name.is_empty())
                .map(<[u8]>::to_vec)
                .collect());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(err),
        }
    }
}

/// `lgetxattr(path, name)`: the value of one extended attribute (not following a symlink).
pub(crate) fn get_xattr(path: &std::path::Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let c_path = path_cstring(path)?;
    let c_name = std::ffi::CString::new(name.to_vec())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: both strings are NUL-terminated and alive for the call; buf is writable for
        // buf.len() bytes, the size passed.
        let n = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
            )
        };
        if n >= 0 {
            let n = usize::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            buf.truncate(n);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            _ => return Err(err),
        }
    }
}

fn path_cstring(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `lsetxattr(path, name, value)`: sets one extended attribute (not following a symlink).
pub(crate) fn set_xattr(path: &std::path::Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c_path = path_cstring(path)?;
    let c_name =
        std::ffi::CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: both strings are NUL-terminated and alive for the call; value is readable for
    // value.len() bytes, the size passed.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast::<libc::c_void>(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of [`std::time::Instant`], but as a number
/// that means the same in every process on the host (helpers stamp their steps with it).
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct we own; CLOCK_MONOTONIC always
    // exists on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec)
        .unwrap_or_default()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(now.tv_nsec).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn pidfds_open_and_signal_this_process() {
        let pid = libc::pid_t::try_from(std::process::id()).expect("pid");
        let pidfd = pidfd_open(pid).expect("pidfd_open of this process");
        // Signal 0 checks that the process exists and may be signalled.
        pidfd_send_signal(pidfd.as_fd(), 0).expect("signal 0");
        assert_eq!(pidfd_send_signal(pidfd.as_fd(), -1), Err(Errno::EINVAL));
        assert_eq!(pidfd_open(-1).err(), Some(Errno::EINVAL));
    }

    #[test]
    fn loop_structs_have_kernel_layout() {
        assert_eq!(std::mem::size_of::<ioctl::LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<ioctl::LoopConfig>(), 304);
    }

    #[test]
    fn ext4_resize_ioctl_number_matches_the_kernel() {
        // _IOW('f', 16, __u64) from include/uapi/linux/ext4.h.
        assert_eq!(
            nix::request_code_write!(ioctl::EXT4_IOC_MAGIC, ioctl::EXT4_IOC_RESIZE_FS_NR, 8),
            0x4008_6610
        );
    }

    #[test]
    fn sysinfo_reports_the_host() {
        assert!(sysinfo().totalram > 0);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let before = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = monotonic_ns();
        assert!(after >= before + 2_000_000, "{before} -> {after}");
    }

    #[test]
    fn flocks_a_file() {
        let file = tempfile::tempfile().expect("tempfile");
        flock_exclusive(file.as_fd()).expect("flock");
        assert_eq!(set_controlling_terminal(-1), Err(Errno::EBADF));
    }
}
