//! Agent-side lifecycle of a VPS's processes: starting the init through the start helper,
//! graceful stop (the init's halt signal, from its template, then SIGKILL), and emptying the
//! cgroup.
//!
//! The agent never waits on the init as a child: the init is reparented when the start helper
//! exits, and is tracked by its recorded identity (pid + start time + boot id) and by cgroup
//! membership, which is what lets a restarted agent adopt it.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::helper::{self, HelperCallError, HelperTimes, StartReply, StartRequest, START};
use super::identity::{Pidfd, ProcessError, ProcessIdentity};
use crate::runtime::cgroups::VpsCgroup;
use crate::template::metadata::HaltSignal;

/// When a stop sends the halt signal again if the init is still running (then after twice as
/// long, and so on): see [`halt`].
pub const HALT_RESEND_FIRST: Duration = Duration::from_secs(1);
/// How long to wait for a cgroup to empty after SIGKILL before giving up.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause between checks of a cgroup that is emptying; doubled up to
/// [`POLL_INTERVAL`], so a VPS whose processes die at once is not held up for a whole interval.
const POLL_FIRST: Duration = Duration::from_millis(1);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Errors starting or stopping a VPS's processes.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The start helper could not be run or reported a failure.
    #[error(transparent)]
    Helper(#[from] HelperCallError),
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
/// (or setup failed, or `limit` passed: the helper is then killed) and returns its identity
/// and the disk's loop device, and when the helper's steps began.
pub(crate) fn start_init(
    helper_binary: &Path,
    request: &StartRequest,
    limit: Duration,
) -> Result<(StartReply, HelperTimes), SupervisorError> {
    helper::call_timed(helper_binary, START, request, limit).map_err(SupervisorError::from)
}

/// Graceful stop: `halt_signal` to the init, repeated after [`HALT_RESEND_FIRST`], then at
/// doubling intervals, for up to `grace`; then SIGKILL for everything left in the cgroup.
pub(crate) fn stop(
    init: Option<&ProcessIdentity>,
    cgroup: &VpsCgroup,
    halt_signal: HaltSignal,
    grace: Duration,
) -> Result<(), SupervisorError> {
    if let Some(pidfd) = open_init(init)? {
        if !halt(&pidfd, halt_signal, grace)? {
            tracing::warn!(
                cgroup = cgroup.path(),
                %halt_signal,
                ?grace,
                "init did not halt on its halt signal; killing"
            );
            pidfd.send_signal(Signal::SIGKILL)?;
        }
    }
    kill_all(None, cgroup)
}

/// Sends `halt_signal` until the init exits or `grace` is over; returns whether it exited.
///
/// An init drops a halt signal that comes before it is ready for it: PID 1 of a pid namespace
/// never gets a signal it has no handler for yet (busybox init before it installs them), and
/// sysvinit forgets a SIGPWR that comes while its boot scripts run. Sending it again is
/// harmless to inits that are already shutting down (busybox init, systemd and the
/// `debian-12` inittab ignore or repeat an idempotent request) and saves a stop right after a
/// start from always ending in SIGKILL.
fn halt(pidfd: &Pidfd, halt_signal: HaltSignal, grace: Duration) -> Result<bool, SupervisorError> {
    let deadline = Instant::now() + grace;
    let mut interval = HALT_RESEND_FIRST;
    loop {
        pidfd.send_signal_number(halt_signal.number())?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if pidfd.wait_exit(interval.min(remaining))? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        interval = interval.saturating_mul(2);
    }
}

/// Immediate kill: SIGKILL to the init (which takes its whole pid namespace with it), then to
/// anything else in the cgroup, until the cgroup is empty.
pub(crate) fn kill_all(
    init: Option<&ProcessIdentity>,
    cgroup: &VpsCgroup,
) -> Result<(), SupervisorError> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    if let Some(pidfd) = open_init(init)? {
        pidfd.send_signal(Signal::SIGKILL)?;
        // The kernel empties the init's pid namespace before it reports the init's exit, so
        // once it is reported the cgroup is (nearly) empty.
        pidfd.wait_exit(KILL_TIMEOUT)?;
    }
    let mut pause = POLL_FIRST;
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
        thread::sleep(pause);
        pause = (pause * 2).min(POLL_INTERVAL);
    }
}

fn open_init(init: Option<&ProcessIdentity>) -> Result<Option<Pidfd>, SupervisorError> {
    match init {
        Some(init) => Ok(Pidfd::open(init)?),
        None => Ok(None),
    }
}
