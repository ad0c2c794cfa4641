//! The path a tenant waits on: `paddock create --wait` until the VPS runs and `paddock delete
//! --wait` until it is gone, through the real CLI, controller and agent (busybox template, plan
//! nano), one VPS at a time. Each sample includes starting the CLI process, as a user sees it.

use anyhow::{ensure, Result};
use paddock_tests::Cluster;

use crate::report::{Row, ScenarioReport};
use crate::stats::Samples;
use crate::Options;

pub fn run(options: &Options, report: &mut ScenarioReport) -> Result<()> {
    let runs = options.iterations(30, 3);
    let cluster = Cluster::start()?;
    cluster.add_tenant("bench")?;
    report.note(format!(
        "{runs} runs; controller and agent from the test harness (heartbeat 1 s, reconcile \
         tick 2 s), busybox template, plan nano"
    ));
    let mut create = Samples::new();
    let mut delete = Samples::new();
    // The baseline: one CLI call that makes one RPC (`show`), so the ratio says how many plain
    // round trips a wait costs.
    let mut show = Samples::new();
    for run in 0..runs {
        let name = format!("api{run}");
        let created = create
            .time_ms(|| cluster.cli(&["--context", "bench", "create", &name, "--plan", "nano"]))?;
        ensure!(
            created.status.success(),
            "create {name}: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let shown = show.time_ms(|| cluster.cli(&["--context", "bench", "show", &name]))?;
        ensure!(
            shown.status.success(),
            "show {name}: {}",
            String::from_utf8_lossy(&shown.stderr)
        );
        let deleted =
            delete.time_ms(|| cluster.cli(&["--context", "bench", "delete", &name, "--yes"]))?;
        ensure!(
            deleted.status.success(),
            "delete {name}: {}",
            String::from_utf8_lossy(&deleted.stderr)
        );
    }
    report.row(
        Row::median("create --wait until running", "ms", &create)?
            .against_median("paddock show", &show)?,
    );
    report.row(
        Row::median("delete --wait until gone", "ms", &delete)?
            .against_median("paddock show", &show)?,
    );
    Ok(())
}
