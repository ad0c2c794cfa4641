//! Level-triggered convergence: each node's agent is told the desired state
//! of every VPS placed on it that drifted, and what it reports is recorded.
//!
//! Mutations "kick" the node's worker so changes apply at once; a periodic
//! tick re-converges every node anyway, so a lost kick, a failed call or a
//! node that comes back converges without manual action. A pass costs one
//! `ListVps` per node: a VPS is applied again only when the node has not
//! confirmed its current spec (`applied_spec`), does not list it, or lists it
//! in another power state than desired (every VPS when the listing fails, and
//! on the rare full resync). The tick also ends the transfer limits of billing
//! months that are over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use paddock_proto::v1;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::agents::{agent_error, AgentClient};
use crate::convert;
use crate::error::ControllerError;
use crate::model::{EventKind, EventRecord, Observed, ObservedState, VpsRecord};
use crate::service::Controller;
use crate::store::{fenced, StoreChange, Term};

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

/// The failing applies of one node's VPSes, kept by its worker between passes.
#[derive(Default)]
struct ApplyFailures(Mutex<HashMap<String, FailedApply>>);

impl ApplyFailures {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, FailedApply>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `vps_id` failed to apply `digest` and its backoff has not run out.
    fn waiting(&self, vps_id: &str, digest: &str) -> bool {
        self.map()
            .get(vps_id)
            .is_some_and(|f| f.digest == digest && Instant::now() < f.retry_at)
    }

    /// Records how an apply of `digest` ended; returns the wait before a retry if it failed.
    fn record(&self, vps_id: &str, digest: &str, failed: bool) -> Option<Duration> {
        let mut map = self.map();
        if !failed {
            map.remove(vps_id);
            return None;
        }
        let failures = map
            .get(vps_id)
            .filter(|f| f.digest == digest)
            .map_or(1, |f| f.failures.saturating_add(1));
        let wait = apply_backoff(failures);
        map.insert(
            vps_id.to_owned(),
            FailedApply {
                digest: digest.to_owned(),
                failures,
                retry_at: Instant::now() + wait,
            },
        );
        Some(wait)
    }

    fn forget(&self, vps_id: &str) {
        self.map().remove(vps_id);
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

/// The dispatcher's end of one node's worker; dropping it stops the worker at once.
struct Worker {
    passes: mpsc::Sender<()>,
    /// Set when the next pass must apply every VPS (a full resync).
    full: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Worker {
    /// Queues a pass; a full queue means one is already pending (coalesced).
    fn request(&self, full: bool) {
        if full {
            self.full.store(true, Ordering::SeqCst);
        }
        let _ = self.passes.try_send(());
    }
}

/// Runs the dispatcher while this controller leads (always, on sled): one worker task per
/// node, fed by kicks, by the store's changes from every controller and by a periodic tick.
/// When leadership is lost the workers are stopped at once (their writes are fenced by the
/// term anyway); kicks that arrive meanwhile are dropped, the next leader's first pass
/// covers every node.
pub fn spawn(controller: Arc<Controller>, mut queue: ReconcileQueue) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut leadership = controller.leadership.subscribe();
        loop {
            let term = *leadership.borrow_and_update();
            let Some(term) = term else {
                tokio::select! {
                    changed = leadership.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    kick = queue.kicks.recv() => {
                        if kick.is_none() {
                            return;
                        }
                    }
                }
                continue;
            };
            info!(term = term.revision, "leading: reconcile workers run here");
            tokio::select! {
                () = lead(&controller, &mut queue, term) => return,
                () = async {
                    loop {
                        if leadership.changed().await.is_err() {
                            // The campaign is gone (shutdown): keep leading only on sled.
                            if term.revision == 0 {
                                std::future::pending::<()>().await;
                            }
                            return;
                        }
                        if *leadership.borrow() != Some(term) {
                            return;
                        }
                    }
                } => warn!(term = term.revision, "leadership lost: reconcile workers stopped"),
            }
        }
    })
}

/// The dispatcher of one term; returns when the kick channel closes (shutdown). Dropping
/// it (leadership lost) drops the workers, which stops them.
async fn lead(controller: &Arc<Controller>, queue: &mut ReconcileQueue, term: Term) {
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut changes = controller.store.store_changes().subscribe();
    // The store owns the sender; closed only while the controller shuts down.
    let mut changes_open = true;
    let period = Duration::from_secs(u64::from(controller.config.reconcile_interval_secs));
    let full_period = Duration::from_secs(u64::from(controller.config.full_resync_interval_secs));
    let mut last_full = Instant::now();
    // The first tick fires at once: a new leader passes over every node.
    let mut tick = tokio::time::interval(period);
    loop {
        let (nodes, full): (Vec<String>, bool) = tokio::select! {
            kick = queue.kicks.recv() => match kick {
                Some(node) => (vec![node], false),
                None => return,
            },
            change = changes.recv(), if changes_open => match change {
                Ok(StoreChange::Vps { node }) => (vec![node], false),
                Ok(StoreChange::Topology) => continue,
                // Fell behind: the next tick passes over every node.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    changes_open = false;
                    continue;
                }
            },
            _ = tick.tick() => {
                let ended = fenced(term, || controller.metering().end_expired_transfer_limits());
                if let Err(error) = ended {
                    warn!(%error, "ending the transfer limits of past months");
                }
                let full = !full_period.is_zero() && last_full.elapsed() >= full_period;
                if full {
                    last_full = Instant::now();
                }
                match controller.store.list_nodes() {
                    Ok(nodes) => (nodes.into_iter().map(|n| n.name).collect(), full),
                    Err(error) => {
                        warn!(%error, "listing nodes for the periodic reconcile");
                        continue;
                    }
                }
            },
        };
        for node in nodes {
            workers
                .entry(node.clone())
                .or_insert_with(|| spawn_worker(controller.clone(), node, term))
                .request(full);
        }
    }
}

fn spawn_worker(controller: Arc<Controller>, node: String, term: Term) -> Worker {
    let (passes, mut receiver) = mpsc::channel::<()>(1);
    let full = Arc::new(AtomicBool::new(false));
    let retries = passes.clone();
    let full_flag = full.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        let failures = ApplyFailures::default();
        while receiver.recv().await.is_some() {
            let full_pass = full_flag.swap(false, Ordering::SeqCst);
            match reconcile_node(&controller, &node, full_pass, &failures, term).await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(error) => {
                    warn!(node = %node, %error, retry_in = ?backoff, "reconcile failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if full_pass {
                        full_flag.store(true, Ordering::SeqCst);
                    }
                    let _ = retries.try_send(());
                }
            }
        }
    });
    Worker { passes, full, task }
}

/// What one pass does with one VPS.
enum Step {
    /// A VPS marked for deletion: removed on its node, then from the store.
    Delete {
        vps_id: String,
        name: String,
        tenant: String,
    },
    Apply {
        vps_id: String,
        spec: Box<v1::VpsSpec>,
        /// `convert::spec_digest(&spec)`, computed once per pass.
        digest: String,
    },
}

/// One pass over a node: delete what is being deleted, apply what drifted,
/// report the node's orphans.
async fn reconcile_node(
    controller: &Controller,
    node_name: &str,
    full: bool,
    failures: &ApplyFailures,
    term: Term,
) -> Result<(), ControllerError> {
    let Some(node) = controller.store.get_node(node_name)? else {
        return Ok(());
    };
    if !controller.node_online(&node, Utc::now()) {
        debug!(node = node_name, "node offline; waiting for it to return");
        return Ok(());
    }
    let client = controller.agents.client(&node.name, &node.address)?;
    let vpses = controller.store.list_vps_on_node(&node.name)?;
    let listed = match client.clone().list_vps(v1::Empty {}).await {
        Ok(response) => Some(
            response
                .into_inner()
                .vps
                .into_iter()
                .map(|status| (status.vps_id.clone(), status))
                .collect::<HashMap<_, _>>(),
        ),
        Err(status) => {
            let error = agent_error(node_name, status);
            warn!(node = node_name, %error, "listing the node's VPSes failed; applying every VPS");
            None
        }
    };
    // Full resyncs also settle interrupted snapshot creates of these VPSes.
    let settle_snapshots = full.then(|| vpses.clone());
    let steps = plan_steps(
        controller,
        vpses,
        listed.as_ref(),
        full,
        failures,
        Utc::now(),
    )?;
    let outcomes = join_all(
        steps
            .into_iter()
            .map(|step| run_step(controller, client.clone(), node_name, step, failures, term)),
    )
    .await;
    let mut first_error = None;
    for outcome in outcomes {
        if let Err(error) = outcome {
            first_error.get_or_insert(error);
        }
    }
    if let Some(vpses) = settle_snapshots {
        if let Err(error) = controller.snapshots().settle_stale(&client, &vpses).await {
            first_error.get_or_insert(error);
        }
    }
    if let Some(listed) = &listed {
        report_orphans(controller, client, node_name, listed).await?;
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Decides which of a node's VPSes need a call, counting the converged ones.
fn plan_steps(
    controller: &Controller,
    vpses: Vec<VpsRecord>,
    listed: Option<&HashMap<String, v1::VpsStatus>>,
    full: bool,
    failures: &ApplyFailures,
    now: DateTime<Utc>,
) -> Result<Vec<Step>, ControllerError> {
    let mut suspended: HashMap<String, bool> = HashMap::new();
    let mut steps = Vec::new();
    let mut converged = 0u64;
    for vps in vpses {
        if vps.deleting {
            steps.push(Step::Delete {
                vps_id: vps.vps_id,
                name: vps.name,
                tenant: vps.tenant,
            });
            continue;
        }
        let tenant_suspended = match suspended.get(&vps.tenant) {
            Some(held) => *held,
            None => {
                let held = controller
                    .store
                    .get_tenant(&vps.tenant)?
                    .is_some_and(|tenant| tenant.suspended);
                suspended.insert(vps.tenant.clone(), held);
                held
            }
        };
        let spec = convert::vps_spec(&vps, tenant_suspended, now);
        let digest = convert::spec_digest(&spec);
        let drifted = match listed {
            Some(listed) if !full => drifted(&vps, &spec, &digest, listed.get(&vps.vps_id)),
            _ => true,
        };
        if drifted && failures.waiting(&vps.vps_id, &digest) {
            debug!(vps = %vps.name, "its last apply failed; retrying after the backoff");
            continue;
        }
        if drifted {
            steps.push(Step::Apply {
                vps_id: vps.vps_id,
                spec: Box::new(spec),
                digest,
            });
        } else {
            converged += 1;
        }
    }
    let applies = steps
        .iter()
        .filter(|step| matches!(step, Step::Apply { .. }))
        .count();
    crate::metrics::observe_reconcile(applies as u64, converged);
    Ok(steps)
}

/// Whether a VPS must be applied again: its node has not confirmed its
/// current spec (`digest`), does not run it, or runs it in another power state.
fn drifted(
    vps: &VpsRecord,
    spec: &v1::VpsSpec,
    digest: &str,
    listed: Option<&v1::VpsStatus>,
) -> bool {
    if vps.applied_spec.as_deref() != Some(digest) {
        return true;
    }
    let Some(status) = listed else {
        return true;
    };
    let wanted = match spec.desired_power() {
        v1::PowerState::Running => v1::AgentVpsState::Running,
        _ => v1::AgentVpsState::Stopped,
    };
    status.state() != wanted
}

async fn run_step(
    controller: &Controller,
    mut client: AgentClient,
    node: &str,
    step: Step,
    failures: &ApplyFailures,
    term: Term,
) -> Result<(), ControllerError> {
    match step {
        Step::Delete {
            vps_id,
            name,
            tenant,
        } => {
            client
                .delete_vps(v1::AgentVpsRef {
                    vps_id: vps_id.clone(),
                })
                .await
                .map_err(|status| agent_error(node, status))?;
            failures.forget(&vps_id);
            fenced(term, || controller.store.remove_vps(&vps_id))?;
            controller.commit().await?;
            // What the VPS held on its node is free again for placements.
            controller.placements.invalidate();
            info!(vps = %name, tenant = %tenant, node, "VPS deleted");
            Ok(())
        }
        Step::Apply {
            vps_id,
            spec,
            digest,
        } => {
            let mut request = tonic::Request::new(*spec);
            request.set_timeout(Duration::from_secs(120));
            let status = client
                .apply_vps(request)
                .await
                .map_err(|status| agent_error(node, status))?
                .into_inner();
            let failed = status.state() == v1::AgentVpsState::Error;
            if let Some(wait) = failures.record(&vps_id, &digest, failed) {
                warn!(vps_id = %vps_id, node, retry_in = ?wait, message = %status.message, "apply failed");
            }
            fenced(term, || {
                record_report(
                    controller,
                    &vps_id,
                    convert::observed(&status),
                    Some(&digest),
                )
            })
        }
    }
}

/// Stores what an agent reported for a VPS in a heartbeat.
pub fn record_observed(
    controller: &Controller,
    vps_id: &str,
    observed: ObservedState,
) -> Result<(), ControllerError> {
    record_report(controller, vps_id, observed, None)
}

/// Stores what an agent reported for a VPS: an apply's result (with the digest
/// of the spec it applied) or a heartbeat's report (`applied` is `None`).
fn record_report(
    controller: &Controller,
    vps_id: &str,
    observed: ObservedState,
    applied: Option<&str>,
) -> Result<(), ControllerError> {
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

/// VPSes the agent runs that the controller does not know (from the pass's
/// listing): always reported, and removed from the node when
/// `orphan_policy = "remove"`.
async fn report_orphans(
    controller: &Controller,
    mut client: AgentClient,
    node: &str,
    listed: &HashMap<String, v1::VpsStatus>,
) -> Result<(), ControllerError> {
    for vps_id in listed.keys() {
        if controller.store.get_vps(vps_id)?.is_some() {
            continue;
        }
        warn!(node, vps_id = %vps_id, policy = ?controller.config.orphan_policy, "node runs a VPS the controller does not know");
        if controller.config.orphan_policy == paddock_config::OrphanPolicy::Remove {
            client
                .delete_vps(v1::AgentVpsRef {
                    vps_id: vps_id.clone(),
                })
                .await
                .map_err(|status| agent_error(node, status))?;
            info!(node, vps_id = %vps_id, "orphan VPS removed");
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

    #[test]
    fn a_failed_apply_waits_and_a_changed_spec_does_not() {
        let failures = ApplyFailures::default();
        assert!(!failures.waiting("v1", "d1"));
        assert_eq!(failures.record("v1", "d1", true), Some(FIRST_APPLY_BACKOFF));
        assert!(failures.waiting("v1", "d1"));
        assert!(
            !failures.waiting("v1", "d2"),
            "a changed spec is applied at once"
        );
        assert_eq!(
            failures.record("v1", "d1", true),
            Some(FIRST_APPLY_BACKOFF * 2)
        );
        assert_eq!(failures.record("v1", "d1", false), None);
        assert!(
            !failures.waiting("v1", "d1"),
            "a success resets the backoff"
        );
    }
}
