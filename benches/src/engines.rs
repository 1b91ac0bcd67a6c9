//! `benches engines`: the cost of a publication through the Redis engine
//! against the in-process engine, side by side in one run, same N, same
//! publications, same client-sim fan-out (one clinic channel all subscribe
//! to, plus each browser's own channel):
//!
//!   cargo run --release -p benches -- engines [--conns 18000] [--publications 40]
//!
//! Reports the Surge process's CPU per delivery (from /proc, as `all` does),
//! the publish-to-last-delivery time, delivery latency, and redis-server's
//! own CPU for the run, with the Redis/in-process ratio for each.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{build, start_with};

#[derive(clap::Args, Clone)]
pub struct EngineOpts {
    /// Subscribers of the one clinic channel.
    #[arg(long, default_value_t = 18_000)]
    conns: u64,
    /// Publications in each fan-out run.
    #[arg(long, default_value_t = 40)]
    publications: u64,
    /// client-sim processes receiving the fan-out.
    #[arg(long, default_value_t = 2)]
    fanout_procs: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/engines.json")]
    json: PathBuf,
    /// Use the binaries already in target/release.
    #[arg(long)]
    skip_build: bool,
}

/// A redis-server on a free loopback port, without persistence, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Result<Redis, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--maxclients", "10000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server (apt-get install redis-server): {e}"))?;
    let redis = Redis { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(redis)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn measure(o: &EngineOpts, extra: &[&str], redis_pid: Option<u32>) -> Result<Value, String> {
    let server = start_with("surge", extra)?;
    let redis_before = redis_pid.and_then(cpu_seconds);
    let r = super::fanout(
        &server,
        o.conns,
        o.publications,
        1_000_000.0,
        o.fanout_procs,
    )?;
    let redis_cpu = match (redis_before, redis_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let deliveries = r["deliveries"].as_f64().unwrap_or(0.0);
    let cpu = r["server"]["cpu_seconds_fanout"].as_f64();
    Ok(json!({
        "connections": r["connected"],
        "deliveries": r["deliveries"], "deliveries_expected": r["deliveries_expected"],
        "gaps": r["gaps"], "duplicates": r["duplicates"],
        "server_cpu_us_per_delivery": cpu.filter(|_| deliveries > 0.0).map(|c| c * 1e6 / deliveries),
        "completion_ms": r["fanout_completion_ms"],
        "latency_ms": r["delivery_ms"],
        "redis_cpu_seconds_whole_run": redis_cpu,
    }))
}

pub fn run(o: &EngineOpts) -> Result<(), String> {
    if !o.skip_build {
        build()?;
    }
    eprintln!("benches: in-process engine ...");
    let memory = measure(o, &[], None)?;
    let redis = start_redis()?;
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    eprintln!("benches: Redis engine ({url}) ...");
    let via_redis = measure(o, &["--redis", &url], Some(redis.child.id()))?;
    drop(redis);

    let f = |v: &Value, path: &[&str]| path.iter().fold(v, |v, k| &v[*k]).as_f64();
    let rows: Vec<(&str, Option<f64>, Option<f64>)> = vec![
        (
            "server CPU per delivery, us",
            f(&memory, &["server_cpu_us_per_delivery"]),
            f(&via_redis, &["server_cpu_us_per_delivery"]),
        ),
        (
            "publish to last delivery p50, ms",
            f(&memory, &["completion_ms", "p50"]),
            f(&via_redis, &["completion_ms", "p50"]),
        ),
        (
            "publish to last delivery max, ms",
            f(&memory, &["completion_ms", "max"]),
            f(&via_redis, &["completion_ms", "max"]),
        ),
        (
            "delivery latency p50, ms",
            f(&memory, &["latency_ms", "p50"]),
            f(&via_redis, &["latency_ms", "p50"]),
        ),
        (
            "delivery latency p99, ms",
            f(&memory, &["latency_ms", "p99"]),
            f(&via_redis, &["latency_ms", "p99"]),
        ),
        (
            "deliveries (expected equal)",
            f(&memory, &["deliveries"]),
            f(&via_redis, &["deliveries"]),
        ),
    ];
    println!(
        "{:<36} {:>12} {:>12} {:>12}",
        "metric", "in-process", "redis", "redis/in-p"
    );
    for (name, m, r) in &rows {
        let show = |v: &Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let ratio = match (m, r) {
            (Some(m), Some(r)) if *m > 0.0 => format!("{:.2}", r / m),
            _ => "-".into(),
        };
        println!("{:<36} {:>12} {:>12} {:>12}", name, show(m), show(r), ratio);
    }
    if let Some(cpu) = f(&via_redis, &["redis_cpu_seconds_whole_run"]) {
        println!("redis-server CPU for the whole Redis run (ramp and fan-out): {cpu:.2} s");
    }
    let lost = |v: &Value| {
        v["deliveries"].as_u64() != v["deliveries_expected"].as_u64()
            || v["gaps"].as_u64().unwrap_or(0) + v["duplicates"].as_u64().unwrap_or(0) > 0
    };
    let results = json!({
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "connections": o.conns, "publications": o.publications,
        "memory": memory, "redis": via_redis,
    });
    super::write_results(&o.json, &results)?;
    if lost(&memory) || lost(&via_redis) {
        return Err("a fan-out lost, duplicated or missed deliveries".into());
    }
    Ok(())
}
