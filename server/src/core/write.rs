//! The write path: writing a frame now or queueing what the socket would not
//! take, flushing the queue when epoll says the socket is writable, the
//! unsent-bytes bound, and every way a connection ends.
//!
//! A frame is written straight from the shared `Bytes`; only what the kernel
//! refuses is queued, and queueing is a reference count, never a copy.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;

use std::os::fd::AsRawFd;

use bytes::Bytes;
use mio::unix::SourceFd;

use crate::admin::metrics::WorkerMetrics;
use crate::core::conn::{flag, Conn, State};
use crate::core::tls::deliver;
use crate::core::worker::Worker;
use crate::wire::close;
use crate::wire::frame::close_frame;
use crate::wire::handshake::{refusal, HandshakeError};

/// Queue entries written per `writev`.
const IOV_BATCH: usize = 64;

/// What a queued frame costs beyond its bytes: its `Bytes` entry in the
/// queue (32) and the allocator's minimum chunk for a frame of our own (32;
/// a pong to an empty ping is 2 bytes in a 32-byte chunk). Counted against
/// the unsent bound so that a client that floods pings or tiny commands and
/// never reads is closed after ~4,000 queued answers (256 KiB / 64), not
/// after 130,000 of them holding 8 MB.
pub const FRAME_OVERHEAD: usize = size_of::<Bytes>() + 32;

/// What `frame` costs while queued.
pub(crate) fn cost(frame: &[u8]) -> usize {
    frame.len() + FRAME_OVERHEAD
}

/// Why a frame could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// Recoverable for the server, fatal for the connection: unsent bytes
    /// passed the bound; it is closed with 4000 and may reconnect.
    TooSlow,
    /// Fatal for the connection: the socket failed (reset, broken pipe).
    Broken(io::Error),
}

/// Writes `frames` now (one `write`, or one `writev` for several) if nothing
/// is queued before them, otherwise queues them; `slices` are the same
/// frames as `IoSlice`s, built once by the caller for every subscriber.
/// Returns the bytes written to the socket. Closing connections take nothing.
pub fn write_or_queue(
    conn: &mut Conn,
    frames: &[Bytes],
    slices: &[IoSlice<'_>],
    bound: usize,
) -> Result<usize, SendError> {
    if conn.state == State::Closing {
        return Ok(0);
    }
    let total: usize = frames.iter().map(|f| cost(f)).sum();
    let bound = bound.saturating_add(conn.replay_allowance());
    if conn.unsent() == 0 {
        let result = match frames {
            [one] => (&conn.socket).write(one),
            _ => (&conn.socket).write_vectored(slices),
        };
        let mut n = match result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(SendError::Broken(e)),
        };
        let written = n;
        // A batch the socket took only part of may leave more than the
        // bound: then only the frame already begun is completed (the stream
        // must stay valid) and the connection is closed as too slow.
        let left: usize = {
            let mut skip = written;
            frames
                .iter()
                .map(|f| {
                    let taken = skip.min(f.len());
                    skip -= taken;
                    if taken == f.len() {
                        0
                    } else {
                        cost(f) - taken
                    }
                })
                .sum()
        };
        let over = left > bound;
        // Queue what the kernel did not take: the rest of a partly written
        // frame (a slice of the shared buffer) and the frames after it.
        for frame in frames {
            if n >= frame.len() {
                n -= frame.len();
            } else if n > 0 || !over {
                queue(conn, frame.slice(n..));
                n = 0;
            }
        }
        return if over {
            Err(SendError::TooSlow)
        } else {
            Ok(written)
        };
    }
    if conn.unsent() + total > bound {
        return Err(SendError::TooSlow);
    }
    for frame in frames {
        queue(conn, frame.clone());
    }
    Ok(0)
}

/// Writes bytes from a worker buffer (a TLS connection's sealed records)
/// now if nothing is queued before them, queueing a copy of what the socket
/// did not take, after whatever is queued already. The bytes are queued even
/// past `bound` (sealed records must all go, in order); `TooSlow` then says
/// the connection is to be closed.
pub(crate) fn write_bytes(conn: &mut Conn, bytes: &[u8], bound: usize) -> Result<usize, SendError> {
    let mut written = 0;
    if conn.unsent() == 0 {
        written = match (&conn.socket).write(bytes) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(SendError::Broken(e)),
        };
    }
    if written < bytes.len() {
        queue(conn, Bytes::copy_from_slice(&bytes[written..]));
        if conn.unsent() > bound {
            return Err(SendError::TooSlow);
        }
    }
    Ok(written)
}

fn queue(conn: &mut Conn, frame: Bytes) {
    let rare = conn.rare();
    rare.out_len += cost(&frame);
    rare.out.push_back(frame);
}

/// Writes as much of the queue as the socket takes. `Ok(true)` when it is empty.
fn flush(conn: &mut Conn) -> io::Result<(bool, usize)> {
    let mut written = 0;
    loop {
        let Some(rare) = conn.rare.as_mut() else {
            return Ok((true, written));
        };
        if rare.out.is_empty() {
            conn.shrink();
            return Ok((true, written));
        }
        let slices: Vec<IoSlice<'_>> = rare
            .out
            .iter()
            .take(IOV_BATCH)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut n = match (&conn.socket).write_vectored(&slices) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, written)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        written += n;
        while n > 0 {
            let Some(front) = rare.out.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                rare.out_len -= cost(front);
                rare.out.pop_front();
            } else {
                let _ = front.split_to(n);
                rare.out_len -= n;
                n = 0;
            }
        }
    }
}

/// Frames of a replay written per `writev` (IOV_MAX is 1024).
const REPLAY_BATCH: usize = 256;

impl Worker {
    /// Sends a recovery's replay to `token`. However far behind the browser
    /// was, the replay is bounded by history (its size and byte cap), so it
    /// is queued whole rather than judged by `--max-outbound`: otherwise a
    /// browser that missed more than the bound would be closed as too slow
    /// on every reconnect and never catch up. The bound then applies to
    /// what comes on top of the replay.
    pub(crate) fn send_replay(&mut self, token: usize, frames: &[Bytes]) {
        for batch in frames.chunks(REPLAY_BATCH) {
            let Some(conn) = self.conns.get_mut(token) else {
                return;
            };
            let before = conn.unsent();
            let result = match self.tls.as_deref_mut() {
                None => {
                    let slices: Vec<IoSlice<'_>> = batch.iter().map(|f| IoSlice::new(f)).collect();
                    write_or_queue(conn, batch, &slices, usize::MAX)
                }
                Some(tls) => deliver(conn, tls, token, batch, usize::MAX),
            };
            match result {
                Ok(n) => {
                    let queued = conn.unsent().saturating_sub(before);
                    if queued > 0 {
                        conn.rare().replay_allowance += queued;
                    }
                    let stats = &self.metrics.workers[self.id];
                    WorkerMetrics::add(&stats.frames_out, batch.len() as u64);
                    WorkerMetrics::add(&stats.bytes_out, n as u64);
                }
                Err(e) => return self.on_send_error(token, e),
            }
        }
    }

    /// Sends one of our own frames (a reply, a pong, a ping) to `token`.
    pub(crate) fn send(&mut self, token: usize, frame: Bytes) {
        // During an upgrade everything goes out in one write (`cork.rs`).
        if self.cork.take(token, &frame) {
            return;
        }
        let bound = self.config.max_outbound.get();
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        let result = match self.tls.as_deref_mut() {
            None => write_or_queue(
                conn,
                std::slice::from_ref(&frame),
                &[IoSlice::new(&frame)],
                bound,
            ),
            Some(tls) => deliver(conn, tls, token, std::slice::from_ref(&frame), bound),
        };
        match result {
            Ok(n) => {
                let stats = &self.metrics.workers[self.id];
                WorkerMetrics::add(&stats.frames_out, 1);
                WorkerMetrics::add(&stats.bytes_out, n as u64);
            }
            Err(e) => self.on_send_error(token, e),
        }
    }

    pub(super) fn on_send_error(&mut self, token: usize, err: SendError) {
        match err {
            SendError::TooSlow => {
                WorkerMetrics::add(&self.stats().slow_closes, 1);
                // A TLS queue is sealed records: dropping one would break
                // the stream, so it is sent whole (it is within the bound).
                let plain = self.tls.is_none();
                if let Some(conn) = self.conns.get_mut(token).filter(|_| plain) {
                    // Nobody waits for a slow reader: drop what it has not
                    // started reading (it recovers on reconnect), keep the
                    // frame already half written so the stream stays valid,
                    // and put the close frame after it.
                    if let Some(rare) = conn.rare.as_mut() {
                        rare.out.truncate(1);
                        rare.out_len = rare.out.front().map_or(0, |b| cost(b));
                    }
                }
                self.close_with(token, close::TOO_SLOW, "too slow");
            }
            SendError::Broken(e) => {
                tracing::debug!(worker = self.id, token, error = %e, "write failed");
                self.close_now(token);
            }
        }
    }

    /// The socket can take more: flush the queue, and finish a close once
    /// our last bytes are out.
    pub(super) fn on_writable(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        match flush(conn) {
            Ok((done, n)) => {
                WorkerMetrics::add(&self.metrics.workers[self.id].bytes_out, n as u64);
                if done {
                    self.after_flush(token);
                }
            }
            Err(e) => {
                tracing::debug!(worker = self.id, token, error = %e, "flush failed");
                self.close_now(token);
            }
        }
    }

    /// Once a closing connection's last bytes are out, half-close so the
    /// peer sees our close frame or refusal and then end of stream.
    fn after_flush(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if conn.state == State::Closing && !conn.has(flag::WRITE_SHUT) {
            conn.set(flag::WRITE_SHUT);
            if conn.socket.shutdown(Shutdown::Write).is_err() {
                self.close_now(token);
            }
        }
    }

    /// Starts the close handshake with `code`: send the close frame, stop
    /// all deliveries, and give the peer `close_timeout` to answer.
    pub(super) fn close_with(&mut self, token: usize, code: u16, reason: &str) {
        self.stats().count_close(code);
        self.finish_with(token, Bytes::from(close_frame(code, reason, None)));
    }

    /// Answers a failed upgrade with its HTTP status and closes.
    pub(super) fn refuse(&mut self, token: usize, err: HandshakeError) {
        tracing::debug!(worker = self.id, token, status = err.status(), reason = %err, "upgrade refused");
        WorkerMetrics::add(&self.stats().handshake_failures[err.index()], 1);
        let body = refusal(&err, self.config.retry_after.0 as u32);
        self.finish_with(token, Bytes::from(body));
    }

    /// Sends `last` as the final bytes of this connection and moves it to
    /// `Closing`.
    pub(super) fn finish_with(&mut self, token: usize, last: Bytes) {
        self.index.unsubscribe_all(&mut self.conns, token as u32);
        self.leave_rooms(token);
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if conn.state == State::Closing {
            return;
        }
        conn.state = State::Closing;
        conn.clear(flag::IN_TEXT | flag::IN_BINARY | flag::AWAIT_PONG | flag::PING_OUT);
        if let Some(rare) = conn.rare.as_mut() {
            rare.inbuf = Vec::new();
            rare.message = Vec::new();
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.hold(token, &[]);
        }
        self.uncount(token);
        // On TLS, the last bytes and close_notify, sealed.
        let last = match self.seal_last(token, &last) {
            None => last,
            Some(Some(sealed)) => sealed,
            Some(None) => return self.close_now(token),
        };
        if let Some(conn) = self.conns.get_mut(token) {
            queue(conn, last);
            WorkerMetrics::add(&self.metrics.workers[self.id].frames_out, 1);
        }
        let at = self.now + self.config.close_timeout.0 as u32;
        self.set_timer(token, at);
        self.on_writable(token);
    }

    /// Releases this connection's place under the connection limit.
    fn uncount(&mut self, token: usize) {
        if let Some(conn) = self.conns.get_mut(token) {
            if conn.has(flag::COUNTED) {
                conn.clear(flag::COUNTED);
                self.upgraded -= 1;
                self.metrics
                    .open_connections
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops the connection now: the socket closes and every trace of it
    /// leaves the index and the slab. A connection that was open and did not
    /// go through a close handshake is counted as 1006.
    pub(super) fn close_now(&mut self, token: usize) {
        if self
            .conns
            .get(token)
            .is_some_and(|c| c.state == State::Open)
        {
            self.stats().count_close(close::ABNORMAL);
        }
        self.index.unsubscribe_all(&mut self.conns, token as u32);
        self.leave_rooms(token);
        self.uncount(token);
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.end(token);
        }
        if let Some(conn) = self.conns.try_remove(token) {
            if conn.has(flag::SHED) {
                self.shedding -= 1;
            } else {
                self.metrics.sockets.fetch_sub(1, Ordering::Relaxed);
                self.addresses.release(conn.addr_bucket);
            }
            // Closing the fd removes it from epoll; deregistering first keeps
            // that true even if the fd were ever duplicated.
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&conn.socket.as_raw_fd()));
        }
    }
}
