//! What an operator and the service manager do with a running Surge: the
//! drain (SIGTERM, POST /drain), the SIGHUP reload, systemd notifications
//! and watchdog, log output, process figures, and the `check-config` /
//! `print-config` commands. Nothing here touches a connection or sits on
//! the hot path: the drain and the reload reach workers through the broker.

pub mod config_cmd;
pub mod drain;
pub mod logging;
pub mod notify;
pub mod process;
pub mod reload;
pub mod watchdog;
