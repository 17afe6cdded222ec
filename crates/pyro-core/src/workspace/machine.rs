//! The machinery under every workspace operation: directories, locks, the record's
//! refresh, booting, halting, the watchdog, and the agent session.
use super::*;

/// `last_error` of a workspace its TTL stopped.
const TTL_STOPPED: &str = "the TTL ran out and the workspace was stopped; its data is kept (extend it with `update --ttl-seconds`)";

impl Pyro {
    pub(super) fn ws_dirs(&self, id: &str) -> Dirs {
        Dirs {
            root: self.options().state_dir.join("workspaces").join(id),
        }
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

    /// The `pyro` binary that runs a workspace's detached helpers (`pyro __relay`, `pyro
    /// __watchdog`): `PYRO_BIN`, this program, or one beside it or on `PATH`.
    pub(crate) fn pyro_bin(&self) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("PYRO_BIN") {
            return Some(PathBuf::from(p));
        }
        let exe = std::env::current_exe().ok()?;
        if exe.file_name().is_some_and(|n| n == "pyro") {
            return Some(exe);
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
        candidates.into_iter().find(|c| c.is_file())
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
        let mut machine = rec.machine.as_ref().map(crate::backend::attach);
        let alive = machine.as_mut().is_some_and(|m| m.is_alive());
        if !alive {
            // What it held goes with it: its helpers (the network daemon, port relays, the
            // watchdog), what serves it (QEMU's relay) and its network. No `/proc` scan
            // here: only what this boot recorded is ended. (The state is still `started`,
            // so no start can be booting another machine meanwhile.)
            self.release_ledger(&rec.id, crate::ledger::Phase::BeforeMachine)
                .await;
            if let Some(m) = machine.as_mut() {
                m.halt().await;
            }
            self.release_ledger(&rec.id, crate::ledger::Phase::AfterMachine)
                .await;
            self.procs_gone(&rec.id);
            let id = rec.id.clone();
            return store
                .update_workspace(&id, |r| {
                    if r.state == WorkspaceState::Started {
                        // A machine gone once the TTL ran out is the watchdog's graceful
                        // stop, seen by another call before the watchdog recorded it.
                        let expired = r.is_expired(now);
                        r.pause_ttl(now);
                        r.state = WorkspaceState::Stopped;
                        r.forget_processes();
                        r.last_error = Some(if expired {
                            TTL_STOPPED.into()
                        } else {
                            "the VMM process exited unexpectedly; `start` boots the workspace again with its data".into()
                        });
                    }
                    Ok::<(), CoreError>(())
                });
        }
        if rec.is_expired(now) {
            let id = rec.id.clone();
            self.graceful_halt(&rec).await;
            self.procs_gone(&id);
            return store.update_workspace(&id, |r| {
                r.pause_ttl(now);
                r.state = WorkspaceState::Stopped;
                r.forget_processes();
                r.last_error = Some(TTL_STOPPED.into());
                Ok::<(), CoreError>(())
            });
        }
        self.ensure_watchdog(&rec);
        self.resume_abandoned_pause(&rec).await;
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
        if let Some(mut m) = rec.machine.as_ref().map(crate::backend::attach) {
            while m.is_alive() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.halt(rec).await;
    }

    /// Watches the current boot of a workspace until its machine is gone, stopping it
    /// (gracefully) when its TTL runs out even if nobody calls in. Run by `pyro __watchdog`,
    /// a detached process started at every boot.
    pub async fn watch_workspace(&self, id: &str) -> Result<()> {
        let Some(watched) = self.store()?.get_workspace(id)?.and_then(|r| r.machine) else {
            return Ok(());
        };
        let mut machine = crate::backend::attach(&watched);
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
            if !machine.is_alive() || Instant::now() >= next_check {
                let store = self.store()?;
                let Some(rec) = store.get_workspace(id)? else {
                    return Ok(());
                };
                // Another boot (or none) is not this watchdog's.
                if rec.state != WorkspaceState::Started
                    || !rec.machine.as_ref().is_some_and(|m| m.same_boot(&watched))
                {
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

    pub(super) fn spawn_watchdog(&self, id: &str) {
        let Some(bin) = self.pyro_bin() else {
            return;
        };
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("__watchdog")
            .arg(id)
            .current_dir(self.ws_dirs(id).root)
            .env("PYRO_STATE_DIR", &self.options().state_dir)
            .env("PYRO_CACHE_DIR", &self.options().cache_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        match host::spawn_detached(&mut cmd) {
            Ok(child) => {
                // Into the ledger, so the teardown ends it by identity; a pyro killed before
                // this line leaves it to the `/proc` scan (and the watchdog ends by itself
                // with its machine).
                let pid = child.id();
                if let (Some(ticks), Ok(store)) = (host::process_start_ticks(pid), self.store()) {
                    let dog = crate::ledger::Resource::Process {
                        role: "watchdog".into(),
                        pid,
                        ticks,
                    };
                    if let Err(e) = store.record_resource(id, &dog) {
                        tracing::warn!("cannot record the TTL watchdog of workspace {id}: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!("cannot start the TTL watchdog of workspace {id}: {e}"),
        }
    }

    /// Ends a workspace's machine and watchdog (no guest shutdown): the machine the record
    /// names, the one its last boot noted in its directory (a boot whose starter died before
    /// recording it), and any other process of the workspace the `/proc` scan finds (see
    /// [`procs`]). Returns once they are gone (so the disk is free) or after a few seconds;
    /// whether a machine was still running.
    pub(super) async fn halt(&self, rec: &WorkspaceRecord) -> bool {
        self.halt_machines(&rec.id, rec.machine.as_ref()).await
    }

    /// [`Self::halt`] for workspace `id` whose record names `recorded` (or has no record).
    pub(super) async fn halt_machines(&self, id: &str, recorded: Option<&MachineRecord>) -> bool {
        self.teardown(id, recorded, Teardown::Halt)
            .await
            .unwrap_or(true)
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
                        if r.state == WorkspaceState::Started && r.machine == rec.machine {
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

    /// Connects to a started workspace's agent through its machine (which restarts what
    /// serves the agent if needed: QEMU's relay); a machine whose record changed that way is
    /// recorded again. See [`Self::ws_session`].
    pub(super) async fn ws_connect(&self, rec: &WorkspaceRecord) -> Result<tokio::net::UnixStream> {
        let Some(before) = rec.machine.as_ref() else {
            return Err(CoreError::Boot {
                reason: "the workspace has no running machine".into(),
                console_tail: String::new(),
            });
        };
        let mut machine = crate::backend::attach(before);
        let connected = machine.connect(Duration::from_secs(5)).await;
        let after = machine.record();
        if &after != before {
            self.store()?.update_workspace(&rec.id, |r| {
                if r.machine.as_ref() == Some(before) {
                    r.machine = Some(after.clone());
                }
                Ok::<(), CoreError>(())
            })?;
        }
        connected.map_err(|e| CoreError::Boot {
            reason: match e {
                CoreError::Boot { reason, .. } => {
                    format!("cannot reach the workspace's guest agent: {reason}")
                }
                other => format!("cannot reach the workspace's guest agent: {other}"),
            },
            console_tail: machine.console_tail(2000),
        })
    }

    /// Starts the workspace's machine; returns its record, the session and how it started.
    /// With `fresh_disk` (create and reset: the disk holds nothing yet) the machine is
    /// restored from the environment's warm workspace snapshot where there is one (built on
    /// first use), its disk replaced by a copy of the snapshot's; any failure there falls
    /// back to a cold boot on a new empty disk. Otherwise it boots on its disk. On failure
    /// nothing of the boot is left running.
    pub(super) async fn ws_boot(
        &self,
        rec: &WorkspaceRecord,
        progress: &ProgressFn,
        fresh_disk: bool,
        restore_from: Option<&Path>,
    ) -> Result<(MachineRecord, Session, BootMode)> {
        let d = self.ws_dirs(&rec.id);
        // Nothing of an earlier boot may outlive into this one: a VMM left by a killed
        // `start` holds the disk's write lock, and its directory is about to be replaced.
        let mut earlier = rec.clone();
        earlier.forget_processes();
        self.halt(&earlier).await;
        // Its shells and services went with it.
        self.procs_gone(&rec.id);
        let backend = self
            .backend(BackendChoice::from(rec.backend), progress)
            .await?;
        let env = self
            .environment_for(backend.as_ref(), &rec.environment, crate::no_progress())
            .await?;
        let vm_dir = d.vm();
        // Only QEMU runs a relay; a backend that needs none ignores a missing binary.
        let relay_bin = self.pyro_bin();
        let upper = d.upper();
        let prepare_vm_dir = || -> Result<()> {
            // Start from a clean VM directory (stale sockets of a dead VMM would confuse
            // the connect retries).
            let _ = std::fs::remove_dir_all(&vm_dir);
            host::ensure_private_dir(&vm_dir)
        };
        prepare_vm_dir()?;
        let mut net = if rec.network_policy.is_networked() {
            Some(
                self.open_network(&rec.id, rec.network_policy, &rec.allowlist, &d.root)
                    .await?,
            )
        } else {
            None
        };
        let spec = BootSpec {
            id: &rec.id,
            workdir: &vm_dir,
            env: &env,
            upper: &upper,
            vcpu_count: rec.vcpu_count as u8,
            mem_mib: rec.mem_mib as u32,
            persistent: true,
            durable_disk: true,
            relay_bin: relay_bin.as_deref(),
            boot_timeout: self.options().boot_timeout,
            net: net.as_ref().map(|n| &n.nic),
        };
        // Called as soon as the machine runs, before anything waits on the guest: it is
        // noted (atomically) before it can outlive this process unnoticed.
        let note_machine = |m: &dyn Machine| procs::note_machine(&d.root, &m.record());
        let sandbox = self
            .boot_sandbox(crate::sandbox::BootPlan {
                spec,
                backend: backend.as_ref(),
                disk_mib: WORKSPACE_DISK_MIB,
                fresh_disk,
                on_spawn: &note_machine,
                after_failed_warm: &prepare_vm_dir,
                progress,
                restore_from,
                recorded: true,
            })
            .await;
        match sandbox {
            Ok(mut sandbox) => {
                // The daemon started while the machine booted; nothing runs in the guest
                // before it serves.
                if let Some(net) = net.as_mut()
                    && let Err(e) = self.network_ready(&rec.id, net).await
                {
                    drop(sandbox.session);
                    sandbox.machine.halt().await;
                    self.close_network(&rec.id).await;
                    return Err(e);
                }
                // Credentials: the guest trusts the workspace CA the proxy intercepts with.
                if let Err(e) = trust_workspace_ca(&sandbox.session, &d.root).await {
                    drop(sandbox.session);
                    sandbox.machine.halt().await;
                    if net.is_some() {
                        self.close_network(&rec.id).await;
                    }
                    return Err(e);
                }
                Ok((sandbox.machine.record(), sandbox.session, sandbox.mode))
            }
            Err(e) => {
                if net.is_some() {
                    self.close_network(&rec.id).await;
                }
                Err(e)
            }
        }
    }

    /// The environment `name` for machines of `backend`: pulled (normally cached by now)
    /// when its machines boot environments, else a description of the catalogue entry.
    pub(super) async fn environment_for(
        &self,
        backend: &dyn crate::backend::Backend,
        name: &str,
        progress: ProgressFn,
    ) -> Result<pyro_image::Installed> {
        if backend.boots_environments() {
            return self.pull_environment(name, progress).await;
        }
        let entry = pyro_image::lookup(name)?;
        Ok(pyro_image::Installed {
            name: name.to_string(),
            version: entry.version.to_string(),
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            rootfs: PathBuf::new(),
            manifest: PathBuf::new(),
            kernel_release: String::new(),
            digests: pyro_image::Digests {
                kernel: String::new(),
                initramfs: String::new(),
                rootfs: String::new(),
                agent: String::new(),
                rootfs_agent: String::new(),
            },
        })
    }

    pub(super) fn info(&self, store: &Store, rec: &WorkspaceRecord) -> Result<WorkspaceInfo> {
        let now = host::now();
        let labels = rec.labels.clone();
        let last = store.last_command(&rec.id)?;
        let mode = rec.backend;
        let seed: WorkspaceSeed = serde_json::from_str(&rec.seed_json).unwrap_or(WorkspaceSeed {
            origin_kind: None,
            origin_ref: None,
            mode: "empty".into(),
            seed_path: None,
            destination: WORKSPACE_ROOT.into(),
            entry_count: 0,
            bytes_written: 0,
        });
        let remaining = rec.remaining_ttl(now);
        let services = self.service_counts(&rec.id);
        let snapshots = self.snapshot_totals(&rec.id);
        let network = if rec.state == WorkspaceState::Started {
            self.recorded_network(&rec.id).map(|plan| {
                let mut info = crate::net::describe(
                    &plan,
                    rec.network_policy,
                    &rec.allowlist,
                    &self.ws_dirs(&rec.id).root,
                );
                info.published_ports = self.published_ports(&rec.id);
                info
            })
        } else {
            None
        };
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
            network_policy: rec.network_policy.as_str().into(),
            network_enabled: rec.network_policy.is_networked(),
            allow_host_compat: false,
            guest_ip: network.as_ref().map(|n| n.guest_ip.clone()),
            tap_name: network.as_ref().map(|n| n.tap_name.clone()),
            network,
            execution_mode: mode.execution_mode().into(),
            backend: rec.backend.as_str().into(),
            workspace_path: WORKSPACE_ROOT.into(),
            workspace_seed: seed,
            secrets: crate::secrets::list(&self.ws_dirs(&rec.id).root),
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
            service_count: services.0,
            running_service_count: services.1,
            snapshot_count: snapshots.0,
            snapshot_bytes: snapshots.1,
            last_error: rec.last_error.clone(),
            metadata: rec
                .boot_mode
                .iter()
                .map(|m| ("boot_mode".to_string(), m.as_str().to_string()))
                .collect(),
        })
    }
}

/// Adds the workspace CA (when it has credentials) to the guest's trust store: the
/// certificate at [`crate::secrets::GUEST_CA_PATH`] and appended once to the system bundle.
async fn trust_workspace_ca(session: &Session, root: &Path) -> Result<()> {
    let Some(dir) = crate::secrets::ca_dir(root) else {
        return Ok(());
    };
    let pem_path = dir.join(pyro_net::ca::CA_CERT_FILE);
    let pem = crate::hostfs::read_bounded(&pem_path, 64 * 1024)
        .map_err(|e| CoreError::io("read", &pem_path, std::io::Error::other(e.to_string())))?;
    let script = format!(
        "set -e; f={ca}; mkdir -p \"$(dirname \"$f\")\"; cat > \"$f.tmp\"; mv \"$f.tmp\" \"$f\"; \
         b=/etc/ssl/certs/ca-certificates.crt; line=$(sed -n 2p \"$f\"); \
         if ! grep -qF -- \"$line\" \"$b\" 2>/dev/null; then mkdir -p /etc/ssl/certs; cat \"$f\" >> \"$b\"; fi",
        ca = crate::secrets::GUEST_CA_PATH
    );
    let req = api::ExecRequest {
        command: api::Command::Argv(vec!["/bin/sh".into(), "-c".into(), script]),
        cwd: Some("/".into()),
        env: Default::default(),
        timeout_ms: Some(30_000),
        max_output_bytes: Some(4096),
        stdin: true,
    };
    let mut err = Vec::new();
    let res = api::exec(session, req, Some(bytes::Bytes::from(pem)), |o| {
        if let api::Output::Stderr(b) = o {
            err.extend_from_slice(&b);
        }
    })
    .await?;
    if res.exit_code != 0 {
        return Err(CoreError::Boot {
            reason: format!(
                "cannot add the workspace CA to the guest's trust store (exit code {}): {}",
                res.exit_code,
                String::from_utf8_lossy(&err).trim()
            ),
            console_tail: String::new(),
        });
    }
    Ok(())
}
