//! Services: `/bin/sh -c COMMAND` in its own session, stdin `/dev/null`, stdout and stderr
//! drained into rotated log files; a readiness wait in a detached task; stops by `SIGTERM`
//! to the group, a grace period, then `SIGKILL`.
//!
//! Logs live in [`SERVICE_DIR`] in a guest. In test mode (the agent is not PID 1) they live
//! in `$PYRO_AGENT_RUN_DIR/services`, else in a private directory under the temporary
//! directory, made at first use. Each stream keeps `<name>.<stream>` and the previous half
//! `<name>.<stream>.1`, each at most half of the service's `log_bytes`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use pyro_proto::api::{AgentError, DATA_CHUNK};
use pyro_proto::procs::{
    Readiness, SERVICE_DIR, SERVICE_LOG_DEFAULT, SERVICE_LOG_MAX, SERVICE_LOGS_READ_MAX,
    SERVICES_MAX, ServiceEvent, ServiceList, ServiceListRequest, ServiceLogs, ServiceLogsResult,
    ServiceStart, ServiceState, ServiceStatus, ServiceStop,
};
use pyro_proto::{Message, MsgKind, SendHalf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::probe::{self, ProbeContext};
use super::{bad, exit_code, io_err, killpg, not_found, now_ms};
use crate::exec::LaunchSpec;
use crate::limits::CommandCgroup;
use crate::reaper;

/// Environment variable naming the test-mode run directory.
pub const RUN_DIR_ENV: &str = "PYRO_AGENT_RUN_DIR";
/// Grace between `SIGTERM` and `SIGKILL` when readiness times out.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);
/// After `SIGKILL`, how long a stop waits for the exit notification.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Longest wait anyone may ask for (ready timeout, stop grace): a year.
const WAIT_CAP_MS: u64 = 365 * 24 * 3600 * 1000;
/// Interval of progress events while readiness is awaited.
const EVENT_EVERY: Duration = Duration::from_secs(1);
/// Size of one read from a log pipe.
const LOG_CHUNK: usize = 64 * 1024;

/// Every service, by name.
static SERVICES: Mutex<BTreeMap<String, Arc<Service>>> = Mutex::new(BTreeMap::new());
/// Held while a start checks and claims its name, so two starts never race for it.
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The log directory, made at first use.
static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn table() -> MutexGuard<'static, BTreeMap<String, Arc<Service>>> {
    SERVICES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The log directory (see the module documentation).
fn service_dir() -> Result<&'static Path, AgentError> {
    let dir = DIR.get_or_init(|| {
        let dir = if crate::sys::getpid() == 1 {
            PathBuf::from(SERVICE_DIR)
        } else if let Some(run) = std::env::var_os(RUN_DIR_ENV) {
            PathBuf::from(run).join("services")
        } else {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let pid = std::process::id();
            std::env::temp_dir().join(format!("pyro-agent-{pid}-{nanos}-services"))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(dir)
    });
    match dir {
        Ok(d) => Ok(d),
        Err(e) => Err(AgentError::new(pyro_proto::api::ErrorCode::Io, e.clone())),
    }
}

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn suffix(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

fn log_path(dir: &Path, name: &str, stream: Stream, old: bool) -> PathBuf {
    let old = if old { ".1" } else { "" };
    dir.join(format!("{name}.{}{old}", stream.suffix()))
}

fn remove_logs(dir: &Path, name: &str) {
    for stream in [Stream::Stdout, Stream::Stderr] {
        for old in [false, true] {
            let _ = std::fs::remove_file(log_path(dir, name, stream, old));
        }
    }
}

/// One service of the table.
struct Service {
    name: String,
    command: String,
    cwd: String,
    readiness: Option<Readiness>,
    pid: i32,
    started_at_ms: u64,
    started: Instant,
    ready_timeout: Duration,
    ready_interval: Duration,
    /// Its whole environment and its cwd on this machine (for command probes).
    env: BTreeMap<String, String>,
    host_cwd: PathBuf,
    dir: PathBuf,
    state: Mutex<Inner>,
    /// Bumped on every change (probe, status, exit).
    changed: watch::Sender<u64>,
    /// Its own cgroup, while it runs (none outside a guest).
    cgroup: Mutex<Option<CommandCgroup>>,
}

/// What changes.
struct Inner {
    status: ServiceStatus,
    stop_reason: Option<String>,
    exit_code: Option<i32>,
    ready_at_ms: Option<u64>,
    ended_at_ms: Option<u64>,
    probe_attempts: u64,
    last_probe_error: Option<String>,
    stdout_bytes: u64,
    stderr_bytes: u64,
    /// Whether a log rotation has discarded bytes of each stream.
    stdout_lost: bool,
    stderr_lost: bool,
    /// Set by a stop before it signals: the status and reason the exit will record.
    stopping: Option<(ServiceStatus, &'static str)>,
}

impl Service {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn ended(&self) -> bool {
        self.lock().ended_at_ms.is_some()
    }

    fn snapshot(&self) -> ServiceState {
        let s = self.lock();
        ServiceState {
            name: self.name.clone(),
            command: self.command.clone(),
            cwd: self.cwd.clone(),
            pid: self.pid,
            status: s.status,
            stop_reason: s.stop_reason.clone(),
            exit_code: s.exit_code,
            readiness: self.readiness.clone(),
            started_at_ms: self.started_at_ms,
            ready_at_ms: s.ready_at_ms,
            ended_at_ms: s.ended_at_ms,
            probe_attempts: s.probe_attempts,
            last_probe_error: s.last_probe_error.clone(),
            stdout_bytes: s.stdout_bytes,
            stderr_bytes: s.stderr_bytes,
        }
    }

    fn event(&self) -> ServiceEvent {
        let s = self.lock();
        ServiceEvent {
            elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            probe_attempts: s.probe_attempts,
            last_probe_error: s.last_probe_error.clone(),
        }
    }

    /// `SIGTERM` to the group, `grace`, then `SIGKILL` (and the cgroup's `cgroup.kill`);
    /// the exit records `status` with `term_reason` or `kill_reason`. Returns once the exit
    /// is recorded (or, after the kill, a bounded wait has passed). Nothing happens to a
    /// service that has already ended.
    async fn stop(
        &self,
        grace: Duration,
        status: ServiceStatus,
        term_reason: &'static str,
        kill_reason: &'static str,
    ) {
        let mut rx = self.changed.subscribe();
        {
            let mut s = self.lock();
            if s.ended_at_ms.is_some() {
                return;
            }
            s.stopping = Some((status, term_reason));
        }
        killpg(self.pid, libc::SIGTERM);
        if super::wait_until(&mut rx, grace, || self.ended()).await {
            return;
        }
        {
            let mut s = self.lock();
            if s.ended_at_ms.is_some() {
                return;
            }
            s.stopping = Some((status, kill_reason));
        }
        killpg(self.pid, libc::SIGKILL);
        if let Some(cg) = self
            .cgroup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            cg.kill();
        }
        super::wait_until(&mut rx, KILL_WAIT, || self.ended()).await;
    }
}

fn lookup(name: &str) -> Result<Arc<Service>, AgentError> {
    table()
        .get(name)
        .cloned()
        .ok_or_else(|| not_found(format!("no service {name:?}")))
}

fn check_name(name: &str) -> Result<(), AgentError> {
    let b = name.as_bytes();
    let ok = (1..=64).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "service name {name:?} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"
        )))
    }
}

fn check_start(req: &ServiceStart) -> Result<u64, AgentError> {
    check_name(&req.name)?;
    if req.command.is_empty() || req.command.contains('\0') {
        return Err(bad("command must be non-empty and without NUL bytes"));
    }
    super::check_env(&req.env)?;
    if req.ready_timeout_ms == 0 {
        return Err(bad("ready_timeout_ms must be positive"));
    }
    if req.ready_interval_ms < 10 {
        return Err(bad("ready_interval_ms must be at least 10"));
    }
    if let Some(r) = &req.readiness {
        probe::check(r).map_err(bad)?;
    }
    let log_bytes = req.log_bytes.unwrap_or(SERVICE_LOG_DEFAULT);
    if !(2..=SERVICE_LOG_MAX).contains(&log_bytes) {
        return Err(bad(format!(
            "log_bytes {log_bytes} out of range (2..={SERVICE_LOG_MAX})"
        )));
    }
    Ok(log_bytes)
}

fn create_log(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// [`pyro_proto::api::Request::ServiceStart`]: sends `ServiceEvent`s as `EVENT` messages
/// while readiness is awaited and returns the outcome.
pub async fn start(tx: &mut SendHalf, req: ServiceStart) -> Result<ServiceState, AgentError> {
    let svc = launch(req).await?;
    let waiter = tokio::spawn(await_ready(svc.clone()));
    if svc.readiness.is_some() {
        let mut rx = svc.changed.subscribe();
        let mut ticker = tokio::time::interval_at(Instant::now() + EVENT_EVERY, EVENT_EVERY);
        let mut sent_attempts = 0;
        let mut waiter = waiter;
        loop {
            let send = tokio::select! {
                _ = &mut waiter => break,
                changed = rx.changed() => {
                    changed.is_ok() && svc.lock().probe_attempts != sent_attempts
                }
                _ = ticker.tick() => true,
            };
            if send {
                let ev = svc.event();
                sent_attempts = ev.probe_attempts;
                // The caller may be gone; the wait goes on regardless.
                if let Ok(msg) = Message::json(MsgKind::EVENT, &ev) {
                    let _ = tx.send(msg).await;
                }
            }
        }
    }
    Ok(svc.snapshot())
}

/// Validates, claims the name and starts the process with its log drains and exit task.
async fn launch(req: ServiceStart) -> Result<Arc<Service>, AgentError> {
    let log_bytes = check_start(&req)?;
    let host_cwd = super::resolve_cwd(&req.cwd)?;
    let dir = service_dir()?.to_path_buf();
    let _claim = STARTING.lock().await;
    {
        let mut t = table();
        if let Some(old) = t.get(&req.name) {
            if !old.ended() {
                return Err(super::conflict(format!(
                    "service {:?} is already running",
                    req.name
                )));
            }
            t.remove(&req.name);
            remove_logs(&dir, &req.name);
        }
        if t.len() >= SERVICES_MAX {
            return Err(bad(format!("at most {SERVICES_MAX} services")));
        }
    }
    remove_logs(&dir, &req.name);
    let env = crate::exec::build_env(&req.env);
    let half = (log_bytes / 2).max(1);
    let mut files = Vec::new();
    for stream in [Stream::Stdout, Stream::Stderr] {
        let path = log_path(&dir, &req.name, stream, false);
        files.push(
            create_log(&path).map_err(|e| io_err(&format!("creating {}", path.display()), &e))?,
        );
    }
    let launch = LaunchSpec {
        path: PathBuf::from("/bin/sh"),
        argv: vec!["sh".into(), "-c".into(), req.command.clone()],
        env: env.clone(),
        cwd: host_cwd.clone(),
        stdin_piped: false,
    };
    let cgroup = CommandCgroup::create();
    let (cg_dir, cg_join) = match &cgroup {
        Some(c) => (Some(c.dir_fd()), Some(c.procs())),
        None => (
            crate::limits::commands_dir(),
            crate::limits::commands_procs(),
        ),
    };
    // The cgroup's descriptors stay open until the start returns: `cgroup` outlives it.
    let child = tokio::task::spawn_blocking(move || launch.start(cg_dir, cg_join))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
        .map_err(|e| {
            remove_logs(&dir, &req.name);
            io_err("starting the service", &e)
        })?;
    let now = now_ms();
    let ready_now = req.readiness.is_none();
    let svc = Arc::new(Service {
        name: req.name.clone(),
        command: req.command,
        cwd: req.cwd,
        readiness: req.readiness,
        pid: i32::try_from(child.pid).unwrap_or(i32::MAX),
        started_at_ms: now,
        started: Instant::now(),
        ready_timeout: Duration::from_millis(req.ready_timeout_ms.min(WAIT_CAP_MS)),
        ready_interval: Duration::from_millis(req.ready_interval_ms.min(WAIT_CAP_MS)),
        env,
        host_cwd,
        dir,
        state: Mutex::new(Inner {
            status: if ready_now {
                ServiceStatus::Running
            } else {
                ServiceStatus::Starting
            },
            stop_reason: None,
            exit_code: None,
            ready_at_ms: ready_now.then_some(now),
            ended_at_ms: None,
            probe_attempts: 0,
            last_probe_error: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_lost: false,
            stderr_lost: false,
            stopping: None,
        }),
        changed: watch::channel(0).0,
        cgroup: Mutex::new(cgroup),
    });
    let mut files = files.into_iter();
    let pipes = [
        (Stream::Stdout, child.stdout.map(std::os::fd::OwnedFd::from)),
        (Stream::Stderr, child.stderr.map(std::os::fd::OwnedFd::from)),
    ];
    for (stream, pipe) in pipes {
        let (Some(pipe), Some(file)) = (pipe, files.next()) else {
            continue;
        };
        let owner = svc.clone();
        let drained = std::thread::Builder::new()
            .name(format!("svc-{}", stream.suffix()))
            .spawn(move || drain_log(&owner, File::from(pipe), file, stream, half));
        if let Err(e) = drained {
            // Without a reader the service would block on a full pipe: stop it.
            killpg(i32::try_from(child.pid).unwrap_or(i32::MAX), libc::SIGKILL);
            tokio::spawn(await_exit(svc.clone(), child.exit));
            return Err(io_err("starting the log reader", &e));
        }
    }
    tokio::spawn(await_exit(svc.clone(), child.exit));
    table().insert(svc.name.clone(), svc.clone());
    Ok(svc)
}

/// Copies one stream into its log, rotating at `half` bytes per file.
fn drain_log(svc: &Service, mut src: File, file: File, stream: Stream, half: u64) {
    let mut file = Some(file);
    let path = log_path(&svc.dir, &svc.name, stream, false);
    let old = log_path(&svc.dir, &svc.name, stream, true);
    let mut size = 0u64;
    let mut rotated = false;
    let mut buf = vec![0u8; LOG_CHUNK];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut data = &buf[..n];
        let mut lost = false;
        while !data.is_empty() {
            if size >= half {
                // The old half is replaced: its bytes are gone from then on.
                lost |= rotated;
                let _ = std::fs::rename(&path, &old);
                // A failure (full disk): the bytes are counted, not kept; never appended to
                // the renamed half, which would pass the bound.
                file = create_log(&path).ok();
                rotated = true;
                size = 0;
            }
            let room = usize::try_from(half - size).unwrap_or(usize::MAX);
            let k = data.len().min(room);
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(&data[..k]);
            }
            size += k as u64;
            data = &data[k..];
        }
        let mut s = svc.lock();
        match stream {
            Stream::Stdout => {
                s.stdout_bytes += n as u64;
                s.stdout_lost |= lost;
            }
            Stream::Stderr => {
                s.stderr_bytes += n as u64;
                s.stderr_lost |= lost;
            }
        }
    }
}

async fn await_exit(svc: Arc<Service>, exit: reaper::Exit) {
    let status = exit.await;
    {
        let mut s = svc.lock();
        s.exit_code = Some(exit_code(status));
        s.ended_at_ms = Some(now_ms());
        if let Some((status, reason)) = s.stopping {
            s.status = status;
            s.stop_reason = Some(reason.into());
        } else {
            match s.status {
                ServiceStatus::Starting => {
                    s.status = ServiceStatus::Failed;
                    s.stop_reason = Some("process_exited_before_ready".into());
                }
                ServiceStatus::Running => s.status = ServiceStatus::Exited,
                _ => {}
            }
        }
    }
    svc.cgroup
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    svc.bump();
}

/// The readiness wait, detached from the call that started the service: probes every
/// interval until one succeeds, the process exits, or the deadline passes (then the
/// service is stopped and `failed`).
async fn await_ready(svc: Arc<Service>) {
    let Some(readiness) = svc.readiness.clone() else {
        return;
    };
    let deadline = svc.started + svc.ready_timeout;
    let interval = svc.ready_interval;
    let ctx = ProbeContext {
        env: &svc.env,
        cwd: &svc.host_cwd,
    };
    let mut rx = svc.changed.subscribe();
    loop {
        if svc.ended() || svc.lock().status != ServiceStatus::Starting {
            return;
        }
        if Instant::now() >= deadline {
            svc.stop(
                TIMEOUT_GRACE,
                ServiceStatus::Failed,
                "readiness_timeout",
                "readiness_timeout",
            )
            .await;
            return;
        }
        let outcome = tokio::select! {
            biased;
            _ = rx.wait_for(|_| svc.ended()) => return,
            r = probe::run(&readiness, &ctx) => Some(r),
            () = tokio::time::sleep_until(deadline) => None,
        };
        match outcome {
            Some(Ok(())) => {
                {
                    let mut s = svc.lock();
                    s.probe_attempts += 1;
                    if s.status == ServiceStatus::Starting && s.ended_at_ms.is_none() {
                        s.status = ServiceStatus::Running;
                        s.ready_at_ms = Some(now_ms());
                    }
                }
                svc.bump();
                return;
            }
            Some(Err(why)) => {
                {
                    let mut s = svc.lock();
                    s.probe_attempts += 1;
                    s.last_probe_error = Some(why);
                }
                svc.bump();
            }
            None => continue,
        }
        tokio::select! {
            biased;
            _ = rx.wait_for(|_| svc.ended()) => return,
            () = tokio::time::sleep(interval) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// [`pyro_proto::api::Request::ServiceStop`].
pub async fn stop(req: &ServiceStop) -> Result<ServiceState, AgentError> {
    let svc = lookup(&req.name)?;
    let grace = Duration::from_millis(req.grace_ms.min(WAIT_CAP_MS));
    svc.stop(grace, ServiceStatus::Stopped, "sigterm", "sigkill")
        .await;
    Ok(svc.snapshot())
}

/// [`pyro_proto::api::Request::ServiceList`].
pub fn list(req: &ServiceListRequest) -> Result<ServiceList, AgentError> {
    let services = match &req.name {
        Some(name) => vec![lookup(name)?],
        None => table().values().cloned().collect(),
    };
    Ok(ServiceList {
        services: services.iter().map(|s| s.snapshot()).collect(),
    })
}

/// [`pyro_proto::api::Request::ServiceLogs`]: sends each stream's tail as
/// `STDOUT`/`STDERR` messages and returns the result.
pub async fn logs(tx: &mut SendHalf, req: ServiceLogs) -> Result<ServiceLogsResult, AgentError> {
    if req.max_bytes > SERVICE_LOGS_READ_MAX {
        return Err(bad(format!(
            "max_bytes {} exceeds the limit of {SERVICE_LOGS_READ_MAX}",
            req.max_bytes
        )));
    }
    let svc = lookup(&req.name)?;
    let mut truncated = [false; 2];
    for (i, (stream, kind)) in [
        (Stream::Stdout, MsgKind::STDOUT),
        (Stream::Stderr, MsgKind::STDERR),
    ]
    .into_iter()
    .enumerate()
    {
        let (dir, name) = (svc.dir.clone(), svc.name.clone());
        let (max, lines) = (req.max_bytes, req.tail_lines);
        let (bytes, cut, from_oldest) =
            tokio::task::spawn_blocking(move || read_tail(&dir, &name, stream, lines, max))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
                .map_err(|e| io_err("reading the logs", &e))?;
        let lost = {
            let s = svc.lock();
            match stream {
                Stream::Stdout => s.stdout_lost,
                Stream::Stderr => s.stderr_lost,
            }
        };
        truncated[i] = cut || (from_oldest && lost);
        let bytes = Bytes::from(bytes);
        let mut off = 0;
        while off < bytes.len() {
            let end = (off + DATA_CHUNK).min(bytes.len());
            if tx
                .send(Message::new(kind, bytes.slice(off..end)))
                .await
                .is_err()
            {
                break;
            }
            off = end;
        }
    }
    Ok(ServiceLogsResult {
        service: svc.snapshot(),
        stdout_truncated: truncated[0],
        stderr_truncated: truncated[1],
    })
}

/// The last `max` bytes of a stream's retained log (old half, then current), cut to the
/// last `lines` lines: `(bytes, cut, starts_at_the_oldest_retained_byte)`.
fn read_tail(
    dir: &Path,
    name: &str,
    stream: Stream,
    lines: Option<u64>,
    max: u64,
) -> io::Result<(Vec<u8>, bool, bool)> {
    let open = |old| match File::open(log_path(dir, name, stream, old)) {
        Ok(f) => {
            let len = f.metadata()?.len();
            Ok(Some((f, len)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    let old = open(true)?;
    let cur = open(false)?;
    let old_len = old.as_ref().map_or(0, |(_, l)| *l);
    let cur_len = cur.as_ref().map_or(0, |(_, l)| *l);
    let total = old_len + cur_len;
    let want = total.min(max);
    let mut out = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    let from_cur = want.min(cur_len);
    let from_old = want - from_cur;
    if let Some((mut f, len)) = old
        && from_old > 0
    {
        f.seek(SeekFrom::Start(len - from_old))?;
        f.take(from_old).read_to_end(&mut out)?;
    }
    if let Some((mut f, len)) = cur
        && from_cur > 0
    {
        f.seek(SeekFrom::Start(len - from_cur))?;
        f.take(from_cur).read_to_end(&mut out)?;
    }
    let mut cut = want < total;
    let from_oldest = want == total;
    if let Some(n) = lines {
        let start = tail_start(&out, n);
        if start > 0 {
            out.drain(..start);
            cut = true;
        }
    }
    Ok((out, cut, from_oldest && !cut))
}

/// Where the last `n` lines of `data` begin (a final line without a newline counts).
fn tail_start(data: &[u8], n: u64) -> usize {
    if n == 0 {
        return data.len();
    }
    let body = match data.last() {
        Some(b'\n') => &data[..data.len() - 1],
        _ => data,
    };
    let mut seen = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["web", "a", "A.b_c-9", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "-a", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tails_count_lines() {
        assert_eq!(tail_start(b"a\nb\nc\n", 2), 2);
        assert_eq!(tail_start(b"a\nb\nc", 2), 2);
        assert_eq!(tail_start(b"a\nb\n", 5), 0);
        assert_eq!(tail_start(b"a\nb\n", 0), 4);
        assert_eq!(tail_start(b"", 3), 0);
    }

    #[test]
    fn tails_span_both_halves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.stdout.1"), b"1\n2\n3").unwrap();
        std::fs::write(dir.path().join("s.stdout"), b"4\n5\n").unwrap();
        let r = |lines, max| read_tail(dir.path(), "s", Stream::Stdout, lines, max).unwrap();
        assert_eq!(r(None, 100), (b"1\n2\n34\n5\n".to_vec(), false, true));
        assert_eq!(r(Some(2), 100), (b"34\n5\n".to_vec(), true, false));
        assert_eq!(r(None, 3), (b"\n5\n".to_vec(), true, false));
        let none = read_tail(dir.path(), "t", Stream::Stderr, None, 10).unwrap();
        assert_eq!(none, (Vec::new(), false, true));
    }
}
