//! The pre-warmed pool (opt-in): one-shot sandboxes started ahead of time and kept paused,
//! for bursts of `run_in_vm` / `vm_run` calls in a long-lived process (the MCP server,
//! `pyro rpc`, a library user).
//!
//! [`Pyro::enable_pool`] names one machine shape (environment, vCPUs, memory, backend) and
//! a size. A background task keeps that many sandboxes of the shape ready: each is created
//! and started like any one-shot VM (restored from the warm snapshot, reseeded), then
//! paused, and kept out of the VM list. [`Pyro::run_in_vm`] with a matching shape takes one
//! instead of creating a VM: it is resumed and reseeded again (the clock stood still while
//! it was paused, and its random state must be its own from the moment it is handed out),
//! then it runs the command and is deleted like any other; the task starts a replacement.
//! A sandbox that cannot be resumed is thrown away and the call falls back to the normal
//! path. Requests of any other shape are not affected.
//!
//! A networked pool ([`PoolSpec::network`]) keeps sandboxes with policy `egress` and no
//! allowlist: each has its own network (namespace, rules, daemon, address and MAC given
//! when it was restored) while it waits, and serves calls with `network` and no allowlist;
//! a call with an allowlist starts its own sandbox from the networked warm snapshot. A
//! discarded pooled sandbox's network is removed with it.
//!
//! Pooled sandboxes count towards the VM capacity; [`Pyro::shutdown`] kills them. Like
//! every one-shot VMM they die with the process.

use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Mutex, Notify};

use crate::backend::{BackendChoice, BackendKind};
use crate::error::{CoreError, Result};
use crate::warm::{self, BootMode};
use crate::{CreateVm, ProgressFn, Pyro, Vm, VmInfo, host, no_progress};

/// Largest pool.
pub const MAX_POOL_SIZE: usize = 16;
/// How long the filler waits after a failed start before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The shape and size of the pool.
#[derive(Clone, Debug)]
pub struct PoolSpec {
    /// Environment of the pooled sandboxes.
    pub environment: String,
    /// Their vCPUs.
    pub vcpu_count: i64,
    /// Their memory, MiB.
    pub mem_mib: i64,
    /// Their backend (`None`: the default).
    pub backend: Option<BackendChoice>,
    /// How many to keep ready, 1 to [`MAX_POOL_SIZE`].
    pub size: usize,
    /// Networked sandboxes (policy `egress`, no allowlist): each keeps its own network,
    /// address and MAC while it waits, and serves calls with `network` and no allowlist.
    pub network: bool,
}

impl PoolSpec {
    /// A pool of `size` sandboxes of `environment` with the default shape of
    /// [`CreateVm::new`].
    pub fn new(environment: impl Into<String>, size: usize) -> Self {
        let c = CreateVm::new(environment);
        Self {
            environment: c.environment,
            vcpu_count: c.vcpu_count,
            mem_mib: c.mem_mib,
            backend: None,
            size,
            network: false,
        }
    }

    fn create(&self) -> CreateVm {
        let mut c = CreateVm::new(self.environment.clone());
        c.vcpu_count = self.vcpu_count;
        c.mem_mib = self.mem_mib;
        c.backend = self.backend;
        c.network = self.network;
        c
    }
}

/// What [`Pyro::pool_status`] reports.
#[derive(Clone, Debug, Serialize)]
pub struct PoolStatus {
    /// Whether a pool is configured.
    pub enabled: bool,
    /// Its environment.
    pub environment: Option<String>,
    /// Its vCPUs.
    pub vcpu_count: Option<i64>,
    /// Its memory, MiB.
    pub mem_mib: Option<i64>,
    /// The backend its sandboxes run on.
    pub backend: Option<String>,
    /// Whether its sandboxes are networked (policy egress, no allowlist).
    pub network: Option<bool>,
    /// How many it keeps ready.
    pub size: usize,
    /// Ready (paused) now.
    pub ready: usize,
    /// Being started now.
    pub starting: usize,
    /// Taken so far.
    pub taken: u64,
    /// Why the last start failed, if it did.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct State {
    spec: Option<(PoolSpec, BackendKind)>,
    ready: Vec<Vm>,
    starting: usize,
    taken: u64,
    closed: bool,
    last_error: Option<String>,
}

/// The pool of a [`Pyro`].
#[derive(Default)]
pub(crate) struct Pool {
    state: StdMutex<State>,
    /// Wakes the filler: a sandbox was taken, or the pool was closed.
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Pyro {
    /// Starts keeping `spec.size` sandboxes of `spec`'s shape ready (see [`crate::warm::pool`]).
    /// Returns at once; the sandboxes are started in the background (the first start of an
    /// environment builds it and its warm snapshot). Needs a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`CoreError::OutOfRange`] / [`CoreError::Invalid`] for a bad size or shape, or when
    /// a pool is already enabled; errors of the backend choice.
    pub fn enable_pool(self: &Arc<Self>, spec: PoolSpec) -> Result<()> {
        if spec.size == 0 || spec.size > MAX_POOL_SIZE {
            return Err(CoreError::OutOfRange {
                field: "pool_size",
                value: spec.size as i64,
                min: 1,
                max: MAX_POOL_SIZE as i64,
            });
        }
        let kind = self.validate_create(&spec.create())?;
        {
            let mut s = self.pool.lock();
            if s.spec.is_some() || s.closed {
                return Err(CoreError::Invalid {
                    field: "pool",
                    reason: "a pool is already enabled for this instance".into(),
                });
            }
            s.spec = Some((spec, kind));
        }
        tokio::spawn(fill(Arc::downgrade(self), self.pool.wake.clone()));
        Ok(())
    }

    /// The pool's configuration and fill level.
    pub fn pool_status(&self) -> PoolStatus {
        let s = self.pool.lock();
        let spec = s.spec.as_ref();
        PoolStatus {
            enabled: spec.is_some() && !s.closed,
            environment: spec.map(|(p, _)| p.environment.clone()),
            vcpu_count: spec.map(|(p, _)| p.vcpu_count),
            mem_mib: spec.map(|(p, _)| p.mem_mib),
            backend: spec.map(|(_, k)| k.as_str().to_string()),
            network: spec.map(|(p, _)| p.network),
            size: spec.map_or(0, |(p, _)| p.size),
            ready: s.ready.len(),
            starting: s.starting,
            taken: s.taken,
            last_error: s.last_error.clone(),
        }
    }

    /// Sandboxes held by the pool (ready or starting); they count towards the capacity.
    pub(crate) fn pooled_count(&self) -> usize {
        let s = self.pool.lock();
        s.ready.len() + s.starting
    }

    /// Stops the filler and kills every pooled sandbox.
    pub(crate) async fn close_pool(&self) {
        let ready = {
            let mut s = self.pool.lock();
            s.closed = true;
            std::mem::take(&mut s.ready)
        };
        self.pool.wake.notify_one();
        for vm in ready {
            discard(self, vm).await;
        }
    }

    /// A started sandbox from the pool for `req`, registered as a VM, or `None` when the
    /// pool has none of that shape ready (or the one taken could not be resumed).
    pub(crate) async fn take_pooled(
        &self,
        req: &CreateVm,
        progress: &ProgressFn,
    ) -> Option<VmInfo> {
        let kind =
            crate::backend::resolve(req.backend.unwrap_or(self.opts.backend), self.host_facts())
                .ok()?;
        if self.vm_map().len() >= self.opts.max_active_vms {
            return None;
        }
        let mut vm = {
            let mut s = self.pool.lock();
            let (spec, pool_kind) = s.spec.as_ref()?;
            // A networked sandbox waits with open egress: a call with an allowlist starts
            // its own (from the networked warm snapshot).
            let fits = !s.closed
                && req.network == spec.network
                && req.allow_hosts.is_empty()
                && req.allow_cidrs.is_empty()
                && req.environment == spec.environment
                && req.vcpu_count == spec.vcpu_count
                && req.mem_mib == spec.mem_mib
                && kind == *pool_kind;
            if !fits {
                return None;
            }
            let vm = s.ready.pop()?;
            s.taken += 1;
            vm
        };
        self.pool.wake.notify_one();
        let t = Instant::now();
        let id = vm.info.vm_id.clone();
        progress(&crate::ProgressEvent::Phase {
            phase: "create",
            vm_id: Some(id.clone()),
        });
        let woke = async {
            let machine = vm
                .machine
                .as_mut()
                .ok_or(CoreError::VmNotFound { id: id.clone() })?;
            machine.resume().await?;
            let session = vm
                .session
                .as_ref()
                .ok_or(CoreError::VmNotFound { id: id.clone() })?;
            // The clock stood still while paused; the entropy must be this call's own.
            warm::reseed(session).await?;
            Ok::<(), CoreError>(())
        }
        .await;
        if let Err(e) = woke {
            tracing::warn!(vm_id = id, "a pooled sandbox could not be resumed: {e}");
            discard(self, vm).await;
            return None;
        }
        let now = host::now();
        vm.info.ttl_seconds = req.ttl_seconds as u64;
        vm.info.created_at = now;
        vm.info.expires_at = now + req.ttl_seconds as f64;
        vm.info
            .metadata
            .insert("boot_mode".into(), BootMode::Pooled.as_str().into());
        vm.created = Instant::now();
        vm.boot_ms = Some(t.elapsed().as_millis() as u64);
        let info = vm.info.clone();
        self.vm_map().insert(id, Arc::new(Mutex::new(vm)));
        Some(info)
    }

    /// Creates, starts and pauses one sandbox for the pool.
    async fn start_pooled(&self, spec: &PoolSpec, kind: BackendKind) -> Result<Vm> {
        let choice = spec.backend.unwrap_or(self.opts.backend);
        let mut vm = self
            .new_vm(spec.create(), kind, choice, no_progress())
            .await?;
        let id = vm.info.vm_id.clone();
        let started = async {
            self.boot_vm(&id, &mut vm, &no_progress()).await?;
            let machine = vm
                .machine
                .as_mut()
                .ok_or(CoreError::VmNotFound { id: id.clone() })?;
            machine.pause().await
        }
        .await;
        match started {
            Ok(()) => Ok(vm),
            Err(e) => {
                discard(self, vm).await;
                Err(e)
            }
        }
    }
}

/// Kills a sandbox that never reached the VM map, removes its network and its directory.
async fn discard(pyro: &Pyro, mut vm: Vm) {
    vm.session = None;
    if let Some(mut m) = vm.machine.take() {
        m.halt().await;
    }
    if vm.net.take().is_some() {
        pyro.close_network(&vm.info.vm_id).await;
    }
    let _ = std::fs::remove_dir_all(&vm.dir);
}

/// The filler: keeps the pool at its size until it is closed or its `Pyro` is gone.
async fn fill(pyro: Weak<Pyro>, wake: Arc<Notify>) {
    loop {
        let Some(p) = pyro.upgrade() else { return };
        let job = {
            let mut s = p.pool.lock();
            match &s.spec {
                _ if s.closed => return,
                Some((spec, kind))
                    if s.ready.len() + s.starting < spec.size
                        && p.vm_map().len() + s.ready.len() + s.starting
                            < p.opts.max_active_vms =>
                {
                    let job = (spec.clone(), *kind);
                    s.starting += 1;
                    Some(job)
                }
                _ => None,
            }
        };
        let Some((spec, kind)) = job else {
            // Nothing to do until a sandbox is taken (or the pool closes). Holding no
            // `Pyro` while waiting lets it be dropped.
            drop(p);
            wake.notified().await;
            continue;
        };
        let made = p.start_pooled(&spec, kind).await;
        // What to do once the pool's lock is released.
        enum Next {
            Continue,
            Discard(Box<Vm>),
            Retry(CoreError),
        }
        let next = {
            let mut s = p.pool.lock();
            s.starting -= 1;
            match made {
                Ok(vm) if !s.closed => {
                    s.ready.push(vm);
                    s.last_error = None;
                    Next::Continue
                }
                // Closed while it started: it is not wanted any more.
                Ok(vm) => Next::Discard(Box::new(vm)),
                Err(e) => {
                    s.last_error = Some(e.to_string());
                    Next::Retry(e)
                }
            }
        };
        match next {
            Next::Continue => {}
            Next::Discard(vm) => {
                discard(&p, *vm).await;
                return;
            }
            Next::Retry(e) => {
                tracing::warn!("the pool could not start a sandbox: {e}");
                drop(p);
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}
