//! The in-process engine's state file (`--state-file`): each channel's
//! epoch, offsets, history and last value, written when the server stops
//! gracefully and read when it starts, so browsers that reconnect after a
//! planned restart recover (`recovered:true`) instead of resyncing.
//!
//! Format: one header line `SURGE-STATE 1 <sha256 of the body, hex>
//! <body length>`, then the body, JSON:
//! `{"saved":UNIX,"channels":[{"ch":..,"epoch":..,"entries":[[OFF,AGE,DATA],..]}]}`
//! with DATA the publication's JSON as published. The digest catches a
//! truncated or corrupted file, which is then ignored (fresh epochs), never
//! a crash. Written to a temporary file beside the target, synced, then
//! renamed over it, so a crash while saving leaves the previous file whole.
//!
//! It must not touch workers or sockets.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::engine::log::{ChannelLogs, ExportedChannel, HistoryConfig};

const MAGIC: &str = "SURGE-STATE";
const VERSION: u32 = 1;

/// Why a state file was not used. None is fatal: the server starts with
/// fresh epochs and says why in its log.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not a Surge state file (or an unknown version)")]
    Header(String),
    #[error("{0}: truncated or corrupted (length or digest does not match)")]
    Corrupt(String),
    #[error("{path}: unreadable body: {source}")]
    Body {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Serialize)]
struct BodyOut<'a> {
    saved: u64,
    channels: Vec<ChannelOut<'a>>,
}

#[derive(Serialize)]
struct ChannelOut<'a> {
    ch: &'a str,
    epoch: &'a str,
    entries: Vec<(u64, u64, &'a RawValue)>,
}

#[derive(Deserialize)]
struct BodyIn<'a> {
    saved: u64,
    #[serde(borrow)]
    channels: Vec<ChannelIn<'a>>,
}

#[derive(Deserialize)]
struct ChannelIn<'a> {
    #[serde(borrow)]
    ch: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    epoch: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    entries: Vec<(u64, u64, &'a RawValue)>,
}

fn unix_now() -> u64 {
    crate::channels::token::unix_now()
}

/// What a save wrote, for the log and the docs' size figures.
#[derive(Debug, Clone, Copy)]
pub struct Saved {
    pub channels: usize,
    pub entries: usize,
    pub bytes: usize,
}

/// Writes every channel of `logs` to `path`, atomically.
pub fn save(logs: &ChannelLogs, path: &Path) -> Result<Saved, StateError> {
    let exported: Vec<ExportedChannel<'_>> = logs.export();
    let mut entries = 0;
    let channels = exported
        .iter()
        .map(|c| {
            entries += c.entries.len();
            ChannelOut {
                ch: c.name,
                epoch: c.epoch,
                entries: c
                    .entries
                    .iter()
                    .filter_map(|(off, age, data)| {
                        // Data was valid JSON when published; skip rather
                        // than fail the whole save if it somehow is not.
                        let raw: &RawValue = serde_json::from_str(data).ok()?;
                        Some((*off, *age, raw))
                    })
                    .collect(),
            }
        })
        .collect();
    let body = serde_json::to_vec(&BodyOut {
        saved: unix_now(),
        channels,
    })
    .map_err(|e| StateError::Write {
        path: path.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    let digest = hex(&Sha256::digest(&body));
    let header = format!("{MAGIC} {VERSION} {digest} {}\n", body.len());
    let write_err = |source| StateError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(write_err)?;
    file.write_all(header.as_bytes()).map_err(write_err)?;
    file.write_all(&body).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_err)?;
    Ok(Saved {
        channels: exported.len(),
        entries,
        bytes: header.len() + body.len(),
    })
}

/// Reads `path` into `logs`: entries older than their channel's history age
/// are left out, except each channel's last value. Returns how many
/// channels and entries came back.
pub fn load(
    logs: &mut ChannelLogs,
    history: &HistoryConfig,
    path: &Path,
) -> Result<(usize, usize), StateError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| StateError::Read {
        path: name.clone(),
        source,
    })?;
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| StateError::Header(name.clone()))?;
    let header =
        std::str::from_utf8(&bytes[..newline]).map_err(|_| StateError::Header(name.clone()))?;
    let mut fields = header.split(' ');
    let (Some(MAGIC), Some("1"), Some(digest), Some(len), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(StateError::Header(name));
    };
    let body = &bytes[newline + 1..];
    if len.parse::<usize>().ok() != Some(body.len()) || hex(&Sha256::digest(body)) != digest {
        return Err(StateError::Corrupt(name));
    }
    let parsed: BodyIn<'_> = serde_json::from_slice(body).map_err(|source| StateError::Body {
        path: name.clone(),
        source,
    })?;
    // Time the server was down counts towards each entry's age.
    let down = unix_now().saturating_sub(parsed.saved);
    let (mut channels, mut entries) = (0, 0);
    for channel in &parsed.channels {
        let ttl = history.retention(&channel.ch).ttl_secs;
        let last = channel.entries.len().saturating_sub(1);
        let mut any = false;
        for (i, (off, age, data)) in channel.entries.iter().enumerate() {
            let age = age.saturating_add(down);
            if age > ttl && i != last {
                continue;
            }
            if logs
                .restore(&channel.ch, &channel.epoch, *off, data.get(), age)
                .is_ok()
            {
                entries += 1;
                any = true;
            }
        }
        channels += usize::from(any);
    }
    logs.evict_over_cap();
    Ok((channels, entries))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::log::{Clock, Numbering, Retention, Since};

    fn config() -> HistoryConfig {
        HistoryConfig {
            default: Retention {
                size: 10,
                ttl_secs: 300,
            },
            rules: Vec::new(),
            max_bytes: 1 << 20,
        }
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("surge-state-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_saved_file_brings_back_epochs_offsets_and_history() {
        let mut before = ChannelLogs::new(config(), Clock::real());
        for data in ["1", r#"{"free":2}"#, "3"] {
            let _ = before.append("clinic:1", data, Numbering::Next);
        }
        let _ = before.append("user/7", r#""booked""#, Numbering::Next);
        let (epoch, _) = before.position("clinic:1").unwrap();
        let path = temp("roundtrip");
        let saved = save(&before, &path).unwrap();
        assert_eq!((saved.channels, saved.entries), (2, 4));

        let mut after = ChannelLogs::new(config(), Clock::real());
        assert_eq!(load(&mut after, &config(), &path).unwrap(), (2, 4));
        assert_eq!(after.position("clinic:1"), Some((epoch.clone(), 3)));
        let r = after.recover(
            "clinic:1",
            Some(Since {
                epoch: &epoch,
                off: 1,
            }),
            u64::MAX,
        );
        assert_eq!((r.recovered, r.frames.len()), (Some(true), 2));
        // New publications continue the same epoch.
        let next = after.append("clinic:1", "4", Numbering::Next).ok().unwrap();
        assert_eq!(next.position, (epoch, 4));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn truncated_corrupted_and_foreign_files_are_refused_not_trusted() {
        let mut logs = ChannelLogs::new(config(), Clock::real());
        let _ = logs.append("clinic:1", r#"{"free":2}"#, Numbering::Next);
        let path = temp("corrupt");
        save(&logs, &path).unwrap();
        let whole = std::fs::read(&path).unwrap();

        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let mut fresh = ChannelLogs::new(config(), Clock::real());
        assert!(matches!(
            load(&mut fresh, &config(), &path),
            Err(StateError::Corrupt(_))
        ));

        let mut flipped = whole.clone();
        let last = flipped.len() - 5;
        flipped[last] ^= 0x01;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(
            load(&mut fresh, &config(), &path),
            Err(StateError::Corrupt(_))
        ));

        std::fs::write(&path, b"{\"not\":\"ours\"}\n").unwrap();
        assert!(matches!(
            load(&mut fresh, &config(), &path),
            Err(StateError::Header(_))
        ));
        assert!(fresh.position("clinic:1").is_none(), "nothing half-loaded");

        let _ = std::fs::remove_file(&path);
        assert!(matches!(
            load(&mut fresh, &config(), &path),
            Err(StateError::Read { .. })
        ));
    }
}
