//! The booking backend's waiting-room endpoints, independent of the HTTP
//! stack: the router authenticates (as for publishing), reads the body and
//! calls [`handle`] with the method, path and body; this answers with a
//! status and a JSON body.
//!
//! - `PUT /api/rooms/NAME` `{"admit_per_minute":N,"opens_at":T,"max_admitted":M,"admission_ttl":S}`
//! - `GET /api/rooms/NAME`
//! - `DELETE /api/rooms/NAME` (optionally `{"reason":"..."}`)
//! - `POST /api/rooms/NAME/verify` `{"token":"A"}`

use serde::Deserialize;

use crate::rooms::room::Settings;
use crate::rooms::{now_ms, RoomError, Rooms, Verdict, MAX_ADMISSION_TTL_S, MAX_ADMIT_PER_MINUTE};

/// Where the room endpoints live.
pub const PREFIX: &str = "/api/rooms/";
/// Largest body a room request may have: settings or a token are tiny.
pub const MAX_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    admit_per_minute: u32,
    #[serde(default)]
    opens_at: Option<u64>,
    #[serde(default)]
    max_admitted: Option<u32>,
    #[serde(default)]
    admission_ttl: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    token: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    reason: Option<String>,
}

/// Whether `path` is one of ours.
pub fn is_room_path(path: &str) -> bool {
    path.starts_with(PREFIX)
}

/// Answers one authenticated request to a room endpoint.
pub fn handle(rooms: &Rooms, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let result = match (method, rest.strip_suffix("/verify")) {
        ("POST", Some(name)) => verify(rooms, name, body),
        (_, Some(_)) => Err((405, "use POST for verify".to_string())),
        ("PUT", None) => put(rooms, rest, body),
        ("GET", None) => rooms
            .view(rest, now_ms())
            .map(|v| (200, serde_json::json!(v).to_string()))
            .map_err(refusal),
        ("DELETE", None) => delete(rooms, rest, body),
        _ => Err((405, "use PUT, GET or DELETE".to_string())),
    };
    match result {
        Ok(answer) => answer,
        Err((status, message)) => (status, serde_json::json!({ "error": message }).to_string()),
    }
}

type Answer = Result<(u16, String), (u16, String)>;

fn refusal(e: RoomError) -> (u16, String) {
    let status = match e {
        RoomError::Unknown(_) => 404,
        RoomError::NoSecret => 409,
        RoomError::TooMany => 429,
        RoomError::BadName(_) | RoomError::BadSettings(_) => 400,
        RoomError::Unavailable(_) => 503,
    };
    (status, e.to_string())
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, (u16, String)> {
    serde_json::from_slice(body).map_err(|e| (400, format!("body: {e}")))
}

fn put(rooms: &Rooms, name: &str, body: &[u8]) -> Answer {
    let b: PutBody = json(body)?;
    let ttl = b.admission_ttl.unwrap_or(rooms.defaults().admission_ttl_s);
    if b.admit_per_minute > MAX_ADMIT_PER_MINUTE {
        return Err((
            400,
            format!("admit_per_minute is at most {MAX_ADMIT_PER_MINUTE}"),
        ));
    }
    if ttl == 0 || ttl > MAX_ADMISSION_TTL_S {
        return Err((
            400,
            format!("admission_ttl must be 1..={MAX_ADMISSION_TTL_S} seconds"),
        ));
    }
    if b.max_admitted == Some(0) {
        return Err((400, "max_admitted must be at least 1".to_string()));
    }
    let settings = Settings {
        admit_per_minute: b.admit_per_minute,
        opens_at: b.opens_at,
        max_admitted: b.max_admitted,
        admission_ttl: ttl,
    };
    let created = rooms.put(name, settings, now_ms()).map_err(refusal)?;
    let view = rooms.view(name, now_ms()).map_err(refusal)?;
    Ok((
        if created { 201 } else { 200 },
        serde_json::json!(view).to_string(),
    ))
}

fn delete(rooms: &Rooms, name: &str, body: &[u8]) -> Answer {
    let b: DeleteBody = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteBody::default()
    } else {
        json(body)?
    };
    let reason = b.reason.as_deref().unwrap_or("the room was closed");
    rooms.close(name, reason).map_err(refusal)?;
    Ok((200, r#"{"closed":true}"#.to_string()))
}

fn verify(rooms: &Rooms, name: &str, body: &[u8]) -> Answer {
    let b: VerifyBody = json(body)?;
    let answer = match rooms.verify(name, &b.token, now_ms()).map_err(refusal)? {
        Verdict::Valid { place, expires } => {
            serde_json::json!({"valid": true, "ticket": place, "expires": expires})
        }
        Verdict::Invalid(e) => serde_json::json!({"valid": false, "reason": e.to_string()}),
    };
    Ok((200, answer.to_string()))
}
