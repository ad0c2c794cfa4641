//! `Store` on sled: one tree per record kind, JSON values, multi-tree transactions.

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{Transactional, Tree};

use super::*;
use crate::model::*;
use crate::model::{ipam, quota};

mod migrations;
mod snapshots;

const META: &str = "meta";
const SCHEMA_KEY: &[u8] = b"schema_version";
/// Present once `vps_nodes` and `node_allocations` were built from the VPSes
/// and pools; a store written before they existed gets them at open.
const NODE_INDEX_KEY: &[u8] = b"node_index_version";
const NODE_INDEX_VERSION: &[u8] = b"1";

/// One stored entry: tree name, key, value.
pub type DumpEntry = (String, Vec<u8>, Vec<u8>);

/// The embedded sled store in the controller's data dir.
pub struct SledStore {
    db: sled::Db,
    /// sled's log file, for the fdatasync that ends a [`flush`](Store::flush).
    log: Arc<std::fs::File>,
    plans: Tree,
    tenants: Tree,
    tokens: Tree,
    nodes: Tree,
    /// Node name -> when its certificates were revoked (the node was removed).
    node_revocations: Tree,
    vps: Tree,
    /// `tenant/name` -> vps id.
    vps_names: Tree,
    /// Pool name -> pool, with its allocated addresses.
    pools: Tree,
    /// Big-endian sequence number -> audit entry.
    audit: Tree,
    /// Big-endian cursor -> lifecycle event.
    events: Tree,
    /// `last` -> the highest cursor handed out (read and written by every
    /// appending transaction, so appends serialize in commit order).
    events_meta: Tree,
    /// VPS id -> its last accepted usage sample.
    usage_cursors: Tree,
    /// `tenant/<hour_start:020>/vps_id` -> usage of that VPS in that hour.
    usage_hours: Tree,
    /// `node/vps_id` -> nothing: the VPSes placed on each node.
    vps_nodes: Tree,
    /// Node name -> what is placed on it (`NodeAllocationRecord`).
    node_allocations: Tree,
    /// Backup records by `tenant/id`.
    backups: Tree,
    commits: GroupCommit,
    watchers: VpsWatchers,
    events_committed: EventSignal,
    /// Never sent to: the only controller knows its own changes.
    changes: StoreChanges,
}

/// Group commit: concurrent `flush` calls share one disk flush. A caller's
/// mutations are covered by any flush that starts after it asked, so while
/// one flush runs, everyone who asks meanwhile is served by the next one.
#[derive(Default)]
struct GroupCommit {
    leader: tokio::sync::Mutex<()>,
    requested: std::sync::atomic::AtomicU64,
    completed: std::sync::atomic::AtomicU64,
    flushes: std::sync::atomic::AtomicU64,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain data (strings, numbers, maps with string keys): serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// Generation bumped by every pool create, so concurrent creates conflict (not a pool).
const POOL_GUARD: &[u8] = b"\0guard";

/// Takes `vps.resources.ipv4_count` addresses from the first of `node_pools`
/// with enough free ones and records them on the VPS and in the pool; returns that pool.
fn allocate_addresses(
    pools: &TransactionalTree,
    node_pools: &[String],
    vps: &mut VpsRecord,
) -> TxResult<Option<PoolRecord>> {
    let count = vps.resources.ipv4_count;
    if count == 0 {
        return Ok(None);
    }
    let mut full = Vec::new();
    for name in node_pools {
        let Some(mut pool) = tx_get::<PoolRecord>(pools, "pools", name.as_bytes())? else {
            continue;
        };
        if !ipam::allocate_from(&mut pool, vps) {
            if ipam::plan(&pool).is_ok() {
                full.push(pool.name);
            }
            continue;
        }
        pools.insert(name.as_bytes(), encode(&pool))?;
        return Ok(Some(pool));
    }
    abort(StoreError::from(ipam::no_room(&vps.node, full, count)))
}

/// Hour keys sort by tenant, then hour, then VPS (hours are never negative).
fn usage_hour_key(tenant: &str, hour_start: i64, vps_id: &str) -> Vec<u8> {
    format!("{tenant}/{:020}/{vps_id}", hour_start.max(0)).into_bytes()
}

fn name_key(tenant: &str, name: &str) -> Vec<u8> {
    format!("{tenant}/{name}").into_bytes()
}

/// Key of a VPS in the node index; node names cannot contain `/`.
fn node_vps_key(node: &str, vps_id: &str) -> Vec<u8> {
    format!("{node}/{vps_id}").into_bytes()
}

/// Read-modify-write of a node's allocation summary inside a transaction.
fn tx_update_allocation(
    allocations: &TransactionalTree,
    node: &str,
    change: impl FnOnce(&mut NodeAllocationRecord),
) -> TxResult<()> {
    let mut allocation: NodeAllocationRecord =
        tx_get(allocations, "node_allocations", node.as_bytes())?.unwrap_or_default();
    change(&mut allocation);
    allocations.insert(node.as_bytes(), encode(&allocation))?;
    Ok(())
}

/// Counts `taken` addresses of `pool` as given (or, negative, given back) in the summary of
/// every node the pool spans.
fn tx_count_addresses(
    allocations: &TransactionalTree,
    pool: &PoolRecord,
    taken: i64,
) -> TxResult<()> {
    if taken == 0 {
        return Ok(());
    }
    for node in pool.span() {
        tx_update_allocation(allocations, &node, |allocation| {
            crate::model::migration::count_addresses(allocation, taken);
        })?;
    }
    Ok(())
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(error: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error))
}

fn tx_get<T: DeserializeOwned>(
    tree: &TransactionalTree,
    name: &'static str,
    key: &[u8],
) -> TxResult<Option<T>> {
    match tree.get(key)? {
        None => Ok(None),
        Some(bytes) => decode(name, key, &bytes).map(Some).or_else(abort),
    }
}

const LAST_CURSOR: &[u8] = b"last";

/// Appends `event` with the next cursor, inside a transaction.
fn tx_append_event(
    events: &TransactionalTree,
    meta: &TransactionalTree,
    mut event: EventRecord,
) -> TxResult<u64> {
    let last = meta
        .get(LAST_CURSOR)?
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
        .map_or(0, u64::from_be_bytes);
    let cursor = last + 1;
    event.cursor = cursor;
    meta.insert(LAST_CURSOR, &cursor.to_be_bytes())?;
    events.insert(&cursor.to_be_bytes(), encode(&event))?;
    Ok(cursor)
}

/// Like [`tx_get`], but a missing record aborts with `NotFound { kind, name }`.
fn tx_need<T: DeserializeOwned>(
    tree: &TransactionalTree,
    tree_name: &'static str,
    key: &[u8],
    kind: &'static str,
    name: impl Into<String>,
) -> TxResult<T> {
    match tx_get(tree, tree_name, key)? {
        Some(record) => Ok(record),
        None => abort(StoreError::NotFound {
            kind,
            name: name.into(),
        }),
    }
}

impl SledStore {
    /// Usage samples in one transaction, in order (sled's transaction reads its own writes).
    fn record_usages_together(
        &self,
        items: &[UsageItem<'_>],
    ) -> Result<Vec<Option<UsageUpdate>>, StoreError> {
        let keys: Vec<Vec<u8>> = items
            .iter()
            .map(|item| {
                let key = item.hour_key;
                usage_hour_key(&key.tenant, key.hour_start, &key.vps_id)
            })
            .collect();
        flatten(
            (
                &self.usage_cursors,
                &self.usage_hours,
                &self.vps,
                &self.events,
                &self.events_meta,
            )
                .transaction(|(cursors, hours, all_vps, events, meta)| {
                    let mut updates = Vec::with_capacity(items.len());
                    for (item, key) in items.iter().zip(&keys) {
                        let vps_id = item.vps_id.as_bytes();
                        let state = UsageState {
                            cursor: tx_get(cursors, "usage_cursors", vps_id)?,
                            hour: tx_get(hours, "usage_hours", key)?,
                            vps: tx_get(all_vps, "vps", vps_id)?,
                        };
                        let update = (item.apply)(state);
                        if let Some(update) = &update {
                            cursors.insert(vps_id, encode(&update.cursor))?;
                            hours.insert(key.as_slice(), encode(&update.hour))?;
                            if let Some(vps) = &update.vps {
                                all_vps.insert(vps_id, encode(vps))?;
                            }
                            for event in &update.events {
                                tx_append_event(events, meta, event.clone())?;
                            }
                        }
                        updates.push(update);
                    }
                    Ok(updates)
                }),
        )
    }
}

fn flatten<T>(result: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    result.map_err(|error| match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => StoreError::Sled(error),
    })
}

impl From<UnabortableTransactionError> for StoreError {
    fn from(error: UnabortableTransactionError) -> Self {
        match error {
            UnabortableTransactionError::Storage(error) => StoreError::Sled(error),
            UnabortableTransactionError::Conflict => StoreError::Conflict(Conflict::Transaction),
        }
    }
}

/// Applies `change` to the VPS `vps_id` in a transaction over the VPS, event and event-meta
/// trees, appending the event it names. The inner error (the VPS is missing, or `change`
/// refused) wrote nothing: a caller may abort with it or go on with other changes.
fn tx_update_vps(
    (all, events, meta): (&TransactionalTree, &TransactionalTree, &TransactionalTree),
    vps_id: &str,
    change: &VpsUpdate<'_>,
) -> TxResult<Result<VpsRecord, StoreError>> {
    let Some(mut vps) = tx_get::<VpsRecord>(all, "vps", vps_id.as_bytes())? else {
        return Ok(Err(StoreError::NotFound {
            kind: "VPS",
            name: vps_id.to_owned(),
        }));
    };
    let event = match change(&mut vps) {
        Ok(event) => event,
        Err(refused) => return Ok(Err(refused)),
    };
    all.insert(vps_id.as_bytes(), encode(&vps))?;
    if let Some(event) = event {
        tx_append_event(events, meta, event)?;
    }
    Ok(Ok(vps))
}

/// The trees a create writes, inside its transaction, in the order of
/// [`SledStore::create_trees`]: tenants, VPSes, VPS names, pools, events, event meta, the
/// per-node VPS index, node allocations.
type CreateTrees = (
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
);

/// Creates `vps` in a transaction: checks its name and its tenant's quota, takes its
/// addresses and charges its node; returns it as stored (with its addresses).
fn tx_create_vps(trees: &CreateTrees, vps: &VpsRecord) -> TxResult<VpsRecord> {
    let (tenants, all, names, pools, events, meta, node_index, allocations) = trees;
    let key = name_key(&vps.tenant, &vps.name);
    let mut tenant = tx_need::<TenantRecord>(
        tenants,
        "tenants",
        vps.tenant.as_bytes(),
        "tenant",
        vps.tenant.clone(),
    )?;
    if names.get(&key)?.is_some() {
        return abort(StoreError::AlreadyExists {
            kind: "VPS",
            name: vps.name.clone(),
        });
    }
    if let Err(error) = quota::admit(&mut tenant, &vps.resources, &vps.plan) {
        return abort(StoreError::Quota(error));
    }
    // The node's summary names its pools: read in the
    // transaction, so allocations and pool changes serialize.
    let mut allocation: NodeAllocationRecord =
        tx_get(allocations, "node_allocations", vps.node.as_bytes())?.unwrap_or_default();
    let mut vps = vps.clone();
    let pool = allocate_addresses(pools, &allocation.pools, &mut vps)?;
    allocation.account(&vps.resources, 1.0);
    allocations.insert(vps.node.as_bytes(), encode(&allocation))?;
    if let Some(pool) = &pool {
        let taken = i64::try_from(vps.ipv4.len()).unwrap_or(i64::MAX);
        tx_count_addresses(allocations, pool, taken)?;
    }
    tenants.insert(vps.tenant.as_bytes(), encode(&tenant))?;
    all.insert(vps.vps_id.as_bytes(), encode(&vps))?;
    names.insert(key, vps.vps_id.as_bytes())?;
    node_index.insert(node_vps_key(&vps.node, &vps.vps_id), &[])?;
    tx_append_event(events, meta, EventRecord::of_vps(EventKind::Created, &vps))?;
    Ok(vps)
}

impl SledStore {
    /// The trees of [`tx_create_vps`], in the order of [`CreateTrees`].
    #[allow(clippy::type_complexity)]
    fn create_trees(
        &self,
    ) -> (
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
        &sled::Tree,
    ) {
        (
            &self.tenants,
            &self.vps,
            &self.vps_names,
            &self.pools,
            &self.events,
            &self.events_meta,
            &self.vps_nodes,
            &self.node_allocations,
        )
    }

    fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
        sled::Config::new()
            .path(path)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })
    }

    fn from_db(db: sled::Db, path: &Path) -> Result<Self, StoreError> {
        // sled's own flush ends in sync_file_range, which neither waits for the file's
        // metadata nor flushes the disk's write cache; a flush that must survive a power cut
        // ends with an fdatasync of this handle on the same file.
        let log = std::fs::File::open(path.join("db")).map_err(sled::Error::Io)?;
        Ok(Self {
            log: Arc::new(log),
            plans: db.open_tree("plans")?,
            tenants: db.open_tree("tenants")?,
            tokens: db.open_tree("tokens")?,
            nodes: db.open_tree("nodes")?,
            node_revocations: db.open_tree("node_revocations")?,
            vps: db.open_tree("vps")?,
            vps_names: db.open_tree("vps_names")?,
            pools: db.open_tree("pools")?,
            audit: db.open_tree("audit")?,
            events: db.open_tree("events")?,
            events_meta: db.open_tree("events_meta")?,
            usage_cursors: db.open_tree("usage_cursors")?,
            usage_hours: db.open_tree("usage_hours")?,
            vps_nodes: db.open_tree("vps_nodes")?,
            node_allocations: db.open_tree("node_allocations")?,
            backups: db.open_tree("backups")?,
            commits: GroupCommit::default(),
            watchers: VpsWatchers::default(),
            events_committed: EventSignal::default(),
            changes: StoreChanges::default(),
            db,
        })
    }

    /// Creates a new store at `path` stamped with the current schema version.
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        let db = Self::open_db(path)?;
        let meta = db.open_tree(META)?;
        if meta.get(SCHEMA_KEY)?.is_none() {
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
        }
        let store = Self::from_db(db, path)?;
        store.check_schema(path)?;
        store.build_node_index()?;
        Ok(store)
    }

    /// Opens an existing store, refusing one of another schema version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.join("conf").exists() && !path.join("db").exists() {
            return Err(StoreError::NotInitialized {
                path: path.display().to_string(),
            });
        }
        let store = Self::from_db(Self::open_db(path)?, path)?;
        store.check_schema(path)?;
        store.build_node_index()?;
        Ok(store)
    }

    /// Builds the per-node index and allocation summaries from the VPSes and
    /// pools of a store that predates them (once; later changes keep them).
    fn build_node_index(&self) -> Result<(), StoreError> {
        let meta = self.db.open_tree(META)?;
        if meta.get(NODE_INDEX_KEY)?.is_some() {
            return Ok(());
        }
        self.vps_nodes.clear()?;
        self.node_allocations.clear()?;
        let mut allocations: std::collections::BTreeMap<String, NodeAllocationRecord> =
            std::collections::BTreeMap::new();
        for pool in self.list_pools()? {
            for node in pool.span() {
                let allocation = allocations.entry(node).or_default();
                allocation.free_ipv4 = allocation.free_ipv4.saturating_add(ipam::free_ipv4(&pool));
                allocation.pools.push(pool.name.clone());
                if pool.is_shared() {
                    allocation.shared_pools.push(pool.name.clone());
                }
            }
        }
        for vps in Self::scan::<VpsRecord>(&self.vps, "vps")? {
            self.vps_nodes
                .insert(node_vps_key(&vps.node, &vps.vps_id), &[])?;
            allocations
                .entry(vps.node.clone())
                .or_default()
                .account(&vps.resources, 1.0);
        }
        for (node, mut allocation) in allocations {
            allocation.pools.sort();
            allocation.shared_pools.sort();
            self.node_allocations
                .insert(node.as_bytes(), encode(&allocation))?;
        }
        meta.insert(NODE_INDEX_KEY, NODE_INDEX_VERSION)?;
        self.db.flush()?;
        Ok(())
    }

    fn check_schema(&self, path: &Path) -> Result<(), StoreError> {
        let meta = self.db.open_tree(META)?;
        let found = match meta.get(SCHEMA_KEY)? {
            None => {
                return Err(StoreError::NotInitialized {
                    path: path.display().to_string(),
                })
            }
            Some(bytes) => String::from_utf8_lossy(&bytes).parse::<u32>().unwrap_or(0),
        };
        if found != SCHEMA_VERSION {
            return Err(StoreError::SchemaMismatch {
                path: path.display().to_string(),
                found,
                expected: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    /// How many disk flushes ran (each may serve many `flush` calls).
    pub fn disk_flushes(&self) -> u64 {
        self.commits
            .flushes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every key and value of every tree, for tests that check a failed request changed nothing.
    pub fn dump(&self) -> Result<Vec<DumpEntry>, StoreError> {
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            for entry in tree.iter() {
                let (key, value) = entry?;
                out.push((
                    String::from_utf8_lossy(&name).into_owned(),
                    key.to_vec(),
                    value.to_vec(),
                ));
            }
        }
        Ok(out)
    }

    fn get<T: DeserializeOwned>(
        tree: &Tree,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        tree.get(key)?
            .map(|bytes| decode(name, key, &bytes))
            .transpose()
    }

    fn scan<T: DeserializeOwned>(tree: &Tree, name: &'static str) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|entry| {
                let (key, value) = entry?;
                decode(name, &key, &value)
            })
            .collect()
    }
}

/// A backup's key: `tenant/id` (names cannot contain `/`), so a tenant's backups are a prefix.
fn backup_key(tenant: &str, backup_id: &str) -> String {
    format!("{tenant}/{backup_id}")
}

impl Store for SledStore {
    fn put_backup(
        &self,
        backup: &BackupRecord,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError> {
        let key = backup_key(&backup.tenant, &backup.id);
        let result = flatten(
            (&self.backups, &self.events, &self.events_meta).transaction(
                |(backups, events, meta)| {
                    backups.insert(key.as_bytes(), encode(backup))?;
                    if let Some(event) = &event {
                        tx_append_event(events, meta, event.clone())?;
                    }
                    Ok(())
                },
            ),
        );
        self.signalled(result)
    }

    fn get_backup(
        &self,
        tenant: &str,
        backup_id: &str,
    ) -> Result<Option<BackupRecord>, StoreError> {
        Self::get(
            &self.backups,
            "backups",
            backup_key(tenant, backup_id).as_bytes(),
        )
    }

    fn list_backups(&self, tenant: Option<&str>) -> Result<Vec<BackupRecord>, StoreError> {
        let prefix = tenant.map(|t| format!("{t}/")).unwrap_or_default();
        let mut backups: Vec<BackupRecord> = self
            .backups
            .scan_prefix(prefix.as_bytes())
            .map(|entry| {
                let (key, value) = entry?;
                decode("backups", &key, &value)
            })
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
        let result = flatten(
            (&self.backups, &self.events, &self.events_meta).transaction(
                |(backups, events, meta)| {
                    if backups.remove(key.as_bytes())?.is_some() {
                        if let Some(event) = &event {
                            tx_append_event(events, meta, event.clone())?;
                        }
                    }
                    Ok(())
                },
            ),
        );
        self.signalled(result)
    }

    fn vps_watchers(&self) -> &VpsWatchers {
        &self.watchers
    }

    fn plan_migration(&self, migration: &MigrationRecord) -> Result<VpsRecord, StoreError> {
        self.plan_migration_impl(migration)
    }

    fn get_migration(&self, vps_id: &str) -> Result<Option<MigrationRecord>, StoreError> {
        self.get_migration_impl(vps_id)
    }

    fn list_migrations(&self) -> Result<Vec<MigrationRecord>, StoreError> {
        self.list_migrations_impl()
    }

    fn set_migration_phase(
        &self,
        vps_id: &str,
        phase: MigrationPhase,
        note: crate::model::migration::PhaseNote,
    ) -> Result<MigrationRecord, StoreError> {
        self.set_migration_phase_impl(vps_id, phase, note)
    }

    fn switch_migration(&self, vps_id: &str) -> Result<VpsRecord, StoreError> {
        self.switch_migration_impl(vps_id)
    }

    fn end_migration(&self, vps_id: &str, event: Option<EventRecord>) -> Result<(), StoreError> {
        self.end_migration_impl(vps_id, event)
    }

    fn list_snapshots(&self, vps_id: &str) -> Result<VpsSnapshots, StoreError> {
        self.list_snapshots_impl(vps_id)
    }

    fn reserve_snapshot(&self, vps_id: &str, snapshot: &SnapshotRecord) -> Result<(), StoreError> {
        self.reserve_snapshot_impl(vps_id, snapshot)
    }

    fn put_snapshot(
        &self,
        vps_id: &str,
        snapshot: &SnapshotRecord,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError> {
        self.put_snapshot_impl(vps_id, snapshot, event)
    }

    fn remove_snapshot(
        &self,
        vps_id: &str,
        name: &str,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError> {
        self.remove_snapshot_impl(vps_id, name, event)
    }

    fn event_signal(&self) -> &EventSignal {
        &self.events_committed
    }

    fn store_changes(&self) -> &StoreChanges {
        &self.changes
    }

    fn campaign(&self, _candidate: Candidate) -> Result<Leadership, StoreError> {
        Ok(Leadership::always())
    }

    fn update_vps_emitting(
        &self,
        vps_id: &str,
        change: &VpsUpdate<'_>,
    ) -> Result<VpsRecord, StoreError> {
        let result = flatten((&self.vps, &self.events, &self.events_meta).transaction(
            |(all, events, meta)| {
                tx_update_vps((all, events, meta), vps_id, change)?.or_else(abort)
            },
        ));
        self.signalled(self.published(vps_id, result))
    }

    fn update_vpses_emitting(
        &self,
        changes: &[(&str, &VpsUpdate<'_>)],
    ) -> Vec<Result<VpsRecord, StoreError>> {
        let committed = flatten((&self.vps, &self.events, &self.events_meta).transaction(
            |(all, events, meta)| {
                changes
                    .iter()
                    .map(|(vps_id, change)| tx_update_vps((all, events, meta), vps_id, change))
                    .collect::<TxResult<Vec<_>>>()
            },
        ));
        match committed {
            Ok(results) => {
                for ((vps_id, _), result) in changes.iter().zip(&results) {
                    if result.is_ok() {
                        self.vps_watchers().publish(vps_id, |id| self.get_vps(id));
                    }
                }
                if results.iter().any(Result::is_ok) {
                    self.event_signal().committed();
                }
                results
            }
            // A record that does not decode or a storage error: each change on its own
            // tells whose it is.
            Err(_) => changes
                .iter()
                .map(|(vps_id, change)| self.update_vps_emitting(vps_id, change))
                .collect(),
        }
    }

    fn update_tenant_emitting(
        &self,
        name: &str,
        change: &(dyn Fn(&mut TenantRecord) -> Result<Option<EventKind>, StoreError> + Sync),
    ) -> Result<TenantRecord, StoreError> {
        let result = flatten(
            (&self.tenants, &self.events, &self.events_meta).transaction(
                |(tenants, events, meta)| {
                    let mut tenant = tx_need::<TenantRecord>(
                        tenants,
                        "tenants",
                        name.as_bytes(),
                        "tenant",
                        name.to_owned(),
                    )?;
                    let event = change(&mut tenant).or_else(abort)?;
                    tenants.insert(name.as_bytes(), encode(&tenant))?;
                    if let Some(kind) = event {
                        tx_append_event(events, meta, EventRecord::of_tenant(kind, name))?;
                    }
                    Ok(tenant)
                },
            ),
        );
        self.signalled(self.published_all(result))
    }

    fn resize_vps(
        &self,
        vps_id: &str,
        plan: &str,
        resources: &Resources,
    ) -> Result<VpsRecord, StoreError> {
        let result = flatten(
            (
                &self.tenants,
                &self.vps,
                &self.events,
                &self.events_meta,
                &self.node_allocations,
            )
                .transaction(|(tenants, all, events, meta, allocations)| {
                    let mut vps = tx_need::<VpsRecord>(
                        all,
                        "vps",
                        vps_id.as_bytes(),
                        "VPS",
                        vps_id.to_owned(),
                    )?;
                    if vps.deleting {
                        return abort(StoreError::Conflict(Conflict::VpsDeleting {
                            name: vps.name.clone(),
                        }));
                    }
                    let mut tenant = tx_need::<TenantRecord>(
                        tenants,
                        "tenants",
                        vps.tenant.as_bytes(),
                        "tenant",
                        vps.tenant.clone(),
                    )?;
                    if let Err(error) = quota::resize(&mut tenant, &vps.resources, resources, plan)
                    {
                        return abort(StoreError::Quota(error));
                    }
                    tx_update_allocation(allocations, &vps.node, |allocation| {
                        allocation.account(&vps.resources, -1.0);
                        allocation.account(resources, 1.0);
                    })?;
                    vps.plan = plan.to_owned();
                    vps.resources = resources.clone();
                    // Pending until the node reports after applying the new limits.
                    vps.observed = None;
                    tenants.insert(vps.tenant.as_bytes(), encode(&tenant))?;
                    all.insert(vps_id.as_bytes(), encode(&vps))?;
                    tx_append_event(events, meta, EventRecord::of_vps(EventKind::Resized, &vps))?;
                    Ok(vps)
                }),
        );
        self.signalled(self.published(vps_id, result))
    }

    fn list_events(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        self.events
            .range(start..)
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                decode("events", &key, &value)
            })
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
        let result = self
            .record_usages_together(std::slice::from_ref(&item))
            .map(|mut updates| updates.pop().flatten());
        self.usage_recorded(vps_id, result)
    }

    /// One transaction for all of `items`; if it fails, each alone, for its own answer.
    fn record_usages(
        &self,
        items: &[UsageItem<'_>],
    ) -> Vec<Result<Option<UsageUpdate>, StoreError>> {
        if items.is_empty() {
            return Vec::new();
        }
        match self.record_usages_together(items) {
            Ok(updates) => items
                .iter()
                .zip(updates)
                .map(|(item, update)| self.usage_recorded(item.vps_id, Ok(update)))
                .collect(),
            // A failed transaction wrote nothing.
            Err(_) => items
                .iter()
                .map(|item| self.record_usage(item.vps_id, item.hour_key, item.apply))
                .collect(),
        }
    }

    fn get_usage_cursor(&self, vps_id: &str) -> Result<Option<UsageCursorRecord>, StoreError> {
        self.usage_cursors
            .get(vps_id.as_bytes())?
            .map(|bytes| decode("usage_cursors", vps_id.as_bytes(), &bytes))
            .transpose()
    }

    fn list_usage_hours(
        &self,
        tenant: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageHourRecord>, StoreError> {
        let decode_all = |iter: sled::Iter| -> Result<Vec<UsageHourRecord>, StoreError> {
            let mut out = Vec::new();
            for entry in iter {
                let (key, value) = entry?;
                let hour: UsageHourRecord = decode("usage_hours", &key, &value)?;
                if hour.hour_start >= from && hour.hour_start < to {
                    out.push(hour);
                }
            }
            Ok(out)
        };
        match tenant {
            Some(tenant) => {
                let start = format!("{tenant}/{:020}/", from.max(0)).into_bytes();
                let end = format!("{tenant}/{:020}/", to.max(0)).into_bytes();
                if start >= end {
                    return Ok(Vec::new());
                }
                decode_all(self.usage_hours.range(start..end))
            }
            None => decode_all(self.usage_hours.iter()),
        }
    }

    fn append_audit(&self, entry: &AuditRecord) -> Result<u64, StoreError> {
        // Strictly increasing across restarts: sled persists the id generator.
        let seq = self.db.generate_id()? + 1;
        let mut entry = entry.clone();
        entry.seq = seq;
        self.audit.insert(seq.to_be_bytes(), encode(&entry))?;
        Ok(seq)
    }

    fn list_audit(&self, after_seq: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let start = after_seq.saturating_add(1).to_be_bytes();
        self.audit
            .range(start..)
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                decode("audit", &key, &value)
            })
            .collect()
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            let commits = &self.commits;
            let ticket = commits.requested.fetch_add(1, SeqCst) + 1;
            let _leader = commits.leader.lock().await;
            if commits.completed.load(SeqCst) >= ticket {
                return Ok(());
            }
            // Every ticket issued so far belongs to a mutation already applied.
            let covering = commits.requested.load(SeqCst);
            let started = std::time::Instant::now();
            self.db.flush_async().await?;
            let log = self.log.clone();
            tokio::task::spawn_blocking(move || log.sync_data())
                .await
                .map_err(|error| sled::Error::Io(std::io::Error::other(error)))?
                .map_err(sled::Error::Io)?;
            crate::metrics::observe_store_flush(started.elapsed());
            commits.flushes.fetch_add(1, SeqCst);
            commits.completed.store(covering, SeqCst);
            Ok(())
        })
    }

    fn list_plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        Self::scan(&self.plans, "plans")
    }

    fn get_plan(&self, name: &str) -> Result<Option<PlanRecord>, StoreError> {
        Self::get(&self.plans, "plans", name.as_bytes())
    }

    fn create_plan(&self, plan: &PlanRecord) -> Result<(), StoreError> {
        let swapped = self.plans.compare_and_swap(
            plan.name.as_bytes(),
            None as Option<&[u8]>,
            Some(encode(plan)),
        )?;
        swapped.map_err(|_| StoreError::AlreadyExists {
            kind: "plan",
            name: plan.name.clone(),
        })
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
        match self.plans.remove(name.as_bytes())? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound {
                kind: "plan",
                name: name.to_owned(),
            }),
        }
    }

    fn create_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        let swapped = self.tenants.compare_and_swap(
            tenant.name.as_bytes(),
            None as Option<&[u8]>,
            Some(encode(tenant)),
        )?;
        swapped.map_err(|_| StoreError::AlreadyExists {
            kind: "tenant",
            name: tenant.name.clone(),
        })
    }

    fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>, StoreError> {
        Self::get(&self.tenants, "tenants", name.as_bytes())
    }

    fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        Self::scan(&self.tenants, "tenants")
    }

    fn update_tenant(
        &self,
        name: &str,
        change: &(dyn Fn(&mut TenantRecord) -> Result<(), StoreError> + Sync),
    ) -> Result<TenantRecord, StoreError> {
        let result = flatten(self.tenants.transaction(|tenants| {
            let mut tenant = tx_need::<TenantRecord>(
                tenants,
                "tenants",
                name.as_bytes(),
                "tenant",
                name.to_owned(),
            )?;
            change(&mut tenant).or_else(abort)?;
            tenants.insert(name.as_bytes(), encode(&tenant))?;
            Ok(tenant)
        }));
        self.published_all(result)
    }

    fn delete_tenant(&self, name: &str) -> Result<(), StoreError> {
        flatten(self.tenants.transaction(|tenants| {
            let tenant = tx_need::<TenantRecord>(
                tenants,
                "tenants",
                name.as_bytes(),
                "tenant",
                name.to_owned(),
            )?;
            if tenant.used.max_vps > 0 {
                return abort(StoreError::Conflict(Conflict::TenantHasVps {
                    tenant: name.to_owned(),
                    vps_count: tenant.used.max_vps,
                }));
            }
            tenants.remove(name.as_bytes())?;
            Ok(())
        }))?;
        // Tokens of a deleted tenant can never authenticate again.
        for entry in self.tokens.iter() {
            let (key, value) = entry?;
            let token: TokenRecord = decode("tokens", &key, &value)?;
            if token.tenant.as_deref() == Some(name) {
                self.tokens.remove(key)?;
            }
        }
        Ok(())
    }

    fn put_token(&self, hash: &str, token: &TokenRecord) -> Result<(), StoreError> {
        self.tokens.insert(hash.as_bytes(), encode(token))?;
        Ok(())
    }

    fn get_token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        Self::get(&self.tokens, "tokens", hash.as_bytes())
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Self::scan(&self.tokens, "tokens")
    }

    fn revoke_token(&self, token_id: &str) -> Result<(), StoreError> {
        for entry in self.tokens.iter() {
            let (key, value) = entry?;
            let mut token: TokenRecord = decode("tokens", &key, &value)?;
            if token.token_id == token_id {
                token.revoked = true;
                self.tokens.insert(key, encode(&token))?;
                return Ok(());
            }
        }
        Err(StoreError::NotFound {
            kind: "token",
            name: token_id.to_owned(),
        })
    }

    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.nodes.insert(node.name.as_bytes(), encode(node))?;
        Ok(())
    }

    fn get_node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        Self::get(&self.nodes, "nodes", name.as_bytes())
    }

    fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        Self::scan(&self.nodes, "nodes")
    }

    fn remove_node(&self, name: &str, revoked_at: DateTime<Utc>) -> Result<(), StoreError> {
        flatten(
            (&self.nodes, &self.node_revocations).transaction(|(nodes, revocations)| {
                tx_need::<NodeRecord>(nodes, "nodes", name.as_bytes(), "node", name.to_owned())?;
                nodes.remove(name.as_bytes())?;
                revocations.insert(name.as_bytes(), encode(&revoked_at))?;
                Ok(())
            }),
        )
    }

    fn node_revoked_at(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Self::get(&self.node_revocations, "node_revocations", name.as_bytes())
    }

    fn create_vps(&self, vps: &VpsRecord) -> Result<VpsRecord, StoreError> {
        let result = flatten(
            self.create_trees()
                .transaction(|trees| tx_create_vps(trees, vps)),
        );
        self.signalled(self.published(&vps.vps_id, result))
    }

    fn batches_writes(&self) -> bool {
        true
    }

    fn create_vpses(&self, vpses: &[VpsRecord]) -> Vec<Result<VpsRecord, StoreError>> {
        let created = flatten(self.create_trees().transaction(|trees| {
            vpses
                .iter()
                .map(|vps| tx_create_vps(trees, vps))
                .collect::<TxResult<Vec<_>>>()
        }));
        match created {
            Ok(created) => {
                self.published_batch(&created);
                created.into_iter().map(Ok).collect()
            }
            // One of them is refused (a name taken, a quota reached) or the store failed:
            // one by one, each gets its own answer.
            Err(_) => vpses.iter().map(|vps| self.create_vps(vps)).collect(),
        }
    }

    fn get_vps(&self, vps_id: &str) -> Result<Option<VpsRecord>, StoreError> {
        Self::get(&self.vps, "vps", vps_id.as_bytes())
    }

    fn find_vps(&self, tenant: &str, name: &str) -> Result<Option<VpsRecord>, StoreError> {
        match self.vps_names.get(name_key(tenant, name))? {
            None => Ok(None),
            Some(vps_id) => Self::get(&self.vps, "vps", &vps_id),
        }
    }

    fn list_vps(&self, tenant: Option<&str>) -> Result<Vec<VpsRecord>, StoreError> {
        match tenant {
            None => Self::scan(&self.vps, "vps"),
            Some(tenant) => {
                let mut out = Vec::new();
                for entry in self.vps_names.scan_prefix(format!("{tenant}/").as_bytes()) {
                    let (_, vps_id) = entry?;
                    if let Some(vps) = Self::get(&self.vps, "vps", &vps_id)? {
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
        for entry in self.vps_nodes.scan_prefix(prefix.as_bytes()) {
            let (key, _) = entry?;
            let vps_id = &key[prefix.len()..];
            if let Some(vps) = Self::get(&self.vps, "vps", vps_id)? {
                out.push(vps);
            }
        }
        Ok(out)
    }

    fn node_allocations(&self) -> Result<Vec<(String, NodeAllocationRecord)>, StoreError> {
        self.node_allocations
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                let allocation = decode("node_allocations", &key, &value)?;
                Ok((String::from_utf8_lossy(&key).into_owned(), allocation))
            })
            .collect()
    }

    fn update_vps(
        &self,
        vps_id: &str,
        change: &(dyn Fn(&mut VpsRecord) -> Result<(), StoreError> + Sync),
    ) -> Result<VpsRecord, StoreError> {
        let result = flatten(self.vps.transaction(|all| {
            let mut vps =
                tx_need::<VpsRecord>(all, "vps", vps_id.as_bytes(), "VPS", vps_id.to_owned())?;
            change(&mut vps).or_else(abort)?;
            all.insert(vps_id.as_bytes(), encode(&vps))?;
            Ok(vps)
        }));
        self.published(vps_id, result)
    }

    fn remove_vps(&self, vps_id: &str) -> Result<(), StoreError> {
        let result = flatten(
            (
                &self.tenants,
                &self.vps,
                &self.vps_names,
                &self.pools,
                &self.usage_cursors,
                &self.events,
                &self.events_meta,
                &self.vps_nodes,
                &self.node_allocations,
            )
                .transaction(
                    |(
                        tenants,
                        all,
                        names,
                        pools,
                        cursors,
                        events,
                        meta,
                        node_index,
                        allocations,
                    )| {
                        let Some(vps) = tx_get::<VpsRecord>(all, "vps", vps_id.as_bytes())? else {
                            return Ok(());
                        };
                        if let Some(mut tenant) =
                            tx_get::<TenantRecord>(tenants, "tenants", vps.tenant.as_bytes())?
                        {
                            quota::release_vps(&mut tenant, &vps.resources);
                            tenants.insert(vps.tenant.as_bytes(), encode(&tenant))?;
                        }
                        if let Some(network) = &vps.network {
                            if let Some(mut pool) =
                                tx_get::<PoolRecord>(pools, "pools", network.pool.as_bytes())?
                            {
                                let released =
                                    crate::model::migration::release_addresses(&mut pool, vps_id);
                                pools.insert(network.pool.as_bytes(), encode(&pool))?;
                                tx_count_addresses(allocations, &pool, -i64::from(released))?;
                            }
                        }
                        tx_update_allocation(allocations, &vps.node, |allocation| {
                            allocation.account(&vps.resources, -1.0);
                        })?;
                        node_index.remove(node_vps_key(&vps.node, vps_id))?;
                        all.remove(vps_id.as_bytes())?;
                        names.remove(name_key(&vps.tenant, &vps.name))?;
                        // Its hours stay for billing; the base of its next delta is not needed.
                        cursors.remove(vps_id.as_bytes())?;
                        tx_append_event(
                            events,
                            meta,
                            EventRecord::of_vps(EventKind::Deleted, &vps),
                        )?;
                        Ok(())
                    },
                ),
        );
        if result.is_ok() {
            // Its snapshots went with its directory on the node.
            self.forget_snapshots(vps_id)?;
        }
        self.signalled(self.published(vps_id, result))
    }

    fn create_pool(&self, pool: &PoolRecord) -> Result<(), StoreError> {
        let cidr = ipam::new_pool_cidr(pool)?;
        let others: Vec<String> = self
            .list_pools()?
            .into_iter()
            .map(|pool| pool.name)
            .collect();
        flatten(
            (&self.pools, &self.node_allocations).transaction(|(pools, allocations)| {
                if pools.get(pool.name.as_bytes())?.is_some() {
                    return abort(StoreError::AlreadyExists {
                        kind: "pool",
                        name: pool.name.clone(),
                    });
                }
                // Every other pool is read in the transaction: a concurrent create
                // of an overlapping pool conflicts and is retried, then refused.
                for name in &others {
                    let Some(other) = tx_get::<PoolRecord>(pools, "pools", name.as_bytes())? else {
                        continue;
                    };
                    if let Err(error) = ipam::check_overlap(pool, &cidr, &other) {
                        return abort(StoreError::from(error));
                    }
                }
                // Every pool create reads and bumps the guard, so two concurrent
                // creates conflict and the retried one sees the other's pool.
                let generation = pools
                    .get(POOL_GUARD)?
                    .map(|bytes| String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0))
                    .unwrap_or(0);
                pools.insert(POOL_GUARD, (generation + 1).to_string().as_bytes())?;
                pools.insert(pool.name.as_bytes(), encode(pool))?;
                for node in pool.span() {
                    tx_update_allocation(allocations, &node, |allocation| {
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
            }),
        )
    }

    fn get_pool(&self, name: &str) -> Result<Option<PoolRecord>, StoreError> {
        Self::get(&self.pools, "pools", name.as_bytes())
    }

    fn list_pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        self.pools
            .iter()
            .filter(|entry| !matches!(entry, Ok((key, _)) if key.starts_with(b"\0")))
            .map(|entry| {
                let (key, value) = entry?;
                decode("pools", &key, &value)
            })
            .collect()
    }

    fn delete_pool(&self, name: &str) -> Result<(), StoreError> {
        flatten(
            (&self.pools, &self.node_allocations).transaction(|(pools, allocations)| {
                let pool = tx_need::<PoolRecord>(
                    pools,
                    "pools",
                    name.as_bytes(),
                    "pool",
                    name.to_owned(),
                )?;
                if let Err(error) = ipam::check_removable(&pool) {
                    return abort(StoreError::from(error));
                }
                pools.remove(name.as_bytes())?;
                for node in pool.span() {
                    tx_update_allocation(allocations, &node, |allocation| {
                        allocation.free_ipv4 =
                            allocation.free_ipv4.saturating_sub(ipam::free_ipv4(&pool));
                        allocation.pools.retain(|other| other != name);
                        allocation.shared_pools.retain(|other| other != name);
                    })?;
                }
                Ok(())
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::conformance::{tenant, vps};

    /// Opens the store at `dir` again; sled's background flusher may hold the file lock a
    /// moment after the previous handle was dropped.
    fn reopen(dir: &Path) -> SledStore {
        (0..50)
            .find_map(|_| match SledStore::open(dir) {
                Ok(store) => Some(store),
                Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    None
                }
            })
            .expect("reopen within 5 s")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_share_disk_flushes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::create(dir.path()).expect("create"));
        let mut roomy = tenant("acme", 1000);
        roomy.quota.vcpus = 1000.0;
        store.create_tenant(&roomy).expect("tenant");
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.create_vps(&vps("acme", &format!("v{i}")))?;
                    store.flush().await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("join").expect("create+flush");
        }
        let flushes = store.disk_flushes();
        assert!(
            (1..200).contains(&flushes),
            "{flushes} disk flushes for 200 commits"
        );
        drop(store);
        let reopened = reopen(dir.path());
        assert_eq!(reopened.list_vps(Some("acme")).expect("list").len(), 200);
    }

    fn pool(name: &str, node: &str, third_octet: u8) -> PoolRecord {
        PoolRecord {
            name: name.to_owned(),
            node: node.to_owned(),
            nodes: Vec::new(),
            cidr: format!("10.9.{third_octet}.0/24"),
            gateway: format!("10.9.{third_octet}.1"),
            range_start: format!("10.9.{third_octet}.10"),
            range_end: format!("10.9.{third_octet}.19"),
            ipv6_prefix: None,
            nat: true,
            allocated: Default::default(),
            allocated_ipv6: Default::default(),
            created_at: Utc::now(),
        }
    }

    fn allocation(store: &SledStore, node: &str) -> NodeAllocationRecord {
        store
            .node_allocations()
            .expect("allocations")
            .into_iter()
            .find(|(name, _)| name == node)
            .map(|(_, allocation)| allocation)
            .unwrap_or_default()
    }

    #[test]
    fn a_store_from_before_the_node_index_gets_it_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let expected = {
            let store = SledStore::create(dir.path()).expect("create");
            store.create_tenant(&tenant("acme", 10)).expect("tenant");
            store.create_pool(&pool("p1", "n1", 1)).expect("pool");
            for i in 0..3 {
                let mut one = vps("acme", &format!("v{i}"));
                one.resources.ipv4_count = 1;
                store.create_vps(&one).expect("vps");
            }
            let expected = store.node_allocations().expect("allocations");
            // What a store written by the previous version looks like: no
            // index trees and no marker.
            store.vps_nodes.clear().expect("clear");
            store.node_allocations.clear().expect("clear");
            store
                .db
                .open_tree(META)
                .expect("meta")
                .remove(NODE_INDEX_KEY)
                .expect("unmark");
            store.db.flush().expect("flush");
            expected
        };
        let reopened = reopen(dir.path());
        assert_eq!(reopened.node_allocations().expect("rebuilt"), expected);
        assert_eq!(reopened.list_vps_on_node("n1").expect("list").len(), 3);
        assert_eq!(allocation(&reopened, "n1").free_ipv4, 7);
    }

    #[test]
    fn schema_version_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(SledStore::create(dir.path()).expect("create"));
        SledStore::open(dir.path()).expect("same version opens");
        {
            let db = sled::open(dir.path()).expect("raw");
            db.open_tree(META)
                .expect("meta")
                .insert(SCHEMA_KEY, b"99")
                .expect("write");
            db.flush().expect("flush");
        }
        let err = SledStore::open(dir.path()).err().expect("must refuse");
        assert!(
            matches!(err, StoreError::SchemaMismatch { found: 99, .. }),
            "{err}"
        );
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            SledStore::open(empty.path()),
            Err(StoreError::NotInitialized { .. })
        ));
    }
}
