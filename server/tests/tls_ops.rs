//! Operating TLS: a certificate pair swapped while browsers stay connected
//! (POST /reload on the admin port, and what SIGHUP calls), a bad pair on
//! reload refused with the old one kept, and an expired certificate or a
//! key that does not match refused at start, by the real binary, exit 2.

mod common;
mod tls_common;

use std::process::Command;

use common::*;
use tls_common::*;

fn post_reload(server: &surge::Server) -> (u16, String) {
    let url = format!("http://{}/reload", server.admin_addr);
    match ureq::post(&url).timeout(WAIT).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("reload request failed: {e}"),
    }
}

/// The certificate a fresh client (no ticket to resume) is shown.
async fn served_certificate(server: &surge::Server, ca: &Ca) -> Vec<u8> {
    let ws = connect_wss(server, &ca.client(), "").await;
    let certs = tls_of(&ws).peer_certificates().expect("a certificate");
    certs[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_serves_new_handshakes_and_open_connections_keep_theirs() {
    let ca = Ca::new("reload CA");
    let files = Files::new("reload");
    let first = ca.leaf("first");
    files.write(&first);
    let server = start_tls(&files, &[]);
    let mut old = connect_wss(&server, &ca.client(), "?ch=slots").await;
    assert_eq!(next_json(&mut old).await["op"], "subscribed");
    assert_eq!(served_certificate(&server, &ca).await, first.der.to_vec());
    // A browser that got a ticket before the reload...
    let returning = ca.client();
    drop(connect_wss(&server, &returning, "").await);

    let second = ca.leaf_until("second", 2040);
    files.write(&second);
    let (status, body) = post_reload(&server);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("valid until 2040-01-01 00:00:00 UTC"),
        "{body}"
    );
    assert_eq!(
        metric(&server, "surge_tls_certificate_expiry_timestamp_seconds"),
        2_208_988_800
    );
    assert_eq!(served_certificate(&server, &ca).await, second.der.to_vec());
    publish_async(&server, "slots", r#""after reload""#).await;
    assert_eq!(next_json(&mut old).await["data"], "after reload");
    // ...still resumes after it: the ticket keys outlive certificates.
    let back = connect_wss(&server, &returning, "").await;
    assert_eq!(
        tls_of(&back).handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );

    // A broken file, then a key from another pair: refused, the pair in
    // use stays, and so do the connections.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    let (status, body) = post_reload(&server);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("the pair in use stays"), "{body}");
    let stranger = ca.leaf("stranger");
    files.write(&ca.leaf("third"));
    std::fs::write(&files.key, &stranger.key_pem).expect("write");
    let (status, body) = post_reload(&server);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("does not match"), "{body}");
    // SIGHUP calls the same reload; it refuses the same way.
    assert!(matches!(server.reload_tls(), Some(Err(_))));
    assert_eq!(served_certificate(&server, &ca).await, second.der.to_vec());
    assert_eq!(
        metric(&server, "surge_tls_certificate_expiry_timestamp_seconds"),
        2_208_988_800
    );
    publish_async(&server, "slots", r#""still here""#).await;
    assert_eq!(next_json(&mut old).await["data"], "still here");
    server.shutdown();
}

#[test]
fn reload_without_tls_says_there_is_nothing_to_reload() {
    let server = start(&[]);
    let (status, body) = post_reload(&server);
    assert_eq!(status, 409, "{body}");
    server.shutdown();
}

/// Runs the real binary with `args` and the test's TLS files; returns its
/// exit code and what it printed on stderr. A binary that does not exit on
/// its own (it started serving) is killed and the test fails.
fn surge(args: &[&str], files: &Files) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(args)
        .args(surge::config::EPHEMERAL_LOOPBACK)
        .args(files.flags())
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run surge");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("surge {args:?} kept running: the pair was not refused");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status.code(), stderr)
}

#[test]
fn an_expired_certificate_or_a_foreign_key_is_refused_at_start_with_exit_2() {
    let ca = Ca::new("start CA");
    let files = Files::new("start");
    files.write(&ca.expired_leaf());
    for args in [&[][..], &["check-config"][..]] {
        let (code, stderr) = surge(args, &files);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("expired at 2021-01-01 00:00:00 UTC"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&files.cert.display().to_string()),
            "{stderr}"
        );
    }

    files.write(&ca.leaf("good"));
    std::fs::write(&files.key, ca.leaf("other").key_pem).expect("write key");
    for args in [&[][..], &["check-config"][..]] {
        let (code, stderr) = surge(args, &files);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("does not match the certificate"),
            "{stderr}"
        );
    }

    std::fs::remove_file(&files.key).expect("remove key");
    let (code, stderr) = surge(&["check-config"], &files);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}
