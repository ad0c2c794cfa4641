//! The kernel's cumulative usage counters of a VPS: CPU time, memory and IO on its own disk,
//! read from its cgroup files (v1 controller directories or the v2 directory), and the
//! incarnation that names one run's counters.
//!
//! Read by the meter while a VPS runs and by the runtime when a run ends (its closing
//! counters, see [`crate::runtime::ClosedRun`]), so both name and count a run the same way.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::FromIo;

/// Device major number of loop devices: a VPS's disk is one.
const LOOP_MAJOR: &str = "7";

/// Why reading usage counters failed.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A cgroup or /proc file could not be read.
    #[error("{operation} {path}: {source}")]
    Io {
        /// `read` or `stat`.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A counter file has an unexpected format.
    #[error("parsing {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl FromIo for UsageError {
    fn from_io(operation: &'static str, path: PathBuf, source: std::io::Error) -> Self {
        Self::Io {
            operation,
            path,
            source,
        }
    }
}

/// Block IO on the VPS's own disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// What a VPS's cgroup counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// Cumulative CPU time.
    pub cpu_usage_ns: u64,
    /// Memory charged now.
    pub memory_bytes: u64,
    /// The highest memory charge since the cgroup was made.
    pub memory_peak_bytes: u64,
    /// Cumulative IO on the VPS's disk.
    pub io: IoCounters,
}

/// The incarnation of a run: its cgroup directory's inode and its init's start time. Changes
/// whenever the counters restart from zero (every start gets a new cgroup).
pub fn incarnation(cgroup_inode: u64, init_start_time: u64) -> String {
    format!("{cgroup_inode}-{init_start_time}")
}

/// The inode of the first of `paths` (a VPS's cgroup directories) that exists; `None` if
/// none does.
pub fn cgroup_inode(paths: &[PathBuf]) -> Result<Option<u64>, UsageError> {
    let Some(first) = paths.iter().find(|p| p.is_dir()) else {
        return Ok(None);
    };
    std::fs::metadata(first)
        .map(|meta| Some(meta.ino()))
        .map_err(UsageError::io_err("stat", first))
}

fn read_file(path: &Path) -> Result<Option<String>, UsageError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(UsageError::io_err("read", path)(error)),
    }
}

fn read_u64(path: &Path) -> Result<Option<u64>, UsageError> {
    let Some(text) = read_file(path)? else {
        return Ok(None);
    };
    let text = text.trim();
    if text == "max" {
        return Ok(Some(u64::MAX));
    }
    text.parse().map(Some).map_err(|_| UsageError::Parse {
        path: path.to_owned(),
        reason: format!("{text:?} is not a number"),
    })
}

/// The counter files of one VPS's cgroup, each in the one hierarchy directory that has it
/// (the cgroup managers know which controller each directory is, see
/// [`crate::runtime::cgroups::CgroupManager::counter_files`]): a round reads these few files
/// instead of trying every counter name in every hierarchy directory. `None`: the host has no
/// such counter; it reads as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterFiles {
    /// `cpuacct.usage` (v1) or `cpu.stat` (v2).
    pub cpu: Option<PathBuf>,
    /// `memory.usage_in_bytes` (v1; `memory.max_usage_in_bytes` beside it) or `memory.current`
    /// (v2; `memory.peak` beside it).
    pub memory: Option<PathBuf>,
    /// `blkio.throttle.io_service_bytes` (v1; `blkio.throttle.io_serviced` beside it) or
    /// `io.stat` (v2).
    pub io: Option<PathBuf>,
}

impl CounterFiles {
    /// The files of a v1 cgroup from its cpuacct, memory and blkio directories.
    pub fn v1(cpuacct: Option<&Path>, memory: Option<&Path>, blkio: Option<&Path>) -> Self {
        Self {
            cpu: cpuacct.map(|dir| dir.join("cpuacct.usage")),
            memory: memory.map(|dir| dir.join("memory.usage_in_bytes")),
            io: blkio.map(|dir| dir.join("blkio.throttle.io_service_bytes")),
        }
    }

    /// The files of a v2 cgroup: all in its one directory.
    pub fn v2(dir: &Path) -> Self {
        Self {
            cpu: Some(dir.join("cpu.stat")),
            memory: Some(dir.join("memory.current")),
            io: Some(dir.join("io.stat")),
        }
    }
}

/// `path` with its file name replaced by `name`.
fn beside(path: &Path, name: &str) -> PathBuf {
    path.with_file_name(name)
}

fn is_named(path: &Path, name: &str) -> bool {
    path.file_name().is_some_and(|n| n == name)
}

/// Reads CPU, memory and IO counters from `files` (the format follows from each file's
/// name); a missing file counts 0.
pub fn read_counters(files: &CounterFiles) -> Result<CgroupUsage, UsageError> {
    let mut usage = CgroupUsage::default();
    if let Some(cpu) = &files.cpu {
        if is_named(cpu, "cpuacct.usage") {
            usage.cpu_usage_ns = read_u64(cpu)?.unwrap_or(0);
        } else if let Some(text) = read_file(cpu)? {
            usage.cpu_usage_ns = keyed(&text, "usage_usec").map_or(0, |us| us.saturating_mul(1000));
        }
    }
    if let Some(memory) = &files.memory {
        if let Some(bytes) = read_u64(memory)? {
            let peak = if is_named(memory, "memory.usage_in_bytes") {
                "memory.max_usage_in_bytes"
            } else {
                "memory.peak"
            };
            usage.memory_bytes = bytes;
            usage.memory_peak_bytes = read_u64(&beside(memory, peak))?.unwrap_or(bytes);
        }
    }
    if let Some(io) = &files.io {
        if is_named(io, "blkio.throttle.io_service_bytes") {
            if let Some(text) = read_file(io)? {
                let (read, write) = blkio_v1(&text);
                usage.io.read_bytes = read;
                usage.io.write_bytes = write;
                if let Some(text) = read_file(&beside(io, "blkio.throttle.io_serviced"))? {
                    let (read, write) = blkio_v1(&text);
                    usage.io.read_ops = read;
                    usage.io.write_ops = write;
                }
            }
        } else if let Some(text) = read_file(io)? {
            usage.io = io_stat_v2(&text);
        }
    }
    Ok(usage)
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(key))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

/// Only loop devices count: the VPS's disk is one, and the loop driver's IO
/// to the image's backing device is the same bytes again.
fn is_vps_disk(device: &str) -> bool {
    device.split(':').next() == Some(LOOP_MAJOR)
}

/// Sums `Read` and `Write` lines of `blkio.throttle.io_service_bytes` or
/// `io_serviced` over the VPS's disk devices.
pub fn blkio_v1(text: &str) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [device, op, value] = parts[..] else {
            continue;
        };
        if !is_vps_disk(device) {
            continue;
        }
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        match op {
            "Read" => read = read.saturating_add(value),
            "Write" => write = write.saturating_add(value),
            _ => {}
        }
    }
    (read, write)
}

/// Sums `rbytes`, `wbytes`, `rios`, `wios` of v2 `io.stat` over the VPS's disk devices.
pub fn io_stat_v2(text: &str) -> IoCounters {
    let mut io = IoCounters::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(device) = parts.next() else {
            continue;
        };
        if !is_vps_disk(device) {
            continue;
        }
        for pair in parts {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let slot = match key {
                "rbytes" => &mut io.read_bytes,
                "wbytes" => &mut io.write_bytes,
                "rios" => &mut io.read_ops,
                "wios" => &mut io.write_ops,
                _ => continue,
            };
            *slot = slot.saturating_add(value);
        }
    }
    io
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkio_v1_sums_loop_devices_only() {
        let text = "7:3 Read 4096\n7:3 Write 8192\n7:3 Sync 0\n8:0 Read 99\n8:0 Write 99\n7:4 Write 10\nTotal 12298\n";
        assert_eq!(blkio_v1(text), (4096, 8202));
    }

    #[test]
    fn io_stat_v2_sums_loop_devices_only() {
        let text = "7:3 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n8:0 rbytes=5 wbytes=5 rios=5 wios=5\n";
        assert_eq!(
            io_stat_v2(text),
            IoCounters {
                read_bytes: 10,
                write_bytes: 20,
                read_ops: 1,
                write_ops: 2
            }
        );
    }

    #[test]
    fn cgroup_v1_and_v2_files_are_read() {
        let root = tempfile::tempdir().expect("tempdir");
        let cpu = root.path().join("cpuacct");
        let memory = root.path().join("memory");
        let blkio = root.path().join("blkio");
        let v2 = root.path().join("v2");
        for dir in [&cpu, &memory, &blkio, &v2] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(cpu.join("cpuacct.usage"), "123456789\n").expect("write");
        std::fs::write(memory.join("memory.usage_in_bytes"), "1000\n").expect("write");
        std::fs::write(memory.join("memory.max_usage_in_bytes"), "5000\n").expect("write");
        std::fs::write(
            blkio.join("blkio.throttle.io_service_bytes"),
            "7:1 Read 1\n7:1 Write 2\n",
        )
        .expect("write");
        std::fs::write(
            blkio.join("blkio.throttle.io_serviced"),
            "7:1 Read 3\n7:1 Write 4\n",
        )
        .expect("write");
        let files = CounterFiles::v1(Some(&cpu), Some(&memory), Some(&blkio));
        let usage = read_counters(&files).expect("v1");
        assert_eq!(usage.cpu_usage_ns, 123_456_789);
        assert_eq!((usage.memory_bytes, usage.memory_peak_bytes), (1000, 5000));
        assert_eq!(
            usage.io,
            IoCounters {
                read_bytes: 1,
                write_bytes: 2,
                read_ops: 3,
                write_ops: 4
            }
        );
        let inode = std::fs::metadata(&cpu).expect("stat").ino();
        assert_eq!(
            cgroup_inode(&[root.path().join("missing"), cpu]).expect("inode"),
            Some(inode)
        );
        assert_eq!(
            cgroup_inode(&[root.path().join("missing")]).expect("inode"),
            None
        );

        std::fs::write(v2.join("cpu.stat"), "usage_usec 42\nuser_usec 40\n").expect("write");
        std::fs::write(v2.join("memory.current"), "700\n").expect("write");
        std::fs::write(v2.join("memory.peak"), "900\n").expect("write");
        std::fs::write(v2.join("io.stat"), "7:2 rbytes=8 wbytes=9 rios=1 wios=1\n").expect("write");
        let usage = read_counters(&CounterFiles::v2(&v2)).expect("v2");
        assert_eq!(usage.cpu_usage_ns, 42_000);
        assert_eq!((usage.memory_bytes, usage.memory_peak_bytes), (700, 900));
        assert_eq!(usage.io.write_bytes, 9);

        // A host without a counter, or a cgroup without its files: zeros, not an error.
        let usage =
            read_counters(&CounterFiles::v1(None, Some(&v2.join("none")), None)).expect("none");
        assert_eq!(usage, CgroupUsage::default());
    }
}
