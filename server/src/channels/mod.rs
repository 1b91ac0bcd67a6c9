//! Channels: names, the per-worker subscriber index, the browser's JSON
//! commands and what they do (`session`), private channel tokens and when
//! the subscriptions they grant end (`expiry`), and the
//! broker that hands publications to every worker.

pub mod broker;
pub mod expiry;
pub mod index;
pub mod name;
pub mod protocol;
pub mod session;
pub mod token;
