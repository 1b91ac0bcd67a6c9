//! Attacks from inside a WebSocket, done for real on loopback: ping and
//! command floods from clients that never read, and a bug forced in a
//! handler. Each costs the attacker its connection; a subscriber on the
//! same server keeps receiving throughout.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;
use surge::wire::frame::OpCode;
use surge::Server;

fn subscriber(server: &Server) -> TcpStream {
    let mut s = raw_ws(server.public_addr, "/ws?ch=neighbour");
    read_frame(&mut s).expect("subscribed reply");
    s
}

fn assert_still_served(server: &Server, s: &mut TcpStream, n: u32) {
    publish(server, "neighbour", &n.to_string());
    loop {
        match read_frame(s).expect("publication") {
            (OpCode::Ping, p) => s.write_all(&masked(OpCode::Pong, &p)).unwrap(),
            (_, payload) => {
                assert_publication(&payload, "neighbour", serde_json::json!(n));
                return;
            }
        }
    }
}

/// Writes `frame` over and over without reading, until the server stops
/// taking it (it closed us), `done` says so, `max_writes` writes went out or
/// 20 s passed. A write the server is slow to take is retried from where it
/// stopped, so frames stay whole however busy the machine is.
fn flood_until(s: &mut TcpStream, frame: &[u8], max_writes: usize, done: impl Fn() -> bool) {
    let burst: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 1000)
        .collect();
    s.set_write_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut at = 0;
    for i in 0..max_writes {
        match s.write(&burst[at..]) {
            Ok(n) => at = (at + n) % burst.len(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        if (i % 50 == 49 && done()) || std::time::Instant::now() > deadline {
            return;
        }
    }
}

fn flood(s: &mut TcpStream, frame: &[u8], max_writes: usize) {
    flood_until(s, frame, max_writes, || false)
}

/// This process's peak resident set since the last [`reset_peak`], in bytes.
fn peak_resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Resets the peak to the current resident set (Linux 4.0+): a queue that
/// was built up and freed again still shows in the peak.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

#[test]
fn ping_flood_is_closed_1008_by_the_rate_limit() {
    let server = start(&[]);
    let mut ok = subscriber(&server);
    let mut flooder = raw_ws(server.public_addr, "/ws");
    flood(&mut flooder, &masked(OpCode::Ping, b""), 50);
    assert_eq!(read_close_code(&mut flooder), Some(1008));
    assert_eq!(metric(&server, "surge_rate_limit_closes_total"), 1);
    assert_eq!(metric(&server, "surge_closes_total{code=\"1008\"}"), 1);
    assert_still_served(&server, &mut ok, 1);
    server.shutdown();
}

#[test]
fn command_flood_is_closed_1008_and_a_duplicate_sub_costs_nothing() {
    let server = start(&[]);
    let mut ok = subscriber(&server);
    publish(&server, "dup", "\"last\"");
    let mut flooder = raw_ws(server.public_addr, "/ws?ch=dup");
    let sub = masked(OpCode::Text, br#"{"op":"sub","ch":"dup"}"#);
    flood(&mut flooder, &sub, 50);
    let mut snapshots = 0;
    let code = loop {
        match read_frame(&mut flooder) {
            Some((OpCode::Close, p)) => break u16::from_be_bytes([p[0], p[1]]),
            Some((_, p)) if String::from_utf8_lossy(&p).contains("\"snap\":true") => snapshots += 1,
            Some(_) => {}
            None => panic!("stream ended without a close frame"),
        }
    };
    assert_eq!(code, 1008);
    assert_eq!(snapshots, 1, "only the first sub sends the last value");
    assert_still_served(&server, &mut ok, 1);
    server.shutdown();
}

#[test]
fn ping_flood_without_reading_is_bounded_in_real_bytes() {
    // The rate limit off: the outbound bound alone must hold. Empty pings
    // are the worst case: each pong is 2 bytes of payload but ~64 bytes of
    // queue entry and allocation, which the bound now counts.
    let server = start(&["--max-message-rate", "0"]);
    let mut ok = subscriber(&server);
    reset_peak();
    let before = peak_resident();
    const FLOODERS: u64 = 2;
    let mut flooders: Vec<TcpStream> = (0..FLOODERS)
        .map(|_| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            s.connect(&server.public_addr.into()).expect("connect");
            let mut s: TcpStream = s.into();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.write_all(&surge::wire::handshake::client_request(
                "t",
                "/ws",
                "dGhlIHNhbXBsZSBub25jZQ==",
            ))
            .unwrap();
            s
        })
        .collect();
    // Enough of them to fill the kernel's send buffer (up to 4 MB on
    // loopback) and then our queue.
    let empty = masked(OpCode::Ping, b"");
    for (i, s) in flooders.iter_mut().enumerate() {
        let done = || metric(&server, "surge_slow_consumer_closes_total") > i as u64;
        flood_until(s, &empty, 3000, done);
    }
    let mut closed = 0;
    for _ in 0..200 {
        closed = metric(&server, "surge_slow_consumer_closes_total");
        if closed == FLOODERS {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let grown = peak_resident().saturating_sub(before);
    eprintln!(
        "ping flood, {FLOODERS} clients not reading: peak RSS grew {} KiB",
        grown / 1024
    );
    assert_eq!(closed, FLOODERS, "every flooder closed as too slow");
    // Counting payload only, each could queue 131,072 pongs: ~8 MB.
    assert!(grown < 4 << 20, "peak RSS grew {grown} bytes");
    assert_still_served(&server, &mut ok, 1);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_handler_closes_that_connection_1011_and_others_keep_receiving() {
    let server = start(&["--test-panic-hooks"]);
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(connect(&server, "?ch=p").await);
    }
    let mut victim = connect(&server, "?ch=p").await;
    for ws in others.iter_mut().chain(std::iter::once(&mut victim)) {
        assert_eq!(next_json(ws).await["op"], "subscribed");
    }
    send_text(&mut victim, surge::core::guard::PANIC_IN_HANDLER).await;
    assert_eq!(close_code(&mut victim).await, 1011);
    for n in 0..3 {
        publish_async(&server, "p", &n.to_string()).await;
        for ws in others.iter_mut() {
            assert_eq!(next_json(ws).await["data"], n);
        }
    }
    assert_eq!(metric(&server, "surge_handler_panics_total"), 1);
    assert_eq!(metric(&server, "surge_closes_total{code=\"1011\"}"), 1);
    assert_eq!(metric(&server, "surge_open_connections"), 4);
    server.shutdown();
}
