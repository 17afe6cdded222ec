//! Launching, configuring, snapshotting and restoring Firecracker processes.
//!
//! Each sandbox has its own working directory. Everything the VMM touches is placed in it
//! under fixed relative names ([`KERNEL_FILE`], [`drive_file_name`], [`VSOCK_SOCKET`], …),
//! and the process runs with that directory as its working directory (or, under the jailer,
//! as its chroot). The paths Firecracker records in a snapshot are therefore relative, and
//! one snapshot can be restored in many sandboxes. Kernel, initrd and read-only drives are
//! hard-linked in (copied when they live on another filesystem); a writable drive is always
//! used in place through a hard link and never copied, so writes land in the caller's file.
//!
//! [`launch`] = spawn + wait for the API socket + [`configure`]; [`restore`] = spawn + wait +
//! `PUT /snapshot/load`.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::api::{ApiClient, ApiError};
use crate::binary::Binaries;
use crate::model::{
    ActionType, BootSource, Drive, InstanceAction, MachineConfig, MemBackend, MemBackendType,
    NetworkInterface, SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmRunState, VmState,
    Vsock,
};

/// Kernel file name inside the sandbox root.
pub const KERNEL_FILE: &str = "vmlinux";
/// Initrd file name inside the sandbox root.
pub const INITRD_FILE: &str = "initrd";
/// API socket name inside the sandbox root.
pub const API_SOCKET: &str = "firecracker.sock";
/// Hybrid-vsock socket name inside the sandbox root (baked into snapshots).
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// Firecracker's own log inside the sandbox root.
pub const LOG_FILE: &str = "firecracker.log";
/// Guest serial console (Firecracker's stdout and stderr), in the working directory.
pub const CONSOLE_FILE: &str = "console.log";

/// How long [`launch`] and [`restore`] wait for the API socket.
const SOCKET_WAIT: Duration = Duration::from_secs(5);
/// Poll interval while waiting for the API socket.
const SOCKET_POLL: Duration = Duration::from_millis(1);
/// Time limit for snapshot creation and loading (memory files can be large).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Firecracker's logging arguments (paths relative to its working directory).
const FC_LOG_ARGS: [&str; 4] = ["--log-path", LOG_FILE, "--level", "Info"];
/// How much of a log file goes into an error.
const TAIL_BYTES: u64 = 2048;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The [`VmSpec`] is not acceptable to Firecracker.
    #[error("invalid VM spec: {reason}")]
    InvalidSpec {
        /// What is wrong.
        reason: String,
    },
    /// The working directory is missing or not a directory.
    #[error("working directory {} is unusable", path.display())]
    Workdir {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// [`JailerMode::Always`] was asked for, but no jailer binary is known.
    #[error("the jailer was required but no jailer binary was found")]
    JailerUnavailable,
    /// `PYRO_JAILER_UID`/`PYRO_JAILER_GID` is not a number.
    #[error("${var}={value:?} is not a numeric id")]
    JailerId {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A path cannot be passed to Firecracker's JSON API.
    #[error("path {} is not valid UTF-8", path.display())]
    NonUtf8Path {
        /// The path.
        path: PathBuf,
    },
    /// A writable drive lives on another filesystem, so it cannot be hard-linked in place.
    #[error(
        "writable drive {drive:?} ({}) cannot be hard-linked into {} (writable drives are never copied)",
        path.display(), root.display()
    )]
    WritableDriveNotLinkable {
        /// Drive id.
        drive: String,
        /// The drive file.
        path: PathBuf,
        /// The sandbox root it had to be linked into.
        root: PathBuf,
        /// Why linking failed.
        #[source]
        source: std::io::Error,
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
    /// The VMM process could not be started.
    #[error("cannot start {}", program.display())]
    Spawn {
        /// The executable.
        program: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited before its API socket appeared.
    #[error(
        "firecracker exited ({status}) before opening its API socket\n--- console ---\n{console_tail}\n--- firecracker log ---\n{log_tail}"
    )]
    ExitedEarly {
        /// How it exited.
        status: ExitStatus,
        /// Tail of the console log.
        console_tail: String,
        /// Tail of Firecracker's log.
        log_tail: String,
    },
    /// The API socket did not appear in time.
    #[error(
        "firecracker's API socket {} did not appear within {timeout:?}\n--- firecracker log ---\n{log_tail}",
        socket.display()
    )]
    SocketTimeout {
        /// The socket.
        socket: PathBuf,
        /// The limit.
        timeout: Duration,
        /// Tail of Firecracker's log.
        log_tail: String,
    },
    /// An API call failed.
    #[error("firecracker API step {step:?} failed")]
    Api {
        /// What was being configured.
        step: &'static str,
        /// Underlying error.
        #[source]
        source: ApiError,
    },
    /// Waiting for or signalling the process failed.
    #[error("cannot {action} firecracker (pid {pid})")]
    Process {
        /// What was being done.
        action: &'static str,
        /// The process.
        pid: u32,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// One block device of a [`VmSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// Firecracker drive id: ASCII letters, digits and `_`, at most 64.
    pub id: String,
    /// Backing file on the host.
    pub path: PathBuf,
    /// Read-only drives may be copied into the sandbox; writable ones are hard-linked only.
    pub read_only: bool,
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Uncompressed ELF kernel (`vmlinux`).
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub boot_args: String,
    /// Block devices in attachment order (`/dev/vda`, `/dev/vdb`, …); none is the root device.
    pub drives: Vec<DriveSpec>,
    /// vCPUs: 1 or an even number up to 32.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Guest CID of a hybrid vsock device (at [`VSOCK_SOCKET`]), if any.
    pub vsock_cid: Option<u32>,
    /// A network card on a TAP (networked sandboxes), if any.
    pub nic: Option<NicSpec>,
}

/// A virtio-net card on a persistent TAP that Firecracker opens by name: the process must
/// run in the network namespace that holds it ([`LaunchOptions::netns`]). Its device is
/// `eth0`; a snapshot records the TAP's name, so every restore needs a TAP of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// The TAP's name (at most 15 bytes, as Linux allows).
    pub tap: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

impl NicSpec {
    /// The MAC as Firecracker writes it (`02:70:79:00:00:01`).
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The id of the one network interface pyro gives a guest.
pub const NIC_ID: &str = "eth0";

/// Whether to run Firecracker under its jailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JailerMode {
    /// Jailer when running as root and a jailer binary is known.
    #[default]
    Auto,
    /// Never.
    Never,
    /// Always; fails when no jailer binary is known.
    Always,
}

/// How to start a Firecracker process.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The binaries to run.
    pub binaries: Binaries,
    /// The sandbox's own directory; must exist.
    pub workdir: PathBuf,
    /// Jailer policy.
    pub jailer: JailerMode,
    /// Send SIGKILL to the VMM when the spawning thread exits (`PR_SET_PDEATHSIG`). Note the
    /// kernel ties this to the *thread* that forked, and clears it when the jailer switches
    /// to a non-root uid.
    pub die_with_parent: bool,
    /// Start the VMM in a new session (`setsid`) so it outlives the caller's terminal.
    pub new_session: bool,
    /// Run the VMM inside this network namespace (a `/run/netns/NAME` file), where its
    /// [`NicSpec`]'s TAP lives: the jailer's `--netns`, or `setns` between fork and exec
    /// without it. `None`: the caller's namespace.
    pub netns: Option<PathBuf>,
}

impl LaunchOptions {
    /// The directory where Firecracker resolves the sandbox's relative paths: the working
    /// directory, or the chroot under `<workdir>/jail` when jailed.
    pub fn root_dir(&self) -> Result<PathBuf, VmmError> {
        Ok(self.layout()?.root)
    }

    fn layout(&self) -> Result<Layout, VmmError> {
        let meta = std::fs::metadata(&self.workdir).map_err(|source| VmmError::Workdir {
            path: self.workdir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(VmmError::Workdir {
                path: self.workdir.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
            });
        }
        let workdir = std::fs::canonicalize(&self.workdir).map_err(|source| VmmError::Workdir {
            path: self.workdir.clone(),
            source,
        })?;
        let jailer = match (self.jailer, &self.binaries.jailer) {
            (JailerMode::Never, _) => None,
            (JailerMode::Always, None) => return Err(VmmError::JailerUnavailable),
            (JailerMode::Always, Some(j)) => Some(j.clone()),
            // SAFETY: geteuid has no preconditions and cannot fail.
            (JailerMode::Auto, Some(j)) if unsafe { libc::geteuid() } == 0 => Some(j.clone()),
            (JailerMode::Auto, _) => None,
        };
        let Some(jailer) = jailer else {
            return Ok(Layout {
                root: workdir.clone(),
                workdir,
                jail: None,
            });
        };
        let id = jail_id(&workdir);
        let base = workdir.join("jail");
        let root = base.join("firecracker").join(&id).join("root");
        Ok(Layout {
            workdir,
            root,
            jail: Some(Jail {
                jailer,
                id,
                base,
                uid: id_from_env("PYRO_JAILER_UID")?,
                gid: id_from_env("PYRO_JAILER_GID")?,
            }),
        })
    }
}

/// Resolved locations of one sandbox.
#[derive(Debug, Clone)]
struct Layout {
    workdir: PathBuf,
    root: PathBuf,
    jail: Option<Jail>,
}

#[derive(Debug, Clone)]
struct Jail {
    jailer: PathBuf,
    id: String,
    base: PathBuf,
    uid: u32,
    gid: u32,
}

/// A stable jail id for a working directory (the jailer allows letters, digits and `-`).
fn jail_id(workdir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(workdir.as_os_str().as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("pyro-{hex}")
}

fn id_from_env(var: &'static str) -> Result<u32, VmmError> {
    match std::env::var(var) {
        Ok(v) if v.trim().is_empty() => Ok(0),
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| VmmError::JailerId { var, value: v }),
        Err(std::env::VarError::NotPresent) => Ok(0),
        Err(std::env::VarError::NotUnicode(v)) => Err(VmmError::JailerId {
            var,
            value: v.to_string_lossy().into_owned(),
        }),
    }
}

/// The relative file name of drive `id` inside the sandbox root.
pub fn drive_file_name(id: &str) -> String {
    format!("drive-{id}.img")
}

fn validate(spec: &VmSpec) -> Result<(), VmmError> {
    let invalid = |reason: String| Err(VmmError::InvalidSpec { reason });
    if spec.vcpu_count == 0
        || spec.vcpu_count > 32
        || (spec.vcpu_count > 1 && spec.vcpu_count % 2 == 1)
    {
        return invalid(format!(
            "vcpu_count {} (must be 1 or an even number up to 32)",
            spec.vcpu_count
        ));
    }
    if spec.mem_mib == 0 {
        return invalid("mem_mib must be positive".into());
    }
    if let Some(nic) = &spec.nic {
        if nic.tap.is_empty()
            || nic.tap.len() > 15
            || !nic
                .tap
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid(format!(
                "TAP name {:?} (letters, digits, '-' and '_', 1 to 15)",
                nic.tap
            ));
        }
        if nic.mac[0] & 1 == 1 {
            return invalid(format!("MAC {} is a multicast address", nic.mac_string()));
        }
    }
    if let Some(cid) = spec.vsock_cid
        && cid < 3
    {
        return invalid(format!("vsock guest CID {cid} (must be 3 or more)"));
    }
    let mut seen = std::collections::HashSet::new();
    for d in &spec.drives {
        if d.id.is_empty()
            || d.id.len() > 64
            || !d.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return invalid(format!(
                "drive id {:?} (letters, digits and '_', 1 to 64)",
                d.id
            ));
        }
        if !seen.insert(d.id.as_str()) {
            return invalid(format!("duplicate drive id {:?}", d.id));
        }
    }
    Ok(())
}

/// Links (or, when `allow_copy`, copies) `src` to `root/name`; an existing `root/name` that
/// is already the same file is kept.
fn place(src: &Path, root: &Path, name: &str, allow_copy: bool) -> std::io::Result<PathBuf> {
    let dst = root.join(name);
    let src_meta = std::fs::metadata(src)?;
    if let Ok(dst_meta) = std::fs::symlink_metadata(&dst) {
        if dst_meta.dev() == src_meta.dev() && dst_meta.ino() == src_meta.ino() {
            return Ok(dst);
        }
        std::fs::remove_file(&dst)?;
    }
    match std::fs::hard_link(src, &dst) {
        Ok(()) => Ok(dst),
        Err(e) if !allow_copy => Err(e),
        Err(_) => {
            let tmp = root.join(format!(".{name}.tmp"));
            let copied = std::fs::copy(src, &tmp).and_then(|_| std::fs::rename(&tmp, &dst));
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            Ok(dst)
        }
    }
}

fn place_file(src: &Path, root: &Path, name: &str) -> Result<PathBuf, VmmError> {
    place(src, root, name, true).map_err(|source| VmmError::Io {
        action: "cannot place",
        path: src.to_owned(),
        source,
    })
}

fn place_drive(root: &Path, drive: &DriveSpec, owner: Option<(u32, u32)>) -> Result<(), VmmError> {
    let name = drive_file_name(&drive.id);
    let dst = place(&drive.path, root, &name, drive.read_only).map_err(|source| {
        if drive.read_only || !drive.path.exists() {
            VmmError::Io {
                action: "cannot place drive",
                path: drive.path.clone(),
                source,
            }
        } else {
            VmmError::WritableDriveNotLinkable {
                drive: drive.id.clone(),
                path: drive.path.clone(),
                root: root.to_owned(),
                source,
            }
        }
    })?;
    if let (false, Some((uid, gid))) = (drive.read_only, owner) {
        std::os::unix::fs::chown(&dst, Some(uid), Some(gid)).map_err(|source| VmmError::Io {
            action: "cannot chown",
            path: dst.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Places `drives` into the sandbox root of `opts` under [`drive_file_name`], as
/// [`launch`] does. Call it before [`restore`] when the snapshot has drives: their paths
/// are recorded relative in the snapshot and must exist in the new sandbox.
pub fn stage_drives(opts: &LaunchOptions, drives: &[DriveSpec]) -> Result<(), VmmError> {
    let layout = opts.layout()?;
    prepare_root(&layout)?;
    let owner = layout.jail.as_ref().map(|j| (j.uid, j.gid));
    drives
        .iter()
        .try_for_each(|d| place_drive(&layout.root, d, owner))
}

fn prepare_root(layout: &Layout) -> Result<(), VmmError> {
    std::fs::create_dir_all(&layout.root).map_err(|source| VmmError::Io {
        action: "cannot create",
        path: layout.root.clone(),
        source,
    })
}

/// Stages files and starts a Firecracker process, waiting for its API socket.
async fn spawn(layout: &Layout, opts: &LaunchOptions) -> Result<Firecracker, VmmError> {
    prepare_root(layout)?;
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| VmmError::Io {
            action,
            path,
            source,
        }
    };
    // Stale sockets from an earlier process in the same directory would make Firecracker
    // fail to bind (the API socket) or be baked-in leftovers (the vsock socket).
    for name in [API_SOCKET, VSOCK_SOCKET] {
        let p = layout.root.join(name);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("cannot remove stale", &p)(e));
            }
            _ => {}
        }
    }
    // Firecracker opens its log file without creating it.
    let log = layout.root.join(LOG_FILE);
    std::fs::File::create(&log).map_err(io("cannot create", &log))?;
    if let Some(j) = &layout.jail {
        std::os::unix::fs::chown(&log, Some(j.uid), Some(j.gid))
            .map_err(io("cannot chown", &log))?;
    }
    let console_path = layout.workdir.join(CONSOLE_FILE);
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&console_path)
        .map_err(io("cannot open", &console_path))?;
    let console_err = console
        .try_clone()
        .map_err(io("cannot dup", &console_path))?;

    // The process starts in the sandbox root, so relative binary paths must be resolved.
    let absolute = |p: &Path| std::fs::canonicalize(p).map_err(io("cannot resolve", p));
    let firecracker = absolute(&opts.binaries.firecracker)?;
    let (program, mut cmd) = match &layout.jail {
        None => {
            let mut cmd = Command::new(&firecracker);
            cmd.args(FC_LOG_ARGS).arg("--api-sock").arg(API_SOCKET);
            (firecracker, cmd)
        }
        Some(j) => {
            let jailer = absolute(&j.jailer)?;
            let mut cmd = Command::new(&jailer);
            cmd.arg("--id")
                .arg(&j.id)
                .arg("--exec-file")
                .arg(&firecracker)
                .arg("--uid")
                .arg(j.uid.to_string())
                .arg("--gid")
                .arg(j.gid.to_string())
                .arg("--chroot-base-dir")
                .arg(&j.base);
            if let Some(ns) = &opts.netns {
                cmd.arg("--netns").arg(ns);
            }
            cmd.arg("--")
                .args(FC_LOG_ARGS)
                .arg("--api-sock")
                .arg(format!("/{API_SOCKET}"));
            (jailer, cmd)
        }
    };
    cmd.current_dir(&layout.root)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err)
        .kill_on_drop(false);
    let setup = pyro_host::process::ChildSetup {
        die_with_parent: opts.die_with_parent,
        new_session: opts.new_session,
    };
    // Without the jailer the child enters the network namespace itself; the descriptor is
    // opened here (close-on-exec) and dropped once the child runs.
    let netns = match (&layout.jail, &opts.netns) {
        (None, Some(path)) => Some(std::fs::File::open(path).map_err(io("cannot open", path))?),
        _ => None,
    };
    let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let mut hook = setup.hook();
    // SAFETY: the hook only makes async-signal-safe calls and allocates nothing
    // (`pyro_host::process::ChildSetup`); setns(2) is a plain system call.
    unsafe {
        cmd.pre_exec(move || {
            hook()?;
            if let Some(fd) = netns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| VmmError::Spawn {
        program: program.clone(),
        source,
    })?;
    drop(netns);
    let pid = child.id().unwrap_or_default();
    let socket = layout.root.join(API_SOCKET);
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|source| VmmError::Process {
            action: "poll",
            pid,
            source,
        })? {
            return Err(VmmError::ExitedEarly {
                status,
                console_tail: tail(&console_path),
                log_tail: tail(&log),
            });
        }
        if socket.exists() && tokio::net::UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        if started.elapsed() >= SOCKET_WAIT {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(VmmError::SocketTimeout {
                socket,
                timeout: SOCKET_WAIT,
                log_tail: tail(&log),
            });
        }
        tokio::time::sleep(SOCKET_POLL).await;
    }
    Ok(Firecracker {
        child,
        pid,
        api: ApiClient::new(socket),
        workdir: layout.workdir.clone(),
        root: layout.root.clone(),
        jailed: layout.jail.is_some(),
    })
}

/// The last [`TAIL_BYTES`] of a file, lossily decoded ("" when unreadable).
fn tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_owned()
}

/// Starts Firecracker for `spec` in `opts.workdir` and boots the guest.
///
/// Stages kernel, initrd and drives into the sandbox root, spawns the VMM (under the jailer
/// per `opts.jailer`), waits up to 5 s for the API socket, then [`configure`]s and starts the
/// machine. On any failure after the spawn the process is killed.
pub async fn launch(spec: &VmSpec, opts: &LaunchOptions) -> Result<Firecracker, VmmError> {
    validate(spec)?;
    let layout = opts.layout()?;
    prepare_root(&layout)?;
    place_file(&spec.kernel, &layout.root, KERNEL_FILE)?;
    if let Some(initrd) = &spec.initrd {
        place_file(initrd, &layout.root, INITRD_FILE)?;
    }
    let owner = layout.jail.as_ref().map(|j| (j.uid, j.gid));
    for d in &spec.drives {
        place_drive(&layout.root, d, owner)?;
    }
    let mut fc = spawn(&layout, opts).await?;
    if let Err(e) = configure(&fc.api, spec).await {
        let _ = fc.kill().await;
        return Err(e);
    }
    Ok(fc)
}

/// Sends the boot configuration for `spec` and starts the instance: `PUT /machine-config`,
/// `/boot-source`, `/drives/{id}` for each drive, `/vsock` (if any), then `/actions`
/// `InstanceStart`. All paths are the sandbox-relative names.
pub async fn configure(api: &ApiClient, spec: &VmSpec) -> Result<(), VmmError> {
    validate(spec)?;
    let step = |step: &'static str| move |source| VmmError::Api { step, source };
    api.put(
        "/machine-config",
        &MachineConfig {
            vcpu_count: spec.vcpu_count,
            mem_size_mib: spec.mem_mib,
            smt: Some(false),
        },
    )
    .await
    .map_err(step("machine-config"))?;
    api.put(
        "/boot-source",
        &BootSource {
            kernel_image_path: KERNEL_FILE.to_owned(),
            initrd_path: spec.initrd.as_ref().map(|_| INITRD_FILE.to_owned()),
            boot_args: spec.boot_args.clone(),
        },
    )
    .await
    .map_err(step("boot-source"))?;
    for d in &spec.drives {
        api.put(
            &format!("/drives/{}", d.id),
            &Drive {
                drive_id: d.id.clone(),
                path_on_host: drive_file_name(&d.id),
                is_root_device: false,
                is_read_only: d.read_only,
            },
        )
        .await
        .map_err(step("drives"))?;
    }
    if let Some(cid) = spec.vsock_cid {
        api.put(
            "/vsock",
            &Vsock {
                guest_cid: cid,
                uds_path: VSOCK_SOCKET.to_owned(),
            },
        )
        .await
        .map_err(step("vsock"))?;
    }
    if let Some(nic) = &spec.nic {
        api.put(
            &format!("/network-interfaces/{NIC_ID}"),
            &NetworkInterface {
                iface_id: NIC_ID.to_owned(),
                guest_mac: Some(nic.mac_string()),
                host_dev_name: nic.tap.clone(),
            },
        )
        .await
        .map_err(step("network-interfaces"))?;
    }
    api.put(
        "/actions",
        &InstanceAction {
            action_type: ActionType::InstanceStart,
        },
    )
    .await
    .map_err(step("InstanceStart"))
}

/// Starts a new Firecracker process in `opts.workdir` and loads a full snapshot into it,
/// resumed.
///
/// Drives recorded in the snapshot must already be in the sandbox root (see
/// [`stage_drives`]). A stale vsock socket is removed first: its relative path is baked into
/// the snapshot and Firecracker binds it again. Under the jailer the state and memory files
/// are linked (or copied) into the chroot.
pub async fn restore(
    snapshot_state: &Path,
    mem: &Path,
    opts: &LaunchOptions,
) -> Result<Firecracker, VmmError> {
    let layout = opts.layout()?;
    prepare_root(&layout)?;
    let (state_arg, mem_arg) = if layout.jail.is_some() {
        place_file(snapshot_state, &layout.root, "snapshot.state")?;
        place_file(mem, &layout.root, "snapshot.mem")?;
        ("snapshot.state".to_owned(), "snapshot.mem".to_owned())
    } else {
        let abs = |p: &Path| {
            std::fs::canonicalize(p)
                .map_err(|source| VmmError::Io {
                    action: "cannot resolve",
                    path: p.to_owned(),
                    source,
                })
                .and_then(|p| utf8(&p))
        };
        (abs(snapshot_state)?, abs(mem)?)
    };
    let mut fc = spawn(&layout, opts).await?;
    let params = SnapshotLoadParams {
        snapshot_path: state_arg,
        mem_backend: MemBackend {
            backend_type: MemBackendType::File,
            backend_path: mem_arg,
        },
        enable_diff_snapshots: false,
        resume_vm: true,
    };
    let api = fc.api.clone().with_timeout(SNAPSHOT_TIMEOUT);
    if let Err(source) = api.put("/snapshot/load", &params).await {
        let _ = fc.kill().await;
        return Err(VmmError::Api {
            step: "snapshot/load",
            source,
        });
    }
    Ok(fc)
}

fn utf8(p: &Path) -> Result<String, VmmError> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| VmmError::NonUtf8Path { path: p.to_owned() })
}

/// A running (or exited, not yet reaped) Firecracker process.
///
/// Dropping it neither kills nor waits for the process; call [`Firecracker::kill`].
#[derive(Debug)]
pub struct Firecracker {
    child: Child,
    pid: u32,
    api: ApiClient,
    workdir: PathBuf,
    root: PathBuf,
    jailed: bool,
}

impl Firecracker {
    /// The VMM's process id (the jailer execs Firecracker in place, so the same when jailed).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Client for the VMM's API socket.
    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// The sandbox's working directory.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Where the VMM resolves relative paths (the chroot when jailed).
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// Whether the process runs under the jailer.
    pub fn jailed(&self) -> bool {
        self.jailed
    }

    /// Absolute host path of the hybrid-vsock Unix socket.
    pub fn vsock_path(&self) -> PathBuf {
        self.root.join(VSOCK_SOCKET)
    }

    /// The guest console log.
    pub fn console_path(&self) -> PathBuf {
        self.workdir.join(CONSOLE_FILE)
    }

    /// Firecracker's own log.
    pub fn log_path(&self) -> PathBuf {
        self.root.join(LOG_FILE)
    }

    /// Pauses the vCPUs (`PATCH /vm`).
    pub async fn pause(&self) -> Result<(), VmmError> {
        self.set_state(VmRunState::Paused, "pause").await
    }

    /// Resumes the vCPUs (`PATCH /vm`).
    pub async fn resume(&self) -> Result<(), VmmError> {
        self.set_state(VmRunState::Resumed, "resume").await
    }

    async fn set_state(&self, state: VmRunState, step: &'static str) -> Result<(), VmmError> {
        self.api
            .patch("/vm", &VmState { state })
            .await
            .map_err(|source| VmmError::Api { step, source })
    }

    /// Takes a full snapshot of the paused VM. Relative paths resolve in [`Self::root_dir`];
    /// absolute ones must be visible to the process (inside the chroot when jailed).
    pub async fn snapshot_create(&self, state: &Path, mem: &Path) -> Result<(), VmmError> {
        let params = SnapshotCreateParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: utf8(state)?,
            mem_file_path: utf8(mem)?,
        };
        self.api
            .clone()
            .with_timeout(SNAPSHOT_TIMEOUT)
            .put("/snapshot/create", &params)
            .await
            .map_err(|source| VmmError::Api {
                step: "snapshot/create",
                source,
            })
    }

    /// Sends SIGKILL (if still running) and reaps the process.
    pub async fn kill(&mut self) -> Result<ExitStatus, VmmError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        if let Err(source) = self.child.start_kill()
            && source.kind() != std::io::ErrorKind::InvalidInput
        {
            return Err(VmmError::Process {
                action: "kill",
                pid: self.pid,
                source,
            });
        }
        self.wait().await
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> Result<ExitStatus, VmmError> {
        self.child.wait().await.map_err(|source| VmmError::Process {
            action: "wait for",
            pid: self.pid,
            source,
        })
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, VmmError> {
        self.child.try_wait().map_err(|source| VmmError::Process {
            action: "poll",
            pid: self.pid,
            source,
        })
    }
}
