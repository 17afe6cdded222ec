//! The in-guest agent of pyro, as a library for its binary.
//!
//! The agent runs as PID 1 inside each sandbox's microVM:
//! - [`init`] is stage 1 (`/init` of the initramfs): mounts, kernel modules, disks found
//!   by label, the overlay root and the switch into it; plus clock, entropy, poweroff.
//! - [`reaper`] reaps every child and orphan and hands exit statuses to whoever spawned
//!   them: every process must be started through [`reaper::spawn`].
//! - [`exec`] runs one command: raw output streamed in chunks under backpressure, output
//!   caps, timeouts that kill the whole process tree, shell-like 126/127 codes.
//! - [`fs`] serves file operations confined to a root (`/workspace`): list, read, atomic
//!   batched writes, tar export and streaming tar import.
//! - [`limits`] runs commands in a cgroup with process, memory and CPU limits that leave
//!   the agent room to answer whatever the commands do.
//! - [`procs`] is the process table: PTY shells and services that outlive their calls.
//! - [`net`] configures `eth0`, the default route and `resolv.conf` from `pyro.net=`.
//! - [`spawn`] starts a command straight into its cgroup (`clone3`, vfork-style).
//! - [`sys`] holds the thin `unsafe` wrappers around the system calls above.

pub mod exec;
pub mod fs;
pub mod init;
pub mod limits;
pub mod net;
pub mod procs;
pub mod reaper;
pub mod server;
pub mod spawn;
pub mod sys;
pub mod transport;
