//! Nothing lost: offsets and epochs, the last value on subscribe, recovery
//! after a disconnect (exact at the seam, even while publishing goes on),
//! and the answer when history no longer reaches back.

mod common;

use common::*;
use serde_json::{json, Value};

async fn sub_since(ws: &mut Ws, channel: &str, epoch: &str, off: u64) -> Value {
    let cmd = json!({"op":"sub","ch":channel,"since":{"epoch":epoch,"off":off}});
    send_text(ws, &cmd.to_string()).await;
    let reply = next_json(ws).await;
    assert_eq!(
        (reply["op"].as_str(), reply["ch"].as_str()),
        (Some("subscribed"), Some(channel)),
        "{reply}"
    );
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_since_gets_exactly_the_missed_publications_then_live() {
    let server = start(&[]);
    let mut ws = connect(&server, "").await;
    subscribe(&mut ws, "clinic:1").await;
    publish_async(&server, "clinic:1", r#"{"n":0}"#).await;
    let first = next_json(&mut ws).await;
    let (epoch, off) = (
        first["epoch"].as_str().unwrap().to_string(),
        first["off"].as_u64().unwrap(),
    );
    assert_eq!(off, 1);
    drop(ws);
    for n in 1..=50 {
        publish_async(&server, "clinic:1", &format!(r#"{{"n":{n}}}"#)).await;
    }
    let mut ws = connect(&server, "").await;
    let reply = sub_since(&mut ws, "clinic:1", &epoch, off).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["off"], 51);
    for n in 1..=50u64 {
        let v = next_json(&mut ws).await;
        assert_eq!(
            (v["off"].as_u64(), v["data"]["n"].as_u64()),
            (Some(n + 1), Some(n)),
            "{v}"
        );
        assert!(v.get("snap").is_none());
    }
    publish_async(&server, "clinic:1", r#"{"n":51}"#).await;
    let live = next_json(&mut ws).await;
    assert_eq!(
        live["off"], 52,
        "live continues with no gap or duplicate: {live}"
    );
    assert_eq!(metric(&server, "surge_replayed_total"), 50);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_while_publishing_goes_on_has_no_gap_and_no_duplicate() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const TOTAL: u64 = 3000;
    /// The publisher stays at most this far ahead of what the reader has
    /// seen, so publishing is still going on at every reconnect but the
    /// last few, whatever the relative speed of the two.
    const LEAD: u64 = 400;
    let server = start(&["--history-size", "5000"]);
    let addr = server.publish_addr;
    let seen_upto = Arc::new(AtomicU64::new(0));
    let reader_seen = Arc::clone(&seen_upto);
    let publisher = tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(WAIT).build();
        for n in 1..=TOTAL {
            let waiting = std::time::Instant::now();
            while n > seen_upto.load(Ordering::Acquire) + LEAD {
                assert!(waiting.elapsed() < WAIT, "the reader stopped at {n}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let body = format!(r#"{{"ch":"surge:live","data":{n}}}"#);
            let r = agent
                .post(&format!("http://{addr}/api/publish"))
                .send_string(&body)
                .expect("publish");
            assert_eq!(r.status(), 200);
        }
    });
    let mut seen: Vec<u64> = Vec::new();
    let mut position: Option<(String, u64)> = None;
    let mut round = 0;
    // Reconnects whose recovery answer came while publishing went on (the
    // channel's offset then was below TOTAL) and after which the same
    // connection received live publications past that offset.
    let mut seams_mid_publishing = 0;
    while seen.last().copied() != Some(TOTAL) {
        round += 1;
        assert!(round < 200, "no progress");
        let mut ws = connect(&server, "").await;
        let top_at_recovery = match &position {
            None => {
                subscribe(&mut ws, "surge:live").await;
                None
            }
            Some((epoch, off)) => {
                let reply = sub_since(&mut ws, "surge:live", epoch, *off).await;
                assert_eq!(reply["recovered"], true, "{reply}");
                reply["off"].as_u64()
            }
        };
        let mut live_after_recovery = false;
        // Read a few hundred (or to the end), then drop the connection.
        for _ in 0..(150 + round * 37 % 200) {
            let v = next_json(&mut ws).await;
            if v.get("snap").is_some() {
                // A fresh subscribe starts from the last value; count from there.
                assert!(position.is_none());
            }
            let off = v["off"].as_u64().unwrap();
            assert_eq!(
                v["data"].as_u64(),
                Some(off),
                "offset n carries publication n"
            );
            if let Some(&last) = seen.last() {
                assert_eq!(
                    off,
                    last + 1,
                    "no gap and no duplicate across reconnects (round {round})"
                );
            }
            seen.push(off);
            reader_seen.store(off, Ordering::Release);
            position = Some((v["epoch"].as_str().unwrap().to_string(), off));
            live_after_recovery |= top_at_recovery.is_some_and(|top| top < TOTAL && off > top);
            if off == TOTAL {
                break;
            }
        }
        seams_mid_publishing += u32::from(live_after_recovery);
    }
    publisher.await.unwrap();
    assert!(
        seams_mid_publishing >= 3,
        "only {seams_mid_publishing} of {round} reconnects recovered while publishing went on"
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_gets_the_last_value_as_a_snapshot_at_once() {
    let server = start(&[]);
    for n in 1..=3 {
        publish_async(&server, "clinic:9/slots", &format!(r#"{{"free":{n}}}"#)).await;
    }
    let mut ws = connect(&server, "").await;
    send_text(&mut ws, r#"{"op":"sub","ch":"clinic:9/slots"}"#).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(
        (reply["op"].as_str(), reply["off"].as_u64()),
        (Some("subscribed"), Some(3))
    );
    assert!(reply.get("recovered").is_none());
    let snap = next_json(&mut ws).await;
    assert_eq!(
        (snap["snap"].as_bool(), snap["off"].as_u64()),
        (Some(true), Some(3)),
        "{snap}"
    );
    assert_eq!(snap["data"], json!({"free":3}));
    assert_eq!(snap["epoch"], reply["epoch"]);
    // A channel nobody published to: no epoch, no snapshot, just live.
    send_text(&mut ws, r#"{"op":"sub","ch":"clinic:new"}"#).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op":"subscribed","ch":"clinic:new"})
    );
    publish_async(&server, "clinic:new", "1").await;
    let live = next_json(&mut ws).await;
    assert_eq!(
        (live["ch"].as_str(), live["off"].as_u64()),
        (Some("clinic:new"), Some(1))
    );
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_false_with_a_snapshot_when_history_is_gone_or_the_epoch_differs() {
    let server = start(&["--history-size", "10"]);
    let (epoch, _) = publish_at(&server, "c", "0");
    for n in 1..=50 {
        publish_async(&server, "c", &n.to_string()).await;
    }
    let mut ws = connect(&server, "").await;
    let reply = sub_since(&mut ws, "c", &epoch, 1).await;
    assert_eq!(
        (reply["recovered"].as_bool(), reply["off"].as_u64()),
        (Some(false), Some(51)),
        "{reply}"
    );
    let snap = next_json(&mut ws).await;
    assert_eq!(
        (
            snap["snap"].as_bool(),
            snap["off"].as_u64(),
            snap["data"].as_u64()
        ),
        (Some(true), Some(51), Some(50))
    );

    // Still within reach: the last 10 are kept (offsets 42..=51).
    let mut ws2 = connect(&server, "").await;
    assert_eq!(
        sub_since(&mut ws2, "c", &epoch, 41).await["recovered"],
        true
    );
    for off in 42..=51u64 {
        assert_eq!(next_json(&mut ws2).await["off"].as_u64(), Some(off));
    }

    let mut ws3 = connect(&server, "").await;
    let reply = sub_since(&mut ws3, "c", "another-epoch", 50).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(next_json(&mut ws3).await["snap"], true);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_memory_is_capped_oldest_first() {
    // Each publication is ~1 KB; a 64 KiB cap keeps only the newest few dozen.
    let server = start(&["--history-max-bytes", "64KiB", "--history-size", "1000"]);
    let pad = "p".repeat(1000);
    for n in 1..=300 {
        publish_async(&server, "big", &format!(r#"{{"n":{n},"pad":"{pad}"}}"#)).await;
    }
    let held = metric(&server, "surge_history_bytes");
    assert!(held <= 64 * 1024, "history holds {held} bytes");
    let mut ws = connect(&server, "").await;
    let reply = sub_since(&mut ws, "big", &publish_at(&server, "big", "0").0, 1).await;
    assert_eq!(
        reply["recovered"], false,
        "the oldest were evicted: {reply}"
    );
    server.shutdown();
}
