//! The Redis engine against a real `redis-server` (Debian's package) on an
//! ephemeral loopback port, with several Surge nodes in this process and
//! tokio-tungstenite as the browser: a publication on one node reaches
//! another; recovery and snapshots work on a node that never saw the
//! publications; Redis stopped and started again, with and without its
//! data, behaves as docs/scaling.md says.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::*;
use redis_server::Redis;
use surge::Server;

fn node(redis: &Redis) -> Server {
    start(&["--redis", &redis.url(), "--redis-timeout", "1s"])
}

/// Polls the publish API until it answers 200 (Redis is back), bounded.
fn publish_when_back(server: &Server, channel: &str, data: &str) -> (String, u64) {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let (status, body) = post(
            server,
            "/api/publish",
            &format!(r#"{{"ch":"{channel}","data":{data}}}"#),
        );
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
            return (
                v["epoch"].as_str().expect("epoch").to_string(),
                v["off"].as_u64().expect("off"),
            );
        }
        assert!(Instant::now() < deadline, "publish never came back: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_on_one_node_reaches_subscribers_on_another() {
    let redis = Redis::start(false);
    let (a, b) = (node(&redis), node(&redis));
    let mut on_b = connect(&b, "").await;
    subscribe(&mut on_b, "clinic:7").await;
    let mut on_a = connect(&a, "?ch=clinic:7").await;
    assert_eq!(next_json(&mut on_a).await["op"], "subscribed");

    let (epoch, off) = publish_at(&a, "clinic:7", r#"{"free":3}"#);
    assert_eq!(off, 1);
    for ws in [&mut on_b, &mut on_a] {
        let got = next_json(ws).await;
        assert_eq!(got["data"], serde_json::json!({"free":3}), "{got}");
        assert_eq!(
            (got["epoch"].as_str(), got["off"].as_u64()),
            (Some(&*epoch), Some(1))
        );
    }
    // Offsets are Redis's, so a publish on the other node continues them.
    let (epoch_b, off_b) = publish_at(&b, "clinic:7", r#"{"free":2}"#);
    assert_eq!((epoch_b.as_str(), off_b), (epoch.as_str(), 2));
    assert_eq!(next_json(&mut on_a).await["off"], 2);
    assert_eq!(next_json(&mut on_b).await["off"], 2);
    assert_eq!(metric(&b, r#"surge_engine_connected{engine="redis"}"#), 1);
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_recovers_on_a_node_it_never_used_with_no_gap_and_no_duplicate() {
    let redis = Redis::start(false);
    let (a, b) = (node(&redis), node(&redis));
    let mut ws = connect(&a, "?ch=clinic:1").await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    let (epoch, _) = publish_at(&a, "clinic:1", "1");
    assert_eq!(next_json(&mut ws).await["off"], 1);
    drop(ws);
    // Missed while away, published through both nodes.
    for i in 2..=6 {
        let via = if i % 2 == 0 { &a } else { &b };
        publish_at(via, "clinic:1", &i.to_string());
    }
    let mut ws = connect(&b, "").await;
    send_text(
        &mut ws,
        &format!(r#"{{"op":"sub","ch":"clinic:1","since":{{"epoch":"{epoch}","off":1}}}}"#),
    )
    .await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["off"], 6, "{reply}");
    for want in 2..=6 {
        let got = next_json(&mut ws).await;
        assert_eq!(
            (got["off"].as_u64(), got["data"].as_u64()),
            (Some(want), Some(want))
        );
    }
    // And live after the replay, with nothing repeated at the seam.
    publish_at(&a, "clinic:1", "7");
    assert_eq!(next_json(&mut ws).await["off"], 7);
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_saw_a_publication_sends_its_last_value() {
    let redis = Redis::start(false);
    let a = node(&redis);
    publish_at(&a, "clinic:2", r#"{"free":9}"#);
    publish_at(&a, "clinic:2", r#"{"free":8}"#);
    let b = node(&redis);
    let mut ws = connect(&b, "?ch=clinic:2").await;
    let reply = next_json(&mut ws).await;
    assert_eq!(
        (reply["op"].as_str(), reply["off"].as_u64()),
        (Some("subscribed"), Some(2))
    );
    let snap = next_json(&mut ws).await;
    assert_eq!(snap["snap"], true, "{snap}");
    assert_eq!(snap["data"], serde_json::json!({"free":8}));
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_without_its_data_means_503s_then_a_new_epoch_and_never_a_silent_gap() {
    let mut redis = Redis::start(false);
    let a = node(&redis);
    let mut ws = connect(&a, "?ch=clinic:3").await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    let (old_epoch, _) = publish_at(&a, "clinic:3", "1");
    assert_eq!(next_json(&mut ws).await["off"], 1);

    redis.stop();
    let (status, body) = post(&a, "/api/publish", r#"{"ch":"clinic:3","data":2}"#);
    assert_eq!(status, 503, "never a 200 for what was not stored: {body}");
    // A subscription that needs Redis is refused, to be retried.
    let mut late = connect(&a, "").await;
    send_text(&mut late, r#"{"op":"sub","ch":"clinic:4"}"#).await;
    let refusal = next_json(&mut late).await;
    assert_eq!(
        (refusal["op"].as_str(), refusal["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{refusal}"
    );
    let deadline = Instant::now() + WAIT;
    while admin_get(&a, "/healthz").0 != 503 {
        assert!(Instant::now() < deadline, "/healthz kept saying 200");
        std::thread::sleep(Duration::from_millis(100));
    }

    redis.wipe();
    redis.launch(false);
    let (new_epoch, off) = publish_when_back(&a, "clinic:3", "3");
    assert_ne!(new_epoch, old_epoch, "Redis lost the data: a new epoch");
    assert_eq!(off, 1);
    // The browser that stayed connected sees the new epoch, not a silent
    // continuation of the old offsets.
    let got = next_json(&mut ws).await;
    assert_eq!(
        (got["epoch"].as_str(), got["off"].as_u64()),
        (Some(&*new_epoch), Some(1))
    );
    // One that comes back with the old position is told to resync.
    let b = node(&redis);
    let mut back = connect(&b, "").await;
    send_text(
        &mut back,
        &format!(r#"{{"op":"sub","ch":"clinic:3","since":{{"epoch":"{old_epoch}","off":1}}}}"#),
    )
    .await;
    let reply = next_json(&mut back).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(next_json(&mut back).await["snap"], true);
    subscribe(&mut late, "clinic:4").await;
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_its_data_keeps_epochs_and_subscribers_get_what_they_missed() {
    let mut redis = Redis::start(true);
    let a = node(&redis);
    let mut ws = connect(&a, "?ch=clinic:5").await;
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    let (epoch, _) = publish_at(&a, "clinic:5", "1");
    assert_eq!(next_json(&mut ws).await["off"], 1);

    redis.stop();
    redis.launch(true);
    let (epoch_after, off) = publish_when_back(&a, "clinic:5", "2");
    assert_eq!((epoch_after.as_str(), off), (epoch.as_str(), 2));
    let got = next_json(&mut ws).await;
    assert_eq!(
        (got["off"].as_u64(), got["data"].as_u64()),
        (Some(2), Some(2))
    );
    a.shutdown();
}
