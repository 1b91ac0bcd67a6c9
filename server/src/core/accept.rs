//! Accepting on the public port, and turning connections away when taking
//! them would hurt others: past the connection limit (handshakes count),
//! past the per-address cap, or out of descriptors. A refused browser gets
//! a 503 with Retry-After, never a hang; accept never spins.
//!
//! It must not read from a connection; the read path starts after `admit`.

use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use mio::unix::SourceFd;
use mio::{Interest, Token};

use crate::admin::metrics::WorkerMetrics;
use crate::core::conn::{flag, Conn};
use crate::core::sys;
use crate::core::worker::{Worker, LISTENER, MAX_ACCEPTS_PER_EVENT};
use crate::limits::{MESSAGE_BURST, SHED_SLOTS_PER_WORKER};
use crate::wire::handshake::{refusal, HandshakeError};

impl Worker {
    pub(crate) fn accept_ready(&mut self) {
        for _ in 0..MAX_ACCEPTS_PER_EVENT {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => self.admit(socket, peer.ip()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if sys::is_resource_exhaustion(&e) => {
                    if self.shed_with_spare() {
                        continue;
                    }
                    if !self.accept_paused {
                        tracing::warn!(worker = self.id, error = %e, "accept paused: out of descriptors or memory");
                    }
                    // Retried on the next tick: with edge-triggered epoll,
                    // retrying now would only spin.
                    self.accept_paused = true;
                    return;
                }
                Err(e) => tracing::debug!(worker = self.id, error = %e, "accept failed"),
            }
        }
        self.rearm.push(LISTENER);
    }

    /// Takes a new connection in, or turns it away with a 503.
    fn admit(&mut self, socket: mio::net::TcpStream, ip: IpAddr) {
        let socket = std::net::TcpStream::from(socket);
        let bucket = self.addresses.bucket(ip);
        let sockets = &self.metrics.sockets;
        let refused = if sockets.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
            sockets.fetch_sub(1, Ordering::Relaxed);
            Some(HandshakeError::AtCapacity)
        } else if !self
            .addresses
            .try_add(bucket, self.config.max_connections_per_ip)
        {
            sockets.fetch_sub(1, Ordering::Relaxed);
            Some(HandshakeError::PerAddress)
        } else {
            None
        };
        if let Some(err) = refused {
            return self.shed(socket, err);
        }
        let token = self.conns.vacant_entry().key();
        if !self.insert(socket, bucket, 0) {
            self.metrics.sockets.fetch_sub(1, Ordering::Relaxed);
            self.addresses.release(bucket);
            return;
        }
        // The request is normally here already (TCP_DEFER_ACCEPT, see
        // `sys.rs`): read it now rather than after another epoll_wait.
        self.on_readable(token);
    }

    /// Puts a socket in the slab and epoll with its handshake deadline.
    fn insert(&mut self, socket: std::net::TcpStream, bucket: u16, flags: u8) -> bool {
        // TCP_NODELAY comes from the listener (`sys::reuseport_listeners`).
        let entry = self.conns.vacant_entry();
        let Ok(token) = u32::try_from(entry.key()) else {
            return false;
        };

        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(entry.key()),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(worker = self.id, error = %e, "registering a connection failed");
            return false;
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            if let Err(e) = tls.start(entry.key()) {
                tracing::warn!(worker = self.id, error = %e, "cannot start a TLS session");
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&socket.as_raw_fd()));
                return false;
            }
        }
        let at = self.now + self.config.handshake_timeout.0 as u32;
        let mut conn = Conn::new(socket, at);
        conn.addr_bucket = bucket;
        conn.credit = MESSAGE_BURST;
        conn.credit_at = self.now as u8;
        self.lease_gen = self.lease_gen.wrapping_add(1);
        conn.lease_gen = self.lease_gen;
        conn.set(flags);
        entry.insert(conn);
        self.wheel.schedule(token, at);
        WorkerMetrics::add(&self.stats().accepted, 1);
        true
    }

    /// Answers a refused connection with its 503. Within the shedding
    /// budget it is held until the peer has read the answer and closed (or
    /// the close timeout); past it the answer is written and the socket
    /// closed at once.
    fn shed(&mut self, mut socket: std::net::TcpStream, err: HandshakeError) {
        // A 503 cannot reach a TLS client before a handshake we will not
        // spend CPU on when full: it is closed, and counted below.
        if self.shedding < SHED_SLOTS_PER_WORKER && self.tls.is_none() {
            let token = self.conns.vacant_entry().key();
            if self.insert(socket, 0, flag::SHED) {
                self.shedding += 1;
                self.refuse(token, err);
            }
            return;
        }
        WorkerMetrics::add(&self.stats().handshake_failures[err.index()], 1);
        WorkerMetrics::add(&self.stats().dropped_at_accept, 1);
        if self.tls.is_none() {
            // A fresh socket's send buffer is empty: this write does not block.
            let _ = socket.write(&refusal(&err, self.config.retry_after.0 as u32));
        }
    }

    /// Out of descriptors with connections waiting: give up the spare
    /// descriptor, accept one, tell it 503 and close it, then take the
    /// spare back. So waiting browsers hear "come back later" instead of
    /// hanging in the backlog. False when there is no spare to use.
    fn shed_with_spare(&mut self) -> bool {
        let Some(spare) = self.spare.take() else {
            return false;
        };
        drop(spare);
        let shed = match self.listener.as_ref().map(|l| l.accept()) {
            Some(Ok((socket, _))) => {
                let mut socket = std::net::TcpStream::from(socket);
                let err = HandshakeError::AtCapacity;
                WorkerMetrics::add(&self.stats().handshake_failures[err.index()], 1);
                WorkerMetrics::add(&self.stats().dropped_at_accept, 1);
                if self.tls.is_none() {
                    let _ = socket.write(&refusal(&err, self.config.retry_after.0 as u32));
                }
                true
            }
            _ => false,
        };
        self.spare = sys::spare_descriptor();
        shed && self.spare.is_some()
    }
}
