//! The `kernel-tuning` command: plan, check, apply, rollback, measure.
//! Exit codes: 0 all good, 1 something falls short or was refused, 2 error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kernel_tuning::keys::Role;
use kernel_tuning::{apply, check, measure, plan, procfs::ProcRoot, profile, Error};

/// Sysctls and limits for a million sockets: plan, check, apply, roll back.
#[derive(Parser)]
#[command(name = "kernel-tuning", version)]
struct Cli {
    /// Where proc lives; point it at a fake tree to try things safely.
    #[arg(long, global = true, default_value = "/proc")]
    proc_root: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args)]
struct Target {
    /// Concurrent connections the box must hold.
    #[arg(long)]
    connections: Option<u64>,
    /// What the box runs.
    #[arg(long, value_enum, default_value = "server")]
    role: Role,
    /// Kernel memory per connection in bytes (see `measure`).
    #[arg(long, default_value_t = plan::DEFAULT_MEM_PER_CONN)]
    mem_per_conn: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compute the settings for N connections: sysctl.d, systemd and limits.conf drop-ins.
    Plan {
        #[command(flatten)]
        target: Target,
        /// all: the three drop-ins; sysctl: only the sysctl.d drop-in (a profile file); json.
        #[arg(long, default_value = "all", value_parser = ["all", "sysctl", "json"])]
        format: String,
    },
    /// Compare the live kernel with a plan (--connections) or a profile (--profile).
    Check {
        #[command(flatten)]
        target: Target,
        #[arg(long, conflicts_with = "connections")]
        profile: Option<PathBuf>,
        /// Check the open-file limits of this running process (e.g. surge) instead of our own.
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Write a profile's values, saving the previous ones to a rollback file first.
    Apply {
        #[arg(long)]
        profile: PathBuf,
        /// Say what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also install the profile as a sysctl.d drop-in, so it survives a reboot.
        #[arg(long)]
        persist: bool,
        #[arg(long, default_value = "/etc/sysctl.d")]
        sysctl_dir: PathBuf,
        /// Where to save the previous values [default: /var/lib/kernel-tuning/rollback-<time>.json].
        #[arg(long)]
        rollback_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Restore exactly the values a rollback file saved.
    Rollback {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Measure kernel memory per idle TCP socket on this machine.
    Measure {
        /// Sockets to open (half clients, half accepted); keep under the open-file limit.
        #[arg(long, default_value_t = 16_000)]
        sockets: usize,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kernel-tuning: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Error> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(|e| Error::Usage(e.to_string()))?
    );
    Ok(())
}

fn run(cli: Cli) -> Result<u8, Error> {
    let proc = ProcRoot::new(&cli.proc_root);
    match cli.command {
        Cmd::Plan { target, format } => {
            let n = target
                .connections
                .ok_or_else(|| Error::Usage("plan needs --connections N".into()))?;
            let p = plan::plan(n, target.role, target.mem_per_conn);
            match format.as_str() {
                "sysctl" => print!("{}", p.sysctl_dropin()),
                "json" => print_json(&p)?,
                _ => println!(
                    "# ---- /etc/sysctl.d/{} ----\n{}\n# ---- systemd ----\n{}\n# ---- limits.conf ----\n{}",
                    apply::DROPIN_NAME,
                    p.sysctl_dropin(),
                    p.systemd_dropin(),
                    p.limits_conf()
                ),
            }
            Ok(0)
        }
        Cmd::Check {
            target,
            profile,
            pid,
            json,
        } => {
            let required = match (profile, target.connections) {
                (Some(path), _) => {
                    let p = profile::load(&path)?;
                    check::Required {
                        nofile: p.nofile,
                        settings: p.settings,
                    }
                }
                (None, Some(n)) => {
                    let p = plan::plan(n, target.role, target.mem_per_conn);
                    let settings = p
                        .settings
                        .iter()
                        .filter_map(|s| Some((kernel_tuning::keys::find(s.key)?, s.values.clone())))
                        .collect();
                    check::Required {
                        nofile: Some(p.nofile),
                        settings,
                    }
                }
                (None, None) => {
                    return Err(Error::Usage(
                        "check needs --connections N or --profile FILE".into(),
                    ))
                }
            };
            let report = check::check(&proc, &required, pid)?;
            if json {
                print_json(&report)?;
            } else {
                print!("{}", report.table());
            }
            Ok(if report.ok { 0 } else { 1 })
        }
        Cmd::Apply {
            profile: path,
            dry_run,
            persist,
            sysctl_dir,
            rollback_file,
            json,
        } => {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Io(path.clone(), e))?;
            let parsed = profile::parse(&text, &path.display().to_string())?;
            let rollback_file = rollback_file.unwrap_or_else(|| {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                PathBuf::from(format!("/var/lib/kernel-tuning/rollback-{secs}.json"))
            });
            let opts = apply::Options {
                dry_run,
                persist_dir: persist.then_some(sysctl_dir),
                rollback_file,
            };
            let outcomes = apply::apply(&proc, &parsed, &text, &opts)?;
            if json {
                print_json(&outcomes)?;
            } else {
                print!("{}", apply::table(&outcomes));
                if !dry_run {
                    println!(
                        "\nprevious values saved to {}",
                        opts.rollback_file.display()
                    );
                    println!(
                        "undo with: kernel-tuning rollback {}",
                        opts.rollback_file.display()
                    );
                }
            }
            Ok(
                if outcomes.iter().any(|o| o.result == apply::Change::Refused) {
                    1
                } else {
                    0
                },
            )
        }
        Cmd::Rollback { file, json } => {
            let outcomes = apply::rollback(&file)?;
            if json {
                print_json(&outcomes)?;
            } else {
                print!("{}", apply::table(&outcomes));
            }
            Ok(
                if outcomes.iter().any(|o| o.result == apply::Change::Refused) {
                    1
                } else {
                    0
                },
            )
        }
        Cmd::Measure { sockets } => {
            let m = measure::measure(sockets / 2)
                .map_err(|e| Error::Io(PathBuf::from("/proc/meminfo"), e))?;
            println!(
                "{} idle loopback TCP sockets: Slab {} -> {} KiB, TCP buffer pages {} -> {}\nkernel memory per idle socket: {} bytes",
                m.sockets, m.slab_before_kib, m.slab_after_kib, m.tcp_mem_pages_before, m.tcp_mem_pages_after, m.bytes_per_socket
            );
            Ok(0)
        }
    }
}
