//! Services: named background processes in a workspace, with readiness probes, bounded
//! logs and published ports, run by the guest agent's process table
//! ([`pyro_proto::procs`]).
//!
//! The agent starts the service, runs its probe inside the guest and answers when it is
//! ready, exited or timed out, sending progress meanwhile (forwarded as
//! [`ProgressEvent::Service`], so MCP and JSON-RPC clients keep hearing from a long wait). If
//! the caller goes away, the agent finishes the wait by itself: nothing is orphaned.
//!
//! The host keeps a record per service in `services/<name>.json`: the last state seen, its
//! published ports and secret names. A start that ends `failed` is an error
//! ([`CoreError::ServiceFailed`], whose data is the record). Published ports live as long as
//! the service: they are released when it is stopped, and when a later call sees it ended.
//! When the machine goes (stop, reset, crash), live records become `stopped` with reason
//! `workspace_stopped`.

use std::collections::BTreeMap;

use pyro_proto::procs::{self, Readiness, ServiceState, ServiceStatus};
use serde::{Deserialize, Serialize};

use super::shells::{cwd_error, load_record, load_records, records_dir, save_record, secs};
use super::*;
use crate::model::{ServiceInfo, ServiceList, ServiceLogs};
use crate::validate::check_range as check;
use crate::{ProgressEvent, ProgressFn};

/// The directory of a workspace's service records.
pub(super) const SERVICES_DIR: &str = "services";
/// Longest readiness wait, seconds.
pub const READY_TIMEOUT_MAX_SECONDS: i64 = 86_400;
/// How long a stop waits after `SIGTERM` before `SIGKILL`.
const STOP_GRACE_MS: u64 = 5_000;
/// Most ports one service publishes.
pub const SERVICE_PORTS_MAX: usize = 16;
/// Most bytes of each stream `service logs` returns.
pub const SERVICE_LOG_READ_BYTES: u64 = 1024 * 1024;
/// Lines of output a failed start's error shows.
const FAILURE_TAIL_LINES: u64 = 20;

/// How a service proves it is ready (one of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadinessSpec {
    /// A path exists (normalized like file paths: relative to /workspace).
    File(String),
    /// `HOST:PORT` accepts a TCP connection.
    Tcp(String),
    /// `http://…` answers 200–399.
    Http(String),
    /// A shell command exits 0 (each try bounded by 10 s).
    Command(String),
}

/// A port to publish for a service: `[HOST_PORT:]GUEST_PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PortSpec {
    pub guest_port: i64,
    #[serde(default)]
    pub host_port: Option<i64>,
}

/// What `service start` asks for.
#[derive(Debug, Clone)]
pub struct StartService {
    /// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
    pub name: String,
    /// Run by `/bin/sh -c`.
    pub command: String,
    /// Working directory (must exist).
    pub cwd: String,
    /// The probe; none: ready once started.
    pub readiness: Option<ReadinessSpec>,
    /// Give up after this long.
    pub ready_timeout_seconds: i64,
    /// Pause between probes.
    pub ready_interval_ms: i64,
    /// `{SECRET: ENV_VAR}`.
    pub secret_env: BTreeMap<String, String>,
    /// Ports to publish once it is ready.
    pub published_ports: Vec<PortSpec>,
}

/// The host's record of a service.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ServiceRecord {
    info: ServiceInfo,
}

/// Checks a service name: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn check_service_name(name: &str) -> Result<()> {
    check_object_name("service_name", name)
}

/// Checks the name of something in a workspace (a service, a snapshot), reported as `field`:
/// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub(super) fn check_object_name(field: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(CoreError::Invalid {
            field,
            reason: format!(
                "`{}` must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                crate::error::one_line(name)
            ),
        });
    }
    Ok(())
}

/// The agent's probe for a readiness spec, and its normalized form for the record.
fn probe(spec: &ReadinessSpec) -> Result<(Readiness, serde_json::Value)> {
    use serde_json::json;
    let bad = |reason: String| CoreError::Invalid {
        field: "readiness",
        reason,
    };
    Ok(match spec {
        ReadinessSpec::File(path) => {
            let path = normalize_workspace_path(path).map_err(|e| bad(e.to_string()))?;
            (
                Readiness::File { path: path.clone() },
                json!({"type": "file", "path": path}),
            )
        }
        ReadinessSpec::Tcp(address) => {
            let Some((host, port)) = address.rsplit_once(':') else {
                return Err(bad(format!(
                    "tcp readiness `{}` is not HOST:PORT",
                    crate::error::one_line(address)
                )));
            };
            let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                bad(format!(
                    "tcp readiness port `{}` is not 1-65535",
                    crate::error::one_line(port)
                ))
            })?;
            if host.is_empty()
                || host.len() > 253
                || host.starts_with('[')
                || host.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(format!(
                    "tcp readiness host `{}` must be a name or an address (IPv6 without brackets)",
                    crate::error::one_line(host)
                )));
            }
            (
                Readiness::Tcp {
                    host: host.to_string(),
                    port,
                },
                json!({"type": "tcp", "address": format!("{host}:{port}")}),
            )
        }
        ReadinessSpec::Http(url) => {
            let rest = url.strip_prefix("http://").ok_or_else(|| {
                bad(format!(
                    "http readiness `{}` must be an http:// URL (probes run inside the guest, \
                     without TLS)",
                    crate::error::one_line(url)
                ))
            })?;
            if rest.is_empty()
                || url.len() > 2048
                || url.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(format!(
                    "http readiness `{}` is not a URL",
                    crate::error::one_line(url)
                )));
            }
            (
                Readiness::Http { url: url.clone() },
                json!({"type": "http", "url": url}),
            )
        }
        ReadinessSpec::Command(command) => {
            if command.trim().is_empty() || command.len() > 64 * 1024 {
                return Err(bad(
                    "command readiness must be a non-empty command of at most 64 KiB".into(),
                ));
            }
            (
                Readiness::Command {
                    command: command.clone(),
                    timeout_ms: procs::PROBE_COMMAND_MAX_MS,
                },
                json!({"type": "command", "command": command}),
            )
        }
    })
}

fn status_name(s: ServiceStatus) -> &'static str {
    match s {
        ServiceStatus::Starting => "starting",
        ServiceStatus::Running => "running",
        ServiceStatus::Exited => "exited",
        ServiceStatus::Stopped => "stopped",
        ServiceStatus::Failed => "failed",
    }
}

/// Checks published port specs (at most [`SERVICE_PORTS_MAX`], no repeated pair or host
/// port).
fn check_ports(ports: &[PortSpec]) -> Result<()> {
    if ports.len() > SERVICE_PORTS_MAX {
        return Err(CoreError::Invalid {
            field: "published_ports",
            reason: format!("at most {SERVICE_PORTS_MAX} ports per service"),
        });
    }
    for (i, p) in ports.iter().enumerate() {
        check("guest_port", p.guest_port, (1, 65535))?;
        if let Some(h) = p.host_port {
            check("host_port", h, (1025, 65535))?;
        }
        if ports[..i]
            .iter()
            .any(|q| q == p || (p.host_port.is_some() && q.host_port == p.host_port))
        {
            return Err(CoreError::Invalid {
                field: "published_ports",
                reason: format!(
                    "port {} is listed twice",
                    p.host_port.unwrap_or(p.guest_port)
                ),
            });
        }
    }
    Ok(())
}

impl Pyro {
    fn services_dir(&self, id: &str) -> std::path::PathBuf {
        records_dir(&self.ws_dirs(id).root, SERVICES_DIR)
    }

    fn service_record(&self, id: &str, name: &str) -> Result<ServiceInfo> {
        check_service_name(name)?;
        load_record::<ServiceRecord>(&self.services_dir(id), name)
            .map(|r| r.info)
            .ok_or_else(|| CoreError::ServiceNotFound {
                workspace_id: id.to_string(),
                name: name.to_string(),
            })
    }

    fn save_service(&self, id: &str, info: &ServiceInfo) -> Result<()> {
        save_record(
            &self.services_dir(id),
            &info.service_name,
            &ServiceRecord { info: info.clone() },
        )
    }

    /// Folds the agent's view of a service into its record.
    fn merge_service(&self, mut info: ServiceInfo, s: &ServiceState) -> ServiceInfo {
        info.state = status_name(s.status).into();
        info.pid = Some(s.pid);
        info.exit_code = s.exit_code;
        info.stop_reason = s.stop_reason.clone();
        info.started_at = secs(s.started_at_ms);
        info.ready_at = s.ready_at_ms.map(secs);
        info.ended_at = s.ended_at_ms.map(secs);
        info.probe_attempts = s.probe_attempts;
        info.last_probe_error = s.last_probe_error.clone();
        info
    }

    /// Releases the ports of a service that is no longer live.
    async fn release_service_ports(&self, id: &str, info: &mut ServiceInfo) {
        if info.is_live() {
            return;
        }
        for p in std::mem::take(&mut info.published_ports) {
            if let Err(e) = self.unpublish_port(id, p.host_port).await {
                tracing::warn!(
                    workspace = id,
                    port = p.host_port,
                    "cannot release a port: {e}"
                );
            }
        }
    }

    /// Starts a service and waits for it to be ready; a service that does not get there is
    /// [`CoreError::ServiceFailed`].
    pub async fn start_service(
        &self,
        id: &str,
        req: StartService,
        progress: ProgressFn,
    ) -> Result<ServiceInfo> {
        check_service_name(&req.name)?;
        if req.command.trim().is_empty() {
            return Err(CoreError::Invalid {
                field: "command",
                reason: "a service needs a command".into(),
            });
        }
        if req.command.len() > 64 * 1024 {
            return Err(CoreError::Invalid {
                field: "command",
                reason: format!("{} bytes is over the limit of 65536", req.command.len()),
            });
        }
        let cwd = normalize_workspace_path(&req.cwd)?;
        check(
            "ready_timeout_seconds",
            req.ready_timeout_seconds,
            (1, READY_TIMEOUT_MAX_SECONDS),
        )?;
        check("ready_interval_ms", req.ready_interval_ms, (10, 60_000))?;
        let probe = req.readiness.as_ref().map(probe).transpose()?;
        check_ports(&req.published_ports)?;
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = self.load_started(&store, id, "service start").await?;
        if !req.published_ports.is_empty()
            && rec.network_policy != pyro_net::NetworkPolicy::EgressPublishedPorts
        {
            return Err(CoreError::Invalid {
                field: "published_ports",
                reason: format!(
                    "ports are published only under the network policy egress+published-ports; \
                     workspace {id} has `{}`",
                    rec.network_policy
                ),
            });
        }
        let d = self.ws_dirs(id);
        let env = crate::secrets::process_env(&d.root, &req.secret_env)?;
        // A previous service of that name: its ports go (the agent refuses a live one).
        if let Some(old) = load_record::<ServiceRecord>(&self.services_dir(id), &req.name) {
            let mut old = old.info;
            if !old.is_live() {
                self.release_service_ports(id, &mut old).await;
            }
        }
        let (readiness, shown) = match probe {
            Some((r, v)) => (Some(r), Some(v)),
            None => (None, None),
        };
        let session = self.ws_session(&rec).await?;
        let name = req.name.clone();
        let start = procs::ServiceStart {
            name: req.name.clone(),
            command: req.command.clone(),
            cwd: cwd.clone(),
            env,
            readiness,
            ready_timeout_ms: (req.ready_timeout_seconds as u64) * 1000,
            ready_interval_ms: req.ready_interval_ms as u64,
            log_bytes: None,
        };
        let state = procs::service_start(&session, start, |ev| {
            progress(&ProgressEvent::Service {
                name: name.clone(),
                elapsed_ms: ev.elapsed_ms,
                probe_attempts: ev.probe_attempts,
                last_probe_error: ev.last_probe_error,
            });
        })
        .await
        .map_err(|e| match e {
            api::CallError::Agent(a) if a.code == api::ErrorCode::Conflict => CoreError::Invalid {
                field: "service_name",
                reason: format!("service `{}` is already running; stop it first", req.name),
            },
            api::CallError::Agent(a) if a.code == api::ErrorCode::BadRequest => {
                if a.message.contains("cwd") {
                    cwd_error(api::CallError::Agent(a), &cwd)
                } else {
                    CoreError::Invalid {
                        field: "service_name",
                        reason: a.message,
                    }
                }
            }
            api::CallError::Agent(a) if a.code == api::ErrorCode::NotFound => {
                cwd_error(api::CallError::Agent(a), &cwd)
            }
            e => CoreError::Agent(e),
        })?;
        let blank = ServiceInfo {
            workspace_id: id.to_string(),
            service_name: req.name.clone(),
            state: String::new(),
            command: req.command.clone(),
            cwd: cwd.clone(),
            started_at: 0.0,
            ended_at: None,
            exit_code: None,
            pid: None,
            execution_mode: rec.backend.execution_mode().into(),
            readiness: shown,
            ready_at: None,
            stop_reason: None,
            published_ports: Vec::new(),
            probe_attempts: 0,
            last_probe_error: None,
            secret_env: req.secret_env.keys().cloned().collect(),
        };
        let mut info = self.merge_service(blank, &state);
        self.save_service(id, &info)?;
        super::activity::record(
            &d.root,
            "service_start",
            &format!("{} {}: {}", info.service_name, info.state, info.command),
        );
        self.touch(&store, id);
        if info.state == "failed" {
            return Err(self.service_failed(id, &session, info).await);
        }
        for p in &req.published_ports {
            match self.publish_port(id, p.guest_port, p.host_port).await {
                Ok(port) => {
                    info.published_ports.push(port);
                    self.save_service(id, &info)?;
                }
                Err(e) => {
                    let stop = procs::ServiceStop {
                        name: req.name.clone(),
                        grace_ms: STOP_GRACE_MS,
                    };
                    if let Ok(s) =
                        api::call::<ServiceState>(&session, &api::Request::ServiceStop(stop)).await
                    {
                        info = self.merge_service(info, &s);
                    }
                    info.state = "failed".into();
                    info.stop_reason = Some("published_port_failed".into());
                    info.last_probe_error = Some(format!("guest port {}: {e}", p.guest_port));
                    let mut released = info.clone();
                    released.state = "failed".into();
                    self.release_service_ports(id, &mut released).await;
                    info.published_ports = released.published_ports;
                    self.save_service(id, &info)?;
                    return Err(self.service_failed(id, &session, info).await);
                }
            }
        }
        Ok(info)
    }

    /// The error of a failed start, with the tail of its output.
    async fn service_failed(&self, id: &str, session: &Session, info: ServiceInfo) -> CoreError {
        let values: Vec<String> = crate::secrets::values(&self.ws_dirs(id).root)
            .map(|v| v.into_values().collect())
            .unwrap_or_default();
        let req = procs::ServiceLogs {
            name: info.service_name.clone(),
            tail_lines: Some(FAILURE_TAIL_LINES),
            max_bytes: 16 * 1024,
        };
        let log_tail = match procs::service_logs(session, req).await {
            Ok((_, out, err)) => {
                let mut text = String::new();
                for (label, bytes) in [("stdout", out), ("stderr", err)] {
                    let shown = redact_tail(&bytes, &values, false);
                    if !shown.trim().is_empty() {
                        text.push_str(&format!("[{label}]\n{}\n", shown.trim_end()));
                    }
                }
                text
            }
            Err(_) => String::new(),
        };
        CoreError::ServiceFailed {
            info: Box::new(info),
            log_tail,
        }
    }

    /// The agent's services folded into the records (a started workspace), ports of ended
    /// services released. Records the agent does not know are `stopped`/`workspace_stopped`.
    async fn refresh_services(&self, id: &str, session: &Session) -> Result<Vec<ServiceInfo>> {
        let list: procs::ServiceList = api::call(
            session,
            &api::Request::ServiceList(procs::ServiceListRequest::default()),
        )
        .await?;
        let mut out = Vec::new();
        for old in load_records::<ServiceRecord>(&self.services_dir(id)) {
            let mut info = match list
                .services
                .iter()
                .find(|s| s.name == old.info.service_name)
            {
                Some(s) => self.merge_service(old.info, s),
                None => gone(old.info),
            };
            self.release_service_ports(id, &mut info).await;
            self.save_service(id, &info)?;
            out.push(info);
        }
        Ok(out)
    }

    /// The workspace's services (asked of the guest while it runs).
    pub async fn list_services(&self, id: &str) -> Result<ServiceList> {
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let rec = store.get_workspace(id)?.ok_or_else(|| ws_not_found(id))?;
        let rec = self.refresh(&store, rec).await?;
        let services = if rec.state == WorkspaceState::Started {
            let session = self.ws_session(&rec).await?;
            self.refresh_services(id, &session).await?
        } else {
            self.services_of(id)
        };
        Ok(ServiceList {
            workspace_id: id.to_string(),
            count: services.len(),
            running_count: services.iter().filter(|s| s.is_live()).count(),
            services,
        })
    }

    /// The records as they are (no guest asked).
    pub(super) fn services_of(&self, id: &str) -> Vec<ServiceInfo> {
        load_records::<ServiceRecord>(&self.services_dir(id))
            .into_iter()
            .map(|r| r.info)
            .collect()
    }

    /// One service.
    pub async fn status_service(&self, id: &str, name: &str) -> Result<ServiceInfo> {
        self.service_record(id, name)?;
        let list = self.list_services(id).await?;
        list.services
            .into_iter()
            .find(|s| s.service_name == name)
            .ok_or_else(|| CoreError::ServiceNotFound {
                workspace_id: id.to_string(),
                name: name.to_string(),
            })
    }

    /// Stops a service: TERM to its process group, KILL after 5 s; its ports are released.
    pub async fn stop_service(&self, id: &str, name: &str) -> Result<ServiceInfo> {
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let info = self.service_record(id, name)?;
        let rec = self.load_started(&store, id, "service stop").await?;
        let session = self.ws_session(&rec).await?;
        let stop = procs::ServiceStop {
            name: name.to_string(),
            grace_ms: STOP_GRACE_MS,
        };
        let mut info =
            match api::call::<ServiceState>(&session, &api::Request::ServiceStop(stop)).await {
                Ok(s) => self.merge_service(info, &s),
                Err(api::CallError::Agent(a)) if a.code == api::ErrorCode::NotFound => gone(info),
                Err(e) => return Err(e.into()),
            };
        self.release_service_ports(id, &mut info).await;
        self.save_service(id, &info)?;
        super::activity::record(
            &self.ws_dirs(id).root,
            "service_stop",
            &format!(
                "{} ({})",
                info.service_name,
                info.stop_reason.as_deref().unwrap_or(&info.state)
            ),
        );
        self.touch(&store, id);
        Ok(info)
    }

    /// A service's retained output: the last `tail_lines` lines of each stream, or all of it
    /// (up to [`SERVICE_LOG_READ_BYTES`] each). Redacted; never touches its ports.
    pub async fn logs_service(
        &self,
        id: &str,
        name: &str,
        tail_lines: Option<i64>,
    ) -> Result<ServiceLogs> {
        if let Some(n) = tail_lines {
            check("tail_lines", n, (1, 1_000_000))?;
        }
        let _guard = self.ws_lock(id, LockMode::Shared).await?;
        let store = self.store()?;
        let info = self.service_record(id, name)?;
        let rec = self.load_started(&store, id, "service logs").await?;
        let session = self.ws_session(&rec).await?;
        let values: Vec<String> = crate::secrets::values(&self.ws_dirs(id).root)?
            .into_values()
            .collect();
        // A little more than asked, so that a value cut by the start of the tail is caught.
        let back = crate::secrets::longest(&values) as u64;
        let req = procs::ServiceLogs {
            name: name.to_string(),
            tail_lines: tail_lines.map(|n| n as u64),
            max_bytes: SERVICE_LOG_READ_BYTES + back,
        };
        let (res, out, err) = procs::service_logs(&session, req)
            .await
            .map_err(|e| match e {
                api::CallError::Agent(a) if a.code == api::ErrorCode::NotFound => {
                    CoreError::ServiceNotFound {
                        workspace_id: id.to_string(),
                        name: name.to_string(),
                    }
                }
                e => CoreError::Agent(e),
            })?;
        // The record keeps its ports: a later list or status releases those of an ended
        // service (reading logs never does).
        let info = self.merge_service(info, &res.service);
        self.save_service(id, &info)?;
        let (so_cut, se_cut) = (
            res.stdout_truncated || out.len() as u64 > SERVICE_LOG_READ_BYTES,
            res.stderr_truncated || err.len() as u64 > SERVICE_LOG_READ_BYTES,
        );
        let stdout = redact_tail(&out, &values, out.len() as u64 > SERVICE_LOG_READ_BYTES);
        let stderr = redact_tail(&err, &values, err.len() as u64 > SERVICE_LOG_READ_BYTES);
        self.touch(&store, id);
        Ok(ServiceLogs {
            service: info,
            stdout,
            stderr,
            tail_lines: tail_lines.map(|n| n as u64),
            truncated: so_cut || se_cut,
            stdout_truncated: so_cut,
            stderr_truncated: se_cut,
        })
    }

    /// After a restore into workspace `id` (a reset to a snapshot, a fork) its service
    /// records are the snapshot's: they name `id` from now on, and their published ports
    /// (whose relays ended with the machine they were published for) are dropped. Returns the
    /// ports of the live services, for [`Self::republish_service_ports`].
    pub(super) fn adopt_restored_services(
        &self,
        id: &str,
    ) -> Vec<(String, crate::model::PublishedPort)> {
        let mut again = Vec::new();
        for r in load_records::<ServiceRecord>(&self.services_dir(id)) {
            let mut info = r.info;
            info.workspace_id = id.to_string();
            let live = info.is_live();
            for p in std::mem::take(&mut info.published_ports) {
                if live {
                    again.push((info.service_name.clone(), p));
                }
            }
            if let Err(e) = self.save_service(id, &info) {
                tracing::warn!(
                    workspace = id,
                    "cannot update a restored service record: {e}"
                );
            }
        }
        again
    }

    /// Publishes again the ports [`Self::adopt_restored_services`] returned (the workspace
    /// started, its lock free): the same host port when it is free, else one the OS picks. A
    /// port that cannot be published is left out of its service's record, with a warning.
    pub(super) async fn republish_service_ports(
        &self,
        id: &str,
        ports: Vec<(String, crate::model::PublishedPort)>,
    ) {
        for (name, p) in ports {
            let guest = i64::from(p.guest_port);
            let published = match self
                .publish_port(id, guest, Some(i64::from(p.host_port)))
                .await
            {
                Ok(x) => Ok(x),
                Err(_) => self.publish_port(id, guest, None).await,
            };
            match published {
                Ok(x) => {
                    if let Ok(mut info) = self.service_record(id, &name) {
                        info.published_ports.push(x);
                        let _ = self.save_service(id, &info);
                    }
                }
                Err(e) => tracing::warn!(
                    workspace = id,
                    service = name,
                    "cannot publish guest port {} again: {e}",
                    p.guest_port
                ),
            }
        }
    }

    /// The machine of workspace `id` is gone (stopped, crashed, reset): live services are
    /// `stopped`/`workspace_stopped` (their ports went with the machine's helpers), and no
    /// shell survives.
    pub(super) fn procs_gone(&self, id: &str) {
        let root = self.ws_dirs(id).root;
        for r in load_records::<ServiceRecord>(&self.services_dir(id)) {
            if r.info.is_live() {
                let mut info = gone(r.info);
                info.published_ports.clear();
                let _ = self.save_service(id, &info);
            }
        }
        let _ = std::fs::remove_dir_all(records_dir(&root, super::shells::SHELLS_DIR));
    }

    /// `(service_count, running_service_count)` from the records.
    pub(super) fn service_counts(&self, id: &str) -> (u64, u64) {
        let all = self.services_of(id);
        let live = all.iter().filter(|s| s.is_live()).count();
        (all.len() as u64, live as u64)
    }
}

/// A live record whose process no longer exists: stopped with its machine.
fn gone(mut info: ServiceInfo) -> ServiceInfo {
    if info.is_live() {
        info.state = "stopped".into();
        info.stop_reason = Some("workspace_stopped".into());
        info.ended_at = Some(host::now());
    }
    info
}

/// Log bytes as text with every value redacted. `cut_front`: the bytes are the end of
/// something longer, and the first `longest` bytes are only context (a value that began
/// before them is shown as `[REDACTED]`, never as its tail).
fn redact_tail(bytes: &[u8], values: &[String], cut_front: bool) -> String {
    let red = crate::secrets::redact_mapped(bytes, values, false);
    let skip = if cut_front {
        red.out_at_raw(crate::secrets::longest(values).min(bytes.len()))
    } else {
        0
    };
    String::from_utf8_lossy(&red.bytes[skip.min(red.bytes.len())..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_probes_and_ports_are_checked() {
        for good in ["web", "a", "api-1.v2_x", &"x".repeat(64)] {
            check_service_name(good).unwrap();
        }
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(check_service_name(bad).is_err(), "{bad}");
        }
        let (r, v) = probe(&ReadinessSpec::Tcp("::1:8080".into())).unwrap();
        assert_eq!(
            r,
            Readiness::Tcp {
                host: "::1".into(),
                port: 8080
            }
        );
        assert_eq!(v["address"], "::1:8080");
        for bad in ["8080", ":80", "[::1]:80", "h:0", "h:70000", "h:x"] {
            assert!(probe(&ReadinessSpec::Tcp(bad.into())).is_err(), "{bad}");
        }
        assert!(probe(&ReadinessSpec::Http("https://x/".into())).is_err());
        assert!(probe(&ReadinessSpec::Http("http://127.0.0.1:8000/".into())).is_ok());
        assert!(probe(&ReadinessSpec::Command("  ".into())).is_err());
        let (r, _) = probe(&ReadinessSpec::File("ready".into())).unwrap();
        assert_eq!(
            r,
            Readiness::File {
                path: "/workspace/ready".into()
            }
        );
        let p = |g, h| PortSpec {
            guest_port: g,
            host_port: h,
        };
        check_ports(&[p(80, None), p(81, Some(8081))]).unwrap();
        assert!(check_ports(&[p(80, None), p(80, None)]).is_err());
        assert!(check_ports(&[p(80, Some(9000)), p(81, Some(9000))]).is_err());
        assert!(check_ports(&[p(0, None)]).is_err());
        assert!(check_ports(&[p(80, Some(80))]).is_err());
    }

    #[test]
    fn a_tail_never_shows_the_end_of_a_value_it_cut() {
        let values = vec!["abcdefgh".to_string()];
        // The tail begins inside a value it cannot recognise: its first 8 bytes (the longest
        // value's length) are context, never shown.
        let tail = b"efgh rest of line\nabcdefgh\n";
        assert_eq!(redact_tail(tail, &values, true), "t of line\n[REDACTED]\n");
        // A value that straddles the context's end is shown as the marker.
        assert_eq!(redact_tail(b"xxxxxabcdefgh!", &values, true), "[REDACTED]!");
        assert_eq!(
            redact_tail(b"x abcdefgh y", &values, false),
            "x [REDACTED] y"
        );
    }
}
