//! Malformed or refused upgrades: each gets its exact HTTP status before any
//! upgrade, and a healthy subscriber on the same server is unaffected.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use surge::wire::frame::OpCode;
use surge::Server;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn request(method_path: &str, headers: &str) -> Vec<u8> {
    format!("{method_path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n").into_bytes()
}

fn upgrade_headers(version: &str, key: &str) -> String {
    format!("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: {key}\r\n")
}

/// A subscriber to "healthy" that must keep receiving whatever others do.
fn healthy(server: &Server) -> TcpStream {
    let mut s = raw_ws(server.public_addr, "/ws?ch=healthy");
    let (_, reply) = read_frame(&mut s).expect("subscribed reply");
    assert_eq!(reply, br#"{"op":"subscribed","ch":"healthy"}"#);
    s
}

fn assert_still_served(server: &Server, s: &mut TcpStream) {
    publish(server, "healthy", "1");
    let (op, payload) = read_frame(s).expect("publication");
    assert_eq!(op, OpCode::Text);
    assert_publication(&payload, "healthy", serde_json::json!(1));
}

fn status_of(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn each_malformed_upgrade_gets_its_status_and_others_are_unaffected() {
    let server = start(&[]);
    let mut ok = healthy(&server);
    let good = upgrade_headers("13", KEY);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("POST instead of GET", request("POST /ws", &good), 400),
        (
            "no Upgrade header",
            request("GET /ws", &good.replace("Upgrade: websocket\r\n", "")),
            400,
        ),
        (
            "Connection without upgrade",
            request(
                "GET /ws",
                &good.replace("Connection: Upgrade", "Connection: close"),
            ),
            400,
        ),
        (
            "version 8",
            request("GET /ws", &upgrade_headers("8", KEY)),
            426,
        ),
        (
            "key not 16 bytes",
            request("GET /ws", &upgrade_headers("13", "c2hvcnQ=")),
            400,
        ),
        (
            "key not base64",
            request(
                "GET /ws",
                &upgrade_headers("13", "!!!!!!!!!!!!!!!!!!!!!!!!"),
            ),
            400,
        ),
        ("unknown path", request("GET /nope", &good), 404),
        (
            "bad channel in query",
            request("GET /ws?ch=no%20spaces", &good),
            400,
        ),
        (
            "HTTP/1.0",
            format!("GET /ws HTTP/1.0\r\nHost: t\r\n{good}\r\n").into_bytes(),
            400,
        ),
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        (
            "no Host",
            format!("GET /ws HTTP/1.1\r\n{good}\r\n").into_bytes(),
            400,
        ),
    ];
    for (what, bytes, status) in cases {
        let answer = raw_http(server.public_addr, &bytes);
        assert_eq!(status_of(&answer), status, "{what}: {answer}");
        assert!(
            answer.contains("Content-Type: text/plain"),
            "{what}: {answer}"
        );
    }
    let answer = raw_http(
        server.public_addr,
        &request("GET /ws", &upgrade_headers("8", KEY)),
    );
    assert!(
        answer.contains("Sec-WebSocket-Version: 13\r\n"),
        "426 names the version: {answer}"
    );
    assert_still_served(&server, &mut ok);
    assert_eq!(
        metric(
            &server,
            "surge_handshake_failures_total{reason=\"bad_version\"}"
        ),
        2
    );
    assert_eq!(
        metric(
            &server,
            "surge_handshake_failures_total{reason=\"not_found\"}"
        ),
        1
    );
    server.shutdown();
}

#[test]
fn oversized_request_head_is_431() {
    let server = start(&[]);
    let mut ok = healthy(&server);
    let big = format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\nX-Junk: {}\r\n\r\n",
        "j".repeat(9000)
    );
    let answer = raw_http(server.public_addr, big.as_bytes());
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert_still_served(&server, &mut ok);
    server.shutdown();
}

#[test]
fn slowloris_client_is_closed_after_the_handshake_timeout() {
    let server = start(&["--handshake-timeout", "1s"]);
    let mut ok = healthy(&server);
    let mut slow = raw(server.public_addr);
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgr")
        .unwrap();
    let mut answer = String::new();
    // The server answers 408 and closes by itself; read_to_string ends at EOF.
    slow.read_to_string(&mut answer)
        .expect("server closes the socket");
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert_still_served(&server, &mut ok);
    assert_eq!(
        metric(
            &server,
            "surge_handshake_failures_total{reason=\"timeout\"}"
        ),
        1
    );
    server.shutdown();
}

#[test]
fn origin_allow_list_is_enforced_with_403() {
    let server = start(&[
        "--allowed-origin",
        "https://book.example,https://clinic.example",
    ]);
    let good = upgrade_headers("13", KEY);
    let with_origin = |origin: &str| request("GET /ws", &format!("{good}Origin: {origin}\r\n"));
    let mut allowed = raw(server.public_addr);
    allowed
        .write_all(&with_origin("https://clinic.example"))
        .unwrap();
    let mut head = [0u8; 12];
    allowed.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    assert_eq!(
        status_of(&raw_http(
            server.public_addr,
            &with_origin("https://evil.example")
        )),
        403
    );
    // No Origin: not a browser, and not what the list protects against.
    let mut no_origin = raw(server.public_addr);
    no_origin.write_all(&request("GET /ws", &good)).unwrap();
    no_origin.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    server.shutdown();
}

#[test]
fn at_the_connection_limit_upgrades_get_503_with_retry_after() {
    let server = start(&["--max-connections", "2", "--retry-after", "7s"]);
    let mut ok = healthy(&server);
    let _second = raw_ws(server.public_addr, "/ws");
    let answer = raw_http(
        server.public_addr,
        &request("GET /ws", &upgrade_headers("13", KEY)),
    );
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("Retry-After: 7\r\n"), "{answer}");
    assert_still_served(&server, &mut ok);
    // A place frees up when someone leaves.
    drop(_second);
    let mut third = None;
    for _ in 0..100 {
        let mut s = raw(server.public_addr);
        s.write_all(&request("GET /ws", &upgrade_headers("13", KEY)))
            .unwrap();
        let mut head = [0u8; 12];
        if s.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 101" {
            third = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(third.is_some(), "a freed place is given to the next client");
    server.shutdown();
}
