//! A node dies and nothing is lost: three Surge nodes share one port and a
//! real redis-server (on an ephemeral loopback port); client-sim's confirm
//! scenario publishes booking confirmations to every user's private channel
//! in rounds and `kill -9`s one node half way. Every browser on it must
//! reconnect to another node and recover every confirmation: zero lost,
//! zero duplicated.
//!
//! Each node is this test binary run again as a child process (the
//! `node_process` entry below) running the real server, so it can be
//! killed like a real node without the test depending on where cargo put
//! the `surge` binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{free_port, start_redis};

const BIN: &str = env!("CARGO_BIN_EXE_client-sim");
const SECRET: &str = "kill-node-test-secret-0123";
/// Set in a node's environment: the arguments of its server, one per line.
const NODE_ARGS: &str = "KILL_NODE_TEST_SURGE_ARGS";

/// Children killed when the test ends, however it ends.
struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a node sharing `port`; returns it and its publish API's base URL.
fn start_node(port: u16, redis: &str) -> (Child, String) {
    let args = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--publish-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--log",
        "warn",
        "--token-secret",
        SECRET,
        "--redis",
        redis,
    ]
    .join("\n");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "node_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(NODE_ARGS, args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node starts");
    let stdout = child.stdout.take().expect("node stdout");
    let mut lines = BufReader::new(stdout).lines();
    let publish = loop {
        let line = lines
            .next()
            .expect("node printed its addresses")
            .expect("node stdout readable");
        // The harness prints "test node_process ... " on the same line first.
        if let Some((_, url)) = line.split_once("node publish=") {
            break url.trim().to_string();
        }
    };
    // Keep draining so the node never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, publish)
}

/// Not a test on its own: a node, when run by `start_node`.
#[test]
fn node_process() {
    let Ok(args) = std::env::var(NODE_ARGS) else {
        return;
    };
    let mut argv = vec!["surge"];
    argv.extend(args.lines());
    let config = surge::Config::load_from(argv).expect("node config");
    let server = surge::Server::start(config).expect("node starts");
    println!("node publish=http://{}", server.publish_addr);
    // Runs until the test kills it (or, should the test die, for a bounded time).
    std::thread::sleep(Duration::from_secs(300));
}

#[test]
fn killed_node_loses_no_confirmation_and_duplicates_none() {
    let mut children = Killed(Vec::new());
    let url = start_redis(&mut children.0);
    let port = free_port();
    let mut publish = Vec::new();
    for _ in 0..3 {
        let (node, api) = start_node(port, &url);
        children.0.push(node);
        publish.push(api);
    }
    let victim = children.0[1].id();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let out = Command::new(BIN)
        .args(["confirm", "--url", &format!("ws://127.0.0.1:{port}/ws")])
        .args(["--publish", &publish.join(",")])
        .args(["--conns", "600", "--procs", "1", "--rate", "2000"])
        .args(["--src-ips", "127.0.0.2-127.0.0.5"])
        .args(["--rounds", "6", "--round-gap-ms", "150"])
        .args(["--kill-pid", &victim.to_string(), "--kill-after-round", "3"])
        .args(["--timeout", "60", "--hold", "0"])
        .arg("--json")
        .arg(&json)
        .env("SURGE_TOKEN_SECRET", SECRET)
        .output()
        .expect("client-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let r: Value = serde_json::from_str(&text).expect("report JSON");
    let c = &r["confirm"];
    let storm = &r["storm"];
    assert_eq!(r["connected"], 600, "{stdout}");
    assert_eq!(c["killed_pid"], victim, "{stdout}");
    assert_eq!(c["published"], 3600, "{stdout}");
    assert_eq!(
        (&c["received"], &c["lost"], &c["duplicated"]),
        (&Value::from(3600), &Value::from(0), &Value::from(0)),
        "{stdout}"
    );
    assert_eq!(r["gaps"], 0, "{stdout}");
    // Some browsers were on the killed node, and every one came back and
    // recovered both its channels from Redis on another node.
    let dropped = storm["dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "nobody was on the killed node: {stdout}");
    assert_eq!(storm["reconnected"], dropped, "{stdout}");
    assert_eq!(storm["recovered"], dropped * 2, "{stdout}");
    assert_eq!(storm["not_recovered"], 0, "{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
}
