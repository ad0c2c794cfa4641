//! Raw system calls the runtime makes through libc, each behind a thin safe wrapper: the
//! `unsafe` and its `// SAFETY:` argument live here, the callers stay safe code.
//!
//! Not here (yet): calls whose safety depends on the caller's situation and so stay `unsafe`
//! where they are made, with their own `// SAFETY:` comments: `fork`/`clone3` (the caller
//! must be single-threaded), `pre_exec` closures, seccomp and BPF program loading
//! (`isolation/seccomp.rs`, `isolation/device_filter.rs`, `isolation/sysinfo.rs`), the mount
//! API calls of `isolation/idmap.rs`, the loop and ext4 ioctls of `storage/disk.rs`, and fds
//! taken over from raw numbers.

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
    fn sysinfo_reports_the_host() {
        assert!(sysinfo().totalram > 0);
    }

    #[test]
    fn flocks_a_file() {
        let file = tempfile::tempfile().expect("tempfile");
        flock_exclusive(file.as_fd()).expect("flock");
        assert_eq!(set_controlling_terminal(-1), Err(Errno::EBADF));
    }
}
