//! `benches tls`: `wss://` beside `ws://`, for Surge and for the tokio
//! baseline over tokio-rustls, in one run on the same machine:
//!
//!   cargo run --release -p benches -- tls [--conns 18000] [--publications 40]
//!
//! Generates its own test CA and server certificate (rcgen, ring) and, for
//! each server and scheme, on a freshly started process: user-space bytes
//! per idle connection at N (two channels each, RSS delta / N), server CPU
//! per delivery in the same fan-out (same message, same batching), and
//! connections opened per second of server CPU with a full TLS handshake
//! (client-sim `--no-resumption`) and with a resumed one
//! (`--resume-first-connects`).
//! Prints ratios, writes JSON through the one results writer, and fails
//! if any connection or delivery is missing or an idle Surge wss
//! connection costs more than [`WSS_IDLE_BUDGET`].

use std::path::PathBuf;

use serde_json::{json, Value};

use super::{build, client_sim, root, start_tls, write_results, Server};
use client_sim::testcert::{self, TestCert};

/// Issue 15's budget for an idle Surge wss connection subscribed to two
/// channels: user space, RSS delta / N. A TLS-terminating proxy holds
/// 31-48 KB per idle connection; 2 KiB keeps Surge about 20 times leaner
/// while paying for the session's keys and state.
pub const WSS_IDLE_BUDGET: f64 = 2048.0;

#[derive(clap::Args, Clone)]
pub struct Opts {
    /// Connections in every run (idle and fan-out).
    #[arg(long, default_value_t = 18_000)]
    conns: u64,
    /// Publications in each fan-out run.
    #[arg(long, default_value_t = 40)]
    publications: u64,
    /// Publications per second in the fan-out runs (the default: back to back).
    #[arg(long, default_value_t = 1_000_000.0)]
    pub_rate: f64,
    /// client-sim processes in every run.
    #[arg(long, default_value_t = 2)]
    procs: usize,
    /// Handshakes in flight per client-sim process. Capped so that a ramp
    /// of TLS handshakes is paced by the server instead of timing out by
    /// the thousand, and so that tickets from the first connections are
    /// there for the next ones in the resumed run. Same for ws and wss.
    #[arg(long, default_value_t = 128)]
    max_pending: u64,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/tls.json")]
    json: PathBuf,
    /// Use the binaries already in target/release.
    #[arg(long)]
    skip_build: bool,
}

/// client-sim's arguments every run here shares: N connections, ramped as
/// fast as `max_pending` lets the server take them, one clinic channel
/// plus each browser's own, so every connection holds two channels.
fn common(o: &Opts) -> Vec<String> {
    [
        "--conns",
        &o.conns.to_string(),
        "--rate",
        "100000",
        "--max-pending",
        &o.max_pending.to_string(),
        "--clinics",
        "1",
        "--procs",
        &o.procs.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// An idle ramp and hold on a fresh server: memory and ramp CPU.
fn idle(kind: &str, cert: Option<&TestCert>, resume: bool, o: &Opts) -> Result<Value, String> {
    let server = start_tls(kind, &[], cert)?;
    let mut args = vec!["idle".to_string(), "--hold".into(), "1".into()];
    args.extend(common(o));
    // Resuming: every connection after the first few (those in flight
    // before any ticket came back) resumes with a ticket an earlier one
    // was given, as a browser coming back would.
    args.push(
        if resume {
            "--resume-first-connects"
        } else {
            "--no-resumption"
        }
        .into(),
    );
    let r = client_sim(&server, &args)?;
    let connected = r["connected"].as_f64().unwrap_or(0.0);
    let cpu = r["server"]["cpu_seconds_ramp"].as_f64();
    Ok(json!({
        "connections": o.conns,
        "connected": r["connected"],
        "failed": r["failed"],
        "bytes_per_connection": r["server"]["bytes_per_connection"],
        "cpu_seconds_ramp": cpu,
        "opens_per_cpu_second": cpu.filter(|c| *c > 0.0).map(|c| connected / c),
        "tls_full": r["tls_full_handshakes"],
        "tls_resumed": r["tls_resumed_handshakes"],
    }))
}

/// The fan-out of `o.publications` to every connection on a fresh server.
fn fanout(kind: &str, cert: Option<&TestCert>, o: &Opts) -> Result<Value, String> {
    let server: Server = start_tls(kind, &[], cert)?;
    let mut args = vec![
        "fanout".to_string(),
        "--hold".into(),
        "0".into(),
        "--publications".into(),
        o.publications.to_string(),
        "--pub-rate".into(),
        o.pub_rate.to_string(),
    ];
    args.extend(common(o));
    let r = client_sim(&server, &args)?;
    Ok(json!({
        "connected": r["connected"],
        "deliveries": r["deliveries"], "deliveries_expected": r["deliveries_expected"],
        "gaps": r["gaps"], "duplicates": r["duplicates"],
        "deliveries_per_second": r["deliveries_per_second"],
        "server_cpu_us_per_delivery": r["server_cpu_us_per_delivery"],
        "completion_ms": r["fanout_completion_ms"],
    }))
}

/// Every figure for one server over one scheme.
fn measure(kind: &str, cert: Option<&TestCert>, o: &Opts) -> Result<Value, String> {
    let scheme = if cert.is_some() { "wss" } else { "ws" };
    eprintln!("benches tls: {kind} {scheme}: idle ...");
    // Without resumption every handshake is a full one; for ws the flag is moot.
    let full = idle(kind, cert, false, o)?;
    let resumed = match cert {
        Some(_) => {
            eprintln!("benches tls: {kind} {scheme}: idle, resuming ...");
            idle(kind, cert, true, o)?
        }
        None => Value::Null,
    };
    eprintln!("benches tls: {kind} {scheme}: fan-out ...");
    let fan = fanout(kind, cert, o)?;
    Ok(json!({"idle": full, "idle_resumed": resumed, "fanout": fan}))
}

/// One named check of the run, shown as ok or FAIL.
struct Check {
    name: String,
    ok: bool,
    shown: String,
}

fn checks(results: &Value, o: &Opts) -> Vec<Check> {
    let mut out = Vec::new();
    let mut check = |name: String, ok: bool, shown: String| out.push(Check { name, ok, shown });
    for side in ["surge_ws", "surge_wss", "baseline_ws", "baseline_wss"] {
        let r = &results[side];
        for run in ["idle", "idle_resumed"] {
            if r[run].is_null() {
                continue;
            }
            let c = r[run]["connected"].as_u64().unwrap_or(0);
            check(
                format!("{side} {run}: every connection made"),
                c == o.conns,
                format!("{c} of {}, failed {}", o.conns, r[run]["failed"]),
            );
        }
        let f = &r["fanout"];
        let (d, e) = (
            f["deliveries"].as_u64().unwrap_or(0),
            f["deliveries_expected"].as_u64().unwrap_or(u64::MAX),
        );
        let (gaps, dups) = (f["gaps"].as_u64(), f["duplicates"].as_u64());
        check(
            format!("{side} fan-out: connections x publications, once each"),
            d == e && e == o.conns * o.publications && gaps == Some(0) && dups == Some(0),
            format!(
                "{d} delivered, {e} expected, {} x {}, gaps {gaps:?}, duplicates {dups:?}",
                o.conns, o.publications
            ),
        );
    }
    for side in ["surge_wss", "baseline_wss"] {
        let r = &results[side];
        let full = r["idle"]["tls_full"].as_u64().unwrap_or(0);
        check(
            format!("{side}: --no-resumption made every handshake a full one"),
            full == o.conns,
            format!("{full} full of {}", o.conns),
        );
        let resumed = r["idle_resumed"]["tls_resumed"].as_u64().unwrap_or(0);
        check(
            format!("{side}: the resuming run resumed most handshakes"),
            resumed * 2 > o.conns,
            format!("{resumed} resumed of {}", o.conns),
        );
    }
    let idle = results["surge_wss"]["idle"]["bytes_per_connection"].as_f64();
    check(
        format!(
            "surge user-space bytes per idle wss connection at N={} within {WSS_IDLE_BUDGET}",
            o.conns
        ),
        idle.is_some_and(|b| (0.0..=WSS_IDLE_BUDGET).contains(&b)),
        idle.map_or("not measured".into(), |b| format!("{b:.0} B")),
    );
    out
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn show(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    })
}

/// The table: each metric for Surge and the baseline over ws and wss,
/// wss/ws for each, and Surge/baseline over wss.
fn table(results: &Value, o: &Opts) -> Vec<Value> {
    let at = |side: &str, path: &[&str]| path.iter().fold(&results[side], |v, k| &v[*k]).as_f64();
    let rows: [(String, [&str; 2], [&str; 2]); 5] = [
        (
            format!("user-space bytes per idle connection, N={}", o.conns),
            ["idle", "bytes_per_connection"],
            ["idle", "bytes_per_connection"],
        ),
        (
            "server CPU us per delivery (fan-out)".into(),
            ["fanout", "server_cpu_us_per_delivery"],
            ["fanout", "server_cpu_us_per_delivery"],
        ),
        (
            "fan-out deliveries per second".into(),
            ["fanout", "deliveries_per_second"],
            ["fanout", "deliveries_per_second"],
        ),
        (
            "opens per server CPU-second, full TLS handshake".into(),
            ["idle", "opens_per_cpu_second"],
            ["idle", "opens_per_cpu_second"],
        ),
        (
            "opens per server CPU-second, resumed TLS handshake".into(),
            ["idle", "opens_per_cpu_second"],
            ["idle_resumed", "opens_per_cpu_second"],
        ),
    ];
    rows.iter()
        .map(|(metric, ws, wss)| {
            let sw = at("surge_ws", ws);
            let ss = at("surge_wss", wss);
            let bw = at("baseline_ws", ws);
            let bs = at("baseline_wss", wss);
            json!({"metric": metric, "surge_ws": sw, "surge_wss": ss,
                   "baseline_ws": bw, "baseline_wss": bs})
        })
        .collect()
}

fn print_table(rows: &[Value]) {
    println!(
        "{:<52} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8} {:>9}",
        "metric", "surge ws", "surge wss", "wss/ws", "base ws", "base wss", "wss/ws", "s/b wss"
    );
    for r in rows {
        let v = |k: &str| r[k].as_f64();
        println!(
            "{:<52} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8} {:>9}",
            r["metric"].as_str().unwrap_or_default(),
            show(v("surge_ws")),
            show(v("surge_wss")),
            ratio(v("surge_wss"), v("surge_ws")),
            show(v("baseline_ws")),
            show(v("baseline_wss")),
            ratio(v("baseline_wss"), v("baseline_ws")),
            ratio(v("surge_wss"), v("baseline_wss")),
        );
    }
    println!("(the ws columns of the handshake rows: a plain upgrade, for scale)");
}

pub fn run(o: &Opts) -> Result<(), String> {
    if !o.skip_build {
        build()?;
    }
    let dir = root().join("target/bench/tls");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cert = testcert::write(&dir, "bench-").map_err(|e| e.to_string())?;
    let mut results = json!({
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "connections": o.conns, "publications": o.publications,
        "max_pending": o.max_pending, "procs": o.procs,
        "wss_idle_budget": WSS_IDLE_BUDGET,
    });
    for kind in ["surge", "baseline"] {
        results[format!("{kind}_ws")] = measure(kind, None, o)?;
        results[format!("{kind}_wss")] = measure(kind, Some(&cert), o)?;
    }
    let rows = table(&results, o);
    print_table(&rows);
    let handshakes = |kind: &str| {
        let rate = |side: &str, run: &str| {
            results[format!("{kind}_{side}")][run]["opens_per_cpu_second"].as_f64()
        };
        let (plain, full, resumed) = (
            rate("ws", "idle"),
            rate("wss", "idle"),
            rate("wss", "idle_resumed"),
        );
        // What TLS adds to opening a connection, in server CPU microseconds.
        let extra = |tls: Option<f64>| match (tls, plain) {
            (Some(t), Some(p)) if t > 0.0 && p > 0.0 => show(Some(1e6 / t - 1e6 / p)),
            _ => "-".into(),
        };
        format!(
            "{kind} wss: {} full, {} resumed handshakes per server CPU-second (resumed/full {}); \
             TLS adds {} us of server CPU to opening a connection with a full handshake, {} us resumed",
            show(full),
            show(resumed),
            ratio(resumed, full),
            extra(full),
            extra(resumed),
        )
    };
    println!("{}\n{}", handshakes("surge"), handshakes("baseline"));
    results["table"] = json!(rows);
    let checks = checks(&results, o);
    results["checks"] = json!(checks
        .iter()
        .map(|c| json!({"check": c.name, "ok": c.ok, "shown": c.shown}))
        .collect::<Vec<_>>());
    write_results(&o.json, &results)?;
    for c in &checks {
        println!(
            "{} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.shown
        );
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    println!(
        "benches tls: {} passed, {failed} failed",
        checks.len() - failed
    );
    if failed > 0 {
        return Err(format!("{failed} check(s) failed"));
    }
    Ok(())
}
