//! Waiting rooms shared through a real redis-server by three real Surge
//! nodes, with tokio-tungstenite browsers joining through different nodes
//! and the booking backend talking to any of them: one line for all,
//! admitted once each in ticket order at the cluster-wide rate, places
//! kept across nodes, `max_admitted` and `DELETE` cluster-wide, and a
//! clear error while Redis is down. Rates are counts over windows the test
//! measures; nothing asserts on wall time beyond bounded waits.

mod common;
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/rooms.rs"]
mod rooms_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use redis_server::Redis;
use rooms_common::*;
use serde_json::json;
use surge::channels::token::unix_now;
use surge::Server;

fn node(redis: &Redis) -> Server {
    start(&[
        "--redis",
        &redis.url(),
        "--redis-timeout",
        "1s",
        "--token-secret",
        SECRET,
        "--api-key",
        KEY,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_three_nodes_share_one_line_admitted_once_each_in_ticket_order() {
    const EARLY: usize = 60;
    const LATE: usize = 240;
    const PER_MINUTE: u64 = 3_000;
    let redis = Redis::start(false);
    let nodes = [node(&redis), node(&redis), node(&redis)];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.public_addr).collect();
    let opens_at = unix_now() + 3;
    let (status, body) = api(
        &nodes[0],
        "PUT",
        "/api/rooms/sale",
        Some(json!({"admit_per_minute": PER_MINUTE, "opens_at": opens_at})),
    );
    assert_eq!(status, 201, "{body}");
    let mut browsers = Vec::new();
    let spawn = |i: usize| {
        // Every tenth drops once and comes back through the next node.
        let then = (i % 10 == 5).then(|| addrs[(i + 1) % 3]);
        tokio::spawn(wait_in_line(addrs[i % 3], then, "sale".into()))
    };
    for i in 0..EARLY {
        browsers.push(spawn(i));
    }
    until("the opening", || unix_now() > opens_at).await;
    for i in EARLY..EARLY + LATE {
        browsers.push(spawn(i));
    }
    until("everyone in line", || {
        let r = room(&nodes[1], "sale");
        r["waiting"].as_u64().unwrap_or(0) + r["admitted_total"].as_u64().unwrap_or(0)
            == (EARLY + LATE) as u64
    })
    .await;
    // The cluster's rate, as counts over a window measured here, read on
    // two different nodes.
    let (t1, a1) = (
        Instant::now(),
        room(&nodes[2], "sale")["admitted_total"].clone(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = room(&nodes[0], "sale");
    let seconds = t1.elapsed().as_secs_f64();
    let admitted = r["admitted_total"].as_u64().unwrap() - a1.as_u64().unwrap();
    assert!(
        r["waiting"].as_u64().unwrap() > 0,
        "the line ran dry: window invalid"
    );
    let per_minute = admitted as f64 / seconds * 60.0;
    println!("admitted {admitted} in {seconds:.2} s: {per_minute:.0}/min (set {PER_MINUTE})");
    let off = (per_minute - PER_MINUTE as f64).abs() / PER_MINUTE as f64;
    assert!(
        off < 0.10,
        "{per_minute:.0}/min against {PER_MINUTE} (three nodes tick)"
    );

    let seen = admitted_once_each(browsers).await;
    assert_fair_order(&seen, EARLY);
    // An admission made through one node verifies on another.
    let path = "/api/rooms/sale/verify";
    let (_, v) = api(
        &nodes[1],
        "POST",
        path,
        Some(json!({"token": seen[0].token})),
    );
    assert_eq!(v["valid"], true, "{v}");
    for n in nodes {
        n.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_admitted_holds_across_nodes_and_delete_reaches_every_node_and_ends_its_admissions() {
    let redis = Redis::start(false);
    let (a, b) = (node(&redis), node(&redis));
    let settings = json!({"admit_per_minute": 60_000, "max_admitted": 4, "admission_ttl": 600});
    let (status, _) = api(&b, "PUT", "/api/rooms/clinic", Some(settings));
    assert_eq!(status, 201);
    let mut line = Vec::new();
    for i in 0..12 {
        let mut ws = ws_to(if i % 2 == 0 {
            a.public_addr
        } else {
            b.public_addr
        })
        .await;
        let q = join(&mut ws, "clinic", None).await;
        assert!(q["op"] == "queued" || q["op"] == "admitted", "{q}");
        line.push((ws, q));
    }
    until("four admitted", || {
        room(&a, "clinic")["admitted_total"] == 4
    })
    .await;
    // A few more ticks on both nodes: still four, cluster-wide.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in [&a, &b] {
        let r = room(n, "clinic");
        assert_eq!(
            (r["admitted"].as_u64(), r["waiting"].as_u64()),
            (Some(4), Some(8)),
            "{r}"
        );
    }
    let mut tokens = Vec::new();
    let mut waiting = Vec::new();
    for (mut ws, q) in line {
        if q["op"] == "admitted" {
            tokens.push(q["token"].as_str().expect("token").to_string());
            continue;
        }
        let next = tokio::time::timeout(Duration::from_millis(300), next_json(&mut ws)).await;
        match next {
            Ok(v) if v["op"] == "admitted" => {
                tokens.push(v["token"].as_str().expect("token").to_string())
            }
            _ => waiting.push(ws),
        }
    }
    assert_eq!((tokens.len(), waiting.len()), (4, 8));
    let verify = |n: &Server, token: &str| {
        api(
            n,
            "POST",
            "/api/rooms/clinic/verify",
            Some(json!({ "token": token })),
        )
        .1
    };
    assert_eq!(verify(&a, &tokens[0])["valid"], true);

    let body = Some(json!({"reason": "sold out"}));
    let (status, _) = api(&a, "DELETE", "/api/rooms/clinic", body);
    assert_eq!(status, 200);
    for ws in &mut waiting {
        let e = loop {
            let v = next_json(ws).await;
            if v["op"] == "error" {
                break v;
            }
        };
        assert_eq!(
            (e["code"].as_str(), e["message"].as_str()),
            (Some("room_closed"), Some("sold out"))
        );
    }
    let mut late = ws_to(b.public_addr).await;
    assert_eq!(join(&mut late, "clinic", None).await["code"], "room_closed");
    // The room made again under the same name is another generation: the
    // old admissions are refused on every node.
    let (status, _) = api(
        &b,
        "PUT",
        "/api/rooms/clinic",
        Some(json!({"admit_per_minute": 0})),
    );
    assert_eq!(status, 201);
    let v = verify(&a, &tokens[0]);
    assert_eq!(
        (v["valid"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("for another room")),
        "{v}"
    );
    a.shutdown();
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_while_redis_is_down_gets_an_error_frame_and_works_once_it_is_back() {
    let mut redis = Redis::start(true);
    let a = node(&redis);
    let (status, _) = api(
        &a,
        "PUT",
        "/api/rooms/r",
        Some(json!({"admit_per_minute": 0})),
    );
    assert_eq!(status, 201);
    let mut ws = ws_to(a.public_addr).await;
    let first = join(&mut ws, "r", None).await;
    assert_eq!(first["position"], 1, "{first}");
    redis.stop();
    let e = join(&mut ws, "r", first["ticket"].as_str()).await;
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{e}"
    );
    let (status, _) = api(&a, "GET", "/api/rooms/r", None);
    assert_eq!(status, 503);
    redis.launch(true);
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let back = join(&mut ws, "r", first["ticket"].as_str()).await;
        if back["op"] == "queued" {
            assert_eq!(back["position"], 1, "the place survived: {back}");
            break;
        }
        assert!(Instant::now() < deadline, "rooms never came back: {back}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_keeps_its_place_on_another_node_until_the_grace_period_ends() {
    let redis = Redis::start(false);
    let grace = ["--room-grace", "1s"];
    let with_grace = |r: &Redis| {
        let url = r.url();
        let mut args = vec!["--redis", &url, "--token-secret", SECRET, "--api-key", KEY];
        args.extend_from_slice(&grace);
        start(&args)
    };
    let (a, b) = (with_grace(&redis), with_grace(&redis));
    let (status, _) = api(
        &a,
        "PUT",
        "/api/rooms/clinic",
        Some(json!({"admit_per_minute": 0})),
    );
    assert_eq!(status, 201);
    let mut line = Vec::new();
    let mut tickets = Vec::new();
    for i in 0..5u64 {
        let mut ws = ws_to(a.public_addr).await;
        let q = join(&mut ws, "clinic", None).await;
        assert_eq!(q["position"], i + 1, "{q}");
        tickets.push(q["ticket"].as_str().expect("ticket").to_string());
        line.push(ws);
    }
    // Number 3 reloads onto the other node and keeps its place.
    drop(line.remove(2));
    let mut back = ws_to(b.public_addr).await;
    let q = join(&mut back, "clinic", Some(&tickets[2])).await;
    assert_eq!(
        (q["op"].as_str(), q["position"].as_u64()),
        (Some("queued"), Some(3)),
        "{q}"
    );
    // Number 4 goes and stays away past the grace period: its place is
    // gone on every node, and number 5 moves up.
    drop(line.remove(2));
    until("the place to be lost", || {
        room(&b, "clinic")["waiting"] == 4
    })
    .await;
    let mut late = ws_to(b.public_addr).await;
    let e = join(&mut late, "clinic", Some(&tickets[3])).await;
    assert_eq!(e["code"], "ticket_expired", "{e}");
    let fifth = next_json(&mut line[2]).await;
    assert_eq!(
        (fifth["op"].as_str(), fifth["position"].as_u64()),
        (Some("queued"), Some(4)),
        "{fifth}"
    );
    // Both nodes' metrics show the whole room.
    for n in [&a, &b] {
        assert_eq!(metric(n, "surge_room_waiting{room=\"clinic\"}"), 4);
    }
    a.shutdown();
    b.shutdown();
}
