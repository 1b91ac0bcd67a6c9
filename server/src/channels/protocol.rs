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
        /// Recover what was missed after this position.
        #[serde(default, borrow)]
        since: Option<SinceJson<'a>>,
        /// Required for private channels.
        #[serde(default, borrow)]
        token: Option<std::borrow::Cow<'a, str>>,
    },
    Unsub {
        #[serde(borrow)]
        ch: std::borrow::Cow<'a, str>,
    },
    /// A newer token for a private subscription, before the old one expires.
    Refresh {
        #[serde(borrow)]
        ch: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        token: std::borrow::Cow<'a, str>,
    },
    /// Join a waiting room, or resume a place with its ticket (`rooms/`).
    Join {
        #[serde(borrow)]
        room: std::borrow::Cow<'a, str>,
        #[serde(default, borrow)]
        ticket: Option<std::borrow::Cow<'a, str>>,
    },
}

/// `"since":{"epoch":"E","off":N}` in a subscribe command.
#[derive(Debug, Deserialize)]
pub struct SinceJson<'a> {
    #[serde(borrow)]
    pub epoch: std::borrow::Cow<'a, str>,
    pub off: u64,
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
    /// A private channel without a valid token.
    Forbidden,
    /// A private subscription's token expired without a refresh: it has
    /// ended (the connection stays open).
    TokenExpired,
    /// The engine could not load the channel (Redis unreachable): retry.
    Unavailable,
    /// No waiting room of that name.
    UnknownRoom,
    /// The waiting room was closed by the booking backend.
    RoomClosed,
    /// A ticket that is forged, altered, or for another room.
    BadTicket,
    /// A genuine ticket whose place is gone: admitted long ago, or its
    /// holder was away longer than the grace period. Join afresh.
    TicketExpired,
}

impl ErrorCode {
    /// Every code, in declaration order (`code as usize` indexes it): the
    /// labels of `surge_command_errors_total`.
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::BadRequest,
        ErrorCode::BadChannel,
        ErrorCode::TooManySubscriptions,
        ErrorCode::Forbidden,
        ErrorCode::TokenExpired,
        ErrorCode::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UnknownRoom => "unknown_room",
            ErrorCode::RoomClosed => "room_closed",
            ErrorCode::BadTicket => "bad_ticket",
            ErrorCode::TicketExpired => "ticket_expired",
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

/// `{"op":"subscribed","ch":"NAME"}`, with the channel's `epoch` and last
/// `off` when it has history, and `recovered` when the client asked to
/// recover.
pub fn subscribed(
    channel: &str,
    position: Option<(&str, u64)>,
    recovered: Option<bool>,
) -> Vec<u8> {
    let mut out = reply("subscribed", channel);
    out.pop(); // the closing brace
    if let Some((epoch, off)) = position {
        out.extend_from_slice(format!(r#","epoch":"{epoch}","off":{off}"#).as_bytes());
    }
    if let Some(recovered) = recovered {
        out.extend_from_slice(format!(r#","recovered":{recovered}"#).as_bytes());
    }
    out.push(b'}');
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_unknown_ones_do_not() {
        let c = parse_command(r#"{"op":"sub","ch":"a"}"#);
        assert!(matches!(c, Ok(Command::Sub { ch, since: None, token: None }) if ch == "a"));
        let c = parse_command(
            r#"{"op":"sub","ch":"user/1","token":"t","since":{"epoch":"e1","off":7}}"#,
        );
        assert!(matches!(
            c,
            Ok(Command::Sub {
                since: Some(SinceJson { off: 7, .. }),
                token: Some(_),
                ..
            })
        ));
        let c = parse_command(r#"{"ch":"a/b","op":"unsub"}"#);
        assert!(matches!(c, Ok(Command::Unsub { ch }) if ch == "a/b"));
        let c = parse_command(r#"{"op":"join","room":"sale","ticket":"T"}"#);
        assert!(
            matches!(c, Ok(Command::Join { room, ticket: Some(t) }) if room == "sale" && t == "T")
        );
        assert!(parse_command(r#"{"op":"pub","ch":"a"}"#).is_err());
        assert!(parse_command("not json").is_err());
    }

    #[test]
    fn encodings_are_valid_json() {
        let v: serde_json::Value =
            serde_json::from_slice(&subscribed("c", Some(("e", 4)), Some(false))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op":"subscribed","ch":"c","epoch":"e","off":4,"recovered":false})
        );
        let v: serde_json::Value = serde_json::from_slice(&subscribed("c", None, None)).unwrap();
        assert_eq!(v, serde_json::json!({"op":"subscribed","ch":"c"}));
        let v: serde_json::Value =
            serde_json::from_slice(&error(Some("a\"b"), ErrorCode::BadChannel, "no")).unwrap();
        assert_eq!(v["ch"], "a\"b");
        let v: serde_json::Value = serde_json::from_slice(&reply("unsubscribed", "c")).unwrap();
        assert_eq!(v["op"], "unsubscribed");
    }
}
