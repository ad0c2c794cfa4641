//! The controller's durable state behind the `Store` trait; sled is the embedded default,
//! etcd the shared one (`store = "etcd"` in controller.toml).

#[cfg(test)]
pub(crate) mod conformance;
mod etcd_cluster;
mod etcd_store;
pub mod leader;
pub mod migrate;
mod sled_store;
mod watch;

use std::future::Future;
use std::pin::Pin;

use crate::model::ipam::IpamError;
use crate::model::migration::{MigrationError, MigrationPhase, MigrationRecord};
use crate::model::quota::QuotaError;
use crate::model::snapshots::{SnapshotQuotaError, SnapshotRecord, VpsSnapshots};
use crate::model::{
    AuditRecord, BackupRecord, EventKind, EventRecord, NodeAllocationRecord, NodeRecord,
    PlanRecord, PoolRecord, Resources, TenantRecord, TokenRecord, UsageCursorRecord,
    UsageHourRecord, VpsRecord,
};
use chrono::{DateTime, Utc};
pub use etcd_store::EtcdStore;
pub use leader::{fenced, Candidate, Leadership, Term};
pub use sled_store::{DumpEntry, SledStore};
pub use watch::{
    EventSignal, StoreChange, StoreChanges, VpsChange, VpsChanges, VpsWatchers, WatchRecvError,
};

/// Version of the on-disk layout; a store written by another version is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("store at {path} has schema version {found}, this controller needs {expected}; run the matching controller version or migrate")]
    SchemaMismatch {
        path: String,
        found: u32,
        expected: u32,
    },
    #[error("store at {path} is not initialized; run `paddock-controller init` first")]
    NotInitialized { path: String },
    #[error("store I/O: {0}")]
    Sled(#[from] sled::Error),
    #[error("connecting to {location}: {source}")]
    EtcdConnect {
        location: String,
        source: etcd_client::Error,
    },
    #[error("starting the etcd client's runtime: {source}")]
    EtcdRuntime { source: std::io::Error },
    #[error("etcd request: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the etcd client's runtime is gone")]
    EtcdGone,
    #[error("migrating the store: {0}")]
    Migrate(String),
    #[error("corrupt record {key:?} in {tree}: {source}")]
    Corrupt {
        tree: &'static str,
        key: String,
        source: serde_json::Error,
    },
    /// A write handed to a batch (`crate::batch`) whose store call ended without its answer.
    #[error("{what} did not finish: the store call of its batch stopped; try again")]
    BatchLost { what: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// The tenant's quota has no room (checked in the writing transaction).
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// No address to give, or a pool that may not be created or removed.
    /// Boxed: its overlap variants name two pools and would make every `StoreError` large.
    #[error(transparent)]
    Ipam(Box<IpamError>),
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The VPS's plan allows no more snapshots (checked in the recording transaction).
    #[error(transparent)]
    SnapshotQuota(#[from] SnapshotQuotaError),
    /// A migration may not be planned or go on (checked in its transactions).
    #[error(transparent)]
    Migration(#[from] MigrationError),
}

impl From<IpamError> for StoreError {
    fn from(error: IpamError) -> Self {
        Self::Ipam(Box::new(error))
    }
}

/// A change refused because of what else is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("VPS {name:?} is being deleted")]
    VpsDeleting { name: String },
    #[error("plan {plan:?} is used by {vps_count} VPS(es); resize or delete them first")]
    PlanInUse { plan: String, vps_count: usize },
    #[error("tenant {tenant:?} still has {vps_count} VPS(es); delete them first")]
    TenantHasVps { tenant: String, vps_count: u32 },
    /// A concurrent transaction kept conflicting (both backends retry these themselves).
    #[error("transaction conflict")]
    Transaction,
    /// A write fenced by a leader's term after another controller took over (see `leader`).
    #[error("this controller is no longer the leader (term {term} ended); another one took over")]
    Deposed { term: i64 },
}

/// Where one VPS's usage of one hour is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageHourKey {
    pub tenant: String,
    pub hour_start: i64,
    pub vps_id: String,
}

/// One usage sample for [`Store::record_usages`], as [`Store::record_usage`] takes it.
pub struct UsageItem<'a> {
    pub vps_id: &'a str,
    pub hour_key: &'a UsageHourKey,
    pub apply: &'a (dyn Fn(UsageState) -> Option<UsageUpdate> + Sync),
}

/// What one accepted usage sample writes.
#[derive(Debug, Clone)]
pub struct UsageUpdate {
    pub cursor: UsageCursorRecord,
    pub hour: UsageHourRecord,
    pub events: Vec<EventRecord>,
    /// The VPS record with a changed transfer limit, when the sample changed it.
    pub vps: Option<VpsRecord>,
}

/// What a usage sample is applied to, read in its transaction.
#[derive(Debug, Clone)]
pub struct UsageState {
    /// The VPS's last accepted sample.
    pub cursor: Option<UsageCursorRecord>,
    /// The record of the hour the sample falls in.
    pub hour: Option<UsageHourRecord>,
    /// The VPS itself (`None` once it is removed).
    pub vps: Option<VpsRecord>,
}

/// A boxed future, so the trait stays object-safe.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A change to one VPS record, which may name the lifecycle event it makes.
pub type VpsUpdate<'a> =
    dyn Fn(&mut VpsRecord) -> Result<Option<EventRecord>, StoreError> + Sync + 'a;

/// Everything the controller persists. Mutations apply atomically in memory;
/// callers `flush` before acknowledging them, which the implementation may
/// batch with concurrent flushes (group commit).
pub trait Store: Send + Sync + 'static {
    /// Makes every mutation so far durable.
    fn flush(&self) -> StoreFuture<'_, ()>;

    /// Where committed changes of single VPSes are published (`WatchVps`): every method
    /// that changes a VPS record, or a tenant (its VPSes' view), publishes after its
    /// transaction committed.
    fn vps_watchers(&self) -> &VpsWatchers;
    /// Signalled after every committed transaction that may have appended events
    /// (`WatchEvents` followers wait on it).
    fn event_signal(&self) -> &EventSignal;
    /// Changes to VPSes, nodes and pools committed by any controller sharing the store, for
    /// the leader's reconcile and the placement cache (sled, with one controller, sends none).
    fn store_changes(&self) -> &StoreChanges;
    /// Starts campaigning for leadership among the controllers sharing this store (see
    /// `leader`); the embedded store's only controller leads at once, for good.
    fn campaign(&self, candidate: Candidate) -> Result<Leadership, StoreError>;

    fn list_plans(&self) -> Result<Vec<PlanRecord>, StoreError>;
    fn get_plan(&self, name: &str) -> Result<Option<PlanRecord>, StoreError>;
    /// Inserts a plan; `AlreadyExists` if the name is taken.
    fn create_plan(&self, plan: &PlanRecord) -> Result<(), StoreError>;
    /// Removes a plan unless a VPS uses it.
    fn delete_plan(&self, name: &str) -> Result<(), StoreError>;

    fn create_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError>;
    fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>, StoreError>;
    fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;
    /// Read-modify-write of one tenant in a transaction.
    fn update_tenant(
        &self,
        name: &str,
        change: &(dyn Fn(&mut TenantRecord) -> Result<(), StoreError> + Sync),
    ) -> Result<TenantRecord, StoreError>;
    /// Removes a tenant that has no VPSes, with its tokens.
    fn delete_tenant(&self, name: &str) -> Result<(), StoreError>;

    fn put_token(&self, hash: &str, token: &TokenRecord) -> Result<(), StoreError>;
    fn get_token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Marks the token with this public id revoked.
    fn revoke_token(&self, token_id: &str) -> Result<(), StoreError>;

    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    fn get_node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError>;
    fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Removes a node and records that every certificate issued to its name
    /// with a notBefore up to `revoked_at` is revoked, in one transaction.
    fn remove_node(&self, name: &str, revoked_at: DateTime<Utc>) -> Result<(), StoreError>;
    /// When the certificates of node `name` were last revoked, if ever.
    fn node_revoked_at(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Inserts a VPS, checking name uniqueness and the tenant's quota,
    /// charging the tenant's usage and allocating `resources.ipv4_count`
    /// addresses from its node's pools (written to the stored record's `ipv4`
    /// and `network`) in one transaction. Returns the record as stored.
    fn create_vps(&self, vps: &VpsRecord) -> Result<VpsRecord, StoreError>;
    /// Whether writes made together cost less as one call ([`create_vpses`](Self::create_vpses),
    /// [`update_vpses_emitting`](Self::update_vpses_emitting),
    /// [`append_audits`](Self::append_audits)) than one by one: the
    /// controller then gathers concurrent writes into batches (`crate::batch`). Both backends
    /// do (sled: one log write pair per transaction; etcd: one round trip and fsync per
    /// transaction, and transactions appending events commit one after the other).
    fn batches_writes(&self) -> bool {
        false
    }
    /// [`create_vps`](Self::create_vps) for several VPSes, each with its own result as if
    /// created one after the other in this order. A store may commit them together (sled:
    /// one transaction, etcd: as few as its transaction size allows; both create one by one
    /// if any of them fails); this default creates them one by one.
    fn create_vpses(&self, vpses: &[VpsRecord]) -> Vec<Result<VpsRecord, StoreError>> {
        vpses.iter().map(|vps| self.create_vps(vps)).collect()
    }
    fn get_vps(&self, vps_id: &str) -> Result<Option<VpsRecord>, StoreError>;
    /// VPSes by id, in the order of `vps_ids` (`None` for one that does not exist), in as
    /// few store calls as this store allows. By default one call each.
    fn get_vpses(&self, vps_ids: &[&str]) -> Result<Vec<Option<VpsRecord>>, StoreError> {
        vps_ids.iter().map(|vps_id| self.get_vps(vps_id)).collect()
    }
    fn find_vps(&self, tenant: &str, name: &str) -> Result<Option<VpsRecord>, StoreError>;
    /// All VPSes, or one tenant's.
    fn list_vps(&self, tenant: Option<&str>) -> Result<Vec<VpsRecord>, StoreError>;
    /// The VPSes placed on one node, through a per-node index (no scan of every VPS).
    fn list_vps_on_node(&self, node: &str) -> Result<Vec<VpsRecord>, StoreError>;
    /// What is placed on each node that has VPSes or pools, by node name;
    /// kept in the transactions that change VPSes and pools.
    fn node_allocations(&self) -> Result<Vec<(String, NodeAllocationRecord)>, StoreError>;
    /// Read-modify-write of one VPS in a transaction (not for resource changes).
    fn update_vps(
        &self,
        vps_id: &str,
        change: &(dyn Fn(&mut VpsRecord) -> Result<(), StoreError> + Sync),
    ) -> Result<VpsRecord, StoreError>;
    /// Removes a VPS and releases its usage from the tenant and its addresses
    /// back to their pool, in one transaction (its last usage sample goes
    /// too; its hour records stay).
    fn remove_vps(&self, vps_id: &str) -> Result<(), StoreError>;

    /// Inserts a pool; `Conflict` if its network overlaps another pool's
    /// (checked in the same transaction), `AlreadyExists` if the name is taken.
    fn create_pool(&self, pool: &PoolRecord) -> Result<(), StoreError>;
    fn get_pool(&self, name: &str) -> Result<Option<PoolRecord>, StoreError>;
    fn list_pools(&self) -> Result<Vec<PoolRecord>, StoreError>;
    /// Removes a pool that has no allocated address.
    fn delete_pool(&self, name: &str) -> Result<(), StoreError>;

    /// Like `update_vps`, but `change` may return a lifecycle event, appended
    /// to the event log in the same transaction.
    fn update_vps_emitting(
        &self,
        vps_id: &str,
        change: &VpsUpdate<'_>,
    ) -> Result<VpsRecord, StoreError>;
    /// [`update_vps_emitting`](Self::update_vps_emitting) for several VPSes, each change with
    /// its own result: a missing VPS or a refused change fails only itself. A store may
    /// commit them together (sled: one transaction, and sled writes its log twice per
    /// transaction whatever its size); this default commits them one by one.
    fn update_vpses_emitting(
        &self,
        changes: &[(&str, &VpsUpdate<'_>)],
    ) -> Vec<Result<VpsRecord, StoreError>> {
        changes
            .iter()
            .map(|(vps_id, change)| self.update_vps_emitting(vps_id, change))
            .collect()
    }
    /// Like `update_tenant`, appending `event` (if any) in the same transaction.
    fn update_tenant_emitting(
        &self,
        name: &str,
        change: &(dyn Fn(&mut TenantRecord) -> Result<Option<EventKind>, StoreError> + Sync),
    ) -> Result<TenantRecord, StoreError>;
    /// Moves a VPS to new resources (and plan) in one transaction: releases
    /// its old usage, checks the tenant's quota for the new one, charges it,
    /// and appends a `resized` event.
    fn resize_vps(
        &self,
        vps_id: &str,
        plan: &str,
        resources: &Resources,
    ) -> Result<VpsRecord, StoreError>;
    /// Events with a cursor above `after`, oldest first.
    fn list_events(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError>;

    /// Applies one usage sample of `vps_id` in one transaction: `apply` gets
    /// the VPS's last accepted sample, the hour record at `hour_key` and the
    /// VPS, and returns the first two updated with any events to append (and
    /// the VPS if it changed), or `None` to ignore the sample (a repeat).
    /// Returns what was written, if anything.
    fn record_usage(
        &self,
        vps_id: &str,
        hour_key: &UsageHourKey,
        apply: &(dyn Fn(UsageState) -> Option<UsageUpdate> + Sync),
    ) -> Result<Option<UsageUpdate>, StoreError>;
    /// Several usage samples (one heartbeat's), each recorded as [`Store::record_usage`]
    /// would and in order, a later one seeing what an earlier one wrote (a VPS may have a
    /// run's closing sample and the next run's first in one heartbeat), in as few store calls
    /// as this store allows; the answers in the order of `items`. By default one call each.
    fn record_usages(
        &self,
        items: &[UsageItem<'_>],
    ) -> Vec<Result<Option<UsageUpdate>, StoreError>> {
        items
            .iter()
            .map(|item| self.record_usage(item.vps_id, item.hour_key, item.apply))
            .collect()
    }
    /// The last usage sample accepted for a VPS (with its month's transfer).
    fn get_usage_cursor(&self, vps_id: &str) -> Result<Option<UsageCursorRecord>, StoreError>;
    /// Hour records with `from <= hour_start < to` (Unix seconds), of one
    /// tenant or all, ordered by tenant, hour, then VPS id.
    fn list_usage_hours(
        &self,
        tenant: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageHourRecord>, StoreError>;

    /// Appends an audit entry, assigning its sequence number.
    /// Writes a backup record (new or replaced), appending `event` in the same transaction.
    fn put_backup(
        &self,
        backup: &BackupRecord,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError>;
    fn get_backup(&self, tenant: &str, backup_id: &str)
        -> Result<Option<BackupRecord>, StoreError>;
    /// A tenant's backups (every tenant's with `None`), oldest first.
    fn list_backups(&self, tenant: Option<&str>) -> Result<Vec<BackupRecord>, StoreError>;
    /// Removes a backup record (absent is fine), appending `event` in the same transaction.
    fn delete_backup(
        &self,
        tenant: &str,
        backup_id: &str,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError>;

    fn append_audit(&self, entry: &AuditRecord) -> Result<u64, StoreError>;
    /// [`append_audit`](Self::append_audit) for several entries, sequenced in this order. A
    /// store may append them together (etcd: as few transactions as its size allows); this
    /// default appends them one by one.
    fn append_audits(&self, entries: &[AuditRecord]) -> Vec<Result<u64, StoreError>> {
        entries
            .iter()
            .map(|entry| self.append_audit(entry))
            .collect()
    }
    /// Audit entries with a sequence number above `after_seq`, oldest first.
    fn list_audit(&self, after_seq: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;

    // Snapshots (`model::snapshots`): one record per VPS holding all of its snapshots.
    /// The VPS's snapshots; none for a VPS without any (or gone).
    fn list_snapshots(&self, vps_id: &str) -> Result<VpsSnapshots, StoreError>;
    /// Records `snapshot` for the VPS in one transaction that checks the VPS exists and is
    /// not being deleted, the name is free (`AlreadyExists`) and the VPS's plan allows one
    /// more (`snapshots::admit`, its `max_snapshots`; the default for a plan gone).
    fn reserve_snapshot(&self, vps_id: &str, snapshot: &SnapshotRecord) -> Result<(), StoreError>;
    /// Replaces the existing record of `snapshot.name` (`NotFound` if none), appending
    /// `event` in the same transaction.
    fn put_snapshot(
        &self,
        vps_id: &str,
        snapshot: &SnapshotRecord,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError>;
    /// Removes snapshot `name` of the VPS (absent is not an error), appending `event` in
    /// the same transaction.
    fn remove_snapshot(
        &self,
        vps_id: &str,
        name: &str,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError>;

    // Migrations (`model::migration`): at most one per VPS, keyed by its id.
    /// Records `migration` (phase `planned`) in one transaction that checks the VPS is on the
    /// source, not being deleted and not already migrating (`check_plan`), reserves its new
    /// addresses in the destination pool and its resources in the destination's summary, and
    /// holds the VPS stopped unless it moves live (`migration::hold`; its desired power is
    /// `migration.was_running`'s to restore).
    /// Returns the VPS as held.
    fn plan_migration(&self, migration: &MigrationRecord) -> Result<VpsRecord, StoreError>;
    fn get_migration(&self, vps_id: &str) -> Result<Option<MigrationRecord>, StoreError>;
    fn list_migrations(&self) -> Result<Vec<MigrationRecord>, StoreError>;
    /// Moves an unswitched migration to `phase` with `note` (`RollingBack` with its failure,
    /// `Checkpointed` with the live report; `migration::advance`); a switched one is never
    /// moved back (`Conflict`-free: it is returned unchanged).
    fn set_migration_phase(
        &self,
        vps_id: &str,
        phase: MigrationPhase,
        note: crate::model::migration::PhaseNote,
    ) -> Result<MigrationRecord, StoreError>;
    /// The switch, one transaction: the VPS names the destination with its new addresses and
    /// its old desired power (`migration::switch_vps`), its source addresses and the source's
    /// share go back, the node index moves, the usage cursor is reset
    /// (`migration::reset_cursor`), the migration is `Switched`, and `vps_migrated` appended.
    /// Idempotent once switched.
    fn switch_migration(&self, vps_id: &str) -> Result<VpsRecord, StoreError>;
    /// Ends a migration (absent is fine): a switched one is just removed; an unswitched one
    /// also gives the destination's reservation back and the VPS its desired power, and
    /// appends `event` (the `migration_failed`) in the same transaction.
    fn end_migration(&self, vps_id: &str, event: Option<EventRecord>) -> Result<(), StoreError>;
}

/// What a backend does after a transaction commits, written once for every backend.
pub(crate) trait AfterCommit: Store {
    /// Publishes `vps_id` to its watchers; call after a committed transaction changed it.
    fn published<T>(&self, vps_id: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_ok() {
            self.vps_watchers().publish(vps_id, |id| self.get_vps(id));
        }
        result
    }

    /// Publishes every watched VPS; call after a committed change to a tenant.
    fn published_all<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_ok() {
            self.vps_watchers().publish_all(|id| self.get_vps(id));
        }
        result
    }

    /// Publishes each of `vpses` and wakes `WatchEvents` followers, unless there are none;
    /// call after a committed transaction wrote them all (a batch of creates or changes).
    fn published_batch(&self, vpses: &[VpsRecord]) {
        for vps in vpses {
            self.vps_watchers()
                .publish(&vps.vps_id, |id| self.get_vps(id));
        }
        if !vpses.is_empty() {
            self.event_signal().committed();
        }
    }

    /// Wakes `WatchEvents` followers; call after a committed transaction that may have
    /// appended events (not after the ones that never do, such as a heartbeat's update).
    fn signalled<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_ok() {
            self.event_signal().committed();
        }
        result
    }
    /// After a committed usage sample: it changes the VPS's transfer figures (and maybe its
    /// limit), so its watchers hear of it; followers wake only if it appended events.
    fn usage_recorded(
        &self,
        vps_id: &str,
        result: Result<Option<UsageUpdate>, StoreError>,
    ) -> Result<Option<UsageUpdate>, StoreError> {
        if let Ok(Some(update)) = &result {
            self.vps_watchers().publish(vps_id, |id| self.get_vps(id));
            if !update.events.is_empty() {
                self.event_signal().committed();
            }
        }
        result
    }
}

impl<S: Store + ?Sized> AfterCommit for S {}
