//! The public port's few plain-HTTP answers: the page and its assets,
//! embedded in the binary (no files needed at run time), with correct types,
//! revalidation by ETag, and HEAD. Everything that is not `/ws`, an asset or
//! a demo endpoint is 404. It must not know about WebSockets or workers.

use std::sync::OnceLock;

/// An embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../assets/index.html"),
    },
    Asset {
        path: "/surge.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/surge.js"),
    },
    Asset {
        path: "/board.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/board.js"),
    },
    Asset {
        path: "/board.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/board.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../assets/favicon.svg"),
    },
];

/// The page may talk to its own origin only (and its WebSocket).
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'";

/// A strong validator per asset: FNV-1a of its bytes, computed once. The
/// assets change only with the binary, so browsers revalidate (no-cache)
/// and get 304 until the server is upgraded.
fn etag(index: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let hash = a.body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                });
                format!("\"{hash:016x}\"")
            })
            .collect()
    });
    tags.get(index).map_or("\"\"", String::as_str)
}

/// A whole HTTP/1.1 response that closes the connection.
pub fn response(
    status: u16,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    if !head_only && status != 304 {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// The answer for an embedded asset at `path`, or `None` when there is none.
pub fn asset(method: &str, path: &str, if_none_match: Option<&str>) -> Option<Vec<u8>> {
    let index = ASSETS
        .iter()
        .position(|a| a.path == path || (a.path == "/" && path == "/index.html"))?;
    let asset = &ASSETS[index];
    if method != "GET" && method != "HEAD" {
        return Some(response(
            405,
            "text/plain; charset=utf-8",
            &[("Allow", "GET, HEAD")],
            b"use GET\n",
            false,
        ));
    }
    let tag = etag(index);
    let headers = [
        ("Cache-Control", "no-cache"),
        ("ETag", tag),
        ("Content-Security-Policy", CSP),
    ];
    let fresh =
        if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let status = if fresh { 304 } else { 200 };
    Some(response(
        status,
        asset.content_type,
        &headers,
        asset.body,
        method == "HEAD",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_have_types_validators_and_head() {
        let page = String::from_utf8(asset("GET", "/", None).unwrap()).unwrap();
        assert!(page.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html"));
        let tag = page
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .unwrap()
            .to_string();
        let again = String::from_utf8(asset("GET", "/", Some(&tag)).unwrap()).unwrap();
        assert!(again.starts_with("HTTP/1.1 304") && again.ends_with("\r\n\r\n"));
        let head = String::from_utf8(asset("HEAD", "/surge.js", None).unwrap()).unwrap();
        assert!(head.contains("text/javascript") && head.ends_with("\r\n\r\n"));
        assert!(
            String::from_utf8(asset("POST", "/board.css", None).unwrap())
                .unwrap()
                .starts_with("HTTP/1.1 405")
        );
        assert!(asset("GET", "/etc/passwd", None).is_none());
    }
}
