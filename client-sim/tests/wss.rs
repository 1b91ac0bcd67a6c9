//! client-sim over `wss://` against a real Surge serving TLS with a
//! certificate generated here: every delivery arrives exactly once, a storm
//! reconnects everyone (resuming TLS sessions unless told not to) and
//! recovers what it missed, and a certificate from a CA client-sim was not
//! told to trust is refused with the reason, not a vague failure. No
//! assertion is about wall-clock time.

mod common;

use std::path::Path;
use std::process::Command;

use client_sim::testcert::{self, TestCert};
use common::start_surge;
use serde_json::Value;
use surge::Server;

const BIN: &str = env!("CARGO_BIN_EXE_client-sim");
const SECRET: &str = "client-sim-wss-test-secret-0123";

/// A Surge on loopback serving `wss://` with `cert`.
fn tls_server(cert: &TestCert) -> Server {
    let (cert_path, key_path) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    start_surge(SECRET, &["--tls-cert", &cert_path, "--tls-key", &key_path])
}

/// Runs client-sim against `server` over wss:// and returns (exit code,
/// report, stdout + stderr).
fn run(server: &Server, dir: &Path, args: &[&str]) -> (i32, Value, String) {
    let json = dir.join("report.json");
    let _ = std::fs::remove_file(&json);
    let out = Command::new(BIN)
        .args(args)
        .args(["--url", &format!("wss://{}/ws", server.public_addr)])
        .args(["--publish", &format!("http://{}", server.publish_addr)])
        .args([
            "--server-stats",
            &format!("http://{}/stats", server.admin_addr),
        ])
        .args(["--json", json.to_str().expect("utf-8 path")])
        .args(["--timeout", "60"])
        .env("SURGE_TOKEN_SECRET", SECRET)
        .output()
        .expect("client-sim runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report, text)
}

#[test]
fn fanout_over_wss_delivers_every_publication_once() {
    let dir = tempfile::tempdir().unwrap();
    let cert = testcert::write(dir.path(), "").unwrap();
    let server = tls_server(&cert);
    let ca = cert.ca.display().to_string();
    let (code, r, text) = run(
        &server,
        dir.path(),
        &[
            "fanout",
            "--ca",
            &ca,
            "--conns",
            "400",
            "--procs",
            "2",
            "--hold",
            "0",
            "--publications",
            "20",
            "--pub-rate",
            "200",
            "--clinics",
            "5",
            "--private-sample",
            "50",
        ],
    );
    assert_eq!(code, 0, "{text}");
    // Closed form: 20 publications round 5 clinics, so each of the 400
    // connections is owed 4, and 50 user channels one each.
    let expected: u64 = 400 * (20 / 5) + 50;
    assert_eq!(
        (r["deliveries"].as_u64(), r["deliveries_expected"].as_u64()),
        (Some(expected), Some(expected)),
        "{text}"
    );
    assert_eq!(
        (r["gaps"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(r["connected"].as_u64(), Some(400), "{text}");
    // Every connection went through a TLS handshake client-sim saw finish.
    let (full, resumed) = (
        r["tls_full_handshakes"].as_u64().unwrap_or(0),
        r["tls_resumed_handshakes"].as_u64().unwrap_or(0),
    );
    assert_eq!(full + resumed, 400, "{text}");
    server.shutdown();
}

/// A storm over wss: half the connections drop at once and come back.
fn storm(resume: bool) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let cert = testcert::write(dir.path(), "").unwrap();
    let server = tls_server(&cert);
    let ca = cert.ca.display().to_string();
    let mut args = vec![
        "storm",
        "--ca",
        &ca,
        "--conns",
        "300",
        "--procs",
        "1",
        "--hold",
        "0",
        "--clinics",
        "3",
        "--fraction",
        "0.5",
        "--policy",
        "full-jitter",
    ];
    if !resume {
        args.push("--no-resumption");
    }
    let (code, r, text) = run(&server, dir.path(), &args);
    assert_eq!(code, 0, "{text}");
    assert_eq!(r["storm"]["reconnected"].as_u64(), Some(150), "{text}");
    assert_eq!(r["storm"]["not_recovered"].as_u64(), Some(0), "{text}");
    assert_eq!(r["deliveries"], r["deliveries_expected"], "{text}");
    assert_eq!(
        (r["gaps"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    server.shutdown();
    r
}

#[test]
fn storm_over_wss_resumes_tls_sessions_and_recovers_everything() {
    let r = storm(true);
    // 300 browsers' first connections pay a full handshake; the 150 that
    // come back each resume with a ticket the server gave.
    let (full, resumed) = (
        r["tls_full_handshakes"].as_u64(),
        r["tls_resumed_handshakes"].as_u64(),
    );
    assert_eq!((full, resumed), (Some(300), Some(150)));
}

#[test]
fn storm_over_wss_without_resumption_pays_a_full_handshake_each_time() {
    let r = storm(false);
    let (full, resumed) = (
        r["tls_full_handshakes"].as_u64(),
        r["tls_resumed_handshakes"].as_u64(),
    );
    assert_eq!((full, resumed), (Some(450), Some(0)));
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let served = testcert::write(dir.path(), "served-").unwrap();
    let other = testcert::write(dir.path(), "other-").unwrap();
    let server = tls_server(&served);
    let wrong_ca = other.ca.display().to_string();
    let (code, r, text) = run(
        &server,
        dir.path(),
        &["idle", "--ca", &wrong_ca, "--conns", "20", "--hold", "0"],
    );
    assert_eq!(code, 1, "{text}");
    assert_eq!(r["connected"].as_u64(), Some(0), "{text}");
    // Counted under rustls' reason, and said on stderr.
    let reason = "tls: invalid peer certificate: UnknownIssuer";
    assert_eq!(r["failed"][reason].as_u64(), Some(20), "{text}");
    assert!(text.contains(reason), "{text}");
    // The right CA, same server: everyone gets in.
    let right_ca = served.ca.display().to_string();
    let (code, r, text) = run(
        &server,
        dir.path(),
        &["idle", "--ca", &right_ca, "--conns", "20", "--hold", "0"],
    );
    assert_eq!((code, r["connected"].as_u64()), (0, Some(20)), "{text}");
    server.shutdown();
}

#[test]
fn wss_without_ca_or_insecure_is_refused_before_connecting() {
    let out = Command::new(BIN)
        .args(["idle", "--url", "wss://127.0.0.1:9/ws", "--conns", "1"])
        .output()
        .expect("client-sim runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--ca FILE") && stderr.contains("--insecure"),
        "{stderr}"
    );
}

#[test]
fn queue_over_wss_admits_everyone_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cert = testcert::write(dir.path(), "").unwrap();
    let server = tls_server(&cert);
    let json = dir.path().join("queue.json");
    // The queue scenario's browsers are tokio-tungstenite over rustls.
    let out = Command::new(BIN)
        .arg("queue")
        .args(["--url", &format!("wss://{}/ws", server.public_addr)])
        .args(["--ca", cert.ca.to_str().expect("utf-8 path")])
        .args(["--api", &format!("http://{}", server.publish_addr)])
        .args(["--admin", &format!("http://{}", server.admin_addr)])
        .args(["--users", "200", "--admit-per-minute", "30000"])
        .args(["--opens-in", "1", "--rejoin", "0.2"])
        .args(["--json", json.to_str().expect("utf-8 path")])
        .output()
        .expect("client-sim runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for (field, expected) in [
        ("admitted", 200),
        ("order_violations", 0),
        ("duplicates", 0),
        ("tickets_lost_on_rejoin", 0),
        ("failed", 0),
    ] {
        assert_eq!(report[field], expected, "{field} in {report}");
    }
    server.shutdown();
}
