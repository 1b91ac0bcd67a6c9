//! A real headless Chromium for the browser tests, driven over WebDriver:
//! finds `chromium` and `chromedriver`, starts the driver on a free port,
//! opens a session with a throwaway profile, and cleans all of it up. Also
//! the polling helpers every browser test needs (`eventually`, `attr`).
//!
//! It knows nothing about Surge: starting servers and what a page should
//! show stay in the tests. Included by path (`#[path = "common/webdriver.rs"]
//! mod webdriver;`) from the browser tests only, so the other test binaries
//! do not compile WebDriver code they never run.
//!
//! Needs Debian's chromium and chromium-driver (scripts/deps.sh installs
//! them), found on PATH the way `command -v` finds them, so the tests and
//! `.ci/run` agree on whether the browser is installed. A missing browser
//! fails the test; the only way to skip it is to say so:
//! `SURGE_SKIP_BROWSER=1`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

/// Set to `1` to skip the browser tests on a machine without Chromium.
/// Nothing else skips them: a browser test that quietly passes without a
/// browser proves nothing.
pub const SKIP_VAR: &str = "SURGE_SKIP_BROWSER";

/// Bound on every wait in a browser test: generous, because Chromium's first
/// start on a busy 2-core box takes seconds; polls, never sleeps-and-hopes.
pub const WAIT: Duration = Duration::from_secs(40);

/// The first executable file called `name` in a directory of PATH.
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
             Debian's chromium and chromium-driver (scripts/deps.sh does), or \
             set {SKIP_VAR}=1 to skip this test on purpose"
        ),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed when dropped (a server, chromedriver), so a
/// failing assertion never leaves one behind.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a test may add to the standard session.
#[derive(Default)]
pub struct Options<'a> {
    /// Extra Chromium command-line switches (e.g. `--ignore-certificate-errors`).
    pub args: &'a [&'a str],
    /// Extra top-level W3C capabilities (e.g. `"acceptInsecureCerts": true`).
    pub capabilities: serde_json::Map<String, serde_json::Value>,
}

/// One headless Chromium session and the chromedriver behind it.
pub struct Browser {
    pub client: Client,
    profile: PathBuf,
    // Dropped after `client`: the driver must outlive the session it serves.
    _driver: Killed,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with the standard
    /// switches; `None` only when `SURGE_SKIP_BROWSER=1`.
    pub async fn start() -> Option<Browser> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options<'_>) -> Option<Browser> {
        let (chromium, chromedriver) = browser_binaries()?;
        // Two TLS backends are linked into the test binaries; pick one
        // (WebDriver here is plain HTTP on loopback anyway).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let driver_port = free_port();
        let driver = Killed(
            Command::new(&chromedriver)
                .arg(format!("--port={driver_port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let profile = profile_dir();
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1000,900".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        args.extend(options.args.iter().map(|a| a.to_string()));
        let mut caps = options.capabilities;
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": args }),
        );
        let client = eventually("chromedriver", || {
            let caps = caps.clone();
            async move {
                // WebDriver on loopback is plain HTTP: no TLS connector.
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{driver_port}"))
                    .await
                    .ok()
            }
        })
        .await;
        Some(Browser {
            client,
            profile,
            _driver: driver,
        })
    }

    /// Ends the session (Chromium exits) and removes the profile. Without
    /// it, dropping kills only the driver.
    pub async fn close(self) {
        let Browser {
            client,
            profile,
            _driver,
        } = self;
        client.close().await.expect("close browser");
        let _ = std::fs::remove_dir_all(profile);
    }
}

/// A fresh profile directory per session: two sessions in one test binary
/// (or two test binaries at once) must not share Chromium's profile lock.
fn profile_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "surge-chromium-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("profile dir");
    dir
}

/// Polls `check` until it gives `Some`, or fails after `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
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

/// An attribute of the first element matching `css`, `None` while there is
/// no such element or attribute.
pub async fn attr(c: &Client, css: &str, name: &str) -> Option<String> {
    c.find(Locator::Css(css))
        .await
        .ok()?
        .attr(name)
        .await
        .ok()?
}

/// Saves a screenshot to target/browser-test/NAME for a person to look at.
pub async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-test");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    std::fs::write(dir.join(name), png).expect("screenshot saved");
}

/// Books one of the demo board's 16 slots with two or more free places (so
/// a concurrent change by the demo backend cannot fill it first) and
/// returns the booking banner's outcome, `confirmed` or `rejected`.
pub async fn book_a_free_slot(c: &Client) -> String {
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
    eventually("the booking banner", || async {
        attr(c, "#banner", "data-kind")
            .await
            .filter(|k| k == "confirmed" || k == "rejected")
    })
    .await
}
