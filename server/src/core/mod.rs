//! The connection core: worker threads with their own epoll, slab of
//! connections, timer wheel and listener; the per-connection state; and the
//! system calls beneath them.

mod accept;
pub mod addresses;
pub mod conn;
mod cork;
pub mod guard;
mod rate;
mod read;
pub mod sys;
pub mod timer;
mod tls;
mod upgrade;
pub mod worker;
mod write;
