//! The waiting room's frames to browsers (see `docs/waiting-room.md`):
//! `queued`, `admitted` and room errors. Encoding only. Room names are
//! valid channel names and tickets base64url and digits, so only the error
//! frame (which may echo what a browser sent) escapes.

use crate::channels::protocol::ErrorCode;

/// `{"op":"queued","room":R,...}`: `ticket` only in the answer to a join,
/// `position` null (and `opens_at` set) while the room has not opened.
pub fn queued(
    room: &str,
    ticket: Option<&str>,
    position: Option<u32>,
    eta_s: Option<u64>,
    opens_at: Option<u64>,
) -> Vec<u8> {
    let mut out = format!(r#"{{"op":"queued","room":"{room}""#);
    if let Some(t) = ticket {
        out.push_str(&format!(r#","ticket":"{t}""#));
    }
    let number = |v: Option<u64>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
    out.push_str(&format!(
        r#","position":{},"eta_s":{}"#,
        number(position.map(u64::from)),
        number(eta_s)
    ));
    if let Some(at) = opens_at {
        out.push_str(&format!(r#","opens_at":{at}"#));
    }
    out.push('}');
    out.into_bytes()
}

/// `{"op":"admitted","room":R,"token":A,"expires":E,"seq":N}`; `seq`
/// numbers the room's admissions from 1, in the order they were made.
pub fn admitted(room: &str, token: &str, expires: u64, seq: u64) -> Vec<u8> {
    format!(
        r#"{{"op":"admitted","room":"{room}","token":"{token}","expires":{expires},"seq":{seq}}}"#
    )
    .into_bytes()
}

/// `{"op":"error","room":R,"code":C,"message":M}`.
pub fn error(room: &str, code: ErrorCode, message: &str) -> Vec<u8> {
    serde_json::json!({
        "op": "error",
        "room": room,
        "code": code.as_str(),
        "message": message,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(bytes: Vec<u8>) -> Value {
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn room_frames_are_the_documented_json() {
        let cases = [
            (
                queued("r", Some("T"), Some(4), Some(9), None),
                json!({"op":"queued","room":"r","ticket":"T","position":4,"eta_s":9}),
            ),
            (
                queued("r", None, None, Some(30), Some(1700)),
                json!({"op":"queued","room":"r","position":null,"eta_s":30,"opens_at":1700}),
            ),
            (
                queued("r", None, Some(1), None, None),
                json!({"op":"queued","room":"r","position":1,"eta_s":null}),
            ),
            (
                admitted("r", "A", 99, 3),
                json!({"op":"admitted","room":"r","token":"A","expires":99,"seq":3}),
            ),
            (
                error("a\"b", ErrorCode::UnknownRoom, "no"),
                json!({"op":"error","room":"a\"b","code":"unknown_room","message":"no"}),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(parse(bytes), expected);
        }
    }
}
