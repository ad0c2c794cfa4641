//! Growing a VPS's disk, online while it runs: the agent extends the sparse image
//! ([`disk::extend_image`]), then, if a loop device backs it (the VPS runs), runs
//! `paddock-agent __internal grow-disk <json>`, a single-threaded helper that takes a private
//! mount namespace of its own and grows the ext4 in it ([`disk::grow_filesystem_online`]).
//! Otherwise nothing has the filesystem mounted and it is grown offline on the image file
//! ([`disk::grow_filesystem_offline`]), which needs neither a loop device nor a mount, nor the
//! `CAP_SYS_RESOURCE` that online growth needs.
//!
//! The VPS's ext4 is mounted only in the VPS's mount namespace and unreachable after its
//! pivot_root, so the helper mounts the same loop device again (the same superblock) and
//! issues `EXT4_IOC_RESIZE_FS` there. That mount, and the loop device when the helper attached
//! it for a stopped VPS, die with the helper's namespace when it exits, also if it panics or is
//! killed; nothing is ever mounted in the host's namespace. Both steps are idempotent, so an
//! interrupted growth is simply run again (see `VpsState::disk_grow_to`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::disk::{self, DiskError, FsGrowth, ImageGrowth};
use crate::runtime::isolation::{namespaces, rootfs};
use crate::runtime::process::helper::{self, HelperError, GROW_DISK};

/// Errors growing a disk, by step.
#[derive(Debug, thiserror::Error)]
pub enum DiskGrowthError {
    /// Extending the image file failed (or would have shrunk it).
    #[error("extend image: {0}")]
    ExtendImage(#[source] DiskError),
    /// Growing the unattached filesystem with e2fsck + resize2fs failed.
    #[error("grow filesystem offline: {0}")]
    Offline(#[source] DiskError),
    /// The grow-disk helper could not be run or reported a failure (its message names the
    /// step: loop device, mount, ioctl).
    #[error("grow filesystem: {0}")]
    Helper(#[from] helper::HelperCallError),
}

/// What the agent asks the grow-disk helper to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GrowRequest {
    /// The VPS's disk image (already extended).
    pub image: PathBuf,
    /// An existing directory to mount the filesystem on inside the helper's namespace.
    pub mount_point: PathBuf,
}

/// A completed growth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskGrowth {
    /// The image file.
    pub image: ImageGrowth,
    /// What the helper did when the filesystem was grown through a loop device; `None` when
    /// it was grown offline.
    pub online: Option<FsGrowth>,
}

/// Grows `image` to `size_bytes` (never shrinks it) and its filesystem to fill it, online if a
/// loop device backs it (the VPS runs), else offline. `mount_point` is a directory the helper
/// may mount on in its own namespace. The caller holds the VPS's lock, so no start can attach
/// the image meanwhile. Idempotent: growing to the current size still makes the filesystem
/// fill the image, which finishes a growth interrupted between the two steps.
pub(crate) fn grow(
    helper_binary: &Path,
    image: &Path,
    mount_point: &Path,
    size_bytes: u64,
    limit: std::time::Duration,
) -> Result<DiskGrowth, DiskGrowthError> {
    let image_growth =
        disk::extend_image(image, size_bytes).map_err(DiskGrowthError::ExtendImage)?;
    if disk::loop_device_of(image).is_none() {
        disk::grow_filesystem_offline(image).map_err(DiskGrowthError::Offline)?;
        return Ok(DiskGrowth {
            image: image_growth,
            online: None,
        });
    }
    let request = GrowRequest {
        image: image.to_path_buf(),
        mount_point: mount_point.to_path_buf(),
    };
    let filesystem: FsGrowth = helper::call(helper_binary, GROW_DISK, &request, limit)?;
    Ok(DiskGrowth {
        image: image_growth,
        online: Some(filesystem),
    })
}

/// The grow-disk helper: `__internal grow-disk <json>`; prints the [`FsGrowth`] as JSON.
pub(crate) fn helper_main(args: &[OsString]) -> i32 {
    let grown = helper_grow(args).and_then(|growth| {
        serde_json::to_string(&growth).map_err(|e| HelperError::Usage(format!("encode reply: {e}")))
    });
    match grown {
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

fn helper_grow(args: &[OsString]) -> Result<FsGrowth, HelperError> {
    let request: GrowRequest = helper::decode_request(args)?;
    helper::ensure_single_threaded()?;
    namespaces::unshare_mount_namespace()?;
    // Without this, the mount below would propagate into the host's (shared) namespace.
    rootfs::make_private("/")?;
    Ok(disk::grow_filesystem_online(
        &request.image,
        &request.mount_point,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_image_fails_at_the_extend_step_before_any_helper_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("missing.img");
        let err = grow(
            Path::new("/nonexistent/helper"),
            &image,
            dir.path(),
            64 << 20,
            std::time::Duration::from_secs(60),
        )
        .expect_err("missing image");
        assert!(
            matches!(err, DiskGrowthError::ExtendImage(DiskError::Io { .. })),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("extend image: open"), "{err}");
    }

    #[test]
    fn a_smaller_size_is_refused_and_the_image_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(32 << 20))
            .expect("image");
        let err = grow(
            Path::new("/nonexistent/helper"),
            &image,
            dir.path(),
            16 << 20,
            std::time::Duration::from_secs(60),
        )
        .expect_err("shrink");
        assert!(
            matches!(
                err,
                DiskGrowthError::ExtendImage(DiskError::WouldShrink { .. })
            ),
            "{err:?}"
        );
        assert_eq!(std::fs::metadata(&image).expect("stat").len(), 32 << 20);
    }
}
