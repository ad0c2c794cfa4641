//! Live checkpoints of a running VPS with CRIU (`criu`, Debian package `criu`): the memory of
//! its process tree is copied in rounds while it keeps running (`criu pre-dump --track-mem`,
//! each round writing only the pages dirtied since the one before), then the tree is frozen
//! and dumped for good (`criu dump`, which writes what the last round did not have and kills
//! the tree once its images are complete). `Runtime::restore_checkpoint` brings such images
//! back as the same VPS (same init pid inside its pid namespace).
//!
//! CRIU runs as host root, outside the VPS, against the VPS's init (`-t <init pid>`): it joins
//! the VPS's namespaces itself. What belongs to the node rather than to the VPS is named as
//! external so that CRIU neither copies it nor fails on it: the VPS's veth (`veth[eth0]`; on
//! restore the pair is made on the node's bridge first and CRIU moves the peer in,
//! `netdev[eth0]`), its `/dev` and console pty, and the lxcfs files of its /proc view. TCP
//! connections are dumped in their established state (`--tcp-established`) so a connection to
//! a peer that outlives the move keeps working. See "Live migration" in ARCHITECTURE.md.
//!
//! Every CRIU run writes its own log in the images directory; when CRIU refuses (a feature
//! missing on the kernel, a resource it cannot dump), its `Error` lines are the reason
//! returned ([`CheckpointError::Refused`]), and a VPS whose dump failed keeps running.
//!
//! The CRIU binary is `criu` from `PATH` unless [`CRIU_ENV`] names another.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cgroups::VpsCgroup;
use super::isolation::idmap::IdRange;
use super::isolation::namespaces;
use super::isolation::rootfs::RootfsLayout;
use super::process::console;
use super::process::helper::{self, HelperCallError, HelperError, StartReply};
use super::process::identity::ProcessIdentity;
use super::spec::{validate_spec, validate_vps_id, VpsObserved, VpsSpec};
use super::state::Phase;
use super::{Runtime, RuntimeError};
use crate::fsutil::{self, FromIo};

/// Environment variable naming the CRIU binary (default `criu` from `PATH`).
pub const CRIU_ENV: &str = "PADDOCK_CRIU";
/// Most memory pre-dump rounds before the final dump.
pub const DEFAULT_MAX_ROUNDS: u32 = 5;
/// How long one CRIU run may take before it is killed.
pub const CRIU_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// The `PATH` CRIU runs with.
const CRIU_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Most characters of CRIU's log kept in a refusal's reason.
const MAX_REASON: usize = 2000;
/// The VPS's disk image in a transferred checkpoint (beside CRIU's images).
pub const DISK_FILE: &str = "disk.img";
/// The final dump's directory under a checkpoint's images directory.
pub const FINAL_DIR: &str = "final";

/// A VPS's checkpoints on its node: `vps/<id>/checkpoints/<nanos>/`.
const CHECKPOINTS_DIR: &str = "checkpoints";
/// The checkpoint's own record, beside CRIU's images (`paddock-checkpoint.json`).
pub const META_FILE: &str = "paddock-checkpoint.json";
/// The host directory the restore helper mounts its private tmpfs on (see
/// `restore_dev_dir`); it stays empty on the host.
pub const RESTORE_MOUNT_DIR: &str = "/run/paddock-criu-restore";
/// The name of the restore helper (`paddock-agent __internal criu-restore <json>`).
pub(crate) const RESTORE_HELPER: &str = "criu-restore";
/// What the restore helper prints before CRIU's reason when CRIU refused.
const REFUSED_MARKER: &str = "criu-refused: ";

/// Errors checkpointing or restoring a VPS with CRIU.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The CRIU binary could not be run.
    #[error("cannot run CRIU ({binary}): {source}; install the criu package")]
    Missing {
        /// The binary tried.
        binary: PathBuf,
        /// Why it could not start.
        source: io::Error,
    },
    /// CRIU refused or failed; `reason` is what its log says.
    #[error("{}", refused_message(step, reason))]
    Refused {
        /// `check`, `pre-dump`, `dump` or `restore`.
        step: &'static str,
        /// CRIU's own error lines.
        reason: String,
    },
    /// A CRIU run missed its deadline and was killed.
    #[error("CRIU {step} did not finish within {limit:?}")]
    Deadline {
        /// The step.
        step: &'static str,
        /// The deadline.
        limit: Duration,
    },
    /// The VPS is not running (only a running VPS has a process tree to checkpoint).
    #[error("the VPS is not running")]
    NotRunning,
    /// The images directory holds no complete checkpoint.
    #[error("no complete checkpoint in {0}")]
    NoImages(PathBuf),
    /// The checkpoint's user namespace maps other host ids than this node can give the VPS.
    #[error(
        "the checkpoint maps host ids from {checkpoint}, which this node cannot give the VPS \
         ({}); a live restore needs the same range (a cold migration shifts ownership)",
        if *node == 0 { "another VPS or a host user has them".to_owned() } else { format!("it has ids from {node}") }
    )]
    IdRangeMismatch {
        /// The first host id in the checkpoint.
        checkpoint: u32,
        /// The first host id the VPS has here (0: it has none, the checkpoint's are taken).
        node: u32,
    },
    /// The VPS runs already (a restore needs it stopped).
    #[error("the VPS is running; a checkpoint is restored into a stopped VPS")]
    Running,
    /// The restore helper failed before or around CRIU.
    #[error("restore helper: {0}")]
    Helper(#[source] HelperCallError),
    /// A file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was done.
        operation: &'static str,
        /// On which file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn refused_message(step: &str, reason: &str) -> String {
    match step {
        "check" => format!("CRIU does not work on this node (criu check): {reason}"),
        _ => format!("CRIU cannot {step} this VPS: {reason}"),
    }
}

impl FromIo for CheckpointError {
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self::Io {
            operation,
            path,
            source,
        }
    }
}

impl From<fsutil::WriteError> for CheckpointError {
    fn from(error: fsutil::WriteError) -> Self {
        Self::Io {
            operation: error.operation,
            path: error.path,
            source: error.source,
        }
    }
}

/// How a checkpoint iterates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Most pre-dump rounds (0: dump at once, the VPS frozen for the whole copy).
    pub max_rounds: u32,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        Self {
            max_rounds: DEFAULT_MAX_ROUNDS,
        }
    }
}

/// What one CRIU run copied (from `--display-stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Pages looked at.
    pub pages_scanned: u64,
    /// Pages written to the images (the dirty set of a round after the first).
    pub pages_written: u64,
    /// How long the tree was frozen, in microseconds.
    pub frozen_us: u64,
}

/// What a checkpoint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Whether the kernel tracks dirty memory (else there are no pre-dump rounds).
    pub dirty_tracking: bool,
    /// Each pre-dump round, in order.
    pub rounds: Vec<DumpStats>,
    /// The final dump.
    pub final_dump: DumpStats,
    /// The init's pid in the host's pid namespace when it was dumped.
    pub init_pid: u32,
    /// Bytes of all images (what a transfer carries).
    pub image_bytes: u64,
    /// From the first round to the end of the final dump.
    pub total: Duration,
    /// Where the images are (the final dump is in [`FINAL_DIR`]).
    pub images_dir: PathBuf,
}

/// What a checkpoint records beside the images for its restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The VPS checkpointed.
    pub vps_id: String,
    /// CRIU's key of the console pty (`tty[rdev:dev]`), handed a fresh pty on restore.
    pub console_key: String,
    /// The init's host pid when it was dumped.
    pub init_pid: u32,
    /// The host id range the VPS's user namespace mapped: CRIU restores the namespace with
    /// these maps, so the restoring node must give the VPS the same range.
    pub ids: IdRange,
}

/// Where the host end of a restored VPS's veth goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethAttach {
    /// The host end's name.
    pub host_ifname: String,
    /// The bridge it joins.
    pub bridge: String,
}

/// The CRIU binary to run: [`CRIU_ENV`], else `criu` found on `PATH`, else `/usr/sbin/criu`
/// (helpers run with an empty environment, so the agent resolves it for them).
pub fn criu_binary() -> PathBuf {
    if let Some(named) = std::env::var_os(CRIU_ENV).filter(|value| !value.is_empty()) {
        return PathBuf::from(named);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("criu"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/criu"))
}

/// CRIU's reason for a failure: its `Error` lines (the last ones if there are many), else the
/// last lines of its log.
pub fn reason_from_log(log: &str) -> String {
    let errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Error (") || line.starts_with("Error"))
        .map(str::trim)
        .collect();
    let lines: Vec<&str> = if errors.is_empty() {
        let all: Vec<&str> = log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        all[all.len().saturating_sub(5)..].to_vec()
    } else {
        errors
    };
    let mut reason = lines.join("; ");
    if reason.len() > MAX_REASON {
        let mut cut = reason.len() - MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut += 1;
        }
        reason = format!("...{}", &reason[cut..]);
    }
    if reason.is_empty() {
        "CRIU failed without a log".to_owned()
    } else {
        reason
    }
}

/// Parses `--display-stats` output (lines like `Pages written: 123`).
pub fn parse_stats(output: &str) -> DumpStats {
    let mut stats = DumpStats::default();
    for line in output.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let number = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok());
        let Some(number) = number else { continue };
        // CRIU 4 says "Memory pages ...", older ones "Pages ...".
        let key = key.trim();
        match key.strip_prefix("Memory pages").map_or(key, str::trim) {
            "scanned" | "Pages scanned" => stats.pages_scanned = number,
            "written" | "Pages written" => stats.pages_written = number,
            "Frozen time" => stats.frozen_us = number,
            _ => {}
        }
    }
    stats
}

/// Whether another pre-dump round is worth it after `rounds` (in order): not past `max`, and
/// only while the dirty set keeps shrinking (a round that wrote as much as the one before will
/// not make the final dump shorter).
pub fn another_round(rounds: &[DumpStats], max: u32) -> bool {
    if rounds.len() >= max as usize {
        return false;
    }
    match rounds {
        [.., before, last] => last.pages_written < before.pages_written,
        _ => true,
    }
}

/// Runs CRIU with `args` (plus its log, in `work_dir`) and waits at most `limit`; its stdout on
/// success, its log's reason on failure.
fn run_criu(
    step: &'static str,
    args: &[String],
    work_dir: &Path,
    limit: Duration,
) -> Result<String, CheckpointError> {
    run_criu_with(&criu_binary(), step, args, work_dir, limit)
}

fn run_criu_with(
    binary: &Path,
    step: &'static str,
    args: &[String],
    work_dir: &Path,
    limit: Duration,
) -> Result<String, CheckpointError> {
    let binary = binary.to_path_buf();
    let log = format!("{step}.log");
    let mut child = Command::new(&binary)
        .args(args)
        // CRIU runs iptables-restore and tar by name (helpers run with an empty environment).
        .env("PATH", CRIU_PATH)
        .arg("--work-dir")
        .arg(work_dir)
        .arg("--log-file")
        .arg(&log)
        .arg("-v4")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CheckpointError::Missing {
            binary: binary.clone(),
            source,
        })?;
    // The outputs are small (stats, a few error lines): read after exit is enough, but read
    // on threads so a chatty CRIU never blocks on a full pipe.
    let stdout = child.stdout.take().map(read_all_on_thread);
    let stderr = child.stderr.take().map(read_all_on_thread);
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CheckpointError::Deadline { step, limit });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                return Err(CheckpointError::Io {
                    operation: "wait for criu",
                    path: binary,
                    source,
                })
            }
        }
    };
    let stdout = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    let log_text = fs::read_to_string(work_dir.join(&log)).unwrap_or_default();
    Err(CheckpointError::Refused {
        step,
        reason: reason_from_log(&format!("{log_text}\n{stderr}")),
    })
}

fn read_all_on_thread<R: Read + Send + 'static>(mut reader: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        text
    })
}

/// Whether CRIU works on this node (`criu check`): `Refused` with its reason if not.
pub fn check(work_dir: &Path) -> Result<(), CheckpointError> {
    fsutil::create_private_dir_all(work_dir)?;
    run_criu("check", &["check".to_owned()], work_dir, CRIU_DEADLINE).map(|_| ())
}

/// Total size of the regular files under `dir`.
fn tree_bytes(dir: &Path) -> Result<u64, CheckpointError> {
    let mut total = 0;
    let entries = fs::read_dir(dir).map_err(CheckpointError::io_err("read dir", dir))?;
    for entry in entries {
        let entry = entry.map_err(CheckpointError::io_err("read dir", dir))?;
        let path = entry.path();
        let meta = entry
            .metadata()
            .map_err(CheckpointError::io_err("stat", &path))?;
        if meta.is_dir() {
            total += tree_bytes(&path)?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Whether this kernel tracks dirty memory (`criu check --feature mem_dirty_track`: the
/// kernel's `CONFIG_MEM_SOFT_DIRTY`). Without it a pre-dump round copies all memory again, so
/// a checkpoint dumps at once.
pub fn dirty_tracking(work_dir: &Path) -> Result<bool, CheckpointError> {
    let args = ["check", "--feature", "mem_dirty_track"].map(str::to_owned);
    match run_criu("check", &args, work_dir, CRIU_DEADLINE) {
        Ok(_) => Ok(true),
        Err(CheckpointError::Refused { .. }) => Ok(false),
        Err(other) => Err(other),
    }
}

/// CRIU's key for the external mount of a /proc view file (`proc/meminfo` ->
/// `lxcfs-proc-meminfo`).
fn proc_bind_key(target: &str) -> String {
    format!("lxcfs-{}", target.replace('/', "-"))
}

/// CRIU's key for the VPS's console pty (`tty[rdev:dev]`, hex), seen as the init's
/// `/dev/console`.
fn console_key(init_pid: u32) -> Result<String, CheckpointError> {
    use std::os::unix::fs::MetadataExt;
    let path = PathBuf::from(format!("/proc/{init_pid}/root/dev/console"));
    let meta = fs::metadata(&path).map_err(CheckpointError::io_err("stat", &path))?;
    Ok(tty_key(meta.rdev(), meta.dev()))
}

/// `tty[rdev:dev]` as CRIU names a terminal it treats as external.
pub fn tty_key(rdev: u64, dev: u64) -> String {
    format!("tty[{rdev:x}:{dev:x}]")
}

/// The options every dump and pre-dump of a VPS shares.
fn dump_args(init_pid: u32, images: &Path, parent: Option<&str>, track: bool) -> Vec<String> {
    let mut args = vec![
        "--tree".to_owned(),
        init_pid.to_string(),
        "--images-dir".to_owned(),
        images.display().to_string(),
        "--display-stats".to_owned(),
    ];
    if track {
        args.push("--track-mem".to_owned());
    }
    if let Some(parent) = parent {
        // Relative to the images dir: the rounds travel together.
        args.push("--prev-images-dir".to_owned());
        args.push(format!("../{parent}"));
    }
    args
}

impl Runtime {
    /// Checkpoints the running VPS `vps_id` into `images_dir` (created; must not exist):
    /// pre-dump rounds while it runs, then the final dump, after which its processes are gone
    /// (the VPS is recorded stopped; its disk, cgroup and network port stay for a restore
    /// here or a delete). A refusal at any step leaves the VPS running as it was.
    pub fn checkpoint(
        &self,
        vps_id: &str,
        images_dir: &Path,
        options: CheckpointOptions,
    ) -> Result<CheckpointReport, RuntimeError> {
        validate_vps_id(vps_id)?;
        let err = |source| RuntimeError::Checkpoint {
            vps_id: vps_id.to_owned(),
            source,
        };
        let lock = self.vps_lock(vps_id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut st = self
            .load(vps_id)?
            .ok_or_else(|| RuntimeError::NotFound(vps_id.to_owned()))?;
        let init = self
            .live_init(&st)?
            .ok_or_else(|| err(CheckpointError::NotRunning))?;
        if images_dir.exists() {
            return Err(err(CheckpointError::Io {
                operation: "create checkpoint dir",
                path: images_dir.to_path_buf(),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            }));
        }
        fsutil::create_private_dir_all(images_dir)
            .map_err(CheckpointError::from)
            .map_err(err)?;
        check(images_dir).map_err(err)?;
        let tracking = dirty_tracking(images_dir).map_err(err)?;
        let max_rounds = if tracking { options.max_rounds } else { 0 };
        let started = Instant::now();
        let mut rounds = Vec::new();
        let mut parent: Option<String> = None;
        while another_round(&rounds, max_rounds) {
            let name = format!("pre-{}", rounds.len() + 1);
            let dir = images_dir.join(&name);
            fsutil::create_private_dir_all(&dir)
                .map_err(CheckpointError::from)
                .map_err(err)?;
            let mut args = vec!["pre-dump".to_owned()];
            args.extend(dump_args(init.pid, &dir, parent.as_deref(), tracking));
            let out = run_criu("pre-dump", &args, &dir, CRIU_DEADLINE).map_err(err)?;
            rounds.push(parse_stats(&out));
            parent = Some(name);
        }
        let dir = images_dir.join(FINAL_DIR);
        fsutil::create_private_dir_all(&dir)
            .map_err(CheckpointError::from)
            .map_err(err)?;
        let mut args = vec!["dump".to_owned()];
        args.extend(dump_args(init.pid, &dir, parent.as_deref(), tracking));
        args.extend(
            [
                "--tcp-established",
                "--file-locks",
                "--manage-cgroups=soft",
                "--external",
                "veth[eth0]",
                "--external",
                "mnt[/dev]:dev",
                "--external",
                "mnt[/dev/console]:console",
            ]
            .map(str::to_owned),
        );
        // The console pty (the VPS's /dev/console and its init's stdio) belongs to the
        // console supervisor, outside the VPS: the restore hands in a fresh one.
        if let super::procview::ProcView::Lxcfs(lxcfs) = &self.config().proc_view {
            for bind in super::procview::binds(lxcfs) {
                if bind.source.is_absolute() {
                    args.push("--external".to_owned());
                    args.push(format!(
                        "mnt[/{}]:{}",
                        bind.target,
                        proc_bind_key(&bind.target)
                    ));
                }
            }
        }
        let console = console_key(init.pid).map_err(err)?;
        args.push("--external".to_owned());
        args.push(console.clone());
        let ids = st.ids.ok_or_else(|| {
            err(CheckpointError::Io {
                operation: "read the id range of",
                path: self.layout().state_file(vps_id),
                source: io::Error::from(io::ErrorKind::NotFound),
            })
        })?;
        let meta = CheckpointMeta {
            vps_id: vps_id.to_owned(),
            console_key: console.clone(),
            init_pid: init.pid,
            ids,
        };
        let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        fsutil::write_atomic(&images_dir.join(META_FILE), &json)
            .map_err(CheckpointError::from)
            .map_err(err)?;
        // The run ends here as with a stop: its closing counters (CPU, memory, IO, network)
        // are kept for metering before a restore replaces the cgroup.
        let cgroup = self.cgroup(vps_id);
        let ending = super::lifecycle::RunEnding::begin(vps_id, &init, &cgroup);
        let out = run_criu("dump", &args, &dir, CRIU_DEADLINE).map_err(err)?;
        let final_dump = parse_stats(&out);
        // The tree is gone; what CRIU did not dump (the console supervisor, the sysinfo
        // server: the node's, not the VPS's) goes too, so the VPS is cleanly stopped.
        self.kill(None, &cgroup, vps_id)?;
        if let Some(ending) = ending {
            st.closed_run = ending.close(vps_id, &cgroup);
        }
        st.init = None;
        self.save(&st)?;
        let image_bytes = tree_bytes(images_dir).map_err(err)?;
        Ok(CheckpointReport {
            dirty_tracking: tracking,
            rounds,
            final_dump,
            init_pid: init.pid,
            image_bytes,
            total: started.elapsed(),
            images_dir: images_dir.to_path_buf(),
        })
    }
}

impl Runtime {
    /// A fresh directory path for a checkpoint of `vps_id` (`vps/<id>/checkpoints/<nanos>`,
    /// so it goes when the VPS is deleted, or once a restore here succeeded; not created).
    pub fn checkpoint_dir(&self, vps_id: &str) -> Result<PathBuf, RuntimeError> {
        validate_vps_id(vps_id)?;
        let base = self.layout().vps_dir(vps_id).join(CHECKPOINTS_DIR);
        fsutil::create_private_dir_all(&base)
            .map_err(CheckpointError::from)
            .map_err(|source| RuntimeError::Checkpoint {
                vps_id: vps_id.to_owned(),
                source,
            })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(base.join(nanos.to_string()))
    }

    /// The newest complete checkpoint this node holds of `vps_id` (one of
    /// [`Runtime::checkpoint_dir`]'s, kept until the VPS is deleted or restored here): what a
    /// live move rolling back restores on its source. `NoImages` if there is none.
    pub fn held_checkpoint(&self, vps_id: &str) -> Result<PathBuf, RuntimeError> {
        validate_vps_id(vps_id)?;
        let base = self.layout().vps_dir(vps_id).join(CHECKPOINTS_DIR);
        let newest = fs::read_dir(&base)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let nanos: u128 = entry.file_name().to_str()?.parse().ok()?;
                Some((nanos, entry.path()))
            })
            .filter(|(_, dir)| {
                dir.join(META_FILE).is_file() && dir.join(FINAL_DIR).join("inventory.img").is_file()
            })
            .max_by_key(|(nanos, _)| *nanos);
        newest
            .map(|(_, dir)| dir)
            .ok_or_else(|| RuntimeError::Checkpoint {
                vps_id: vps_id.to_owned(),
                source: CheckpointError::NoImages(base),
            })
    }

    /// The VPS's disk image (what a transfer carries beside the images).
    pub fn disk_image_path(&self, vps_id: &str) -> Result<PathBuf, RuntimeError> {
        let st = self
            .load(vps_id)?
            .ok_or_else(|| RuntimeError::NotFound(vps_id.to_owned()))?;
        Ok(self.rootfs_layout(vps_id, &st.template).disk_image)
    }
}

/// Writes the transfer of a checkpoint to `out`: a tar of CRIU's images (`images_dir`) with
/// the VPS's disk image as [`DISK_FILE`].
pub fn pack_transfer(
    images_dir: &Path,
    disk_image: &Path,
    out: impl io::Write,
) -> Result<(), CheckpointError> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", images_dir)
        .map_err(CheckpointError::io_err("archive", images_dir))?;
    tar.append_path_with_name(disk_image, DISK_FILE)
        .map_err(CheckpointError::io_err("archive", disk_image))?;
    tar.into_inner()
        .and_then(|mut out| out.flush())
        .map_err(CheckpointError::io_err("finish archive of", images_dir))?;
    Ok(())
}

/// Unpacks a transfer ([`pack_transfer`]) into `images_dir` (created, root-only). Entries
/// that would land outside it are refused by the tar reader.
pub fn unpack_transfer(input: impl Read, images_dir: &Path) -> Result<(), CheckpointError> {
    fsutil::create_private_dir_all(images_dir)?;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive
        .unpack(images_dir)
        .map_err(CheckpointError::io_err("unpack transfer into", images_dir))?;
    if !images_dir.join(META_FILE).is_file() {
        return Err(CheckpointError::NoImages(images_dir.to_path_buf()));
    }
    Ok(())
}

/// The restore helper's request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RestoreRequest {
    pub vps_id: String,
    pub cgroup_parent: String,
    pub rootfs: RootfsLayout,
    pub ids: IdRange,
    pub console_log: PathBuf,
    pub console_socket: PathBuf,
    pub console_pid_file: PathBuf,
    /// The final dump's directory.
    pub images: PathBuf,
    pub console_key: String,
    pub criu: PathBuf,
    pub veth: Option<VethAttach>,
    /// The VPS's /proc view binds CRIU takes as external (`lxcfs-...` key, host file).
    #[serde(default)]
    pub proc_binds: Vec<(String, PathBuf)>,
    /// Where the VPS's sysinfo server listens (with the lxcfs view).
    #[serde(default)]
    pub sysinfo_socket: Option<PathBuf>,
}

impl Runtime {
    /// Restores the checkpoint in `images_dir` (made by [`Runtime::checkpoint`], here or on
    /// another node whose disk image was copied into place) as the VPS `spec` names: a VPS
    /// that does not exist on this node is created stopped first (from the same template;
    /// its disk image must already be in place, else it gets an empty one). The restored
    /// processes run in a fresh cgroup with `spec`'s limits, on the VPS's own overlay root,
    /// with a fresh console; with `veth`, the VPS's eth0 is re-created with its host end on
    /// that bridge. A refused restore leaves the VPS stopped, its images kept.
    pub fn restore_checkpoint(
        &self,
        spec: &VpsSpec,
        images_dir: &Path,
        veth: Option<VethAttach>,
    ) -> Result<VpsObserved, RuntimeError> {
        validate_spec(spec)?;
        let vps_id = spec.vps_id.as_str();
        let err = |source| RuntimeError::Checkpoint {
            vps_id: vps_id.to_owned(),
            source,
        };
        let meta_path = images_dir.join(META_FILE);
        let final_dir = images_dir.join(FINAL_DIR);
        let meta: CheckpointMeta = fs::read(&meta_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(|_| final_dir.join("inventory.img").is_file())
            .ok_or_else(|| err(CheckpointError::NoImages(images_dir.to_path_buf())))?;
        let lock = self.vps_lock(vps_id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut st = match self.load(vps_id)? {
            Some(st) if st.phase == Phase::Ready => st,
            Some(_) => {
                return Err(RuntimeError::Checkpoint {
                    vps_id: vps_id.to_owned(),
                    source: CheckpointError::NoImages(images_dir.to_path_buf()),
                })
            }
            None => {
                // New on this node: it must get the range its user namespace maps.
                let reserved =
                    self.inner
                        .ids
                        .allocate_exact(vps_id, meta.ids)
                        .map_err(|source| RuntimeError::Idmap {
                            vps_id: vps_id.to_owned(),
                            source,
                        })?;
                if !reserved {
                    return Err(err(CheckpointError::IdRangeMismatch {
                        checkpoint: meta.ids.host_base,
                        node: 0,
                    }));
                }
                let st = self.create(spec)?;
                // A create writes no state (its apply's start does): a restore, whose steps
                // may fail and be retried, records the VPS at once.
                self.save(&st)?;
                st
            }
        };
        if self.live_init(&st)?.is_some() {
            return Err(err(CheckpointError::Running));
        }
        let rootfs = self.rootfs_layout(vps_id, &st.template);
        rootfs.prepare().map_err(|source| RuntimeError::Rootfs {
            vps_id: vps_id.to_owned(),
            source,
        })?;
        let halt_signal = self.template_halt_signal(&st)?;
        let ids = self.allocate_ids(&mut st)?;
        if ids != meta.ids {
            return Err(err(CheckpointError::IdRangeMismatch {
                checkpoint: meta.ids.host_base,
                node: ids.host_base,
            }));
        }
        // A transfer from another node carries the disk beside the images.
        let carried = images_dir.join(DISK_FILE);
        if carried.is_file() {
            fs::rename(&carried, &rootfs.disk_image)
                .map_err(CheckpointError::io_err(
                    "move the carried disk into",
                    &rootfs.disk_image,
                ))
                .map_err(err)?;
        }
        super::lifecycle::wait_for_detach(&rootfs.disk_image);
        let cgroup = self.cgroup(vps_id);
        let cgroup_err = |source| RuntimeError::Cgroup {
            vps_id: vps_id.to_owned(),
            source,
        };
        self.kill(None, &cgroup, vps_id)?;
        cgroup.delete().map_err(cgroup_err)?;
        cgroup.create().map_err(cgroup_err)?;
        cgroup.apply_limits(&spec.limits).map_err(cgroup_err)?;
        cgroup.apply_device_policy().map_err(cgroup_err)?;
        // The /proc view's files from this node's lxcfs (restarted if it died).
        let proc_binds = match &self.config().proc_view {
            super::procview::ProcView::Host => Vec::new(),
            super::procview::ProcView::Lxcfs(lxcfs) => super::procview::ensure_running(lxcfs)?
                .into_iter()
                .filter(|bind| bind.source.is_absolute())
                .map(|bind| (proc_bind_key(&bind.target), bind.source))
                .collect(),
        };
        if let Some(veth) = &veth {
            create_veth(vps_id, veth).map_err(err)?;
        }
        let vps_dir = self.layout().vps_dir(vps_id);
        let request = RestoreRequest {
            vps_id: vps_id.to_owned(),
            cgroup_parent: self.config().cgroup_parent.clone(),
            rootfs,
            ids,
            console_log: self.layout().console_log(vps_id),
            console_socket: console::socket_path(&vps_dir),
            console_pid_file: vps_dir.join("console.pid"),
            images: final_dir,
            console_key: meta.console_key,
            criu: criu_binary(),
            veth,
            proc_binds,
            sysinfo_socket: self.sysinfo_socket(vps_id),
        };
        let reply: Result<StartReply, HelperCallError> = helper::call(
            &self.config().helper_binary,
            RESTORE_HELPER,
            &request,
            CRIU_DEADLINE,
        );
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                let error = err(refusal(error));
                if let Some(veth) = &request.veth {
                    remove_link(&veth.host_ifname);
                }
                // Nothing half-restored may stay in the cgroup.
                return Err(match self.kill(None, &cgroup, vps_id) {
                    Ok(()) => error,
                    Err(cleanup) => RuntimeError::RollbackFailed {
                        error: Box::new(error),
                        cleanup: Box::new(cleanup),
                    },
                });
            }
        };
        tracing::info!(vps_id, pid = reply.init.pid, "restored VPS from checkpoint");
        st.limits = spec.limits.clone();
        st.hostname = spec.hostname.clone();
        st.power = super::Power::Running;
        st.init = Some(reply.init);
        st.halt_signal = Some(halt_signal);
        self.save(&st)?;
        match reply.disk_device {
            Some(device) => cgroup.apply_io(&st.limits, device).map_err(cgroup_err)?,
            None => self.apply_io(&st, &cgroup)?,
        }
        // The VPS runs from them now: every checkpoint this node held of it is spent (the
        // received one, or on a source that rolled back, the one it kept).
        let held = self.layout().vps_dir(vps_id).join(CHECKPOINTS_DIR);
        if let Err(error) = fs::remove_dir_all(&held) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(vps_id, path = %held.display(), %error, "removing spent checkpoints");
            }
        }
        Ok(self.observe(&st))
    }
}

/// Where the restore helper mounts the VPS's /dev for CRIU, in its private mount namespace:
/// CRIU opens it from inside the restored VPS (no host capabilities), so every directory on
/// the way must be searchable, which the state dir is not. A tmpfs private to the helper goes
/// on [`RESTORE_MOUNT_DIR`] (an empty directory on the host) with `dev` in it.
fn restore_dev_dir() -> Result<PathBuf, HelperError> {
    use std::os::unix::fs::PermissionsExt;
    let base = Path::new(RESTORE_MOUNT_DIR);
    let io_err = |operation: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| HelperError::Io {
            operation,
            path,
            source,
        }
    };
    fs::create_dir_all(base).map_err(io_err("create dir", base))?;
    nix::mount::mount(
        Some("tmpfs"),
        base,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=711,size=64k"),
    )
    .map_err(helper::sys_err("mount tmpfs for the restore's /dev"))?;
    let dev = base.join("dev");
    fs::create_dir(&dev).map_err(io_err("create dir", &dev))?;
    fs::set_permissions(&dev, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", &dev))?;
    Ok(dev)
}

/// Gives `dir` and everything under it to host id `owner` (user and group), directories
/// searchable (0711) and files readable (0644) by the restored tasks.
fn open_tree(dir: &Path, owner: u32) -> Result<(), HelperError> {
    use std::os::unix::fs::PermissionsExt;
    let id = Some(nix::unistd::Uid::from_raw(owner));
    let gid = Some(nix::unistd::Gid::from_raw(owner));
    let io_err = |operation: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| HelperError::Io {
            operation,
            path,
            source,
        }
    };
    nix::unistd::chown(dir, id, gid).map_err(helper::sys_err("chown checkpoint image"))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).map_err(io_err("chmod", dir))?;
    for entry in fs::read_dir(dir).map_err(io_err("read dir", dir))? {
        let path = entry.map_err(io_err("read dir", dir))?.path();
        if path.is_dir() {
            open_tree(&path, owner)?;
        } else {
            nix::unistd::chown(&path, id, gid)
                .map_err(helper::sys_err("chown checkpoint image"))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
                .map_err(io_err("chmod", &path))?;
        }
    }
    Ok(())
}

/// The temporary host-side name of a restored VPS's eth0 before CRIU moves it in.
pub fn peer_ifname(vps_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(vps_id.as_bytes()));
    format!("pcr{}", &digest[..12])
}

/// Runs `ip` with `args`; its stderr on failure.
fn ip(args: &[&str]) -> Result<(), CheckpointError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| CheckpointError::Io {
            operation: "run",
            path: PathBuf::from("ip"),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(CheckpointError::Io {
        operation: "ip link",
        path: PathBuf::from(args.join(" ")),
        source: io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    })
}

fn remove_link(name: &str) {
    let _ = Command::new("ip").args(["link", "del", name]).output();
}

/// The restored VPS's veth pair: the host end on the bridge (up), the peer under
/// [`peer_ifname`] for CRIU to move in. Leftovers of an earlier try are removed first.
fn create_veth(vps_id: &str, veth: &VethAttach) -> Result<(), CheckpointError> {
    let peer = peer_ifname(vps_id);
    remove_link(&veth.host_ifname);
    remove_link(&peer);
    ip(&[
        "link",
        "add",
        &veth.host_ifname,
        "type",
        "veth",
        "peer",
        "name",
        &peer,
    ])?;
    let attached = ip(&["link", "set", &veth.host_ifname, "master", &veth.bridge])
        .and_then(|()| ip(&["link", "set", &veth.host_ifname, "up"]));
    if let Err(error) = attached {
        remove_link(&veth.host_ifname);
        return Err(error);
    }
    Ok(())
}

/// A restore helper failure: CRIU's refusal (its reason) when the helper says so.
fn refusal(error: HelperCallError) -> CheckpointError {
    if let HelperCallError::Failed { stderr, .. } = &error {
        if let Some(at) = stderr.find(REFUSED_MARKER) {
            let reason = stderr[at + REFUSED_MARKER.len()..].trim().to_owned();
            return CheckpointError::Refused {
                step: "restore",
                reason,
            };
        }
    }
    CheckpointError::Helper(error)
}

/// `__internal criu-restore <json>`: prints the restored init's [`StartReply`].
pub(crate) fn restore_helper_main(args: &[std::ffi::OsString]) -> i32 {
    match restore_helper(args) {
        Ok(reply) => match serde_json::to_string(&reply) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(e) => {
                eprintln!("encode restore reply: {e}");
                1
            }
        },
        Err(RestoreFailure::Criu(reason)) => {
            eprintln!("{REFUSED_MARKER}{reason}");
            1
        }
        Err(RestoreFailure::Setup(error)) => {
            eprintln!("{error}");
            1
        }
    }
}

enum RestoreFailure {
    Setup(HelperError),
    Criu(String),
}

impl<E: Into<HelperError>> From<E> for RestoreFailure {
    fn from(error: E) -> Self {
        Self::Setup(error.into())
    }
}

/// The restore helper: a fresh console (pty and supervisor, as a start makes them), the
/// VPS's root mounted in a private mount namespace, this process in the VPS's cgroup (so
/// CRIU's restored tasks are born there), then `criu restore` detached.
fn restore_helper(args: &[std::ffi::OsString]) -> Result<StartReply, RestoreFailure> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    let request: RestoreRequest = helper::decode_request(args)?;
    helper::ensure_single_threaded()?;
    helper::step("console pty and supervisor");
    let (init_report, slave, slave_path) = console::open_for_vps(
        request.ids,
        &request.cgroup_parent,
        &request.vps_id,
        &console::SupervisorPaths {
            socket: request.console_socket.clone(),
            log: request.console_log.clone(),
            pid_file: request.console_pid_file.clone(),
        },
    )?;

    helper::step("mount disk, template, overlay and /dev");
    namespaces::unshare_mount_namespace()?;
    // /dev as a start makes it (its device nodes are made by host root: CRIU, in the VPS's
    // user namespace, could not); CRIU mounts it as the VPS's /dev, its own mounts on top.
    let disk_device = request.rootfs.mount_root(request.ids)?;
    let dev_dir = restore_dev_dir()?;
    request
        .rootfs
        .mount_dev_at(&dev_dir, request.ids, &slave_path)?;
    // Only the tmpfs with its nodes: CRIU mounts the console (the external `console`), the
    // VPS's devpts and /dev/shm from the images itself; and a mount left under /dev here
    // would make CRIU's bind of /dev fail in the VPS's user namespace (it would uncover it).
    for below in ["console", "pts", "shm"] {
        let path = dev_dir.join(below);
        nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH)
            .map_err(helper::sys_err("unmount below the restore's /dev"))?;
    }
    let disk_device = fs::metadata(&disk_device).ok().map(|meta| {
        (
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev()),
        )
    });
    VpsCgroup::open(&request.cgroup_parent, &request.vps_id).add_process(std::process::id())?;

    helper::step("criu restore");
    // CRIU opens some images from inside the restored tasks (in the VPS's user namespace,
    // without host capabilities): the images (the VPS's own memory and files) become
    // readable by them. The checkpoint's own directory above stays root-only (0700), so no
    // other host user can reach them by path.
    open_tree(&request.images, request.ids.host_base)?;
    // The restored tasks inherit the new console's slave for what was the old one.
    let slave_fd = slave.as_raw_fd();
    nix::fcntl::fcntl(
        slave_fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(helper::sys_err("clear close-on-exec of the console"))?;
    let pid_file = request.images.join("restored.pid");
    let _ = fs::remove_file(&pid_file);
    let mut criu_args: Vec<String> = [
        "restore",
        "--restore-detached",
        "--tcp-established",
        "--file-locks",
        "--manage-cgroups=soft",
    ]
    .map(str::to_owned)
    .to_vec();
    // The tasks go into the VPS's cgroup made with its limits before this helper ran, and
    // their cgroup namespace is rooted there again.
    criu_args.push("--cgroup-root".to_owned());
    criu_args.push(format!(
        "/{}",
        super::cgroups::relative_path(&request.cgroup_parent, &request.vps_id)
    ));
    criu_args.extend([
        "--images-dir".to_owned(),
        request.images.display().to_string(),
        "--root".to_owned(),
        request.rootfs.merged.display().to_string(),
        "--pidfile".to_owned(),
        pid_file.display().to_string(),
        "--external".to_owned(),
        format!("mnt[dev]:{}", dev_dir.display()),
        "--external".to_owned(),
        format!("mnt[console]:{}", slave_path.display()),
        "--inherit-fd".to_owned(),
        format!("fd[{slave_fd}]:{}", request.console_key),
    ]);
    for (key, source) in &request.proc_binds {
        criu_args.push("--external".to_owned());
        criu_args.push(format!("mnt[{key}]:{}", source.display()));
    }
    if request.veth.is_some() {
        // The pair is made on the host side beforehand (CRIU, creating links from inside the
        // VPS's user namespace, may not put an end in the host's network namespace); CRIU
        // moves the peer in as eth0 with its old index, MAC and addresses.
        criu_args.push("--external".to_owned());
        criu_args.push(format!("netdev[eth0]:{}", peer_ifname(&request.vps_id)));
    }
    match run_criu_with(
        &request.criu,
        "restore",
        &criu_args,
        &request.images,
        CRIU_DEADLINE,
    ) {
        Ok(_) => {}
        Err(CheckpointError::Refused { reason, .. }) => return Err(RestoreFailure::Criu(reason)),
        Err(other) => return Err(RestoreFailure::Criu(other.to_string())),
    }
    let pid: u32 = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| RestoreFailure::Criu(format!("no pid in {}", pid_file.display())))?;
    let init = ProcessIdentity::of(pid)?
        .ok_or_else(|| RestoreFailure::Criu(format!("restored init {pid} exited at once")))?;
    // A sysinfo server for the commands started in the VPS from now on (the restored
    // processes keep their filter, but its listener stayed with the old server, so their own
    // sysinfo(2) fails with ENOSYS until they restart). It serves until this init exits.
    if let Some(socket) = &request.sysinfo_socket {
        helper::step("sysinfo server");
        super::isolation::sysinfo::spawn_server_for(
            socket,
            &request.cgroup_parent,
            &request.vps_id,
            Some(init.pid),
        )
        .map_err(HelperError::from)?;
    }
    let _ = init_report.send(&init);
    drop(slave);
    Ok(StartReply { init, disk_device })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(pages: u64) -> DumpStats {
        DumpStats {
            pages_written: pages,
            ..DumpStats::default()
        }
    }

    #[test]
    fn rounds_go_on_while_the_dirty_set_shrinks_and_stop_at_the_limit() {
        assert!(another_round(&[], 5));
        assert!(another_round(&[written(1000)], 5));
        assert!(another_round(&[written(1000), written(200)], 5));
        // No longer shrinking: the final dump would not be shorter.
        assert!(!another_round(
            &[written(1000), written(200), written(200)],
            5
        ));
        assert!(!another_round(
            &[written(1000), written(200), written(300)],
            5
        ));
        // The limit.
        let shrinking: Vec<_> = (0..5).map(|i| written(1000 - i * 100)).collect();
        assert!(!another_round(&shrinking, 5));
        assert!(!another_round(&[], 0));
    }

    #[test]
    fn stats_are_read_from_display_stats() {
        let out = "Displaying dump stats:\nFreezing time: 91 us\nFrozen time: 35417 us\n\
                   Memory dump time: 2500 us\nMemory pages scanned: 8123 (0x1fbb)\n\
                   Memory pages skipped from parent: 7900 (0x1edc)\n\
                   Memory pages written: 223 (0xdf)\n";
        assert_eq!(
            parse_stats(out),
            DumpStats {
                pages_scanned: 8123,
                pages_written: 223,
                frozen_us: 35417,
            }
        );
        assert_eq!(parse_stats("Pages written: 5\n").pages_written, 5);
        assert_eq!(parse_stats("nothing here"), DumpStats::default());
    }

    #[test]
    fn a_transfer_carries_the_images_and_the_disk_and_needs_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = dir.path().join("images");
        fs::create_dir_all(images.join(FINAL_DIR)).expect("mkdir");
        fs::write(images.join(META_FILE), b"{}").expect("meta");
        fs::write(images.join(FINAL_DIR).join("core-1.img"), b"core").expect("image");
        let disk = dir.path().join("disk.img");
        fs::write(&disk, b"disk bytes").expect("disk");
        let mut tar = Vec::new();
        pack_transfer(&images, &disk, &mut tar).expect("pack");
        let received = dir.path().join("received");
        unpack_transfer(tar.as_slice(), &received).expect("unpack");
        assert_eq!(
            fs::read(received.join(FINAL_DIR).join("core-1.img")).expect("image"),
            b"core"
        );
        assert_eq!(
            fs::read(received.join(DISK_FILE)).expect("disk"),
            b"disk bytes"
        );

        // Without the checkpoint's record it is no checkpoint.
        fs::remove_file(images.join(META_FILE)).expect("rm");
        let mut tar = Vec::new();
        pack_transfer(&images, &disk, &mut tar).expect("pack");
        let error =
            unpack_transfer(tar.as_slice(), &dir.path().join("other")).expect_err("no record");
        assert!(matches!(error, CheckpointError::NoImages(_)), "{error:?}");
        // A truncated transfer fails.
        let error = unpack_transfer(&tar[..700], &dir.path().join("cut")).expect_err("cut");
        assert!(
            matches!(
                error,
                CheckpointError::Io { .. } | CheckpointError::NoImages(_)
            ),
            "{error:?}"
        );
    }

    #[test]
    fn the_reason_is_criu_s_error_lines() {
        let log = "(00.000001) Version: 3.17.1\n\
                   (00.002) Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n\
                   (00.003) Warn  (criu/kerndat.c:1): something\n\
                   (00.004) Error (criu/crtools.c:260): Could not initialize kernel features detection.\n";
        let reason = reason_from_log(log);
        assert!(
            reason.contains("Unexpected rt vDSO area bounds"),
            "{reason}"
        );
        assert!(
            reason.contains("Could not initialize kernel features"),
            "{reason}"
        );
        assert!(!reason.contains("Warn"), "{reason}");
        // Without Error lines, the log's tail.
        assert_eq!(reason_from_log("a\nb\n"), "a; b");
        assert_eq!(reason_from_log(""), "CRIU failed without a log");
        let long = "Error (x): ".to_owned() + &"y".repeat(5000);
        assert!(reason_from_log(&long).len() <= MAX_REASON + 3);
    }
}
