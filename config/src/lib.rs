//! Typed configuration shared by the Paddock binaries.
//!
//! Every field has a default where one makes sense; unknown fields are
//! rejected with their name so a typo never silently falls back to a default.

mod agent;
mod controller;
mod optional_addr;
mod size;

use std::path::{Path, PathBuf};

pub use agent::{
    AgentConfig, HostPort, Isolation, ProcViewKind, S3Store, Transport, PORT_GSO_MAX_BYTES,
    PORT_GSO_MIN_BYTES,
};
pub use controller::{
    ControllerConfig, OrphanPolicy, QuotaDefaults, SchedulerConfig, SchedulerStrategy,
    StoreBackend, VpsLimits, MIN_PIDS,
};
use serde::de::DeserializeOwned;
pub use size::{ByteSize, SizeError};

/// Why a configuration file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config file {path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

/// Loads a TOML file into `T`, naming the file in every error.
pub(crate) fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}
