//! Host-side process identity and signalling: `/proc/<pid>/stat` parsing, pid-reuse-safe
//! identities (pid + start time + boot id), pidfds, and fd hygiene before exec.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::runtime::sys;

const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Errors of process inspection and signalling.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Reading a /proc file failed for a reason other than the process being gone.
    #[error("read {path}: {source}")]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A /proc file did not have the expected format.
    #[error("parse {path}: unexpected format")]
    Parse {
        /// The file that could not be parsed.
        path: PathBuf,
    },
    /// A pidfd system call failed.
    #[error("{operation} for pid {pid}: {source}")]
    Pidfd {
        /// `pidfd_open`, `pidfd_send_signal` or `poll`.
        operation: &'static str,
        /// The target process.
        pid: u32,
        /// The errno.
        source: Errno,
    },
}

/// The fields of `/proc/<pid>/stat` the runtime needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: R, S, D, Z, X, ...
    pub state: char,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
}

impl ProcStat {
    /// A zombie or dead task is not running, even though its /proc entry may linger.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the content of `/proc/<pid>/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(content: &str) -> Option<ProcStat> {
    let after_comm = &content[content.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // Field 3 is the first after the command name; field 22 is 19 further.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// Reads `/proc/<pid>/stat`; `Ok(None)` when the process does not exist.
pub(crate) fn read_stat(pid: u32) -> Result<Option<ProcStat>, ProcessError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    match fs::read_to_string(&path) {
        Ok(content) => parse_stat(&content)
            .map(Some)
            .ok_or(ProcessError::Parse { path }),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(None),
        Err(source) => Err(ProcessError::Read { path, source }),
    }
}

/// The identity of this boot of the kernel, so a pid recorded before a reboot is never mistaken
/// for a live process after it.
/// Read once per process: it cannot change while this process runs, and liveness checks of
/// every VPS (each heartbeat, each apply) would otherwise read it each time.
pub(crate) fn boot_id() -> Result<String, ProcessError> {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(boot_id) = BOOT_ID.get() {
        return Ok(boot_id.clone());
    }
    let boot_id = fs::read_to_string(BOOT_ID_PATH)
        .map(|s| s.trim().to_string())
        .map_err(|source| ProcessError::Read {
            path: PathBuf::from(BOOT_ID_PATH),
            source,
        })?;
    Ok(BOOT_ID.get_or_init(|| boot_id).clone())
}

/// A process identified robustly against pid reuse: pid, start time and boot id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessIdentity {
    /// Host pid.
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when the identity was taken.
    pub boot_id: String,
}

impl ProcessIdentity {
    /// Takes the identity of a running process; `Ok(None)` if it is gone or a zombie.
    pub fn of(pid: u32) -> Result<Option<Self>, ProcessError> {
        let boot_id = boot_id()?;
        Ok(read_stat(pid)?
            .filter(|stat| !stat.is_dead())
            .map(|stat| Self {
                pid,
                start_time: stat.start_time,
                boot_id,
            }))
    }

    /// Whether this exact process is still running (not exited, not a zombie, pid not reused).
    pub fn is_alive(&self) -> Result<bool, ProcessError> {
        if boot_id()? != self.boot_id {
            return Ok(false);
        }
        Ok(read_stat(self.pid)?
            .is_some_and(|stat| !stat.is_dead() && stat.start_time == self.start_time))
    }
}

/// A pidfd: a handle on one process that cannot be confused by pid reuse.
pub(crate) struct Pidfd {
    fd: OwnedFd,
    pid: u32,
}

impl Pidfd {
    /// Opens a pidfd on `identity`; `Ok(None)` if that process is no longer running.
    ///
    /// The identity is checked after the pidfd is open, so the handle is known to refer to the
    /// recorded process and not to a later one that reused its pid.
    pub fn open(identity: &ProcessIdentity) -> Result<Option<Self>, ProcessError> {
        let pid = identity.pid;
        let Ok(raw_pid) = libc::pid_t::try_from(pid) else {
            return Ok(None);
        };
        let fd = match sys::pidfd_open(raw_pid) {
            Ok(fd) => fd,
            Err(Errno::ESRCH) => return Ok(None),
            Err(source) => {
                return Err(ProcessError::Pidfd {
                    operation: "pidfd_open",
                    pid,
                    source,
                })
            }
        };
        let pidfd = Self { fd, pid };
        if identity.is_alive()? {
            Ok(Some(pidfd))
        } else {
            Ok(None)
        }
    }

    /// Sends `signal`; a process that already exited is not an error.
    pub fn send_signal(&self, signal: Signal) -> Result<(), ProcessError> {
        self.send_signal_number(signal as libc::c_int)
    }

    /// Sends the signal numbered `signo` (for realtime signals, which [`Signal`] lacks); a
    /// process that already exited is not an error.
    pub fn send_signal_number(&self, signo: libc::c_int) -> Result<(), ProcessError> {
        match sys::pidfd_send_signal(self.fd.as_fd(), signo) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(ProcessError::Pidfd {
                operation: "pidfd_send_signal",
                pid: self.pid,
                source,
            }),
        }
    }

    /// Waits up to `timeout` for the process to exit; returns whether it did.
    pub fn wait_exit(&self, timeout: Duration) -> Result<bool, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let millis = u16::try_from(remaining.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) if remaining.is_zero() => return Ok(false),
                Ok(0) => continue,
                Ok(_) => return Ok(true),
                Err(Errno::EINTR) => continue,
                Err(source) => {
                    return Err(ProcessError::Pidfd {
                        operation: "poll",
                        pid: self.pid,
                        source,
                    })
                }
            }
        }
    }
}

impl AsFd for Pidfd {
    /// Readable once the process has exited.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Marks every fd from `first` upwards close-on-exec (`close_range(2)` with
/// `CLOSE_RANGE_CLOEXEC`), so nothing of the helper leaks into the container's init or an exec'd
/// command (runc CVE-2024-21626).
pub(crate) fn mark_cloexec_from(first: u32) -> Result<(), Errno> {
    sys::close_range_cloexec(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_and_parens_in_comm() {
        let line = "4242 (we ird) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_time, 987654);
        assert!(!stat.is_dead());
    }

    #[test]
    fn zombie_is_dead() {
        let line = "7 (sh) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert!(parse_stat(line).expect("parses").is_dead());
    }

    #[test]
    fn rejects_truncated_stat() {
        assert_eq!(parse_stat("1 (init) S 0 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_identity_is_alive_and_mismatched_start_time_is_not() {
        let identity = ProcessIdentity::of(std::process::id())
            .expect("read own stat")
            .expect("self is running");
        assert!(identity.is_alive().expect("check"));
        let reused = ProcessIdentity {
            start_time: identity.start_time + 1,
            ..identity.clone()
        };
        assert!(!reused.is_alive().expect("check"));
        let other_boot = ProcessIdentity {
            boot_id: "not-this-boot".into(),
            ..identity
        };
        assert!(!other_boot.is_alive().expect("check"));
    }
}
