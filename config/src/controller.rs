//! `paddock-controller` configuration (`config/controller.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{load_toml, ByteSize, ConfigError};

/// The fewest processes any VPS may be limited to: its init and a shell.
pub const MIN_PIDS: u64 = 16;

/// Configuration of the controller process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Address of the gRPC API (CLI, billing, agents).
    pub listen: SocketAddr,
    /// Prometheus metrics endpoint (`GET /metrics`); `"off"` disables it
    /// (absent means the default, 127.0.0.1:7453).
    #[serde(with = "crate::optional_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Extra host names / IPs for the controller's TLS certificate (made at
    /// init; localhost, 127.0.0.1 and ::1 are always included).
    pub tls_sans: Vec<String>,
    /// Where the sled store, the admin and join tokens live.
    pub data_dir: PathBuf,
    /// Which store keeps the desired state: `sled` (embedded in `data_dir`, the default)
    /// or `etcd` (a cluster at `etcd_endpoints`, keys under `etcd_prefix`).
    pub store: StoreBackend,
    /// etcd client URLs, with `store = "etcd"`.
    pub etcd_endpoints: Vec<String>,
    /// Prefix of every key the controller writes in etcd (ends with `/`).
    pub etcd_prefix: String,
    /// With `store = "etcd"`, several controllers may share the prefix: the one holding the
    /// leader lease runs the reconcile workers. A dead leader is replaced within about this
    /// long; a leader that cannot renew its lease stops after two thirds of it.
    pub leader_lease_secs: u32,
    /// How often agents are asked to send a heartbeat.
    pub heartbeat_interval_secs: u32,
    /// A node with no heartbeat for this long is `offline`.
    pub node_offline_after_secs: u32,
    /// How often every node is reconciled even when nothing changed: its
    /// agent lists its VPSes and only those that drifted are applied again.
    pub reconcile_interval_secs: u32,
    /// How often every VPS is applied again even when its node reports it
    /// converged (a full resync); 0 never does.
    pub full_resync_interval_secs: u32,
    /// The most connections to node agents kept open at once; beyond it the least recently
    /// used close (and dial again when needed). 0 (the default): half of the controller's
    /// open-file limit, less a reserve, leaving the other half for the agents' heartbeats.
    pub max_agent_connections: u32,
    /// How new VPSes are placed on nodes.
    pub scheduler: SchedulerConfig,
    /// What to do with a VPS a node runs that the controller does not know.
    pub orphan_policy: OrphanPolicy,
    /// Quota given to a tenant created without explicit limits.
    pub default_quota: QuotaDefaults,
    /// Absolute bounds on every VPS's and plan's resources, for admins too.
    pub vps_limits: VpsLimits,
}

/// The store backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Embedded sled database in the data dir.
    #[default]
    Sled,
    /// An etcd v3 cluster.
    Etcd,
}

/// Placement policy. Per-node ratios can be overridden with the node labels
/// `paddock.io/cpu-overcommit`, `paddock.io/memory-overcommit`, `paddock.io/disk-overcommit`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// `spread` (most free memory first) or `binpack` (fullest node that fits).
    pub strategy: SchedulerStrategy,
    /// How many vCPUs may be promised per physical CPU.
    pub cpu_overcommit: f64,
    /// How much memory may be promised per byte of RAM.
    pub memory_overcommit: f64,
    /// How much disk may be promised per byte of the agent's state-dir filesystem.
    pub disk_overcommit: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            strategy: SchedulerStrategy::Spread,
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
            disk_overcommit: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerStrategy {
    Spread,
    Binpack,
}

/// Handling of VPSes found on a node but unknown to the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrphanPolicy {
    /// Log them (the safe default: a controller restored from an old backup
    /// must not destroy VPSes created since).
    Report,
    /// Delete them from the node.
    Remove,
}

/// Default limits of a new tenant.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaDefaults {
    pub max_vps: u32,
    pub vcpus: f64,
    pub memory: ByteSize,
    pub disk: ByteSize,
    pub ipv4: u32,
}

impl Default for QuotaDefaults {
    fn default() -> Self {
        Self {
            max_vps: 10,
            vcpus: 16.0,
            memory: ByteSize(32 * 1024 * 1024 * 1024),
            disk: ByteSize(400 * 1024 * 1024 * 1024),
            ipv4: 10,
        }
    }
}

/// Absolute bounds on the resources of any VPS or plan, whoever asks (admin
/// tokens included). What a tenant may choose is narrower: see
/// `controller/src/limits.rs` and docs/ARCHITECTURE.md.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpsLimits {
    /// The least memory a VPS may have (its init and a shell must fit).
    pub min_memory: ByteSize,
    /// The most memory one VPS may have.
    pub max_memory: ByteSize,
    /// The smallest disk the agent makes (an ext4 image the template fits on).
    pub min_disk: ByteSize,
    /// The largest disk of one VPS.
    pub max_disk: ByteSize,
    /// The most swap one VPS may have.
    pub max_swap: ByteSize,
    /// The most processes one VPS may have (`pids.max`); keep it well under
    /// the host's `kernel.pid_max`.
    pub max_pids: u64,
}

impl Default for VpsLimits {
    fn default() -> Self {
        const MIB: u64 = 1024 * 1024;
        Self {
            min_memory: ByteSize(64 * MIB),
            max_memory: ByteSize(4 * 1024 * 1024 * MIB),
            min_disk: ByteSize(256 * MIB),
            max_disk: ByteSize(64 * 1024 * 1024 * MIB),
            max_swap: ByteSize(64 * 1024 * MIB),
            max_pids: 65_536,
        }
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7453))),
            tls_sans: Vec::new(),
            data_dir: PathBuf::from("/var/lib/paddock/controller"),
            store: StoreBackend::Sled,
            etcd_endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            etcd_prefix: "/paddock/".to_owned(),
            leader_lease_secs: 4,
            heartbeat_interval_secs: 5,
            node_offline_after_secs: 30,
            reconcile_interval_secs: 10,
            full_resync_interval_secs: 1800,
            max_agent_connections: 0,
            orphan_policy: OrphanPolicy::Report,
            scheduler: SchedulerConfig::default(),
            default_quota: QuotaDefaults::default(),
            vps_limits: VpsLimits::default(),
        }
    }
}

impl ControllerConfig {
    /// Loads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = load_toml(path)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason: reason.to_owned(),
        };
        if self.store == StoreBackend::Etcd && self.etcd_endpoints.is_empty() {
            return Err(invalid(
                "etcd_endpoints",
                "needs at least one URL with store = \"etcd\"",
            ));
        }
        if self.etcd_prefix.is_empty() || !self.etcd_prefix.ends_with('/') {
            return Err(invalid("etcd_prefix", "must be non-empty and end with '/'"));
        }
        if !(2..=60).contains(&self.leader_lease_secs) {
            return Err(invalid(
                "leader_lease_secs",
                "must be between 2 and 60 seconds",
            ));
        }
        if self.heartbeat_interval_secs == 0 {
            return Err(invalid("heartbeat_interval_secs", "must be at least 1"));
        }
        if self.node_offline_after_secs <= self.heartbeat_interval_secs {
            return Err(invalid(
                "node_offline_after_secs",
                "must be longer than heartbeat_interval_secs",
            ));
        }
        let ratios = [
            ("scheduler.cpu_overcommit", self.scheduler.cpu_overcommit),
            (
                "scheduler.memory_overcommit",
                self.scheduler.memory_overcommit,
            ),
            ("scheduler.disk_overcommit", self.scheduler.disk_overcommit),
        ];
        for (field, ratio) in ratios {
            if !ratio.is_finite() || ratio <= 0.0 {
                return Err(invalid(field, "must be a number greater than 0"));
            }
        }
        if self.reconcile_interval_secs == 0 {
            return Err(invalid("reconcile_interval_secs", "must be at least 1"));
        }
        let limits = &self.vps_limits;
        if limits.min_memory.0 == 0 || limits.min_memory.0 > limits.max_memory.0 {
            return Err(invalid(
                "vps_limits.min_memory",
                "must be greater than 0 and at most vps_limits.max_memory",
            ));
        }
        if limits.min_disk.0 == 0 || limits.min_disk.0 > limits.max_disk.0 {
            return Err(invalid(
                "vps_limits.min_disk",
                "must be greater than 0 and at most vps_limits.max_disk",
            ));
        }
        if limits.max_pids < MIN_PIDS {
            return Err(invalid(
                "vps_limits.max_pids",
                "must be at least 16 (a VPS's init and a shell need a few processes)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile_lite::TempFile, PathBuf) {
        let file = tempfile_lite::TempFile::new(text);
        let path = file.path.clone();
        (file, path)
    }

    /// A tiny temp file helper so this crate needs no dev-dependencies.
    mod tempfile_lite {
        use std::path::PathBuf;

        pub struct TempFile {
            pub path: PathBuf,
        }

        impl TempFile {
            pub fn new(text: &str) -> Self {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let path = std::env::temp_dir().join(format!(
                    "paddock-config-test-{}-{n}.toml",
                    std::process::id()
                ));
                std::fs::write(&path, text).expect("write temp config");
                Self { path }
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let (_guard, path) = write("");
        let config = ControllerConfig::load(&path).expect("load");
        assert_eq!(config.listen.port(), 7443);
        assert_eq!(config.default_quota.max_vps, 10);
    }

    #[test]
    fn vps_limits_default_and_must_be_consistent() {
        let (_guard, path) = write("");
        let config = ControllerConfig::load(&path).expect("load");
        assert_eq!(config.vps_limits.max_pids, 65_536);
        assert_eq!(config.vps_limits.min_memory, ByteSize(64 << 20));
        let (_guard, path) = write("[vps_limits]\nmin_memory = \"8GiB\"\nmax_memory = \"4GiB\"\n");
        let error = ControllerConfig::load(&path).expect_err("min above max");
        assert!(
            error.to_string().contains("vps_limits.min_memory"),
            "{error}"
        );
        let (_guard, path) = write("[vps_limits]\nmax_pids = 4\n");
        let error = ControllerConfig::load(&path).expect_err("too few pids");
        assert!(error.to_string().contains("vps_limits.max_pids"), "{error}");
        let (_guard, path) = write("[vps_limits]\nmax_pid = 4\n");
        assert!(ControllerConfig::load(&path).is_err(), "unknown field");
    }

    #[test]
    fn metrics_endpoint_is_on_by_default_and_turns_off_with_off() {
        let (_guard, path) = write("");
        let config = ControllerConfig::load(&path).expect("load");
        assert_eq!(
            config.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 7453)))
        );
        let (_guard, path) = write("metrics_listen = \"off\"\n");
        let config = ControllerConfig::load(&path).expect("load");
        assert_eq!(config.metrics_listen, None);
    }

    #[test]
    fn unknown_field_is_rejected_by_name() {
        let (_guard, path) = write("listne = \"127.0.0.1:1\"\n");
        let err = ControllerConfig::load(&path)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn sizes_parse_in_quota() {
        let (_guard, path) = write("[default_quota]\nmemory = \"4GiB\"\ndisk = 1024\n");
        let config = ControllerConfig::load(&path).expect("load");
        assert_eq!(config.default_quota.memory, ByteSize(4 << 30));
        assert_eq!(config.default_quota.disk, ByteSize(1024));
    }

    #[test]
    fn shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("controller.toml");
        ControllerConfig::load(&path).expect("config/controller.toml must load");
    }

    #[test]
    fn offline_timeout_must_exceed_heartbeat() {
        let (_guard, path) = write("heartbeat_interval_secs = 10\nnode_offline_after_secs = 5\n");
        let err = ControllerConfig::load(&path)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("node_offline_after_secs"), "{err}");
    }
}
