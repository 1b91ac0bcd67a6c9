//! Measures the memory history costs per retained publication: starts the
//! release `surge`, publishes P publications (about 100 bytes of data each)
//! over C channels in batches, and reports the server's RSS growth and its
//! own `surge_history_bytes` accounting, per publication.
//!
//! cargo build --release -p server && \
//!   cargo run --release -p server --example history_rss -- 100000 1000

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let publications: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let channels: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let per_channel = publications.div_ceil(channels);
    let bin = std::env::var("SURGE_BIN").unwrap_or_else(|_| "target/release/surge".into());
    let mut server = Command::new(&bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--publish-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--history-size",
            &per_channel.to_string(),
            "--history-ttl",
            "1h",
            "--log",
            "warn",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address line");
    let publish = line
        .split("publish=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("publish url");
    let batch_url = publish.replace("/api/publish", "/api/batch");
    let admin = line
        .split("admin=")
        .nth(1)
        .map(str::trim)
        .expect("admin url");
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(server.id());
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
    let after = rss_kib(server.id());
    let metrics = ureq::get(admin)
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
    let _ = server.kill();
    let _ = server.wait();
}
