//! `apply` and `rollback`. Apply reads every key first, writes the rollback
//! file (the exact text of each previous value) before touching anything,
//! then writes only keys that fall short, and verifies each by reading it
//! back. Rollback writes the saved text back byte for byte (leaving alone
//! a key that already holds it) and reads it back too.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys;
use crate::procfs::{format_numbers, ProcRoot};
use crate::profile::Profile;
use crate::Error;

/// Name of the persisted drop-in under the sysctl.d directory.
pub const DROPIN_NAME: &str = "60-surge-kernel-tuning.conf";

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Applied,
    Unchanged,
    Refused,
    WouldApply,
    Restored,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub key: String,
    pub before: String,
    pub after: String,
    pub result: Change,
    pub reason: String,
}

/// What a rollback file holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    pub proc_root: PathBuf,
    /// Key and its exact previous file content.
    pub values: Vec<(String, String)>,
    /// The persisted drop-in and its previous content (`None`: did not exist).
    pub persisted: Option<(PathBuf, Option<String>)>,
}

pub struct Options {
    pub dry_run: bool,
    pub persist_dir: Option<PathBuf>,
    pub rollback_file: PathBuf,
}

fn read_only(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o222 == 0)
}

/// Applies `profile` (whose text is `profile_text`, for `--persist`).
pub fn apply(
    proc: &ProcRoot,
    profile: &Profile,
    profile_text: &str,
    opts: &Options,
) -> Result<Vec<Outcome>, Error> {
    // Read everything first: a malformed live value stops us before any write.
    let mut current = Vec::new();
    for (key, want) in &profile.settings {
        current.push((*key, want, proc.read(key)?));
    }
    let persist_path = opts.persist_dir.as_ref().map(|d| d.join(DROPIN_NAME));
    if !opts.dry_run {
        let saved = Saved {
            proc_root: proc.root.clone(),
            values: current
                .iter()
                .filter_map(|(k, _, live)| {
                    live.as_ref().map(|l| (k.name.to_string(), l.text.clone()))
                })
                .collect(),
            persisted: persist_path
                .as_ref()
                .map(|p| (p.clone(), std::fs::read_to_string(p).ok())),
        };
        if let Some(dir) = opts.rollback_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io(dir.to_path_buf(), e))?;
        }
        let json = serde_json::to_string_pretty(&saved).map_err(|e| Error::Usage(e.to_string()))?;
        std::fs::write(&opts.rollback_file, json)
            .map_err(|e| Error::Io(opts.rollback_file.clone(), e))?;
    }
    let mut outcomes = Vec::new();
    for (key, want, live) in current {
        let target = format_numbers(want);
        let outcome = |before: &str, after: &str, result, reason: &str| Outcome {
            key: key.name.into(),
            before: before.into(),
            after: after.into(),
            result,
            reason: reason.into(),
        };
        let Some(live) = live else {
            let why = if key.conntrack {
                "absent: nf_conntrack is not loaded"
            } else {
                "absent on this kernel"
            };
            outcomes.push(outcome("-", "-", Change::Refused, why));
            continue;
        };
        let before = format_numbers(&live.values);
        if key.satisfied(&live.values, want) {
            outcomes.push(outcome(
                &before,
                &before,
                Change::Unchanged,
                "already enough",
            ));
            continue;
        }
        let path = proc.sysctl_path(key);
        if read_only(&path) {
            outcomes.push(outcome(&before, &before, Change::Refused, "read-only"));
            continue;
        }
        if opts.dry_run {
            outcomes.push(outcome(&before, &target, Change::WouldApply, ""));
            continue;
        }
        if let Err(e) = proc.write(key, &format!("{target}\n")) {
            outcomes.push(outcome(
                &before,
                &before,
                Change::Refused,
                &format!("write failed: {e}"),
            ));
            continue;
        }
        match proc.read(key)? {
            Some(after) if after.values == **want => {
                outcomes.push(outcome(&before, &target, Change::Applied, ""))
            }
            Some(after) => {
                let kept = format_numbers(&after.values);
                outcomes.push(outcome(
                    &before,
                    &kept,
                    Change::Refused,
                    "the kernel kept another value",
                ));
            }
            None => outcomes.push(outcome(
                &before,
                "-",
                Change::Refused,
                "vanished after the write",
            )),
        }
    }
    if let (Some(path), false) = (persist_path, opts.dry_run) {
        std::fs::write(&path, profile_text).map_err(|e| Error::Io(path.clone(), e))?;
    }
    Ok(outcomes)
}

/// Restores exactly what `file` saved.
pub fn rollback(file: &Path) -> Result<Vec<Outcome>, Error> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::Io(file.to_path_buf(), e))?;
    let saved: Saved = serde_json::from_str(&text).map_err(|e| Error::Malformed {
        what: file.display().to_string(),
        value: e.to_string(),
    })?;
    let proc = ProcRoot::new(&saved.proc_root);
    let mut outcomes = Vec::new();
    for (name, old) in &saved.values {
        let key = keys::find(name).ok_or_else(|| Error::UnknownKey {
            at: file.display().to_string(),
            key: name.clone(),
        })?;
        let path = proc.sysctl_path(key);
        // A key apply never changed (refused, or already enough) is left
        // alone: writing it again could only fail, on a read-only sysctl.
        if std::fs::read_to_string(&path).is_ok_and(|now| now == *old) {
            outcomes.push(Outcome {
                key: name.clone(),
                before: String::new(),
                after: old.trim().into(),
                result: Change::Unchanged,
                reason: "already the saved value".into(),
            });
            continue;
        }
        let result = proc
            .write(key, old)
            .and_then(|_| std::fs::read_to_string(&path));
        let (result, reason) = match result {
            // Real sysctls normalise whitespace; compare numbers there, bytes elsewhere.
            Ok(now)
                if now == *old
                    || crate::procfs::parse_numbers(&now) == crate::procfs::parse_numbers(old) =>
            {
                (Change::Restored, String::new())
            }
            Ok(now) => (Change::Refused, format!("reads back as '{}'", now.trim())),
            Err(e) => (Change::Refused, format!("write failed: {e}")),
        };
        outcomes.push(Outcome {
            key: name.clone(),
            before: String::new(),
            after: old.trim().into(),
            result,
            reason,
        });
    }
    if let Some((path, previous)) = &saved.persisted {
        let done = match previous {
            Some(text) => std::fs::write(path, text),
            None => std::fs::remove_file(path).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            }),
        };
        done.map_err(|e| Error::Io(path.clone(), e))?;
    }
    Ok(outcomes)
}

/// A table of outcomes.
pub fn table(outcomes: &[Outcome]) -> String {
    let wk = outcomes
        .iter()
        .map(|o| o.key.len())
        .max()
        .unwrap_or(3)
        .max(3);
    let mut out = format!("{:wk$}  {:12}  {}\n", "key", "result", "value (reason)");
    for o in outcomes {
        let result = serde_json::to_value(o.result)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let value = match o.result {
            Change::Applied | Change::WouldApply => format!("{} -> {}", o.before, o.after),
            _ => o.after.clone(),
        };
        let reason = if o.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", o.reason)
        };
        out.push_str(&format!("{:wk$}  {:12}  {value}{reason}\n", o.key, result));
    }
    out
}
