//! The systemd notification protocol (`sd_notify`): one datagram of
//! `KEY=VALUE` lines to the unix socket named in `$NOTIFY_SOCKET`. With
//! `Type=notify` systemd waits for `READY=1` before it counts the service as
//! started, shows `STOPPING=1` while a drain runs, and restarts a service
//! whose `WATCHDOG=1` pings stop.
//!
//! Written here rather than taken from a crate because the whole protocol
//! is one `sendto` on a datagram socket (plus the abstract-namespace `@`
//! convention), which std already speaks. It must never fail the server:
//! without `$NOTIFY_SOCKET` (not under systemd) every call does nothing, and
//! a send that fails is logged and forgotten.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A handle on the service manager's socket, or on nothing when Surge is
/// not run by systemd with `Type=notify`.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

/// Why the notification socket named in the environment cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("NOTIFY_SOCKET '{path}': {source}")]
pub struct NotifyError {
    path: String,
    source: std::io::Error,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`. Recoverable: an unusable socket is an error
    /// to log, and the server runs on without notifications.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(Notifier::disabled());
        };
        let path = path.to_string_lossy().into_owned();
        let fail = |source| NotifyError {
            path: path.clone(),
            source,
        };
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes()).map_err(fail)?
            }
            None => SocketAddr::from_pathname(&path).map_err(fail)?,
        };
        let socket = UnixDatagram::unbound().map_err(fail)?;
        Ok(Notifier {
            target: Some((socket, addr)),
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// Whether a service manager is listening.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines).
    pub fn send(&self, state: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
            tracing::warn!(error = %e, state, "systemd notification not delivered");
        }
    }

    /// The service is up: every port is bound and every worker runs.
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=serving");
    }

    /// Shutdown has begun; systemd shows the unit as deactivating.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }

    /// The workers are alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// The workers are not alive: systemd restarts the service at once
    /// instead of waiting for the watchdog timeout.
    pub fn watchdog_trigger(&self, why: &str) {
        self.send(&format!("WATCHDOG=trigger\nSTATUS={why}"));
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, as sd_notify(3)
/// advises, so one late ping never trips it. `None` without a watchdog, or
/// when `$WATCHDOG_PID` names another process (the variable was inherited).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
