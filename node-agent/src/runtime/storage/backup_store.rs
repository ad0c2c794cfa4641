//! Where backups live: a directory (local, or the provider's shared mount), or an
//! S3-compatible bucket that every node reaches, with the directory as the spool an archive is
//! written to before its upload and downloaded to before its restore.
//!
//! In a bucket a backup is two objects, `<prefix><id>.tar.zst` and then
//! `<prefix><id>.manifest.json`: the manifest is uploaded last, so a backup without one is
//! incomplete and never restored (as in a directory). A restore downloads both into a private
//! spool directory of its own and verifies the archive against the manifest before anything of
//! the VPS changes, exactly as for a local backup; the spool copy is removed afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use paddock_config::AgentConfig;

use super::backup::{BackupError, LocalStore, Manifest};
use super::s3::{Bucket, S3Error};
use crate::runtime::{Runtime, RuntimeError};

/// A backup as stored: its manifest and where it is, for people (`local:/path` or
/// `s3://bucket/key`).
#[derive(Debug, Clone)]
pub struct StoredBackup {
    pub manifest: Manifest,
    pub location: String,
}

/// The node's backup store.
#[derive(Debug, Clone)]
pub enum BackupStore {
    /// Archives and manifests in a directory.
    Local(LocalStore),
    /// Archives and manifests in a bucket; `spool` holds them only while they move.
    S3 {
        spool: LocalStore,
        bucket: Arc<Bucket>,
    },
}

impl BackupStore {
    /// The store the agent config names: `[backup_s3]` if set (spooling in `backup_dir`),
    /// else the `backup_dir` directory.
    pub fn from_config(config: &AgentConfig) -> Result<Self, S3Error> {
        let dir = LocalStore::new(config.backup_dir());
        Ok(match &config.backup_s3 {
            Some(s3) => Self::S3 {
                spool: dir,
                bucket: Arc::new(Bucket::from_config(s3)?),
            },
            None => Self::Local(dir),
        })
    }

    /// Takes backup `backup_id` of VPS `vps_id` (see [`Runtime::backup`]) and, for a bucket,
    /// uploads it. Idempotent: a backup already complete in the store is returned as it is.
    pub fn take(
        &self,
        runtime: &Runtime,
        vps_id: &str,
        backup_id: &str,
        spec_json: &str,
    ) -> Result<StoredBackup, RuntimeError> {
        let backup_err = |source: BackupError| RuntimeError::Backup {
            vps_id: vps_id.to_string(),
            source: Box::new(source),
        };
        match self {
            Self::Local(store) => {
                let taken = runtime.backup(vps_id, backup_id, store, spec_json)?;
                Ok(StoredBackup {
                    manifest: taken.manifest,
                    location: format!("local:{}", taken.location.display()),
                })
            }
            Self::S3 { spool, bucket } => {
                let archive_key = bucket.key(&format!("{backup_id}.tar.zst"));
                if let Some(manifest) = remote_manifest(bucket, backup_id).map_err(backup_err)? {
                    return Ok(StoredBackup {
                        manifest,
                        location: bucket.location(&archive_key),
                    });
                }
                let taken = runtime.backup(vps_id, backup_id, spool, spec_json)?;
                let upload = || -> Result<(), BackupError> {
                    bucket.put_file(
                        &archive_key,
                        &taken.location,
                        Some(&taken.manifest.archive_sha256),
                    )?;
                    let manifest = serde_json::to_vec_pretty(&taken.manifest)
                        .map_err(|e| BackupError::Malformed(e.to_string()))?;
                    bucket.put_bytes(&manifest_key(bucket, backup_id), &manifest)?;
                    Ok(())
                };
                let uploaded = upload();
                // Uploaded or not, the spool copy goes: a retry takes the backup afresh.
                if let Err(error) = spool.delete(backup_id) {
                    tracing::warn!(backup_id, %error, "removing a spooled backup");
                }
                uploaded.map_err(backup_err)?;
                tracing::info!(
                    vps_id,
                    backup_id,
                    bucket = bucket.name(),
                    bytes = taken.manifest.archive_bytes,
                    "uploaded backup"
                );
                Ok(StoredBackup {
                    manifest: taken.manifest,
                    location: bucket.location(&archive_key),
                })
            }
        }
    }

    /// Restores backup `backup_id` into VPS `vps_id` (see [`Runtime::restore_backup`]); for a
    /// bucket, downloads it first into a spool directory of this restore's own.
    pub fn restore(
        &self,
        runtime: &Runtime,
        vps_id: &str,
        backup_id: &str,
    ) -> Result<Manifest, RuntimeError> {
        let backup_err = |source: BackupError| RuntimeError::Backup {
            vps_id: vps_id.to_string(),
            source: Box::new(source),
        };
        match self {
            Self::Local(store) => runtime.restore_backup(vps_id, backup_id, store),
            Self::S3 { spool, bucket } => {
                super::backup::validate_id(backup_id).map_err(backup_err)?;
                let download = LocalStore::new(spool.dir().join(format!(
                    ".download-{backup_id}-{}",
                    DOWNLOADS.fetch_add(1, Ordering::Relaxed)
                )));
                let restored = fetch(bucket, &download, backup_id)
                    .map_err(backup_err)
                    .and_then(|()| runtime.restore_backup(vps_id, backup_id, &download));
                if let Err(error) = std::fs::remove_dir_all(download.dir()) {
                    if error.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(backup_id, %error, "removing a downloaded backup");
                    }
                }
                restored
            }
        }
    }

    /// Removes a backup (absent is fine): the manifest first, so a half-removed backup is an
    /// incomplete one, never a restorable one.
    pub fn delete(&self, backup_id: &str) -> Result<(), BackupError> {
        match self {
            Self::Local(store) => store.delete(backup_id),
            Self::S3 { spool, bucket } => {
                super::backup::validate_id(backup_id)?;
                bucket.delete(&manifest_key(bucket, backup_id))?;
                bucket.delete(&bucket.key(&format!("{backup_id}.tar.zst")))?;
                spool.delete(backup_id)
            }
        }
    }
}

/// Numbers the download directories of concurrent restores.
static DOWNLOADS: AtomicU64 = AtomicU64::new(0);

fn manifest_key(bucket: &Bucket, backup_id: &str) -> String {
    bucket.key(&format!("{backup_id}.manifest.json"))
}

/// The manifest of a complete backup in the bucket, `None` if it has none.
fn remote_manifest(bucket: &Bucket, backup_id: &str) -> Result<Option<Manifest>, BackupError> {
    let key = manifest_key(bucket, backup_id);
    match bucket.get_bytes(&key) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| BackupError::BadManifest {
                    backup_id: backup_id.to_string(),
                    path: bucket.location(&key).into(),
                    reason: e.to_string(),
                })
        }
        Err(S3Error::NotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Downloads backup `backup_id`'s manifest and archive into `download` (completed as in any
/// store: the archive renamed into place, the manifest written last). A backup without a
/// manifest in the bucket is `NotFound`.
fn fetch(bucket: &Bucket, download: &LocalStore, backup_id: &str) -> Result<(), BackupError> {
    let Some(manifest) = remote_manifest(bucket, backup_id)? else {
        return Err(BackupError::NotFound(backup_id.to_string()));
    };
    download.ensure_dir()?;
    let partial = download.partial_path(backup_id);
    match bucket.get_to_file(&bucket.key(&format!("{backup_id}.tar.zst")), &partial) {
        Ok(_) => {}
        Err(S3Error::NotFound { .. }) => return Err(BackupError::NotFound(backup_id.to_string())),
        Err(error) => return Err(error.into()),
    }
    download.complete(backup_id, &manifest).map(drop)
}
