//! Migration of a VPS between nodes, cold or live: the durable record of one move, its
//! phases, and the pure rules the store applies in the transactions that plan, switch and end
//! it (address choice on the destination, reservations, the usage cursor's reset).
//!
//! The VPS record's `node` changes only in the switch; until then the VPS belongs to its
//! source node and a copy on the destination is a leftover to delete if the move ends early.

use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ipam::{self, allocate_ipv6};
use super::records::{
    NodeAllocationRecord, PoolRecord, UsageCounters, UsageCursorRecord, VpsNetwork, VpsRecord,
};

/// Where a migration stands. Each phase is written once its work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// Destination capacity and addresses reserved; the VPS is held stopped.
    Planned,
    /// The source reported the VPS stopped (its metering tail is in).
    SourceStopped,
    /// The destination holds a verified copy of the disk (stopped).
    Copied,
    /// Live: the source dumped the VPS (its processes are gone there, its images and disk
    /// kept for a rollback); the transfer to the destination runs.
    Checkpointed,
    /// Live: the destination runs the restored VPS; only the switch is left (a crash from
    /// here on finishes the move instead of rolling it back).
    Restored,
    /// The VPS record names the destination; the source copy is still to delete.
    Switched,
    /// Ending early: the destination's copy and reservation are to go, the VPS stays.
    RollingBack,
}

impl MigrationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::SourceStopped => "source_stopped",
            Self::Copied => "copied",
            Self::Checkpointed => "checkpointed",
            Self::Restored => "restored",
            Self::Switched => "switched",
            Self::RollingBack => "rolling_back",
        }
    }
}

/// One migration in progress; keyed by VPS id (at most one per VPS), removed when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationRecord {
    pub id: String,
    pub vps_id: String,
    pub tenant: String,
    pub vps: String,
    pub source: String,
    pub destination: String,
    pub phase: MigrationPhase,
    /// The VPS's desired power before the move (it is held stopped meanwhile).
    pub was_running: bool,
    pub old_ipv4: Vec<String>,
    pub old_network: Option<VpsNetwork>,
    /// What the VPS holds on the destination (reserved there when planned).
    pub new_ipv4: Vec<String>,
    pub new_network: Option<VpsNetwork>,
    pub addresses_kept: bool,
    pub started_at: DateTime<Utc>,
    /// Why it is rolling back.
    #[serde(default)]
    pub failure: Option<String>,
    /// Moved running (CRIU): the VPS is not held stopped, the transfer is a checkpoint piped
    /// into a restore.
    #[serde(default)]
    pub live: bool,
    /// What the source's checkpoint did (live, from `Checkpointed` on).
    #[serde(default)]
    pub live_report: Option<LiveReport>,
}

/// What the checkpoint and restore of a live move did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveReport {
    /// Pages each memory pre-dump round wrote while the VPS ran.
    pub round_pages_written: Vec<u64>,
    pub final_pages_written: u64,
    /// How long the final dump kept the VPS frozen.
    pub frozen_us: u64,
    /// Bytes of CRIU's images, and of the whole transfer (images and disk).
    pub image_bytes: u64,
    pub transfer_bytes: u64,
    pub checkpoint_ms: u64,
    /// From the end of the dump until the destination ran the VPS.
    pub restore_ms: u64,
}

/// What a phase change records beside the phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseNote {
    Nothing,
    /// Why the move rolls back.
    Failure(String),
    /// What the live transfer did.
    Report(LiveReport),
}

/// Moves an unswitched `record` to `phase` with `note`; false (nothing to write) when it is
/// switched (only cleaning is left) or in `phase` already.
pub fn advance(record: &mut MigrationRecord, phase: MigrationPhase, note: &PhaseNote) -> bool {
    if record.phase == MigrationPhase::Switched || record.phase == phase {
        return false;
    }
    record.phase = phase;
    match note {
        PhaseNote::Nothing => {}
        PhaseNote::Failure(reason) => record.failure = Some(reason.clone()),
        PhaseNote::Report(report) => record.live_report = Some(report.clone()),
    }
    true
}

/// The VPS as the planning transaction leaves it: a cold move holds it stopped (its desired
/// power is the record's `was_running`); a live one leaves it running.
pub fn hold(vps: &mut VpsRecord, migration: &MigrationRecord) {
    if !migration.live {
        vps.desired_power = super::Power::Stopped;
    }
}

/// The event the switch appends: `vps_live_migrated` for a live move, else `vps_migrated`.
pub fn switched_event(migration: &MigrationRecord) -> super::EventKind {
    if migration.live {
        super::EventKind::VpsLiveMigrated
    } else {
        super::EventKind::VpsMigrated
    }
}

/// Why a migration may not be planned or go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    #[error("VPS {vps} is already on node {node}")]
    SameNode { vps: String, node: String },
    #[error("VPS {vps} is being migrated ({phase}); wait until it ends")]
    InProgress { vps: String, phase: &'static str },
    #[error("VPS {vps} is no longer on node {node}; it moved meanwhile")]
    Moved { vps: String, node: String },
    #[error(
        "VPS {vps} cannot keep its address on node {node}: it would change from {old} to {new}; \
         pass --allow-new-address to accept"
    )]
    AddressChange {
        vps: String,
        node: String,
        old: String,
        new: String,
    },
    #[error(
        "VPS {vps} has snapshot(s) {}, kept on its node; snapshots do not move: delete them \
         first (paddock snapshot delete)",
        names.join(", ")
    )]
    HasSnapshots { vps: String, names: Vec<String> },
    #[error(
        "VPS {vps} cannot move live to node {node}: no pool there holds its address(es) \
         {addresses}, and its TCP connections would break with new ones; pass --allow-cold \
         --allow-new-address for a cold move to new addresses"
    )]
    LiveAddressChange {
        vps: String,
        node: String,
        addresses: String,
    },
    #[error(
        "VPS {vps} cannot be moved live: CRIU on node {node} cannot checkpoint it: {reason}; \
         it keeps running there (pass --allow-cold for a cold move)"
    )]
    CheckpointRefused {
        vps: String,
        node: String,
        reason: String,
    },
    #[error("address {address} on node {node} was taken meanwhile; try again")]
    AddressTaken { address: String, node: String },
    #[error(
        "migrating VPS {vps} to node {node} failed and was rolled back (it stays on \
         {source_node}): {reason}"
    )]
    Failed {
        vps: String,
        node: String,
        source_node: String,
        reason: String,
    },
}

/// The addresses a VPS gets on a destination node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPlan {
    pub ipv4: Vec<String>,
    pub network: Option<VpsNetwork>,
    /// Whether the IPv4 addresses are the ones it has now.
    pub kept: bool,
}

/// Whether `address` is free (or already this VPS's) in `pool` and allocatable there.
fn free_for(pool: &PoolRecord, plan: &ipam::PoolPlan, address: &str, vps_id: &str) -> bool {
    address.parse::<Ipv4Addr>().is_ok_and(|ip| {
        plan.allocatable(ip)
            && pool
                .allocated
                .get(address)
                .is_none_or(|owner| owner == vps_id)
    })
}

/// The destination addresses of `vps` among `dest_pools` (the destination node's pools):
/// its own addresses where one pool contains them all and has them free, else the lowest
/// free ones of the first pool with room (`kept` false), else `None` (no room).
pub fn plan_addresses(vps: &VpsRecord, dest_pools: &[PoolRecord]) -> Option<AddressPlan> {
    if vps.resources.ipv4_count == 0 && vps.ipv4.is_empty() {
        return Some(AddressPlan {
            ipv4: Vec::new(),
            network: None,
            kept: true,
        });
    }
    for pool in dest_pools {
        let Ok(plan) = ipam::plan(pool) else {
            continue;
        };
        if vps.ipv4.is_empty()
            || !vps
                .ipv4
                .iter()
                .all(|address| free_for(pool, &plan, address, &vps.vps_id))
        {
            continue;
        }
        // In the pool it is already in (a shared pool spanning both nodes), the VPS keeps
        // its IPv6 addresses too.
        let current = vps
            .network
            .as_ref()
            .filter(|network| network.pool == pool.name);
        let ipv6 = match (current, &pool.ipv6_prefix, vps.resources.ipv6_count) {
            (Some(network), _, _) => network.ipv6.clone(),
            (None, Some(prefix), count) if count > 0 => {
                allocate_ipv6(prefix, &pool.allocated_ipv6, count)
                    .unwrap_or_default()
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            }
            _ => Vec::new(),
        };
        return Some(AddressPlan {
            ipv4: vps.ipv4.clone(),
            network: Some(VpsNetwork {
                pool: pool.name.clone(),
                cidr: plan.cidr.to_string(),
                gateway: plan.gateway.to_string(),
                nat: pool.nat,
                mac: ipam::mac_for(&vps.vps_id),
                ipv6,
                ipv6_prefix: pool.ipv6_prefix.clone(),
            }),
            kept: true,
        });
    }
    for pool in dest_pools {
        let mut pool = pool.clone();
        let mut moved = vps.clone();
        if ipam::allocate_from(&mut pool, &mut moved) {
            return Some(AddressPlan {
                kept: moved.ipv4 == vps.ipv4,
                ipv4: moved.ipv4,
                network: moved.network,
            });
        }
    }
    None
}

/// Reserves the planned addresses in the destination pool (inside the planning
/// transaction): refused if one was taken since the plan was made. Returns how many IPv4
/// addresses it newly took (none when the VPS keeps its addresses in a shared pool).
pub fn reserve_addresses(
    migration: &MigrationRecord,
    pool: &mut PoolRecord,
) -> Result<u32, MigrationError> {
    let before = pool.allocated.len();
    let plan = ipam::plan(pool).map_err(|_| MigrationError::AddressTaken {
        address: migration.new_ipv4.join(", "),
        node: migration.destination.clone(),
    })?;
    for address in &migration.new_ipv4 {
        if !free_for(pool, &plan, address, &migration.vps_id) {
            return Err(MigrationError::AddressTaken {
                address: address.clone(),
                node: migration.destination.clone(),
            });
        }
    }
    let ipv6 = migration
        .new_network
        .as_ref()
        .map(|network| network.ipv6.clone())
        .unwrap_or_default();
    for address in &ipv6 {
        if pool
            .allocated_ipv6
            .get(address)
            .is_some_and(|owner| owner != &migration.vps_id)
        {
            return Err(MigrationError::AddressTaken {
                address: address.clone(),
                node: migration.destination.clone(),
            });
        }
    }
    for address in &migration.new_ipv4 {
        pool.allocated
            .insert(address.clone(), migration.vps_id.clone());
    }
    for address in ipv6 {
        pool.allocated_ipv6
            .insert(address, migration.vps_id.clone());
    }
    Ok(u32::try_from(pool.allocated.len() - before).unwrap_or(u32::MAX))
}

/// Gives back everything `pool` holds for `vps_id`; returns how many IPv4 addresses.
pub fn release_addresses(pool: &mut PoolRecord, vps_id: &str) -> u32 {
    let before = pool.allocated.len();
    pool.allocated.retain(|_, owner| owner != vps_id);
    pool.allocated_ipv6.retain(|_, owner| owner != vps_id);
    u32::try_from(before - pool.allocated.len()).unwrap_or(u32::MAX)
}

/// Checks, in the planning transaction, that `vps` may start moving as `migration` says.
pub fn check_plan(vps: &VpsRecord, migration: &MigrationRecord) -> Result<(), MigrationError> {
    if vps.node != migration.source {
        return Err(MigrationError::Moved {
            vps: vps.name.clone(),
            node: migration.source.clone(),
        });
    }
    if vps.node == migration.destination {
        return Err(MigrationError::SameNode {
            vps: vps.name.clone(),
            node: vps.node.clone(),
        });
    }
    Ok(())
}

/// Charges the destination's summary with the VPS (in the planning transaction). The
/// addresses it takes are counted on every node of their pool ([`count_addresses`]).
pub fn reserve_capacity(allocation: &mut NodeAllocationRecord, vps: &VpsRecord) {
    allocation.account(&vps.resources, 1.0);
}

/// Gives back a node's charge for the VPS (the source at the switch, the destination in a
/// rollback).
pub fn release_capacity(allocation: &mut NodeAllocationRecord, vps: &VpsRecord) {
    allocation.account(&vps.resources, -1.0);
}

/// Counts `taken` addresses of a pool as given (positive) or given back (negative) in the
/// summary of a node the pool spans: a shared pool's free addresses count for each of them.
pub fn count_addresses(allocation: &mut NodeAllocationRecord, taken: i64) {
    let change = u32::try_from(taken.unsigned_abs()).unwrap_or(u32::MAX);
    allocation.free_ipv4 = if taken >= 0 {
        allocation.free_ipv4.saturating_sub(change)
    } else {
        allocation.free_ipv4.saturating_add(change)
    };
}

/// The switch, applied to the VPS record: the destination, its addresses there, and the
/// desired power it had before the move; the node must report it anew.
pub fn switch_vps(vps: &mut VpsRecord, migration: &MigrationRecord) {
    vps.node = migration.destination.clone();
    vps.ipv4 = migration.new_ipv4.clone();
    vps.network = migration.new_network.clone();
    vps.desired_power = if migration.was_running {
        super::Power::Running
    } else {
        super::Power::Stopped
    };
    vps.observed = None;
    vps.applied_spec = None;
}

/// The incarnation the usage cursor holds right after a switch: no agent sends it.
pub const MIGRATED_INCARNATION: &str = "migrated";

/// The usage cursor after a switch: sequence 0 and zero counters under an incarnation no
/// agent sends, so the destination's first sample (its own sequence, counters from zero) is
/// counted whole and never taken for a repeat; the month's transfer figures carry over.
pub fn reset_cursor(cursor: &mut UsageCursorRecord, at: DateTime<Utc>) {
    cursor.incarnation = MIGRATED_INCARNATION.to_owned();
    cursor.sequence = 0;
    cursor.counters = UsageCounters::default();
    cursor.sampled_at_unix_ms = at.timestamp_millis();
}

/// The `detail` of a `vps_migrated` event.
pub fn migrated_detail(migration: &MigrationRecord) -> String {
    format!(
        "{} -> {}; ipv4 {} -> {}",
        migration.source,
        migration.destination,
        describe(&migration.old_ipv4),
        describe(&migration.new_ipv4)
    )
}

/// Addresses for messages: comma-separated, `none` when empty.
pub fn describe(addresses: &[String]) -> String {
    if addresses.is_empty() {
        "none".to_owned()
    } else {
        addresses.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Power, Resources};

    fn pool(name: &str, node: &str, cidr: &str, gateway: &str) -> PoolRecord {
        PoolRecord {
            name: name.into(),
            node: node.into(),
            nodes: Vec::new(),
            cidr: cidr.into(),
            gateway: gateway.into(),
            range_start: String::new(),
            range_end: String::new(),
            ipv6_prefix: None,
            nat: true,
            allocated: BTreeMap::new(),
            allocated_ipv6: BTreeMap::new(),
            created_at: Utc::now(),
        }
    }

    fn vps(ipv4: &[&str]) -> VpsRecord {
        VpsRecord {
            vps_id: "v-1".into(),
            name: "web".into(),
            tenant: "acme".into(),
            plan: "small".into(),
            template: "busybox".into(),
            resources: Resources {
                ipv4_count: 1,
                vcpus: 1.0,
                memory_bytes: 1 << 20,
                ..Resources::default()
            },
            node: "a".into(),
            desired_power: Power::Stopped,
            deleting: false,
            ipv4: ipv4.iter().map(|s| s.to_string()).collect(),
            network: None,
            rebuild_generation: 0,
            restart_generation: 0,
            created_at: Utc::now(),
            observed: None,
            transfer_limit: None,
            applied_spec: None,
            last_request: None,
        }
    }

    #[test]
    fn a_destination_pool_containing_the_address_keeps_it() {
        let pools = [
            pool("b-other", "b", "10.9.0.0/24", "10.9.0.1"),
            pool("b-same", "b", "10.1.0.0/24", "10.1.0.1"),
        ];
        let plan = plan_addresses(&vps(&["10.1.0.7"]), &pools).expect("room");
        assert!(plan.kept);
        assert_eq!(plan.ipv4, vec!["10.1.0.7".to_string()]);
        let network = plan.network.expect("network");
        assert_eq!(network.pool, "b-same");
        assert_eq!(network.gateway, "10.1.0.1");
    }

    #[test]
    fn an_address_taken_on_the_destination_gives_a_new_one() {
        let mut same = pool("b-same", "b", "10.1.0.0/24", "10.1.0.1");
        same.allocated.insert("10.1.0.7".into(), "v-other".into());
        let plan = plan_addresses(&vps(&["10.1.0.7"]), &[same]).expect("room");
        assert!(!plan.kept);
        assert_eq!(plan.ipv4, vec!["10.1.0.2".to_string()]);
    }

    #[test]
    fn no_pool_with_room_is_none() {
        assert_eq!(plan_addresses(&vps(&["10.1.0.7"]), &[]), None);
        let mut tiny = pool("b-tiny", "b", "10.2.0.0/30", "10.2.0.1");
        tiny.allocated.insert("10.2.0.2".into(), "v-other".into());
        assert_eq!(plan_addresses(&vps(&["10.1.0.7"]), &[tiny]), None);
    }

    #[test]
    fn reserving_refuses_an_address_taken_since_the_plan() {
        let mut dest = pool("b", "b", "10.2.0.0/24", "10.2.0.1");
        let plan = plan_addresses(&vps(&["10.1.0.7"]), std::slice::from_ref(&dest)).expect("room");
        let migration = MigrationRecord {
            id: "m-1".into(),
            vps_id: "v-1".into(),
            tenant: "acme".into(),
            vps: "web".into(),
            source: "a".into(),
            destination: "b".into(),
            phase: MigrationPhase::Planned,
            was_running: true,
            old_ipv4: vec!["10.1.0.7".into()],
            old_network: None,
            new_ipv4: plan.ipv4.clone(),
            new_network: plan.network.clone(),
            addresses_kept: false,
            started_at: Utc::now(),
            failure: None,
            live: false,
            live_report: None,
        };
        let mut raced = dest.clone();
        raced.allocated.insert(plan.ipv4[0].clone(), "v-2".into());
        assert!(matches!(
            reserve_addresses(&migration, &mut raced),
            Err(MigrationError::AddressTaken { .. })
        ));
        reserve_addresses(&migration, &mut dest).expect("free");
        assert_eq!(dest.allocated.get(&plan.ipv4[0]), Some(&"v-1".to_string()));
        assert_eq!(release_addresses(&mut dest, "v-1"), 1);
        assert!(dest.allocated.is_empty());
        let mut moved = vps(&["10.1.0.7"]);
        switch_vps(&mut moved, &migration);
        assert_eq!(moved.node, "b");
        assert_eq!(moved.ipv4, plan.ipv4);
        assert_eq!(moved.desired_power, Power::Running);
    }

    #[test]
    fn the_reset_cursor_takes_the_next_sample_whole() {
        use crate::model::metering::{delta, Sample};
        let mut cursor = UsageCursorRecord {
            incarnation: "12-200".into(),
            sequence: 500,
            sampled_at_unix_ms: 1_000,
            counters: UsageCounters {
                cpu_usage_ns: 9_000,
                ..UsageCounters::default()
            },
            month: "2026-12".into(),
            month_transfer_bytes: 77,
            month_threshold_percent: 0,
        };
        let first_on_destination = Sample {
            vps_id: "v-1".into(),
            incarnation: "40-900".into(),
            sequence: 1,
            sampled_at_unix_ms: 5_000,
            interval_ms: 1_000,
            counters: UsageCounters {
                cpu_usage_ns: 300,
                ..UsageCounters::default()
            },
        };
        assert_eq!(
            delta(Some(&cursor), &first_on_destination),
            None,
            "without the reset the destination's sequence looks like a repeat"
        );
        reset_cursor(
            &mut cursor,
            DateTime::from_timestamp_millis(4_000).expect("time"),
        );
        let added = delta(Some(&cursor), &first_on_destination).expect("counted");
        assert_eq!(added.cpu_usage_ns, 300);
        assert_eq!(cursor.month_transfer_bytes, 77);
    }
}
