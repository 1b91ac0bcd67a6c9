//! Channels: names, the per-worker subscriber index, the browser's JSON
//! commands, and the broker that hands publications to every worker.

pub mod broker;
pub mod history;
pub mod index;
pub mod name;
pub mod protocol;
pub mod token;
