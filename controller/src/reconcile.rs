//! Level-triggered convergence: each node's agent is repeatedly told the
//! desired state of every VPS placed on it, and what it reports is recorded.
//!
//! Mutations "kick" the node's worker so changes apply at once; a periodic
//! tick re-converges every node anyway, so a lost kick, a failed call or a
//! node that comes back converges without manual action. The tick also ends
//! the transfer limits of billing months that are over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use paddock_proto::v1;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::agents::{agent_error, AgentClient};
use crate::app::Controller;
use crate::convert;
use crate::error::ControllerError;
use crate::store::{EventKind, EventRecord, Observed, ObservedState, VpsRecord};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// After an apply the agent answered with `error` (e.g. a start that missed its deadline),
/// the same spec is applied again only after this, doubling per failure up to
/// [`MAX_APPLY_BACKOFF`]; a changed spec is applied at once, a success resets it.
pub const FIRST_APPLY_BACKOFF: Duration = Duration::from_secs(30);
/// The longest wait between retries of a failing apply.
pub const MAX_APPLY_BACKOFF: Duration = Duration::from_secs(600);

/// A VPS whose last apply failed: what was applied, how often it failed in a row, and when
/// it may be tried again.
#[derive(Debug, Clone)]
struct FailedApply {
    digest: String,
    failures: u32,
    retry_at: Instant,
}

/// What one node's worker remembers between passes: the failing applies of its VPSes, and
/// when each VPS was last applied.
#[derive(Default)]
struct NodeMemory {
    failed: Mutex<HashMap<String, FailedApply>>,
    applied_at: Mutex<HashMap<String, Instant>>,
}

/// How often a VPS the node reports converged (its last applied spec is the current one and
/// its observed power matches) is applied anyway: the periodic full resync. Drift in between
/// shows in the node's heartbeat reports (an init that died reports `stopped`) and is
/// applied at the next pass.
pub const FULL_RESYNC: Duration = Duration::from_secs(300);

impl NodeMemory {
    fn failed(&self) -> std::sync::MutexGuard<'_, HashMap<String, FailedApply>> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn applied_at(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.applied_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The wait before retrying after `failures` failures in a row.
fn apply_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_APPLY_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_APPLY_BACKOFF)
}

/// Asks for a node to be reconciled soon.
#[derive(Clone)]
pub struct ReconcileHandle {
    kicks: mpsc::UnboundedSender<String>,
}

/// The receiving end, consumed by [`spawn`].
pub struct ReconcileQueue {
    kicks: mpsc::UnboundedReceiver<String>,
}

/// Creates the kick channel; the handle goes into the `Controller`.
pub fn channel() -> (ReconcileHandle, ReconcileQueue) {
    let (kicks, receiver) = mpsc::unbounded_channel();
    (
        ReconcileHandle { kicks },
        ReconcileQueue { kicks: receiver },
    )
}

impl ReconcileHandle {
    /// Schedules a reconcile pass for `node`; repeated kicks coalesce.
    pub fn kick(&self, node: &str) {
        // The dispatcher only stops when the controller shuts down.
        let _ = self.kicks.send(node.to_owned());
    }
}

/// Runs the dispatcher: one worker task per node, fed by kicks and a periodic tick.
pub fn spawn(controller: Arc<Controller>, mut queue: ReconcileQueue) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut workers: HashMap<String, mpsc::Sender<()>> = HashMap::new();
        let period = Duration::from_secs(u64::from(controller.config.reconcile_interval_secs));
        let mut tick = tokio::time::interval(period);
        loop {
            let nodes: Vec<String> = tokio::select! {
                Some(node) = queue.kicks.recv() => vec![node],
                _ = tick.tick() => {
                    if let Err(error) = controller.end_expired_transfer_limits() {
                        warn!(%error, "ending the transfer limits of past months");
                    }
                    match controller.store.list_nodes() {
                        Ok(nodes) => nodes.into_iter().map(|n| n.name).collect(),
                        Err(error) => {
                            warn!(%error, "listing nodes for the periodic reconcile");
                            continue;
                        }
                    }
                },
                else => return,
            };
            for node in nodes {
                let worker = workers
                    .entry(node.clone())
                    .or_insert_with(|| spawn_worker(controller.clone(), node.clone()));
                // A full queue means a pass is already pending: the kick is coalesced.
                let _ = worker.try_send(());
            }
        }
    })
}

fn spawn_worker(controller: Arc<Controller>, node: String) -> mpsc::Sender<()> {
    let (sender, mut receiver) = mpsc::channel::<()>(1);
    let retry = sender.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        let memory = NodeMemory::default();
        while receiver.recv().await.is_some() {
            match reconcile_node(&controller, &node, &memory).await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(error) => {
                    warn!(node = %node, %error, retry_in = ?backoff, "reconcile failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let _ = retry.try_send(());
                }
            }
        }
    });
    sender
}

/// One pass over a node: apply or delete every VPS placed there.
async fn reconcile_node(
    controller: &Controller,
    node_name: &str,
    memory: &NodeMemory,
) -> Result<(), ControllerError> {
    let Some(node) = controller.store.get_node(node_name)? else {
        return Ok(());
    };
    if !controller.node_online(&node, Utc::now()) {
        debug!(node = node_name, "node offline; waiting for it to return");
        return Ok(());
    }
    let client = controller.agents.client(&node.name, &node.address)?;
    let vpses: Vec<VpsRecord> = controller
        .store
        .list_vps(None)?
        .into_iter()
        .filter(|vps| vps.node == node.name)
        .collect();
    let outcomes = join_all(
        vpses
            .iter()
            .map(|vps| reconcile_vps(controller, client.clone(), node_name, vps, memory)),
    )
    .await;
    let mut first_error = None;
    for outcome in outcomes {
        if let Err(error) = outcome {
            first_error.get_or_insert(error);
        }
    }
    report_orphans(controller, client, node_name).await?;
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

async fn reconcile_vps(
    controller: &Controller,
    mut client: AgentClient,
    node: &str,
    vps: &VpsRecord,
    memory: &NodeMemory,
) -> Result<(), ControllerError> {
    if vps.deleting {
        memory.applied_at().remove(&vps.vps_id);
        memory.failed().remove(&vps.vps_id);
        client
            .delete_vps(v1::AgentVpsRef {
                vps_id: vps.vps_id.clone(),
            })
            .await
            .map_err(|status| agent_error(node, status))?;
        controller.store.remove_vps(&vps.vps_id)?;
        controller.commit().await?;
        info!(vps = %vps.name, tenant = %vps.tenant, node, "VPS deleted");
        return Ok(());
    }
    let suspended = controller
        .store
        .get_tenant(&vps.tenant)?
        .is_some_and(|tenant| tenant.suspended);
    let spec = convert::vps_spec(vps, suspended, Utc::now());
    let digest = convert::spec_digest(&spec);
    let waiting = memory
        .failed()
        .get(&vps.vps_id)
        .is_some_and(|f| f.digest == digest && Instant::now() < f.retry_at);
    if waiting {
        debug!(vps = %vps.name, node, "apply failed recently; retrying after the backoff");
        return Ok(());
    }
    let wanted = match spec.desired_power() {
        v1::PowerState::Running => Observed::Running,
        _ => Observed::Stopped,
    };
    let converged = vps.applied_spec.as_deref() == Some(digest.as_str())
        && vps.observed.as_ref().is_some_and(|o| o.state == wanted);
    let recently = memory
        .applied_at()
        .get(&vps.vps_id)
        .is_some_and(|at| at.elapsed() < FULL_RESYNC);
    if converged && recently {
        return Ok(());
    }
    let mut request = tonic::Request::new(spec);
    request.set_timeout(Duration::from_secs(120));
    let status = client
        .apply_vps(request)
        .await
        .map_err(|status| agent_error(node, status))?
        .into_inner();
    memory
        .applied_at()
        .insert(vps.vps_id.clone(), Instant::now());
    {
        let mut failed = memory.failed();
        if status.state() == v1::AgentVpsState::Error {
            let failures = failed
                .get(&vps.vps_id)
                .filter(|f| f.digest == digest)
                .map_or(1, |f| f.failures.saturating_add(1));
            let wait = apply_backoff(failures);
            warn!(vps = %vps.name, node, failures, retry_in = ?wait, message = %status.message, "apply failed");
            failed.insert(
                vps.vps_id.clone(),
                FailedApply {
                    digest: digest.clone(),
                    failures,
                    retry_at: Instant::now() + wait,
                },
            );
        } else {
            failed.remove(&vps.vps_id);
        }
    }
    record_report(controller, &vps.vps_id, &status, Some(&digest))
}

/// Stores what an agent reported for a VPS in a heartbeat.
pub fn record_observed(
    controller: &Controller,
    vps_id: &str,
    status: &v1::VpsStatus,
) -> Result<(), ControllerError> {
    record_report(controller, vps_id, status, None)
}

/// Stores what an agent reported for a VPS: an apply's result (with the digest
/// of the spec it applied) or a heartbeat's report (`applied` is `None`).
fn record_report(
    controller: &Controller,
    vps_id: &str,
    status: &v1::VpsStatus,
    applied: Option<&str>,
) -> Result<(), ControllerError> {
    let observed = ObservedState {
        state: convert::observed_from_agent(status.state()),
        init_pid: status.init_pid,
        message: status.message.clone(),
        at: Utc::now(),
    };
    // Heartbeats repeat the same report every few seconds; an unchanged one
    // needs no write (a concurrent change is healed by the next report).
    let unchanged = controller.store.get_vps(vps_id)?.is_some_and(|vps| {
        applied.is_none_or(|digest| vps.applied_spec.as_deref() == Some(digest))
            && vps.observed.is_some_and(|current| {
                current.state == observed.state
                    && current.init_pid == observed.init_pid
                    && current.message == observed.message
            })
    });
    if unchanged {
        return Ok(());
    }
    let result = controller.store.update_vps_emitting(vps_id, &|vps| {
        let was_running = vps
            .observed
            .as_ref()
            .is_some_and(|o| o.state == Observed::Running);
        let event = match observed.state {
            Observed::Running if !was_running => Some(EventKind::Started),
            Observed::Stopped if was_running => Some(EventKind::Stopped),
            _ => None,
        };
        vps.observed = Some(observed.clone());
        if let Some(digest) = applied {
            vps.applied_spec = Some(digest.to_owned());
        }
        Ok(event.map(|kind| EventRecord::of_vps(kind, vps)))
    });
    match result {
        Ok(_) | Err(crate::store::StoreError::NotFound { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// VPSes the agent runs that the controller does not know: always reported,
/// and removed from the node when `orphan_policy = "remove"`.
async fn report_orphans(
    controller: &Controller,
    mut client: AgentClient,
    node: &str,
) -> Result<(), ControllerError> {
    let listed = client
        .list_vps(v1::Empty {})
        .await
        .map_err(|status| agent_error(node, status))?
        .into_inner();
    for status in listed.vps {
        if controller.store.get_vps(&status.vps_id)?.is_some() {
            continue;
        }
        warn!(node, vps_id = %status.vps_id, policy = ?controller.config.orphan_policy, "node runs a VPS the controller does not know");
        if controller.config.orphan_policy == paddock_config::OrphanPolicy::Remove {
            client
                .delete_vps(v1::AgentVpsRef {
                    vps_id: status.vps_id.clone(),
                })
                .await
                .map_err(|status| agent_error(node, status))?;
            info!(node, vps_id = %status.vps_id, "orphan VPS removed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_backoff_doubles_from_30_s_to_10_min() {
        assert_eq!(apply_backoff(1), Duration::from_secs(30));
        assert_eq!(apply_backoff(2), Duration::from_secs(60));
        assert_eq!(apply_backoff(5), Duration::from_secs(480));
        assert_eq!(apply_backoff(6), MAX_APPLY_BACKOFF);
        assert_eq!(apply_backoff(1000), MAX_APPLY_BACKOFF);
    }
}
