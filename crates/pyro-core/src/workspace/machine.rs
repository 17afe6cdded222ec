//! The machinery under every workspace operation: directories, locks, the record's
//! refresh, booting, halting, the watchdog, and the agent session.
use super::*;

impl Pyro {
    pub(super) fn ws_dirs(&self, id: &str) -> Dirs {
        Dirs {
            root: self.options().state_dir.join("workspaces").join(id),
        }
    }

    pub(super) fn store(&self) -> Result<Store> {
        Store::open(&self.options().state_dir).map_err(CoreError::from)
    }

    pub(super) async fn ws_lock(&self, id: &str, mode: LockMode) -> Result<LockGuard> {
        let d = self.ws_dirs(id);
        if !d.root.is_dir() {
            return Err(ws_not_found(id));
        }
        lock::lock(d.lock(), mode, LOCK_TIMEOUT)
            .await
            .map_err(CoreError::from)
    }

    pub(super) fn relay_bin(&self) -> Result<PathBuf> {
        if let Some(p) = std::env::var_os("PYRO_BIN") {
            return Ok(PathBuf::from(p));
        }
        let exe =
            std::env::current_exe().map_err(|e| CoreError::io("find", "/proc/self/exe", e))?;
        if exe.file_name().is_some_and(|n| n == "pyro") {
            return Ok(exe);
        }
        // A test binary or an embedding program: look for `pyro` beside it or on PATH.
        let mut candidates = Vec::new();
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("pyro"));
            if let Some(up) = dir.parent() {
                candidates.push(up.join("pyro"));
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join("pyro")));
        }
        candidates
            .into_iter()
            .find(|c| c.is_file())
            .ok_or_else(|| CoreError::BackendUnavailable {
                backend: BackendKind::Qemu.as_str(),
                reason: "persistent QEMU workspaces need the `pyro` binary for their relay; set PYRO_BIN".into(),
            })
    }

    /// Checks a record against reality: a started workspace whose VMM died is marked stopped
    /// (with the reason); one whose TTL ran out is stopped; a started one whose TTL watchdog
    /// is gone gets a new one; processes still running for a workspace recorded as not
    /// running (a `start` killed before it recorded its VMM) are ended and reported, unless
    /// another pyro process holds the workspace. Returns the fresh record.
    pub(super) async fn refresh(
        &self,
        store: &Store,
        rec: WorkspaceRecord,
    ) -> Result<WorkspaceRecord> {
        let now = host::now();
        // A create or reset whose process died part-way leaves `creating` behind: once it is
        // older than any boot could take, say so truthfully (reset or delete recover it).
        let stale_after = self.options().boot_timeout.as_secs_f64() + 120.0;
        let builder_gone = || {
            let owner = std::fs::read_to_string(self.ws_dirs(&rec.id).root.join("builder"))
                .ok()
                .and_then(|t| {
                    let (p, t) = t.trim().split_once(' ')?;
                    Some((p.parse::<u32>().ok()?, t.parse::<u64>().ok()?))
                });
            match owner {
                Some((pid, ticks)) => !host::process_alive(pid, ticks),
                None => now - rec.last_activity_at > stale_after,
            }
        };
        if rec.state == WorkspaceState::Creating && !builder_gone() {
            // A create or reset in progress: its processes are its own.
            return Ok(rec);
        }
        let mut rec = rec;
        if rec.state == WorkspaceState::Creating {
            let id = rec.id.clone();
            rec = store.update_workspace(&id, |r| {
                r.pause_ttl(now);
                r.state = WorkspaceState::Error;
                r.forget_processes();
                r.last_error = Some(
                    "its creation or reset was interrupted; `reset` rebuilds it from its baseline, or delete it".into(),
                );
                Ok::<(), CoreError>(())
            })?;
            // What it had booted is ended below.
        }
        if rec.state != WorkspaceState::Started {
            return match self.reap_unrecorded(&rec).await {
                procs::Unrecorded::Nothing => Ok(rec),
                procs::Unrecorded::EndedVmm => {
                    let id = rec.id.clone();
                    store.update_workspace(&id, |r| {
                        if r.state == WorkspaceState::Stopped {
                            r.last_error = Some(
                                "its VM was still running although it was recorded as stopped (a start was interrupted); that VM was ended, its data is kept".into(),
                            );
                        }
                        Ok::<(), CoreError>(())
                    })
                }
                procs::Unrecorded::Busy => {
                    if rec.state == WorkspaceState::Stopped {
                        rec.last_error = Some(
                            "its VM is running while another pyro process holds the workspace (a start, reset or delete is in progress)".into(),
                        );
                    }
                    Ok(rec)
                }
            };
        }
        let alive = match (rec.vmm_pid, rec.vmm_start_ticks) {
            (Some(pid), Some(t)) => host::process_alive(pid, t),
            _ => false,
        };
        if !alive {
            // Its relay has nothing left to serve.
            if let (Some(pid), Some(ticks)) = (rec.relay_pid, rec.relay_start_ticks) {
                procs::end(&[procs::WsProcess {
                    pid,
                    ticks,
                    role: procs::Role::Relay,
                }])
                .await;
            }
            let id = rec.id.clone();
            return store
                .update_workspace(&id, |r| {
                    if r.state == WorkspaceState::Started {
                        r.pause_ttl(now);
                        r.state = WorkspaceState::Stopped;
                        r.forget_processes();
                        r.last_error = Some("the VMM process exited unexpectedly; `start` boots the workspace again with its data".into());
                    }
                    Ok::<(), CoreError>(())
                });
        }
        if rec.is_expired(now) {
            let id = rec.id.clone();
            self.graceful_halt(&rec).await;
            return store
                .update_workspace(&id, |r| {
                    r.pause_ttl(now);
                    r.state = WorkspaceState::Stopped;
                    r.forget_processes();
                    r.last_error = Some("the TTL ran out and the workspace was stopped; its data is kept (extend it with `update --ttl-seconds`)".into());
                    Ok::<(), CoreError>(())
                });
        }
        self.ensure_watchdog(&rec);
        Ok(rec)
    }

    pub(super) fn check_capacity(&self, store: &Store) -> Result<()> {
        let running = store
            .list_workspaces()?
            .iter()
            .filter(|w| matches!(w.state, WorkspaceState::Started | WorkspaceState::Creating))
            .count();
        if running >= MAX_RUNNING_WORKSPACES {
            return Err(CoreError::Capacity {
                max: MAX_RUNNING_WORKSPACES,
            });
        }
        Ok(())
    }

    /// Records which process is building (creating or resetting) the workspace, so that a
    /// build whose process died is recognized at once.
    pub(super) fn mark_builder(&self, id: &str) {
        let me = std::process::id();
        let ticks = host::process_start_ticks(me).unwrap_or(0);
        let _ = std::fs::write(
            self.ws_dirs(id).root.join("builder"),
            format!("{me} {ticks}\n"),
        );
    }

    /// Asks the guest to flush and power off, waits a little, then makes sure with
    /// [`Self::halt`]. Used by `stop` and by TTL expiry, so no acknowledged write is lost.
    pub(super) async fn graceful_halt(&self, rec: &WorkspaceRecord) {
        let session = tokio::time::timeout(Duration::from_secs(5), self.ws_session(rec)).await;
        if let Ok(Ok(session)) = session {
            let _ = tokio::time::timeout(Duration::from_secs(10), api::sync(&session)).await;
            let req = api::Request::Shutdown(api::Shutdown { poweroff: true });
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                api::call::<api::Empty>(&session, &req),
            )
            .await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while let (Some(pid), Some(t)) = (rec.vmm_pid, rec.vmm_start_ticks) {
            if !host::process_alive(pid, t) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.halt(rec).await;
    }

    /// Watches one boot of a workspace until its VMM is gone, stopping it (gracefully) when
    /// its TTL runs out even if nobody calls in. Run by `pyro __watchdog`, a detached
    /// process started at every boot.
    pub async fn watch_workspace(&self, id: &str, vmm_pid: u32) -> Result<()> {
        let vmm_ticks = host::process_start_ticks(vmm_pid);
        // One watchdog per workspace: it holds this lock while it lives, so a missing one is
        // noticed (and replaced) by the next operation. One of an earlier boot lets go
        // within a second of its VMM's end.
        let lock_path = self.ws_dirs(id).root.join(procs::WATCHDOG_LOCK);
        let wait_until = Instant::now() + Duration::from_secs(3);
        let _watching = loop {
            match lock::try_lock(&lock_path, LockMode::Exclusive) {
                Ok(Some(guard)) => break guard,
                Ok(None) if Instant::now() < wait_until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Another watchdog watches it.
                Ok(None) => return Ok(()),
                // The workspace is gone.
                Err(_) if !self.ws_dirs(id).root.is_dir() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        };
        let mut next_check = Instant::now();
        loop {
            let vmm_alive = vmm_ticks.is_some_and(|t| host::process_alive(vmm_pid, t));
            if !vmm_alive || Instant::now() >= next_check {
                let store = self.store()?;
                let Some(rec) = store.get_workspace(id)? else {
                    return Ok(());
                };
                if rec.state != WorkspaceState::Started || rec.vmm_pid != Some(vmm_pid) {
                    return Ok(());
                }
                // Marks a dead VMM stopped, and stops an expired workspace.
                let rec = self.refresh(&store, rec).await?;
                if rec.state != WorkspaceState::Started {
                    return Ok(());
                }
                let left = rec.remaining_ttl(host::now());
                next_check = Instant::now() + Duration::from_secs_f64(left.clamp(0.5, 30.0));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub(super) fn spawn_watchdog(&self, id: &str, vmm_pid: u32) {
        let Ok(bin) = self.relay_bin() else {
            return;
        };
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("__watchdog")
            .arg(id)
            .arg(vmm_pid.to_string())
            .current_dir(self.ws_dirs(id).root)
            .env("PYRO_STATE_DIR", &self.options().state_dir)
            .env("PYRO_CACHE_DIR", &self.options().cache_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Err(e) = host::spawn_detached(&mut cmd) {
            tracing::warn!("cannot start the TTL watchdog of workspace {id}: {e}");
        }
    }

    /// Kills a workspace's VMM, relay and watchdog (no guest shutdown): those the record
    /// names, and any other process of the workspace (see [`procs`]: one of a boot that was
    /// never recorded because its starter died first, one whose directory was replaced).
    /// Returns once they are gone (so the disk is free) or after a few seconds.
    pub(super) async fn halt(&self, rec: &WorkspaceRecord) {
        let d = self.ws_dirs(&rec.id);
        let mut all: Vec<procs::WsProcess> = [
            (rec.vmm_pid, rec.vmm_start_ticks, procs::Role::Vmm),
            (rec.relay_pid, rec.relay_start_ticks, procs::Role::Relay),
        ]
        .into_iter()
        .filter_map(|(pid, ticks, role)| {
            let (pid, ticks) = (pid?, ticks?);
            host::process_alive(pid, ticks).then_some(procs::WsProcess { pid, ticks, role })
        })
        .collect();
        for p in procs::find(&d.root, &rec.id) {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        procs::end(&all).await;
        // Anything that appeared meanwhile; forgets the recorded pids.
        procs::end_all(&d.root, &rec.id).await;
        let _ = std::fs::remove_file(d.socket(rec.backend));
    }

    pub(super) async fn load_started(
        &self,
        store: &Store,
        id: &str,
        operation: &'static str,
    ) -> Result<WorkspaceRecord> {
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(store, rec).await?;
        if rec.state != WorkspaceState::Started {
            return Err(CoreError::WorkspaceState {
                id: id.to_string(),
                state: rec.state.as_str().to_string(),
                operation,
                detail: rec.last_error.clone(),
            });
        }
        Ok(rec)
    }

    /// Opens a protocol session to a started workspace's agent, and makes sure the agent
    /// answers: once connected (a dead QEMU relay restarted), the handshake and a ping must
    /// be done within [`AGENT_ANSWER_TIMEOUT`] (through QEMU's relay the handshake is the
    /// relay's, so only the ping reaches the agent). Past that the call fails with
    /// [`CoreError::AgentUnresponsive`], which is also recorded as the workspace's
    /// `last_error` (its state stays `started`: the VM runs) until an answer clears it.
    pub(super) async fn ws_session(&self, rec: &WorkspaceRecord) -> Result<Session> {
        let stream = self.ws_connect(rec).await?;
        let answered = tokio::time::timeout(AGENT_ANSWER_TIMEOUT, async {
            // The deadline around it bounds the handshake.
            let cfg = pyro_proto::Config {
                handshake_timeout: AGENT_ANSWER_TIMEOUT * 2,
                ..pyro_proto::Config::default()
            };
            let session = Session::client(stream, cfg)
                .await
                .map_err(|e| CoreError::Agent(api::CallError::Proto(e)))?;
            api::call::<api::PingResult>(&session, &api::Request::Ping).await?;
            Ok::<Session, CoreError>(session)
        })
        .await;
        let note = CoreError::AgentUnresponsive {
            id: rec.id.clone(),
            seconds: AGENT_ANSWER_TIMEOUT.as_secs(),
        };
        let text = note.to_string();
        let session = match answered {
            Ok(answer) => answer?,
            Err(_) => {
                if let Ok(store) = self.store() {
                    let _ = store.update_workspace(&rec.id, |r| {
                        // Only on the boot that did not answer.
                        if r.state == WorkspaceState::Started && r.vmm_pid == rec.vmm_pid {
                            r.last_error = Some(text);
                        }
                        Ok::<(), CoreError>(())
                    });
                }
                return Err(note);
            }
        };
        if rec.last_error.as_deref() == Some(text.as_str())
            && let Ok(store) = self.store()
        {
            let _ = store.update_workspace(&rec.id, |r| {
                if r.last_error.as_deref() == Some(text.as_str()) {
                    r.last_error = None;
                }
                Ok::<(), CoreError>(())
            });
        }
        Ok(session)
    }

    /// Connects to a started workspace's agent socket, restarting a dead QEMU relay once;
    /// see [`Self::ws_session`].
    pub(super) async fn ws_connect(&self, rec: &WorkspaceRecord) -> Result<tokio::net::UnixStream> {
        let d = self.ws_dirs(&rec.id);
        let sock = d.socket(rec.backend);
        let mut respawned = false;
        loop {
            match pyro_firecracker::vsock::connect(
                &sock,
                pyro_proto::AGENT_PORT,
                Duration::from_secs(5),
            )
            .await
            {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    // A QEMU relay that died (while QEMU lives) is restarted once.
                    let relay_dead = match (rec.relay_pid, rec.relay_start_ticks) {
                        (Some(p), Some(t)) => !host::process_alive(p, t),
                        _ => rec.backend == BackendKind::Qemu,
                    };
                    if rec.backend == BackendKind::Qemu && relay_dead && !respawned {
                        respawned = true;
                        let bin = self.relay_bin()?;
                        let pid = crate::backend::spawn_relay_process(&bin, &d.vm())?;
                        let ticks = host::process_start_ticks(pid);
                        let store = self.store()?;
                        store.update_workspace(&rec.id, |r| {
                            r.relay_pid = Some(pid);
                            r.relay_start_ticks = ticks;
                            Ok::<(), CoreError>(())
                        })?;
                        continue;
                    }
                    return Err(CoreError::Boot {
                        reason: format!("cannot reach the workspace's guest agent: {e}"),
                        console_tail: crate::backend::console_tail(
                            &d.vm().join("console.log"),
                            2000,
                        ),
                    });
                }
            }
        }
    }

    /// Starts the workspace's VM; returns the pids to record, the session and how it
    /// started. With `fresh_disk` (create and reset: the disk holds nothing yet) the VM is
    /// restored from the environment's warm workspace snapshot where there is one (built
    /// on first use), its disk replaced by a copy of the snapshot's; any failure there
    /// falls back to a cold boot on a new empty disk. Otherwise it boots on its disk.
    pub(super) async fn ws_boot(
        &self,
        rec: &WorkspaceRecord,
        progress: &ProgressFn,
        fresh_disk: bool,
    ) -> Result<(u32, Option<u32>, Session, BootMode)> {
        let d = self.ws_dirs(&rec.id);
        // Nothing of an earlier boot may outlive into this one: a VMM left by a killed
        // `start` holds the disk's write lock, and its directory is about to be replaced.
        procs::end_all(&d.root, &rec.id).await;
        let choice = BackendChoice::from(rec.backend);
        let backend = self.backend(choice, progress).await?;
        // `create` has already pulled with progress; here the environment is normally cached.
        let env = self
            .pull_environment(&rec.environment, crate::no_progress())
            .await?;
        let vm_dir = d.vm();
        let relay_bin = if backend.kind() == BackendKind::Qemu {
            Some(self.relay_bin()?)
        } else {
            None
        };
        let upper = d.upper();
        // QEMU is given the disk through a link in its working directory, so its command
        // line names it relatively, as the warm snapshot it may be restored from does.
        let disk_name = match backend.kind() {
            BackendKind::Qemu => vm_dir.join(UPPER_LINK),
            BackendKind::Firecracker => upper.clone(),
        };
        let prepare_vm_dir = || -> Result<()> {
            // Start from a clean VM directory (stale sockets of a dead VMM would confuse
            // the connect retries).
            let _ = std::fs::remove_dir_all(&vm_dir);
            host::ensure_private_dir(&vm_dir)?;
            if backend.kind() == BackendKind::Qemu {
                let link = vm_dir.join(UPPER_LINK);
                std::os::unix::fs::symlink(Path::new("..").join(UPPER_FILE), &link)
                    .map_err(|e| CoreError::io("link", &link, e))?;
            }
            Ok(())
        };
        prepare_vm_dir()?;
        let spec = BootSpec {
            id: &rec.id,
            workdir: &vm_dir,
            env: &env,
            upper: &disk_name,
            vcpu_count: rec.vcpu_count as u8,
            mem_mib: rec.mem_mib as u32,
            persistent: true,
            durable_disk: true,
            relay_bin: relay_bin.as_deref(),
            boot_timeout: self.options().boot_timeout,
        };
        // Called as soon as the VMM runs, before anything waits on the guest: the VMM is
        // recorded (atomically) before it can outlive this process unnoticed.
        let note_socket = |m: &dyn Machine| -> Result<()> {
            procs::record_pids(&d.root, m.pid(), m.relay_pid())?;
            let _ = std::fs::write(
                vm_dir.join("agent-socket"),
                m.agent_socket().display().to_string(),
            );
            Ok(())
        };
        if fresh_disk && self.snapshots_enabled() {
            match self
                .start_warm(
                    spec,
                    &upper,
                    WORKSPACE_DISK_MIB,
                    backend.as_ref(),
                    &note_socket,
                    progress,
                )
                .await
            {
                Ok(Some((machine, session))) => {
                    return Ok((machine.pid(), machine.relay_pid(), session, BootMode::Warm));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(workspace = rec.id, "warm start failed, booting cold: {e}");
                    // It may have left a copy of the snapshot's disk: start from a new one.
                    let _ = std::fs::remove_file(&upper);
                    prepare_vm_dir()?;
                }
            }
        }
        if fresh_disk && !upper.exists() {
            self.cache().create_upper_disk(&upper, WORKSPACE_DISK_MIB)?;
        }
        let mut machine = backend.boot(spec).await?;
        if let Err(e) = note_socket(machine.as_ref()) {
            machine.kill().await;
            return Err(e);
        }
        let session =
            match crate::connect_agent(machine.as_mut(), self.options().boot_timeout).await {
                Ok(s) => s,
                Err(e) => {
                    machine.kill().await;
                    return Err(e);
                }
            };
        Ok((machine.pid(), machine.relay_pid(), session, BootMode::Cold))
    }

    pub(super) fn info(&self, store: &Store, rec: &WorkspaceRecord) -> Result<WorkspaceInfo> {
        let now = host::now();
        let labels = rec.labels.clone();
        let last = store.last_command(&rec.id)?;
        let mode = rec.backend;
        let seed: WorkspaceSeed = serde_json::from_str(&rec.seed_json).unwrap_or(WorkspaceSeed {
            mode: "empty".into(),
            seed_path: None,
            destination: WORKSPACE_ROOT.into(),
            entry_count: 0,
            bytes_written: 0,
        });
        let remaining = rec.remaining_ttl(now);
        Ok(WorkspaceInfo {
            workspace_id: rec.id.clone(),
            name: rec.name.clone(),
            labels,
            environment: rec.environment.clone(),
            environment_version: Some(rec.environment_version.clone()),
            vcpu_count: rec.vcpu_count as u8,
            mem_mib: rec.mem_mib as u32,
            ttl_seconds: rec.ttl_seconds as u64,
            ttl_remaining_seconds: remaining,
            created_at: rec.created_at,
            last_activity_at: rec.last_activity_at,
            expires_at: (rec.state == WorkspaceState::Started).then_some(now + remaining),
            state: rec.state.as_str().to_string(),
            network_policy: rec.network_policy.clone(),
            network_enabled: false,
            allow_host_compat: false,
            guest_ip: None,
            tap_name: None,
            execution_mode: mode.execution_mode().into(),
            backend: rec.backend.as_str().into(),
            workspace_path: WORKSPACE_ROOT.into(),
            workspace_seed: seed,
            secrets: Vec::new(),
            command_count: rec.command_count,
            last_command: last.map(|c| LastCommand {
                sequence: c.sequence,
                command: c.command,
                cwd: c.cwd,
                exit_code: c.exit_code as i32,
                duration_ms: c.duration_ms,
                execution_mode: mode.execution_mode().into(),
            }),
            reset_count: rec.reset_count,
            last_reset_at: rec.last_reset_at,
            service_count: 0,
            running_service_count: 0,
            last_error: rec.last_error.clone(),
            metadata: rec
                .boot_mode
                .iter()
                .map(|m| ("boot_mode".to_string(), m.clone()))
                .collect(),
        })
    }
}
