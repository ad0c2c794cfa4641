//! Cold migration on the node: the archive of a stopped VPS leaves through the controller and
//! a VPS's disk is replaced by one that arrives. The archive is the backup format
//! ([`super::backup`]): owner ids stored as the VPS sees them, restored under this node's id
//! range, so the move shifts every file's host ids from the source's range to ours.
//!
//! Archives wait in the node's private spool, `<state_dir>/migrations/{export,import}` (0700,
//! never the shared backup store: another node must not read them). A spool copy lives only
//! as long as one transfer; the agent empties the spool when it starts, since a transfer never
//! survives an agent restart (the controller retries or rolls back the step).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::backup::{BackupError, LocalStore, Manifest};
use crate::runtime::{Runtime, RuntimeError};

/// How much of an archive one streamed message carries.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// The node's migration spool.
#[derive(Debug, Clone)]
pub struct MigrationSpool {
    dir: PathBuf,
    export: LocalStore,
    import: LocalStore,
}

impl MigrationSpool {
    /// The spool under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        let dir = state_dir.join("migrations");
        Self {
            export: LocalStore::new(dir.join("export")),
            import: LocalStore::new(dir.join("import")),
            dir,
        }
    }

    /// Removes whatever an earlier run of the agent left (absent is fine).
    pub fn clear(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes one transfer's archive from both halves (absent is fine).
    pub fn forget(&self, migration_id: &str) -> Result<(), BackupError> {
        self.export.delete(migration_id)?;
        self.import.delete(migration_id)
    }
}

/// An archive ready to stream: its manifest and an open reader.
pub struct Outgoing {
    pub manifest: Manifest,
    pub reader: BufReader<File>,
}

impl Outgoing {
    /// The next chunk of at most [`CHUNK_BYTES`]; empty at the end.
    pub fn next_chunk(&mut self) -> io::Result<Vec<u8>> {
        let mut chunk = Vec::with_capacity(CHUNK_BYTES);
        (&mut self.reader)
            .take(CHUNK_BYTES as u64)
            .read_to_end(&mut chunk)?;
        Ok(chunk)
    }
}

impl Runtime {
    /// Archives stopped VPS `vps_id` into the export spool as `migration_id` and opens it for
    /// streaming (a retry archives afresh). Refused while the VPS runs: the copy is cold.
    pub fn export_vps(
        &self,
        vps_id: &str,
        migration_id: &str,
        spool: &MigrationSpool,
        spec_json: &str,
    ) -> Result<Outgoing, RuntimeError> {
        let backup_err = |source| RuntimeError::Backup {
            vps_id: vps_id.to_string(),
            source: Box::new(source),
        };
        let st = self
            .load(vps_id)?
            .ok_or_else(|| RuntimeError::NotFound(vps_id.to_string()))?;
        if self.live_init(&st)?.is_some() {
            return Err(backup_err(BackupError::Running));
        }
        spool.export.delete(migration_id).map_err(backup_err)?;
        let taken = self.backup(vps_id, migration_id, &spool.export, spec_json)?;
        let file = File::open(&taken.location).map_err(|e| {
            backup_err(BackupError::Io {
                operation: "open",
                path: taken.location.clone(),
                source: e,
            })
        })?;
        Ok(Outgoing {
            manifest: taken.manifest,
            reader: BufReader::new(file),
        })
    }

    /// Receives migration `migration_id`'s archive for VPS `vps_id` (already applied here,
    /// stopped) from `archive`, checks it against `manifest` and replaces the VPS's disk with
    /// it under this node's id range. The spool copy is removed either way.
    pub fn import_vps(
        &self,
        vps_id: &str,
        migration_id: &str,
        spool: &MigrationSpool,
        manifest: &Manifest,
        archive: &mut impl Read,
    ) -> Result<(), RuntimeError> {
        let backup_err = |source| RuntimeError::Backup {
            vps_id: vps_id.to_string(),
            source: Box::new(source),
        };
        let result = spool
            .import
            .receive(migration_id, manifest, archive)
            .map_err(backup_err)
            .and_then(|()| {
                self.restore_backup(vps_id, migration_id, &spool.import)
                    .map(drop)
            });
        if let Err(error) = spool.import.delete(migration_id) {
            tracing::warn!(vps_id, migration_id, %error, "removing the imported archive");
        }
        result
    }
}
