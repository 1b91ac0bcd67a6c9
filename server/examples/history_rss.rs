//! Measures the memory history costs per retained publication: starts the
//! release `surge`, publishes P publications (about 100 bytes of data each)
//! over C channels in batches, and reports the server's RSS growth and its
//! own `surge_history_bytes` accounting, per publication.
//!
//! cargo build --release -p server && \
//!   cargo run --release -p server --example history_rss -- 100000 1000

use std::time::Duration;

mod support;
use support::{rss_kib, spawn_surge};

fn main() {
    let mut args = std::env::args().skip(1);
    let publications: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let channels: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let per_channel = publications.div_ceil(channels);
    let size = per_channel.to_string();
    let server = spawn_surge(&["--history-size", &size, "--history-ttl", "1h"]);
    let batch_url = server.publish.replace("/api/publish", "/api/batch");
    let admin = server.admin.clone();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(server.child.id());
    let data = format!(
        r#"{{"slots":[{{"t":"09:00","free":3}},{{"t":"09:15","free":0}}],"pad":"{}"}}"#,
        "x".repeat(40)
    );
    let mut sent = 0;
    while sent < publications {
        let n = (publications - sent).min(5000);
        let items: Vec<String> = (sent..sent + n)
            .map(|i| format!(r#"{{"ch":"clinic:{}","data":{data}}}"#, i % channels))
            .collect();
        ureq::post(&batch_url)
            .send_string(&format!("[{}]", items.join(",")))
            .expect("batch");
        sent += n;
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(server.child.id());
    let metrics = ureq::get(&admin)
        .call()
        .expect("metrics")
        .into_string()
        .unwrap_or_default();
    let accounted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("surge_history_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let per = |bytes: u64| bytes as f64 / publications as f64;
    println!(
        "history_rss: {publications} publications over {channels} channels, data {} bytes each",
        data.len()
    );
    println!(
        "history_rss: RSS {before} -> {after} KiB: {:.0} bytes per retained publication",
        per((after - before) * 1024)
    );
    println!("history_rss: surge_history_bytes {accounted}: {:.0} bytes per publication (frame + 192 bookkeeping)", per(accounted));
}
