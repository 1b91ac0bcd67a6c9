//! What an operator and the service manager see of a running Surge: the
//! systemd notifications and watchdog, log output, process figures, and
//! the `check-config` / `print-config` commands. Nothing here touches a
//! connection or sits on the hot path.

pub mod config_cmd;
pub mod drain;
pub mod logging;
pub mod notify;
pub mod process;
pub mod reload;
pub mod watchdog;
