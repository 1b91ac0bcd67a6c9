//! The worker's side of TLS: a TLS connection's readable event (ciphertext
//! into the scratch buffer, through its session, handshake answers written,
//! plaintext into the same parser plain connections use), how its frames
//! are written (sealed from the shared frame, then written like plain
//! bytes), and the refusal of what is not TLS, counted by reason.
//!
//! Only a worker whose listener speaks TLS comes here; the plain path pays
//! one `Option` test per read or write. It must not parse frames or HTTP;
//! `read.rs` and `upgrade.rs` do, for both.

use std::io;

use bytes::Bytes;

use crate::admin::metrics::WorkerMetrics;
use crate::core::conn::{Conn, State};
use crate::core::read::Flow;
use crate::core::worker::Worker;
use crate::core::write::{cost, write_bytes, SendError};
use crate::tls::refusal::TlsRefusal;
use crate::tls::session::WorkerTls;
use crate::web;

/// Ciphertext held for a connection between reads: an incomplete record
/// (at most 16 KiB plus its header and tag), or a handshake message split
/// over several. Past this the peer is not speaking TLS as browsers do.
const MAX_HELD_CIPHERTEXT: usize = 32 * 1024;

/// What a plain HTTP request to the TLS port is told, in clear text.
const SPEAKS_TLS: &[u8] = b"This port speaks TLS: use https:// or wss://.\n";

/// Writes `frames` to a TLS connection: sealed into the worker's buffer
/// straight from the shared frames (no copy per subscriber), then written;
/// what the socket does not take is queued as ciphertext, so the queue
/// keeps the record order. The unsent bound is checked before sealing:
/// a record once sealed must be sent, or the stream breaks.
pub(crate) fn deliver<F: AsRef<[u8]>>(
    conn: &mut Conn,
    tls: &mut WorkerTls,
    token: usize,
    frames: &[F],
    bound: usize,
) -> Result<usize, SendError> {
    if conn.state == State::Closing {
        return Ok(0);
    }
    let bound = bound.saturating_add(conn.replay_allowance());
    let unsent = conn.unsent();
    if unsent > 0 {
        let total: usize = frames.iter().map(|f| cost(f.as_ref())).sum();
        if unsent + total > bound {
            return Err(SendError::TooSlow);
        }
    }
    tls.out.clear();
    if let Err(e) = tls.seal(token, frames, false) {
        return Err(SendError::Broken(io::Error::other(e)));
    }
    let written = write_bytes(conn, tls.out.filled(), bound);
    tls.out.clear();
    written
}

impl Worker {
    /// One read of a TLS connection; the TLS twin of `read_once`.
    pub(super) fn read_tls_once(&mut self, token: usize, scratch: &mut [u8]) -> Flow {
        // An incomplete record from the last read goes first.
        let held = match self.tls.as_deref().map(|tls| tls.held(token)) {
            Some(bytes) if !bytes.is_empty() => {
                scratch[..bytes.len()].copy_from_slice(bytes);
                bytes.len()
            }
            _ => 0,
        };
        let n = match self.read_socket(token, &mut scratch[held..]) {
            Ok(n) => n,
            Err(flow) => return flow,
        };
        let Some(tls) = self.tls.as_deref_mut() else {
            return Flow::Stop;
        };
        tls.hold(token, &[]);
        // The worker's buffers hold nothing of another connection's, even
        // after a panic cut its handling short (`guard.rs`).
        tls.out.clear();
        tls.plain.clear();
        let handshaking = tls.is_handshaking(token);
        // With nothing held, the read starts at a record boundary.
        let not_tls = match scratch.first() {
            Some(&byte) if handshaking && held == 0 => TlsRefusal::classify_first_byte(byte),
            _ => None,
        };
        if not_tls == Some(TlsRefusal::PlainHttp) {
            self.refuse_plain_http(token);
            return Flow::Stop;
        }
        let end = held + n;
        let opened = match tls.open(token, &mut scratch[..end]) {
            Ok(opened) if end - opened.consumed <= MAX_HELD_CIPHERTEXT => opened,
            result => {
                let reason = not_tls.unwrap_or(TlsRefusal::HandshakeFailed);
                if let Err(e) = result {
                    tracing::debug!(worker = self.id, token, error = %e, "TLS failed");
                    tls.alert(token);
                }
                if handshaking {
                    WorkerMetrics::add(&self.stats().tls_refused[reason.index()], 1);
                }
                self.write_sealed(token);
                self.close_now(token);
                return Flow::Stop;
            }
        };
        if let Some(kind) = opened.completed {
            let resumed = kind == rustls::HandshakeKind::Resumed;
            WorkerMetrics::add(&self.stats().tls_handshakes[usize::from(resumed)], 1);
        }
        // Handshake records go out before any answer to what was decrypted.
        if !self.write_sealed(token) {
            return Flow::Stop;
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.hold(token, &scratch[opened.consumed..end]);
        }
        if let Some(conn) = self.conns.get_mut(token) {
            conn.shrink();
        }
        let flow = self.feed_decrypted(token);
        if opened.peer_closed {
            // close_notify: the TLS twin of end of stream.
            if self.conns.contains(token) {
                self.close_now(token);
            }
            return Flow::Stop;
        }
        match flow {
            Flow::Drained if n < scratch.len() - held => Flow::Drained,
            Flow::Drained => Flow::More,
            other => other,
        }
    }

    /// Passes what the session decrypted to the frame parser.
    fn feed_decrypted(&mut self, token: usize) -> Flow {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Flow::Stop;
        };
        let mut plain = std::mem::take(&mut tls.plain);
        let flow = if plain.is_empty() {
            Flow::Drained
        } else {
            self.feed(token, &mut plain)
        };
        plain.clear();
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.plain = plain;
        }
        flow
    }

    /// Writes what the session put in the worker's ciphertext buffer
    /// (handshake records, an alert). False when the connection is gone.
    fn write_sealed(&mut self, token: usize) -> bool {
        let Some(tls) = self.tls.as_deref_mut() else {
            return false;
        };
        if tls.out.filled().is_empty() {
            return true;
        }
        let result = match self.conns.get_mut(token) {
            // Handshake records are bounded by rustls, not by the reader.
            Some(conn) => write_bytes(conn, tls.out.filled(), usize::MAX),
            None => Ok(0),
        };
        tls.out.clear();
        tls.out.trim();
        match result {
            Ok(n) => {
                WorkerMetrics::add(&self.metrics.workers[self.id].bytes_out, n as u64);
                true
            }
            Err(e) => {
                self.on_send_error(token, e);
                false
            }
        }
    }

    /// A plain HTTP request on the TLS port: told so in clear text, as
    /// nginx does, and closed.
    fn refuse_plain_http(&mut self, token: usize) {
        WorkerMetrics::add(&self.stats().tls_refused[TlsRefusal::PlainHttp.index()], 1);
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.end(token);
        }
        let answer = web::response(400, "text/plain; charset=utf-8", &[], SPEAKS_TLS, false);
        self.finish_with(token, Bytes::from(answer));
    }

    /// The handshake deadline of a connection still in its TLS handshake:
    /// nothing can be said to it in TLS yet, and HTTP in clear would be
    /// noise to a TLS client, so it is closed and counted.
    pub(super) fn tls_handshake_timed_out(&mut self, token: usize) -> bool {
        let Some(tls) = self.tls.as_deref() else {
            return false;
        };
        if !tls.is_handshaking(token) {
            return false;
        }
        WorkerMetrics::add(
            &self.stats().tls_refused[TlsRefusal::HandshakeTimeout.index()],
            1,
        );
        self.close_now(token);
        true
    }

    /// Seals a connection's last bytes and `close_notify` for `finish_with`.
    /// `None` when it has no TLS session (a plain worker, or a plain HTTP
    /// request refused in clear): the bytes go as they are. `Some(None)`
    /// when nothing can be sealed (still handshaking).
    pub(super) fn seal_last(&mut self, token: usize, last: &Bytes) -> Option<Option<Bytes>> {
        let tls = self.tls.as_deref_mut().filter(|t| t.has(token))?;
        tls.out.clear();
        let sealed = match tls.seal(token, &[&last[..]], true) {
            Ok(()) => Some(Bytes::copy_from_slice(tls.out.filled())),
            Err(e) => {
                tracing::debug!(worker = self.id, token, error = %e, "cannot seal the last bytes");
                None
            }
        };
        tls.out.clear();
        Some(sealed)
    }
}
