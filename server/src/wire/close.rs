//! Close codes (RFC 6455 section 7.4): which codes a peer may send us, and the
//! ones Surge itself uses. The table of when Surge sends which code, and
//! whether a client should reconnect, is in `docs/protocol.md`.

/// A WebSocket close status code.
pub type CloseCode = u16;

/// Normal closure.
pub const NORMAL: CloseCode = 1000;
/// The server is shutting down (SIGTERM); reconnect to another instance.
pub const GOING_AWAY: CloseCode = 1001;
/// The peer broke RFC 6455 (unmasked frame, reserved bits, bad opcode...).
pub const PROTOCOL_ERROR: CloseCode = 1002;
/// The peer sent a message type the endpoint does not accept (binary to the push server).
pub const UNSUPPORTED_DATA: CloseCode = 1003;
/// Never sent on the wire: no status code was present in a close frame.
pub const NO_STATUS: CloseCode = 1005;
/// Never sent on the wire: the connection dropped without a close frame.
pub const ABNORMAL: CloseCode = 1006;
/// A text message or close reason was not valid UTF-8.
pub const INVALID_PAYLOAD: CloseCode = 1007;
/// The peer broke a policy: it sent frames or commands faster than its
/// rate allows.
pub const POLICY_VIOLATION: CloseCode = 1008;
/// The peer sent a message over the inbound size limit.
pub const MESSAGE_TOO_BIG: CloseCode = 1009;
/// Something went wrong inside the server; reconnect.
pub const INTERNAL_ERROR: CloseCode = 1011;
/// The server is restarting (a drain); reconnect after the delay the reason
/// gives ("... reconnect in 7s").
pub const SERVICE_RESTART: CloseCode = 1012;
/// Surge: the connection's unsent bytes passed the bound; reconnect and recover.
pub const TOO_SLOW: CloseCode = 4000;
/// Surge: the client did not answer a ping in time; reconnect.
pub const NO_PONG: CloseCode = 4001;

/// Whether a peer may put `code` in a close frame (RFC 6455 section 7.4.1/7.4.2
/// and the IANA registry). 1004-1006 and 1015 are reserved, 1016-2999 are
/// unassigned, and anything outside 1000-4999 is invalid.
pub fn is_valid_received(code: CloseCode) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::is_valid_received;

    #[test]
    fn reserved_and_out_of_range_codes_are_rejected() {
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_received(code), "{code}");
        }
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid_received(code), "{code}");
        }
    }
}
