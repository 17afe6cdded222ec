//! Environments for pyro sandboxes: the catalog, building images from Debian packages, the
//! shared guest kernel, and the content-addressed cache that holds them.
//!
//! An *environment* (`debian:12`, `debian:12-base`, `debian:12-build`; see [`catalog`]) is
//! what a sandbox boots: a kernel, an initramfs and a root filesystem image.
//!
//! - **Kernel** ([`kernel`]): Debian's `linux-image-amd64`, unpacked with
//!   `mmdebstrap --variant=extract`; its bzImage payload is decompressed to an ELF `vmlinux`
//!   (Firecracker loads only ELF; QEMU boots it through the Xen PVH note, which is checked).
//!   One kernel serves every environment.
//! - **Initramfs** ([`initramfs`]): an uncompressed `newc` cpio ([`cpio`]) with the guest
//!   agent as `/init` and the virtio, ext4, overlay and vsock modules it loads. It is keyed by
//!   the agent's and kernel's digests, so a new agent costs only this small file.
//! - **Rootfs** ([`rootfs`]): `mmdebstrap --variant=minbase` with the environment's packages
//!   and the agent at `/opt/pyro/bin/pyro-agent`, then `mkfs.ext4 -d` into a read-only image
//!   labelled `pyro-rootfs`. Each sandbox adds a writable disk ([`create_upper_disk`],
//!   label `pyro-upper`) for the overlay's upper layer.
//! - **Cache** ([`Cache`]): artifacts are blobs named by sha256, described by atomically
//!   written manifests; builds run in private `tmp/` directories under `flock` locks, so
//!   concurrent and interrupted pulls are safe. See [`cache`] for the layout.
//!
//! The entry points are [`ensure_environment`] (build if needed, report [`Progress`], return
//! [`Installed`] paths and digests), [`inspect`], [`list`], [`prune`] and [`verify`]. All
//! are synchronous; async callers run them on a blocking thread.
//!
//! Building needs `mmdebstrap`, `mkfs.ext4` (e2fsprogs) and `xz` (xz-utils), network access
//! to a Debian mirror (override with `PYRO_DEBIAN_MIRROR`), and root or a working
//! unprivileged user-namespace setup for mmdebstrap's unshare mode.

pub mod cache;
pub mod catalog;
pub mod cpio;
mod debian;
mod error;
mod fsutil;
pub mod initramfs;
mod install;
pub mod kernel;
pub mod rootfs;
mod tools;
mod upper;

pub use cache::{Cache, default_cache_dir};
pub use catalog::{CatalogEntry, lookup};
pub use debian::MIRROR_ENV;
pub use error::{ImageError, Result};
pub use fsutil::FileLock;
pub use install::{
    ArtifactCheck, Digests, EnvironmentInfo, Installed, KERNEL_SUITE, Progress, PruneReport,
    TOTAL_STEPS, VerifyReport, ensure_environment, ensure_kernel, inspect, list, prune, verify,
};
pub use upper::{MAX_UPPER_MIB, MIN_UPPER_MIB, UPPER_LABEL, create_upper_disk};
