//! Every fixed limit of the server in one place, each with what it protects
//! and why its value is what it is. Limits an operator may want to change
//! are options in `config.rs` instead; these are the ones that should not
//! need changing. Nothing here may depend on anything else in the crate.

use std::time::Duration;

// ---- request heads, on every port ----

/// Largest HTTP request head (request line and headers) on any port: a
/// browser's upgrade is under 2 KiB and a publish request's head under 1 KiB,
/// so 8 KiB leaves room while bounding what a slowloris client can make us
/// hold per connection (431 past it).
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Most headers in one request head on any port: a browser sends about 15;
/// more is abuse (400 on the data port, 431 on the HTTP ports). Parsed into a
/// stack array of this size, so it is also a stack cost.
pub const MAX_HEADERS: usize = 32;

/// Largest HTTP response head a client (client-sim) accepts from a server:
/// the same bound as for requests, for the same reason.
pub const MAX_RESPONSE_HEAD: usize = MAX_REQUEST_HEAD;

// ---- the publish and admin ports ----

/// Time for a whole request head to arrive on the publish or admin port,
/// counted from when the server starts waiting for it, so it is also how
/// long an idle keep-alive connection is kept. 10 s is ages for a backend on
/// the same network and short enough that held-open sockets cost little.
pub const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Time without a byte moving in either direction after which a publish or
/// admin connection is closed, whatever it is doing (a trickled body, an
/// answer the client does not read). Longer than the 2 s a publish may wait
/// for room in the worker queues, so a slow publish is never cut by it.
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Time for a whole request body to arrive. 16 MiB (the largest batch) takes
/// under 2 s at 100 Mbit/s; a body trickled slower than that is an attack.
pub const HTTP_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Read buffer of one HTTP connection (hyper's minimum is 8 KiB): bounds
/// what a connection holds before its handler sees the request.
pub const HTTP_READ_BUFFER: usize = 64 * 1024;

/// Concurrent connections on the publish port. A booking backend publishes
/// from a handful of connections; past this new ones get an immediate 503
/// rather than holding descriptors (each is reserved, see
/// [`fd_reserve`]).
pub const MAX_PUBLISH_CONNECTIONS: usize = 64;

/// Concurrent connections on the admin port: a scraper, a health checker
/// and an operator's curl. Past this new ones get an immediate 503.
pub const MAX_ADMIN_CONNECTIONS: usize = 16;

/// Pause after an accept error that is not about one connection (out of
/// descriptors or memory) before accepting again: long enough not to spin a
/// core, short enough that the port comes back as soon as a descriptor does.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Threads of the tokio runtime serving the publish and admin ports (and,
/// later, other async clients such as Redis). Two, so a long request on one
/// never delays the admin port; the blocking part of a publish runs on the
/// runtime's blocking pool, never on these.
pub const HTTP_RUNTIME_THREADS: usize = 2;

/// Threads a publish may block in at once (waiting up to 2 s for room in
/// the worker queues): each publish connection could be in one.
pub const HTTP_BLOCKING_THREADS: usize = MAX_PUBLISH_CONNECTIONS;

// ---- descriptors ----

/// Descriptors kept back from the public port whatever the open-file limit:
/// stdio, epoll instances, wakers, listeners, the runtime's own, a
/// state file, a Redis connection pool, and the spare each worker holds to
/// shed a connection when accept runs out (see `core/sys.rs`).
pub const FD_RESERVE_BASE: usize = 64;

/// Descriptors each worker holds besides its connections: its epoll, its
/// waker, its listener and its spare.
pub const FD_PER_WORKER: usize = 4;

/// Connections each worker may hold past the connection limit (or a
/// source address's cap) only to deliver their 503 and close gracefully:
/// closed at once instead, the answer could be lost to a reset. Past this
/// budget a refused connection gets its 503 written and is closed at once,
/// so a flood of refusals cannot pin descriptors either.
pub const SHED_SLOTS_PER_WORKER: usize = 32;

/// Descriptors kept back from the public port for `workers` workers: enough
/// that the publish API and admin port at their connection caps, and the 503
/// answer to a refused browser, always get one.
pub const fn fd_reserve(workers: usize) -> usize {
    FD_RESERVE_BASE
        + (FD_PER_WORKER + SHED_SLOTS_PER_WORKER) * workers
        + MAX_PUBLISH_CONNECTIONS
        + MAX_ADMIN_CONNECTIONS
}

// ---- inbound rate ----

/// Frames a connection may send in a burst before `--max-message-rate`
/// applies (the bucket's size). A browser's burst is its subscriptions at
/// connect (at most 32) plus a pong; 128 leaves room and fits the byte
/// `Conn` keeps it in. Autobahn's conformance cases send at most ~60 frames
/// per connection, so they pass untouched.
pub const MESSAGE_BURST: u8 = 128;

// ---- per source address ----

/// Buckets of the per-address connection counts. Addresses are hashed into
/// them with a random key, so the table is a fixed 256 KiB whatever the
/// number of distinct addresses (an exact map would cost ~40 bytes per
/// connection from a million addresses). Two addresses in one bucket share
/// its cap: with a million connections that is ~15 per bucket on average,
/// far below any sensible cap, and an attacker cannot aim at a neighbour's
/// bucket without the key.
pub const ADDRESS_BUCKETS: usize = 1 << 16;
