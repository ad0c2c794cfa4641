//! A fresh identity for a copy of an empty ext4 filesystem: its own UUID and directory hash
//! seed, written into the primary superblock and every backup (as `tune2fs -U` rewrites them),
//! so disks copied from one blank image ([`super::blank_image`]) do not all share them.
//!
//! With `metadata_csum` the UUID seeds every metadata checksum unless the filesystem has
//! `metadata_csum_seed` (the seed is then kept in the superblock), so only such a filesystem,
//! or one without metadata or group descriptor checksums, is renewed: each superblock then
//! only needs its own checksum recomputed. The hash seed keys the hashes of indexed (htree)
//! directories, so it may only change on a filesystem that has none: a freshly made one.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Why a filesystem's identity could not be renewed.
#[derive(Debug, thiserror::Error)]
pub enum Ext4IdentityError {
    /// Reading or writing the image failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The image.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A superblock is not where the primary one says it is, or is not one.
    #[error("{path}: no ext4 superblock at byte {offset}")]
    NotExt4 {
        /// The image.
        path: PathBuf,
        /// Where one was expected.
        offset: u64,
    },
}

/// Byte offset of the primary superblock.
const PRIMARY_OFFSET: u64 = 1024;
const SUPERBLOCK_LEN: usize = 1024;
const EXT4_MAGIC: u16 = 0xEF53;

// Offsets in the superblock (struct ext4_super_block).
const S_BLOCKS_COUNT_LO: usize = 0x04;
const S_FIRST_DATA_BLOCK: usize = 0x14;
const S_LOG_BLOCK_SIZE: usize = 0x18;
const S_BLOCKS_PER_GROUP: usize = 0x20;
const S_MAGIC: usize = 0x38;
const S_BLOCK_GROUP_NR: usize = 0x5A;
const S_FEATURE_COMPAT: usize = 0x5C;
const S_FEATURE_INCOMPAT: usize = 0x60;
const S_FEATURE_RO_COMPAT: usize = 0x64;
const S_UUID: usize = 0x68;
const S_HASH_SEED: usize = 0xEC;
const S_BLOCKS_COUNT_HI: usize = 0x150;
const S_BACKUP_BGS: usize = 0x24C;
const S_CHECKSUM: usize = 0x3FC;

const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// What [`renew`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The filesystem has a new UUID and hash seed, in this many superblocks.
    Renewed {
        /// The primary and each backup.
        superblocks: usize,
    },
    /// Left as it was: its checksums are seeded with its UUID (`metadata_csum` without
    /// `metadata_csum_seed`, or `uninit_bg`), so a new one would mean rewriting them all.
    ChecksumsSeededByUuid,
}

/// Gives the empty ext4 filesystem in `image` (open for reading and writing) a new random
/// UUID and directory hash seed. Not for a filesystem with indexed directories or a mounted
/// one; the caller fsyncs the file.
pub fn renew(image: &File, path: &Path) -> Result<Renewal, Ext4IdentityError> {
    let primary = read_superblock(image, path, PRIMARY_OFFSET)?;
    let ro_compat = u32_at(&primary, S_FEATURE_RO_COMPAT);
    let incompat = u32_at(&primary, S_FEATURE_INCOMPAT);
    let metadata_csum = ro_compat & RO_COMPAT_METADATA_CSUM != 0;
    if (metadata_csum && incompat & INCOMPAT_CSUM_SEED == 0) || ro_compat & RO_COMPAT_GDT_CSUM != 0
    {
        return Ok(Renewal::ChecksumsSeededByUuid);
    }
    let mut random = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut random))
        .map_err(|source| Ext4IdentityError::Io {
            operation: "read",
            path: PathBuf::from("/dev/urandom"),
            source,
        })?;
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&random[..16]);
    // A random (version 4, RFC 4122 variant) UUID, as mkfs makes.
    uuid[6] = (uuid[6] & 0x0F) | 0x40;
    uuid[8] = (uuid[8] & 0x3F) | 0x80;
    let hash_seed = &random[16..];

    let offsets = superblock_offsets(&primary);
    for &(group, offset) in &offsets {
        let mut superblock = if group == 0 {
            primary
        } else {
            let backup = read_superblock(image, path, offset)?;
            // A backup names its group (the low 16 bits of it).
            if u64::from(u16::from_le_bytes([
                backup[S_BLOCK_GROUP_NR],
                backup[S_BLOCK_GROUP_NR + 1],
            ])) != group & 0xFFFF
            {
                return Err(Ext4IdentityError::NotExt4 {
                    path: path.to_path_buf(),
                    offset,
                });
            }
            backup
        };
        superblock[S_UUID..S_UUID + 16].copy_from_slice(&uuid);
        superblock[S_HASH_SEED..S_HASH_SEED + 16].copy_from_slice(hash_seed);
        if metadata_csum {
            let checksum = crc32c(!0, &superblock[..S_CHECKSUM]);
            superblock[S_CHECKSUM..].copy_from_slice(&checksum.to_le_bytes());
        }
        image
            .write_all_at(&superblock, offset)
            .map_err(|source| Ext4IdentityError::Io {
                operation: "write superblock of",
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(Renewal::Renewed {
        superblocks: offsets.len(),
    })
}

/// The UUID of the ext4 filesystem in `image` (from its primary superblock).
pub fn uuid(image: &File, path: &Path) -> Result<[u8; 16], Ext4IdentityError> {
    let superblock = read_superblock(image, path, PRIMARY_OFFSET)?;
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&superblock[S_UUID..S_UUID + 16]);
    Ok(uuid)
}

/// Where the bytes [`renew`] rewrites lie in `image`: the UUID, hash seed and checksum of
/// the primary superblock and of each backup.
pub fn identity_ranges(
    image: &File,
    path: &Path,
) -> Result<impl Iterator<Item = std::ops::Range<usize>>, Ext4IdentityError> {
    let primary = read_superblock(image, path, PRIMARY_OFFSET)?;
    Ok(superblock_offsets(&primary)
        .into_iter()
        .flat_map(|(_, offset)| {
            let base = usize::try_from(offset).unwrap_or(usize::MAX);
            [
                base + S_UUID..base + S_UUID + 16,
                base + S_HASH_SEED..base + S_HASH_SEED + 16,
                base + S_CHECKSUM..base + SUPERBLOCK_LEN,
            ]
        }))
}

fn read_superblock(
    image: &File,
    path: &Path,
    offset: u64,
) -> Result<[u8; SUPERBLOCK_LEN], Ext4IdentityError> {
    let mut superblock = [0u8; SUPERBLOCK_LEN];
    image
        .read_exact_at(&mut superblock, offset)
        .map_err(|source| Ext4IdentityError::Io {
            operation: "read superblock of",
            path: path.to_path_buf(),
            source,
        })?;
    if u16::from_le_bytes([superblock[S_MAGIC], superblock[S_MAGIC + 1]]) != EXT4_MAGIC {
        return Err(Ext4IdentityError::NotExt4 {
            path: path.to_path_buf(),
            offset,
        });
    }
    Ok(superblock)
}

/// Group and byte offset of the primary superblock and of every backup the primary's geometry and
/// features place (`sparse_super`: groups 1 and the powers of 3, 5 and 7; `sparse_super2`:
/// the one or two groups it names; neither: every group).
fn superblock_offsets(primary: &[u8; SUPERBLOCK_LEN]) -> Vec<(u64, u64)> {
    let block_size = 1024u64 << u32_at(primary, S_LOG_BLOCK_SIZE).min(16);
    let first_data_block = u64::from(u32_at(primary, S_FIRST_DATA_BLOCK));
    let blocks_per_group = u64::from(u32_at(primary, S_BLOCKS_PER_GROUP)).max(1);
    let mut blocks = u64::from(u32_at(primary, S_BLOCKS_COUNT_LO));
    if u32_at(primary, S_FEATURE_INCOMPAT) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(u32_at(primary, S_BLOCKS_COUNT_HI)) << 32;
    }
    let groups = blocks
        .saturating_sub(first_data_block)
        .div_ceil(blocks_per_group);
    let sparse_super2 = u32_at(primary, S_FEATURE_COMPAT) & COMPAT_SPARSE_SUPER2 != 0;
    let sparse_super = u32_at(primary, S_FEATURE_RO_COMPAT) & RO_COMPAT_SPARSE_SUPER != 0;
    let backup_bgs = [
        u64::from(u32_at(primary, S_BACKUP_BGS)),
        u64::from(u32_at(primary, S_BACKUP_BGS + 4)),
    ];
    let mut offsets = vec![(0, PRIMARY_OFFSET)];
    for group in 1..groups {
        let has_backup = if sparse_super2 {
            backup_bgs.contains(&group)
        } else if sparse_super {
            group == 1 || [3, 5, 7].iter().any(|&base| is_power_of(group, base))
        } else {
            true
        };
        if has_backup {
            offsets.push((
                group,
                (first_data_block + group * blocks_per_group) * block_size,
            ));
        }
    }
    offsets
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

fn u32_at(superblock: &[u8; SUPERBLOCK_LEN], at: usize) -> u32 {
    u32::from_le_bytes([
        superblock[at],
        superblock[at + 1],
        superblock[at + 2],
        superblock[at + 3],
    ])
}

/// CRC-32C (Castagnoli), reflected, without the final inversion: the checksum ext4 keeps
/// (`ext4_chksum`, e2fsprogs' `ext2fs_crc32c_le`).
fn crc32c(seed: u32, bytes: &[u8]) -> u32 {
    bytes.iter().fold(seed, |crc, &byte| {
        CRC32C_TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8)
    })
}

static CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::process::Command;

    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789" (with the usual final inversion).
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn backups_follow_sparse_super() {
        let mut primary = [0u8; SUPERBLOCK_LEN];
        let mut put =
            |at: usize, value: u32| primary[at..at + 4].copy_from_slice(&value.to_le_bytes());
        // 1 KiB blocks, 8192 per group, 200 groups.
        put(S_BLOCKS_COUNT_LO, 1 + 200 * 8192);
        put(S_FIRST_DATA_BLOCK, 1);
        put(S_LOG_BLOCK_SIZE, 0);
        put(S_BLOCKS_PER_GROUP, 8192);
        put(S_FEATURE_RO_COMPAT, RO_COMPAT_SPARSE_SUPER);
        let offsets = superblock_offsets(&primary);
        let groups: Vec<u64> = offsets.iter().map(|(group, _)| *group).collect();
        assert_eq!(groups, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125]);
        for (group, offset) in offsets {
            let block = if group == 0 { 1 } else { 1 + group * 8192 };
            assert_eq!(offset, block * 1024, "group {group}");
        }
    }

    fn mkfs(path: &Path, size_bytes: u64, features: &str) {
        File::create(path)
            .and_then(|file| file.set_len(size_bytes))
            .expect("image file");
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", features])
            .arg(path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .status()
            .expect("run mkfs.ext4");
        assert!(status.success(), "mkfs.ext4 -O {features}: {status}");
    }

    fn fsck_clean(path: &Path) {
        let output = Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("run e2fsck");
        assert!(
            output.status.success(),
            "e2fsck -fn {}: {}\n{}{}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `(uuid, hash seed)` as dumpe2fs shows them in the superblock at `block` (of 1 KiB
    /// blocks; 0: the primary).
    fn dumpe2fs_identity(path: &Path, block: u64) -> (String, String) {
        let mut command = Command::new("dumpe2fs");
        command.arg("-h");
        if block != 0 {
            command.args(["-o", &format!("superblock={block}"), "-o", "blocksize=1024"]);
        }
        let output = command
            .arg(path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("run dumpe2fs");
        assert!(output.status.success(), "dumpe2fs: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in dumpe2fs output:\n{text}"))
        };
        (field("Filesystem UUID:"), field("Directory Hash Seed:"))
    }

    #[test]
    fn copies_get_their_own_uuid_and_hash_seed_and_stay_consistent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blank = dir.path().join("blank.img");
        // 1 KiB blocks, 8 groups: backups in groups 1, 3, 5 and 7.
        mkfs(&blank, 64 << 20, "metadata_csum,metadata_csum_seed");
        let original = dumpe2fs_identity(&blank, 0);
        let mut seen = vec![original.clone()];
        for name in ["a.img", "b.img"] {
            let copy = dir.path().join(name);
            std::fs::copy(&blank, &copy).expect("copy");
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&copy)
                .expect("open copy");
            assert_eq!(
                renew(&file, &copy).expect("renew"),
                Renewal::Renewed { superblocks: 5 }
            );
            drop(file);
            let identity = dumpe2fs_identity(&copy, 0);
            assert!(
                !seen
                    .iter()
                    .any(|other| other.0 == identity.0 || other.1 == identity.1),
                "{identity:?} repeats one of {seen:?}"
            );
            // Every backup carries the same identity, with a valid checksum (dumpe2fs
            // refuses a superblock whose checksum does not match).
            for block in [8193, 24577, 40961, 57345] {
                assert_eq!(
                    dumpe2fs_identity(&copy, block),
                    identity,
                    "backup at {block}"
                );
            }
            let file = File::open(&copy).expect("open copy");
            let uuid_text: String = uuid(&file, &copy)
                .expect("uuid")
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            assert_eq!(uuid_text, identity.0.replace('-', ""));
            fsck_clean(&copy);
            seen.push(identity);
        }
        assert_eq!(
            dumpe2fs_identity(&blank, 0),
            original,
            "the blank is untouched"
        );
    }

    #[test]
    fn checksums_seeded_by_the_uuid_are_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("seeded.img");
        mkfs(&image, 32 << 20, "metadata_csum,^metadata_csum_seed");
        let before = std::fs::read(&image).expect("read");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .expect("open");
        assert_eq!(
            renew(&file, &image).expect("renew"),
            Renewal::ChecksumsSeededByUuid
        );
        drop(file);
        assert_eq!(std::fs::read(&image).expect("read"), before);

        let not_ext4 = dir.path().join("zeros.img");
        File::create(&not_ext4)
            .and_then(|file| file.set_len(1 << 20))
            .expect("zeros");
        let file = File::open(&not_ext4).expect("open");
        assert!(matches!(
            renew(&file, &not_ext4),
            Err(Ext4IdentityError::NotExt4 { offset: 1024, .. })
        ));
    }
}
