//! `Store` on etcd v3: JSON values under one key prefix, optimistic multi-key transactions.
//!
//! # Key layout (prefix `P`, `etcd_prefix` in controller.toml, default `/paddock/`)
//!
//! | key                                           | value                                  |
//! |-----------------------------------------------|----------------------------------------|
//! | `P meta/schema_version`                       | `SCHEMA_VERSION` as decimal text       |
//! | `P plans/<name>`                              | `PlanRecord`                           |
//! | `P tenants/<name>`                            | `TenantRecord`                         |
//! | `P tokens/<hash>`                             | `TokenRecord`                          |
//! | `P nodes/<name>`                              | `NodeRecord`                           |
//! | `P node_revocations/<name>`                   | when the node's certificates were revoked |
//! | `P vps/<vps_id>`                              | `VpsRecord`                            |
//! | `P vps_names/<tenant>/<name>`                 | VPS id                                 |
//! | `P vps_nodes/<node>/<vps_id>`                 | empty: the per-node index              |
//! | `P node_allocations/<node>`                   | `NodeAllocationRecord`                 |
//! | `P pools/<name>`                              | `PoolRecord` with its allocations      |
//! | `P pools_guard`                               | generation bumped by every pool create |
//! | `P events/<cursor:020>`                       | `EventRecord`                          |
//! | `P events_last`                               | highest event cursor handed out        |
//! | `P audit/<seq:020>`                           | `AuditRecord`                          |
//! | `P audit_last`                                | highest audit sequence handed out      |
//! | `P usage_cursors/<vps_id>`                    | `UsageCursorRecord`                    |
//! | `P usage_hours/<tenant>/<hour:020>/<vps_id>`  | `UsageHourRecord`                      |
//! | `P backups/<tenant>/<backup_id>`              | `BackupRecord`                         |
//! | `P snapshots/<vps_id>`                        | `VpsSnapshots` (all of a VPS's)        |
//! | `P migrations/<vps_id>`                       | `MigrationRecord` (one move at a time) |
//!
//! # Transactions
//!
//! Every read-modify-write runs in [`EtcdStore::transact`]: the body reads keys (each read
//! remembers the key's `mod_revision`, or that it does not exist), computes with the model's
//! pure rules and stages writes; the commit is one etcd `Txn` whose compares require every key
//! read to be unchanged (`mod_revision == read`, or `create_revision == 0` for a key read as
//! absent). When another commit changed one of them the Txn fails and the body runs again on
//! fresh reads. A body that refuses (quota, name taken, ...) is refused only after the same
//! compares confirm that what it read was current, so a refusal is never based on a torn read.
//! Event cursors and audit sequence numbers come from a counter key read and written in the
//! appending Txn, so they are strictly increasing without gaps, in commit order. That makes
//! every Txn appending to one log conflict with every other: they commit one at a time, so
//! creates, the reconciler's apply results and audit entries are written in batches
//! (`crate::batch`), many to a Txn ([`BATCH_WRITES`] keys at most), not one Txn each.
//!
//! etcd acknowledges a Txn only once a quorum has it in its WAL (fsynced): every returned write
//! is durable, and `flush` has nothing left to do.
//!
//! # Sync over async
//!
//! The `Store` trait is synchronous and called from the controller's tokio worker threads (and
//! from plain threads in tests). The store owns a separate tokio runtime ("paddock-etcd", two
//! worker threads) that runs the etcd client; a call spawns its request there and blocks the
//! calling thread on a std channel until the answer arrives. This cannot deadlock: the etcd
//! runtime's tasks never wait for the caller's runtime (they only do network I/O), so a caller
//! blocking every worker of its own runtime still gets its answer. `Handle::block_on` was not an
//! option (it panics inside a runtime). On a multi-thread runtime's worker the wait is wrapped in
//! `block_in_place`, so the worker's other tasks run on another thread meanwhile; not on a
//! current-thread runtime (the `#[tokio::test]` default), where it would panic.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};

use etcd_client::{Client, Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::*;
use crate::model::migration::{self, MigrationError, MigrationPhase, MigrationRecord, PhaseNote};
use crate::model::snapshots::{self, SnapshotRecord, VpsSnapshots};
use crate::model::*;
use crate::model::{ipam, quota};

/// Keys per range request.
const PAGE: usize = 128;
/// Largest response accepted (a pool with many allocations is one large value).
const MAX_MESSAGE: usize = 64 << 20;

/// How long a request that may be repeated is asked again while members do not answer.
const RETRY_UNANSWERED_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether a request failed without an answer (its member is frozen, partitioned or has no
/// leader): a read may be repeated; a transaction may or may not have committed.
fn unanswered(error: &StoreError) -> bool {
    match error {
        StoreError::Etcd(etcd_client::Error::TransportError(_)) => true,
        StoreError::Etcd(etcd_client::Error::GRpcStatus(status)) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
        ),
        _ => false,
    }
}

/// How often a conflicting transaction runs again before `Conflict::Transaction`.
const MAX_ATTEMPTS: usize = 10_000;

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain data (strings, numbers, maps with string keys): serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        tree,
        key: key.to_owned(),
        source,
    })
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The store on an etcd cluster.
pub struct EtcdStore {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    kv: KvClient,
    endpoints: Vec<String>,
    prefix: String,
    /// Endpoints and prefix, for messages.
    location: String,
    watchers: VpsWatchers,
    events_committed: EventSignal,
    changes: StoreChanges,
    own: Arc<OwnCommits>,
    witnesses: Witnesses,
}

/// Witness keys (`P commits/<store id>/<n>`): every writing Txn also creates a fresh one,
/// so when its answer is lost (a member froze mid-request) the store can tell whether it
/// committed: it creates the witness itself as "void" unless it exists. Found as written
/// by the Txn, the Txn committed; made void, the Txn can never commit any more (it requires
/// the witness absent), so running the body again is safe. Witnesses of Txns known to have
/// committed are deleted by later Txns of the same store; void ones stay (they are only made
/// when an answer was lost).
struct Witnesses {
    store_id: String,
    next: std::sync::atomic::AtomicU64,
    spent: std::sync::Mutex<Vec<String>>,
}

/// A batch of writes (creates, apply results, audit entries) takes no further item into its
/// Txn once it stages this many keys; the rest go in the next Txn. etcd refuses a Txn of more
/// than 128 operations (its `--max-txn-ops` default), and a Txn also writes its witness and
/// deletes up to [`WITNESS_CLEANUP`] spent ones; one create stages about seven keys.
const BATCH_WRITES: usize = 64;

/// How many keys one request of [`EtcdStore::read_many`] reads (etcd's `--max-txn-ops` is 128).
const PREFETCH_KEYS: usize = 100;

/// How many spent witnesses one Txn deletes.
const WITNESS_CLEANUP: usize = 16;
/// A witness's value when the Txn wrote it, and when the store voided it.
const WITNESS_WRITTEN: &str = "committed";
const WITNESS_VOID: &str = "void";

impl Witnesses {
    fn new() -> Self {
        Self {
            store_id: uuid::Uuid::new_v4().simple().to_string(),
            next: std::sync::atomic::AtomicU64::new(1),
            spent: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn spent(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.spent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh witness key (relative to the prefix).
    fn fresh(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("commits/{}/{n:020}", self.store_id)
    }

    /// Spent witnesses for the next Txn to delete.
    fn take(&self) -> Vec<String> {
        let mut spent = self.spent();
        let keep = spent.len().saturating_sub(WITNESS_CLEANUP);
        spent.split_off(keep)
    }

    fn give_back(&self, keys: Vec<String>) {
        self.spent().extend(keys);
    }
}

/// How long the watch waits for this store's in-flight transactions to learn their revision
/// before treating a change as another controller's (a duplicate publish is harmless).
const OWN_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The revisions this store's own transactions committed, so the watch leaves them alone:
/// they were published right after they committed, and are not published twice.
#[derive(Default)]
struct OwnCommits {
    state: std::sync::Mutex<OwnState>,
    settled: std::sync::Condvar,
}

#[derive(Default)]
struct OwnState {
    next_id: u64,
    in_flight: std::collections::BTreeSet<u64>,
    revisions: std::collections::HashSet<i64>,
}

impl OwnCommits {
    fn lock(&self) -> std::sync::MutexGuard<'_, OwnState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a transaction about to be sent.
    fn begin(&self) -> u64 {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.in_flight.insert(id);
        id
    }

    /// Records how transaction `id` ended (`Some(revision)` if it committed writes).
    fn end(&self, id: u64, revision: Option<i64>) {
        let mut state = self.lock();
        state.in_flight.remove(&id);
        if let Some(revision) = revision {
            // Bounded: revisions the watch never reports (it restarted) must not pile up.
            if state.revisions.len() >= 100_000 {
                state.revisions.clear();
            }
            state.revisions.insert(revision);
        }
        drop(state);
        self.settled.notify_all();
    }

    /// Whether `revision` was committed by this store: waits (bounded) for the transactions
    /// in flight now to answer, since the watch may report a commit before its caller hears.
    fn take(&self, revision: i64) -> bool {
        let mut state = self.lock();
        let started_before = state.next_id;
        let deadline = std::time::Instant::now() + OWN_COMMIT_WAIT;
        while !state.revisions.contains(&revision)
            && state.in_flight.range(..started_before).next().is_some()
        {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            state = match self.settled.wait_timeout(state, deadline - now) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        state.revisions.remove(&revision)
    }
}

/// Runs `future` on the store's runtime and blocks this thread for its answer. On a worker
/// of a multi-thread runtime (the controller's) the worker's other tasks move to another
/// thread meanwhile (`block_in_place`): a round trip to etcd must not stall every task queued
/// behind it, and the controller's runtime has one worker per core.
fn blocking<T, Fut>(runtime: &tokio::runtime::Handle, future: Fut) -> Result<T, StoreError>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
{
    let (sender, receiver) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = sender.send(future.await);
    });
    let wait = || receiver.recv();
    let answer = match tokio::runtime::Handle::try_current() {
        Ok(current) if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        // A current-thread runtime has no other worker to hand its tasks to.
        _ => wait(),
    };
    answer
        .map_err(|_| StoreError::EtcdGone)?
        .map_err(StoreError::from)
}

/// Where the watch's reports go.
struct Delivery {
    runtime: tokio::runtime::Handle,
    kv: KvClient,
    prefix: String,
    watchers: VpsWatchers,
    events: EventSignal,
    changes: StoreChanges,
    own: Arc<OwnCommits>,
}

/// Hands what the store watch reports to this controller's watchers, followers and workers
/// (on its own thread: publishing reads the VPS, a blocking call). Changes this store made
/// itself were published after their commit, and its reconciler was kicked then: of those,
/// only topology changes (rare) are announced to the workers again.
fn deliver_watched(watched: mpsc::Receiver<(i64, etcd_cluster::Watched)>, delivery: Delivery) {
    let Delivery {
        runtime,
        kv,
        prefix,
        watchers,
        events,
        changes,
        own,
    } = delivery;
    use etcd_cluster::Watched;
    let read = |vps_id: &str| -> Result<Option<VpsRecord>, StoreError> {
        let key = format!("{prefix}vps/{vps_id}");
        let mut kv = kv.clone();
        let response = blocking(&runtime, async move { kv.get(key, None).await })?;
        response
            .kvs()
            .first()
            .map(|entry| decode("vps", vps_id, entry.value()))
            .transpose()
    };
    let mut last_revision = 0;
    let mut mine = false;
    while let Ok((revision, change)) = watched.recv() {
        // One transaction's keys share its revision: ask once per revision.
        if revision != last_revision {
            last_revision = revision;
            mine = own.take(revision);
        }
        match change {
            Watched::Vps { vps_id, node } => {
                if !mine {
                    watchers.publish(&vps_id, read);
                }
                // This controller kicked its own reconciler when it committed (as sled does).
                if let (Some(node), false) = (node, mine) {
                    changes.send(StoreChange::Vps { node });
                }
            }
            Watched::Tenant if !mine => watchers.publish_all(read),
            Watched::Events if !mine => events.committed(),
            Watched::Tenant | Watched::Events => {}
            Watched::Topology => changes.send(StoreChange::Topology),
            Watched::Resync => {
                watchers.publish_all(read);
                events.committed();
                changes.send(StoreChange::Topology);
            }
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks on its workers, which panics inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One key as read in a transaction: its value and the revision that last changed it.
struct Read {
    value: Option<Vec<u8>>,
    mod_revision: i64,
}

impl Read {
    /// What a get found: the key's value and revision, or none (revision 0: absent).
    fn of(found: Option<&etcd_client::KeyValue>) -> Self {
        match found {
            Some(kv) => Read {
                value: Some(kv.value().to_vec()),
                mod_revision: kv.mod_revision(),
            },
            None => Read {
                value: None,
                mod_revision: 0,
            },
        }
    }
}

/// A transaction in progress: what it read (compared at commit) and what it will write.
struct Tx<'a> {
    store: &'a EtcdStore,
    reads: BTreeMap<String, Read>,
    /// Key -> new value, or `None` to delete it.
    writes: BTreeMap<String, Option<Vec<u8>>>,
}

impl Tx<'_> {
    fn raw(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(write) = self.writes.get(key) {
            return Ok(write.clone());
        }
        if let Some(read) = self.reads.get(key) {
            return Ok(read.value.clone());
        }
        let full = self.store.key(key);
        let response = self.store.call(move |mut kv| {
            let full = full.clone();
            async move { kv.get(full, None).await }
        })?;
        let read = Read::of(response.kvs().first());
        let value = read.value.clone();
        self.reads.insert(key.to_owned(), read);
        Ok(value)
    }

    /// Reads those of `keys` this transaction has not read or written yet, as [`Tx::raw`]
    /// would, in as few requests as [`EtcdStore::read_many`] makes.
    fn prefetch(&mut self, keys: &[String]) -> Result<(), StoreError> {
        let mut wanted: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|key| !self.writes.contains_key(*key) && !self.reads.contains_key(*key))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let reads = self.store.read_many(&wanted)?;
        for (key, read) in wanted.into_iter().zip(reads) {
            self.reads.insert(key.to_owned(), read);
        }
        Ok(())
    }

    fn get<T: DeserializeOwned>(
        &mut self,
        tree: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        self.raw(&format!("{tree}/{key}"))?
            .map(|bytes| decode(tree, key, &bytes))
            .transpose()
    }

    fn need<T: DeserializeOwned>(
        &mut self,
        tree: &'static str,
        key: &str,
        kind: &'static str,
    ) -> Result<T, StoreError> {
        self.get(tree, key)?.ok_or_else(|| StoreError::NotFound {
            kind,
            name: key.to_owned(),
        })
    }

    fn put<T: Serialize>(&mut self, tree: &'static str, key: &str, value: &T) {
        self.writes
            .insert(format!("{tree}/{key}"), Some(encode(value)));
    }

    fn put_raw(&mut self, key: String, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, tree: &'static str, key: &str) {
        self.writes.insert(format!("{tree}/{key}"), None);
    }

    /// Reads counter `key`, writes it plus one and returns the new value.
    fn next(&mut self, key: &str) -> Result<u64, StoreError> {
        let last = self
            .raw(key)?
            .map(|bytes| String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0))
            .unwrap_or(0);
        let next = last + 1;
        self.put_raw(key.to_owned(), next.to_string().into_bytes());
        Ok(next)
    }

    /// Records a usage sample (see [`Store::record_usage`]); what it wrote, if anything.
    fn record_usage(&mut self, item: &UsageItem<'_>) -> Result<Option<UsageUpdate>, StoreError> {
        let UsageItem {
            vps_id,
            hour_key,
            apply,
        } = item;
        let key = usage_hour_key(&hour_key.tenant, hour_key.hour_start, &hour_key.vps_id);
        let state = UsageState {
            cursor: self.get("usage_cursors", vps_id)?,
            hour: self.get("usage_hours", &key)?,
            vps: self.get("vps", vps_id)?,
        };
        let Some(update) = apply(state) else {
            return Ok(None);
        };
        self.put("usage_cursors", vps_id, &update.cursor);
        self.put("usage_hours", &key, &update.hour);
        if let Some(vps) = &update.vps {
            self.put("vps", vps_id, vps);
        }
        for event in &update.events {
            self.append_event(event.clone())?;
        }
        Ok(Some(update))
    }

    /// Creates `vps` (see [`Store::create_vps`]); returns the record as stored.
    fn create_vps(&mut self, vps: &VpsRecord) -> Result<VpsRecord, StoreError> {
        let names_key = name_key(&vps.tenant, &vps.name);
        let mut tenant: TenantRecord = self.need("tenants", &vps.tenant, "tenant")?;
        if self.raw(&format!("vps_names/{names_key}"))?.is_some() {
            return Err(StoreError::AlreadyExists {
                kind: "VPS",
                name: vps.name.clone(),
            });
        }
        quota::admit(&mut tenant, &vps.resources, &vps.plan)?;
        // The node's summary names its pools: read in the transaction, so
        // allocations and pool changes serialize.
        let mut allocation: NodeAllocationRecord =
            self.get("node_allocations", &vps.node)?.unwrap_or_default();
        let mut vps = vps.clone();
        let pool = allocate_addresses(self, &allocation.pools, &mut vps)?;
        allocation.account(&vps.resources, 1.0);
        // A VPS id is never reused: it must not exist either.
        if self.raw(&format!("vps/{}", vps.vps_id))?.is_some() {
            return Err(StoreError::AlreadyExists {
                kind: "VPS",
                name: vps.vps_id.clone(),
            });
        }
        self.put("node_allocations", &vps.node, &allocation);
        if let Some(pool) = &pool {
            self.count_addresses(pool, i64::try_from(vps.ipv4.len()).unwrap_or(i64::MAX))?;
        }
        self.put("tenants", &vps.tenant, &tenant);
        self.put("vps", &vps.vps_id, &vps);
        self.put_raw(
            format!("vps_names/{names_key}"),
            vps.vps_id.clone().into_bytes(),
        );
        self.put_raw(
            format!("vps_nodes/{}", node_vps_key(&vps.node, &vps.vps_id)),
            Vec::new(),
        );
        self.append_event(EventRecord::of_vps(EventKind::Created, &vps))?;
        Ok(vps)
    }

    /// Changes VPS `vps_id` and appends the event the change returns (see
    /// [`Store::update_vps_emitting`]); returns the record as stored.
    fn update_vps_emitting(
        &mut self,
        vps_id: &str,
        change: &VpsUpdate<'_>,
    ) -> Result<VpsRecord, StoreError> {
        let mut vps: VpsRecord = self.need("vps", vps_id, "VPS")?;
        let event = change(&mut vps)?;
        self.put("vps", vps_id, &vps);
        if let Some(event) = event {
            self.append_event(event)?;
        }
        Ok(vps)
    }

    /// Appends `entry` to the audit log with the next sequence number; returns it.
    fn append_audit(&mut self, entry: &AuditRecord) -> Result<u64, StoreError> {
        let seq = self.next("audit_last")?;
        let mut entry = entry.clone();
        entry.seq = seq;
        self.put("audit", &format!("{seq:020}"), &entry);
        Ok(seq)
    }

    /// Appends `event` with the next cursor.
    fn append_event(&mut self, mut event: EventRecord) -> Result<u64, StoreError> {
        let cursor = self.next("events_last")?;
        event.cursor = cursor;
        self.put("events", &format!("{cursor:020}"), &event);
        Ok(cursor)
    }

    fn update_allocation(
        &mut self,
        node: &str,
        change: impl FnOnce(&mut NodeAllocationRecord),
    ) -> Result<(), StoreError> {
        let mut allocation: NodeAllocationRecord =
            self.get("node_allocations", node)?.unwrap_or_default();
        change(&mut allocation);
        self.put("node_allocations", node, &allocation);
        Ok(())
    }

    /// Counts `taken` addresses of `pool` as given (or, negative, given back) in the summary
    /// of every node the pool spans.
    fn count_addresses(&mut self, pool: &PoolRecord, taken: i64) -> Result<(), StoreError> {
        if taken == 0 {
            return Ok(());
        }
        for node in pool.span() {
            self.update_allocation(&node, |allocation| {
                migration::count_addresses(allocation, taken);
            })?;
        }
        Ok(())
    }

    /// The compares that hold while nothing this transaction read has changed.
    fn compares(&self) -> Vec<Compare> {
        self.reads
            .iter()
            .map(|(key, read)| {
                let full = self.store.key(key);
                if read.value.is_some() {
                    Compare::mod_revision(full, CompareOp::Equal, read.mod_revision)
                } else {
                    Compare::create_revision(full, CompareOp::Equal, 0)
                }
            })
            .collect()
    }
}

/// Takes `vps.resources.ipv4_count` addresses from the first of `node_pools` with enough
/// free ones and records them on the VPS and in the pool; returns that pool.
fn allocate_addresses(
    tx: &mut Tx<'_>,
    node_pools: &[String],
    vps: &mut VpsRecord,
) -> Result<Option<PoolRecord>, StoreError> {
    let count = vps.resources.ipv4_count;
    if count == 0 {
        return Ok(None);
    }
    let mut full = Vec::new();
    for name in node_pools {
        let Some(mut pool) = tx.get::<PoolRecord>("pools", name)? else {
            continue;
        };
        if !ipam::allocate_from(&mut pool, vps) {
            if ipam::plan(&pool).is_ok() {
                full.push(pool.name);
            }
            continue;
        }
        tx.put("pools", name, &pool);
        return Ok(Some(pool));
    }
    Err(StoreError::from(ipam::no_room(&vps.node, full, count)))
}

impl EtcdStore {
    /// Connects to `endpoints` without checking the schema (for `init`, which checks the
    /// prefix is empty first); the store's keys live under `prefix`.
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let location = format!("etcd {} prefix {prefix:?}", endpoints.join(","));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("paddock-etcd")
            .enable_all()
            .build()
            .map_err(|source| StoreError::EtcdRuntime { source })?;
        let endpoint_list = endpoints.to_vec();
        let endpoints = endpoints.to_vec();
        let (sender, receiver) = mpsc::sync_channel(1);
        runtime.spawn(async move {
            // HTTP/2 pings find a member that stopped answering (frozen, partitioned) within
            // seconds, so the client's balancer moves to the others; a member cut off from
            // the quorum refuses at once instead of serving stale reads.
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(std::time::Duration::from_secs(5))
                .with_timeout(std::time::Duration::from_secs(30))
                .with_keep_alive(
                    std::time::Duration::from_secs(1),
                    std::time::Duration::from_secs(2),
                )
                .with_keep_alive_while_idle(true)
                .with_require_leader(true);
            let _ = sender.send(Client::connect(endpoints, Some(options)).await);
        });
        let client = receiver
            .recv()
            .map_err(|_| StoreError::EtcdGone)?
            .map_err(|source| StoreError::EtcdConnect {
                location: location.clone(),
                source,
            })?;
        Ok(Self {
            runtime: Some(runtime),
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            client,
            endpoints: endpoint_list,
            prefix: prefix.to_owned(),
            location,
            watchers: VpsWatchers::default(),
            events_committed: EventSignal::default(),
            changes: StoreChanges::default(),
            own: Arc::default(),
            witnesses: Witnesses::new(),
        })
    }

    /// Starts the watch that tells this controller what every controller sharing the prefix
    /// committed: `WatchVps` watchers and `WatchEvents` followers hear of other controllers'
    /// commits, the reconcile leader of VPS changes, the placement cache of node changes.
    /// It stops with the store.
    fn start_watch(self) -> Result<Self, StoreError> {
        let runtime = self.runtime.as_ref().ok_or(StoreError::EtcdGone)?;
        runtime.spawn(etcd_cluster::keep_answering_members(
            self.client.clone(),
            self.endpoints.clone(),
            self.key("meta/schema_version"),
        ));
        let (sink, watched) = mpsc::channel();
        runtime.spawn(etcd_cluster::watch_changes(
            self.client.clone(),
            self.prefix.clone(),
            sink,
        ));
        let delivery = Delivery {
            runtime: runtime.handle().clone(),
            kv: self.kv.clone(),
            prefix: self.prefix.clone(),
            watchers: self.watchers.clone(),
            events: self.events_committed.clone(),
            changes: self.changes.clone(),
            own: self.own.clone(),
        };
        std::thread::Builder::new()
            .name("paddock-etcd-watch".to_owned())
            .spawn(move || deliver_watched(watched, delivery))
            .map_err(|source| StoreError::EtcdRuntime { source })?;
        Ok(self)
    }

    /// Initializes the store under `prefix` (stamps the schema version if absent) and opens it.
    pub fn create(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        Self::connect(endpoints, prefix)?.initialize()
    }

    /// Stamps the schema version if absent, then checks it.
    pub fn initialize(self) -> Result<Self, StoreError> {
        let store = self;
        let schema = store.key("meta/schema_version");
        store.call_once(move |mut kv| async move {
            kv.txn(
                Txn::new()
                    .when([Compare::create_revision(
                        schema.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then([TxnOp::put(schema, SCHEMA_VERSION.to_string(), None)]),
            )
            .await
        })?;
        store.check_schema()?;
        store.start_watch()
    }

    /// Opens an initialized store, refusing one of another schema version.
    pub fn open(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let store = Self::connect(endpoints, prefix)?;
        store.check_schema()?;
        store.start_watch()
    }

    /// Whether anything is stored under the prefix.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let prefix = self.prefix.clone();
        let response = self.call(move |mut kv| {
            let prefix = prefix.clone();
            async move {
                kv.get(
                    prefix.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(prefix_end(&prefix))
                            .with_count_only(),
                    ),
                )
                .await
            }
        })?;
        Ok(response.count() == 0)
    }

    /// Endpoints and prefix, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes `entries` (keys relative to the prefix) in Txns of at most 100 puts, each
    /// refused once the schema version exists (someone initialized the prefix meanwhile).
    pub(super) fn import(&self, entries: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        let schema = self.key("meta/schema_version");
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let operations: Vec<TxnOp> = entries
                .by_ref()
                .take(100)
                .map(|(key, value)| TxnOp::put(self.key(&key), value, None))
                .collect();
            let guard = Compare::create_revision(schema.clone(), CompareOp::Equal, 0);
            let response = self.call_once(move |mut kv| async move {
                kv.txn(Txn::new().when([guard]).and_then(operations)).await
            })?;
            if !response.succeeded() {
                return Err(StoreError::Migrate(format!(
                    "{} was initialized while copying",
                    self.location
                )));
            }
        }
        Ok(())
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let found = match self.raw_get("meta/schema_version")? {
            None => {
                return Err(StoreError::NotInitialized {
                    path: self.location.clone(),
                })
            }
            Some(bytes) => String::from_utf8_lossy(&bytes).parse::<u32>().unwrap_or(0),
        };
        if found != SCHEMA_VERSION {
            return Err(StoreError::SchemaMismatch {
                path: self.location.clone(),
                found,
                expected: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs one etcd request on the store's runtime and waits for it (see the module docs).
    /// Not retried: for transactions, whose outcome a lost answer leaves open.
    fn call_once<T, F, Fut>(&self, request: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(KvClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().ok_or(StoreError::EtcdGone)?;
        blocking(runtime.handle(), request(self.kv.clone()))
    }

    /// Runs a request that may be repeated (a read, or a transaction that is a no-op when
    /// repeated), again while the member it reached does not answer (frozen, partitioned,
    /// without a leader), for up to [`RETRY_UNANSWERED_FOR`]: the client's balancer moves to
    /// the other members meanwhile, so losing one member of three is not seen by callers.
    fn call<T, F, Fut>(&self, request: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(KvClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let deadline = std::time::Instant::now() + RETRY_UNANSWERED_FOR;
        loop {
            match self.call_once(&request) {
                Err(error) if unanswered(&error) && std::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "an etcd member did not answer; asking again");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Reads `keys` (store keys, without the prefix) with their mod revisions, in one
    /// request per [`PREFETCH_KEYS`] keys (a Txn of gets: each request at one revision); the
    /// reads in the order of `keys` (a caller zips them, so a short answer only leaves keys
    /// unread).
    fn read_many(&self, keys: &[&str]) -> Result<Vec<Read>, StoreError> {
        let mut reads = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PREFETCH_KEYS) {
            let full: Vec<String> = chunk.iter().map(|key| self.key(key)).collect();
            let response = self.call(move |mut kv| {
                let gets: Vec<TxnOp> = full
                    .iter()
                    .map(|key| TxnOp::get(key.clone(), None))
                    .collect();
                async move { kv.txn(Txn::new().and_then(gets)).await }
            })?;
            // One answer per get, in order.
            for answer in response.op_responses() {
                let first = match &answer {
                    etcd_client::TxnOpResponse::Get(answer) => answer.kvs().first(),
                    _ => None,
                };
                reads.push(Read::of(first));
            }
        }
        Ok(reads)
    }

    fn raw_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let full = self.key(key);
        let response = self.call(move |mut kv| {
            let full = full.clone();
            async move { kv.get(full, None).await }
        })?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        self.raw_get(&format!("{tree}/{key}"))?
            .map(|bytes| decode(tree, key, &bytes))
            .transpose()
    }

    /// Keys (without `tree/`) and values in `tree` from `start` (inclusive, relative) to
    /// `end` (exclusive, relative; `None`: the tree's end), at most `limit`.
    fn range(
        &self,
        tree: &'static str,
        start: &str,
        end: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tree_prefix = self.key(&format!("{tree}/"));
        let from = format!("{tree_prefix}{start}");
        let to = match end {
            Some(end) => format!("{tree_prefix}{end}").into_bytes(),
            None => prefix_end(&tree_prefix),
        };
        self.range_raw(&tree_prefix, from, to, limit)
    }

    /// Every key under the store's prefix (relative to it) with its value.
    fn range_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = self.prefix.clone();
        let end = prefix_end(&prefix);
        self.range_raw(&prefix, prefix.clone(), end, 0)
    }

    /// Keys from `from` (inclusive) to `to` (exclusive), at most `limit` (0: all), with
    /// `strip` cut off their front.
    fn range_raw(
        &self,
        strip: &str,
        from: String,
        to: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tree_prefix = strip;
        // Pages of PAGE keys, all at the first page's revision (one consistent snapshot), so a
        // large tree never needs one response over gRPC's message size limit.
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut from = from.into_bytes();
        let mut revision = 0;
        loop {
            let want = if limit == 0 {
                PAGE
            } else {
                PAGE.min(limit - out.len())
            };
            let (page_from, page_to) = (from.clone(), to.clone());
            let options = GetOptions::new()
                .with_range(page_to)
                .with_limit(i64::try_from(want).unwrap_or(i64::MAX))
                .with_revision(revision);
            let response = self.call(move |mut kv| {
                let (page_from, options) = (page_from.clone(), options.clone());
                async move { kv.get(page_from, Some(options)).await }
            })?;
            if revision == 0 {
                revision = response.header().map_or(0, |header| header.revision());
            }
            let kvs = response.kvs();
            for kv in kvs {
                let key = String::from_utf8_lossy(kv.key());
                let key = key.get(tree_prefix.len()..).unwrap_or_default().to_owned();
                out.push((key, kv.value().to_vec()));
            }
            let Some(last) = kvs.last() else {
                break;
            };
            if !response.more() || (limit != 0 && out.len() >= limit) {
                break;
            }
            // The next page starts right after the last key.
            from = last.key().to_vec();
            from.push(0);
        }
        Ok(out)
    }

    fn scan<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        start: &str,
    ) -> Result<Vec<T>, StoreError> {
        self.scan_prefix(tree, start)?
            .into_iter()
            .map(|(key, value)| decode(tree, &key, &value))
            .collect()
    }

    /// Every entry of `tree` whose key starts with `prefix`.
    fn scan_prefix(
        &self,
        tree: &'static str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let end = String::from_utf8_lossy(&prefix_end(prefix)).into_owned();
        if prefix.is_empty() {
            return self.range(tree, "", None, 0);
        }
        self.range(tree, prefix, Some(&end), 0)
    }

    /// Runs `body` in an optimistic transaction (see the module docs) until it commits or
    /// refuses on current data.
    fn transact<T>(
        &self,
        body: impl Fn(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for attempt in 0..MAX_ATTEMPTS {
            let mut tx = Tx {
                store: self,
                reads: BTreeMap::new(),
                writes: BTreeMap::new(),
            };
            let outcome = body(&mut tx);
            let mut compares = tx.compares();
            let fence = leader::current_fence();
            if let Some(term) = fence {
                compares.push(Compare::create_revision(
                    self.key(etcd_cluster::LEADER_KEY),
                    CompareOp::Equal,
                    term.revision,
                ));
            }
            let operations: Vec<TxnOp> = match &outcome {
                Ok(_) => tx
                    .writes
                    .iter()
                    .map(|(key, value)| {
                        let full = self.key(key);
                        match value {
                            Some(value) => TxnOp::put(full, value.clone(), None),
                            None => TxnOp::delete(full, None),
                        }
                    })
                    .collect(),
                // Refused: commit nothing, only check that what it read is current.
                Err(_) => Vec::new(),
            };
            if operations.is_empty() && (outcome.is_ok() || compares.is_empty()) {
                return outcome;
            }
            let mut operations = operations;
            let writes = !operations.is_empty();
            let witness = writes.then(|| self.witnesses.fresh());
            let cleanup = if writes {
                self.witnesses.take()
            } else {
                Vec::new()
            };
            if let Some(witness) = &witness {
                let full = self.key(witness);
                compares.push(Compare::create_revision(full.clone(), CompareOp::Equal, 0));
                operations.push(TxnOp::put(full, WITNESS_WRITTEN, None));
                operations.extend(
                    cleanup
                        .iter()
                        .map(|spent| TxnOp::delete(self.key(spent), None)),
                );
            }
            let flight = self.own.begin();
            let response = self.call_once(move |mut kv| async move {
                kv.txn(Txn::new().when(compares).and_then(operations)).await
            });
            let succeeded = match (response, &witness) {
                (Ok(response), _) => {
                    let committed = writes && response.succeeded();
                    self.own.end(
                        flight,
                        response
                            .header()
                            .filter(|_| committed)
                            .map(|header| header.revision()),
                    );
                    response.succeeded()
                }
                (Err(error), Some(witness)) if unanswered(&error) => {
                    // Did it commit? Decide for good through its witness.
                    let settled = self.settle(witness);
                    self.own
                        .end(flight, settled.as_ref().ok().copied().flatten());
                    settled?.is_some()
                }
                (Err(error), _) => {
                    self.own.end(flight, None);
                    self.witnesses.give_back(cleanup);
                    return Err(error);
                }
            };
            if succeeded {
                if let Some(witness) = witness {
                    self.witnesses.give_back(vec![witness]);
                }
                return outcome;
            }
            // Not committed: the spent witnesses it would have deleted are still there.
            self.witnesses.give_back(cleanup);
            if let Some(term) = fence {
                self.check_term(term)?;
            }
            if attempt > 8 {
                // Heavy contention: back off a little so the winners can finish.
                let pause = u64::try_from(attempt.min(50)).unwrap_or(50);
                std::thread::sleep(std::time::Duration::from_millis(
                    rand::random::<u64>() % pause,
                ));
            }
        }
        Err(StoreError::Conflict(Conflict::Transaction))
    }

    /// Whether the Txn that wrote `witness` committed, for good: `Some(revision)` if it did,
    /// `None` if it did not and now never will (the witness is void).
    fn settle(&self, witness: &str) -> Result<Option<i64>, StoreError> {
        let full = self.key(witness);
        // Repeatable: a second void attempt finds the witness (void) and changes nothing.
        let response = self.call(move |mut kv| {
            let full = full.clone();
            async move {
                kv.txn(
                    Txn::new()
                        .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(full.clone(), WITNESS_VOID, None)])
                        .or_else([TxnOp::get(full, None)]),
                )
                .await
            }
        })?;
        if response.succeeded() {
            return Ok(None);
        }
        let found = response.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        Ok(found
            .filter(|kv| kv.value() == WITNESS_WRITTEN.as_bytes())
            .map(|kv| kv.mod_revision()))
    }

    /// `Deposed` unless the leader key still is the one created in `term`.
    fn check_term(&self, term: Term) -> Result<(), StoreError> {
        let key = self.key(etcd_cluster::LEADER_KEY);
        let response = self.call(move |mut kv| {
            let key = key.clone();
            async move { kv.get(key, None).await }
        })?;
        let holds = response
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == term.revision);
        if holds {
            Ok(())
        } else {
            Err(StoreError::Conflict(Conflict::Deposed {
                term: term.revision,
            }))
        }
    }

    /// Every key and value under the prefix, for tests that check a failed request changed
    /// nothing: named like sled's (tree, key, value), the tree being the key's first segment
    /// (the counters and the pool guard count to the tree they number).
    pub fn dump(&self) -> Result<Vec<super::sled_store::DumpEntry>, StoreError> {
        let mut out = Vec::new();
        for (key, value) in self.range_all()? {
            // Who leads, and which Txns committed, is not part of the stored state.
            if key == etcd_cluster::LEADER_KEY || key.starts_with("commits/") {
                continue;
            }
            let (tree, rest) = match key.split_once('/') {
                Some((tree, rest)) => (tree.to_owned(), rest.as_bytes().to_vec()),
                None => {
                    let tree = match key.as_str() {
                        "audit_last" => "audit",
                        "events_last" => "events_meta",
                        "pools_guard" => "pools",
                        other => other,
                    };
                    (tree.to_owned(), key.as_bytes().to_vec())
                }
            };
            out.push((tree, rest, value));
        }
        Ok(out)
    }

    fn create_unique<T: Serialize>(
        &self,
        tree: &'static str,
        kind: &'static str,
        name: &str,
        record: &T,
    ) -> Result<(), StoreError> {
        self.transact(|tx| {
            if tx.raw(&format!("{tree}/{name}"))?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind,
                    name: name.to_owned(),
                });
            }
            tx.put(tree, name, record);
            Ok(())
        })
    }

    /// Writes `items` in as few Txns as [`BATCH_WRITES`] allows, each item with `write`, and
    /// calls `committed` with what each Txn wrote. If a Txn is refused or fails (a name taken,
    /// a quota reached, a VPS gone, the store failed), the items from there on are written
    /// one by one with `alone`, so each gets the answer it would have got alone.
    fn batched<I, O>(
        &self,
        items: &[I],
        write: impl Fn(&mut Tx<'_>, &I) -> Result<O, StoreError>,
        alone: impl Fn(&I) -> Result<O, StoreError>,
        committed: impl Fn(&[O]),
    ) -> Vec<Result<O, StoreError>> {
        self.batched_reading(items, |_| Vec::new(), write, alone, committed)
    }

    /// [`EtcdStore::batched`], each Txn first reading the keys `reads` names for the next
    /// items it may take, in as few requests as etcd's operation limit allows
    /// ([`Tx::prefetch`]), instead of a round trip per key as its items ask.
    fn batched_reading<I, O>(
        &self,
        items: &[I],
        reads: impl Fn(&[I]) -> Vec<String>,
        write: impl Fn(&mut Tx<'_>, &I) -> Result<O, StoreError>,
        alone: impl Fn(&I) -> Result<O, StoreError>,
        committed: impl Fn(&[O]),
    ) -> Vec<Result<O, StoreError>> {
        let mut results = Vec::with_capacity(items.len());
        let mut rest = items;
        while !rest.is_empty() {
            let written = self.transact(|tx| {
                // A Txn takes at most this many items that write (each stages a key).
                tx.prefetch(&reads(&rest[..rest.len().min(BATCH_WRITES)]))?;
                let mut written = Vec::new();
                for item in rest {
                    if !written.is_empty() && tx.writes.len() >= BATCH_WRITES {
                        break;
                    }
                    written.push(write(tx, item)?);
                }
                Ok(written)
            });
            match written {
                Ok(written) => {
                    committed(&written);
                    rest = &rest[written.len()..];
                    results.extend(written.into_iter().map(Ok));
                }
                Err(_) => {
                    results.extend(rest.iter().map(&alone));
                    rest = &[];
                }
            }
        }
        results
    }

    fn put_plain<T: Serialize>(
        &self,
        tree: &'static str,
        key: &str,
        record: &T,
    ) -> Result<(), StoreError> {
        self.transact(|tx| {
            tx.put(tree, key, record);
            Ok(())
        })
    }
}

/// The keys [`Tx::record_usage`] reads for `item`.
fn usage_reads(item: &UsageItem<'_>) -> [String; 3] {
    let hour = &item.hour_key;
    [
        format!("usage_cursors/{}", item.vps_id),
        format!(
            "usage_hours/{}",
            usage_hour_key(&hour.tenant, hour.hour_start, &hour.vps_id)
        ),
        format!("vps/{}", item.vps_id),
    ]
}

fn name_key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

fn node_vps_key(node: &str, vps_id: &str) -> String {
    format!("{node}/{vps_id}")
}

fn usage_hour_key(tenant: &str, hour_start: i64, vps_id: &str) -> String {
    format!("{tenant}/{:020}/{vps_id}", hour_start.max(0))
}

impl Store for EtcdStore {
    fn flush(&self) -> StoreFuture<'_, ()> {
        // A returned Txn is already in a quorum's fsynced WAL.
        Box::pin(async { Ok(()) })
    }

    fn vps_watchers(&self) -> &VpsWatchers {
        &self.watchers
    }

    fn event_signal(&self) -> &EventSignal {
        &self.events_committed
    }

    fn store_changes(&self) -> &StoreChanges {
        &self.changes
    }

    fn campaign(&self, candidate: Candidate) -> Result<Leadership, StoreError> {
        let runtime = self.runtime.as_ref().ok_or(StoreError::EtcdGone)?;
        let (state, leadership) = tokio::sync::watch::channel(None);
        let task = runtime.spawn(etcd_cluster::campaign(
            self.client.clone(),
            self.key(etcd_cluster::LEADER_KEY),
            candidate,
            state,
        ));
        Ok(Leadership::campaigning(
            leadership,
            leader::CampaignGuard(task.abort_handle()),
        ))
    }

    fn list_plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        self.scan("plans", "")
    }

    fn get_plan(&self, name: &str) -> Result<Option<PlanRecord>, StoreError> {
        self.get("plans", name)
    }

    fn create_plan(&self, plan: &PlanRecord) -> Result<(), StoreError> {
        self.create_unique("plans", "plan", &plan.name, plan)
    }

    fn delete_plan(&self, name: &str) -> Result<(), StoreError> {
        let in_use = self
            .list_vps(None)?
            .into_iter()
            .filter(|vps| vps.plan == name)
            .count();
        if in_use > 0 {
            return Err(StoreError::Conflict(Conflict::PlanInUse {
                plan: name.to_owned(),
                vps_count: in_use,
            }));
        }
        self.transact(|tx| {
            tx.need::<PlanRecord>("plans", name, "plan")?;
            tx.delete("plans", name);
            Ok(())
        })
    }

    fn create_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        self.create_unique("tenants", "tenant", &tenant.name, tenant)
    }

    fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>, StoreError> {
        self.get("tenants", name)
    }

    fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.scan("tenants", "")
    }

    fn update_tenant(
        &self,
        name: &str,
        change: &(dyn Fn(&mut TenantRecord) -> Result<(), StoreError> + Sync),
    ) -> Result<TenantRecord, StoreError> {
        let result = self.transact(|tx| {
            let mut tenant: TenantRecord = tx.need("tenants", name, "tenant")?;
            change(&mut tenant)?;
            tx.put("tenants", name, &tenant);
            Ok(tenant)
        });
        self.published_all(result)
    }

    fn delete_tenant(&self, name: &str) -> Result<(), StoreError> {
        self.transact(|tx| {
            let tenant: TenantRecord = tx.need("tenants", name, "tenant")?;
            if tenant.used.max_vps > 0 {
                return Err(StoreError::Conflict(Conflict::TenantHasVps {
                    tenant: name.to_owned(),
                    vps_count: tenant.used.max_vps,
                }));
            }
            tx.delete("tenants", name);
            Ok(())
        })?;
        // Tokens of a deleted tenant can never authenticate again.
        for (hash, value) in self.scan_prefix("tokens", "")? {
            let token: TokenRecord = decode("tokens", &hash, &value)?;
            if token.tenant.as_deref() == Some(name) {
                self.transact(|tx| {
                    tx.delete("tokens", &hash);
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    fn put_token(&self, hash: &str, token: &TokenRecord) -> Result<(), StoreError> {
        self.put_plain("tokens", hash, token)
    }

    fn get_token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get("tokens", hash)
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.scan("tokens", "")
    }

    fn revoke_token(&self, token_id: &str) -> Result<(), StoreError> {
        for (hash, value) in self.scan_prefix("tokens", "")? {
            let token: TokenRecord = decode("tokens", &hash, &value)?;
            if token.token_id == token_id {
                return self.transact(|tx| {
                    let mut token: TokenRecord = tx.need("tokens", &hash, "token")?;
                    token.revoked = true;
                    tx.put("tokens", &hash, &token);
                    Ok(())
                });
            }
        }
        Err(StoreError::NotFound {
            kind: "token",
            name: token_id.to_owned(),
        })
    }

    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.put_plain("nodes", &node.name, node)
    }

    fn get_node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.get("nodes", name)
    }

    fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.scan("nodes", "")
    }

    fn remove_node(&self, name: &str, revoked_at: DateTime<Utc>) -> Result<(), StoreError> {
        self.transact(|tx| {
            tx.need::<NodeRecord>("nodes", name, "node")?;
            tx.delete("nodes", name);
            tx.put("node_revocations", name, &revoked_at);
            Ok(())
        })
    }

    fn node_revoked_at(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.get("node_revocations", name)
    }

    fn create_vps(&self, vps: &VpsRecord) -> Result<VpsRecord, StoreError> {
        let result = self.transact(|tx| tx.create_vps(vps));
        self.signalled(self.published(&vps.vps_id, result))
    }

    fn batches_writes(&self) -> bool {
        true
    }

    fn create_vpses(&self, vpses: &[VpsRecord]) -> Vec<Result<VpsRecord, StoreError>> {
        self.batched(
            vpses,
            |tx, vps| tx.create_vps(vps),
            |vps| self.create_vps(vps),
            |created| self.published_batch(created),
        )
    }

    fn get_vps(&self, vps_id: &str) -> Result<Option<VpsRecord>, StoreError> {
        self.get("vps", vps_id)
    }

    /// One request per [`PREFETCH_KEYS`] VPSes.
    fn get_vpses(&self, vps_ids: &[&str]) -> Result<Vec<Option<VpsRecord>>, StoreError> {
        let keys: Vec<String> = vps_ids
            .iter()
            .map(|vps_id| format!("vps/{vps_id}"))
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let reads = self.read_many(&keys)?;
        if reads.len() != vps_ids.len() {
            return vps_ids.iter().map(|vps_id| self.get_vps(vps_id)).collect();
        }
        vps_ids
            .iter()
            .zip(reads)
            .map(|(vps_id, read)| {
                read.value
                    .map(|bytes| decode("vps", vps_id, &bytes))
                    .transpose()
            })
            .collect()
    }

    fn find_vps(&self, tenant: &str, name: &str) -> Result<Option<VpsRecord>, StoreError> {
        match self.raw_get(&format!("vps_names/{}", name_key(tenant, name)))? {
            None => Ok(None),
            Some(vps_id) => self.get("vps", &String::from_utf8_lossy(&vps_id)),
        }
    }

    fn list_vps(&self, tenant: Option<&str>) -> Result<Vec<VpsRecord>, StoreError> {
        match tenant {
            None => self.scan("vps", ""),
            Some(tenant) => {
                let mut out = Vec::new();
                for (_, vps_id) in self.scan_prefix("vps_names", &format!("{tenant}/"))? {
                    if let Some(vps) = self.get("vps", &String::from_utf8_lossy(&vps_id))? {
                        out.push(vps);
                    }
                }
                Ok(out)
            }
        }
    }

    fn list_vps_on_node(&self, node: &str) -> Result<Vec<VpsRecord>, StoreError> {
        let prefix = format!("{node}/");
        let mut out = Vec::new();
        for (key, _) in self.scan_prefix("vps_nodes", &prefix)? {
            let vps_id = key.get(prefix.len()..).unwrap_or_default();
            if let Some(vps) = self.get("vps", vps_id)? {
                out.push(vps);
            }
        }
        Ok(out)
    }

    fn node_allocations(&self) -> Result<Vec<(String, NodeAllocationRecord)>, StoreError> {
        self.scan_prefix("node_allocations", "")?
            .into_iter()
            .map(|(node, value)| {
                let allocation = decode("node_allocations", &node, &value)?;
                Ok((node, allocation))
            })
            .collect()
    }

    fn update_vps(
        &self,
        vps_id: &str,
        change: &(dyn Fn(&mut VpsRecord) -> Result<(), StoreError> + Sync),
    ) -> Result<VpsRecord, StoreError> {
        let result = self.transact(|tx| {
            let mut vps: VpsRecord = tx.need("vps", vps_id, "VPS")?;
            change(&mut vps)?;
            tx.put("vps", vps_id, &vps);
            Ok(vps)
        });
        self.published(vps_id, result)
    }

    fn remove_vps(&self, vps_id: &str) -> Result<(), StoreError> {
        let result = self.transact(|tx| {
            let Some(vps) = tx.get::<VpsRecord>("vps", vps_id)? else {
                return Ok(());
            };
            if let Some(mut tenant) = tx.get::<TenantRecord>("tenants", &vps.tenant)? {
                quota::release_vps(&mut tenant, &vps.resources);
                tx.put("tenants", &vps.tenant, &tenant);
            }
            if let Some(network) = &vps.network {
                if let Some(mut pool) = tx.get::<PoolRecord>("pools", &network.pool)? {
                    let released = migration::release_addresses(&mut pool, vps_id);
                    tx.put("pools", &network.pool, &pool);
                    tx.count_addresses(&pool, -i64::from(released))?;
                }
            }
            tx.update_allocation(&vps.node, |allocation| {
                allocation.account(&vps.resources, -1.0);
            })?;
            tx.delete("vps_nodes", &node_vps_key(&vps.node, vps_id));
            tx.delete("vps", vps_id);
            tx.delete("vps_names", &name_key(&vps.tenant, &vps.name));
            // Its hours stay for billing; the base of its next delta is not needed.
            tx.delete("usage_cursors", vps_id);
            // Its snapshots were files on its node, gone with it.
            tx.delete("snapshots", vps_id);
            tx.append_event(EventRecord::of_vps(EventKind::Deleted, &vps))?;
            Ok(())
        });
        self.signalled(self.published(vps_id, result))
    }

    fn create_pool(&self, pool: &PoolRecord) -> Result<(), StoreError> {
        let cidr = ipam::new_pool_cidr(pool)?;
        self.transact(|tx| {
            if tx.raw(&format!("pools/{}", pool.name))?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "pool",
                    name: pool.name.clone(),
                });
            }
            // Every pool create reads and bumps the guard, so two concurrent creates
            // conflict; the pools are listed after the guard was read, so a pool created
            // before it is seen and one created after it makes this commit fail.
            tx.next("pools_guard")?;
            for (name, value) in self.scan_prefix("pools", "")? {
                let other: PoolRecord = decode("pools", &name, &value)?;
                ipam::check_overlap(pool, &cidr, &other)?;
            }
            tx.put("pools", &pool.name, pool);
            for node in pool.span() {
                tx.update_allocation(&node, |allocation| {
                    allocation.free_ipv4 =
                        allocation.free_ipv4.saturating_add(ipam::free_ipv4(pool));
                    allocation.pools.push(pool.name.clone());
                    allocation.pools.sort();
                    if pool.is_shared() {
                        allocation.shared_pools.push(pool.name.clone());
                        allocation.shared_pools.sort();
                    }
                })?;
            }
            Ok(())
        })
    }

    fn get_pool(&self, name: &str) -> Result<Option<PoolRecord>, StoreError> {
        self.get("pools", name)
    }

    fn list_pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        self.scan("pools", "")
    }

    fn delete_pool(&self, name: &str) -> Result<(), StoreError> {
        self.transact(|tx| {
            let pool: PoolRecord = tx.need("pools", name, "pool")?;
            ipam::check_removable(&pool)?;
            tx.delete("pools", name);
            for node in pool.span() {
                tx.update_allocation(&node, |allocation| {
                    allocation.free_ipv4 =
                        allocation.free_ipv4.saturating_sub(ipam::free_ipv4(&pool));
                    allocation.pools.retain(|other| other != name);
                    allocation.shared_pools.retain(|other| other != name);
                })?;
            }
            Ok(())
        })
    }

    fn update_vps_emitting(
        &self,
        vps_id: &str,
        change: &VpsUpdate<'_>,
    ) -> Result<VpsRecord, StoreError> {
        let result = self.transact(|tx| tx.update_vps_emitting(vps_id, change));
        self.signalled(self.published(vps_id, result))
    }

    fn update_vpses_emitting(
        &self,
        changes: &[(&str, &VpsUpdate<'_>)],
    ) -> Vec<Result<VpsRecord, StoreError>> {
        self.batched(
            changes,
            |tx, (vps_id, change)| tx.update_vps_emitting(vps_id, change),
            |(vps_id, change)| self.update_vps_emitting(vps_id, change),
            |changed| self.published_batch(changed),
        )
    }

    fn update_tenant_emitting(
        &self,
        name: &str,
        change: &(dyn Fn(&mut TenantRecord) -> Result<Option<EventKind>, StoreError> + Sync),
    ) -> Result<TenantRecord, StoreError> {
        let result = self.transact(|tx| {
            let mut tenant: TenantRecord = tx.need("tenants", name, "tenant")?;
            let event = change(&mut tenant)?;
            tx.put("tenants", name, &tenant);
            if let Some(kind) = event {
                tx.append_event(EventRecord::of_tenant(kind, name))?;
            }
            Ok(tenant)
        });
        self.signalled(self.published_all(result))
    }

    fn resize_vps(
        &self,
        vps_id: &str,
        plan: &str,
        resources: &Resources,
    ) -> Result<VpsRecord, StoreError> {
        let result = self.transact(|tx| {
            let mut vps: VpsRecord = tx.need("vps", vps_id, "VPS")?;
            if vps.deleting {
                return Err(StoreError::Conflict(Conflict::VpsDeleting {
                    name: vps.name.clone(),
                }));
            }
            let mut tenant: TenantRecord = tx.need("tenants", &vps.tenant, "tenant")?;
            quota::resize(&mut tenant, &vps.resources, resources, plan)?;
            tx.update_allocation(&vps.node, |allocation| {
                allocation.account(&vps.resources, -1.0);
                allocation.account(resources, 1.0);
            })?;
            vps.plan = plan.to_owned();
            vps.resources = resources.clone();
            // Pending until the node reports after applying the new limits.
            vps.observed = None;
            tx.put("tenants", &vps.tenant, &tenant);
            tx.put("vps", vps_id, &vps);
            tx.append_event(EventRecord::of_vps(EventKind::Resized, &vps))?;
            Ok(vps)
        });
        self.signalled(self.published(vps_id, result))
    }

    fn list_events(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = format!("{:020}", after.saturating_add(1));
        self.range("events", &start, None, limit)?
            .into_iter()
            .map(|(key, value)| decode("events", &key, &value))
            .collect()
    }

    fn record_usage(
        &self,
        vps_id: &str,
        hour_key: &UsageHourKey,
        apply: &(dyn Fn(UsageState) -> Option<UsageUpdate> + Sync),
    ) -> Result<Option<UsageUpdate>, StoreError> {
        let item = UsageItem {
            vps_id,
            hour_key,
            apply,
        };
        let result = self.transact(|tx| tx.record_usage(&item));
        self.usage_recorded(vps_id, result)
    }

    /// As many samples to a Txn as [`BATCH_WRITES`] allows.
    fn record_usages(
        &self,
        items: &[UsageItem<'_>],
    ) -> Vec<Result<Option<UsageUpdate>, StoreError>> {
        let results = self.batched_reading(
            items,
            |rest| rest.iter().flat_map(usage_reads).collect(),
            |tx, item| tx.record_usage(item),
            |item| self.transact(|tx| tx.record_usage(item)),
            |_| {},
        );
        items
            .iter()
            .zip(results)
            .map(|(item, result)| self.usage_recorded(item.vps_id, result))
            .collect()
    }

    fn get_usage_cursor(&self, vps_id: &str) -> Result<Option<UsageCursorRecord>, StoreError> {
        self.get("usage_cursors", vps_id)
    }

    fn list_usage_hours(
        &self,
        tenant: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageHourRecord>, StoreError> {
        let entries = match tenant {
            Some(tenant) => {
                let start = format!("{tenant}/{:020}/", from.max(0));
                let end = format!("{tenant}/{:020}/", to.max(0));
                if start >= end {
                    return Ok(Vec::new());
                }
                self.range("usage_hours", &start, Some(&end), 0)?
            }
            None => self.scan_prefix("usage_hours", "")?,
        };
        let mut out = Vec::new();
        for (key, value) in entries {
            let hour: UsageHourRecord = decode("usage_hours", &key, &value)?;
            if hour.hour_start >= from && hour.hour_start < to {
                out.push(hour);
            }
        }
        Ok(out)
    }

    fn append_audit(&self, entry: &AuditRecord) -> Result<u64, StoreError> {
        self.transact(|tx| tx.append_audit(entry))
    }

    fn append_audits(&self, entries: &[AuditRecord]) -> Vec<Result<u64, StoreError>> {
        self.batched(
            entries,
            |tx, entry| tx.append_audit(entry),
            |entry| self.append_audit(entry),
            |_| {},
        )
    }

    fn list_audit(&self, after_seq: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = format!("{:020}", after_seq.saturating_add(1));
        self.range("audit", &start, None, limit)?
            .into_iter()
            .map(|(key, value)| decode("audit", &key, &value))
            .collect()
    }

    fn put_backup(
        &self,
        backup: &BackupRecord,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError> {
        let key = backup_key(&backup.tenant, &backup.id);
        let result = self.transact(|tx| {
            tx.put("backups", &key, backup);
            if let Some(event) = event.clone() {
                tx.append_event(event)?;
            }
            Ok(())
        });
        self.signalled(result)
    }

    fn get_backup(
        &self,
        tenant: &str,
        backup_id: &str,
    ) -> Result<Option<BackupRecord>, StoreError> {
        self.get("backups", &backup_key(tenant, backup_id))
    }

    fn list_backups(&self, tenant: Option<&str>) -> Result<Vec<BackupRecord>, StoreError> {
        let prefix = tenant.map(|t| format!("{t}/")).unwrap_or_default();
        let mut backups: Vec<BackupRecord> = self
            .scan_prefix("backups", &prefix)?
            .into_iter()
            .map(|(key, value)| decode("backups", &key, &value))
            .collect::<Result<_, _>>()?;
        backups.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(backups)
    }

    fn delete_backup(
        &self,
        tenant: &str,
        backup_id: &str,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError> {
        let key = backup_key(tenant, backup_id);
        let result = self.transact(|tx| {
            if tx.get::<BackupRecord>("backups", &key)?.is_some() {
                tx.delete("backups", &key);
                if let Some(event) = event.clone() {
                    tx.append_event(event)?;
                }
            }
            Ok(())
        });
        self.signalled(result)
    }

    fn list_snapshots(&self, vps_id: &str) -> Result<VpsSnapshots, StoreError> {
        Ok(self.get("snapshots", vps_id)?.unwrap_or_default())
    }

    fn reserve_snapshot(&self, vps_id: &str, snapshot: &SnapshotRecord) -> Result<(), StoreError> {
        self.transact(|tx| {
            let vps: VpsRecord = tx.need("vps", vps_id, "VPS")?;
            if vps.deleting {
                return Err(StoreError::Conflict(Conflict::VpsDeleting {
                    name: vps.name.clone(),
                }));
            }
            let limit = tx
                .get::<PlanRecord>("plans", &vps.plan)?
                .map_or(snapshots::DEFAULT_MAX_SNAPSHOTS, |plan| plan.max_snapshots);
            let mut set: VpsSnapshots = tx.get("snapshots", vps_id)?.unwrap_or_default();
            if set.snapshots.contains_key(&snapshot.name) {
                return Err(StoreError::AlreadyExists {
                    kind: "snapshot",
                    name: format!("{}/{}", vps.name, snapshot.name),
                });
            }
            snapshots::admit(&set, &vps.name, &vps.plan, limit)?;
            set.snapshots
                .insert(snapshot.name.clone(), snapshot.clone());
            tx.put("snapshots", vps_id, &set);
            Ok(())
        })
    }

    fn put_snapshot(
        &self,
        vps_id: &str,
        snapshot: &SnapshotRecord,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError> {
        let result = self.transact(|tx| {
            let mut set: VpsSnapshots = tx.get("snapshots", vps_id)?.unwrap_or_default();
            let Some(slot) = set.snapshots.get_mut(&snapshot.name) else {
                return Err(StoreError::NotFound {
                    kind: "snapshot",
                    name: snapshot.name.clone(),
                });
            };
            *slot = snapshot.clone();
            tx.put("snapshots", vps_id, &set);
            if let Some(event) = event.clone() {
                tx.append_event(event)?;
            }
            Ok(())
        });
        self.signalled(result)
    }

    fn remove_snapshot(
        &self,
        vps_id: &str,
        name: &str,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError> {
        let result = self.transact(|tx| {
            let mut set: VpsSnapshots = tx.get("snapshots", vps_id)?.unwrap_or_default();
            if set.snapshots.remove(name).is_none() {
                return Ok(());
            }
            if set.snapshots.is_empty() {
                tx.delete("snapshots", vps_id);
            } else {
                tx.put("snapshots", vps_id, &set);
            }
            if let Some(event) = event.clone() {
                tx.append_event(event)?;
            }
            Ok(())
        });
        self.signalled(result)
    }

    fn plan_migration(&self, migration: &MigrationRecord) -> Result<VpsRecord, StoreError> {
        let result = self.transact(|tx| {
            let mut vps: VpsRecord = tx.need("vps", &migration.vps_id, "VPS")?;
            if vps.deleting {
                return Err(StoreError::Conflict(Conflict::VpsDeleting {
                    name: vps.name.clone(),
                }));
            }
            if let Some(existing) = tx.get::<MigrationRecord>("migrations", &vps.vps_id)? {
                return Err(MigrationError::InProgress {
                    vps: vps.name.clone(),
                    phase: existing.phase.as_str(),
                }
                .into());
            }
            migration::check_plan(&vps, migration)?;
            if let Some(network) = &migration.new_network {
                let mut pool: PoolRecord = tx.need("pools", &network.pool, "pool")?;
                let taken = migration::reserve_addresses(migration, &mut pool)?;
                tx.put("pools", &network.pool, &pool);
                tx.count_addresses(&pool, i64::from(taken))?;
            }
            tx.update_allocation(&migration.destination, |allocation| {
                migration::reserve_capacity(allocation, &vps);
            })?;
            migration::hold(&mut vps, migration);
            tx.put("vps", &vps.vps_id, &vps);
            tx.put("migrations", &vps.vps_id, migration);
            Ok(vps)
        });
        self.published(&migration.vps_id, result)
    }

    fn get_migration(&self, vps_id: &str) -> Result<Option<MigrationRecord>, StoreError> {
        self.get("migrations", vps_id)
    }

    fn list_migrations(&self) -> Result<Vec<MigrationRecord>, StoreError> {
        self.scan("migrations", "")
    }

    fn set_migration_phase(
        &self,
        vps_id: &str,
        phase: MigrationPhase,
        note: PhaseNote,
    ) -> Result<MigrationRecord, StoreError> {
        self.transact(|tx| {
            let mut record: MigrationRecord = tx.need("migrations", vps_id, "migration")?;
            if !migration::advance(&mut record, phase, &note) {
                return Ok(record);
            }
            tx.put("migrations", vps_id, &record);
            Ok(record)
        })
    }

    fn switch_migration(&self, vps_id: &str) -> Result<VpsRecord, StoreError> {
        let now = chrono::Utc::now();
        let result = self.transact(|tx| {
            let mut record: MigrationRecord = tx.need("migrations", vps_id, "migration")?;
            let mut vps: VpsRecord = tx.need("vps", vps_id, "VPS")?;
            if record.phase == MigrationPhase::Switched {
                return Ok(vps);
            }
            if record.phase == MigrationPhase::RollingBack || vps.node != record.source {
                return Err(MigrationError::Moved {
                    vps: vps.name.clone(),
                    node: record.source.clone(),
                }
                .into());
            }
            if let Some(network) = &vps.network {
                let moving_pool = record.new_network.as_ref().map(|n| n.pool.as_str());
                if moving_pool != Some(network.pool.as_str()) {
                    if let Some(mut pool) = tx.get::<PoolRecord>("pools", &network.pool)? {
                        let released = migration::release_addresses(&mut pool, vps_id);
                        tx.put("pools", &network.pool, &pool);
                        tx.count_addresses(&pool, -i64::from(released))?;
                    }
                }
            }
            tx.update_allocation(&record.source, |allocation| {
                migration::release_capacity(allocation, &vps);
            })?;
            tx.delete("vps_nodes", &node_vps_key(&record.source, vps_id));
            tx.put_raw(
                format!("vps_nodes/{}", node_vps_key(&record.destination, vps_id)),
                Vec::new(),
            );
            migration::switch_vps(&mut vps, &record);
            tx.put("vps", vps_id, &vps);
            if let Some(mut cursor) = tx.get::<UsageCursorRecord>("usage_cursors", vps_id)? {
                migration::reset_cursor(&mut cursor, now);
                tx.put("usage_cursors", vps_id, &cursor);
            }
            record.phase = MigrationPhase::Switched;
            tx.put("migrations", vps_id, &record);
            tx.append_event(
                EventRecord::of_vps(migration::switched_event(&record), &vps)
                    .with_detail(migration::migrated_detail(&record)),
            )?;
            Ok(vps)
        });
        self.signalled(self.published(vps_id, result))
    }

    fn end_migration(&self, vps_id: &str, event: Option<EventRecord>) -> Result<(), StoreError> {
        let result = self.transact(|tx| {
            let Some(record) = tx.get::<MigrationRecord>("migrations", vps_id)? else {
                return Ok(());
            };
            tx.delete("migrations", vps_id);
            if record.phase == MigrationPhase::Switched {
                return Ok(());
            }
            if let Some(network) = &record.new_network {
                if let Some(mut pool) = tx.get::<PoolRecord>("pools", &network.pool)? {
                    let keeps_here = record
                        .old_network
                        .as_ref()
                        .is_some_and(|old| old.pool == network.pool);
                    if !keeps_here {
                        let released = migration::release_addresses(&mut pool, vps_id);
                        tx.put("pools", &network.pool, &pool);
                        tx.count_addresses(&pool, -i64::from(released))?;
                    }
                }
            }
            if let Some(mut vps) = tx.get::<VpsRecord>("vps", vps_id)? {
                tx.update_allocation(&record.destination, |allocation| {
                    migration::release_capacity(allocation, &vps);
                })?;
                vps.desired_power = if record.was_running {
                    Power::Running
                } else {
                    Power::Stopped
                };
                tx.put("vps", vps_id, &vps);
            }
            if let Some(event) = &event {
                tx.append_event(event.clone())?;
            }
            Ok(())
        });
        self.signalled(self.published(vps_id, result))
    }
}

/// A backup's key: `tenant/id` (names cannot contain `/`), so a tenant's backups are a prefix.
fn backup_key(tenant: &str, backup_id: &str) -> String {
    format!("{tenant}/{backup_id}")
}
