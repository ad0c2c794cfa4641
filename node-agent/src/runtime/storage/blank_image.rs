//! Blank disk images: one freshly formatted, empty ext4 image per size, made with mkfs.ext4
//! the first time a disk of that size is needed and copied for every new VPS disk of that size
//! (a reflink where the state dir's filesystem has them, else a sparse copy that writes only
//! the few hundred KiB of filesystem metadata). A copy costs about a millisecond where mkfs
//! costs ten or more, and it is what mkfs would have made: the same geometry, journal and
//! options.
//!
//! The images live in `<state_dir>/blank-images/ext4-<bytes>.img`, each with a manifest
//! (`ext4-<bytes>.json`: size, mkfs options, SHA-256 of its contents). An image is checked
//! against its manifest the first time this process uses it and again whenever the file
//! changed since (inode, size, modification or change time); a missing, truncated or altered
//! image, or one made with other mkfs options, is made again.
//!
//! Each copy gets a filesystem UUID and directory hash seed of its own
//! ([`super::ext4_identity`]; the blank images are made with `metadata_csum_seed`, so the new
//! UUID leaves every metadata checksum valid). The disk's root directory belongs to host root
//! in the blank image and is given to the VPS's root when the disk is first mounted
//! ([`crate::runtime::isolation::rootfs::RootfsLayout::mount_root`]).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::disk::{self, DiskError};
use super::ext4_identity::{self, Renewal};
use super::snapshot::{self, CopyMethod};
use crate::fsutil::FromIo;

/// Where the blank images live, under the state dir.
pub const DIR_NAME: &str = "blank-images";

/// What a blank image's manifest records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    size_bytes: u64,
    /// The mkfs.ext4 arguments it was made with ([`disk::mkfs_options`]).
    mkfs_options: String,
    /// SHA-256 of its data extents and where they are ([`content_digest`]).
    content_sha256: String,
}

/// What changes when an image file is written, replaced or truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Self {
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The node's blank images (see the module doc). Shared by every create of the runtime.
#[derive(Debug)]
pub struct BlankImages {
    dir: PathBuf,
    /// Per size, the image as this process last checked it. Held while an image is checked,
    /// made or copied, so two creates never make the same image at once.
    checked: Mutex<HashMap<u64, Fingerprint>>,
}

impl BlankImages {
    /// The blank images kept in `dir` (created when the first one is made).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            checked: Mutex::new(HashMap::new()),
        }
    }

    /// The blank image of `size_bytes` (it may not exist yet).
    pub fn image_path(&self, size_bytes: u64) -> PathBuf {
        self.dir.join(format!("ext4-{size_bytes}.img"))
    }

    fn manifest_path(&self, size_bytes: u64) -> PathBuf {
        self.dir.join(format!("ext4-{size_bytes}.json"))
    }

    /// Makes `target` a new, empty ext4 disk of `size_bytes`: a copy of the blank image of that
    /// size (made first if there is none, or if it fails its check), fsynced and renamed into
    /// place, so a crash leaves either the old file at `target` or the complete new disk. The
    /// rename is made durable by the caller's next durable write into `target`'s directory
    /// (the VPS's state, which is written after every new disk before anything relies on it).
    pub fn copy_to(&self, target: &Path, size_bytes: u64) -> Result<CopyMethod, DiskError> {
        let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        let image = self.image_path(size_bytes);
        let current = match fs::metadata(&image) {
            Ok(meta) => Some(Fingerprint::of(&meta)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(DiskError::io_err("stat", &image)(error)),
        };
        let trusted = current.is_some() && checked.get(&size_bytes) == current.as_ref();
        if !trusted {
            checked.remove(&size_bytes);
            let fingerprint = match current {
                Some(_) => self.check(size_bytes)?,
                None => None,
            };
            let fingerprint = match fingerprint {
                Some(fingerprint) => fingerprint,
                None => {
                    if current.is_some() {
                        tracing::warn!(
                            image = %image.display(),
                            "blank disk image does not match its manifest; making it again"
                        );
                    }
                    self.make(size_bytes)?
                }
            };
            checked.insert(size_bytes, fingerprint);
        }
        snapshot::copy_image_then(
            &image,
            target,
            crate::bounded::TOOL_DEADLINE,
            snapshot::DirSync::WithNextWrite,
            |copy, path| match ext4_identity::renew(copy, path)? {
                Renewal::Renewed { .. } => Ok::<(), DiskError>(()),
                // Only an image made by another mkfs than the one of `disk::mkfs_options`.
                Renewal::ChecksumsSeededByUuid => {
                    tracing::warn!(
                        image = %image.display(),
                        "blank image without metadata_csum_seed: its copies share its UUID"
                    );
                    Ok(())
                }
            },
        )
    }

    /// The image's fingerprint if it matches its manifest (size, mkfs options, contents);
    /// `None` if it does not or has no readable manifest.
    fn check(&self, size_bytes: u64) -> Result<Option<Fingerprint>, DiskError> {
        let manifest_path = self.manifest_path(size_bytes);
        let manifest: Manifest = match fs::read(&manifest_path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(manifest) => manifest,
                Err(_) => return Ok(None),
            },
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(DiskError::io_err("read", &manifest_path)(error)),
        };
        if manifest.size_bytes != size_bytes || manifest.mkfs_options != disk::mkfs_options(None) {
            return Ok(None);
        }
        let image = self.image_path(size_bytes);
        let file = File::open(&image).map_err(DiskError::io_err("open", &image))?;
        let meta = file.metadata().map_err(DiskError::io_err("stat", &image))?;
        if meta.len() != size_bytes {
            return Ok(None);
        }
        let digest = content_digest(&file, &image)?;
        Ok((digest == manifest.content_sha256).then(|| Fingerprint::of(&meta)))
    }

    /// Makes the blank image of `size_bytes` (mkfs into a temp file, fsync, rename, then its
    /// manifest) and returns its fingerprint.
    fn make(&self, size_bytes: u64) -> Result<Fingerprint, DiskError> {
        crate::fsutil::create_private_dir_all(&self.dir).map_err(|error| DiskError::Io {
            operation: error.operation,
            path: error.path,
            source: error.source,
        })?;
        let image = self.image_path(size_bytes);
        // The manifest goes first: an image without a matching one is never trusted.
        let manifest_path = self.manifest_path(size_bytes);
        match fs::remove_file(&manifest_path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(DiskError::io_err("remove", &manifest_path)(error)),
        }
        disk::format_image(&image, size_bytes, None)?;
        let file = File::open(&image).map_err(DiskError::io_err("open", &image))?;
        let manifest = Manifest {
            size_bytes,
            mkfs_options: disk::mkfs_options(None),
            content_sha256: content_digest(&file, &image)?,
        };
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|error| DiskError::Io {
            operation: "encode manifest",
            path: manifest_path.clone(),
            source: io::Error::other(error),
        })?;
        crate::fsutil::write_atomic(&manifest_path, &bytes).map_err(|error| DiskError::Io {
            operation: error.operation,
            path: error.path,
            source: error.source,
        })?;
        let meta = file.metadata().map_err(DiskError::io_err("stat", &image))?;
        tracing::info!(image = %image.display(), size_bytes, "made blank disk image");
        Ok(Fingerprint::of(&meta))
    }
}

/// SHA-256 over each data extent of `file` (its offset, length and bytes), found with
/// `SEEK_DATA`/`SEEK_HOLE`: a few hundred KiB for a blank image, whatever its size.
fn content_digest(file: &File, path: &Path) -> Result<String, DiskError> {
    let size = file
        .metadata()
        .map_err(DiskError::io_err("stat", path))?
        .len();
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut offset: i64 = 0;
    while offset < size {
        let data = match lseek(file.as_raw_fd(), offset, Whence::SeekData) {
            Ok(data) => data,
            Err(Errno::ENXIO) => break,
            Err(errno) => return Err(DiskError::io_err("seek data", path)(errno.into())),
        };
        let hole = lseek(file.as_raw_fd(), data, Whence::SeekHole)
            .map_err(|errno| DiskError::io_err("seek hole", path)(errno.into()))?;
        hasher.update(data.to_le_bytes());
        hasher.update((hole - data).to_le_bytes());
        let mut at = u64::try_from(data).unwrap_or_default();
        let end = u64::try_from(hole).unwrap_or_default();
        while at < end {
            let want = usize::try_from(end - at)
                .unwrap_or(usize::MAX)
                .min(buffer.len());
            let read = file
                .read_at(&mut buffer[..want], at)
                .map_err(DiskError::io_err("read", path))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            at += read as u64;
        }
        offset = hole;
    }
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    const SIZE: u64 = 32 << 20;

    fn ext4_block_count_and_size(image: &Path) -> (u64, u64) {
        // The primary superblock, 1024 bytes in: s_blocks_count_lo at 4, s_log_block_size at
        // 24, s_magic at 56.
        let file = File::open(image).expect("open image");
        let mut superblock = [0u8; 1024];
        file.read_exact_at(&mut superblock, 1024)
            .expect("read superblock");
        let u32_at =
            |at: usize| u32::from_le_bytes(superblock[at..at + 4].try_into().expect("4 bytes"));
        assert_eq!(
            u16::from_le_bytes([superblock[56], superblock[57]]),
            0xEF53,
            "not ext4"
        );
        (u64::from(u32_at(4)), 1024u64 << u32_at(24))
    }

    #[test]
    fn made_once_per_size_and_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blanks = BlankImages::new(dir.path().join(DIR_NAME));
        let first = dir.path().join("a.img");
        let second = dir.path().join("b.img");
        let other_size = dir.path().join("c.img");
        blanks.copy_to(&first, SIZE).expect("first copy");
        let made = fs::metadata(blanks.image_path(SIZE)).expect("blank image");
        blanks.copy_to(&second, SIZE).expect("second copy");
        let again = fs::metadata(blanks.image_path(SIZE)).expect("blank image");
        assert_eq!(
            (made.ino(), made.mtime(), made.mtime_nsec()),
            (again.ino(), again.mtime(), again.mtime_nsec()),
            "the blank image was made again"
        );
        blanks
            .copy_to(&other_size, 2 * SIZE)
            .expect("copy of another size");
        assert!(blanks.image_path(2 * SIZE).exists());

        // A new process (a restarted agent) checks the image and keeps it.
        let restarted = BlankImages::new(dir.path().join(DIR_NAME));
        restarted
            .copy_to(&dir.path().join("d.img"), SIZE)
            .expect("copy after restart");
        assert_eq!(
            fs::metadata(blanks.image_path(SIZE)).expect("blank").ino(),
            made.ino()
        );

        for (image, size) in [(&first, SIZE), (&second, SIZE), (&other_size, 2 * SIZE)] {
            let meta = fs::metadata(image).expect("copy");
            assert_eq!(meta.len(), size);
            assert_eq!(meta.mode() & 0o777, 0o600, "a disk is root-only");
            let (blocks, block_size) = ext4_block_count_and_size(image);
            assert_eq!(blocks * block_size, size, "the filesystem fills the image");
            assert!(
                meta.blocks() * 512 < size / 4,
                "the copy is not sparse: {} bytes allocated",
                meta.blocks() * 512
            );
        }
    }

    #[test]
    fn each_copy_is_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blanks = BlankImages::new(dir.path().join(DIR_NAME));
        let first = dir.path().join("a.img");
        let second = dir.path().join("b.img");
        blanks.copy_to(&first, SIZE).expect("first copy");
        blanks.copy_to(&second, SIZE).expect("second copy");
        let before = fs::read(&second).expect("read second");
        let blank_before = fs::read(blanks.image_path(SIZE)).expect("read blank");
        assert_same_but_identity(&first, &blanks.image_path(SIZE));
        assert_same_but_identity(&second, &blanks.image_path(SIZE));
        let uuids = [&first, &second, &blanks.image_path(SIZE)].map(uuid_of);
        assert!(
            uuids[0] != uuids[1] && uuids[0] != uuids[2] && uuids[1] != uuids[2],
            "copies share a filesystem UUID: {uuids:?}"
        );
        // A write in one disk (in its data area and over its superblock) shows in no other.
        let written = OpenOptions::new()
            .write(true)
            .open(&first)
            .expect("open first");
        written
            .write_all_at(b"tenant data", SIZE / 2)
            .expect("write data");
        written.write_all_at(&[0xAB; 64], 1024).expect("write sb");
        drop(written);
        assert_eq!(fs::read(&second).expect("read second"), before);
        assert_eq!(
            fs::read(blanks.image_path(SIZE)).expect("read blank"),
            blank_before
        );
        let mut third_path = dir.path().join("c.img");
        blanks.copy_to(&third_path, SIZE).expect("third copy");
        assert_same_but_identity(&third_path, &blanks.image_path(SIZE));
        // A copy over an existing file replaces it.
        third_path = first.clone();
        blanks.copy_to(&third_path, SIZE).expect("copy over");
        assert_same_but_identity(&first, &blanks.image_path(SIZE));
    }

    fn uuid_of(image: &PathBuf) -> [u8; 16] {
        let file = File::open(image).expect("open image");
        ext4_identity::uuid(&file, image).expect("uuid")
    }

    /// `copy` has `blank`'s bytes except for the UUID, hash seed and checksum of its primary
    /// and backup superblocks.
    fn assert_same_but_identity(copy: &Path, blank: &Path) {
        let copy_bytes = fs::read(copy).expect("read copy");
        let blank_bytes = fs::read(blank).expect("read blank");
        assert_eq!(copy_bytes.len(), blank_bytes.len());
        let file = File::open(blank).expect("open blank");
        let identity_bytes: Vec<std::ops::Range<usize>> =
            ext4_identity::identity_ranges(&file, blank)
                .expect("superblocks of the blank")
                .collect();
        assert!(identity_bytes.len() >= 3, "{identity_bytes:?}");
        let differing: Vec<usize> = (0..copy_bytes.len())
            .filter(|&at| copy_bytes[at] != blank_bytes[at])
            .collect();
        assert!(
            !differing.is_empty(),
            "{} is the blank itself",
            copy.display()
        );
        for at in differing {
            assert!(
                identity_bytes.iter().any(|range| range.contains(&at)),
                "{} differs from the blank at byte {at}",
                copy.display()
            );
        }
    }

    #[test]
    fn a_corrupt_or_truncated_blank_image_is_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blanks = BlankImages::new(dir.path().join(DIR_NAME));
        blanks
            .copy_to(&dir.path().join("a.img"), SIZE)
            .expect("first copy");
        let blank = blanks.image_path(SIZE);
        let good = fs::read(&blank).expect("read blank");

        // Altered in place (same size): a new process (a restarted agent) finds that the
        // contents no longer match the manifest.
        let file = OpenOptions::new().write(true).open(&blank).expect("open");
        file.write_all_at(&[0u8; 512], 1024).expect("corrupt");
        drop(file);
        let copy = dir.path().join("after-corruption.img");
        BlankImages::new(dir.path().join(DIR_NAME))
            .copy_to(&copy, SIZE)
            .expect("copy");
        assert_eq!(fs::read(&blank).expect("read blank").len(), good.len());
        let (blocks, block_size) = ext4_block_count_and_size(&copy);
        assert_eq!(blocks * block_size, SIZE);
        assert_same_but_identity(&copy, &blank);

        // Replaced by a corrupt file while this process runs: it is another file than the one
        // checked, so it is checked again and made again.
        let corrupt = dir.path().join("corrupt.img");
        fs::copy(&blank, &corrupt).expect("copy blank");
        let file = OpenOptions::new().write(true).open(&corrupt).expect("open");
        file.write_all_at(&[0u8; 512], 1024).expect("corrupt");
        drop(file);
        fs::rename(&corrupt, &blank).expect("replace blank");
        let copy = dir.path().join("after-replacement.img");
        blanks.copy_to(&copy, SIZE).expect("copy");
        let (blocks, block_size) = ext4_block_count_and_size(&copy);
        assert_eq!(blocks * block_size, SIZE);

        // Truncated.
        File::options()
            .write(true)
            .open(&blank)
            .and_then(|f| f.set_len(SIZE / 2))
            .expect("truncate");
        let copy = dir.path().join("after-truncate.img");
        BlankImages::new(dir.path().join(DIR_NAME))
            .copy_to(&copy, SIZE)
            .expect("copy");
        assert_eq!(fs::metadata(&blank).expect("blank").len(), SIZE);
        let (blocks, block_size) = ext4_block_count_and_size(&copy);
        assert_eq!(blocks * block_size, SIZE);

        // Manifest gone: made again, not trusted.
        fs::remove_file(blanks.manifest_path(SIZE)).expect("remove manifest");
        let ino = fs::metadata(&blank).expect("blank").ino();
        BlankImages::new(dir.path().join(DIR_NAME))
            .copy_to(&dir.path().join("no-manifest.img"), SIZE)
            .expect("copy");
        assert_ne!(fs::metadata(&blank).expect("blank").ino(), ino);
        assert!(blanks.manifest_path(SIZE).exists());
    }
}
