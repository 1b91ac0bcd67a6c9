//! A planned restart loses nothing: client-sim's confirm scenario publishes
//! booking confirmations to every user's private channel in rounds while
//! `--restart-pid` drains the real `surge` binary with SIGTERM and starts
//! it again with the same flags. Every browser is closed with 1012, comes
//! back after the hint, and recovers with `since`; every publish refused
//! meanwhile is sent again. Zero lost, zero duplicated:
//! - in-process, one node with `--state-file` (history survives the restart);
//! - two nodes sharing a port through a real redis-server, drained one
//!   after the other while the other serves.
//!
//! The nodes are the `surge` binary cargo builds next to client-sim's
//! (`cargo test --workspace` builds both); a missing or stale one fails the
//! test with the command that builds it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::SystemTime;

use serde_json::Value;

mod common;
use common::{free_port, start_redis};

const BIN: &str = env!("CARGO_BIN_EXE_client-sim");
const SECRET: &str = "restart-test-secret-0123456789";
/// Set in every node's environment (client-sim restarts a node with the
/// environment it had), so the test finds and stops the nodes it started
/// and the ones client-sim started for it, however the test ends.
const MARK: &str = "SURGE_RESTART_TEST_RUN";
/// Browsers per run: enough that every drain step closes some, few enough
/// for CI.
const CONNS: u64 = 300;
const ROUNDS: u64 = 6;

/// The `surge` binary beside client-sim's, refused when missing or older
/// than a source file of server/src: this test must drain the code under
/// test.
fn surge_binary() -> PathBuf {
    let bin = Path::new(BIN).with_file_name("surge");
    let build = "build it with `cargo build -p server` (cargo test --workspace does)";
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}; {build}", bin.display()));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src");
    let newest = newest_mtime(&src);
    assert!(
        newest <= built,
        "{} is older than server/src; {build}",
        bin.display()
    );
    bin
}

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir)
        .expect("server/src readable")
        .flatten()
    {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else if path.extension().is_none_or(|e| e != "rs") {
            continue;
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(t);
    }
    newest
}

/// Everything this run started: killed when the test ends, however it
/// ends, including nodes client-sim restarted (found by `MARK`).
struct Run {
    mark: String,
    children: Vec<Child>,
}

impl Run {
    fn new(name: &str) -> Run {
        Run {
            mark: format!("{name}-{}", std::process::id()),
            children: Vec::new(),
        }
    }

    /// PIDs of the live processes carrying this run's mark.
    fn marked(&self) -> Vec<u32> {
        let want = format!("{MARK}={}", self.mark).into_bytes();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_slice()))
            })
            .collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.marked() {
            // SAFETY: kill only sends a signal; the PID carries our mark.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Starts a node on fixed ports (a restart binds the same ones), with a
/// short drain; returns its PID and publish API's base URL.
fn start_node(run: &mut Run, public: u16, extra: &[&str]) -> (u32, String) {
    let publish = free_port();
    let mut child = Command::new(surge_binary())
        .args(["--listen", &format!("127.0.0.1:{public}")])
        .args(["--publish-listen", &format!("127.0.0.1:{publish}")])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--workers", "1", "--log", "warn", "--token-secret", SECRET])
        .args(["--max-connections-per-ip", "0", "--shutdown-timeout", "1s"])
        .args(["--drain-grace", "0s", "--drain-window", "1s"])
        .args(extra)
        .env(MARK, &run.mark)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .spawn()
        .expect("surge starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the address line");
    assert!(line.starts_with("surge listening:"), "{line}");
    let pid = child.id();
    run.children.push(child);
    (pid, format!("http://127.0.0.1:{publish}"))
}

/// Runs confirm with `--restart-pid`; returns the JSON report and output.
fn confirm_with_restart(public: u16, publish: &[String], pids: &[u32]) -> (Value, Output) {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let out = Command::new(BIN)
        .args(["confirm", "--url", &format!("ws://127.0.0.1:{public}/ws")])
        .args(["--publish", &publish.join(",")])
        .args([
            "--conns",
            &CONNS.to_string(),
            "--procs",
            "1",
            "--rate",
            "2000",
        ])
        .args(["--rounds", &ROUNDS.to_string(), "--round-gap-ms", "200"])
        .args([
            "--restart-pid",
            &pids.join(","),
            "--restart-after-round",
            "2",
        ])
        .args(["--timeout", "60", "--hold", "0"])
        .arg("--json")
        .arg(&json)
        .env("SURGE_TOKEN_SECRET", SECRET)
        .output()
        .expect("client-sim runs");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (serde_json::from_str(&text).expect("report JSON"), out)
}

/// What both tests demand: every confirmation exactly once, every browser
/// closed with 1012, back, and recovered on both its channels.
fn assert_nothing_lost(r: &Value, out: &Output, restarted: &[u32]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let c = &r["confirm"];
    let storm = &r["storm"];
    assert_eq!(r["connected"], CONNS, "{stdout}");
    assert_eq!(c["published"], CONNS * ROUNDS, "{stdout}");
    assert_eq!(
        (&c["received"], &c["lost"], &c["duplicated"]),
        (
            &Value::from(CONNS * ROUNDS),
            &Value::from(0),
            &Value::from(0)
        ),
        "{stdout}"
    );
    assert_eq!(r["gaps"], 0, "{stdout}");
    let restarts = c["restarts"].as_array().expect("restarts");
    let old: Vec<u64> = restarts
        .iter()
        .filter_map(|x| x["old_pid"].as_u64())
        .collect();
    let want: Vec<u64> = restarted.iter().map(|&p| u64::from(p)).collect();
    assert_eq!(old, want, "every node restarted, in order: {stdout}");
    // Every browser was closed by a drain (with several nodes, some twice:
    // back on the second node before its own drain), came back and
    // recovered both channels.
    let dropped = storm["dropped"].as_u64().unwrap_or(0);
    assert!(dropped >= CONNS, "{stdout}");
    assert_eq!(r["closes"]["1012"], dropped, "{stdout}");
    assert_eq!(storm["reconnected"], dropped, "{stdout}");
    assert_eq!(storm["recovered"], dropped * 2, "{stdout}");
    assert_eq!(storm["not_recovered"], 0, "{stdout}");
    assert_eq!(c["drain_profile"]["closes"], dropped, "{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
}

#[test]
fn a_restart_with_a_state_file_loses_and_duplicates_no_confirmation() {
    let mut run = Run::new("memory");
    let state = tempfile::tempdir().expect("tempdir");
    let file = state.path().join("surge.state");
    let public = free_port();
    let file_arg = file.display().to_string();
    let (pid, publish) = start_node(&mut run, public, &["--state-file", &file_arg]);
    let (r, out) = confirm_with_restart(public, std::slice::from_ref(&publish), &[pid]);
    assert_nothing_lost(&r, &out, &[pid]);
    // In-process, a draining node refuses publishes (503) and a stopped one
    // refuses connections: the rounds meanwhile were refused and sent again.
    let refusals = r["confirm"]["publish_refusals"].as_u64().unwrap_or(0);
    assert!(refusals > 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert!(file.exists(), "the drained node wrote its state file");
}

#[test]
fn a_rolling_restart_through_redis_loses_and_duplicates_no_confirmation() {
    let mut run = Run::new("redis");
    let url = start_redis(&mut run.children);
    let public = free_port();
    let (a, publish_a) = start_node(&mut run, public, &["--redis", &url]);
    let (b, publish_b) = start_node(&mut run, public, &["--redis", &url]);
    let (r, out) = confirm_with_restart(public, &[publish_a, publish_b], &[a, b]);
    assert_nothing_lost(&r, &out, &[a, b]);
}
