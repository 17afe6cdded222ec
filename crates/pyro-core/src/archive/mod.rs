//! Host-side tar handling for workspaces: building the baseline from a seed (a directory or a
//! `.tar`/`.tar.gz`/`.tgz`/`.tar.zst` archive), validating archives, and materializing exports.
//!
//! Everything here treats archive contents as hostile, and every host effect goes through
//! file descriptors ([`crate::hostfs`]):
//! - member names must be relative without `..`, and UTF-8 in seeds and sync pushes (a name
//!   that is not is refused, never rewritten); exports keep names as bytes;
//! - symlinks may only point inside the tree, resolved as the filesystem would, through every
//!   other link of the tree ([`links_stay_inside`]): `s -> .` plus `up -> s/..` is refused;
//! - hard links may only point to earlier regular members; devices, FIFOs and sockets are
//!   refused; no member may lie below a symlink;
//! - sizes are bounded as the stream goes ([`TransferLimits`]); exported files are written
//!   sparse (all-zero blocks become holes);
//! - exports never carry set-user-id, set-group-id or sticky bits onto the host.
//!
//! Unlike the reference, in-tree relative symlinks (`node_modules/.bin`, venvs) and hard links
//! are kept, and file modes (the executable bit) survive.
//!
//! Layout: this file holds the shared types and member-name rules; `limits.rs` the
//! [`TransferLimits`]; `tree.rs` the tree shape and link checks; `seed.rs` seed reading;
//! `export.rs` export extraction; `tests.rs` the tests.

use std::ffi::OsString;
use std::path::{Component, Path};

use crate::error::{CoreError, Result};

mod export;
mod limits;
mod seed;
mod tree;

pub use export::{ExportTarget, extract_export};
pub use limits::{
    DEFAULT_MAX_DIFF_BYTES, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_EXPORT_BYTES, DEFAULT_MAX_SEED_BYTES,
    TransferLimits,
};
pub use seed::{Seed, write_empty_tar};
pub use tree::{BadLink, LinkProblem, TreeShape, links_stay_inside, symlink_stays_inside};

/// How a seed was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedMode {
    /// No seed: `/workspace` starts empty.
    Empty,
    /// A host directory.
    Directory,
    /// A tar archive (optionally gzip or zstd compressed).
    TarArchive,
}

/// Counts of an archive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TarStats {
    /// Members.
    pub entry_count: u64,
    /// Bytes of regular-file content.
    pub bytes_written: u64,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> CoreError {
    CoreError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Normalizes a relative member path: drops `.` parts, refuses absolute paths, `..` and empty.
pub fn normalize_member(name: &str) -> std::result::Result<String, String> {
    let parts = member_parts(Path::new(name)).map_err(|why| format!("member `{name}` {why}"))?;
    Ok(parts
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/"))
}

/// The plain components of a member name (bytes kept as they are).
fn member_parts(name: &Path) -> std::result::Result<Vec<OsString>, &'static str> {
    let mut parts = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    if parts.is_empty() {
        return Err("names no file");
    }
    Ok(parts)
}

/// A member name as a UTF-8 string, or a clear refusal (seeds and sync pushes).
fn utf8_member(field: &'static str, raw: &[u8]) -> Result<String> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        invalid(
            field,
            format!(
                "member name {} is not UTF-8; rename it (pyro refuses rather than rewrite it)",
                crate::error::quote_bytes(raw)
            ),
        )
    })?;
    normalize_member(s).map_err(|r| invalid(field, r))
}

#[cfg(test)]
mod tests;
