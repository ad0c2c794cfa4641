//! Backup: the throughput of a backup of a running VPS (cgroup frozen, syncfs, the writable
//! layer archived as a zstd tar with ids in the VPS's view and SHA-256 sums) and of its
//! restore in place into the stopped VPS (verify, extract into a fresh image, swap), as the
//! agent's runtime does them into a local backup store, with N MiB written to the VPS's disk
//! (64 and 256 MiB; quick: 8): half random bytes (incompressible), half repeated log lines
//! (compressible). Baseline: `tar` through `zstd -3` of the same files read through the VPS's
//! root, on the host.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use paddock_agent::runtime::storage::backup::LocalStore;
use paddock_agent::runtime::Limits;

use crate::node::{unique_tag, Node};
use crate::report::{Row, ScenarioReport};
use crate::stats::Samples;
use crate::Options;

const MIB: u64 = 1 << 20;

pub fn run(options: &Options, report: &mut ScenarioReport) -> Result<()> {
    let sizes: &[u64] = if options.quick { &[8] } else { &[64, 256] };
    let iterations = options.iterations(5, 1);
    let mut node = Node::start(options, false)?;
    let limits = Limits {
        vcpus: 1.0,
        memory_bytes: 256 * MIB,
        pids_max: 256,
        disk_bytes: 2 << 30,
        ..Limits::default()
    };
    let vps_id = format!("backup-{}", unique_tag());
    let mut init = node.create_start(&vps_id, &limits, None)?;
    let store = LocalStore::new(node.state_dir().join(format!("bench-backups-{vps_id}")));
    let mut written = 0;
    let mut ratios = Vec::new();
    for &mib in sizes {
        let half = (mib - written) / 2;
        node.sh(
            &vps_id,
            &format!(
                "mkdir -p /data && dd if=/dev/urandom of=/data/random-{mib} bs=1M count={half} \
                 2>/dev/null && yes 'Dec  6 23:01:02 web1 sshd[4242]: Accepted publickey for \
                 root from 192.0.2.7 port 50022' | head -c {} > /data/log-{mib} && sync",
                half * MIB
            ),
        )?;
        written = mib;
        let mut backups = Samples::new();
        let mut restores = Samples::new();
        let mut baseline = Samples::new();
        let mut archive_mib = 0.0;
        for i in 0..iterations {
            let backup_id = format!("bench-{mib}-{i}");
            let started = Instant::now();
            let taken = node
                .runtime
                .backup(&vps_id, &backup_id, &store, "{}")
                .with_context(|| format!("backup {backup_id}"))?;
            backups.push(mib as f64 / started.elapsed().as_secs_f64());
            archive_mib = taken.manifest.archive_bytes as f64 / MIB as f64;

            let copy = node
                .state_dir()
                .join(format!("baseline-{backup_id}.tar.zst"));
            let started = Instant::now();
            let status = Command::new("tar")
                .arg("-C")
                .arg(format!("/proc/{init}/root"))
                .args(["-I", "zstd -3 -T1", "-cf"])
                .arg(&copy)
                .arg("data")
                .status()
                .context("running tar | zstd")?;
            if !status.success() {
                bail!("tar -I zstd of the VPS's /data: {status}");
            }
            baseline.push(mib as f64 / started.elapsed().as_secs_f64());
            let _ = std::fs::remove_file(&copy);

            // Stopped first: a running VPS's stop (its init's power-off) is not the restore's.
            node.stop(&vps_id, &limits)?;
            let started = Instant::now();
            node.runtime
                .restore_backup(&vps_id, &backup_id, &store)
                .with_context(|| format!("restore {backup_id}"))?;
            restores.push(mib as f64 / started.elapsed().as_secs_f64());
            init = node.create_start(&vps_id, &limits, None)?;
            store
                .delete(&backup_id)
                .with_context(|| format!("delete backup {backup_id}"))?;
        }
        report.row(
            Row::median(
                &format!("backup throughput, {mib} MiB written"),
                "MiB/s",
                &backups,
            )?
            .against_median("tar + zstd -3", &baseline)?,
        );
        report.row(Row::median(
            &format!("restore throughput (verify, extract, swap), {mib} MiB written"),
            "MiB/s",
            &restores,
        )?);
        ratios.push(format!("{mib} MiB -> {archive_mib:.1} MiB"));
    }
    report.note(format!(
        "VPS disk 2 GiB; data half /dev/urandom, half repeated log lines, then sync; {iterations} \
         backup(s) per size into a local store on the state dir's filesystem, each restored in \
         place into the stopped VPS (stop and start not counted) and deleted. \
         Archive sizes: {}. The VPS is frozen for the backup's duration. The S3 store adds the \
         upload (not measured here).",
        ratios.join(", ")
    ));
    let _ = std::fs::remove_dir_all(store.dir());
    node.delete(&vps_id)?;
    Ok(())
}
