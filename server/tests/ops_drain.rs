//! A drain on the real binary with real signals: SIGTERM turns /readyz 503
//! at once (while /healthz stays 200), refuses publishes with 503 from
//! then on (in-process), and after the grace closes every connection with
//! 1012 and a reconnect hint, spread evenly over the window.

#[path = "common/listening.rs"]
mod listening;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use listening::listening;
use tokio_tungstenite::tungstenite::Message;

/// Connections drained: the issue's 10,000, within the 20,000 descriptors
/// a process may open here (the server runs as its own process).
const N: usize = 10_000;
const WINDOW_SECS: u64 = 10;
const WAIT: Duration = Duration::from_secs(60);

fn get(url: &str) -> u16 {
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{url}: {e}"),
    }
}

fn publish(addr: &str) -> u16 {
    let url = format!("http://{addr}/api/publish");
    match ureq::post(&url)
        .timeout(Duration::from_secs(5))
        .send_string(r#"{"ch":"clinic/1","data":1}"#)
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_ten_thousand_connections_evenly_with_1012() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(surge::config::EPHEMERAL_LOOPBACK)
        .args([
            "--workers",
            "2",
            "--log",
            "warn",
            "--shutdown-timeout",
            "2s",
        ])
        .args(["--max-connections-per-ip", "0"])
        .args([
            "--drain-grace",
            "1s",
            "--drain-window",
            &format!("{WINDOW_SECS}s"),
        ])
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("surge starts");
    let listening::Listening {
        public,
        publish: publish_addr,
        admin,
        ..
    } = listening(&mut child);

    // N clients, each recording when and how it was closed.
    let start = Instant::now();
    let mut clients = Vec::with_capacity(N);
    let url = Arc::new(format!("ws://{public}/ws?ch=clinic/1"));
    for _ in 0..N {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .expect("connect");
            let opened = Instant::now();
            loop {
                match tokio::time::timeout(WAIT, ws.next()).await {
                    Ok(Some(Ok(Message::Close(frame)))) => {
                        let frame = frame.expect("a close frame with a code");
                        return (
                            opened,
                            Instant::now(),
                            u16::from(frame.code),
                            frame.reason.to_string(),
                        );
                    }
                    Ok(Some(Ok(_))) => continue,
                    other => panic!("no close frame: {other:?}"),
                }
            }
        }));
        // Keep the accept queues from overflowing while the ramp runs.
        if clients.len() % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every client connected before the drain starts.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, text) = tokio::task::block_in_place(|| {
            let url = format!("http://{admin}/metrics");
            let r = ureq::get(&url).call().expect("metrics");
            (r.status(), r.into_string().unwrap_or_default())
        });
        let open = text
            .lines()
            .find_map(|l| l.strip_prefix("surge_open_connections "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if open == N {
            break;
        }
        assert!(Instant::now() < deadline, "only {open} of {N} connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{N} connected in {:?}", start.elapsed());

    // SIGTERM: readiness off at once, liveness still on, publishes refused.
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill only sends a signal to the process we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let readyz_503 = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + WAIT;
        loop {
            if get(&format!("http://{admin}/readyz")) == 503 {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "/readyz never turned 503");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    tokio::task::block_in_place(|| {
        assert_eq!(get(&format!("http://{admin}/healthz")), 200);
        assert_eq!(
            publish(&publish_addr),
            503,
            "a publish after the drain began"
        );
    });

    let mut closes = Vec::with_capacity(N);
    for client in clients {
        closes.push(client.await.expect("client task"));
    }
    let first = closes.iter().map(|c| c.1).min().unwrap();
    assert!(
        readyz_503 < first,
        "/readyz turned 503 after the first close"
    );
    for (_, _, code, reason) in &closes {
        assert_eq!(*code, 1012, "{reason}");
        let hint = surge::ops::drain::reconnect_hint(reason);
        assert!(hint.is_some_and(|h| h.as_secs() >= 1), "{reason}");
    }
    // Even spread: per one-second bucket from the first close, none holds
    // more than twice its share N / window.
    let mut buckets = vec![0usize; WINDOW_SECS as usize + 3];
    for (_, at, _, _) in &closes {
        let second = at.duration_since(first).as_secs() as usize;
        let last = buckets.len() - 1;
        buckets[second.min(last)] += 1;
    }
    let share = N / WINDOW_SECS as usize;
    eprintln!("closes per second: {buckets:?} (even share {share})");
    let peak = *buckets.iter().max().unwrap();
    assert!(
        peak <= 2 * share,
        "peak {peak}/s over 2x {share}: {buckets:?}"
    );
    let status = tokio::task::block_in_place(|| child.wait().unwrap());
    assert!(status.success(), "{status}");
}

/// Starts surge with `args`; returns it and its public and admin addresses.
fn spawn(args: &[&str]) -> (std::process::Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(surge::config::EPHEMERAL_LOOPBACK)
        .args([
            "--workers",
            "2",
            "--log",
            "warn",
            "--shutdown-timeout",
            "2s",
        ])
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("surge starts");
    let at = listening(&mut child);
    (child, at.public, at.admin)
}

fn signal(child: &std::process::Child, signal: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill only sends a signal to the process we spawned.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Waits (bounded) for the process to exit.
fn exits_within(child: &mut std::process::Child, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

async fn close_code_of(public: &str) -> u16 {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{public}/ws"))
        .await
        .expect("connect");
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => return u16::from(frame.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_a_drain_at_once() {
    // A window far longer than the bound below: only the second SIGTERM
    // can make the process exit in time.
    let (mut child, public, _) = spawn(&["--drain-grace", "0s", "--drain-window", "600s"]);
    let closed = tokio::spawn({
        let public = public.clone();
        async move { close_code_of(&public).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| {
        signal(&child, libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(300));
        signal(&child, libc::SIGTERM);
        assert!(exits_within(&mut child, Duration::from_secs(20)));
    });
    // The drain's first step (1012) or, cut short, the shutdown (1001).
    let code = closed.await.unwrap();
    assert!(code == 1012 || code == 1001, "{code}");
}

/// A node killed if the test fails before it ends it: a surge left behind
/// would hold the test's output pipe open and hang whoever reads it.
struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// POSTs to the admin port; the status answered.
fn admin_post(admin: &str, path: &str) -> u16 {
    let url = format!("http://{admin}{path}");
    match ureq::post(&url)
        .timeout(Duration::from_secs(5))
        .send_string("")
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{url}: {e}"),
    }
}

/// Polls `url` until it answers `status`, within `WAIT`.
fn answers_eventually(url: &str, status: u16) {
    let deadline = Instant::now() + WAIT;
    while get(url) != status {
        assert!(Instant::now() < deadline, "{url} never answered {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_drain_closes_with_1012_and_the_process_stays_until_sigterm() {
    let (child, public, admin) = spawn(&["--drain-grace", "0s", "--drain-window", "1s"]);
    let mut node = Node(child);
    let child = &mut node.0;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{public}/ws"))
        .await
        .expect("connect");
    tokio::task::block_in_place(|| {
        assert_eq!(admin_post(&admin, "/drain"), 202);
        answers_eventually(&format!("http://{admin}/readyz"), 503);
    });
    let code = loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => break u16::from(frame.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, 1012);
    tokio::task::block_in_place(|| {
        // Drained, not stopped: liveness and metrics still answer, and only
        // a SIGTERM ends the process.
        assert_eq!(get(&format!("http://{admin}/healthz")), 200);
        assert_eq!(get(&format!("http://{admin}/metrics")), 200);
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited after POST /drain"
        );
        // A second request changes nothing.
        assert_eq!(admin_post(&admin, "/drain"), 202);
        signal(child, libc::SIGTERM);
        assert!(exits_within(child, WAIT), "SIGTERM after a drain");
    });
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_post_drain_ends_the_process() {
    // The window is far longer than the bound: only the SIGTERM, arriving
    // while the POST's drain still runs, can end the process in time.
    let (child, public, admin) = spawn(&["--drain-grace", "0s", "--drain-window", "600s"]);
    let mut node = Node(child);
    let child = &mut node.0;
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{public}/ws"))
        .await
        .expect("connect");
    tokio::task::block_in_place(|| {
        assert_eq!(admin_post(&admin, "/drain"), 202);
        answers_eventually(&format!("http://{admin}/readyz"), 503);
        signal(child, libc::SIGTERM);
        assert!(
            exits_within(child, Duration::from_secs(20)),
            "a SIGTERM during a POST /drain must end the process"
        );
    });
}
