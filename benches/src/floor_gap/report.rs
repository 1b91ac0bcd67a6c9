//! What `benches floor-gap` prints and writes: medians and ranges of each
//! server's CPU per handshake and per delivery, the ratios taken within
//! each repeat, anything the clients found missing, and the JSON file.
//! It computes nothing it did not measure.

use std::path::Path;

use serde_json::{json, Value};

use super::{Kind, Opts, Sample};

/// Median and range of `v`.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let median = match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    (
        median,
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

fn show((median, lo, hi): (f64, f64, f64)) -> String {
    format!("{median:.2} [{lo:.2}-{hi:.2}]")
}

pub(super) fn report(
    o: &Opts,
    kinds: &[Kind],
    runs: &[Vec<(Kind, Sample)>],
    load_before: &str,
    load_after: &str,
) -> Result<(), String> {
    fn get(r: &[(Kind, Sample)], k: Kind) -> Option<&Sample> {
        r.iter().find(|(x, _)| *x == k).map(|(_, s)| s)
    }
    let series = |k: Kind, f: &dyn Fn(&Sample) -> f64| {
        stats(runs.iter().filter_map(|r| get(r, k)).map(f).collect())
    };
    let ratio = |a: Kind, b: Kind, f: &dyn Fn(&Sample) -> f64| {
        stats(
            runs.iter()
                .filter_map(|r| Some(f(get(r, a)?) / f(get(r, b)?)))
                .collect(),
        )
    };
    let handshake = |s: &Sample| s.handshake_us;
    let delivery = |s: &Sample| s.delivery_us;
    println!(
        "floor-gap: N = {} connections (each ?ch=clinic:0&ch=inbox/ID), {} single publications, {} repeats",
        o.conns, o.publications, o.repeats
    );
    println!(
        "pinning: server on CPU {} (taskset -c), clients on CPU {}; surge --workers {}; loadavg {load_before} -> {load_after}",
        o.server_cpu, o.client_cpu, o.surge_workers
    );
    if o.floor_defer_accept {
        println!("floor: with TCP_DEFER_ACCEPT, as Surge");
    }
    if let Some(b) = &o.surge_bin {
        println!("surge binary: {}", b.display());
    }
    println!("server CPU from /proc/PID/task/*/schedstat; median [range] over repeats\n");
    println!(
        "{:<34} {:>22} {:>22}",
        "", "us per handshake", "us per delivery"
    );
    for &k in kinds {
        println!(
            "{:<34} {:>22} {:>22}",
            k.name(),
            show(series(k, &handshake)),
            show(series(k, &delivery))
        );
    }
    let mut ratios = Vec::new();
    for (label, a, b) in [
        ("surge / floor", Kind::Surge, Kind::Floor),
        ("baseline / floor", Kind::Baseline, Kind::Floor),
        ("surge / baseline", Kind::Surge, Kind::Baseline),
    ] {
        if !kinds.contains(&a) || !kinds.contains(&b) {
            continue;
        }
        let (h, d) = (ratio(a, b, &handshake), ratio(a, b, &delivery));
        println!("{:<34} {:>22} {:>22}", label, show(h), show(d));
        ratios.push(
            json!({"ratio": label, "handshake": {"median": h.0, "min": h.1, "max": h.2},
                           "delivery": {"median": d.0, "min": d.1, "max": d.2}}),
        );
    }
    let mut lost = false;
    for r in runs {
        for (k, s) in r {
            if s.deliveries != s.expected || s.failed > 0 || s.ready != o.conns {
                lost = true;
                println!(
                    "note: {}: {} of {} ready, {} failed, {} of {} deliveries",
                    k.name(),
                    s.ready,
                    o.conns,
                    s.failed,
                    s.deliveries,
                    s.expected
                );
            }
        }
    }
    if let Some(s) = runs.first().and_then(|r| get(r, Kind::Surge)) {
        println!("frame: {} bytes (header included)", s.frame_bytes);
    }
    let results = json!({
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "connections": o.conns, "publications": o.publications, "repeats": o.repeats,
        "server_cpu": o.server_cpu, "client_cpu": o.client_cpu, "surge_workers": o.surge_workers,
        "loadavg_before": load_before, "loadavg_after": load_after, "complete": !lost,
        "ratios": ratios,
        "runs": runs.iter().map(|r| r.iter().map(|(k, s)| (k.name().to_string(), s.to_json())).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
    });
    let path = if o.json.is_absolute() {
        o.json.clone()
    } else {
        super::super::root().join(&o.json)
    };
    write_json(&path, &results)?;
    println!("results: {}", path.display());
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| e.to_string())
}
