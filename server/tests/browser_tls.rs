//! The demo slot board in a real headless Chromium over https:// and wss://:
//! the page, its scripts and the WebSocket all go through TLS terminated in
//! Surge's workers (a test certificate, so Chromium runs with
//! `--ignore-certificate-errors`). The board goes live, shows its slots, and
//! a publication through the API changes a slot on screen. The server's
//! counters confirm the TLS handshakes. A screenshot is saved to
//! target/browser-test/board-tls.png.
//!
//! Needs Chromium; common/webdriver.rs says how it is found and skipped.

mod common;
mod tls_common;

use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};

#[path = "common/webdriver.rs"]
mod webdriver;
use webdriver::{attr, eventually, Browser, Options, WAIT};

/// Publishes a clinic state with a marker slot until the page shows it
/// (the demo backend's own changes may overwrite a single publication).
async fn publish_until_shown(c: &Client, server: &surge::Server, marker: &str) {
    let data = format!(
        r#"{{"clinic":"riverside","name":"Riverside Clinic","date":"test","slots":[{{"t":"{marker}","free":5}}]}}"#
    );
    let css = format!(r#".slot[data-slot="{marker}"][data-free="5"]"#);
    let start = Instant::now();
    loop {
        common::publish_async(server, "clinic:riverside", &data).await;
        for _ in 0..10 {
            if c.find(Locator::Css(&css)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            start.elapsed() < WAIT,
            "the page never showed slot {marker}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_board_goes_live_and_updates_over_https_and_wss_in_chromium() {
    let Some(browser) = Browser::start_with(Options {
        args: &["--ignore-certificate-errors"],
        capabilities: serde_json::json!({ "acceptInsecureCerts": true })
            .as_object()
            .cloned()
            .unwrap_or_default(),
    })
    .await
    else {
        return;
    };
    let ca = tls_common::Ca::new("browser CA");
    let files = tls_common::Files::new("browser");
    files.write(&ca.leaf("surge"));
    let server = tls_common::start_tls(&files, &["--demo"]);
    let c = &browser.client;

    c.goto(&format!("https://127.0.0.1:{}/", server.public_addr.port()))
        .await
        .expect("page loads over https");
    eventually("the initial slots", || async {
        c.find_all(Locator::Css(".slot"))
            .await
            .ok()
            .filter(|s| s.len() == 16)
    })
    .await;
    eventually("the live badge (wss:// open)", || async {
        attr(c, "#status", "data-status")
            .await
            .filter(|s| s == "live")
    })
    .await;
    publish_until_shown(c, &server, "23:57").await;

    // The page, its assets and the WebSocket each came over TLS; none was
    // turned away for speaking plain HTTP.
    let full = common::metric(&server, r#"surge_tls_handshakes_total{kind="full"}"#);
    let resumed = common::metric(&server, r#"surge_tls_handshakes_total{kind="resumed"}"#);
    assert!(full + resumed >= 2, "full {full}, resumed {resumed}");
    assert_eq!(
        common::metric(&server, r#"surge_tls_refused_total{reason="plain_http"}"#),
        0
    );
    webdriver::screenshot(c, "board-tls.png").await;
    browser.close().await;
    server.shutdown();
}
