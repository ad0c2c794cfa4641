//! Live migration: a running VPS (the default lxcfs /proc view) with a network port serves a
//! TCP echo; a client on the node sends one byte every 10 ms and times
//! each answer. The VPS is checkpointed with CRIU (pre-dump rounds where the kernel tracks
//! dirty memory, then the final dump) and restored on the same node from the images, as the
//! destination of a move would (the disk stays in place here; a move adds its copy).
//! Downtime is the longest gap between two answers across the move; the baseline is the
//! longest gap over as many pings with no move. Also reported: the checkpoint's total time,
//! how long the final dump froze the VPS, the restore time, image bytes and pre-dump rounds.
//! Where CRIU does not work on the node, the scenario reports why and measures nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paddock_agent::network::host_ifname;
use paddock_agent::runtime::checkpoint::{self, VethAttach};
use paddock_agent::runtime::procview::ProcView;
use paddock_agent::runtime::{CheckpointOptions, Limits, Power};

use crate::node::{unique_tag, Node};
use crate::report::{Row, ScenarioReport};
use crate::stats::Samples;
use crate::Options;

const MIB: u64 = 1 << 20;
const PING_EVERY: Duration = Duration::from_millis(10);

/// Pings the echo server every 10 ms until told to stop; returns when each answer came.
pub(crate) fn ping_loop(mut stream: TcpStream, stop: Arc<AtomicBool>) -> Result<Vec<Instant>> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    let mut answers = Vec::new();
    let mut byte = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        stream.write_all(b"p").context("ping")?;
        stream.read_exact(&mut byte).context("pong")?;
        answers.push(Instant::now());
        std::thread::sleep(PING_EVERY);
    }
    Ok(answers)
}

pub(crate) fn longest_gap(answers: &[Instant]) -> Duration {
    answers
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default()
}

pub fn run(options: &Options, report: &mut ScenarioReport) -> Result<()> {
    let probe = tempfile::tempdir().context("tempdir")?;
    if let Err(error) = checkpoint::check(probe.path()) {
        eprintln!("live-migration: {error}");
        return refusal_only(options, report, &error.to_string());
    }
    let iterations = options.iterations(5, 1);
    let mut node = Node::start(options, true)?;
    let limits = Limits {
        vcpus: 1.0,
        memory_bytes: 256 * MIB,
        pids_max: 256,
        disk_bytes: 256 * MIB,
        ..Limits::default()
    };
    let vps_id = format!("live-{}", unique_tag());
    let port = node.port(&vps_id, 2, 0)?;
    let pid = node.create_start(&vps_id, &limits, Some(&port))?;
    let _ = pid;
    // Memory that the VPS keeps (a tmpfs file) so there is something to copy.
    node.sh(
        &vps_id,
        "dd if=/dev/urandom of=/dev/shm/state bs=1M count=16 2>/dev/null",
    )?;
    node.sh(
        &vps_id,
        "setsid nc -ll -p 7000 -e cat >/dev/null 2>&1 </dev/null &",
    )?;
    let address = format!("{}.2:7000", node.subnet);
    let connect = || -> Result<TcpStream> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match TcpStream::connect(&address) {
                Ok(stream) => return Ok(stream),
                Err(error) if Instant::now() > deadline => {
                    bail!("connect {address}: {error}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    };
    let mut downtime = Samples::new();
    let mut idle_gap = Samples::new();
    let mut checkpoint_ms = Samples::new();
    let mut frozen_ms = Samples::new();
    let mut restore_ms = Samples::new();
    let mut image_mib = Samples::new();
    let mut rounds = Vec::new();
    let mut tracking = false;
    let spec = Node::spec(&vps_id, limits.clone(), Power::Running);
    for i in 0..iterations {
        // Baseline: the same pinging with no move.
        let stop = Arc::new(AtomicBool::new(false));
        let stream = connect()?;
        let pinger = {
            let stop = stop.clone();
            std::thread::spawn(move || ping_loop(stream, stop))
        };
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        let idle = pinger
            .join()
            .map_err(|_| anyhow::anyhow!("pinger panicked"))??;
        idle_gap.push_ms(longest_gap(&idle));

        let stop = Arc::new(AtomicBool::new(false));
        let stream = connect()?;
        let pinger = {
            let stop = stop.clone();
            std::thread::spawn(move || ping_loop(stream, stop))
        };
        std::thread::sleep(Duration::from_millis(500));
        let images = node.state_dir().join(format!("checkpoint-{i}"));
        let started = Instant::now();
        let checkpointed = node
            .runtime
            .checkpoint(&vps_id, &images, CheckpointOptions::default())
            .context("checkpoint");
        let checkpointed = match checkpointed {
            Ok(done) => done,
            Err(error) => {
                stop.store(true, Ordering::Relaxed);
                let _ = pinger.join();
                return Err(error);
            }
        };
        checkpoint_ms.push_ms(started.elapsed());
        node.remove_port(&vps_id)?;
        let started = Instant::now();
        let restored = node.runtime.restore_checkpoint(
            &spec,
            &images,
            Some(VethAttach {
                host_ifname: host_ifname(&vps_id),
                bridge: node.bridge.clone(),
            }),
        );
        let restored = match restored {
            Ok(observed) => observed,
            Err(error) => {
                stop.store(true, Ordering::Relaxed);
                let _ = pinger.join();
                return Err(error).context("restore");
            }
        };
        let new_pid = restored.init_pid.context("restored VPS has no init")?;
        node.ensure_port(&port, new_pid)?;
        restore_ms.push_ms(started.elapsed());
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let answers = pinger
            .join()
            .map_err(|_| anyhow::anyhow!("pinger panicked"))?
            .context("the TCP echo across the move")?;
        downtime.push_ms(longest_gap(&answers));
        frozen_ms.push(checkpointed.final_dump.frozen_us as f64 / 1000.0);
        image_mib.push(checkpointed.image_bytes as f64 / MIB as f64);
        rounds.push(checkpointed.rounds.len());
        tracking = checkpointed.dirty_tracking;
        let _ = std::fs::remove_dir_all(&images);
    }
    report.row(
        Row::median(
            "downtime (longest gap of a 10 ms TCP echo)",
            "ms",
            &downtime,
        )?
        .against_median("longest gap, no move", &idle_gap)?,
    );
    report.row(Row::median(
        "checkpoint (pre-dump rounds + dump)",
        "ms",
        &checkpoint_ms,
    )?);
    report.row(Row::median("final dump, VPS frozen", "ms", &frozen_ms)?);
    report.row(Row::median(
        "restore (CRIU restore + port)",
        "ms",
        &restore_ms,
    )?);
    report.row(Row::median("image bytes", "MiB", &image_mib)?);
    report.note(format!(
        "busybox VPS with 16 MiB in /dev/shm and a TCP echo (busybox nc) on its port; \
         restored on the same node from the images (a move between nodes adds the transfer \
         of the images and the disk). {iterations} iteration(s); kernel dirty-memory tracking: \
         {}; pre-dump rounds per checkpoint: {rounds:?}. CRIU: {}.",
        if tracking {
            "yes"
        } else {
            "no (CONFIG_MEM_SOFT_DIRTY off: no pre-dump rounds, the whole memory is \
             copied while frozen)"
        },
        checkpoint::criu_binary().display()
    ));
    node.delete(&vps_id)?;
    Ok(())
}

/// Where CRIU does not work on the node: measures only how long a checkpoint takes to be
/// refused with CRIU's reason, and checks the VPS kept running.
fn refusal_only(options: &Options, report: &mut ScenarioReport, why: &str) -> Result<()> {
    let iterations = options.iterations(5, 1);
    let mut node = Node::start_with_view(options, false, ProcView::Host)?;
    let limits = Limits {
        vcpus: 1.0,
        memory_bytes: 128 * MIB,
        pids_max: 256,
        disk_bytes: 128 * MIB,
        ..Limits::default()
    };
    let vps_id = format!("live-{}", unique_tag());
    let pid = node.create_start(&vps_id, &limits, None)?;
    let mut refusals = Samples::new();
    for i in 0..iterations {
        let images = node.state_dir().join(format!("refused-{i}"));
        let started = Instant::now();
        match node
            .runtime
            .checkpoint(&vps_id, &images, CheckpointOptions::default())
        {
            Ok(_) => bail!("checkpoint succeeded although criu check failed"),
            Err(_) => refusals.push_ms(started.elapsed()),
        }
        let observed = node.runtime.status(&vps_id)?.context("VPS gone")?;
        if observed.init_pid != Some(pid) {
            bail!("a refused checkpoint changed the VPS: {observed:?}");
        }
    }
    report.row(Row::median(
        "checkpoint refused (CRIU does not work here), time to the error",
        "ms",
        &refusals,
    )?);
    report.note(format!(
        "downtime not measured: {why} The VPS kept running with the same init through \
         every refused checkpoint."
    ));
    node.delete(&vps_id)?;
    Ok(())
}
