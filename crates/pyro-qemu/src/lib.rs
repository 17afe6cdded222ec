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
    AGENT_SOCKET, Accel, BootParams, CONSOLE_LOG, LaunchOptions, QEMU_BINARY, QEMU_ENV, QMP_SOCKET,
    Qemu, QemuSpec, RELAY_SOCKET, STDERR_LOG, build_argv, kernel_cmdline, launch, locate_qemu,
};
pub use qmp::{MigrationInfo, Qmp};
pub use relay::{RelayError, RelayOptions, run_relay, run_relay_with};
