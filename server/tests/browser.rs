//! The demo slot board in a real headless Chromium, driven over WebDriver:
//! the board shows the initial slots; a publication through the API changes
//! a slot on screen; a booking gets its confirmation pushed; the server is
//! killed and restarted and the page reconnects by itself and shows the new
//! state. A screenshot is saved to target/browser-test/board.png.
//!
//! Needs Debian's chromium and chromium-driver (.ci/run installs them),
//! found on PATH as `chromium` and `chromedriver`, the same lookup `.ci/run`
//! makes with `command -v`. A missing browser fails the test; the only way
//! to skip it is to say so: `SURGE_SKIP_BROWSER=1`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

const BIN: &str = env!("CARGO_BIN_EXE_surge");
const SECRET: &str = "browser-test-shared-secret-01";
/// Bound on every wait; polls, never sleeps-and-hopes.
const WAIT: Duration = Duration::from_secs(30);

/// Set to `1` to skip this test on a machine without Chromium. Nothing else
/// skips it: a browser test that quietly passes without a browser proves
/// nothing.
const SKIP_VAR: &str = "SURGE_SKIP_BROWSER";

/// The first executable file called `name` in a directory of PATH: what the
/// shell's `command -v` finds, so the test and `.ci/run` agree on whether
/// the browser is installed.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Chromium and chromedriver from PATH; `None` only when the skip was asked
/// for (the reason is printed), a panic when they are missing otherwise.
fn browser_binaries() -> Option<(PathBuf, PathBuf)> {
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("SKIPPED: {SKIP_VAR}=1, the real-browser test did not run");
        return None;
    }
    match (on_path("chromium"), on_path("chromedriver")) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        (chromium, driver) => panic!(
            "the real-browser test needs `chromium` and `chromedriver` on PATH \
             (found chromium: {chromium:?}, chromedriver: {driver:?}); install \
             Debian's chromium and chromium-driver (.ci/run does), or set \
             {SKIP_VAR}=1 to skip this test on purpose"
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

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
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address line");
    let publish = line
        .split("publish=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("publish URL")
        .to_string();
    Surge { child, publish }
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` until it gives `Some`, or fails after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn attr(c: &Client, css: &str, name: &str) -> Option<String> {
    c.find(Locator::Css(css))
        .await
        .ok()?
        .attr(name)
        .await
        .ok()?
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
    let Some((chromium, chromedriver)) = browser_binaries() else {
        return;
    };
    // Two TLS backends are linked into the test binary; pick one (WebDriver
    // here is plain HTTP on loopback anyway).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver_port = free_port();
    let _driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver"),
    );
    let port = free_port();
    let server = start_demo(port);
    let profile = tempfile_dir();
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1000,900", format!("--user-data-dir={}", profile.display())]
        }
    });
    let caps = caps.as_object().cloned().expect("capabilities object");
    let c = eventually("chromedriver", || {
        let caps = caps.clone();
        async move {
            ClientBuilder::rustls()
                .ok()?
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{driver_port}"))
                .await
                .ok()
        }
    })
    .await;

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
        attr(&c, "#status", "data-status")
            .await
            .filter(|s| s == "live")
    })
    .await;

    // A publication through the API changes the board.
    publish_until_shown(&c, &server.publish, "23:59", 7).await;

    // Booking: the confirmation is pushed to the user's private channel.
    // Wait for the backend's own state again (16 slots, not the marker), and
    // pick a slot with two or more places so a concurrent change cannot fill it.
    c.goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .expect("reload");
    let open = eventually("a slot with free places", || async {
        let slots = c
            .find_all(Locator::Css(".slot"))
            .await
            .ok()
            .filter(|s| s.len() == 16)?;
        for el in slots {
            let free: u32 = el.attr("data-free").await.ok()??.parse().ok()?;
            if free >= 2 {
                return Some(el);
            }
        }
        None
    })
    .await;
    open.click().await.expect("click a slot");
    let kind = eventually("the booking banner", || async {
        attr(&c, "#banner", "data-kind")
            .await
            .filter(|k| k == "confirmed" || k == "rejected")
    })
    .await;
    assert_eq!(kind, "confirmed", "a slot with free places is booked");

    // Kill the server; the page notices, then reconnects by itself once it is back.
    drop(server);
    eventually("the reconnecting badge", || async {
        attr(&c, "#status", "data-status")
            .await
            .filter(|s| s != "live")
    })
    .await;
    let server = start_demo(port);
    eventually("the live badge after restart", || async {
        attr(&c, "#status", "data-status")
            .await
            .filter(|s| s == "live")
    })
    .await;
    publish_until_shown(&c, &server.publish, "23:58", 3).await;

    let png = c.screenshot().await.expect("screenshot");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-test");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    std::fs::write(dir.join("board.png"), png).expect("screenshot saved");
    c.close().await.expect("close browser");
    let _ = std::fs::remove_dir_all(profile);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("surge-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("profile dir");
    dir
}
