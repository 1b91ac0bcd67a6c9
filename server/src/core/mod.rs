//! The connection core: worker threads with their own epoll, slab of
//! connections, timer wheel and listener; the per-connection state; and the
//! system calls beneath them.

pub mod conn;
mod cork;
mod read;
pub mod sys;
pub mod timer;
mod upgrade;
pub mod worker;
mod write;
