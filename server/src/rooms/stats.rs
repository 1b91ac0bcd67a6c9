//! What a room measures about itself: the admission rate over the last
//! minute (for estimated waits and the metrics) and the time people waited
//! (a histogram for the metrics, a recent sample for the median). Fixed
//! size, whatever the size of the room.

use std::collections::VecDeque;
use std::fmt::Write as _;

use crate::rooms::room::View;

/// Seconds the measured admission rate looks back: long enough to smooth
/// the 100 ms ticks, short enough that a rate change shows within a minute.
pub const RATE_WINDOW_S: u64 = 60;
/// Seconds a room must have admitted for before its measured rate is
/// trusted for estimates; before that the configured rate is used.
const RATE_WARMUP_S: u64 = 5;
/// Upper bounds (seconds) of the wait-time histogram's buckets: from a
/// near-instant admission to the hour a big opening can take.
pub const WAIT_BUCKETS_S: [u32; 10] = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600];
/// Recent waits kept for the median reported by `GET /api/rooms/NAME`.
const MEDIAN_SAMPLE: usize = 1001;

/// Admissions per second over the last `RATE_WINDOW_S` seconds.
#[derive(Debug)]
pub struct AdmissionRate {
    /// (Unix second, admissions in it), by second modulo the window.
    slots: [(u64, u32); RATE_WINDOW_S as usize],
    first: Option<u64>,
}

impl Default for AdmissionRate {
    fn default() -> Self {
        AdmissionRate {
            slots: [(0, 0); RATE_WINDOW_S as usize],
            first: None,
        }
    }
}

impl AdmissionRate {
    pub fn add(&mut self, second: u64) {
        self.first.get_or_insert(second);
        let slot = &mut self.slots[(second % RATE_WINDOW_S) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += 1;
    }

    /// The measured rate at `now` (Unix seconds); 0 while too young to say.
    pub fn per_second(&self, now: u64) -> f64 {
        let Some(first) = self.first else {
            return 0.0;
        };
        let span = now.saturating_sub(first).min(RATE_WINDOW_S);
        if span < RATE_WARMUP_S {
            return 0.0;
        }
        // Whole seconds only: the current one is still filling.
        let count: u64 = self
            .slots
            .iter()
            .filter(|(s, _)| *s < now && now - *s <= span)
            .map(|(_, n)| u64::from(*n))
            .sum();
        count as f64 / span as f64
    }
}

/// How long admitted people waited.
#[derive(Debug, Default)]
pub struct WaitTimes {
    /// Counts per bucket of `WAIT_BUCKETS_S`, and one past the last.
    pub buckets: [u64; WAIT_BUCKETS_S.len() + 1],
    pub sum_s: u64,
    pub count: u64,
    recent: VecDeque<u32>,
}

impl WaitTimes {
    pub fn add(&mut self, waited_s: u32) {
        let slot = WAIT_BUCKETS_S
            .iter()
            .position(|b| waited_s <= *b)
            .unwrap_or(WAIT_BUCKETS_S.len());
        self.buckets[slot] += 1;
        self.sum_s += u64::from(waited_s);
        self.count += 1;
        if self.recent.len() == MEDIAN_SAMPLE {
            self.recent.pop_front();
        }
        self.recent.push_back(waited_s);
    }

    /// Median of the recent waits.
    pub fn median(&self) -> Option<u32> {
        let mut sample: Vec<u32> = self.recent.iter().copied().collect();
        if sample.is_empty() {
            return None;
        }
        let mid = sample.len() / 2;
        Some(*sample.select_nth_unstable(mid).1)
    }
}

/// Per-room series for /metrics (name, figures, waits), sorted by name.
pub fn prometheus(out: &mut String, rooms: &[(&str, View, &WaitTimes)]) {
    if rooms.is_empty() {
        return;
    }
    let mut series = |name: &str, kind: &str, help: &str, value: &dyn Fn(&View) -> String| {
        let _ = writeln!(
            out,
            "# HELP surge_{name} {help}\n# TYPE surge_{name} {kind}"
        );
        for (room, view, _) in rooms {
            let _ = writeln!(out, "surge_{name}{{room=\"{room}\"}} {}", value(view));
        }
    };
    series(
        "room_waiting",
        "gauge",
        "People in line (including those away within the grace period).",
        &|r| r.waiting.to_string(),
    );
    series(
        "room_admitted",
        "gauge",
        "Admissions outstanding (not yet expired).",
        &|r| r.admitted.to_string(),
    );
    series(
        "room_admissions_total",
        "counter",
        "Admissions made.",
        &|r| r.admitted_total.to_string(),
    );
    series(
        "room_admit_per_minute",
        "gauge",
        "Configured admission rate.",
        &|r| r.admit_per_minute.to_string(),
    );
    series(
        "room_admission_rate_per_minute",
        "gauge",
        "Admission rate measured over the last minute.",
        &|r| format!("{:.1}", r.measured_per_minute),
    );
    let _ = writeln!(
        out,
        "# HELP surge_room_wait_seconds Time from joining to admission.\n# TYPE surge_room_wait_seconds histogram"
    );
    for (room, _, w) in rooms {
        let mut cumulative = 0;
        for (i, bound) in WAIT_BUCKETS_S.iter().enumerate() {
            cumulative += w.buckets[i];
            let _ = writeln!(
                out,
                "surge_room_wait_seconds_bucket{{room=\"{}\",le=\"{bound}\"}} {cumulative}",
                room
            );
        }
        let name = room;
        let _ = writeln!(
            out,
            "surge_room_wait_seconds_bucket{{room=\"{name}\",le=\"+Inf\"}} {}",
            w.count
        );
        let _ = writeln!(
            out,
            "surge_room_wait_seconds_sum{{room=\"{name}\"}} {}",
            w.sum_s
        );
        let _ = writeln!(
            out,
            "surge_room_wait_seconds_count{{room=\"{name}\"}} {}",
            w.count
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_rate_counts_whole_seconds_in_the_window() {
        let mut r = AdmissionRate::default();
        assert_eq!(r.per_second(100), 0.0);
        for second in 100..200 {
            for _ in 0..10 {
                r.add(second);
            }
        }
        // Too young to say at 102; then 10/s, and the window forgets.
        let mut young = AdmissionRate::default();
        young.add(100);
        assert_eq!(young.per_second(102), 0.0);
        assert_eq!(r.per_second(200), 10.0);
        assert_eq!(r.per_second(230), 5.0);
        assert_eq!(r.per_second(400), 0.0);
    }

    #[test]
    fn waits_fill_buckets_and_give_a_median() {
        let mut w = WaitTimes::default();
        assert_eq!(w.median(), None);
        for waited in [0, 1, 2, 5, 6, 3600, 9999] {
            w.add(waited);
        }
        assert_eq!(w.buckets[0], 2);
        assert_eq!(w.buckets[1], 2);
        assert_eq!(w.buckets[2], 1);
        assert_eq!(w.buckets[9], 1);
        assert_eq!(w.buckets[10], 1);
        assert_eq!(w.count, 7);
        assert_eq!(w.median(), Some(5));
    }
}
