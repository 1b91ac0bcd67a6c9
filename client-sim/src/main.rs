//! The `client-sim` command. Exit codes: 0 the run met its checks (everyone
//! connected, nothing lost or duplicated), 1 it did not, 2 it could not run.

use std::io::BufRead;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use client_sim::confirm::ConfirmOpts;
use client_sim::engine::{Command, Engine, Policy, WorkerSpec};
use client_sim::orchestrate::{self, Common, Scenario};
use client_sim::plan::{self, PlanArgs};
use client_sim::report::Report;

/// Behaves like N browsers against a Surge server: ramps, holds, measures, reports.
#[derive(Parser)]
#[command(name = "client-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Ramp to N connections (a Zipf-chosen clinic channel plus, with --token-secret, the user's own channel) and hold.
    Idle {
        #[command(flatten)]
        common: Common,
    },
    /// As idle, then publish slot changes to the clinics and measure delivery latency and fan-out completion.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Publications to send.
        #[arg(long, default_value_t = 100)]
        publications: u64,
        /// Publications per second.
        #[arg(long, default_value_t = 50.0)]
        pub_rate: f64,
        /// Publications per request (1: POST /api/publish; more: /api/batch).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Then publish once to this many user/ID channels (spread over the ids).
        #[arg(long, default_value_t = 0)]
        private_sample: u64,
    },
    /// Publish booking confirmations to every user channel (--rounds), optionally killing or restarting nodes on the way, and check each arrives exactly once.
    Confirm {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: ConfirmOpts,
    },
    /// Publish to every clinic, hold, drop a share of connections at once and reconnect them with a policy while publishing goes on; each must recover what it missed.
    Storm {
        #[command(flatten)]
        common: Common,
        /// Share of connections to drop.
        #[arg(long, default_value_t = 0.5)]
        fraction: f64,
        /// How they reconnect.
        #[arg(long, value_enum, default_value = "full-jitter")]
        policy: Policy,
    },
    /// How many boxes a surge needs, from a report.
    Plan(PlanArgs),
    /// N browsers join a waiting room (some before the opening, some drop and rejoin): fairness and cost.
    Queue(client_sim::queue::QueueArgs),
    /// Write a throwaway CA (ca.pem) and a localhost server certificate
    /// signed by it (cert.pem, key.pem) into DIR, for wss:// on loopback:
    /// surge --tls-cert DIR/cert.pem --tls-key DIR/key.pem, client-sim --ca DIR/ca.pem.
    TestCert { dir: std::path::PathBuf },
    /// Internal: one worker process.
    #[command(name = "__worker", hide = true)]
    Worker { spec: String },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Worker { spec } => worker(&spec),
        Cmd::Plan(args) => {
            let report = std::fs::read_to_string(&args.from)
                .map_err(|e| format!("{}: {e}", args.from.display()))
                .and_then(|t| {
                    serde_json::from_str::<Report>(&t)
                        .map_err(|e| format!("{}: {e}", args.from.display()))
                })
                .and_then(|r| plan::plan(&args, &r));
            match report {
                Ok((text, _)) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("client-sim: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Queue(args) => queue(&args),
        Cmd::TestCert { dir } => match client_sim::testcert::write(&dir, "") {
            Ok(c) => {
                println!(
                    "{} {} {}",
                    c.ca.display(),
                    c.cert.display(),
                    c.key.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("client-sim: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Idle { common } => scenario(&common, Scenario::Idle),
        Cmd::Fanout {
            common,
            publications,
            pub_rate,
            batch,
            private_sample,
        } => scenario(
            &common,
            Scenario::Fanout {
                publications,
                pub_rate,
                batch,
                private_sample,
            },
        ),
        Cmd::Confirm { common, opts } => scenario(&common, Scenario::Confirm(opts)),
        Cmd::Storm {
            common,
            fraction,
            policy,
        } => scenario(&common, Scenario::Storm { fraction, policy }),
    }
}

fn scenario(common: &Common, scenario: Scenario) -> ExitCode {
    let report = match orchestrate::run(common, &scenario) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("client-sim: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.table());
    for (path, text) in [
        (
            &common.json,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        ),
        (&common.html, report.html()),
    ] {
        if let Some(path) = path {
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("client-sim: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let shortfalls = shortfalls(&report);
    for s in &shortfalls {
        eprintln!("client-sim: FAILED: {s}");
    }
    if shortfalls.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Every way the run fell short of its checks; empty when it met them all.
/// This is what the exit status says, so CI and scripts can trust a 0.
fn shortfalls(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if r.connected < r.target_connections {
        out.push(format!(
            "connected {} of {}",
            r.connected, r.target_connections
        ));
    }
    let failed: u64 = r.failed.values().sum();
    if failed > 0 {
        out.push(format!("{failed} connection(s) failed: {:?}", r.failed));
    }
    if r.gaps > 0 {
        out.push(format!("{} publication(s) lost in gaps", r.gaps));
    }
    if r.duplicates > 0 {
        out.push(format!("{} duplicate deliveries", r.duplicates));
    }
    if r.deliveries != r.deliveries_expected {
        out.push(format!(
            "{} deliveries, {} expected",
            r.deliveries, r.deliveries_expected
        ));
    }
    if r.errors > 0 {
        out.push(format!(
            "{} error answer(s) or unreadable message(s)",
            r.errors
        ));
    }
    if r.scenario == "confirm" && (r.confirm.missing > 0 || r.confirm.duplicate > 0) {
        out.push(format!(
            "confirmations: {} missing, {} duplicated",
            r.confirm.missing, r.confirm.duplicate
        ));
    }
    if let Some(s) = &r.storm {
        if s.gave_up > 0 {
            out.push(format!("{} client(s) gave up reconnecting", s.gave_up));
        }
        if s.not_recovered > 0 {
            out.push(format!(
                "{} resubscription(s) not recovered",
                s.not_recovered
            ));
        }
    }
    out
}

fn queue(args: &client_sim::queue::QueueArgs) -> ExitCode {
    match client_sim::queue::run(args) {
        Ok(report) => {
            print!("{}", report.table());
            if let Some(path) = &args.json {
                let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("client-sim: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
            ExitCode::from(if report.passed() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("client-sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn worker(spec: &str) -> ExitCode {
    let spec: WorkerSpec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("client-sim worker: bad spec: {e}");
            return ExitCode::from(2);
        }
    };
    let engine = match Engine::new(spec) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("client-sim worker: {e}");
            return ExitCode::from(2);
        }
    };
    let (tx, rx) = crossbeam_channel::bounded::<Command>(64);
    let result = engine.run(rx, move |waker| {
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if let Ok(cmd) = serde_json::from_str::<Command>(&line) {
                    if tx.send(cmd).is_err() {
                        break;
                    }
                    let _ = waker.wake();
                }
            }
            // The parent went away: finish so the process does not linger.
            let _ = tx.send(Command::Finish);
            let _ = waker.wake();
        });
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("client-sim worker: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> Report {
        Report {
            scenario: "fanout".into(),
            target_connections: 10,
            connected: 10,
            deliveries: 50,
            deliveries_expected: 50,
            ..Report::default()
        }
    }

    #[test]
    fn a_clean_run_has_no_shortfall_and_each_fault_is_one() {
        assert_eq!(shortfalls(&clean()), Vec::<String>::new());
        type Fault = fn(&mut Report);
        let faults: [(&str, Fault); 6] = [
            ("failed", |r| {
                r.failed.insert("handshake timeout".into(), 1);
            }),
            ("gaps", |r| r.gaps = 1),
            ("duplicate", |r| r.duplicates = 1),
            ("deliveries", |r| r.deliveries = 49),
            ("connected", |r| r.connected = 9),
            ("error", |r| r.errors = 1),
        ];
        for (says, fault) in faults {
            let mut r = clean();
            fault(&mut r);
            let found = shortfalls(&r);
            assert!(
                found.len() == 1 && found[0].contains(says),
                "{says}: {found:?}"
            );
        }
    }
}
