//! What a VPS should be ([`VpsSpec`], [`Limits`], [`Power`]) and what it is ([`VpsObserved`]),
//! and the rules every spec, argument and runtime config must follow. The one rule for VPS ids
//! ([`validate_vps_id`]) is also the agent's wire-level check (`crate::convert`).

use serde::{Deserialize, Serialize};

use super::cgroups;
use super::isolation::rootfs;
use super::storage::disk;
use super::{RuntimeConfig, RuntimeError};

/// Largest vcpus value accepted in [`Limits`].
pub const MAX_VCPUS: f64 = 1024.0;
/// Smallest non-zero memory limit accepted in [`Limits`].
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;

/// Desired power state of a VPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    /// The init should be running.
    Running,
    /// No process of the VPS should exist.
    Stopped,
}

/// Resource limits of a VPS, enforced through its cgroup and its disk image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// CPUs worth of CFS quota (fractional allowed); 0 = unlimited.
    pub vcpus: f64,
    /// cgroup v2 style weight 1..=10000 (v1 shares are derived); 0 = default (100).
    pub cpu_weight: u32,
    /// Memory hard limit; 0 = unlimited.
    pub memory_bytes: u64,
    /// Swap allowed on top of memory (v1: only where memsw accounting exists).
    pub swap_bytes: u64,
    /// Maximum number of tasks; 0 = unlimited.
    pub pids_max: u64,
    /// Size of the VPS's disk image; 0 = [`disk::DEFAULT_DISK_BYTES`]. A larger value grows
    /// the disk in place (online while the VPS runs); a disk never shrinks, so a smaller value
    /// keeps the current size.
    #[serde(default)]
    pub disk_bytes: u64,
    /// Read bytes/s on the VPS's disk; 0 = unlimited.
    #[serde(default)]
    pub io_read_bps: u64,
    /// Write bytes/s on the VPS's disk; 0 = unlimited.
    #[serde(default)]
    pub io_write_bps: u64,
    /// Read operations/s on the VPS's disk; 0 = unlimited.
    #[serde(default)]
    pub io_read_iops: u64,
    /// Write operations/s on the VPS's disk; 0 = unlimited.
    #[serde(default)]
    pub io_write_iops: u64,
}

/// What should exist for one VPS.
#[derive(Debug, Clone, PartialEq)]
pub struct VpsSpec {
    /// Stable id; 1-64 of `[A-Za-z0-9_-]`, starting alphanumeric. Names paths and the cgroup.
    pub vps_id: String,
    /// Hostname inside the VPS (applied at the next start).
    pub hostname: String,
    /// Template name under `state_dir/templates/`; fixed at creation.
    pub template: String,
    /// Resource limits, updated in place on a running VPS.
    pub limits: Limits,
    /// Whether the init should run.
    pub power: Power,
    /// Bumped to rebuild: a higher value than last carried out gives the VPS a fresh writable
    /// layer (a new filesystem on the same disk) from `template`, once.
    pub rebuild_generation: u64,
    /// Bumped to restart: a higher value than last carried out stops a running VPS and starts
    /// it again, once. A new VPS starts at the value it is created with (nothing to restart).
    pub restart_generation: u64,
}

/// Observed state of a VPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedState {
    /// The recorded init is alive.
    Running,
    /// No init is running.
    Stopped,
    /// The runtime cannot tell (e.g. unreadable state); see the message.
    Error,
}

/// What exists for one VPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpsObserved {
    /// The VPS id.
    pub vps_id: String,
    /// Its hostname, which is its name in the controller; empty if its state is unreadable.
    pub hostname: String,
    /// Running, stopped or error.
    pub state: ObservedState,
    /// Host pid of the VPS's init while running.
    pub init_pid: Option<u32>,
    /// Human-readable detail.
    pub message: String,
}

/// The disk size for `limits` (0 means the default).
pub(crate) fn disk_bytes(limits: &Limits) -> u64 {
    if limits.disk_bytes == 0 {
        disk::DEFAULT_DISK_BYTES
    } else {
        limits.disk_bytes
    }
}

pub(super) fn invalid(field: &'static str, rule: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidArgument {
        field,
        rule: rule.into(),
    }
}

/// The one rule for VPS ids (they name paths, the cgroup and the network port): 1-64 of
/// `[A-Za-z0-9_-]`, starting with a letter or digit.
pub fn validate_vps_id(vps_id: &str) -> Result<(), RuntimeError> {
    let mut chars = vps_id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if first_ok && rest_ok && vps_id.len() <= 64 {
        Ok(())
    } else {
        Err(invalid(
            "vps_id",
            "must be 1-64 characters of [A-Za-z0-9_-] starting with a letter or digit",
        ))
    }
}

fn validate_hostname(hostname: &str) -> Result<(), RuntimeError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if hostname.len() <= 64 && hostname.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(invalid(
            "hostname",
            "must be at most 64 characters of dot-separated labels of [A-Za-z0-9-], \
             not starting or ending with '-'",
        ))
    }
}

/// Template names are directory names under `state_dir/templates`.
pub(crate) fn validate_template_name(template: &str) -> Result<(), RuntimeError> {
    let mut chars = template.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if first_ok && rest_ok && template.len() <= 63 && !template.contains("..") {
        Ok(())
    } else {
        Err(invalid(
            "template",
            "must be 1-63 characters of [a-z0-9._-] starting with a letter or digit",
        ))
    }
}

fn validate_limits(limits: &Limits) -> Result<(), RuntimeError> {
    if !limits.vcpus.is_finite() || limits.vcpus < 0.0 || limits.vcpus > MAX_VCPUS {
        return Err(invalid(
            "limits.vcpus",
            format!("must be between 0 (unlimited) and {MAX_VCPUS}"),
        ));
    }
    if limits.cpu_weight > cgroups::MAX_CPU_WEIGHT {
        return Err(invalid(
            "limits.cpu_weight",
            format!("must be 0 (default) or 1-{}", cgroups::MAX_CPU_WEIGHT),
        ));
    }
    if limits.memory_bytes != 0 && limits.memory_bytes < MIN_MEMORY_BYTES {
        return Err(invalid(
            "limits.memory_bytes",
            format!("must be 0 (unlimited) or at least {MIN_MEMORY_BYTES}"),
        ));
    }
    for (field, value) in [
        ("limits.memory_bytes", limits.memory_bytes),
        ("limits.swap_bytes", limits.swap_bytes),
        ("limits.pids_max", limits.pids_max),
    ] {
        if i64::try_from(value).is_err() {
            return Err(invalid(field, format!("must be at most {}", i64::MAX)));
        }
    }
    if limits.disk_bytes != 0 && limits.disk_bytes < disk::MIN_DISK_BYTES {
        return Err(invalid(
            "limits.disk_bytes",
            format!("must be 0 (default) or at least {}", disk::MIN_DISK_BYTES),
        ));
    }
    if limits.memory_bytes.checked_add(limits.swap_bytes).is_none() {
        return Err(invalid("limits.swap_bytes", "memory + swap overflows"));
    }
    Ok(())
}

pub(super) fn validate_spec(spec: &VpsSpec) -> Result<(), RuntimeError> {
    validate_vps_id(&spec.vps_id)?;
    validate_hostname(&spec.hostname)?;
    validate_template_name(&spec.template)?;
    validate_limits(&spec.limits)
}

pub(super) fn validate_command(command: &[String], env: &[String]) -> Result<(), RuntimeError> {
    if command.first().is_none_or(|program| program.is_empty()) {
        return Err(invalid("command", "must name a program"));
    }
    if command.iter().any(|arg| arg.contains('\0')) {
        return Err(invalid("command", "must not contain NUL bytes"));
    }
    for entry in env {
        match entry.split_once('=') {
            Some((key, _)) if !key.is_empty() && !entry.contains('\0') => {}
            _ => {
                return Err(invalid(
                    "env",
                    "entries must be KEY=VALUE without NUL bytes",
                ))
            }
        }
    }
    Ok(())
}

pub(super) fn validate_config(config: &RuntimeConfig) -> Result<(), RuntimeError> {
    rootfs::check_overlay_path(&config.state_dir).map_err(|e| RuntimeError::InvalidConfig {
        field: "state_dir",
        rule: e.to_string(),
    })?;
    let parent = config.cgroup_parent.trim_matches('/');
    let parent_ok = !parent.is_empty()
        && parent.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        });
    if !parent_ok {
        return Err(RuntimeError::InvalidConfig {
            field: "cgroup_parent",
            rule: "must be a relative cgroup path of [A-Za-z0-9._-] components".into(),
        });
    }
    if !config.helper_binary.is_file() {
        return Err(RuntimeError::InvalidConfig {
            field: "helper_binary",
            rule: format!("{} is not a file", config.helper_binary.display()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VpsSpec {
        VpsSpec {
            vps_id: "vps-1".into(),
            hostname: "web1.example".into(),
            template: "busybox".into(),
            limits: Limits {
                vcpus: 1.0,
                memory_bytes: 64 << 20,
                ..Limits::default()
            },
            power: Power::Running,
            rebuild_generation: 0,
            restart_generation: 0,
        }
    }

    #[test]
    fn accepts_a_good_spec() {
        validate_spec(&spec()).expect("valid");
    }

    #[test]
    fn rejects_bad_fields_naming_them() {
        let cases: Vec<(VpsSpec, &str)> = vec![
            (
                VpsSpec {
                    vps_id: "../x".into(),
                    ..spec()
                },
                "vps_id",
            ),
            (
                VpsSpec {
                    vps_id: String::new(),
                    ..spec()
                },
                "vps_id",
            ),
            (
                VpsSpec {
                    hostname: "-bad".into(),
                    ..spec()
                },
                "hostname",
            ),
            (
                VpsSpec {
                    hostname: "a".repeat(65),
                    ..spec()
                },
                "hostname",
            ),
            (
                VpsSpec {
                    template: "../etc".into(),
                    ..spec()
                },
                "template",
            ),
            (
                VpsSpec {
                    limits: Limits {
                        vcpus: -1.0,
                        ..spec().limits
                    },
                    ..spec()
                },
                "limits.vcpus",
            ),
            (
                VpsSpec {
                    limits: Limits {
                        memory_bytes: 1,
                        ..spec().limits
                    },
                    ..spec()
                },
                "limits.memory_bytes",
            ),
            (
                VpsSpec {
                    limits: Limits {
                        cpu_weight: 10_001,
                        ..spec().limits
                    },
                    ..spec()
                },
                "limits.cpu_weight",
            ),
        ];
        for (bad, field) in cases {
            match validate_spec(&bad) {
                Err(RuntimeError::InvalidArgument { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{bad:?}: expected invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn validates_exec_arguments() {
        assert!(validate_command(&[], &[]).is_err());
        assert!(validate_command(&["ls".into()], &["NOEQUALS".into()]).is_err());
        assert!(validate_command(&["ls".into()], &["=x".into()]).is_err());
        validate_command(&["ls".into(), "-l".into()], &["A=b".into()]).expect("valid");
    }
}
