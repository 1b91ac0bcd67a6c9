//! The `confirm` scenario: booking confirmations published to every user's
//! private channel, in rounds, each of which must arrive exactly once. With
//! `--kill-pid` one node is killed (SIGKILL, as a crash or an OOM kill
//! would) after a chosen round: its browsers reconnect through the shared
//! port to the nodes left, and recover with `since` every confirmation
//! published while they were away. With `--restart-pid` nodes are drained
//! and restarted instead (SIGTERM, as a deploy does; see `restart`) while
//! the rounds go on: publications a draining or stopped node refuses are
//! sent again until a node takes them, and each must still arrive once.
//!
//! It only publishes, kills, restarts and waits; counting is the workers'
//! (each client checks its offsets) and the report's.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::restart::Restarted;

use crossbeam_channel::Receiver;

use crate::engine::Event;
use crate::orchestrate::{unix_us, wait_for, Common, Worker, PUBLISH_CHUNK};
use crate::publisher::Publisher;

/// Options of the confirm scenario.
#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct ConfirmOpts {
    /// Confirmations per user channel, one per round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub rounds: u8,
    /// Pause between rounds, milliseconds: rounds published after a kill
    /// reach browsers that are still reconnecting.
    #[arg(long, default_value_t = 200)]
    pub round_gap_ms: u64,
    /// Kill this process (a Surge node; SIGKILL) during the run. Its
    /// browsers reconnect to the other nodes and must recover every
    /// confirmation. Publish to the other nodes (--publish), or to all: a
    /// node that refuses connections is skipped.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// Round after which the node is killed [default: half of --rounds].
    #[arg(long, requires = "kill_pid")]
    pub kill_after_round: Option<u8>,
    /// Drain and restart these Surge nodes (comma-separated PIDs), one
    /// after another, while the rounds go on: SIGTERM, wait for the exit,
    /// start it again with the same command line, environment and working
    /// directory (so the same --state-file), wait until it listens, then
    /// the next. Their browsers reconnect after the drain's hint; a publish
    /// refused meanwhile (503, connection refused) is sent again.
    #[arg(long, value_delimiter = ',', conflicts_with = "kill_pid")]
    pub restart_pid: Vec<u32>,
    /// Round after which the restart begins [default: half of --rounds];
    /// it must be before the last round, which goes out once every node
    /// is back and every browser reconnected.
    #[arg(long, requires = "restart_pid")]
    pub restart_after_round: Option<u8>,
}

/// What the scenario did; the workers say what arrived.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Outcome {
    pub rounds: u8,
    /// Confirmations the publish API accepted.
    pub published: u64,
    pub killed_pid: Option<u32>,
    pub killed_after_round: Option<u8>,
    /// The nodes drained and restarted, in order.
    pub restarts: Vec<Restarted>,
    pub restarted_after_round: Option<u8>,
    /// Publish requests refused (503 or connection refused) and sent again.
    pub publish_refusals: u64,
}

/// Publishes the rounds (killing the node on the way), then waits until
/// every connected client has every confirmation, or the timeout.
pub(crate) fn run(
    opts: &ConfirmOpts,
    common: &Common,
    publisher: &mut Publisher,
    workers: &mut [Worker],
    rx: &Receiver<(usize, Event)>,
    connected: u64,
) -> Result<Outcome, String> {
    let kill_after = opts
        .kill_pid
        .map(|_| opts.kill_after_round.unwrap_or(opts.rounds.div_ceil(2)));
    let restart_after =
        (!opts.restart_pid.is_empty()).then(|| opts.restart_after_round.unwrap_or(opts.rounds / 2));
    if restart_after.is_some_and(|after| after == 0 || after >= opts.rounds) {
        return Err(format!(
            "--restart-after-round must be 1 to {} (before the last of --rounds {}): the last round goes out once the nodes are back",
            opts.rounds.saturating_sub(1),
            opts.rounds
        ));
    }
    let mut outcome = Outcome {
        rounds: opts.rounds,
        ..Outcome::default()
    };
    // Each wait (a node's stop or start, a publish refused meanwhile, the
    // browsers' return) gets the whole timeout, however many nodes go.
    let bound = Duration::from_secs(common.timeout);
    let mut restarting: Option<JoinHandle<Result<Vec<Restarted>, String>>> = None;
    for round in 1..=opts.rounds {
        if round == opts.rounds {
            if let Some(restarting) = restarting.take() {
                // The last round goes out once every node is back and every
                // browser has reconnected: delivering it proves each
                // resubscribed (recovering what it missed) and counted how.
                outcome.restarts = restarting
                    .join()
                    .map_err(|_| "the restart thread panicked".to_string())??;
                let until = Instant::now() + bound;
                wait_for(workers, rx, until, |_, _, open| open >= connected)?;
            }
        }
        let ts = unix_us();
        let items: Vec<String> = (0..common.conns)
            .map(|uid| {
                format!(r#"{{"ch":"user/{uid}","data":{{"booking":"B-{uid}-{round}","ts":{ts}}}}}"#)
            })
            .collect();
        for chunk in items.chunks(PUBLISH_CHUNK) {
            if restart_after.is_some() {
                let until = Instant::now() + bound;
                outcome.publish_refusals += publisher.send_until_accepted(chunk, true, until)?;
            } else {
                publisher.send(chunk, true)?;
            }
            outcome.published += chunk.len() as u64;
        }
        if let (Some(pid), Some(after)) = (opts.kill_pid, kill_after) {
            if round == after {
                crate::sys::kill(pid).map_err(|e| format!("kill -9 {pid}: {e}"))?;
                eprintln!("client-sim: killed node {pid} after round {round}");
                outcome.killed_pid = Some(pid);
                outcome.killed_after_round = Some(round);
            }
        }
        if restart_after == Some(round) {
            // The rounds go on while the nodes drain and come back.
            let pids = opts.restart_pid.clone();
            restarting = Some(std::thread::spawn(move || {
                crate::restart::rolling(&pids, bound)
            }));
            outcome.restarted_after_round = Some(round);
        }
        if round < opts.rounds {
            std::thread::sleep(Duration::from_millis(opts.round_gap_ms));
        }
    }
    let until = Instant::now() + bound;
    wait_for(workers, rx, until, |_, complete, _| complete >= connected)?;
    Ok(outcome)
}
