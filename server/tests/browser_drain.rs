//! surge.js in a real headless Chromium honours a drain's reconnect hint:
//! pages closed with 1012 "restarting; reconnect in 2s" come back after the
//! hint plus a random share of as much again: not at once, not all at the
//! same moment, and not never.
//!
//! Ten `Surge` clients from the served /surge.js run in one page, each
//! logging its status changes with the page's own clock. The real binary
//! is drained with SIGTERM; a second node on the same port (SO_REUSEPORT,
//! as in a rolling restart) takes them back, and its /metrics must count
//! them all.
//!
//! Needs Chromium; common/webdriver.rs says how it is found and skipped.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

#[path = "common/webdriver.rs"]
mod webdriver;
use webdriver::{eventually, free_port, Browser, Killed};
#[path = "common/listening.rs"]
mod listening;
use listening::listening;

const BIN: &str = env!("CARGO_BIN_EXE_surge");
/// Pages in the test: enough that their delays must differ (jitter) with
/// near certainty, few enough to stay light.
const PAGES: usize = 10;
/// The hint the drain sends: given explicitly, as two in-process nodes on
/// one port are not what a lone node's default (its drain window) is for.
const HINT_MS: f64 = 2000.0;

/// Starts a node on `port`; returns it and its admin address.
fn start_node(port: u16) -> (Killed, String) {
    let mut child = Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--publish-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--workers",
            "1",
            "--log",
            "warn",
            "--shutdown-timeout",
            "1s",
        ])
        .args(["--drain-grace", "0s", "--drain-window", "1s"])
        .args(["--drain-reconnect-hint", "2s"])
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .spawn()
        .expect("surge starts");
    let admin = listening(&mut child).admin;
    (Killed(child), admin)
}

fn open_connections(admin: &str) -> u64 {
    let text = ureq::get(&format!("http://{admin}/metrics"))
        .timeout(Duration::from_secs(5))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("surge_open_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Starts `PAGES` clients from the served surge.js, each logging
/// `{i, status, at, code, inSeconds}` to `window.surgeLog`.
const START_CLIENTS: &str = r#"
const [url, pages, done] = arguments;
window.surgeLog = [];
import("/surge.js").then(({ Surge }) => {
  for (let i = 0; i < pages; i++) {
    const s = new Surge(url, {
      onStatus: (status, info) => window.surgeLog.push({
        i, status, at: performance.now(),
        code: info ? info.code : null, inSeconds: info ? info.inSeconds : null,
      }),
    });
    s.subscribe("clinic:drain", () => {});
  }
  done(true);
}, (e) => done(String(e)));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surge_js_reconnects_after_the_drain_hint_plus_jitter() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let c = &browser.client;
    let port = free_port();
    let (mut first, first_admin) = start_node(port);
    c.goto(&format!("http://127.0.0.1:{port}/surge.js"))
        .await
        .expect("a page of the server's origin");
    let started = c
        .execute_async(
            START_CLIENTS,
            vec![
                serde_json::json!(format!("ws://127.0.0.1:{port}/ws")),
                serde_json::json!(PAGES),
            ],
        )
        .await
        .expect("surge.js loads");
    assert_eq!(started, Value::Bool(true), "{started}");
    let log = || async {
        c.execute("return window.surgeLog", vec![])
            .await
            .ok()
            .and_then(|v| v.as_array().cloned())
    };
    eventually("every page live on the first node", || async {
        let admin = first_admin.clone();
        let open = tokio::task::spawn_blocking(move || open_connections(&admin))
            .await
            .ok()?;
        (open == PAGES as u64).then_some(())
    })
    .await;

    // A deploy: the first node drains; a second takes the port's browsers.
    let pid = i32::try_from(first.0.id()).expect("pid");
    // SAFETY: kill only sends a signal to the process we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let (_second, second_admin) = start_node(port);
    eventually("every page back, on the second node", || async {
        let admin = second_admin.clone();
        let open = tokio::task::spawn_blocking(move || open_connections(&admin))
            .await
            .ok()?;
        (open == PAGES as u64).then_some(())
    })
    .await;
    let _ = first.0.wait();

    // Each page: closed with 1012, told (and waited) the hint plus up to as
    // much again, then connected anew.
    let events = log().await.expect("the pages' log");
    let mut delays = Vec::new();
    for i in 0..PAGES {
        let mine: Vec<&Value> = events.iter().filter(|e| e["i"] == i).collect();
        let closed = mine
            .iter()
            .position(|e| e["status"] == "reconnecting")
            .unwrap_or_else(|| panic!("page {i} never saw the close: {mine:?}"));
        let close = mine[closed];
        assert_eq!(close["code"], 1012, "page {i}: {close}");
        let planned = close["inSeconds"].as_u64().unwrap_or(0);
        assert!(
            (2..=4).contains(&planned),
            "page {i} planned {planned} s, not the 2 s hint plus up to 2 s: {close}"
        );
        let retry = mine[closed..]
            .iter()
            .find(|e| e["status"] == "connecting")
            .unwrap_or_else(|| panic!("page {i} never reconnected: {mine:?}"));
        let waited = retry["at"].as_f64().unwrap_or(0.0) - close["at"].as_f64().unwrap_or(0.0);
        // setTimeout never fires early: anything under the hint is a page
        // that did not wait for it.
        assert!(
            waited >= HINT_MS - 1.0,
            "page {i} came back after {waited} ms"
        );
        delays.push(waited);
    }
    // Jitter: ten draws from 2-4 s all within a tenth of a second of each
    // other has odds of about one in a hundred million.
    let spread = delays.iter().cloned().fold(f64::MIN, f64::max)
        - delays.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 100.0, "the pages came back together: {delays:?}");
    eprintln!("reconnect delays after the 1012, ms: {delays:.0?}");
    browser.close().await;
}
