//! The inbound rate limit: a token bucket per connection, kept in three
//! bytes of `Conn` (no allocation, no timer). Every frame a peer sends
//! spends one credit; credit comes back at `--max-message-rate` per second
//! up to `limits::MESSAGE_BURST`. A connection with none left is closed
//! with 1008 and counted: a flood of pings or commands costs the flooder
//! its connection, never the worker its time.

use crate::admin::metrics::WorkerMetrics;
use crate::core::worker::Worker;
use crate::limits::MESSAGE_BURST;
use crate::wire::close;

impl Worker {
    /// Spends one credit for an inbound frame; `None` when the connection
    /// had none left and is now closing.
    pub(crate) fn spend_credit(&mut self, token: usize) -> Option<()> {
        let rate = self.config.max_message_rate as usize;
        if rate == 0 {
            return Some(());
        }
        // The clock wraps every 256 s; a full refill takes under 7 s, so a
        // wrapped reading at worst refills a drained bucket a little late.
        let now = self.now as u8;
        let conn = self.conns.get_mut(token)?;
        let elapsed = usize::from(now.wrapping_sub(conn.credit_at));
        if elapsed > 0 {
            let refilled = usize::from(conn.credit).saturating_add(elapsed.saturating_mul(rate));
            conn.credit = refilled.min(usize::from(MESSAGE_BURST)) as u8;
            conn.credit_at = now;
        }
        if conn.credit == 0 {
            WorkerMetrics::add(&self.stats().rate_limited, 1);
            self.close_with(token, close::POLICY_VIOLATION, "message rate limit");
            return None;
        }
        conn.credit -= 1;
        Some(())
    }
}
