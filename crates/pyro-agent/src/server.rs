//! Serving sessions: one task per session, one task per stream (request).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pyro_proto::api::{AgentError, Empty, ErrorCode, ExecResult, PingResult, Request};
use pyro_proto::{Config, Message, MsgKind, RecvHalf, SendHalf, Session, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::{exec, procs};

/// Largest stdin an exec may carry (it is buffered in guest memory before the process starts).
pub const MAX_STDIN_BYTES: usize = 64 * 1024 * 1024;

/// Process-wide facts the handlers report.
#[derive(Clone, Copy, Debug)]
pub struct AgentInfo {
    /// When the agent started.
    pub started: Instant,
    /// Whether it runs as PID 1.
    pub pid1: bool,
    /// Test mode only (a stand-in guest on a host, see [`crate::fs::map_workspace_to`]): a
    /// `Shutdown` with `poweroff` ends this process, as powering off ends a guest.
    pub exit_on_poweroff: bool,
}

/// Serves one transport until the peer goes away.
pub async fn serve<T>(io: T, info: AgentInfo) -> Result<(), pyro_proto::ProtoError>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let config = Config {
        // The host may connect long before it speaks; wait for it.
        handshake_timeout: Duration::from_secs(24 * 3600),
        ..Config::default()
    };
    let (session, mut incoming) = Session::server(io, config).await?;
    while let Some(stream) = incoming.accept().await {
        tokio::spawn(handle(stream, info));
    }
    drop(session);
    Ok(())
}

async fn handle(stream: Stream, info: AgentInfo) {
    let (mut tx, mut rx) = stream.split();
    let first = match rx.recv().await {
        Ok(Some(msg)) if msg.kind == MsgKind::REQUEST => msg,
        Ok(_) => {
            reply_err(
                &mut tx,
                ErrorCode::BadRequest,
                "a call must start with a request",
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let req: Request = match first.parse() {
        Ok(r) => r,
        Err(e) => {
            let detail = match &e {
                pyro_proto::ProtoError::Json { source } => source.to_string(),
                other => other.to_string(),
            };
            reply_err(
                &mut tx,
                ErrorCode::BadRequest,
                &format!("invalid request: {detail}"),
            )
            .await;
            return;
        }
    };
    match req {
        Request::Ping => {
            let res = PingResult {
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                protocol_version: pyro_proto::PROTOCOL_VERSION,
                pid1: info.pid1,
                uptime_ms: info.started.elapsed().as_millis() as u64,
            };
            reply_ok(&mut tx, &res).await;
        }
        Request::Exec(req) => {
            handle_exec(tx, rx, req).await;
            // Cgroup housekeeping once the reply is out (see `limits::tidy`).
            crate::limits::tidy();
        }
        Request::SyncClock(c) => {
            if !info.pid1 {
                reply_err(
                    &mut tx,
                    ErrorCode::Unsupported,
                    "the clock is only set inside a guest",
                )
                .await;
                return;
            }
            match crate::init::set_clock(u128::from(c.unix_nanos)) {
                Ok(()) => reply_ok(&mut tx, &Empty {}).await,
                Err(e) => {
                    reply_err(
                        &mut tx,
                        ErrorCode::Io,
                        &format!("setting the clock failed: {e}"),
                    )
                    .await
                }
            }
        }
        Request::Shutdown(s) => {
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { libc::sync() };
            reply_ok(&mut tx, &Empty {}).await;
            if s.poweroff && (info.pid1 || info.exit_on_poweroff) {
                // Give the reply a moment to leave before the machine goes away.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if info.pid1 {
                    crate::init::poweroff();
                }
                std::process::exit(0);
            }
        }
        Request::ListFiles(req) => crate::fs::serve_list(tx, req).await,
        Request::ReadFile(req) => crate::fs::serve_read(tx, req).await,
        Request::WriteFiles(req) => crate::fs::serve_write(tx, rx, req).await,
        Request::ExportTar(req) => crate::fs::serve_export(tx, req).await,
        Request::ImportTar(req) => crate::fs::serve_import(tx, rx, req).await,
        Request::Sync => crate::fs::serve_sync(tx).await,
        Request::Reseed(req) => handle_reseed(&mut tx, &req, info).await,
        Request::ShellOpen(req) => reply(&mut tx, procs::shell::open(req).await).await,
        Request::ShellRead(req) => {
            let res = procs::shell::read(&mut tx, req).await;
            reply(&mut tx, res).await;
        }
        Request::ShellWrite(req) => reply(&mut tx, procs::shell::write(req).await).await,
        Request::ShellSignal(req) => reply(&mut tx, procs::shell::signal(&req)).await,
        Request::ShellResize(req) => reply(&mut tx, procs::shell::resize(&req)).await,
        Request::ShellClose(req) => reply(&mut tx, procs::shell::close(&req).await).await,
        Request::ShellList => reply_ok(&mut tx, &procs::shell::list()).await,
        Request::ServiceStart(req) => {
            let res = procs::service::start(&mut tx, req).await;
            reply(&mut tx, res).await;
            // Cgroup housekeeping once the reply is out (see `limits::tidy`).
            crate::limits::tidy();
        }
        Request::ServiceStop(req) => reply(&mut tx, procs::service::stop(&req).await).await,
        Request::ServiceList(req) => reply(&mut tx, procs::service::list(&req)).await,
        Request::ServiceLogs(req) => {
            let res = procs::service::logs(&mut tx, req).await;
            reply(&mut tx, res).await;
        }
    }
}

/// `_IO('R', 0x07)`: reseed the kernel's CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// Serves [`Request::Reseed`]: after a snapshot restore every clone starts with the same
/// kernel random state, clock and identity. The host's entropy is mixed in and credited
/// (`RNDADDENTROPY`), the CRNG is reseeded at once (`RNDRESEEDCRNG`; otherwise it would
/// keep its old key until its next scheduled reseed), the clock is set, and
/// `/etc/machine-id` is replaced with a new random id (see [`crate::init::write_machine_id`]).
/// Then, when the request carries a network, `eth0` takes over the clone's MAC, address,
/// default route and resolver ([`crate::net::reconfigure`]); it is checked with the rules
/// of `pyro.net=` before anything changes.
async fn handle_reseed(tx: &mut SendHalf, req: &pyro_proto::api::Reseed, info: AgentInfo) {
    if !info.pid1 {
        let msg = "reseeding is only done inside a guest";
        reply_err(tx, ErrorCode::Unsupported, msg).await;
        return;
    }
    let entropy = match req.entropy() {
        Ok(bytes) => bytes,
        Err(e) => {
            reply_err(tx, ErrorCode::BadRequest, &e).await;
            return;
        }
    };
    // The network is checked before anything changes: a bad one is the host's mistake.
    let network = match &req.network {
        None => None,
        Some(net) => match crate::net::check_guest_network(net) {
            Ok(cfg) => Some((net.mac, cfg)),
            Err(e) => {
                let msg = format!("reseed network refused: {e}");
                reply_err(tx, ErrorCode::BadRequest, &msg).await;
                return;
            }
        },
    };
    let res = (|| -> std::io::Result<pyro_proto::api::ReseedResult> {
        crate::init::add_entropy(&entropy)?;
        let crng_reseeded = reseed_crng()?;
        crate::init::set_clock(u128::from(req.unix_nanos))?;
        let machine_id_regenerated = crate::init::write_machine_id(
            std::path::Path::new(crate::init::MACHINE_ID),
            crate::init::MachineId::Replace,
        )?;
        Ok(pyro_proto::api::ReseedResult {
            entropy_bytes: entropy.len() as u64,
            crng_reseeded,
            machine_id_regenerated,
            network_configured: false,
        })
    })();
    let mut result = match res {
        Ok(r) => r,
        Err(e) => {
            reply_err(tx, ErrorCode::Io, &format!("reseeding failed: {e}")).await;
            return;
        }
    };
    if let Some((mac, cfg)) = network {
        let paths = crate::net::ResolvPaths::guest();
        if let Err(e) = crate::net::reconfigure(crate::net::GUEST_IFACE, mac.0, &cfg, &paths) {
            // Every NetError wraps one io::Error: name the step, then the cause.
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            let msg = format!(
                "reseeding failed: network {mac} {}/{}: {e}{cause}",
                cfg.address, cfg.prefix
            );
            reply_err(tx, ErrorCode::Io, &msg).await;
            return;
        }
        result.network_configured = true;
    }
    reply_ok(tx, &result).await;
}

/// Forces the kernel CRNG to take a new key from the input pool. `false` when the kernel
/// does not know the request (older than 4.17).
fn reseed_crng() -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // SAFETY: RNDRESEEDCRNG takes no argument; the descriptor is open.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOTTY) => Ok(false),
        _ => Err(e),
    }
}

async fn handle_exec(mut tx: SendHalf, mut rx: RecvHalf, req: pyro_proto::api::ExecRequest) {
    let mut stdin = None;
    if req.stdin {
        let mut buf = BytesMut::new();
        loop {
            match rx.recv().await {
                Ok(Some(m)) if m.kind == MsgKind::STDIN => {
                    if buf.len() + m.body.len() > MAX_STDIN_BYTES {
                        let msg = format!("stdin exceeds the limit of {MAX_STDIN_BYTES} bytes");
                        reply_err(&mut tx, ErrorCode::BadRequest, &msg).await;
                        return;
                    }
                    buf.extend_from_slice(&m.body);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        stdin = Some(buf.freeze());
    }
    let spec = exec::ExecSpec {
        command: match req.command {
            pyro_proto::api::Command::Argv(a) => exec::Command::Argv(a),
            pyro_proto::api::Command::Shell(s) => exec::Command::Shell(s),
        },
        // `/workspace` is a directory elsewhere when a stand-in guest runs on a host.
        cwd: req
            .cwd
            .map(|c| crate::fs::host_path(std::path::Path::new(&c))),
        env: req.env,
        timeout: req.timeout_ms.map(Duration::from_millis),
        max_output_bytes: req.max_output_bytes,
        stdin,
    };
    let (out_tx, mut out_rx) = mpsc::channel::<exec::Output>(16);
    let run = exec::run(spec, out_tx);
    tokio::pin!(run);
    // Output is forwarded while the command runs; a CANCEL message, a reset stream or a dead
    // session drops `run`, which kills the command's whole tree.
    let outcome = loop {
        tokio::select! {
            biased;
            chunk = out_rx.recv() => {
                if let Some(chunk) = chunk {
                    let msg = match chunk {
                        exec::Output::Stdout(b) => Message::new(MsgKind::STDOUT, b),
                        exec::Output::Stderr(b) => Message::new(MsgKind::STDERR, b),
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
            // After the client's `End`, `recv` waits until the stream is reset or the
            // session dies, both of which cancel the command.
            control = rx.recv() => {
                match control {
                    Ok(Some(m)) if m.kind == MsgKind::CANCEL => return,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            res = &mut run => break res,
        }
    };
    // Forward what the command wrote after the last poll.
    while let Ok(chunk) = out_rx.try_recv() {
        let msg = match chunk {
            exec::Output::Stdout(b) => Message::new(MsgKind::STDOUT, b),
            exec::Output::Stderr(b) => Message::new(MsgKind::STDERR, b),
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
    match outcome {
        Ok(o) => {
            let res = ExecResult {
                exit_code: o.exit_code,
                signal: o.signal,
                timed_out: o.timed_out,
                duration_ms: o.duration_ms,
                stdout_bytes: o.stdout_bytes,
                stderr_bytes: o.stderr_bytes,
                stdout_truncated: o.stdout_truncated,
                stderr_truncated: o.stderr_truncated,
                spawn_error: o.spawn_error,
            };
            reply_ok(&mut tx, &res).await;
        }
        Err(exec::ExecError::BadRequest { reason }) => {
            reply_err(&mut tx, ErrorCode::BadRequest, &reason).await;
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            reply_err(&mut tx, ErrorCode::Internal, &msg).await;
        }
    }
}

/// Sends a result or a typed error.
async fn reply<T: serde::Serialize>(tx: &mut SendHalf, res: Result<T, AgentError>) {
    match res {
        Ok(v) => reply_ok(tx, &v).await,
        Err(e) => reply_err(tx, e.code, &e.message).await,
    }
}

async fn reply_ok<T: serde::Serialize>(tx: &mut SendHalf, value: &T) {
    let msg = match Message::json(MsgKind::RESPONSE, value) {
        Ok(m) => m,
        Err(e) => {
            reply_err(
                tx,
                ErrorCode::Internal,
                &format!("encoding the result failed: {e}"),
            )
            .await;
            return;
        }
    };
    if tx.send(msg).await.is_ok() {
        let _ = tx.finish();
    }
}

async fn reply_err(tx: &mut SendHalf, code: ErrorCode, message: &str) {
    let err = AgentError::new(code, message);
    let body = serde_json::to_vec(&err).unwrap_or_else(|_| Bytes::from_static(b"{}").to_vec());
    if tx.send(Message::new(MsgKind::ERROR, body)).await.is_ok() {
        let _ = tx.finish();
    }
}
