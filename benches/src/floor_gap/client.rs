//! The load generator of `benches floor-gap`: N WebSocket clients on one
//! thread (mio), which the caller pins to a CPU the server does not use.
//! It ramps with a bounded number of handshakes in flight, waits for each
//! 101 and for the acknowledgements the server sends at connect, answers
//! pings, and counts every data frame it receives after that itself: the
//! server's own counters are never read.
//!
//! It must not do more per connection than a browser would (one request,
//! then read), so the server's work is the same for every server measured.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use surge::wire::frame::{decode_header, encode_frame, OpCode, Role};
use surge::wire::handshake::{client_request, parse_response};

/// Handshakes in flight at once during the ramp: enough to keep the server
/// busy, few enough to stay within the listen backlogs (1,024 and more).
const MAX_IN_FLIGHT: usize = 256;
/// The key every client sends; the server hashes it all the same.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

struct Client {
    stream: TcpStream,
    sent_request: bool,
    upgraded: bool,
    /// Text frames still expected as acknowledgements of the subscriptions.
    acks_left: u8,
    /// Bytes of an incomplete head or frame.
    partial: Vec<u8>,
    deliveries: u32,
}

/// What the ramp achieved.
pub struct Ramp {
    pub ready: usize,
    pub failed: usize,
    pub seconds: f64,
}

/// What one client's bytes meant.
enum Progress {
    Pending,
    Ready,
    Failed,
}

pub struct Clients {
    poll: Poll,
    events: Events,
    conns: Slab<Client>,
    scratch: Vec<u8>,
    /// Data frames received after the acknowledgements, all clients together.
    pub deliveries: u64,
    /// Size (header included) of the last data frame received.
    pub frame_bytes: usize,
}

impl Clients {
    pub fn new() -> std::io::Result<Clients> {
        Ok(Clients {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Slab::new(),
            scratch: vec![0; 64 * 1024],
            deliveries: 0,
            frame_bytes: 0,
        })
    }

    /// Opens `n` connections to `addr`, the i-th asking for `path(i)`, and
    /// waits until each has its 101 and `acks` text frames (or failed).
    pub fn ramp(
        &mut self,
        addr: SocketAddr,
        n: usize,
        acks: u8,
        path: impl Fn(usize) -> String,
        timeout: Duration,
    ) -> Result<Ramp, String> {
        let host = addr.to_string();
        let started = Instant::now();
        let (mut opened, mut ready, mut failed) = (0, 0, 0);
        while ready + failed < n {
            while opened < n && opened - ready - failed < MAX_IN_FLIGHT {
                let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                let entry = self.conns.vacant_entry();
                self.poll
                    .registry()
                    .register(
                        &mut stream,
                        Token(entry.key()),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|e| e.to_string())?;
                entry.insert(Client {
                    stream,
                    sent_request: false,
                    upgraded: false,
                    acks_left: acks,
                    partial: Vec::new(),
                    deliveries: 0,
                });
                opened += 1;
            }
            if started.elapsed() > timeout {
                return Err(format!("ramp: {ready} of {n} ready after {timeout:?}"));
            }
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?;
            let tokens: Vec<(usize, bool)> = self
                .events
                .iter()
                .map(|e| (e.token().0, e.is_writable()))
                .collect();
            for (key, writable) in tokens {
                let Some(c) = self.conns.get_mut(key) else {
                    continue;
                };
                let was_ready = c.upgraded && c.acks_left == 0;
                if writable && !c.sent_request {
                    let req = client_request(&host, &path(key), KEY);
                    match c.stream.write(&req) {
                        Ok(k) if k == req.len() => c.sent_request = true,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        _ => {
                            self.conns.remove(key);
                            failed += 1;
                            continue;
                        }
                    }
                }
                match self.read(key) {
                    Progress::Ready if !was_ready => ready += 1,
                    Progress::Failed if !was_ready => failed += 1,
                    _ => {}
                }
            }
        }
        Ok(Ramp {
            ready,
            failed,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Reads until `self.deliveries` reaches `target` or `timeout` passes.
    pub fn wait_for(&mut self, target: u64, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        while self.deliveries < target {
            if started.elapsed() > timeout {
                return Err(format!(
                    "{} of {target} deliveries after {timeout:?}",
                    self.deliveries
                ));
            }
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?;
            let keys: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for key in keys {
                self.read(key);
            }
        }
        Ok(())
    }

    /// Fewest and most deliveries any open client counted.
    pub fn per_client_range(&self) -> (u32, u32) {
        let counts = self.conns.iter().map(|(_, c)| c.deliveries);
        (counts.clone().min().unwrap_or(0), counts.max().unwrap_or(0))
    }

    /// Closes every connection.
    pub fn close_all(&mut self) {
        self.conns.clear();
    }

    /// Drains the socket; a failed client is removed.
    fn read(&mut self, key: usize) -> Progress {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut progress = Progress::Pending;
        while let Some(c) = self.conns.get_mut(key) {
            let n = match c.stream.read(&mut scratch) {
                Ok(0) => {
                    progress = Progress::Failed;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    progress = Progress::Failed;
                    break;
                }
            };
            let mut buf = std::mem::take(&mut c.partial);
            buf.extend_from_slice(&scratch[..n]);
            match self.consume(key, &buf) {
                Some((used, p)) => {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.partial = buf[used..].to_vec();
                    }
                    if !matches!(p, Progress::Pending) {
                        progress = p;
                    }
                }
                None => {
                    progress = Progress::Failed;
                    break;
                }
            }
        }
        if matches!(progress, Progress::Failed) {
            self.conns.try_remove(key);
        }
        self.scratch = scratch;
        progress
    }

    /// Takes the head and whole frames from `buf`: bytes used and whether
    /// the client became ready; `None` when it failed.
    fn consume(&mut self, key: usize, buf: &[u8]) -> Option<(usize, Progress)> {
        let c = self.conns.get_mut(key)?;
        let mut pos = 0;
        let mut progress = Progress::Pending;
        if !c.upgraded {
            match parse_response(buf, KEY) {
                Ok(None) => return Some((0, progress)),
                Ok(Some(r)) if r.status == 101 && r.accepted => {
                    c.upgraded = true;
                    pos = r.head_len;
                    if c.acks_left == 0 {
                        progress = Progress::Ready;
                    }
                }
                _ => return None,
            }
        }
        while let Ok(Some(h)) = decode_header(&buf[pos..], Role::Client) {
            let len = h.header_len + usize::try_from(h.payload_len).ok()?;
            if buf.len() - pos < len {
                break;
            }
            match h.opcode {
                OpCode::Text | OpCode::Binary if c.acks_left > 0 => {
                    c.acks_left -= 1;
                    if c.acks_left == 0 {
                        progress = Progress::Ready;
                    }
                }
                OpCode::Text | OpCode::Binary => {
                    c.deliveries += 1;
                    self.deliveries += 1;
                    self.frame_bytes = len;
                }
                OpCode::Ping => {
                    let mut pong = Vec::new();
                    let payload = &buf[pos + h.header_len..pos + len];
                    encode_frame(&mut pong, OpCode::Pong, payload, Some([1, 2, 3, 4]));
                    let _ = c.stream.write(&pong);
                }
                OpCode::Close => return None,
                _ => {}
            }
            pos += len;
        }
        Some((pos, progress))
    }
}
