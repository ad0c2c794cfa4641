//! Limit accuracy: what a VPS gets against what its plan says. CPU: busy loops inside the VPS
//! (through the agent's exec, so in its cgroup) under 0.5 and 1.5 vCPU, measured from the
//! cgroup's CPU usage counter over a window. IO: busybox `dd` with direct IO inside the VPS
//! against its own disk (the loop device the agent throttles), bytes or operations over dd's
//! time. Egress: a TCP stream out of the VPS's port (shaped by the agent with tc) to a second
//! VPS on the bridge, bytes over a window at the receiver.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paddock_agent::runtime::{Limits, Power};

use crate::netns::tcp_throughput;
use crate::node::{unique_tag, Node};
use crate::report::{Row, ScenarioReport};
use crate::stats::Samples;
use crate::Options;

const IO_BPS: u64 = 8 << 20;
const IO_IOPS: u64 = 200;
const EGRESS_BPS: u64 = 100_000_000;

pub fn run(options: &Options, report: &mut ScenarioReport) -> Result<()> {
    let rounds = options.iterations(3, 1);
    let window = Duration::from_secs_f64(if options.quick { 1.0 } else { 5.0 });
    let mut node = Node::start(options, true)?;
    let vps_id = format!("bench-limits-{}", unique_tag());
    let peer_id = format!("bench-limits-peer-{}", unique_tag());
    let mut limits = Limits {
        vcpus: 0.5,
        memory_bytes: 128 << 20,
        pids_max: 256,
        disk_bytes: 256 << 20,
        io_read_bps: IO_BPS,
        io_write_bps: IO_BPS,
        io_read_iops: IO_IOPS,
        io_write_iops: IO_IOPS,
        ..Limits::default()
    };
    let port = node.port(&vps_id, 2, EGRESS_BPS)?;
    let peer_port = node.port(&peer_id, 3, 0)?;
    node.create_start(&vps_id, &limits, Some(&port))?;
    node.create_start(&peer_id, &Limits::default(), Some(&peer_port))?;

    report.note(format!(
        "{rounds} rounds per row. CPU: {} s windows after 1 s of warm-up; one busy loop \
         (`while :; do :; done` in the VPS's sh) per whole or partial vCPU, through the agent's \
         exec; usage from the VPS cgroup's cpuacct.usage (v1) or cpu.stat usage_usec (v2), \
         divided by the window. The bench's cgroup parent gets the highest CPU weight (shares \
         262144 / weight 10000) so that other load on this 2-CPU host does not hide the quota.",
        window.as_secs_f64()
    ));
    report.note(format!(
        "IO: the VPS's disk (ext4 on a loop device, throttled by the agent in the blkio/io \
         cgroup) limited to {} MiB/s and {IO_IOPS} IOPS for reads and writes; busybox dd with \
         O_DIRECT inside the VPS: bps with 1 MiB blocks, IOPS with 4 KiB blocks, rate = amount \
         / wall time of the dd (exec start-up included, under 1% of the time).",
        IO_BPS >> 20
    ));
    report.note(format!(
        "Egress: the VPS's port limited to {} Mbit/s (tc tbf on an ifb, as the agent shapes \
         it); one TCP stream to a second VPS on the bridge, sent by a thread entered into the \
         VPS's network namespace; rate = payload bits at the receiver over {} s after 1 s of \
         warm-up (TCP/IP headers not counted: about 3% of the shaped bytes).",
        EGRESS_BPS / 1_000_000,
        window.as_secs_f64()
    ));

    // CPU at 0.5, then resized in place to 1.5. The bench's own cgroup parent gets the
    // highest weight, so other load on the host does not hide the quota.
    favour_cpu(&node.cgroup_parent)?;
    for vcpus in [0.5, 1.5] {
        limits.vcpus = vcpus;
        node.runtime
            .apply(&Node::spec(&vps_id, limits.clone(), Power::Running))
            .context("resizing the VPS's vCPUs")?;
        let mut used = Samples::new();
        for _ in 0..rounds {
            used.push(cpu_cores(&node, &vps_id, vcpus.ceil() as usize, window)?);
        }
        report.row(
            Row::median(&format!("CPU used under {vcpus} vCPU"), "CPUs", &used)?
                .against("configured", vcpus),
        );
    }

    // IO: a file of 4 s at the limit, written then read back.
    let megabytes = if options.quick { 8 } else { 32 };
    let operations = if options.quick { 200 } else { 800 };
    let mut write_bps = Samples::new();
    let mut read_bps = Samples::new();
    let mut write_iops = Samples::new();
    let mut read_iops = Samples::new();
    for _ in 0..rounds {
        let seconds = timed(
            &node,
            &vps_id,
            &format!(
                "dd if=/dev/zero of=/bench-io bs=1M count={megabytes} oflag=direct 2>/dev/null"
            ),
        )?;
        write_bps.push((megabytes << 20) as f64 / seconds / f64::from(1 << 20));
        let seconds = timed(
            &node,
            &vps_id,
            &format!(
                "dd if=/bench-io of=/dev/null bs=1M count={megabytes} iflag=direct 2>/dev/null"
            ),
        )?;
        read_bps.push((megabytes << 20) as f64 / seconds / f64::from(1 << 20));
        let seconds = timed(&node, &vps_id, &format!(
            "dd if=/dev/zero of=/bench-io bs=4k count={operations} oflag=direct conv=notrunc 2>/dev/null"
        ))?;
        write_iops.push(operations as f64 / seconds);
        let seconds = timed(
            &node,
            &vps_id,
            &format!(
                "dd if=/bench-io of=/dev/null bs=4k count={operations} iflag=direct 2>/dev/null"
            ),
        )?;
        read_iops.push(operations as f64 / seconds);
        node.sh(&vps_id, "rm -f /bench-io")?;
    }
    let configured_mib = (IO_BPS >> 20) as f64;
    report.row(
        Row::median("IO write bandwidth", "MiB/s", &write_bps)?
            .against("configured", configured_mib),
    );
    report.row(
        Row::median("IO read bandwidth", "MiB/s", &read_bps)?.against("configured", configured_mib),
    );
    report.row(
        Row::median("IO write IOPS", "IOPS", &write_iops)?.against("configured", IO_IOPS as f64),
    );
    report.row(
        Row::median("IO read IOPS", "IOPS", &read_iops)?.against("configured", IO_IOPS as f64),
    );

    // Egress through the VPS's shaped port.
    let peer_ip = format!("{}.3", node.subnet).parse()?;
    let mut egress = Samples::new();
    for _ in 0..rounds {
        let transfer = tcp_throughput(
            Some(node.netns(&peer_id)?),
            peer_ip,
            Some(node.netns(&vps_id)?),
            Duration::from_secs(1),
            window,
        )?;
        egress.push(transfer.bits_per_sec() / 1e6);
    }
    report.row(
        Row::median("egress rate (TCP payload)", "Mbit/s", &egress)?
            .against("configured", (EGRESS_BPS / 1_000_000) as f64),
    );
    report.note(
        "Targets (issue 12): CPU within 5% (ratio 0.95-1.05), IO and network within 10% \
         (0.90-1.10).",
    );
    node.delete(&vps_id)?;
    node.delete(&peer_id)?;
    Ok(())
}

/// Gives cgroup `parent` (the bench node's own) the highest CPU weight in its hierarchy.
fn favour_cpu(parent: &str) -> Result<()> {
    for root in paddock_tests::cgroup_roots() {
        let dir = root.join(parent);
        for (file, value) in [("cpu.shares", "262144"), ("cpu.weight", "10000")] {
            let path = dir.join(file);
            if path.exists() {
                std::fs::write(&path, value)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// CPUs used by `loops` busy loops in the VPS over `window`, after a second of warm-up.
fn cpu_cores(node: &Node, vps_id: &str, loops: usize, window: Duration) -> Result<f64> {
    let mut children = Vec::new();
    for _ in 0..loops {
        children.push(node.spawn_sh(vps_id, "while :; do :; done")?);
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_usage_ns(node, vps_id)?;
    let started = Instant::now();
    std::thread::sleep(window);
    let used = cpu_usage_ns(node, vps_id)? - before;
    let seconds = started.elapsed().as_secs_f64();
    // Dropping the children kills the loops.
    drop(children);
    Ok(used as f64 / 1e9 / seconds)
}

/// The VPS cgroup's CPU time, nanoseconds.
fn cpu_usage_ns(node: &Node, vps_id: &str) -> Result<u64> {
    if let Ok(text) = node.cgroup_file(vps_id, &["cpuacct.usage"]) {
        return text.parse().context("cpuacct.usage");
    }
    let stat = node.cgroup_file(vps_id, &["cpu.stat"])?;
    for line in stat.lines() {
        if let Some(usec) = line.strip_prefix("usage_usec ") {
            return Ok(usec.trim().parse::<u64>().context("cpu.stat usage_usec")? * 1000);
        }
    }
    bail!("no usage_usec in cpu.stat of VPS {vps_id}")
}

/// Seconds `script` took in the VPS.
fn timed(node: &Node, vps_id: &str, script: &str) -> Result<f64> {
    let started = Instant::now();
    node.sh(vps_id, script)?;
    Ok(started.elapsed().as_secs_f64())
}
