//! The resource ledger: every host resource a sandbox owns beyond its machine and its
//! directory, recorded in the store next to the sandbox, and released by one teardown.
//!
//! A sandbox's resources, and where each is recorded:
//!
//! | resource | recorded in | released by |
//! |---|---|---|
//! | the machine (VMM, QEMU's relay) | the workspace row's `machine` column, written in the same transaction as the state it belongs to; also noted in `machine.json` before anything waits on it | [`crate::backend::Machine::halt`] |
//! | helper processes (the TTL watchdog; later port relays) | the `resources` table, one row per process ([`Resource::Process`]) | [`Resource::release`] |
//! | the directory (disk, sockets, logs, baseline) | its path is a function of the id | removal on delete |
//! | a network: namespace with its TAP, uplink, nftables tables ([`Resource::Network`]); later secret files | the `resources` table | [`Resource::release`], after the machine |
//!
//! The teardown of a workspace (`workspace/teardown.rs`) releases the ledger's resources,
//! then the machine, then anything the `/proc` scan still finds (the safety net for a
//! process started by a pyro killed before it could record it), and, when the workspace
//! goes away, its directory, its row and its ledger in one transaction. Every path ends that
//! way: delete, stop, a failed create or reset, orphan reaping, and the reconcile a later
//! call does after a crash. Releasing is idempotent: a resource already gone is released.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host;

/// How long a release waits for a killed process to be gone.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// One host resource a sandbox owns, as recorded in the store (JSON, tagged by `kind`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Resource {
    /// A detached helper process, identified by pid and start time (a reused pid is never
    /// taken for it).
    Process {
        /// What it is for (`watchdog`).
        role: String,
        /// Its pid.
        pid: u32,
        /// Its start time in clock ticks since boot.
        ticks: u64,
    },
    /// A sandbox's network (`pyro_net`): namespace `pyro-<index>` with its TAP, the
    /// host's end of its uplink, and its nftables tables. Recorded once its namespace is
    /// claimed, before anything else of it is made.
    Network {
        /// Its index in pyro's address plan ([`pyro_net::SandboxNet`]).
        index: u32,
    },
}

/// One ledger row as read back: its key, and the resource or why it cannot be read (a
/// newer pyro's kind).
pub type LedgerEntry = (String, std::result::Result<Resource, String>);

impl Resource {
    /// The key of its ledger row: unique per sandbox and resource.
    pub fn key(&self) -> String {
        match self {
            Self::Process { role, pid, ticks } => format!("process:{role}:{pid}:{ticks}"),
            Self::Network { index } => format!("network:{index}"),
        }
    }

    /// Whether it is released only once its sandbox's machine is gone (a network: the VMM
    /// holds its TAP), rather than before the machine (helper processes).
    pub fn after_machine(&self) -> bool {
        matches!(self, Self::Network { .. })
    }

    /// Whether it still holds anything on the host.
    pub fn is_held(&self) -> bool {
        match self {
            Self::Process { pid, ticks, .. } => host::process_alive(*pid, *ticks),
            Self::Network { index } => pyro_net::SandboxNet::new(*index)
                .is_ok_and(|plan| pyro_net::netns::exists(&plan.name())),
        }
    }

    /// Releases it; a resource already gone is released. Returns once it is gone, or after
    /// a few seconds.
    pub async fn release(&self) {
        match self {
            Self::Process { pid, ticks, .. } => {
                let (pid, ticks) = (*pid, *ticks);
                // Returns as soon as the process is gone (a pidfd), not on a polling tick.
                let _ = tokio::task::spawn_blocking(move || {
                    pyro_host::process::kill_and_wait(pid, ticks, RELEASE_WAIT)
                })
                .await;
            }
            Self::Network { index } => {
                let index = *index;
                let released =
                    tokio::task::spawn_blocking(move || crate::net::release(index)).await;
                match released {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(index, "cannot remove a sandbox network: {e}"),
                    Err(e) => tracing::warn!(index, "removing a sandbox network panicked: {e}"),
                }
            }
        }
    }
}

/// Which of a sandbox's resources [`crate::Pyro::release_ledger`] releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Those to end before the machine (helper processes: a watchdog would take its
    /// machine's end for a crash).
    BeforeMachine,
    /// Those the machine held (its network); everything still recorded.
    AfterMachine,
}

impl crate::Pyro {
    /// Releases and forgets the resources of `owner`'s ledger that `phase` names. An entry
    /// this build cannot read (a newer pyro's) is left in place and reported.
    pub(crate) async fn release_ledger(&self, owner: &str, phase: Phase) {
        let Ok(store) = self.store() else {
            return;
        };
        let entries = match store.resources(owner) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(owner, "cannot read the resource ledger: {e}");
                return;
            }
        };
        for (key, resource) in entries {
            match resource {
                Ok(r) if phase == Phase::BeforeMachine && r.after_machine() => {}
                // A teardown run by the workspace's own watchdog (its TTL ran out) must not
                // end the process doing it: the watchdog exits by itself once it is done.
                Ok(Resource::Process { pid, .. }) if pid == std::process::id() => {}
                Ok(r) => {
                    r.release().await;
                    if let Err(e) = store.forget_resource(owner, &key) {
                        tracing::warn!(owner, key, "cannot forget a released resource: {e}");
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        owner,
                        key,
                        "a ledger entry this pyro cannot read is left: {e}"
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_is_released_once_and_a_gone_one_is_released_too() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let ticks = host::process_start_ticks(pid).unwrap();
        let r = Resource::Process {
            role: "watchdog".into(),
            pid,
            ticks,
        };
        assert!(r.is_held());
        let reaper = std::thread::spawn(move || child.wait());
        r.release().await;
        reaper.join().unwrap().unwrap();
        assert!(!r.is_held());
        r.release().await;
        // A pid that was reused is not ours: another start time is never killed.
        let me = std::process::id();
        let other = Resource::Process {
            role: "watchdog".into(),
            pid: me,
            ticks: host::process_start_ticks(me).unwrap() + 1,
        };
        assert!(!other.is_held());
        other.release().await;
    }

    #[test]
    fn resources_round_trip_and_unknown_kinds_are_refused() {
        let r = Resource::Process {
            role: "watchdog".into(),
            pid: 7,
            ticks: 9,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"process","role":"watchdog","pid":7,"ticks":9}"#
        );
        assert_eq!(serde_json::from_str::<Resource>(&text).unwrap(), r);
        assert_eq!(r.key(), "process:watchdog:7:9");
        assert!(serde_json::from_str::<Resource>(r#"{"kind":"tap","name":"x"}"#).is_err());
    }

    #[test]
    fn the_store_keeps_a_ledger_per_workspace_and_drops_it_with_the_workspace() {
        use crate::backend::BackendKind;
        use crate::store::{Store, WorkspaceRecord};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rec =
            WorkspaceRecord::new("aaaaaaaaaaaa", "debian:12", "1.0.0", BackendKind::Qemu, 1.0);
        store.insert_workspace(&rec).unwrap();
        let dog = |pid| Resource::Process {
            role: "watchdog".into(),
            pid,
            ticks: 5,
        };
        store.record_resource("aaaaaaaaaaaa", &dog(1)).unwrap();
        store.record_resource("aaaaaaaaaaaa", &dog(2)).unwrap();
        store.record_resource("aaaaaaaaaaaa", &dog(2)).unwrap();
        store.record_resource("bbbbbbbbbbbb", &dog(3)).unwrap();
        let keys = |owner| -> Vec<String> {
            store
                .resources(owner)
                .unwrap()
                .into_iter()
                .map(|(k, r)| {
                    assert_eq!(r.unwrap().key(), k);
                    k
                })
                .collect()
        };
        assert_eq!(
            keys("aaaaaaaaaaaa"),
            ["process:watchdog:1:5", "process:watchdog:2:5"]
        );
        store
            .forget_resource("aaaaaaaaaaaa", "process:watchdog:1:5")
            .unwrap();
        assert_eq!(keys("aaaaaaaaaaaa"), ["process:watchdog:2:5"]);
        assert!(store.delete_workspace("aaaaaaaaaaaa").unwrap());
        assert!(
            keys("aaaaaaaaaaaa").is_empty(),
            "deleted with its workspace"
        );
        assert_eq!(
            keys("bbbbbbbbbbbb").len(),
            1,
            "another owner's ledger is kept"
        );
    }
}
