//! Latency samples and their summary (exact percentiles: every sample is kept).

use std::time::Duration;

/// One request as the load generator saw it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When the request started, from the start of the run.
    pub at: Duration,
    pub latency: Duration,
    pub ok: bool,
    /// An admin write (as opposed to a read).
    pub write: bool,
}

/// Count, errors, rate and nearest-rank percentiles of a set of samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub requests: usize,
    pub errors: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// Summarises `samples`, taken over `window` of wall-clock time (for the rate).
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>, window: Duration) -> Self {
        let mut latencies = Vec::new();
        let mut errors = 0;
        for sample in samples {
            latencies.push(sample.latency);
            if !sample.ok {
                errors += 1;
            }
        }
        latencies.sort_unstable();
        let seconds = window.as_secs_f64();
        Self {
            requests: latencies.len(),
            errors,
            per_second: if seconds > 0.0 {
                latencies.len() as f64 / seconds
            } else {
                0.0
            },
            p50: percentile(&latencies, 50.0),
            p95: percentile(&latencies, 95.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }
}

/// Nearest-rank percentile of sorted values; zero for no values.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with two decimals, for report tables.
pub fn ms(value: Duration) -> String {
    format!("{:.2}", value.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&values, 95.0), Duration::from_millis(95));
        assert_eq!(percentile(&values, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&values[..1], 99.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn summary_counts_errors_and_rate() {
        let sample = |ms, ok| Sample {
            at: Duration::ZERO,
            latency: Duration::from_millis(ms),
            ok,
            write: false,
        };
        let samples = [sample(1, true), sample(3, false), sample(2, true)];
        let summary = Summary::of(&samples, Duration::from_secs(2));
        assert_eq!(summary.requests, 3);
        assert_eq!(summary.errors, 1);
        assert!((summary.per_second - 1.5).abs() < f64::EPSILON);
        assert_eq!(summary.p50, Duration::from_millis(2));
        assert_eq!(summary.max, Duration::from_millis(3));
    }
}
