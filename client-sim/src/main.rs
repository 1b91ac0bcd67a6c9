//! The `client-sim` command. Exit codes: 0 the run met its checks (everyone
//! connected, nothing lost or duplicated), 1 it did not, 2 it could not run.

use std::io::BufRead;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    },
    /// Publish one booking confirmation per user channel and check each arrives exactly once.
    Confirm {
        #[command(flatten)]
        common: Common,
    },
    /// After the hold, drop a share of connections at once and reconnect them with a policy.
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
        Cmd::Idle { common } => scenario(&common, Scenario::Idle),
        Cmd::Fanout {
            common,
            publications,
            pub_rate,
            batch,
        } => scenario(
            &common,
            Scenario::Fanout {
                publications,
                pub_rate,
                batch,
            },
        ),
        Cmd::Confirm { common } => scenario(&common, Scenario::Confirm),
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
    let lost =
        report.gaps > 0 || report.duplicates > 0 || report.deliveries < report.deliveries_expected;
    let storm_ok = report.storm.as_ref().is_none_or(|s| s.gave_up == 0);
    if report.connected < report.target_connections || lost || !storm_ok {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
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
