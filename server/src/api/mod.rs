//! The publish API for the booking backend, on its own listener (loopback by
//! default), never on the public port.

mod publish;
pub mod rooms;

pub use publish::spawn;
