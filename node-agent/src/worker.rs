//! One worker task per VPS. A VPS's applies, deletes and status reads arrive as typed
//! [`Action`]s on its worker's channel and run one after the other; different VPSes proceed in
//! parallel, with at most [`MAX_CONCURRENT_APPLIES`] full applies at once across all workers.
//!
//! A worker owns what the agent keeps about its VPS between calls: the [`LastApply`] that
//! answers unchanged re-applies at once, and the VPS's network port, which it converges after
//! every full apply and removes on delete. The restart and rebuild generations carried out
//! live in the VPS's state beside each other (the runtime's `state.json`), so a restarted agent
//! never repeats either.
//!
//! [`Workers`] maps VPS ids to workers. It starts one on a VPS's first action. A worker whose
//! VPS does not exist after an action (deleted, never created, or its creation failed) leaves
//! the registry and ends, so the map holds only VPSes of this node; the next action for that
//! id starts a fresh worker. A worker whose task ended otherwise (a bug: workers do not panic)
//! is replaced by the next action for its VPS.
//!
//! Runtime calls block (files, cgroups, processes), so they run on tokio's blocking threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{info, warn};

use crate::applied::{LastApply, MAX_CONCURRENT_APPLIES};
use crate::network::{Network, NetworkError, PortSpec};
use crate::runtime::checkpoint::VethAttach;
use crate::runtime::storage::snapshot::COPY_DEADLINE;
use crate::runtime::{
    CheckpointOptions, CheckpointReport, ObservedState, ResizeSender, Restored, Runtime,
    RuntimeError, SnapshotInfo, TtySize, VpsObserved, VpsSpec,
};

/// The runtime calls a worker makes: the seam that lets the registry be tested without
/// containers.
pub trait VpsRuntime: Send + Sync + 'static {
    /// Makes the VPS match `spec` (see [`Runtime::apply`]).
    fn apply(&self, spec: &VpsSpec) -> Result<VpsObserved, RuntimeError>;
    /// Removes the VPS and everything it owns; a VPS that does not exist is deleted.
    fn delete(&self, vps_id: &str) -> Result<(), RuntimeError>;
    /// What exists of the VPS, `None` if nothing.
    fn status(&self, vps_id: &str) -> Result<Option<VpsObserved>, RuntimeError>;
    /// Takes, restores, deletes or lists snapshots of the VPS's disk (see
    /// [`Runtime::create_snapshot`] and its siblings).
    fn snapshot(&self, vps_id: &str, op: &SnapshotOp) -> Result<SnapshotOutcome, RuntimeError> {
        let _ = (vps_id, op);
        Err(RuntimeError::InvalidArgument {
            field: "snapshot",
            rule: "snapshots are not supported by this runtime".to_owned(),
        })
    }
    /// Checkpoints the running VPS with CRIU into `images` (see [`Runtime::checkpoint`]).
    fn checkpoint(
        &self,
        vps_id: &str,
        images: &std::path::Path,
        options: CheckpointOptions,
    ) -> Result<CheckpointReport, RuntimeError> {
        let _ = (vps_id, images, options);
        Err(RuntimeError::InvalidArgument {
            field: "checkpoint",
            rule: "checkpoints are not supported by this runtime".to_owned(),
        })
    }
    /// Restores a checkpoint as the VPS `spec` names (see [`Runtime::restore_checkpoint`]).
    fn restore_checkpoint(
        &self,
        spec: &VpsSpec,
        images: &std::path::Path,
        veth: Option<VethAttach>,
    ) -> Result<VpsObserved, RuntimeError> {
        let _ = (spec, images, veth);
        Err(RuntimeError::InvalidArgument {
            field: "checkpoint",
            rule: "checkpoints are not supported by this runtime".to_owned(),
        })
    }
    /// Starts `request`'s command in the running VPS (see [`Runtime::exec`]); must run inside
    /// a tokio runtime (on a blocking thread).
    fn exec(&self, vps_id: &str, request: &ExecRequest) -> Result<ExecStarted, RuntimeError> {
        let _ = (vps_id, request);
        Err(RuntimeError::InvalidArgument {
            field: "exec",
            rule: "exec is not supported by this runtime".to_owned(),
        })
    }
}

/// A command to start in a VPS.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// `KEY=VALUE` entries added to the defaults.
    pub env: Vec<String>,
    /// A pseudo-terminal of this size, or plain pipes.
    pub tty: Option<TtySize>,
}

/// A started command: the child (its pipes, or the terminal on stdout) and, with a
/// terminal, the channel that resizes it.
pub type ExecStarted = (tokio::process::Child, Option<ResizeSender>);

/// A snapshot operation on one VPS, run on its worker like applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotOp {
    Create(String),
    Restore(String),
    Delete(String),
    List,
}

/// What a [`SnapshotOp`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotOutcome {
    Created(SnapshotInfo),
    /// The VPS is stopped now; the controller's next apply starts it if it ran.
    Restored(Restored),
    Deleted,
    Listed(Vec<SnapshotInfo>),
}

impl VpsRuntime for Runtime {
    fn apply(&self, spec: &VpsSpec) -> Result<VpsObserved, RuntimeError> {
        Runtime::apply(self, spec)
    }

    fn exec(&self, vps_id: &str, request: &ExecRequest) -> Result<ExecStarted, RuntimeError> {
        match request.tty {
            Some(size) => Runtime::exec_tty(self, vps_id, &request.command, &request.env, size)
                .map(|(child, resize)| (child, Some(resize))),
            None => Runtime::exec(self, vps_id, &request.command, &request.env)
                .map(|child| (child, None)),
        }
    }

    fn delete(&self, vps_id: &str) -> Result<(), RuntimeError> {
        Runtime::delete(self, vps_id)
    }

    fn status(&self, vps_id: &str) -> Result<Option<VpsObserved>, RuntimeError> {
        Runtime::status(self, vps_id)
    }

    fn checkpoint(
        &self,
        vps_id: &str,
        images: &std::path::Path,
        options: CheckpointOptions,
    ) -> Result<CheckpointReport, RuntimeError> {
        Runtime::checkpoint(self, vps_id, images, options)
    }

    fn restore_checkpoint(
        &self,
        spec: &VpsSpec,
        images: &std::path::Path,
        veth: Option<VethAttach>,
    ) -> Result<VpsObserved, RuntimeError> {
        Runtime::restore_checkpoint(self, spec, images, veth)
    }

    fn snapshot(&self, vps_id: &str, op: &SnapshotOp) -> Result<SnapshotOutcome, RuntimeError> {
        Ok(match op {
            SnapshotOp::Create(name) => {
                SnapshotOutcome::Created(self.create_snapshot(vps_id, name, COPY_DEADLINE)?)
            }
            SnapshotOp::Restore(name) => {
                SnapshotOutcome::Restored(self.restore_snapshot(vps_id, name, COPY_DEADLINE)?)
            }
            SnapshotOp::Delete(name) => {
                self.delete_snapshot(vps_id, name)?;
                SnapshotOutcome::Deleted
            }
            SnapshotOp::List => SnapshotOutcome::Listed(self.list_snapshots(vps_id)?),
        })
    }
}

/// Why a worker could not carry out an action.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The runtime refused or failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The VPS's network port could not be set up or removed.
    #[error("network port of VPS {vps_id}: {source}")]
    Network {
        /// The VPS.
        vps_id: String,
        /// What failed.
        source: NetworkError,
    },
    /// The agent is stopping: no new full applies start.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The worker ended before it answered (a bug; the next action starts a new one).
    #[error("the worker of VPS {0} ended before answering")]
    Ended(String),
    /// A runtime call on a blocking thread panicked or was cancelled.
    #[error("runtime task of VPS {vps_id} failed: {message}")]
    Task {
        /// The VPS.
        vps_id: String,
        /// What the task reported.
        message: String,
    },
}

/// What the controller asks an apply to reach.
#[derive(Debug, Clone)]
pub struct ApplyRequest {
    /// The VPS as the runtime takes it.
    pub spec: VpsSpec,
    /// Its network port, if the controller gave it one.
    pub port: Option<PortSpec>,
    /// The wire spec, encoded: an unchanged re-apply is recognised by these bytes.
    pub encoded: Vec<u8>,
}

type Reply<T> = oneshot::Sender<Result<T, WorkerError>>;

/// What a worker is asked to do.
enum Action {
    Apply {
        request: Box<ApplyRequest>,
        reply: Reply<VpsObserved>,
    },
    Delete {
        reply: Reply<()>,
    },
    Status {
        reply: Reply<Option<VpsObserved>>,
    },
    Snapshot {
        op: SnapshotOp,
        reply: Reply<SnapshotOutcome>,
    },
    Exec {
        request: ExecRequest,
        reply: Reply<ExecStarted>,
    },
    Checkpoint {
        images: std::path::PathBuf,
        options: CheckpointOptions,
        reply: Reply<CheckpointReport>,
    },
    RestoreCheckpoint {
        request: Box<ApplyRequest>,
        images: std::path::PathBuf,
        reply: Reply<VpsObserved>,
    },
}

/// One worker in the registry.
struct Entry {
    /// Tells this worker from a later one for the same VPS.
    id: u64,
    /// Only ever used with the registry locked, so a worker that checked its queue under the
    /// lock knows nothing more can arrive.
    sender: mpsc::UnboundedSender<Action>,
    /// Whether the task still runs (and, in tests, a way to end it).
    task: tokio::task::AbortHandle,
}

/// What every worker shares.
struct Context<R> {
    runtime: Arc<R>,
    /// The VPS ports; `None` leaves VPSes with loopback only.
    network: Option<Arc<Network>>,
    /// Bounds the full applies running at once, across all workers.
    full_applies: Semaphore,
}

struct Registry<R> {
    context: Arc<Context<R>>,
    workers: Mutex<HashMap<String, Entry>>,
    next_id: AtomicU64,
}

impl<R> Registry<R> {
    fn workers(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The workers of this node's VPSes, by VPS id.
pub struct Workers<R: VpsRuntime = Runtime> {
    registry: Arc<Registry<R>>,
}

impl<R: VpsRuntime> Workers<R> {
    pub fn new(runtime: Arc<R>, network: Option<Arc<Network>>) -> Self {
        Self {
            registry: Arc::new(Registry {
                context: Arc::new(Context {
                    runtime,
                    network,
                    full_applies: Semaphore::new(MAX_CONCURRENT_APPLIES),
                }),
                workers: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Applies `request` to its VPS after the VPS's earlier actions. A runtime or network
    /// failure is an error here; the caller decides how to report it.
    pub async fn apply(&self, request: ApplyRequest) -> Result<VpsObserved, WorkerError> {
        let vps_id = request.spec.vps_id.clone();
        let request = Box::new(request);
        self.call(&vps_id, |reply| Action::Apply { request, reply })
            .await
    }

    /// Deletes the VPS (its runtime state and its port) and ends its worker.
    pub async fn delete(&self, vps_id: &str) -> Result<(), WorkerError> {
        self.call(vps_id, |reply| Action::Delete { reply }).await
    }

    /// What exists of the VPS, read after its earlier actions finished.
    pub async fn status(&self, vps_id: &str) -> Result<Option<VpsObserved>, WorkerError> {
        self.call(vps_id, |reply| Action::Status { reply }).await
    }

    /// Runs a snapshot operation on the VPS after its earlier actions (a restore stops a
    /// running VPS and removes its port; the next apply starts it again).
    pub async fn snapshot(
        &self,
        vps_id: &str,
        op: SnapshotOp,
    ) -> Result<SnapshotOutcome, WorkerError> {
        self.call(vps_id, |reply| Action::Snapshot { op, reply })
            .await
    }

    /// Checkpoints the VPS with CRIU after its earlier actions (see [`Runtime::checkpoint`]);
    /// its network port goes with its processes.
    pub async fn checkpoint(
        &self,
        vps_id: &str,
        images: std::path::PathBuf,
        options: CheckpointOptions,
    ) -> Result<CheckpointReport, WorkerError> {
        self.call(vps_id, |reply| Action::Checkpoint {
            images,
            options,
            reply,
        })
        .await
    }

    /// Restores a checkpoint as `request`'s VPS, with its network port re-attached.
    pub async fn restore_checkpoint(
        &self,
        request: ApplyRequest,
        images: std::path::PathBuf,
    ) -> Result<VpsObserved, WorkerError> {
        let vps_id = request.spec.vps_id.clone();
        self.call(&vps_id, |reply| Action::RestoreCheckpoint {
            request: Box::new(request),
            images,
            reply,
        })
        .await
    }

    /// Starts a command in the VPS after its earlier actions: an exec waits for a start or
    /// stop in progress (a command started in a VPS half up or half down would fail or die),
    /// but only its start is serialised; its output streams outside the worker, so a long
    /// shell never holds up the VPS's next apply.
    pub async fn exec(
        &self,
        vps_id: &str,
        request: ExecRequest,
    ) -> Result<ExecStarted, WorkerError> {
        self.call(vps_id, |reply| Action::Exec { request, reply })
            .await
    }

    /// How many workers are alive: one per VPS of this node that had an action since the
    /// agent started.
    pub fn count(&self) -> usize {
        self.registry
            .workers()
            .values()
            .filter(|entry| !entry.task.is_finished())
            .count()
    }

    /// Shuts the full-apply gate: applies that would run in full fail with
    /// [`WorkerError::ShuttingDown`]; deletes, status reads and unchanged re-applies go on.
    pub fn close(&self) {
        self.registry.context.full_applies.close();
    }

    async fn call<T>(
        &self,
        vps_id: &str,
        action: impl FnOnce(Reply<T>) -> Action,
    ) -> Result<T, WorkerError> {
        let (reply, answer) = oneshot::channel();
        self.dispatch(vps_id, action(reply));
        answer
            .await
            .map_err(|_| WorkerError::Ended(vps_id.to_owned()))?
    }

    /// Queues `action` on the VPS's worker, starting one if it has none or its worker ended.
    fn dispatch(&self, vps_id: &str, action: Action) {
        let mut workers = self.registry.workers();
        let action = match workers.get(vps_id) {
            Some(entry) if !entry.task.is_finished() => match entry.sender.send(action) {
                Ok(()) => return,
                Err(mpsc::error::SendError(action)) => {
                    warn!(%vps_id, "the VPS's worker had ended; starting a new one");
                    action
                }
            },
            Some(_) => {
                warn!(%vps_id, "the VPS's worker had ended; starting a new one");
                action
            }
            None => action,
        };
        let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::unbounded_channel();
        let worker = Worker {
            vps_id: vps_id.to_owned(),
            id,
            context: self.registry.context.clone(),
            registry: Arc::downgrade(&self.registry),
            last_apply: None,
        };
        // A fresh receiver is open: the send fails only if the task is already gone, and
        // then the caller's reply is dropped and it sees `Ended`.
        let _ = sender.send(action);
        let task = tokio::spawn(worker.run(receiver)).abort_handle();
        workers.insert(vps_id.to_owned(), Entry { id, sender, task });
    }

    /// Ends the VPS's worker as a crash would (for tests of the respawn).
    #[cfg(test)]
    fn abort(&self, vps_id: &str) -> Option<tokio::task::AbortHandle> {
        let workers = self.registry.workers();
        let task = workers.get(vps_id)?.task.clone();
        task.abort();
        Some(task)
    }
}

/// One VPS's worker: its task's state.
struct Worker<R> {
    vps_id: String,
    id: u64,
    context: Arc<Context<R>>,
    /// Weak: dropping [`Workers`] drops the senders, which ends every worker.
    registry: Weak<Registry<R>>,
    /// What the last full apply left, while it stands.
    last_apply: Option<LastApply>,
}

impl<R: VpsRuntime> Worker<R> {
    async fn run(mut self, mut actions: mpsc::UnboundedReceiver<Action>) {
        while let Some(action) = actions.recv().await {
            let exists = match action {
                Action::Apply { request, reply } => {
                    let result = self.apply(*request).await;
                    let exists = match &result {
                        Ok(_) => Some(true),
                        Err(_) => self.exists().await,
                    };
                    let _ = reply.send(result);
                    exists
                }
                Action::Delete { reply } => {
                    let result = self.delete().await;
                    let exists = match &result {
                        Ok(()) => Some(false),
                        Err(_) => self.exists().await,
                    };
                    let _ = reply.send(result);
                    exists
                }
                Action::Snapshot { op, reply } => {
                    let result = self.snapshot(op).await;
                    let exists = self.exists().await;
                    let _ = reply.send(result);
                    exists
                }
                Action::Checkpoint {
                    images,
                    options,
                    reply,
                } => {
                    let result = self.checkpoint(images, options).await;
                    let exists = self.exists().await;
                    let _ = reply.send(result);
                    exists
                }
                Action::RestoreCheckpoint {
                    request,
                    images,
                    reply,
                } => {
                    let result = self.restore_checkpoint(*request, images).await;
                    let exists = self.exists().await;
                    let _ = reply.send(result);
                    exists
                }
                Action::Exec { request, reply } => {
                    let result = self.exec(request).await;
                    let exists = match &result {
                        Ok(_) => Some(true),
                        Err(_) => self.exists().await,
                    };
                    let _ = reply.send(result);
                    exists
                }
                Action::Status { reply } => {
                    let result = self.status().await;
                    let exists = match &result {
                        Ok(observed) => Some(observed.is_some()),
                        Err(_) => None,
                    };
                    let _ = reply.send(result);
                    exists
                }
            };
            if exists == Some(false) && self.retire(&mut actions) {
                return;
            }
        }
    }

    /// Leaves the registry if no action is queued; returns whether it did.
    fn retire(&self, actions: &mut mpsc::UnboundedReceiver<Action>) -> bool {
        let Some(registry) = self.registry.upgrade() else {
            return true;
        };
        let mut workers = registry.workers();
        // Senders are only used under this lock: an empty queue stays empty.
        if !actions.is_empty() {
            return false;
        }
        if workers
            .get(&self.vps_id)
            .is_some_and(|entry| entry.id == self.id)
        {
            workers.remove(&self.vps_id);
        }
        actions.close();
        true
    }

    async fn apply(&mut self, request: ApplyRequest) -> Result<VpsObserved, WorkerError> {
        let ApplyRequest {
            spec,
            port,
            encoded,
        } = request;
        // A restart request changes the encoded spec (its generation), so it is never
        // answered from the last apply.
        if let Some(last) = &self.last_apply {
            // One state file read and one /proc stat: cheap enough for the async thread.
            if let Ok(Some(current)) = self.context.runtime.status(&self.vps_id) {
                if last.unchanged(&encoded, &current) {
                    return Ok(current);
                }
            }
        }
        self.last_apply = None;
        let _permit = self
            .context
            .full_applies
            .acquire()
            .await
            .map_err(|_| WorkerError::ShuttingDown)?;
        let context = self.context.clone();
        let observed = self
            .blocking(move || context.runtime.apply(&spec))
            .await??;
        self.converge_network(port.as_ref(), &observed).await?;
        if observed.state != ObservedState::Error {
            let host_link = port
                .as_ref()
                .filter(|_| observed.state == ObservedState::Running)
                .filter(|_| self.context.network.is_some())
                .map(|port| crate::network::host_ifname(&port.vps_id));
            self.last_apply = Some(LastApply::new(encoded, &observed, host_link));
        }
        Ok(observed)
    }

    /// Makes the VPS's port match what the runtime reports: a running VPS with a network
    /// spec gets its port ensured, anything else has none.
    async fn converge_network(
        &self,
        port: Option<&PortSpec>,
        observed: &VpsObserved,
    ) -> Result<(), WorkerError> {
        let Some(network) = &self.context.network else {
            return Ok(());
        };
        match (observed.state, observed.init_pid, port) {
            (ObservedState::Running, Some(pid), Some(port)) => network.ensure_port(port, pid).await,
            _ => network.remove_port(&self.vps_id).await,
        }
        .map_err(|source| WorkerError::Network {
            vps_id: self.vps_id.clone(),
            source,
        })
    }

    async fn delete(&mut self) -> Result<(), WorkerError> {
        self.last_apply = None;
        let context = self.context.clone();
        let vps_id = self.vps_id.clone();
        self.blocking(move || context.runtime.delete(&vps_id))
            .await??;
        if let Some(network) = &self.context.network {
            network
                .remove_port(&self.vps_id)
                .await
                .map_err(|source| WorkerError::Network {
                    vps_id: self.vps_id.clone(),
                    source,
                })?;
        }
        info!(vps_id = %self.vps_id, "VPS deleted");
        Ok(())
    }

    async fn exec(&self, request: ExecRequest) -> Result<ExecStarted, WorkerError> {
        let context = self.context.clone();
        let vps_id = self.vps_id.clone();
        Ok(self
            .blocking(move || context.runtime.exec(&vps_id, &request))
            .await??)
    }

    async fn checkpoint(
        &mut self,
        images: std::path::PathBuf,
        options: CheckpointOptions,
    ) -> Result<CheckpointReport, WorkerError> {
        self.last_apply = None;
        let context = self.context.clone();
        let vps_id = self.vps_id.clone();
        let report = self
            .blocking(move || context.runtime.checkpoint(&vps_id, &images, options))
            .await??;
        // The veth went with the VPS's network namespace; its rules and shaping go too.
        if let Some(observed) = self.status().await? {
            self.converge_network(None, &observed).await?;
        }
        Ok(report)
    }

    async fn restore_checkpoint(
        &mut self,
        request: ApplyRequest,
        images: std::path::PathBuf,
    ) -> Result<VpsObserved, WorkerError> {
        self.last_apply = None;
        let ApplyRequest { spec, port, .. } = request;
        let veth = match (&self.context.network, &port) {
            (Some(network), Some(port)) => Some(VethAttach {
                host_ifname: crate::network::host_ifname(&port.vps_id),
                bridge: network.bridge().to_owned(),
            }),
            _ => None,
        };
        let context = self.context.clone();
        let observed = self
            .blocking(move || context.runtime.restore_checkpoint(&spec, &images, veth))
            .await??;
        // Rules, shaping and addresses as for any running VPS (the veth is kept: its peer is
        // in the VPS's namespace).
        self.converge_network(port.as_ref(), &observed).await?;
        Ok(observed)
    }

    async fn snapshot(&mut self, op: SnapshotOp) -> Result<SnapshotOutcome, WorkerError> {
        let restore = matches!(op, SnapshotOp::Restore(_));
        if restore {
            // The VPS stops (and restarts later with a new init): nothing of the last apply
            // stands.
            self.last_apply = None;
        }
        let context = self.context.clone();
        let vps_id = self.vps_id.clone();
        let outcome = self
            .blocking(move || context.runtime.snapshot(&vps_id, &op))
            .await??;
        if let SnapshotOutcome::Restored(Restored {
            was_running: true, ..
        }) = &outcome
        {
            if let Some(observed) = self.status().await? {
                self.converge_network(None, &observed).await?;
            }
        }
        Ok(outcome)
    }

    async fn status(&self) -> Result<Option<VpsObserved>, WorkerError> {
        let context = self.context.clone();
        let vps_id = self.vps_id.clone();
        Ok(self
            .blocking(move || context.runtime.status(&vps_id))
            .await??)
    }

    /// Whether the VPS exists after an action failed; `None` if that cannot be read either.
    async fn exists(&self) -> Option<bool> {
        self.status().await.ok().map(|observed| observed.is_some())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkerError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|error| WorkerError::Task {
                vps_id: self.vps_id.clone(),
                message: error.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::runtime::{Limits, Power};

    /// A runtime that keeps VPSes in a map. An apply whose hostname is `hold` waits until the
    /// test releases it, and every apply records how many applies of its VPS ran at once.
    #[derive(Default)]
    struct FakeRuntime {
        vpses: Mutex<HashMap<String, VpsObserved>>,
        /// Every apply, in order: (vps_id, hostname, power).
        applies: Mutex<Vec<(String, String, Power)>>,
        execs: Mutex<Vec<String>>,
        in_flight: Mutex<HashMap<String, usize>>,
        most_in_flight: AtomicUsize,
        next_pid: AtomicU64,
        /// Told when a `hold` apply started.
        held: Mutex<Option<tokio::sync::mpsc::UnboundedSender<()>>>,
        /// Lets a `hold` apply go on.
        release: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    }

    impl FakeRuntime {
        fn execs(&self) -> Vec<String> {
            self.execs.lock().expect("lock").clone()
        }

        fn applies(&self) -> Vec<(String, String, Power)> {
            self.applies.lock().expect("lock").clone()
        }

        fn enter(&self, vps_id: &str) {
            let mut in_flight = self.in_flight.lock().expect("lock");
            let count = in_flight.entry(vps_id.to_owned()).or_default();
            *count += 1;
            self.most_in_flight.fetch_max(*count, Ordering::SeqCst);
        }

        fn leave(&self, vps_id: &str) {
            let mut in_flight = self.in_flight.lock().expect("lock");
            if let Some(count) = in_flight.get_mut(vps_id) {
                *count -= 1;
            }
        }
    }

    impl VpsRuntime for FakeRuntime {
        fn apply(&self, spec: &VpsSpec) -> Result<VpsObserved, RuntimeError> {
            self.enter(&spec.vps_id);
            self.applies.lock().expect("lock").push((
                spec.vps_id.clone(),
                spec.hostname.clone(),
                spec.power,
            ));
            if spec.hostname == "hold" {
                if let Some(held) = self.held.lock().expect("lock").as_ref() {
                    let _ = held.send(());
                }
                let release = self.release.lock().expect("lock");
                if let Some(release) = release.as_ref() {
                    let _ = release.recv();
                }
            }
            self.leave(&spec.vps_id);
            if spec.template == "missing" {
                return Err(RuntimeError::TemplateMissing(spec.template.clone()));
            }
            let observed = VpsObserved {
                vps_id: spec.vps_id.clone(),
                hostname: spec.hostname.clone(),
                state: match spec.power {
                    Power::Running => ObservedState::Running,
                    Power::Stopped => ObservedState::Stopped,
                },
                init_pid: match spec.power {
                    Power::Running => Some(
                        u32::try_from(self.next_pid.fetch_add(1, Ordering::SeqCst) + 100)
                            .expect("small pid"),
                    ),
                    Power::Stopped => None,
                },
                message: String::new(),
            };
            let mut vpses = self.vpses.lock().expect("lock");
            // Like the runtime: a running VPS applied again keeps its init.
            let observed = match vpses.get(&spec.vps_id) {
                Some(current)
                    if current.state == ObservedState::Running
                        && observed.state == ObservedState::Running =>
                {
                    VpsObserved {
                        hostname: observed.hostname,
                        ..current.clone()
                    }
                }
                _ => observed,
            };
            vpses.insert(spec.vps_id.clone(), observed.clone());
            Ok(observed)
        }

        fn delete(&self, vps_id: &str) -> Result<(), RuntimeError> {
            self.vpses.lock().expect("lock").remove(vps_id);
            Ok(())
        }

        fn status(&self, vps_id: &str) -> Result<Option<VpsObserved>, RuntimeError> {
            Ok(self.vpses.lock().expect("lock").get(vps_id).cloned())
        }

        /// Runs `true` for a running VPS; NotFound for an absent one.
        fn exec(&self, vps_id: &str, request: &ExecRequest) -> Result<ExecStarted, RuntimeError> {
            if !self.vpses.lock().expect("lock").contains_key(vps_id) {
                return Err(RuntimeError::NotFound(vps_id.to_owned()));
            }
            self.execs
                .lock()
                .expect("lock")
                .push(request.command.join(" "));
            let child = tokio::process::Command::new("true")
                .spawn()
                .expect("spawn true");
            Ok((child, None))
        }

        fn snapshot(&self, vps_id: &str, op: &SnapshotOp) -> Result<SnapshotOutcome, RuntimeError> {
            self.enter(vps_id);
            self.leave(vps_id);
            if !self.vpses.lock().expect("lock").contains_key(vps_id) {
                return Err(RuntimeError::NotFound(vps_id.to_owned()));
            }
            self.applies.lock().expect("lock").push((
                vps_id.to_owned(),
                format!("{op:?}"),
                Power::Running,
            ));
            Ok(SnapshotOutcome::Deleted)
        }

        fn checkpoint(
            &self,
            vps_id: &str,
            images: &std::path::Path,
            _options: CheckpointOptions,
        ) -> Result<CheckpointReport, RuntimeError> {
            let mut vpses = self.vpses.lock().expect("lock");
            let vps = vpses
                .get_mut(vps_id)
                .ok_or_else(|| RuntimeError::NotFound(vps_id.to_owned()))?;
            let init_pid = vps
                .init_pid
                .take()
                .ok_or_else(|| RuntimeError::NotRunning(vps_id.to_owned()))?;
            vps.state = ObservedState::Stopped;
            self.applies.lock().expect("lock").push((
                vps_id.to_owned(),
                "checkpoint".to_owned(),
                Power::Stopped,
            ));
            Ok(CheckpointReport {
                dirty_tracking: false,
                rounds: Vec::new(),
                final_dump: crate::runtime::DumpStats::default(),
                init_pid,
                image_bytes: 1,
                total: std::time::Duration::ZERO,
                images_dir: images.to_path_buf(),
            })
        }

        fn restore_checkpoint(
            &self,
            spec: &VpsSpec,
            _images: &std::path::Path,
            veth: Option<VethAttach>,
        ) -> Result<VpsObserved, RuntimeError> {
            assert!(veth.is_none(), "no network in these tests");
            self.applies.lock().expect("lock").push((
                spec.vps_id.clone(),
                "restore".to_owned(),
                Power::Running,
            ));
            let observed = VpsObserved {
                vps_id: spec.vps_id.clone(),
                hostname: spec.hostname.clone(),
                state: ObservedState::Running,
                init_pid: Some(4242),
                message: String::new(),
            };
            self.vpses
                .lock()
                .expect("lock")
                .insert(spec.vps_id.clone(), observed.clone());
            Ok(observed)
        }
    }

    #[tokio::test]
    async fn checkpoint_and_restore_run_on_the_vps_worker_in_order() {
        let runtime = Arc::new(FakeRuntime::default());
        let workers = workers(&runtime);
        let first = workers.apply(request("v1", "a", 0)).await.expect("apply");
        let report = workers
            .checkpoint("v1", "/images".into(), CheckpointOptions::default())
            .await
            .expect("checkpoint");
        assert_eq!(Some(report.init_pid), first.init_pid);
        let after = workers.status("v1").await.expect("status").expect("exists");
        assert_eq!(after.state, ObservedState::Stopped);
        // A second checkpoint finds nothing running.
        let error = workers
            .checkpoint("v1", "/images".into(), CheckpointOptions::default())
            .await
            .expect_err("not running");
        assert!(
            matches!(error, WorkerError::Runtime(RuntimeError::NotRunning(_))),
            "{error:?}"
        );
        let restored = workers
            .restore_checkpoint(request("v1", "a", 0), "/images".into())
            .await
            .expect("restore");
        assert_eq!(restored.init_pid, Some(4242));
        // The same spec applied after the restore goes to the runtime (the last apply was
        // dropped by the checkpoint) and keeps the restored init.
        let again = workers.apply(request("v1", "a", 0)).await.expect("apply");
        assert_eq!(again.init_pid, Some(4242));
        let steps: Vec<String> = runtime
            .applies()
            .into_iter()
            .map(|(_, step, _)| step)
            .collect();
        assert_eq!(steps, ["a", "checkpoint", "restore", "a"]);
    }

    fn request(vps_id: &str, hostname: &str, restart_generation: u64) -> ApplyRequest {
        let spec = VpsSpec {
            vps_id: vps_id.to_owned(),
            hostname: hostname.to_owned(),
            template: "busybox".to_owned(),
            limits: Limits::default(),
            power: Power::Running,
            rebuild_generation: 0,
            restart_generation,
        };
        ApplyRequest {
            encoded: format!("{vps_id}/{hostname}/{restart_generation}").into_bytes(),
            spec,
            port: None,
        }
    }

    fn workers(runtime: &Arc<FakeRuntime>) -> Workers<FakeRuntime> {
        Workers::new(runtime.clone(), None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exec_waits_for_the_apply_before_it() {
        let runtime = Arc::new(FakeRuntime::default());
        let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *runtime.held.lock().expect("lock") = Some(held_tx);
        *runtime.release.lock().expect("lock") = Some(release_rx);
        let workers = Arc::new(workers(&runtime));
        workers.apply(request("v1", "a", 0)).await.expect("apply");

        let apply = tokio::spawn({
            let workers = workers.clone();
            async move { workers.apply(request("v1", "hold", 0)).await }
        });
        held.recv().await.expect("the apply started");
        let exec = ExecRequest {
            command: vec!["uptime".to_owned()],
            env: Vec::new(),
            tty: None,
        };
        let mut started = Box::pin(workers.exec("v1", exec.clone()));
        assert!(futures::poll!(&mut started).is_pending());
        assert!(runtime.execs().is_empty(), "the exec ran during the apply");
        release.send(()).expect("release");
        apply.await.expect("task").expect("apply");
        let (mut child, resize) = started.await.expect("exec");
        assert!(resize.is_none());
        assert!(child.wait().await.expect("wait").success());
        assert_eq!(runtime.execs(), ["uptime"]);

        // An exec in a VPS that does not exist is NotFound and leaves no worker.
        let absent = workers.exec("nothing", exec).await;
        assert!(
            matches!(absent, Err(WorkerError::Runtime(RuntimeError::NotFound(_)))),
            "an exec in an absent VPS: {:?}",
            absent.err()
        );
        // The absent VPS's worker retires right after it answered, on its own thread.
        for _ in 0..2500 {
            if workers.count() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert_eq!(workers.count(), 1, "the absent VPS's worker did not retire");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_applies_to_one_vps_run_one_after_the_other() {
        let runtime = Arc::new(FakeRuntime::default());
        let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *runtime.held.lock().expect("lock") = Some(held_tx);
        *runtime.release.lock().expect("lock") = Some(release_rx);
        let workers = workers(&runtime);
        let workers = Arc::new(workers);

        let first = tokio::spawn({
            let workers = workers.clone();
            async move { workers.apply(request("v1", "hold", 0)).await }
        });
        held.recv().await.expect("the first apply started");
        // The second apply is queued behind the first, which is held in the runtime.
        let second = tokio::spawn({
            let workers = workers.clone();
            async move { workers.apply(request("v1", "second", 0)).await }
        });
        // Another VPS is not held up meanwhile.
        let other = workers
            .apply(request("v2", "other", 0))
            .await
            .expect("apply to another VPS");
        assert_eq!(other.state, ObservedState::Running);
        release.send(()).expect("release the first apply");
        let first = first.await.expect("first task").expect("first apply");
        let second = second.await.expect("second task").expect("second apply");
        assert_eq!(first.hostname, "hold");
        assert_eq!(second.hostname, "second");
        assert_eq!(
            runtime.most_in_flight.load(Ordering::SeqCst),
            1,
            "two applies of one VPS ran at once"
        );
        let order: Vec<_> = runtime
            .applies()
            .into_iter()
            .filter(|(vps_id, ..)| vps_id == "v1")
            .map(|(_, hostname, _)| hostname)
            .collect();
        assert_eq!(order, ["hold", "second"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_waits_for_the_apply_before_it() {
        let runtime = Arc::new(FakeRuntime::default());
        let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *runtime.held.lock().expect("lock") = Some(held_tx);
        *runtime.release.lock().expect("lock") = Some(release_rx);
        let workers = workers(&runtime);
        let workers = Arc::new(workers);
        let first = tokio::spawn({
            let workers = workers.clone();
            async move { workers.apply(request("v1", "hold", 0)).await }
        });
        held.recv().await.expect("the apply started");
        let mut snapshot = Box::pin(workers.snapshot("v1", SnapshotOp::Create("s".into())));
        assert!(futures::poll!(&mut snapshot).is_pending());
        release.send(()).expect("release");
        first.await.expect("task").expect("apply");
        snapshot.await.expect("snapshot after the apply");
        assert_eq!(runtime.most_in_flight.load(Ordering::SeqCst), 1);
        let order: Vec<_> = runtime
            .applies()
            .into_iter()
            .map(|(_, what, _)| what)
            .collect();
        assert_eq!(order, ["hold", "Create(\"s\")"]);
    }

    #[tokio::test]
    async fn a_snapshot_of_a_vps_that_does_not_exist_leaves_no_worker() {
        let runtime = Arc::new(FakeRuntime::default());
        let workers = workers(&runtime);
        workers.apply(request("v1", "a", 0)).await.expect("apply");
        let error = workers
            .snapshot("nothing", SnapshotOp::List)
            .await
            .expect_err("no such VPS");
        assert!(
            matches!(error, WorkerError::Runtime(RuntimeError::NotFound(_))),
            "{error:?}"
        );
        assert_eq!(workers.count(), 1);
    }

    #[tokio::test]
    async fn delete_removes_the_worker_and_a_later_apply_starts_afresh() {
        let runtime = Arc::new(FakeRuntime::default());
        let workers = workers(&runtime);
        workers.apply(request("v1", "a", 0)).await.expect("apply");
        assert_eq!(workers.count(), 1);
        workers.delete("v1").await.expect("delete");
        assert_eq!(workers.count(), 0, "the deleted VPS's worker is gone");
        assert_eq!(runtime.status("v1").expect("status"), None);

        let again = workers.apply(request("v1", "a", 0)).await.expect("apply");
        assert_eq!(again.state, ObservedState::Running);
        assert_eq!(workers.count(), 1);
        assert_eq!(runtime.applies().len(), 2, "the re-create is a full apply");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_apply_queued_behind_a_delete_creates_the_vps_afresh() {
        let runtime = Arc::new(FakeRuntime::default());
        let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *runtime.held.lock().expect("lock") = Some(held_tx);
        *runtime.release.lock().expect("lock") = Some(release_rx);
        let workers = workers(&runtime);
        let workers = Arc::new(workers);
        workers.apply(request("v1", "a", 3)).await.expect("apply");

        let first = tokio::spawn({
            let workers = workers.clone();
            async move { workers.apply(request("v1", "hold", 3)).await }
        });
        held.recv().await.expect("the held apply started");
        // Queued in this order behind the held apply: a delete, then a new apply.
        let mut delete = Box::pin(workers.delete("v1"));
        assert!(futures::poll!(&mut delete).is_pending());
        let mut after = Box::pin(workers.apply(request("v1", "after", 4)));
        assert!(futures::poll!(&mut after).is_pending());
        release.send(()).expect("release");

        first.await.expect("task").expect("held apply");
        delete.await.expect("delete");
        let after = after.await.expect("the apply after the delete");
        assert_eq!(after.hostname, "after");
        assert_eq!(workers.count(), 1, "the VPS exists again, with a worker");
        let powers: Vec<_> = runtime.applies().into_iter().map(|(.., p)| p).collect();
        assert_eq!(
            powers,
            [Power::Running, Power::Running, Power::Running],
            "the re-created VPS is created, not restarted"
        );
    }

    #[tokio::test]
    async fn actions_on_vpses_that_do_not_exist_leave_no_worker() {
        let runtime = Arc::new(FakeRuntime::default());
        let workers = workers(&runtime);
        assert_eq!(workers.status("nothing").await.expect("status"), None);
        workers.delete("nothing").await.expect("delete");
        let mut failing = request("v1", "a", 0);
        failing.spec.template = "missing".to_owned();
        let error = workers.apply(failing).await.expect_err("no template");
        assert!(
            matches!(
                error,
                WorkerError::Runtime(RuntimeError::TemplateMissing(_))
            ),
            "{error:?}"
        );
        assert_eq!(workers.count(), 0);
    }

    #[tokio::test]
    async fn unchanged_reapply_is_answered_without_the_runtime() {
        let runtime = Arc::new(FakeRuntime::default());
        let workers = workers(&runtime);
        let first = workers.apply(request("v1", "a", 0)).await.expect("apply");
        let again = workers.apply(request("v1", "a", 0)).await.expect("apply");
        assert_eq!(first, again);
        assert_eq!(runtime.applies().len(), 1, "answered from the last apply");
        workers.apply(request("v1", "b", 0)).await.expect("apply");
        assert_eq!(runtime.applies().len(), 2, "a changed spec is applied");
    }

    #[tokio::test]
    async fn a_worker_that_ended_is_replaced() {
        let runtime = Arc::new(FakeRuntime::default());
        let workers = workers(&runtime);
        let first = workers.apply(request("v1", "a", 1)).await.expect("apply");
        let task = workers.abort("v1").expect("a worker");
        while !task.is_finished() {
            tokio::task::yield_now().await;
        }
        assert_eq!(workers.count(), 0, "an ended worker is not counted");

        // The new worker has no last apply: the same spec is applied in full, and the VPS
        // keeps running with its init.
        let same = workers.apply(request("v1", "a", 1)).await.expect("apply");
        assert_eq!(same.init_pid, first.init_pid);
        assert_eq!(workers.count(), 1);
        assert_eq!(runtime.applies().len(), 2);
        // A restart request is never answered from the last apply.
        workers.apply(request("v1", "a", 2)).await.expect("apply");
        assert_eq!(runtime.applies().len(), 3);
    }

    #[tokio::test]
    async fn a_closed_gate_refuses_full_applies() {
        let runtime = Arc::new(FakeRuntime::default());
        let workers = workers(&runtime);
        workers.close();
        let error = workers
            .apply(request("v1", "a", 0))
            .await
            .expect_err("shutting down");
        assert!(matches!(error, WorkerError::ShuttingDown), "{error:?}");
        assert_eq!(workers.count(), 0);
    }
}
