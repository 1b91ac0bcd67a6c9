//! wss:// end to end: TLS terminated in the worker, spoken to by
//! tokio-tungstenite over tokio-rustls with test certificates made by
//! rcgen. Publications arrive byte-exact (small, spanning many records,
//! to a reader that falls behind), recovery works over TLS, TLS 1.2 and
//! 1.3 both work, and a reconnect resumes its TLS session.

mod common;
mod tls_common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tls_common::*;
use tokio_tungstenite::tungstenite::Message;

async fn sub_since(ws: &mut Ws, channel: &str, epoch: &str, off: u64) -> Value {
    let cmd = json!({"op":"sub","ch":channel,"since":{"epoch":epoch,"off":off}});
    send_text(ws, &cmd.to_string()).await;
    let reply = next_json(ws).await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_subscriber_gets_byte_exact_publications_and_recovers_after_a_drop() {
    let ca = Ca::new("recovery CA");
    let files = Files::new("recovery");
    files.write(&ca.leaf("surge"));
    let server = start_tls(&files, &[]);
    let client = ca.client();

    let mut ws = connect_wss(&server, &client, "").await;
    subscribe(&mut ws, "clinic:1").await;
    publish_async(&server, "clinic:1", r#"{"n":0}"#).await;
    let first = next_json(&mut ws).await;
    assert_eq!(first["data"], json!({"n": 0}));
    let epoch = first["epoch"].as_str().expect("epoch").to_string();

    // 60 KB of text: four TLS records at 16 KiB each.
    let big: String = (0..60_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    publish_async(&server, "clinic:1", &format!(r#""{big}""#)).await;
    let v = next_json(&mut ws).await;
    assert_eq!(
        v["data"].as_str(),
        Some(big.as_str()),
        "large publication altered"
    );
    let off = v["off"].as_u64().expect("off");

    drop(ws);
    for n in 1..=20 {
        publish_async(&server, "clinic:1", &format!(r#"{{"n":{n}}}"#)).await;
    }
    let mut ws = connect_wss(&server, &client, "").await;
    let reply = sub_since(&mut ws, "clinic:1", &epoch, off).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    for n in 1..=20u64 {
        let v = next_json(&mut ws).await;
        assert_eq!(v["data"]["n"].as_u64(), Some(n), "{v}");
        assert_eq!(v["off"].as_u64(), Some(off + n), "{v}");
    }
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_reader_that_falls_behind_gets_every_byte_in_order() {
    let ca = Ca::new("slow CA");
    let files = Files::new("slow");
    files.write(&ca.leaf("surge"));
    // Room to queue what the socket will not take, so the backlog is
    // written in parts from the queue of sealed records.
    let server = start_tls(&files, &["--max-outbound", "16MiB"]);
    let mut ws = connect_wss(&server, &ca.client(), "").await;
    subscribe(&mut ws, "feed").await;
    // 9.6 MB: more than loopback's socket buffers hold, so most of it
    // waits in the connection's queue of sealed records.
    const N: usize = 300;
    let chunk: String = "0123456789abcdef".repeat(2_000); // 32 KB each
    for n in 0..N {
        let (status, body) = post(
            &server,
            "/api/publish",
            &format!(r#"{{"ch":"feed","data":{{"n":{n},"s":"{chunk}"}}}}"#),
        );
        assert_eq!(status, 200, "{body}");
    }
    for n in 0..N {
        let v = next_json(&mut ws).await;
        assert_eq!(v["data"]["n"].as_u64(), Some(n as u64), "out of order");
        assert_eq!(
            v["data"]["s"].as_str(),
            Some(chunk.as_str()),
            "bytes altered"
        );
    }
    assert_eq!(metric(&server, "surge_slow_consumer_closes_total"), 0);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_12_and_13_with_aes_gcm_or_chacha20_all_serve_websockets() {
    let ca = Ca::new("versions CA");
    let files = Files::new("versions");
    files.write(&ca.leaf("surge"));
    let server = start_tls(&files, &[]);
    for (version, name) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        for suite in ["AES_128_GCM", "AES_256_GCM", "CHACHA20"] {
            let client = client_for(&[&ca], Some(version), suite);
            let mut ws = connect_wss(&server, &client, "").await;
            let negotiated = tls_of(&ws).negotiated_cipher_suite().expect("suite");
            assert!(format!("{:?}", negotiated.suite()).contains(suite));
            assert_eq!(tls_of(&ws).protocol_version(), Some(name));
            echo_round_trip(&server, &mut ws, &format!("{suite}-{name:?}")).await;
        }
    }
    server.shutdown();
}

/// Both directions of an established wss:// connection: a command up and
/// its reply down, then a publication down.
async fn echo_round_trip(server: &surge::Server, ws: &mut Ws, channel: &str) {
    assert_eq!(tls_of(ws).alpn_protocol(), Some(&b"http/1.1"[..]));
    subscribe(ws, channel).await;
    publish_async(server, channel, r#""hello""#).await;
    assert_eq!(next_json(ws).await["data"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_the_same_client_resumes_its_tls_session() {
    let ca = Ca::new("resume CA");
    let files = Files::new("resume");
    files.write(&ca.leaf("surge"));
    let server = start_tls(&files, &[]);
    let client = ca.client();
    let mut first = connect_wss(&server, &client, "?ch=r").await;
    // rustls' client lists AES-256 first; the server's own order wins.
    assert_eq!(
        tls_of(&first).negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    assert_eq!(
        tls_of(&first).handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    assert_eq!(next_json(&mut first).await["op"], "subscribed");
    drop(first);
    let mut second = connect_wss(&server, &client, "?ch=r").await;
    assert_eq!(
        tls_of(&second).handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the ticket from the first connection was not used"
    );
    assert_eq!(next_json(&mut second).await["op"], "subscribed");
    assert_eq!(
        metric(&server, r#"surge_tls_handshakes_total{kind="resumed"}"#),
        1
    );
    assert_eq!(
        metric(&server, r#"surge_tls_handshakes_total{kind="full"}"#),
        1
    );
    // The close handshake over TLS: our close is echoed, then the end
    // (after close_notify, which rustls reads as a clean end, not an error).
    second.close(None).await.expect("close");
    loop {
        match tokio::time::timeout(WAIT, second.next())
            .await
            .expect("end in time")
        {
            Some(Ok(Message::Close(_))) | Some(Ok(Message::Ping(_))) => continue,
            None => break,
            other => panic!("unclean end over TLS: {other:?}"),
        }
    }
    server.shutdown();
}

/// Everything the server sends a raw socket until it closes it.
fn read_until_closed(mut s: std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close ({e}); got {out:?}"),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_garbage_on_the_tls_port_are_refused_while_wss_keeps_flowing() {
    use std::io::Write;
    let ca = Ca::new("refusal CA");
    let files = Files::new("refusal");
    files.write(&ca.leaf("surge"));
    let server = start_tls(&files, &["--handshake-timeout", "1s"]);
    let mut ws = connect_wss(&server, &ca.client(), "?ch=live").await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");

    // ws:// or http:// to the TLS port: told so in clear text, as nginx does.
    let addr = server.public_addr;
    let answer = tokio::task::spawn_blocking(move || {
        raw_http(
            addr,
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n",
        )
    })
    .await
    .expect("plain request");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("This port speaks TLS"), "{answer}");
    publish_async(&server, "live", "1").await;
    assert_eq!(next_json(&mut ws).await["data"], 1);

    // Bytes that are no protocol at all: a TLS alert at most, then the end.
    let seen = tokio::task::spawn_blocking(move || {
        let mut s = raw(addr);
        s.write_all(b"\x00\x01\x02\x03 not a record\r\n\r\n")
            .expect("write");
        read_until_closed(s)
    })
    .await
    .expect("garbage");
    assert!(
        seen.is_empty() || seen[0] == 21,
        "expected a TLS alert or nothing, got {seen:?}"
    );
    publish_async(&server, "live", "2").await;
    assert_eq!(next_json(&mut ws).await["data"], 2);

    // A TLS record whose hello is nonsense: a failed handshake.
    let seen = tokio::task::spawn_blocking(move || {
        let mut s = raw(addr);
        s.write_all(&[22, 3, 1, 0, 4, 1, 0, 0, 0]).expect("write");
        read_until_closed(s)
    })
    .await
    .expect("bad hello");
    assert!(seen.is_empty() || seen[0] == 21, "{seen:?}");

    // A TLS client that stops halfway through its hello: closed at the
    // handshake deadline, with nothing said in clear text.
    let seen = tokio::task::spawn_blocking(move || {
        let mut s = raw(addr);
        s.write_all(&[22, 3, 1, 0, 200, 1, 0, 0]).expect("write");
        read_until_closed(s)
    })
    .await
    .expect("stalled hello");
    assert!(seen.is_empty(), "{seen:?}");
    publish_async(&server, "live", "3").await;
    assert_eq!(next_json(&mut ws).await["data"], 3);

    for (reason, count) in [
        ("plain_http", 1),
        ("not_tls", 1),
        ("handshake_failed", 1),
        ("handshake_timeout", 1),
    ] {
        let series = format!("surge_tls_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&server, &series), count, "{series}");
    }
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_assets_are_served_over_https() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new("page CA");
    let files = Files::new("page");
    files.write(&ca.leaf("surge"));
    let server = start_tls(&files, &[]);
    let connector = tokio_rustls::TlsConnector::from(ca.client());
    let tcp = tokio::net::TcpStream::connect(server.public_addr)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /surge.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("clean end (close_notify) after the answer");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("text/javascript"), "{text}");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_update_ends_only_its_own_connection() {
    let ca = Ca::new("key update CA");
    let files = Files::new("keyupdate");
    files.write(&ca.leaf("surge"));
    let server = start_tls(&files, &[]);
    let mut other = connect_wss(&server, &ca.client(), "?ch=k").await;
    assert_eq!(next_json(&mut other).await["op"], "subscribed");
    let mut ws = connect_wss(&server, &ca.client(), "?ch=k").await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    match ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Rustls(s) => s
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("key update queued"),
        _ => panic!("not TLS"),
    }
    // The KeyUpdate goes out with the next record; the server does not
    // follow it (docs/tls.md) and ends this connection, which ends.
    send_text(&mut ws, r#"{"op":"sub","ch":"k2"}"#).await;
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an end in time")
        {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
    publish_async(&server, "k", "7").await;
    assert_eq!(next_json(&mut other).await["data"], 7);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_reader_past_the_outbound_bound_is_closed_4000_cleanly_and_others_keep_up() {
    let ca = Ca::new("bound CA");
    let files = Files::new("bound");
    files.write(&ca.leaf("surge"));
    let server = start_tls(&files, &["--max-outbound", "64KiB"]);
    let mut slow = connect_wss(&server, &ca.client(), "?ch=b").await;
    assert_eq!(next_json(&mut slow).await["op"], "subscribed");
    let mut fast = connect_wss(&server, &ca.client(), "?ch=b").await;
    assert_eq!(next_json(&mut fast).await["op"], "subscribed");
    // `slow` reads nothing; `fast` reads everything as it comes.
    let chunk = "x".repeat(16_000);
    let mut sent = 0u64;
    while metric(&server, "surge_slow_consumer_closes_total") == 0 {
        assert!(sent < 3_000, "the slow reader was never closed");
        publish_async(&server, "b", &format!(r#"{{"n":{sent},"s":"{chunk}"}}"#)).await;
        let v = next_json(&mut fast).await;
        assert_eq!(v["data"]["n"].as_u64(), Some(sent));
        sent += 1;
    }
    // The slow reader's queue was sealed records: it gets what was queued,
    // then a valid close frame with 4000 (its TLS stream was never cut).
    assert_eq!(close_code(&mut slow).await, 4000);
    publish_async(&server, "b", r#"{"n":"after"}"#).await;
    assert_eq!(next_json(&mut fast).await["data"]["n"], "after");
    server.shutdown();
}
