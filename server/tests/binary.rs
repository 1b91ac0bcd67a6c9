//! The real `surge` binary: its help, its refusal of nonsense, the line it
//! prints with its addresses, and graceful shutdown on SIGINT.

mod common;
#[path = "common/listening.rs"]
mod listening;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use listening::listening;

const BIN: &str = env!("CARGO_BIN_EXE_surge");

#[test]
fn help_explains_every_option_with_its_default() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--listen",
        "--publish-listen",
        "--admin-listen",
        "--workers",
        "--backlog",
        "--max-connections",
        "--retry-after",
        "--handshake-timeout",
        "--ping-interval",
        "--pong-timeout",
        "--close-timeout",
        "--max-message",
        "--max-outbound",
        "--max-subscriptions",
        "--allowed-origin",
        "--max-publish-data",
        "--max-publish-body",
        "--shutdown-timeout",
        "--log",
        "--echo",
        "--config",
    ] {
        assert!(help.contains(option), "--help lacks {option}");
    }
    for default in [
        "[default: 25s]",
        "[default: 16KiB]",
        "[default: 256KiB]",
        "[env: SURGE_WORKERS=]",
    ] {
        assert!(help.contains(default), "--help lacks {default}");
    }
}

#[test]
fn nonsense_configuration_is_refused_at_start_with_exit_2() {
    let out = Command::new(BIN)
        .args(["--pong-timeout", "60s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pong-timeout"));
    let out = Command::new(BIN)
        .env("SURGE_MAX_MESSAGE", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lots"));
}

/// Starts the binary on ephemeral ports and reads its address line.
fn spawn_surge() -> (Child, String, String) {
    let mut child = Command::new(BIN)
        .args(surge::config::EPHEMERAL_LOOPBACK)
        .args(["--workers", "2", "--shutdown-timeout", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let at = listening(&mut child);
    (child, format!("ws://{}/ws", at.public), at.publish_url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_every_connection_with_1001_and_exits_0() {
    let (mut child, ws_url, publish_url) = spawn_surge();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{ws_url}?ch=c"))
            .await
            .unwrap();
        clients.push(ws);
    }
    for ws in clients.iter_mut() {
        assert_eq!(next_json(ws).await["op"], "subscribed");
    }
    let publish_url2 = publish_url.clone();
    tokio::task::spawn_blocking(move || {
        ureq::post(&publish_url2)
            .send_string(r#"{"ch":"c","data":1}"#)
            .unwrap()
    })
    .await
    .unwrap();
    // SIGINT stops at once; SIGTERM drains first (tests/ops_drain.rs).
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    for ws in clients.iter_mut() {
        assert_eq!(
            next_json(ws).await["data"],
            1,
            "what was published before shutdown arrives"
        );
        assert_eq!(close_code(ws).await, 1001);
    }
    drop(clients);
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("surge did not exit after SIGINT")
    });
    assert!(status.success(), "{status:?}");
}

#[test]
fn surge_token_mints_a_token_the_server_accepts() {
    let secret = "binary-test-shared-secret";
    let out = Command::new(BIN)
        .args(["token", "--channel", "user/77", "--ttl", "60"])
        .env("SURGE_TOKEN_SECRET", secret)
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let key = surge::channels::token::TokenKey::new(secret.as_bytes()).unwrap();
    assert_eq!(
        key.verify(token.trim(), "user/77", surge::channels::token::unix_now()),
        Ok(())
    );
}

#[test]
fn a_public_publish_listener_without_an_api_key_is_refused() {
    let out = Command::new(BIN)
        .args(["--publish-listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-key"));
}
