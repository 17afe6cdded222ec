//! The sandbox one-shot VMs and workspaces both run on: a booted machine and its agent
//! session, made by the one boot path.
//!
//! [`Pyro::boot_sandbox`] restores the environment's warm snapshot when the sandbox's disk is
//! fresh and snapshots are on (the pool's sandboxes are made this way too, then paused), and
//! boots cold otherwise or when the restore fails, on a new disk. The caller's `on_spawn`
//! records the machine as soon as it runs, before anything waits on the guest (a one-shot
//! VM's `owner.json`, a workspace's `machine.json`), so a machine never outlives its
//! starter unnoticed; a machine whose recording or agent connection fails is halted before
//! the error is returned. Commands then run through the one output pipeline
//! ([`crate::output::exec`]); what a sandbox owns is ended by its owner's teardown (a
//! one-shot VM's destroy, a workspace's `teardown`).

use std::path::Path;

use pyro_proto::Session;

use crate::backend::{Backend, BootSpec, Machine};
use crate::error::{CoreError, Result};
use crate::warm::BootMode;
use crate::{ProgressFn, Pyro};

/// A booted machine with its agent session.
pub(crate) struct Sandbox {
    /// The machine (VMM, relay).
    pub(crate) machine: Box<dyn Machine>,
    /// The session with its agent.
    pub(crate) session: Session,
    /// How it started.
    pub(crate) mode: BootMode,
}

/// What [`Pyro::boot_sandbox`] boots, and how.
pub(crate) struct BootPlan<'a> {
    /// The machine; `spec.upper` is its writable disk.
    pub(crate) spec: BootSpec<'a>,
    /// The backend to boot it on.
    pub(crate) backend: &'a dyn Backend,
    /// The disk's size.
    pub(crate) disk_mib: u64,
    /// The disk is fresh (nothing of the sandbox's own on it yet): a warm snapshot may be
    /// restored, and a cold boot creates the disk when it does not exist.
    pub(crate) fresh_disk: bool,
    /// Records the machine as soon as it runs.
    pub(crate) on_spawn: &'a (dyn Fn(&dyn Machine) -> Result<()> + Send + Sync),
    /// Puts the sandbox's directory back as a cold boot expects it after a failed restore
    /// (the disk is already removed).
    pub(crate) after_failed_warm: &'a (dyn Fn() -> Result<()> + Send + Sync),
    /// Progress of a snapshot build.
    pub(crate) progress: &'a ProgressFn,
    /// Restore this saved machine (a workspace snapshot's directory: the backend's state
    /// files) instead of booting; the disk at `spec.upper` is already the snapshot's copy.
    pub(crate) restore_from: Option<&'a Path>,
    /// A cold boot makes a machine that can be snapshotted while it runs, where the
    /// backend can ([`Backend::boot_recorded`]); workspaces ask for it.
    pub(crate) recorded: bool,
}

impl Pyro {
    /// The one boot path of every sandbox (see the module docs).
    pub(crate) async fn boot_sandbox(&self, plan: BootPlan<'_>) -> Result<Sandbox> {
        if let Some(dir) = plan.restore_from {
            let card = own_card(&plan.spec);
            let machine = plan
                .backend
                .restore(template_spec(&plan.spec, &card), dir)
                .await?;
            let (machine, session) = self.own_machine(machine, &plan, plan.spec.net).await?;
            return Ok(Sandbox {
                machine,
                session,
                mode: BootMode::Snapshot,
            });
        }
        let disk: &Path = plan.spec.upper;
        if plan.fresh_disk && self.snapshots_enabled() {
            match self
                .start_warm(
                    plan.spec,
                    disk,
                    plan.disk_mib,
                    plan.backend,
                    plan.on_spawn,
                    plan.progress,
                )
                .await
            {
                Ok(Some((machine, session))) => {
                    return Ok(Sandbox {
                        machine,
                        session,
                        mode: BootMode::Warm,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(
                        sandbox = plan.spec.id,
                        "warm start failed, booting cold: {e}"
                    );
                    // The attempt may have left a copy of the snapshot's disk: boot from a
                    // new one.
                    match std::fs::remove_file(disk) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(CoreError::io("remove", disk, e)),
                    }
                    (plan.after_failed_warm)()?;
                }
            }
        }
        if plan.fresh_disk && !disk.exists() {
            self.cache().create_upper_disk(disk, plan.disk_mib)?;
        }
        if plan.recorded && plan.backend.boots_recorded() {
            let card = own_card(&plan.spec);
            let machine = plan
                .backend
                .boot_recorded(template_spec(&plan.spec, &card))
                .await?;
            let (machine, session) = self.own_machine(machine, &plan, plan.spec.net).await?;
            return Ok(Sandbox {
                machine,
                session,
                mode: BootMode::Cold,
            });
        }
        let boot_timeout = plan.spec.boot_timeout;
        let mut machine = plan.backend.boot(plan.spec).await?;
        if let Err(e) = (plan.on_spawn)(machine.as_ref()) {
            machine.halt().await;
            return Err(e);
        }
        match crate::connect_agent(machine.as_mut(), boot_timeout).await {
            Ok(session) => Ok(Sandbox {
                machine,
                session,
                mode: BootMode::Cold,
            }),
            Err(e) => {
                machine.halt().await;
                Err(e)
            }
        }
    }

    /// Records a machine started with the template's card and no clock of its own, waits
    /// for its agent and makes it its own ([`crate::warm::reseed_with`]: entropy, clock,
    /// machine id, and `nic`'s MAC and address); halted again on any failure.
    async fn own_machine(
        &self,
        mut machine: Box<dyn Machine>,
        plan: &BootPlan<'_>,
        nic: Option<&crate::backend::GuestNic>,
    ) -> Result<(Box<dyn Machine>, Session)> {
        let ready = async {
            (plan.on_spawn)(machine.as_ref())?;
            let session =
                crate::connect_agent_session(machine.as_mut(), plan.spec.boot_timeout).await?;
            crate::warm::reseed_with(&session, nic).await?;
            Ok::<_, CoreError>(session)
        }
        .await;
        match ready {
            Ok(session) => Ok((machine, session)),
            Err(e) => {
                machine.halt().await;
                Err(e)
            }
        }
    }
}

/// The template's card for `spec`'s own (see [`crate::net::template_nic`]).
fn own_card(spec: &BootSpec<'_>) -> Option<crate::backend::GuestNic> {
    spec.net.map(crate::net::template_nic)
}

/// `spec` with `card` in place of its own network card.
fn template_spec<'a>(
    spec: &BootSpec<'a>,
    card: &'a Option<crate::backend::GuestNic>,
) -> BootSpec<'a> {
    BootSpec {
        net: card.as_ref(),
        ..*spec
    }
}
