//! Private booking channels with signed tokens, the publish API key, batch
//! publishing, and a slow consumer that recovers everything it missed.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use surge::channels::token::{unix_now, TokenKey};

const SECRET: &str = "booking-backend-shared-secret-1";
const KEY: &str = "publish-api-key-0123456789";

fn token(scope: &str, expires: u64) -> String {
    TokenKey::new(SECRET.as_bytes())
        .unwrap()
        .mint(scope, expires)
}

async fn sub_with(ws: &mut Ws, channel: &str, token: Option<&str>) -> Value {
    let mut cmd = json!({"op":"sub","ch":channel});
    if let Some(t) = token {
        cmd["token"] = json!(t);
    }
    send_text(ws, &cmd.to_string()).await;
    next_json(ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_channels_need_a_valid_token_for_that_channel() {
    // One worker: the witness below and `ws` share it, so when the witness
    // has its publication the fan-out to `ws` has happened too.
    let server = start(&["--token-secret", SECRET, "--workers", "1"]);
    let mut ws = connect(&server, "").await;
    let later = unix_now() + 3600;
    let forged = TokenKey::new(b"not-the-backend-secret!!")
        .unwrap()
        .mint("user/8812", later);
    for (what, tok, reason) in [
        ("missing", None, "missing"),
        ("bad signature", Some(forged), "bad_signature"),
        (
            "other user's channel",
            Some(token("user/9999", later)),
            "wrong_channel",
        ),
        (
            "expired",
            Some(token("user/8812", unix_now() - 10)),
            "expired",
        ),
        ("garbage", Some("not.a.token".to_string()), "malformed"),
    ] {
        let e = sub_with(&mut ws, "user/8812", tok.as_deref()).await;
        assert_eq!(
            (e["op"].as_str(), e["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{what}: {e}"
        );
        assert_eq!(
            metric(
                &server,
                &format!("surge_token_refusals_total{{reason=\"{reason}\"}}")
            ),
            1,
            "{what}"
        );
    }
    // Refused subscriptions receive nothing: a publication on the channel,
    // seen by a witness holding a valid subscription, never reaches `ws`,
    // whose next frame is the answer to its next command.
    let mut witness = connect(&server, "").await;
    let reply = sub_with(&mut witness, "user/8812", Some(&token("user/8812", later))).await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    publish_async(&server, "user/8812", r#"{"booking":"B-0"}"#).await;
    assert_eq!(next_json(&mut witness).await["data"]["booking"], "B-0");
    send_text(&mut ws, r#"{"op":"sub","ch":"clinic:1"}"#).await;
    let next = next_json(&mut ws).await;
    assert_eq!(
        (next["op"].as_str(), next["ch"].as_str()),
        (Some("subscribed"), Some("clinic:1")),
        "a refused subscription received: {next}"
    );
    // The valid one gets the confirmation.
    let ok = sub_with(&mut ws, "user/8812", Some(&token("user/8812", later))).await;
    assert_eq!(ok["op"], "subscribed", "{ok}");
    let snap = next_json(&mut ws).await;
    assert_eq!(
        (snap["snap"].as_bool(), snap["data"]["booking"].as_str()),
        (Some(true), Some("B-0")),
        "the last value, as a snapshot, once subscribed: {snap}"
    );
    publish_async(&server, "user/8812", r#"{"booking":"B-1","slot":"09:15"}"#).await;
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["ch"].as_str(), v["data"]["booking"].as_str()),
        (Some("user/8812"), Some("B-1"))
    );
    // A prefix token covers the channels under it.
    let prefix = sub_with(
        &mut ws,
        "user/8812/receipts",
        Some(&token("user/8812/*", later)),
    )
    .await;
    assert_eq!(prefix["op"], "subscribed");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_channel_at_connect_needs_the_token_in_the_query() {
    let server = start(&["--token-secret", SECRET]);
    let refused = raw_http(
        server.public_addr,
        b"GET /ws?ch=user/5 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let later = unix_now() + 3600;
    let forged = TokenKey::new(b"not-the-backend-secret!!")
        .unwrap()
        .mint("user/5", later);
    for (what, tok, reason) in [
        ("forged", forged, "bad_signature"),
        ("expired", token("user/5", unix_now() - 10), "expired"),
        ("another user's", token("user/6", later), "wrong_channel"),
    ] {
        let request = format!(
            "GET /ws?ch=user/5&token={tok} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let refused = raw_http(server.public_addr, request.as_bytes());
        assert!(refused.starts_with("HTTP/1.1 403"), "{what}: {refused}");
        assert_eq!(
            metric(
                &server,
                &format!("surge_token_refusals_total{{reason=\"{reason}\"}}")
            ),
            1,
            "{what}"
        );
    }
    let t = token("user/5", unix_now() + 60);
    let mut ws = connect(&server, &format!("?ch=user/5&token={t}")).await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_booking_confirmation_is_recovered_after_reconnect() {
    let server = start(&["--token-secret", SECRET]);
    let t = token("user/42", unix_now() + 3600);
    let mut ws = connect(&server, "").await;
    let reply = sub_with(&mut ws, "user/42", Some(&t)).await;
    assert_eq!(reply["op"], "subscribed");
    publish_async(&server, "user/42", r#"{"status":"pending"}"#).await;
    let pending = next_json(&mut ws).await;
    drop(ws); // the phone went through a tunnel
    publish_async(
        &server,
        "user/42",
        r#"{"status":"confirmed","booking":"B-77"}"#,
    )
    .await;
    let mut ws = connect(&server, "").await;
    let cmd = json!({"op":"sub","ch":"user/42","token":t,"since":{"epoch":pending["epoch"],"off":pending["off"]}});
    send_text(&mut ws, &cmd.to_string()).await;
    assert_eq!(next_json(&mut ws).await["recovered"], true);
    let confirmation = next_json(&mut ws).await;
    assert_eq!(
        confirmation["data"],
        json!({"status":"confirmed","booking":"B-77"})
    );
    server.shutdown();
}

#[test]
fn publish_api_key_is_required_when_configured() {
    let server = start(&["--api-key", KEY]);
    let body = r#"{"ch":"a","data":1}"#;
    let (status, text, challenge) = post_with_key(&server, "/api/publish", body, None);
    assert_eq!(
        (status, challenge.as_deref()),
        (401, Some("Bearer")),
        "{text}"
    );
    let (status, _, _) = post_with_key(
        &server,
        "/api/publish",
        body,
        Some("publish-api-key-0123456780"),
    );
    assert_eq!(status, 401);
    let (status, _, _) = post_with_key(&server, "/api/batch", &format!("[{body}]"), None);
    assert_eq!(status, 401);
    let (status, _, _) = post_with_key(&server, "/api/publish", body, Some(KEY));
    assert_eq!(status, 200);
    let (status, text, _) = post_with_key(
        &server,
        "/api/batch",
        r#"[{"ch":"a","data":2},{"ch":"b","data":3}]"#,
        Some(KEY),
    );
    assert_eq!(status, 200, "a batch with the key is accepted: {text}");
    // Published: "a" moves on from the single publish's offset 1.
    let answer: Value = serde_json::from_str(&text).expect("JSON answer");
    assert_eq!(
        (
            answer["results"][0]["off"].as_u64(),
            answer["results"][1]["off"].as_u64()
        ),
        (Some(2), Some(1)),
        "{answer}"
    );
    assert_eq!(metric(&server, "surge_publications_total"), 3);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_10000_over_100_channels_reaches_every_subscriber_in_order() {
    let server = start(&[]);
    let mut clients = Vec::new();
    for c in 0..100 {
        for _ in 0..2 {
            clients.push((c, connect(&server, &format!("?ch=clinic:{c}")).await));
        }
    }
    for (_, ws) in clients.iter_mut() {
        assert_eq!(next_json(ws).await["op"], "subscribed");
    }
    let items: Vec<Value> = (0..10_000)
        .map(|i| json!({"ch": format!("clinic:{}", i % 100), "data": {"i": i}}))
        .collect();
    let body = serde_json::to_string(&items).unwrap();
    let addr = server.publish_addr;
    let answer = tokio::task::spawn_blocking(move || {
        ureq::post(&format!("http://{addr}/api/batch"))
            .timeout(WAIT)
            .send_string(&body)
            .unwrap()
            .into_string()
            .unwrap()
    })
    .await
    .unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 10_000);
    assert_eq!(results[0]["off"], 1);
    assert_eq!(
        results[9_999]["off"], 100,
        "the 100th publication on clinic:99"
    );
    for (c, ws) in clients.iter_mut() {
        for k in 0..100u64 {
            let v = next_json(ws).await;
            assert_eq!(v["ch"], format!("clinic:{c}"));
            assert_eq!(
                (v["off"].as_u64(), v["data"]["i"].as_u64()),
                (Some(k + 1), Some(k * 100 + *c as u64))
            );
        }
    }
    assert_eq!(metric(&server, "surge_deliveries_total"), 20_000);
    server.shutdown();
}

#[test]
fn ndjson_batches_work_and_a_bad_item_publishes_nothing() {
    let server = start(&["--max-batch", "3"]);
    let (status, body) = post(
        &server,
        "/api/batch",
        "{\"ch\":\"a\",\"data\":1}\n\n{\"ch\":\"b\",\"data\":2}\n",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["results"][1]["off"],
        1
    );
    let (status, body) = post(
        &server,
        "/api/batch",
        r#"[{"ch":"a","data":2},{"ch":"no good","data":3}]"#,
    );
    assert_eq!(status, 400);
    assert!(
        body.contains("item 1") && body.contains("no good"),
        "{body}"
    );
    let (status, body) = post(
        &server,
        "/api/batch",
        "{\"ch\":\"a\",\"data\":2}\nnot json\n",
    );
    assert!(status == 400 && body.contains("line 2"), "{body}");
    let (status, body) = post(
        &server,
        "/api/batch",
        r#"[{"ch":"a","data":1},{"ch":"a","data":1},{"ch":"a","data":1},{"ch":"a","data":1}]"#,
    );
    assert!(
        status == 400 && body.contains("over the limit of 3"),
        "{body}"
    );
    // Nothing of the refused batches was published: "a" is still at offset 1.
    assert_eq!(publish_at(&server, "a", "9").1, 2);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_closed_as_too_slow_recovers_everything_after_reconnect() {
    const N: u64 = 400;
    let server = start(&[
        "--max-outbound",
        "64KiB",
        "--max-publish-data",
        "16KiB",
        "--history-size",
        "1000",
    ]);
    let mut slow = slow_reader(&server, "/ws?ch=flash");
    let mut fast = connect(&server, "?ch=flash").await;
    assert_eq!(next_json(&mut fast).await["op"], "subscribed");
    let reader = tokio::spawn(async move {
        for n in 1..=N {
            assert_eq!(next_json(&mut fast).await["off"].as_u64(), Some(n));
        }
    });
    let pad = "x".repeat(15_000);
    for n in 1..=N {
        publish_async(&server, "flash", &format!(r#"{{"n":{n},"pad":"{pad}"}}"#)).await;
    }
    tokio::time::timeout(WAIT * 3, reader)
        .await
        .expect("fast reader in time")
        .unwrap();
    assert_eq!(metric(&server, "surge_slow_consumer_closes_total"), 1);

    // What the slow one got before its 4000 close: whole frames, in order.
    let (epoch, got) = tokio::task::spawn_blocking(move || {
        read_head(&mut slow);
        let mut epoch = String::new();
        let mut got = Vec::new();
        loop {
            let (op, payload) = read_frame(&mut slow).expect("frames then a close");
            match op {
                surge::wire::frame::OpCode::Close => {
                    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4000);
                    break;
                }
                surge::wire::frame::OpCode::Text => {
                    let v: Value = serde_json::from_slice(&payload).unwrap();
                    if let Some(off) = v["off"].as_u64() {
                        epoch = v["epoch"].as_str().unwrap().to_string();
                        got.push(off);
                    }
                }
                _ => {}
            }
        }
        (epoch, got)
    })
    .await
    .unwrap();
    assert!(
        got.len() < N as usize,
        "it was cut off ({} of {N})",
        got.len()
    );
    assert!(
        got.iter().copied().eq(1..=got.len() as u64),
        "in order, no gap"
    );

    let last = got.last().copied().unwrap_or(0);
    // It comes back as slowly as it left: a 4 KiB receive buffer, and it
    // reads nothing for a while after asking to recover. The replay (up to
    // hundreds of 15 KB frames, far over --max-outbound) then waits in the
    // server's queue, and must not get it closed as too slow again, or it
    // could never catch up.
    let cmd = json!({"op":"sub","ch":"flash","since":{"epoch":epoch,"off":last}});
    let recovered = tokio::task::spawn_blocking({
        let mut again = slow_reader(&server, "/ws");
        move || {
            read_head(&mut again);
            again
                .write_all(&masked(
                    surge::wire::frame::OpCode::Text,
                    cmd.to_string().as_bytes(),
                ))
                .expect("send sub");
            std::thread::sleep(std::time::Duration::from_millis(500));
            let mut offs = Vec::new();
            while offs.len() < (N - last) as usize {
                let (op, payload) = read_frame(&mut again).expect("the replay, not a close");
                assert_eq!(
                    op,
                    surge::wire::frame::OpCode::Text,
                    "no close while recovering"
                );
                let v: Value = serde_json::from_slice(&payload).expect("JSON");
                if v["op"] == "subscribed" {
                    assert_eq!(v["recovered"], true, "{v}");
                } else if let Some(off) = v["off"].as_u64() {
                    offs.push(off);
                }
            }
            offs
        }
    })
    .await
    .expect("recovering reader");
    assert!(
        recovered.iter().copied().eq(last + 1..=N),
        "recovered in order, all of it"
    );
    server.shutdown();
}

/// The golden token of docs/protocol.md, read from the doc itself: the
/// string a backend in another language is told to reproduce.
fn golden_token_from_the_doc() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .expect("docs/protocol.md");
    let after = doc
        .split_once("<!-- golden-token -->")
        .expect("the golden token marker in docs/protocol.md")
        .1;
    let mut lines = after.lines().map(str::trim).filter(|l| !l.is_empty());
    assert_eq!(lines.next(), Some("```"), "a code block follows the marker");
    lines.next().expect("the golden token line").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_token_from_the_protocol_doc_is_accepted_by_the_server() {
    // The inputs docs/protocol.md gives; the expected string was computed
    // with Python's hmac and checked with openssl, not with Surge's code.
    const GOLDEN_SECRET: &str = "golden-vector-secret-for-surge-tokens";
    const GOLDEN: &str = "dXNlci84ODEy.4102444800.FAQn7YrGqOUZHY1ILHDsGuK-F3CtfKl5WQ7b5t-bHr0";
    assert_eq!(golden_token_from_the_doc(), GOLDEN, "docs/protocol.md");
    let server = start(&["--token-secret", GOLDEN_SECRET]);

    // In the subscribe command.
    let mut ws = connect(&server, "").await;
    let reply = sub_with(&mut ws, "user/8812", Some(GOLDEN)).await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    publish_async(&server, "user/8812", r#"{"booking":"B-2100"}"#).await;
    assert_eq!(next_json(&mut ws).await["data"]["booking"], "B-2100");

    // In the connect URL.
    let mut at_connect = connect(&server, &format!("?ch=user/8812&token={GOLDEN}")).await;
    assert_eq!(next_json(&mut at_connect).await["op"], "subscribed");

    // One character off in the signature is refused: the server checks it.
    let tampered = GOLDEN.replace(".FAQn", ".GAQn");
    assert_ne!(tampered, GOLDEN);
    let refused = sub_with(&mut ws, "user/8812", Some(&tampered)).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(
        metric(
            &server,
            "surge_token_refusals_total{reason=\"bad_signature\"}"
        ),
        1
    );
    server.shutdown();
}
