//! Session resumption as browsers get it, for every simulated browser of
//! a process: one pool of the TLS 1.3 tickets servers give, from which a
//! reconnecting browser resumes, and the view a browser's first connection
//! has of it (it keeps what it is given but has nothing to offer yet).
//!
//! It stores tickets only; which connection uses which view is `tls`'s
//! choice, and it must never hand a ticket out twice (TLS 1.3 tickets are
//! single-use).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// TLS 1.3 tickets kept per server name when resumption is on. A ticket is
/// used once, and each simulated browser would hold its own, so the pool
/// must cover every connection of a worker process (one ticket each, the
/// server sends a few): with rustls' default of 8 per server a reconnect
/// storm of thousands would resume eight and measure full handshakes for
/// the rest. A ticket is a few hundred bytes, so 2 per connection of a
/// full process (19,000) stays around 10 MB.
pub const TICKETS_PER_SERVER: usize = 40_000;

/// Server names remembered for TLS 1.2 sessions and key-exchange hints:
/// client-sim talks to a handful of nodes.
const SERVERS_REMEMBERED: usize = 64;

/// rustls' session cache with room for a ticket per simulated browser
/// (see [`TICKETS_PER_SERVER`]); everything but TLS 1.3 tickets is left to
/// rustls' own cache. Tickets are interchangeable (the server's, not the
/// browser's), so one pool stands for every browser's own ticket.
#[derive(Debug)]
pub struct TicketPool {
    inner: ClientSessionMemoryCache,
    tickets: Mutex<HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>>,
}

impl Default for TicketPool {
    fn default() -> TicketPool {
        TicketPool {
            inner: ClientSessionMemoryCache::new(SERVERS_REMEMBERED),
            tickets: Mutex::new(HashMap::new()),
        }
    }
}

impl ClientSessionStore for TicketPool {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut map = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SERVERS_REMEMBERED && !map.contains_key(&server_name) {
            return;
        }
        let queue = map.entry(server_name).or_default();
        if queue.len() >= TICKETS_PER_SERVER {
            queue.pop_front();
        }
        queue.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut map = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        // Newest first: the oldest are the nearest to expiry.
        map.get_mut(server_name).and_then(VecDeque::pop_back)
    }
}

/// The pool as a browser's first connection sees it: it keeps what it is
/// given, for its reconnections, but has nothing to resume with yet.
#[derive(Debug)]
pub struct GivenOnly(pub Arc<TicketPool>);

impl ClientSessionStore for GivenOnly {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.0.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, _server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _server_name: &ServerName<'static>) {}

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.0.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        _server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        None
    }
}
