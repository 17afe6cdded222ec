//! [`TransferLimits`]: the bounds on what a seed, a sync push, an export or a diff may move,
//! read from the environment, and the budget that checks them as a stream goes.

use crate::error::{CoreError, Result};

use super::{TarStats, invalid};

/// Bounds on what a seed, a sync push, an export or a diff may move or hold. Checked as the
/// stream goes, before the bytes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferLimits {
    /// Regular-file bytes (apparent size) of one seed or sync push.
    pub max_seed_bytes: u64,
    /// Regular-file bytes (apparent size) of one export.
    pub max_export_bytes: u64,
    /// Bytes of `/workspace` a diff reads from the guest.
    pub max_diff_bytes: u64,
    /// Members of one archive.
    pub max_entries: u64,
}

/// Default for [`TransferLimits::max_seed_bytes`] (`PYRO_MAX_SEED_BYTES`).
pub const DEFAULT_MAX_SEED_BYTES: u64 = 4 << 30;
/// Default for [`TransferLimits::max_export_bytes`] (`PYRO_MAX_EXPORT_BYTES`).
pub const DEFAULT_MAX_EXPORT_BYTES: u64 = 4 << 30;
/// Default for [`TransferLimits::max_diff_bytes`] (`PYRO_MAX_DIFF_BYTES`).
pub const DEFAULT_MAX_DIFF_BYTES: u64 = 512 << 20;
/// Default for [`TransferLimits::max_entries`] (`PYRO_MAX_ARCHIVE_ENTRIES`).
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;

impl Default for TransferLimits {
    fn default() -> Self {
        TransferLimits {
            max_seed_bytes: DEFAULT_MAX_SEED_BYTES,
            max_export_bytes: DEFAULT_MAX_EXPORT_BYTES,
            max_diff_bytes: DEFAULT_MAX_DIFF_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl TransferLimits {
    /// The defaults, overridden by `PYRO_MAX_SEED_BYTES`, `PYRO_MAX_EXPORT_BYTES`,
    /// `PYRO_MAX_DIFF_BYTES` and `PYRO_MAX_ARCHIVE_ENTRIES` (positive integers).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// [`Self::from_env`] over any source of variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut l = Self::default();
        for (var, slot) in [
            ("PYRO_MAX_SEED_BYTES", &mut l.max_seed_bytes),
            ("PYRO_MAX_EXPORT_BYTES", &mut l.max_export_bytes),
            ("PYRO_MAX_DIFF_BYTES", &mut l.max_diff_bytes),
            ("PYRO_MAX_ARCHIVE_ENTRIES", &mut l.max_entries),
        ] {
            if let Some(v) = get(var) {
                *slot = v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| CoreError::Invalid {
                        field: "environment",
                        reason: format!("{var}={v:?} is not a positive integer"),
                    })?;
            }
        }
        Ok(l)
    }
}

/// Counts members and bytes against limits as a stream goes.
pub(super) struct Budget {
    field: &'static str,
    what: &'static str,
    setting: &'static str,
    max_bytes: u64,
    max_entries: u64,
    pub(super) stats: TarStats,
}

impl Budget {
    pub(super) fn new(
        field: &'static str,
        what: &'static str,
        setting: &'static str,
        max_bytes: u64,
        limits: &TransferLimits,
    ) -> Self {
        Budget {
            field,
            what,
            setting,
            max_bytes,
            max_entries: limits.max_entries,
            stats: TarStats::default(),
        }
    }

    pub(super) fn entry(&mut self) -> Result<()> {
        self.stats.entry_count += 1;
        if self.stats.entry_count > self.max_entries {
            return Err(invalid(
                self.field,
                format!(
                    "{} has more than {} members (PYRO_MAX_ARCHIVE_ENTRIES)",
                    self.what, self.max_entries
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn bytes(&mut self, n: u64) -> Result<()> {
        self.stats.bytes_written = self.stats.bytes_written.saturating_add(n);
        if self.stats.bytes_written > self.max_bytes {
            return Err(invalid(
                self.field,
                format!(
                    "{} holds more than {} bytes of file content ({} sets the limit)",
                    self.what, self.max_bytes, self.setting
                ),
            ));
        }
        Ok(())
    }
}
