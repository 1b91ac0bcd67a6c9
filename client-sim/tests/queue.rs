//! client-sim's `queue` scenario against a real Surge on loopback, small N:
//! everyone is admitted, in fair order, once, and the report says so.

mod common;

use std::process::Command;

use common::start_surge;
use serde_json::Value;
use surge::Server;

const BIN: &str = env!("CARGO_BIN_EXE_client-sim");

fn server() -> Server {
    start_surge("client-sim-queue-secret-0123", &[])
}

/// Runs the scenario with 300 users (and `extra` flags); its JSON report
/// and its table.
fn run_queue(extra: &[&str]) -> (Value, String) {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("queue.json");
    let out = Command::new(BIN)
        .arg("queue")
        .args(["--url", &format!("ws://{}/ws", server.public_addr)])
        .args(["--api", &format!("http://{}", server.publish_addr)])
        .args(["--admin", &format!("http://{}", server.admin_addr)])
        .args(["--users", "300", "--admit-per-minute", "30000"])
        .args(["--opens-in", "2", "--rejoin", "0.2"])
        .args(["--json", json.to_str().unwrap()])
        .args(extra)
        .output()
        .expect("client-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    server.shutdown();
    (report, stdout)
}

fn assert_everyone_admitted_once_in_order(report: &Value) {
    for (field, expected) in [
        ("users", 300),
        ("admitted", 300),
        ("order_violations", 0),
        ("duplicates", 0),
        ("tickets_lost_on_rejoin", 0),
        ("position_rises", 0),
        ("failed", 0),
    ] {
        assert_eq!(report[field], expected, "{field} in {report}");
    }
    assert!(report["achieved_per_minute"].as_f64().unwrap() > 0.0);
}

#[test]
fn queue_scenario_admits_everyone_once_in_fair_order_and_reports_it() {
    let (report, stdout) = run_queue(&[]);
    assert_everyone_admitted_once_in_order(&report);
    assert!(stdout.contains("order violations"), "{stdout}");
}

/// The browsers of three processes, from three source addresses, are
/// merged into one report that covers all of them.
#[test]
fn queue_over_several_processes_reports_every_browser_once() {
    let (report, _) = run_queue(&["--procs", "3", "--src-ips", "127.0.0.2-127.0.0.4"]);
    assert_everyone_admitted_once_in_order(&report);
}
