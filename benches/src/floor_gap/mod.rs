//! `benches floor-gap`: how far Surge is from the kernel's floor, in one run.
//!
//!   cargo run --release -p benches -- floor-gap [--conns 18000] [--json FILE]
//!
//! For the floor (`floor_server`: accept, read, SHA-1, fixed 101; one
//! `write` per socket per publication), Surge and the tokio baseline in
//! turn, each a fresh process pinned to one CPU while this process (the
//! clients) is pinned to the other, with the same clients:
//!
//! - ramp N browsers, each subscribing to two channels at connect
//!   (`?ch=clinic:0&ch=inbox/ID`), and take the server's CPU per accepted
//!   and upgraded connection;
//! - publish single publications to all N (one at a time, the next only
//!   once every client has counted the last: no bursts, so no `writev`
//!   batching), and take the server's CPU per delivery the clients counted.
//!
//! Repeated (`--repeats`), printing medians and ranges of each figure and of
//! the ratios taken within each repeat, and writing JSON. It measures; it
//! never asserts on time.

mod client;
mod process;
mod report;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use report::report;

use client::Clients;
use process::{cpu_seconds, loadavg, pin_self, start_pinned, Pinned};

#[derive(clap::Args, Clone)]
pub struct Opts {
    /// Connections (subscribers) per server.
    #[arg(long, default_value_t = 18_000)]
    conns: usize,
    /// Single publications to all subscribers, one after the other.
    #[arg(long, default_value_t = 10)]
    publications: u64,
    /// Times the whole comparison is repeated (medians and ranges).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Bytes of the `data` string in each publication; the default makes
    /// Surge's frame 134 bytes, the size the issue's C floor measured.
    #[arg(long, default_value_t = 75)]
    data_bytes: usize,
    /// CPU the server under test is pinned to.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// CPU this process (the clients) is pinned to.
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Surge's worker threads (one per CPU it is pinned to by default).
    #[arg(long, default_value_t = 1)]
    surge_workers: usize,
    /// The Surge binary to measure (another build, for before and after).
    #[arg(long)]
    surge_bin: Option<PathBuf>,
    /// Run the floor with TCP_DEFER_ACCEPT, the listener option Surge uses.
    #[arg(long)]
    floor_defer_accept: bool,
    /// Leave the tokio baseline out.
    #[arg(long)]
    no_baseline: bool,
    /// Measure only this server and the floor (`surge` or `baseline`).
    #[arg(long)]
    only: Option<String>,
    /// Seconds to wait before the ramp and before the publications, after
    /// printing the server's PID, so a profiler can attach to one phase.
    #[arg(long, default_value_t = 0)]
    pause: u64,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/floor-gap.json")]
    json: PathBuf,
    /// Use the binaries already in target/release.
    #[arg(long)]
    skip_build: bool,
}

/// One server measured once.
pub(crate) struct Sample {
    handshake_us: f64,
    handshake_us_ticks: f64,
    delivery_us: f64,
    delivery_us_ticks: f64,
    ready: usize,
    failed: usize,
    handshakes_per_second: f64,
    deliveries: u64,
    expected: u64,
    per_client: (u32, u32),
    frame_bytes: usize,
}

impl Sample {
    fn to_json(&self) -> Value {
        json!({
            "cpu_us_per_handshake": self.handshake_us, "cpu_us_per_handshake_from_stat_ticks": self.handshake_us_ticks,
            "cpu_us_per_delivery": self.delivery_us, "cpu_us_per_delivery_from_stat_ticks": self.delivery_us_ticks,
            "connections_ready": self.ready, "connections_failed": self.failed,
            "handshakes_per_second": self.handshakes_per_second,
            "deliveries_counted_by_clients": self.deliveries, "deliveries_expected": self.expected,
            "deliveries_per_client_min": self.per_client.0, "deliveries_per_client_max": self.per_client.1,
            "frame_bytes": self.frame_bytes,
        })
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Floor,
    Surge,
    Baseline,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Surge => "surge",
            Kind::Baseline => "baseline",
        }
    }
}

fn bin(name: &str) -> PathBuf {
    super::root().join("target/release").join(name)
}

fn start(kind: Kind, o: &Opts) -> Result<Pinned, String> {
    let workers = o.surge_workers.to_string();
    match kind {
        Kind::Floor if o.floor_defer_accept => {
            start_pinned(&bin("floor_server"), &["--defer-accept"], o.server_cpu)
        }
        Kind::Floor => start_pinned(&bin("floor_server"), &[], o.server_cpu),
        Kind::Baseline => start_pinned(
            &bin("baseline"),
            &["127.0.0.1:0", "127.0.0.1:0"],
            o.server_cpu,
        ),
        Kind::Surge => {
            let mut args: Vec<&str> = surge::config::EPHEMERAL_LOOPBACK.to_vec();
            args.extend([
                "--log",
                "warn",
                "--max-connections",
                "19500",
                // Every benchmark client comes from 127.0.0.1: the per-address
                // cap (sized for NAT) would refuse all past 4,096.
                "--max-connections-per-ip",
                "0",
                "--workers",
                &workers,
            ]);
            let program = o.surge_bin.clone().unwrap_or_else(|| bin("surge"));
            start_pinned(&program, &args, o.server_cpu)
        }
    }
}

/// One publication to `clinic:0`: a POST to the publish API, or for the
/// floor a `write BYTES` line on its stdin.
fn publish(server: &mut Pinned, id: u64, o: &Opts, frame_bytes: usize) -> Result<(), String> {
    let Some(addr) = server.publish.clone() else {
        let stdin = server.stdin.as_mut().ok_or("floor stdin")?;
        writeln!(stdin, "write {frame_bytes}").map_err(|e| e.to_string())?;
        return stdin.flush().map_err(|e| e.to_string());
    };
    let pad = "x".repeat(o.data_bytes.saturating_sub(8));
    let body = format!(r#"{{"ch":"clinic:0","data":"{id:07}-{pad}"}}"#);
    let mut s = TcpStream::connect(&addr).map_err(|e| format!("publish {addr}: {e}"))?;
    write!(
        s,
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!(
            "publish refused: {}",
            answer.lines().next().unwrap_or("")
        ))
    }
}

/// Ramps, then publishes, measuring the server's CPU around each.
/// `frame_bytes` is the frame size the floor writes (Surge's, measured first).
fn measure(kind: Kind, o: &Opts, frame_bytes: usize) -> Result<Sample, String> {
    let mut server = start(kind, o)?;
    let pid = server.child.id();
    let mut clients = Clients::new().map_err(|e| e.to_string())?;
    let acks = if kind == Kind::Floor { 0 } else { 2 };
    let pause = |phase: &str| {
        if o.pause > 0 {
            eprintln!(
                "floor-gap: pause: {} pid {pid}, {phase} in {} s",
                kind.name(),
                o.pause
            );
            std::thread::sleep(Duration::from_secs(o.pause));
        }
    };
    pause("ramp");
    let before = cpu_seconds(pid)?;
    let ramp = clients.ramp(
        server.ws,
        o.conns,
        acks,
        |i| format!("/ws?ch=clinic:0&ch=inbox/{i}"),
        Duration::from_secs(120),
    )?;
    let ramped = cpu_seconds(pid)?;
    // Let delayed ACKs and the last wake-ups of the ramp settle first.
    std::thread::sleep(Duration::from_millis(300));
    pause("fan-out");
    let start = cpu_seconds(pid)?;
    let mut expected = 0;
    for id in 0..o.publications {
        publish(&mut server, id, o, frame_bytes)?;
        expected += ramp.ready as u64;
        clients.wait_for(expected, Duration::from_secs(60))?;
    }
    let end = cpu_seconds(pid)?;
    let per_client = clients.per_client_range();
    clients.close_all();
    let deliveries = clients.deliveries.max(1) as f64;
    let ready = ramp.ready.max(1) as f64;
    Ok(Sample {
        handshake_us: (ramped.0 - before.0) * 1e6 / ready,
        handshake_us_ticks: (ramped.1 - before.1) * 1e6 / ready,
        delivery_us: (end.0 - start.0) * 1e6 / deliveries,
        delivery_us_ticks: (end.1 - start.1) * 1e6 / deliveries,
        ready: ramp.ready,
        failed: ramp.failed,
        handshakes_per_second: ramp.ready as f64 / ramp.seconds.max(1e-9),
        deliveries: clients.deliveries,
        expected,
        per_client,
        frame_bytes: clients.frame_bytes,
    })
}

fn build() -> Result<(), String> {
    crate::cluster::build(&super::root(), &["server", "benches"])
}

pub fn run(o: &Opts) -> Result<(), String> {
    if !o.skip_build {
        build()?;
    }
    pin_self(o.client_cpu)?;
    let load_before = loadavg();
    let kinds: Vec<Kind> = [Kind::Surge, Kind::Floor, Kind::Baseline]
        .into_iter()
        .filter(|k| *k != Kind::Baseline || !o.no_baseline)
        .filter(|k| *k == Kind::Floor || o.only.as_ref().is_none_or(|n| n == k.name()))
        .collect();
    let mut runs: Vec<Vec<(Kind, Sample)>> = Vec::new();
    for r in 0..o.repeats {
        let mut round = Vec::new();
        // Surge's frame once measured; this until then (`--only baseline`).
        let mut frame_bytes = 134;
        for &kind in &kinds {
            eprintln!(
                "floor-gap: repeat {}/{}: {} ...",
                r + 1,
                o.repeats,
                kind.name()
            );
            let s = measure(kind, o, frame_bytes)?;
            if kind == Kind::Surge {
                frame_bytes = s.frame_bytes;
            }
            round.push((kind, s));
        }
        runs.push(round);
    }
    let load_after = loadavg();
    report(o, &kinds, &runs, &load_before, &load_after)
}
