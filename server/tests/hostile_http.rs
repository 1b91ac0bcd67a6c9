//! Attacks on the publish API and admin port, done for real on loopback:
//! half-open and trickled requests, oversized heads and bodies, and more
//! connections than the port takes, while a well-behaved publisher, a
//! subscriber and the admin port are served throughout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// A raw connection that sends `bytes` and keeps the socket open.
fn send_and_hold(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = raw(addr);
    s.write_all(bytes).expect("write");
    s
}

/// Everything the server sends until it closes (or the read times out).
fn read_answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Publishes once and returns how long the answer took.
fn timed_publish(server: &surge::Server, n: usize) -> Duration {
    let started = Instant::now();
    publish(server, "calm", &n.to_string());
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_publish_requests_never_stop_another_publisher() {
    let server = start(&["--max-publish-body", "64KiB", "--max-publish-data", "16KiB"]);
    let mut subscriber = connect(&server, "?ch=calm").await;
    assert_eq!(next_json(&mut subscriber).await["op"], "subscribed");
    let addr = server.publish_addr;
    // 40 half-open requests (tiny_http stopped publishing at 4), a trickled
    // body, a lying Content-Length and a chunked body past the limit.
    let half_open: Vec<_> = (0..40)
        .map(|_| send_and_hold(addr, b"POST /api/publish HTTP/1.1\r\nHost: t\r\n"))
        .collect();
    let mut trickled = send_and_hold(
        addr,
        b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{\"ch\":",
    );
    let mut huge_declared = send_and_hold(
        addr,
        b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n",
    );
    let mut chunked = send_and_hold(
        addr,
        b"POST /api/publish HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let chunk = format!("8000\r\n{}\r\n", "x".repeat(0x8000));
    for _ in 0..3 {
        // The server may cut us off before all of it is written.
        if chunked.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let mut slowest = Duration::ZERO;
    for n in 0..20 {
        slowest = slowest.max(timed_publish(&server, n));
        let (status, _) = admin_get(&server, "/healthz");
        assert_eq!(status, 200);
    }
    for n in 0..20 {
        let v = next_json(&mut subscriber).await;
        assert_eq!(v["data"], n, "every publication arrives in order");
    }
    let answer = read_answer(&mut huge_declared);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A streamed body is cut at the limit: the peer sees the 413, or (when
    // the reset for its unread bytes overtakes the answer) just the end.
    let answer = tokio::task::spawn_blocking(move || read_answer(&mut chunked))
        .await
        .unwrap();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 413"),
        "{answer}"
    );
    assert_eq!(metric(&server, "surge_publish_rejected_total"), 2);
    eprintln!("slowest publish under attack: {slowest:?}");
    // The trickled body is still pending: its connection is alive but
    // holds nothing but its own buffer.
    trickled
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        trickled.read(&mut byte).is_err(),
        "no answer before its body"
    );
    drop(half_open);
    server.shutdown();
}

#[test]
fn oversized_heads_are_refused_431_on_both_ports() {
    let server = start(&[]);
    let long = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(9000)
    );
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    for addr in [server.admin_addr, server.publish_addr] {
        for request in [&long, &many] {
            let answer = raw_http(addr, request.as_bytes());
            assert!(answer.starts_with("HTTP/1.1 431"), "{addr}: {answer}");
        }
    }
    let (status, _) = admin_get(&server, "/healthz");
    assert_eq!(status, 200);
    server.shutdown();
}

#[test]
fn connections_past_the_publish_cap_get_503_and_admin_still_answers() {
    let server = start(&[]);
    let cap = surge::limits::MAX_PUBLISH_CONNECTIONS;
    let held: Vec<_> = (0..cap)
        .map(|_| send_and_hold(server.publish_addr, b"POST /api/publish HTTP/1.1\r\n"))
        .collect();
    // The accept loop registers the held ones before the next; give it a
    // bounded moment to see them all, then one more is turned away.
    let mut answer = String::new();
    for _ in 0..50 {
        answer = raw_http(server.publish_addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        if answer.starts_with("HTTP/1.1 503") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 1"), "{answer}");
    let (status, _) = admin_get(&server, "/healthz");
    assert_eq!(status, 200);
    assert!(metric(&server, "surge_http_busy_total{port=\"publish\"}") >= 1);
    drop(held);
    // Once they are gone, publishing works again.
    let mut published = false;
    for _ in 0..50 {
        let url = format!("http://{}/api/publish", server.publish_addr);
        if ureq::post(&url)
            .timeout(WAIT)
            .send_string(r#"{"ch":"a","data":1}"#)
            .is_ok()
        {
            published = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(published, "publishing resumes when the flood ends");
    server.shutdown();
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = start(&[]);
    let mut s = raw(server.publish_addr);
    let body = r#"{"ch":"k","data":1}"#;
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = [0u8; 4096];
    for _ in 0..5 {
        s.write_all(request.as_bytes()).unwrap();
        let n = s.read(&mut buf).unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    server.shutdown();
}
