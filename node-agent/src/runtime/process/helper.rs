//! Re-executed helpers (`paddock-agent __internal <helper> <json>`): fresh single-threaded
//! processes, so that fork, unshare and setns are safe, and so that the VPS's init is never a
//! child of the (multi-threaded, restartable) agent.
//!
//! `start`: takes a private mount namespace in which (as host root) it mounts the VPS's disk,
//! the idmapped template, the overlay and /dev, joins the VPS cgroup, then `clone3`s the future
//! init into new user, pid, uts, ipc, net and cgroup namespaces (not mount: it stays in the
//! helper's), writes the init's uid/gid maps, and forks a host-root "mounter" into the init's
//! pid and net namespaces, which mounts /proc and /sys with their masks and pivots the shared
//! mount namespace into the rootfs (see `rootfs`). Then it lets the init continue: the init
//! becomes root of its user namespace (an unprivileged id on the host), unshares its own mount
//! namespace (a copy in which the kernel locks every mount), drops capabilities from its
//! bounding set, closes every other fd, installs the seccomp filter and execs `/sbin/init`.
//! Setup errors come back through a close-on-exec pipe; on success the helper prints the init's
//! identity as JSON on stdout and exits, so the init is reparented away from the agent.
//!
//! `exec`: see [`super::exec`].
//!
//! `grow-disk`: see [`crate::runtime::storage::disk_growth`].

use std::convert::Infallible;
use std::ffi::{CString, NulError, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{
    dup2, execve, fork, pipe2, setgroups, sethostname, setresgid, setresuid, setsid, ForkResult,
    Gid, Uid,
};
use seccompiler::BpfProgram;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::console::{self, ConsoleError};
use super::exec;
use super::identity::{self, ProcessError, ProcessIdentity};
use crate::runtime::cgroups::{CgroupError, VpsCgroup};
use crate::runtime::isolation::capabilities::{self, CapabilityError};
use crate::runtime::isolation::idmap::{self, IdRange, IdmapError};
use crate::runtime::isolation::namespaces::{self, Namespace, NamespaceError};
use crate::runtime::isolation::procview::ProcBind;
use crate::runtime::isolation::rootfs::{self, RootfsError, RootfsLayout};
use crate::runtime::isolation::seccomp::{self, SeccompError};
use crate::runtime::isolation::sysinfo::{self, SysinfoError};
use crate::runtime::storage::disk::DiskError;
use crate::runtime::storage::disk_growth;
use crate::runtime::INTERNAL_ARG;

/// Name of the start helper.
pub(crate) const START: &str = "start";
/// Name of the exec helper.
pub(crate) const EXEC: &str = "exec";
/// Name of the disk growth helper.
pub(crate) const GROW_DISK: &str = "grow-disk";
/// Helper name: write a VPS's backup archive (`storage/backup.rs`).
pub(crate) const BACKUP: &str = "backup";
/// Helper name: extract a backup archive into a fresh image (`storage/backup.rs`).
pub(crate) const RESTORE: &str = "restore";

/// Why calling a one-shot helper (`start`, `grow-disk`) failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperCallError {
    /// The helper binary could not be run.
    #[error("run helper {path}: {source}")]
    Spawn {
        /// The helper binary.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The helper reported a failure.
    #[error("{name} helper failed ({status}): {stderr}")]
    Failed {
        /// Which helper.
        name: &'static str,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The helper missed its deadline and was killed (with the processes of its group).
    #[error(
        "{name} helper did not finish within {limit:?} and was killed; it was at step: {step}"
    )]
    TimedOut {
        /// Which helper.
        name: &'static str,
        /// Its deadline.
        limit: std::time::Duration,
        /// The last step it announced (see [`STEP_PREFIX`]).
        step: String,
    },
    /// The request could not be encoded, or the reply decoded.
    #[error("{name} helper replied {stdout:?}: {source}")]
    BadReply {
        /// Which helper.
        name: &'static str,
        /// What it printed on stdout.
        stdout: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// How a helper announces on stderr the step it begins, so that one that misses its deadline
/// is reported with the step it hung in. The line may end in [`STEP_TIME_SEPARATOR`] and the
/// [`crate::runtime::sys::monotonic_ns`] time the step began, from which the agent tells where
/// a start's time goes ([`HelperTimes`]).
pub(crate) const STEP_PREFIX: &str = "paddock-step: ";
/// Between a step's name and the time it began.
const STEP_TIME_SEPARATOR: &str = "\t@";

/// Announces the step a helper begins (see [`STEP_PREFIX`]).
pub(crate) fn step(name: &str) {
    eprintln!(
        "{STEP_PREFIX}{name}{STEP_TIME_SEPARATOR}{}",
        crate::runtime::sys::monotonic_ns()
    );
}

/// A step line's name and, if it has one, the time it began.
fn parse_step(line: &str) -> Option<(&str, Option<u64>)> {
    let step = line.strip_prefix(STEP_PREFIX)?;
    Some(match step.rsplit_once(STEP_TIME_SEPARATOR) {
        Some((name, at)) => match at.parse() {
            Ok(at_ns) => (name, Some(at_ns)),
            Err(_) => (step, None),
        },
        None => (step, None),
    })
}

/// Splits a helper's stderr into the last step it announced and the rest (its messages).
fn split_steps(stderr: &[u8]) -> (Option<String>, String) {
    let text = String::from_utf8_lossy(stderr);
    let mut last = None;
    let mut rest = Vec::new();
    for line in text.lines() {
        match parse_step(line) {
            Some((step, _)) => last = Some(step.to_owned()),
            None => rest.push(line),
        }
    }
    (last, rest.join("\n").trim().to_owned())
}

/// When a helper was spawned, each step it announced began, and its exit was seen, all on
/// [`crate::runtime::sys::monotonic_ns`]'s clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HelperTimes {
    /// Just before the helper was spawned.
    pub spawned_ns: u64,
    /// Each announced step and when it began, in order.
    pub steps: Vec<(String, u64)>,
    /// When the agent saw it exit.
    pub exited_ns: u64,
}

impl HelperTimes {
    /// How long each part took: `exec` (spawn until the first step), each step until the
    /// next, the last one until the exit was seen. Steps without a time are left out.
    pub fn durations(&self) -> Vec<(String, std::time::Duration)> {
        let ns = std::time::Duration::from_nanos;
        let mut parts = Vec::with_capacity(self.steps.len() + 1);
        let mut previous = ("exec helper", self.spawned_ns);
        for (step, at_ns) in &self.steps {
            parts.push((previous.0.to_owned(), ns(at_ns.saturating_sub(previous.1))));
            previous = (step, *at_ns);
        }
        parts.push((
            previous.0.to_owned(),
            ns(self.exited_ns.saturating_sub(previous.1)),
        ));
        parts
    }

    fn from_stderr(spawned_ns: u64, stderr: &[u8], exited_ns: u64) -> Self {
        let steps = String::from_utf8_lossy(stderr)
            .lines()
            .filter_map(parse_step)
            .filter_map(|(step, at_ns)| Some((step.to_owned(), at_ns?)))
            .collect();
        Self {
            spawned_ns,
            steps,
            exited_ns,
        }
    }
}

/// Runs `helper_binary __internal <name> <request as JSON>` with an empty environment and
/// decodes the JSON it prints on stdout; blocks until it exits, for at most `limit` (then it
/// is killed with its process group).
pub(crate) fn call<Request: Serialize, Reply: DeserializeOwned>(
    helper_binary: &Path,
    name: &'static str,
    request: &Request,
    limit: std::time::Duration,
) -> Result<Reply, HelperCallError> {
    call_timed(helper_binary, name, request, limit).map(|(reply, _)| reply)
}

/// [`call`], also returning when each of the helper's steps began.
pub(crate) fn call_timed<Request: Serialize, Reply: DeserializeOwned>(
    helper_binary: &Path,
    name: &'static str,
    request: &Request,
    limit: std::time::Duration,
) -> Result<(Reply, HelperTimes), HelperCallError> {
    let bad_reply = |stdout: String| {
        move |source| HelperCallError::BadReply {
            name,
            stdout,
            source,
        }
    };
    let json = serde_json::to_string(request).map_err(bad_reply(String::new()))?;
    let mut command = std::process::Command::new(helper_binary);
    command.arg(INTERNAL_ARG).arg(name).arg(json).env_clear();
    let spawned_ns = crate::runtime::sys::monotonic_ns();
    let outcome = crate::bounded::run(&mut command, None, limit).map_err(|source| {
        HelperCallError::Spawn {
            path: helper_binary.to_path_buf(),
            source,
        }
    })?;
    let exited_ns = crate::runtime::sys::monotonic_ns();
    let output = match outcome {
        crate::bounded::Outcome::Finished(output) => output,
        crate::bounded::Outcome::TimedOut { stderr } => {
            let (step, _) = split_steps(&stderr);
            return Err(HelperCallError::TimedOut {
                name,
                limit,
                step: step.unwrap_or_else(|| "starting".to_owned()),
            });
        }
    };
    if !output.status.success() {
        return Err(HelperCallError::Failed {
            name,
            status: output.status.to_string(),
            stderr: split_steps(&output.stderr).1,
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let reply = serde_json::from_str(&stdout).map_err(bad_reply(stdout))?;
    let times = HelperTimes::from_stderr(spawned_ns, &output.stderr, exited_ns);
    Ok((reply, times))
}

/// The init's environment.
const INIT_ENV: &[&str] = &[
    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "TERM=linux",
    "container=paddock",
];
const INIT_PATH: &str = "/sbin/init";

/// Errors inside a helper process (reported on its stderr, or through the setup pipe).
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The helper's arguments were not `<helper> <json>`.
    #[error("bad helper arguments: {0}")]
    Usage(String),
    /// The request JSON did not decode.
    #[error("decode request: {0}")]
    Decode(#[from] serde_json::Error),
    /// The helper is not single-threaded, so fork/setns would be unsafe.
    #[error("helper has {threads} threads; it must be single-threaded")]
    NotSingleThreaded {
        /// Threads found in /proc/self/task.
        threads: usize,
    },
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
    /// A system call failed.
    #[error("{operation}: {source}")]
    Sys {
        /// The call (`fork`, `pipe2`, `sethostname`, ...).
        operation: &'static str,
        /// The errno.
        source: Errno,
    },
    /// A string passed to exec contained a NUL byte.
    #[error("argument contains a NUL byte: {0}")]
    Nul(#[from] NulError),
    /// Joining the VPS cgroup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Creating or joining namespaces failed.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// Building the root filesystem failed.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// Growing the VPS's disk failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Inspecting a process failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Setting up the console failed.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// Starting or reaching the sysinfo server failed.
    #[error(transparent)]
    Sysinfo(#[from] SysinfoError),
    /// Writing the id maps failed.
    #[error(transparent)]
    Idmap(#[from] IdmapError),
    /// Building or installing the seccomp filter failed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Dropping capabilities failed.
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    /// The container's setup failed in the child before exec; the message is the child's.
    #[error("container setup failed: {0}")]
    ChildSetup(String),
    /// The init exec'd but is already gone.
    #[error("init exited immediately ({0})")]
    InitExited(String),
    /// The exec helper died before the command was started.
    #[error("the exec helper exited before the command started")]
    ParentGone,
    /// The VPS's init is not running (exec).
    #[error("the VPS init (pid {0}) is not running")]
    NotRunning(u32),
}

pub(crate) fn sys_err(operation: &'static str) -> impl FnOnce(Errno) -> HelperError {
    move |source| HelperError::Sys { operation, source }
}

/// What the agent asks the start helper to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StartRequest {
    pub vps_id: String,
    pub hostname: String,
    pub cgroup_parent: String,
    pub rootfs: RootfsLayout,
    pub console_log: PathBuf,
    pub console_socket: PathBuf,
    pub console_pid_file: PathBuf,
    pub ids: IdRange,
    /// lxcfs files bind-mounted over the VPS's /proc (empty: the host's /proc).
    pub proc_binds: Vec<ProcBind>,
    /// Where the VPS's sysinfo server listens; `None`: sysinfo(2) shows the host's figures.
    pub sysinfo_socket: Option<PathBuf>,
}

/// What the start helper prints on success.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StartReply {
    pub init: ProcessIdentity,
    /// The disk's loop device (major, minor), so the agent need not look for it in
    /// /sys/block; `None` from a helper of an older agent or if it could not be stat'ed.
    #[serde(default)]
    pub disk_device: Option<(u64, u64)>,
}

/// Dispatches `__internal <helper> <json>`; returns the process exit code.
pub(crate) fn run(args: Vec<OsString>) -> i32 {
    match args.first().and_then(|a| a.to_str()) {
        Some(START) => match start(&args[1..]) {
            Ok(reply) => match serde_json::to_string(&reply).inspect(|_| step("reply and exit")) {
                Ok(json) => {
                    println!("{json}");
                    0
                }
                Err(e) => {
                    eprintln!("encode start reply: {e}");
                    1
                }
            },
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Some(EXEC) => exec::helper_main(&args[1..]),
        Some(GROW_DISK) => disk_growth::helper_main(&args[1..]),
        Some(BACKUP) => crate::runtime::storage::backup::backup_helper_main(&args[1..]),
        Some(RESTORE) => crate::runtime::storage::backup::restore_helper_main(&args[1..]),
        Some(crate::runtime::checkpoint::RESTORE_HELPER) => {
            crate::runtime::checkpoint::restore_helper_main(&args[1..])
        }
        other => {
            eprintln!(
                "{INTERNAL_ARG}: unknown helper {:?} (expected {START}, {EXEC}, {GROW_DISK}, {BACKUP} or {RESTORE})",
                other.unwrap_or("")
            );
            2
        }
    }
}

/// Decodes the single JSON argument of a helper.
pub(crate) fn decode_request<T: DeserializeOwned>(args: &[OsString]) -> Result<T, HelperError> {
    match args {
        [json] => {
            let json = json
                .to_str()
                .ok_or_else(|| HelperError::Usage("request is not UTF-8".into()))?;
            Ok(serde_json::from_str(json)?)
        }
        _ => Err(HelperError::Usage(format!(
            "expected one JSON argument, got {}",
            args.len()
        ))),
    }
}

/// fork and setns(CLONE_NEWNS) are only sound in a single-threaded process.
pub(crate) fn ensure_single_threaded() -> Result<(), HelperError> {
    let task_dir = PathBuf::from("/proc/self/task");
    let threads = fs::read_dir(&task_dir)
        .map_err(|source| HelperError::Io {
            operation: "read dir",
            path: task_dir,
            source,
        })?
        .count();
    if threads == 1 {
        Ok(())
    } else {
        Err(HelperError::NotSingleThreaded { threads })
    }
}

/// Restores what a Rust `main` changes and `exec` would carry over: SIGPIPE ignored, and any
/// blocked signals.
pub(crate) fn reset_signals() -> Result<(), HelperError> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_DFL registers no handler code, so no async-signal-safety
    // requirement applies.
    unsafe { sigaction(Signal::SIGPIPE, &default) }.map_err(sys_err("reset SIGPIPE"))?;
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(sys_err("clear signal mask"))
}

/// Exits the forked child immediately, without running the parent's atexit handlers or
/// flushing its stdio buffers a second time.
pub(crate) fn exit_child(code: i32) -> ! {
    crate::runtime::sys::exit_now(code)
}

fn start(args: &[OsString]) -> Result<StartReply, HelperError> {
    let request: StartRequest = decode_request(args)?;
    ensure_single_threaded()?;
    step("console pty and supervisor");
    // The console pty and its supervisor, in the host's mount namespace (so the supervisor
    // never pins the VPS's disk mount); the supervisor joins the VPS's cgroup itself.
    let (init_report, slave, slave_path) = console::open_for_vps(
        request.ids,
        &request.cgroup_parent,
        &request.vps_id,
        &console::SupervisorPaths {
            socket: request.console_socket.clone(),
            log: request.console_log.clone(),
            pid_file: request.console_pid_file.clone(),
        },
    )?;

    // The VPS's sysinfo server, like the console supervisor before the private mount namespace;
    // the init sends it its seccomp listener over this link.
    let sysinfo_link = match &request.sysinfo_socket {
        Some(socket) => {
            step("sysinfo server");
            sysinfo::spawn_server(socket, &request.cgroup_parent, &request.vps_id)?;
            Some(sysinfo::connect(socket).ok_or_else(|| HelperError::Io {
                operation: "connect",
                path: socket.clone(),
                source: io::Error::from(io::ErrorKind::NotConnected),
            })?)
        }
        None => None,
    };

    step("private mount namespace");
    namespaces::unshare_mount_namespace()?;
    // Before joining the cgroup: its device policy denies the loop devices and mknod of /dev.
    let disk_device = request.rootfs.mount_host_side(request.ids, &slave_path)?;
    let disk_device = fs::metadata(&disk_device).ok().map(|meta| {
        (
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev()),
        )
    });
    // The init's cgroup namespace is rooted at the cgroup its creator is in.
    VpsCgroup::open(&request.cgroup_parent, &request.vps_id).add_process(std::process::id())?;

    step("clone the init into new namespaces");
    let filter = seccomp::vps_filter()?;
    let (report_read, report_write) = pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe2"))?;
    let (maps_read, maps_write) = pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe2"))?;

    // SAFETY: this helper is single-threaded (checked above), so the child is a complete copy of
    // the process and may allocate and run arbitrary code before exec.
    match unsafe { namespaces::clone_into_vps_namespaces() }? {
        None => {
            drop(report_read);
            drop(maps_write);
            // Wait until the parent has written our id maps and mounted our filesystems; EOF
            // without "1" means it failed.
            let mut byte = [0u8; 1];
            if !matches!(File::from(maps_read).read(&mut byte), Ok(1) if byte[0] == b'1') {
                exit_child(1)
            }
            let Err(error) = init_child(&request, &slave, &filter, sysinfo_link.as_ref());
            let mut pipe = File::from(report_write);
            let _ = pipe.write_all(error.to_string().as_bytes());
            exit_child(1)
        }
        Some(child) => {
            drop(report_write);
            drop(maps_read);
            drop(sysinfo_link);
            // Read now: the mounter's pivot_root also moves this helper into the VPS's root.
            let identity = u32::try_from(child.as_raw())
                .map_err(|_| HelperError::InitExited(format!("bad pid {child}")))
                .and_then(|pid| Ok(ProcessIdentity::of(pid)?))
                .and_then(|identity| {
                    identity.ok_or_else(|| HelperError::InitExited("no longer in /proc".into()))
                });
            let prepared = identity.and_then(|identity| {
                step("write id maps");
                idmap::write_id_maps(child.as_raw(), request.ids)?;
                step("mount /proc and /sys, pivot into the rootfs");
                mount_vps_filesystems(&request, identity.pid)?;
                Ok(identity)
            });
            let init = match prepared {
                Ok(init) => init,
                Err(error) => {
                    drop(maps_write);
                    let _ = waitpid(child, None);
                    return Err(error);
                }
            };
            let mut maps_write = File::from(maps_write);
            let _ = maps_write.write_all(b"1");
            drop(maps_write);
            step("init setup until exec of /sbin/init");
            let mut message = String::new();
            File::from(report_read)
                .read_to_string(&mut message)
                .map_err(|source| HelperError::Io {
                    operation: "read setup report",
                    path: PathBuf::from("pipe"),
                    source,
                })?;
            if !message.is_empty() {
                let _ = waitpid(child, None);
                return Err(HelperError::ChildSetup(message));
            }
            // The init is still our child until we exit, so its pid cannot have been reused.
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => return Err(HelperError::InitExited(format!("{status:?}"))),
                Err(e) => {
                    return Err(HelperError::Sys {
                        operation: "waitpid",
                        source: e,
                    })
                }
            }
            // The console supervisor serves until this init exits. If it is already gone, the
            // VPS runs without a console, as it would have if the supervisor died later.
            let _ = init_report.send(&init);
            Ok(StartReply { init, disk_device })
        }
    }
}

/// Forks the mounter: a host-root process in the init's pid and net namespaces (proc and sysfs
/// take the namespaces of whoever mounts them) and in this helper's mount namespace, which the
/// init shares; it mounts the VPS's /proc and /sys and pivots into the rootfs. Waits for it.
/// Afterwards this helper's root is the VPS's root too: it must not resolve host paths.
fn mount_vps_filesystems(request: &StartRequest, init_pid: u32) -> Result<(), HelperError> {
    let pid_ns = namespaces::open_namespace(init_pid, Namespace::PID)?;
    let net_ns = namespaces::open_namespace(init_pid, Namespace::NET)?;
    // Only children enter a joined pid namespace; this helper forks nothing else afterwards.
    namespaces::join_namespace(&pid_ns, Namespace::PID)?;
    let (report_read, report_write) = pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe2"))?;
    // SAFETY: this helper is single-threaded (checked in `start`), so the child is a complete
    // copy of the process and may allocate before it exits.
    match unsafe { fork() }.map_err(sys_err("fork mounter"))? {
        ForkResult::Child => {
            drop(report_read);
            let result = namespaces::join_namespace(&net_ns, Namespace::NET)
                .map_err(HelperError::from)
                .and_then(|()| {
                    Ok(request
                        .rootfs
                        .mount_vps_side(request.ids, &request.proc_binds)?)
                });
            match result {
                Ok(()) => exit_child(0),
                Err(error) => {
                    let _ = File::from(report_write).write_all(error.to_string().as_bytes());
                    exit_child(1)
                }
            }
        }
        ForkResult::Parent { child } => {
            drop(report_write);
            let mut message = String::new();
            let read = File::from(report_read).read_to_string(&mut message);
            let status = waitpid(child, None).map_err(sys_err("waitpid mounter"))?;
            read.map_err(|source| HelperError::Io {
                operation: "read mounter report",
                path: PathBuf::from("pipe"),
                source,
            })?;
            match status {
                WaitStatus::Exited(_, 0) if message.is_empty() => Ok(()),
                _ if !message.is_empty() => Err(HelperError::ChildSetup(message)),
                other => Err(HelperError::ChildSetup(format!(
                    "the mounter ended with {other:?}"
                ))),
            }
        }
    }
}

/// Runs in the cloned child: becomes the VPS's init. Returns only on failure.
fn init_child(
    request: &StartRequest,
    console: &OwnedFd,
    filter: &BpfProgram,
    sysinfo_link: Option<&UnixStream>,
) -> Result<Infallible, HelperError> {
    become_vps_root()?;
    setsid().map_err(sys_err("setsid"))?;
    sethostname(&request.hostname).map_err(sys_err("sethostname"))?;
    rootfs::enter_locked_root()?;
    let argv = [CString::new(INIT_PATH)?];
    let env = INIT_ENV
        .iter()
        .map(|e| CString::new(*e))
        .collect::<Result<Vec<_>, _>>()?;
    redirect_stdio(console)?;
    lock_down(filter, sysinfo_link)?;
    execve(&argv[0], &argv, &env).map_err(sys_err("execve /sbin/init"))
}

/// In a process that has just created or joined the VPS's user namespace: become its root
/// (uid and gid 0 inside, the VPS's base id on the host), with no supplementary groups.
pub(crate) fn become_vps_root() -> Result<(), HelperError> {
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    setgroups(&[]).map_err(sys_err("setgroups"))?;
    setresgid(root_gid, root_gid, root_gid).map_err(sys_err("setresgid 0"))?;
    setresuid(root_uid, root_uid, root_uid).map_err(sys_err("setresuid 0"))
}

/// First steps of a long-lived process the start helper forks for a VPS (console supervisor,
/// sysinfo server): a session of its own; stdio on /dev/null, since the agent reads the
/// helper's stdout and stderr to EOF and no such process may hold them; and, charged to the
/// VPS's memory cgroup, never the process its OOM killer picks.
pub(crate) fn detach_service() {
    let _ = setsid();
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = dup2(null.as_raw_fd(), fd);
        }
    }
    let _ = fs::write("/proc/self/oom_score_adj", "-1000");
}

/// The last steps before a VPS process execs: shrink the capability bounding set, make every
/// fd but stdio close on exec, restore default signal handling and install the seccomp filter
/// (last, so the setup itself is not filtered).
///
/// With a link to the VPS's sysinfo server, sysinfo(2) goes to that server
/// ([`crate::runtime::isolation::sysinfo`]): the filter is installed with a listener, which is sent over the link.
pub(crate) fn lock_down(
    filter: &BpfProgram,
    sysinfo_link: Option<&UnixStream>,
) -> Result<(), HelperError> {
    capabilities::drop_bounding_set()?;
    identity::mark_cloexec_from(3).map_err(sys_err("close_range"))?;
    reset_signals()?;
    match sysinfo_link {
        Some(link) => {
            let listener = seccomp::install_with_listener(&seccomp::with_sysinfo_notify(filter))?;
            sysinfo::send_listener(link, &listener)?;
        }
        None => seccomp::install(filter)?,
    }
    Ok(())
}

/// The console pty as stdin, stdout, stderr and controlling terminal of the init.
fn redirect_stdio(console: &OwnedFd) -> Result<(), HelperError> {
    for target in 0..3 {
        dup2(console.as_raw_fd(), target).map_err(sys_err("dup2 stdio"))?;
    }
    // Failure (e.g. no session) only means the console is not the init's controlling terminal.
    let _ = crate::runtime::sys::set_controlling_terminal(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn steps_are_split_from_messages_with_or_without_a_time() {
        let stderr = b"paddock-step: console\t@1000\nwarning: x\npaddock-step: mount disk\n";
        let (last, rest) = split_steps(stderr);
        assert_eq!(last.as_deref(), Some("mount disk"));
        assert_eq!(rest, "warning: x");
        // A name that happens to contain the separator but no number keeps it.
        assert_eq!(
            parse_step("paddock-step: odd\t@name"),
            Some(("odd\t@name", None))
        );
        assert_eq!(parse_step("no step"), None);
    }

    #[test]
    fn durations_run_from_spawn_through_each_step_to_the_exit() {
        let stderr = b"paddock-step: a\t@1500\npaddock-step: untimed\npaddock-step: b\t@4000\n";
        let times = HelperTimes::from_stderr(1000, stderr, 10_000);
        let ns = Duration::from_nanos;
        assert_eq!(
            times.durations(),
            vec![
                ("exec helper".to_owned(), ns(500)),
                ("a".to_owned(), ns(2500)),
                ("b".to_owned(), ns(6000)),
            ]
        );
        let parts: Duration = times.durations().iter().map(|(_, took)| *took).sum();
        assert_eq!(parts, ns(9000));
    }
}
