//! Surge: a WebSocket push server for booking surges.
//!
//! - `wire`: RFC 6455 bytes (frames, masking, handshake, close codes), shared
//!   with client-sim.
//! - `core`: worker threads with epoll, the slab of connections, the timer
//!   wheel, and the read and write paths.
//! - `channels`: channel names, the subscriber index, the browser's session
//!   (commands, tokens, recovery) and the broker that fans publications out
//!   to workers.
//! - `engine`: who numbers, keeps and spreads publications: in-process by
//!   default, or Redis for many processes and boxes.
//! - `rooms`: the waiting room: tickets, fair admission, pushed positions.
//! - `api`: the publish API for the booking backend.
//! - `admin`: health, metrics and stats on their own port.
//! - `web`, `demo`: the embedded slot board page and `surge --demo`'s
//!   simulated booking backend.
//! - `ops`: systemd notifications and watchdog, logging, process figures,
//!   `check-config` and `print-config`.
//! - `config`, `units`: options, defaults and their validation; `limits`:
//!   the fixed limits, each defined once.
//! - `http`: the hardened HTTP stack under the publish and admin ports.
//! - `tls`: TLS on the public port: certificates, reload, sessions.
//! - `server`: all of it started and stopped together.

pub mod admin;
pub mod api;
pub mod channels;
pub mod config;
pub mod core;
pub mod demo;
pub mod engine;
pub mod http;
pub mod limits;
pub mod ops;
pub mod rooms;
pub mod server;
pub mod tls;
pub mod units;
pub mod web;
pub mod wire;

pub use config::Config;
pub use server::Server;
