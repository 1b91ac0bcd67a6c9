//! client-sim against a real Surge on loopback, small N, several processes
//! and source addresses: the counts it reports are exactly right, the JSON
//! and HTML it writes are well formed, and storms reconnect everyone. No
//! assertion is about wall-clock time.

use std::process::Command;

use serde_json::Value;
use surge::{Config, Server};

const BIN: &str = env!("CARGO_BIN_EXE_client-sim");
const SECRET: &str = "client-sim-test-secret-0123";

fn server() -> Server {
    let mut args = vec!["surge"];
    args.extend_from_slice(&surge::config::EPHEMERAL_LOOPBACK);
    args.extend_from_slice(&[
        "--workers",
        "2",
        "--log",
        "warn",
        "--token-secret",
        SECRET,
        "--shutdown-timeout",
        "1s",
    ]);
    Server::start(Config::load_from(args).expect("config")).expect("server starts")
}

/// Runs client-sim and returns (exit code, parsed JSON report, stdout).
fn run(server: &Server, args: &[&str]) -> (i32, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let out = Command::new(BIN)
        .args(args)
        .args(["--url", &format!("ws://{}/ws", server.public_addr)])
        .args(["--publish", &format!("http://{}", server.publish_addr)])
        .args([
            "--server-stats",
            &format!("http://{}/stats", server.admin_addr),
        ])
        .args([
            "--json",
            json.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ])
        .args(["--timeout", "60"])
        .env("SURGE_TOKEN_SECRET", SECRET)
        .output()
        .expect("client-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}")),
    )
    .expect("report JSON parses");
    let page = std::fs::read_to_string(&html).expect("HTML written");
    assert!(
        page.starts_with("<!doctype html>") && page.contains("<svg") && page.contains("</html>")
    );
    (out.status.code().unwrap_or(-1), report, stdout)
}

#[test]
fn idle_over_two_processes_and_four_source_addresses_connects_everyone() {
    let server = server();
    let (code, r, table) = run(
        &server,
        &[
            "idle",
            "--conns",
            "3000",
            "--procs",
            "2",
            "--src-ips",
            "127.0.0.2-127.0.0.5",
            "--hold",
            "1",
        ],
    );
    assert_eq!(code, 0, "{table}");
    assert_eq!(
        (r["connected"].as_u64(), r["procs"].as_u64()),
        (Some(3000), Some(2))
    );
    assert!(r["failed"].as_object().unwrap().is_empty());
    assert_eq!(r["connect_ms"]["count"], 3000);
    assert!(
        table.contains("connected                          3000 of 3000"),
        "{table}"
    );
    // The server saw them all, on its clinic channels and the private user ones.
    assert!(r["server"]["rss_after_ramp"].as_u64().unwrap() > 0);
    server.shutdown();
}

#[test]
fn fanout_counts_every_delivery_exactly_with_no_gap() {
    let server = server();
    let (code, r, table) = run(
        &server,
        &[
            "fanout",
            "--conns",
            "1500",
            "--procs",
            "2",
            "--src-ips",
            "127.0.0.6,127.0.0.7",
            "--hold",
            "0",
            "--publications",
            "60",
            "--pub-rate",
            "200",
            "--clinics",
            "10",
        ],
    );
    assert_eq!(code, 0, "{table}");
    let expected = r["deliveries_expected"].as_u64().unwrap();
    assert!(expected > 0);
    assert_eq!(r["deliveries"].as_u64(), Some(expected), "{table}");
    assert_eq!(
        (r["gaps"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(r["delivery_ms"]["count"].as_u64(), Some(expected));
    assert_eq!(r["fanout_completion_ms"]["count"], 60);
    server.shutdown();
}

#[test]
fn batched_fanout_counts_the_same() {
    let server = server();
    let (code, r, table) = run(
        &server,
        &[
            "fanout",
            "--conns",
            "800",
            "--procs",
            "2",
            "--hold",
            "0",
            "--publications",
            "100",
            "--pub-rate",
            "1000",
            "--batch",
            "25",
            "--clinics",
            "5",
        ],
    );
    assert_eq!(code, 0, "{table}");
    assert_eq!(r["deliveries"], r["deliveries_expected"]);
    assert_eq!(r["publications"], 100);
    server.shutdown();
}

#[test]
fn confirm_delivers_each_booking_confirmation_exactly_once() {
    let server = server();
    let (code, r, table) = run(
        &server,
        &["confirm", "--conns", "2000", "--procs", "2", "--hold", "0"],
    );
    assert_eq!(code, 0, "{table}");
    assert_eq!(r["confirm"]["once"], 2000);
    assert_eq!(
        (
            r["confirm"]["missing"].as_u64(),
            r["confirm"]["duplicate"].as_u64()
        ),
        (Some(0), Some(0))
    );
    server.shutdown();
}

#[test]
fn storm_with_full_jitter_reconnects_everyone_and_recovers() {
    let server = server();
    let (code, r, table) = run(
        &server,
        &[
            "storm",
            "--conns",
            "2000",
            "--procs",
            "2",
            "--src-ips",
            "127.0.0.8-127.0.0.9",
            "--hold",
            "0",
            "--fraction",
            "0.5",
            "--policy",
            "full-jitter",
        ],
    );
    assert_eq!(code, 0, "{table}");
    let storm = &r["storm"];
    assert_eq!(
        (
            storm["dropped"].as_u64(),
            storm["reconnected"].as_u64(),
            storm["gave_up"].as_u64()
        ),
        (Some(1000), Some(1000), Some(0))
    );
    // Each reconnected client resubscribes to its clinic and its user channel with `since`.
    assert_eq!(
        storm["recovered"].as_u64().unwrap() + storm["not_recovered"].as_u64().unwrap(),
        2000
    );
    server.shutdown();
}

#[test]
fn plan_arithmetic_on_a_fixed_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixed.json");
    let report = serde_json::json!({
        "scenario": "fanout", "connected": 18000,
        "server": {"rss_before": 0, "rss_after_ramp": 0, "rss_end": 0, "bytes_per_connection": 131.0},
        "server_cpu_us_per_delivery": 2.0
    });
    std::fs::write(&path, report.to_string()).unwrap();
    let out = Command::new(BIN)
        .args([
            "plan",
            "--users",
            "1000000",
            "--from",
            path.to_str().unwrap(),
            "--box-mem",
            "8GiB",
            "--box-cores",
            "2",
        ])
        .args(["--updates-per-user-per-min", "60", "--headroom", "0.5"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // 131 + 5120 = 5251 B; 1e6 x 5251 B = 4.89 GiB; 8 GiB x 0.5 = 4 GiB usable -> 2 boxes.
    assert!(text.contains("= 5251 B"), "{text}");
    assert!(
        text.contains("= 4.89 GiB") && text.contains("-> 2 box(es)"),
        "{text}"
    );
    // 1e6 x 60/min / 60 = 1,000,000/s x 2 us = 2 cores; 2 x 0.5 = 1 core usable -> 2 boxes.
    assert!(
        text.contains("= 1000000/s") && text.contains("= 2.00 cores"),
        "{text}"
    );
    assert!(
        text.contains("boxes: max(2, 2) = 2; with one spare for failover: 3"),
        "{text}"
    );
}
