//! The upgrade's answer in one write. While a connection is being upgraded,
//! every frame the worker sends it (the 101, the `subscribed` replies to the
//! `?ch=` subscriptions, their last values or replays) is gathered in one
//! per-worker buffer and written with a single system call once the upgrade
//! is done.
//!
//! Why: on loopback, and on any busy box, a `write` costs the sender the
//! whole TCP transmit path and the receiver's wake-up, whatever its size.
//! The 101 and two acknowledgements as three writes were 63% of the server's
//! CPU during a ramp and put a handshake at 1.8x the floor's (a server that
//! only answers 101); see docs/benchmarks.md, 2026-11-25.
//!
//! The buffer is reused, so a handshake allocates nothing here once it has
//! grown. Nothing may stay corked past the end of `Worker::handshake`: the
//! byte stream's order is only kept because nothing else writes to the
//! connection meanwhile.

use std::io::{self, IoSlice, Write};

use bytes::Bytes;

use crate::admin::metrics::WorkerMetrics;
use crate::core::conn::State;
use crate::core::tls::deliver;
use crate::core::worker::Worker;
use crate::core::write::{write_or_queue, SendError};

/// The connection being upgraded and what it has been sent so far.
#[derive(Default)]
pub struct Cork {
    token: Option<usize>,
    buf: Vec<u8>,
    frames: u64,
}

impl Cork {
    /// Gathers what is sent to `token` from now until [`Worker::uncork`].
    pub fn begin(&mut self, token: usize) {
        self.token = Some(token);
        self.buf.clear();
        self.frames = 0;
    }

    /// Whether what is sent to `token` is being gathered now.
    pub fn is_corked(&self, token: usize) -> bool {
        self.token == Some(token)
    }

    /// Takes `frame` if it is for the connection being upgraded.
    pub fn take(&mut self, token: usize, frame: &[u8]) -> bool {
        if self.token != Some(token) {
            return false;
        }
        self.buf.extend_from_slice(frame);
        self.frames += 1;
        true
    }
}

impl Worker {
    /// Writes everything gathered since [`Cork::begin`] in one write, or
    /// queues what the socket did not take, as `send` would have.
    pub(super) fn uncork(&mut self) {
        let Some(token) = self.cork.token.take() else {
            return;
        };
        let buf = std::mem::take(&mut self.cork.buf);
        let bound = self.config.max_outbound.get();
        let stats = &self.metrics.workers[self.id];
        WorkerMetrics::add(&stats.frames_out, self.cork.frames);
        let result = match self.conns.get_mut(token) {
            None => Ok(0),
            Some(conn) if self.tls.is_some() => match self.tls.as_deref_mut() {
                Some(tls) => deliver(conn, tls, token, &[&buf[..]], bound),
                None => Ok(0),
            },
            // The common case: nothing queued before, write from the buffer.
            Some(conn) if conn.state == State::Open && conn.unsent() == 0 => {
                match (&conn.socket).write(&buf) {
                    Ok(n) if n == buf.len() => Ok(n),
                    Ok(n) => queue_rest(conn, &buf[n..], bound).map(|m| n + m),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        queue_rest(conn, &buf, bound)
                    }
                    Err(e) => Err(SendError::Broken(e)),
                }
            }
            Some(conn) => queue_rest(conn, &buf, bound),
        };
        self.cork.buf = buf;
        match result {
            Ok(n) => WorkerMetrics::add(&self.metrics.workers[self.id].bytes_out, n as u64),
            Err(e) => self.on_send_error(token, e),
        }
    }
}

/// The rare path: the socket did not take everything (or something was
/// already queued), so the rest goes through the ordinary write path.
fn queue_rest(
    conn: &mut crate::core::conn::Conn,
    rest: &[u8],
    bound: usize,
) -> Result<usize, SendError> {
    let rest = Bytes::copy_from_slice(rest);
    write_or_queue(
        conn,
        std::slice::from_ref(&rest),
        &[IoSlice::new(&rest)],
        bound,
    )
}
