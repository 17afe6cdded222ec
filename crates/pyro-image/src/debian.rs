//! Running `mmdebstrap`: privilege mode, mirror, and forwarding its progress lines.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::error::Result;
use crate::fsutil;
use crate::tools::{self, MMDEBSTRAP, NEWUIDMAP, TAR, UNSHARE};

/// Environment variable naming a Debian mirror to use instead of mmdebstrap's default
/// (`http://deb.debian.org/debian`), e.g. a local apt cache.
pub const MIRROR_ENV: &str = "PYRO_DEBIAN_MIRROR";

/// What a failed unprivileged build needs.
pub(crate) const UNSHARE_HINT: &str = "building images without root uses mmdebstrap's unshare \
mode: install `uidmap`, give your user ranges in /etc/subuid and /etc/subgid, and allow \
unprivileged user namespaces; or run the pull as root";

/// Whether `unshare --mount` works here (root in a context that may create namespaces).
fn private_mount_ns_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        tools::which(UNSHARE.name).is_some_and(|u| {
            Command::new(u)
                .args(["--mount", "--propagation", "private", "true"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    })
}

/// How mmdebstrap will run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// As root (mmdebstrap's default), inside a private mount namespace when possible so
    /// the bind mounts it makes in the chroot vanish with it even if it is killed.
    Root { private_mounts: bool },
    /// Unprivileged, in a user namespace (`--mode=unshare`).
    Unshare,
}

impl Mode {
    pub(crate) fn detect() -> Mode {
        if tools::is_root() {
            Mode::Root {
                private_mounts: private_mount_ns_available(),
            }
        } else {
            Mode::Unshare
        }
    }

    pub(crate) fn hint(self) -> Option<&'static str> {
        match self {
            Mode::Root { .. } => None,
            Mode::Unshare => Some(UNSHARE_HINT),
        }
    }
}

/// Builds the mmdebstrap command line: `args` (variant, includes, hooks…) then suite,
/// target and mirror. Its temporary files go to `tmp`.
pub(crate) fn command(
    mode: Mode,
    args: &[String],
    suite: &str,
    target: &Path,
    tmp: &Path,
) -> Result<Command> {
    let mmdebstrap = tools::require(MMDEBSTRAP, "build images from Debian packages")?;
    let mut cmd = match mode {
        Mode::Root {
            private_mounts: true,
        } => {
            let mut c = Command::new(tools::require(UNSHARE, "isolate mmdebstrap's mounts")?);
            c.args(["--mount", "--propagation", "private", "--"]);
            c.arg(&mmdebstrap);
            c
        }
        Mode::Root {
            private_mounts: false,
        } => Command::new(&mmdebstrap),
        Mode::Unshare => {
            tools::require(NEWUIDMAP, "build images without root")?;
            let mut c = Command::new(&mmdebstrap);
            c.arg("--mode=unshare");
            c
        }
    };
    cmd.args(args).arg(suite).arg(target);
    if let Some(mirror) = std::env::var_os(MIRROR_ENV).filter(|m| !m.is_empty()) {
        cmd.arg(mirror);
    }
    cmd.env("TMPDIR", tmp);
    cmd.env("PATH", system_first_path());
    Ok(cmd)
}

/// `PATH` with the system directories first. mmdebstrap's helpers are Debian tools (its
/// path filter runs `env python3`): a `python3` from pyenv, a virtualenv or conda earlier in
/// `PATH` made the bootstrap of `debian:12` 5 s slower here (28 s instead of 23 s), and a
/// foreign interpreter could lack what they need.
fn system_first_path() -> std::ffi::OsString {
    let system = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(std::path::PathBuf::from);
    let rest = std::env::var_os("PATH").unwrap_or_default();
    let rest = std::env::split_paths(&rest).filter(|p| !system.contains(p));
    std::env::join_paths(system.iter().cloned().chain(rest)).unwrap_or_else(|_| {
        std::ffi::OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    })
}

/// Runs mmdebstrap, passing each informative stderr line (prefix `I: ` stripped) to
/// `on_line`.
pub(crate) fn run(mut cmd: Command, mode: Mode, on_line: &mut dyn FnMut(&str)) -> Result<()> {
    tools::run_streaming(&mut cmd, "mmdebstrap", mode.hint(), &mut |line| {
        let line = line.strip_prefix("I: ").unwrap_or(line).trim();
        if !line.is_empty() {
            on_line(line);
        }
    })
}

/// Unpacks a tarball mmdebstrap wrote into `dir` as the current user (device nodes under
/// `./dev` skipped, ownership not restored).
pub(crate) fn unpack_tar(tar: &Path, dir: &Path) -> Result<()> {
    fsutil::create_dir_all(dir)?;
    let program = tools::require(TAR, "unpack the kernel package")?;
    tools::run(
        Command::new(program)
            .args(["-x", "--no-same-owner", "--exclude=./dev", "-f"])
            .arg(tar)
            .arg("-C")
            .arg(dir),
        "tar -x",
        None,
    )
    .map(drop)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn system_directories_come_first_in_path() {
        let p = system_first_path();
        let dirs: Vec<_> = std::env::split_paths(&p).collect();
        assert_eq!(
            dirs[..4],
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(std::path::PathBuf::from)
        );
        assert_eq!(
            dirs.iter().filter(|d| d.as_os_str() == "/usr/bin").count(),
            1
        );
    }

    #[test]
    fn tarballs_unpack_without_their_device_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("boot")).unwrap();
        std::fs::create_dir_all(src.join("dev")).unwrap();
        std::fs::write(src.join("boot/vmlinuz-1"), b"k").unwrap();
        std::fs::write(src.join("dev/fake"), b"d").unwrap();
        let tar = dir.path().join("t.tar");
        tools::run(
            Command::new("tar")
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&src)
                .arg("."),
            "tar -c",
            None,
        )
        .unwrap();
        let out = dir.path().join("out");
        unpack_tar(&tar, &out).unwrap();
        assert_eq!(std::fs::read(out.join("boot/vmlinuz-1")).unwrap(), b"k");
        assert!(!out.join("dev").exists());
    }
}
