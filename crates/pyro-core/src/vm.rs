//! One-shot VMs: create, start, exec, stop, delete, status, reaping, `run_in_vm`, and the
//! per-process table of them ([`Vm`]). A one-shot VM lives inside the process that made it
//! (its owner record lets a later process reap it after a crash).

use super::*;

pub(crate) struct Vm {
    pub(crate) info: VmInfo,
    pub(crate) dir: PathBuf,
    pub(crate) env: pyro_image::Installed,
    pub(crate) backend_choice: BackendChoice,
    pub(crate) machine: Option<Box<dyn Machine>>,
    pub(crate) session: Option<Session>,
    pub(crate) created: Instant,
    pub(crate) boot_ms: Option<u64>,
    /// Whether the machine was ever started (only a first start restores a snapshot: a
    /// restart must keep the sandbox's own disk).
    pub(crate) started_once: bool,
    /// Its network policy (`egress` with `network`, else `off`).
    pub(crate) policy: pyro_net::NetworkPolicy,
    /// Where its guest may connect.
    pub(crate) allowlist: pyro_net::Allowlist,
    /// Its network while it runs.
    pub(crate) net: Option<crate::net::SandboxNetwork>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct OwnerRecord {
    pub(crate) owner_pid: u32,
    pub(crate) owner_start_ticks: u64,
    pub(crate) vmm_pid: Option<u32>,
    pub(crate) vmm_start_ticks: Option<u64>,
}

impl Pyro {
    // ---------------------------------------------------------------- VMs

    /// Creates a VM (state `created`): validates, builds the environment if missing, makes the
    /// VM's directory. Nothing is booted yet; the first start makes its writable disk.
    pub async fn create_vm(&self, req: CreateVm, progress: ProgressFn) -> Result<VmInfo> {
        let kind = self.validate_create(&req)?;
        let choice = req.backend.unwrap_or(self.opts.backend);
        self.reap_orphans();
        self.reap_expired().await;
        if self.vm_map().len() + self.pooled_count() >= self.opts.max_active_vms {
            return Err(CoreError::Capacity {
                max: self.opts.max_active_vms,
            });
        }
        let vm = self.new_vm(req, kind, choice, progress).await?;
        let info = vm.info.clone();
        self.vm_map()
            .insert(info.vm_id.clone(), Arc::new(Mutex::new(vm)));
        Ok(info)
    }

    /// A new VM in state `created` (directory and owner record), not yet in the VM map.
    pub(crate) async fn new_vm(
        &self,
        req: CreateVm,
        kind: BackendKind,
        choice: BackendChoice,
        progress: ProgressFn,
    ) -> Result<Vm> {
        let entry = pyro_image::lookup(&req.environment)?;
        let (policy, allowlist) = vm_network(&req)?;
        let env = self.pull_environment(&req.environment, progress).await?;
        let id = host::new_id();
        let dir = self.opts.state_dir.join("vms").join(&id);
        host::ensure_private_dir(&dir)?;
        // The writable disk is made by the first start: a warm start copies the snapshot's,
        // a cold one a fresh one, so neither is written twice.
        if let Err(e) = self.write_owner(&dir, None) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let created_at = host::now();
        let mut metadata = BTreeMap::new();
        metadata.insert("kernel_release".into(), env.kernel_release.clone());
        metadata.insert("environment_digest".into(), env.digests.rootfs.clone());
        metadata.insert("agent_digest".into(), env.digests.agent.clone());
        let info = VmInfo {
            vm_id: id.clone(),
            environment: req.environment.clone(),
            environment_version: Some(entry.version.to_string()),
            vcpu_count: req.vcpu_count as u8,
            mem_mib: req.mem_mib as u32,
            ttl_seconds: req.ttl_seconds as u64,
            created_at,
            expires_at: created_at + req.ttl_seconds as f64,
            state: VmState::Created,
            network_enabled: policy.is_networked(),
            allow_host_compat: false,
            guest_ip: None,
            tap_name: None,
            execution_mode: "pending".into(),
            backend: kind.as_str().into(),
            metadata,
        };
        Ok(Vm {
            info,
            dir,
            env,
            backend_choice: choice,
            machine: None,
            session: None,
            created: Instant::now(),
            boot_ms: None,
            started_once: false,
            policy,
            allowlist,
            net: None,
        })
    }

    /// Checks create parameters without side effects; returns the backend they resolve to.
    pub fn validate_create(&self, req: &CreateVm) -> Result<BackendKind> {
        pyro_image::lookup(&req.environment)?;
        crate::validate::check_range("vcpu_count", req.vcpu_count, VCPU_RANGE)?;
        crate::validate::check_range("mem_mib", req.mem_mib, MEM_RANGE)?;
        crate::validate::check_range("ttl_seconds", req.ttl_seconds, TTL_RANGE)?;
        let (policy, _) = vm_network(req)?;
        let kind = backend::resolve(req.backend.unwrap_or(self.opts.backend), &self.facts)?;
        self.check_network(policy)?;
        Ok(kind)
    }

    pub(crate) fn write_owner(&self, dir: &Path, vmm_pid: Option<u32>) -> Result<()> {
        let me = std::process::id();
        let rec = OwnerRecord {
            owner_pid: me,
            owner_start_ticks: host::process_start_ticks(me).unwrap_or(0),
            vmm_pid,
            vmm_start_ticks: vmm_pid.and_then(host::process_start_ticks),
        };
        let path = dir.join("owner.json");
        let tmp = dir.join("owner.json.tmp");
        let body = serde_json::to_vec(&rec).map_err(|e| CoreError::Invalid {
            field: "owner record",
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, body).map_err(|e| CoreError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| CoreError::io("rename", &path, e))
    }

    pub(crate) fn get_vm(&self, id: &str) -> Result<Arc<Mutex<Vm>>> {
        self.vm_map()
            .get(id)
            .cloned()
            .ok_or_else(|| CoreError::VmNotFound { id: id.to_string() })
    }

    pub(crate) async fn check_expiry(&self, id: &str, vm: &Vm) -> Result<()> {
        if host::now() >= vm.info.expires_at {
            let ttl = vm.info.ttl_seconds;
            let _ = id;
            return Err(CoreError::Expired {
                id: vm.info.vm_id.clone(),
                ttl_seconds: ttl,
            });
        }
        Ok(())
    }

    /// Boots a created (or stopped) VM and waits until its agent answers.
    pub async fn start_vm(&self, id: &str, progress: ProgressFn) -> Result<VmInfo> {
        let handle = self.get_vm(id)?;
        let mut vm = handle.lock().await;
        if let Err(e) = self.check_expiry(id, &vm).await {
            drop(vm);
            self.reap_expired().await;
            return Err(e);
        }
        if vm.info.state == VmState::Started {
            return Err(CoreError::WrongState {
                id: id.into(),
                state: "started".into(),
                operation: "start",
                needed: "created or stopped",
            });
        }
        self.boot_vm(id, &mut vm, &progress).await?;
        Ok(vm.info.clone())
    }

    /// Starts `vm`'s machine (warm on a first start when snapshots are on, else cold) and
    /// connects to its agent; `vm` is `started` when this returns `Ok`.
    pub(crate) async fn boot_vm(&self, id: &str, vm: &mut Vm, progress: &ProgressFn) -> Result<()> {
        let backend = self.backend(vm.backend_choice, progress).await?;
        let upper = vm.dir.join("upper.ext4");
        if vm.policy.is_networked() && vm.net.is_none() {
            vm.net = Some(
                self.open_network(id, vm.policy, &vm.allowlist, &vm.dir)
                    .await?,
            );
        }
        let spec = BootSpec {
            id,
            workdir: &vm.dir,
            env: &vm.env,
            upper: &upper,
            vcpu_count: vm.info.vcpu_count,
            mem_mib: vm.info.mem_mib,
            persistent: false,
            durable_disk: false,
            relay_bin: None,
            boot_timeout: self.opts.boot_timeout,
            net: vm.net.as_ref().map(|n| &n.nic),
        };
        let dir = vm.dir.clone();
        let on_spawn = move |m: &dyn Machine| self.write_owner(&dir, Some(m.pid()));
        let sandbox = self
            .boot_sandbox(crate::sandbox::BootPlan {
                spec,
                backend: backend.as_ref(),
                disk_mib: UPPER_DISK_MIB,
                // Only a first start may restore a snapshot: a restart keeps its own disk.
                fresh_disk: !vm.started_once,
                on_spawn: &on_spawn,
                after_failed_warm: &|| Ok(()),
                progress,
                restore_from: None,
                recorded: false,
            })
            .await;
        let sandbox = match sandbox {
            Ok(sandbox) => sandbox,
            Err(e) => {
                if vm.net.take().is_some() {
                    self.close_network(id).await;
                }
                return Err(e);
            }
        };
        let (mut machine, session, mode) = (sandbox.machine, sandbox.session, sandbox.mode);
        // The daemon started while the machine booted; nothing runs in the guest before it
        // serves.
        if let Some(net) = vm.net.as_mut()
            && let Err(e) = self.network_ready(id, net).await
        {
            drop(session);
            machine.halt().await;
            vm.net = None;
            self.close_network(id).await;
            return Err(e);
        }
        if let Some(net) = &vm.net {
            vm.info.guest_ip = Some(net.plan.guest().to_string());
            vm.info.tap_name = Some(net.nic.tap.clone());
        }
        vm.session = Some(session);
        vm.started_once = true;
        vm.boot_ms = Some(vm.created.elapsed().as_millis() as u64);
        vm.machine = Some(machine);
        vm.info.state = VmState::Started;
        vm.info.execution_mode = backend.kind().execution_mode().into();
        vm.info
            .metadata
            .insert("boot_mode".into(), mode.as_str().into());
        Ok(())
    }

    /// A start from the warm snapshot of `spec`'s environment and shape, building the
    /// snapshot when there is none: `disk` (the file `spec.upper` names, directly or by a
    /// link) is replaced by a copy of the snapshot's disk, the machine is restored, `on_spawn` gets the VMM's pid before anything waits
    /// on the guest, and the guest is reseeded before this returns. `Ok(None)` when the
    /// backend takes no snapshots or a recent build failed (boot cold). On error nothing
    /// is left running and `disk` may be gone: the caller boots cold on a fresh disk.
    pub(crate) async fn start_warm(
        &self,
        spec: BootSpec<'_>,
        disk: &Path,
        disk_mib: u64,
        backend: &dyn Backend,
        on_spawn: &(dyn Fn(&dyn Machine) -> Result<()> + Send + Sync),
        progress: &ProgressFn,
    ) -> Result<Option<(Box<dyn Machine>, Session)>> {
        let id = spec.id;
        // A networked sandbox restores the networked template: the same card with the
        // template's MAC and no address, then the reseed gives the clone its own.
        let own_nic = spec.net;
        let template_nic = own_nic.map(crate::net::template_nic);
        let spec = BootSpec {
            net: template_nic.as_ref(),
            ..spec
        };
        let Some(vmm) = backend.snapshot_identity(&spec) else {
            return Ok(None);
        };
        let key = warm::SnapshotKey::new(
            spec.env,
            backend.kind(),
            spec.vcpu_count,
            spec.mem_mib,
            disk_mib,
            spec.durable_disk,
            vmm,
        );
        let store = warm::SnapshotStore::new(self.cache.root());
        let snap = match store.lookup(&key) {
            Some(snap) => snap,
            None => {
                let ctx = warm::BuildContext {
                    backend,
                    cache: &self.cache,
                    env: spec.env,
                    boot_timeout: self.opts.boot_timeout,
                    net: spec.net,
                };
                let what = format!(
                    "{} with {} MiB and {} vCPU{}{}",
                    spec.env.name,
                    spec.mem_mib,
                    spec.vcpu_count,
                    if spec.durable_disk {
                        ", for workspaces"
                    } else {
                        ""
                    },
                    if spec.net.is_some() {
                        ", networked"
                    } else {
                        ""
                    }
                );
                progress(&ProgressEvent::Snapshot(format!(
                    "building the warm snapshot of {what} (once; later starts restore it)"
                )));
                match store.ensure(&key, &ctx).await {
                    Ok(snap) => {
                        progress(&ProgressEvent::Snapshot(format!(
                            "warm snapshot of {what} ready ({:.1} s)",
                            snap.meta().build_ms as f64 / 1000.0
                        )));
                        snap
                    }
                    // Already reported when the build failed: boot cold quietly.
                    Err(e @ warm::SnapshotError::RecentlyFailed { .. }) => {
                        tracing::debug!(sandbox = id, "{e}");
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        remove_file_if_exists(disk)?;
        warm::copy_disk(&snap.upper_disk(), disk)
            .map_err(|e| CoreError::io("copy the snapshot's disk to", disk, e))?;
        let t = Instant::now();
        let mut machine = match backend.restore(spec, snap.dir()).await {
            Ok(machine) => machine,
            Err(e) => {
                store.invalidate(&snap, &e);
                return Err(e);
            }
        };
        tracing::debug!(sandbox = id, elapsed = ?t.elapsed(), "restored");
        let ready = async {
            on_spawn(machine.as_ref())?;
            let session = connect_agent_session(machine.as_mut(), self.opts.boot_timeout).await?;
            tracing::debug!(sandbox = id, elapsed = ?t.elapsed(), "agent connected");
            // Nothing may run in a clone before it has its own entropy, clock and identity.
            warm::reseed_with(&session, own_nic).await?;
            tracing::debug!(sandbox = id, elapsed = ?t.elapsed(), "reseeded");
            Ok::<_, CoreError>(session)
        }
        .await;
        match ready {
            Ok(session) => Ok(Some((machine, session))),
            Err(e) => {
                machine.halt().await;
                if !matches!(e, CoreError::Io { .. }) {
                    // The restored guest did not answer or refused its reseed.
                    store.invalidate(&snap, &e);
                }
                Err(e)
            }
        }
    }

    /// The VMM process of a started VM (for measurements such as `pyro bench`).
    pub async fn vmm_pid(&self, id: &str) -> Result<Option<u32>> {
        let handle = self.get_vm(id)?;
        let vm = handle.lock().await;
        Ok(vm.machine.as_ref().map(|m| m.pid()))
    }

    /// Runs one command in a started VM, then deletes the VM (the reference's contract),
    /// also when the exec fails.
    pub async fn exec_vm(
        &self,
        id: &str,
        opts: ExecOptions,
        on_output: Option<OutputFn<'_>>,
    ) -> Result<VmExecResult> {
        validate_exec(&opts)?;
        if !opts.secret_env.is_empty() {
            return Err(CoreError::Invalid {
                field: "secret_env",
                reason: "only workspaces have secrets".into(),
            });
        }
        let handle = self.get_vm(id)?;
        let result = {
            let vm = handle.lock().await;
            if let Err(e) = self.check_expiry(id, &vm).await {
                drop(vm);
                self.reap_expired().await;
                return Err(e);
            }
            if vm.info.state != VmState::Started {
                return Err(CoreError::WrongState {
                    id: id.into(),
                    state: vm.info.state.as_str().into(),
                    operation: "exec",
                    needed: "started",
                });
            }
            let session = vm.session.clone();
            let info = vm.info.clone();
            let boot_ms = vm.boot_ms;
            let boot_mode = info.metadata.get("boot_mode").cloned();
            drop(vm);
            match session {
                Some(s) => run_exec(&s, &info, opts, on_output).await.map(|mut r| {
                    r.boot_ms = boot_ms;
                    r.boot_mode = boot_mode;
                    r
                }),
                None => Err(CoreError::WrongState {
                    id: id.into(),
                    state: "started without an agent connection".into(),
                    operation: "exec",
                    needed: "started",
                }),
            }
        };
        self.destroy(id).await;
        result.map(|mut r| {
            r.cleanup = Cleanup {
                vm_id: id.to_string(),
                deleted: true,
                reason: "post_exec_cleanup".into(),
            };
            r
        })
    }

    /// Powers a started VM off (its disk is kept until delete).
    pub async fn stop_vm(&self, id: &str) -> Result<VmInfo> {
        let handle = self.get_vm(id)?;
        let mut vm = handle.lock().await;
        if let Some(session) = vm.session.take() {
            let req = api::Request::Shutdown(api::Shutdown { poweroff: true });
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                api::call::<api::Empty>(&session, &req),
            )
            .await;
        }
        if let Some(mut m) = vm.machine.take() {
            // Give the guest a moment to power off by itself, then make sure.
            for _ in 0..50 {
                if !m.is_alive() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            m.halt().await;
        }
        if vm.net.take().is_some() {
            self.close_network(id).await;
            vm.info.guest_ip = None;
            vm.info.tap_name = None;
        }
        if vm.info.state == VmState::Started {
            vm.info.state = VmState::Stopped;
        }
        Ok(vm.info.clone())
    }

    /// Deletes a VM in any state: kills its VMM and removes its directory.
    pub async fn delete_vm(&self, id: &str) -> Result<DeleteResult> {
        self.get_vm(id)?;
        self.destroy(id).await;
        Ok(DeleteResult {
            vm_id: id.to_string(),
            deleted: true,
            reason: "explicit_delete".into(),
        })
    }

    pub(crate) async fn destroy(&self, id: &str) {
        let handle = self.vm_map().remove(id);
        if let Some(handle) = handle {
            let mut vm = handle.lock().await;
            vm.session = None;
            if let Some(mut m) = vm.machine.take() {
                m.halt().await;
            }
            if vm.net.take().is_some() {
                self.close_network(id).await;
            }
            let _ = std::fs::remove_dir_all(&vm.dir);
        }
    }

    /// Status of a VM, checking that a started VM's VMM is really alive.
    pub async fn status_vm(&self, id: &str) -> Result<VmInfo> {
        let handle = self.get_vm(id)?;
        let mut vm = handle.lock().await;
        if let Err(e) = self.check_expiry(id, &vm).await {
            drop(vm);
            self.reap_expired().await;
            return Err(e);
        }
        let dead = vm.machine.as_mut().map(|m| !m.is_alive()).unwrap_or(false);
        if dead {
            vm.machine = None;
            vm.session = None;
            vm.info.state = VmState::Stopped;
            vm.info
                .metadata
                .insert("last_error".into(), "the VMM process exited".into());
        }
        Ok(vm.info.clone())
    }

    /// A VM's network: addresses, MAC, allowlist, refusals while it runs with one; else
    /// why it has none.
    pub async fn network_info_vm(&self, id: &str) -> Result<NetworkInfo> {
        let info = self.status_vm(id).await?;
        let handle = self.get_vm(id)?;
        let vm = handle.lock().await;
        let network = vm
            .net
            .as_ref()
            .map(|n| crate::net::describe(&n.plan, vm.policy, &vm.allowlist, &vm.dir));
        let reason = match (&network, vm.policy.is_networked()) {
            (Some(_), _) => None,
            (None, true) => {
                Some("the VM is not running: its network exists only while it runs".into())
            }
            (None, false) => Some("created without a network (network: false)".into()),
        };
        Ok(NetworkInfo {
            vm_id: info.vm_id,
            network_enabled: network.is_some(),
            outbound_connectivity_expected: network.is_some(),
            reason,
            network,
        })
    }

    /// Deletes every VM of this process whose TTL has run out.
    pub async fn reap_expired(&self) -> ReapResult {
        let now = host::now();
        let candidates: Vec<(String, Arc<Mutex<Vm>>)> = self
            .vm_map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut deleted = Vec::new();
        for (id, handle) in candidates {
            let expired = match handle.try_lock() {
                Ok(vm) => now >= vm.info.expires_at,
                Err(_) => false,
            };
            if expired {
                self.destroy(&id).await;
                deleted.push(id);
            }
        }
        deleted.sort();
        ReapResult {
            count: deleted.len(),
            deleted_vm_ids: deleted,
        }
    }

    /// Removes VM directories left by pyro processes that died (crash, SIGKILL): kills
    /// their VMM if it still runs, then deletes the directory. Returns the ids removed.
    pub fn reap_orphans(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.opts.state_dir.join("vms")) else {
            return removed;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let owner: Option<OwnerRecord> = std::fs::read(dir.join("owner.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let orphaned = match &owner {
                Some(o) => !host::process_alive(o.owner_pid, o.owner_start_ticks),
                // A directory without a readable owner record is only reaped once it is
                // old enough that it cannot be one being created right now.
                None => entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(60)),
            };
            if !orphaned {
                continue;
            }
            if let Some(OwnerRecord {
                vmm_pid: Some(pid),
                vmm_start_ticks: Some(ticks),
                ..
            }) = owner
                && host::process_alive(pid, ticks)
            {
                // SAFETY: kill(2) on a pid whose start time we just matched.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            // A networked VM's daemon and network, from the ledger (a killed owner could
            // not remove them).
            if dir.join(crate::net::NET_DIR).exists() {
                let id = entry.file_name().to_string_lossy().into_owned();
                self.release_orphan_network(&id);
            }
            if std::fs::remove_dir_all(&dir).is_ok() {
                removed.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        removed
    }

    /// Creates, starts, runs one command and deletes the VM, whatever happens.
    pub async fn run_in_vm(
        &self,
        create: CreateVm,
        exec: ExecOptions,
        progress: ProgressFn,
        on_output: Option<OutputFn<'_>>,
    ) -> Result<VmExecResult> {
        self.run_in_vm_until(create, exec, progress, on_output, None)
            .await
    }

    /// [`Self::run_in_vm`], ended early when `cancelled` turns true: the VM is created and
    /// started to the end (never left half made), then its command is killed (its agent
    /// stream dropped) and the VM deleted; the result is [`CoreError::Cancelled`].
    pub async fn run_in_vm_until(
        &self,
        create: CreateVm,
        exec: ExecOptions,
        progress: ProgressFn,
        on_output: Option<OutputFn<'_>>,
        cancelled: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<VmExecResult> {
        validate_exec(&exec)?;
        self.validate_create(&create)?;
        let id = match self.take_pooled(&create, &progress).await {
            Some(info) => info.vm_id,
            None => {
                progress(&ProgressEvent::Phase {
                    phase: "create",
                    vm_id: None,
                });
                let info = self.create_vm(create, progress.clone()).await?;
                let id = info.vm_id.clone();
                progress(&ProgressEvent::Phase {
                    phase: "start",
                    vm_id: Some(id.clone()),
                });
                if let Err(e) = self.start_vm(&id, progress.clone()).await {
                    self.destroy(&id).await;
                    return Err(e);
                }
                id
            }
        };
        progress(&ProgressEvent::Phase {
            phase: "execute",
            vm_id: Some(id.clone()),
        });
        // exec_vm deletes the VM on success and failure alike.
        let Some(mut cancelled) = cancelled else {
            return self.exec_vm(&id, exec, on_output).await;
        };
        let cancel = async {
            // A sender that went away without cancelling cancels nothing.
            if cancelled.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = self.exec_vm(&id, exec, on_output) => r,
            () = cancel => {
                self.destroy(&id).await;
                Err(CoreError::Cancelled)
            }
        }
    }

    /// Boots one VM and measures `n` exec round trips (`true`) and `n` protocol pings on it,
    /// then deletes it. Used by `pyro bench`.
    pub async fn round_trips(&self, create: CreateVm, n: usize) -> Result<RoundTrips> {
        let info = self.create_vm(create, no_progress()).await?;
        let id = info.vm_id.clone();
        let measured = async {
            self.start_vm(&id, no_progress()).await?;
            let session = {
                let handle = self.get_vm(&id)?;
                let vm = handle.lock().await;
                vm.session.clone()
            }
            .ok_or_else(|| CoreError::VmNotFound { id: id.clone() })?;
            let mut exec_ms = Vec::with_capacity(n);
            let mut ping_ms = Vec::with_capacity(n);
            for _ in 0..n {
                let req = api::ExecRequest {
                    command: api::Command::Argv(vec!["true".into()]),
                    cwd: None,
                    env: BTreeMap::new(),
                    timeout_ms: Some(30_000),
                    max_output_bytes: Some(1024),
                    stdin: false,
                };
                let t = Instant::now();
                api::exec(&session, req, None, |_| {}).await?;
                exec_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                let t = Instant::now();
                api::call::<api::PingResult>(&session, &api::Request::Ping).await?;
                ping_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, CoreError>(RoundTrips { exec_ms, ping_ms })
        }
        .await;
        self.destroy(&id).await;
        measured
    }

    /// Ids of the VMs alive in this process.
    pub fn vm_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.vm_map().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Kills and removes every VM of this process, pooled ones included (used on shutdown).
    pub async fn shutdown(&self) {
        self.close_pool().await;
        for id in self.vm_ids() {
            self.destroy(&id).await;
        }
    }
}

/// The policy and allowlist of a VM request: `network` means `egress`.
fn vm_network(req: &CreateVm) -> Result<(pyro_net::NetworkPolicy, pyro_net::Allowlist)> {
    let policy = if req.network {
        pyro_net::NetworkPolicy::Egress
    } else {
        pyro_net::NetworkPolicy::Off
    };
    let allowlist = crate::validate::allowlist(policy, &req.allow_hosts, &req.allow_cidrs)?;
    Ok((policy, allowlist))
}
