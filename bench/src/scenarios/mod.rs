//! The scenarios, in the order a full run takes them. Each fills its [`ScenarioReport`] as it
//! goes, so what it measured before a failure is still reported.

use anyhow::Result;

use crate::report::ScenarioReport;
use crate::Options;

mod agent_restart;
mod api_path;
mod density;
mod fleet;

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
        name: "density",
        title: "Density: idle VPSes per node, host memory and agent CPU as N grows",
        run: density::run,
    },
    Scenario {
        name: "agent-restart",
        title: "Agent restart: kill -9 with N running VPSes, re-adoption time, VPS restarts",
        run: agent_restart::run,
    },
];
