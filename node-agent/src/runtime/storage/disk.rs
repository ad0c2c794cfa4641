//! The VPS's own disk: a sparse ext4 image file (`vps/<id>/disk.img`, like OpenVZ's ploop),
//! sized to the plan. It holds the overlay's upper and work dirs, so the VPS's writes are capped
//! by the image size (ENOSPC inside the VPS, the host untouched).
//!
//! The image is attached to a free loop device (`LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE`) with
//! `LO_FLAGS_AUTOCLEAR` and mounted only inside the start helper's private mount namespace, from
//! which the VPS's namespace inherits it. When the VPS's last process exits, the mount goes away
//! with the namespace and the loop device detaches itself: a crash cannot leak either.
//!
//! A disk only grows ([`extend_image`], then the filesystem, see [`super::disk_growth`]):
//! online through a second mount of the VPS's own loop device, which shares the mounted
//! filesystem's superblock, in a throwaway mount namespace ([`grow_filesystem_online`]); or,
//! while no loop device backs the image, offline with e2fsck and resize2fs on the image file
//! ([`grow_filesystem_offline`]).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::statvfs::fstatvfs;
use serde::{Deserialize, Serialize};

use crate::fsutil::FromIo;
use crate::runtime::isolation::capabilities::{self, CAP_SYS_RESOURCE};
use crate::runtime::isolation::idmap::IdRange;
use crate::runtime::sys;

/// Disk size used when a spec does not give one.
pub const DEFAULT_DISK_BYTES: u64 = 1 << 30;
/// Smallest disk accepted (ext4 with a journal needs a few MiB).
pub const MIN_DISK_BYTES: u64 = 16 << 20;

const LOOP_CONTROL: &str = "/dev/loop-control";
const LOOP_MAJOR: u64 = 7;
/// How often to retry when another process grabs the free loop device first.
const LOOP_ATTACH_ATTEMPTS: usize = 16;
/// How often to look again when the loop device found for an image detaches (or is re-used
/// for another image) before it could be opened.
const LOOP_FIND_ATTEMPTS: usize = 16;

/// Errors creating, attaching or mounting a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// Where.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 {path} failed ({status}): {stderr}")]
    Mkfs {
        /// The image.
        path: PathBuf,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// A loop device ioctl failed.
    #[error("{operation} for {image}: {source}")]
    Loop {
        /// `LOOP_CTL_GET_FREE`, `LOOP_CONFIGURE`.
        operation: &'static str,
        /// The image.
        image: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// Mounting the image failed.
    #[error("mount {device} on {target}: {source}")]
    Mount {
        /// The loop device.
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// A disk never shrinks: the requested size is below the image's.
    #[error("refusing to shrink {image} from {size_bytes} to {requested_bytes} bytes")]
    WouldShrink {
        /// The image.
        image: PathBuf,
        /// Its size.
        size_bytes: u64,
        /// The smaller size asked for.
        requested_bytes: u64,
    },
    /// Growing the mounted filesystem failed.
    #[error("{operation} on {mount_point} (device {device}): {source}")]
    Resize {
        /// `statvfs`, `EXT4_IOC_RESIZE_FS`.
        operation: &'static str,
        /// Where the helper mounted the filesystem.
        mount_point: PathBuf,
        /// The loop device.
        device: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// Growing a mounted ext4 needs `CAP_SYS_RESOURCE`, which this process lacks.
    #[error(
        "growing {image} online needs CAP_SYS_RESOURCE, which the agent lacks; \
         it is grown offline when the VPS next stops or starts"
    )]
    OnlineGrowthNotPermitted {
        /// The image.
        image: PathBuf,
    },
    /// e2fsck or resize2fs failed.
    #[error("{tool} {path} failed ({status}): {output}")]
    Tool {
        /// The program.
        tool: &'static str,
        /// The image.
        path: PathBuf,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// Copying a blank image to a new disk failed.
    #[error(transparent)]
    Copy(Box<super::snapshot::SnapshotError>),
    /// Giving a new disk its own filesystem UUID failed.
    #[error(transparent)]
    Identity(#[from] super::ext4_identity::Ext4IdentityError),
    /// The filesystem reports a block size the image size cannot be expressed in.
    #[error("filesystem on {image} reports block size {block_size}")]
    BadBlockSize {
        /// The image.
        image: PathBuf,
        /// What statvfs said.
        block_size: u64,
    },
}

impl From<super::snapshot::SnapshotError> for DiskError {
    fn from(error: super::snapshot::SnapshotError) -> Self {
        Self::Copy(Box::new(error))
    }
}

impl FromIo for DiskError {
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self::Io {
            operation,
            path,
            source,
        }
    }
}

/// Creates (or re-creates: a rebuild) the sparse image at `image` with a fresh ext4 whose root
/// directory belongs to the VPS's root. Written to a temp file and renamed, so a crash leaves
/// either no image or a complete one. (A VPS's disk is copied from a blank image instead,
/// [`super::blank_image`]; this is for the images a backup is restored into.)
pub fn create_image(image: &Path, size_bytes: u64, ids: IdRange) -> Result<(), DiskError> {
    format_image(image, size_bytes, Some(ids))
}

/// The mkfs.ext4 arguments of every disk: metadata checksums seeded from a value of their
/// own (so a copy can take a new UUID, see [`super::ext4_identity`]), no reserved blocks, no
/// discard, no zeroing of what the sparse file already reads as zeros, and the root directory
/// owned by `root_owner` (host root if `None`).
pub(crate) fn mkfs_options(root_owner: Option<IdRange>) -> String {
    // The file was just truncated to a hole: it reads as zeros, so mkfs need not zero the inode
    // tables and journal (e2fsprogs >= 1.47): about 4 MiB less to write and fsync per image.
    let prezeroed = if mkfs_knows_prezeroed() {
        ",assume_storage_prezeroed=1"
    } else {
        ""
    };
    let owner = root_owner
        .map(|ids| format!(",root_owner={}:{}", ids.host_base, ids.host_base))
        .unwrap_or_default();
    format!("-q -F -O metadata_csum,metadata_csum_seed -m 0 -E nodiscard{prezeroed}{owner}")
}

/// mkfs.ext4 on a new sparse file of `size_bytes`, fsynced and renamed to `image` (see
/// [`mkfs_options`] for `root_owner`).
pub(crate) fn format_image(
    image: &Path,
    size_bytes: u64,
    root_owner: Option<IdRange>,
) -> Result<(), DiskError> {
    let tmp = image.with_extension("img.tmp");
    // The image holds the tenant's files: root-only, like every file of the agent.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::fsutil::PRIVATE_FILE_MODE)
        .open(&tmp)
        .map_err(DiskError::io_err("create", &tmp))?;
    file.set_permissions(std::fs::Permissions::from_mode(
        crate::fsutil::PRIVATE_FILE_MODE,
    ))
    .map_err(DiskError::io_err("chmod", &tmp))?;
    file.set_len(size_bytes)
        .map_err(DiskError::io_err("truncate", &tmp))?;
    drop(file);
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(mkfs_options(root_owner).split(' '))
        .arg(&tmp)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let output =
        crate::bounded::output("mkfs.ext4", &mut mkfs, None, crate::bounded::TOOL_DEADLINE)
            .map_err(DiskError::io_err("run mkfs.ext4 for", &tmp))?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(DiskError::Mkfs {
            path: tmp,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(DiskError::io_err("fsync", &tmp))?;
    fs::rename(&tmp, image).map_err(DiskError::io_err("rename into place", image))
}

/// Whether the host's mkfs.ext4 takes `-E assume_storage_prezeroed` (e2fsprogs 1.47 or later),
/// asked once per process (`mke2fs -V`); `false` if it cannot be told.
fn mkfs_knows_prezeroed() -> bool {
    static KNOWS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWS.get_or_init(|| {
        let mut version = Command::new("mkfs.ext4");
        version
            .arg("-V")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        match crate::bounded::output(
            "mkfs.ext4",
            &mut version,
            None,
            crate::bounded::TOOL_DEADLINE,
        ) {
            Ok(output) => e2fsprogs_has_prezeroed(&String::from_utf8_lossy(&output.stderr)),
            Err(error) => {
                tracing::warn!(%error, "mkfs.ext4 -V");
                false
            }
        }
    })
}

/// Whether `mke2fs -V` output (`mke2fs 1.47.0 (5-Feb-2023)`) names e2fsprogs 1.47 or later.
fn e2fsprogs_has_prezeroed(version_output: &str) -> bool {
    let Some(version) = version_output
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
    else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (1, 47),
        _ => false,
    }
}

/// The image's size in bytes, `None` if it does not exist.
pub fn image_size(image: &Path) -> Result<Option<u64>, DiskError> {
    match fs::metadata(image) {
        Ok(meta) => Ok(Some(meta.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DiskError::Io {
            operation: "stat",
            path: image.to_path_buf(),
            source,
        }),
    }
}

/// Attaches `image` to a free loop device with autoclear and mounts its ext4 on `target`
/// (nodev, nosuid). Call inside a private mount namespace: the mount, and with it the loop
/// device, lives only as long as that namespace and its copies.
pub fn attach_and_mount(image: &Path, target: &Path) -> Result<PathBuf, DiskError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(DiskError::io_err("open", image))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .map_err(DiskError::io_err("open", Path::new(LOOP_CONTROL)))?;
    let loop_err = |operation| {
        let image = image.to_path_buf();
        move |source| DiskError::Loop {
            operation,
            image,
            source,
        }
    };
    let mut last = Errno::EBUSY;
    for _ in 0..LOOP_ATTACH_ATTEMPTS {
        let number =
            sys::loop_ctl_get_free(control.as_fd()).map_err(loop_err("LOOP_CTL_GET_FREE"))?;
        let device = PathBuf::from(format!("/dev/loop{number}"));
        let loop_file = match OpenOptions::new().read(true).write(true).open(&device) {
            Ok(file) => file,
            // udev-less hosts: the node may appear a moment after GET_FREE created the device.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            Err(source) => {
                return Err(DiskError::Io {
                    operation: "open",
                    path: device,
                    source,
                })
            }
        };
        match sys::loop_configure(loop_file.as_fd(), backing.as_fd(), sys::LO_FLAGS_AUTOCLEAR) {
            Ok(_) => {}
            Err(Errno::EBUSY) => {
                last = Errno::EBUSY;
                continue;
            }
            Err(e) => return Err(loop_err("LOOP_CONFIGURE")(e)),
        }
        crate::runtime::process::helper::step("mount the disk");
        mount_ext4(&device, target, MsFlags::empty())?;
        // Closing our fd leaves the mount as the only user: autoclear detaches the device when
        // the mount goes away (or right now, if the mount failed above).
        drop(loop_file);
        return Ok(device);
    }
    Err(loop_err("LOOP_CONFIGURE (no free loop device)")(last))
}

/// Mounts the ext4 on `device` at `target` (nodev, nosuid, plus `extra`).
fn mount_ext4(device: &Path, target: &Path, extra: MsFlags) -> Result<(), DiskError> {
    mount(
        Some(device),
        target,
        Some("ext4"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID | extra,
        None::<&str>,
    )
    .map_err(|source| DiskError::Mount {
        device: device.to_path_buf(),
        target: target.to_path_buf(),
        source,
    })
}

/// Mounts `image`'s filesystem on `mount_point` for reading a copy of it: the loop device that
/// already backs it (a running VPS: the same superblock; the returned file keeps the device
/// attached), else a fresh autoclear one. Call inside a private mount namespace.
pub fn mount_for_copy(image: &Path, mount_point: &Path) -> Result<Option<File>, DiskError> {
    match open_backing_loop(image)? {
        Some((device, loop_file)) => {
            mount_ext4(&device, mount_point, MsFlags::MS_NOEXEC)?;
            Ok(Some(loop_file))
        }
        None => {
            attach_and_mount(image, mount_point)?;
            Ok(None)
        }
    }
}

/// Sizes of an image before and after [`extend_image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGrowth {
    /// The image's size before.
    pub old_bytes: u64,
    /// Its size now.
    pub new_bytes: u64,
}

/// Extends the sparse image to `size_bytes` (a hole; the filesystem on it is not touched) and
/// fsyncs it. Already that size is a no-op; smaller is refused: a disk never shrinks.
pub fn extend_image(image: &Path, size_bytes: u64) -> Result<ImageGrowth, DiskError> {
    let file = OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(DiskError::io_err("open", image))?;
    let old_bytes = file
        .metadata()
        .map_err(DiskError::io_err("stat", image))?
        .len();
    if size_bytes < old_bytes {
        return Err(DiskError::WouldShrink {
            image: image.to_path_buf(),
            size_bytes: old_bytes,
            requested_bytes: size_bytes,
        });
    }
    if size_bytes > old_bytes {
        file.set_len(size_bytes)
            .map_err(DiskError::io_err("extend", image))?;
        file.sync_all().map_err(DiskError::io_err("fsync", image))?;
    }
    Ok(ImageGrowth {
        old_bytes,
        new_bytes: size_bytes,
    })
}

/// What [`grow_filesystem_online`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsGrowth {
    /// The loop device the filesystem was grown through.
    pub device: PathBuf,
    /// True if the device was the running VPS's (online growth), false if it was attached for
    /// the growth (the VPS was stopped; the device goes away with the helper's namespace).
    pub online: bool,
    /// The filesystem's block size.
    pub block_size: u64,
    /// The block count asked for: the whole image.
    pub blocks: u64,
    /// Filesystem size as `df` shows it (statvfs blocks x fragment size), before and after.
    pub fs_bytes_before: u64,
    /// See `fs_bytes_before`.
    pub fs_bytes_after: u64,
}

/// Grows the ext4 on `image` to fill the image, mounted at `mount_point`: online.
///
/// Call only in a private mount namespace of a single-threaded process that exits afterwards
/// (the `grow-disk` helper): the mount made here must die with it. If a loop device backs
/// `image` (the VPS runs), it is told the backing file grew (`LOOP_SET_CAPACITY`) and mounted
/// a second time, which yields the VPS's own superblock, so `EXT4_IOC_RESIZE_FS` grows the
/// live filesystem online. Otherwise the image is attached (autoclear) and mounted just for
/// the growth. `resize2fs` is never used: in this namespace it would not see the VPS's mount
/// and would resize a mounted filesystem offline.
pub fn grow_filesystem_online(image: &Path, mount_point: &Path) -> Result<FsGrowth, DiskError> {
    // Checked first: without it EXT4_IOC_RESIZE_FS fails with a bare EPERM, after a mount.
    if !capabilities::has_effective(CAP_SYS_RESOURCE) {
        return Err(DiskError::OnlineGrowthNotPermitted {
            image: image.to_path_buf(),
        });
    }
    let image_bytes = fs::metadata(image)
        .map_err(DiskError::io_err("stat", image))?
        .len();
    let (device, online, held) = match open_backing_loop(image)? {
        Some((device, loop_file)) => {
            sys::loop_set_capacity(loop_file.as_fd()).map_err(|source| DiskError::Loop {
                operation: "LOOP_SET_CAPACITY",
                image: image.to_path_buf(),
                source,
            })?;
            mount_ext4(&device, mount_point, MsFlags::MS_NOEXEC)?;
            (device, true, Some(loop_file))
        }
        None => (attach_and_mount(image, mount_point)?, false, None),
    };
    let resize_err = |operation| {
        let mount_point = mount_point.to_path_buf();
        let device = device.clone();
        move |source| DiskError::Resize {
            operation,
            mount_point,
            device,
            source,
        }
    };
    let root = File::open(mount_point).map_err(DiskError::io_err("open", mount_point))?;
    let (block_size, before_blocks) =
        statvfs_blocks(&fstatvfs(&root).map_err(resize_err("statvfs"))?);
    let blocks = target_blocks(image_bytes, block_size).ok_or_else(|| DiskError::BadBlockSize {
        image: image.to_path_buf(),
        block_size,
    })?;
    sys::ext4_resize_fs(root.as_fd(), blocks).map_err(resize_err("EXT4_IOC_RESIZE_FS"))?;
    let (_, after_blocks) = statvfs_blocks(&fstatvfs(&root).map_err(resize_err("statvfs"))?);
    drop(held);
    Ok(FsGrowth {
        device,
        online,
        block_size,
        blocks,
        fs_bytes_before: before_blocks.saturating_mul(block_size),
        fs_bytes_after: after_blocks.saturating_mul(block_size),
    })
}

/// Grows the ext4 in the unattached `image` to fill it: `e2fsck -f -y` (resize2fs insists on a
/// freshly checked filesystem; errors it can fix are fixed), then `resize2fs`. The caller must
/// make sure no loop device backs `image` (a mounted filesystem must never be resized
/// offline) and that none can be attached meanwhile.
pub fn grow_filesystem_offline(image: &Path) -> Result<(), DiskError> {
    let fsck = run_tool("e2fsck", &["-f", "-y"], image)?;
    // 0: clean; 1: errors fixed; 2: fixed, reboot advised (irrelevant to an image).
    match fsck.status.code() {
        Some(0) => {}
        Some(1 | 2) => tracing::warn!(
            image = %image.display(),
            output = %tool_output(&fsck),
            "e2fsck fixed errors before growing the disk"
        ),
        _ => return Err(tool_failed("e2fsck", image, &fsck)),
    }
    let resize = run_tool("resize2fs", &[], image)?;
    if !resize.status.success() {
        return Err(tool_failed("resize2fs", image, &resize));
    }
    Ok(())
}

fn run_tool(
    tool: &'static str,
    args: &[&str],
    image: &Path,
) -> Result<std::process::Output, DiskError> {
    let mut command = Command::new(tool);
    command
        .args(args)
        .arg(image)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    crate::bounded::output(tool, &mut command, None, crate::bounded::TOOL_DEADLINE).map_err(
        |source| DiskError::Io {
            operation: tool,
            path: image.to_path_buf(),
            source,
        },
    )
}

fn tool_output(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
    .trim()
    .to_string()
}

fn tool_failed(tool: &'static str, image: &Path, output: &std::process::Output) -> DiskError {
    DiskError::Tool {
        tool,
        path: image.to_path_buf(),
        status: output.status.to_string(),
        output: tool_output(output),
    }
}

/// (block size, blocks) of a statvfs result. The fragment size is ext4's block size
/// (`f_bsize` is only the preferred IO size).
#[allow(clippy::useless_conversion)] // c_ulong and fsblkcnt_t are narrower on 32-bit targets
fn statvfs_blocks(stat: &nix::sys::statvfs::Statvfs) -> (u64, u64) {
    (u64::from(stat.fragment_size()), u64::from(stat.blocks()))
}

/// The block count of a filesystem that fills `image_bytes` with `block_size` blocks (a
/// partial last block is left out); `None` for a block size ext4 cannot have.
pub fn target_blocks(image_bytes: u64, block_size: u64) -> Option<u64> {
    if !block_size.is_power_of_two() || !(1024..=65536).contains(&block_size) {
        return None;
    }
    Some(image_bytes / block_size)
}

/// The loop device backing `image`, opened (which keeps it attached for as long as the file is
/// open) and checked to be backed by `image`'s inode after opening, so a device that detached
/// and was re-used for another image in between is never touched. `None` if none backs it.
fn open_backing_loop(image: &Path) -> Result<Option<(PathBuf, File)>, DiskError> {
    let meta = fs::metadata(image).map_err(DiskError::io_err("stat", image))?;
    for _ in 0..LOOP_FIND_ATTEMPTS {
        let Some((_, number)) = loop_device_of(image) else {
            return Ok(None);
        };
        let device = PathBuf::from(format!("/dev/loop{number}"));
        let loop_file = match OpenOptions::new().read(true).write(true).open(&device) {
            Ok(file) => file,
            Err(source) => {
                return Err(DiskError::Io {
                    operation: "open",
                    path: device,
                    source,
                })
            }
        };
        match sys::loop_backing_file(loop_file.as_fd()) {
            Ok((dev, ino)) if dev == meta.dev() && ino == meta.ino() => {
                return Ok(Some((device, loop_file)));
            }
            // Detached (ENXIO) or now another image's: look again.
            Ok(_) | Err(Errno::ENXIO) => {
                drop(loop_file);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(DiskError::Loop {
                    operation: "LOOP_GET_STATUS64",
                    image: image.to_path_buf(),
                    source,
                })
            }
        }
    }
    Err(DiskError::Loop {
        operation: "find the loop device (it kept changing)",
        image: image.to_path_buf(),
        source: Errno::EBUSY,
    })
}

/// The loop device (`major`, `minor`) currently backed by `image`, if any, found through
/// `/sys/block/loop*/loop/backing_file`.
pub fn loop_device_of(image: &Path) -> Option<(u64, u64)> {
    let image = fs::canonicalize(image).ok()?;
    let entries = fs::read_dir("/sys/block").ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(minor) = name
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let backing = fs::read_to_string(entry.path().join("loop/backing_file"));
        if backing.is_ok_and(|b| Path::new(b.trim()) == image) {
            return Some((LOOP_MAJOR, minor));
        }
    }
    None
}

/// Loop devices whose backing file is under `dir` (for leak checks).
pub fn loop_devices_under(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let backing = fs::read_to_string(entry.path().join("loop/backing_file")).ok()?;
            Path::new(backing.trim()).starts_with(dir).then(|| {
                format!(
                    "{} -> {}",
                    entry.file_name().to_string_lossy(),
                    backing.trim()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prezeroed_needs_e2fsprogs_1_47() {
        let with = "mke2fs 1.47.0 (5-Feb-2023)\n\tUsing EXT2FS Library version 1.47.0\n";
        assert!(e2fsprogs_has_prezeroed(with));
        assert!(e2fsprogs_has_prezeroed("mke2fs 2.0 (1-Jan-2030)"));
        assert!(!e2fsprogs_has_prezeroed("mke2fs 1.46.5 (30-Dec-2021)"));
        assert!(!e2fsprogs_has_prezeroed("mke2fs: command not found"));
        assert!(!e2fsprogs_has_prezeroed(""));
    }

    #[test]
    fn target_blocks_fill_the_image() {
        assert_eq!(target_blocks(64 << 20, 1024), Some(65_536));
        assert_eq!(target_blocks(20 << 30, 4096), Some(5_242_880));
        // A partial last block is not part of the filesystem.
        assert_eq!(target_blocks((64 << 20) + 1000, 1024), Some(65_536));
        assert_eq!(target_blocks((64 << 20) + 4095, 4096), Some(16_384));
        for bad in [0, 512, 3000, 1 << 17] {
            assert_eq!(target_blocks(64 << 20, bad), None, "block size {bad}");
        }
    }

    #[test]
    fn extend_image_grows_sparse_and_never_shrinks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("disk.img");
        File::create(&image)
            .and_then(|f| f.set_len(16 << 20))
            .expect("image");
        let grown = extend_image(&image, 48 << 20).expect("grow");
        assert_eq!(
            grown,
            ImageGrowth {
                old_bytes: 16 << 20,
                new_bytes: 48 << 20
            }
        );
        let meta = fs::metadata(&image).expect("stat");
        assert_eq!(meta.len(), 48 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "extension is not sparse");
        // Same size again: nothing to do.
        assert_eq!(
            extend_image(&image, 48 << 20).expect("same").old_bytes,
            48 << 20
        );
        match extend_image(&image, 32 << 20) {
            Err(DiskError::WouldShrink {
                size_bytes,
                requested_bytes,
                ..
            }) => assert_eq!((size_bytes, requested_bytes), (48 << 20, 32 << 20)),
            other => panic!("expected a refusal to shrink, got {other:?}"),
        }
        assert_eq!(fs::metadata(&image).expect("stat").len(), 48 << 20);
    }
}
