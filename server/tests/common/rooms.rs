//! Helpers the waiting-room tests share (in-process `rooms.rs` and Redis
//! `rooms_redis.rs`): the room API with the backend's key, a browser that
//! joins and waits until admitted (optionally rejoining elsewhere with its
//! ticket), and the ticket's parts. Include with
//! `#[path = "common/rooms.rs"] mod rooms_common;` after `mod common;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use surge::Server;

use crate::common::{next_json, send_text, Ws, WAIT};

pub const SECRET: &str = "booking-backend-shared-secret-1";
pub const KEY: &str = "publish-api-key-0123456789";

/// A request to the room API with the API key; status and JSON body.
pub fn api(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    api_with(server, method, path, body, Some(KEY))
}

/// As [`api`], with the given key or none.
pub fn api_with(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (u16, Value) {
    let url = format!("http://{}{}", server.publish_addr, path);
    let mut request = ureq::request(method, &url).timeout(WAIT);
    if let Some(key) = key {
        request = request.set("Authorization", &format!("Bearer {key}"));
    }
    let result = match body {
        Some(b) => request.send_string(&b.to_string()),
        None => request.call(),
    };
    let (status, text) = match result {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("room API request failed: {e}"),
    };
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `GET /api/rooms/NAME`, which must answer 200.
pub fn room(server: &Server, name: &str) -> Value {
    let (status, body) = api(server, "GET", &format!("/api/rooms/{name}"), None);
    assert_eq!(status, 200, "{body}");
    body
}

/// Sends a join (with a ticket to resume) and returns the answer.
pub async fn join(ws: &mut Ws, room: &str, ticket: Option<&str>) -> Value {
    let mut cmd = json!({"op":"join","room":room});
    if let Some(t) = ticket {
        cmd["ticket"] = json!(t);
    }
    send_text(ws, &cmd.to_string()).await;
    next_json(ws).await
}

pub async fn ws_to(addr: SocketAddr) -> Ws {
    let url = format!("ws://{addr}/ws");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

/// Waits (bounded) until `check` holds.
pub async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT * 3;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ticket's kind and number (`KIND.ROOM.EPOCH.NUMBER.SIG`, see
/// docs/waiting-room.md).
pub fn ticket_parts(ticket: &str) -> (String, u64) {
    let parts: Vec<&str> = ticket.split('.').collect();
    assert_eq!(parts.len(), 5, "{ticket}");
    (parts[0].to_string(), parts[3].parse().expect("number"))
}

/// What one browser saw from joining to admission.
pub struct Seen {
    pub ticket: String,
    pub positions: Vec<u64>,
    pub seq: u64,
    pub token: String,
    /// `queued` updates received after the first answer.
    pub updates: usize,
}

/// One browser: joins through `first` and reads until admitted; if `then`
/// is set, drops after its first position update and rejoins with its
/// ticket through `then`.
pub async fn wait_in_line(first: SocketAddr, then: Option<SocketAddr>, room: String) -> Seen {
    let mut ws = ws_to(first).await;
    let answer = join(&mut ws, &room, None).await;
    assert_eq!(answer["op"], "queued", "{answer}");
    let ticket = answer["ticket"].as_str().expect("ticket").to_string();
    let mut positions: Vec<u64> = answer["position"].as_u64().into_iter().collect();
    let mut updates = 0;
    let mut then = then;
    let admitted = |ticket, positions, v: &Value, updates| Seen {
        ticket,
        positions,
        seq: v["seq"].as_u64().expect("seq"),
        token: v["token"].as_str().expect("token").into(),
        updates,
    };
    loop {
        let v = tokio::time::timeout(WAIT * 6, next_json(&mut ws))
            .await
            .expect("admitted in time");
        match v["op"].as_str() {
            Some("queued") => {
                updates += 1;
                positions.extend(v["position"].as_u64());
                if let Some(other) = then.take() {
                    drop(ws);
                    ws = ws_to(other).await;
                    let back = join(&mut ws, &room, Some(&ticket)).await;
                    match back["op"].as_str() {
                        Some("queued") => positions.extend(back["position"].as_u64()),
                        Some("admitted") => return admitted(ticket, positions, &back, updates),
                        _ => panic!("the ticket lost its place on another node: {back}"),
                    }
                }
            }
            Some("admitted") => return admitted(ticket, positions, &v, updates),
            _ => panic!("unexpected {v}"),
        }
    }
}

/// Waits for every browser and returns what they saw in admission order,
/// after checking each was admitted exactly once: admission numbers run
/// 1..=N with none missing or repeated.
pub async fn admitted_once_each(browsers: Vec<tokio::task::JoinHandle<Seen>>) -> Vec<Seen> {
    let mut seen = Vec::new();
    for b in browsers {
        seen.push(b.await.expect("browser task"));
    }
    seen.sort_by_key(|s| s.seq);
    let seqs: Vec<u64> = seen.iter().map(|s| s.seq).collect();
    assert_eq!(
        seqs,
        (1..=seen.len() as u64).collect::<Vec<_>>(),
        "each once"
    );
    seen
}

/// The fairness every room promises, from what its browsers saw (`seen`
/// in admission order; `early` of them joined before the opening): the
/// pre-queue first and shuffled, then first come, first served by ticket,
/// and no one's position ever rose.
pub fn assert_fair_order(seen: &[Seen], early_joiners: usize) {
    let order: Vec<(String, u64)> = seen.iter().map(|s| ticket_parts(&s.ticket)).collect();
    let early = order.iter().take_while(|(k, _)| k == "p").count();
    assert!(
        order[early..].iter().all(|(k, _)| k == "q"),
        "pre-queue ahead of all"
    );
    assert!(
        early >= early_joiners / 2,
        "the early joiners were in the pre-queue: {early}"
    );
    let serials: Vec<u64> = order[..early].iter().map(|(_, n)| *n).collect();
    assert!(
        serials.windows(2).any(|w| w[0] > w[1]),
        "pre-queue shuffled"
    );
    let places: Vec<u64> = order[early..].iter().map(|(_, n)| *n).collect();
    assert!(
        places.windows(2).all(|w| w[0] < w[1]),
        "then in ticket order"
    );
    for s in seen {
        assert!(
            s.positions.windows(2).all(|w| w[0] >= w[1]),
            "positions never increase: {:?}",
            s.positions
        );
    }
}
