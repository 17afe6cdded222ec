//! QEMU driver for pyro: runs one microVM under `qemu-system-x86_64 -M microvm` and offers
//! its guest agent to the host through the same Unix-socket interface as Firecracker's
//! hybrid vsock.
//!
//! This crate knows how to run one VM and nothing about workspaces:
//!
//! - [`launch`](mod@launch) finds the QEMU binary ([`locate_qemu`]), builds its command line
//!   ([`build_argv`], pure and unit-tested) and starts it ([`launch()`]) in a per-sandbox
//!   working directory, returning a [`Qemu`] handle. QEMU runs with that directory as its
//!   current directory so every socket it creates has a short, *relative* name
//!   ([`AGENT_SOCKET`], [`QMP_SOCKET`]); a later snapshot can then be restored into another
//!   directory unchanged. The guest's serial console goes to [`CONSOLE_LOG`].
//!   Acceleration is KVM when hardware-assisted, else TCG (see [`Accel`]).
//! - [`qmp`] is a small client for QEMU's machine protocol ([`Qmp`]): `stop`, `cont`,
//!   `query-status`, `quit`, and the migration commands snapshots are built on.
//! - Warm snapshots: [`Qemu::save_state`] pauses a machine and writes its device state
//!   (and its memory, unless that lives in a shared [`MemoryFile`]) to a file; [`launch()`]
//!   with [`LaunchOptions::incoming`] starts a new QEMU with the same command line
//!   ([`launch_argv`], which names the writable disk relative to the working directory and,
//!   with [`BootParams::without_clock`], has no boot-time clock), maps the memory file
//!   copy-on-write, loads the state from an inherited descriptor and resumes the guest. The
//!   guest agent's session then starts afresh through the [`relay`].
//! - [`relay`] owns the guest agent's virtio-serial port (QEMU's socket chardev, which
//!   serves exactly one client) and serves any number of host clients on a Unix socket
//!   ([`RELAY_SOCKET`]) that speaks Firecracker's `CONNECT <port>\n` → `OK <n>\n`
//!   handshake. Every stream a client opens is bridged to a new stream on the one serial
//!   session, so host code is identical for both backends:
//!   `pyro_firecracker::vsock::connect` then `pyro_proto::Session::client`.
//!
//! ```text
//!  host client ──CONNECT 5005──▶ relay (vsock.sock) ══ one pyro session ══▶ QEMU agent.sock
//!  host client ──CONNECT 5005──▶    │  streams bridged 1:1, flow control end to end   │
//!                                                                    virtio-serial port
//!                                                                  org.pyro.agent.0 ▶ agent
//! ```

mod error;
pub mod launch;
pub mod qmp;
pub mod relay;

pub use error::QemuError;
pub use launch::{
    AGENT_SOCKET, Accel, BootParams, CONSOLE_LOG, INCOMING_FD, LaunchOptions, MemoryFile, Nic,
    QEMU_BINARY, QEMU_ENV, QMP_SOCKET, Qemu, QemuSpec, RELAY_SOCKET, SAVE_TIMEOUT, STDERR_LOG,
    build_argv, incoming_args, kernel_cmdline, launch, launch_argv, locate_qemu, save_state_at,
};
pub use qmp::{MigrationInfo, Qmp};
pub use relay::{RelayError, RelayOptions, run_relay, run_relay_with};
