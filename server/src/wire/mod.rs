//! The WebSocket wire: everything about RFC 6455 bytes, shared by the server
//! and by client-sim. Nothing in here knows about sockets, connections,
//! channels or time; it turns bytes into facts and facts into bytes.

pub mod close;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod mask;

pub use close::CloseCode;
pub use frame::{decode_header, encode_frame, FrameError, FrameHeader, OpCode, Role};
pub use mask::apply_mask;
