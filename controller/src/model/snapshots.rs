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
}
