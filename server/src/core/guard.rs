//! Containment of our own bugs. A panic while handling one connection's
//! event is caught at that event's boundary: the connection is closed with
//! 1011 and counted, and the worker goes on with the others. A worker that
//! dies anyway gives back everything it counted, marks the server unhealthy
//! (/healthz turns 503) and leaves `main` to exit non-zero, so a supervisor
//! restarts a whole process rather than keep a half-dead one that looks
//! healthy.
//!
//! Also here: the hooks tests use to force such bugs, off unless the
//! hidden `--test-panic-hooks` option is given.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;

use crate::admin::metrics::WorkerMetrics;
use crate::core::conn::flag;
use crate::core::worker::{Worker, SCRATCH_LEN};
use crate::wire::close;

/// Text a test sends to make the server panic handling its connection.
pub const PANIC_IN_HANDLER: &str = "surge-test:panic";
/// Text a test sends to make its worker thread die outside any handler.
pub const KILL_WORKER: &str = "surge-test:kill-worker";

impl Worker {
    /// Runs one connection's event handling; a panic in it costs that
    /// connection only.
    pub(crate) fn guarded(&mut self, token: usize, handle: impl FnOnce(&mut Worker)) {
        if catch_unwind(AssertUnwindSafe(|| handle(self))).is_ok() {
            return;
        }
        WorkerMetrics::add(&self.stats().panics, 1);
        tracing::error!(
            worker = self.id,
            token,
            "panic while handling a connection; closing it with 1011"
        );
        // The read path lends its scratch buffer out; a panic mid-read
        // leaves it empty, and every later read would look like an EOF.
        if self.scratch.len() != SCRATCH_LEN {
            self.scratch = vec![0; SCRATCH_LEN];
        }
        let closed = catch_unwind(AssertUnwindSafe(|| {
            self.close_with(token, close::INTERNAL_ERROR, "internal error")
        }));
        if closed.is_err() {
            // Its state is too broken to say goodbye: just drop it.
            let _ = catch_unwind(AssertUnwindSafe(|| self.close_now(token)));
        }
    }

    /// The worker loop ended other than by shutdown: release every count
    /// its connections hold, close them, and mark the server unhealthy.
    pub(crate) fn died(&mut self) {
        self.metrics.dead_workers.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            worker = self.id,
            connections = self.conns.len(),
            "worker died; the server is unhealthy and will exit"
        );
        for (_, conn) in self.conns.iter() {
            if conn.has(flag::COUNTED) {
                self.metrics
                    .open_connections
                    .fetch_sub(1, Ordering::Relaxed);
            }
            if !conn.has(flag::SHED) {
                self.metrics.sockets.fetch_sub(1, Ordering::Relaxed);
                self.addresses.release(conn.addr_bucket);
            }
        }
        // Dropping the connections closes their sockets: their peers see
        // the end at once and reconnect to a healthy process.
        self.conns.clear();
        self.upgraded = 0;
        self.stats().open.store(0, Ordering::Relaxed);
    }

    /// Test hooks: `text` from a browser when `--test-panic-hooks` is on.
    pub(crate) fn test_hook(&mut self, text: &str) {
        match text {
            PANIC_IN_HANDLER => panic!("test hook: panic in a connection handler"),
            KILL_WORKER => self.kill_requested = true,
            _ => {}
        }
    }
}
