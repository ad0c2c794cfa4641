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
//!
//! Last, the downtime of a live move between nodes as a client sees it: three nodes sharing one
//! pool, a TCP echo server in a VPS, pinged every 10 ms from a third node's network namespace
//! over the product's routes while the VPS moves live between the other two; the longest gap
//! between answers, against the longest gap of the same pinging without a move.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use paddock_tests::multinode::{MultiNode, PLAN};

use super::live_migration::{longest_gap, ping_loop};
use crate::report::{Row, ScenarioReport};
use crate::stats::Samples;
use crate::Options;

const TENANT: &str = "bench";
const VPS: &str = "mover";
/// The live mover and its plan (no IPv4 address).
const LIVE_VPS: &str = "live-mover";
const LIVE_PLAN: &str = "live0";
/// The echo server moved live between nodes of a shared pool, and its port.
const ECHO_VPS: &str = "echo";
const ECHO_PORT: u16 = 7000;

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
    live_downtime(iterations, report)
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

/// A TCP connection to `address` made from inside the network namespace `netns` (a node's); the
/// socket stays in that namespace whichever thread then uses it.
fn connect_from(netns: &str, address: &str) -> Result<TcpStream> {
    let path = PathBuf::from(format!("/run/netns/{netns}"));
    let address = address.to_owned();
    let netns = netns.to_owned();
    std::thread::spawn(move || -> Result<TcpStream> {
        crate::netns::enter(&path)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match TcpStream::connect(&address) {
                Ok(stream) => return Ok(stream),
                Err(error) if Instant::now() > deadline => {
                    bail!("connect {address} from {netns}: {error}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
    .join()
    .map_err(|_| anyhow!("the connecting thread panicked"))?
}

/// Pings `address` from `netns` every 10 ms while `during` runs (and half a second before and
/// after it); the longest gap between two answers.
fn gap_while(netns: &str, address: &str, during: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let stream = connect_from(netns, address)?;
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = {
        let stop = stop.clone();
        std::thread::spawn(move || ping_loop(stream, stop))
    };
    std::thread::sleep(Duration::from_millis(500));
    let outcome = during();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let answers = pinger
        .join()
        .map_err(|_| anyhow!("the pinger panicked"))??;
    outcome?;
    Ok(longest_gap(&answers))
}

/// Downtime of live moves between nodes, seen by a client on a third node.
fn live_downtime(iterations: usize, report: &mut ScenarioReport) -> Result<()> {
    let cluster = MultiNode::start_shared(3).context("start three nodes sharing a pool")?;
    cluster.add_tenant(TENANT, &[])?;
    cluster.cli_ok(&[
        "--context",
        TENANT,
        "create",
        ECHO_VPS,
        "--plan",
        PLAN,
        "--wait",
    ])?;
    let vps = show_vps(&cluster, ECHO_VPS)?;
    let ip = vps["ipv4"][0]
        .as_str()
        .with_context(|| format!("no address in {vps}"))?
        .to_owned();
    let address = format!("{ip}:{ECHO_PORT}");
    let out = cluster.sh(
        TENANT,
        ECHO_VPS,
        &format!("setsid nc -ll -p {ECHO_PORT} -e cat >/dev/null 2>&1 </dev/null &"),
    )?;
    if !out.status.success() {
        bail!("echo server: {}", String::from_utf8_lossy(&out.stderr));
    }
    let names: Vec<String> = cluster.nodes.iter().map(|node| node.name.clone()).collect();
    let mut downtime = Samples::new();
    let mut idle = Samples::new();
    for _ in 0..iterations {
        let here = show_vps(&cluster, ECHO_VPS)?["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let position = names
            .iter()
            .position(|name| *name == here)
            .with_context(|| format!("{ECHO_VPS} on an unknown node {here:?}"))?;
        // The VPS moves to the next node; the client pings from the one after.
        let there = names[(position + 1) % names.len()].clone();
        let client = &cluster.nodes[(position + 2) % names.len()].netns;
        idle.push_ms(gap_while(client, &address, || {
            std::thread::sleep(Duration::from_secs(1));
            Ok(())
        })?);
        downtime.push_ms(gap_while(client, &address, || {
            cluster.admin_ok(&[
                "migrate", ECHO_VPS, "--tenant", TENANT, "--to", &there, "--live",
            ])?;
            wait_vps_running_on(&cluster, ECHO_VPS, &there)
        })?);
    }
    report.row(
        Row::median(
            "live migration between nodes: downtime (longest gap of a 10 ms TCP echo from a third node)",
            "ms",
            &downtime,
        )?
        .against_median("longest gap, no move", &idle)?,
    );
    report.note(format!(
        "Downtime between nodes: three nodes of the multi-node harness sharing one pool (the \
         VPS keeps its address; the other nodes reach it over the /32 routes the product \
         installs), plan {PLAN}, an idle busybox VPS running busybox nc as a TCP echo; a \
         client in a third node's network namespace sends a byte every 10 ms on one \
         connection kept through the move and waits for its echo; {iterations} live move(s), \
         each to the next node, the client on the node after it."
    ));
    cluster.finish();
    Ok(())
}
