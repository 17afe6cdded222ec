//! Integration tests of `pyro-qemu`: the relay against an in-process fake of QEMU's agent
//! chardev, and QEMU itself booting the real guest (kernel, initramfs, rootfs, agent) under
//! TCG.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod guest;
mod relay;
mod util;
