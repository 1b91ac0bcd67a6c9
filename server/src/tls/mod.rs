//! TLS on the public port (`--tls-cert`, `--tls-key`): the certificate
//! pair, read, checked and reloadable (`certs.rs`, `validity.rs`); the one
//! rustls configuration every handshake uses (`acceptor.rs`); and a
//! worker's sessions, driven by the worker's epoll readiness through
//! rustls' unbuffered API (`session.rs`). The worker's side of it, bytes
//! on sockets, is `core/tls.rs`. See docs/tls.md.

pub mod acceptor;
pub mod certs;
pub mod records;
pub mod refusal;
pub mod session;
pub mod validity;

pub use acceptor::Acceptor;
