//! Shared by the measurement examples: start the release `surge` on ephemeral
//! loopback ports and read a process's resident memory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `surge` and the addresses from its first stdout line.
// Each example reads the addresses it needs.
#[allow(dead_code)]
pub struct Surge {
    pub child: Child,
    pub ws: String,
    pub publish: String,
    pub admin: String,
}

impl Drop for Surge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `$SURGE_BIN` (default `target/release/surge`) with `extra` args.
pub fn spawn_surge(extra: &[&str]) -> Surge {
    let bin = std::env::var("SURGE_BIN").unwrap_or_else(|_| "target/release/surge".into());
    let mut child = Command::new(&bin)
        .args(surge::config::EPHEMERAL_LOOPBACK)
        .args(["--log", "warn"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin}: {e} (cargo build --release -p server --bins)")
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address line");
    // "surge listening: ws://A/ws publish=http://B/api/publish admin=http://C/metrics"
    let field = |prefix: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix))
            .unwrap_or_default()
            .to_string()
    };
    Surge {
        ws: field("ws://"),
        publish: field("publish="),
        admin: field("admin="),
        child,
    }
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
