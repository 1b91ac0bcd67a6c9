//! The demo's "sale opens at" mode (`--demo-sale-in`) in a real headless
//! Chromium: the page waits in the room, sees its position, reloads and
//! keeps its ticket and place, is admitted, and books with its admission
//! (which the demo backend verifies with Surge). Others in line are
//! tokio-tungstenite browsers. A screenshot of the waiting room is saved to
//! target/browser-test/room.png.
//!
//! Needs Chromium; common/webdriver.rs says how it is found and skipped.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, Locator};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[path = "common/webdriver.rs"]
mod webdriver;
use webdriver::{attr, book_a_free_slot, eventually, free_port, Browser, Killed};

const BIN: &str = env!("CARGO_BIN_EXE_surge");
const SECRET: &str = "browser-room-shared-secret-01";
const TICKET_KEY: &str = "surge.ticket.demo-sale";

async fn stored_ticket(c: &Client) -> Option<String> {
    let v = c
        .execute(
            "return sessionStorage.getItem(arguments[0])",
            vec![serde_json::json!(TICKET_KEY)],
        )
        .await
        .ok()?;
    v.as_str().map(str::to_string)
}

/// Someone else in line: joins and stays connected.
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn another_browser(port: u16) -> Ws {
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let join = r#"{"op":"join","room":"demo-sale"}"#;
    ws.send(Message::Text(join.into())).await.expect("join");
    let reply = ws.next().await.expect("reply").expect("frame");
    assert!(reply.to_string().contains("queued"), "{reply}");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sale_waits_in_line_keeps_the_place_on_reload_then_books() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let c = &browser.client;
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["--demo", "--demo-sale-in", "2s", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "--publish-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--token-secret", SECRET, "--log", "warn"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("surge starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address line");
    let _server = Killed(child);

    // After the opening, three others join first: the page is behind them
    // (30 admissions a minute, one every two seconds).
    let page = format!("http://127.0.0.1:{port}/");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(another_browser(port).await);
    }
    c.goto(&page).await.expect("page loads");
    let first: u64 = eventually("a position in line", || async {
        attr(c, "#room", "data-position").await?.parse().ok()
    })
    .await;
    assert!(first >= 1, "{first}");
    let ticket = stored_ticket(c).await.expect("the ticket is kept");
    assert!(
        c.find(Locator::Css("#board"))
            .await
            .expect("board")
            .is_displayed()
            .await
            .ok()
            == Some(false),
        "the board waits behind the room"
    );
    webdriver::screenshot(c, "room.png").await;

    // A reload keeps the ticket, and the place: never further back.
    c.goto(&page).await.expect("reload");
    let again = eventually("the position after the reload", || async {
        if attr(c, "#room", "data-admitted").await.as_deref() == Some("true") {
            return Some(0);
        }
        attr(c, "#room", "data-position").await?.parse::<u64>().ok()
    })
    .await;
    assert!(again <= first, "position {again} after reload, was {first}");
    assert_eq!(stored_ticket(c).await.as_deref(), Some(ticket.as_str()));

    // Admitted: the board appears, and a booking with the admission is confirmed.
    eventually("admission", || async {
        attr(c, "#room", "data-admitted")
            .await
            .filter(|a| a == "true")
    })
    .await;
    let kind = book_a_free_slot(c).await;
    assert_eq!(kind, "confirmed", "an admitted visitor books");
    drop(others);
    browser.close().await;
}
