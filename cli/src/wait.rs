//! Waiting for a VPS to reach a state: following `WatchVps`, which sends each change the
//! controller records, or polling `GetVps` with a controller that does not serve it yet;
//! with a progress line on a terminal and a clear error when the VPS fails or time runs out.

use std::time::{Duration, Instant};

use paddock_proto::v1::{self, VpsRef, VpsState};
use tonic::Code;

use crate::client::{ClientError, Session};
use crate::terminal::Progress;
use crate::views::vps_state_name;

/// How often `GetVps` is polled when the controller cannot stream changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often the progress line's clock moves while the stream is quiet.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// What the caller waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// State `running`.
    Running,
    /// State `running` with an init other than `previous_init_pid` (after a restart or
    /// rebuild, a report of the old init still says "running").
    RunningAgain { previous_init_pid: u32 },
    /// State `stopped`.
    Stopped,
    /// `GetVps` answers NotFound.
    Gone,
    /// The node applied the VPS's current desired state (after a resize: a report of the
    /// VPS running with its old limits must not end the wait), and it is running or stopped
    /// as `running` says.
    Applied { running: bool },
}

impl Goal {
    fn describe(self) -> &'static str {
        match self {
            Goal::Running => "running",
            Goal::RunningAgain { .. } => "running again",
            Goal::Stopped => "stopped",
            Goal::Gone => "deleted",
            Goal::Applied { .. } => "applied by its node",
        }
    }
}

/// Why waiting ended without reaching the goal.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("vps {name} failed: {message}")]
    Failed { name: String, message: String },
    #[error("vps {name} is suspended{}", detail(.message))]
    Suspended { name: String, message: String },
    #[error("vps {name} disappeared while waiting for it to be {goal}")]
    Vanished { name: String, goal: &'static str },
    #[error(
        "timed out after {secs}s waiting for vps {name} to be {goal} (state: {state}{}); \
         it may still get there: check `paddock show {name}`",
        detail(.message)
    )]
    Timeout {
        name: String,
        goal: &'static str,
        state: &'static str,
        message: String,
        secs: u64,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// Where one observation leaves the wait.
#[derive(Debug)]
pub enum Progression {
    /// The goal is reached.
    Done,
    /// Keep polling.
    Pending,
    /// The VPS will not get there by itself.
    Failed(WaitError),
}

/// Judges one observed VPS against the goal.
pub fn assess(vps: &v1::Vps, goal: Goal) -> Progression {
    let state = VpsState::try_from(vps.state).unwrap_or(VpsState::Unknown);
    let failed = |vps: &v1::Vps| WaitError::Failed {
        name: vps.name.clone(),
        message: if vps.message.is_empty() {
            "state is error (no message from the controller)".to_owned()
        } else {
            vps.message.clone()
        },
    };
    match (goal, state) {
        // Running means the node confirmed the current spec, not only that a heartbeat saw
        // the init (e.g. the one from before a change).
        (Goal::Running, VpsState::Running) if vps.converged => Progression::Done,
        (Goal::Stopped, VpsState::Stopped) => Progression::Done,
        (Goal::Applied { running }, VpsState::Running | VpsState::Stopped) => {
            if vps.converged && (state == VpsState::Running) == running {
                Progression::Done
            } else {
                Progression::Pending
            }
        }
        (Goal::RunningAgain { previous_init_pid }, VpsState::Running) => {
            if vps.init_pid != 0 && vps.init_pid != previous_init_pid {
                Progression::Done
            } else {
                Progression::Pending
            }
        }
        (_, VpsState::Error) => Progression::Failed(failed(vps)),
        (
            Goal::Running | Goal::RunningAgain { .. } | Goal::Applied { running: true },
            VpsState::Suspended,
        ) => Progression::Failed(WaitError::Suspended {
            name: vps.name.clone(),
            message: vps.message.clone(),
        }),
        _ => Progression::Pending,
    }
}

/// Waits until the VPS reaches `goal`. Returns the last VPS seen (`None`
/// once it is gone). `timeout` of `None` waits forever.
pub async fn wait_for(
    session: &Session,
    vps_ref: &VpsRef,
    goal: Goal,
    timeout: Option<Duration>,
) -> Result<Option<v1::Vps>, WaitError> {
    let mut wait = Wait {
        session,
        vps_ref,
        goal,
        timeout,
        started: Instant::now(),
        progress: Progress::new(),
    };
    // Streams opened in a row that broke off before telling anything.
    let mut fruitless = 0;
    loop {
        match wait.follow().await? {
            Followed::Ended(result) => return Ok(result.map(|vps| *vps)),
            Followed::Unsupported => return wait.poll().await,
            // The controller died or restarted: with several in the context, follow the VPS
            // through the next one (a new stream starts with the VPS's current view, so
            // nothing is missed); with one, or when they all fail, poll `GetVps`.
            Followed::BrokenOff { heard } => {
                fruitless = if heard { 0 } else { fruitless + 1 };
                if wait.over() || fruitless > MAX_FRUITLESS_STREAMS || !session.next_controller() {
                    return wait.poll().await;
                }
                tokio::time::sleep(RESUME_PAUSE).await;
            }
        }
    }
}

/// Streams that may break off in a row, each before its first event, before polling.
const MAX_FRUITLESS_STREAMS: usize = 4;
/// Pause before following the VPS through the next controller.
const RESUME_PAUSE: Duration = Duration::from_millis(100);

/// How following the stream ended.
enum Followed {
    /// The wait is over: the goal's VPS, or `None` once gone.
    Ended(Option<Box<v1::Vps>>),
    /// The controller does not serve `WatchVps`.
    Unsupported,
    /// The stream ended early (`heard`: after at least one event); another controller or
    /// polling takes over.
    BrokenOff { heard: bool },
}

struct Wait<'a> {
    session: &'a Session,
    vps_ref: &'a VpsRef,
    goal: Goal,
    timeout: Option<Duration>,
    started: Instant,
    progress: Progress,
}

impl Wait<'_> {
    /// What the VPS being gone means for the goal.
    fn gone(&self) -> Result<Option<v1::Vps>, WaitError> {
        match self.goal {
            Goal::Gone => Ok(None),
            _ => Err(WaitError::Vanished {
                name: self.vps_ref.name.clone(),
                goal: self.goal.describe(),
            }),
        }
    }

    fn timed_out(&self, vps: &v1::Vps) -> WaitError {
        WaitError::Timeout {
            name: vps.name.clone(),
            goal: self.goal.describe(),
            state: vps_state_name(vps.state),
            message: vps.message.clone(),
            secs: self.started.elapsed().as_secs(),
        }
    }

    fn over(&self) -> bool {
        self.timeout
            .is_some_and(|limit| self.started.elapsed() >= limit)
    }

    fn show(&mut self, vps: &v1::Vps) {
        let node = if vps.node.is_empty() {
            String::new()
        } else {
            format!(" on {}", vps.node)
        };
        self.progress.update(&format!(
            "vps {}: {}{node}{} ({}s, waiting for {})",
            vps.name,
            vps_state_name(vps.state),
            detail(&vps.message),
            self.started.elapsed().as_secs(),
            self.goal.describe()
        ));
    }

    /// Follows `WatchVps` until the goal, a failure, the timeout or the end of the stream.
    async fn follow(&mut self) -> Result<Followed, WaitError> {
        let request = v1::WatchVpsRequest {
            tenant: self.vps_ref.tenant.clone(),
            name: self.vps_ref.name.clone(),
        };
        let mut stream = match self.session.vps().watch_vps(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => {
                return Ok(Followed::Unsupported)
            }
            Err(status) if status.code() == Code::NotFound => {
                return self.gone().map(|vps| Followed::Ended(vps.map(Box::new)))
            }
            Err(status) if crate::client::answer_lost(&status) => {
                return Ok(Followed::BrokenOff { heard: false })
            }
            Err(status) => return Err(self.session.status_error(&status).into()),
        };
        let mut last: Option<v1::Vps> = None;
        loop {
            let message = match tokio::time::timeout(PROGRESS_INTERVAL, stream.message()).await {
                Ok(message) => message,
                Err(_quiet) => {
                    match &last {
                        Some(vps) if self.over() => return Err(self.timed_out(vps)),
                        Some(vps) => self.show(vps),
                        // Not even the first event yet: polling reports the state and the timeout.
                        None if self.over() => return Ok(Followed::BrokenOff { heard: false }),
                        None => {}
                    }
                    continue;
                }
            };
            let heard = last.is_some();
            let event = match message {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(Followed::BrokenOff { heard }),
                Err(status) if status.code() == Code::NotFound => {
                    return self.gone().map(|vps| Followed::Ended(vps.map(Box::new)))
                }
                Err(_) => return Ok(Followed::BrokenOff { heard }),
            };
            if event.gone {
                return self.gone().map(|vps| Followed::Ended(vps.map(Box::new)));
            }
            let Some(vps) = event.vps else {
                continue;
            };
            match assess(&vps, self.goal) {
                Progression::Done => return Ok(Followed::Ended(Some(Box::new(vps)))),
                Progression::Failed(err) => return Err(err),
                Progression::Pending => {}
            }
            if self.over() {
                return Err(self.timed_out(&vps));
            }
            self.show(&vps);
            last = Some(vps);
        }
    }

    /// Polls `GetVps` until the goal, a failure or the timeout.
    async fn poll(&mut self) -> Result<Option<v1::Vps>, WaitError> {
        loop {
            let read = self
                .session
                .read(|session| {
                    let (mut client, reference) = (session.vps(), self.vps_ref.clone());
                    async move { client.get_vps(reference).await }
                })
                .await;
            let vps = match read {
                Ok(vps) => vps,
                Err(error) if error.code() == Some(Code::NotFound) => return self.gone(),
                Err(error) => return Err(error.into()),
            };
            match assess(&vps, self.goal) {
                Progression::Done => return Ok(Some(vps)),
                Progression::Failed(err) => return Err(err),
                Progression::Pending => {}
            }
            if self.over() {
                return Err(self.timed_out(&vps));
            }
            self.show(&vps);
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vps(state: VpsState, message: &str) -> v1::Vps {
        v1::Vps {
            name: "web1".into(),
            state: state as i32,
            message: message.into(),
            converged: true,
            ..Default::default()
        }
    }

    #[test]
    fn running_goal() {
        assert!(matches!(
            assess(&vps(VpsState::Running, ""), Goal::Running),
            Progression::Done
        ));
        assert!(matches!(
            assess(&vps(VpsState::Pending, ""), Goal::Running),
            Progression::Pending
        ));
        // A heartbeat sees the init, but the node has not confirmed the current spec yet.
        let unconfirmed = v1::Vps {
            converged: false,
            ..vps(VpsState::Running, "")
        };
        assert!(matches!(
            assess(&unconfirmed, Goal::Running),
            Progression::Pending
        ));
        match assess(
            &vps(VpsState::Error, "template foo not found"),
            Goal::Running,
        ) {
            Progression::Failed(err) => {
                assert_eq!(err.to_string(), "vps web1 failed: template foo not found")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            assess(&vps(VpsState::Suspended, ""), Goal::Running),
            Progression::Failed(WaitError::Suspended { .. })
        ));
    }

    #[test]
    fn running_again_needs_a_new_init() {
        let goal = Goal::RunningAgain {
            previous_init_pid: 42,
        };
        let with_pid = |init_pid| v1::Vps {
            init_pid,
            ..vps(VpsState::Running, "")
        };
        assert!(matches!(assess(&with_pid(42), goal), Progression::Pending));
        assert!(matches!(assess(&with_pid(0), goal), Progression::Pending));
        assert!(matches!(assess(&with_pid(43), goal), Progression::Done));
        assert!(matches!(
            assess(&vps(VpsState::Error, "rootfs"), goal),
            Progression::Failed(_)
        ));
    }

    #[test]
    fn applied_needs_the_node_to_have_applied_the_current_state() {
        let goal = Goal::Applied { running: true };
        let running = |converged| v1::Vps {
            converged,
            ..vps(VpsState::Running, "")
        };
        // A heartbeat says running, but the node has not applied the resize yet.
        assert!(matches!(
            assess(&running(false), goal),
            Progression::Pending
        ));
        assert!(matches!(assess(&running(true), goal), Progression::Done));
        let stopped = v1::Vps {
            converged: true,
            ..vps(VpsState::Stopped, "")
        };
        assert!(matches!(assess(&stopped, goal), Progression::Pending));
        assert!(matches!(
            assess(&stopped, Goal::Applied { running: false }),
            Progression::Done
        ));
        assert!(matches!(
            assess(&vps(VpsState::Error, "memory"), goal),
            Progression::Failed(_)
        ));
    }

    #[test]
    fn stopped_and_gone_goals() {
        assert!(matches!(
            assess(&vps(VpsState::Stopped, ""), Goal::Stopped),
            Progression::Done
        ));
        assert!(matches!(
            assess(&vps(VpsState::Running, ""), Goal::Stopped),
            Progression::Pending
        ));
        assert!(matches!(
            assess(&vps(VpsState::Deleting, ""), Goal::Gone),
            Progression::Pending
        ));
        assert!(matches!(
            assess(&vps(VpsState::Error, "umount failed"), Goal::Gone),
            Progression::Failed(_)
        ));
    }

    #[test]
    fn timeout_message_names_state_and_reason() {
        let err = WaitError::Timeout {
            name: "web1".into(),
            goal: "running",
            state: "pending",
            message: "no node has capacity".into(),
            secs: 300,
        };
        assert_eq!(
            err.to_string(),
            "timed out after 300s waiting for vps web1 to be running (state: pending: \
             no node has capacity); it may still get there: check `paddock show web1`"
        );
    }
}
