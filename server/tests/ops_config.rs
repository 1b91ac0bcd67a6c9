//! `surge check-config`, `surge print-config` and the log output, run as
//! the real binary the way an operator would.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("surge-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn surge(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surge"));
    cmd.args(args);
    // The test's own environment must not leak SURGE_* settings in.
    for (key, _) in std::env::vars() {
        if key.starts_with("SURGE_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied()).output().expect("surge runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_config_accepts_a_good_file_and_names_every_problem_of_a_bad_one() {
    let dir = Dir::new("check-config");
    let good = dir.file(
        "good.toml",
        "workers = 2\nping-interval = \"30s\"\ntoken-secret = \"0123456789abcdef0123\"\n",
    );
    let out = surge(&["check-config", "--config", &good], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok"), "{}", stdout(&out));

    let bad = dir.file(
        "bad.toml",
        "workers = 0\npong-timeout = \"40s\"\nmax-message = 10\nallowed-origins = [\"example.com\"]\n",
    );
    let out = surge(&["check-config", "--config", &bad], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for option in [
        "--workers",
        "--pong-timeout",
        "--max-message",
        "--allowed-origin",
    ] {
        assert!(err.contains(option), "{option} not named in:\n{err}");
    }
    assert!(err.contains("4 problem(s)"), "{err}");

    let unknown = dir.file("unknown.toml", "wokers = 2\nping-intervall = \"30s\"\n");
    let out = surge(&["check-config", "--config", &unknown], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("unknown option 'wokers'") && err.contains("unknown option 'ping-intervall'"),
        "{err}"
    );

    let nowhere = dir.file(
        "nowhere.toml",
        "state-file = \"/nonexistent/surge/state\"\n",
    );
    let out = surge(&["check-config", "--config", &nowhere], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/surge does not exist"),
        "{}",
        stderr(&out)
    );

    let broken = dir.file("broken.toml", "workers = [\n");
    let out = surge(&["check-config", "--config", &broken], &[]);
    assert_eq!(out.status.code(), Some(2));
    let missing = dir.0.join("missing.toml");
    let out = surge(
        &["check-config", "--config", missing.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
}

#[test]
fn check_config_sees_the_environment_the_service_would_run_with() {
    let out = surge(&["check-config"], &[("SURGE_WORKERS", "0")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--workers"), "{}", stderr(&out));
}

#[test]
fn print_config_says_where_each_value_came_from_and_hides_secrets() {
    let dir = Dir::new("print-config");
    let file = dir.file(
        "surge.toml",
        "workers = 3\nbacklog = 512\nmax-subscriptions = 8\n",
    );
    let out = surge(
        &["print-config", "--config", &file, "--backlog", "1024"],
        &[
            ("SURGE_MAX_SUBSCRIPTIONS", "16"),
            ("SURGE_TOKEN_SECRET", "a-secret-nobody-may-read"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    // Each value line follows its "# from: SOURCE; default: D" line.
    let entry = |key: &str| -> (String, String) {
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| {
                l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key} "))
            })
            .unwrap_or_else(|| panic!("{key} missing from:\n{text}"));
        (lines[at - 1].to_string(), lines[at].to_string())
    };
    assert_eq!(
        entry("backlog"),
        (
            "# from: flag; default: 4096".into(),
            "backlog = 1024".into()
        )
    );
    assert_eq!(
        entry("max-subscriptions"),
        (
            "# from: env; default: 32".into(),
            "max-subscriptions = 16".into()
        )
    );
    assert_eq!(entry("workers").1, "workers = 3");
    assert!(entry("workers").0.starts_with("# from: file;"));
    assert_eq!(
        entry("ping-interval"),
        (
            "# from: default; default: \"25s\"".into(),
            "ping-interval = \"25s\"".into()
        )
    );
    assert_eq!(entry("token-secret").1, "# token-secret = (set; hidden)");
    assert!(!text.contains("a-secret-nobody-may-read"));
    // What it prints is a config file surge itself accepts.
    let round_trip = dir.file("printed.toml", &text);
    let out = surge(&["check-config", "--config", &round_trip], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Starts surge with `args`, reads stderr until its "surge started" line,
/// stops it; returns what it logged.
fn startup_log(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(surge::config::EPHEMERAL_LOOPBACK)
        .args(["--workers", "1", "--shutdown-timeout", "1s"])
        .args(["--drain-grace", "0s", "--drain-window", "1s"])
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("surge starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.expect("stderr is readable");
        log.push_str(&line);
        log.push('\n');
        if line.contains("surge started") {
            break;
        }
    }
    // SAFETY: kill only sends a signal to the process we spawned.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    for line in lines {
        log.push_str(&line.unwrap_or_default());
        log.push('\n');
    }
    assert!(child.wait().unwrap().success());
    log
}

#[test]
fn json_logs_are_one_object_per_line() {
    let log = startup_log(&["--log-format", "json", "--log", "info"]);
    let mut started = false;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        started |= v["fields"]["message"] == "surge started";
    }
    assert!(started, "{log}");
}

#[test]
fn text_logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let log = startup_log(&["--log", "info"]);
    assert!(log.contains("surge started"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in a pipe: {log:?}");
}
