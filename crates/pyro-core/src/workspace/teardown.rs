//! One teardown for every way a workspace's host resources end: `stop`, `delete`, a failed
//! `create` or `reset`, orphan reaping, and the reconcile a later call does after a crash
//! (see [`crate::ledger`] for what a workspace owns and where each is recorded).
use super::*;

/// How far a teardown goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Teardown {
    /// End what runs (helper processes, the machine) and keep the workspace: `stop`, a
    /// reset or boot that replaces its machine, reconcile.
    Halt,
    /// Everything: what runs, then the record and ledger (one transaction), then the
    /// directory with the disk. `delete`, a failed `create`, orphan reaping.
    Remove,
}

impl Pyro {
    /// Releases what workspace `id` holds on the host, in this order: the resources of its
    /// ledger (helper processes first: a watchdog would take its machine's end for a
    /// crash), watchdogs the ledger does not name (an older pyro's, or one whose starter died
    /// before recording it), the machine the record names (`recorded`) and the one its last
    /// boot noted in its directory, then anything the `/proc` scan still finds; with
    /// [`Teardown::Remove`] also the record with its ledger and the directory. Idempotent:
    /// what is already gone counts as released. Returns whether a machine was running.
    ///
    /// # Errors
    ///
    /// Only with [`Teardown::Remove`]: the store refused to delete the record, or the
    /// directory could not be removed. Everything that could be released was.
    pub(super) async fn teardown(
        &self,
        id: &str,
        recorded: Option<&MachineRecord>,
        what: Teardown,
    ) -> Result<bool> {
        let d = self.ws_dirs(id);
        self.release_ledger(id, crate::ledger::Phase::BeforeMachine)
            .await;
        self.end_watchdogs(id).await;
        let mut ran = false;
        let noted = procs::noted_machine(&d.root);
        let unrecorded = noted.as_ref().filter(|n| Some(*n) != recorded);
        for m in recorded.into_iter().chain(unrecorded) {
            let mut machine = crate::backend::attach(m);
            ran |= machine.is_alive();
            machine.halt().await;
        }
        // Anything nobody recorded, or that appeared meanwhile; forgets the noted machine.
        let ended = procs::end_all(&d.root, id).await;
        ran |= ended.iter().any(|p| p.role == procs::Role::Vmm);
        // What the machine held (its network) goes once it is gone.
        self.release_ledger(id, crate::ledger::Phase::AfterMachine)
            .await;
        if what == Teardown::Remove {
            self.store()?.delete_workspace(id)?;
            match std::fs::remove_dir_all(&d.root) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CoreError::io("remove", &d.root, e)),
            }
            // A watchdog another process started while this one worked ends with its record
            // anyway; end it now, so nothing of the workspace is left at all.
            procs::end_all(&d.root, id).await;
        }
        Ok(ran)
    }
}
