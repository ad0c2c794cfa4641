//! Agent-side lifecycle of a VPS's processes: starting the init through the start helper,
//! graceful stop (the init's power-off signal, then SIGKILL), and emptying the cgroup.
//!
//! The agent never waits on the init as a child: the init is reparented when the start helper
//! exits, and is tracked by its recorded identity (pid + start time + boot id) and by cgroup
//! membership, which is what lets a restarted agent adopt it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::cgroups::VpsCgroup;
use super::helper::{StartReply, StartRequest, START};
use super::process::{Pidfd, ProcessError, ProcessIdentity};
use super::INTERNAL_ARG;

/// busybox init (and sysvinit-compatible inits) power off on SIGUSR2.
pub const POWER_OFF_SIGNAL: Signal = Signal::SIGUSR2;
/// How long to wait for a cgroup to empty after SIGKILL before giving up.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Errors starting or stopping a VPS's processes.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The helper binary could not be run.
    #[error("run helper {path}: {source}")]
    HelperSpawn {
        /// The helper binary.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The start helper reported a failure.
    #[error("start helper failed ({status}): {stderr}")]
    HelperFailed {
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The start helper's reply could not be decoded.
    #[error("start helper replied {stdout:?}: {source}")]
    BadReply {
        /// What it printed on stdout.
        stdout: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// Signalling or inspecting the init failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Processes remained in the cgroup after SIGKILL and the timeout.
    #[error("cgroup {cgroup} still has processes {pids:?} after {timeout:?}")]
    StillRunning {
        /// The cgroup.
        cgroup: String,
        /// What was left.
        pids: Vec<u32>,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Starts the init through `helper_binary __internal start`; blocks until the init has exec'd
/// (or setup failed) and returns its identity.
pub(crate) fn start_init(
    helper_binary: &Path,
    request: &StartRequest,
) -> Result<ProcessIdentity, SupervisorError> {
    let json = serde_json::to_string(request).map_err(|source| SupervisorError::BadReply {
        stdout: String::new(),
        source,
    })?;
    let output = Command::new(helper_binary)
        .arg(INTERNAL_ARG)
        .arg(START)
        .arg(json)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| SupervisorError::HelperSpawn {
            path: helper_binary.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(SupervisorError::HelperFailed {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let reply: StartReply = serde_json::from_str(&stdout)
        .map_err(|source| SupervisorError::BadReply { stdout, source })?;
    Ok(reply.init)
}

/// Graceful stop: the power-off signal to the init, up to `grace` for it to exit, then SIGKILL
/// for everything left in the cgroup.
pub(crate) fn stop(
    init: Option<&ProcessIdentity>,
    cgroup: &VpsCgroup,
    grace: Duration,
) -> Result<(), SupervisorError> {
    if let Some(pidfd) = open_init(init)? {
        pidfd.send_signal(POWER_OFF_SIGNAL)?;
        if !pidfd.wait_exit(grace)? {
            tracing::warn!(
                cgroup = cgroup.path(),
                ?grace,
                "init ignored power-off; killing"
            );
            pidfd.send_signal(Signal::SIGKILL)?;
        }
    }
    kill_all(None, cgroup)
}

/// Immediate kill: SIGKILL to the init (which takes its whole pid namespace with it), then to
/// anything else in the cgroup, until the cgroup is empty.
pub(crate) fn kill_all(
    init: Option<&ProcessIdentity>,
    cgroup: &VpsCgroup,
) -> Result<(), SupervisorError> {
    if let Some(pidfd) = open_init(init)? {
        pidfd.send_signal(Signal::SIGKILL)?;
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let remaining = cgroup.procs();
        if remaining.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SupervisorError::StillRunning {
                cgroup: cgroup.path().to_string(),
                pids: remaining,
                timeout: KILL_TIMEOUT,
            });
        }
        cgroup.kill_all();
        thread::sleep(POLL_INTERVAL);
    }
}

fn open_init(init: Option<&ProcessIdentity>) -> Result<Option<Pidfd>, SupervisorError> {
    match init {
        Some(init) => Ok(Pidfd::open(init)?),
        None => Ok(None),
    }
}
