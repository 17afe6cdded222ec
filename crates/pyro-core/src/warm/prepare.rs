//! Getting an environment ready ahead of time (`pyro prepare`) and saying how ready it is
//! (`pyro doctor --environment`): the environment built, and the warm snapshot of the
//! one-shot default shape (the `vm_run` defaults: 1 vCPU, 1024 MiB, the one-shot disk, no
//! network) that a first start restores instead of booting cold.

use std::path::Path;

use serde::Serialize;

use super::{SnapshotKey, SnapshotStore, is_current};
use crate::backend::{BootSpec, resolve};
use crate::error::{CoreError, Result};
use crate::ops::defaults::{MEM_MIB, VCPU_COUNT};
use crate::{ProgressEvent, ProgressFn, Pyro, UPPER_DISK_MIB, host};

/// How ready an environment is for a fast first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Built, and its warm snapshot fits the current environment, agent and backend.
    Ready,
    /// Built, no warm snapshot yet (or snapshots are off): the first start boots cold and
    /// builds it.
    Cold,
    /// Built, but its snapshots were taken of another environment version, kernel, rootfs
    /// or agent: the first start rebuilds.
    Stale,
    /// Not built.
    Missing,
}

impl Readiness {
    /// `ready`, `cold`, `stale` or `missing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Cold => "cold",
            Self::Stale => "stale",
            Self::Missing => "missing",
        }
    }
}

/// An environment's [`Readiness`], and why.
#[derive(Clone, Debug, Serialize)]
pub struct EnvironmentReadiness {
    /// The environment.
    pub environment: String,
    /// How ready it is.
    pub state: Readiness,
    /// Why, in a sentence.
    pub detail: String,
    /// The warm snapshot that makes it ready.
    pub snapshot_id: Option<String>,
    /// Milliseconds its build took (when there is one).
    pub snapshot_build_ms: Option<u64>,
}

impl Pyro {
    /// Builds `name` (as [`Pyro::pull_environment`]) and the warm snapshot of the one-shot
    /// default shape, so that the first `vm_run` restores instead of booting cold. Idempotent:
    /// an existing snapshot is kept. Progress: the pull's steps, then [`ProgressEvent::Snapshot`].
    pub async fn prepare_environment(
        &self,
        name: &str,
        progress: ProgressFn,
    ) -> Result<EnvironmentReadiness> {
        let env = self.pull_environment(name, progress.clone()).await?;
        let mut out = EnvironmentReadiness {
            environment: name.to_string(),
            state: Readiness::Cold,
            detail: String::new(),
            snapshot_id: None,
            snapshot_build_ms: None,
        };
        if !self.snapshots_enabled() {
            out.detail = format!("built; warm snapshots are off ({}=0)", super::SNAPSHOTS_ENV);
            return Ok(out);
        }
        let backend = self.backend(self.opts.backend, &progress).await?;
        let workdir = self.opts.state_dir.join("vms").join(".prepare");
        let upper = workdir.join("upper.ext4");
        let spec = BootSpec {
            id: "prepare",
            workdir: &workdir,
            env: &env,
            upper: &upper,
            vcpu_count: VCPU_COUNT as u8,
            mem_mib: MEM_MIB as u32,
            persistent: false,
            durable_disk: false,
            relay_bin: None,
            boot_timeout: self.opts.boot_timeout,
            net: None,
        };
        let Some(vmm) = backend.snapshot_identity(&spec) else {
            out.detail = format!(
                "built; the {} backend takes no warm snapshots",
                backend.kind().as_str()
            );
            return Ok(out);
        };
        let key = SnapshotKey::new(
            &env,
            backend.kind(),
            spec.vcpu_count,
            spec.mem_mib,
            UPPER_DISK_MIB,
            false,
            vmm,
        );
        let store = SnapshotStore::new(self.cache.root());
        let existed = store.lookup(&key).is_some();
        if !existed {
            progress(&ProgressEvent::Snapshot(format!(
                "building the warm snapshot of {name} with {MEM_MIB} MiB and {VCPU_COUNT} vCPU"
            )));
        }
        let ctx = super::BuildContext {
            backend: backend.as_ref(),
            cache: &self.cache,
            env: &env,
            boot_timeout: self.opts.boot_timeout,
            net: None,
        };
        let snap = store.ensure(&key, &ctx).await?;
        progress(&ProgressEvent::Snapshot(if existed {
            format!("warm snapshot {} already built", snap.meta().id)
        } else {
            format!(
                "warm snapshot {} ready (built in {:.1} s)",
                snap.meta().id,
                snap.meta().build_ms as f64 / 1000.0
            )
        }));
        out.state = Readiness::Ready;
        out.detail = format!(
            "built; warm snapshot {} for {} with {MEM_MIB} MiB and {VCPU_COUNT} vCPU",
            snap.meta().id,
            backend.kind().as_str()
        );
        out.snapshot_id = Some(snap.meta().id.clone());
        out.snapshot_build_ms = Some(snap.meta().build_ms);
        Ok(out)
    }

    /// How ready `name` is, building and starting nothing. A snapshot is matched on
    /// everything its key holds except the VMM binary's identity (reading that would create
    /// the backend, which for Firecracker may download it): a VMM upgrade shows as `ready`
    /// and is rebuilt on the first start.
    pub fn environment_readiness(&self, name: &str) -> Result<EnvironmentReadiness> {
        let info = self.inspect_environment(name)?;
        let mut out = EnvironmentReadiness {
            environment: name.to_string(),
            state: Readiness::Missing,
            detail: format!("not built (pyro prepare {name} builds it)"),
            snapshot_id: None,
            snapshot_build_ms: None,
        };
        if !info.installed {
            return Ok(out);
        }
        let Some(manifest) = self.cache.read_environment_manifest(name)? else {
            return Ok(out);
        };
        out.state = Readiness::Cold;
        if !self.snapshots_enabled() {
            out.detail = format!("built; warm snapshots are off ({}=0)", super::SNAPSHOTS_ENV);
            return Ok(out);
        }
        let kind = resolve(self.opts.backend, &self.facts)?;
        let agent = host::locate_agent(self.opts.agent_bin.as_deref())?;
        let agent_digest = sha256_file(&agent)?;
        let store = SnapshotStore::new(self.cache.root());
        let of_env: Vec<_> = store
            .list()
            .into_iter()
            .filter(|s| s.meta().key.environment == name)
            .collect();
        let shape = |k: &SnapshotKey| {
            k.backend == kind.as_str()
                && !k.durable_disk
                && i64::from(k.vcpu_count) == VCPU_COUNT
                && i64::from(k.mem_mib) == MEM_MIB
                && k.upper_disk_mib == UPPER_DISK_MIB
        };
        let agent_current = manifest
            .initramfs
            .as_ref()
            .is_some_and(|r| r.agent_sha256 == agent_digest);
        if let Some(s) = of_env.iter().find(|s| {
            shape(&s.meta().key)
                && is_current(s.meta(), &self.cache)
                && s.meta().key.agent_digest == agent_digest
        }) {
            out.state = Readiness::Ready;
            out.detail = format!(
                "built; warm snapshot {} for {} with {MEM_MIB} MiB and {VCPU_COUNT} vCPU",
                s.meta().id,
                kind.as_str()
            );
            out.snapshot_id = Some(s.meta().id.clone());
            out.snapshot_build_ms = Some(s.meta().build_ms);
            return Ok(out);
        }
        let stale: Vec<String> = of_env
            .iter()
            .filter(|s| shape(&s.meta().key))
            .map(|s| {
                let k = &s.meta().key;
                if k.environment_version != manifest.version {
                    format!("{} is of version {}", s.meta().id, k.environment_version)
                } else if k.agent_digest != agent_digest {
                    format!("{} was taken with another agent", s.meta().id)
                } else {
                    format!(
                        "{} was taken of another kernel, initramfs or rootfs",
                        s.meta().id
                    )
                }
            })
            .collect();
        if !stale.is_empty() {
            out.state = Readiness::Stale;
            out.detail = format!(
                "built, but its warm snapshot is stale ({}); pyro prepare {name} rebuilds it",
                stale.join("; ")
            );
        } else if !agent_current {
            out.state = Readiness::Stale;
            out.detail = format!(
                "built with another agent than {}; the next start rebuilds its initramfs and snapshot",
                agent.display()
            );
        } else {
            out.detail = format!(
                "built, no warm snapshot yet (the first start builds it; pyro prepare {name} does it now)"
            );
        }
        Ok(out)
    }
}

/// Hex sha256 of a file's contents.
fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest as _;
    let bytes = std::fs::read(path).map_err(|e| CoreError::io("read", path, e))?;
    Ok(sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
