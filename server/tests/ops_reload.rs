//! SIGHUP on a live `surge` process: what can change without a restart
//! (origins, limits, the log filter) changes for the next use, connections
//! stay open, what cannot is logged as needing a restart, and a file with
//! problems changes nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

struct Surge {
    child: Child,
    public: String,
    log: Receiver<String>,
    file: PathBuf,
}

impl Surge {
    fn start(name: &str, toml: &str) -> Surge {
        let file = std::env::temp_dir().join(format!("surge-{name}-{}.toml", std::process::id()));
        std::fs::write(&file, toml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_surge"))
            .args(surge::config::EPHEMERAL_LOOPBACK)
            .args(["--workers", "2", "--shutdown-timeout", "1s", "--config"])
            .arg(&file)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("SURGE_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("surge starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let public = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ws://")?.strip_suffix("/ws"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        let (tx, log) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Surge {
            child,
            public,
            log,
            file,
        }
    }

    /// Rewrites the config file and sends SIGHUP; returns the log lines up
    /// to the one that contains `until`.
    fn reload(&self, toml: &str, until: &str) -> Vec<String> {
        std::fs::write(&self.file, toml).unwrap();
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill only sends a signal to the process we spawned.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        self.log_until(until)
    }

    fn log_until(&self, until: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(until);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("no log line with {until:?}; got {lines:#?}")
                }
            }
        }
    }

    /// The status line of an upgrade request from `origin`.
    fn upgrade_status(&self, origin: &str) -> u16 {
        let mut s = TcpStream::connect(&self.public).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: {origin}\r\n\r\n",
            self.public
        );
        s.write_all(request.as_bytes()).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
    }
}

impl Drop for Surge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_file(&self.file).ok();
    }
}

#[test]
fn origins_and_the_log_filter_change_on_sighup_and_bad_files_change_nothing() {
    let a = "allowed-origins = [\"https://a.example\"]\n";
    let b = "allowed-origins = [\"https://b.example\"]\n";
    // At "warn" the "surge started" line (info) is not logged.
    let surge = Surge::start("reload-origins", &format!("log = \"warn\"\n{a}"));
    assert_eq!(surge.upgrade_status("https://a.example"), 101);
    assert_eq!(surge.upgrade_status("https://b.example"), 403);

    // The reload's own summary is an info line: it shows only because the
    // new filter is in force by then.
    let lines = surge.reload(&format!("log = \"info\"\n{b}"), "configuration reloaded");
    let summary = lines.last().unwrap();
    assert!(
        summary.contains("allowed-origins") && summary.contains("log"),
        "{summary}"
    );
    assert_eq!(surge.upgrade_status("https://b.example"), 101);
    assert_eq!(surge.upgrade_status("https://a.example"), 403);

    // A file with a problem: refused whole, b still allowed, a still not.
    let lines = surge.reload(
        &format!("log = \"info\"\npong-timeout = \"60s\"\n{a}"),
        "reload refused",
    );
    assert!(
        lines.last().unwrap().contains("--pong-timeout"),
        "{lines:?}"
    );
    assert_eq!(surge.upgrade_status("https://b.example"), 101);
    assert_eq!(surge.upgrade_status("https://a.example"), 403);

    // What needs a restart is named, and not applied.
    let lines = surge.reload(
        &format!("log = \"info\"\nbacklog = 16\n{b}"),
        "configuration reloaded",
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("after a restart") && l.contains("backlog")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_limit_raised_by_sighup_holds_on_an_open_connection() {
    let surge = Surge::start("reload-limits", "log = \"info\"\nmax-subscriptions = 1\n");
    surge.log_until("surge started");
    let url = format!("ws://{}/ws", surge.public);
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    assert_eq!(sub(&mut ws, "clinic/1").await["op"], "subscribed");
    assert_eq!(
        sub(&mut ws, "clinic/2").await["code"],
        "too_many_subscriptions"
    );
    tokio::task::block_in_place(|| {
        surge.reload(
            "log = \"info\"\nmax-subscriptions = 3\n",
            "configuration reloaded",
        )
    });
    // Same connection, no reconnect: the new limit applies to its next sub.
    assert_eq!(sub(&mut ws, "clinic/2").await["op"], "subscribed");
    assert_eq!(sub(&mut ws, "clinic/3").await["op"], "subscribed");
    assert_eq!(
        sub(&mut ws, "clinic/4").await["code"],
        "too_many_subscriptions"
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends a sub command and returns the reply.
async fn sub(ws: &mut Ws, ch: &str) -> serde_json::Value {
    let cmd = format!(r#"{{"op":"sub","ch":"{ch}"}}"#);
    ws.send(Message::Text(cmd)).await.unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}
