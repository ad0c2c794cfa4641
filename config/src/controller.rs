//! `paddock-controller` configuration (`config/controller.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{load_toml, ByteSize, ConfigError};

/// Configuration of the controller process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Address of the gRPC API (CLI, billing, agents).
    pub listen: SocketAddr,
    /// Where the sled store, the admin and join tokens live.
    pub data_dir: PathBuf,
    /// How often agents are asked to send a heartbeat.
    pub heartbeat_interval_secs: u32,
    /// A node with no heartbeat for this long is `offline`.
    pub node_offline_after_secs: u32,
    /// How often every node is reconciled even when nothing changed.
    pub reconcile_interval_secs: u32,
    /// Quota given to a tenant created without explicit limits.
    pub default_quota: QuotaDefaults,
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

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            data_dir: PathBuf::from("/var/lib/paddock/controller"),
            heartbeat_interval_secs: 5,
            node_offline_after_secs: 30,
            reconcile_interval_secs: 10,
            default_quota: QuotaDefaults::default(),
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
        if self.heartbeat_interval_secs == 0 {
            return Err(invalid("heartbeat_interval_secs", "must be at least 1"));
        }
        if self.node_offline_after_secs <= self.heartbeat_interval_secs {
            return Err(invalid(
                "node_offline_after_secs",
                "must be longer than heartbeat_interval_secs",
            ));
        }
        if self.reconcile_interval_secs == 0 {
            return Err(invalid("reconcile_interval_secs", "must be at least 1"));
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
