//! The `surge` binary: load the configuration, start the server, tell
//! systemd it is ready, reload on SIGHUP, and on SIGTERM or SIGINT shut
//! down gracefully.
//! Subcommands instead: `surge token ...` mints a private channel token for
//! testing; `surge check-config` and `surge print-config` check or show the
//! configuration without starting anything.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use surge::config::ConfigError;
use surge::ops::logging::LogControl;
use surge::ops::notify::{self, Notifier};
use surge::ops::watchdog::{Liveness, Watchdog};
use surge::ops::{config_cmd, logging};
use surge::{Config, Server};

/// Exit status when a worker thread died (EX_SOFTWARE): not a clean stop,
/// so a supervisor restarts the process.
const EXIT_WORKER_DIED: u8 = 70;

/// How often the main thread looks for a signal or a dead worker.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Mints a token for a private channel, as the booking backend would.
#[derive(clap::Parser)]
#[command(name = "surge token")]
struct TokenArgs {
    /// The channel (or a prefix ending in `*`) the token grants.
    #[arg(long)]
    channel: String,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// The shared secret (as --token-secret of the server).
    #[arg(long, env = "SURGE_TOKEN_SECRET", hide_env_values = true)]
    secret: String,
}

fn mint(args: TokenArgs) -> ExitCode {
    match surge::channels::token::TokenKey::new(args.secret.as_bytes()) {
        Some(key) => {
            println!(
                "{}",
                key.mint(&args.channel, surge::channels::token::unix_now() + args.ttl)
            );
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("surge token: unusable secret");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("token") => {
            return mint(<TokenArgs as clap::Parser>::parse_from(
                std::env::args().skip(1),
            ))
        }
        Some("check-config") => return config_cmd::check_config(std::env::args().skip(2)),
        Some("print-config") => return config_cmd::print_config(std::env::args().skip(2)),
        _ => {}
    }
    let config = match Config::load() {
        Ok(config) => config,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("surge: {e}");
            return ExitCode::from(2);
        }
    };
    let log = logging::init(&config);
    let notifier = Arc::new(Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "systemd notifications off");
        Notifier::disabled()
    }));

    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("surge: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut server = match Server::start(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("surge: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One line a script (or a person) can read to find the ports.
    println!(
        "surge listening: {}://{}/ws publish=http://{}/api/publish admin=http://{}/metrics",
        if server.is_tls() { "wss" } else { "ws" },
        server.public_addr,
        server.publish_addr,
        server.admin_addr
    );
    // Every port is bound and every worker runs: systemd may now count us up
    // (and start whatever is ordered after us).
    notifier.ready();
    let watchdog = notify::watchdog_interval()
        .filter(|_| notifier.enabled())
        .and_then(|interval| {
            Watchdog::spawn(
                notifier.clone(),
                Liveness::new(server.metrics.clone()),
                interval,
            )
            .map_err(|e| tracing::error!(error = %e, "cannot start the watchdog thread"))
            .ok()
        });
    let code = loop {
        if let Some(signal) = signals.pending().next() {
            if signal == SIGHUP {
                notifier.send("RELOADING=1");
                reload(&mut server, &log);
                // Logged either way; a bad pair leaves the one in use.
                let _ = server.reload_tls();
                notifier.ready();
                continue;
            }
            notifier.stopping();
            if signal == SIGTERM {
                // A deploy: drain, unless a second SIGTERM (or SIGINT) says now.
                drain(&server, &mut signals);
            }
            tracing::info!(signal, "shutting down");
            break ExitCode::SUCCESS;
        }
        if server
            .metrics
            .drain_requested
            .swap(false, Ordering::Relaxed)
        {
            // POST /drain: the connections go, the process stays until a
            // SIGTERM, answering /healthz and /metrics meanwhile.
            notifier.stopping();
            drain(&server, &mut signals);
            continue;
        }
        if server.metrics.dead_workers.load(Ordering::Relaxed) > 0 {
            // Never run half-dead: exit so the supervisor starts a whole one.
            tracing::error!("a worker thread died; exiting for a restart");
            break ExitCode::from(EXIT_WORKER_DIED);
        }
        std::thread::sleep(WATCH_INTERVAL);
    };
    notifier.stopping();
    if let Some(watchdog) = &watchdog {
        watchdog.shutting_down();
    }
    server.shutdown();
    if let Some(watchdog) = watchdog {
        watchdog.stop();
    }
    code
}

/// SIGHUP: the configuration again from the same flags, the environment the
/// process started with and the file as it is now; see `ops::reload`.
fn reload(server: &mut Server, log: &LogControl) {
    let wanted = match Config::load_unchecked(std::env::args_os()) {
        Ok((wanted, _)) => wanted,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the running configuration stays");
            return;
        }
    };
    match server.reload(wanted) {
        Ok(plan) => {
            if plan.applied.iter().any(|k| k == "log") {
                if let Err(e) = log.set_filter(&plan.effective.log) {
                    tracing::error!(error = %e, "log filter not changed");
                }
            }
            for option in &plan.need_restart {
                tracing::warn!(option = %option, "changed in the configuration; takes effect after a restart");
            }
            tracing::info!(
                applied = ?plan.applied,
                need_restart = ?plan.need_restart,
                "configuration reloaded"
            );
        }
        Err(problems) => {
            for problem in &problems {
                tracing::error!(%problem, "reload refused; the running configuration stays");
            }
        }
    }
}

/// Drains the server's connections (see `ops::drain`); a SIGTERM or SIGINT
/// that arrives meanwhile cuts it short.
fn drain(server: &Server, signals: &mut Signals) {
    if server.metrics.draining.load(Ordering::Relaxed) {
        return;
    }
    let config = server.config();
    let ended = surge::ops::drain::run(
        &server.broker(),
        &server.metrics,
        config.drain_grace.duration(),
        config.drain_window.duration(),
        || signals.pending().any(|s| s == SIGTERM || s == SIGINT),
    );
    tracing::info!(?ended, "drain over");
}
