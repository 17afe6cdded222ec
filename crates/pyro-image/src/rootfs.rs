//! Building an environment's root filesystem: mmdebstrap into a directory (or, without
//! root, a tarball), customised for pyro, then `mkfs.ext4 -d` into an image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::catalog::CatalogEntry;
use crate::debian::{self, Mode};
use crate::error::Result;
use crate::fsutil;
use crate::tools::{self, MKFS_EXT4};

/// The rootfs's filesystem label (the guest finds its disks by label).
pub const ROOTFS_LABEL: &str = "pyro-rootfs";

/// Where the agent is installed inside every rootfs.
pub const AGENT_PATH: &str = "/opt/pyro/bin/pyro-agent";

/// The working directory every environment provides.
pub const WORKSPACE_DIR: &str = "/workspace";

/// What a finished rootfs build produced.
#[derive(Debug)]
pub(crate) struct BuiltRootfs {
    /// The image (inside the build's tmp directory).
    pub image: PathBuf,
    pub bootstrap: Duration,
    pub mkfs: Duration,
    /// Bytes used by the tree that went into the image.
    pub tree_bytes: u64,
    pub image_bytes: u64,
}

/// The shell snippet run as the last customize hook (`$1` is the chroot).
fn customize_script() -> String {
    [
        "set -e",
        "chmod 0755 \"$1/opt/pyro/bin/pyro-agent\" \"$1/workspace\"",
        "printf 'pyro\\n' > \"$1/etc/hostname\"",
        "printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\tpyro\\n::1\\tlocalhost ip6-localhost ip6-loopback\\nff02::1\\tip6-allnodes\\nff02::2\\tip6-allrouters\\n' > \"$1/etc/hosts\"",
        // The host's resolver configuration has no business in the image.
        "rm -f \"$1/etc/resolv.conf\"",
        "rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin \"$1\"/var/cache/apt/archives/*.deb",
        "rm -f \"$1\"/var/cache/debconf/*-old \"$1\"/var/lib/dpkg/*-old \"$1\"/var/log/dpkg.log \"$1\"/var/log/alternatives.log \"$1\"/var/log/apt/*.log",
        // Essential packages are unpacked before dpkg's path-exclude applies.
        "rm -rf \"$1\"/usr/share/man/* \"$1\"/usr/share/info/*",
        "if [ -d \"$1/usr/share/doc\" ]; then find \"$1/usr/share/doc\" -depth -mindepth 1 ! -type d ! -name copyright -delete; fi",
        "if [ -d \"$1/usr/share/locale\" ]; then find \"$1/usr/share/locale\" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +; fi",
    ]
    .join("\n")
}

/// The mmdebstrap arguments (before suite and target) for an environment.
pub(crate) fn mmdebstrap_args(entry: &CatalogEntry, agent: &Path) -> Vec<String> {
    let mut args = vec![
        "--variant=minbase".to_owned(),
        format!("--include={}", entry.packages().join(",")),
        "--aptopt=Acquire::Languages \"none\"".to_owned(),
    ];
    for opt in [
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/locale/*",
        "path-include=/usr/share/locale/locale.alias",
    ] {
        args.push(format!("--dpkgopt={opt}"));
    }
    args.push("--customize-hook=mkdir -p \"$1/opt/pyro/bin\" \"$1/workspace\"".to_owned());
    // `upload` is done by mmdebstrap itself from outside the chroot, so it works in every
    // mode; its arguments are split like a shell's.
    args.push(format!(
        "--customize-hook=upload {} {AGENT_PATH}",
        tools::shell_quote(&agent.to_string_lossy())
    ));
    args.push(format!("--customize-hook={}", customize_script()));
    args
}

/// `du × 1.3 + 64 MiB`, rounded up to whole MiB.
pub(crate) fn image_size_mib(tree_bytes: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let bytes = tree_bytes.saturating_mul(13) / 10 + 64 * MIB;
    bytes.div_ceil(MIB)
}

/// The mkfs.ext4 arguments for a read-only root image of `size_mib`.
fn mkfs_args(source: &Path, image: &Path, size_mib: u64) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = [
        "-q",
        "-F",
        "-L",
        ROOTFS_LABEL,
        // Mounted read-only (`ro,noload`) under an overlay: no journal, no reserved blocks.
        "-O",
        "^has_journal",
        "-m",
        "0",
        // Small images would otherwise get 1 KiB blocks.
        "-b",
        "4096",
        "-i",
        "8192",
        "-d",
    ]
    .iter()
    .map(Into::into)
    .collect();
    a.push(source.into());
    a.push(image.into());
    a.push(format!("{size_mib}M").into());
    a
}

/// Runs the whole build in `work` (a private tmp directory). `on_line` gets mmdebstrap's
/// progress lines; `on_mkfs` is called once the bootstrap is done and mkfs starts.
pub(crate) fn build(
    entry: &CatalogEntry,
    agent: &Path,
    work: &Path,
    on_line: &mut dyn FnMut(&str),
    on_mkfs: &mut dyn FnMut(u64),
) -> Result<BuiltRootfs> {
    let mkfs = tools::require(MKFS_EXT4, "create ext4 images")?;
    let mode = Mode::detect();
    let target = match mode {
        Mode::Root { .. } => work.join("root"),
        Mode::Unshare => work.join("rootfs.tar"),
    };
    let t0 = Instant::now();
    let cmd = debian::command(
        mode,
        &mmdebstrap_args(entry, agent),
        entry.suite,
        &target,
        work,
    )?;
    debian::run(cmd, mode, on_line)?;
    let bootstrap = t0.elapsed();

    let tree_bytes = match mode {
        Mode::Root { .. } => fsutil::disk_usage(&target)?,
        Mode::Unshare => std::fs::metadata(&target)
            .map_err(|e| crate::error::ImageError::io("inspect", &target, e))?
            .len(),
    };
    let size_mib = image_size_mib(tree_bytes);
    on_mkfs(size_mib);
    let t1 = Instant::now();
    let image = work.join("rootfs.ext4");
    let hint = match mode {
        Mode::Root { .. } => None,
        Mode::Unshare => Some(
            "without root the image is made from a tarball, which needs mkfs.ext4 from \
             e2fsprogs 1.47.1 or newer; or run the pull as root",
        ),
    };
    tools::run(
        Command::new(&mkfs).args(mkfs_args(&target, &image, size_mib)),
        "mkfs.ext4",
        hint,
    )?;
    let mkfs_time = t1.elapsed();
    // The tree is no longer needed; free the space before the image is hashed.
    fsutil::remove_tree(&target)?;
    Ok(BuiltRootfs {
        image,
        bootstrap,
        mkfs: mkfs_time,
        tree_bytes,
        image_bytes: size_mib << 20,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn image_size_follows_the_rule() {
        assert_eq!(image_size_mib(0), 64);
        assert_eq!(image_size_mib(100 << 20), 194);
        assert_eq!(image_size_mib((100 << 20) + 1), 195);
        assert_eq!(image_size_mib(251 << 20), 391); // 326.3 + 64, rounded up
    }

    #[test]
    fn mmdebstrap_arguments_install_the_agent_safely() {
        let entry = crate::catalog::lookup("debian:12").unwrap();
        let args = mmdebstrap_args(entry, Path::new("/tmp/it's here/agent"));
        assert!(args.contains(&"--include=bash,coreutils,git,ca-certificates,python3".to_owned()));
        assert!(
            args.contains(
                &"--customize-hook=upload '/tmp/it'\\''s here/agent' /opt/pyro/bin/pyro-agent"
                    .to_owned()
            )
        );
        assert!(args.iter().any(|a| a.starts_with("--variant=minbase")));
    }

    #[test]
    fn customize_script_is_valid_shell_and_does_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "opt/pyro/bin",
            "workspace",
            "etc",
            "var/lib/apt/lists",
            "usr/share/doc/bash",
            "usr/share/locale/de",
            "usr/share/man/man1",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("opt/pyro/bin/pyro-agent"), b"agent").unwrap();
        std::fs::write(root.join("etc/resolv.conf"), b"nameserver 10.0.0.1").unwrap();
        std::fs::write(root.join("var/lib/apt/lists/x_Packages"), b"").unwrap();
        std::fs::write(root.join("usr/share/doc/bash/copyright"), b"c").unwrap();
        std::fs::write(root.join("usr/share/doc/bash/README"), b"r").unwrap();
        std::fs::write(root.join("usr/share/locale/locale.alias"), b"").unwrap();
        std::fs::write(root.join("usr/share/man/man1/bash.1.gz"), b"").unwrap();
        tools::run(
            Command::new("sh")
                .args(["-c", &customize_script(), "sh"])
                .arg(root),
            "customize",
            None,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("opt/pyro/bin/pyro-agent"), 0o755);
        assert_eq!(mode("workspace"), 0o755);
        assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"pyro\n");
        let hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap();
        assert!(hosts.contains("127.0.1.1\tpyro"));
        assert!(!root.join("etc/resolv.conf").exists());
        assert!(!root.join("var/lib/apt/lists/x_Packages").exists());
        assert!(root.join("usr/share/doc/bash/copyright").exists());
        assert!(!root.join("usr/share/doc/bash/README").exists());
        assert!(root.join("usr/share/locale/locale.alias").exists());
        assert!(!root.join("usr/share/locale/de").exists());
        assert!(!root.join("usr/share/man/man1").exists());
    }
}
