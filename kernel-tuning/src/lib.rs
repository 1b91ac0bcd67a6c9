//! kernel-tuning: the sysctls and limits a box needs to hold a million
//! sockets, planned from a connection count, checked against the live
//! kernel, applied with a rollback file, and rolled back exactly.
//!
//! - `keys`: the catalogue (and apply's allow-list), with each key's rule.
//! - `plan`: connection count -> values, with reasons and arithmetic.
//! - `profile`: strict reading of profile (sysctl.d) files.
//! - `procfs`: the live kernel under a proc root (real or fake).
//! - `check`, `apply`: the verdict table; writes, rollback files, rollback.
//! - `measure`: kernel memory per socket on this machine.

pub mod apply;
pub mod check;
pub mod keys;
pub mod measure;
pub mod plan;
pub mod procfs;
pub mod profile;

use std::path::PathBuf;

/// Everything that can go wrong. All are fatal for the command (exit 2);
/// a key that is merely short is a verdict, not an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{what}: cannot use value '{value}'")]
    Malformed { what: String, value: String },
    #[error("{at}: '{key}' is not a key kernel-tuning manages")]
    UnknownKey { at: String, key: String },
    #[error("{0}")]
    Usage(String),
}
