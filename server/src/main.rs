//! The `surge` binary: load the configuration, start the server, wait for
//! SIGTERM or SIGINT, shut down gracefully. `surge token ...` mints a private
//! channel token for testing instead.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use surge::config::ConfigError;
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
    if std::env::args().nth(1).as_deref() == Some("token") {
        return mint(<TokenArgs as clap::Parser>::parse_from(
            std::env::args().skip(1),
        ));
    }
    let config = match Config::load() {
        Ok(config) => config,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("surge: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();

    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("surge: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("surge: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One line a script (or a person) can read to find the ports.
    println!(
        "surge listening: ws://{}/ws publish=http://{}/api/publish admin=http://{}/metrics",
        server.public_addr, server.publish_addr, server.admin_addr
    );
    let code = loop {
        if let Some(signal) = signals.pending().next() {
            tracing::info!(signal, "shutting down");
            break ExitCode::SUCCESS;
        }
        if server.metrics.dead_workers.load(Ordering::Relaxed) > 0 {
            // Never run half-dead: exit so the supervisor starts a whole one.
            tracing::error!("a worker thread died; exiting for a restart");
            break ExitCode::from(EXIT_WORKER_DIED);
        }
        std::thread::sleep(WATCH_INTERVAL);
    };
    server.shutdown();
    code
}
