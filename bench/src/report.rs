//! What a bench run found: one table row per metric, each a median (with its p95 where it
//! says) and, where the scenario has one, a baseline measured in the same run and the ratio.
//! Written as `latest.json` (for tools) and `latest.md` (the table the README links to).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::stats::Samples;

/// One run of the suite.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// RFC 3339, when the run started.
    pub started_at: String,
    /// Quick mode: few iterations and small N, to keep the suite from rotting, not to measure.
    pub quick: bool,
    pub host: Host,
    pub scenarios: Vec<ScenarioReport>,
}

/// The machine the numbers come from.
#[derive(Debug, Serialize, Deserialize)]
pub struct Host {
    pub cpus: usize,
    pub memory_mib: u64,
    pub kernel: String,
    /// `v1`, `hybrid` (v1 controllers plus a v2 mount) or `v2`.
    pub cgroup_mode: String,
    /// Where the paddock binaries measured came from (`PADDOCK_BIN_DIR`).
    pub binaries: String,
}

/// What one scenario measured, or why it could not.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub name: String,
    pub title: String,
    /// RFC 3339, when this scenario ran (a `--only` run updates some scenarios of a report).
    #[serde(default)]
    pub ran_at: String,
    pub rows: Vec<Row>,
    /// How it was measured, what is simulated, what a reader must know.
    pub notes: Vec<String>,
    /// Set when the scenario failed; its rows are what it measured before.
    pub error: Option<String>,
    pub seconds: f64,
}

impl ScenarioReport {
    pub fn new(name: &str, title: &str) -> Self {
        Self {
            name: name.to_string(),
            title: title.to_string(),
            ran_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            rows: Vec::new(),
            notes: Vec::new(),
            error: None,
            seconds: 0.0,
        }
    }

    pub fn row(&mut self, row: Row) -> &mut Self {
        self.rows.push(row);
        self
    }

    pub fn note(&mut self, note: impl Into<String>) -> &mut Self {
        self.notes.push(note.into());
        self
    }
}

/// One metric.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub metric: String,
    pub unit: String,
    /// The median of the samples (or the single measured value).
    pub value: f64,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub samples: usize,
    pub baseline: Option<Baseline>,
}

/// What a metric is compared with, measured in the same run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    pub name: String,
    pub value: f64,
    /// `value / baseline`: above 1 means Paddock took more (time, memory) or did more (rates).
    pub ratio: f64,
}

impl Row {
    /// The median of `samples`, with its p95 and p99. Fails without samples.
    pub fn median(metric: &str, unit: &str, samples: &Samples) -> Result<Self> {
        let value = samples
            .median()
            .with_context(|| format!("no samples of {metric}"))?;
        Ok(Self {
            metric: metric.to_string(),
            unit: unit.to_string(),
            value,
            p95: samples.p95(),
            p99: samples.p99(),
            samples: samples.len(),
            baseline: None,
        })
    }

    /// Compares with `value` of `name`, measured in the same run.
    pub fn against(mut self, name: &str, value: f64) -> Self {
        let ratio = if value != 0.0 {
            self.value / value
        } else {
            f64::NAN
        };
        self.baseline = Some(Baseline {
            name: name.to_string(),
            value,
            ratio,
        });
        self
    }

    /// Compares with the median of `samples` of `name`. Fails without samples.
    pub fn against_median(self, name: &str, samples: &Samples) -> Result<Self> {
        let value = samples
            .median()
            .with_context(|| format!("no samples of baseline {name}"))?;
        Ok(self.against(name, value))
    }
}

impl Report {
    /// The report in `dir` (`latest.json`), if there is one this binary can read.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join("latest.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Puts `scenario` in its place: replaces the scenario of that name, else appends it.
    pub fn put(&mut self, scenario: ScenarioReport) {
        match self.scenarios.iter_mut().find(|s| s.name == scenario.name) {
            Some(slot) => *slot = scenario,
            None => self.scenarios.push(scenario),
        }
    }

    /// Orders the scenarios as `names` lists them (unknown ones last).
    pub fn order_by(&mut self, names: &[&str]) {
        self.scenarios.sort_by_key(|s| {
            names
                .iter()
                .position(|name| *name == s.name)
                .unwrap_or(usize::MAX)
        });
    }

    /// Writes `latest.json` and `latest.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let json = dir.join("latest.json");
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("write {}", json.display()))?;
        let markdown = dir.join("latest.md");
        std::fs::write(&markdown, self.markdown())
            .with_context(|| format!("write {}", markdown.display()))?;
        Ok(())
    }

    /// The report as markdown tables, one per scenario.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let host = &self.host;
        let _ = writeln!(
            out,
            "# Paddock benchmarks\n\nRun {}{} on {} CPUs, {} MiB, kernel {}, cgroup {}, binaries from `{}`.\n\
             Every value is a median unless it says otherwise; a baseline is measured in the same run.\n",
            self.started_at,
            if self.quick { " (quick mode: not a measurement)" } else { "" },
            host.cpus,
            host.memory_mib,
            host.kernel,
            host.cgroup_mode,
            host.binaries,
        );
        for scenario in &self.scenarios {
            let _ = writeln!(
                out,
                "## {} (`{}`, {:.0} s{})\n",
                scenario.title,
                scenario.name,
                scenario.seconds,
                if scenario.ran_at.is_empty() || scenario.ran_at == self.started_at {
                    String::new()
                } else {
                    format!(", run {}", scenario.ran_at)
                }
            );
            if let Some(error) = &scenario.error {
                let _ = writeln!(out, "**Failed:** {error}\n");
            }
            if !scenario.rows.is_empty() {
                out.push_str("| metric | median | p95 | p99 | n | baseline | ratio |\n");
                out.push_str("|---|---:|---:|---:|---:|---|---:|\n");
                for row in &scenario.rows {
                    let (baseline, ratio) = match &row.baseline {
                        Some(b) => (
                            format!("{} = {}", b.name, number(b.value, &row.unit)),
                            format!("{:.2}×", b.ratio),
                        ),
                        None => (String::new(), String::new()),
                    };
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        row.metric,
                        number(row.value, &row.unit),
                        row.p95.map(|v| number(v, &row.unit)).unwrap_or_default(),
                        row.p99.map(|v| number(v, &row.unit)).unwrap_or_default(),
                        row.samples,
                        baseline,
                        ratio
                    );
                }
                out.push('\n');
            }
            for note in &scenario.notes {
                let _ = writeln!(out, "- {note}");
            }
            if !scenario.notes.is_empty() {
                out.push('\n');
            }
        }
        out
    }

    /// The tables for the terminal.
    pub fn print(&self) {
        print!("{}", self.markdown());
    }
}

/// Three significant digits (no decimals from 100 up), so small values such as a hundredth
/// of a core do not round to zero.
fn number(value: f64, unit: &str) -> String {
    let magnitude = if value == 0.0 {
        0
    } else {
        value.abs().log10().floor() as i32
    };
    let digits = usize::try_from((2 - magnitude).max(0)).unwrap_or(0);
    format!("{value:.digits$} {unit}")
}

impl Host {
    /// This machine.
    pub fn detect(binaries: &Path) -> Self {
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("MemTotal:"))
                    .and_then(|rest| {
                        rest.trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse::<u64>()
                            .ok()
                    })
            })
            .map_or(0, |kib| kib / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cgroup_mode = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "v2"
        } else if Path::new("/sys/fs/cgroup/unified").exists() {
            "hybrid"
        } else {
            "v1"
        };
        Self {
            cpus,
            memory_mib,
            kernel,
            cgroup_mode: cgroup_mode.to_string(),
            binaries: binaries.display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(number(0.0103, "cores"), "0.0103 cores");
        assert_eq!(number(0.14, "cores"), "0.140 cores");
        assert_eq!(number(1.5, "x"), "1.50 x");
        assert_eq!(number(49.12, "ms"), "49.1 ms");
        assert_eq!(number(684.4, "1/s"), "684 1/s");
        assert_eq!(number(0.0, "ms"), "0.00 ms");
    }
}
