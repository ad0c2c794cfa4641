//! The VPS's own view of /proc: `free`, `top`, `uptime` and friends inside a VPS show its
//! limits and usage, not the host's.
//!
//! The files come from [lxcfs](https://linuxcontainers.org/lxcfs/) (Debian package `lxcfs`),
//! a FUSE filesystem on the host that answers each read from the cgroups of the reader's
//! pid-namespace init. Host root bind-mounts them read-only over the files in
//! [`PROC_VIEW_FILES`] beside the masks, so they are locked like the masks ([`super::rootfs`]),
//! and readers inside see:
//! - `meminfo`: `MemTotal` = the VPS's memory limit, used/free/cached from its memory cgroup;
//!   `SwapTotal` = its swap allowance (v1: memsw − memory).
//! - `cpuinfo`, `stat`, `/sys/devices/system/cpu/online`: ⌈vcpus⌉ CPUs (lxcfs `--enable-cfs`,
//!   which finds the quota at the VPS's own cpuset path, see [`crate::runtime::cgroups`]), `stat` with
//!   the VPS's own CPU time. `nproc` agrees through [`super::sysinfo`].
//! - `uptime`: time since the VPS's init started; `loadavg`: the VPS's own tasks (`-l`).
//! - `swaps`: the VPS's swap allowance (capped at the host's swap).
//! - `diskstats`: IO counters of the VPS's cgroup where the kernel still has the v1
//!   `blkio.io_serviced_recursive` family (CFQ-era kernels). Elsewhere lxcfs would pass the
//!   host's file through, listing every VPS's loop device and its IO, so the VPS gets an empty
//!   `diskstats` instead ([`diskstats_virtualized`]).
//!
//! lxcfs must outlive the agent (VPSes do): [`ensure_running`] reuses a live `fuse.lxcfs`
//! mount at the configured directory (e.g. Debian's `lxcfs.service`), and otherwise starts
//! `lxcfs` itself, detached in its own session, so that an agent restart never touches it.
//! When lxcfs dies, the files in running VPSes fail with ENOTCONN (never fall back to host
//! values); the next agent start or VPS start replaces the dead mount with a new instance, and
//! a VPS sees it after its next restart.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fsutil::FromIo;

/// Default lxcfs mount directory (the one Debian's `lxcfs.service` uses).
pub const DEFAULT_LXCFS_DIR: &str = "/var/lib/lxcfs";

/// Files bind-mounted from the lxcfs mount into every VPS, each at the same path under the VPS
/// root as under the lxcfs mount. Files the lxcfs in use does not provide are skipped with a
/// warning.
pub const PROC_VIEW_FILES: &[&str] = &[
    "proc/meminfo",
    "proc/cpuinfo",
    "proc/stat",
    "proc/uptime",
    "proc/loadavg",
    "proc/diskstats",
    "proc/swaps",
    "sys/devices/system/cpu/online",
];

/// Flags the agent starts lxcfs with: CPU view from the CFS quota (`cpuinfo`, `stat`,
/// `cpu/online`), per-VPS load average, pidfd-based process tracking (no pid reuse races).
pub const LXCFS_FLAGS: &[&str] = &["--enable-cfs", "--enable-loadavg", "--enable-pidfd"];

/// How long a freshly started lxcfs gets to mount itself.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Which /proc a VPS sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcView {
    /// The host's /proc files (every VPS sees the host's memory, CPUs, uptime and load).
    Host,
    /// The VPS's own values, from lxcfs.
    Lxcfs(LxcfsConfig),
}

/// Where lxcfs is mounted and where an agent-started lxcfs keeps its log and pid file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LxcfsConfig {
    /// The lxcfs mount point (reused when a live lxcfs is mounted there).
    pub mount_dir: PathBuf,
    /// `lxcfs.log`, `lxcfs.pid` and the start lock of an lxcfs the agent starts.
    pub run_dir: PathBuf,
    /// The lxcfs executable (`lxcfs`, looked up in PATH).
    pub binary: PathBuf,
}

impl LxcfsConfig {
    /// lxcfs at `mount_dir`, started (if needed) from PATH with its log in `run_dir`.
    pub fn new(mount_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            mount_dir: mount_dir.into(),
            run_dir: run_dir.into(),
            binary: PathBuf::from("lxcfs"),
        }
    }

    fn log_file(&self) -> PathBuf {
        self.run_dir.join("lxcfs.log")
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join("lxcfs.pid")
    }

    fn lock_file(&self) -> PathBuf {
        self.run_dir.join("lxcfs.lock")
    }
}

/// One bind mount of the VPS's /proc view: `source` (absolute, on the host; relative: inside
/// the VPS root) over `target` (relative to the VPS root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcBind {
    /// The lxcfs file, or [`EMPTY_SOURCE`].
    pub source: PathBuf,
    /// The file it covers, relative to the VPS root (e.g. `proc/meminfo`).
    pub target: String,
}

/// Errors making sure lxcfs serves.
#[derive(Debug, thiserror::Error)]
pub enum ProcViewError {
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
    /// The lxcfs binary is not installed.
    #[error(
        "proc_view = \"lxcfs\" but {binary} cannot be run ({source}); install it \
         (apt-get install lxcfs) or set proc_view = \"host\" to let VPSes see the host's /proc"
    )]
    NotInstalled {
        /// The binary.
        binary: PathBuf,
        /// Why it could not be started.
        source: io::Error,
    },
    /// lxcfs was started but did not mount itself.
    #[error("lxcfs did not mount {mount_dir} within {timeout:?}{exit}; see {log}")]
    StartTimeout {
        /// The mount point.
        mount_dir: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// ", exited with ..." when the process is gone.
        exit: String,
        /// Its log.
        log: PathBuf,
    },
    /// The lxcfs mount exists but does not answer.
    #[error("lxcfs at {mount_dir} does not answer ({source}) and could not be replaced")]
    NotAnswering {
        /// The mount point.
        mount_dir: PathBuf,
        /// The error reading from it.
        source: io::Error,
    },
}

impl FromIo for ProcViewError {
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self::Io {
            operation,
            path,
            source,
        }
    }
}

/// Makes sure a live lxcfs is mounted at `config.mount_dir`, starting one if needed, and
/// returns the bind mounts every VPS gets. Safe to call concurrently from several processes
/// (a lock file in `run_dir` serialises starts); never stops an lxcfs.
pub fn ensure_running(config: &LxcfsConfig) -> Result<Vec<ProcBind>, ProcViewError> {
    if answers(&config.mount_dir).is_ok() {
        warn_missing_flags(&config.mount_dir);
    } else {
        fs::create_dir_all(&config.run_dir)
            .map_err(ProcViewError::io_err("create dir", &config.run_dir))?;
        let lock_path = config.lock_file();
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(ProcViewError::io_err("open", &lock_path))?;
        lock_exclusive(&lock).map_err(ProcViewError::io_err("lock", &lock_path))?;
        // Someone else may have started it while we waited for the lock.
        match answers(&config.mount_dir) {
            Ok(()) => {}
            Err(State::NotMounted) => start(config)?,
            Err(State::Dead(error)) => {
                tracing::warn!(
                    mount_dir = %config.mount_dir.display(),
                    %error,
                    "lxcfs mount does not answer; replacing it (running VPSes see errors in \
                     their /proc view until restarted)"
                );
                detach(&config.mount_dir).map_err(|source| ProcViewError::NotAnswering {
                    mount_dir: config.mount_dir.clone(),
                    source,
                })?;
                start(config)?;
            }
        }
        drop(lock);
    }
    Ok(binds(config))
}

/// Warns when the lxcfs serving `mount_dir` (e.g. Debian's lxcfs.service, which runs plain
/// `lxcfs /var/lib/lxcfs`) lacks [`LXCFS_FLAGS`]: without `--enable-cfs` cpuinfo, stat and
/// cpu/online list every host CPU, without `--enable-loadavg` loadavg is the host's.
fn warn_missing_flags(mount_dir: &Path) {
    // Once per process: this runs at every VPS start.
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    let wanted = mount_dir.as_os_str().as_encoded_bytes();
    for entry in entries.flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        let is_lxcfs = args.first().is_some_and(|argv0| argv0.ends_with(b"lxcfs"));
        if !is_lxcfs || args.last() != Some(&wanted) {
            continue;
        }
        for flag in LXCFS_FLAGS {
            let short = match *flag {
                "--enable-loadavg" => Some(&b"-l"[..]),
                _ => None,
            };
            let present = args
                .iter()
                .any(|a| *a == flag.as_bytes() || Some(*a) == short);
            if !present {
                tracing::warn!(
                    mount_dir = %mount_dir.display(),
                    flag,
                    "the running lxcfs lacks this flag; VPSes see host values where it matters \
                     (give lxcfs.service the agent's flags: --enable-cfs --enable-loadavg \
                     --enable-pidfd)"
                );
            }
        }
        return;
    }
}

/// Whether lxcfs can give each VPS its own /proc/diskstats: it needs the cgroup v1
/// `blkio.io_serviced_recursive` family and otherwise passes the host's file through.
pub fn diskstats_virtualized() -> bool {
    Path::new("/sys/fs/cgroup/blkio/blkio.io_serviced_recursive").exists()
}

/// Source of the bind that empties a view file: the VPS's own `/dev/null` (relative: inside
/// the VPS root), like the masks, so its mountinfo names no host path.
pub const EMPTY_SOURCE: &str = "dev/null";

/// The bind mounts for the files this lxcfs provides; missing ones are skipped with a warning
/// (older lxcfs versions lack `sys/devices/system/cpu/online`). `diskstats` is emptied ([`EMPTY_SOURCE`])
/// where lxcfs cannot virtualise it.
pub fn binds(config: &LxcfsConfig) -> Vec<ProcBind> {
    let empty_diskstats = !diskstats_virtualized();
    PROC_VIEW_FILES
        .iter()
        .filter_map(|file| {
            let target = (*file).to_string();
            if *file == "proc/diskstats" && empty_diskstats {
                return Some(ProcBind {
                    source: PathBuf::from(EMPTY_SOURCE),
                    target,
                });
            }
            let source = config.mount_dir.join(file);
            if source.is_file() {
                Some(ProcBind { source, target })
            } else {
                tracing::warn!(
                    file = %source.display(),
                    "lxcfs does not provide this file; VPSes see the host's /{target}"
                );
                None
            }
        })
        .collect()
}

enum State {
    NotMounted,
    Dead(io::Error),
}

/// Whether a `fuse.lxcfs` filesystem is mounted at `dir` and answers.
fn answers(dir: &Path) -> Result<(), State> {
    if !is_lxcfs_mount(dir) {
        return Err(State::NotMounted);
    }
    let probe = dir.join("proc/meminfo");
    match fs::read(&probe) {
        Ok(_) => Ok(()),
        Err(e) => Err(State::Dead(e)),
    }
}

/// Whether the top mount at `dir` (in this process's mount namespace) is `fuse.lxcfs`.
pub fn is_lxcfs_mount(dir: &Path) -> bool {
    super::mountinfo::read()
        .into_iter()
        .rfind(|mount| mount.mount_point == dir)
        .is_some_and(|mount| mount.fstype == "fuse.lxcfs")
}

/// The lock is released when the file is closed.
fn lock_exclusive(file: &File) -> io::Result<()> {
    crate::runtime::sys::flock_exclusive(file.as_fd())
}

/// Lazily unmounts a dead lxcfs mount so a new instance can take its place.
fn detach(dir: &Path) -> io::Result<()> {
    nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// Starts `lxcfs <flags> <mount_dir>` in its own session (so neither an agent restart nor a
/// signal to the agent's process group reaches it) and waits until it has mounted.
fn start(config: &LxcfsConfig) -> Result<(), ProcViewError> {
    fs::create_dir_all(&config.mount_dir)
        .map_err(ProcViewError::io_err("create dir", &config.mount_dir))?;
    let log_path = config.log_file();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(ProcViewError::io_err("open", &log_path))?;
    let log_err = log
        .try_clone()
        .map_err(ProcViewError::io_err("dup", &log_path))?;
    let mut command = Command::new(&config.binary);
    command
        .args(LXCFS_FLAGS)
        .arg("--pidfile")
        .arg(config.pid_file())
        .arg(&config.mount_dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: the closure only calls setsid(2), which is async-signal-safe, between fork and
    // exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|source| ProcViewError::NotInstalled {
            binary: config.binary.clone(),
            source,
        })?;
    tracing::info!(
        pid = child.id(),
        mount_dir = %config.mount_dir.display(),
        log = %log_path.display(),
        "started lxcfs for the VPSes' /proc view"
    );
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if answers(&config.mount_dir).is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ProcViewError::StartTimeout {
                mount_dir: config.mount_dir.clone(),
                timeout: START_TIMEOUT,
                exit: format!(", exited with {status}"),
                log: log_path,
            });
        }
        if Instant::now() > deadline {
            return Err(ProcViewError::StartTimeout {
                mount_dir: config.mount_dir.clone(),
                timeout: START_TIMEOUT,
                exit: String::new(),
                log: log_path,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Reap it if it ever exits while this process lives; it is not stopped on our exit.
    std::thread::Builder::new()
        .name("lxcfs-reaper".into())
        .spawn(move || {
            let status = child.wait();
            tracing::error!(
                ?status,
                "lxcfs exited; VPS /proc views fail until it is restarted"
            );
        })
        .map_err(ProcViewError::io_err(
            "spawn reaper thread for",
            &config.binary,
        ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_view_file_is_under_proc_or_sys() {
        for file in PROC_VIEW_FILES {
            assert!(file.starts_with("proc/") || file.starts_with("sys/"));
            assert!(!file.starts_with('/'));
        }
    }
}
