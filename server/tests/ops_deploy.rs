//! The files in `deploy/` are what the code says they should be: the
//! systemd units pass `systemd-analyze verify` and carry the descriptor
//! limit of kernel-tuning's plan, the sysctl drop-in is the plan's output,
//! and the sample config names every option and is what `surge print-config
//! --sample` writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use kernel_tuning::keys::Role;
use kernel_tuning::plan::{plan, DEFAULT_MEM_PER_CONN};

/// The connection count the shipped drop-in and units are planned for.
const PLANNED_CONNECTIONS: u64 = 1_000_000;
const UNITS: [&str; 2] = ["surge.service", "surge@.service"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(name: &str) -> String {
    let path = deploy().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn surge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(args)
        .env_remove("SURGE_CONFIG")
        .output()
        .expect("surge runs")
}

/// The value of `key=` in a unit (the last one, as systemd reads it).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
}

fn seconds(value: &str) -> u64 {
    value
        .strip_suffix('s')
        .unwrap_or(value)
        .parse()
        .unwrap_or_else(|_| panic!("'{value}' is not N or Ns"))
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = std::env::temp_dir().join(format!("surge-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in UNITS {
        // verify insists that ExecStart's binary exists: point it at ours.
        let unit = read(name).replace("/usr/local/bin/surge", env!("CARGO_BIN_EXE_surge"));
        let path = dir.join(name);
        std::fs::write(&path, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .current_dir(&dir)
            .output()
            .expect("systemd-analyze is installed (apt-get install systemd; .ci/run does)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{name}: systemd-analyze verify: {}\n{stderr}",
            out.status
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Most `systemd-analyze security` exposure the units may score (0 is a
/// sealed box, 10 is none of the hardening). What is left at 1.5 is what a
/// push server needs: internet sockets, the host's network, AF_UNIX for
/// the notification socket.
const MAX_EXPOSURE: f64 = 2.0;

#[test]
fn systemd_units_score_low_exposure() {
    let dir = std::env::temp_dir().join(format!("surge-security-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in UNITS {
        let unit = read(name).replace("/usr/local/bin/surge", env!("CARGO_BIN_EXE_surge"));
        std::fs::write(dir.join(name), unit).unwrap();
        let instance = name.replace("@.", "@01.");
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(dir.join(&instance))
            .current_dir(&dir)
            .output()
            .expect("systemd-analyze is installed");
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no exposure level in:\n{text}"));
        assert!(
            score <= MAX_EXPOSURE,
            "{name}: exposure {score} > {MAX_EXPOSURE}\n{text}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn units_take_the_descriptor_limit_from_the_plan_and_outwait_the_drain() {
    let p = plan(PLANNED_CONNECTIONS, Role::Server, DEFAULT_MEM_PER_CONN);
    let defaults = surge::Config::load_from(["surge"]).expect("defaults are valid");
    for name in UNITS {
        let unit = read(name);
        assert_eq!(
            unit_value(&unit, "LimitNOFILE"),
            Some(p.nofile.to_string()),
            "{name}: LimitNOFILE drifted from `kernel-tuning plan --connections {PLANNED_CONNECTIONS}`"
        );
        assert_eq!(unit_value(&unit, "Type").as_deref(), Some("notify"));
        assert_eq!(unit_value(&unit, "Restart").as_deref(), Some("on-failure"));
        // SIGKILL before the drain is over would drop every remaining socket
        // at once. The drain is grace + window + the close handshakes.
        let drain = defaults.drain_grace.0 + defaults.drain_window.0 + defaults.shutdown_timeout.0;
        let stop = seconds(&unit_value(&unit, "TimeoutStopSec").expect("TimeoutStopSec"));
        assert!(
            stop > drain,
            "{name}: TimeoutStopSec {stop}s <= drain {drain}s"
        );
        // The watchdog must not fire before a stuck worker is even noticed.
        let watchdog = seconds(&unit_value(&unit, "WatchdogSec").expect("WatchdogSec"));
        assert!(watchdog >= 2 * surge::ops::watchdog::STUCK_AFTER.as_secs());
        for hardening in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "LockPersonality=yes",
            "MemoryDenyWriteExecute=yes",
            "SystemCallArchitectures=native",
            "CapabilityBoundingSet=\n",
        ] {
            assert!(unit.contains(hardening), "{name} lacks {hardening:?}");
        }
    }
}

#[test]
fn sysctl_dropin_is_the_plans_output() {
    let fresh = plan(PLANNED_CONNECTIONS, Role::Server, DEFAULT_MEM_PER_CONN).sysctl_dropin();
    assert!(
        read("sysctl.d/60-surge.conf") == fresh,
        "deploy/sysctl.d/60-surge.conf drifted; regenerate with:\n  \
         cargo run -p kernel-tuning -- plan --connections {PLANNED_CONNECTIONS} --role server --format sysctl > deploy/sysctl.d/60-surge.conf"
    );
}

#[test]
fn sample_config_is_generated_and_names_every_option() {
    let sample = read("surge.toml");
    let out = surge(&["print-config", "--sample"]);
    assert!(out.status.success());
    assert!(
        sample == String::from_utf8_lossy(&out.stdout),
        "deploy/surge.toml drifted from the options; regenerate with:\n  \
         cargo run -p server --bin surge -- print-config --sample > deploy/surge.toml"
    );
    // Every long option of `surge --help` is there, as a key.
    let help = String::from_utf8_lossy(&surge(&["--help"]).stdout).into_owned();
    let mut options = 0;
    for line in help.lines() {
        // Option lines: "  -h, --help" or "      --listen <LISTEN>".
        let line = line.trim_start();
        let line = line.split_once(", ").map_or(line, |(_, rest)| rest);
        let Some(long) = line.strip_prefix("--") else {
            continue;
        };
        let long = long.split([' ', '=']).next().unwrap_or("");
        if ["help", "version", "config", ""].contains(&long) {
            continue;
        }
        options += 1;
        let key = match long {
            "allowed-origin" => "allowed-origins",
            "history-rule" => "history-rules",
            other => other,
        };
        assert!(
            sample.contains(&format!("\n# {key} = ")),
            "deploy/surge.toml lacks --{long}"
        );
    }
    assert!(options >= 30, "only {options} options found in --help");
    // Commented out entirely, it is valid TOML and a valid configuration.
    assert!(sample.parse::<toml::Table>().is_ok());
    let path = deploy().join("surge.toml");
    let check = surge(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
