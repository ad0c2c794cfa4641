//! Snapshot: the time and the bytes a snapshot of a running VPS costs, with N MiB of random
//! data written to its disk (64 and 512 MiB; quick: 8), as the agent's runtime takes it
//! (cgroup frozen, syncfs, copy, thaw): a reflink where the state dir's filesystem can, else a
//! sparse copy (the report names which). Baseline: `cp --sparse=always` of the same image.
//! Restore time (stop, copy back; the start after it is not counted) is reported too.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paddock_agent::runtime::Limits;

use crate::node::{unique_tag, Node};
use crate::report::{Row, ScenarioReport};
use crate::stats::Samples;
use crate::Options;

const MIB: u64 = 1 << 20;

pub fn run(options: &Options, report: &mut ScenarioReport) -> Result<()> {
    let sizes: &[u64] = if options.quick { &[8] } else { &[64, 512] };
    let iterations = options.iterations(5, 1);
    let mut node = Node::start(options, false)?;
    let limits = Limits {
        vcpus: 1.0,
        memory_bytes: 256 * MIB,
        pids_max: 256,
        disk_bytes: 2 << 30,
        ..Limits::default()
    };
    let vps_id = format!("snap-{}", unique_tag());
    node.create_start(&vps_id, &limits, None)?;
    let mut methods = Vec::new();
    let mut written = 0;
    for &mib in sizes {
        let more = mib - written;
        node.sh(
            &vps_id,
            &format!("dd if=/dev/urandom of=/data-{mib} bs=1M count={more} 2>/dev/null && sync"),
        )?;
        written = mib;
        let mut times = Samples::new();
        let mut allocated = Samples::new();
        let mut copies = Samples::new();
        let mut restores = Samples::new();
        for i in 0..iterations {
            let name = format!("s{mib}-{i}");
            let started = Instant::now();
            let info = node
                .runtime
                .create_snapshot(&vps_id, &name, Duration::from_secs(600))
                .with_context(|| format!("snapshot {name}"))?;
            times.push_ms(started.elapsed());
            allocated.push(info.allocated_bytes as f64 / MIB as f64);
            if !methods.contains(&info.method.as_str()) {
                methods.push(info.method.as_str());
            }
            let image = node.state_dir().join("vps").join(&vps_id).join("disk.img");
            let copy = node.state_dir().join(format!("cp-{name}.img"));
            copies.time_ms(|| -> Result<()> {
                let status = Command::new("cp")
                    .arg("--sparse=always")
                    .arg(&image)
                    .arg(&copy)
                    .status()
                    .context("running cp")?;
                if !status.success() {
                    bail!("cp --sparse=always {}: {status}", image.display());
                }
                Ok(())
            })?;
            let _ = std::fs::remove_file(&copy);
            let started = Instant::now();
            node.runtime
                .restore_snapshot(&vps_id, &name, Duration::from_secs(600))
                .with_context(|| format!("restore {name}"))?;
            restores.push_ms(started.elapsed());
            node.create_start(&vps_id, &limits, None)?;
            node.runtime
                .delete_snapshot(&vps_id, &name)
                .with_context(|| format!("delete snapshot {name}"))?;
        }
        report.row(
            Row::median(&format!("snapshot, {mib} MiB written"), "ms", &times)?
                .against_median("cp --sparse=always", &copies)?,
        );
        report.row(Row::median(
            &format!("snapshot allocated, {mib} MiB written"),
            "MiB",
            &allocated,
        )?);
        report.row(Row::median(
            &format!("restore (stop + copy back), {mib} MiB written"),
            "ms",
            &restores,
        )?);
    }
    report.note(format!(
        "VPS disk 2 GiB (sparse ext4 image), data written with dd from /dev/urandom then sync; \
         {iterations} snapshot(s) per size, each deleted after a restore; copy method used: {}. \
         The VPS is frozen for the snapshot's duration.",
        methods.join(", ")
    ));
    node.delete(&vps_id)?;
    Ok(())
}
