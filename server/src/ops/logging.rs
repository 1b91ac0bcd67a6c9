//! Log output: text for people or JSON for a log pipeline, always to
//! stderr, with colour codes only when stderr is a terminal (journald, a
//! file or a pipe would store the escape bytes verbatim).

use std::io::IsTerminal;

use crate::config::{Config, LogFormat};

/// The filter used when `--log` does not parse: the level a service runs at.
const FALLBACK_FILTER: &str = "info";

/// Installs the global subscriber for `config`. Call once, before anything logs.
pub fn init(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(FALLBACK_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
