//! Usage sampling: cumulative per-VPS counters (CPU time, memory current and
//! peak, IO bytes and operations, network bytes, disk-image allocation) read
//! from the kernel at `usage_interval_secs` and sent with the heartbeat.
//!
//! The agent never computes deltas: it sends what the kernel counts, with an
//! `incarnation` that changes whenever those counters restart from zero (the
//! cgroup directory's inode plus the init's start time) and a per-VPS
//! `sequence` persisted in `<state_dir>/metering.json`, so the controller can
//! drop repeats and count every byte exactly once across restarts of either side.
//!
//! What a run used between its last sample and its end is in the closing counters the runtime
//! records when it stops the VPS ([`ClosedRun`]). They are sent under the run's incarnation, so
//! the controller adds the tail once, but only as the continuation of the incarnation last sent
//! for that VPS (persisted with the sequence): never after a newer run or `stopped`, which the
//! controller would follow by counting the closed run from zero again.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil::FromIo;
use crate::network::{Counters, Network};
pub use crate::runtime::usage::IoCounters;
use crate::runtime::usage::{self, UsageError};
use crate::runtime::{ClosedRun, Runtime, VpsObserved};

/// Incarnation of a VPS that is not running: only its disk is counted.
pub const STOPPED_INCARNATION: &str = "stopped";

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
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("closing counters of {vps_id}: {source}")]
    ClosedRun {
        vps_id: String,
        source: Box<crate::runtime::RuntimeError>,
    },
}

impl FromIo for MeteringError {
    fn from_io(operation: &'static str, path: PathBuf, source: std::io::Error) -> Self {
        Self::Io {
            op: operation,
            path,
            source,
        }
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

/// What the meter last sent for one VPS (an entry of `metering.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Sent {
    sequence: u64,
    /// The incarnation of the last sample sent; unknown in journals from before closing
    /// counters, so no closed run is sent until a sample names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    incarnation: Option<String>,
    /// When the last sample sent was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sampled_at_unix_ms: Option<i64>,
}

/// An entry of `metering.json` in any format it was written in.
#[derive(Deserialize)]
#[serde(untagged)]
enum JournalEntry {
    /// Before closing counters: the last sequence number only.
    Sequence(u64),
    Sent(Sent),
}

impl From<JournalEntry> for Sent {
    fn from(entry: JournalEntry) -> Self {
        match entry {
            JournalEntry::Sequence(sequence) => Sent {
                sequence,
                ..Sent::default()
            },
            JournalEntry::Sent(sent) => sent,
        }
    }
}

/// One VPS's counters right now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Live {
    /// Its init runs: the run's counters, read while it ran.
    Running(Sample),
    /// Not running: its disk only, as `stopped`.
    Stopped(Sample),
    /// The init it was listed with exited while it was being read: its end is not recorded
    /// yet, so it is left out of this round (not reported as `stopped`, which would keep the
    /// run's closing counters from being sent).
    Ending,
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
    sent: BTreeMap<String, Sent>,
}

impl Meter {
    /// Loads the persisted sequence numbers from `state_dir`.
    pub fn new(
        runtime: Arc<Runtime>,
        network: Option<Arc<Network>>,
        state_dir: &Path,
        interval: Duration,
    ) -> Result<Self, MeteringError> {
        Ok(Self {
            runtime,
            network,
            state_dir: state_dir.to_owned(),
            interval,
            state: Mutex::new(MeterState {
                last_round: None,
                sent: read_journal(state_dir)?,
            }),
        })
    }

    /// Samples of every listed VPS if an interval has passed since the last
    /// round, else nothing: a VPS's current counters, preceded by the closing
    /// counters of a run that ended since the last round. Sequence numbers are
    /// persisted before they are returned, so a restarted agent never reuses one. Blocking.
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
        let mut samples = Vec::new();
        // VPSes that no longer exist are forgotten; ones that fail to sample keep their entry.
        let mut sent = BTreeMap::new();
        let ports = self.port_counters();
        for vps in observed {
            let last = state.sent.get(&vps.vps_id);
            let mut next = last.cloned().unwrap_or_default();
            // The closing counters are read after the live ones: a run seen running has
            // either not ended yet or has its end recorded by now.
            let round = self
                .read(vps, interval_ms, ports.as_ref())
                .and_then(|live| {
                    let closed = self.runtime.closed_run(&vps.vps_id).map_err(|source| {
                        MeteringError::ClosedRun {
                            vps_id: vps.vps_id.clone(),
                            source: Box::new(source),
                        }
                    })?;
                    Ok(round_samples(live, closed.as_ref(), last))
                });
            match round {
                Ok(round) => {
                    for mut sample in round {
                        next.sequence += 1;
                        sample.sequence = next.sequence;
                        next.incarnation = Some(sample.incarnation.clone());
                        next.sampled_at_unix_ms = Some(sample.sampled_at_unix_ms);
                        samples.push(sample);
                    }
                }
                Err(error) => tracing::warn!(vps_id = %vps.vps_id, %error, "usage sample"),
            }
            if last.is_some() || next.sequence > 0 {
                sent.insert(vps.vps_id.clone(), next);
            }
        }
        write_journal(&self.state_dir, &sent)?;
        state.sent = sent;
        Ok(samples)
    }

    /// The counters of every listed VPS right now, for the metrics endpoint:
    /// no sequence numbers, nothing persisted, no effect on the next round. Blocking.
    pub fn current(&self, observed: &[VpsObserved]) -> Vec<Sample> {
        let mut samples = Vec::with_capacity(observed.len());
        let ports = self.port_counters();
        for vps in observed {
            match self.read(vps, 0, ports.as_ref()) {
                Ok(Live::Running(sample) | Live::Stopped(sample)) => samples.push(sample),
                Ok(Live::Ending) => {}
                Err(error) => tracing::warn!(vps_id = %vps.vps_id, %error, "usage sample"),
            }
        }
        samples
    }

    /// Every port's counters in one read, for a round; `None` without a network or if the
    /// read failed (each VPS's port is then read on its own).
    fn port_counters(&self) -> Option<PortCounters> {
        let network = self.network.as_ref()?;
        let read_at_ticks = boot_ticks()?;
        match network.all_counters() {
            Ok(table) => Some(PortCounters {
                table,
                read_at_ticks,
            }),
            Err(error) => {
                tracing::warn!(%error, "port counters");
                None
            }
        }
    }

    fn read(
        &self,
        vps: &VpsObserved,
        interval_ms: u32,
        ports: Option<&PortCounters>,
    ) -> Result<Live, MeteringError> {
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
            return Ok(Live::Stopped(sample));
        };
        let Some(start_time) = init_start_time(pid)? else {
            return Ok(Live::Ending);
        };
        let paths = self.runtime.cgroup_paths(&vps.vps_id);
        let Some(inode) = usage::cgroup_inode(&paths)? else {
            return Ok(Live::Stopped(sample));
        };
        sample.incarnation = usage::incarnation(inode, start_time);
        let cgroup = usage::read_counters(&self.runtime.counter_files(&vps.vps_id))?;
        sample.cpu_usage_ns = cgroup.cpu_usage_ns;
        sample.memory_bytes = cgroup.memory_bytes;
        sample.memory_peak_bytes = cgroup.memory_peak_bytes;
        sample.io = cgroup.io;
        if let Some(network) = &self.network {
            // The round's table holds this run's port only if the run began before it was read
            // (in whole clock ticks); else the port is read now, as it is for every VPS
            // without a table. No port (loopback-only or not attached yet): nothing crossed
            // the wire.
            let counters = match ports {
                Some(ports) if start_time < ports.read_at_ticks => {
                    ports.table.get(&network.port_name(&vps.vps_id)).copied()
                }
                _ => network.counters(&vps.vps_id).ok(),
            };
            if let Some(counters) = counters {
                sample.net_rx_bytes = counters.rx_bytes;
                sample.net_tx_bytes = counters.tx_bytes;
            }
        }
        // Counters read after the init exited may lack the network (its veth goes away once
        // the runtime has read the run's closing counters): only the closing ones count then.
        if init_start_time(pid)? != Some(start_time) {
            return Ok(Live::Ending);
        }
        Ok(Live::Running(sample))
    }
}

/// The samples one VPS adds to a round, in order: `live`, preceded by (or, when stopped,
/// replaced by) the closing counters of `closed`, its last ended run, if they continue the
/// incarnation `last` sent. A run that ended since the last round is reported before the run
/// that followed it, dated when it ended; never after it.
fn round_samples(live: Live, closed: Option<&ClosedRun>, last: Option<&Sent>) -> Vec<Sample> {
    let last_incarnation = last.and_then(|sent| sent.incarnation.as_deref());
    let closed = closed.filter(|run| last_incarnation == Some(run.incarnation.as_str()));
    match live {
        Live::Ending => Vec::new(),
        Live::Stopped(now) => match closed {
            Some(run) => {
                let at = now.sampled_at_unix_ms;
                vec![closing_sample(run, &now, at)]
            }
            None => vec![now],
        },
        Live::Running(now) => match closed {
            // Unless the closing counters were sent already (the last sample is from after
            // the end: a stopped VPS's).
            Some(run)
                if run.incarnation != now.incarnation
                    && last
                        .and_then(|sent| sent.sampled_at_unix_ms)
                        .is_none_or(|at| at < run.ended_at_unix_ms) =>
            {
                let at = run.ended_at_unix_ms.min(now.sampled_at_unix_ms);
                vec![closing_sample(run, &now, at), now]
            }
            _ => vec![now],
        },
    }
}

/// The closing counters of `run` as a sample taken at `at`, with the disk of `now`. Nothing
/// of the run is in memory any more.
fn closing_sample(run: &ClosedRun, now: &Sample, at: i64) -> Sample {
    Sample {
        vps_id: now.vps_id.clone(),
        incarnation: run.incarnation.clone(),
        sequence: 0,
        sampled_at_unix_ms: at,
        interval_ms: now.interval_ms,
        cpu_usage_ns: run.cpu_usage_ns,
        memory_bytes: 0,
        memory_peak_bytes: run.memory_peak_bytes,
        io: run.io,
        net_rx_bytes: run.net_rx_bytes,
        net_tx_bytes: run.net_tx_bytes,
        disk_used_bytes: now.disk_used_bytes,
    }
}

fn read_journal(state_dir: &Path) -> Result<BTreeMap<String, Sent>, MeteringError> {
    let path = journal_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<BTreeMap<String, JournalEntry>>(&bytes)
            .map(|entries| {
                entries
                    .into_iter()
                    .map(|(vps_id, entry)| (vps_id, entry.into()))
                    .collect()
            })
            .map_err(|source| MeteringError::Journal { path, source }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(error) => Err(MeteringError::io_err("read", &path)(error)),
    }
}

fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("metering.json")
}

fn write_journal(state_dir: &Path, sent: &BTreeMap<String, Sent>) -> Result<(), MeteringError> {
    let path = journal_path(state_dir);
    let bytes = serde_json::to_vec(sent).map_err(|source| MeteringError::Journal {
        path: path.clone(),
        source,
    })?;
    crate::fsutil::write_atomic(&path, &bytes).map_err(|e| MeteringError::Io {
        op: e.operation,
        path: e.path,
        source: e.source,
    })
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
        Err(error) => Err(MeteringError::io_err("stat", path)(error)),
    }
}

/// Start time (clock ticks after boot) of `pid`, or `None` if it is gone or a zombie.
/// The counters of every port, read once for a round.
struct PortCounters {
    /// By port name.
    table: HashMap<String, Counters>,
    /// Clock ticks since boot (the unit of an init's start time) just before the read.
    read_at_ticks: u64,
}

/// Clock ticks since boot now (`CLOCK_BOOTTIME` in `_SC_CLK_TCK` units: the clock of
/// /proc/PID/stat's start time); `None` if the clock cannot be read.
fn boot_ticks() -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, a valid, exclusively borrowed one.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return None;
    }
    // SAFETY: sysconf only returns a value.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|hz| *hz > 0)?;
    let secs = u64::try_from(now.tv_sec).ok()?;
    let nanos = u64::try_from(now.tv_nsec).ok()?;
    Some(secs.saturating_mul(hz) + nanos * hz / 1_000_000_000)
}

fn init_start_time(pid: u32) -> Result<Option<u64>, MeteringError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(MeteringError::io_err("read", &path)(error)),
    };
    // Fields after the parenthesised command: state is field 3, starttime field 22.
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| MeteringError::Parse {
            path: path.clone(),
            reason: "no ')' after the command".to_owned(),
        })?;
    let mut fields = after.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return Ok(None);
    }
    fields
        .nth(18)
        .and_then(|field| field.parse().ok())
        .map(Some)
        .ok_or_else(|| MeteringError::Parse {
            path,
            reason: "no start time field".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_ticks_are_the_clock_of_start_times() {
        let started = init_start_time(std::process::id())
            .expect("read own stat")
            .expect("own start time");
        let now = boot_ticks().expect("boot ticks");
        assert!(started <= now, "started at tick {started}, now tick {now}");
        // Same clock: this test process did not start more than a day ago.
        assert!(now - started < 24 * 3600 * 1000, "{started} vs {now}");
    }

    fn running(incarnation: &str, cpu_usage_ns: u64, at: i64) -> Sample {
        Sample {
            vps_id: "vps-1".into(),
            incarnation: incarnation.into(),
            sampled_at_unix_ms: at,
            interval_ms: 10_000,
            cpu_usage_ns,
            memory_bytes: 50 << 20,
            memory_peak_bytes: 60 << 20,
            disk_used_bytes: 7 << 20,
            ..Sample::default()
        }
    }

    fn stopped(at: i64) -> Sample {
        Sample {
            incarnation: STOPPED_INCARNATION.into(),
            cpu_usage_ns: 0,
            memory_bytes: 0,
            memory_peak_bytes: 0,
            ..running("", 0, at)
        }
    }

    fn closed(incarnation: &str, cpu_usage_ns: u64, ended_at_unix_ms: i64) -> ClosedRun {
        ClosedRun {
            incarnation: incarnation.into(),
            cpu_usage_ns,
            memory_peak_bytes: 80 << 20,
            io: IoCounters {
                write_bytes: 4096,
                ..IoCounters::default()
            },
            net_rx_bytes: 1000,
            net_tx_bytes: 2000,
            ended_at_unix_ms,
        }
    }

    fn sent(incarnation: &str, at: i64) -> Sent {
        Sent {
            sequence: 5,
            incarnation: Some(incarnation.into()),
            sampled_at_unix_ms: Some(at),
        }
    }

    fn names(samples: &[Sample]) -> Vec<(&str, u64, i64)> {
        samples
            .iter()
            .map(|s| (s.incarnation.as_str(), s.cpu_usage_ns, s.sampled_at_unix_ms))
            .collect()
    }

    #[test]
    fn a_stopped_vps_reports_its_closed_runs_final_counters() {
        let run = closed("11-100", 3_000, 15_000);
        let samples = round_samples(
            Live::Stopped(stopped(20_000)),
            Some(&run),
            Some(&sent("11-100", 10_000)),
        );
        assert_eq!(names(&samples), vec![("11-100", 3_000, 20_000)]);
        let closing = &samples[0];
        // Nothing is in memory any more; the peak, IO, network and current disk are reported.
        assert_eq!(closing.memory_bytes, 0);
        assert_eq!(closing.memory_peak_bytes, 80 << 20);
        assert_eq!(closing.io.write_bytes, 4096);
        assert_eq!((closing.net_rx_bytes, closing.net_tx_bytes), (1000, 2000));
        assert_eq!(closing.disk_used_bytes, 7 << 20);
        // And again, unchanged, while it stays stopped (the controller adds nothing).
        let again = round_samples(
            Live::Stopped(stopped(30_000)),
            Some(&run),
            Some(&sent("11-100", 20_000)),
        );
        assert_eq!(names(&again), vec![("11-100", 3_000, 30_000)]);
    }

    #[test]
    fn a_restart_between_rounds_reports_the_closing_counters_then_the_new_run() {
        let run = closed("11-100", 3_000, 15_000);
        let samples = round_samples(
            Live::Running(running("12-200", 500, 20_000)),
            Some(&run),
            Some(&sent("11-100", 10_000)),
        );
        assert_eq!(
            names(&samples),
            vec![("11-100", 3_000, 15_000), ("12-200", 500, 20_000)]
        );
        // Next round: the new run only.
        let next = round_samples(
            Live::Running(running("12-200", 900, 30_000)),
            Some(&run),
            Some(&sent("12-200", 20_000)),
        );
        assert_eq!(names(&next), vec![("12-200", 900, 30_000)]);
        // Started after rounds that already sent the closing counters: not sent again.
        let after_stop = round_samples(
            Live::Running(running("12-200", 500, 40_000)),
            Some(&run),
            Some(&sent("11-100", 30_000)),
        );
        assert_eq!(names(&after_stop), vec![("12-200", 500, 40_000)]);
    }

    #[test]
    fn a_closed_run_is_never_sent_after_another_incarnation() {
        let run = closed("11-100", 3_000, 15_000);
        // A newer run was sent (e.g. its own stop could not record closing counters).
        for last in [sent("12-200", 20_000), sent(STOPPED_INCARNATION, 20_000)] {
            let samples = round_samples(Live::Stopped(stopped(30_000)), Some(&run), Some(&last));
            assert_eq!(names(&samples), vec![(STOPPED_INCARNATION, 0, 30_000)]);
            let samples = round_samples(
                Live::Running(running("13-300", 10, 30_000)),
                Some(&run),
                Some(&last),
            );
            assert_eq!(names(&samples), vec![("13-300", 10, 30_000)]);
        }
        // Nothing sent yet, or a journal from before incarnations were kept: unknown.
        let old = Sent {
            sequence: 5,
            ..Sent::default()
        };
        for last in [None, Some(&old)] {
            let samples = round_samples(Live::Stopped(stopped(30_000)), Some(&run), last);
            assert_eq!(names(&samples), vec![(STOPPED_INCARNATION, 0, 30_000)]);
        }
        // An init that exited mid-read, before its end was recorded: nothing this round.
        assert_eq!(
            round_samples(Live::Ending, Some(&run), Some(&sent("11-100", 10_000))),
            Vec::new()
        );
    }

    #[test]
    fn journals_of_both_formats_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(journal_path(dir.path()), r#"{"vps-a":7,"vps-b":2}"#).expect("write");
        let journal = read_journal(dir.path()).expect("old format");
        assert_eq!(
            journal.get("vps-a"),
            Some(&Sent {
                sequence: 7,
                ..Sent::default()
            })
        );
        let mut journal = journal;
        journal.insert("vps-b".into(), sent("11-100", 10_000));
        write_journal(dir.path(), &journal).expect("write");
        assert_eq!(read_journal(dir.path()).expect("new format"), journal);
        assert_eq!(
            read_journal(tempfile::tempdir().expect("tempdir").path()).expect("none"),
            BTreeMap::new()
        );
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
