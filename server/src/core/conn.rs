//! The per-connection state: what one socket costs while idle.
//!
//! At a million connections every byte here is a megabyte, so the common
//! idle connection holds only a socket, a timer slot, two state bytes and its
//! subscriptions inline; everything rare (a partial frame, a message being
//! reassembled, unsent bytes) sits behind one
//! `Option<Box<Rare>>` that is freed as soon as it drains. A TLS session is
//! not here at all: it lives beside the slab in its worker's session table
//! (`tls/session.rs`), so a plain connection pays nothing for TLS. No
//! behaviour lives here; the worker's read and write paths act on these
//! fields.

use std::collections::VecDeque;

use bytes::Bytes;
use smallvec::SmallVec;
use std::net::TcpStream;

/// A back-pointer from a connection into a channel's subscriber vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sub {
    /// Channel id in the worker's index.
    pub channel: u32,
    /// Position of this connection in that channel's subscriber vector.
    pub pos: u32,
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for the HTTP upgrade request; the timer is the handshake deadline.
    Handshake,
    /// Upgraded; the timer is the next ping or the pong deadline.
    Open,
    /// We sent our last bytes (a close frame or an HTTP refusal). Once they are
    /// flushed we half-close and discard input until the peer closes or the
    /// close timeout passes, so the peer reads our answer rather than a reset.
    Closing,
}

/// Flags in [`Conn::flags`].
pub mod flag {
    /// A ping is out and its pong has not come back.
    pub const AWAIT_PONG: u8 = 1 << 0;
    /// A fragmented text message is being reassembled.
    pub const IN_TEXT: u8 = 1 << 1;
    /// A fragmented binary message is being reassembled.
    pub const IN_BINARY: u8 = 1 << 2;
    /// Our write half is shut: everything we meant to send has gone.
    pub const WRITE_SHUT: u8 = 1 << 3;
    /// The connection counts against the open-connection limit.
    pub const COUNTED: u8 = 1 << 4;
    /// The timer is a pong deadline (a ping went out), not the next ping.
    pub const PING_OUT: u8 = 1 << 5;
    /// Refused at accept and held only to deliver its 503: counted in the
    /// worker's shedding budget, not in the socket or per-address counts.
    pub const SHED: u8 = 1 << 6;
    /// The connection joined a waiting room: the rooms must hear when it
    /// closes (see `rooms/`). A bit here instead of a field keeps `Conn`
    /// at 48 bytes.
    pub const IN_ROOM: u8 = 1 << 7;
}

/// One connection in a worker's slab. Cost at 1M idle connections: socket 4 MB,
/// timer 4 MB, state + flags 2 MB, two inline subscriptions 24 MB, rare 8 MB.
/// A TLS connection adds, in its worker's session table: a 16-byte slot
/// (16 MB at a million) and, once established, its two record keys and
/// sequence numbers in one box (~1.2 KB: 1.2 GB at a million, nearly all
/// of it ring's AES-GCM key schedules and GHASH tables). Measured: about
/// 1,350 bytes of user space per idle wss connection against about 85 for
/// ws (docs/tls.md).
pub struct Conn {
    /// A plain std socket (4 bytes), registered with epoll by its fd: mio's
    /// own stream type adds a debug-build check that would make this struct
    /// differ between the build we test and the build we ship.
    pub socket: TcpStream,
    /// The second (of the worker's clock) at which the timer wheel looks at
    /// this connection next.
    pub timer_at: u32,
    pub state: State,
    pub flags: u8,
    /// Its source address's bucket in `AddressCounts`, released at close.
    /// Sits in what was padding: it costs no byte.
    pub addr_bucket: u16,
    /// Frames it may still send before the rate limit closes it (a token
    /// bucket of `limits::MESSAGE_BURST`), refilled by `credit_at`. Both
    /// sit in what was padding.
    pub credit: u8,
    /// The worker second (mod 256) the credit was last refilled: a full
    /// refill takes under 7 s, so the wrap costs nothing.
    pub credit_at: u8,
    /// Which connection this is among those the slab slot has held, so a
    /// private subscription's lease never ends a later one (`expiry.rs`).
    /// Also in what was padding.
    pub lease_gen: u16,
    /// Channels this connection subscribes to; two fit without a heap block.
    pub subs: SmallVec<[Sub; 2]>,
    pub rare: Option<Box<Rare>>,
}

/// State that only a busy or misbehaving connection has.
#[derive(Default)]
pub struct Rare {
    /// Bytes of an incomplete request head or frame.
    pub inbuf: Vec<u8>,
    /// A fragmented message being reassembled.
    pub message: Vec<u8>,
    /// How many bytes of `message` are known to be valid UTF-8.
    pub utf8_checked: usize,
    /// Frames not yet written; the first may be partly written already.
    pub out: VecDeque<Bytes>,
    /// What `out` costs: its bytes plus a fixed overhead per entry (see
    /// `write::FRAME_OVERHEAD`), checked against `--max-outbound`.
    pub out_len: usize,
    /// What a recovery's replay added to `out`: bounded by history, not by
    /// `--max-outbound`, which applies on top of it. Gone with `Rare` once
    /// the queue drains.
    pub replay_allowance: usize,
}

impl Rare {
    fn is_idle(&self) -> bool {
        self.inbuf.is_empty() && self.message.is_empty() && self.out.is_empty()
    }
}

impl Conn {
    pub fn new(socket: TcpStream, timer_at: u32) -> Conn {
        Conn {
            socket,
            timer_at,
            state: State::Handshake,
            flags: 0,
            addr_bucket: 0,
            credit: 0,
            credit_at: 0,
            lease_gen: 0,
            subs: SmallVec::new(),
            rare: None,
        }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub fn set(&mut self, f: u8) {
        self.flags |= f;
    }

    pub fn clear(&mut self, f: u8) {
        self.flags &= !f;
    }

    /// The rare state, created on first need.
    pub fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// How far past `--max-outbound` this connection's queue may go: what a
    /// recovery's replay put there.
    pub fn replay_allowance(&self) -> usize {
        self.rare.as_ref().map_or(0, |r| r.replay_allowance)
    }

    /// What the unsent frames queued on this connection cost.
    pub fn unsent(&self) -> usize {
        self.rare.as_ref().map_or(0, |r| r.out_len)
    }

    /// Frees the rare state once nothing is pending, so an idle connection
    /// goes back to costing one null pointer. Buffers that grew large are
    /// dropped rather than kept for a client that may never send again.
    pub fn shrink(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.is_idle()) {
            self.rare = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned so the per-connection cost cannot silently grow: at a million
    /// connections each byte here is a megabyte of RAM.
    #[test]
    fn conn_stays_within_48_bytes() {
        assert!(
            std::mem::size_of::<Conn>() <= 48,
            "Conn is {} bytes",
            std::mem::size_of::<Conn>()
        );
        assert_eq!(std::mem::size_of::<Option<Box<Rare>>>(), 8);
    }
}
