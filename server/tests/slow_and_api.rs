//! Slow consumers during fan-out, the publish API's answers, and the admin
//! port, all through real sockets.

mod common;

use common::*;
use surge::wire::frame::OpCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_closed_4000_and_others_receive_everything() {
    let server = start(&["--max-outbound", "64KiB", "--max-publish-data", "16KiB"]);
    // The slow reader never reads; a small receive buffer makes it fill fast.
    let mut slow = slow_reader(&server, "/ws?ch=flash");

    let mut fast = connect(&server, "?ch=flash").await;
    assert_eq!(next_json(&mut fast).await["op"], "subscribed");
    let reader = tokio::spawn(async move {
        let mut seen = 0u32;
        while seen < 400 {
            let v = next_json(&mut fast).await;
            assert_eq!(v["data"]["n"], seen, "in order, none missing");
            seen += 1;
        }
        fast
    });
    let blob = "x".repeat(15_000);
    for n in 0..400 {
        publish_async(&server, "flash", &format!(r#"{{"n":{n},"pad":"{blob}"}}"#)).await;
    }
    let _fast = tokio::time::timeout(WAIT * 3, reader)
        .await
        .expect("fast reader done")
        .unwrap();
    assert_eq!(metric(&server, "surge_slow_consumer_closes_total"), 1);
    assert_eq!(metric(&server, "surge_closes_total{code=\"4000\"}"), 1);
    // Reading now, the slow one finds whole frames and then the 4000 close.
    let code = tokio::task::spawn_blocking(move || {
        read_head(&mut slow);
        read_close_code(&mut slow)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(4000));
    server.shutdown();
}

#[test]
fn publish_api_answers_each_bad_request_with_its_status() {
    let server = start(&["--max-publish-data", "1KiB", "--max-publish-body", "4KiB"]);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/api/publish",
            r#"{"ch":"a","data":{"x":1}}"#.into(),
            200,
            r#""off":1,"epoch":""#,
        ),
        ("/api/publish", "not json".into(), 400, "not a publication"),
        ("/api/publish", r#"{"ch":"a"}"#.into(), 400, "missing field"),
        (
            "/api/publish",
            r#"{"ch":"a","data":1,"extra":2}"#.into(),
            400,
            "unknown field",
        ),
        (
            "/api/publish",
            r#"{"ch":"bad name","data":1}"#.into(),
            400,
            "invalid channel",
        ),
        (
            "/api/publish",
            r#"{"ch":"a","data":{"x":1"#.into(),
            400,
            "not a publication",
        ),
        (
            "/api/publish",
            format!(r#"{{"ch":"a","data":"{}"}}"#, "d".repeat(2000)),
            400,
            "over the",
        ),
        (
            "/api/publish",
            format!(r#"{{"ch":"a","data":"{}"}}"#, "d".repeat(5000)),
            413,
            "body over",
        ),
        ("/api/nothing", "{}".into(), 404, "no such endpoint"),
    ];
    for (path, body, status, says) in cases {
        let (got, text) = post(&server, path, &body);
        assert_eq!(
            got,
            status,
            "{path} {}: {text}",
            &body[..body.len().min(40)]
        );
        assert!(text.contains(says), "{text} should say {says}");
    }
    let r = ureq::get(&format!("http://{}/api/publish", server.publish_addr)).call();
    assert!(matches!(r, Err(ureq::Error::Status(405, _))));
    assert_eq!(metric(&server, "surge_publish_rejected_total"), 7);
    assert_eq!(metric(&server, "surge_publications_total"), 1);
    server.shutdown();
}

#[test]
fn publish_api_is_not_served_on_the_public_port_nor_websockets_on_admin() {
    let server = start(&[]);
    let answer = raw_http(
        server.public_addr,
        b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let (status, _) = admin_get(&server, "/ws");
    assert_eq!(status, 404);
    let (status, _) = admin_get(&server, "/api/publish");
    assert_eq!(status, 404);
    server.shutdown();
}

/// This process's resident set size (the server runs inside it).
fn own_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .expect("VmRSS line")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_health_metrics_and_stats() {
    let server = start(&[]);
    let mut ws = connect(&server, "").await;
    // Traffic counters move by exactly what goes over the wire from here
    // on (the upgrade's own bytes are already counted): one masked text
    // frame in (2 bytes of header, 4 of mask), two unmasked ones out.
    const TRAFFIC: [&str; 4] = [
        "surge_frames_in_total",
        "surge_bytes_in_total",
        "surge_frames_out_total",
        "surge_bytes_out_total",
    ];
    let before = TRAFFIC.map(|series| metric(&server, series));
    let sub = r#"{"op":"sub","ch":"m"}"#;
    send_text(&mut ws, sub).await;
    let subscribed = next_text(&mut ws).await;
    assert!(subscribed.contains(r#""op":"subscribed""#), "{subscribed}");
    publish_async(&server, "m", "1").await;
    let publication = next_text(&mut ws).await;
    let (status, body) = admin_get(&server, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let frame = |payload: &str, mask: usize| (2 + mask + payload.len()) as u64;
    let moved = [
        1,
        frame(sub, 4),
        2,
        frame(&subscribed, 0) + frame(&publication, 0),
    ];
    for ((series, before), moved) in TRAFFIC.iter().zip(before).zip(moved) {
        // Counted just after the write the client saw: poll, bounded.
        eventually_metric(&server, series, before + moved);
    }
    for (series, value) in [
        ("surge_open_connections", 1),
        ("surge_accepted_total", 1),
        ("surge_channels", 1),
        ("surge_publications_total", 1),
        ("surge_publish_requests_total", 1),
        ("surge_deliveries_total", 1),
        ("surge_slow_consumer_closes_total", 0),
        ("surge_handshake_failures_total{reason=\"bad_key\"}", 0),
        ("surge_closes_total{code=\"1000\"}", 0),
    ] {
        assert_eq!(metric(&server, series), value, "{series}");
    }
    let rss_low = own_rss();
    assert_eq!(
        metric(&server, "surge_worker_connections{worker=\"0\"}")
            + metric(&server, "surge_worker_connections{worker=\"1\"}"),
        1
    );
    // The server lives in this process: its RSS is ours, read around it.
    let rss = metric(&server, "surge_resident_memory_bytes");
    let rss_high = own_rss();
    assert!(
        rss_low / 2 <= rss && rss <= rss_high * 2,
        "resident memory {rss} outside [{rss_low}/2, {rss_high}*2]"
    );

    let (_, stats) = admin_get(&server, "/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["open_connections"], 1);
    assert_eq!(stats["deliveries"], 1);
    assert_eq!(stats["frames_out"].as_u64(), Some(before[2] + 2));
    assert_eq!(stats["workers"].as_array().map(|w| w.len()), Some(2));

    // A clean close is answered, counted, and the gauges come back down.
    ws.close(None).await.expect("send close");
    assert_eq!(close_code(&mut ws).await, 1005);
    eventually_metric(&server, "surge_open_connections", 0);
    eventually_metric(&server, "surge_channels", 0);
    server.shutdown();
}

/// Polls /metrics until `series` reads `want`, failing after `WAIT`.
fn eventually_metric(server: &surge::Server, series: &str, want: u64) {
    let start = std::time::Instant::now();
    loop {
        let got = metric(server, series);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{series} stayed at {got}, not {want}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn admin_answers_while_the_data_port_is_flooded_with_connections() {
    let server = start(&["--workers", "1"]);
    // Hold many half-open upgrades and a busy publisher; admin still answers.
    let held: Vec<_> = (0..500).map(|_| raw(server.public_addr)).collect();
    let mut live: Vec<_> = (0..100)
        .map(|_| raw_ws(server.public_addr, "/ws?ch=busy"))
        .collect();
    for s in live.iter_mut() {
        read_frame(s).expect("subscribed");
    }
    for i in 0..20 {
        publish(&server, "busy", &i.to_string());
        let (status, body) = admin_get(&server, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
    for s in live.iter_mut() {
        for i in 0..20 {
            let (op, payload) = read_frame(s).expect("publication");
            assert_eq!(op, OpCode::Text);
            assert_publication(&payload, "busy", serde_json::json!(i));
        }
    }
    drop(held);
    server.shutdown();
}
