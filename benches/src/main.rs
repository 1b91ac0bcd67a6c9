//! The macro benchmarks, one command:
//!
//!   cargo run --release -p benches -- all [--conns 18000] [--json FILE]
//!
//! Builds everything, then for Surge and the tokio baseline in turn, in the
//! same run on the same machine, each on a freshly started server process:
//! idle memory per connection at three sizes (two channels each), handshake
//! rate, and fan-out to N subscribers of one channel (latency, time to the
//! last subscriber, deliveries per second, server CPU per million
//! deliveries); then the physical floor (one pre-encoded frame written to N
//! open sockets in a tight loop). Prints one table of ratios and writes JSON.
//! client-sim drives both servers unchanged.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use clap::Parser;
use serde_json::{json, Value};

mod cluster;
mod engines;
mod floor_gap;
mod million;
mod tls;

#[derive(Parser)]
#[command(name = "benches")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Every macro benchmark, Surge and the baseline side by side.
    All(Opts),
    /// A publication through the Redis engine against the in-process one:
    /// server CPU per delivery and publish-to-last-delivery time, same N.
    Engines(engines::EngineOpts),
    /// Server CPU per delivery and per handshake next to the kernel's floor, pinned.
    FloorGap(floor_gap::Opts),
    /// A million connections on this box: Surge nodes joined through Redis
    /// on one shared port, client-sim over many processes and source
    /// addresses (see docs/benchmarks.md).
    Million(million::Opts),
    /// wss:// beside ws:// for Surge and the baseline (tokio-rustls): idle
    /// bytes, server CPU per delivery, full and resumed TLS handshakes per
    /// CPU-second; fails if an idle wss connection exceeds its budget.
    Tls(tls::Opts),
}

#[derive(clap::Args, Clone)]
struct Opts {
    /// Connections for the largest runs (memory is also measured at N/4 and N/2).
    #[arg(long, default_value_t = 18_000)]
    conns: u64,
    /// Publications in the fan-out run.
    #[arg(long, default_value_t = 40)]
    publications: u64,
    /// Publications per second in the fan-out run. The default sends them
    /// back to back, so deliveries per second measure the server, not the pacing.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub_rate: f64,
    /// client-sim processes receiving the fan-out.
    #[arg(long, default_value_t = 2)]
    fanout_procs: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Use the binaries already in target/release.
    #[arg(long)]
    skip_build: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

/// A server process, killed on drop.
struct Server {
    child: Child,
    /// `ws://...` or, for a server started with a certificate, `wss://...`.
    ws: String,
    publish: String,
    /// The CA client-sim must trust for `wss://` (`--ca`).
    ca: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(kind: &str) -> Result<Server, String> {
    start_with(kind, &[])
}

/// Starts `kind` ("surge" or the baseline) with `extra` arguments.
fn start_with(kind: &str, extra: &[&str]) -> Result<Server, String> {
    start_tls(kind, extra, None)
}

/// As `start_with`; with `tls`, the server speaks `wss://` with that test
/// certificate (both take `--tls-cert FILE --tls-key FILE`).
fn start_tls(
    kind: &str,
    extra: &[&str],
    tls: Option<&client_sim::testcert::TestCert>,
) -> Result<Server, String> {
    let tls_args: Vec<String> = tls.map_or_else(Vec::new, |t| {
        vec![
            "--tls-cert".into(),
            t.cert.display().to_string(),
            "--tls-key".into(),
            t.key.display().to_string(),
        ]
    });
    let mut cmd = match kind {
        "surge" => {
            let mut c = Command::new(bin("surge"));
            c.args(surge::config::EPHEMERAL_LOOPBACK)
                .args(["--log", "warn", "--max-connections", "19500"])
                .args(extra);
            c
        }
        _ => {
            let mut c = Command::new(bin("baseline"));
            c.args(["127.0.0.1:0", "127.0.0.1:0"]).args(extra);
            c
        }
    };
    cmd.args(&tls_args);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{kind}: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let field = |p: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(p))
            .unwrap_or_default()
            .to_string()
    };
    let publish = field("publish=")
        .trim_end_matches("/api/publish")
        .to_string();
    let address = [field("wss://"), field("ws://")].concat();
    if address.is_empty() {
        return Err(format!("{kind}: no ws:// or wss:// address in {line:?}"));
    }
    Ok(Server {
        ws: format!("{}://{address}", if tls.is_some() { "wss" } else { "ws" }),
        publish,
        child,
        ca: tls.map(|t| t.ca.clone()),
    })
}

/// Runs client-sim and returns its JSON report (whatever its exit code:
/// a lost message is a result to record, not a reason to stop).
fn client_sim(server: &Server, args: &[String]) -> Result<Value, String> {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let json = dir.join("client-sim.json");
    let _ = std::fs::remove_file(&json);
    let status = Command::new(bin("client-sim"))
        .args(args)
        .args([
            "--url",
            &server.ws,
            "--publish",
            &server.publish,
            "--server-pid",
            &server.child.id().to_string(),
        ])
        .args([
            "--own-channel",
            "inbox/",
            "--src-ips",
            "127.0.0.2-127.0.0.9",
            "--timeout",
            "120",
        ])
        .args(
            server
                .ca
                .iter()
                .flat_map(|ca| [Path::new("--ca"), ca.as_path()]),
        )
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&json)
        .map_err(|e| format!("client-sim ({status}) wrote no report: {e}"))?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// client-sim's fan-out to `conns` subscribers of one clinic channel,
/// ramped as fast as the server takes it and without a hold, as every
/// macro benchmark that compares fan-out runs it.
fn fanout(
    server: &Server,
    conns: u64,
    publications: u64,
    pub_rate: f64,
    procs: usize,
) -> Result<Value, String> {
    client_sim(
        server,
        &[
            "fanout".into(),
            "--conns".into(),
            conns.to_string(),
            "--rate".into(),
            "100000".into(),
            "--hold".into(),
            "0".into(),
            "--clinics".into(),
            "1".into(),
            "--publications".into(),
            publications.to_string(),
            "--pub-rate".into(),
            pub_rate.to_string(),
            // Two receiving processes, so the receiver is not one thread
            // parsing every delivery while the server has both cores.
            "--procs".into(),
            procs.to_string(),
        ],
    )
}

fn measure(kind: &str, o: &Opts) -> Result<Value, String> {
    let mut memory = Vec::new();
    let mut handshakes = 0.0;
    for n in [o.conns / 4, o.conns / 2, o.conns] {
        let server = start(kind)?;
        let r = client_sim(
            &server,
            &[
                "idle".into(),
                "--conns".into(),
                n.to_string(),
                "--rate".into(),
                "100000".into(),
                "--hold".into(),
                "1".into(),
            ],
        )?;
        memory.push(json!({"connections": n, "connected": r["connected"], "bytes_per_connection": r["server"]["bytes_per_connection"]}));
        handshakes = r["handshakes_per_second"].as_f64().unwrap_or(0.0);
    }
    let server = start(kind)?;
    let r = fanout(&server, o.conns, o.publications, o.pub_rate, o.fanout_procs)?;
    let deliveries = r["deliveries"].as_f64().unwrap_or(0.0);
    let cpu = r["server"]["cpu_seconds_fanout"].as_f64();
    Ok(json!({
        "memory": memory,
        "handshakes_per_second": handshakes,
        "fanout": {
            "connections": r["connected"], "publications": r["publications"],
            "deliveries": r["deliveries"], "deliveries_expected": r["deliveries_expected"],
            "gaps": r["gaps"], "duplicates": r["duplicates"],
            "latency_ms": r["delivery_ms"], "completion_ms": r["fanout_completion_ms"],
            "deliveries_per_second": r["deliveries_per_second"],
            "cpu_seconds_per_million_deliveries": cpu.filter(|_| deliveries > 0.0).map(|c| c * 1e6 / deliveries),
        }
    }))
}

fn floor(o: &Opts, frame_bytes: usize) -> Result<Value, String> {
    let mut sink = Command::new(bin("floor"))
        .arg("sink")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(sink.stdout.take().ok_or("sink stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let out = Command::new(bin("floor"))
        .args([
            "write",
            &addr,
            &o.conns.to_string(),
            &o.publications.to_string(),
            &frame_bytes.to_string(),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let _ = sink.kill();
    let _ = sink.wait();
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("floor: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// One line of the table: metric, Surge, baseline, floor.
type Row = (String, Option<f64>, Option<f64>, Option<f64>);

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// Builds the release binaries the macro benchmarks run.
fn build() -> Result<(), String> {
    cluster::build(&root(), &["server", "client-sim", "benches"])
}

fn all(o: &Opts) -> Result<(), String> {
    if !o.skip_build {
        build()?;
    }
    eprintln!("benches: measuring surge ...");
    let surge = measure("surge", o)?;
    eprintln!("benches: measuring baseline ...");
    let baseline = measure("baseline", o)?;
    // The frame Surge sends in the fan-out: the envelope and client-sim's data.
    let frame_bytes = 110;
    eprintln!("benches: measuring the floor ...");
    let floor = floor(o, frame_bytes)?;
    let kernel = kernel_tuning::measure::measure((o.conns as usize / 2).clamp(100, 9000))
        .map_err(|e| e.to_string())?;

    let f = |v: &Value, path: &[&str]| path.iter().fold(v, |v, k| &v[*k]).as_f64();
    let mem = |v: &Value, i: usize| v["memory"][i]["bytes_per_connection"].as_f64();
    let mut rows: Vec<Row> = Vec::new();
    for i in 0..3 {
        let n = surge["memory"][i]["connections"].as_u64().unwrap_or(0);
        rows.push((
            format!("user-space bytes per idle connection, N={n}"),
            mem(&surge, i),
            mem(&baseline, i),
            None,
        ));
    }
    rows.push((
        "handshakes per second (ramp)".into(),
        f(&surge, &["handshakes_per_second"]),
        f(&baseline, &["handshakes_per_second"]),
        None,
    ));
    for (label, key) in [("p50", "p50"), ("p99", "p99"), ("max", "max")] {
        rows.push((
            format!("fan-out delivery latency {label}, ms"),
            f(&surge, &["fanout", "latency_ms", key]),
            f(&baseline, &["fanout", "latency_ms", key]),
            None,
        ));
    }
    rows.push((
        "fan-out time to last subscriber p50, ms".into(),
        f(&surge, &["fanout", "completion_ms", "p50"]),
        f(&baseline, &["fanout", "completion_ms", "p50"]),
        None,
    ));
    rows.push((
        "fan-out deliveries per second".into(),
        f(&surge, &["fanout", "deliveries_per_second"]),
        f(&baseline, &["fanout", "deliveries_per_second"]),
        f(&floor, &["deliveries_per_second"]),
    ));
    rows.push((
        "server CPU seconds per million deliveries".into(),
        f(&surge, &["fanout", "cpu_seconds_per_million_deliveries"]),
        f(&baseline, &["fanout", "cpu_seconds_per_million_deliveries"]),
        None,
    ));

    println!(
        "{:<48} {:>14} {:>14} {:>10} {:>14} {:>10}",
        "metric", "surge", "baseline", "s/b", "floor", "s/floor"
    );
    for (name, s, b, fl) in &rows {
        let show = |v: &Option<f64>| {
            v.map_or("-".into(), |v| {
                if v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                }
            })
        };
        println!(
            "{:<48} {:>14} {:>14} {:>10} {:>14} {:>10}",
            name,
            show(s),
            show(b),
            ratio(*s, *b),
            show(fl),
            ratio(*s, *fl)
        );
    }
    let user = mem(&surge, 2).unwrap_or(0.0);
    let per_socket = kernel.bytes_per_socket as f64;
    println!(
        "\n1M connections, extrapolated: Surge user space {:.2} GiB + kernel sockets {:.2} GiB ({:.0} B x 1M measured at N={}, {} B x 1M from Slab)",
        user * 1e6 / 1073741824.0,
        per_socket * 1e6 / 1073741824.0,
        user,
        o.conns,
        kernel.bytes_per_socket
    );
    let gaps = |v: &Value| {
        v["fanout"]["gaps"].as_u64().unwrap_or(0) + v["fanout"]["duplicates"].as_u64().unwrap_or(0)
    };
    if gaps(&surge) > 0 || gaps(&baseline) > 0 {
        println!(
            "note: gaps or duplicates seen (surge {}, baseline {})",
            gaps(&surge),
            gaps(&baseline)
        );
    }
    let results = json!({
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "connections": o.conns, "publications": o.publications,
        "surge": surge, "baseline": baseline, "floor": floor,
        "kernel_bytes_per_socket": kernel.bytes_per_socket,
        "extrapolated_1m": {"user_space_bytes": user * 1e6, "kernel_bytes": per_socket * 1e6},
        "table": rows.iter().map(|(n, s, b, fl)| json!({"metric": n, "surge": s, "baseline": b, "floor": fl})).collect::<Vec<_>>(),
    });
    write_results(&o.json, &results)?;
    Ok(())
}

/// Writes a benchmark's JSON results to `json` (relative to the workspace)
/// and says where.
fn write_results(json: &Path, results: &Value) -> Result<(), String> {
    let path = if json.is_absolute() {
        json.to_path_buf()
    } else {
        root().join(json)
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let text = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    println!("results: {}", path.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::All(o) => all(&o),
        Cmd::Engines(o) => engines::run(&o),
        Cmd::FloorGap(o) => floor_gap::run(&o),
        Cmd::Million(o) => return million::main(&o, &root()),
        Cmd::Tls(o) => tls::run(&o),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benches: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
