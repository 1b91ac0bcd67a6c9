//! A worker's TLS sessions and the two steps its read and write paths take
//! with them: open what came in (handshake records answered, application
//! data decrypted), and seal what goes out (encrypted straight from the
//! shared frame into the worker's buffer).
//!
//! Sessions sit beside the slab, indexed by the same key, and exist only on
//! a worker whose listener speaks TLS: a plain `Conn` stays 48 bytes and
//! pays nothing. During the handshake a session is rustls' unbuffered
//! connection; once the handshake is done only its record keys stay
//! (`records.rs`). Neither holds a buffer between events: ciphertext out
//! and plaintext in go through the two per-worker buffers here.
//!
//! It must not touch sockets or connection state; `core/tls.rs` does.

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{HandshakeKind, ServerConfig};

use crate::tls::records::{Traffic, MAX_FRAGMENT};
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
    /// A record that is not what an established connection may receive.
    #[error("TLS: {0}")]
    BadRecord(&'static str),
    /// The peer sent a fatal alert (its description code).
    #[error("TLS: the peer sent alert {0}")]
    Alert(u8),
    /// A TLS 1.3 KeyUpdate from the peer: not followed (see `records.rs`).
    #[error("TLS: the peer renewed its keys; the connection is closed for it to reconnect")]
    KeyUpdate,
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
    /// The handshake finished during this call, full or resumed.
    pub completed: Option<HandshakeKind>,
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

    /// Appends `bytes`.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.used += bytes.len();
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

/// One connection's TLS state.
enum Session {
    /// rustls drives the handshake. About 2.5 KB while it lasts (the
    /// connection, its state machine, handshake hashes), given back at once
    /// after it.
    Handshake(Box<UnbufferedServerConnection>),
    /// Established: the two record keys and their sequence numbers. At a
    /// million idle connections: keys 1.1 GB (ring's AES-GCM key schedule
    /// and GHASH table, ~540 bytes per direction), the rest 0.1 GB.
    Traffic(Box<Traffic>),
}

/// A worker's TLS state: the shared configuration, one session per TLS
/// connection, and the two buffers every session uses in turn.
pub struct WorkerTls {
    config: Arc<ServerConfig>,
    /// Indexed by slab key: 16 bytes per slot, whether used or not.
    sessions: Vec<Option<Session>>,
    /// Ciphertext to write: handshake records or sealed frames.
    pub out: OutBuf,
    /// Plaintext decrypted by [`WorkerTls::open`], for the frame parser.
    pub plain: Vec<u8>,
    /// Ciphertext of an incomplete record, read ahead of its end, by slab
    /// key. Here rather than in `Conn`'s `Rare`, so that plain connections
    /// (whose `Rare` every handshake allocates) pay nothing for it; an
    /// entry lives only until its record completes.
    held: hashbrown::HashMap<usize, Vec<u8>>,
}

impl WorkerTls {
    pub fn new(config: Arc<ServerConfig>) -> WorkerTls {
        WorkerTls {
            config,
            sessions: Vec::new(),
            out: OutBuf::default(),
            plain: Vec::new(),
            held: hashbrown::HashMap::new(),
        }
    }

    /// The incomplete record held for `token`, if any.
    pub fn held(&self, token: usize) -> &[u8] {
        self.held.get(&token).map_or(&[], |bytes| &bytes[..])
    }

    /// Holds `bytes`, the start of a record, until the next read; empty
    /// forgets what was held.
    pub fn hold(&mut self, token: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            self.held.remove(&token);
        } else {
            self.held.insert(token, bytes.to_vec());
        }
    }

    /// Starts a session for a newly accepted connection.
    pub fn start(&mut self, token: usize) -> Result<(), TlsError> {
        let session = UnbufferedServerConnection::new(self.config.clone())?;
        if self.sessions.len() <= token {
            self.sessions.resize_with(token + 1, || None);
        }
        self.sessions[token] = Some(Session::Handshake(Box::new(session)));
        Ok(())
    }

    /// Forgets a connection's session (its keys are zeroed as they drop).
    pub fn end(&mut self, token: usize) {
        if let Some(slot) = self.sessions.get_mut(token) {
            *slot = None;
        }
        self.held.remove(&token);
    }

    /// Whether `token` speaks TLS. False once a plain-HTTP request on the
    /// TLS port has had its session dropped, so its refusal goes out in
    /// clear text.
    pub fn has(&self, token: usize) -> bool {
        matches!(self.sessions.get(token), Some(Some(_)))
    }

    /// Whether the TLS handshake of `token` is still going on.
    pub fn is_handshaking(&self, token: usize) -> bool {
        matches!(self.sessions.get(token), Some(Some(Session::Handshake(_))))
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
        let slot = sessions.get_mut(token).ok_or(TlsError::NotReady)?;
        match slot {
            None => Err(TlsError::NotReady),
            Some(Session::Traffic(traffic)) => {
                let opened = traffic.open(incoming, plain)?;
                Ok(Opened {
                    consumed: opened.consumed,
                    peer_closed: opened.peer_closed,
                    completed: None,
                })
            }
            Some(Session::Handshake(session)) => {
                let mut opened = handshake(session, incoming, out, plain)?;
                if !session.is_handshaking() {
                    opened.completed = session.handshake_kind();
                    if let Some(Session::Handshake(session)) = slot.take() {
                        *slot = Some(Session::Traffic(Box::new(established(*session)?)));
                    }
                    // Records that came right behind the client's Finished.
                    if !opened.peer_closed {
                        if let Some(Session::Traffic(traffic)) = slot {
                            let more = traffic.open(&mut incoming[opened.consumed..], plain)?;
                            opened.consumed += more.consumed;
                            opened.peer_closed = more.peer_closed;
                        }
                    }
                }
                Ok(opened)
            }
        }
    }

    /// After [`WorkerTls::open`] failed in the handshake: the fatal alert
    /// rustls prepared, if any, is put in `out` so the peer learns why.
    pub fn alert(&mut self, token: usize) {
        let WorkerTls { sessions, out, .. } = self;
        let Some(Some(Session::Handshake(session))) = sessions.get_mut(token) else {
            return;
        };
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) =
            session.process_tls_records(&mut []).state
        {
            let _ = out.append(MAX_FRAGMENT, |buf| encode.encode(buf), encode_needs);
        }
    }

    /// Encrypts `frames` into `out` straight from the shared frames (no
    /// copy first), in as few records as 16 KiB allows; with `close`, then
    /// `close_notify`. `NotReady` while the handshake is going on.
    pub fn seal<F: AsRef<[u8]>>(
        &mut self,
        token: usize,
        frames: &[F],
        close: bool,
    ) -> Result<(), TlsError> {
        let WorkerTls { sessions, out, .. } = self;
        let Some(Some(Session::Traffic(traffic))) = sessions.get_mut(token) else {
            return Err(TlsError::NotReady);
        };
        let slices: smallvec::SmallVec<[&[u8]; 4]> = frames.iter().map(|f| f.as_ref()).collect();
        traffic.seal(&slices, close, out)
    }
}

/// Drives rustls through the handshake records in `incoming`.
fn handshake(
    session: &mut UnbufferedServerConnection,
    incoming: &mut [u8],
    out: &mut OutBuf,
    plain: &mut Vec<u8>,
) -> Result<Opened, TlsError> {
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
            // Waiting for more bytes (BlockedHandshake), or done with the
            // handshake and all it had to send (WriteTraffic). Early data is
            // never accepted (`max_early_data_size` stays 0), so no other
            // state can come from input.
            _ => done = true,
        }
        start += discard;
        if done {
            return Ok(Opened {
                consumed: start,
                peer_closed,
                completed: None,
            });
        }
    }
}

/// Hands a finished handshake over to its record keys; the rest of the
/// rustls connection is dropped here.
fn established(session: UnbufferedServerConnection) -> Result<Traffic, TlsError> {
    let (secrets, kernel) = session.dangerous_into_kernel_connection()?;
    Traffic::new(secrets, kernel.negotiated_cipher_suite())
}

fn encode_needs(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}
