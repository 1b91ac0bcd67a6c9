//! A `surge` binary a test started with piped stdout: where it listens,
//! read from the line it prints first (`surge listening: ws://A/ws
//! publish=http://B/api/publish admin=http://C/metrics`, `wss://` with
//! TLS). Include with `#[path = "common/listening.rs"] mod listening;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::Child;

/// The addresses a started `surge` announced.
pub struct Listening {
    /// The public port, `HOST:PORT`.
    pub public: String,
    /// The publish API's port, `HOST:PORT`.
    pub publish: String,
    /// The publish endpoint, a full URL (`http://B/api/publish`).
    pub publish_url: String,
    /// The admin port, `HOST:PORT`.
    pub admin: String,
}

/// Reads the first line of `child`'s stdout (which must be piped) and
/// returns the addresses in it; panics with the line if it is not one.
pub fn listening(child: &mut Child) -> Listening {
    let mut line = String::new();
    let stdout = child.stdout.take().expect("surge's stdout is piped");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("surge prints where it listens");
    let field = |prefix: &str, suffix: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix)?.strip_suffix(suffix))
            .unwrap_or_else(|| panic!("no {prefix}...{suffix} in {line:?}"))
            .to_string()
    };
    let public = line
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix("ws://")
                .or_else(|| w.strip_prefix("wss://"))?
                .strip_suffix("/ws")
        })
        .unwrap_or_else(|| panic!("no public address in {line:?}"))
        .to_string();
    let publish = field("publish=http://", "/api/publish");
    Listening {
        public,
        publish_url: format!("http://{publish}/api/publish"),
        publish,
        admin: field("admin=http://", "/metrics"),
    }
}
