//! The agent's files on disk: durable replacement of its small files (VPS state, journals,
//! port specs, template metadata) and the root-only modes of everything under its state dir.
//!
//! Tenant data and node state are root-only: a local unprivileged user on the node is an
//! attacker too. Directories are [`PRIVATE_DIR_MODE`], files [`PRIVATE_FILE_MODE`] (logs
//! 0640: root and the adm-like group of the node's operators).

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every directory the agent creates under its state dir.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file holding tenant data or node state (images, state, specs, maps).
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of log files (console logs): root writes, the operators' group may read.
pub const LOG_FILE_MODE: u32 = 0o640;

/// Which step of [`write_atomic`] failed, on which file.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {path}: {source}")]
pub struct WriteError {
    pub operation: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// An error enum that can carry an IO error with the operation and the path it failed on
/// (each module keeps its own enum, with an `Io { operation, path, source }`-like variant).
pub trait FromIo: Sized {
    /// The error for `source`, raised by `operation` on `path`.
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self;

    /// A `map_err` adapter: `.map_err(DiskError::io_err("open", &path))`.
    fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::from_io(operation, path, source)
    }
}

impl WriteError {
    /// The same failure as another module's error (its `Io`-like variant).
    pub fn into_io<E: FromIo>(self) -> E {
        E::from_io(self.operation, self.path, self.source)
    }
}

impl FromIo for WriteError {
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self {
            operation,
            path,
            source,
        }
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old content or the new, never a
/// mix or nothing: a temp file beside it (`.<name>.tmp-<pid>`), fsync, rename over `path`,
/// fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&tmp)
        .map_err(WriteError::io_err("create", &tmp))?;
    // A temp file left by a crash may exist with another mode; the content never does.
    file.set_permissions(Permissions::from_mode(PRIVATE_FILE_MODE))
        .map_err(WriteError::io_err("chmod", &tmp))?;
    file.write_all(bytes)
        .map_err(WriteError::io_err("write", &tmp))?;
    file.sync_all().map_err(WriteError::io_err("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(WriteError::io_err("rename into place", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(WriteError::io_err("fsync dir", dir))
}

/// Creates `path` and its missing parents as root-only directories, and narrows `path` itself
/// to [`PRIVATE_DIR_MODE`] when it existed with a wider mode (an older installation).
pub fn create_private_dir_all(path: &Path) -> Result<(), WriteError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
        .map_err(WriteError::io_err("create dir", path))?;
    set_mode(path, PRIVATE_DIR_MODE)
}

/// Sets the permission bits of `path` (not following a final symlink is not needed: the
/// agent's state dir holds no symlinks it did not make).
pub fn set_mode(path: &Path, mode: u32) -> Result<(), WriteError> {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(WriteError::io_err("chmod", path))
}

/// Narrows what an older agent left world-readable: every directory and regular file among
/// the direct entries of `dir` (and `dir` itself) gets the root-only mode; `*.log` files and
/// their rotations get [`LOG_FILE_MODE`]. Never follows symlinks and never descends, so a
/// VPS's mount points and template trees keep their own modes.
pub fn restrict_entries(dir: &Path) -> Result<(), WriteError> {
    set_mode(dir, PRIVATE_DIR_MODE)?;
    for entry in fs::read_dir(dir).map_err(WriteError::io_err("read dir", dir))? {
        let entry = entry.map_err(WriteError::io_err("read dir", dir))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(WriteError::io_err("stat", &path))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if file_type.is_dir() {
            set_mode(&path, PRIVATE_DIR_MODE)?;
        } else if file_type.is_file() {
            let is_log = name.ends_with(".log") || name.contains(".log.");
            set_mode(
                &path,
                if is_log {
                    LOG_FILE_MODE
                } else {
                    PRIVATE_FILE_MODE
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_carry_the_operation_and_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The temp file is made in a directory that does not exist.
        let path = dir.path().join("missing").join("state.json");
        let error = write_atomic(&path, b"{}").expect_err("no such directory");
        assert_eq!(error.operation, "create");
        assert_eq!(error.path.parent(), path.parent());
        assert_eq!(error.source.kind(), io::ErrorKind::NotFound);
        let wrapped = WriteError::io_err("read", &path)(io::ErrorKind::NotFound.into());
        assert_eq!(
            wrapped.to_string(),
            format!("read {}: entity not found", path.display())
        );
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").expect("write");
        write_atomic(&path, b"two").expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        let missing = write_atomic(&dir.path().join("gone/x.json"), b"x").expect_err("no dir");
        assert_eq!(missing.operation, "create");
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn written_files_and_created_dirs_are_root_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        fs::write(&path, b"old").expect("seed");
        set_mode(&path, 0o644).expect("widen");
        write_atomic(&path, b"new").expect("write");
        assert_eq!(mode(&path), PRIVATE_FILE_MODE);

        let nested = dir.path().join("a/b");
        create_private_dir_all(&nested).expect("create");
        assert_eq!(mode(&dir.path().join("a")), PRIVATE_DIR_MODE);
        assert_eq!(mode(&nested), PRIVATE_DIR_MODE);
        set_mode(&nested, 0o755).expect("widen");
        create_private_dir_all(&nested).expect("again");
        assert_eq!(
            mode(&nested),
            PRIVATE_DIR_MODE,
            "an existing dir is narrowed"
        );
    }

    #[test]
    fn restrict_entries_narrows_an_older_layout_without_descending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("vps-a");
        fs::create_dir_all(root.join("rootfs/etc")).expect("mkdir");
        for (name, old) in [
            ("disk.img", 0o644),
            ("console.log", 0o644),
            ("console.log.1", 0o666),
        ] {
            fs::write(root.join(name), b"x").expect("write");
            set_mode(&root.join(name), old).expect("chmod");
        }
        set_mode(&root, 0o755).expect("chmod");
        set_mode(&root.join("rootfs/etc"), 0o755).expect("chmod");
        let outside = dir.path().join("outside");
        fs::write(&outside, b"x").expect("write");
        set_mode(&outside, 0o644).expect("chmod");
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");

        restrict_entries(&root).expect("restrict");
        assert_eq!(mode(&root), PRIVATE_DIR_MODE);
        assert_eq!(mode(&root.join("disk.img")), PRIVATE_FILE_MODE);
        assert_eq!(mode(&root.join("console.log")), LOG_FILE_MODE);
        assert_eq!(mode(&root.join("console.log.1")), LOG_FILE_MODE);
        assert_eq!(mode(&root.join("rootfs")), PRIVATE_DIR_MODE);
        assert_eq!(mode(&root.join("rootfs/etc")), 0o755, "never descends");
        assert_eq!(mode(&outside), 0o644, "never follows a symlink");
    }
}
