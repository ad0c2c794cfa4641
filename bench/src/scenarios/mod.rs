//! The scenarios, in the order a full run takes them. Each fills its [`ScenarioReport`] as it
//! goes, so what it measured before a failure is still reported.

use anyhow::Result;

use crate::report::ScenarioReport;
use crate::Options;

mod agent_restart;
mod api_path;
mod backup;
mod control_plane;
mod density;
mod fleet;
mod limits;
mod live_migration;
mod network;
mod snapshot;
mod start_latency;

/// A scenario of the suite.
pub struct Scenario {
    /// Its name for `--only` and in `latest.json`.
    pub name: &'static str,
    pub title: &'static str,
    pub run: fn(&Options, &mut ScenarioReport) -> Result<()>,
}

/// Every scenario, in run order.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "api-path",
        title: "API path: create --wait until running, delete --wait until gone",
        run: api_path::run,
    },
    Scenario {
        name: "start-latency",
        title: "Start latency: the agent's runtime vs runc (and crun) on the same busybox rootfs",
        run: start_latency::run,
    },
    Scenario {
        name: "network",
        title: "Network: VPS to VPS TCP throughput vs loopback and plain veths",
        run: network::run,
    },
    Scenario {
        name: "limits",
        title: "Limit accuracy: CPU, IO bandwidth and IOPS, egress rate, measured vs configured",
        run: limits::run,
    },
    Scenario {
        name: "control-plane",
        title: "Control plane: placements/s and CreateVps latency with simulated nodes",
        run: control_plane::run,
    },
    Scenario {
        name: "density",
        title: "Density: idle VPSes per node, host memory and agent CPU as N grows",
        run: density::run,
    },
    Scenario {
        name: "snapshot",
        title: "Snapshot: time and bytes of a running VPS's disk snapshot (reflink or sparse copy)",
        run: snapshot::run,
    },
    Scenario {
        name: "live-migration",
        title: "Live migration: CRIU checkpoint + restore of a running VPS, downtime of a 10 ms TCP echo",
        run: live_migration::run,
    },
    Scenario {
        name: "backup",
        title: "Backup: throughput of a running VPS's backup and its restore (zstd tar, SHA-256)",
        run: backup::run,
    },
    Scenario {
        name: "agent-restart",
        title: "Agent restart: kill -9 with N running VPSes, re-adoption time, VPS restarts",
        run: agent_restart::run,
    },
];
