//! A fixed-bucket latency histogram that one thread writes and the admin
//! thread reads: an observation is two relaxed adds on counters no other
//! thread writes, so a worker can afford it once per publication. Buckets
//! are fixed so the scrape is a plain sum over workers.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets in microseconds, from 50 us (a fan-out to a
/// few sockets) to 5 s (far past any healthy delivery: a stalled worker).
/// Roughly 1-2.5-5 steps, as Prometheus client libraries use.
pub const BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// Counts per bucket (not cumulative) plus one past the last bound.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records `n` observations of `d` (a batch whose members all took `d`).
    pub fn observe_n(&self, d: Duration, n: u64) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[slot].fetch_add(n, Relaxed);
        self.sum_us.fetch_add(us.saturating_mul(n), Relaxed);
    }

    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }
}

/// Writes the Prometheus histogram `name` summed over `parts`.
pub fn render<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    parts: impl Iterator<Item = &'a Histogram> + Clone,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0u64;
    for (i, bound) in BOUNDS_US.iter().enumerate() {
        cumulative += parts
            .clone()
            .map(|h| h.buckets[i].load(Relaxed))
            .sum::<u64>();
        let le = *bound as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += parts
        .clone()
        .map(|h| h.buckets[BOUNDS_US.len()].load(Relaxed))
        .sum::<u64>();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum_us: u64 = parts.map(|h| h.sum_us.load(Relaxed)).sum();
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_and_render_cumulative() {
        let a = Histogram::default();
        let b = Histogram::default();
        a.observe(Duration::from_micros(50)); // le 50us
        a.observe(Duration::from_micros(51)); // le 100us
        b.observe_n(Duration::from_millis(3), 2); // le 5ms
        b.observe(Duration::from_secs(9)); // +Inf
        let mut out = String::new();
        render(&mut out, "t", "test", [&a, &b].into_iter());
        assert!(out.contains("t_bucket{le=\"0.00005\"} 1\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"0.0025\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"0.005\"} 4\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"5\"} 4\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("t_count 5\n"), "{out}");
        assert!(out.contains("t_sum 9.006101\n"), "{out}");
    }
}
