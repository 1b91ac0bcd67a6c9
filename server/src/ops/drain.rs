//! The drain's arithmetic: how many connections each worker should have
//! closed by a given moment, so closes (and so reconnects) spread evenly
//! over the drain window instead of arriving as one storm, and the close
//! reason that tells a browser when to come back.
//!
//! [`run`] drives a drain from the main thread: it talks to the workers
//! through the broker only, and never touches a connection itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::metrics::Metrics;
use crate::channels::broker::{Broker, Command};

/// The delay the close reason asks browsers to wait before reconnecting
/// when other nodes can take them (with --redis); surge.js adds up to as
/// much again at random. The closes are already spread over the window:
/// the hint only keeps a browser from coming straight back through a load
/// balancer that has not yet seen /readyz turn 503, and the jitter keeps
/// one step's closes out of lockstep. A lone node uses its drain window
/// instead (`Config::drain_reconnect_hint`).
pub const RECONNECT_HINT: Duration = Duration::from_secs(2);
/// How often the drain hands the workers their next share of closes:
/// ten steps a second keep every second's closes within a few percent of
/// an even share.
const STEP: Duration = Duration::from_millis(100);

/// How a drain ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every connection was asked to close within the window.
    Done,
    /// `interrupted` said stop (a second SIGTERM): shut down at once.
    Interrupted,
}

/// Runs a drain: readiness off at once, the listeners open for `grace`,
/// then every connection closed with 1012 and a reconnect `hint` evenly
/// over `window`. Polls `interrupted` every step.
pub fn run(
    broker: &Arc<Broker>,
    metrics: &Metrics,
    grace: Duration,
    window: Duration,
    hint: Duration,
    mut interrupted: impl FnMut() -> bool,
) -> Ended {
    metrics.draining.store(true, Ordering::Relaxed);
    tracing::info!(?grace, ?window, "drain begun: /readyz is 503");
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if interrupted() {
            return Ended::Interrupted;
        }
        std::thread::sleep(STEP);
    }
    for worker in 0..broker.workers() {
        broker.send_to(worker, Command::StopAccepting);
    }
    let totals: Vec<u64> = metrics
        .workers
        .iter()
        .map(|w| w.open.load(Ordering::Relaxed))
        .collect();
    tracing::info!(
        connections = totals.iter().sum::<u64>(),
        "drain: closing connections"
    );
    let reason: Arc<str> = close_reason(hint).into();
    let mut pacer = Pacer::new(totals, window);
    let began = Instant::now();
    loop {
        std::thread::sleep(STEP);
        if interrupted() {
            return Ended::Interrupted;
        }
        let elapsed = began.elapsed();
        for (worker, count) in pacer.due(elapsed).into_iter().enumerate() {
            if count > 0 {
                let reason = reason.clone();
                broker.send_to(worker, Command::CloseSome { count, reason });
            }
        }
        if elapsed >= window {
            return Ended::Done;
        }
    }
}

/// Builds the close reason carrying the reconnect hint. Browsers (surge.js)
/// read the number back with [`reconnect_hint`]; it must stay short, as a
/// close reason has at most 123 bytes.
pub fn close_reason(hint: Duration) -> String {
    format!("restarting; reconnect in {}s", hint.as_secs().max(1))
}

/// The reconnect delay a close reason carries, if it carries one.
pub fn reconnect_hint(reason: &str) -> Option<Duration> {
    let rest = reason.split("reconnect in ").nth(1)?;
    let secs: u64 = rest.strip_suffix('s')?.parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// Paces the closes of a drain across workers.
pub struct Pacer {
    window: Duration,
    /// Each worker's connections when the closing began.
    totals: Vec<u64>,
    /// Closes already asked of each worker.
    asked: Vec<u64>,
}

impl Pacer {
    /// Starts pacing `totals[w]` connections on worker `w` over `window`.
    pub fn new(totals: Vec<u64>, window: Duration) -> Pacer {
        let asked = vec![0; totals.len()];
        Pacer {
            window,
            totals,
            asked,
        }
    }

    /// How many more connections each worker should close now, `elapsed`
    /// after the closing began: its share of the window so far, less what
    /// it was already asked. Past the window, `u64::MAX`: whatever is left
    /// (connections that arrived late) goes at once.
    pub fn due(&mut self, elapsed: Duration) -> Vec<u64> {
        let over = elapsed >= self.window;
        self.totals
            .iter()
            .zip(&mut self.asked)
            .map(|(&total, asked)| {
                if over {
                    *asked = total;
                    return u64::MAX;
                }
                let target = fraction_of(total, elapsed, self.window);
                let now = target.saturating_sub(*asked);
                *asked = (*asked).max(target);
                now
            })
            .collect()
    }
}

/// `total * elapsed / window`, rounded up, without overflow.
fn fraction_of(total: u64, elapsed: Duration, window: Duration) -> u64 {
    let window = window.as_millis().max(1);
    let scaled = u128::from(total) * elapsed.as_millis();
    u64::try_from(scaled.div_ceil(window)).unwrap_or(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_survives_the_trip_through_a_close_reason() {
        let reason = close_reason(Duration::from_secs(7));
        assert_eq!(reason, "restarting; reconnect in 7s");
        assert!(reason.len() <= 123);
        assert_eq!(reconnect_hint(&reason), Some(Duration::from_secs(7)));
        assert_eq!(reconnect_hint("server shutting down"), None);
        assert_eq!(reconnect_hint("reconnect in soon"), None);
    }

    #[test]
    fn closes_spread_evenly_over_the_window_and_the_rest_goes_at_the_end() {
        // 10,000 on one worker, 7 on another, over 10 s, asked every 100 ms.
        let mut pacer = Pacer::new(vec![10_000, 7], Duration::from_secs(10));
        let mut per_second = [0u64; 10];
        let mut small = 0;
        for tick in 1..100u64 {
            let due = pacer.due(Duration::from_millis(tick * 100));
            per_second[(tick / 10) as usize] += due[0];
            small += due[1];
        }
        // The last tick (at 10 s) takes the remaining 100 with the stragglers.
        assert_eq!(per_second.iter().sum::<u64>(), 9_900, "{per_second:?}");
        for n in per_second {
            assert!((900..=1_000).contains(&n), "{per_second:?}");
        }
        assert_eq!(small, 7, "a small worker is not starved by rounding");
        assert_eq!(pacer.due(Duration::from_secs(10)), vec![u64::MAX, u64::MAX]);
    }
}
