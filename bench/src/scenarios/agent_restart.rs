//! Agent restart: with N running idle VPSes (200 and 500; quick: 5) on a dense node (see
//! [`super::fleet`]), `kill -9` of the agent, then a new agent. Measured: how long the new
//! agent takes until it accepts connections (it listens only after it has re-adopted every
//! VPS: runtime state, ports, ruleset), how long until the controller again reports every VPS
//! running, and how many VPSes were restarted (init pid changed or gone: must be 0). The
//! baseline is the same restart of the agent with no VPS, in the same run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::fleet::{self, Fleet};
use crate::report::{Row, ScenarioReport};
use crate::stats::Samples;
use crate::Options;

pub fn run(options: &Options, report: &mut ScenarioReport) -> Result<()> {
    let steps: &[usize] = if options.quick { &[5] } else { &[200, 500] };
    let mut fleet = Fleet::start()?;
    report.note(format!(
        "steps {steps:?}; plan `{}`, busybox, node labels {}; kill -9 of the agent, then a new \
         agent process: time until it accepts connections (after re-adoption), and until the \
         controller lists every VPS running (heartbeat 1 s). Restarts = VPSes whose init pid \
         (pid 1 of the VPS's pid namespace, read from its cgroup) changed. Baseline: the same \
         restart with no VPS.",
        fleet::PLAN,
        fleet::LABELS.join(", "),
    ));
    let mut empty = Samples::new();
    for _ in 0..options.iterations(3, 1) {
        fleet.cluster.kill_agent();
        empty.push_ms(fleet.cluster.start_agent_timed()?);
    }
    for &step in steps {
        fleet.grow_to(step)?;
        let before = init_pids(&fleet);
        ensure!(
            before.len() >= step,
            "found {} running inits for {step} VPSes",
            before.len()
        );
        fleet.cluster.kill_agent();
        let listening = fleet.cluster.start_agent_timed()?;
        let restarted = Instant::now();
        fleet.wait_all_running(Duration::from_secs(120))?;
        let all_running = listening + restarted.elapsed();
        let after = init_pids(&fleet);
        let restarts = before
            .iter()
            .filter(|(cgroup, pid)| after.get(*cgroup) != Some(*pid))
            .count();
        report.row(
            Row::median(
                &format!("agent restart until re-adopted (listening), N={step}"),
                "ms",
                &single(listening.as_secs_f64() * 1000.0),
            )?
            .against_median("same with no VPS", &empty)?,
        );
        report.row(
            Row::median(
                &format!("agent restart until the controller lists all running, N={step}"),
                "ms",
                &single(all_running.as_secs_f64() * 1000.0),
            )?
            .against_median("agent restart with no VPS", &empty)?,
        );
        report.row(Row::median(
            &format!("VPSes restarted by the agent restart, N={step}"),
            "VPSes",
            &single(restarts as f64),
        )?);
    }
    Ok(())
}

/// Each VPS cgroup's init pid.
fn init_pids(fleet: &Fleet) -> BTreeMap<PathBuf, u32> {
    fleet
        .vps_cgroups()
        .into_iter()
        .filter_map(|cgroup| Some((cgroup.clone(), fleet::init_pid(&cgroup)?)))
        .collect()
}

fn single(value: f64) -> Samples {
    let mut samples = Samples::new();
    samples.push(value);
    samples
}
