//! The waiting room against a real server: tokio-tungstenite browsers join
//! over their WebSocket, the booking backend drives rooms over the publish
//! API (with its key), and admission tokens are checked with `verify`.
//! Rates are checked as counts over windows the test measures; no test
//! asserts on wall time beyond bounded waits.

mod common;
#[path = "common/rooms.rs"]
mod rooms_common;

use std::time::{Duration, Instant};

use common::*;
use rooms_common::*;
use serde_json::{json, Value};
use surge::channels::token::unix_now;

fn server() -> surge::Server {
    start(&["--token-secret", SECRET, "--api-key", KEY])
}

fn put_room(server: &surge::Server, name: &str, settings: Value) {
    let (status, body) = api(server, "PUT", &format!("/api/rooms/{name}"), Some(settings));
    assert!(status == 200 || status == 201, "{status} {body}");
}

fn verify(server: &surge::Server, name: &str, token: &str) -> Value {
    let path = format!("/api/rooms/{name}/verify");
    let (status, body) = api(server, "POST", &path, Some(json!({ "token": token })));
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_are_admitted_once_each_in_fair_order_at_the_set_rate() {
    const EARLY: usize = 200;
    const LATE: usize = 800;
    const PER_MINUTE: u64 = 3_000;
    let server = server();
    let opens_at = unix_now() + 3;
    put_room(
        &server,
        "sale",
        json!({"admit_per_minute": PER_MINUTE, "opens_at": opens_at}),
    );
    let addr = server.public_addr;
    let mut browsers = Vec::new();
    for _ in 0..EARLY {
        browsers.push(tokio::spawn(wait_in_line(addr, None, "sale".into())));
    }
    until("the opening", || unix_now() > opens_at).await;
    for _ in 0..LATE {
        browsers.push(tokio::spawn(wait_in_line(addr, None, "sale".into())));
    }
    until("everyone in line", || {
        let r = room(&server, "sale");
        r["waiting"].as_u64().unwrap_or(0) + r["admitted_total"].as_u64().unwrap_or(0)
            == (EARLY + LATE) as u64
    })
    .await;
    // The admission rate, as counts over two windows measured here.
    for _ in 0..2 {
        let (t1, a1) = (
            Instant::now(),
            room(&server, "sale")["admitted_total"].clone(),
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        let r = room(&server, "sale");
        let seconds = t1.elapsed().as_secs_f64();
        let admitted = r["admitted_total"].as_u64().unwrap() - a1.as_u64().unwrap();
        assert!(
            r["waiting"].as_u64().unwrap() > 0,
            "the line ran dry: window invalid"
        );
        let per_minute = admitted as f64 / seconds * 60.0;
        println!("admitted {admitted} in {seconds:.2} s: {per_minute:.0}/min (set {PER_MINUTE})");
        let off = (per_minute - PER_MINUTE as f64).abs() / PER_MINUTE as f64;
        assert!(off < 0.10, "{per_minute:.0}/min against {PER_MINUTE}");
    }
    let seen = admitted_once_each(browsers).await;
    let mut tokens: Vec<&str> = seen.iter().map(|s| s.token.as_str()).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), EARLY + LATE, "one admission token each");
    // Pre-queue first (shuffled), then first come, first served.
    assert_fair_order(&seen, EARLY);
    let updates: usize = seen.iter().map(|s| s.updates).sum();
    println!("{} position updates for {} users", updates, EARLY + LATE);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_keeps_its_place_across_reconnects_and_cannot_be_forged() {
    let server = server();
    put_room(&server, "clinic", json!({"admit_per_minute": 0}));
    put_room(&server, "other", json!({"admit_per_minute": 0}));
    let mut line = Vec::new();
    let mut tickets = Vec::new();
    for i in 0..5u64 {
        let mut ws = connect(&server, "").await;
        let q = join(&mut ws, "clinic", None).await;
        assert_eq!(q["position"], i + 1, "{q}");
        tickets.push(q["ticket"].as_str().unwrap().to_string());
        line.push(ws);
    }
    // Number 3 loses its connection and comes back on a new one.
    drop(line.remove(2));
    let mut back = connect(&server, "").await;
    let q = join(&mut back, "clinic", Some(&tickets[2])).await;
    assert_eq!(
        (q["op"].as_str(), q["position"].as_u64()),
        (Some("queued"), Some(3)),
        "{q}"
    );
    let mut other = connect(&server, "").await;
    let foreign = join(&mut other, "other", None).await["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    // Number 5's ticket, its place changed to the front, signature kept.
    let mut parts: Vec<&str> = tickets[4].split('.').collect();
    parts[3] = "0";
    let moved = parts.join(".");
    let refusals = [
        ("moved ahead", moved, "bad_ticket"),
        ("another room's", foreign, "bad_ticket"),
        ("made up", "q.c2FsZQ.1.0.AAAA".to_string(), "bad_ticket"),
    ];
    let mut ws = connect(&server, "").await;
    for (what, ticket, code) in refusals {
        let e = join(&mut ws, "clinic", Some(&ticket)).await;
        assert_eq!(
            (e["op"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{what}: {e}"
        );
    }
    let e = join(&mut ws, "nowhere", None).await;
    assert_eq!(e["code"], "unknown_room");
    // Closing tells everyone waiting, and later joins hear it is closed.
    let (status, _) = api(
        &server,
        "DELETE",
        "/api/rooms/clinic",
        Some(json!({"reason":"sold out"})),
    );
    assert_eq!(status, 200);
    let e = next_json(&mut back).await;
    assert_eq!(
        (e["code"].as_str(), e["message"].as_str()),
        (Some("room_closed"), Some("sold out"))
    );
    let e = join(&mut ws, "clinic", None).await;
    assert_eq!(e["code"], "room_closed");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_accepts_live_admissions_and_refuses_expired_altered_and_foreign_ones() {
    let server = server();
    put_room(
        &server,
        "sale",
        json!({"admit_per_minute": 60_000, "admission_ttl": 1}),
    );
    put_room(&server, "other", json!({"admit_per_minute": 60_000}));
    let seen = wait_in_line(server.public_addr, None, "sale".into()).await;
    let ok = verify(&server, "sale", &seen.token);
    assert_eq!(ok["valid"], true, "{ok}");
    assert_eq!(ok["ticket"], ticket_parts(&seen.ticket).1);
    let foreign = verify(&server, "other", &seen.token);
    assert_eq!(foreign["valid"], false, "{foreign}");
    let altered = seen.token.replacen(".0.", ".1.", 1);
    assert_eq!(verify(&server, "sale", &altered)["valid"], false);
    assert_eq!(
        verify(&server, "sale", &seen.ticket)["valid"],
        false,
        "a ticket is no admission"
    );
    until("the admission to expire", || {
        verify(&server, "sale", &seen.token)["valid"] == false
    })
    .await;
    assert_eq!(verify(&server, "sale", &seen.token)["reason"], "expired");
    // The same API key as publishing.
    let (status, _) = api_with(&server, "GET", "/api/rooms/sale", None, None);
    assert_eq!(status, 401);
    let (status, _) = api(&server, "GET", "/api/rooms/none", None);
    assert_eq!(status, 404);
    let (status, _) = api(
        &server,
        "PUT",
        "/api/rooms/x",
        Some(json!({"admit_per_minute":"fast"})),
    );
    assert_eq!(status, 400);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_change_applies_at_once_and_max_admitted_holds() {
    let server = server();
    put_room(
        &server,
        "r",
        json!({"admit_per_minute": 0, "max_admitted": 5}),
    );
    let mut browsers = Vec::new();
    for _ in 0..20 {
        browsers.push(tokio::spawn(wait_in_line(
            server.public_addr,
            None,
            "r".into(),
        )));
    }
    until("everyone in line", || room(&server, "r")["waiting"] == 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        room(&server, "r")["admitted_total"],
        0,
        "a rate of 0 admits nobody"
    );
    put_room(
        &server,
        "r",
        json!({"admit_per_minute": 60_000, "max_admitted": 5}),
    );
    until("five admitted", || {
        room(&server, "r")["admitted_total"] == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = room(&server, "r");
    assert_eq!(
        (r["admitted_total"].as_u64(), r["admitted"].as_u64()),
        (Some(5), Some(5)),
        "{r}"
    );
    // Raising the cap lets the rest in.
    put_room(&server, "r", json!({"admit_per_minute": 60_000}));
    for b in browsers {
        b.await.expect("browser");
    }
    let text = admin_get(&server, "/metrics").1;
    assert!(
        text.contains("surge_room_admissions_total{room=\"r\"} 20"),
        "{text}"
    );
    assert!(text.contains("surge_room_wait_seconds_count{room=\"r\"} 20"));
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_whose_holder_stays_away_past_the_grace_period_is_lost() {
    let server = start(&[
        "--token-secret",
        SECRET,
        "--api-key",
        KEY,
        "--room-grace",
        "1s",
    ]);
    put_room(&server, "r", json!({"admit_per_minute": 0}));
    let mut line = Vec::new();
    let mut tickets = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&server, "").await;
        tickets.push(
            join(&mut ws, "r", None).await["ticket"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        line.push(ws);
    }
    // The connection closing is what starts the grace period.
    drop(line.remove(1));
    until("the place to be lost", || {
        room(&server, "r")["waiting"] == 2
    })
    .await;
    let mut back = connect(&server, "").await;
    let e = join(&mut back, "r", Some(&tickets[1])).await;
    assert_eq!(e["code"], "ticket_expired", "{e}");
    // Those still connected keep theirs.
    let q = join(&mut back, "r", Some(&tickets[2])).await;
    assert_eq!(q["position"], 2, "{q}");
    server.shutdown();
}
