//! Plain HTTP on the public port: the embedded page and assets with their
//! types and validators, 404 for everything else, and the demo endpoints
//! only with --demo.

mod common;

use common::*;

fn get(server: &surge::Server, request: &str) -> String {
    raw_http(server.public_addr, request.as_bytes())
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[test]
fn the_page_and_its_assets_are_served_with_types_and_revalidation() {
    let server = start(&[]);
    for (path, ty) in [
        ("/", "text/html; charset=utf-8"),
        ("/surge.js", "text/javascript; charset=utf-8"),
        ("/board.js", "text/javascript; charset=utf-8"),
        ("/board.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let answer = get(&server, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{path}: {answer}");
        assert_eq!(header(&answer, "Content-Type"), Some(ty), "{path}");
        assert_eq!(header(&answer, "Cache-Control"), Some("no-cache"));
        let etag = header(&answer, "ETag").expect("ETag").to_string();
        let again = get(
            &server,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n"),
        );
        assert!(
            again.starts_with("HTTP/1.1 304") && again.ends_with("\r\n\r\n"),
            "{again}"
        );
    }
    let head = get(&server, "HEAD /surge.js HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "HEAD has no body"
    );
    let post = get(
        &server,
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(
        post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"),
        "{post}"
    );
    let page = get(&server, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        page.contains("Content-Security-Policy: default-src 'self'") && page.contains("/board.js")
    );
    server.shutdown();
}

#[test]
fn everything_else_is_404_and_demo_endpoints_need_demo_mode() {
    let server = start(&[]);
    for path in ["/nope", "/demo/session", "/../etc/passwd", "/surge.js.map"] {
        let answer = get(&server, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
    }
    server.shutdown();
}

#[test]
fn demo_mode_gives_sessions_with_tokens_and_takes_bookings() {
    let server = start(&["--demo"]);
    let answer = get(&server, "GET /demo/session HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let session: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(session["clinics"].as_array().map(|c| c.len()), Some(3));
    let user = session["user"].as_str().unwrap();
    let bad = get(
        &server,
        "POST /demo/book?clinic=nowhere HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let ok = get(
        &server,
        &format!("POST /demo/book?clinic=riverside&slot=09:00&user={user} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"),
    );
    assert!(ok.starts_with("HTTP/1.1 202"), "{ok}");
    server.shutdown();
}
