//! SIGHUP: read the configuration again (same flags, environment as at
//! start, the file as it is now) and apply what a running server can take
//! without dropping a connection; log what changed and what needs a
//! restart. A configuration with problems is refused whole and the running
//! one stays.
//!
//! It must not rebind a port or restart a worker: listeners, worker count,
//! the engine and the publish API's settings change only with a restart.

use crate::config::Config;

/// Declares the options a reload applies, once: the list reported and the
/// copy applied cannot disagree.
macro_rules! live_options {
    ($($field:ident),* $(,)?) => {
        /// Options applied to a running server. Each is read by the workers
        /// where it is used (a timeout when a timer is set, a limit when it
        /// is checked), so a new value takes effect from the next use;
        /// existing connections keep what was already decided for them.
        pub const LIVE: &[&str] = &[$(stringify!($field)),*];

        fn copy_live(to: &mut Config, from: &Config) {
            $(to.$field = from.$field.clone();)*
        }
    };
}

live_options!(
    log,
    allowed_origins,
    token_secret,
    token_secret_previous,
    private_prefix,
    max_message,
    max_outbound,
    max_subscriptions,
    retry_after,
    handshake_timeout,
    ping_interval,
    pong_timeout,
    close_timeout,
    shutdown_timeout,
);

/// What a reload would do.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// The configuration to run with: the running one with the live
    /// options of the new one.
    pub effective: Config,
    /// Options (TOML names) whose new value is applied now.
    pub applied: Vec<String>,
    /// Options whose new value waits for a restart.
    pub need_restart: Vec<String>,
}

/// Compares `running` with `wanted` (freshly loaded). `Err` lists the
/// problems of the configuration that would result; nothing is applied then.
pub fn plan(running: &Config, wanted: &Config) -> Result<Plan, Vec<String>> {
    let mut effective = running.clone();
    copy_live(&mut effective, wanted);
    let problems = effective.problems();
    if !problems.is_empty() {
        return Err(problems);
    }
    let old = toml::Table::try_from(running).unwrap_or_default();
    let new = toml::Table::try_from(wanted).unwrap_or_default();
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut applied = Vec::new();
    let mut need_restart = Vec::new();
    for key in keys {
        if old.get(key) == new.get(key) {
            continue;
        }
        if LIVE.contains(&key.replace('-', "_").as_str()) {
            applied.push(key.clone());
        } else {
            need_restart.push(key.clone());
        }
    }
    Ok(Plan {
        effective,
        applied,
        need_restart,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Config {
        let mut all = vec!["surge"];
        all.extend_from_slice(args);
        Config::load_from(all).unwrap()
    }

    #[test]
    fn live_options_are_applied_and_the_rest_wait_for_a_restart() {
        let running = load(&["--workers", "2", "--allowed-origin", "https://a.example"]);
        let wanted = load(&[
            "--workers",
            "4",
            "--allowed-origin",
            "https://b.example",
            "--max-subscriptions",
            "8",
            "--log",
            "debug",
        ]);
        let plan = plan(&running, &wanted).unwrap();
        assert_eq!(
            plan.applied,
            ["allowed-origins", "log", "max-subscriptions"]
        );
        assert_eq!(plan.need_restart, ["workers"]);
        assert_eq!(plan.effective.workers, 2);
        assert_eq!(plan.effective.allowed_origins, ["https://b.example"]);
        assert_eq!(plan.effective.max_subscriptions, 8);
    }

    #[test]
    fn a_reload_that_would_not_validate_is_refused_whole() {
        let running = load(&[]);
        let mut wanted = load(&[]);
        wanted.pong_timeout = crate::units::Seconds(60);
        wanted.max_subscriptions = 0;
        let problems = plan(&running, &wanted).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn every_live_option_is_an_option() {
        let table = toml::Table::try_from(load(&[
            "--token-secret",
            "0123456789abcdef",
            "--token-secret-previous",
            "fedcba9876543210",
        ]))
        .unwrap();
        for field in LIVE {
            assert!(table.contains_key(&field.replace('_', "-")), "{field}");
        }
    }
}
