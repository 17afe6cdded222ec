//! The crate's error type.

use std::io;
use std::path::PathBuf;

use crate::kernel::KernelError;

/// Everything that can go wrong while resolving, building, reading or pruning environments.
///
/// Variants carry the facts (paths, names, programs); the underlying cause, where there is
/// one, is the error's `source()` and is not repeated in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The name is not in the catalog.
    #[error("unknown environment `{name}`; valid environments: {}", known.join(", "))]
    UnknownEnvironment {
        /// The name that was asked for.
        name: String,
        /// Every valid name, in catalog order.
        known: Vec<String>,
    },

    /// No cache directory could be derived from the environment.
    #[error(
        "cannot choose a cache directory: none of PYRO_CACHE_DIR, PYRO_ENVIRONMENT_CACHE_DIR, \
         XDG_CACHE_HOME or HOME is set to an absolute path"
    )]
    NoCacheDir,

    /// A filesystem operation failed.
    #[error("cannot {action} `{path}`")]
    Io {
        /// What was being done, as a verb phrase ("create directory", "read manifest").
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },

    /// A program that building needs is not installed.
    #[error(
        "`{tool}` is needed to {purpose} but was not found in PATH; \
         install the Debian package `{package}` (apt-get install {package})"
    )]
    MissingTool {
        /// The program's name.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
        /// What it is needed for.
        purpose: &'static str,
    },

    /// A program could not be started.
    #[error("cannot run `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// The operating system's error.
        source: io::Error,
    },

    /// A program ran and failed.
    #[error(
        "`{program}` failed ({status}){}{}",
        fmt_tail(stderr_tail),
        fmt_hint(hint)
    )]
    CommandFailed {
        /// The program and the most telling of its arguments.
        program: String,
        /// How it ended ("exit status 1", "signal 9").
        status: String,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
        /// What the user can do about it, if we know.
        hint: Option<String>,
    },

    /// A manifest exists but is not valid JSON of the expected shape.
    #[error("invalid manifest `{path}`")]
    ManifestParse {
        /// The manifest's path.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },

    /// A manifest was written by an incompatible version of this crate.
    #[error("manifest `{path}` has schema version {found}; this build reads version {expected}")]
    ManifestSchema {
        /// The manifest's path.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The version this build writes and reads.
        expected: u32,
    },

    /// The environment has not been built into this cache.
    #[error("environment `{name}` is not installed in `{cache_dir}`; run `pyro env pull {name}`")]
    NotInstalled {
        /// The environment's name.
        name: String,
        /// The cache that was looked in.
        cache_dir: PathBuf,
    },

    /// The kernel image could not be turned into a bootable ELF `vmlinux`.
    #[error("kernel image `{path}` is unusable")]
    Kernel {
        /// The bzImage or vmlinux being examined.
        path: PathBuf,
        /// What is wrong with it.
        source: KernelError,
    },

    /// The unpacked kernel package does not have the expected layout.
    #[error("unpacked kernel package at `{dir}`: {reason}")]
    KernelLayout {
        /// The directory the package was unpacked into.
        dir: PathBuf,
        /// What was missing or ambiguous.
        reason: String,
    },

    /// A kernel module the guest needs is not in the kernel package.
    #[error("kernel module `{module}` not found under `{dir}`")]
    ModuleMissing {
        /// The module's name.
        module: String,
        /// The module tree searched.
        dir: PathBuf,
    },

    /// The agent binary given by the caller is not a readable regular file.
    #[error("agent binary `{path}` is not a regular file")]
    AgentNotFile {
        /// The path given.
        path: PathBuf,
    },

    /// A requested disk size is out of range.
    #[error("disk size {size_mib} MiB is out of range ({min_mib}..={max_mib} MiB)")]
    InvalidSize {
        /// The size asked for.
        size_mib: u64,
        /// The smallest size accepted.
        min_mib: u64,
        /// The largest size accepted.
        max_mib: u64,
    },

    /// A directory to be deleted still has a filesystem mounted inside it.
    #[error("refusing to delete `{path}`: `{mount_point}` is a mount point inside it")]
    MountedInside {
        /// The tree that was to be deleted.
        path: PathBuf,
        /// The mount point found inside it.
        mount_point: PathBuf,
    },
}

impl ImageError {
    /// Builds an [`ImageError::Io`] from an action, a path and the OS error.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ImageError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

fn fmt_tail(tail: &str) -> String {
    let tail = tail.trim();
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n{tail}")
    }
}

fn fmt_hint(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!("\nhint: {h}"),
        None => String::new(),
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
