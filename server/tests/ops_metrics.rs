//! /metrics as Prometheus reads it: parsed by a Prometheus text-format
//! parser (not a regex), with process figures, delivery histograms and
//! refusals by reason; and the Grafana dashboard and alert rules in
//! `deploy/` name only metrics a real scrape holds.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Scrape, Value};

fn scrape(server: &surge::Server) -> Scrape {
    let (status, text) = admin_get(server, "/metrics");
    assert_eq!(status, 200);
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("/metrics parses")
}

/// The value of an unlabelled gauge or counter, or of a histogram's count.
fn value(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("{name} {label:?} not in /metrics"));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Value::Summary(_) => panic!("{name} is a summary"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_carry_process_figures_latency_histograms_and_refusals() {
    let server = start(&[]);
    let mut ws = connect(&server, "").await;
    subscribe(&mut ws, "clinic/7").await;
    const N: usize = 20;
    for i in 0..N {
        publish_async(&server, "clinic/7", &i.to_string()).await;
        next_text(&mut ws).await;
    }
    let (status, _) = post(&server, "/api/publish", "{not json");
    assert_eq!(status, 400);
    // Refused commands: a bad name, a private channel without a token.
    send_text(&mut ws, r#"{"op":"sub","ch":"no spaces allowed"}"#).await;
    assert_eq!(next_json(&mut ws).await["code"], "bad_channel");
    send_text(&mut ws, r#"{"op":"sub","ch":"user/8812"}"#).await;
    assert_eq!(next_json(&mut ws).await["code"], "forbidden");

    // Every worker observes every publication; the one without subscribers
    // may still be draining its queue when the client has read them all.
    let workers = 2.0;
    let deadline = Instant::now() + WAIT;
    let scraped = loop {
        let s = tokio::task::block_in_place(|| scrape(&server));
        if value(&s, "surge_publish_latency_seconds", None) >= N as f64 * workers
            || Instant::now() > deadline
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        value(&scraped, "surge_publish_latency_seconds", None),
        N as f64 * workers
    );
    assert_eq!(
        value(&scraped, "surge_fan_out_seconds", None),
        N as f64 * workers
    );
    let fds = value(&scraped, "surge_process_open_fds", None);
    let max = value(&scraped, "surge_process_max_fds", None);
    // At least the three listeners per worker and the client's socket.
    assert!(fds >= 4.0 && fds < max, "{fds} of {max}");
    assert!(value(&scraped, "surge_process_cpu_seconds_total", None) > 0.0);
    assert!(value(&scraped, "surge_resident_memory_bytes", None) > 0.0);
    assert_eq!(
        value(
            &scraped,
            "surge_publish_refusals_total",
            Some(("status", "400"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &scraped,
            "surge_publish_refusals_total",
            Some(("status", "503"))
        ),
        0.0
    );
    assert!(value(&scraped, "surge_max_connections", None) > 0.0);
    for (code, n) in [
        ("bad_channel", 1.0),
        ("forbidden", 1.0),
        ("bad_request", 0.0),
    ] {
        let series = Some(("code", code));
        assert_eq!(
            value(&scraped, "surge_command_errors_total", series),
            n,
            "{code}"
        );
    }
    server.shutdown();
}

/// Every metric name a scrape of a real server exports; a histogram also
/// under its `_bucket`, `_sum` and `_count` series.
fn exported() -> BTreeSet<String> {
    let server = start(&[]);
    let s = scrape(&server);
    server.shutdown();
    let mut names = BTreeSet::new();
    for sample in &s.samples {
        names.insert(sample.metric.clone());
        if matches!(sample.value, Value::Histogram(_)) {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", sample.metric));
            }
        }
    }
    names
}

/// The `surge_*` metric names in a PromQL expression. Our metrics share
/// the prefix, so scanning identifiers that carry it finds every one.
fn referenced(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("surge_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn deploy(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn dashboard_and_alert_rules_name_only_exported_metrics() {
    let exported = exported();
    let mut missing = Vec::new();

    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy("grafana/surge.json")).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut dashboard_exprs = 0;
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            dashboard_exprs += 1;
            let names = referenced(expr);
            assert!(!names.is_empty(), "no surge metric in {expr}");
            missing.extend(names.into_iter().filter(|n| !exported.contains(n)));
        }
    }
    assert!(dashboard_exprs >= 10);

    let rules: serde_yaml::Value =
        serde_yaml::from_str(&deploy("prometheus/surge-alerts.yml")).expect("rules are YAML");
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(rule["annotations"]["summary"].is_string(), "{name}");
            let names = referenced(expr);
            assert!(!names.is_empty(), "{name}: no surge metric");
            missing.extend(names.into_iter().filter(|n| !exported.contains(n)));
            alerts.insert(name.to_string());
        }
    }
    for required in [
        "SurgeSlowConsumerClosesRising",
        "SurgePublish503sRising",
        "SurgeRedisDisconnected",
        "SurgeDescriptorHeadroomLow",
    ] {
        assert!(alerts.contains(required), "no {required} alert");
    }
    assert!(missing.is_empty(), "not exported by /metrics: {missing:?}");
}

#[test]
fn a_metric_scan_finds_names_and_skips_lookalikes() {
    assert_eq!(
        referenced("rate(surge_a_total[5m]) / on() xsurge_b + surge_c:sum"),
        vec!["surge_a_total", "surge_c:sum"]
    );
}

#[test]
fn command_error_codes_index_their_counters_in_order() {
    use surge::channels::protocol::ErrorCode;
    for (i, code) in ErrorCode::ALL.iter().enumerate() {
        assert_eq!(*code as usize, i, "{}", code.as_str());
    }
}
