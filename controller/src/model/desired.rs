//! What a VPS should be at a moment, beyond what its owner asked for: the one rule
//! for when a VPS is held stopped and when its network is throttled.

use chrono::{DateTime, Utc};

use super::records::{Observed, Power, TransferOverage, VpsRecord};

/// The state the node should make a VPS have at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    /// Stopped while the VPS is held, else what its owner chose.
    pub power: Power,
    /// Cap on both network directions while its transfer allowance is used up on a
    /// throttling plan.
    pub throttle_bits_per_sec: Option<u64>,
}

/// Whether a VPS is held stopped at `now`: its tenant is suspended, or its transfer
/// allowance is used up on a suspending plan. A held VPS keeps the power state its
/// owner chose, so lifting the hold puts it back as it was.
pub fn held(vps: &VpsRecord, tenant_suspended: bool, now: DateTime<Utc>) -> bool {
    tenant_suspended || vps.transfer_limit_at(now) == Some(TransferOverage::Suspend)
}

/// What the node should make of `vps` at `now`.
pub fn desired(vps: &VpsRecord, tenant_suspended: bool, now: DateTime<Utc>) -> Desired {
    let power = if held(vps, tenant_suspended, now) {
        Power::Stopped
    } else {
        vps.desired_power
    };
    let throttle_bits_per_sec = match vps.transfer_limit_at(now) {
        Some(TransferOverage::Throttle { bits_per_sec }) => Some(bits_per_sec),
        _ => None,
    };
    Desired {
        power,
        throttle_bits_per_sec,
    }
}

/// The state a user sees of a VPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VpsState {
    Pending,
    Running,
    Stopped,
    Error,
    /// Its node is not reachable: what it runs is not known.
    Unknown,
    /// Held stopped (see [`held`]) and not running.
    Suspended,
    Deleting,
}

/// The state a user sees, derived from desired state, the node's last report,
/// whether the node is reachable and whether the VPS is held stopped (its
/// tenant suspended, or its monthly transfer used up on a suspending plan).
pub fn state(vps: &VpsRecord, node_online: bool, held: bool) -> VpsState {
    if vps.deleting {
        return VpsState::Deleting;
    }
    if !node_online {
        return VpsState::Unknown;
    }
    let observed = vps.observed.as_ref().map(|o| o.state);
    if held && observed != Some(Observed::Running) {
        return VpsState::Suspended;
    }
    match observed {
        None | Some(Observed::Absent) => VpsState::Pending,
        Some(Observed::Running) => VpsState::Running,
        Some(Observed::Stopped) => VpsState::Stopped,
        Some(Observed::Error) => VpsState::Error,
    }
}
