//! The read path: readable socket -> bytes -> upgrade or frames -> messages,
//! in one straight line. A whole text message goes to the session
//! (`channels/session.rs`); what a command means is not known here.
//!
//! Reads land in the worker's scratch buffer; a connection gets a buffer of
//! its own only for the bytes of an incomplete frame, and gives it back when
//! they complete. Any protocol breach closes that connection with the close
//! code from [`close_code`] and never touches another.

use std::io::{self, Read};

use crate::admin::metrics::WorkerMetrics;
use crate::core::conn::{flag, State};
use crate::core::worker::{Worker, MAX_READS_PER_EVENT};
use crate::wire::close;
use crate::wire::frame::{decode_header, encode_frame, FrameError, FrameHeader, OpCode, Role};
use crate::wire::mask::apply_mask;

/// The one table from frame-level breaches to close codes.
fn close_code(err: FrameError) -> u16 {
    match err {
        FrameError::ReservedBits
        | FrameError::ReservedOpcode(_)
        | FrameError::FragmentedControl
        | FrameError::ControlTooLong
        | FrameError::Unmasked
        | FrameError::Masked
        | FrameError::LengthOverflow => close::PROTOCOL_ERROR,
    }
}

/// What the caller of a read step does next.
pub(crate) enum Flow {
    /// Read again.
    More,
    /// The socket is drained for now; wait for the next edge.
    Drained,
    /// The connection is gone or closing; stop.
    Stop,
}

/// Checks `bytes[from..]` as UTF-8. When `complete` is false a truncated
/// last character is allowed (it may finish in the next fragment); returns
/// how far the bytes are known valid. Fails as soon as a byte cannot start
/// or continue a character, so bad text is caught fragment by fragment.
fn check_utf8(bytes: &[u8], from: usize, complete: bool) -> Option<usize> {
    match std::str::from_utf8(&bytes[from..]) {
        Ok(_) => Some(bytes.len()),
        Err(e) if e.error_len().is_none() && !complete => Some(from + e.valid_up_to()),
        Err(_) => None,
    }
}

impl Worker {
    /// Readable socket to dispatched frames. Reads at most
    /// `MAX_READS_PER_EVENT` times, then yields to other connections.
    pub(super) fn on_readable(&mut self, token: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut rounds = 0;
        loop {
            // A worker is all-TLS or all-plain: one predictable branch.
            let flow = if self.tls.is_some() {
                self.read_tls_once(token, &mut scratch)
            } else {
                self.read_once(token, &mut scratch)
            };
            match flow {
                Flow::More if rounds + 1 < MAX_READS_PER_EVENT => rounds += 1,
                Flow::More => {
                    self.rearm.push(mio::Token(token));
                    break;
                }
                Flow::Drained | Flow::Stop => break,
            }
        }
        self.scratch = scratch;
    }

    fn read_once(&mut self, token: usize, scratch: &mut [u8]) -> Flow {
        let n = match self.read_socket(token, scratch) {
            Ok(n) => n,
            Err(flow) => return flow,
        };
        match self.feed(token, &mut scratch[..n]) {
            // A short read emptied the kernel buffer: epoll will report new
            // data with a new edge, so skip the read that would only say EAGAIN.
            Flow::Drained if n < scratch.len() => Flow::Drained,
            Flow::Drained => Flow::More,
            other => other,
        }
    }

    /// One read from the socket into `buf`, plain or TLS alike: how many
    /// bytes came, or what the caller does instead (end of stream or an
    /// error closed it; nothing to read; it is closing and its input is
    /// only drained).
    #[inline]
    pub(super) fn read_socket(&mut self, token: usize, buf: &mut [u8]) -> Result<usize, Flow> {
        let Some(conn) = self.conns.get_mut(token) else {
            return Err(Flow::Stop);
        };
        let n = match (&conn.socket).read(buf) {
            Ok(0) => {
                self.close_now(token);
                return Err(Flow::Stop);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Flow::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(Flow::More),
            Err(e) => {
                tracing::debug!(worker = self.id, token, error = %e, "read failed");
                self.close_now(token);
                return Err(Flow::Stop);
            }
        };
        WorkerMetrics::add(&self.metrics.workers[self.id].bytes_in, n as u64);
        if conn.state == State::Closing {
            // Our last word is said; drain input until the peer closes.
            return Err(Flow::More);
        }
        Ok(n)
    }

    /// Bytes from the peer (read, or decrypted by TLS) to the upgrade or
    /// frames; an incomplete request head or frame waits in `Rare::inbuf`.
    /// `Drained` when all was taken in, `More` when the connection is
    /// closing (keep draining), `Stop` when it is gone.
    pub(super) fn feed(&mut self, token: usize, bytes: &mut [u8]) -> Flow {
        let Some(conn) = self.conns.get_mut(token) else {
            return Flow::Stop;
        };
        // Bytes left from an incomplete frame go first.
        let mut pending = conn
            .rare
            .as_mut()
            .map(|r| std::mem::take(&mut r.inbuf))
            .unwrap_or_default();
        let leftover = if pending.is_empty() {
            match self.consume(token, bytes) {
                Some(used) => bytes[used..].to_vec(),
                None => return Flow::Stop,
            }
        } else {
            pending.extend_from_slice(bytes);
            match self.consume(token, &mut pending) {
                Some(used) => {
                    pending.drain(..used);
                    pending
                }
                None => return Flow::Stop,
            }
        };
        let Some(conn) = self.conns.get_mut(token) else {
            return Flow::Stop;
        };
        if conn.state == State::Closing {
            return Flow::More;
        }
        if leftover.is_empty() {
            conn.shrink();
        } else {
            conn.rare().inbuf = leftover;
        }
        Flow::Drained
    }

    /// Consumes what it can of `buf`; `None` when the connection stopped.
    fn consume(&mut self, token: usize, buf: &mut [u8]) -> Option<usize> {
        let state = self.conns.get(token)?.state;
        match state {
            State::Handshake => {
                let head = self.handshake(token, buf)?;
                if head == 0 {
                    return Some(0);
                }
                // Frames sent right behind the request are read now.
                self.frames(token, &mut buf[head..]).map(|used| head + used)
            }
            State::Open => self.frames(token, buf),
            State::Closing => Some(buf.len()),
        }
    }

    /// Decodes, unmasks and dispatches every whole frame in `buf`; returns
    /// the bytes consumed (an incomplete frame stays for the next read).
    fn frames(&mut self, token: usize, buf: &mut [u8]) -> Option<usize> {
        let max_message = self.config.max_message.0;
        let mut pos = 0;
        while pos < buf.len() {
            let header = match decode_header(&buf[pos..], Role::Server) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(e) => {
                    self.close_with(token, close_code(e), &e.to_string());
                    return None;
                }
            };
            // Refuse an oversized message from its header, before buffering it.
            if !header.opcode.is_control() {
                let assembled = self
                    .conns
                    .get(token)?
                    .rare
                    .as_ref()
                    .map_or(0, |r| r.message.len());
                if header.payload_len.saturating_add(assembled as u64) > max_message {
                    self.close_with(token, close::MESSAGE_TOO_BIG, "message too big");
                    return None;
                }
            }
            let end = pos + header.header_len + header.payload_len as usize;
            if end > buf.len() {
                break;
            }
            let payload = &mut buf[pos + header.header_len..end];
            if let Some(key) = header.mask {
                apply_mask(payload, key);
            }
            pos = end;
            WorkerMetrics::add(&self.metrics.workers[self.id].frames_in, 1);
            self.spend_credit(token)?;
            self.on_frame(token, header, payload)?;
        }
        Some(pos)
    }

    /// One frame: control frames answered at once, data frames assembled
    /// into messages (RFC 6455 section 5.4) and checked as UTF-8 as they come.
    fn on_frame(&mut self, token: usize, header: FrameHeader, payload: &mut [u8]) -> Option<()> {
        let conn = self.conns.get_mut(token)?;
        let in_message = conn.flags & (flag::IN_TEXT | flag::IN_BINARY);
        match header.opcode {
            OpCode::Ping => {
                let mut pong = Vec::with_capacity(payload.len() + 2);
                encode_frame(&mut pong, OpCode::Pong, payload, None);
                self.send(token, pong.into());
            }
            OpCode::Pong => conn.clear(flag::AWAIT_PONG),
            OpCode::Close => return self.on_close_frame(token, payload),
            OpCode::Text | OpCode::Binary if in_message != 0 => {
                return self.fail(
                    token,
                    close::PROTOCOL_ERROR,
                    "new message inside a fragmented one",
                );
            }
            OpCode::Text if header.fin => {
                if check_utf8(payload, 0, true).is_none() {
                    return self.fail(token, close::INVALID_PAYLOAD, "invalid UTF-8");
                }
                return self.on_message(token, OpCode::Text, payload);
            }
            OpCode::Binary if header.fin => return self.on_message(token, OpCode::Binary, payload),
            OpCode::Text | OpCode::Binary => {
                let text = header.opcode == OpCode::Text;
                conn.set(if text { flag::IN_TEXT } else { flag::IN_BINARY });
                return self.append_fragment(token, payload, false);
            }
            OpCode::Continuation if in_message == 0 => {
                return self.fail(
                    token,
                    close::PROTOCOL_ERROR,
                    "continuation without a message",
                );
            }
            OpCode::Continuation => return self.append_fragment(token, payload, header.fin),
        }
        Some(())
    }

    fn append_fragment(&mut self, token: usize, payload: &[u8], fin: bool) -> Option<()> {
        let conn = self.conns.get_mut(token)?;
        let text = conn.has(flag::IN_TEXT);
        let rare = conn.rare();
        rare.message.extend_from_slice(payload);
        if text {
            match check_utf8(&rare.message, rare.utf8_checked, fin) {
                Some(valid) => rare.utf8_checked = valid,
                None => return self.fail(token, close::INVALID_PAYLOAD, "invalid UTF-8"),
            }
        }
        if !fin {
            return Some(());
        }
        let mut message = std::mem::take(&mut rare.message);
        rare.utf8_checked = 0;
        conn.clear(flag::IN_TEXT | flag::IN_BINARY);
        conn.shrink();
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
        self.on_message(token, opcode, &mut message)
    }

    /// The peer's close frame (RFC 6455 section 5.5.1): check its code and
    /// reason, echo the code, and finish.
    fn on_close_frame(&mut self, token: usize, payload: &[u8]) -> Option<()> {
        match payload {
            [] => {
                self.stats().count_close(close::NO_STATUS);
                let mut frame = Vec::with_capacity(2);
                encode_frame(&mut frame, OpCode::Close, &[], None);
                self.finish_with(token, frame.into());
            }
            [_] => {
                self.fail(token, close::PROTOCOL_ERROR, "close payload of one byte");
            }
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !close::is_valid_received(code) {
                    self.fail(token, close::PROTOCOL_ERROR, "invalid close code");
                } else if std::str::from_utf8(reason).is_err() {
                    self.fail(token, close::INVALID_PAYLOAD, "close reason is not UTF-8");
                } else {
                    self.close_with(token, code, "");
                }
            }
        }
        None
    }

    /// Closes for a protocol breach; always `None` so callers can `return` it.
    fn fail(&mut self, token: usize, code: u16, reason: &str) -> Option<()> {
        tracing::debug!(
            worker = self.id,
            token,
            code,
            reason,
            "closing for a protocol breach"
        );
        self.close_with(token, code, reason);
        None
    }

    /// A whole message: in echo mode sent back; otherwise a JSON command
    /// for the session.
    fn on_message(&mut self, token: usize, opcode: OpCode, payload: &mut [u8]) -> Option<()> {
        if self.config.echo {
            let mut frame = Vec::with_capacity(payload.len() + 10);
            encode_frame(&mut frame, opcode, payload, None);
            self.send(token, frame.into());
            return Some(());
        }
        if opcode == OpCode::Binary {
            return self.fail(
                token,
                close::UNSUPPORTED_DATA,
                "binary messages are not accepted",
            );
        }
        // Validated as UTF-8 on the way in.
        let text = std::str::from_utf8(payload).ok()?;
        if self.config.test_panic_hooks {
            self.test_hook(text);
        }
        self.on_command(token, text);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_utf8;

    #[test]
    fn utf8_check_waits_for_a_split_character_but_fails_fast_on_a_bad_one() {
        let euro = "€".as_bytes(); // e2 82 ac
        assert_eq!(check_utf8(&euro[..2], 0, false), Some(0));
        assert_eq!(check_utf8(euro, 0, true), Some(3));
        assert_eq!(check_utf8(&euro[..2], 0, true), None);
        assert_eq!(check_utf8(&[0xf4, 0x90], 0, false), None);
        assert_eq!(check_utf8(b"ab\xff", 0, false), None);
    }
}
