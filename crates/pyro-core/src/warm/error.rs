//! [`SnapshotError`]: why a warm snapshot could not be provided, and how it maps onto
//! [`CoreError`].

use std::io;
use std::path::{Path, PathBuf};

use crate::error::CoreError;
use crate::lock;

/// Why a snapshot could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another process held the build lock too long.
    #[error("waiting for another build of snapshot {id}")]
    Lock {
        /// The snapshot.
        id: String,
        /// The lock error.
        #[source]
        source: lock::LockError,
    },
    /// Booting, preparing or saving the template VM failed.
    #[error("building snapshot {id} failed: {reason}")]
    Build {
        /// The snapshot.
        id: String,
        /// What went wrong (with the guest console's tail when there is one).
        reason: String,
    },
    /// A recent build of this snapshot failed; runs boot cold until the back-off ends.
    #[error(
        "snapshot {id} failed to build recently ({reason}); booting cold until {retry_after:.0}"
    )]
    RecentlyFailed {
        /// The snapshot.
        id: String,
        /// The recorded failure.
        reason: String,
        /// UNIX time after which a build is tried again.
        retry_after: f64,
    },
}

impl SnapshotError {
    pub(super) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

impl From<SnapshotError> for CoreError {
    fn from(e: SnapshotError) -> Self {
        CoreError::Boot {
            reason: error_chain(&e),
            console_tail: String::new(),
        }
    }
}

/// An error and its sources on one line.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
