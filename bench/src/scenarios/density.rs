//! Density: idle busybox VPSes on one node in steps (50, 100, 200, 500; quick: 3, 6), through
//! the real controller and agent on a dense node (see [`super::fleet`]). At each step:
//!
//! - host memory per VPS outside the VPS's own processes: the PSS (`smaps_rollup`) of the
//!   agent plus every host-side process serving a VPS (console supervisor, sysinfo server:
//!   the processes of a VPS cgroup outside its pid namespace), divided by N; beside it the PSS
//!   per VPS of the VPS's own processes (its init and getty) as the baseline;
//! - the VPS cgroups' kernel memory per VPS (`memory.stat` `kernel`: slab, page tables,
//!   stacks of everything in the cgroup, guest included), where the hierarchy reports it;
//! - the agent's CPU while idle (user + system of it and its reaped helpers over a window),
//!   beside the controller's in the same window;
//! - how long one more `create --wait` takes until running (then it is deleted), beside the
//!   same at the first step.

use std::time::Duration;

use anyhow::{Context, Result};

use super::fleet::{self, Fleet};
use crate::report::{Row, ScenarioReport};
use crate::stats::Samples;
use crate::Options;

pub fn run(options: &Options, report: &mut ScenarioReport) -> Result<()> {
    let steps: &[usize] = if options.quick {
        &[3, 6]
    } else {
        &[50, 100, 200, 500]
    };
    // Three usage rounds at the product interval (10 s).
    let window = Duration::from_secs(options.iterations(30, 2) as u64);
    let mut fleet = Fleet::start_with_product_intervals()?;
    report.note(format!(
        "steps {steps:?}; plan `{}` (0.1 vCPU, 64 MiB, 256 MiB disk), busybox; node labels {}; \
         a /22 pool beside the cluster's /24; the product's intervals (heartbeat 5 s, node \
         offline after 30 s, reconcile tick 10 s, usage samples every 10 s, as in config/), \
         not the test harness's short ones. PSS = smaps_rollup of the agent + console supervisors + sysinfo \
         servers (host-side processes in the VPS cgroups), over N; the VPS's own processes \
         are the baseline. Kernel memory = the VPS cgroups' memory.stat `kernel` over N (guest \
         included). Idle CPU over {}s of /proc/PID/stat (utime+stime+cutime+cstime).",
        fleet::PLAN,
        fleet::LABELS.join(", "),
        window.as_secs(),
    ));
    let mut first_start: Option<Samples> = None;
    for &step in steps {
        fleet.grow_to(step)?;
        // Let the creates' work settle before measuring the idle node.
        std::thread::sleep(Duration::from_secs(options.iterations(10, 1) as u64));
        let agent = fleet.cluster.agent_pid().context("agent not running")?;
        let controller = fleet
            .cluster
            .controller_pid()
            .context("controller not running")?;

        let cgroups = fleet.vps_cgroups();
        let mut host_kib = fleet::pss_kib(agent);
        let mut guest_kib = 0;
        let mut kernel_kib = 0;
        let mut kernel_known = false;
        for cgroup in &cgroups {
            let (guest, host) = fleet::cgroup_processes(cgroup);
            host_kib += host.iter().map(|pid| fleet::pss_kib(*pid)).sum::<u64>();
            guest_kib += guest.iter().map(|pid| fleet::pss_kib(*pid)).sum::<u64>();
            if let Some(kib) = fleet::cgroup_kernel_kib(std::slice::from_ref(cgroup)) {
                kernel_kib += kib;
                kernel_known = true;
            }
        }
        let vpses = cgroups.len().max(1) as f64;
        let per_vps_mib = host_kib as f64 / 1024.0 / vpses;
        let guest_mib = guest_kib as f64 / 1024.0 / vpses;
        report.row(
            Row::median(
                &format!("host PSS per VPS outside the VPS, N={step}"),
                "MiB",
                &single(per_vps_mib),
            )?
            .against("the VPS's own processes' PSS per VPS", guest_mib),
        );
        if kernel_known {
            report.row(Row::median(
                &format!("VPS cgroup kernel memory per VPS, N={step}"),
                "MiB",
                &single(kernel_kib as f64 / 1024.0 / vpses),
            )?);
        }

        // Both windows run at once, so they see the same idle period.
        let controller_cores = std::thread::spawn(move || fleet::cpu_cores(controller, window));
        let agent_cores = fleet::cpu_cores(agent, window)?;
        let controller_cores = controller_cores
            .join()
            .map_err(|_| anyhow::anyhow!("controller CPU thread panicked"))??;
        report.row(
            Row::median(
                &format!("agent CPU while idle, N={step}"),
                "cores",
                &single(agent_cores),
            )?
            .against("controller CPU, same window", controller_cores),
        );

        let mut start = Samples::new();
        for attempt in 0..options.iterations(3, 1) {
            start.push_ms(fleet.time_one_start(&format!("extra{step}x{attempt}"))?);
        }
        let baseline = first_start.get_or_insert_with(|| start.clone()).clone();
        report.row(
            Row::median(
                &format!("create --wait of one more VPS, N={step}"),
                "ms",
                &start,
            )?
            .against_median(&format!("same at N={}", steps[0]), &baseline)?,
        );
    }
    report.note(format!(
        "creates refused and retried because the node was briefly offline (heartbeat late under \
         the create burst): {}",
        fleet
            .offline_retries
            .load(std::sync::atomic::Ordering::Relaxed)
    ));
    Ok(())
}

/// One measured value as samples.
fn single(value: f64) -> Samples {
    let mut samples = Samples::new();
    samples.push(value);
    samples
}
