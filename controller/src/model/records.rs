//! What the controller persists: plain serde records, independent of the proto types.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The cgroup v2 default weight: a plan that sets none gets a normal CPU share.
pub const DEFAULT_CPU_WEIGHT: u32 = 100;

/// Resource entitlement of one VPS (or the template a plan gives).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub vcpus: f64,
    pub cpu_weight: u32,
    pub memory_bytes: u64,
    pub swap_bytes: u64,
    pub disk_bytes: u64,
    pub io_read_bytes_per_sec: u64,
    pub io_write_bytes_per_sec: u64,
    pub io_read_iops: u64,
    pub io_write_iops: u64,
    pub pids_max: u64,
    pub net_ingress_bits_per_sec: u64,
    pub net_egress_bits_per_sec: u64,
    pub ipv4_count: u32,
    pub ipv6_count: u32,
}

/// A named resource bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub name: String,
    pub resources: Resources,
    pub monthly_transfer_bytes: u64,
    /// What happens to a VPS once it used all of `monthly_transfer_bytes`.
    #[serde(default)]
    pub transfer_overage: TransferOverage,
    /// How many snapshots each VPS of the plan may keep.
    #[serde(default = "super::snapshots::default_max_snapshots")]
    pub max_snapshots: u32,
}

/// What a plan does to a VPS that used its whole monthly transfer allowance,
/// for the rest of that billing month (UTC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum TransferOverage {
    /// Raise the `transfer_100_percent` event only.
    #[default]
    Notify,
    /// Hold ingress and egress to at most this rate each.
    Throttle { bits_per_sec: u64 },
    /// Hold the VPS stopped.
    Suspend,
}

/// An overage action in force on one VPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLimit {
    /// `Throttle` or `Suspend`.
    pub overage: TransferOverage,
    /// Billing month (`YYYY-MM`, UTC) whose allowance was used up.
    pub month: String,
    pub since: DateTime<Utc>,
    /// The start of the next billing month: the limit ends by itself then.
    pub until: DateTime<Utc>,
}

/// Tenant limits, and (in `TenantRecord::used`) what is consumed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    pub max_vps: u32,
    pub vcpus: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub ipv4_count: u32,
}

impl Quota {
    /// The usage one VPS with `resources` adds.
    pub fn of_vps(resources: &Resources) -> Self {
        Self {
            max_vps: 1,
            vcpus: resources.vcpus,
            memory_bytes: resources.memory_bytes,
            disk_bytes: resources.disk_bytes,
            ipv4_count: resources.ipv4_count,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: String,
    pub quota: Quota,
    /// Sum over the tenant's VPSes, maintained in the same transaction as they change.
    pub used: Quota,
    pub suspended: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Tenant,
    Billing,
}

/// An API token; the secret itself is never stored, only its SHA-256 (the key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub token_id: String,
    pub role: Role,
    pub tenant: Option<String>,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

/// A node agent as last registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub address: String,
    pub capacity: Capacity,
    pub cordoned: bool,
    pub labels: BTreeMap<String, String>,
    pub last_heartbeat: DateTime<Utc>,
    pub agent_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub vcpus: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    Running,
    Stopped,
}

/// What the node agent last said exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    Running,
    Stopped,
    Error,
    Absent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedState {
    pub state: Observed,
    pub init_pid: u32,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// The desired state of a VPS plus what its node last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VpsRecord {
    pub vps_id: String,
    pub name: String,
    pub tenant: String,
    pub plan: String,
    pub template: String,
    pub resources: Resources,
    pub node: String,
    pub desired_power: Power,
    /// Set by delete; the record goes away once the node confirms removal.
    pub deleting: bool,
    pub ipv4: Vec<String>,
    /// The pool port the addresses came from; `None` for a VPS without addresses.
    #[serde(default)]
    pub network: Option<VpsNetwork>,
    pub rebuild_generation: u64,
    /// Bumped by every restart request; the agent restarts once per bump.
    #[serde(default)]
    pub restart_generation: u64,
    pub created_at: DateTime<Utc>,
    pub observed: Option<ObservedState>,
    /// Set when the VPS used up its plan's monthly transfer allowance and the
    /// plan throttles or suspends; ignored from `until` on, and cleared then.
    #[serde(default)]
    pub transfer_limit: Option<TransferLimit>,
    /// Digest of the last spec the node applied (`convert::spec_digest`): the VPS has
    /// converged when it equals the digest of its current spec.
    #[serde(default)]
    pub applied_spec: Option<String>,
    /// The last mutation a client tagged with a request id (`crate::requests`), written with
    /// the change itself so that a retry is recognized.
    #[serde(default)]
    pub last_request: Option<TaggedRequest>,
}

impl VpsRecord {
    /// The overage action holding the VPS at `now`, if any.
    pub fn transfer_limit_at(&self, now: DateTime<Utc>) -> Option<TransferOverage> {
        self.transfer_limit
            .as_ref()
            .filter(|limit| now < limit.until)
            .map(|limit| limit.overage)
    }
}

/// The VPS mutations a client request id can tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOp {
    Create,
    Start,
    Stop,
    Restart,
    Rebuild,
    Resize,
    Delete,
}

/// A client's tagged mutation of a VPS: its request id, what it did, and a digest of its
/// parameters (the same id with other parameters is refused, not answered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedRequest {
    pub id: String,
    pub op: RequestOp,
    pub fingerprint: String,
}

/// One mutation attempt: who, what, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub method: String,
    pub target: String,
    /// "ok" or the gRPC code name.
    pub result: String,
}

/// How a VPS is attached to its node's network: filled in by the store when it
/// allocates the VPS's addresses, in the same transaction as the create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpsNetwork {
    /// The pool the addresses belong to.
    pub pool: String,
    /// The pool's network, e.g. `10.77.0.0/24`.
    pub cidr: String,
    /// The pool's gateway (the node bridge's address).
    pub gateway: String,
    /// Whether the pool is private and masqueraded.
    pub nat: bool,
    /// eth0's MAC, derived from the VPS id.
    pub mac: String,
    /// IPv6 addresses from the pool's prefix (`resources.ipv6_count` of them).
    #[serde(default)]
    pub ipv6: Vec<String>,
    /// The pool's IPv6 prefix, e.g. `fd00:77::/64`, when it has one.
    #[serde(default)]
    pub ipv6_prefix: Option<String>,
}

/// An IPv4 address pool of one or more nodes, with what is allocated from it. A pool that
/// spans several nodes (shared) has one allocation set: an address is given once across
/// them, and its VPS keeps it when it moves between them (`docs/ARCHITECTURE.md`, "Address
/// mobility").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub name: String,
    /// The pool's first node (the only one of a pool created before shared pools).
    pub node: String,
    /// Every node the pool spans, `node` first; empty in records written before shared
    /// pools existed, which span `node` only. Read it through [`PoolRecord::span`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Network in CIDR notation, e.g. `10.77.0.0/24`.
    pub cidr: String,
    pub gateway: String,
    /// First and last allocatable address, inclusive.
    pub range_start: String,
    pub range_end: String,
    /// Optional IPv6 prefix; its `::1` is the gateway, VPSes get addresses from `::2` on.
    pub ipv6_prefix: Option<String>,
    /// Private pool: masquerade egress through the node's uplink.
    pub nat: bool,
    /// Allocated address -> VPS id; changed only inside VPS create/remove transactions.
    #[serde(default)]
    pub allocated: BTreeMap<String, String>,
    /// Allocated IPv6 address -> VPS id.
    #[serde(default)]
    pub allocated_ipv6: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
}

impl PoolRecord {
    /// Every node the pool spans, its first node first.
    pub fn span(&self) -> Vec<String> {
        if self.nodes.is_empty() {
            vec![self.node.clone()]
        } else {
            self.nodes.clone()
        }
    }

    /// Whether the pool is attached to `node`.
    pub fn spans(&self, node: &str) -> bool {
        self.node == node || self.nodes.iter().any(|other| other == node)
    }

    /// Whether the pool spans more than one node (its addresses move between them).
    pub fn is_shared(&self) -> bool {
        self.nodes.len() > 1
    }
}

/// A lifecycle event for billing systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Resized,
    Rebuilt,
    Deleted,
    Suspended,
    Unsuspended,
    /// A VPS used 80% of its plan's monthly transfer allowance.
    Transfer80Percent,
    /// A VPS used all of its plan's monthly transfer allowance.
    Transfer100Percent,
    /// The plan's overage action (throttle or suspend) now holds the VPS.
    TransferLimited,
    /// The overage action was lifted: the month ended or billing lifted it.
    TransferLimitEnded,
    /// A snapshot of the VPS's disk was taken (`detail`: its name).
    SnapshotCreated,
    /// The VPS's disk was restored from a snapshot (`detail`: its name).
    SnapshotRestored,
    /// A snapshot was deleted (`detail`: its name).
    SnapshotDeleted,
    /// A backup of the VPS was taken (`detail`: the backup id).
    BackupCreated,
    /// A backup was restored into the VPS (`detail`: the backup id).
    BackupRestored,
    /// A backup of the VPS was deleted (`detail`: the backup id).
    BackupDeleted,
    /// The VPS moved to another node (`detail`: from, to, addresses).
    VpsMigrated,
    /// A migration of the VPS was rolled back (`detail`: why).
    MigrationFailed,
    /// The VPS moved to another node running, with CRIU (`detail` as for `VpsMigrated`).
    VpsLiveMigrated,
}

/// A VPS backup: an archive in the backup store (`node-agent/src/runtime/storage/backup.rs`)
/// and what it was taken of. Keyed by `tenant/id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub id: String,
    pub tenant: String,
    /// The VPS's name and id when it was taken (the VPS may be gone since).
    pub vps: String,
    pub vps_id: String,
    /// The node that took it.
    pub node: String,
    pub plan: String,
    pub template: String,
    pub hostname: String,
    pub resources: Resources,
    /// Length and SHA-256 (hex) of the compressed archive.
    pub size_bytes: u64,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    /// Where the archive is (`local:<path>`).
    pub location: String,
}

/// One entry of the durable event log; `cursor` is strictly increasing in
/// commit order, so a client resuming after cursor N misses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub cursor: u64,
    pub kind: EventKind,
    pub tenant: String,
    pub vps: String,
    pub vps_id: String,
    pub plan: String,
    pub at: DateTime<Utc>,
    /// Human-readable specifics, e.g. the rate a VPS is throttled to.
    #[serde(default)]
    pub detail: String,
}

impl EventRecord {
    /// An event about `vps` (cursor assigned when appended).
    pub fn of_vps(kind: EventKind, vps: &VpsRecord) -> Self {
        Self {
            cursor: 0,
            kind,
            tenant: vps.tenant.clone(),
            vps: vps.name.clone(),
            vps_id: vps.vps_id.clone(),
            plan: vps.plan.clone(),
            at: Utc::now(),
            detail: String::new(),
        }
    }

    /// The same event with `detail` set.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// An event about a whole tenant.
    pub fn of_tenant(kind: EventKind, tenant: &str) -> Self {
        Self {
            cursor: 0,
            kind,
            tenant: tenant.to_owned(),
            vps: String::new(),
            vps_id: String::new(),
            plan: String::new(),
            at: Utc::now(),
            detail: String::new(),
        }
    }
}

/// Cumulative usage counters of one VPS as its agent last reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounters {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub io_read_ops: u64,
    pub io_write_ops: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub disk_used_bytes: u64,
}

/// The last usage sample accepted for a VPS: the base the next one's deltas
/// are taken from (written in the same transaction as the hour it was added to).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCursorRecord {
    pub incarnation: String,
    pub sequence: u64,
    pub sampled_at_unix_ms: i64,
    pub counters: UsageCounters,
    /// Billing month (`YYYY-MM`, UTC) that `month_transfer_bytes` counts.
    #[serde(default)]
    pub month: String,
    /// Network bytes (rx + tx) of the VPS in `month`.
    #[serde(default)]
    pub month_transfer_bytes: u64,
    /// Highest allowance threshold already announced in `month` (0, 80 or 100).
    #[serde(default)]
    pub month_threshold_percent: u8,
}

/// Usage of one VPS during one hour (`hour_start`, Unix seconds, UTC).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageHourRecord {
    pub tenant: String,
    pub vps: String,
    pub vps_id: String,
    /// The plan the VPS held when its latest sample of the hour arrived.
    pub plan: String,
    pub hour_start: i64,
    pub cpu_usage_ns: u64,
    pub memory_byte_seconds: f64,
    pub memory_peak_bytes: u64,
    pub disk_byte_seconds: f64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub io_read_ops: u64,
    pub io_write_ops: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    /// Samples that contributed.
    pub samples: u64,
}

/// What is placed on one node, kept in the same transactions as the VPSes and
/// pools it sums, so placement reads one record per node instead of every VPS
/// and pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeAllocationRecord {
    /// Sum of the resources of the VPSes placed on the node.
    pub vcpus: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub vps_count: u32,
    /// Unallocated IPv4 addresses over all of the node's pools.
    pub free_ipv4: u32,
    /// Names of the node's pools, sorted.
    pub pools: Vec<String>,
    /// Names of those pools that span other nodes too (shared), sorted: their free
    /// addresses count in `free_ipv4` of every node they span.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_pools: Vec<String>,
}

impl NodeAllocationRecord {
    /// Adds (`sign` = 1.0) or removes (`sign` = -1.0) one VPS's resources.
    pub fn account(&mut self, resources: &Resources, sign: f64) {
        // Fractional vCPUs are summed in millicores so adding and removing the
        // same VPSes returns exactly to where it started.
        let millis = |vcpus: f64| (vcpus * 1000.0).round();
        self.vcpus = (millis(self.vcpus) + sign * millis(resources.vcpus)).max(0.0) / 1000.0;
        if sign >= 0.0 {
            self.memory_bytes = self.memory_bytes.saturating_add(resources.memory_bytes);
            self.disk_bytes = self.disk_bytes.saturating_add(resources.disk_bytes);
            self.vps_count = self.vps_count.saturating_add(1);
        } else {
            self.memory_bytes = self.memory_bytes.saturating_sub(resources.memory_bytes);
            self.disk_bytes = self.disk_bytes.saturating_sub(resources.disk_bytes);
            self.vps_count = self.vps_count.saturating_sub(1);
        }
    }
}
