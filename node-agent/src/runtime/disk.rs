//! The VPS's own disk: a sparse ext4 image file (`vps/<id>/disk.img`, like OpenVZ's ploop),
//! sized to the plan. It holds the overlay's upper and work dirs, so the VPS's writes are capped
//! by the image size (ENOSPC inside the VPS, the host untouched).
//!
//! The image is attached to a free loop device (`LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE`) with
//! `LO_FLAGS_AUTOCLEAR` and mounted only inside the start helper's private mount namespace, from
//! which the VPS's namespace inherits it. When the VPS's last process exits, the mount goes away
//! with the namespace and the loop device detaches itself: a crash cannot leak either.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use super::idmap::IdRange;

/// Disk size used when a spec does not give one.
pub const DEFAULT_DISK_BYTES: u64 = 1 << 30;
/// Smallest disk accepted (ext4 with a journal needs a few MiB).
pub const MIN_DISK_BYTES: u64 = 16 << 20;

const LOOP_CONTROL: &str = "/dev/loop-control";
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LOOP_MAJOR: u64 = 7;
/// How often to retry when another process grabs the free loop device first.
const LOOP_ATTACH_ATTEMPTS: usize = 16;

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
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskError {
    let path = path.to_path_buf();
    move |source| DiskError::Io {
        operation,
        path,
        source,
    }
}

/// Creates (or re-creates: a rebuild) the sparse image at `image` with a fresh ext4 whose root
/// directory belongs to the VPS's root. Written to a temp file and renamed, so a crash leaves
/// either no image or a complete one.
pub fn create_image(image: &Path, size_bytes: u64, ids: IdRange) -> Result<(), DiskError> {
    let tmp = image.with_extension("img.tmp");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.set_len(size_bytes).map_err(io_err("truncate", &tmp))?;
    drop(file);
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E"])
        .arg(format!(
            "nodiscard,root_owner={}:{}",
            ids.host_base, ids.host_base
        ))
        .arg(&tmp)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(io_err("run mkfs.ext4 for", &tmp))?;
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
        .map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, image).map_err(io_err("rename into place", image))
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

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

nix::ioctl_none_bad!(loop_ctl_get_free, LOOP_CTL_GET_FREE);
nix::ioctl_write_ptr_bad!(loop_configure, LOOP_CONFIGURE, LoopConfig);

/// Attaches `image` to a free loop device with autoclear and mounts its ext4 on `target`
/// (nodev, nosuid). Call inside a private mount namespace: the mount, and with it the loop
/// device, lives only as long as that namespace and its copies.
pub fn attach_and_mount(image: &Path, target: &Path) -> Result<PathBuf, DiskError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io_err("open", image))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .map_err(io_err("open", Path::new(LOOP_CONTROL)))?;
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
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let number = unsafe { loop_ctl_get_free(control.as_raw_fd()) }
            .map_err(loop_err("LOOP_CTL_GET_FREE"))?;
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
        let config = LoopConfig {
            fd: u32::try_from(backing.as_raw_fd()).unwrap_or_default(),
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_AUTOCLEAR,
                lo_file_name: [0; 64],
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `config` is a fully initialised loop_config that outlives the call; the kernel
        // only reads it.
        match unsafe { loop_configure(loop_file.as_raw_fd(), &config) } {
            Ok(_) => {}
            Err(Errno::EBUSY) => {
                last = Errno::EBUSY;
                continue;
            }
            Err(e) => return Err(loop_err("LOOP_CONFIGURE")(e)),
        }
        mount(
            Some(&device),
            target,
            Some("ext4"),
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None::<&str>,
        )
        .map_err(|source| DiskError::Mount {
            device: device.clone(),
            target: target.to_path_buf(),
            source,
        })?;
        // Closing our fd leaves the mount as the only user: autoclear detaches the device when
        // the mount goes away (or right now, if the mount failed above).
        drop(loop_file);
        return Ok(device);
    }
    Err(loop_err("LOOP_CONFIGURE (no free loop device)")(last))
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
    fn loop_structs_have_kernel_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
