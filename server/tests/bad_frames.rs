//! Frame-level bad input after the upgrade: each breach gets its exact close
//! code (RFC 6455 section 7.4.1), and a healthy subscriber is unaffected.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;
use surge::wire::frame::OpCode;
use surge::Server;

fn healthy(server: &Server) -> TcpStream {
    let mut s = raw_ws(server.public_addr, "/ws?ch=healthy");
    read_frame(&mut s).expect("subscribed reply");
    s
}

fn assert_still_served(server: &Server, s: &mut TcpStream, n: u32) {
    publish(server, "healthy", &n.to_string());
    let (_, payload) = read_frame(s).expect("publication");
    assert_publication(&payload, "healthy", serde_json::json!(n));
}

fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

fn fragment(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = masked(opcode, payload);
    if !fin {
        f[0] &= 0x7f;
    }
    f
}

#[test]
fn each_frame_breach_closes_with_its_code_and_others_are_unaffected() {
    let server = start(&[]);
    let mut ok = healthy(&server);
    let mut unmasked = Vec::new();
    surge::wire::frame::encode_frame(&mut unmasked, OpCode::Text, b"hi", None);
    let mut reserved_bits = masked(OpCode::Text, b"hi");
    reserved_bits[0] |= 0x40;
    let mut reserved_opcode = masked(OpCode::Text, b"hi");
    reserved_opcode[0] = 0x83;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", unmasked, 1002),
        ("reserved bit without extension", reserved_bits, 1002),
        ("reserved opcode", reserved_opcode, 1002),
        ("fragmented ping", fragment(OpCode::Ping, false, b"x"), 1002),
        (
            "ping over 125 bytes",
            masked(OpCode::Ping, &[b'p'; 126]),
            1002,
        ),
        ("invalid UTF-8 text", masked(OpCode::Text, b"ok \xff"), 1007),
        (
            "invalid UTF-8 across fragments",
            cat(&[
                fragment(OpCode::Text, false, b"\xc3"),
                fragment(OpCode::Continuation, true, b"\x28"),
            ]),
            1007,
        ),
        (
            "message over the inbound limit",
            masked(OpCode::Text, &[b'a'; 16 * 1024 + 1]),
            1009,
        ),
        (
            "fragments summing over the limit",
            cat(&[
                fragment(OpCode::Text, false, &[b'a'; 10_000]),
                fragment(OpCode::Continuation, true, &[b'a'; 10_000]),
            ]),
            1009,
        ),
        (
            "continuation without a message",
            fragment(OpCode::Continuation, true, b"x"),
            1002,
        ),
        (
            "new message inside a fragmented one",
            cat(&[
                fragment(OpCode::Text, false, b"a"),
                fragment(OpCode::Text, true, b"b"),
            ]),
            1002,
        ),
        (
            "binary message to the push server",
            masked(OpCode::Binary, b"\x00\x01"),
            1003,
        ),
        (
            "close with a one-byte payload",
            masked(OpCode::Close, b"\x03"),
            1002,
        ),
        (
            "close with reserved code 1005",
            masked(OpCode::Close, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "close with code 999",
            masked(OpCode::Close, &999u16.to_be_bytes()),
            1002,
        ),
        (
            "close reason not UTF-8",
            masked(OpCode::Close, b"\x03\xe8\xff\xfe"),
            1007,
        ),
        (
            "a clean close is echoed",
            masked(OpCode::Close, b"\x03\xe8bye"),
            1000,
        ),
    ];
    for (i, (what, bytes, code)) in cases.into_iter().enumerate() {
        let mut s = raw_ws(server.public_addr, "/ws");
        s.write_all(&bytes).unwrap();
        assert_eq!(read_close_code(&mut s), Some(code), "{what}");
        assert_still_served(&server, &mut ok, i as u32);
    }
    assert_eq!(metric(&server, "surge_closes_total{code=\"1002\"}"), 10);
    assert_eq!(metric(&server, "surge_closes_total{code=\"1007\"}"), 3);
    server.shutdown();
}

#[test]
fn pings_are_answered_with_the_same_payload_and_fragments_with_pings_between_work() {
    let server = start(&[]);
    let mut s = raw_ws(server.public_addr, "/ws");
    s.write_all(&masked(OpCode::Ping, b"are you there"))
        .unwrap();
    assert_eq!(
        read_frame(&mut s),
        Some((OpCode::Pong, b"are you there".to_vec()))
    );
    // A subscribe command split in three fragments with a ping in between.
    let cmd = br#"{"op":"sub","ch":"frag"}"#;
    s.write_all(&cat(&[
        fragment(OpCode::Text, false, &cmd[..5]),
        masked(OpCode::Ping, b"mid"),
        fragment(OpCode::Continuation, false, &cmd[5..12]),
        fragment(OpCode::Continuation, true, &cmd[12..]),
    ]))
    .unwrap();
    assert_eq!(read_frame(&mut s), Some((OpCode::Pong, b"mid".to_vec())));
    assert_eq!(
        read_frame(&mut s),
        Some((OpCode::Text, br#"{"op":"subscribed","ch":"frag"}"#.to_vec()))
    );
    server.shutdown();
}

#[test]
fn a_frame_trickled_byte_by_byte_is_reassembled() {
    let server = start(&[]);
    let mut s = raw_ws(server.public_addr, "/ws");
    s.set_nodelay(true).unwrap();
    for byte in masked(OpCode::Text, br#"{"op":"sub","ch":"slow/drip"}"#) {
        s.write_all(&[byte]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        read_frame(&mut s),
        Some((
            OpCode::Text,
            br#"{"op":"subscribed","ch":"slow/drip"}"#.to_vec()
        ))
    );
    server.shutdown();
}

#[test]
fn client_that_answers_pings_is_kept_and_one_that_does_not_is_closed_4001() {
    let server = start(&["--ping-interval", "2s", "--pong-timeout", "1s"]);
    let mut answers = raw_ws(server.public_addr, "/ws?ch=live");
    let mut silent = raw_ws(server.public_addr, "/ws?ch=live");
    read_frame(&mut answers).expect("subscribed");
    read_frame(&mut silent).expect("subscribed");
    for _ in 0..2 {
        let (op, payload) = read_frame(&mut answers).expect("a ping");
        assert_eq!(op, OpCode::Ping);
        answers.write_all(&masked(OpCode::Pong, &payload)).unwrap();
    }
    assert_eq!(read_close_code(&mut silent), Some(4001));
    publish(&server, "live", "\"still here\"");
    loop {
        match read_frame(&mut answers).expect("publication") {
            (OpCode::Ping, p) => answers.write_all(&masked(OpCode::Pong, &p)).unwrap(),
            (_, payload) => {
                assert_publication(&payload, "live", serde_json::json!("still here"));
                break;
            }
        }
    }
    assert_eq!(metric(&server, "surge_closes_total{code=\"4001\"}"), 1);
    server.shutdown();
}

#[test]
fn ping_flood_without_reading_is_closed_as_too_slow_and_others_are_unaffected() {
    // The rate limit would close the flooder first (1008, see
    // hostile_frames.rs); off here, this pins the outbound bound alone.
    let server = start(&[
        "--max-outbound",
        "64KiB",
        "--max-publish-data",
        "16KiB",
        "--max-message-rate",
        "0",
    ]);
    let mut ok = healthy(&server);
    let flooder = raw_ws(server.public_addr, "/ws");
    flooder.set_nonblocking(true).unwrap();
    let ping = masked(OpCode::Ping, &[b'f'; 125]);
    let flood: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 2000)
        .collect();
    // Keep pushing pings (never reading pongs) until the server gives up on us.
    let mut flooder = flooder;
    for _ in 0..20_000 {
        match flooder.write(&flood) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        if metric(&server, "surge_slow_consumer_closes_total") > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(metric(&server, "surge_slow_consumer_closes_total"), 1);
    assert_still_served(&server, &mut ok, 1);
    server.shutdown();
}
