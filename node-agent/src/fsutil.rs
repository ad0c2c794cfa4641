//! Durable replacement of the agent's small files (VPS state, journals, port specs,
//! template metadata).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Which step of [`write_atomic`] failed, on which file.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {path}: {source}")]
pub struct WriteError {
    pub operation: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// Replaces `path` with `bytes` so that a crash leaves the old content or the new, never a
/// mix or nothing: a temp file beside it (`.<name>.tmp-<pid>`), fsync, rename over `path`,
/// fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let err = |operation, path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError {
            operation,
            path,
            source,
        }
    };
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
        .open(&tmp)
        .map_err(err("create", &tmp))?;
    file.write_all(bytes).map_err(err("write", &tmp))?;
    file.sync_all().map_err(err("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(err("rename into place", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync dir", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
