//! The push path end to end: browsers (tokio-tungstenite) subscribe, the
//! backend publishes over HTTP, subscribers receive the data byte for byte.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_data_arrives_byte_for_byte() {
    let server = start(&[]);
    let mut ws = connect(&server, "").await;
    subscribe(&mut ws, "clinic:42").await;
    // Odd spacing and key order must survive untouched.
    let data = r#"{ "slots" : [ {"t":"09:00","free":3}, {"t":"09:15" ,"free":0} ], "é":"ü" }"#;
    publish_async(&server, "clinic:42", data).await;
    let text = next_text(&mut ws).await;
    assert!(
        text.starts_with(r#"{"ch":"clinic:42","off":1,"epoch":""#),
        "{text}"
    );
    assert!(text.ends_with(&format!(r#","data":{data}}}"#)), "{text}");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribed_client_receives_nothing_more() {
    let server = start(&[]);
    let mut ws = connect(&server, "").await;
    subscribe(&mut ws, "a").await;
    subscribe(&mut ws, "b").await;
    send_text(&mut ws, r#"{"op":"unsub","ch":"a"}"#).await;
    assert_eq!(
        next_json(&mut ws).await,
        serde_json::json!({"op":"unsubscribed","ch":"a"})
    );
    publish_async(&server, "a", "1").await;
    publish_async(&server, "b", "2").await;
    // Order on one connection is preserved, so if "a" had been delivered it
    // would come before "b".
    let v = next_json(&mut ws).await;
    assert_eq!(
        (&v["ch"], &v["data"]),
        (&serde_json::json!("b"), &serde_json::json!(2))
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_at_connect_with_query() {
    let server = start(&[]);
    let mut ws = connect(&server, "?ch=clinic%3A7&ch=booth/12&ch=clinic:7").await;
    let mut confirmed = [next_json(&mut ws).await, next_json(&mut ws).await];
    confirmed.sort_by_key(|v| v["ch"].as_str().unwrap_or("").to_string());
    assert_eq!(
        confirmed[0],
        serde_json::json!({"op":"subscribed","ch":"booth/12"})
    );
    assert_eq!(
        confirmed[1],
        serde_json::json!({"op":"subscribed","ch":"clinic:7"})
    );
    publish_async(&server, "booth/12", r#""booked""#).await;
    let v = next_json(&mut ws).await;
    assert_eq!(
        (&v["ch"], &v["data"]),
        (&serde_json::json!("booth/12"), &serde_json::json!("booked"))
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_on_every_worker_all_receive() {
    let server = start(&["--workers", "2"]);
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(connect(&server, "?ch=surge").await);
    }
    for ws in clients.iter_mut() {
        assert_eq!(next_json(ws).await["op"], "subscribed");
    }
    // SO_REUSEPORT spreads connections by hash: both workers hold some.
    let (_, stats) = admin_get(&server, "/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let per_worker: Vec<u64> = stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["connections"].as_u64().unwrap())
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 200, "{stats}");
    assert!(per_worker.iter().all(|&n| n > 0), "{per_worker:?}");
    for i in 0..5 {
        publish_async(&server, "surge", &i.to_string()).await;
    }
    for ws in clients.iter_mut() {
        for i in 0..5 {
            assert_eq!(next_json(ws).await["data"], i);
        }
    }
    assert_eq!(metric(&server, "surge_deliveries_total"), 1000);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_error_frames_and_the_connection_stays_usable() {
    let server = start(&["--max-subscriptions", "2"]);
    let mut ws = connect(&server, "").await;
    send_text(&mut ws, "not json").await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    send_text(&mut ws, r#"{"op":"sub","ch":"bad name!"}"#).await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["ch"].as_str()),
        (Some("bad_channel"), Some("bad name!"))
    );
    subscribe(&mut ws, "one").await;
    subscribe(&mut ws, "one").await; // again: idempotent, still one subscription
    subscribe(&mut ws, "two").await;
    send_text(&mut ws, r#"{"op":"sub","ch":"three"}"#).await;
    assert_eq!(next_json(&mut ws).await["code"], "too_many_subscriptions");
    publish_async(&server, "one", "true").await;
    assert_eq!(next_json(&mut ws).await["data"], true);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_answered_with_the_same_code() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    let server = start(&[]);
    let mut ws = connect(&server, "?ch=x").await;
    next_json(&mut ws).await;
    ws.send(tokio_tungstenite::tungstenite::Message::Close(Some(
        CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        },
    )))
    .await
    .unwrap();
    assert_eq!(close_code(&mut ws).await, 1000);
    server.shutdown();
}
