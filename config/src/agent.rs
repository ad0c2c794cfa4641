//! `paddock-agent` configuration (`config/agent.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{load_toml, ConfigError};

/// Configuration of a node agent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Name of this node in the controller; defaults to the host name.
    pub node_name: Option<String>,
    /// Address of the agent's own gRPC service (called by the controller).
    pub listen: SocketAddr,
    /// Address the controller should dial; defaults to `http://<listen>`.
    pub advertise_address: Option<String>,
    /// The controller's gRPC endpoint.
    pub controller: String,
    /// File holding the node join token issued by `paddock-controller init`.
    pub join_token_file: PathBuf,
    /// Templates, VPS root filesystems, console logs and the agent journal.
    pub state_dir: PathBuf,
    /// Parent cgroup (under every controller hierarchy) of all VPS cgroups.
    pub cgroup_parent: String,
    /// How long a stopping VPS gets after its power-off signal before SIGKILL.
    pub stop_grace_secs: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_name: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 7444)),
            advertise_address: None,
            controller: "http://127.0.0.1:7443".to_owned(),
            join_token_file: PathBuf::from("/var/lib/paddock/controller/join-token"),
            state_dir: PathBuf::from("/var/lib/paddock/agent"),
            cgroup_parent: "paddock".to_owned(),
            stop_grace_secs: 10,
        }
    }
}

impl AgentConfig {
    /// Loads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = load_toml(path)?;
        let invalid = |field, reason: &str| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason: reason.to_owned(),
        };
        if config.cgroup_parent.is_empty()
            || config.cgroup_parent.starts_with('/')
            || config
                .cgroup_parent
                .split('/')
                .any(|part| part == ".." || part.is_empty())
        {
            return Err(invalid(
                "cgroup_parent",
                "must be a relative cgroup path without empty or '..' components",
            ));
        }
        if !config.controller.starts_with("http://") && !config.controller.starts_with("https://") {
            return Err(invalid("controller", "must start with http:// or https://"));
        }
        Ok(config)
    }

    /// The address the controller dials to reach this agent.
    pub fn advertised(&self) -> String {
        self.advertise_address
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.toml");
        let config = AgentConfig::load(&path).expect("config/agent.toml must load");
        assert_eq!(config.cgroup_parent, "paddock");
    }

    #[test]
    fn rejects_unknown_and_escaping_fields() {
        let dir = std::env::temp_dir().join(format!("paddock-agent-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let unknown = dir.join("unknown.toml");
        std::fs::write(&unknown, "stop_grace = 3\n").expect("write");
        let err = AgentConfig::load(&unknown)
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("stop_grace"), "{err}");
        let escaping = dir.join("escaping.toml");
        std::fs::write(&escaping, "cgroup_parent = \"../x\"\n").expect("write");
        let err = AgentConfig::load(&escaping)
            .expect_err("escaping")
            .to_string();
        assert!(err.contains("cgroup_parent"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
