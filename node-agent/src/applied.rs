//! What the agent last applied per VPS, so that the controller's periodic re-apply of an
//! unchanged VPS is answered at once instead of re-running the full apply (cgroup writes,
//! disk checks, netlink and tc calls). A VPS is re-applied in full when its spec changes,
//! when what exists drifted from what the last apply left (the init is gone or another, the
//! port's host link is missing), and at least every [`FULL_RESYNC`].

use std::time::{Duration, Instant};

use crate::runtime::{ObservedState, VpsObserved};

/// How long an apply's result stands for an unchanged spec before a full apply again.
pub const FULL_RESYNC: Duration = Duration::from_secs(300);

/// How many full applies run at once; the rest wait, so a burst cannot starve the agent's
/// blocking threads (and with them heartbeats, lists and no-op applies).
pub const MAX_CONCURRENT_APPLIES: usize = 16;

/// One VPS's last successful apply, kept by that VPS's worker ([`crate::worker`]).
#[derive(Debug, Clone)]
pub struct LastApply {
    /// The encoded wire spec that was applied (compared byte for byte).
    spec: Vec<u8>,
    state: ObservedState,
    init_pid: Option<u32>,
    /// The host end of its port, when it has one.
    port: Option<String>,
    at: Instant,
}

impl LastApply {
    /// A successful apply of `spec` (encoded) that left `observed`, with the port's host link
    /// `port` when the VPS has one.
    pub fn new(spec: Vec<u8>, observed: &VpsObserved, port: Option<String>) -> Self {
        Self {
            spec,
            state: observed.state,
            init_pid: observed.init_pid,
            port,
            at: Instant::now(),
        }
    }

    /// Whether applying `spec` (encoded) again would change nothing: the same spec was
    /// applied less than [`FULL_RESYNC`] ago and `current` (what exists now) is what it left.
    pub fn unchanged(&self, spec: &[u8], current: &VpsObserved) -> bool {
        self.spec == spec
            && self.at.elapsed() < FULL_RESYNC
            && self.state == current.state
            && self.init_pid == current.init_pid
            && current.state != ObservedState::Error
            && self.port.as_ref().is_none_or(|name| link_exists(name))
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
        let running = observed(ObservedState::Running, Some(42));
        let applied = LastApply::new(b"spec".to_vec(), &running, None);
        assert!(applied.unchanged(b"spec", &running));
        assert!(!applied.unchanged(b"other", &running), "spec changed");
        let restarted = observed(ObservedState::Running, Some(43));
        assert!(!applied.unchanged(b"spec", &restarted), "another init");
        let stopped = observed(ObservedState::Stopped, None);
        assert!(!applied.unchanged(b"spec", &stopped), "init gone");
        let failed = observed(ObservedState::Error, None);
        let applied_stopped = LastApply::new(b"spec".to_vec(), &stopped, None);
        assert!(applied_stopped.unchanged(b"spec", &stopped));
        assert!(
            !applied_stopped.unchanged(b"spec", &failed),
            "error is drift"
        );
    }

    #[test]
    fn missing_port_is_drift() {
        let running = observed(ObservedState::Running, Some(42));
        let applied = LastApply::new(b"spec".to_vec(), &running, Some("lo".into()));
        assert!(applied.unchanged(b"spec", &running));
        let applied = LastApply::new(b"spec".to_vec(), &running, Some("pvnotthere0000".into()));
        assert!(!applied.unchanged(b"spec", &running));
    }
}
