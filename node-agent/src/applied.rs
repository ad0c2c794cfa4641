//! What the agent last applied per VPS, so that the controller's periodic re-apply of an
//! unchanged VPS is answered at once instead of re-running the full apply (cgroup writes,
//! disk checks, netlink and tc calls). A VPS is re-applied in full when its spec changes,
//! when what exists drifted from what the last apply left (the init is gone or another, the
//! port's host link is missing), and at least every [`FULL_RESYNC`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::runtime::{ObservedState, VpsObserved};

/// How long an apply's result stands for an unchanged spec before a full apply again.
pub const FULL_RESYNC: Duration = Duration::from_secs(300);

/// How many full applies run at once; the rest wait, so a burst cannot starve the agent's
/// blocking threads (and with them heartbeats, lists and no-op applies).
pub const MAX_CONCURRENT_APPLIES: usize = 16;

/// One VPS's last successful apply.
#[derive(Debug, Clone)]
struct Applied {
    /// The encoded wire spec that was applied (compared byte for byte).
    spec: Vec<u8>,
    state: ObservedState,
    init_pid: Option<u32>,
    /// The host end of its port, when it has one.
    port: Option<String>,
    at: Instant,
}

/// The last successful apply of each VPS.
#[derive(Debug, Default)]
pub struct AppliedSpecs {
    by_vps: Mutex<HashMap<String, Applied>>,
}

impl AppliedSpecs {
    /// Records a successful apply of `spec` (encoded) that left `observed`, with the port's
    /// host link `port` when the VPS has one.
    pub fn record(&self, spec: Vec<u8>, observed: &VpsObserved, port: Option<String>) {
        let applied = Applied {
            spec,
            state: observed.state,
            init_pid: observed.init_pid,
            port,
            at: Instant::now(),
        };
        self.lock().insert(observed.vps_id.clone(), applied);
    }

    /// Forgets a VPS (deleted, or its apply failed): its next apply is a full one.
    pub fn forget(&self, vps_id: &str) {
        self.lock().remove(vps_id);
    }

    /// Whether applying `spec` (encoded) again would change nothing: the same spec was
    /// applied less than [`FULL_RESYNC`] ago and `current` (what exists now) is what it left.
    pub fn unchanged(&self, vps_id: &str, spec: &[u8], current: &VpsObserved) -> bool {
        let by_vps = self.lock();
        let Some(applied) = by_vps.get(vps_id) else {
            return false;
        };
        applied.spec == spec
            && applied.at.elapsed() < FULL_RESYNC
            && applied.state == current.state
            && applied.init_pid == current.init_pid
            && current.state != ObservedState::Error
            && applied.port.as_ref().is_none_or(|name| link_exists(name))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Applied>> {
        self.by_vps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether the host has a network interface `name` (one stat in sysfs).
fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(state: ObservedState, init_pid: Option<u32>) -> VpsObserved {
        VpsObserved {
            vps_id: "v1".into(),
            hostname: "h".into(),
            state,
            init_pid,
            message: String::new(),
        }
    }

    #[test]
    fn same_spec_and_same_init_is_unchanged() {
        let applied = AppliedSpecs::default();
        let running = observed(ObservedState::Running, Some(42));
        assert!(
            !applied.unchanged("v1", b"spec", &running),
            "nothing applied yet"
        );
        applied.record(b"spec".to_vec(), &running, None);
        assert!(applied.unchanged("v1", b"spec", &running));
        assert!(!applied.unchanged("v1", b"other", &running), "spec changed");
        let restarted = observed(ObservedState::Running, Some(43));
        assert!(
            !applied.unchanged("v1", b"spec", &restarted),
            "another init"
        );
        let stopped = observed(ObservedState::Stopped, None);
        assert!(!applied.unchanged("v1", b"spec", &stopped), "init gone");
        applied.forget("v1");
        assert!(!applied.unchanged("v1", b"spec", &running));
    }

    #[test]
    fn missing_port_is_drift() {
        let applied = AppliedSpecs::default();
        let running = observed(ObservedState::Running, Some(42));
        applied.record(b"spec".to_vec(), &running, Some("lo".into()));
        assert!(applied.unchanged("v1", b"spec", &running));
        applied.record(b"spec".to_vec(), &running, Some("pvnotthere0000".into()));
        assert!(!applied.unchanged("v1", b"spec", &running));
    }
}
