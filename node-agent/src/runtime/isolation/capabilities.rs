//! The capability bounding set of a VPS: root inside keeps what a system container needs
//! (chown, setuid, net admin of its own namespace, mount inside its namespaces, reboot of its
//! pid namespace, ...) but loses capabilities that act on the whole machine, so they cannot be
//! regained even by a setuid binary or file capabilities.

use nix::errno::Errno;

/// Capabilities removed from every VPS process's bounding set (number, name).
pub const DROPPED: &[(libc::c_int, &str)] = &[
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    (20, "CAP_SYS_PACCT"),
    (25, "CAP_SYS_TIME"),
    (30, "CAP_AUDIT_CONTROL"),
    (32, "CAP_MAC_OVERRIDE"),
    (33, "CAP_MAC_ADMIN"),
    (34, "CAP_SYSLOG"),
    (35, "CAP_WAKE_ALARM"),
    (36, "CAP_BLOCK_SUSPEND"),
    (37, "CAP_AUDIT_READ"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

/// `CAP_SYS_RESOURCE`: growing a mounted ext4 (`EXT4_IOC_RESIZE_FS`) needs it.
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Whether the calling process has `cap` in its effective set (per `/proc/self/status`).
pub fn has_effective(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_mask(&status))
        .is_some_and(|mask| cap < 64 && mask & (1u64 << cap) != 0)
}

/// The `CapEff` mask of a `/proc/<pid>/status` text.
fn effective_mask(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
}

/// Errors changing capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// `prctl(PR_CAPBSET_DROP)` failed.
    #[error("drop {name} from the bounding set: {source}")]
    Drop {
        /// The capability.
        name: &'static str,
        /// The errno.
        source: Errno,
    },
}

/// Removes [`DROPPED`] from the calling thread's bounding set (needs `CAP_SETPCAP` in its user
/// namespace). Capabilities this kernel does not know (`EINVAL`) are skipped.
pub fn drop_bounding_set() -> Result<(), CapabilityError> {
    for (cap, name) in DROPPED {
        match crate::runtime::sys::capbset_drop(*cap) {
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(errno) => {
                return Err(CapabilityError::Drop {
                    name,
                    source: errno,
                })
            }
        }
    }
    Ok(())
}

/// The bounding-set mask that [`drop_bounding_set`] clears, as in `/proc/<pid>/status` `CapBnd`.
pub fn dropped_mask() -> u64 {
    DROPPED
        .iter()
        .fold(0u64, |mask, (cap, _)| mask | (1u64 << cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_mask() {
        let status = "Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t000001fffeffffff\n";
        let mask = effective_mask(status).expect("mask");
        assert_eq!(mask & (1 << CAP_SYS_RESOURCE), 0);
        assert_ne!(mask & (1 << 21), 0);
        assert_eq!(effective_mask("Name:\tx\n"), None);
    }
}
