//! The `surge` binary: load the configuration, start the server, wait for
//! SIGTERM or SIGINT, shut down gracefully.

use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use surge::config::ConfigError;
use surge::{Config, Server};

fn main() -> ExitCode {
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
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    server.shutdown();
    ExitCode::SUCCESS
}
