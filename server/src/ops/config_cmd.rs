//! `surge check-config` and `surge print-config`: the configuration as the
//! server would see it (flags, `SURGE_*` environment, `--config` file),
//! checked or printed, without binding a port or starting a thread.
//! `print-config --sample` writes the commented sample shipped as
//! `deploy/surge.toml`, from the options themselves, so it cannot drift.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Arg, CommandFactory};

use crate::config::{Config, ConfigError, Source, Sources};

/// Exit code for a configuration that cannot work (as for bad flags).
const EXIT_INVALID: u8 = 2;
/// Column the sample's and print-out's comments wrap at.
const WRAP: usize = 76;
/// Options whose default depends on the machine; the sample shows an
/// example value for them instead of this machine's.
const MACHINE_DEFAULTS: [(&str, &str, &str); 1] = [("workers", "8", "one per core")];

/// `surge check-config [OPTIONS]`: exit 0 when the configuration would
/// start, or 2 with one line per problem.
pub fn check_config(args: impl Iterator<Item = String>) -> ExitCode {
    let loaded = Config::load_unchecked(std::iter::once("surge".to_string()).chain(args));
    let problems = match loaded {
        Ok((config, _)) => {
            let mut problems = config.problems();
            problems.extend(environment_problems(&config));
            if problems.is_empty() {
                let from = config
                    .config
                    .as_ref()
                    .map_or("flags, environment and defaults".into(), |p| {
                        p.display().to_string()
                    });
                println!("surge check-config: ok ({from})");
                return ExitCode::SUCCESS;
            }
            problems
        }
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(ConfigError::File { path, message }) => message
            .split("; ")
            .map(|m| format!("config file {}: {m}", path.display()))
            .collect(),
        Err(e) => vec![e.to_string()],
    };
    for problem in &problems {
        eprintln!("surge check-config: {problem}");
    }
    eprintln!("surge check-config: {} problem(s)", problems.len());
    ExitCode::from(EXIT_INVALID)
}

/// What `Config::problems` cannot see because it does not look outside
/// the process: paths the server will need at start or stop.
fn environment_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(path) = &config.state_file {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            problems.push(format!(
                "--state-file {}: directory {} does not exist",
                path.display(),
                dir.display()
            ));
        }
    }
    problems
}

/// `surge print-config [--sample] [OPTIONS]`: the effective configuration
/// as TOML, each option with its help, default and source.
pub fn print_config(args: impl Iterator<Item = String>) -> ExitCode {
    let mut sample = false;
    let args: Vec<String> = args
        .filter(|a| {
            let is_sample = a == "--sample";
            sample |= is_sample;
            !is_sample
        })
        .collect();
    if sample {
        print!("{}", sample_toml());
        return ExitCode::SUCCESS;
    }
    match Config::load_unchecked(std::iter::once("surge".to_string()).chain(args)) {
        Ok((config, sources)) => {
            print!("{}", effective_toml(&config, &sources));
            ExitCode::SUCCESS
        }
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("surge print-config: {e}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// The options a config file may hold, in `--help` order.
fn file_options() -> Vec<Arg> {
    Config::command()
        .get_arguments()
        .filter(|a| a.get_id() != "config" && a.get_long().is_some())
        .cloned()
        .collect()
}

fn key_of(arg: &Arg) -> String {
    arg.get_id().as_str().replace('_', "-")
}

/// Secrets and URLs that may carry a password are never printed.
fn is_secret(arg: &Arg) -> bool {
    arg.is_hide_env_values_set()
}

/// A default as it would be written in TOML: numbers and booleans bare,
/// the rest quoted, several values as an array.
fn default_toml(arg: &Arg) -> Option<String> {
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| {
            let v = v.to_string_lossy();
            if v.parse::<i64>().is_ok() || v == "true" || v == "false" {
                v.into_owned()
            } else {
                toml::Value::String(v.into_owned()).to_string()
            }
        })
        .collect();
    match values.len() {
        0 => None,
        1 => values.into_iter().next(),
        _ => Some(format!("[{}]", values.join(", "))),
    }
}

fn help_of(arg: &Arg) -> String {
    arg.get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// `text` as `# ` comment lines of at most [`WRAP`] columns.
fn comment(out: &mut String, text: &str) {
    for paragraph in text.split('\n') {
        let mut line = String::from("#");
        for word in paragraph.split_whitespace() {
            if line.len() + 1 + word.len() > WRAP && line.len() > 1 {
                let _ = writeln!(out, "{line}");
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        let _ = writeln!(out, "{line}");
    }
}

fn env_and_flag(arg: &Arg) -> String {
    let flag = arg.get_long().map(|l| format!("--{l}")).unwrap_or_default();
    match arg.get_env() {
        Some(env) => format!("Flag: {flag}. Environment: {}.", env.to_string_lossy()),
        None => format!("Flag: {flag}."),
    }
}

/// The commented sample config: every option, its help, flag, environment
/// variable and default, each value line commented out.
pub fn sample_toml() -> String {
    let mut out = String::new();
    comment(
        &mut out,
        "Surge sample configuration: every option, with its default. \
         Uncomment a line to change it. Flags beat SURGE_* environment \
         variables, which beat this file, which beats the defaults. \
         Check a file with: surge check-config --config FILE",
    );
    comment(
        &mut out,
        "Generated by `surge print-config --sample`; a test fails when an option is missing.",
    );
    for arg in file_options() {
        let key = key_of(&arg);
        out.push('\n');
        comment(&mut out, &help_of(&arg));
        comment(&mut out, &env_and_flag(&arg));
        match MACHINE_DEFAULTS.iter().find(|(k, _, _)| *k == key) {
            Some((_, example, default)) => {
                comment(
                    &mut out,
                    &format!("Default: {default}; {example} is an example."),
                );
                let _ = writeln!(out, "# {key} = {example}");
            }
            None => match default_toml(&arg) {
                Some(value) => {
                    let _ = writeln!(out, "# {key} = {value}");
                }
                None if arg.get_value_delimiter().is_some() => {
                    let _ = writeln!(out, "# {key} = []");
                }
                None => {
                    comment(&mut out, "Unset by default.");
                    let _ = writeln!(out, "# {key} = \"\"");
                }
            },
        }
    }
    out
}

/// The effective configuration: each option's value (secrets hidden), its
/// default and where the value came from.
pub fn effective_toml(config: &Config, sources: &Sources) -> String {
    let table = toml::Table::try_from(config).unwrap_or_default();
    let mut out = String::new();
    comment(
        &mut out,
        "surge print-config: the effective configuration. Each option: \
         where its value came from (flag, env, file or default) and its default.",
    );
    if let Some(path) = &config.config {
        comment(&mut out, &format!("Config file: {}", path.display()));
    }
    for arg in file_options() {
        let key = key_of(&arg);
        let source = sources.get(&key).copied().unwrap_or(Source::Default);
        let default = default_toml(&arg).unwrap_or_else(|| "unset".into());
        out.push('\n');
        let summary = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        comment(&mut out, &summary);
        let _ = writeln!(out, "# from: {}; default: {default}", source.label());
        match table.get(&key) {
            Some(_) if is_secret(&arg) => {
                let _ = writeln!(out, "# {key} = (set; hidden)");
            }
            Some(value) => {
                let _ = writeln!(out, "{key} = {value}");
            }
            None => {
                let _ = writeln!(out, "# {key} is unset");
            }
        }
    }
    let problems = config.problems();
    if !problems.is_empty() {
        out.push('\n');
        comment(&mut out, "Problems (surge would refuse to start):");
        for problem in problems {
            comment(&mut out, &format!("- {problem}"));
        }
    }
    out
}
