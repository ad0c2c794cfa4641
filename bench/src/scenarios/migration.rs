//! Cold migration: how long moving a running busybox VPS with N MiB of random data on its
//! disk takes (16 and 128 MiB; quick: 4), from `paddock admin migrate` until the VPS runs on
//! the other node, in the two-node cluster of the multi-node harness (controller and agents
//! on this machine, each agent in its own netns). The VPS moves back and forth; each move
//! stops it, streams its archive source agent -> controller -> destination agent, switches
//! and starts it there. Baseline in the same run: a restart of the same VPS in place
//! (`stop --wait` then `start --wait`), the part of a move that is not the copy.
//!
//! Then controller-driven live moves (`admin migrate --live`) of a VPS without an address
//! (per-node pools cannot keep one): from the command until it runs there, and how long the
//! source's dump kept it frozen (from the command's report).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paddock_tests::multinode::{MultiNode, PLAN};

use crate::report::{Row, ScenarioReport};
use crate::stats::Samples;
use crate::Options;

const TENANT: &str = "bench";
const VPS: &str = "mover";
/// The live mover and its plan (no IPv4 address).
const LIVE_VPS: &str = "live-mover";
const LIVE_PLAN: &str = "live0";

fn show(cluster: &MultiNode) -> Result<serde_json::Value> {
    show_vps(cluster, VPS)
}

fn show_vps(cluster: &MultiNode, name: &str) -> Result<serde_json::Value> {
    cluster.json(&["--context", TENANT, "show", name])
}

/// The node of the two that `name` is not on.
fn other_node(cluster: &MultiNode, name: &str) -> Result<String> {
    let here = show_vps(cluster, name)?["node"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    cluster
        .nodes
        .iter()
        .map(|node| node.name.clone())
        .find(|node| *node != here)
        .context("a second node")
}

/// Waits until the VPS runs on `node`.
fn wait_running_on(cluster: &MultiNode, node: &str) -> Result<()> {
    wait_vps_running_on(cluster, VPS, node)
}

fn wait_vps_running_on(cluster: &MultiNode, name: &str, node: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let vps = show_vps(cluster, name)?;
        if vps["node"] == node && vps["state"] == "running" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{name} not running on {node} after 300 s: {vps}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(options: &Options, report: &mut ScenarioReport) -> Result<()> {
    let sizes: &[u64] = if options.quick { &[4] } else { &[16, 128] };
    let iterations = options.iterations(5, 1);
    let cluster = MultiNode::start(2).context("start two nodes")?;
    cluster.add_tenant(TENANT, &[])?;
    cluster.cli_ok(&["--context", TENANT, "create", VPS, "--plan", PLAN, "--wait"])?;
    let mut written = 0;
    for &mib in sizes {
        let more = mib - written;
        let out = cluster.sh(
            TENANT,
            VPS,
            &format!("dd if=/dev/urandom of=/data-{mib} bs=1M count={more} 2>/dev/null && sync"),
        )?;
        if !out.status.success() {
            bail!(
                "writing {more} MiB: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        written = mib;
        let mut moves = Samples::new();
        let mut restarts = Samples::new();
        for _ in 0..iterations {
            let here = show(&cluster)?["node"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let there = cluster
                .nodes
                .iter()
                .map(|node| node.name.clone())
                .find(|node| *node != here)
                .context("a second node")?;
            let started = Instant::now();
            cluster.admin_ok(&[
                "migrate",
                VPS,
                "--tenant",
                TENANT,
                "--to",
                &there,
                "--allow-new-address",
            ])?;
            wait_running_on(&cluster, &there)?;
            moves.push_ms(started.elapsed());
            restarts.time_ms(|| -> Result<()> {
                cluster.cli_ok(&["--context", TENANT, "stop", VPS, "--wait"])?;
                cluster.cli_ok(&["--context", TENANT, "start", VPS, "--wait"])?;
                Ok(())
            })?;
        }
        report.row(
            Row::median(
                &format!("cold migration until running there, {mib} MiB written"),
                "ms",
                &moves,
            )?
            .against_median("restart in place (stop + start)", &restarts)?,
        );
    }
    live_moves(&cluster, iterations, report)?;
    report.note(format!(
        "Two nodes of the multi-node harness on this machine (agents in their own netns, \
         usage samples every 5 s); plan {PLAN} (256 MiB disk); data written with dd from \
         /dev/urandom (incompressible for the archive's zstd); {iterations} move(s) per size, \
         alternating between the nodes, each with a new address. A move includes waiting for \
         the source's first usage sample of the stopped VPS (at most one interval, mostly \
         overlapped by the copy), so metering continues without a gap. Live moves: plan \
         {LIVE_PLAN} (no address), an idle busybox VPS, CRIU without dirty-memory tracking \
         where the kernel lacks it (then no pre-dump rounds)."
    ));
    cluster.finish();
    Ok(())
}

/// Controller-driven live moves back and forth: until running there, and frozen time.
fn live_moves(cluster: &MultiNode, iterations: usize, report: &mut ScenarioReport) -> Result<()> {
    cluster.admin_ok(&[
        "plan", "create", LIVE_PLAN, "--vcpus", "0.1", "--memory", "64MiB", "--disk", "256MiB",
        "--pids", "128", "--ipv4", "0",
    ])?;
    cluster.cli_ok(&[
        "--context",
        TENANT,
        "create",
        LIVE_VPS,
        "--plan",
        LIVE_PLAN,
        "--wait",
    ])?;
    let mut moves = Samples::new();
    let mut frozen = Samples::new();
    for _ in 0..iterations {
        let there = other_node(cluster, LIVE_VPS)?;
        let started = Instant::now();
        let moved = cluster.json(&[
            "--context",
            "admin",
            "admin",
            "migrate",
            LIVE_VPS,
            "--tenant",
            TENANT,
            "--to",
            &there,
            "--live",
        ])?;
        wait_vps_running_on(cluster, LIVE_VPS, &there)?;
        moves.push_ms(started.elapsed());
        let frozen_ms = moved["live_report"]["frozen_ms"]
            .as_f64()
            .with_context(|| format!("no frozen time in {moved}"))?;
        frozen.push(frozen_ms);
    }
    report.row(Row::median(
        "live migration until running there (idle VPS, no address)",
        "ms",
        &moves,
    )?);
    report.row(Row::median(
        "of which frozen by the source's dump",
        "ms",
        &frozen,
    )?);
    Ok(())
}
