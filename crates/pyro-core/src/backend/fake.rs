//! The fake backend (feature `fake-backend`, for tests): no VM at all. [`FakeBackend`] runs
//! the real `pyro-agent` binary on the host as `pyro-agent --listen-unix SOCKET` with
//! `PYRO_AGENT_WORKSPACE=DIR`, so that the agent's guest path `/workspace` is a directory
//! of the host, and everything above the [`Backend`] trait (workspace orchestration, the
//! store, TTLs, locks, crash recovery, the protocol) runs for real in milliseconds.
//!
//! What stands for what:
//! - the VMM is the agent process: persistent machines run it detached (own session), and
//!   its pid and start time are recorded like a VMM's; killing it is a VMM crash, and a
//!   `Shutdown` with `poweroff` ends it as it would power a guest off;
//! - the writable disk is a directory beside the disk file `spec.upper` names, keyed by
//!   that file's inode: a machine booted on the same disk (a `start`) finds the same tree, a
//!   new disk (a `reset`) an empty one, and the trees of replaced disks are removed;
//! - the agent socket speaks the protocol directly ([`Machine::connect`] has no `CONNECT`
//!   handshake to do), and the console log is the agent's stderr.
//!
//! It boots no environment ([`Backend::boots_environments`] is `false`) and takes no warm
//! snapshots. Only the agent's `/workspace` is sandboxed this way: commands run as this
//! user on this host, so it is for tests only.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::record::ProcessRef;
use super::{Backend, BackendKind, BootSpec, BoxFuture, Machine, MachineRecord, console_tail};
use crate::error::{CoreError, Result};

/// The agent's socket in the machine's working directory.
const SOCKET: &str = "agent.sock";
/// The agent's stderr and stdout, in the machine's working directory.
const CONSOLE: &str = "console.log";
/// What the directory standing in for a disk's contents is named after: `<disk>.fake-<ino>`.
const TREE_SUFFIX: &str = ".fake-";
/// How often [`Machine::connect`] retries while the agent starts.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// The fake backend: the agent as a host process; see the module docs.
#[derive(Debug)]
pub struct FakeBackend {
    agent: PathBuf,
}

impl FakeBackend {
    /// A backend running `agent` (a `pyro-agent` binary, static or not).
    pub fn new(agent: PathBuf) -> Self {
        Self { agent }
    }

    fn start(&self, spec: &BootSpec<'_>) -> Result<FakeMachine> {
        let tree = disk_tree(spec.upper)?;
        let socket = spec.workdir.join(SOCKET);
        let _ = std::fs::remove_file(&socket);
        let console = spec.workdir.join(CONSOLE);
        let log =
            std::fs::File::create(&console).map_err(|e| CoreError::io("create", &console, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| CoreError::io("duplicate", &console, e))?;
        let mut cmd = std::process::Command::new(&self.agent);
        cmd.arg("--listen-unix")
            .arg(&socket)
            .env("PYRO_AGENT_WORKSPACE", &tree)
            .current_dir(spec.workdir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Persistent machines outlive this process like a detached VMM; one-shot ones are
        // halted by their owner (and reaped as orphans otherwise, like a VMM).
        let child = crate::host::spawn_detached(&mut cmd)
            .map_err(|e| CoreError::io("start the agent", &self.agent, e))?;
        let rec = MachineRecord {
            backend: BackendKind::Fake,
            vmm: ProcessRef::of(child.id()),
            relay: None,
            relay_bin: None,
            socket,
            workdir: spec.workdir.to_path_buf(),
        };
        Ok(FakeMachine {
            child: Some(child),
            rec,
        })
    }
}

/// The directory that holds what the disk `disk` holds (made on first use), after removing
/// those of disks that `disk` replaced.
fn disk_tree(disk: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(disk)
        .map_err(|e| CoreError::io("stat", disk, e))?
        .ino();
    let name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = disk.parent().unwrap_or(Path::new("/"));
    let prefix = format!("{name}{TREE_SUFFIX}");
    let mine = format!("{prefix}{ino}");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n != mine {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let tree = dir.join(mine);
    crate::host::ensure_private_dir(&tree)?;
    Ok(tree)
}

impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Fake
    }

    fn boot<'a>(&'a self, spec: BootSpec<'a>) -> BoxFuture<'a, Result<Box<dyn Machine>>> {
        Box::pin(async move { Ok(Box::new(self.start(&spec)?) as Box<dyn Machine>) })
    }

    fn attach(&self, record: &MachineRecord) -> Box<dyn Machine> {
        attach(record)
    }

    fn boots_environments(&self) -> bool {
        false
    }
}

/// A fake machine: booted here (`child` set, so its exit is reaped) or attached.
#[derive(Debug)]
struct FakeMachine {
    child: Option<std::process::Child>,
    rec: MachineRecord,
}

/// The machine a fake record describes; see [`super::attach`].
pub(super) fn attach(record: &MachineRecord) -> Box<dyn Machine> {
    Box::new(FakeMachine {
        child: None,
        rec: record.clone(),
    })
}

impl FakeMachine {
    /// Collects the exit status of an agent this process started (a zombie counts as dead
    /// anyway, but is not left behind).
    fn reap(&mut self) {
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(Some(_)))
        {
            self.child = None;
        }
    }
}

impl Machine for FakeMachine {
    fn pid(&self) -> u32 {
        self.rec.vmm.map_or(0, |p| p.pid)
    }
    fn record(&self) -> MachineRecord {
        self.rec.clone()
    }
    fn connect(&mut self, timeout: Duration) -> BoxFuture<'_, Result<tokio::net::UnixStream>> {
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            loop {
                match tokio::net::UnixStream::connect(&self.rec.socket).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) if Instant::now() >= deadline || !self.is_alive() => {
                        return Err(CoreError::Boot {
                            reason: format!(
                                "cannot reach the agent at {}: {e}",
                                self.rec.socket.display()
                            ),
                            console_tail: String::new(),
                        });
                    }
                    Err(_) => tokio::time::sleep(CONNECT_RETRY).await,
                }
            }
        })
    }
    fn is_alive(&mut self) -> bool {
        self.reap();
        self.rec.vmm_alive()
    }
    fn halt(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.rec.halt().await;
            if let Some(mut child) = self.child.take() {
                let _ = child.wait();
            }
        })
    }
    fn console_tail(&self, max: usize) -> String {
        console_tail(&self.rec.console_log(), max)
    }
}
