//! [`MachineRecord`]: what a later process needs to find a persistent machine again, and
//! the [`Machine`] it becomes when attached ([`attach`]).
//!
//! A record names processes by pid *and* start time (pids are reused), the socket the
//! agent is reached through and the machine's working directory. It is an opaque value to
//! everything outside `backend/`: the workspace store keeps it as JSON, and every question
//! about the machine (is it alive, connect to its agent, halt it, what did its console say)
//! goes through the [`Machine`] that [`attach`] makes of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{BackendKind, BoxFuture, Machine, console_tail};
use crate::error::{CoreError, Result};
use crate::host;

/// How long [`ProcessRef::kill_and_wait`] waits for killed processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// One process, identified by its pid and its start time in clock ticks since boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessRef {
    pub(crate) pid: u32,
    pub(crate) start_ticks: u64,
}

impl ProcessRef {
    /// The live process `pid`, or `None` when it is gone (or a zombie).
    pub(crate) fn of(pid: u32) -> Option<Self> {
        host::process_start_ticks(pid).map(|start_ticks| Self { pid, start_ticks })
    }

    /// Whether the process still runs (the same one: a reused pid does not count).
    pub(crate) fn alive(&self) -> bool {
        host::process_alive(self.pid, self.start_ticks)
    }

    /// Sends SIGKILL to the process if it is still the one recorded.
    pub(crate) fn kill(&self) {
        if self.alive() {
            // SAFETY: kill(2) on a process identified by pid and start time, checked just
            // before.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }

    /// Kills `procs` in order and waits, up to a few seconds, until they are gone (a killed
    /// VMM's disk is released only then).
    pub(crate) async fn kill_and_wait(procs: &[ProcessRef]) {
        for p in procs {
            p.kill();
        }
        let deadline = Instant::now() + KILL_WAIT;
        while procs.iter().any(ProcessRef::alive) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A persistent machine as a later process finds it again: which backend, its processes,
/// the agent's socket and its working directory. Made by [`Machine::record`], turned back
/// into a [`Machine`] by [`attach`] (or [`super::Backend::attach`]); serialized as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// The backend that booted it.
    pub(crate) backend: BackendKind,
    /// The VMM (for the fake backend: the agent process).
    pub(crate) vmm: Option<ProcessRef>,
    /// A separate process serving the agent socket (QEMU's relay), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) relay: Option<ProcessRef>,
    /// The binary that runs the relay (`pyro __relay DIR`), for a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) relay_bin: Option<PathBuf>,
    /// The socket the agent is reached through.
    pub(crate) socket: PathBuf,
    /// The machine's working directory (console log, sockets).
    pub(crate) workdir: PathBuf,
}

impl MachineRecord {
    /// The backend that booted the machine.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The record as JSON (what the workspace store keeps).
    pub fn to_json(&self) -> String {
        // A struct of plain fields always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A record from [`Self::to_json`]'s text; `None` when this build cannot read it.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    /// Whether `other` describes the same boot (the same VMM; what serves it may have been
    /// restarted since).
    pub fn same_boot(&self, other: &MachineRecord) -> bool {
        self.backend == other.backend && self.vmm == other.vmm
    }

    /// Its processes, the relay before the VMM (the order they are ended in).
    pub(crate) fn processes(&self) -> Vec<ProcessRef> {
        self.relay.into_iter().chain(self.vmm).collect()
    }

    /// Whether the VMM still runs.
    pub(crate) fn vmm_alive(&self) -> bool {
        self.vmm.is_some_and(|p| p.alive())
    }

    /// The guest console log in its working directory.
    pub(crate) fn console_log(&self) -> PathBuf {
        self.workdir.join("console.log")
    }

    /// Kills its processes, waits until they are gone, and removes the agent socket.
    pub(crate) async fn halt(&self) {
        ProcessRef::kill_and_wait(&self.processes()).await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The [`Machine`] a record stands for, for a process that did not boot it. Cheap and
/// infallible: nothing is checked until it is used, and no backend has to be set up.
pub fn attach(record: &MachineRecord) -> Box<dyn Machine> {
    match record.backend {
        BackendKind::Qemu => super::qemu::attach(record),
        BackendKind::Firecracker => super::firecracker::attach(record),
        #[cfg(feature = "fake-backend")]
        BackendKind::Fake => super::fake::attach(record),
    }
}

/// A machine found again from its record whose agent is reached with the hybrid-vsock
/// `CONNECT` handshake on the recorded socket (Firecracker's own socket).
#[derive(Debug)]
pub(crate) struct AttachedMachine {
    pub(crate) rec: MachineRecord,
}

impl AttachedMachine {
    pub(crate) fn new(rec: MachineRecord) -> Self {
        Self { rec }
    }
}

/// One `CONNECT` to the agent's port through `socket`.
pub(crate) async fn connect_vsock(
    socket: &Path,
    timeout: Duration,
) -> Result<tokio::net::UnixStream> {
    pyro_firecracker::vsock::connect(socket, pyro_proto::AGENT_PORT, timeout)
        .await
        .map_err(|e| CoreError::Boot {
            reason: format!("cannot reach the guest agent: {e}"),
            console_tail: String::new(),
        })
}

impl Machine for AttachedMachine {
    fn pid(&self) -> u32 {
        self.rec.vmm.map_or(0, |p| p.pid)
    }
    fn record(&self) -> MachineRecord {
        self.rec.clone()
    }
    fn connect(&mut self, timeout: Duration) -> BoxFuture<'_, Result<tokio::net::UnixStream>> {
        Box::pin(connect_vsock(&self.rec.socket, timeout))
    }
    fn is_alive(&mut self) -> bool {
        self.rec.vmm_alive()
    }
    fn halt(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.rec.halt())
    }
    fn console_tail(&self, max: usize) -> String {
        console_tail(&self.rec.console_log(), max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> MachineRecord {
        MachineRecord {
            backend: BackendKind::Qemu,
            vmm: Some(ProcessRef {
                pid: 1234,
                start_ticks: u64::from(u32::MAX) + 7,
            }),
            relay: Some(ProcessRef {
                pid: 1235,
                start_ticks: 9,
            }),
            relay_bin: Some("/usr/bin/pyro".into()),
            socket: "/s/workspaces/abc/vm/vsock.sock".into(),
            workdir: "/s/workspaces/abc/vm".into(),
        }
    }

    #[test]
    fn records_round_trip_through_json() {
        let rec = record();
        assert_eq!(MachineRecord::from_json(&rec.to_json()), Some(rec.clone()));
        let fc = MachineRecord {
            backend: BackendKind::Firecracker,
            relay: None,
            relay_bin: None,
            ..rec
        };
        let text = fc.to_json();
        assert!(!text.contains("relay"), "{text}");
        assert_eq!(MachineRecord::from_json(&text), Some(fc));
    }

    #[test]
    fn unreadable_records_are_none() {
        assert_eq!(MachineRecord::from_json(""), None);
        assert_eq!(MachineRecord::from_json("{}"), None);
        let mut v: serde_json::Value = serde_json::from_str(&record().to_json()).unwrap();
        v["backend"] = "vmware".into();
        assert_eq!(MachineRecord::from_json(&v.to_string()), None);
        // A field a newer pyro adds is ignored (records are read leniently).
        v["backend"] = "qemu".into();
        v["future_field"] = 1.into();
        assert_eq!(MachineRecord::from_json(&v.to_string()), Some(record()));
    }

    #[test]
    fn a_record_of_processes_that_are_gone_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let alive = ProcessRef::of(pid);
        child.wait().unwrap();
        let rec = MachineRecord {
            vmm: alive,
            ..record()
        };
        assert!(!rec.vmm_alive());
        assert!(!attach(&rec).is_alive());
        let me = ProcessRef::of(std::process::id()).unwrap();
        assert!(me.alive());
        assert!(
            MachineRecord {
                vmm: Some(me),
                ..record()
            }
            .vmm_alive()
        );
    }
}
