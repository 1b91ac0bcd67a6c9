//! The systemd watchdog: a thread that pings `WATCHDOG=1` at half of
//! `$WATCHDOG_USEC` while every worker's loop is turning, and asks systemd
//! for a restart (`WATCHDOG=trigger`) when one has stopped. A stuck or dead
//! worker strands its connections; a restart hands them to a live process.
//!
//! It reads each worker's heartbeat (the second its loop last turned) and
//! never touches a worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::admin::metrics::Metrics;
use crate::ops::notify::Notifier;

/// How long a worker's heartbeat may stand still before the worker counts
/// as stuck. A live loop turns at least once a second (its epoll wait ends
/// on the next second for the timer wheel), so 5 s is far past any healthy
/// pause and still well inside a typical 20-30 s WatchdogSec.
pub const STUCK_AFTER: Duration = Duration::from_secs(5);

/// Whether every worker's loop is turning, judged from their heartbeats.
pub struct Liveness {
    metrics: Arc<Metrics>,
    /// Each worker's last heartbeat and when it was last seen to change.
    seen: Vec<(u64, Instant)>,
}

impl Liveness {
    pub fn new(metrics: Arc<Metrics>) -> Liveness {
        let now = Instant::now();
        let seen = metrics
            .workers
            .iter()
            .map(|w| (w.heartbeat.load(Ordering::Relaxed), now))
            .collect();
        Liveness { metrics, seen }
    }

    /// `Err` names the first worker whose heartbeat has not moved for
    /// [`STUCK_AFTER`].
    pub fn check(&mut self) -> Result<(), String> {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Result<(), String> {
        for (id, (worker, seen)) in self.metrics.workers.iter().zip(&mut self.seen).enumerate() {
            let beat = worker.heartbeat.load(Ordering::Relaxed);
            if beat != seen.0 {
                *seen = (beat, now);
            } else if now.duration_since(seen.1) >= STUCK_AFTER {
                return Err(format!(
                    "worker {id} stuck for {}s",
                    now.duration_since(seen.1).as_secs()
                ));
            }
        }
        Ok(())
    }
}

/// The running watchdog thread.
pub struct Watchdog {
    /// Set when shutdown begins: workers leave one by one from then on, so
    /// their heartbeats say nothing; pings go on without the check, and
    /// systemd's stop timeout, not the watchdog, bounds the shutdown.
    shutting_down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Watchdog {
    /// Starts pinging every `interval` (see `notify::watchdog_interval`).
    pub fn spawn(
        notifier: Arc<Notifier>,
        mut liveness: Liveness,
        interval: Duration,
    ) -> std::io::Result<Watchdog> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let shutting_down = Arc::new(AtomicBool::new(false));
        let unchecked = shutting_down.clone();
        let thread = std::thread::Builder::new()
            .name("surge-watchdog".into())
            .spawn(move || {
                // Short naps so `stop` is seen soon whatever the interval.
                let nap = interval.min(Duration::from_millis(200));
                let mut next = Instant::now();
                while !stopped.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        let check = if unchecked.load(Ordering::Relaxed) {
                            Ok(())
                        } else {
                            liveness.check()
                        };
                        match check {
                            Ok(()) => notifier.watchdog(),
                            Err(why) => {
                                tracing::error!(%why, "a worker stopped; asking systemd for a restart");
                                notifier.watchdog_trigger(&why);
                            }
                        }
                        next = Instant::now() + interval;
                    }
                    std::thread::sleep(nap);
                }
            })?;
        Ok(Watchdog {
            shutting_down,
            stop,
            thread,
        })
    }

    /// Shutdown has begun: keep pinging, stop judging the workers.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Stops pinging, once the process is about to exit.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.thread.join().is_err() {
            tracing::error!("the watchdog thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_that_stands_still_past_the_bound_names_its_worker() {
        let metrics = Arc::new(Metrics::new(2, 100));
        let mut liveness = Liveness::new(metrics.clone());
        let start = Instant::now();
        assert!(liveness.check_at(start + Duration::from_secs(1)).is_ok());
        metrics.workers[0].heartbeat.store(7, Ordering::Relaxed);
        let later = start + STUCK_AFTER + Duration::from_secs(1);
        let err = liveness.check_at(later).unwrap_err();
        assert!(err.starts_with("worker 1 stuck"), "{err}");
        metrics.workers[1].heartbeat.store(7, Ordering::Relaxed);
        assert!(liveness.check_at(later).is_ok());
    }
}
