//! Samples and the order statistics the reports use (nearest-rank percentiles).

use std::time::{Duration, Instant};

/// Measured values of one metric, in the metric's unit.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    /// Records a duration in milliseconds.
    pub fn push_ms(&mut self, elapsed: Duration) {
        self.push(elapsed.as_secs_f64() * 1000.0);
    }

    /// Runs `f`, records how long it took in milliseconds and returns its result.
    pub fn time_ms<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = f();
        self.push_ms(started.elapsed());
        result
    }

    /// The recorded values, in the order they were pushed.
    pub fn values(&self) -> &[f64] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile (0 < p ≤ 100) by nearest rank; `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let mut sorted: Vec<f64> = self.0.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    pub fn median(&self) -> Option<f64> {
        self.percentile(50.0)
    }

    pub fn p95(&self) -> Option<f64> {
        self.percentile(95.0)
    }

    pub fn p99(&self) -> Option<f64> {
        self.percentile(99.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples = Samples::new();
        for v in [5.0, 1.0, 4.0, 2.0, 3.0, f64::NAN] {
            samples.push(v);
        }
        assert_eq!(samples.median(), Some(3.0));
        assert_eq!(samples.p95(), Some(5.0));
        assert_eq!(samples.percentile(20.0), Some(1.0));
        assert_eq!(Samples::new().median(), None);
    }
}
