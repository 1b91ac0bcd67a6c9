//! Tokens for private channels (booking confirmations on `user/ID`).
//!
//! Form (URL-safe, no padding): `SCOPE.EXPIRY.SIGNATURE`, where SCOPE is the
//! base64url of a channel name (or of a prefix ending in `*`, which covers
//! the names under that prefix and a `/`: `user/88*` and `user/88/*` both
//! cover `user/88/receipts`, never `user/881234`), EXPIRY is Unix
//! seconds in decimal, and SIGNATURE is the base64url of
//! HMAC-SHA256(secret, "SCOPE.EXPIRY") over the first two parts as sent.
//! The booking backend mints them with the shared secret; Surge only checks.
//! The signature is checked in constant time before anything else is trusted.
//! During a rotation a second, older secret is accepted too
//! (`--token-secret-previous`), so tokens minted just before the switch
//! keep working until they expire; new tokens are minted with the current one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused; each is counted by label in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a token is required for this channel")]
    Missing,
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is not valid")]
    BadSignature,
    #[error("token is for another channel")]
    WrongChannel,
    #[error("token has expired")]
    Expired,
    #[error("private channels are disabled: no token secret is configured")]
    NoSecret,
}

impl TokenError {
    pub const LABELS: [&'static str; 6] = [
        "missing",
        "malformed",
        "bad_signature",
        "wrong_channel",
        "expired",
        "no_secret",
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The shared secret (and, during a rotation, the previous one), keyed once
/// at start; each check clones the keyed state instead of re-keying.
#[derive(Clone)]
pub struct TokenKey {
    mac: HmacSha256,
    previous: Option<HmacSha256>,
}

impl TokenKey {
    /// `None` only if HMAC refused the key, which it does for no length.
    pub fn new(secret: &[u8]) -> Option<TokenKey> {
        HmacSha256::new_from_slice(secret).ok().map(|mac| TokenKey {
            mac,
            previous: None,
        })
    }

    /// Also accepts tokens signed with `previous` (verification only).
    pub fn with_previous(mut self, previous: &[u8]) -> Option<TokenKey> {
        self.previous = Some(HmacSha256::new_from_slice(previous).ok()?);
        Some(self)
    }

    fn mac(&self, signed: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac
    }

    /// Whether `sig` signs `signed` under the current or previous secret;
    /// each comparison is constant-time.
    fn signed_by_us(&self, signed: &str, sig: &[u8]) -> bool {
        let check = |mac: &HmacSha256| {
            let mut mac = mac.clone();
            mac.update(signed.as_bytes());
            mac.verify_slice(sig).is_ok()
        };
        check(&self.mac) || self.previous.as_ref().is_some_and(check)
    }

    /// A token for `scope` (a channel, or a prefix ending in `*`) valid until
    /// `expires` (Unix seconds).
    pub fn mint(&self, scope: &str, expires: u64) -> String {
        let signed = format!("{}.{expires}", B64.encode(scope));
        let sig = self.mac(&signed).finalize().into_bytes();
        format!("{signed}.{}", B64.encode(sig))
    }

    /// Checks that `token` lets its holder subscribe to `channel` at `now`.
    pub fn verify(&self, token: &str, channel: &str, now: u64) -> Result<(), TokenError> {
        self.verify_until(token, channel, now).map(|_| ())
    }

    /// As [`TokenKey::verify`], returning the token's expiry (Unix seconds).
    pub fn verify_until(&self, token: &str, channel: &str, now: u64) -> Result<u64, TokenError> {
        let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (scope, expires) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        if !self.signed_by_us(signed, &sig) {
            return Err(TokenError::BadSignature);
        }
        let scope = B64.decode(scope).map_err(|_| TokenError::Malformed)?;
        let scope = std::str::from_utf8(&scope).map_err(|_| TokenError::Malformed)?;
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        if !covers(scope, channel) {
            return Err(TokenError::WrongChannel);
        }
        if now > expires {
            return Err(TokenError::Expired);
        }
        Ok(expires)
    }
}

/// Whether a token for `scope` covers `channel`: the name itself, or for a
/// prefix scope (`P*` or `P/*`) the names under `P/`, so that a token for
/// user 88 never opens user 881234's channel.
fn covers(scope: &str, channel: &str) -> bool {
    let Some(prefix) = scope.strip_suffix('*') else {
        return scope == channel;
    };
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    channel
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|under| !under.is_empty())
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a shared secret of enough length";

    fn mint(secret: &[u8], scope: &str, exp: u64) -> String {
        TokenKey::new(secret).unwrap().mint(scope, exp)
    }

    fn verify(secret: &[u8], token: &str, channel: &str, now: u64) -> Result<(), TokenError> {
        TokenKey::new(secret).unwrap().verify(token, channel, now)
    }

    #[test]
    fn tokens_verify_for_their_channel_until_expiry() {
        let t = mint(SECRET, "user/8812", 1000);
        assert_eq!(verify(SECRET, &t, "user/8812", 999), Ok(()));
        assert_eq!(
            verify(SECRET, &t, "user/8812", 1001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(SECRET, &t, "user/8813", 999),
            Err(TokenError::WrongChannel)
        );
        assert_eq!(
            verify(b"another secret entirely....", &t, "user/8812", 999),
            Err(TokenError::BadSignature)
        );
        let p = mint(SECRET, "user/8812/*", 1000);
        assert_eq!(verify(SECRET, &p, "user/8812/confirmations", 999), Ok(()));
        assert_eq!(
            verify(SECRET, &p, "user/88120", 999),
            Err(TokenError::WrongChannel)
        );
    }

    #[test]
    fn a_prefix_covers_only_names_under_it_and_a_slash() {
        for scope in ["user/88*", "user/88/*"] {
            let t = mint(SECRET, scope, 1000);
            assert_eq!(verify(SECRET, &t, "user/88/receipts", 1), Ok(()), "{scope}");
            for other in ["user/881234", "user/88", "user/88/", "user/8"] {
                assert_eq!(
                    verify(SECRET, &t, other, 1),
                    Err(TokenError::WrongChannel),
                    "{scope} must not cover {other}"
                );
            }
        }
    }

    #[test]
    fn the_previous_secret_still_verifies_during_a_rotation() {
        let old = mint(b"the old secret, long enough....", "user/1", 1000);
        let key = TokenKey::new(SECRET).unwrap();
        assert_eq!(key.verify(&old, "user/1", 1), Err(TokenError::BadSignature));
        let rotating = key
            .with_previous(b"the old secret, long enough....")
            .unwrap();
        assert_eq!(rotating.verify(&old, "user/1", 1), Ok(()));
        assert_eq!(
            rotating.verify(&rotating.mint("user/1", 9), "user/1", 1),
            Ok(())
        );
        assert_eq!(
            verify(
                b"the old secret, long enough....",
                &rotating.mint("user/1", 9),
                "user/1",
                1
            ),
            Err(TokenError::BadSignature),
            "new tokens are signed with the current secret"
        );
    }

    #[test]
    fn tampering_is_a_bad_signature_and_junk_is_malformed() {
        let t = mint(SECRET, "user/1", 1000);
        let (scope, rest) = t.split_once('.').unwrap();
        let forged = format!("{}.{rest}", B64.encode("user/2"));
        assert_eq!(
            verify(SECRET, &forged, "user/2", 999),
            Err(TokenError::BadSignature)
        );
        let later = t.replacen(".1000.", ".9999.", 1);
        assert_eq!(
            verify(SECRET, &later, "user/1", 999),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(SECRET, "junk", "user/1", 0),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify(SECRET, &format!("{scope}.x.!!"), "user/1", 0),
            Err(TokenError::Malformed)
        );
    }
}
