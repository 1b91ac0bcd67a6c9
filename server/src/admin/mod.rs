//! The admin port: health, Prometheus metrics and JSON stats, on its own
//! listener and thread so an operator can see a saturated data port. It
//! must never serve the public or publish API.

pub mod histogram;
pub mod metrics;
mod server;

pub use server::spawn;
