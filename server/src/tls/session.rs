//! A worker's TLS sessions and the two steps its read and write paths take
//! with them: open what came in (handshake records answered, application
//! data decrypted), and seal what goes out (encrypted straight from the
//! shared frame into the worker's buffer).
//!
//! Sessions sit beside the slab, indexed by the same key, and exist only on
//! a worker whose listener speaks TLS: a plain `Conn` stays 48 bytes and
//! pays nothing. A session is rustls' unbuffered connection, so between
//! events it holds its keys and state machine but no buffer: ciphertext
//! out and plaintext in go through the two per-worker buffers here.
//!
//! It must not touch sockets or connection state; `core/tls.rs` does.

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::{HandshakeKind, ServerConfig};

/// What a sealed record adds to its plaintext at most: a 5-byte header,
/// TLS 1.3's content-type byte and 16-byte tag, or TLS 1.2's 8-byte
/// explicit nonce and tag; rounded up. Only sizes the first try: rustls
/// says what it needs if that is short.
const RECORD_OVERHEAD: usize = 64;
/// Largest plaintext in one record (RFC 8446 section 5.1).
const MAX_FRAGMENT: usize = 16 * 1024;
/// Ciphertext buffer a worker keeps between events. A burst sealed for one
/// subscriber may grow it further; it is given back after that event.
const OUT_KEEP: usize = 256 * 1024;

/// Why TLS failed on a connection. Every variant is fatal for that
/// connection and harmless to the others.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The peer broke the protocol or the handshake failed (no shared
    /// version or cipher suite, a bad record, not TLS at all).
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    /// This side cannot encrypt any more (the key's record limit).
    #[error("TLS: cannot encrypt: {0}")]
    Encrypt(String),
    /// Application data cannot go out yet (handshake not done) or any more
    /// (closed); or there is no session for this connection.
    #[error("TLS: session not ready for application data")]
    NotReady,
}

/// What [`WorkerTls::open`] found in the bytes given to it.
pub struct Opened {
    /// Bytes of the input used; the rest is an incomplete record to be
    /// given again, at the front, with the next bytes read.
    pub consumed: usize,
    /// The peer sent `close_notify`: nothing more will come.
    pub peer_closed: bool,
}

/// Bytes accumulated for one write, in a buffer that only grows (its spare
/// part is already zeroed, so sealing a record costs no fill).
#[derive(Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    used: usize,
}

impl OutBuf {
    /// The bytes gathered so far.
    pub fn filled(&self) -> &[u8] {
        &self.buf[..self.used]
    }

    pub fn clear(&mut self) {
        self.used = 0;
    }

    /// Gives the memory back after a burst made the buffer large.
    pub fn trim(&mut self) {
        if self.buf.len() > OUT_KEEP {
            self.buf = Vec::new();
            self.used = 0;
        }
    }

    /// The spare part, at least `need` bytes long.
    fn spare(&mut self, need: usize) -> &mut [u8] {
        if self.buf.len() < self.used + need {
            self.buf.resize(self.used + need, 0);
        }
        &mut self.buf[self.used..]
    }

    /// Retries `write` into the spare part, grown to what it says it needs.
    fn append<E>(
        &mut self,
        first_guess: usize,
        mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
        required: impl Fn(&E) -> Option<usize>,
    ) -> Result<(), E> {
        let mut need = first_guess;
        loop {
            match write(self.spare(need)) {
                Ok(n) => {
                    self.used += n;
                    return Ok(());
                }
                Err(e) => match required(&e) {
                    Some(more) if more > need => need = more,
                    _ => return Err(e),
                },
            }
        }
    }
}

/// A worker's TLS state: the shared configuration, one session per TLS
/// connection, and the two buffers every session uses in turn.
pub struct WorkerTls {
    config: Arc<ServerConfig>,
    /// Indexed by slab key. Each is boxed so that a slot costs 8 bytes
    /// while unused; see `core/conn.rs` for what a session costs.
    sessions: Vec<Option<Box<UnbufferedServerConnection>>>,
    /// Ciphertext to write: handshake records or sealed frames.
    pub out: OutBuf,
    /// Plaintext decrypted by [`WorkerTls::open`], for the frame parser.
    pub plain: Vec<u8>,
}

impl WorkerTls {
    pub fn new(config: Arc<ServerConfig>) -> WorkerTls {
        WorkerTls {
            config,
            sessions: Vec::new(),
            out: OutBuf::default(),
            plain: Vec::new(),
        }
    }

    /// Starts a session for a newly accepted connection.
    pub fn start(&mut self, token: usize) -> Result<(), TlsError> {
        let session = UnbufferedServerConnection::new(self.config.clone())?;
        if self.sessions.len() <= token {
            self.sessions.resize_with(token + 1, || None);
        }
        self.sessions[token] = Some(Box::new(session));
        Ok(())
    }

    /// Forgets a connection's session (its keys are zeroed as it drops).
    pub fn end(&mut self, token: usize) {
        if let Some(slot) = self.sessions.get_mut(token) {
            *slot = None;
        }
    }

    /// Whether `token` speaks TLS. False once a plain-HTTP request on the
    /// TLS port has had its session dropped, so its refusal goes out in
    /// clear text.
    pub fn has(&self, token: usize) -> bool {
        self.session_ref(token).is_some()
    }

    /// Whether the TLS handshake of `token` is still going on.
    pub fn is_handshaking(&self, token: usize) -> bool {
        self.session_ref(token).is_some_and(|s| s.is_handshaking())
    }

    /// Full or resumed, once the handshake is done.
    pub fn handshake_kind(&self, token: usize) -> Option<HandshakeKind> {
        self.session_ref(token).and_then(|s| s.handshake_kind())
    }

    fn session_ref(&self, token: usize) -> Option<&UnbufferedServerConnection> {
        self.sessions.get(token).and_then(|s| s.as_deref())
    }

    /// Processes the records in `incoming`: handshake answers go to `out`,
    /// application data to `plain`. Stops at the first incomplete record.
    pub fn open(&mut self, token: usize, incoming: &mut [u8]) -> Result<Opened, TlsError> {
        let WorkerTls {
            sessions,
            out,
            plain,
            ..
        } = self;
        let session = sessions
            .get_mut(token)
            .and_then(|s| s.as_deref_mut())
            .ok_or(TlsError::NotReady)?;
        let mut start = 0;
        let mut peer_closed = false;
        loop {
            let UnbufferedStatus { mut discard, state } =
                session.process_tls_records(&mut incoming[start..]);
            let mut done = false;
            match state? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        plain.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => out
                    .append(MAX_FRAGMENT, |buf| encode.encode(buf), encode_needs)
                    .map_err(|e| TlsError::Encrypt(e.to_string()))?,
                // The caller writes `out` before anything else goes out.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    peer_closed = true;
                    done = true;
                }
                // Waiting for more bytes, handshaking or not. Early data is
                // never accepted (`max_early_data_size` stays 0), so no
                // other state can come from input.
                _ => done = true,
            }
            start += discard;
            if done {
                return Ok(Opened {
                    consumed: start,
                    peer_closed,
                });
            }
        }
    }

    /// After [`WorkerTls::open`] failed: the fatal alert rustls prepared,
    /// if any, is put in `out` so the peer learns why before the close.
    pub fn alert(&mut self, token: usize) {
        let WorkerTls { sessions, out, .. } = self;
        let Some(session) = sessions.get_mut(token).and_then(|s| s.as_deref_mut()) else {
            return;
        };
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) =
            session.process_tls_records(&mut []).state
        {
            let _ = out.append(MAX_FRAGMENT, |buf| encode.encode(buf), encode_needs);
        }
    }

    /// Encrypts `frames` into `out`, one record per frame (split at 16 KiB),
    /// without copying them first; with `close`, then `close_notify`.
    pub fn seal<F: AsRef<[u8]>>(
        &mut self,
        token: usize,
        frames: &[F],
        close: bool,
    ) -> Result<(), TlsError> {
        let WorkerTls { sessions, out, .. } = self;
        let session = sessions
            .get_mut(token)
            .and_then(|s| s.as_deref_mut())
            .ok_or(TlsError::NotReady)?;
        if session.is_handshaking() {
            return Err(TlsError::NotReady);
        }
        loop {
            match session.process_tls_records(&mut []).state? {
                ConnectionState::EncodeTlsData(mut encode) => out
                    .append(MAX_FRAGMENT, |buf| encode.encode(buf), encode_needs)
                    .map_err(|e| TlsError::Encrypt(e.to_string()))?,
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::WriteTraffic(mut traffic) => {
                    for frame in frames {
                        encrypt(&mut traffic, frame.as_ref(), out)?;
                    }
                    if close {
                        out.append(
                            RECORD_OVERHEAD,
                            |buf| traffic.queue_close_notify(buf),
                            encrypt_needs,
                        )
                        .map_err(|e| TlsError::Encrypt(e.to_string()))?;
                    }
                    return Ok(());
                }
                _ => return Err(TlsError::NotReady),
            }
        }
    }
}

fn encrypt(
    traffic: &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
    plain: &[u8],
    out: &mut OutBuf,
) -> Result<(), TlsError> {
    let guess = plain.len() + (plain.len() / MAX_FRAGMENT + 1) * RECORD_OVERHEAD;
    out.append(guess, |buf| traffic.encrypt(plain, buf), encrypt_needs)
        .map_err(|e| TlsError::Encrypt(e.to_string()))
}

fn encode_needs(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn encrypt_needs(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}
