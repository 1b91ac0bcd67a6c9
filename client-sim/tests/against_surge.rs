//! client-sim against a real Surge on loopback, small N, several processes
//! and source addresses: the counts it reports are exactly right, the JSON
//! and HTML it writes are well formed, and storms reconnect everyone. The
//! counts are checked against closed forms computed here and against the
//! server's own /metrics and /stats, and a failed run exits 1. No
//! assertion is about wall-clock time.

mod common;

use std::process::Command;

use common::start_surge;
use serde_json::Value;
use surge::Server;

const BIN: &str = env!("CARGO_BIN_EXE_client-sim");
const SECRET: &str = "client-sim-test-secret-0123";

fn server() -> Server {
    server_with(&[])
}

fn server_with(extra: &[&str]) -> Server {
    start_surge(SECRET, extra)
}

/// A counter or gauge from the server's own /metrics (not client-sim's).
fn server_metric(server: &Server, series: &str) -> u64 {
    let text = ureq::get(&format!("http://{}/metrics", server.admin_addr))
        .call()
        .expect("/metrics answers")
        .into_string()
        .expect("/metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics"))
}

/// The server's /stats: (open connections, channels summed over workers).
fn server_stats(server: &Server) -> (u64, u64) {
    let text = ureq::get(&format!("http://{}/stats", server.admin_addr))
        .call()
        .expect("/stats answers")
        .into_string()
        .expect("/stats text");
    let v: Value = serde_json::from_str(&text).expect("/stats JSON");
    let channels = v["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(|w| w["channels"].as_u64())
        .sum();
    (v["open_connections"].as_u64().expect("open"), channels)
}

/// Runs client-sim and returns (exit code, parsed JSON report, stdout).
fn run(server: &Server, args: &[&str]) -> (i32, Value, String) {
    run_with_timeout(server, args, 60)
}

/// As `run`, with client-sim's own bound on each wait (a run that must
/// fail waits for deliveries that never come, up to this).
fn run_with_timeout(server: &Server, args: &[&str], timeout: u64) -> (i32, Value, String) {
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
        .args(["--timeout", &timeout.to_string()])
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
    const CONNS: u64 = 3000;
    let server = server();
    // The server's own view while client-sim holds: the most connections
    // /stats ever showed open, with the channels at that moment.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (code, r, table, (open, channels)) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut most = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = server_stats(&server);
                if now.0 > most.0 {
                    most = now;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            most
        });
        let (code, r, table) = run(
            &server,
            &[
                "idle",
                "--conns",
                &CONNS.to_string(),
                "--procs",
                "2",
                "--src-ips",
                "127.0.0.2-127.0.0.5",
                "--hold",
                "2",
            ],
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (code, r, table, watcher.join().expect("watcher"))
    });
    assert_eq!(code, 0, "{table}");
    assert_eq!(
        (r["connected"].as_u64(), r["procs"].as_u64()),
        (Some(CONNS), Some(2))
    );
    assert!(r["failed"].as_object().unwrap().is_empty());
    assert_eq!(r["connect_ms"]["count"], CONNS);
    assert!(
        table.contains("connected                          3000 of 3000"),
        "{table}"
    );
    // The server saw them all open at once, each on its own private user
    // channel plus one of the 50 clinic channels (counted once per worker).
    assert_eq!(open, CONNS, "most connections the server's /stats showed");
    assert!(
        (CONNS + 1..=CONNS + 2 * 50).contains(&channels),
        "{channels} channels for {CONNS} user channels and up to 50 clinics on 2 workers"
    );
    assert_eq!(server_metric(&server, "surge_accepted_total"), CONNS);
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
    // Closed form: each connection is on one of 10 clinics, and 60
    // publications go round the 10 clinics, so each connection is owed 6.
    let expected: u64 = 1500 * (60 / 10);
    assert_eq!(
        (r["deliveries"].as_u64(), r["deliveries_expected"].as_u64()),
        (Some(expected), Some(expected)),
        "{table}"
    );
    assert_eq!(
        server_metric(&server, "surge_deliveries_total"),
        expected,
        "the server's own count"
    );
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
    // 800 connections over 5 clinics, 100 publications round the 5: 20 each.
    let expected: u64 = 800 * (100 / 5);
    assert_eq!(r["deliveries"].as_u64(), Some(expected), "{table}");
    assert_eq!(r["deliveries_expected"].as_u64(), Some(expected));
    assert_eq!(server_metric(&server, "surge_deliveries_total"), expected);
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
    const CONNS: u64 = 2000;
    const CLINICS: u64 = 50;
    // A round every 20 ms is 50 publications a second per clinic; history
    // for 60 s of them, so a storm slowed by a busy machine (CI on two
    // cores) is still inside what recovery promises, and the test checks
    // recovery rather than how fast this box reconnects.
    let server = server_with(&["--history-size", "3000"]);
    let (code, r, table) = run(
        &server,
        &[
            "storm",
            "--conns",
            &CONNS.to_string(),
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
            "--clinics",
            &CLINICS.to_string(),
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
    // Every reconnected client resubscribed to its clinic and its user
    // channel with `since`, and every one of those said recovered:true.
    assert_eq!(
        (storm["recovered"].as_u64(), storm["not_recovered"].as_u64()),
        (Some(2000), Some(0)),
        "{table}"
    );
    // client-sim publishes rounds of one publication per clinic: one
    // before the storm, some during it, one after. Each round is owed to
    // every connection once, dropped or not.
    let publications = r["publications"].as_u64().unwrap();
    assert_eq!(publications % CLINICS, 0, "whole rounds");
    let rounds = publications / CLINICS;
    assert!(rounds >= 3, "before, during and after: {rounds} rounds");
    assert_eq!(
        (
            r["deliveries"].as_u64(),
            r["gaps"].as_u64(),
            r["duplicates"].as_u64()
        ),
        (Some(rounds * CONNS), Some(0), Some(0)),
        "nothing lost, nothing twice: {table}"
    );
    // The server replayed publications to recovering clients, so some were
    // published while they were away; and it delivered or replayed at
    // least every one owed (a publication can also reach a socket the
    // client has already dropped).
    let replayed = server_metric(&server, "surge_replayed_total");
    assert!(replayed > 0, "nothing was published during the storm");
    assert!(
        server_metric(&server, "surge_deliveries_total") + replayed >= rounds * CONNS,
        "{table}"
    );
    server.shutdown();
}

#[test]
fn storm_exits_1_when_history_cannot_cover_the_outage() {
    // One publication of history per channel; the storm's clients come
    // back together after 250 ms (expo), having missed several rounds.
    let server = server_with(&["--history-size", "1"]);
    let (code, r, table) = run_with_timeout(
        &server,
        &[
            "storm",
            "--conns",
            "400",
            "--procs",
            "1",
            "--hold",
            "0",
            "--fraction",
            "0.5",
            "--policy",
            "expo",
            "--clinics",
            "5",
        ],
        5,
    );
    assert_eq!(code, 1, "{table}");
    assert!(r["storm"]["not_recovered"].as_u64().unwrap() > 0, "{table}");
    assert!(
        r["deliveries"].as_u64() < r["deliveries_expected"].as_u64(),
        "{table}"
    );
    server.shutdown();
}

#[test]
fn idle_exits_1_when_connections_are_refused() {
    // Room for 100: the other 100 get 503 and count as failed.
    let server = server_with(&["--max-connections", "100"]);
    let (code, r, table) = run(
        &server,
        &["idle", "--conns", "200", "--procs", "1", "--hold", "0"],
    );
    assert_eq!(code, 1, "{table}");
    assert_eq!(r["connected"].as_u64(), Some(100), "{table}");
    assert_eq!(
        r["failed"]
            .as_object()
            .map(|f| f.values().filter_map(Value::as_u64).sum::<u64>()),
        Some(100),
        "{table}"
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
