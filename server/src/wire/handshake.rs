//! The HTTP/1.1 upgrade (RFC 6455 section 4): parsing a request head,
//! validating it as a WebSocket upgrade, the accept key, and the one table
//! from upgrade errors to HTTP statuses.
//!
//! It must not route, authorise or know about configuration beyond the values
//! it is handed; the caller decides what a path means and which origins pass.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// RFC 6455 section 1.3: the GUID appended to the key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
use crate::limits::{MAX_HEADERS, MAX_RESPONSE_HEAD};

/// A parsed request head, borrowing from the read buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Bytes the head took, including the blank line.
    pub head_len: usize,
    pub host: Option<&'a str>,
    pub upgrade: Option<&'a str>,
    pub connection: Option<&'a str>,
    pub version_header: Option<&'a str>,
    pub key: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// For plain-HTTP answers on the same port (cached assets).
    pub if_none_match: Option<&'a str>,
}

/// Why an upgrade was refused. All are fatal: the connection gets the status
/// from [`HandshakeError::status`] and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
    #[error("request head over {0} bytes")]
    HeadTooLarge(usize),
    #[error("method must be GET")]
    NotGet,
    #[error("HTTP/1.1 required")]
    NotHttp11,
    #[error("Host header missing")]
    NoHost,
    #[error("not a WebSocket upgrade (Upgrade: websocket and Connection: upgrade required)")]
    NotUpgrade,
    #[error("Sec-WebSocket-Version must be 13")]
    BadVersion,
    #[error("Sec-WebSocket-Key must be 16 bytes in base64")]
    BadKey,
    #[error("origin not allowed: {0}")]
    OriginNotAllowed(String),
    #[error("private channel refused: {0}")]
    Forbidden(String),
    #[error("no such path")]
    NotFound,
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("server at its connection limit")]
    AtCapacity,
    #[error("too many connections from your address")]
    PerAddress,
    #[error("request head not received in time")]
    Timeout,
}

impl HandshakeError {
    /// The HTTP status for each refusal; the one place this mapping lives.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::Malformed(_)
            | HandshakeError::NotGet
            | HandshakeError::NotHttp11
            | HandshakeError::NoHost
            | HandshakeError::NotUpgrade
            | HandshakeError::BadKey
            | HandshakeError::BadQuery(_) => 400,
            HandshakeError::HeadTooLarge(_) => 431,
            HandshakeError::BadVersion => 426,
            HandshakeError::OriginNotAllowed(_) | HandshakeError::Forbidden(_) => 403,
            HandshakeError::NotFound => 404,
            HandshakeError::AtCapacity | HandshakeError::PerAddress => 503,
            HandshakeError::Timeout => 408,
        }
    }

    /// A short stable label for metrics (`handshake_failures{reason=...}`).
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeError::Malformed(_) => "malformed",
            HandshakeError::HeadTooLarge(_) => "head_too_large",
            HandshakeError::NotGet => "not_get",
            HandshakeError::NotHttp11 => "not_http11",
            HandshakeError::NoHost => "no_host",
            HandshakeError::NotUpgrade => "not_upgrade",
            HandshakeError::BadVersion => "bad_version",
            HandshakeError::BadKey => "bad_key",
            HandshakeError::OriginNotAllowed(_) => "origin",
            HandshakeError::Forbidden(_) => "forbidden",
            HandshakeError::NotFound => "not_found",
            HandshakeError::BadQuery(_) => "bad_query",
            HandshakeError::AtCapacity => "at_capacity",
            HandshakeError::PerAddress => "per_address",
            HandshakeError::Timeout => "timeout",
        }
    }

    /// Every label, for metrics that must list all of them from the start.
    pub const LABELS: [&'static str; 15] = [
        "malformed",
        "head_too_large",
        "not_get",
        "not_http11",
        "no_host",
        "not_upgrade",
        "bad_version",
        "bad_key",
        "origin",
        "not_found",
        "bad_query",
        "at_capacity",
        "timeout",
        "forbidden",
        "per_address",
    ];

    /// Index into [`Self::LABELS`].
    pub fn index(&self) -> usize {
        let label = self.label();
        Self::LABELS.iter().position(|l| *l == label).unwrap_or(0)
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet; past `max_head` bytes
/// without a complete head the answer is [`HandshakeError::HeadTooLarge`].
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<Request<'_>>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(HandshakeError::HeadTooLarge(max_head))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::Malformed("too many headers"))
        }
        Err(_) => return Err(HandshakeError::Malformed("unparsable request head")),
    };
    if head_len > max_head {
        return Err(HandshakeError::HeadTooLarge(max_head));
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = Request {
        method: req.method.unwrap_or(""),
        path,
        query,
        head_len,
        host: None,
        upgrade: None,
        connection: None,
        version_header: None,
        key: None,
        origin: None,
        if_none_match: None,
    };
    if req.version != Some(1) {
        return Err(HandshakeError::NotHttp11);
    }
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            continue;
        };
        let slot = if h.name.eq_ignore_ascii_case("host") {
            &mut out.host
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            &mut out.upgrade
        } else if h.name.eq_ignore_ascii_case("connection") {
            &mut out.connection
        } else if h.name.eq_ignore_ascii_case("sec-websocket-version") {
            &mut out.version_header
        } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
            &mut out.key
        } else if h.name.eq_ignore_ascii_case("origin") {
            &mut out.origin
        } else if h.name.eq_ignore_ascii_case("if-none-match") {
            &mut out.if_none_match
        } else {
            continue;
        };
        *slot = Some(value.trim());
    }
    Ok(Some(out))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Checks that `req` is a valid WebSocket upgrade and returns its
/// `Sec-WebSocket-Accept` value.
pub fn validate_upgrade(req: &Request<'_>) -> Result<String, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if req.host.is_none() {
        return Err(HandshakeError::NoHost);
    }
    if !has_token(req.upgrade, "websocket") || !has_token(req.connection, "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    if req.version_header != Some("13") {
        return Err(HandshakeError::BadVersion);
    }
    let key = req.key.ok_or(HandshakeError::BadKey)?;
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(accept_key(key)),
        _ => Err(HandshakeError::BadKey),
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A plain-text refusal for `err`, with the headers its status requires.
pub fn refusal(err: &HandshakeError, retry_after_secs: u32) -> Vec<u8> {
    let status = err.status();
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let extra = match err {
        HandshakeError::BadVersion => "Sec-WebSocket-Version: 13\r\n".to_string(),
        HandshakeError::AtCapacity | HandshakeError::PerAddress => {
            format!("Retry-After: {retry_after_secs}\r\n")
        }
        _ => String::new(),
    };
    let body = format!("{err}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A server's answer to an upgrade request, as a client sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeResponse {
    pub status: u16,
    /// Bytes the head took; frames may follow in the same buffer.
    pub head_len: usize,
    /// Whether a 101 carried the `Sec-WebSocket-Accept` our key demands.
    pub accepted: bool,
    /// `Retry-After` seconds of a 503.
    pub retry_after: Option<u32>,
}

/// Parses the answer to an upgrade request sent with `key` (client side:
/// client-sim). `Ok(None)`: the head is not complete yet.
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<UpgradeResponse>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            return Err(HandshakeError::HeadTooLarge(MAX_RESPONSE_HEAD))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HandshakeError::Malformed("unparsable response head")),
    };
    let header = |name: &str| {
        res.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let status = res.code.unwrap_or(0);
    let accepted =
        status == 101 && header("sec-websocket-accept") == Some(accept_key(key).as_str());
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    Ok(Some(UpgradeResponse {
        status,
        head_len,
        accepted,
        retry_after,
    }))
}

/// A client's upgrade request, for client-sim and raw-socket tests.
pub fn client_request(host: &str, path_and_query: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /ws?ch=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://a.example\r\n\r\n";

    #[test]
    fn rfc6455_sample_key_gives_sample_accept() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn good_request_is_accepted() {
        let req = parse_request(GOOD.as_bytes(), 8192).unwrap().unwrap();
        assert_eq!(
            (req.path, req.query, req.origin),
            ("/ws", Some("ch=a"), Some("http://a.example"))
        );
        assert_eq!(req.head_len, GOOD.len());
        assert_eq!(
            validate_upgrade(&req).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn each_defect_maps_to_its_status() {
        let cases: &[(&str, &str, u16)] = &[
            ("GET /ws", "POST /ws", 400),
            ("Upgrade: websocket", "Upgrade: h2c", 400),
            ("keep-alive, Upgrade", "keep-alive", 400),
            ("Version: 13", "Version: 8", 426),
            ("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=", 400),
            ("Host: x\r\n", "", 400),
        ];
        for (from, to, status) in cases {
            let text = GOOD.replace(from, to);
            let req = parse_request(text.as_bytes(), 8192).unwrap().unwrap();
            let err = validate_upgrade(&req).unwrap_err();
            assert_eq!(err.status(), *status, "{from} -> {to}: {err}");
        }
        let old = GOOD.replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(
            parse_request(old.as_bytes(), 8192).unwrap_err(),
            HandshakeError::NotHttp11
        );
    }

    #[test]
    fn partial_head_waits_and_oversized_head_is_431() {
        assert!(parse_request(&GOOD.as_bytes()[..40], 8192)
            .unwrap()
            .is_none());
        let big = format!("GET /ws HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(
            parse_request(big.as_bytes(), 8192).unwrap_err().status(),
            431
        );
        assert_eq!(
            parse_request(b"\x00\x01garbage\r\n\r\n", 8192)
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn client_side_response_parsing_checks_the_accept_key() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = switching_protocols(&accept_key(key));
        let r = parse_response(&ok, key).unwrap().unwrap();
        assert_eq!((r.status, r.accepted, r.head_len), (101, true, ok.len()));
        let wrong = switching_protocols("bm9wZQ==");
        assert!(!parse_response(&wrong, key).unwrap().unwrap().accepted);
        let busy = refusal(&HandshakeError::AtCapacity, 3);
        let r = parse_response(&busy, key).unwrap().unwrap();
        assert_eq!((r.status, r.retry_after), (503, Some(3)));
        assert!(parse_response(&ok[..10], key).unwrap().is_none());
    }

    #[test]
    fn refusals_carry_their_required_headers() {
        let text = String::from_utf8(refusal(&HandshakeError::BadVersion, 1)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 ") && text.contains("Sec-WebSocket-Version: 13\r\n")
        );
        let text = String::from_utf8(refusal(&HandshakeError::AtCapacity, 7)).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 ") && text.contains("Retry-After: 7\r\n"));
    }
}
