//! A small client for the QEMU Machine Protocol over a Unix socket.
//!
//! QMP is line-delimited JSON: QEMU greets with `{"QMP": {...}}`, the client enters command
//! mode with `qmp_capabilities`, then each `{"execute": ..., "id": n}` is answered by one
//! `{"return": ...}` or `{"error": {"class", "desc"}}` carrying the same id. Asynchronous
//! `{"event": ...}` messages may arrive at any time; [`Qmp`] keeps the most recent ones for
//! [`Qmp::take_events`] and otherwise skips them. QEMU's replies are parsed leniently.
//!
//! QEMU serves one QMP client at a time; a second connection waits until the first closes.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::QemuError;

/// Sends `data` on the Unix socket `sock` with a copy of `fd` attached (`SCM_RIGHTS`).
/// Returns the bytes of `data` sent.
fn send_with_fd(sock: RawFd, data: &[u8], fd: RawFd) -> std::io::Result<usize> {
    const FD_LEN: u32 = std::mem::size_of::<RawFd>() as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(FD_LEN) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `control`, which has room for one header with one descriptor
    // (CMSG_SPACE), so CMSG_FIRSTHDR is non-null and CMSG_DATA has FD_LEN writable bytes.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(FD_LEN) as _;
        std::ptr::copy_nonoverlapping(
            (&raw const fd).cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            FD_LEN as usize,
        );
    }
    // SAFETY: every pointer in `msg` refers to live local buffers of the stated lengths;
    // `data` is only read.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// Default time allowed for one command.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Qmp::connect`] retries a refused connection (the socket file exists a moment
/// before QEMU listens on it).
const CONNECT_RETRY: Duration = Duration::from_secs(2);
/// Events kept for [`Qmp::take_events`]; older ones are dropped.
const MAX_EVENTS: usize = 256;
/// Longest message line accepted.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// An open QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    greeting: Value,
    next_id: u64,
    timeout: Duration,
    events: VecDeque<Value>,
}

/// Progress of an outgoing migration (`query-migrate`), parsed leniently.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct MigrationInfo {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelled`, …; absent before the
    /// first migration.
    #[serde(default)]
    pub status: Option<String>,
    /// Why it failed, when it did.
    #[serde(default, rename = "error-desc")]
    pub error_desc: Option<String>,
    /// Milliseconds the migration took (once completed).
    #[serde(default, rename = "total-time")]
    pub total_time_ms: Option<u64>,
    /// Guest RAM bytes transferred so far.
    #[serde(default)]
    pub ram: Option<MigrationRam>,
}

/// RAM statistics of a migration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct MigrationRam {
    /// Bytes transferred.
    #[serde(default)]
    pub transferred: u64,
    /// Bytes of guest RAM.
    #[serde(default)]
    pub total: u64,
}

impl Qmp {
    /// Connects to QEMU's QMP socket, reads the greeting and negotiates capabilities.
    ///
    /// # Errors
    ///
    /// [`QemuError::QmpConnect`], or any error of the capabilities exchange.
    pub async fn connect(path: &Path) -> Result<Qmp, QemuError> {
        let deadline = tokio::time::Instant::now() + CONNECT_RETRY;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(source) => {
                    return Err(QemuError::QmpConnect {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        };
        Self::handshake(stream).await
    }

    /// Starts a session on an already connected stream.
    ///
    /// # Errors
    ///
    /// As for [`Qmp::connect`].
    pub async fn handshake(stream: UnixStream) -> Result<Qmp, QemuError> {
        let (rd, wr) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(rd),
            writer: wr,
            greeting: Value::Null,
            next_id: 0,
            timeout: DEFAULT_TIMEOUT,
            events: VecDeque::new(),
        };
        let greeting = tokio::time::timeout(qmp.timeout, qmp.read_message("greeting"))
            .await
            .map_err(|_| QemuError::QmpTimeout {
                command: "greeting".into(),
                after: qmp.timeout,
            })??;
        if greeting.get("QMP").is_none() {
            return Err(QemuError::QmpProtocol {
                command: "greeting".into(),
                detail: format!("expected a QMP greeting, got {greeting}"),
            });
        }
        qmp.greeting = greeting;
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// The greeting QEMU sent (`{"QMP": {"version": ..., "capabilities": ...}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// QEMU's version from the greeting, as `major.minor.micro`.
    pub fn qemu_version(&self) -> Option<String> {
        let v = self.greeting.pointer("/QMP/version/qemu")?;
        Some(format!(
            "{}.{}.{}",
            v.get("major")?.as_u64()?,
            v.get("minor")?.as_u64()?,
            v.get("micro")?.as_u64()?
        ))
    }

    /// Sets the time allowed for each command (default 30 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The asynchronous events received so far (oldest first), emptying the buffer.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// Runs `command` with optional `arguments` and returns its `return` value.
    ///
    /// # Errors
    ///
    /// [`QemuError::Qmp`] when QEMU answers with an error; [`QemuError::QmpTimeout`],
    /// [`QemuError::QmpClosed`], [`QemuError::QmpIo`] or [`QemuError::QmpProtocol`] when
    /// no proper answer arrives.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QemuError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.execute_inner(command, arguments))
            .await
            .map_err(|_| QemuError::QmpTimeout {
                command: command.to_string(),
                after: timeout,
            })?
    }

    async fn execute_inner(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QemuError> {
        let (id, line) = self.request_line(command, arguments);
        let io = |source| QemuError::QmpIo {
            command: command.to_string(),
            source,
        };
        self.writer.write_all(line.as_bytes()).await.map_err(io)?;
        self.read_reply(command, id).await
    }

    /// A new request id and the request's line.
    fn request_line(&mut self, command: &str, arguments: Option<Value>) -> (u64, String) {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        (id, line)
    }

    /// Hands QEMU a copy of `fd` under `name` (`getfd`, the descriptor travelling as
    /// `SCM_RIGHTS` with the request), for commands that take `fd:NAME`.
    ///
    /// # Errors
    ///
    /// As for [`Qmp::execute`].
    pub async fn getfd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QemuError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.getfd_inner(name, fd))
            .await
            .map_err(|_| QemuError::QmpTimeout {
                command: "getfd".into(),
                after: timeout,
            })?
    }

    async fn getfd_inner(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QemuError> {
        let (id, line) = self.request_line("getfd", Some(json!({ "fdname": name })));
        let io = |source| QemuError::QmpIo {
            command: "getfd".into(),
            source,
        };
        let sock = self.writer.as_ref();
        let sent = loop {
            sock.writable().await.map_err(io)?;
            match sock.try_io(Interest::WRITABLE, || {
                send_with_fd(sock.as_raw_fd(), line.as_bytes(), fd.as_raw_fd())
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io(e)),
            }
        };
        // The descriptor went with the first byte; the rest of the line is plain data.
        self.writer
            .write_all(&line.as_bytes()[sent..])
            .await
            .map_err(io)?;
        self.read_reply("getfd", id).await.map(drop)
    }

    /// Reads messages until the answer to request `id` arrives.
    async fn read_reply(&mut self, command: &str, id: u64) -> Result<Value, QemuError> {
        loop {
            let msg = self.read_message(command).await?;
            if msg.get("event").is_some() {
                if self.events.len() >= MAX_EVENTS {
                    self.events.pop_front();
                }
                self.events.push_back(msg);
                continue;
            }
            // An answer to an earlier command that timed out: not ours.
            if msg.get("id").is_some_and(|v| v.as_u64() != Some(id)) {
                continue;
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QemuError::Qmp {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QemuError::QmpProtocol {
                command: command.to_string(),
                detail: format!("neither return, error nor event: {msg}"),
            });
        }
    }

    /// Reads one JSON message line.
    async fn read_message(&mut self, command: &str) -> Result<Value, QemuError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .await
                .map_err(|source| QemuError::QmpIo {
                    command: command.to_string(),
                    source,
                })?;
            if n == 0 {
                return Err(QemuError::QmpClosed {
                    command: command.to_string(),
                });
            }
            if line.len() > MAX_LINE {
                return Err(QemuError::QmpProtocol {
                    command: command.to_string(),
                    detail: format!("message of {} bytes", line.len()),
                });
            }
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(line.trim()).map_err(|e| QemuError::QmpProtocol {
                command: command.to_string(),
                detail: format!("invalid JSON ({e}): {:?}", line.trim()),
            });
        }
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`, `postmigrate`, `shutdown`, …).
    ///
    /// # Errors
    ///
    /// As for [`Qmp::execute`]; [`QemuError::QmpProtocol`] when the answer has no status.
    pub async fn query_status(&mut self) -> Result<String, QemuError> {
        let ret = self.execute("query-status", None).await?;
        ret.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QemuError::QmpProtocol {
                command: "query-status".into(),
                detail: format!("no status in {ret}"),
            })
    }

    /// Pauses the VM's vCPUs.
    ///
    /// # Errors
    ///
    /// As for [`Qmp::execute`].
    pub async fn stop(&mut self) -> Result<(), QemuError> {
        self.execute("stop", None).await.map(drop)
    }

    /// Resumes the VM's vCPUs (also after an incoming migration has loaded).
    ///
    /// # Errors
    ///
    /// As for [`Qmp::execute`].
    pub async fn cont(&mut self) -> Result<(), QemuError> {
        self.execute("cont", None).await.map(drop)
    }

    /// Asks QEMU to exit at once. QEMU may close the connection before or after answering;
    /// both count as success. Reap the process with [`Qemu::wait`](crate::Qemu::wait).
    ///
    /// # Errors
    ///
    /// As for [`Qmp::execute`], except a closed connection.
    pub async fn quit(&mut self) -> Result<(), QemuError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QemuError::QmpClosed { .. }) => Ok(()),
            Err(QemuError::QmpIo { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionReset
                    || source.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the migration bandwidth limit in bytes per second (QEMU's default of 32 MiB/s
    /// throttles a snapshot to a file).
    ///
    /// # Errors
    ///
    /// As for [`Qmp::execute`].
    pub async fn migrate_set_parameters(&mut self, max_bandwidth: u64) -> Result<(), QemuError> {
        self.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": max_bandwidth })),
        )
        .await
        .map(drop)
    }

    /// Turns a migration capability on or off (`migrate-set-capabilities`).
    ///
    /// # Errors
    ///
    /// As for [`Qmp::execute`].
    pub async fn migrate_set_capability(
        &mut self,
        capability: &str,
        state: bool,
    ) -> Result<(), QemuError> {
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [{ "capability": capability, "state": state }] })),
        )
        .await
        .map(drop)
    }

    /// Starts loading an incoming migration from `uri` on a QEMU started with
    /// `-incoming defer`; poll [`Qmp::query_status`] until it leaves `inmigrate`.
    ///
    /// # Errors
    ///
    /// As for [`Qmp::execute`].
    pub async fn migrate_incoming(&mut self, uri: &str) -> Result<(), QemuError> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// Starts an outgoing migration to `uri` (e.g. `exec:cat > state.bin`); poll
    /// [`Qmp::query_migrate`] until it completes.
    ///
    /// # Errors
    ///
    /// As for [`Qmp::execute`].
    pub async fn migrate(&mut self, uri: &str) -> Result<(), QemuError> {
        self.execute("migrate", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// The state of the current or last outgoing migration.
    ///
    /// # Errors
    ///
    /// As for [`Qmp::execute`]; [`QemuError::QmpProtocol`] when the answer does not parse.
    pub async fn query_migrate(&mut self) -> Result<MigrationInfo, QemuError> {
        let ret = self.execute("query-migrate", None).await?;
        serde_json::from_value(ret.clone()).map_err(|e| QemuError::QmpProtocol {
            command: "query-migrate".into(),
            detail: format!("{e}: {ret}"),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}"#;

    /// One scripted exchange: the request the client must send, and the raw lines to answer.
    struct Step {
        execute: &'static str,
        arguments: Option<Value>,
        reply: Vec<String>,
    }

    fn step(execute: &'static str, arguments: Option<Value>, reply: &[&str]) -> Step {
        Step {
            execute,
            arguments,
            reply: reply.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A fake QEMU: greets, checks each request against the script and answers it with the
    /// request's id substituted for `ID`. Returns the requests it saw.
    async fn fake_qemu(
        dir: &Path,
        script: Vec<Step>,
        close_after: bool,
    ) -> (std::path::PathBuf, tokio::task::JoinHandle<Vec<Value>>) {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let (rd, mut wr) = conn.into_split();
            let mut lines = BufReader::new(rd).lines();
            wr.write_all(format!("{GREETING}\r\n").as_bytes())
                .await
                .unwrap();
            let mut seen = Vec::new();
            for step in script {
                let line = lines.next_line().await.unwrap().unwrap();
                let req: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(req["execute"], step.execute, "{req}");
                assert_eq!(req.get("arguments").cloned(), step.arguments, "{req}");
                let id = req["id"].to_string();
                for reply in step.reply {
                    wr.write_all(format!("{}\r\n", reply.replace("ID", &id)).as_bytes())
                        .await
                        .unwrap();
                }
                seen.push(req);
            }
            if !close_after {
                // Keep the connection open until the client goes away.
                while let Ok(Some(_)) = lines.next_line().await {}
            }
            seen
        });
        (path, task)
    }

    const CAPS: (&str, &[&str]) = ("qmp_capabilities", &[r#"{"return": {}, "id": ID}"#]);

    #[tokio::test]
    async fn negotiates_and_runs_status_stop_cont() {
        let dir = tempfile::tempdir().unwrap();
        let (path, server) = fake_qemu(
            dir.path(),
            vec![
                step(CAPS.0, None, CAPS.1),
                step(
                    "query-status",
                    None,
                    &[r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": ID}"#],
                ),
                step(
                    "stop",
                    None,
                    &[
                        r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#,
                        r#"{"return": {}, "id": ID}"#,
                    ],
                ),
                step(
                    "query-status",
                    None,
                    &[r#"{"return": {"status": "paused", "running": false}, "id": ID}"#],
                ),
                step(
                    "cont",
                    None,
                    &[
                        r#"{"return": {}, "id": ID}"#,
                        r#"{"timestamp": {"seconds": 1, "microseconds": 3}, "event": "RESUME"}"#,
                    ],
                ),
                step(
                    "query-status",
                    None,
                    &[r#"{"return": {"status": "running", "running": true}, "id": ID}"#],
                ),
            ],
            false,
        )
        .await;
        let mut qmp = Qmp::connect(&path).await.unwrap();
        assert_eq!(qmp.qemu_version().as_deref(), Some("7.2.0"));
        assert_eq!(qmp.query_status().await.unwrap(), "running");
        qmp.stop().await.unwrap();
        assert_eq!(qmp.query_status().await.unwrap(), "paused");
        qmp.cont().await.unwrap();
        assert_eq!(qmp.query_status().await.unwrap(), "running");
        let events: Vec<String> = qmp
            .take_events()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(events, ["STOP", "RESUME"]);
        assert!(qmp.take_events().is_empty());
        drop(qmp);
        let seen = server.await.unwrap();
        let ids: Vec<u64> = seen.iter().map(|r| r["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6], "ids are unique and increasing");
    }

    #[tokio::test]
    async fn errors_carry_class_and_description() {
        let dir = tempfile::tempdir().unwrap();
        let (path, server) = fake_qemu(
            dir.path(),
            vec![
                step(CAPS.0, None, CAPS.1),
                step(
                    "migrate",
                    Some(json!({"uri": "exec:cat > state.bin"})),
                    &[
                        r#"{"error": {"class": "GenericError", "desc": "There's a migration process in progress"}, "id": ID}"#,
                    ],
                ),
                step(
                    "bogus",
                    None,
                    &[
                        r#"{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": ID}"#,
                    ],
                ),
            ],
            false,
        )
        .await;
        let mut qmp = Qmp::connect(&path).await.unwrap();
        let err = qmp.migrate("exec:cat > state.bin").await.unwrap_err();
        match &err {
            QemuError::Qmp {
                command,
                class,
                desc,
            } => {
                assert_eq!(command, "migrate");
                assert_eq!(class, "GenericError");
                assert!(desc.contains("in progress"), "{desc}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = qmp.execute("bogus", None).await.unwrap_err();
        assert!(
            matches!(&err, QemuError::Qmp { class, .. } if class == "CommandNotFound"),
            "{err:?}"
        );
        drop(qmp);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn migration_helpers_send_the_documented_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let (path, server) = fake_qemu(
            dir.path(),
            vec![
                step(CAPS.0, None, CAPS.1),
                step(
                    "migrate-set-parameters",
                    Some(json!({"max-bandwidth": 10_000_000_000u64})),
                    &[r#"{"return": {}, "id": ID}"#],
                ),
                step("query-migrate", None, &[r#"{"return": {}, "id": ID}"#]),
                step(
                    "migrate-set-capabilities",
                    Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
                    &[r#"{"return": {}, "id": ID}"#],
                ),
                step(
                    "migrate-incoming",
                    Some(json!({"uri": "fd:3"})),
                    &[r#"{"return": {}, "id": ID}"#],
                ),
                step(
                    "migrate",
                    Some(json!({"uri": "exec:cat > s"})),
                    &[r#"{"return": {}, "id": ID}"#],
                ),
                step(
                    "query-migrate",
                    None,
                    &[
                        r#"{"return": {"status": "completed", "total-time": 170, "setup-time": 1, "ram": {"transferred": 79000000, "total": 268435456, "remaining": 0}}, "id": ID}"#,
                    ],
                ),
            ],
            false,
        )
        .await;
        let mut qmp = Qmp::connect(&path).await.unwrap();
        qmp.migrate_set_parameters(10_000_000_000).await.unwrap();
        assert_eq!(qmp.query_migrate().await.unwrap(), MigrationInfo::default());
        qmp.migrate_set_capability("x-ignore-shared", true)
            .await
            .unwrap();
        qmp.migrate_incoming("fd:3").await.unwrap();
        qmp.migrate("exec:cat > s").await.unwrap();
        let info = qmp.query_migrate().await.unwrap();
        assert_eq!(info.status.as_deref(), Some("completed"));
        assert_eq!(info.total_time_ms, Some(170));
        assert_eq!(info.ram.map(|r| r.transferred), Some(79_000_000));
        drop(qmp);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn quit_accepts_a_closed_connection() {
        let dir = tempfile::tempdir().unwrap();
        // QEMU may exit before its answer reaches us.
        let (path, server) = fake_qemu(
            dir.path(),
            vec![step(CAPS.0, None, CAPS.1), step("quit", None, &[])],
            true,
        )
        .await;
        let mut qmp = Qmp::connect(&path).await.unwrap();
        qmp.quit().await.unwrap();
        server.await.unwrap();
        // Any other command on a closed connection is an error.
        let err = qmp.query_status().await.unwrap_err();
        assert!(
            matches!(err, QemuError::QmpClosed { .. } | QemuError::QmpIo { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn stale_answers_and_garbage_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        let (path, server) = fake_qemu(
            dir.path(),
            vec![
                step(CAPS.0, None, CAPS.1),
                step(
                    "query-status",
                    None,
                    &[
                        r#"{"return": {"status": "stale"}, "id": 999}"#,
                        r#"{"return": {"status": "running"}, "id": ID}"#,
                    ],
                ),
                step("query-status", None, &["this is not json"]),
            ],
            false,
        )
        .await;
        let mut qmp = Qmp::connect(&path).await.unwrap();
        assert_eq!(qmp.query_status().await.unwrap(), "running");
        let err = qmp.query_status().await.unwrap_err();
        assert!(matches!(err, QemuError::QmpProtocol { .. }), "{err:?}");
        drop(qmp);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let (path, server) = fake_qemu(
            dir.path(),
            vec![step(CAPS.0, None, CAPS.1), step("stop", None, &[])],
            false,
        )
        .await;
        let mut qmp = Qmp::connect(&path).await.unwrap();
        qmp.set_timeout(Duration::from_millis(100));
        let err = qmp.stop().await.unwrap_err();
        assert!(
            matches!(&err, QemuError::QmpTimeout { command, .. } if command == "stop"),
            "{err:?}"
        );
        drop(qmp);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("nope.sock"))
            .await
            .unwrap_err();
        assert!(matches!(err, QemuError::QmpConnect { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_non_qmp_greeting_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.write_all(b"{\"hello\": 1}\n").await.unwrap();
            conn
        });
        let err = Qmp::connect(&path).await.unwrap_err();
        assert!(
            matches!(&err, QemuError::QmpProtocol { command, .. } if command == "greeting"),
            "{err:?}"
        );
        drop(server.await.unwrap());
    }
}
