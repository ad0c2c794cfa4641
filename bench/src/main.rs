//! `paddock-bench`: runs Paddock's benchmark scenarios against the real binaries and writes
//! `latest.json` and `latest.md`. `make bench` runs the full suite (release binaries); `make
//! test` runs `--quick` (few iterations, small N) so that no scenario can rot. Speed is never
//! a pass/fail threshold: quick mode fails only when a scenario cannot run.

mod netns;
mod node;
mod report;
mod scenarios;
mod simulator;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

use report::{Host, Report, ScenarioReport};

#[derive(Debug, Parser)]
#[command(
    name = "paddock-bench",
    about = "Paddock's benchmark suite (run as root)"
)]
struct Args {
    /// Few iterations and small N: checks that every scenario runs, measures nothing.
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (comma-separated names, see --list). Their results replace
    /// theirs in the report already in the output directory; the others are kept.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write latest.json and latest.md [default: bench/results, or
    /// target/bench-quick with --quick, so a quick run never replaces published results].
    #[arg(long)]
    out: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Run this many iterations (cycles, rounds) instead of each scenario's own count, e.g.
    /// for a shorter comparison while working on one path. Not for published results.
    #[arg(long)]
    iterations: Option<usize>,
    /// Write latest.md again from latest.json in the output directory (after a change of the
    /// table's format or a hand-merged section), measuring nothing.
    #[arg(long)]
    render: bool,
    /// control-plane: simulate this many nodes instead of 10,000 (or the quick run's 20), e.g.
    /// for a profile of one path. Not for published results.
    #[arg(long)]
    cp_nodes: Option<usize>,
    /// control-plane: stop creating after this many seconds instead of the scenario's budget.
    /// Not for published results.
    #[arg(long)]
    cp_budget_secs: Option<u64>,
    /// control-plane: measure the sled store only (no etcd side by side, no failover).
    /// Not for published results.
    #[arg(long)]
    cp_sled_only: bool,
}

/// What every scenario is told.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// The paddock binaries measured (`PADDOCK_BIN_DIR`, else beside this binary).
    pub bin_dir: PathBuf,
    /// `--iterations`: replaces the scenarios' own counts.
    pub iterations: Option<usize>,
    /// `--cp-nodes`, `--cp-budget-secs`, `--cp-sled-only`: a shorter control-plane run.
    pub control_plane: ControlPlaneOptions,
}

/// Overrides of the control-plane scenario's size, for working on one path.
#[derive(Debug, Default, Clone)]
pub struct ControlPlaneOptions {
    pub nodes: Option<usize>,
    pub budget: Option<std::time::Duration>,
    pub sled_only: bool,
}

impl Options {
    /// `full` iterations in a full run, `quick` in quick mode (`--iterations` if given).
    pub fn iterations(&self, full: usize, quick: usize) -> usize {
        if let Some(iterations) = self.iterations {
            iterations.max(1)
        } else if self.quick {
            quick
        } else {
            full
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for scenario in scenarios::ALL {
            println!("{:<16} {}", scenario.name, scenario.title);
        }
        return ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("paddock-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<bool> {
    if args.render {
        let out = args
            .out
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
        let report = Report::read(&out)
            .with_context(|| format!("no readable latest.json in {}", out.display()))?;
        report.write(&out)?;
        return Ok(true);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks create VPSes, cgroups and network devices: run as root");
    }
    for name in &args.only {
        if !scenarios::ALL.iter().any(|s| s.name == name) {
            bail!("no scenario {name:?} (see --list)");
        }
    }
    let bin_dir = paddock_tests::bin_dir();
    // The harness reads PADDOCK_BIN_DIR; pin it so every scenario measures the same binaries.
    std::env::set_var("PADDOCK_BIN_DIR", &bin_dir);
    let options = Options {
        quick: args.quick,
        bin_dir: bin_dir.clone(),
        iterations: args.iterations,
        control_plane: ControlPlaneOptions {
            nodes: args.cp_nodes,
            budget: args.cp_budget_secs.map(std::time::Duration::from_secs),
            sled_only: args.cp_sled_only,
        },
    };
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = args.out.unwrap_or_else(|| {
        if args.quick {
            manifest_dir.join("../target/bench-quick")
        } else {
            manifest_dir.join("results")
        }
    });
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut report = match Report::read(&out) {
        // A partial run updates the published report of the same mode.
        Some(mut earlier) if !args.only.is_empty() && earlier.quick == args.quick => {
            earlier.started_at = started_at;
            earlier.host = Host::detect(&bin_dir);
            earlier
        }
        _ => Report {
            started_at,
            quick: args.quick,
            host: Host::detect(&bin_dir),
            scenarios: Vec::new(),
        },
    };
    let order: Vec<&str> = scenarios::ALL.iter().map(|s| s.name).collect();
    let mut all_ran = true;
    for scenario in scenarios::ALL
        .iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|n| n == s.name))
    {
        eprintln!("== {} ({})", scenario.title, scenario.name);
        let mut result = ScenarioReport::new(scenario.name, scenario.title);
        let started = Instant::now();
        if let Err(error) = (scenario.run)(&options, &mut result) {
            eprintln!("   failed: {error:#}");
            result.error = Some(format!("{error:#}"));
            all_ran = false;
        }
        result.seconds = started.elapsed().as_secs_f64();
        report.put(result);
        report.order_by(&order);
        // Written after every scenario, so a long run that dies keeps what it measured.
        report.write(&out)?;
    }
    report.print();
    eprintln!("wrote {}", out.join("latest.json").display());
    Ok(all_ran)
}
