//! Log output: text for people or JSON for a log pipeline, always to
//! stderr, with colour codes only when stderr is a terminal (journald, a
//! file or a pipe would store the escape bytes verbatim). The filter
//! (`--log`) can be changed while running, by a SIGHUP reload.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{Config, LogFormat};

/// The filter used when `--log` does not parse: the level a service runs at.
const FALLBACK_FILTER: &str = "info";

/// Changes the log filter of the running process.
pub struct LogControl {
    filter: reload::Handle<EnvFilter, Registry>,
}

impl LogControl {
    /// Replaces the filter; `Err` says why `directives` cannot be used (the
    /// old filter stays).
    pub fn set_filter(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber for `config`. Call once, before anything logs.
pub fn init(config: &Config) -> LogControl {
    let filter =
        EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new(FALLBACK_FILTER));
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr);
    let output = match config.log_format {
        LogFormat::Json => output.json().with_ansi(false).boxed(),
        LogFormat::Text => output.with_ansi(std::io::stderr().is_terminal()).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    LogControl { filter: handle }
}
