//! The demo slot board in a real headless Chromium, driven over WebDriver:
//! the board shows the initial slots; a publication through the API changes
//! a slot on screen; a booking gets its confirmation pushed; the server is
//! killed and restarted and the page reconnects by itself and shows the new
//! state. A screenshot is saved to target/browser-test/board.png.
//!
//! Needs Chromium; common/webdriver.rs says how it is found and skipped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};

#[path = "common/webdriver.rs"]
mod webdriver;
use webdriver::{attr, book_a_free_slot, eventually, free_port, Browser, WAIT};
#[path = "common/listening.rs"]
mod listening;
use listening::listening;

const BIN: &str = env!("CARGO_BIN_EXE_surge");
const SECRET: &str = "browser-test-shared-secret-01";

struct Surge {
    child: Child,
    publish: String,
}

impl Drop for Surge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo(port: u16) -> Surge {
    let mut child = Command::new(BIN)
        .args([
            "--demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--publish-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--token-secret",
            SECRET,
            "--log",
            "warn",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("surge starts");
    let publish = listening(&mut child).publish_url;
    Surge { child, publish }
}

/// Publishes a clinic state with a marker slot until the page shows it
/// (the demo backend's own changes may overwrite a single publication).
async fn publish_until_shown(c: &Client, publish: &str, marker: &str, free: u32) {
    let body = format!(
        r#"{{"ch":"clinic:riverside","data":{{"clinic":"riverside","name":"Riverside Clinic","date":"test","slots":[{{"t":"{marker}","free":{free}}}]}}}}"#
    );
    let start = Instant::now();
    loop {
        let (url, b) = (publish.to_string(), body.clone());
        // A refused publish (say, mid-restart) is simply tried again below.
        let _published =
            tokio::task::spawn_blocking(move || ureq::post(&url).send_string(&b).is_ok())
                .await
                .expect("publish task");
        for _ in 0..10 {
            let css = format!(r#".slot[data-slot="{marker}"][data-free="{free}"]"#);
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
async fn slot_board_updates_books_and_survives_a_server_restart_in_chromium() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let c = &browser.client;
    let port = free_port();
    let server = start_demo(port);

    c.goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .expect("page loads");
    // The initial slots, from the snapshot, and the live badge.
    let slots = eventually("the initial slots", || async {
        c.find_all(Locator::Css(".slot"))
            .await
            .ok()
            .filter(|s| s.len() == 16)
    })
    .await;
    assert_eq!(slots.len(), 16);
    eventually("the live badge", || async {
        attr(c, "#status", "data-status")
            .await
            .filter(|s| s == "live")
    })
    .await;

    // A publication through the API changes the board.
    publish_until_shown(c, &server.publish, "23:59", 7).await;

    // Booking: the confirmation is pushed to the user's private channel.
    // Wait for the backend's own state again (16 slots, not the marker), and
    // pick a slot with two or more places so a concurrent change cannot fill it.
    c.goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .expect("reload");
    let kind = book_a_free_slot(c).await;
    assert_eq!(kind, "confirmed", "a slot with free places is booked");

    // Kill the server; the page notices, then reconnects by itself once it is back.
    drop(server);
    eventually("the reconnecting badge", || async {
        attr(c, "#status", "data-status")
            .await
            .filter(|s| s != "live")
    })
    .await;
    let server = start_demo(port);
    eventually("the live badge after restart", || async {
        attr(c, "#status", "data-status")
            .await
            .filter(|s| s == "live")
    })
    .await;
    publish_until_shown(c, &server.publish, "23:58", 3).await;

    webdriver::screenshot(c, "board.png").await;
    browser.close().await;
}
