//! `pyro-host`: the low-level host helpers every other pyro crate used to write for itself.
//!
//! - [`process`]: a process's identity (pid + start time, so a reused pid is never taken
//!   for the process it replaced), and the `pre_exec` step that makes a child die with its
//!   parent (`PR_SET_PDEATHSIG`) and optionally lead a new session.
//! - [`fs`]: copying a disk image without filling its holes (reflink, else data extents
//!   only), and writing a file atomically (temporary file, fsync, rename, directory fsync).
//!
//! Depends on `libc` only, so the VMM crates, the image crate and the core can all use it.

pub mod fs;
pub mod process;
