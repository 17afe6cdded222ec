//! Finding QEMU, building its command line, and running one microVM.
//!
//! The VM is `-M microvm` with ACPI left on (Debian's stock kernel finds virtio-mmio devices
//! only through ACPI), two virtio-blk disks (the read-only environment rootfs and the
//! sandbox's writable upper disk; the guest finds them by ext4 label, never by order), one
//! virtio-serial port named [`pyro_proto::SERIAL_PORT_NAME`] for the agent, a QMP monitor,
//! and the serial console written to [`CONSOLE_LOG`].
//!
//! QEMU's current directory is the sandbox's working directory and every socket it creates
//! is named relative to it, so paths stay short (a Unix socket path has a 108-byte limit)
//! and a migration stream taken in one directory restores in another.

use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::process::{Child, Command};

use crate::QemuError;
use crate::qmp::{MigrationInfo, Qmp};

/// The agent's virtio-serial chardev socket, relative to the working directory.
pub const AGENT_SOCKET: &str = "agent.sock";
/// The QMP socket, relative to the working directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// The guest's serial console output, relative to the working directory.
pub const CONSOLE_LOG: &str = "console.log";
/// QEMU's own stdout and stderr, relative to the working directory.
pub const STDERR_LOG: &str = "qemu.stderr";
/// The conventional name of the [`relay`](crate::relay)'s listening socket in the working
/// directory (the QEMU counterpart of Firecracker's hybrid-vsock socket).
pub const RELAY_SOCKET: &str = "vsock.sock";
/// Environment variable naming the QEMU binary to use.
pub const QEMU_ENV: &str = "PYRO_QEMU";
/// The QEMU binary looked up on `PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The fixed part of the guest kernel command line.
const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet 8250.nr_uarts=1";
/// How often [`launch`] looks for QEMU's sockets.
const SOCKET_POLL: Duration = Duration::from_millis(2);
/// How long [`launch`] waits for QEMU's sockets.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a log an error quotes.
const TAIL_BYTES: u64 = 4096;

/// How guest code is executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware-assisted KVM (`-accel kvm -cpu host`). Only sensible where KVM has vmx/svm;
    /// on a paravirtual KVM no Linux guest gets through boot.
    Kvm,
    /// QEMU's software emulator (`-accel tcg -cpu max`): slower, works everywhere, still a
    /// real VM boundary.
    Tcg,
}

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuSpec {
    /// Uncompressed ELF kernel with a PVH note (`vmlinux`).
    pub kernel: PathBuf,
    /// The initramfs (the agent as `/init`, plus modules).
    pub initrd: PathBuf,
    /// The environment's root filesystem image, attached read-only.
    pub rootfs: PathBuf,
    /// The sandbox's writable disk (overlay upper layer).
    pub upper: PathBuf,
    /// Virtual CPUs.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Accelerator.
    pub accel: Accel,
    /// Appended to the kernel command line (may be empty).
    pub extra_cmdline: String,
    /// Attach the upper disk with `cache=unsafe` (guest flushes are ignored: faster, but a
    /// host crash can lose writes). For throwaway sandboxes.
    pub upper_cache_unsafe: bool,
    /// Back guest memory with a file instead of anonymous memory (warm snapshots).
    pub memory_file: Option<MemoryFile>,
    /// A network card backed by a TAP (networked sandboxes); `None`: no network device.
    pub nic: Option<Nic>,
}

/// A virtio-net card on a persistent TAP that QEMU opens by name (QEMU must run in the
/// network namespace that holds it, see [`LaunchOptions::netns`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The TAP's name.
    pub tap: String,
    /// The card's MAC address.
    pub mac: [u8; 6],
}

impl Nic {
    /// The MAC as QEMU writes it (`02:70:79:00:00:01`).
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Guest memory in a file (`memory-backend-file`), the way warm snapshots keep it: the
/// machine that is snapshotted writes its memory through to the file, and every clone
/// maps that file copy-on-write, so a restore copies no memory at all, clones share the
/// pages they have not written, and the saved state holds only the devices
/// ([`Qemu::save_state`] skips such memory: QEMU's `x-ignore-shared`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryFile {
    /// The file (created, sparse, at the memory size when missing).
    pub path: PathBuf,
    /// `true` (`share=on`): the guest's writes go to the file; for the machine that will be
    /// saved. `false` (`share=off`): the file is mapped privately and never changes; for
    /// restored clones.
    pub shared: bool,
}

/// How to run QEMU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchOptions {
    /// The QEMU binary (see [`locate_qemu`]).
    pub qemu: PathBuf,
    /// The sandbox's working directory: QEMU's current directory, where its sockets and logs
    /// are created. Created if missing.
    pub workdir: PathBuf,
    /// Send SIGKILL to QEMU when the thread that spawned it exits (`PR_SET_PDEATHSIG`). The
    /// kernel ties this to the spawning *thread*: call [`launch`] from a long-lived runtime
    /// thread, not from a short-lived blocking-pool thread.
    pub die_with_parent: bool,
    /// Start QEMU in a new session (`setsid`) so it outlives the caller's terminal.
    pub new_session: bool,
    /// The host facts for the kernel command line; `None` reads them now
    /// ([`BootParams::current`]). A machine that is to be snapshotted, and every restore of
    /// that snapshot, pass the same value (without a clock) so their command lines match.
    pub boot: Option<BootParams>,
    /// Restore the machine from this migration stream (a file written by
    /// [`Qemu::save_state`]) instead of booting it: QEMU starts with `-incoming defer`,
    /// gets the file as descriptor [`INCOMING_FD`], loads it (`migrate-incoming`, with
    /// `x-ignore-shared` when the memory is a [`MemoryFile`]), and [`launch`] returns once
    /// the vCPUs run again. The command line must be the one the state was saved with,
    /// except that the memory file, if any, is mapped privately.
    pub incoming: Option<PathBuf>,
    /// Run QEMU inside this network namespace (a `/run/netns/NAME` file, entered with
    /// `setns` between fork and exec), where its [`Nic`]'s TAP lives. `None`: this
    /// process's namespace.
    pub netns: Option<PathBuf>,
}

/// Facts about the host and the moment of boot that go onto the kernel command line. Kept
/// apart from [`QemuSpec`] so that [`build_argv`] stays a pure function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootParams {
    /// The host's TSC frequency in kHz, passed as `tsc_early_khz` under TCG (the guest TSC
    /// runs at the host's rate there; calibrating it against the emulated PIT sometimes
    /// hangs). `None` omits the parameter.
    pub tsc_khz: Option<u64>,
    /// Wall-clock time since the UNIX epoch, passed as `pyro.clock` so the guest starts with
    /// the right date. `None` leaves it out, as a snapshotted machine must (its command line
    /// has to be the same at every restore; the host sets the clock after restoring).
    pub unix_time: Option<Duration>,
}

impl BootParams {
    /// The host's TSC frequency from `/proc/cpuinfo` and the current time.
    pub fn current() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            tsc_khz: tsc_khz_from_cpuinfo(&cpuinfo),
            unix_time: Some(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
        }
    }

    /// The host's facts without the clock: what a machine that will be snapshotted boots
    /// with (see [`BootParams::unix_time`]).
    pub fn without_clock() -> Self {
        Self {
            unix_time: None,
            ..Self::current()
        }
    }
}

/// The first `cpu MHz` value of a `/proc/cpuinfo` text, in kHz.
fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key.trim() != "cpu MHz" {
            return None;
        }
        let mhz: f64 = value.trim().parse().ok()?;
        // A positive, finite value below 2^53 converts exactly enough.
        (mhz.is_finite() && mhz > 0.0 && mhz < 1.0e9).then(|| (mhz * 1000.0).round() as u64)
    })
}

/// The guest kernel command line for `spec`.
pub fn kernel_cmdline(spec: &QemuSpec, boot: &BootParams) -> String {
    let mut cmdline = String::from(BASE_CMDLINE);
    if let (Accel::Tcg, Some(khz)) = (spec.accel, boot.tsc_khz) {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    if let Some(now) = boot.unix_time {
        cmdline.push_str(&format!(
            " pyro.clock={}.{:09}",
            now.as_secs(),
            now.subsec_nanos()
        ));
    }
    let extra = spec.extra_cmdline.trim();
    if !extra.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

/// A path as a QEMU option value: commas are doubled, QEMU's escape.
fn opt_path(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// QEMU's arguments (without the program name) for `spec`. Socket and log paths are relative:
/// QEMU must run with the working directory as its current directory. File paths in `spec`
/// are used as given; [`launch`] makes them absolute first.
pub fn build_argv(spec: &QemuSpec, boot: &BootParams) -> Vec<String> {
    let mut argv: Vec<String> = Vec::with_capacity(48);
    let mut push = |args: &[&str]| argv.extend(args.iter().map(|s| (*s).to_string()));
    push(&["-M", "microvm"]);
    match spec.accel {
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
    }
    push(&[
        "-m",
        &format!("{}M", spec.mem_mib),
        "-smp",
        &spec.vcpu_count.max(1).to_string(),
    ]);
    if let Some(file) = &spec.memory_file {
        push(&[
            "-object",
            &format!(
                "memory-backend-file,id=ram,size={}M,mem-path={},share={}",
                spec.mem_mib,
                opt_path(&file.path),
                if file.shared { "on" } else { "off" }
            ),
            "-machine",
            "memory-backend=ram",
        ]);
    }
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&[
        "-chardev",
        &format!("file,id=console,path={CONSOLE_LOG}"),
        "-serial",
        "chardev:console",
    ]);
    push(&[
        "-kernel",
        &opt_path(&spec.kernel),
        "-initrd",
        &opt_path(&spec.initrd),
        "-append",
        &kernel_cmdline(spec, boot),
    ]);
    push(&[
        "-drive",
        &format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            opt_path(&spec.rootfs)
        ),
        "-device",
        "virtio-blk-device,drive=root",
    ]);
    let cache = if spec.upper_cache_unsafe {
        ",cache=unsafe"
    } else {
        ""
    };
    push(&[
        "-drive",
        &format!(
            "id=upper,file={},format=raw,if=none{cache}",
            opt_path(&spec.upper)
        ),
        "-device",
        "virtio-blk-device,drive=upper",
    ]);
    push(&[
        "-device",
        "virtio-serial-device",
        "-chardev",
        &format!("socket,id=agent,path={AGENT_SOCKET},server=on,wait=off"),
        "-device",
        &format!(
            "virtserialport,chardev=agent,name={}",
            pyro_proto::SERIAL_PORT_NAME
        ),
    ]);
    if let Some(nic) = &spec.nic {
        push(&[
            "-netdev",
            &format!(
                "tap,id=net0,ifname={},script=no,downscript=no",
                nic.tap.replace(',', ",,")
            ),
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={}", nic.mac_string()),
        ]);
    }
    push(&["-qmp", &format!("unix:{QMP_SOCKET},server=on,wait=off")]);
    argv
}

/// The descriptor number a restored QEMU reads its migration stream from.
pub const INCOMING_FD: i32 = 3;

/// The arguments appended to [`build_argv`]'s for a restore: QEMU waits for
/// `migrate-incoming` (so that capabilities can be set first).
pub fn incoming_args() -> [String; 2] {
    ["-incoming".into(), "defer".into()]
}

/// The QMP capability that leaves memory in a shared [`MemoryFile`] out of the migration
/// stream (the file already holds it).
const IGNORE_SHARED: &str = "x-ignore-shared";

/// Finds the QEMU binary: `$PYRO_QEMU` when set, else `qemu-system-x86_64` on `PATH`.
///
/// # Errors
///
/// [`QemuError::EnvNotExecutable`] when `$PYRO_QEMU` is set but unusable,
/// [`QemuError::NotFound`] (naming the Debian package) when nothing is on `PATH`.
pub fn locate_qemu() -> Result<PathBuf, QemuError> {
    locate_in(std::env::var_os(QEMU_ENV), std::env::var_os("PATH"))
}

fn locate_in(env: Option<OsString>, path: Option<OsString>) -> Result<PathBuf, QemuError> {
    if let Some(value) = env.filter(|v| !v.is_empty()) {
        let candidate = PathBuf::from(value);
        return if is_executable(&candidate) {
            Ok(candidate)
        } else {
            Err(QemuError::EnvNotExecutable { path: candidate })
        };
    }
    let path = path.unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(QEMU_BINARY))
        .find(|candidate| is_executable(candidate))
        .ok_or(QemuError::NotFound)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn absolute(path: &Path) -> Result<PathBuf, QemuError> {
    std::path::absolute(path).map_err(|source| QemuError::Io {
        op: "resolve",
        path: path.to_owned(),
        source,
    })
}

/// Removes `path`, ignoring a missing file.
fn remove_stale(path: &Path) -> Result<(), QemuError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(QemuError::Io {
            op: "remove stale",
            path: path.to_owned(),
            source,
        }),
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// The last few KiB of a file, lossily decoded ("" when unreadable).
fn tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file
        .seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .is_err()
    {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.take(TAIL_BYTES).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// Starts QEMU for `spec` and returns once its agent and QMP sockets exist and QMP has
/// greeted (the machine is built and the guest is booting; the agent answers later, see
/// [`relay`](crate::relay)).
///
/// Stale sockets in the working directory are removed first. QEMU's stdout and stderr go to
/// [`STDERR_LOG`].
///
/// # Errors
///
/// [`QemuError::Io`] preparing the directory or files, [`QemuError::Spawn`],
/// [`QemuError::Exited`] (with QEMU's stderr and the console tail) when it exits during
/// startup, [`QemuError::StartTimeout`] (after killing it) when it does not come up, or the
/// QMP error (after killing it) when its monitor misbehaves.
pub async fn launch(spec: &QemuSpec, opts: &LaunchOptions) -> Result<Qemu, QemuError> {
    let workdir = absolute(&opts.workdir)?;
    std::fs::create_dir_all(&workdir).map_err(|source| QemuError::Io {
        op: "create working directory",
        path: workdir.clone(),
        source,
    })?;
    let spec = resolve_paths(spec, &workdir)?;
    for name in [AGENT_SOCKET, QMP_SOCKET] {
        remove_stale(&workdir.join(name))?;
    }
    let log_path = workdir.join(STDERR_LOG);
    let log = std::fs::File::create(&log_path).map_err(|source| QemuError::Io {
        op: "create",
        path: log_path.clone(),
        source,
    })?;
    let log_out = log.try_clone().map_err(|source| QemuError::Io {
        op: "duplicate",
        path: log_path.clone(),
        source,
    })?;

    let boot = opts.boot.unwrap_or_else(BootParams::current);
    let argv = build_argv(&spec, &boot);
    // The saved state, opened here and inherited by QEMU as INCOMING_FD.
    let incoming = match &opts.incoming {
        Some(path) => Some(std::fs::File::open(path).map_err(|source| QemuError::Io {
            op: "open the saved state",
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let mut full_argv = argv.clone();
    if incoming.is_some() {
        full_argv.extend(incoming_args());
    }
    tracing::debug!(qemu = %opts.qemu.display(), argv = ?full_argv, workdir = %workdir.display(), "starting QEMU");
    let mut cmd = Command::new(&opts.qemu);
    cmd.args(&full_argv)
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .stdout(log_out)
        .stderr(log)
        .kill_on_drop(false);
    let mut setup = pyro_host::process::ChildSetup {
        die_with_parent: opts.die_with_parent,
        new_session: opts.new_session,
    }
    .hook();
    let incoming_fd = incoming.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    // The network namespace, opened here (with close-on-exec) and entered in the child.
    let netns = match &opts.netns {
        Some(path) => Some(std::fs::File::open(path).map_err(|source| QemuError::Io {
            op: "open the network namespace",
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    // SAFETY: the closure runs between fork and exec; it only makes async-signal-safe calls
    // (the setup hook's prctl, getppid, setsid, _exit; setns, dup2, fcntl) and allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            setup()?;
            if let Some(fd) = netns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = incoming_fd {
                // dup2 leaves the copy without FD_CLOEXEC; a descriptor that already has
                // the number needs the flag cleared by hand.
                let res = if fd == INCOMING_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, INCOMING_FD)
                };
                if res < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let child = cmd.spawn().map_err(|source| QemuError::Spawn {
        qemu: opts.qemu.clone(),
        source,
    })?;
    // QEMU has its own copy of the state file now, and is in its namespace.
    drop(incoming);
    drop(netns);
    let pid = child.id().unwrap_or_default();
    let mut qemu = Qemu {
        child,
        pid,
        workdir,
        argv,
        boot,
    };
    let exited = |qemu: &Qemu, status: ExitStatus| QemuError::Exited {
        status: status.to_string(),
        stderr: tail(&log_path),
        console_tail: tail(&qemu.console_log_path()),
    };
    // QEMU creates its chardev sockets early, before it opens the disks and loads the
    // kernel, so existing sockets do not yet mean a working VM.
    loop {
        if let Some(status) = qemu.poll()? {
            return Err(exited(&qemu, status));
        }
        if is_socket(&qemu.agent_socket_path()) && is_socket(&qemu.qmp_socket_path()) {
            break;
        }
        if started.elapsed() >= START_TIMEOUT {
            return Err(qemu.start_timeout().await);
        }
        tokio::time::sleep(SOCKET_POLL).await;
    }
    // It answers QMP only from its main loop, which starts once the machine is built: a
    // greeting means the disks opened and the kernel loaded.
    let qmp_path = qemu.qmp_socket_path();
    let mut handshake = std::pin::pin!(Qmp::connect(&qmp_path));
    loop {
        tokio::select! {
            res = &mut handshake => match res {
                Ok(qmp) => {
                    tracing::debug!(pid, elapsed = ?started.elapsed(), "QEMU is up");
                    if opts.incoming.is_none() {
                        return Ok(qemu);
                    }
                    let file_memory = spec.memory_file.is_some();
                    let Err(e) = resume_incoming(&mut qemu, qmp, file_memory, started).await
                    else {
                        return Ok(qemu);
                    };
                    // QEMU exits when the stream does not load: give it a moment to say why.
                    let grace = Instant::now();
                    while grace.elapsed() < Duration::from_secs(1) {
                        if let Some(status) = qemu.poll()? {
                            return Err(exited(&qemu, status));
                        }
                        tokio::time::sleep(SOCKET_POLL).await;
                    }
                    let _ = qemu.kill().await;
                    return Err(e);
                }
                Err(e) => {
                    // Most likely QEMU is exiting: give it a moment to say why.
                    let grace = Instant::now();
                    while grace.elapsed() < Duration::from_secs(1) {
                        if let Some(status) = qemu.poll()? {
                            return Err(exited(&qemu, status));
                        }
                        tokio::time::sleep(SOCKET_POLL).await;
                    }
                    let _ = qemu.kill().await;
                    return Err(e);
                }
            },
            () = tokio::time::sleep(SOCKET_POLL) => {
                if let Some(status) = qemu.poll()? {
                    return Err(exited(&qemu, status));
                }
                if started.elapsed() >= START_TIMEOUT {
                    return Err(qemu.start_timeout().await);
                }
            }
        }
    }
}

/// Migration bandwidth for [`Qemu::save_state`], bytes per second (QEMU's default of
/// 32 MiB/s would make saving a 1 GiB guest take seconds).
const SAVE_BANDWIDTH: u64 = 10_000_000_000;
/// How long [`Qemu::save_state`] waits for the migration.
pub const SAVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often [`Qemu::save_state`] polls the migration.
const SAVE_POLL: Duration = Duration::from_millis(5);
/// The name under which the state file's descriptor is passed to QEMU.
const STATE_FD_NAME: &str = "pyro-state";

/// How often the state of an incoming migration is polled.
const INCOMING_POLL: Duration = Duration::from_millis(2);

/// Starts loading the migration stream on [`INCOMING_FD`], waits until QEMU has loaded it
/// (run state `inmigrate` → `paused`), then resumes the vCPUs. An exit of QEMU during the
/// load (a stream that does not fit the machine) surfaces as the QMP connection closing.
async fn resume_incoming(
    qemu: &mut Qemu,
    mut qmp: Qmp,
    file_memory: bool,
    started: Instant,
) -> Result<(), QemuError> {
    if file_memory {
        qmp.migrate_set_capability(IGNORE_SHARED, true).await?;
    }
    qmp.migrate_incoming(&format!("fd:{INCOMING_FD}")).await?;
    loop {
        let status = qmp.query_status().await?;
        match status.as_str() {
            "inmigrate" => {}
            // A source that was running when saved resumes by itself (QEMU's autostart).
            "running" => break,
            "paused" | "postmigrate" | "prelaunch" => {
                qmp.cont().await?;
                break;
            }
            other => {
                return Err(QemuError::Migration {
                    status: other.to_string(),
                    desc: "the incoming migration did not load".into(),
                });
            }
        }
        if let Some(status) = qemu.poll()? {
            return Err(QemuError::Exited {
                status: status.to_string(),
                stderr: tail(&qemu.stderr_log_path()),
                console_tail: tail(&qemu.console_log_path()),
            });
        }
        if started.elapsed() >= START_TIMEOUT {
            return Err(QemuError::StartTimeout {
                workdir: qemu.workdir.clone(),
                after: START_TIMEOUT,
            });
        }
        tokio::time::sleep(INCOMING_POLL).await;
    }
    tracing::debug!(pid = qemu.pid, elapsed = ?started.elapsed(), "QEMU restored and resumed");
    Ok(())
}

/// `spec` with absolute file paths, except that the writable disk is named relative to the
/// working directory when it lies there, so the command line does not depend on where the
/// sandbox lives (a snapshot's command line must match the restore's).
fn resolve_paths(spec: &QemuSpec, workdir: &Path) -> Result<QemuSpec, QemuError> {
    let upper = absolute(&spec.upper)?;
    let upper = match (upper.parent(), upper.file_name()) {
        (Some(parent), Some(name)) if parent == workdir => PathBuf::from(name),
        _ => upper,
    };
    let memory_file = match &spec.memory_file {
        Some(file) => Some(MemoryFile {
            path: absolute(&file.path)?,
            shared: file.shared,
        }),
        None => None,
    };
    Ok(QemuSpec {
        kernel: absolute(&spec.kernel)?,
        initrd: absolute(&spec.initrd)?,
        rootfs: absolute(&spec.rootfs)?,
        upper,
        memory_file,
        ..spec.clone()
    })
}

/// The command line [`launch`] gives QEMU for `spec` in `workdir` (without
/// [`incoming_args`]): what a snapshot records, and what its restore must reproduce.
///
/// # Errors
///
/// [`QemuError::Io`] when a path cannot be made absolute.
pub fn launch_argv(
    spec: &QemuSpec,
    workdir: &Path,
    boot: &BootParams,
) -> Result<Vec<String>, QemuError> {
    let workdir = absolute(workdir)?;
    Ok(build_argv(&resolve_paths(spec, &workdir)?, boot))
}

/// A running QEMU process. Dropping the handle leaves QEMU running (use [`Qemu::kill`]);
/// with [`LaunchOptions::die_with_parent`] it still dies with the spawning thread.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    pid: u32,
    workdir: PathBuf,
    argv: Vec<String>,
    boot: BootParams,
}

impl Qemu {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The absolute working directory.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// QEMU's arguments (without the program name and without [`incoming_args`]).
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The boot parameters its kernel command line was built from.
    pub fn boot_params(&self) -> BootParams {
        self.boot
    }

    /// QEMU's chardev socket for the agent's serial port (serves one client: the relay).
    pub fn agent_socket_path(&self) -> PathBuf {
        self.workdir.join(AGENT_SOCKET)
    }

    /// The QMP socket.
    pub fn qmp_socket_path(&self) -> PathBuf {
        self.workdir.join(QMP_SOCKET)
    }

    /// The guest's serial console log.
    pub fn console_log_path(&self) -> PathBuf {
        self.workdir.join(CONSOLE_LOG)
    }

    /// QEMU's own stdout and stderr.
    pub fn stderr_log_path(&self) -> PathBuf {
        self.workdir.join(STDERR_LOG)
    }

    /// Opens a QMP connection. QEMU serves one QMP client at a time: drop it when done.
    ///
    /// # Errors
    ///
    /// See [`Qmp::connect`].
    pub async fn qmp(&self) -> Result<Qmp, QemuError> {
        Qmp::connect(&self.qmp_socket_path()).await
    }

    /// Saves the machine's complete state (guest memory and device state) to `path` and
    /// leaves the machine paused: QMP `stop`, the migration bandwidth limit raised, then a
    /// migration into `path` (created, mode 0600), passed to QEMU as a descriptor. Memory in
    /// a shared [`MemoryFile`] is left out (`x-ignore-shared`): the file holds it, and must
    /// be kept with `path`. Returns once QEMU reports the migration completed; QEMU has
    /// flushed the disks by then, so the writable disk can be copied (or kept) as it is.
    /// Restore with [`LaunchOptions::incoming`] and the same command line ([`Qemu::argv`]).
    ///
    /// # Errors
    ///
    /// [`QemuError::Io`] creating the file, any QMP error, or [`QemuError::Migration`] when
    /// the migration fails or does not finish within [`SAVE_TIMEOUT`].
    pub async fn save_state(&self, path: &Path) -> Result<MigrationInfo, QemuError> {
        save_state_at(&self.qmp_socket_path(), path).await
    }

    /// Kills QEMU with SIGKILL, reaps it and removes its sockets. Fine to call after it
    /// has exited.
    ///
    /// # Errors
    ///
    /// [`QemuError::Process`] when signalling or reaping fails.
    pub async fn kill(&mut self) -> Result<ExitStatus, QemuError> {
        if let Some(status) = self.poll()? {
            return Ok(status);
        }
        self.child
            .start_kill()
            .map_err(|source| QemuError::Process {
                op: "kill",
                pid: self.pid,
                source,
            })?;
        self.wait().await
    }

    /// Waits for QEMU to exit, then removes its sockets.
    ///
    /// # Errors
    ///
    /// [`QemuError::Process`] when reaping fails.
    pub async fn wait(&mut self) -> Result<ExitStatus, QemuError> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|source| QemuError::Process {
                op: "wait for",
                pid: self.pid,
                source,
            })?;
        self.remove_sockets();
        Ok(status)
    }

    /// QEMU's exit status if it has exited (its sockets are then removed), else `None`.
    ///
    /// # Errors
    ///
    /// [`QemuError::Process`] when polling fails.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, QemuError> {
        self.poll()
    }

    fn poll(&mut self) -> Result<Option<ExitStatus>, QemuError> {
        let status = self.child.try_wait().map_err(|source| QemuError::Process {
            op: "poll",
            pid: self.pid,
            source,
        })?;
        if status.is_some() {
            self.remove_sockets();
        }
        Ok(status)
    }

    /// Kills a QEMU that did not come up in time and describes the failure.
    async fn start_timeout(&mut self) -> QemuError {
        let _ = self.kill().await;
        QemuError::StartTimeout {
            workdir: self.workdir.clone(),
            after: START_TIMEOUT,
        }
    }

    /// QEMU leaves its listening sockets behind when killed.
    fn remove_sockets(&self) {
        for name in [AGENT_SOCKET, QMP_SOCKET] {
            let _ = remove_stale(&self.workdir.join(name));
        }
    }
}

/// [`Qemu::save_state`] for a QEMU reached through its QMP socket `qmp_socket` (one started
/// by another process). Guest memory in a shared [`MemoryFile`] is left out of the stream;
/// any other memory is in it (a zero page takes a few bytes). The machine is left paused;
/// [`Qmp::cont`] resumes it.
///
/// # Errors
///
/// As [`Qemu::save_state`].
pub async fn save_state_at(qmp_socket: &Path, path: &Path) -> Result<MigrationInfo, QemuError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let started = Instant::now();
    let mut qmp = Qmp::connect(qmp_socket).await?;
    qmp.stop().await?;
    qmp.migrate_set_parameters(SAVE_BANDWIDTH).await?;
    // Always set, so the stream's format is the one a restore (which sets it whenever the
    // memory is a file) expects; only shared memory is left out by it.
    qmp.migrate_set_capability(IGNORE_SHARED, true).await?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| QemuError::Io {
            op: "create",
            path: path.to_owned(),
            source,
        })?;
    qmp.getfd(STATE_FD_NAME, file.as_fd()).await?;
    drop(file);
    qmp.migrate(&format!("fd:{STATE_FD_NAME}")).await?;
    loop {
        let info = qmp.query_migrate().await?;
        match info.status.as_deref() {
            Some("completed") => {
                tracing::debug!(socket = %qmp_socket.display(), elapsed = ?started.elapsed(), ?info, "state saved");
                return Ok(info);
            }
            Some(status @ ("failed" | "cancelled")) => {
                return Err(QemuError::Migration {
                    status: status.to_string(),
                    desc: info.error_desc.unwrap_or_default(),
                });
            }
            _ => {}
        }
        if started.elapsed() >= SAVE_TIMEOUT {
            let _ = qmp.execute("migrate_cancel", None).await;
            return Err(QemuError::Migration {
                status: info.status.unwrap_or_default(),
                desc: format!("not finished within {SAVE_TIMEOUT:?}"),
            });
        }
        tokio::time::sleep(SAVE_POLL).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn spec(accel: Accel) -> QemuSpec {
        QemuSpec {
            kernel: "/c/vmlinux".into(),
            initrd: "/c/initrd.cpio".into(),
            rootfs: "/c/root,fs.ext4".into(),
            upper: "/w/upper.ext4".into(),
            vcpu_count: 2,
            mem_mib: 384,
            accel,
            extra_cmdline: String::new(),
            upper_cache_unsafe: false,
            memory_file: None,
            nic: None,
        }
    }

    const BOOT: BootParams = BootParams {
        tsc_khz: Some(2_596_144),
        unix_time: Some(Duration::new(1_700_000_000, 5_000_000)),
    };

    /// The values following each occurrence of `flag`.
    fn after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_argv_has_the_microvm_shape() {
        let argv = build_argv(&spec(Accel::Tcg), &BOOT);
        assert_eq!(after(&argv, "-M"), ["microvm"], "ACPI must stay on");
        assert_eq!(after(&argv, "-accel"), ["tcg"]);
        assert_eq!(after(&argv, "-cpu"), ["max"]);
        assert_eq!(after(&argv, "-m"), ["384M"]);
        assert_eq!(after(&argv, "-smp"), ["2"]);
        for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            assert!(argv.iter().any(|a| a == flag), "{flag} missing");
        }
        assert_eq!(after(&argv, "-display"), ["none"]);
        assert_eq!(after(&argv, "-kernel"), ["/c/vmlinux"]);
        assert_eq!(after(&argv, "-initrd"), ["/c/initrd.cpio"]);
        assert_eq!(after(&argv, "-serial"), ["chardev:console"]);
        assert_eq!(
            after(&argv, "-qmp"),
            ["unix:qmp.sock,server=on,wait=off"],
            "sockets are relative to the working directory"
        );
        let chardevs = after(&argv, "-chardev");
        assert_eq!(
            chardevs,
            [
                "file,id=console,path=console.log",
                "socket,id=agent,path=agent.sock,server=on,wait=off"
            ]
        );
        let devices = after(&argv, "-device");
        assert_eq!(
            devices,
            [
                "virtio-blk-device,drive=root",
                "virtio-blk-device,drive=upper",
                "virtio-serial-device",
                "virtserialport,chardev=agent,name=org.pyro.agent.0",
            ]
        );
    }

    #[test]
    fn kvm_argv_uses_the_host_cpu() {
        let argv = build_argv(&spec(Accel::Kvm), &BOOT);
        assert_eq!(after(&argv, "-accel"), ["kvm"]);
        assert_eq!(after(&argv, "-cpu"), ["host"]);
        assert!(!argv.iter().any(|a| a == "tcg"));
    }

    #[test]
    fn rootfs_is_read_only_and_commas_are_escaped() {
        let argv = build_argv(&spec(Accel::Tcg), &BOOT);
        let drives = after(&argv, "-drive");
        assert_eq!(
            drives,
            [
                "id=root,file=/c/root,,fs.ext4,format=raw,if=none,readonly=on",
                "id=upper,file=/w/upper.ext4,format=raw,if=none",
            ]
        );
    }

    #[test]
    fn upper_cache_unsafe_is_only_set_when_asked() {
        let mut s = spec(Accel::Tcg);
        let argv = build_argv(&s, &BOOT);
        assert!(!argv.iter().any(|a| a.contains("cache=unsafe")));
        s.upper_cache_unsafe = true;
        let argv = build_argv(&s, &BOOT);
        let drives = after(&argv, "-drive");
        assert!(
            !drives[0].contains("cache="),
            "the rootfs keeps its default"
        );
        assert!(drives[1].ends_with(",cache=unsafe"), "{}", drives[1]);
    }

    #[test]
    fn a_nic_is_a_virtio_net_device_on_its_tap_and_none_without_one() {
        let mut s = spec(Accel::Tcg);
        assert!(!build_argv(&s, &BOOT).iter().any(|a| a.contains("net")));
        s.nic = Some(Nic {
            tap: "pyro-tap".into(),
            mac: [0x02, 0x70, 0x79, 0x00, 0x3f, 0xff],
        });
        let argv = build_argv(&s, &BOOT);
        assert_eq!(
            after(&argv, "-netdev"),
            ["tap,id=net0,ifname=pyro-tap,script=no,downscript=no"]
        );
        assert!(
            after(&argv, "-device")
                .contains(&"virtio-net-device,netdev=net0,mac=02:70:79:00:3f:ff"),
            "{argv:?}"
        );
    }

    #[test]
    fn tcg_cmdline_pins_the_tsc_and_the_clock() {
        let mut s = spec(Accel::Tcg);
        s.extra_cmdline = " pyro.debug=1 ".into();
        let argv = build_argv(&s, &BOOT);
        assert_eq!(
            after(&argv, "-append"),
            [
                "console=ttyS0 panic=-1 quiet 8250.nr_uarts=1 tsc_early_khz=2596144 \
                 pyro.clock=1700000000.005000000 pyro.debug=1"
            ]
        );
    }

    #[test]
    fn kvm_cmdline_has_no_tsc_hint() {
        let cmdline = kernel_cmdline(&spec(Accel::Kvm), &BOOT);
        assert!(!cmdline.contains("tsc_early_khz"), "{cmdline}");
        assert!(
            cmdline.ends_with("pyro.clock=1700000000.005000000"),
            "{cmdline}"
        );
    }

    #[test]
    fn unknown_tsc_frequency_omits_the_hint() {
        let boot = BootParams {
            tsc_khz: None,
            ..BOOT
        };
        let cmdline = kernel_cmdline(&spec(Accel::Tcg), &boot);
        assert!(!cmdline.contains("tsc_early_khz"), "{cmdline}");
    }

    #[test]
    fn a_snapshot_cmdline_has_no_clock_and_does_not_change() {
        let boot = BootParams {
            unix_time: None,
            ..BOOT
        };
        let cmdline = kernel_cmdline(&spec(Accel::Tcg), &boot);
        assert!(!cmdline.contains("pyro.clock"), "{cmdline}");
        assert!(cmdline.ends_with("tsc_early_khz=2596144"), "{cmdline}");
        assert_eq!(
            build_argv(&spec(Accel::Tcg), &boot),
            build_argv(&spec(Accel::Tcg), &boot)
        );
        assert!(BootParams::without_clock().unix_time.is_none());
    }

    #[test]
    fn a_restore_reads_its_state_from_an_inherited_descriptor() {
        assert_eq!(incoming_args(), ["-incoming", "defer"]);
        assert_eq!(INCOMING_FD, 3);
    }

    #[test]
    fn file_backed_memory_is_shared_for_the_template_and_private_for_clones() {
        let mut s = spec(Accel::Tcg);
        assert!(
            !build_argv(&s, &BOOT)
                .iter()
                .any(|a| a.contains("memory-backend"))
        );
        s.memory_file = Some(MemoryFile {
            path: "/snap/mem,1.img".into(),
            shared: true,
        });
        let argv = build_argv(&s, &BOOT);
        assert_eq!(
            after(&argv, "-object"),
            ["memory-backend-file,id=ram,size=384M,mem-path=/snap/mem,,1.img,share=on"]
        );
        assert_eq!(after(&argv, "-machine"), ["memory-backend=ram"]);
        assert_eq!(after(&argv, "-m"), ["384M"], "-m still gives the size");
        s.memory_file = Some(MemoryFile {
            path: "/snap/mem.img".into(),
            shared: false,
        });
        assert!(after(&build_argv(&s, &BOOT), "-object")[0].ends_with(",share=off"));
    }

    #[test]
    fn the_upper_disk_is_named_relative_to_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("vm1");
        let mut s = spec(Accel::Tcg);
        s.upper = work.join("upper.ext4");
        let argv = launch_argv(&s, &work, &BOOT).unwrap();
        assert_eq!(
            after(&argv, "-drive")[1],
            "id=upper,file=upper.ext4,format=raw,if=none"
        );
        // Two sandboxes in different directories get the same command line.
        let other = dir.path().join("vm2");
        s.upper = other.join("upper.ext4");
        assert_eq!(launch_argv(&s, &other, &BOOT).unwrap(), argv);
        // A disk elsewhere keeps its absolute path.
        s.upper = dir.path().join("elsewhere/upper.ext4");
        let argv = launch_argv(&s, &work, &BOOT).unwrap();
        assert!(after(&argv, "-drive")[1].contains("/elsewhere/upper.ext4"));
    }

    #[test]
    fn zero_vcpus_become_one() {
        let mut s = spec(Accel::Tcg);
        s.vcpu_count = 0;
        assert_eq!(after(&build_argv(&s, &BOOT), "-smp"), ["1"]);
    }

    #[test]
    fn tsc_frequency_comes_from_cpu_mhz() {
        let text = "processor\t: 0\nmodel name\t: Some CPU @ 2.60GHz\ncpu MHz\t\t: 2596.144\n\
                    processor\t: 1\ncpu MHz\t\t: 2600.000\n";
        assert_eq!(tsc_khz_from_cpuinfo(text), Some(2_596_144));
        assert_eq!(tsc_khz_from_cpuinfo("cpu MHz : fast\n"), None);
        assert_eq!(tsc_khz_from_cpuinfo("cpu MHz : -5\n"), None);
        assert_eq!(tsc_khz_from_cpuinfo(""), None);
    }

    #[test]
    fn current_boot_params_read_this_host() {
        let boot = BootParams::current();
        assert!(boot.unix_time.unwrap().as_secs() > 1_600_000_000);
    }

    #[test]
    fn pyro_qemu_env_wins_and_must_be_executable() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("my-qemu");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        let err = locate_in(Some(bin.clone().into()), None).unwrap_err();
        assert!(matches!(err, QemuError::EnvNotExecutable { .. }), "{err}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(locate_in(Some(bin.clone().into()), None).unwrap(), bin);
    }

    #[test]
    fn qemu_is_found_on_path_or_the_error_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let path = std::env::join_paths([empty.path(), dir.path()]).unwrap();
        let err = locate_in(Some(OsString::new()), Some(path.clone())).unwrap_err();
        assert!(err.to_string().contains("qemu-system-x86"), "{err}");
        let bin = dir.path().join(QEMU_BINARY);
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(locate_in(None, Some(path)).unwrap(), bin);
    }

    #[test]
    fn tail_keeps_the_end_of_long_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log");
        let mut text = "x".repeat(10_000);
        text.push_str("the end\n");
        std::fs::write(&f, &text).unwrap();
        let t = tail(&f);
        assert!(t.ends_with("the end"));
        assert!(t.len() <= TAIL_BYTES as usize);
        assert_eq!(tail(&dir.path().join("missing")), "");
    }
}
