//! A worker thread that dies despite the per-connection guard (forced by
//! a test hook): its connections leave the global count, /healthz stops
//! saying 200, the other worker's subscribers keep receiving, and the
//! `surge` binary exits non-zero so a supervisor restarts it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use surge::core::guard::KILL_WORKER;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_surge");

/// The next publication's data, or `None` when the connection ended.
async fn next_data_or_end(ws: &mut Ws) -> Option<serde_json::Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                return Some(v["data"].clone());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_releases_its_connections_and_fails_health() {
    let server = start(&["--test-panic-hooks"]);
    let mut clients = Vec::new();
    for _ in 0..12 {
        let mut ws = connect(&server, "?ch=w").await;
        assert_eq!(next_json(&mut ws).await["op"], "subscribed");
        clients.push(ws);
    }
    let mut killer = clients.pop().unwrap();
    send_text(&mut killer, KILL_WORKER).await;
    // Its worker answers the unknown command, then dies with it.
    while next_data_or_end(&mut killer).await.is_some() {}
    let (status, body) = admin_get(&server, "/healthz");
    assert_eq!(status, 503, "{body}");
    publish_async(&server, "w", "7").await;
    let mut survivors = 0;
    for ws in clients.iter_mut() {
        if let Some(data) = next_data_or_end(ws).await {
            assert_eq!(data, 7);
            survivors += 1;
        }
    }
    eprintln!(
        "worker killed: {} of 12 connections went with it",
        12 - survivors
    );
    assert_eq!(metric(&server, "surge_open_connections"), survivors);
    assert_eq!(metric(&server, "surge_dead_workers"), 1);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_non_zero_when_a_worker_dies() {
    let mut child = Command::new(BIN)
        .args(surge::config::EPHEMERAL_LOOPBACK)
        .args(["--workers", "1", "--test-panic-hooks", "--log", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ws_url = line.split_whitespace().nth(2).unwrap().to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    send_text(&mut ws, KILL_WORKER).await;
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("surge kept running with a dead worker")
    });
    assert_eq!(status.code(), Some(70), "{status:?}");
}
