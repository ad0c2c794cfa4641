//! VPS backups: a node-independent archive of a VPS's own files and spec, in a backup store.
//!
//! An archive is a zstd-compressed tar. Its first member is `spec.json` (the VPS's spec as the
//! controller sent it: plan, template, hostname, resources); then `upper/`, the VPS's writable
//! layer (the overlay's upperdir on its disk, whiteouts and opaque-directory xattrs included:
//! the template under it is shared and named in the spec). Owner ids are stored as the VPS
//! sees them (host id − the VPS's `host_base`), so an archive restores under any id range on
//! any node. Hard links stay hard links, symlinks, modes, mtimes, devices (whiteouts) and
//! extended attributes are kept (as PAX records `PADDOCK.xattr.<name>` with hex values, since
//! tar readers split PAX records at newlines; overlayfs's `trusted.overlay.origin`, a file
//! handle on the node that took the backup, is left out).
//!
//! Beside the archive the store keeps a [`Manifest`]: SHA-256 and length of the compressed
//! file and of the tar stream inside. A restore verifies the file against it before it touches
//! anything, extracts into a fresh image (checking the tar stream's hash again at its end),
//! and only then swaps that image in — a corrupted or truncated archive changes nothing.
//!
//! The disk is read and written by two single-threaded helpers (`__internal backup` and
//! `__internal restore`), which mount it in a private mount namespace of their own, like the
//! grow-disk helper: for a running VPS the same loop device again (the same superblock, frozen
//! by the agent around the copy and synced first: crash-consistent), for a stopped one the
//! image through a fresh autoclear loop device that dies with the helper's namespace.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::disk::{self, DiskError};
use crate::fsutil::{FromIo, WriteError};
use crate::runtime::isolation::idmap::{IdRange, ID_RANGE_SIZE};
use crate::runtime::isolation::{namespaces, rootfs};
use crate::runtime::process::helper::{self, HelperError, BACKUP, RESTORE};
use crate::runtime::{sys, Runtime, RuntimeError};

/// Version of the archive layout written by this agent.
pub const FORMAT_VERSION: u32 = 1;
/// The member holding the VPS's spec.
const SPEC_MEMBER: &str = "spec.json";
/// The directory member holding the VPS's writable layer.
const UPPER_MEMBER: &str = "upper";
/// The id a host id outside the VPS's range is stored as (the overflow id, "nobody").
const OVERFLOW_ID: u32 = 65534;
/// PAX record key prefix of an extended attribute; the value is hex (tar readers split PAX
/// records at newlines, which binary values such as overlayfs's contain).
const XATTR_PAX_PREFIX: &str = "PADDOCK.xattr.";
/// overlayfs's record of a copied-up file's lower inode (a file handle): not archived.
const ORIGIN_XATTR: &[u8] = b"trusted.overlay.origin";
/// zstd level: fast, still about 3× on typical system files.
const ZSTD_LEVEL: i32 = 3;

/// Errors taking, checking or restoring a backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was done.
        operation: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// Mounting the disk failed.
    #[error("{0}")]
    Disk(#[from] DiskError),
    /// The backup id is not a valid name.
    #[error("invalid backup id {0:?}: must match ^[a-z0-9][a-z0-9-]{{0,62}}$")]
    BadId(String),
    /// No such backup in the store.
    #[error("backup {0} not found in the backup store")]
    NotFound(String),
    /// The manifest does not parse.
    #[error("backup {backup_id}: manifest {path} is unreadable: {reason}")]
    BadManifest {
        /// The backup.
        backup_id: String,
        /// The manifest file.
        path: PathBuf,
        /// Why it is unreadable.
        reason: String,
    },
    /// The archive's length or checksum differs from its manifest's: corrupted or truncated.
    #[error(
        "backup {backup_id} is corrupted or truncated: {what} is {actual}, the manifest says \
         {expected}; nothing was changed"
    )]
    Corrupt {
        /// The backup.
        backup_id: String,
        /// Which property differs.
        what: &'static str,
        /// The manifest's value.
        expected: String,
        /// The archive's.
        actual: String,
    },
    /// The VPS has nothing to back up yet (never started: no id range or disk).
    #[error("the VPS cannot be backed up yet: {0}")]
    NotReady(&'static str),
    /// A cold migration copies a stopped VPS only.
    #[error("the VPS is running; a cold migration copies it stopped (stop it first)")]
    Running,
    /// The archive's content is not what this agent writes.
    #[error("backup archive is malformed: {0}")]
    Malformed(String),
    /// The helper failed.
    #[error("{0}")]
    Helper(#[from] helper::HelperCallError),
    /// The external object store failed.
    #[error("backup store: {0}")]
    ObjectStore(#[from] super::s3::S3Error),
}

impl FromIo for BackupError {
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self::Io {
            operation,
            path,
            source,
        }
    }
}

/// What the store keeps beside each archive; written after the archive, so a backup without
/// a manifest is incomplete and never restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format: u32,
    /// The backup's id.
    pub backup_id: String,
    /// The VPS it was taken of.
    pub vps_id: String,
    /// When it was taken (Unix seconds).
    pub created_unix: u64,
    /// Length of the compressed archive file.
    pub archive_bytes: u64,
    /// SHA-256 of the compressed archive file, hex.
    pub archive_sha256: String,
    /// Length of the tar stream inside.
    pub tar_bytes: u64,
    /// SHA-256 of the tar stream inside, hex.
    pub tar_sha256: String,
}

/// Checks a backup id: the same rule as names and VPS ids (it is a file name in the store).
pub fn validate_id(backup_id: &str) -> Result<(), BackupError> {
    let mut chars = backup_id.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if first_ok && rest_ok && backup_id.len() <= 63 {
        Ok(())
    } else {
        Err(BackupError::BadId(backup_id.to_string()))
    }
}

/// A backup store in a local directory (shared between nodes by the provider's own mount:
/// NFS, a cluster filesystem). Each backup is `<id>.tar.zst` plus `<id>.manifest.json`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// The store in `dir` (created 0700 on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where backup `backup_id`'s archive lives.
    pub fn archive_path(&self, backup_id: &str) -> PathBuf {
        self.dir.join(format!("{backup_id}.tar.zst"))
    }

    pub(crate) fn manifest_path(&self, backup_id: &str) -> PathBuf {
        self.dir.join(format!("{backup_id}.manifest.json"))
    }

    /// A temp path in the store for an archive being written.
    pub(crate) fn partial_path(&self, backup_id: &str) -> PathBuf {
        self.dir.join(format!(".{backup_id}.tar.zst.partial"))
    }

    pub(crate) fn ensure_dir(&self) -> Result<(), BackupError> {
        crate::fsutil::create_private_dir_all(&self.dir).map_err(WriteError::into_io)
    }

    /// Makes backup `backup_id` complete: its archive, written to the partial path, renamed
    /// into place, then its manifest written (last: a backup without one is never restored).
    /// Returns where the archive is.
    pub(crate) fn complete(
        &self,
        backup_id: &str,
        manifest: &Manifest,
    ) -> Result<PathBuf, BackupError> {
        let location = self.archive_path(backup_id);
        fs::rename(self.partial_path(backup_id), &location)
            .map_err(BackupError::io_err("rename into place", &location))?;
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| BackupError::Malformed(e.to_string()))?;
        crate::fsutil::write_atomic(&self.manifest_path(backup_id), &json)
            .map_err(WriteError::into_io::<BackupError>)?;
        Ok(location)
    }

    /// The manifest of `backup_id`.
    pub fn manifest(&self, backup_id: &str) -> Result<Manifest, BackupError> {
        validate_id(backup_id)?;
        let path = self.manifest_path(backup_id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BackupError::NotFound(backup_id.to_string()))
            }
            Err(source) => {
                return Err(BackupError::Io {
                    operation: "read",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| BackupError::BadManifest {
            backup_id: backup_id.to_string(),
            path,
            reason: e.to_string(),
        })
    }

    /// Reads the whole archive and checks its length and SHA-256 against the manifest.
    pub fn verify(&self, backup_id: &str) -> Result<Manifest, BackupError> {
        let manifest = self.manifest(backup_id)?;
        let path = self.archive_path(backup_id);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BackupError::NotFound(backup_id.to_string()),
            _ => BackupError::from_io("open", path.clone(), e),
        })?;
        let mut reader = HashingReader::new(BufReader::new(file));
        io::copy(&mut reader, &mut io::sink()).map_err(BackupError::io_err("read", &path))?;
        let (bytes, sha) = reader.finish();
        let corrupt = |what, expected: String, actual: String| BackupError::Corrupt {
            backup_id: backup_id.to_string(),
            what,
            expected,
            actual,
        };
        if bytes != manifest.archive_bytes {
            return Err(corrupt(
                "the archive's length",
                manifest.archive_bytes.to_string(),
                bytes.to_string(),
            ));
        }
        if sha != manifest.archive_sha256 {
            return Err(corrupt(
                "the archive's SHA-256",
                manifest.archive_sha256.clone(),
                sha,
            ));
        }
        Ok(manifest)
    }

    /// Receives an archive written elsewhere (a migration's, streamed through the
    /// controller) as `backup_id`: copies `archive` into a temp file, then puts it and
    /// `manifest` in place. Nothing is trusted yet: [`verify`](Self::verify) checks it.
    pub fn receive(
        &self,
        backup_id: &str,
        manifest: &Manifest,
        archive: &mut impl Read,
    ) -> Result<(), BackupError> {
        validate_id(backup_id)?;
        self.ensure_dir()?;
        let partial = self.partial_path(backup_id);
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)
                .map_err(BackupError::io_err("create", &partial))?;
            io::copy(archive, &mut file).map_err(BackupError::io_err("write", &partial))?;
            file.sync_all()
                .map_err(BackupError::io_err("sync", &partial))?;
            self.complete(backup_id, manifest).map(drop)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&partial);
        }
        written
    }

    /// Removes a backup (absent is fine).
    pub fn delete(&self, backup_id: &str) -> Result<(), BackupError> {
        validate_id(backup_id)?;
        // The manifest first: without it the backup is incomplete and never restored.
        for path in [
            self.manifest_path(backup_id),
            self.archive_path(backup_id),
            self.partial_path(backup_id),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(BackupError::Io {
                        operation: "remove",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Lengths and hashes of a written archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ArchiveSums {
    pub archive_bytes: u64,
    pub archive_sha256: String,
    pub tar_bytes: u64,
    pub tar_sha256: String,
}

/// A host id as the VPS sees it.
fn to_guest(host_id: u32, host_base: u32) -> u32 {
    match host_id.checked_sub(host_base) {
        Some(guest) if guest < ID_RANGE_SIZE => guest,
        _ => OVERFLOW_ID,
    }
}

/// A VPS's id as the host sees it.
fn to_host(guest_id: u64, host_base: u32) -> u32 {
    let guest = u32::try_from(guest_id)
        .ok()
        .filter(|g| *g < ID_RANGE_SIZE)
        .unwrap_or(OVERFLOW_ID);
    host_base + guest
}

/// Writes the archive of `upper` (a VPS's writable layer, owned by ids from `host_base`) with
/// `spec_json` as its spec member to `out`.
pub(crate) fn write_archive(
    upper: &Path,
    host_base: u32,
    spec_json: &[u8],
    out: File,
) -> Result<ArchiveSums, BackupError> {
    let outer = HashingWriter::new(BufWriter::new(out));
    let encoder = zstd::Encoder::new(outer, ZSTD_LEVEL)
        .map_err(BackupError::io_err("start zstd for", upper))?;
    let mut builder = tar::Builder::new(HashingWriter::new(encoder));
    builder.follow_symlinks(false);
    let mut header = tar::Header::new_gnu();
    header.set_size(spec_json.len() as u64);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, SPEC_MEMBER, spec_json)
        .map_err(BackupError::io_err("archive", Path::new(SPEC_MEMBER)))?;
    let mut walker = Walker {
        builder: &mut builder,
        host_base,
        links: HashMap::new(),
    };
    walker.add(upper, Path::new(UPPER_MEMBER))?;
    let inner = builder
        .into_inner()
        .map_err(BackupError::io_err("finish tar of", upper))?;
    let (encoder, tar_bytes, tar_sha256) = inner.finish();
    let outer = encoder
        .finish()
        .map_err(BackupError::io_err("finish zstd of", upper))?;
    let (buffered, archive_bytes, archive_sha256) = outer.finish();
    let file = buffered.into_inner().map_err(|e| {
        BackupError::from_io("write archive of", upper.to_path_buf(), e.into_error())
    })?;
    file.sync_all()
        .map_err(BackupError::io_err("fsync archive of", upper))?;
    Ok(ArchiveSums {
        archive_bytes,
        archive_sha256,
        tar_bytes,
        tar_sha256,
    })
}

struct Walker<'a, W: Write> {
    builder: &'a mut tar::Builder<W>,
    host_base: u32,
    /// (dev, ino) of files with several links → their first member name.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> Walker<'_, W> {
    fn add(&mut self, path: &Path, member: &Path) -> Result<(), BackupError> {
        let meta = fs::symlink_metadata(path).map_err(BackupError::io_err("lstat", path))?;
        let kind = meta.file_type();
        if std::os::unix::fs::FileTypeExt::is_socket(&kind) {
            return Ok(());
        }
        self.add_xattrs(path)?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_uid(u64::from(to_guest(meta.uid(), self.host_base)));
        header.set_gid(u64::from(to_guest(meta.gid(), self.host_base)));
        let archive_err = BackupError::io_err("archive", path);
        if kind.is_dir() {
            header.set_size(0);
            self.builder
                .append_data(&mut header, member, io::empty())
                .map_err(archive_err)?;
            let mut names: Vec<OsString> = fs::read_dir(path)
                .map_err(BackupError::io_err("read dir", path))?
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(BackupError::io_err("read dir", path))?;
            names.sort();
            for name in names {
                self.add(&path.join(&name), &member.join(&name))?;
            }
        } else if kind.is_symlink() {
            let target = fs::read_link(path).map_err(BackupError::io_err("readlink", path))?;
            header.set_size(0);
            self.builder
                .append_link(&mut header, member, target)
                .map_err(archive_err)?;
        } else if kind.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&key) {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    let first = first.clone();
                    return self
                        .builder
                        .append_link(&mut header, member, first)
                        .map_err(archive_err);
                }
                self.links.insert(key, member.to_path_buf());
            }
            let file = File::open(path).map_err(BackupError::io_err("open", path))?;
            self.builder
                .append_data(&mut header, member, file)
                .map_err(archive_err)?;
        } else {
            // Character and block devices (overlay whiteouts are 0:0 char devices), fifos.
            let rdev = meta.rdev();
            let major = u32::try_from(nix::sys::stat::major(rdev)).unwrap_or(0);
            let minor = u32::try_from(nix::sys::stat::minor(rdev)).unwrap_or(0);
            header
                .set_device_major(major)
                .and_then(|()| header.set_device_minor(minor))
                .map_err(BackupError::io_err("archive device", path))?;
            header.set_size(0);
            self.builder
                .append_data(&mut header, member, io::empty())
                .map_err(archive_err)?;
        }
        Ok(())
    }

    /// Precedes the next member with its extended attributes as PAX records.
    fn add_xattrs(&mut self, path: &Path) -> Result<(), BackupError> {
        let names = sys::list_xattrs(path).map_err(BackupError::io_err("list xattrs of", path))?;
        if names.is_empty() {
            return Ok(());
        }
        let mut records = Vec::new();
        for name in names {
            // A file handle of the template's inode on the node that took the backup:
            // meaningless anywhere else.
            if name == ORIGIN_XATTR {
                continue;
            }
            let value =
                sys::get_xattr(path, &name).map_err(BackupError::io_err("read xattr of", path))?;
            let key = format!("{XATTR_PAX_PREFIX}{}", String::from_utf8_lossy(&name));
            records.push((key, hex::encode(value).into_bytes()));
        }
        if records.is_empty() {
            return Ok(());
        }
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(BackupError::io_err("archive xattrs of", path))
    }
}

/// Extracts an archive's `upper/` into `root` (making `root/upper`), owner ids shifted to
/// `host_base`; checks the tar stream against `tar_sha256` at the end. Returns the spec.
pub(crate) fn extract_archive(
    archive: &Path,
    root: &Path,
    host_base: u32,
    tar_sha256: &str,
) -> Result<Vec<u8>, BackupError> {
    let file = File::open(archive).map_err(BackupError::io_err("open", archive))?;
    let decoder = zstd::Decoder::new(file).map_err(BackupError::io_err("decompress", archive))?;
    let mut hashing = HashingReader::new(decoder);
    let mut spec = Vec::new();
    {
        let mut tar = tar::Archive::new(&mut hashing);
        tar.set_preserve_permissions(true);
        tar.set_preserve_ownerships(false);
        tar.set_preserve_mtime(true);
        // Set by extract_entry for every kind (tar sets them on regular files only).
        tar.set_unpack_xattrs(false);
        tar.set_overwrite(true);
        let entries = tar
            .entries()
            .map_err(BackupError::io_err("read tar of", archive))?;
        for entry in entries {
            let mut entry = entry.map_err(BackupError::io_err("read tar of", archive))?;
            let member = entry
                .path()
                .map_err(BackupError::io_err("read member name in", archive))?
                .into_owned();
            if member == Path::new(SPEC_MEMBER) {
                entry
                    .read_to_end(&mut spec)
                    .map_err(BackupError::io_err("read spec in", archive))?;
                continue;
            }
            if !member.starts_with(UPPER_MEMBER) {
                return Err(BackupError::Malformed(format!(
                    "unexpected member {}",
                    member.display()
                )));
            }
            extract_entry(&mut entry, &member, root, host_base)?;
        }
    }
    // Read what the tar reader left (its end-of-archive blocks), so the hash covers it all.
    io::copy(&mut hashing, &mut io::sink()).map_err(BackupError::io_err("read", archive))?;
    let (_, sha) = hashing.finish();
    if sha != tar_sha256 {
        return Err(BackupError::Malformed(format!(
            "the tar stream's SHA-256 is {sha}, the manifest says {tar_sha256}"
        )));
    }
    if spec.is_empty() {
        return Err(BackupError::Malformed(format!("no {SPEC_MEMBER} member")));
    }
    Ok(spec)
}

fn extract_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    member: &Path,
    root: &Path,
    host_base: u32,
) -> Result<(), BackupError> {
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry
        .pax_extensions()
        .map_err(BackupError::io_err("read pax records of", member))?
    {
        for extension in extensions {
            let extension = extension.map_err(BackupError::io_err("read pax record of", member))?;
            if let Some(name) = extension
                .key()
                .ok()
                .and_then(|key| key.strip_prefix(XATTR_PAX_PREFIX))
            {
                let value = hex::decode(extension.value_bytes()).map_err(|e| {
                    BackupError::Malformed(format!("xattr {name} of {}: {e}", member.display()))
                })?;
                xattrs.push((name.to_string(), value));
            }
        }
    }
    let header = entry.header();
    let kind = header.entry_type();
    let mode = header
        .mode()
        .map_err(BackupError::io_err("read mode of", member))?;
    let uid = to_host(header.uid().unwrap_or(0), host_base);
    let gid = to_host(header.gid().unwrap_or(0), host_base);
    let dst = root.join(member);
    let special = match kind {
        tar::EntryType::Char => Some(SFlag::S_IFCHR),
        tar::EntryType::Block => Some(SFlag::S_IFBLK),
        tar::EntryType::Fifo => Some(SFlag::S_IFIFO),
        _ => None,
    };
    if let Some(sflag) = special {
        let major = header.device_major().ok().flatten().unwrap_or(0);
        let minor = header.device_minor().ok().flatten().unwrap_or(0);
        if member
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(BackupError::Malformed(format!(
                "member {} leaves the archive's root",
                member.display()
            )));
        }
        let _ = fs::remove_file(&dst);
        nix::sys::stat::mknod(
            &dst,
            sflag,
            Mode::from_bits_truncate(mode & 0o7777),
            nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
        )
        .map_err(|e| BackupError::from_io("mknod", dst.clone(), e.into()))?;
    } else {
        let unpacked = entry
            .unpack_in(root)
            .map_err(BackupError::io_err("extract", &dst))?;
        if !unpacked {
            return Err(BackupError::Malformed(format!(
                "member {} leaves the archive's root",
                member.display()
            )));
        }
    }
    if kind == tar::EntryType::Link {
        // Shares the first name's inode, which already has its owner and mode.
        return Ok(());
    }
    nix::unistd::fchownat(
        None,
        &dst,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| BackupError::from_io("chown", dst.clone(), e.into()))?;
    for (name, value) in &xattrs {
        sys::set_xattr(&dst, name, value).map_err(BackupError::io_err("set xattr on", &dst))?;
    }
    if kind != tar::EntryType::Symlink {
        // After the chown, which clears setuid and setgid bits.
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(BackupError::io_err("chmod", &dst))?;
    }
    Ok(())
}

/// What the agent asks the backup helper to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BackupRequest {
    /// The VPS's disk image.
    pub image: PathBuf,
    /// An existing directory to mount the disk on inside the helper's namespace.
    pub mount_point: PathBuf,
    /// The VPS's id range base.
    pub host_base: u32,
    /// The spec member's content.
    pub spec_json: String,
    /// Where to write the archive (created by the helper, 0600).
    pub archive: PathBuf,
}

/// What the agent asks the restore helper to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RestoreRequest {
    /// A freshly made image to extract into (not attached anywhere).
    pub image: PathBuf,
    /// An existing directory to mount it on inside the helper's namespace.
    pub mount_point: PathBuf,
    /// The target VPS's id range base.
    pub host_base: u32,
    /// The (verified) archive.
    pub archive: PathBuf,
    /// The manifest's tar stream hash.
    pub tar_sha256: String,
}

fn helper_reply<T: Serialize>(result: Result<T, BackupError>) -> i32 {
    let encoded = result.and_then(|reply| {
        serde_json::to_string(&reply).map_err(|e| BackupError::Malformed(e.to_string()))
    });
    match encoded {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn enter_private_mount_namespace() -> Result<(), BackupError> {
    let prepare = || -> Result<(), HelperError> {
        helper::ensure_single_threaded()?;
        namespaces::unshare_mount_namespace()?;
        // Without this, the mount below would propagate into the host's namespace.
        rootfs::make_private("/")?;
        Ok(())
    };
    prepare().map_err(|e| BackupError::Malformed(format!("helper setup: {e}")))
}

/// The backup helper: `__internal backup <json>`; prints the [`ArchiveSums`] as JSON.
pub(crate) fn backup_helper_main(args: &[OsString]) -> i32 {
    helper_reply(backup_helper(args))
}

fn backup_helper(args: &[OsString]) -> Result<ArchiveSums, BackupError> {
    let request: BackupRequest = helper::decode_request(args)
        .map_err(|e| BackupError::Malformed(format!("helper request: {e}")))?;
    enter_private_mount_namespace()?;
    helper::step("mount disk");
    let _held = disk::mount_for_copy(&request.image, &request.mount_point)?;
    let root = File::open(&request.mount_point)
        .map_err(BackupError::io_err("open", &request.mount_point))?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root))
        .map_err(|e| BackupError::from_io("syncfs", request.mount_point.clone(), e.into()))?;
    helper::step("write archive");
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::fsutil::PRIVATE_FILE_MODE)
        .open(&request.archive)
        .map_err(BackupError::io_err("create", &request.archive))?;
    let upper = request.mount_point.join(UPPER_MEMBER);
    write_archive(&upper, request.host_base, request.spec_json.as_bytes(), out)
}

/// The restore helper: `__internal restore <json>`; prints `true` when done.
pub(crate) fn restore_helper_main(args: &[OsString]) -> i32 {
    helper_reply(restore_helper(args).map(|()| true))
}

fn restore_helper(args: &[OsString]) -> Result<(), BackupError> {
    let request: RestoreRequest = helper::decode_request(args)
        .map_err(|e| BackupError::Malformed(format!("helper request: {e}")))?;
    enter_private_mount_namespace()?;
    nix::sys::stat::umask(Mode::empty());
    helper::step("mount disk");
    disk::attach_and_mount(&request.image, &request.mount_point)?;
    helper::step("extract archive");
    extract_archive(
        &request.archive,
        &request.mount_point,
        request.host_base,
        &request.tar_sha256,
    )?;
    let root = File::open(&request.mount_point)
        .map_err(BackupError::io_err("open", &request.mount_point))?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root))
        .map_err(|e| BackupError::from_io("syncfs", request.mount_point.clone(), e.into()))?;
    Ok(())
}

/// What a finished backup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupTaken {
    /// Its manifest (as stored).
    pub manifest: Manifest,
    /// The archive's path in the store.
    pub location: PathBuf,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Runtime {
    /// Takes backup `backup_id` of VPS `vps_id` into `store`, with `spec_json` as its spec
    /// member. A running VPS is frozen (its cgroup) for the copy and its filesystem synced
    /// first; a stopped one is read from its image. Idempotent: a backup already complete in
    /// the store is returned as it is.
    pub fn backup(
        &self,
        vps_id: &str,
        backup_id: &str,
        store: &LocalStore,
        spec_json: &str,
    ) -> Result<BackupTaken, RuntimeError> {
        let backup_err = |source| RuntimeError::Backup {
            vps_id: vps_id.to_string(),
            source: Box::new(source),
        };
        validate_id(backup_id).map_err(backup_err)?;
        if let Ok(manifest) = store.manifest(backup_id) {
            return Ok(BackupTaken {
                manifest,
                location: store.archive_path(backup_id),
            });
        }
        let lock = self.vps_lock(vps_id);
        let _guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let st = self
            .load(vps_id)?
            .ok_or_else(|| RuntimeError::NotFound(vps_id.to_string()))?;
        let ids = st.ids.ok_or_else(|| {
            backup_err(BackupError::NotReady(
                "it has no id range (it never started)",
            ))
        })?;
        let rootfs = self.rootfs_layout(vps_id, &st.template);
        if disk::image_size(&rootfs.disk_image)
            .map_err(|e| backup_err(e.into()))?
            .is_none()
        {
            return Err(backup_err(BackupError::NotReady("it has no disk image")));
        }
        store.ensure_dir().map_err(backup_err)?;
        fs::create_dir_all(&rootfs.disk)
            .map_err(|e| backup_err(BackupError::from_io("create dir", rootfs.disk.clone(), e)))?;
        let partial = store.partial_path(backup_id);
        let running = self.live_init(&st)?.is_some();
        let cgroup = self.cgroup(vps_id);
        // Frozen while the copy runs: the files are as they were at one instant.
        let frozen = running && cgroup.set_frozen(true).unwrap_or(false);
        let request = BackupRequest {
            image: rootfs.disk_image.clone(),
            mount_point: rootfs.disk.clone(),
            host_base: ids.host_base,
            spec_json: spec_json.to_string(),
            archive: partial.clone(),
        };
        let sums: Result<ArchiveSums, _> = helper::call(
            &self.config().helper_binary,
            BACKUP,
            &request,
            BACKUP_DEADLINE,
        );
        if frozen {
            if let Err(error) = cgroup.set_frozen(false) {
                tracing::error!(vps_id, %error, "thawing the VPS after its backup");
            }
        }
        let sums = match sums {
            Ok(sums) => sums,
            Err(error) => {
                let _ = fs::remove_file(&partial);
                return Err(backup_err(error.into()));
            }
        };
        let manifest = Manifest {
            format: FORMAT_VERSION,
            backup_id: backup_id.to_string(),
            vps_id: vps_id.to_string(),
            created_unix: now_unix(),
            archive_bytes: sums.archive_bytes,
            archive_sha256: sums.archive_sha256,
            tar_bytes: sums.tar_bytes,
            tar_sha256: sums.tar_sha256,
        };
        let location = store.complete(backup_id, &manifest).map_err(backup_err)?;
        tracing::info!(
            vps_id,
            backup_id,
            bytes = manifest.archive_bytes,
            running,
            "took backup"
        );
        Ok(BackupTaken { manifest, location })
    }

    /// Restores backup `backup_id` from `store` into VPS `vps_id` (which must exist): checks
    /// the archive against its manifest, extracts it into a fresh image under the VPS's id
    /// range, and only then stops the VPS (if it runs) and swaps the image in. The VPS is left
    /// stopped; the next apply starts it if it should run. Returns the backup's manifest.
    pub fn restore_backup(
        &self,
        vps_id: &str,
        backup_id: &str,
        store: &LocalStore,
    ) -> Result<Manifest, RuntimeError> {
        let backup_err = |source| RuntimeError::Backup {
            vps_id: vps_id.to_string(),
            source: Box::new(source),
        };
        let manifest = store.verify(backup_id).map_err(backup_err)?;
        let lock = self.vps_lock(vps_id);
        let _guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut st = self
            .load(vps_id)?
            .ok_or_else(|| RuntimeError::NotFound(vps_id.to_string()))?;
        let ids: IdRange = self.allocate_ids(&mut st)?;
        let rootfs = self.rootfs_layout(vps_id, &st.template);
        let size = disk::image_size(&rootfs.disk_image)
            .map_err(|e| backup_err(e.into()))?
            .unwrap_or(0)
            .max(crate::runtime::spec::disk_bytes(&st.limits));
        let staging = rootfs.disk_image.with_extension("img.restore");
        let staging_mount = self.layout().vps_dir(vps_id).join("restore");
        fs::create_dir_all(&staging_mount).map_err(|e| {
            backup_err(BackupError::from_io("create dir", staging_mount.clone(), e))
        })?;
        let _ = fs::remove_file(&staging);
        disk::create_image(&staging, size, ids).map_err(|e| backup_err(e.into()))?;
        let request = RestoreRequest {
            image: staging.clone(),
            mount_point: staging_mount.clone(),
            host_base: ids.host_base,
            archive: store.archive_path(backup_id),
            tar_sha256: manifest.tar_sha256.clone(),
        };
        let extracted: Result<bool, _> = helper::call(
            &self.config().helper_binary,
            RESTORE,
            &request,
            BACKUP_DEADLINE,
        );
        let _ = fs::remove_dir(&staging_mount);
        if let Err(error) = extracted {
            let _ = fs::remove_file(&staging);
            return Err(backup_err(error.into()));
        }
        // The helper's namespace, and with it the staging image's loop device, is gone.
        crate::runtime::lifecycle::wait_for_detach(&staging);
        let cgroup = self.cgroup(vps_id);
        let init = self.live_init(&st)?;
        self.stop(&mut st, init.as_ref(), &cgroup)?;
        crate::runtime::lifecycle::wait_for_detach(&rootfs.disk_image);
        fs::rename(&staging, &rootfs.disk_image).map_err(|e| {
            backup_err(BackupError::from_io(
                "rename into place",
                rootfs.disk_image.clone(),
                e,
            ))
        })?;
        st.disk_grow_to = None;
        self.save(&st)?;
        tracing::info!(vps_id, backup_id, "restored backup");
        Ok(manifest)
    }
}

/// How long a backup or restore helper may run.
const BACKUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The file names of `dir` as bytes (for tests comparing trees).
#[cfg(test)]
fn names(dir: &Path) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut names: Vec<Vec<u8>> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    use super::*;

    fn privileged() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("PADDOCK_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "backup tests need root"
        );
        false
    }

    /// (relative path, uid, gid, mode, kind, content or link target, inode group)
    fn describe(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut inodes: HashMap<u64, String> = HashMap::new();
        fn walk(root: &Path, rel: &Path, out: &mut Vec<String>, inodes: &mut HashMap<u64, String>) {
            let path = root.join(rel);
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let kind = meta.file_type();
            let detail = if kind.is_symlink() {
                format!("-> {}", fs::read_link(&path).expect("readlink").display())
            } else if kind.is_file() {
                let first = inodes
                    .entry(meta.ino())
                    .or_insert_with(|| rel.display().to_string())
                    .clone();
                format!(
                    "{:?} same-as {first}",
                    String::from_utf8_lossy(&fs::read(&path).expect("read"))
                )
            } else if kind.is_dir() {
                String::new()
            } else {
                format!("dev {}", meta.rdev())
            };
            let xattrs: Vec<String> = sys::list_xattrs(&path)
                .expect("xattrs")
                .into_iter()
                .map(|n| String::from_utf8_lossy(&n).into_owned())
                .collect();
            out.push(format!(
                "{} {}:{} {:o} {detail} {xattrs:?}",
                rel.display(),
                meta.uid(),
                meta.gid(),
                meta.mode()
            ));
            if kind.is_dir() {
                for name in names(&path) {
                    walk(
                        root,
                        &rel.join(std::ffi::OsStr::from_bytes(&name)),
                        out,
                        inodes,
                    );
                }
            }
        }
        walk(root, Path::new(""), &mut out, &mut inodes);
        out
    }

    fn chown(path: &Path, uid: u32, gid: u32) {
        nix::unistd::fchownat(
            None,
            path,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .expect("chown");
    }

    /// A writable layer owned by ids from `base`, with every kind of file a VPS makes.
    fn populate(upper: &Path, base: u32) {
        fs::create_dir_all(upper.join("etc/app")).expect("dirs");
        fs::create_dir_all(upper.join("home/alice")).expect("dirs");
        fs::write(upper.join("etc/app/conf"), b"key=value\n").expect("write");
        fs::write(upper.join("home/alice/notes"), b"alice's").expect("write");
        fs::write(upper.join("usr-bin-tool"), b"#!/bin/sh\n").expect("write");
        fs::hard_link(
            upper.join("home/alice/notes"),
            upper.join("home/alice/notes-link"),
        )
        .expect("hardlink");
        symlink("../etc/app/conf", upper.join("home/conf-link")).expect("symlink");
        nix::sys::stat::mknod(
            &upper.join("etc/whiteout"),
            SFlag::S_IFCHR,
            Mode::empty(),
            0,
        )
        .expect("whiteout");
        xattr_set(&upper.join("etc/app"), "trusted.overlay.opaque", b"y");
        // Binary, with a newline: PAX records must not split it.
        xattr_set(
            &upper.join("etc/app/conf"),
            "trusted.paddock-test",
            b"a\nb\0c",
        );
        for (path, uid, gid) in [
            ("", 0, 0),
            ("etc", 0, 0),
            ("etc/app", 0, 0),
            ("etc/app/conf", 0, 33),
            ("home", 0, 0),
            ("home/alice", 1000, 1000),
            ("home/alice/notes", 1000, 100),
            ("home/conf-link", 1000, 1000),
            ("usr-bin-tool", 0, 0),
            ("etc/whiteout", 0, 0),
        ] {
            chown(&upper.join(path), base + uid, base + gid);
        }
        fs::set_permissions(upper.join("home/alice"), fs::Permissions::from_mode(0o700))
            .expect("chmod");
        fs::set_permissions(
            upper.join("usr-bin-tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .expect("chmod");
    }

    fn xattr_set(path: &Path, name: &str, value: &[u8]) {
        sys::set_xattr(path, name, value).expect("setxattr");
    }

    /// The same tree with every owner shifted from one base to another.
    fn shifted(lines: &[String], from: u32, to: u32) -> Vec<String> {
        lines
            .iter()
            .map(|line| {
                let mut parts: Vec<String> = line.splitn(3, ' ').map(str::to_string).collect();
                let ids: Vec<u32> = parts[1]
                    .split(':')
                    .map(|id| id.parse::<u32>().expect("id") - from + to)
                    .collect();
                parts[1] = format!("{}:{}", ids[0], ids[1]);
                parts.join(" ")
            })
            .collect()
    }

    #[test]
    fn ids_are_stored_as_the_vps_sees_them() {
        assert_eq!(to_guest(100_000, 100_000), 0);
        assert_eq!(to_guest(101_000, 100_000), 1000);
        assert_eq!(to_guest(0, 100_000), OVERFLOW_ID);
        assert_eq!(to_guest(100_000 + ID_RANGE_SIZE, 100_000), OVERFLOW_ID);
        assert_eq!(to_host(1000, 300_000), 301_000);
        assert_eq!(
            to_host(u64::from(ID_RANGE_SIZE) + 5, 300_000),
            300_000 + OVERFLOW_ID
        );
    }

    #[test]
    fn backup_ids_follow_the_name_rule() {
        assert!(validate_id("b-1234abcd").is_ok());
        for bad in ["", "-a", "A", "a/b", "..", &"a".repeat(64)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    /// Archive a tree owned by one id range, restore it under another: the files, modes,
    /// links, devices and xattrs are identical and the owners are the same as seen inside.
    #[test]
    fn an_archive_restores_under_another_id_range_identically() {
        if !privileged() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (from, to) = (1_200_000, 1_400_000);
        let source = dir.path().join("source");
        let upper = source.join(UPPER_MEMBER);
        fs::create_dir_all(&upper).expect("upper");
        populate(&upper, from);
        let store = LocalStore::new(dir.path().join("store"));
        store.ensure_dir().expect("store dir");
        let archive = store.archive_path("b1");
        let out = File::create(&archive).expect("archive");
        let sums = write_archive(&upper, from, b"{\"plan\":\"nano\"}", out).expect("archive");
        assert_eq!(
            fs::metadata(&archive).expect("stat").len(),
            sums.archive_bytes
        );

        let target = dir.path().join("target");
        fs::create_dir_all(&target).expect("target");
        let old_umask = nix::sys::stat::umask(Mode::empty());
        let spec = extract_archive(&archive, &target, to, &sums.tar_sha256);
        nix::sys::stat::umask(old_umask);
        assert_eq!(spec.expect("extract"), b"{\"plan\":\"nano\"}");
        let want = shifted(&describe(&upper), from, to);
        assert_eq!(describe(&target.join(UPPER_MEMBER)), want);
    }

    /// A changed byte or a cut archive is refused by the manifest check.
    #[test]
    fn a_corrupted_or_truncated_archive_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        let archive = store.archive_path("b2");
        let upper = dir.path().join("upper");
        fs::create_dir_all(&upper).expect("upper");
        fs::write(upper.join("file"), vec![7u8; 100_000]).expect("write");
        let uid = nix::unistd::geteuid().as_raw();
        let sums = write_archive(&upper, uid, b"{}", File::create(&archive).expect("create"))
            .expect("archive");
        let manifest = Manifest {
            format: FORMAT_VERSION,
            backup_id: "b2".into(),
            vps_id: "v".into(),
            created_unix: 0,
            archive_bytes: sums.archive_bytes,
            archive_sha256: sums.archive_sha256,
            tar_bytes: sums.tar_bytes,
            tar_sha256: sums.tar_sha256,
        };
        fs::write(
            store.manifest_path("b2"),
            serde_json::to_vec(&manifest).expect("json"),
        )
        .expect("manifest");
        assert_eq!(store.verify("b2").expect("intact"), manifest);

        let good = fs::read(&archive).expect("read");
        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x01;
        fs::write(&archive, &flipped).expect("corrupt");
        let err = store.verify("b2").expect_err("corrupt");
        assert!(err.to_string().contains("corrupted or truncated"), "{err}");
        assert!(err.to_string().contains("SHA-256"), "{err}");

        fs::write(&archive, &good[..good.len() - 10]).expect("truncate");
        let err = store.verify("b2").expect_err("truncated");
        assert!(err.to_string().contains("length"), "{err}");

        assert!(matches!(
            store.verify("nope"),
            Err(BackupError::NotFound(_))
        ));
    }

    /// An archive streamed from another node is stored with its manifest and checked like
    /// a local one: whole it verifies, cut short on the way it is refused.
    #[test]
    fn a_received_archive_is_verified_against_its_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = LocalStore::new(dir.path().join("source"));
        source.ensure_dir().expect("dir");
        let upper = dir.path().join("upper");
        fs::create_dir_all(&upper).expect("upper");
        fs::write(upper.join("file"), vec![3u8; 50_000]).expect("write");
        let uid = nix::unistd::geteuid().as_raw();
        let archive = source.archive_path("m-1");
        let sums = write_archive(&upper, uid, b"{}", File::create(&archive).expect("create"))
            .expect("archive");
        let manifest = Manifest {
            format: FORMAT_VERSION,
            backup_id: "m-1".into(),
            vps_id: "v".into(),
            created_unix: 0,
            archive_bytes: sums.archive_bytes,
            archive_sha256: sums.archive_sha256,
            tar_bytes: sums.tar_bytes,
            tar_sha256: sums.tar_sha256,
        };
        let bytes = fs::read(&archive).expect("read");
        let spool = LocalStore::new(dir.path().join("spool"));
        spool
            .receive("m-1", &manifest, &mut bytes.as_slice())
            .expect("receive");
        assert_eq!(spool.verify("m-1").expect("whole"), manifest);
        let cut = &bytes[..bytes.len() / 2];
        spool
            .receive(
                "m-2",
                &Manifest {
                    backup_id: "m-2".into(),
                    ..manifest.clone()
                },
                &mut &cut[..],
            )
            .expect("receive cut");
        let err = spool.verify("m-2").expect_err("cut short");
        assert!(err.to_string().contains("corrupted or truncated"), "{err}");
        assert!(
            !dir.path()
                .join("spool")
                .join(".m-2.tar.zst.partial")
                .exists(),
            "no partial file left"
        );
        spool.delete("m-1").expect("delete");
        spool.delete("m-2").expect("delete");
        assert_eq!(
            fs::read_dir(dir.path().join("spool"))
                .expect("list")
                .count(),
            0
        );
    }
}
