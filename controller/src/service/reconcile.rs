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

use std::collections::{BTreeSet, HashMap};
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
use crate::batch::Batcher;
use crate::convert;
use crate::error::ControllerError;
use crate::model::metering::limit_sweep_due;
use crate::model::{EventKind, EventRecord, Observed, ObservedState, Resources, VpsRecord};
use crate::service::Controller;
use crate::store::{fenced, Store, StoreChange, StoreError, Term, VpsUpdate};

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

    /// Whether no apply of this node's VPSes is failing (none waits for a retry).
    fn is_empty(&self) -> bool {
        self.map().is_empty()
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

/// Asks for a node to be reconciled soon, and remembers what each node's heartbeats last
/// reported (see [`NodeReports`]).
#[derive(Clone)]
pub struct ReconcileHandle {
    kicks: mpsc::UnboundedSender<Kick>,
    reports: Arc<NodeReports>,
    /// Apply results on their way to the store.
    applied: Arc<AppliedReports>,
    /// For every node in a shared pool, the nodes it shares one with (kept by the
    /// dispatcher; `None` until it first read the pools); a node not in it needs no host
    /// routes, so its passes read no pool.
    peers: Arc<Mutex<Option<PoolPeers>>>,
}

/// A heartbeat that repeats the node's last recorded report is trusted for this long without
/// reading its VPSes again. Bounds how long a store change made without a kick on this
/// controller (another replica's) can go unnoticed by its heartbeats.
pub const REPORT_TRUST: Duration = Duration::from_secs(60);

/// What each node's heartbeats last reported, as a digest of its VPSes' (id, state, init pid,
/// message), and when that report was last recorded in full. With thousands of nodes, reading
/// every reported VPS at every heartbeat and listing every node at every tick were most of the
/// controller's idle work; a repeated report changes nothing, so both are skipped while it
/// holds. A kick forgets the node's entry: the next heartbeat is recorded in full.
#[derive(Default)]
pub struct NodeReports {
    nodes: Mutex<HashMap<String, RecordedReport>>,
    /// Every node's last heartbeat, recorded in full or not (kicks do not forget it).
    heard: Mutex<HashMap<String, Arc<Heard>>>,
}

/// What a node's last heartbeat reported, per VPS ([`report_hash`]), and when it came.
#[derive(Debug)]
pub struct Heard {
    hashes: HashMap<String, u64>,
    at: Instant,
}

#[derive(Clone, Copy)]
struct RecordedReport {
    digest: u64,
    recorded_at: Instant,
}

impl NodeReports {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, RecordedReport>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The digest of a heartbeat's reports; independent of their order.
    pub fn digest(reports: &[(String, ObservedState)]) -> u64 {
        digest_of(
            reports
                .iter()
                .map(|(vps_id, observed)| report_hash(vps_id, observed)),
        )
    }

    /// The node's last recorded digest, if recorded within [`REPORT_TRUST`].
    fn trusted(&self, node: &str, now: Instant) -> Option<u64> {
        self.map()
            .get(node)
            .filter(|report| now.duration_since(report.recorded_at) < REPORT_TRUST)
            .map(|report| report.digest)
    }

    /// Keeps what a heartbeat of `node` reports, for the reconcile worker to skip a tick that
    /// would list what it reports ([`Known::confirmed_by`]); answers its [`digest`](Self::digest).
    pub fn hear(&self, node: &str, reports: &[(String, ObservedState)]) -> u64 {
        let heard = Arc::new(Heard {
            hashes: reports
                .iter()
                .map(|(vps_id, observed)| (vps_id.clone(), report_hash(vps_id, observed)))
                .collect(),
            at: Instant::now(),
        });
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.to_owned(), heard);
        Self::digest(reports)
    }

    /// The node's last heartbeat, however old.
    fn heard(&self, node: &str) -> Option<Arc<Heard>> {
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .cloned()
    }

    /// Whether a heartbeat with `digest` repeats what was recorded for `node` recently.
    pub fn unchanged(&self, node: &str, digest: u64) -> bool {
        self.trusted(node, Instant::now()) == Some(digest)
    }

    /// Notes that a heartbeat with `digest` was recorded in full for `node`.
    pub fn recorded(&self, node: &str, digest: u64) {
        self.map().insert(
            node.to_owned(),
            RecordedReport {
                digest,
                recorded_at: Instant::now(),
            },
        );
    }

    fn forget(&self, node: &str) {
        self.map().remove(node);
    }
}

/// One VPS's part of a [`NodeReports::digest`].
fn report_hash(vps_id: &str, observed: &ObservedState) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    vps_id.hash(&mut hasher);
    (observed.state as u8).hash(&mut hasher);
    observed.init_pid.hash(&mut hasher);
    observed.message.hash(&mut hasher);
    hasher.finish()
}

/// A [`NodeReports::digest`] from its VPSes' [`report_hash`]es.
fn digest_of(hashes: impl ExactSizeIterator<Item = u64>) -> u64 {
    let count = hashes.len() as u64;
    hashes.fold(count, u64::wrapping_add)
}

/// The receiving end, consumed by [`spawn`].
pub struct ReconcileQueue {
    kicks: mpsc::UnboundedReceiver<Kick>,
}

/// For each node in a shared pool, the other nodes of its shared pools.
type PoolPeers = HashMap<String, BTreeSet<String>>;

/// What a kick asks the dispatcher for.
enum Kick {
    /// A pass over the node (and, for its host routes, over the nodes it shares a pool with).
    Node(String),
    /// A pass over the nodes the node shares a pool with: a VPS of a shared pool left it.
    Peers(String),
    /// A pass over the node applying the VPS that changed in the store, without a listing
    /// (and over the nodes it shares a pool with, as for [`Kick::Node`]).
    Changed { node: String, vps_id: String },
}

/// Creates the kick channel; the handle goes into the `Controller`. `batches_writes`: whether
/// the store gains from apply results stored together ([`Store::batches_writes`]).
pub fn channel(batches_writes: bool) -> (ReconcileHandle, ReconcileQueue) {
    let (kicks, receiver) = mpsc::unbounded_channel();
    (
        ReconcileHandle {
            kicks,
            reports: Arc::default(),
            applied: Arc::new(Batcher::new(batches_writes)),
            peers: Arc::default(),
        },
        ReconcileQueue { kicks: receiver },
    )
}

impl ReconcileHandle {
    /// Schedules a reconcile pass for `node`; repeated kicks coalesce.
    pub fn kick(&self, node: &str) {
        // Whatever changed, the node's next heartbeat is recorded in full.
        self.reports.forget(node);
        // The dispatcher only stops when the controller shuts down.
        let _ = self.kicks.send(Kick::Node(node.to_owned()));
    }

    /// Schedules a pass for `node` after a change of its VPS `vps_id` in the store (such as a
    /// create): the pass reads and applies that VPS without listing the node or reading its
    /// other VPSes, so a create costs its node one call and the store one read however full
    /// the node is; the next periodic pass lists the node and checks it all. Repeated kicks
    /// coalesce (their VPSes gather); with a pending [`kick`](Self::kick) the pass lists.
    pub fn kick_changed(&self, node: &str, vps_id: &str) {
        self.reports.forget(node);
        let _ = self.kicks.send(Kick::Changed {
            node: node.to_owned(),
            vps_id: vps_id.to_owned(),
        });
    }

    /// Schedules a pass for every node sharing a pool with `node` (their host routes to
    /// `node`'s VPSes changed), not for `node` itself.
    pub fn kick_peers(&self, node: &str) {
        let _ = self.kicks.send(Kick::Peers(node.to_owned()));
    }

    /// Whether `node` may span a shared pool: it does as of the dispatcher's last look at
    /// the pools, or the dispatcher has not looked yet.
    pub fn in_shared_pool(&self, node: &str) -> bool {
        self.peers_map()
            .as_ref()
            .is_none_or(|peers| peers.contains_key(node))
    }

    fn peers_of(&self, node: &str) -> Vec<String> {
        self.peers_map()
            .as_ref()
            .and_then(|peers| peers.get(node))
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn peers_map(&self) -> std::sync::MutexGuard<'_, Option<HashMap<String, BTreeSet<String>>>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the nodes' heartbeats last reported.
    pub fn reports(&self) -> &NodeReports {
        &self.reports
    }
}

/// The dispatcher's end of one node's worker; dropping it stops the worker at once.
struct Worker {
    passes: mpsc::Sender<()>,
    /// Set when the next pass must apply every VPS (a full resync).
    full: Arc<AtomicBool>,
    /// Set when a kick (a change) asked for the next pass: it is never skipped.
    kicked: Arc<AtomicBool>,
    /// Set when the next pass must list the node (every ask but [`Ask::Changed`]).
    listing: Arc<AtomicBool>,
    /// The VPSes [`Ask::Changed`] named since the last pass: all a pass without a listing reads.
    changed: Arc<Mutex<BTreeSet<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a pass is asked for.
#[derive(Clone, PartialEq, Eq)]
enum Ask {
    /// A mutation (here or on another controller) or a node coming back: always runs.
    Kick,
    /// The periodic tick: skipped for a node that converged and has reported the same since.
    Tick,
    /// The rare full resync: applies every VPS.
    Full,
    /// A change of this VPS of the node in the store: always runs, applies it, does not list
    /// the node (unless another ask pending does).
    Changed(String),
}

impl Worker {
    /// Queues a pass; a full queue means one is already pending (coalesced).
    fn request(&self, ask: Ask) {
        if !matches!(ask, Ask::Changed(_)) {
            self.listing.store(true, Ordering::SeqCst);
        }
        match ask {
            Ask::Full => self.full.store(true, Ordering::SeqCst),
            Ask::Kick => self.kicked.store(true, Ordering::SeqCst),
            Ask::Changed(vps_id) => {
                changed_set(&self.changed).insert(vps_id);
                self.kicked.store(true, Ordering::SeqCst);
            }
            Ask::Tick => {}
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
    // Asks `node`'s worker (started on first use) for a pass.
    let mut request = |node: String, ask: Ask| {
        workers
            .entry(node.clone())
            .or_insert_with(|| spawn_worker(controller.clone(), node, term))
            .request(ask);
    };
    let mut changes = controller.store.store_changes().subscribe();
    // The store owns the sender; closed only while the controller shuts down.
    let mut changes_open = true;
    let period = Duration::from_secs(u64::from(controller.config.reconcile_interval_secs));
    let full_period = Duration::from_secs(u64::from(controller.config.full_resync_interval_secs));
    let mut last_full = Instant::now();
    // When the transfer limits were last swept for ones whose month ended.
    let mut limits_swept = None;
    // The first tick fires at once: a new leader passes over every node.
    let mut tick = tokio::time::interval(period);
    // Nodes sharing a pool: a change on one may change the others' host routes. Read before
    // the first passes, so nodes in no shared pool never read the pools.
    let handle = &controller.reconciler;
    refresh_peers(controller);
    loop {
        let (nodes, ask): (Vec<String>, Ask) = tokio::select! {
            kick = queue.kicks.recv() => match kick {
                Some(Kick::Node(node)) => {
                    let mut nodes = handle.peers_of(&node);
                    nodes.push(node);
                    (nodes, Ask::Kick)
                }
                Some(Kick::Peers(node)) => (handle.peers_of(&node), Ask::Kick),
                Some(Kick::Changed { node, vps_id }) => {
                    for peer in handle.peers_of(&node) {
                        request(peer, Ask::Kick);
                    }
                    (vec![node], Ask::Changed(vps_id))
                }
                None => return,
            },
            change = changes.recv(), if changes_open => match change {
                Ok(StoreChange::Vps { node }) => {
                    // Another controller's change: the node's next heartbeat is recorded in
                    // full, and the pass is not skipped.
                    controller.reconciler.reports().forget(&node);
                    let mut nodes = handle.peers_of(&node);
                    nodes.push(node);
                    (nodes, Ask::Kick)
                }
                Ok(StoreChange::Topology) => (refresh_peers(controller), Ask::Kick),
                // Fell behind: the next tick passes over every node.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    changes_open = false;
                    continue;
                }
            },
            _ = tick.tick() => {
                let full = !full_period.is_zero() && last_full.elapsed() >= full_period;
                if full {
                    last_full = Instant::now();
                }
                // Reads every VPS: at this term's first tick, when a billing month began
                // and with the full resyncs, not every tick.
                let now = Utc::now();
                if full || limit_sweep_due(limits_swept, now) {
                    let ended =
                        fenced(term, || controller.metering().end_expired_transfer_limits());
                    match ended {
                        Ok(()) => limits_swept = Some(now),
                        Err(error) => warn!(%error, "ending the transfer limits of past months"),
                    }
                }
                let ask = if full { Ask::Full } else { Ask::Tick };
                // Nodes whose pools started or stopped being shared get their routes now.
                for node in refresh_peers(controller) {
                    request(node, Ask::Kick);
                }
                match controller.store.list_nodes() {
                    Ok(nodes) => (nodes.into_iter().map(|n| n.name).collect(), ask),
                    Err(error) => {
                        warn!(%error, "listing nodes for the periodic reconcile");
                        continue;
                    }
                }
            },
        };
        for node in nodes {
            request(node, ask.clone());
        }
    }
}

/// Re-reads which nodes share a pool (kept as it was when the store cannot be read);
/// returns the nodes whose peers changed.
fn refresh_peers(controller: &Controller) -> Vec<String> {
    let found = match controller.route_peers() {
        Ok(found) => found,
        Err(error) => {
            warn!(%error, "reading the nodes that share pools");
            return Vec::new();
        }
    };
    let mut peers = controller.reconciler.peers_map();
    let known = peers.get_or_insert_with(HashMap::new);
    let changed: BTreeSet<String> = found
        .iter()
        .filter(|(node, set)| known.get(*node) != Some(set))
        .map(|(node, _)| node.clone())
        .chain(
            known
                .keys()
                .filter(|node| !found.contains_key(*node))
                .cloned(),
        )
        .collect();
    *peers = Some(found);
    changed.into_iter().collect()
}

fn spawn_worker(controller: Arc<Controller>, node: String, term: Term) -> Worker {
    let (passes, mut receiver) = mpsc::channel::<()>(1);
    let full = Arc::new(AtomicBool::new(false));
    let kicked = Arc::new(AtomicBool::new(false));
    let listing = Arc::new(AtomicBool::new(false));
    let listing_flag = listing.clone();
    let changed = Arc::new(Mutex::new(BTreeSet::new()));
    let named = changed.clone();
    let retries = passes.clone();
    let full_flag = full.clone();
    let kicked_flag = kicked.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        let failures = ApplyFailures::default();
        // What the node ran when a pass last found it converged: its listing, per VPS as its
        // heartbeats' reports are digested, kept up to date by the passes that apply only the
        // VPSes named to them, so the first heartbeat after them that reports the same lets
        // the next tick skip the node.
        let mut quiet: Option<Known> = None;
        // The digest of the host route set the agent last acknowledged.
        let mut routes_acked: Option<String> = None;
        while receiver.recv().await.is_some() {
            let full_pass = full_flag.swap(false, Ordering::SeqCst);
            let kick = kicked_flag.swap(false, Ordering::SeqCst);
            let list = listing_flag.swap(false, Ordering::SeqCst) || full_pass;
            let heard = controller.reconciler.reports().heard(&node);
            let converged = match (quiet.as_mut(), heard) {
                (Some(known), Some(heard)) => known.confirmed_by(&heard),
                _ => false,
            };
            if !full_pass && !kick && converged && failures.is_empty() {
                // Converged, and the node has reported the same since: nothing to do. A VPS
                // named since the flags were read stays named: its kick's pass is queued.
                crate::metrics::observe_reconcile_skipped();
                continue;
            }
            let known = quiet.take();
            // A listing pass reads every VPS of the node, those named meanwhile among them.
            let named_now: Vec<String> = std::mem::take(&mut *changed_set(&named))
                .into_iter()
                .collect();
            let scope = if list {
                Scope::Listed
            } else {
                Scope::Changed(&named_now)
            };
            let pass = reconcile_node(
                &controller,
                &node,
                full_pass,
                scope,
                &failures,
                term,
                &mut routes_acked,
            );
            match pass.await {
                Ok(learnt) => {
                    backoff = Duration::from_millis(500);
                    quiet = learnt.update(known);
                }
                Err(error) => {
                    warn!(node = %node, %error, retry_in = ?backoff, "reconcile failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if full_pass {
                        full_flag.store(true, Ordering::SeqCst);
                    }
                    if list {
                        listing_flag.store(true, Ordering::SeqCst);
                    } else {
                        changed_set(&named).extend(named_now);
                        kicked_flag.store(true, Ordering::SeqCst);
                    }
                    let _ = retries.try_send(());
                }
            }
        }
    });
    Worker {
        passes,
        full,
        kicked,
        listing,
        changed,
        task,
    }
}

fn changed_set(set: &Mutex<BTreeSet<String>>) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
    set.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which of its node's VPSes a pass reads from the store.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Every VPS placed on the node; the node is listed.
    Listed,
    /// Only these (named by [`Ask::Changed`]), those still placed on the node; the node is
    /// not listed.
    Changed(&'a [String]),
}

/// The records of `vps_ids` (read with `get`) still placed on `node`: a VPS deleted or
/// moved since it was named is not this node's to apply.
fn placed_on(
    node: &str,
    vps_ids: &[String],
    get: impl Fn(&str) -> Result<Option<VpsRecord>, crate::store::StoreError>,
) -> Result<Vec<VpsRecord>, crate::store::StoreError> {
    let mut placed = Vec::with_capacity(vps_ids.len());
    for vps_id in vps_ids {
        placed.extend(get(vps_id)?.filter(|vps| vps.node == node));
    }
    Ok(placed)
}

/// What one pass does with one VPS.
enum Step {
    /// A VPS marked for deletion: removed on its node, then from the store.
    Delete {
        vps_id: String,
        name: String,
        tenant: String,
        /// What it holds on its node, given back to the placement view.
        resources: Resources,
    },
    Apply {
        vps_id: String,
        spec: Box<v1::VpsSpec>,
        /// `convert::spec_digest(&spec)`, computed once per pass.
        digest: String,
    },
}

/// What a pass learnt of what its node runs, for the worker to skip the next ticks while the
/// node's heartbeats report the same.
#[derive(Debug, PartialEq)]
enum Learnt {
    /// Nothing to go on: the next tick lists the node.
    Nothing,
    /// The node was listed and found converged: its listing, per VPS ([`report_hash`]).
    Listing(HashMap<String, u64>),
    /// Only named VPSes were passed over, and each is now as wanted on the node: as its
    /// apply answered ([`report_hash`]), or gone (`None`: deleted).
    Named(Vec<(String, Option<u64>)>),
}

impl Learnt {
    /// What the node runs after the pass, `known` being what it ran converged before (the
    /// VPSes a [`Learnt::Named`] pass did not touch are as they were).
    fn update(self, known: Option<Known>) -> Option<Known> {
        match self {
            Learnt::Nothing => None,
            Learnt::Listing(running) => Some(Known {
                running,
                changed_at: HashMap::new(),
            }),
            Learnt::Named(changes) => known.map(|mut known| {
                let now = Instant::now();
                for (vps_id, left) in changes {
                    match left {
                        Some(hash) => known.running.insert(vps_id.clone(), hash),
                        None => known.running.remove(&vps_id),
                    };
                    known.changed_at.insert(vps_id, now);
                }
                known
            }),
        }
    }
}

/// What a converged node runs as far as its passes know: a listing, and what the passes over
/// named VPSes left since.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    /// Per VPS, as heartbeats' reports are digested ([`report_hash`]).
    running: HashMap<String, u64>,
    /// The VPSes those passes changed, and when: a heartbeat that came before may not show it.
    changed_at: HashMap<String, Instant>,
}

impl Known {
    /// Whether the node's last heartbeat reports what is known, so a tick has nothing to do:
    /// every VPS as known, except those changed after the heartbeat came (their apply
    /// answered for them). Changes that heartbeat came after are compared from then on.
    fn confirmed_by(&mut self, heard: &Heard) -> bool {
        self.changed_at.retain(|_, at| *at > heard.at);
        let changed = |vps_id: &String| self.changed_at.contains_key(vps_id);
        self.running
            .iter()
            .all(|(vps_id, hash)| changed(vps_id) || heard.hashes.get(vps_id) == Some(hash))
            && heard
                .hashes
                .keys()
                .all(|vps_id| changed(vps_id) || self.running.contains_key(vps_id))
    }
}

/// One pass over a node: delete what is being deleted, apply what drifted,
/// report the node's orphans. When the node was found converged (listed, nothing to delete
/// or apply, no orphan) answers its listing ([`Learnt::Listing`]). With [`Scope::Changed`]
/// the node is not listed: only the named VPSes are read and applied (or deleted) if their
/// node has not confirmed their spec, and no orphan is looked for; when each step left its
/// VPS as wanted, the pass answers what they left ([`Learnt::Named`]).
async fn reconcile_node(
    controller: &Controller,
    node_name: &str,
    full: bool,
    scope: Scope<'_>,
    failures: &ApplyFailures,
    term: Term,
    routes_acked: &mut Option<String>,
) -> Result<Learnt, ControllerError> {
    let Some(node) = controller.store.get_node(node_name)? else {
        return Ok(Learnt::Nothing);
    };
    if !controller.node_online(&node, Utc::now()) {
        // It may come back rebooted, without its host routes: they are sent again.
        *routes_acked = None;
        debug!(node = node_name, "node offline; waiting for it to return");
        return Ok(Learnt::Nothing);
    }
    let client = controller.agents.client(&node.name, &node.address)?;
    let list = matches!(scope, Scope::Listed);
    let vpses = match scope {
        Scope::Listed => controller.store.list_vps_on_node(&node.name)?,
        Scope::Changed(vps_ids) => placed_on(&node.name, vps_ids, |vps_id| {
            controller.store.get_vps(vps_id)
        })?,
    };
    let listing = if list {
        client.clone().list_vps(v1::Empty {}).await.map(Some)
    } else {
        Ok(None)
    };
    let listed = match listing {
        Ok(None) => None,
        Ok(Some(response)) => Some(
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
    let mut first_error = None;
    // Full resyncs also settle interrupted snapshot creates of these VPSes.
    if full {
        if let Err(error) = controller
            .snapshots()
            .settle_stale(&client, &vpses, term)
            .await
        {
            first_error = Some(error);
        }
    }
    let known: std::collections::HashSet<String> =
        vpses.iter().map(|vps| vps.vps_id.clone()).collect();
    let steps = plan_steps(
        controller,
        vpses,
        if list {
            Listing::Done(listed.as_ref())
        } else {
            Listing::Skipped
        },
        full,
        failures,
        Utc::now(),
    )?;
    let mut converged = steps.is_empty() && listed.is_some();
    let outcomes = join_all(
        steps
            .into_iter()
            .map(|step| run_step(controller, client.clone(), node_name, step, failures, term)),
    )
    .await;
    // What the steps left on the node, if each left its VPS as wanted.
    let mut left = Vec::new();
    let mut all_as_wanted = true;
    for outcome in outcomes {
        match outcome {
            Ok(Some(change)) => left.push(change),
            Ok(None) => all_as_wanted = false,
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    // The host routes of shared pools: after the deletes, before the orphans.
    if let Err(error) =
        super::routes::sync(controller, client.clone(), node_name, full, routes_acked).await
    {
        converged = false;
        first_error.get_or_insert(error);
    }
    if let Some(listed) = &listed {
        let orphans = report_orphans(controller, client, node_name, listed, &known).await?;
        converged &= orphans == 0;
    }
    match (first_error, listed) {
        (Some(error), _) => Err(error),
        (None, Some(listed)) if converged => Ok(Learnt::Listing(listing_hashes(&listed))),
        (None, None) if !list && all_as_wanted => Ok(Learnt::Named(left)),
        (None, _) => Ok(Learnt::Nothing),
    }
}

/// A node's listing per VPS as its heartbeats' reports are digested ([`report_hash`]): the
/// same VPSes in the same states give the same [`NodeReports::digest`].
fn listing_hashes(listed: &HashMap<String, v1::VpsStatus>) -> HashMap<String, u64> {
    listed
        .iter()
        .map(|(vps_id, status)| (vps_id.clone(), status_hash(vps_id, status)))
        .collect()
}

fn status_hash(vps_id: &str, status: &v1::VpsStatus) -> u64 {
    report_hash(vps_id, &convert::observed(status))
}

/// What a pass knows of what the node runs.
#[derive(Clone, Copy)]
enum Listing<'a> {
    /// The node was listed (`None`: the listing failed, so every VPS is applied).
    Done(Option<&'a HashMap<String, v1::VpsStatus>>),
    /// The node was not listed: only VPSes whose spec the node has not confirmed are applied.
    Skipped,
}

/// Decides which of a node's VPSes need a call, counting the converged ones.
fn plan_steps(
    controller: &Controller,
    vpses: Vec<VpsRecord>,
    listing: Listing<'_>,
    full: bool,
    failures: &ApplyFailures,
    now: DateTime<Utc>,
) -> Result<Vec<Step>, ControllerError> {
    let mut suspended: HashMap<String, bool> = HashMap::new();
    let mut moving_live: Option<std::collections::HashSet<String>> = None;
    let mut steps = Vec::new();
    let mut converged = 0u64;
    for vps in vpses {
        if vps.deleting {
            steps.push(Step::Delete {
                vps_id: vps.vps_id,
                name: vps.name,
                tenant: vps.tenant,
                resources: vps.resources,
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
        let drifted = match listing {
            _ if full => true,
            Listing::Done(Some(listed)) => drifted(&vps, &spec, &digest, listed.get(&vps.vps_id)),
            Listing::Done(None) => true,
            Listing::Skipped => vps.applied_spec.as_deref() != Some(digest.as_str()),
        };
        // A VPS moving live is the migration's to handle: after the source's dump it looks
        // stopped there, and an apply would start a second copy from its disk. Read (one
        // scan) only when some VPS needs an apply.
        if drifted {
            let moving = match &moving_live {
                Some(moving) => moving,
                None => moving_live.insert(
                    controller
                        .store
                        .list_migrations()?
                        .into_iter()
                        .filter(|migration| migration.live)
                        .map(|migration| migration.vps_id)
                        .collect(),
                ),
            };
            if moving.contains(&vps.vps_id) {
                debug!(vps = %vps.name, "moving live; left to its migration");
                continue;
            }
        }
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
    status.state() != wanted_state(spec)
}

/// The state a VPS applied with `spec` is in on its node when converged.
fn wanted_state(spec: &v1::VpsSpec) -> v1::AgentVpsState {
    match spec.desired_power() {
        v1::PowerState::Running => v1::AgentVpsState::Running,
        _ => v1::AgentVpsState::Stopped,
    }
}

/// Runs one step; answers what it left on the node: `(vps_id, None)` for a deleted VPS,
/// `(vps_id, Some(hash))` for one applied that now runs as wanted ([`report_hash`] of the
/// apply's answer), `None` for one that does not.
async fn run_step(
    controller: &Controller,
    mut client: AgentClient,
    node: &str,
    step: Step,
    failures: &ApplyFailures,
    term: Term,
) -> Result<Option<(String, Option<u64>)>, ControllerError> {
    match step {
        Step::Delete {
            vps_id,
            name,
            tenant,
            resources,
        } => {
            client
                .delete_vps(v1::AgentVpsRef {
                    vps_id: vps_id.clone(),
                })
                .await
                .map_err(|status| agent_error(node, status))?;
            failures.forget(&vps_id);
            // What the VPS held on its node is free again for placements: given back before
            // the record goes, so a view rebuilt in between counts it (never neither).
            controller.placements.release(node, &resources);
            let removed = fenced(term, || controller.store.remove_vps(&vps_id));
            if removed.is_err() {
                controller.placements.invalidate();
            }
            removed?;
            controller.commit().await?;
            // The nodes sharing a pool with this one route its addresses no more.
            controller.reconciler.kick_peers(node);
            info!(vps = %name, tenant = %tenant, node, "VPS deleted");
            Ok(Some((vps_id, None)))
        }
        Step::Apply {
            vps_id,
            spec,
            digest,
        } => {
            let wanted = wanted_state(&spec);
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
            // `wanted` is never `Error`: a failed apply leaves nothing known.
            let observed = convert::observed(&status);
            let left = (status.state() == wanted)
                .then(|| (vps_id.clone(), Some(report_hash(&vps_id, &observed))));
            let report = AppliedReport {
                vps_id,
                observed,
                digest,
                term,
            };
            record_applied(
                &controller.reconciler.applied,
                controller.store.as_ref(),
                report,
            )
            .await?;
            Ok(left)
        }
    }
}

/// Stores what an agent reported for a VPS in a heartbeat.
pub fn record_observed(
    controller: &Controller,
    vps_id: &str,
    observed: ObservedState,
) -> Result<(), ControllerError> {
    record_report(controller, vps_id, observed)
}

/// [`record_observed`] for a heartbeat that has just read `vps`: an unchanged report (the
/// usual case, every VPS every few seconds) costs no second read of the record.
pub fn record_observed_of(
    controller: &Controller,
    vps: &VpsRecord,
    observed: ObservedState,
) -> Result<(), ControllerError> {
    if observation_unchanged(vps, &observed) {
        return Ok(());
    }
    record_report(controller, &vps.vps_id, observed)
}

/// Whether `vps` already records `observed`.
fn observation_unchanged(vps: &VpsRecord, observed: &ObservedState) -> bool {
    vps.observed.as_ref().is_some_and(|current| {
        current.state == observed.state
            && current.init_pid == observed.init_pid
            && current.message == observed.message
    })
}

/// Stores what an agent reported for a VPS in a heartbeat (an apply's result goes through
/// [`record_applied`]).
fn record_report(
    controller: &Controller,
    vps_id: &str,
    observed: ObservedState,
) -> Result<(), ControllerError> {
    // Heartbeats repeat the same report every few seconds; an unchanged one
    // needs no write (a concurrent change is healed by the next report).
    let unchanged = controller
        .store
        .get_vps(vps_id)?
        .is_some_and(|vps| observation_unchanged(&vps, &observed));
    if unchanged {
        return Ok(());
    }
    let result = controller
        .store
        .update_vps_emitting(vps_id, &|vps| Ok(report_change(vps, &observed, None)));
    report_stored(result)
}

/// Records a report on its VPS (`applied`: the digest of the spec an apply answered for) and
/// names the event it makes, if its power state changed.
fn report_change(
    vps: &mut VpsRecord,
    observed: &ObservedState,
    applied: Option<&str>,
) -> Option<EventRecord> {
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
    event.map(|kind| EventRecord::of_vps(kind, vps))
}

/// A report about a VPS deleted meanwhile needs no record.
fn report_stored(result: Result<VpsRecord, StoreError>) -> Result<(), ControllerError> {
    match result {
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The results of applies, stored in batches ([`Batcher`]): an apply's result was one of the
/// two transactions of a create.
pub type AppliedReports = Batcher<AppliedReport, Result<(), ControllerError>>;

/// What an agent answered to an apply, on its way to the store.
pub struct AppliedReport {
    vps_id: String,
    observed: ObservedState,
    /// The digest of the spec applied.
    digest: String,
    /// The term of the pass that applied it: its store call is fenced by it.
    term: Term,
}

/// Stores what the agent answered to an apply (with the passes finishing beside it); returns
/// once it is stored (not flushed: as any report, it is the node's to repeat).
async fn record_applied(
    applied: &AppliedReports,
    store: &dyn Store,
    report: AppliedReport,
) -> Result<(), ControllerError> {
    let vps_id = report.vps_id.clone();
    applied
        .submit(report, |batch| write_applied(store, batch))
        .await
        .unwrap_or_else(|| {
            Err(StoreError::BatchLost {
                what: format!("storing the apply result of VPS {vps_id}"),
            }
            .into())
        })
}

/// One store call per term among `batch` (all one term but around a change of leader); the
/// answers in the order of `batch`.
fn write_applied(store: &dyn Store, batch: Vec<AppliedReport>) -> Vec<Result<(), ControllerError>> {
    let mut terms: Vec<Term> = Vec::new();
    for report in &batch {
        if !terms.contains(&report.term) {
            terms.push(report.term);
        }
    }
    let mut answers: Vec<Result<(), ControllerError>> = Vec::with_capacity(batch.len());
    answers.resize_with(batch.len(), || Ok(()));
    for term in terms {
        let group: Vec<(usize, &AppliedReport)> = batch
            .iter()
            .enumerate()
            .filter(|(_, report)| report.term == term)
            .collect();
        let changes: Vec<_> = group
            .iter()
            .map(|(_, report)| {
                let (observed, digest) = (&report.observed, report.digest.as_str());
                move |vps: &mut VpsRecord| Ok(report_change(vps, observed, Some(digest)))
            })
            .collect();
        let calls: Vec<(&str, &VpsUpdate<'_>)> = group
            .iter()
            .zip(&changes)
            .map(|((_, report), change)| (report.vps_id.as_str(), change as &VpsUpdate<'_>))
            .collect();
        let results = fenced(term, || store.update_vpses_emitting(&calls));
        for ((index, _), result) in group.iter().zip(results) {
            answers[*index] = report_stored(result);
        }
    }
    answers
}

/// VPSes the agent runs that the controller does not know (from the pass's
/// listing): always reported, and removed from the node when
/// `orphan_policy = "remove"`.
async fn report_orphans(
    controller: &Controller,
    mut client: AgentClient,
    node: &str,
    listed: &HashMap<String, v1::VpsStatus>,
    placed_here: &std::collections::HashSet<String>,
) -> Result<usize, ControllerError> {
    let mut orphans = 0;
    for vps_id in listed.keys() {
        if placed_here.contains(vps_id) {
            continue;
        }
        // The store is read only for a VPS not placed on this node.
        if let Some(vps) = controller.store.get_vps(vps_id)? {
            // Placed on another node: while a move of it is in progress, this node's copy is
            // the move's to handle. Without one, the copy here was left behind (a pass of this
            // node applied it again after the move had deleted it) and goes: the VPS lives
            // where the store says.
            if controller.store.get_migration(vps_id)?.is_none() {
                orphans += 1;
                client
                    .delete_vps(v1::AgentVpsRef {
                        vps_id: vps_id.clone(),
                    })
                    .await
                    .map_err(|status| agent_error(node, status))?;
                info!(node, vps_id = %vps_id, placed_on = %vps.node, "stale copy of a VPS placed on another node removed");
            }
            continue;
        }
        orphans += 1;
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
    Ok(orphans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(vps_id: &str, state: Observed, init_pid: u32) -> (String, ObservedState) {
        (
            vps_id.to_owned(),
            ObservedState {
                state,
                init_pid,
                message: String::new(),
                at: Utc::now(),
            },
        )
    }

    #[test]
    fn a_repeated_heartbeat_is_unchanged_until_a_kick() {
        let (handle, _queue) = channel(true);
        let reports = handle.reports();
        let first = vec![
            report("a", Observed::Running, 10),
            report("b", Observed::Stopped, 0),
        ];
        let digest = NodeReports::digest(&first);
        // The same reports in another order, at another time, are the same report.
        let mut again = vec![
            report("b", Observed::Stopped, 0),
            report("a", Observed::Running, 10),
        ];
        assert_eq!(NodeReports::digest(&again), digest);
        assert!(!reports.unchanged("n1", digest), "nothing recorded yet");
        reports.recorded("n1", digest);
        assert!(reports.unchanged("n1", digest));
        assert!(!reports.unchanged("n2", digest), "per node");
        // A changed state, init or set of VPSes is a new report.
        again[1].1.init_pid = 11;
        assert_ne!(NodeReports::digest(&again), digest);
        again[1].1.init_pid = 10;
        again[0].1.state = Observed::Running;
        assert_ne!(NodeReports::digest(&again), digest);
        assert_ne!(NodeReports::digest(&first[..1]), digest);
        assert_eq!(reports.hear("n1", &first), digest);
        handle.kick("n1");
        assert!(!reports.unchanged("n1", digest), "a kick forgets the node");
        assert!(
            reports.heard("n1").is_some(),
            "but not what it last heard: the kick's own pass is not skipped"
        );
    }

    #[test]
    fn a_listing_digests_as_a_heartbeat_reporting_the_same() {
        let status = |vps_id: &str, state: v1::AgentVpsState, init_pid: u32| v1::VpsStatus {
            vps_id: vps_id.to_owned(),
            state: state as i32,
            init_pid,
            message: format!("init pid {init_pid}"),
        };
        let statuses = vec![
            status("a", v1::AgentVpsState::Running, 10),
            status("b", v1::AgentVpsState::Stopped, 0),
        ];
        let heartbeat = convert::heartbeat(v1::HeartbeatRequest {
            node_name: "n1".to_owned(),
            vps: statuses.clone(),
            ..v1::HeartbeatRequest::default()
        });
        let listed: HashMap<String, v1::VpsStatus> = statuses
            .iter()
            .map(|status| (status.vps_id.clone(), status.clone()))
            .collect();
        let digest = |listed: &HashMap<String, v1::VpsStatus>| {
            digest_of(listing_hashes(listed).values().copied())
        };
        assert_eq!(
            digest(&listed),
            NodeReports::digest(&heartbeat.reports),
            "a converged pass's listing lets the next tick skip once a heartbeat repeats it"
        );
        let mut changed = listed;
        changed.insert("b".to_owned(), status("b", v1::AgentVpsState::Running, 11));
        assert_ne!(digest(&changed), NodeReports::digest(&heartbeat.reports));
    }

    #[test]
    fn passes_over_named_vpses_keep_the_converged_listing_up_to_date() {
        let status = |vps_id: &str, state: v1::AgentVpsState, init_pid: u32| v1::VpsStatus {
            vps_id: vps_id.to_owned(),
            state: state as i32,
            init_pid,
            message: String::new(),
        };
        let reports = NodeReports::default();
        let hear = |statuses: Vec<v1::VpsStatus>| {
            let heartbeat = convert::heartbeat(v1::HeartbeatRequest {
                node_name: "n1".to_owned(),
                vps: statuses,
                ..v1::HeartbeatRequest::default()
            });
            reports.hear("n1", &heartbeat.reports);
            reports.heard("n1").expect("heard")
        };
        let a = status("a", v1::AgentVpsState::Running, 10);
        let b = status("b", v1::AgentVpsState::Running, 11);
        let listed: HashMap<String, v1::VpsStatus> =
            [("a".to_owned(), a.clone()), ("b".to_owned(), b.clone())].into();
        let mut known = Learnt::Listing(listing_hashes(&listed))
            .update(None)
            .expect("converged");
        let before = hear(vec![b.clone(), a.clone()]);
        assert!(
            known.confirmed_by(&before),
            "a heartbeat repeating the listing"
        );
        // c created and started, b deleted, by passes that listed nothing (later than the
        // heartbeat, on any clock).
        std::thread::sleep(Duration::from_millis(1));
        let c = status("c", v1::AgentVpsState::Running, 12);
        let mut after = Learnt::Named(vec![
            ("c".to_owned(), Some(status_hash("c", &c))),
            ("b".to_owned(), None),
        ])
        .update(Some(known.clone()))
        .expect("still known");
        assert!(
            after.confirmed_by(&before),
            "a heartbeat from before the passes is not held against what they changed"
        );
        let stopped_a = status("a", v1::AgentVpsState::Stopped, 0);
        assert!(
            !after
                .clone()
                .confirmed_by(&hear(vec![stopped_a, c.clone()])),
            "a VPS the passes did not touch is compared"
        );
        assert!(after.confirmed_by(&hear(vec![c.clone(), a.clone()])));
        assert!(
            !after.confirmed_by(&hear(vec![c, a.clone(), b])),
            "once heard after the passes, their VPSes are compared too"
        );
        assert!(!known.confirmed_by(&hear(vec![a])), "a VPS gone unasked");
        // Without a converged listing to start from, or after a pass that left a VPS not as
        // wanted, the next tick lists the node.
        assert_eq!(Learnt::Named(Vec::new()).update(None), None);
        assert_eq!(Learnt::Nothing.update(Some(known)), None);
    }

    #[test]
    fn an_old_record_is_not_trusted() {
        let reports = NodeReports::default();
        reports.recorded("n1", 7);
        let now = Instant::now();
        assert_eq!(reports.trusted("n1", now), Some(7));
        assert_eq!(reports.trusted("n1", now + REPORT_TRUST), None);
    }

    #[test]
    fn a_changed_pass_reads_only_the_named_vpses_still_on_the_node() {
        let record = |vps_id: &str, node: &str| VpsRecord {
            vps_id: vps_id.to_owned(),
            node: node.to_owned(),
            ..crate::store::conformance::vps("acme", vps_id)
        };
        let store: HashMap<&str, VpsRecord> = [
            ("named", record("named", "n1")),
            ("moved", record("moved", "n2")),
            ("other", record("other", "n1")),
        ]
        .into_iter()
        .collect();
        let read = Mutex::new(Vec::new());
        let get = |vps_id: &str| {
            read.lock().expect("reads").push(vps_id.to_owned());
            Ok(store.get(vps_id).cloned())
        };
        let named = ["named", "moved", "deleted"].map(str::to_owned);
        let placed = placed_on("n1", &named, get).expect("placed");
        let ids: Vec<&str> = placed.iter().map(|vps| vps.vps_id.as_str()).collect();
        assert_eq!(
            ids,
            ["named"],
            "moved and deleted VPSes are not applied here"
        );
        assert_eq!(
            *read.lock().expect("reads"),
            named,
            "one read per named VPS; the node's other VPSes are not read"
        );
    }

    /// Apply results that arrive together are stored in one store call, each with its own
    /// answer (a VPS deleted meanwhile needs no record).
    #[tokio::test]
    async fn apply_results_arriving_together_are_stored_in_one_call() {
        use crate::store::conformance::{tenant, vps};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::SledStore::create(&dir.path().join("store")).expect("store");
        store.create_tenant(&tenant("acme", 50)).expect("tenant");
        for i in 0..20 {
            store
                .create_vps(&vps("acme", &format!("v{i}")))
                .expect("create");
        }
        let applied = AppliedReports::new(true);
        let running = ObservedState {
            state: Observed::Running,
            init_pid: 42,
            message: String::new(),
            at: Utc::now(),
        };
        // The current-thread runtime runs every record up to its yield before any writes.
        let records = (0..21).map(|i| {
            let vps_id = if i == 20 {
                "acme-deleted-id".to_owned()
            } else {
                format!("acme-v{i}-id")
            };
            let report = AppliedReport {
                vps_id,
                observed: running.clone(),
                digest: format!("digest{i}"),
                term: Term { revision: 0 },
            };
            record_applied(&applied, &store, report)
        });
        for result in join_all(records).await {
            result.expect("stored");
        }
        assert_eq!(applied.batches(), 1, "one store call for 21 results");
        for i in 0..20 {
            let stored = store
                .get_vps(&format!("acme-v{i}-id"))
                .expect("get")
                .expect("exists");
            assert_eq!(stored.applied_spec, Some(format!("digest{i}")));
            assert_eq!(stored.observed.map(|o| o.init_pid), Some(42));
        }
        let started = store.list_events(0, 100).expect("events");
        let started = started
            .iter()
            .filter(|e| e.kind == EventKind::Started)
            .count();
        assert_eq!(started, 20, "each VPS that started has its event");
        // The queue is free again: a lone result is written by its own caller.
        let report = AppliedReport {
            vps_id: "acme-v0-id".to_owned(),
            observed: running,
            digest: "digest0".to_owned(),
            term: Term { revision: 0 },
        };
        record_applied(&applied, &store, report)
            .await
            .expect("stored");
        assert_eq!(applied.batches(), 2);
    }

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
