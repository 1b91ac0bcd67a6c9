//! Shared helpers for integration tests: start a real server on ephemeral
//! loopback ports, talk to it with tokio-tungstenite (a client we did not
//! write), raw sockets for bad input, and ureq for the HTTP ports.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use surge::wire::frame::{decode_header, encode_frame, OpCode, Role};
use surge::wire::handshake::client_request;
use surge::{Config, Server};
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TokioTcp>>;

/// Bound on every wait in tests, so a bug fails a test instead of hanging CI.
pub const WAIT: Duration = Duration::from_secs(10);

/// A config on ephemeral loopback ports with two workers.
pub fn config(extra: &[&str]) -> Config {
    let mut args = vec!["surge"];
    args.extend_from_slice(&surge::config::EPHEMERAL_LOOPBACK);
    args.extend_from_slice(&[
        "--workers",
        "2",
        "--log",
        "warn",
        "--shutdown-timeout",
        "1s",
    ]);
    args.extend_from_slice(extra);
    Config::load_from(args).expect("test config is valid")
}

pub fn start(extra: &[&str]) -> Server {
    Server::start(config(extra)).expect("server starts")
}

pub async fn connect(server: &Server, query: &str) -> Ws {
    let url = format!("ws://{}/ws{}", server.public_addr, query);
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

/// The next text message, skipping pings (which tungstenite answers).
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("no error");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    serde_json::from_str(&next_text(ws).await).expect("JSON from server")
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.expect("send");
}

pub async fn subscribe(ws: &mut Ws, channel: &str) {
    send_text(ws, &format!(r#"{{"op":"sub","ch":"{channel}"}}"#)).await;
    let reply = next_json(ws).await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    assert_eq!(reply["ch"], channel);
}

/// The close code the server sent, reading past anything before it.
pub async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// POSTs `body` to the publish API; returns status and body.
pub fn post(server: &Server, path: &str, body: &str) -> (u16, String) {
    let url = format!("http://{}{}", server.publish_addr, path);
    let agent = ureq::AgentBuilder::new().timeout(WAIT).build();
    match agent
        .post(&url)
        .set("Content-Type", "application/json")
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("publish request failed: {e}"),
    }
}

pub fn publish(server: &Server, channel: &str, data: &str) {
    let (status, body) = post(
        server,
        "/api/publish",
        &format!(r#"{{"ch":"{channel}","data":{data}}}"#),
    );
    assert_eq!(status, 200, "{body}");
}

pub async fn publish_async(server: &Server, channel: &str, data: &str) {
    let (addr, channel, data) = (server.publish_addr, channel.to_string(), data.to_string());
    tokio::task::spawn_blocking(move || {
        let url = format!("http://{addr}/api/publish");
        let body = format!(r#"{{"ch":"{channel}","data":{data}}}"#);
        let r = ureq::post(&url)
            .timeout(WAIT)
            .send_string(&body)
            .expect("publish");
        assert_eq!(r.status(), 200);
    })
    .await
    .expect("publish task");
}

pub fn admin_get(server: &Server, path: &str) -> (u16, String) {
    let url = format!("http://{}{}", server.admin_addr, path);
    match ureq::get(&url).timeout(WAIT).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("admin request failed: {e}"),
    }
}

/// A metric's value from /metrics (the line that starts with `series `).
pub fn metric(server: &Server, series: &str) -> u64 {
    let (_, text) = admin_get(server, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {series} not found in:\n{text}"))
}

// ---- raw sockets, for input no real client would send ----

pub fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("raw connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

/// Sends `request` and returns the whole HTTP answer, which must end with
/// the server closing the connection within `WAIT`: a refusal that leaves
/// the socket open fails here. A reset after the answer arrived (the
/// server closed with our bytes still unread) still counts as a close.
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = raw(addr);
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !out.is_empty() => {}
        Err(e) => panic!(
            "the server did not close after its answer ({e}); got so far: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A raw socket that has completed the upgrade.
pub fn raw_ws(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = raw(addr);
    s.write_all(&client_request(
        &addr.to_string(),
        path,
        "dGhlIHNhbXBsZSBub25jZQ==",
    ))
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("upgrade answer");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

pub fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, opcode, payload, Some([0x12, 0x34, 0x56, 0x78]));
    out
}

/// Reads exactly one server frame from a raw socket (never a byte past
/// it, so the next call sees the next frame): (opcode, payload).
pub fn read_frame(s: &mut TcpStream) -> Option<(OpCode, Vec<u8>)> {
    let mut head = vec![0u8; 2];
    s.read_exact(&mut head).ok()?;
    let extra = match head[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mut ext = vec![0u8; extra];
    s.read_exact(&mut ext).ok()?;
    head.extend_from_slice(&ext);
    let h = decode_header(&head, Role::Client).ok()??;
    let mut payload = vec![0u8; h.payload_len as usize];
    s.read_exact(&mut payload).ok()?;
    Some((h.opcode, payload))
}

/// Reads frames until a close frame; returns its code (1005 when it has
/// none), or None if the stream ended without one.
pub fn read_close_code(s: &mut TcpStream) -> Option<u16> {
    loop {
        let (op, p) = read_frame(s)?;
        if op == OpCode::Close {
            return Some(if p.len() >= 2 {
                u16::from_be_bytes([p[0], p[1]])
            } else {
                1005
            });
        }
    }
}

/// Checks a publication payload: channel, data, and that it carries an
/// offset and epoch; returns the offset.
pub fn assert_publication(payload: &[u8], channel: &str, data: serde_json::Value) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(payload).expect("publication is JSON");
    assert_eq!(v["ch"], channel, "{v}");
    assert_eq!(v["data"], data, "{v}");
    assert!(v["epoch"].is_string(), "{v}");
    v["off"].as_u64().expect("publication has an offset")
}

/// POSTs with an optional bearer key; returns status, body and the
/// WWW-Authenticate header.
pub fn post_with_key(
    server: &Server,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> (u16, String, Option<String>) {
    let url = format!("http://{}{}", server.publish_addr, path);
    let mut req = ureq::post(&url).timeout(WAIT);
    if let Some(key) = key {
        req = req.set("Authorization", &format!("Bearer {key}"));
    }
    match req.send_string(body) {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default(), None),
        Err(ureq::Error::Status(code, r)) => {
            let challenge = r.header("WWW-Authenticate").map(String::from);
            (code, r.into_string().unwrap_or_default(), challenge)
        }
        Err(e) => panic!("request failed: {e}"),
    }
}

/// Publishes and returns (epoch, offset) from the answer.
pub fn publish_at(server: &Server, channel: &str, data: &str) -> (String, u64) {
    let (status, body) = post(
        server,
        "/api/publish",
        &format!(r#"{{"ch":"{channel}","data":{data}}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    (
        v["epoch"].as_str().expect("epoch").to_string(),
        v["off"].as_u64().expect("off"),
    )
}

/// A client that sends its upgrade and then reads nothing: a 4 KiB receive
/// buffer makes the server's unsent bytes pile up fast.
pub fn slow_reader(server: &Server, path: &str) -> TcpStream {
    let slow =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    slow.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    slow.connect(&server.public_addr.into()).expect("connect");
    let mut slow: TcpStream = slow.into();
    slow.set_read_timeout(Some(WAIT)).expect("timeout");
    slow.write_all(&client_request("t", path, "dGhlIHNhbXBsZSBub25jZQ=="))
        .expect("upgrade request");
    slow
}

/// Reads an HTTP response head byte by byte (so no frame after it is consumed).
pub fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    head
}
