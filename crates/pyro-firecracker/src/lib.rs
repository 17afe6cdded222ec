//! Firecracker driver for pyro.
//!
//! This crate knows how to run one microVM under [Firecracker] and nothing about workspaces:
//!
//! - [`binary`] finds the `firecracker` and `jailer` executables ([`binary::locate`]) or
//!   fetches the pinned, sha256-verified v1.12.1 build into a cache
//!   ([`binary::provision`]).
//! - [`api`] is a small HTTP/1.1 client for Firecracker's API Unix socket, and [`model`]
//!   holds the request bodies it sends.
//! - [`vmm`] stages a sandbox directory (kernel, initrd, drives under fixed relative
//!   names), starts Firecracker (optionally under its jailer), configures and boots it
//!   ([`vmm::launch`]), pauses, snapshots and restores it ([`vmm::restore`]). Relative paths
//!   make one snapshot usable by many sandboxes.
//! - [`vsock`] opens a stream to a guest port through Firecracker's hybrid vsock
//!   (`CONNECT <port>\n` → `OK …\n`); pyro's QEMU relay speaks the same protocol.
//! - [`tiny_guest`] builds a few-dozen-byte guest that prints a line and resets, for tests
//!   and health checks that must work without a real kernel.
//! - [`kvm`] tells whether this host's KVM is hardware-assisted, which decides whether
//!   Firecracker is a sensible backend at all.
//!
//! [Firecracker]: https://firecracker-microvm.github.io/

pub mod api;
pub mod binary;
pub mod kvm;
pub mod model;
pub mod tiny_guest;
pub mod vmm;
pub mod vsock;

pub use api::{ApiClient, ApiError};
pub use binary::{Binaries, BinaryError, BinarySource, locate, provision};
pub use kvm::{KvmStatus, kvm_status};
pub use vmm::{
    DriveSpec, Firecracker, JailerMode, LaunchOptions, NIC_ID, NicSpec, VmSpec, VmmError,
    configure, launch, restore, stage_drives,
};
pub use vsock::VsockError;
