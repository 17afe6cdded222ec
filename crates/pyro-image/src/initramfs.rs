//! The initramfs: the agent as `/init` plus the kernel modules it loads before it can see
//! the disks.
//!
//! Layout (uncompressed newc cpio, which the kernel unpacks fastest):
//!
//! ```text
//! /init                     the agent binary (0755); it does the stage-1 work itself
//! /lib/modules/<name>.ko        each module of GUEST_MODULES and NET_MODULES, uncompressed
//! /etc/pyro/modules.order       GUEST_MODULES: one module file name per line, in load order
//! /etc/pyro/modules.net.order   NET_MODULES, the same way; loaded only with `pyro.net=`
//! /dev/console              character device 5:1, so the kernel can give init a console
//! /dev /proc /sys /mnt /newroot /run   empty mount points
//! ```

use sha2::{Digest, Sha256};

use crate::cache::KernelManifest;
use crate::cpio::CpioWriter;
use crate::fsutil::hex;

/// Path of the module list inside the initramfs.
pub const MODULES_ORDER_PATH: &str = "/etc/pyro/modules.order";

/// Path of the network modules' list inside the initramfs (loaded only when the guest is
/// networked).
pub const NET_MODULES_ORDER_PATH: &str = "/etc/pyro/modules.net.order";

/// Where module files live inside the initramfs.
pub const MODULES_DIR: &str = "/lib/modules";

/// Bumped whenever the layout above changes, so cached images are rebuilt (2: the
/// separate network module list).
const LAYOUT_VERSION: u32 = 2;

/// The cache key of the initramfs for an agent (by digest) and a kernel.
pub fn key(agent_sha256: &str, kernel: &KernelManifest) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "pyro-initramfs v{LAYOUT_VERSION}\nagent {agent_sha256}\n"
    ));
    h.update(format!("vmlinux {}\n", kernel.vmlinux.sha256));
    for m in &kernel.modules {
        h.update(format!("module {} {}\n", m.name, m.artifact.sha256));
    }
    hex(&h.finalize())
}

/// Writes the initramfs to `out`: `agent` as `/init`, then `modules` (name, plain `.ko`
/// bytes) in load order, listed in [`MODULES_ORDER_PATH`], and `net_modules` the same way,
/// listed in [`NET_MODULES_ORDER_PATH`] (written, possibly empty, even when there are none).
pub fn write<W: std::io::Write>(
    out: W,
    agent: &[u8],
    modules: &[(String, Vec<u8>)],
    net_modules: &[(String, Vec<u8>)],
) -> std::io::Result<W> {
    let mut w = CpioWriter::new(out);
    for d in [
        "dev",
        "proc",
        "sys",
        "mnt",
        "newroot",
        "run",
        "lib",
        "lib/modules",
        "etc",
        "etc/pyro",
    ] {
        w.dir(d, 0o755)?;
    }
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.file("init", 0o755, agent)?;
    for (list, path) in [
        (modules, MODULES_ORDER_PATH),
        (net_modules, NET_MODULES_ORDER_PATH),
    ] {
        let mut order = String::new();
        for (name, bytes) in list {
            let file = format!("{name}.ko");
            w.file(&format!("lib/modules/{file}"), 0o644, bytes)?;
            order.push_str(&file);
            order.push('\n');
        }
        w.file(path.trim_start_matches('/'), 0o644, order.as_bytes())?;
    }
    w.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::cache::{ArtifactRef, ModuleRef, SCHEMA_VERSION};
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    fn kernel(vmlinux: &str) -> KernelManifest {
        KernelManifest {
            schema_version: SCHEMA_VERSION,
            package: "linux-image-amd64".into(),
            kernel_release: "r".into(),
            vmlinux: ArtifactRef {
                sha256: vmlinux.repeat(64),
                size_bytes: 1,
            },
            modules: vec![ModuleRef {
                name: "ext4".into(),
                artifact: ArtifactRef {
                    sha256: "c".repeat(64),
                    size_bytes: 1,
                },
            }],
            built_at: 0.0,
            build_seconds: 0.0,
            pyro_image_version: "x".into(),
        }
    }

    #[test]
    fn key_changes_with_agent_and_kernel() {
        let a = key(&"1".repeat(64), &kernel("a"));
        assert_eq!(a, key(&"1".repeat(64), &kernel("a")));
        assert_ne!(a, key(&"2".repeat(64), &kernel("a")));
        assert_ne!(a, key(&"1".repeat(64), &kernel("b")));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn initramfs_unpacks_with_the_expected_layout() {
        let modules = vec![
            ("virtio".to_owned(), b"one".to_vec()),
            ("ext4".to_owned(), b"two".to_vec()),
        ];
        let net = vec![
            ("failover".to_owned(), b"three".to_vec()),
            ("virtio_net".to_owned(), b"four".to_vec()),
        ];
        let bytes = write(Vec::new(), b"\x7fELF agent", &modules, &net).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        // Creating /dev/console needs privileges; everything else must unpack.
        let _ = child.wait().unwrap();
        let root = dir.path();
        let init = std::fs::metadata(root.join("init")).unwrap();
        assert_eq!(init.permissions().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read(root.join("init")).unwrap(), b"\x7fELF agent");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/pyro/modules.order")).unwrap(),
            "virtio.ko\next4.ko\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/pyro/modules.net.order")).unwrap(),
            "failover.ko\nvirtio_net.ko\n"
        );
        assert_eq!(
            std::fs::read(root.join("lib/modules/virtio_net.ko")).unwrap(),
            b"four"
        );
        assert_eq!(
            std::fs::read(root.join("lib/modules/ext4.ko")).unwrap(),
            b"two"
        );
        for d in ["dev", "proc", "sys", "mnt", "newroot", "run"] {
            assert!(root.join(d).is_dir(), "{d}");
        }
    }
}
