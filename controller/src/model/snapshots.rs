//! Snapshots of a VPS's disk as the controller records them, and the per-plan quota on them.
//! The disk copies live on the VPS's node; these records say which exist and what they cost.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How many snapshots a VPS may keep when its plan does not say (and for plans from before
/// snapshots).
pub const DEFAULT_MAX_SNAPSHOTS: u32 = 3;

/// Where a snapshot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Recorded (its quota slot and name taken) while the node copies the disk.
    Creating,
    /// On the node.
    Ready,
}

/// One snapshot of one VPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    pub state: SnapshotState,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub size_bytes: u64,
    #[serde(default)]
    pub allocated_bytes: u64,
    /// `reflink` or `sparse`, as the node copied it.
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub duration_ms: u64,
}

/// Every snapshot of one VPS, by name: one store record, so a transaction reads and writes
/// the VPS's whole set (the quota and the name's uniqueness) at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpsSnapshots {
    pub snapshots: BTreeMap<String, SnapshotRecord>,
}

/// Why a snapshot may not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotQuotaError {
    #[error("snapshot quota exceeded: VPS {vps} has {used} of {limit} snapshots its plan {plan} allows; delete one first")]
    Full {
        vps: String,
        plan: String,
        used: u32,
        limit: u32,
    },
}

/// Whether `set` has room for one more snapshot under `limit` (the plan's `max_snapshots`).
pub fn admit(
    set: &VpsSnapshots,
    vps: &str,
    plan: &str,
    limit: u32,
) -> Result<(), SnapshotQuotaError> {
    let used = u32::try_from(set.snapshots.len()).unwrap_or(u32::MAX);
    if used >= limit {
        return Err(SnapshotQuotaError::Full {
            vps: vps.to_owned(),
            plan: plan.to_owned(),
            used,
            limit,
        });
    }
    Ok(())
}

pub fn default_max_snapshots() -> u32 {
    DEFAULT_MAX_SNAPSHOTS
}

/// What a resync does with one recorded snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Nothing: ready, or a reservation young enough that its create may still be running.
    Keep,
    /// A stale reservation whose copy the node has: record it as taken.
    Record(SnapshotRecord),
    /// A stale reservation the node has no copy of: free the name and the quota slot.
    Drop,
}

/// Settles `record` against what its node holds under the same name (`on_node`, as the node
/// describes it). A `creating` reservation older than `stale_after` (longer than any create's
/// call to its node may take) belongs to a create that died with its controller: the node's
/// copy, if it finished one, is recorded; else the reservation is dropped.
pub fn settle(
    record: &SnapshotRecord,
    on_node: Option<&SnapshotRecord>,
    now: DateTime<Utc>,
    stale_after: chrono::Duration,
) -> Settle {
    if record.state != SnapshotState::Creating || now - record.created_at < stale_after {
        return Settle::Keep;
    }
    match on_node {
        Some(copy) => Settle::Record(SnapshotRecord {
            name: record.name.clone(),
            state: SnapshotState::Ready,
            ..copy.clone()
        }),
        None => Settle::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> SnapshotRecord {
        SnapshotRecord {
            name: name.to_owned(),
            state: SnapshotState::Ready,
            created_at: Utc::now(),
            size_bytes: 0,
            allocated_bytes: 0,
            method: String::new(),
            duration_ms: 0,
        }
    }

    #[test]
    fn the_quota_counts_every_snapshot_of_the_vps() {
        let mut set = VpsSnapshots::default();
        admit(&set, "web", "nano", 1).expect("room for one");
        set.snapshots.insert("a".into(), record("a"));
        let error = admit(&set, "web", "nano", 1).expect_err("full");
        assert!(error.to_string().contains("1 of 1"), "{error}");
        admit(&set, "web", "nano", 0).expect_err("a plan without snapshots");
    }

    #[test]
    fn only_stale_reservations_are_settled_against_the_node() {
        let now = Utc::now();
        let stale = chrono::Duration::minutes(31);
        let creating = |age_min: i64| SnapshotRecord {
            state: SnapshotState::Creating,
            created_at: now - chrono::Duration::minutes(age_min),
            ..record("s")
        };
        let copy = SnapshotRecord {
            size_bytes: 64,
            allocated_bytes: 8,
            method: "sparse".to_owned(),
            duration_ms: 3,
            ..record("s")
        };
        // Young: its create may still be copying.
        assert_eq!(settle(&creating(5), None, now, stale), Settle::Keep);
        assert_eq!(settle(&creating(5), Some(&copy), now, stale), Settle::Keep);
        // Ready snapshots are never touched, whatever the node says.
        assert_eq!(settle(&record("s"), None, now, stale), Settle::Keep);
        // Stale: recorded from the node's copy, or dropped.
        assert_eq!(settle(&creating(40), None, now, stale), Settle::Drop);
        match settle(&creating(40), Some(&copy), now, stale) {
            Settle::Record(recorded) => {
                assert_eq!(recorded.state, SnapshotState::Ready);
                assert_eq!(recorded.size_bytes, 64);
                assert_eq!(recorded.method, "sparse");
            }
            other => panic!("expected Record, got {other:?}"),
        }
    }
}
