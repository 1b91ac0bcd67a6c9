//! Waiting-room tickets and admission tokens: their text form, signed with
//! the token secret through [`TokenKey::sign`] (HMAC-SHA256, base64url
//! without padding, as private channel tokens are). Format only; what a
//! ticket is worth is the room's business (`room.rs`).
//!
//! - Ticket: `KIND.ROOM.EPOCH.NUMBER.SIG`. KIND is `p` (joined before the
//!   opening: NUMBER is the arrival serial, mapped to a place by the shuffle
//!   at opening) or `q` (joined after: NUMBER is the place in line).
//! - Admission: `a.ROOM.EPOCH.PLACE.EXPIRES.SIG`.
//!
//! ROOM is the base64url of the room name, EPOCH the room's generation in
//! hex (a room deleted and created again does not honour the old one's
//! tickets), EXPIRES Unix seconds, and SIG the base64url of
//! HMAC-SHA256(secret, everything before the last dot).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;

use crate::channels::token::{TokenError, TokenKey};

/// Which line a ticket's number counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Spot {
    /// Joined before the opening: the arrival serial.
    Pre(u64),
    /// A place in line.
    Line(u64),
}

/// Why a ticket or admission token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("malformed")]
    Malformed,
    #[error("signature is not valid")]
    BadSignature,
    #[error("for another room")]
    OtherRoom,
    #[error("expired")]
    Expired,
}

impl From<TokenError> for TicketError {
    fn from(e: TokenError) -> TicketError {
        match e {
            TokenError::BadSignature => TicketError::BadSignature,
            _ => TicketError::Malformed,
        }
    }
}

/// A checked admission token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub epoch: u64,
    pub place: u64,
    pub expires: u64,
}

/// A ticket for `spot` in the room `room` of generation `epoch`.
pub fn mint_ticket(key: &TokenKey, room: &str, epoch: u64, spot: Spot) -> String {
    let (kind, n) = match spot {
        Spot::Pre(n) => ('p', n),
        Spot::Line(n) => ('q', n),
    };
    key.sign(&format!("{kind}.{}.{epoch:x}.{n}", B64.encode(room)))
}

/// Checks a ticket's signature and room; returns its generation and spot.
pub fn read_ticket(key: &TokenKey, ticket: &str, room: &str) -> Result<(u64, Spot), TicketError> {
    let payload = key.open(ticket)?;
    let mut parts = payload.split('.');
    let (Some(kind), Some(name), Some(epoch), Some(n), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TicketError::Malformed);
    };
    check_room(name, room)?;
    let epoch = u64::from_str_radix(epoch, 16).map_err(|_| TicketError::Malformed)?;
    let n: u64 = n.parse().map_err(|_| TicketError::Malformed)?;
    match kind {
        "p" => Ok((epoch, Spot::Pre(n))),
        "q" => Ok((epoch, Spot::Line(n))),
        _ => Err(TicketError::Malformed),
    }
}

/// An admission token for `place`, valid until `expires` (Unix seconds).
pub fn mint_admission(key: &TokenKey, room: &str, a: Admission) -> String {
    key.sign(&format!(
        "a.{}.{:x}.{}.{}",
        B64.encode(room),
        a.epoch,
        a.place,
        a.expires
    ))
}

/// Checks an admission token's signature, room and expiry at `now` (Unix
/// seconds).
pub fn read_admission(
    key: &TokenKey,
    token: &str,
    room: &str,
    now: u64,
) -> Result<Admission, TicketError> {
    let payload = key.open(token)?;
    let parts: Vec<&str> = payload.split('.').collect();
    let ["a", name, epoch, place, expires] = parts[..] else {
        return Err(TicketError::Malformed);
    };
    check_room(name, room)?;
    let admission = Admission {
        epoch: u64::from_str_radix(epoch, 16).map_err(|_| TicketError::Malformed)?,
        place: place.parse().map_err(|_| TicketError::Malformed)?,
        expires: expires.parse().map_err(|_| TicketError::Malformed)?,
    };
    if now > admission.expires {
        return Err(TicketError::Expired);
    }
    Ok(admission)
}

fn check_room(encoded: &str, room: &str) -> Result<(), TicketError> {
    let name = B64.decode(encoded).map_err(|_| TicketError::Malformed)?;
    if name == room.as_bytes() {
        Ok(())
    } else {
        Err(TicketError::OtherRoom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &[u8]) -> TokenKey {
        TokenKey::new(secret).unwrap()
    }

    #[test]
    fn tickets_read_back_only_for_their_room_and_key() {
        let k = key(b"a secret of sixteen or more");
        let cases = [
            Spot::Pre(0),
            Spot::Pre(77),
            Spot::Line(0),
            Spot::Line(u64::MAX),
        ];
        for spot in cases {
            let t = mint_ticket(&k, "clinic/7", 0xabc, spot);
            assert_eq!(read_ticket(&k, &t, "clinic/7"), Ok((0xabc, spot)));
            assert_eq!(read_ticket(&k, &t, "clinic/8"), Err(TicketError::OtherRoom));
            assert_eq!(
                read_ticket(&key(b"another secret, also long"), &t, "clinic/7"),
                Err(TicketError::BadSignature)
            );
        }
    }

    #[test]
    fn altered_tickets_and_cross_use_are_refused() {
        let k = key(b"a secret of sixteen or more");
        let t = mint_ticket(&k, "r", 1, Spot::Line(500));
        let moved = t.replacen(".500.", ".5.", 1);
        assert_eq!(read_ticket(&k, &moved, "r"), Err(TicketError::BadSignature));
        let kind = t.replacen("q.", "p.", 1);
        assert_eq!(read_ticket(&k, &kind, "r"), Err(TicketError::BadSignature));
        // A ticket is not an admission, nor a channel token one of them.
        assert_eq!(read_admission(&k, &t, "r", 0), Err(TicketError::Malformed));
        let channel = k.mint("r", 10);
        assert_eq!(read_ticket(&k, &channel, "r"), Err(TicketError::Malformed));
        assert!(k.verify(&t, "r", 0).is_err());
        assert_eq!(read_ticket(&k, "junk", "r"), Err(TicketError::Malformed));
    }

    #[test]
    fn admissions_verify_until_expiry_for_their_room() {
        let k = key(b"a secret of sixteen or more");
        let a = Admission {
            epoch: 9,
            place: 12,
            expires: 1000,
        };
        let t = mint_admission(&k, "sale", a);
        assert_eq!(read_admission(&k, &t, "sale", 1000), Ok(a));
        assert_eq!(
            read_admission(&k, &t, "sale", 1001),
            Err(TicketError::Expired)
        );
        assert_eq!(
            read_admission(&k, &t, "sale2", 10),
            Err(TicketError::OtherRoom)
        );
        let later = t.replacen(".1000.", ".9000.", 1);
        assert_eq!(
            read_admission(&k, &later, "sale", 10),
            Err(TicketError::BadSignature)
        );
    }
}
