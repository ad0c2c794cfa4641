//! Which restart request the agent has already carried out, per VPS, kept
//! on disk so a restarted agent never repeats (or forgets) a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the generation file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt {path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// vps_id -> the last restart generation applied.
pub struct RestartGenerations {
    path: PathBuf,
    applied: Mutex<HashMap<String, u64>>,
}

impl RestartGenerations {
    pub fn load(state_dir: &Path) -> Result<Self, GenerationError> {
        let path = state_dir.join("restart-generations.json");
        let applied = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| GenerationError::Corrupt {
                    path: path.clone(),
                    source,
                })?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(source) => {
                return Err(GenerationError::Io {
                    op: "reading",
                    path,
                    source,
                })
            }
        };
        Ok(Self {
            path,
            applied: Mutex::new(applied),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        match self.applied.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The last restart generation carried out for the VPS, if it has been applied since it
    /// was created. A VPS's worker reads it once when it starts and keeps it.
    pub fn applied(&self, vps_id: &str) -> Option<u64> {
        self.map().get(vps_id).copied()
    }

    pub fn record(&self, vps_id: &str, generation: u64) -> Result<(), GenerationError> {
        let mut map = self.map();
        if map.get(vps_id) == Some(&generation) {
            return Ok(());
        }
        map.insert(vps_id.to_owned(), generation);
        self.save(&map)
    }

    pub fn forget(&self, vps_id: &str) -> Result<(), GenerationError> {
        let mut map = self.map();
        if map.remove(vps_id).is_some() {
            self.save(&map)?;
        }
        Ok(())
    }

    fn save(&self, map: &HashMap<String, u64>) -> Result<(), GenerationError> {
        let bytes = serde_json::to_vec(map).unwrap_or_default();
        crate::fsutil::write_atomic(&self.path, &bytes).map_err(|e| GenerationError::Io {
            op: e.operation,
            path: e.path,
            source: e.source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_apply_once_and_survive_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let generations = RestartGenerations::load(dir.path()).expect("load");
        assert_eq!(generations.applied("a"), None, "first sight");
        generations.record("a", 3).expect("record");
        assert_eq!(generations.applied("a"), Some(3));
        let reloaded = RestartGenerations::load(dir.path()).expect("reload");
        assert_eq!(reloaded.applied("a"), Some(3));
        reloaded.forget("a").expect("forget");
        assert_eq!(
            RestartGenerations::load(dir.path())
                .expect("load")
                .applied("a"),
            None
        );
    }
}
