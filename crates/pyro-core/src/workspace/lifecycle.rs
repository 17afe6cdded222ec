//! Workspace lifecycle operations: create, list, status, update, exec, logs, stop,
//! start, delete and reset.
use super::files::*;
use super::*;
use crate::output::{self, LogFile, OutputPipeline};

pub(super) use crate::validate::check_range as check;

pub(super) fn seed_json(seed: &WorkspaceSeed) -> String {
    serde_json::to_string(seed).unwrap_or_else(|_| "{}".into())
}

impl Pyro {
    /// Creates and starts a workspace, seeding `/workspace` from a directory or archive.
    pub async fn create_workspace(
        &self,
        req: CreateWorkspace,
        progress: ProgressFn,
    ) -> Result<WorkspaceInfo> {
        // Validate everything before touching anything.
        let entry = pyro_image::lookup(&req.environment)?;
        check("vcpu_count", req.vcpu_count, crate::VCPU_RANGE)?;
        check("mem_mib", req.mem_mib, crate::MEM_RANGE)?;
        check("ttl_seconds", req.ttl_seconds, WORKSPACE_TTL_RANGE)?;
        let policy = crate::validate::network_policy(&req.network_policy)?;
        let allowlist = crate::validate::allowlist(policy, &req.allow_hosts, &req.allow_cidrs)?;
        let secrets = crate::secrets::resolve(&req.secrets)?;
        if !policy.is_networked() && secrets.iter().any(|(i, _)| !i.hosts.is_empty()) {
            return Err(CoreError::Invalid {
                field: "secret_hosts",
                reason: "a credential for hosts goes through the egress proxy: give the \
                         workspace a network policy (egress or egress+published-ports)"
                    .into(),
            });
        }
        let name = req
            .name
            .as_deref()
            .map(crate::store::validate_name)
            .transpose()?;
        let labels = crate::store::validate_labels(&req.labels)?;
        // Without a seed, the server's project (its tracked files, or a clean clone).
        let project = match (&req.seed_path, &req.project) {
            (None, Some(p)) => {
                let (p, scratch) = (p.as_ref().clone(), self.options().state_dir.join("tmp"));
                Some(
                    tokio::task::spawn_blocking(move || p.materialize(&scratch))
                        .await
                        .map_err(|e| CoreError::Invalid {
                            field: "project",
                            reason: e.to_string(),
                        })??,
                )
            }
            _ => None,
        };
        let seed = match (&req.seed_path, &project) {
            (Some(p), _) => Some(Seed::open(p, "seed_path")?),
            (None, Some(p)) => Some(Seed::open(&HostPath::from(p.tar.as_path()), "project")?),
            (None, None) => None,
        };
        let origin: Option<(String, String, String)> = project.as_ref().map(|p| {
            let shown = match req.project.as_deref() {
                Some(crate::project::ProjectSource::Path(d)) => d.display().to_string(),
                Some(crate::project::ProjectSource::Repo { url, .. }) => url.clone(),
                None => String::new(),
            };
            (p.origin_kind.to_string(), p.origin_ref.clone(), shown)
        });
        let choice = req.backend.unwrap_or(self.options().backend);
        let kind = crate::backend::resolve(choice, self.host_facts())?;
        self.check_network(policy)?;
        let store = self.store()?;
        self.check_capacity(&store)?;
        // Directories of creates killed before they recorded their workspace.
        self.reap_orphan_dirs().await;
        let backend = self.backend(BackendChoice::from(kind), &progress).await?;
        self.environment_for(backend.as_ref(), &req.environment, progress.clone())
            .await?;

        let id = host::new_id();
        let d = self.ws_dirs(&id);
        host::ensure_private_dir(&d.root)?;
        let _guard = lock::lock(d.lock(), LockMode::Exclusive, LOCK_TIMEOUT).await?;
        self.mark_builder(&id);
        let now = host::now();
        let mut rec = WorkspaceRecord::new(&id, &req.environment, entry.version, kind, now);
        rec.name = name;
        rec.labels = labels;
        rec.vcpu_count = req.vcpu_count;
        rec.mem_mib = req.mem_mib;
        rec.ttl_seconds = req.ttl_seconds;
        rec.network_policy = policy;
        rec.allowlist = crate::store::StoredAllowlist(allowlist);
        let built = async {
            crate::secrets::store(&d.root, &secrets)?;
            let stats = match &seed {
                Some(s) => s.write_tar(&d.baseline(), &self.options().limits)?,
                None => {
                    archive::write_empty_tar(&d.baseline())?;
                    archive::TarStats::default()
                }
            };
            host::ensure_private_dir(&d.logs())?;
            let seed_info = WorkspaceSeed {
                mode: match &seed {
                    Some(s) => match s.mode() {
                        SeedMode::Directory => "directory",
                        _ => "tar_archive",
                    },
                    None => "empty",
                }
                .into(),
                seed_path: match &origin {
                    Some((_, _, shown)) => Some(shown.clone()),
                    None => seed.as_ref().map(|s| s.path().display().to_string()),
                },
                destination: WORKSPACE_ROOT.into(),
                entry_count: stats.entry_count,
                bytes_written: stats.bytes_written,
                origin_kind: origin.as_ref().map(|o| o.0.clone()),
                origin_ref: origin.as_ref().map(|o| o.1.clone()),
            };
            rec.seed_json = seed_json(&seed_info);
            store.insert_workspace(&rec)?;
            let (machine, session, mode) = self.ws_boot(&rec, &progress, true, None).await?;
            let imported = import_tar_file(
                &session,
                &d.baseline(),
                WORKSPACE_ROOT,
                api::ImportMode::Replace,
            )
            .await?;
            let _ = imported;
            let now = host::now();
            store.update_workspace(&id, |r| {
                r.state = WorkspaceState::Started;
                r.resume_ttl(now);
                r.machine = Some(machine);
                r.last_activity_at = now;
                r.boot_mode = Some(mode);
                Ok::<(), CoreError>(())
            })
        }
        .await;
        match built {
            Ok(rec) => {
                self.spawn_watchdog(&id);
                self.info(&store, &rec)
            }
            Err(e) => {
                // The record names nothing yet: the machine a boot noted is ended.
                if let Err(t) = self.teardown(&id, None, Teardown::Remove).await {
                    tracing::warn!(workspace = id, "cleaning up a failed create: {t}");
                }
                Err(e)
            }
        }
    }

    /// Every workspace, most recently active first (stale states are corrected first).
    pub async fn list_workspaces(&self) -> Result<WorkspaceList> {
        let store = self.store()?;
        // Directories of creates killed before they recorded their workspace.
        self.reap_orphan_dirs().await;
        let now = host::now();
        let mut out = Vec::new();
        for rec in store.list_workspaces()? {
            let rec = self.refresh(&store, rec).await?;
            let services = self.service_counts(&rec.id);
            out.push(WorkspaceSummary {
                workspace_id: rec.id.clone(),
                name: rec.name.clone(),
                labels: rec.labels.clone(),
                environment: rec.environment.clone(),
                state: rec.state.as_str().into(),
                created_at: rec.created_at,
                last_activity_at: rec.last_activity_at,
                expires_at: (rec.state == WorkspaceState::Started)
                    .then(|| now + rec.remaining_ttl(now)),
                ttl_remaining_seconds: rec.remaining_ttl(now),
                command_count: rec.command_count,
                service_count: services.0,
                running_service_count: services.1,
            });
        }
        out.sort_by(|a, b| b.last_activity_at.total_cmp(&a.last_activity_at));
        Ok(WorkspaceList {
            count: out.len(),
            workspaces: out,
        })
    }

    /// A workspace's state, checked against reality (a dead VMM shows as stopped, with why).
    pub async fn status_workspace(&self, id: &str) -> Result<WorkspaceInfo> {
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(&store, rec).await?;
        self.info(&store, &rec)
    }

    /// Changes name, labels or TTL. At least one effective change is required.
    pub async fn update_workspace(&self, id: &str, req: UpdateWorkspace) -> Result<WorkspaceInfo> {
        if req.name.is_some() && req.clear_name {
            return Err(CoreError::Invalid {
                field: "name",
                reason: "give either a new name or clear_name, not both".into(),
            });
        }
        let name = req
            .name
            .as_deref()
            .map(crate::store::validate_name)
            .transpose()?;
        let labels = crate::store::validate_labels(&req.labels)?;
        let mut clear = Vec::new();
        for k in &req.clear_labels {
            clear.push(crate::store::validate_label_key(k)?);
        }
        if let Some(t) = req.ttl_seconds {
            check("ttl_seconds", t, WORKSPACE_TTL_RANGE)?;
        }
        if name.is_none()
            && !req.clear_name
            && labels.is_empty()
            && clear.is_empty()
            && req.ttl_seconds.is_none()
        {
            return Err(CoreError::Invalid {
                field: "update",
                reason: "nothing to change: give a name, labels, labels to clear, or a TTL".into(),
            });
        }
        let store = self.store()?;
        let now = host::now();
        let rec = store
            .update_workspace(id, |r| {
                if let Some(n) = &name {
                    r.name = Some(n.clone());
                }
                if req.clear_name {
                    r.name = None;
                }
                for k in &clear {
                    r.labels.remove(k);
                }
                for (k, v) in &labels {
                    r.labels.insert(k.clone(), v.clone());
                }
                if let Some(t) = req.ttl_seconds {
                    // `t` more seconds of running time from now.
                    r.ttl_seconds = (r.ttl_used(now) + t as f64).ceil() as i64;
                    if r.state == WorkspaceState::Started {
                        r.expires_at = Some(now + t as f64);
                    }
                    if r.last_error
                        .as_deref()
                        .is_some_and(|e| e.starts_with("the TTL ran out"))
                    {
                        r.last_error = None;
                    }
                }
                r.last_activity_at = now;
                Ok::<(), CoreError>(())
            })
            .map_err(|e| match e {
                CoreError::Store(crate::store::StoreError::NotFound { .. }) => ws_not_found(id),
                other => other,
            })?;
        store.set_labels(id, &rec.labels)?;
        if !clear.is_empty() {
            store.clear_labels(id, clear.iter().map(String::as_str))?;
        }
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        self.info(&store, &rec)
    }

    /// Runs a command in `/workspace` (or `cwd`); records it in the history with its full
    /// output in the logs; the result keeps `max_output_bytes` per stream.
    pub async fn exec_workspace(
        &self,
        id: &str,
        opts: ExecOptions,
        on_output: Option<OutputFn<'_>>,
    ) -> Result<WorkspaceExecResult> {
        crate::validate_exec(&opts)?;
        let mut opts = opts;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "workspace_exec").await?;
        let d = self.ws_dirs(id);
        // The secrets this command names go into its environment only; every value is
        // redacted from what it prints (result, live stream, logs).
        let secrets = crate::secrets::values(&d.root)?;
        for (var, value) in crate::secrets::process_env(&d.root, &opts.secret_env)? {
            if opts.env.contains_key(&var) {
                return Err(CoreError::Invalid {
                    field: "secret_env",
                    reason: format!("`{var}` is also set by env"),
                });
            }
            opts.env.insert(var, value);
        }
        let session = self.ws_session(&rec).await?;
        let cwd = opts
            .cwd
            .clone()
            .unwrap_or_else(|| WORKSPACE_ROOT.to_string());
        // Named like spools (with this process's id), so that the partial logs of an exec
        // killed midway are removed by the next one (tests/faults.rs, exec kills).
        remove_stale_spools(&d.logs());
        let out_tmp = d.logs().join(spool_name("stdout"));
        let err_tmp = d.logs().join(spool_name("stderr"));
        let values: Vec<String> = secrets.into_values().collect();
        let mut pipe = OutputPipeline::new(output::result_limit(&opts), on_output)
            .with_transforms(
                Box::new(crate::secrets::Redactor::new(values.clone())),
                Box::new(crate::secrets::Redactor::new(values)),
            )
            .with_logs(LogFile::create(&out_tmp)?, LogFile::create(&err_tmp)?);
        let command_text = opts.command.display();
        // A call dropped before its result (a client's cancellation) leaves an
        // `exec_cancelled` event in the activity (declared after the lock: dropped first).
        let mut cancelled = CancelledExec(Some((d.root.clone(), command_text.clone())));
        // The guest forwards everything up to the log's cap: the log keeps what the result
        // drops.
        let res = output::exec(&session, &opts, &cwd, Some(MAX_LOG_BYTES), &mut pipe).await;
        cancelled.0 = None;
        let res = res?;
        let out = pipe.finish(&res)?;
        let now = host::now();
        let logs = d.logs();
        let recorded = store.next_command_sequence_and_record(id, |seq| NewCommand {
            command: command_text.clone(),
            cwd: cwd.clone(),
            exit_code: i64::from(res.exit_code),
            duration_ms: res.duration_ms,
            timed_out: res.timed_out,
            stdout_bytes: res.stdout_bytes,
            stderr_bytes: res.stderr_bytes,
            stdout_path: format!("{seq:06}.stdout"),
            stderr_path: format!("{seq:06}.stderr"),
            recorded_at: now,
        })?;
        let _ = std::fs::rename(&out_tmp, logs.join(&recorded.stdout_path));
        let _ = std::fs::rename(&err_tmp, logs.join(&recorded.stderr_path));
        let _ = store.update_workspace(id, |r| {
            r.last_activity_at = now;
            Ok::<(), CoreError>(())
        });
        Ok(WorkspaceExecResult {
            workspace_id: id.to_string(),
            environment: rec.environment.clone(),
            environment_version: Some(rec.environment_version.clone()),
            command: command_text,
            stdout: out.stdout.text,
            stderr: out.stderr.text,
            exit_code: res.exit_code,
            duration_ms: res.duration_ms,
            execution_mode: rec.backend.execution_mode().into(),
            sequence: recorded.sequence,
            cwd,
            timed_out: res.timed_out,
            stdout_bytes: res.stdout_bytes,
            stderr_bytes: res.stderr_bytes,
            stdout_truncated: out.stdout.truncated,
            stderr_truncated: out.stderr.truncated,
            spawn_error: res.spawn_error,
            stdout_base64: out.stdout.base64,
            stderr_base64: out.stderr.base64,
        })
    }

    /// The command history, oldest first, paged; output per entry cut at `max_bytes`.
    pub async fn logs_workspace(
        &self,
        id: &str,
        offset: u64,
        limit: u64,
        max_bytes: u64,
    ) -> Result<WorkspaceLogs> {
        self.logs_workspace_from(id, offset, limit, max_bytes, 0)
            .await
    }

    /// [`Pyro::logs_workspace`] with each entry's streams read from byte `output_offset`
    /// (to page through a long output: the next page starts at `output_offset + max_bytes`).
    pub async fn logs_workspace_from(
        &self,
        id: &str,
        offset: u64,
        limit: u64,
        max_bytes: u64,
        output_offset: u64,
    ) -> Result<WorkspaceLogs> {
        let max_bytes = max_bytes.min(MAX_LOG_BYTES);
        if !(1..=MAX_LOG_PAGE).contains(&limit) {
            return Err(CoreError::OutOfRange {
                field: "limit",
                value: i64::try_from(limit).unwrap_or(i64::MAX),
                min: 1,
                max: MAX_LOG_PAGE as i64,
            });
        }
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let total = store.command_count(id)?;
        let d = self.ws_dirs(id);
        let mut entries = Vec::new();
        let mut page_bytes = 0u64;
        for c in store.commands(id, offset, limit)? {
            let left = |n: u64| n.saturating_sub(output_offset).min(max_bytes);
            let wants = left(c.stdout_bytes) + left(c.stderr_bytes);
            if !entries.is_empty() && page_bytes + wants > MAX_LOG_PAGE_BYTES {
                break;
            }
            page_bytes += wants;
            let read = |p: &str| read_capped(&d.logs().join(p), output_offset, max_bytes);
            let (stdout, so_t) = read(&c.stdout_path);
            let (stderr, se_t) = read(&c.stderr_path);
            let past = |n: u64| n > output_offset.saturating_add(max_bytes);
            entries.push(LogEntry {
                sequence: c.sequence,
                command: c.command,
                cwd: c.cwd,
                exit_code: c.exit_code as i32,
                duration_ms: c.duration_ms,
                execution_mode: rec.backend.execution_mode().into(),
                recorded_at: c.recorded_at,
                stdout,
                stderr,
                stdout_bytes: c.stdout_bytes,
                stderr_bytes: c.stderr_bytes,
                stdout_truncated: so_t || past(c.stdout_bytes),
                stderr_truncated: se_t || past(c.stderr_bytes),
                timed_out: c.timed_out,
            });
        }
        Ok(WorkspaceLogs {
            workspace_id: id.to_string(),
            count: entries.len(),
            total,
            offset,
            entries,
        })
    }

    /// Stops a workspace: flushes the guest's filesystems, powers it off, keeps its data.
    pub async fn stop_workspace(&self, id: &str) -> Result<WorkspaceInfo> {
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(&store, rec).await?;
        // The watchdog first: it would take the VMM's exit for a crash.
        self.end_watchdogs(id).await;
        if rec.state == WorkspaceState::Started {
            self.graceful_halt(&rec).await;
        } else {
            // Whatever an interrupted start or create left running.
            self.halt(&rec).await;
        }
        self.procs_gone(id);
        let now = host::now();
        let rec = store.update_workspace(id, |r| {
            if r.state == WorkspaceState::Started {
                r.pause_ttl(now);
                r.state = WorkspaceState::Stopped;
                r.last_error = None;
            }
            r.forget_processes();
            r.last_activity_at = now;
            Ok::<(), CoreError>(())
        })?;
        self.info(&store, &rec)
    }

    /// Starts a stopped workspace on its existing disk (everything written survives).
    pub async fn start_workspace(&self, id: &str, progress: ProgressFn) -> Result<WorkspaceInfo> {
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(&store, rec).await?;
        if rec.state == WorkspaceState::Started {
            return self.info(&store, &rec);
        }
        if matches!(rec.state, WorkspaceState::Creating | WorkspaceState::Error) {
            return Err(CoreError::WorkspaceState {
                id: id.into(),
                state: rec.state.as_str().into(),
                operation: "workspace_start",
                detail: Some(
                    rec.last_error
                        .clone()
                        .unwrap_or_else(|| "it is being created or reset".into()),
                ),
            });
        }
        self.check_capacity(&store)?;
        let now = host::now();
        if rec.remaining_ttl(now) <= 0.0 {
            return Err(CoreError::WorkspaceState {
                id: id.into(),
                state: "stopped".into(),
                operation: "workspace_start",
                detail: Some("its TTL is used up; extend it with `update --ttl-seconds N`".into()),
            });
        }
        let (machine, _session, mode) = self.ws_boot(&rec, &progress, false, None).await?;
        let now = host::now();
        let rec = store.update_workspace(id, |r| {
            r.state = WorkspaceState::Started;
            r.resume_ttl(now);
            r.machine = Some(machine);
            r.last_error = None;
            r.last_activity_at = now;
            r.boot_mode = Some(mode);
            Ok::<(), CoreError>(())
        })?;
        self.spawn_watchdog(id);
        self.info(&store, &rec)
    }

    /// Deletes a workspace in any state: its VM, disk, baseline, history and logs.
    pub async fn delete_workspace(&self, id: &str) -> Result<WorkspaceDeleteResult> {
        let d = self.ws_dirs(id);
        if !d.root.is_dir() {
            // A record whose directory is gone: nothing to lock, only processes to end.
            let store = self.store()?;
            let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
            self.teardown(id, rec.machine.as_ref(), Teardown::Remove)
                .await?;
            return Ok(WorkspaceDeleteResult {
                workspace_id: id.to_string(),
                deleted: true,
                reason: "explicit_delete".into(),
            });
        }
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let Some(rec) = store.get_workspace(id)? else {
            // A delete killed after it removed the record but before the directory was gone
            // (tests/faults.rs, delete kills): deleting again finishes it. A create holds
            // this lock from just after making its directory until it has recorded it.
            if !procs::is_id(id) {
                return Err(ws_not_found(id));
            }
            self.teardown(id, None, Teardown::Remove).await?;
            return Ok(WorkspaceDeleteResult {
                workspace_id: id.to_string(),
                deleted: true,
                reason: "explicit_delete".into(),
            });
        };
        self.teardown(id, rec.machine.as_ref(), Teardown::Remove)
            .await?;
        Ok(WorkspaceDeleteResult {
            workspace_id: id.to_string(),
            deleted: true,
            reason: "explicit_delete".into(),
        })
    }

    /// Puts the workspace back to snapshot `snapshot`: [`BASELINE`](super::BASELINE) (see
    /// [`Self::reset_workspace`]) or a named one.
    pub async fn reset_workspace_to(
        &self,
        id: &str,
        snapshot: &str,
        progress: ProgressFn,
    ) -> Result<WorkspaceInfo> {
        if snapshot == super::BASELINE {
            return self.reset_workspace(id, progress).await;
        }
        self.reset_to_snapshot(id, snapshot, progress).await
    }

    /// Puts the workspace back to its create-time baseline: a fresh writable disk (so
    /// everything outside `/workspace` is pristine too), the baseline tree, an empty history.
    pub async fn reset_workspace(&self, id: &str, progress: ProgressFn) -> Result<WorkspaceInfo> {
        let _guard = self.ws_lock(id, LockMode::Exclusive).await?;
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let d = self.ws_dirs(id);
        if !d.baseline().is_file() {
            return Err(CoreError::WorkspaceState {
                id: id.into(),
                state: rec.state.as_str().into(),
                operation: "workspace_reset",
                detail: Some("its baseline archive is missing".into()),
            });
        }
        self.check_resettable(&store, &rec)?;
        // The new disk is made beside the old one first: a failure there leaves the
        // workspace untouched.
        let fresh = d.root.join("upper.ext4.new");
        self.cache().create_upper_disk(&fresh, WORKSPACE_DISK_MIB)?;
        self.begin_reset(&store, &rec).await?;
        let rebuilt = async {
            std::fs::rename(&fresh, d.upper())
                .map_err(|e| CoreError::io("replace", d.upper(), e))?;
            let (machine, session, mode) = self.ws_boot(&rec, &progress, true, None).await?;
            let seeded = import_tar_file(
                &session,
                &d.baseline(),
                WORKSPACE_ROOT,
                api::ImportMode::Replace,
            )
            .await;
            match seeded {
                Ok(_) => Ok((machine, mode)),
                Err(e) => {
                    self.halt_machines(id, Some(&machine)).await;
                    Err(e)
                }
            }
        }
        .await;
        self.finish_reset(&store, id, rebuilt, "the reset failed", |root| {
            // A reset starts over: the old boot's services are history, not state.
            let _ = std::fs::remove_dir_all(root.join(super::services::SERVICES_DIR));
            Ok(())
        })
        .await
    }

    /// What every reset checks before it changes anything: the TTL has time left, and a
    /// workspace that is not running may start (the running-workspace limit).
    pub(super) fn check_resettable(&self, store: &Store, rec: &WorkspaceRecord) -> Result<()> {
        if rec.remaining_ttl(host::now()) <= 0.0 {
            return Err(CoreError::WorkspaceState {
                id: rec.id.clone(),
                state: rec.state.as_str().into(),
                operation: "workspace_reset",
                detail: Some("its TTL is used up; extend it with `update --ttl-seconds N`".into()),
            });
        }
        if rec.state != WorkspaceState::Started {
            self.check_capacity(store)?;
        }
        Ok(())
    }

    /// The point of no return of a reset: `creating` (its builder recorded) before anything
    /// is thrown away, then the machine halted. The halt loses what the guest had not
    /// written back and the swap that follows replaces the disk, so a reset killed from here
    /// on must read as interrupted (`reset` again rebuilds it), never as a stopped workspace
    /// that `start` boots without its data (tests/faults.rs, reset kills).
    pub(super) async fn begin_reset(&self, store: &Store, rec: &WorkspaceRecord) -> Result<()> {
        self.mark_builder(&rec.id);
        let now = host::now();
        store.update_workspace(&rec.id, |r| {
            r.pause_ttl(now);
            r.state = WorkspaceState::Creating;
            r.last_activity_at = now;
            r.forget_processes();
            Ok::<(), CoreError>(())
        })?;
        self.halt(rec).await;
        Ok(())
    }

    /// The end of a reset, to the baseline or to a snapshot. When the rebuild failed the
    /// workspace reads `error` (`failed` and the cause). Otherwise its history, activity
    /// and logs start over, `records` puts its shell and service records in place (given
    /// the workspace's directory), and it is `started` again with `reset_count` + 1.
    pub(super) async fn finish_reset(
        &self,
        store: &Store,
        id: &str,
        rebuilt: Result<(MachineRecord, BootMode)>,
        failed: &str,
        records: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<WorkspaceInfo> {
        let d = self.ws_dirs(id);
        let (machine, mode) = match rebuilt {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("{failed}: {e}; `reset` again, or delete it");
                let _ = store.update_workspace(id, |r| {
                    r.state = WorkspaceState::Error;
                    r.last_error = Some(msg);
                    Ok::<(), CoreError>(())
                });
                return Err(e);
            }
        };
        store.clear_commands(id)?;
        super::activity::clear(&d.root);
        records(&d.root)?;
        let _ = std::fs::remove_dir_all(d.logs());
        host::ensure_private_dir(&d.logs())?;
        let now = host::now();
        let rec = store.update_workspace(id, |r| {
            r.state = WorkspaceState::Started;
            r.resume_ttl(now);
            r.machine = Some(machine);
            r.reset_count += 1;
            r.last_reset_at = Some(now);
            r.last_error = None;
            r.last_activity_at = now;
            r.boot_mode = Some(mode);
            Ok::<(), CoreError>(())
        })?;
        self.spawn_watchdog(id);
        self.info(store, &rec)
    }
}

/// Records an `exec_cancelled` activity event (the command, in the workspace directory) when
/// dropped still armed: the exec's future was dropped while its command ran, which is how a
/// cancelled call ends.
struct CancelledExec(Option<(std::path::PathBuf, String)>);

impl Drop for CancelledExec {
    fn drop(&mut self) {
        if let Some((root, command)) = self.0.take() {
            super::activity::record(&root, "exec_cancelled", &command);
        }
    }
}

/// Up to `max` bytes of the file at `path` from byte `offset`, as lossy text, and whether
/// more follows.
fn read_capped(path: &Path, offset: u64, max: u64) -> (String, bool) {
    use std::io::{Read, Seek};
    let Ok(mut f) = std::fs::File::open(path) else {
        return (String::new(), false);
    };
    if offset > 0 && f.seek(std::io::SeekFrom::Start(offset)).is_err() {
        return (String::new(), false);
    }
    let mut buf = Vec::new();
    let _ = f.take(max + 1).read_to_end(&mut buf);
    let truncated = buf.len() as u64 > max;
    buf.truncate(max as usize);
    (String::from_utf8_lossy(&buf).into_owned(), truncated)
}

/// Streams a tar file from the host into the guest.
pub(super) async fn import_tar_file(
    session: &Session,
    tar: &Path,
    dest: &str,
    mode: api::ImportMode,
) -> Result<api::TarResult> {
    let file = tokio::fs::File::open(tar)
        .await
        .map_err(|e| CoreError::io("open", tar, e))?;
    let req = api::ImportTar {
        root: WORKSPACE_ROOT.into(),
        dest: rel(dest),
        mode,
    };
    Ok(api::import_tar(session, req, file).await?)
}
