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
async fn tls_12_and_13_both_serve_websockets() {
    let ca = Ca::new("versions CA");
    let files = Files::new("versions");
    files.write(&ca.leaf("surge"));
    let server = start_tls(&files, &[]);
    for (version, name) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let client = client_for(&[&ca], Some(version));
        let mut ws = connect_wss(&server, &client, "?ch=v").await;
        assert_eq!(tls_of(&ws).protocol_version(), Some(name));
        assert_eq!(tls_of(&ws).alpn_protocol(), Some(&b"http/1.1"[..]));
        let ack = next_json(&mut ws).await;
        assert_eq!(ack["op"], "subscribed", "{ack}");
        publish_async(&server, "v", r#""hello""#).await;
        assert_eq!(next_json(&mut ws).await["data"], "hello");
    }
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_the_same_client_resumes_its_tls_session() {
    let ca = Ca::new("resume CA");
    let files = Files::new("resume");
    files.write(&ca.leaf("surge"));
    let server = start_tls(&files, &[]);
    let client = ca.client();
    let mut first = connect_wss(&server, &client, "?ch=r").await;
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
