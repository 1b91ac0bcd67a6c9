//! The browser protocol's JSON (see `docs/protocol.md`): commands a browser
//! sends and the replies and publications it receives. Parsing and encoding
//! only; what a command does is the worker's business.

use serde::Deserialize;

/// A command from a browser, borrowed from the frame payload.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Command<'a> {
    Sub {
        #[serde(borrow)]
        ch: std::borrow::Cow<'a, str>,
    },
    Unsub {
        #[serde(borrow)]
        ch: std::borrow::Cow<'a, str>,
    },
}

/// Error codes in `{"op":"error","code":...}`. None of them closes the
/// connection: the browser can correct itself and carry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON, or not a known command.
    BadRequest,
    /// Channel name outside the allowed alphabet or length.
    BadChannel,
    /// Subscription limit per connection reached.
    TooManySubscriptions,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
        }
    }
}

/// Parses one text message as a command.
pub fn parse_command(text: &str) -> Result<Command<'_>, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// `{"op":"subscribed","ch":"NAME"}` and its kin. `channel` must already be
/// a valid name (no escaping needed).
pub fn reply(op: &str, channel: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + op.len() + channel.len());
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(b"\",\"ch\":\"");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

/// `{"op":"error","ch":...,"code":...,"message":...}`; `channel` may be
/// anything the browser sent, so it is escaped.
pub fn error(channel: Option<&str>, code: ErrorCode, message: &str) -> Vec<u8> {
    let value = serde_json::json!({
        "op": "error",
        "ch": channel,
        "code": code.as_str(),
        "message": message,
    });
    value.to_string().into_bytes()
}

/// The payload of a publication: `{"ch":"NAME","data":VALUE}`, with VALUE
/// copied byte for byte from what the backend published.
pub fn publication(channel: &str, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + channel.len() + data.len());
    out.extend_from_slice(b"{\"ch\":\"");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(data.as_bytes());
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_unknown_ones_do_not() {
        assert!(
            matches!(parse_command(r#"{"op":"sub","ch":"a"}"#), Ok(Command::Sub { ch }) if ch == "a")
        );
        assert!(
            matches!(parse_command(r#"{"ch":"a/b","op":"unsub"}"#), Ok(Command::Unsub { ch }) if ch == "a/b")
        );
        assert!(parse_command(r#"{"op":"pub","ch":"a"}"#).is_err());
        assert!(parse_command("not json").is_err());
    }

    #[test]
    fn encodings_are_valid_json() {
        let v: serde_json::Value =
            serde_json::from_slice(&publication("c", r#"{"slots":[1,2]}"#)).unwrap();
        assert_eq!(v["data"]["slots"][1], 2);
        let v: serde_json::Value =
            serde_json::from_slice(&error(Some("a\"b"), ErrorCode::BadChannel, "no")).unwrap();
        assert_eq!(v["ch"], "a\"b");
        let v: serde_json::Value = serde_json::from_slice(&reply("subscribed", "c")).unwrap();
        assert_eq!(v["op"], "subscribed");
    }
}
