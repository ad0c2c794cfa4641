//! Usage sampling: cumulative per-VPS counters (CPU time, memory current and
//! peak, IO bytes and operations, network bytes, disk-image allocation) read
//! from the kernel at `usage_interval_secs` and sent with the heartbeat.
//!
//! The agent never computes deltas: it sends what the kernel counts, with an
//! `incarnation` that changes whenever those counters restart from zero (the
//! cgroup directory's inode plus the init's start time) and a per-VPS
//! `sequence` persisted in `<state_dir>/metering.json`, so the controller can
//! drop repeats and count every byte exactly once across restarts of either side.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::network::Network;
use crate::runtime::{Runtime, VpsObserved};

/// Incarnation of a VPS that is not running: only its disk is counted.
pub const STOPPED_INCARNATION: &str = "stopped";

/// Device major number of loop devices: a VPS's disk is one.
const LOOP_MAJOR: &str = "7";

/// Why sampling failed.
#[derive(Debug, thiserror::Error)]
pub enum MeteringError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("sequence journal {path}: {source}")]
    Journal {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> MeteringError + 'a {
    move |source| MeteringError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Cumulative counters of one VPS at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub vps_id: String,
    /// Changes whenever the counters restart from zero.
    pub incarnation: String,
    /// Strictly increasing per VPS, across agent restarts.
    pub sequence: u64,
    pub sampled_at_unix_ms: i64,
    pub interval_ms: u32,
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub io: IoCounters,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    /// Allocated bytes of the sparse disk image (what `du` reports).
    pub disk_used_bytes: u64,
}

/// Block IO on the VPS's own disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// Samples every VPS at most once per interval.
pub struct Meter {
    runtime: Arc<Runtime>,
    network: Option<Arc<Network>>,
    state_dir: PathBuf,
    interval: Duration,
    state: Mutex<MeterState>,
}

struct MeterState {
    last_round: Option<Instant>,
    sequences: BTreeMap<String, u64>,
}

impl Meter {
    /// Loads the persisted sequence numbers from `state_dir`.
    pub fn new(
        runtime: Arc<Runtime>,
        network: Option<Arc<Network>>,
        state_dir: &Path,
        interval: Duration,
    ) -> Result<Self, MeteringError> {
        let path = journal_path(state_dir);
        let sequences = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| MeteringError::Journal { path, source })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(io_err("read", &path)(error)),
        };
        Ok(Self {
            runtime,
            network,
            state_dir: state_dir.to_owned(),
            interval,
            state: Mutex::new(MeterState {
                last_round: None,
                sequences,
            }),
        })
    }

    /// Samples of every listed VPS if an interval has passed since the last
    /// round, else nothing. Sequence numbers are persisted before they are
    /// returned, so a restarted agent never reuses one. Blocking.
    pub fn due_samples(&self, observed: &[VpsObserved]) -> Result<Vec<Sample>, MeteringError> {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A little slack so a heartbeat period that divides the interval does not skip a round.
        let slack = Duration::from_millis(200);
        if state
            .last_round
            .is_some_and(|last| last.elapsed() + slack < self.interval)
        {
            return Ok(Vec::new());
        }
        state.last_round = Some(Instant::now());
        let interval_ms = u32::try_from(self.interval.as_millis()).unwrap_or(u32::MAX);
        let mut samples = self.read_all(observed, interval_ms);
        let mut sequences = BTreeMap::new();
        for sample in &mut samples {
            let next = state.sequences.get(&sample.vps_id).copied().unwrap_or(0) + 1;
            sample.sequence = next;
            sequences.insert(sample.vps_id.clone(), next);
        }
        // Forget VPSes that no longer exist; keep ones that failed to sample this round.
        for vps in observed {
            if let Some(last) = state.sequences.get(&vps.vps_id) {
                sequences.entry(vps.vps_id.clone()).or_insert(*last);
            }
        }
        write_journal(&self.state_dir, &sequences)?;
        state.sequences = sequences;
        Ok(samples)
    }

    /// The counters of every listed VPS right now, for the metrics endpoint:
    /// no sequence numbers, nothing persisted, no effect on the next round. Blocking.
    pub fn current(&self, observed: &[VpsObserved]) -> Vec<Sample> {
        self.read_all(observed, 0)
    }

    /// Reads every listed VPS; one that cannot be read is logged and left out.
    fn read_all(&self, observed: &[VpsObserved], interval_ms: u32) -> Vec<Sample> {
        let mut samples = Vec::with_capacity(observed.len());
        for vps in observed {
            match self.read(vps, interval_ms) {
                Ok(sample) => samples.push(sample),
                Err(error) => tracing::warn!(vps_id = %vps.vps_id, %error, "usage sample"),
            }
        }
        samples
    }

    fn read(&self, vps: &VpsObserved, interval_ms: u32) -> Result<Sample, MeteringError> {
        let disk_image = self
            .state_dir
            .join("vps")
            .join(&vps.vps_id)
            .join("disk.img");
        let mut sample = Sample {
            vps_id: vps.vps_id.clone(),
            incarnation: STOPPED_INCARNATION.to_owned(),
            sampled_at_unix_ms: now_unix_ms(),
            interval_ms,
            disk_used_bytes: allocated_bytes(&disk_image)?,
            ..Sample::default()
        };
        let Some(pid) = vps.init_pid else {
            return Ok(sample);
        };
        let paths = self.runtime.cgroup_paths(&vps.vps_id);
        let Some(start_time) = init_start_time(pid)? else {
            return Ok(sample);
        };
        let Some(first) = paths.iter().find(|p| p.is_dir()) else {
            return Ok(sample);
        };
        let inode = std::fs::metadata(first)
            .map_err(io_err("stat", first))?
            .ino();
        sample.incarnation = format!("{inode}-{start_time}");
        read_cgroup_counters(&paths, &mut sample)?;
        if let Some(network) = &self.network {
            // No port (loopback-only or not attached yet): nothing crossed the wire.
            if let Ok(counters) = network.counters(&vps.vps_id) {
                sample.net_rx_bytes = counters.rx_bytes;
                sample.net_tx_bytes = counters.tx_bytes;
            }
        }
        Ok(sample)
    }
}

fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("metering.json")
}

fn write_journal(state_dir: &Path, sequences: &BTreeMap<String, u64>) -> Result<(), MeteringError> {
    let path = journal_path(state_dir);
    let tmp = state_dir.join("metering.json.tmp");
    let bytes = serde_json::to_vec(sequences).map_err(|source| MeteringError::Journal {
        path: path.clone(),
        source,
    })?;
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(&bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Bytes allocated to a (sparse) file; 0 if it does not exist.
pub fn allocated_bytes(path: &Path) -> Result<u64, MeteringError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(meta.blocks() * 512),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(io_err("stat", path)(error)),
    }
}

/// Start time (clock ticks after boot) of `pid`, or `None` if it is gone.
fn init_start_time(pid: u32) -> Result<Option<u64>, MeteringError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_err("read", &path)(error)),
    };
    // Fields after the parenthesised command: state is field 3, starttime field 22.
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| MeteringError::Parse {
            path: path.clone(),
            reason: "no ')' after the command".to_owned(),
        })?;
    after
        .split_whitespace()
        .nth(19)
        .and_then(|field| field.parse().ok())
        .map(Some)
        .ok_or_else(|| MeteringError::Parse {
            path,
            reason: "no start time field".to_owned(),
        })
}

fn read_file(path: &Path) -> Result<Option<String>, MeteringError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_err("read", path)(error)),
    }
}

fn read_u64(path: &Path) -> Result<Option<u64>, MeteringError> {
    let Some(text) = read_file(path)? else {
        return Ok(None);
    };
    let text = text.trim();
    if text == "max" {
        return Ok(Some(u64::MAX));
    }
    text.parse().map(Some).map_err(|_| MeteringError::Parse {
        path: path.to_owned(),
        reason: format!("{text:?} is not a number"),
    })
}

/// Fills CPU, memory and IO counters from whichever hierarchies `paths`
/// holds (v1 controller directories or the one v2 directory).
pub fn read_cgroup_counters(paths: &[PathBuf], sample: &mut Sample) -> Result<(), MeteringError> {
    for dir in paths {
        if let Some(ns) = read_u64(&dir.join("cpuacct.usage"))? {
            sample.cpu_usage_ns = ns;
        } else if let Some(text) = read_file(&dir.join("cpu.stat"))? {
            if let Some(usec) = keyed(&text, "usage_usec") {
                sample.cpu_usage_ns = usec.saturating_mul(1000);
            }
        }
        if let Some(bytes) = read_u64(&dir.join("memory.usage_in_bytes"))? {
            sample.memory_bytes = bytes;
            sample.memory_peak_bytes =
                read_u64(&dir.join("memory.max_usage_in_bytes"))?.unwrap_or(bytes);
        } else if let Some(bytes) = read_u64(&dir.join("memory.current"))? {
            sample.memory_bytes = bytes;
            sample.memory_peak_bytes = read_u64(&dir.join("memory.peak"))?.unwrap_or(bytes);
        }
        if let Some(text) = read_file(&dir.join("blkio.throttle.io_service_bytes"))? {
            let (read, write) = blkio_v1(&text);
            sample.io.read_bytes = read;
            sample.io.write_bytes = write;
            if let Some(text) = read_file(&dir.join("blkio.throttle.io_serviced"))? {
                let (read, write) = blkio_v1(&text);
                sample.io.read_ops = read;
                sample.io.write_ops = write;
            }
        } else if let Some(text) = read_file(&dir.join("io.stat"))? {
            sample.io = io_stat_v2(&text);
        }
    }
    Ok(())
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
        let mut sample = Sample::default();
        read_cgroup_counters(&[cpu, memory, blkio], &mut sample).expect("v1");
        assert_eq!(sample.cpu_usage_ns, 123_456_789);
        assert_eq!(
            (sample.memory_bytes, sample.memory_peak_bytes),
            (1000, 5000)
        );
        assert_eq!(
            sample.io,
            IoCounters {
                read_bytes: 1,
                write_bytes: 2,
                read_ops: 3,
                write_ops: 4
            }
        );

        std::fs::write(v2.join("cpu.stat"), "usage_usec 42\nuser_usec 40\n").expect("write");
        std::fs::write(v2.join("memory.current"), "700\n").expect("write");
        std::fs::write(v2.join("memory.peak"), "900\n").expect("write");
        std::fs::write(v2.join("io.stat"), "7:2 rbytes=8 wbytes=9 rios=1 wios=1\n").expect("write");
        let mut sample = Sample::default();
        read_cgroup_counters(&[v2], &mut sample).expect("v2");
        assert_eq!(sample.cpu_usage_ns, 42_000);
        assert_eq!((sample.memory_bytes, sample.memory_peak_bytes), (700, 900));
        assert_eq!(sample.io.write_bytes, 9);
    }

    #[test]
    fn own_start_time_parses() {
        let start = init_start_time(std::process::id()).expect("read");
        assert!(start.is_some_and(|ticks| ticks > 0));
    }

    #[test]
    fn sparse_file_allocation_counts_blocks_not_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(1 << 30).expect("truncate");
        assert!(allocated_bytes(&path).expect("stat") < 1 << 20);
        assert_eq!(
            allocated_bytes(&dir.path().join("missing")).expect("stat"),
            0
        );
    }
}
