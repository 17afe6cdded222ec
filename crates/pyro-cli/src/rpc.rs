//! `pyro rpc`: JSON-RPC 2.0 over stdio, the transport of the Python SDK (`pyro_mcp.Pyro`).
//!
//! Framing: one JSON object per line in both directions (UTF-8, `\n`-terminated; JSON text
//! never contains a raw newline). Methods carry the SDK's names (`run_in_vm`,
//! `create_workspace`, …, plus `ping`); `params` is an object with the SDK's keyword names
//! (absent or `null` means `{}`); a result is the core's result struct serialised as JSON.
//!
//! Requests run concurrently on the multi-threaded runtime, each on a thread of its own (the
//! runtime's blocking pool), so one slow call, even one that keeps its thread busy (hashing a
//! big tree, copying a seed, waiting on SQLite), never holds up another: a `ping` or a status
//! call is answered while an exec or a diff runs. Responses come back in completion order,
//! matched by `id`. While a request runs the server may send
//! `{"method":"progress","params":{"id":<request id>,"message":..}}` notifications for it.
//! Errors:
//!
//! | code | when | `data.kind` |
//! |---|---|---|
//! | -32700 | a line that is not JSON | — |
//! | -32600 | not a JSON-RPC 2.0 request object (batches are not supported), or a line over 24 MiB ([`MAX_MESSAGE_BYTES`]; its `id` is looked for in its first 64 KiB) | — |
//! | -32601 | unknown method | — |
//! | -32602 | unknown, missing or ill-typed parameter | `invalid_input` |
//! | -32603 | the request's task panicked (a bug) | `runtime` |
//! | -32000 | the core refused or failed | [`pyro_core::ErrorKind`] |
//!
//! When stdin closes the server stops reading, lets the requests in flight finish, deletes
//! the one-shot VMs it created ([`Pyro::shutdown`]) and exits; workspaces persist. SIGINT
//! or SIGTERM abandon the requests in flight instead.
//!
//! This module only translates: a method and its params are parsed straight into the core's
//! operation catalogue ([`pyro_core::ops::Op`]), whose request types carry the parameter
//! names, defaults and checks, and run with [`Pyro::call`].

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Args;
use pyro_core::ops::{Ctx, Op, ParseError, on_own_thread};
use pyro_core::{CoreError, ProgressEvent, ProgressFn, Pyro};
use pyro_mcp::framing::{MAX_MESSAGE_BYTES, sniff_id};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Arguments of `pyro rpc`.
#[derive(Args, Debug)]
pub struct RpcArgs {
    /// Default VMM for sandboxes created through this server: auto, firecracker or qemu.
    #[arg(long, env = "PYRO_BACKEND", default_value = "auto")]
    backend: String,
    #[command(flatten)]
    pool: crate::PoolArgs,
}

/// Invalid JSON.
const PARSE_ERROR: i64 = -32700;
/// Not a request object.
const INVALID_REQUEST: i64 = -32600;
/// Unknown method.
const METHOD_NOT_FOUND: i64 = -32601;
/// Bad parameters.
const INVALID_PARAMS: i64 = -32602;
/// A bug in the server.
const INTERNAL_ERROR: i64 = -32603;
/// An error reported by the core.
const APPLICATION_ERROR: i64 = -32000;

/// A JSON-RPC error object.
#[derive(Debug)]
struct RpcError {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn invalid_params(message: impl Into<String>) -> Self {
        Self {
            code: INVALID_PARAMS,
            message: message.into(),
            data: Some(json!({"kind": "invalid_input"})),
        }
    }

    fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }
}

impl From<CoreError> for RpcError {
    fn from(e: CoreError) -> Self {
        // The whole cause chain, once, like anyhow's `{:#}`.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self {
            code: APPLICATION_ERROR,
            message,
            data: Some(match e.data() {
                // A failed service's record, beside the kind.
                Some(serde_json::Value::Object(mut extra)) => {
                    extra.insert("kind".into(), json!(e.kind()));
                    serde_json::Value::Object(extra)
                }
                _ => json!({"kind": e.kind()}),
            }),
        }
    }
}

/// Lines to stdout, written by one thread in the order they are queued.
#[derive(Clone, Debug)]
struct Out(std::sync::mpsc::Sender<String>);

impl Out {
    fn send(&self, v: &Value) {
        // A closed channel means the writer is gone (stdout closed): nothing to tell.
        let _ = self.0.send(v.to_string());
    }

    fn respond(&self, id: &Value, r: Result<Value, RpcError>) {
        let v = match r {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
        };
        self.send(&v);
    }
}

/// Starts the stdout writer thread: one line per message, flushed at once.
fn spawn_writer() -> std::io::Result<(Out, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let handle = std::thread::Builder::new()
        .name("rpc-stdout".into())
        .spawn(move || {
            let mut ok = true;
            for mut line in rx {
                if !ok {
                    // The client stopped reading: drop the rest.
                    continue;
                }
                line.push('\n');
                let mut stdout = std::io::stdout().lock();
                ok = stdout.write_all(line.as_bytes()).is_ok() && stdout.flush().is_ok();
            }
        })?;
    Ok((Out(tx), handle))
}

/// One line of input.
#[derive(Debug, PartialEq)]
enum InLine {
    /// A line without its `\n`.
    Line(Vec<u8>),
    /// A line over [`MAX_MESSAGE_BYTES`], not kept: its first 64 KiB and its length.
    TooLong { prefix: Vec<u8>, len: usize },
}

/// How much of an oversized line is kept to find its `id`.
const SNIFF_BYTES: usize = 64 * 1024;

/// Reads one line of at most `max` bytes (`None` at the end of input); a longer one is
/// consumed to its end without being kept.
fn read_bounded_line(r: &mut impl BufRead, max: usize) -> std::io::Result<Option<InLine>> {
    let mut line = Vec::new();
    let mut len = 0usize;
    loop {
        let available = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let done = available.is_empty();
        let newline = available.iter().position(|b| *b == b'\n');
        let take = newline.unwrap_or(available.len());
        len += take;
        let keep = if len > max {
            take.min(SNIFF_BYTES.saturating_sub(line.len()))
        } else {
            take
        };
        line.extend_from_slice(&available[..keep]);
        if len > max {
            line.truncate(SNIFF_BYTES);
        }
        r.consume(take + usize::from(newline.is_some()));
        if newline.is_some() || done {
            if done && len == 0 {
                return Ok(None);
            }
            return Ok(Some(if len > max {
                InLine::TooLong { prefix: line, len }
            } else {
                InLine::Line(line)
            }));
        }
    }
}

/// Starts the stdin reader thread: each line is sent to the returned channel, which closes
/// at end of input.
fn spawn_reader() -> std::io::Result<mpsc::UnboundedReceiver<InLine>> {
    let (tx, rx) = mpsc::unbounded_channel::<InLine>();
    std::thread::Builder::new()
        .name("rpc-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::BufReader::with_capacity(256 * 1024, std::io::stdin());
            loop {
                match read_bounded_line(&mut stdin, MAX_MESSAGE_BYTES) {
                    Ok(None) => break,
                    Ok(Some(line)) => {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("rpc: cannot read stdin: {e}");
                        break;
                    }
                }
            }
        })?;
    Ok(rx)
}

/// One parsed request.
struct Incoming {
    /// `None` for a notification (no `id` member): run it, answer nothing.
    id: Option<Value>,
    method: String,
    params: Value,
}

/// Parses one line: `Ok(None)` for a blank line; `Err` carries the id to answer with (`null`
/// when unknown) and the error.
fn parse_line(line: &[u8]) -> Result<Option<Incoming>, (Value, RpcError)> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(line).map_err(|e| {
        (
            Value::Null,
            RpcError::new(PARSE_ERROR, format!("parse error: {e}")),
        )
    })?;
    let Value::Object(mut obj) = v else {
        let what = if v.is_array() {
            "batch requests are not supported; send one request object per line"
        } else {
            "a request must be a JSON object"
        };
        return Err((Value::Null, RpcError::new(INVALID_REQUEST, what)));
    };
    let id = obj.remove("id");
    let answer_id = id.clone().unwrap_or(Value::Null);
    if let Some(i) = &id
        && !(i.is_string() || i.is_number() || i.is_null())
    {
        return Err((
            Value::Null,
            RpcError::new(INVALID_REQUEST, "`id` must be a string, a number or null"),
        ));
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((
            answer_id,
            RpcError::new(INVALID_REQUEST, "`jsonrpc` must be \"2.0\""),
        ));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => {
            return Err((
                answer_id,
                RpcError::new(INVALID_REQUEST, "`method` must be a string"),
            ));
        }
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => {
            return Err((
                answer_id,
                RpcError::invalid_params("`params` must be an object of named parameters"),
            ));
        }
    };
    Ok(Some(Incoming { id, method, params }))
}

/// Runs `pyro rpc` until stdin closes (or a signal arrives).
pub async fn run(args: RpcArgs) -> anyhow::Result<ExitCode> {
    let pyro = Arc::new(crate::open_pyro(Some(&args.backend))?);
    args.pool.enable(&pyro)?;
    serve_all(pyro).await
}

async fn serve_all(pyro: Arc<Pyro>) -> anyhow::Result<ExitCode> {
    let (out, writer) = spawn_writer()?;
    let mut input = spawn_reader()?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tasks: JoinSet<()> = JoinSet::new();
    // Set once, when a signal abandons the requests in flight.
    let (cancel, cancelled) = watch::channel(false);
    let mut reading = true;
    let interrupted = loop {
        tokio::select! {
            line = input.recv(), if reading => match line {
                Some(InLine::TooLong { prefix, len }) => {
                    let id = sniff_id(&prefix).unwrap_or(Value::Null);
                    out.respond(&id, Err(RpcError::new(
                        INVALID_REQUEST,
                        format!(
                            "the request is {len} bytes, over the limit of \
                             {MAX_MESSAGE_BYTES} bytes (24 MiB) per line"
                        ),
                    )));
                }
                Some(InLine::Line(line)) => match parse_line(&line) {
                    Ok(Some(req)) => {
                        tasks.spawn(serve(pyro.clone(), out.clone(), req, cancelled.clone()));
                    }
                    Ok(None) => {}
                    Err((id, e)) => out.respond(&id, Err(e)),
                },
                None => reading = false,
            },
            joined = tasks.join_next(), if !tasks.is_empty() => {
                if let Some(Err(e)) = joined {
                    tracing::warn!("rpc: request task failed: {e}");
                }
            }
            _ = sigint.recv() => break Some(130u8),
            _ = sigterm.recv() => break Some(143u8),
        }
        if !reading && tasks.is_empty() {
            break None;
        }
    };
    // After a signal this abandons the requests in flight (each is dropped at its next
    // await); at the end of input none is left. Either way every request is over, its
    // future dropped, before the shutdown deletes the VMs.
    let _ = cancel.send(true);
    while tasks.join_next().await.is_some() {}
    pyro.shutdown().await;
    drop(out);
    // The writer ends once every sender (the last was just dropped) is gone.
    let _ = writer.join();
    Ok(match interrupted {
        Some(code) => ExitCode::from(code),
        None => ExitCode::SUCCESS,
    })
}

/// Serves one request on a thread of its own ([`on_own_thread`]) and sends the response
/// unless it was a notification. A panic becomes an error answer; a cancelled request
/// (the server is going away) gets none.
async fn serve(pyro: Arc<Pyro>, out: Out, req: Incoming, cancelled: watch::Receiver<bool>) {
    let progress = match &req.id {
        Some(id) => progress_notifier(out.clone(), id.clone()),
        None => pyro_core::no_progress(),
    };
    let method = req.method;
    let params = req.params;
    let outcome = on_own_thread(Some(cancelled), move || async move {
        call(&pyro, &method, params, progress).await
    })
    .await;
    let result = match outcome {
        Ok(Some(r)) => r,
        // Abandoned: the server is going away; nobody is waiting for an answer.
        Ok(None) => return,
        Err(e) if e.is_panic() => Err(RpcError {
            code: INTERNAL_ERROR,
            message: "internal error: the request's task panicked".into(),
            data: Some(json!({"kind": "runtime"})),
        }),
        // The runtime is shutting down.
        Err(_) => return,
    };
    if let Some(id) = &req.id {
        out.respond(id, result);
    }
}

/// Progress of request `id` as `progress` notifications. Environment-build steps are sent
/// when a phase starts and then at most once a second, so a long build does not flood.
fn progress_notifier(out: Out, id: Value) -> ProgressFn {
    let last: Mutex<(&'static str, Option<Instant>)> = Mutex::new(("", None));
    Arc::new(move |ev: &ProgressEvent| {
        let message = match ev {
            ProgressEvent::Pull(p) => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                let recent = last.1.is_some_and(|t| t.elapsed().as_secs_f64() < 1.0);
                if last.0 == p.phase && recent {
                    return;
                }
                *last = (p.phase, Some(Instant::now()));
                let first = p.message.lines().next().unwrap_or("");
                format!(
                    "[pull] step={}/{} phase={} elapsed={:.1}s {}",
                    p.step,
                    p.total,
                    p.phase,
                    p.elapsed.as_secs_f64(),
                    first
                )
            }
            ProgressEvent::Provision(m) => format!("[firecracker] {m}"),
            ProgressEvent::Snapshot(m) => format!("[snapshot] {m}"),
            ProgressEvent::Service {
                name,
                elapsed_ms,
                probe_attempts,
                last_probe_error,
            } => format!(
                "[service] {name}: waiting for readiness ({} s, {probe_attempts} probes{})",
                elapsed_ms / 1000,
                last_probe_error
                    .as_deref()
                    .map(|e| format!("; last: {e}"))
                    .unwrap_or_default()
            ),
            ProgressEvent::Phase { phase, vm_id } => match vm_id {
                Some(v) => format!("[run] phase={phase} vm_id={v}"),
                None => format!("[run] phase={phase}"),
            },
        };
        out.send(&json!({
            "jsonrpc": "2.0",
            "method": "progress",
            "params": {"id": id, "message": message.trim_end()},
        }));
    })
}

/// Runs one method: `params` parsed straight into the core's [`Op`], run by [`Pyro::call`].
async fn call(
    pyro: &Pyro,
    method: &str,
    params: Value,
    progress: ProgressFn,
) -> Result<Value, RpcError> {
    let op = Op::parse(method, params).map_err(|e| match e {
        ParseError::UnknownMethod(_) => RpcError::new(METHOD_NOT_FOUND, e.to_string()),
        ParseError::Params { .. } => RpcError::invalid_params(e.to_string()),
    })?;
    Ok(pyro.call(op, &Ctx::with_progress(progress)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Option<Incoming>, (Value, RpcError)> {
        parse_line(line.as_bytes())
    }

    fn err(line: &str) -> (Value, RpcError) {
        match parse(line) {
            Err(e) => e,
            Ok(_) => panic!("`{line}` parsed"),
        }
    }

    #[test]
    fn lines_are_bounded_and_an_oversized_one_keeps_its_beginning() {
        let mut input = br#"{"jsonrpc":"2.0","id":"big","params":{"x":""#.to_vec();
        input.extend(std::iter::repeat_n(b'x', 200_000));
        let first = input.len();
        input.extend_from_slice(b"\nshort\nlast");
        let mut r = std::io::BufReader::with_capacity(4096, &input[..]);
        let Some(InLine::TooLong { prefix, len }) = read_bounded_line(&mut r, 100_000).unwrap()
        else {
            panic!("not refused")
        };
        assert_eq!((prefix.len(), len), (SNIFF_BYTES, first));
        assert_eq!(sniff_id(&prefix), Some(json!("big")));
        let next = read_bounded_line(&mut r, 100_000).unwrap();
        assert_eq!(next, Some(InLine::Line(b"short".to_vec())));
        let next = read_bounded_line(&mut r, 100_000).unwrap();
        assert_eq!(next, Some(InLine::Line(b"last".to_vec())));
        assert_eq!(read_bounded_line(&mut r, 100_000).unwrap(), None);
    }

    /// A 1 MiB command is `invalid_input` naming `command`, and the message does not echo it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_huge_command_is_invalid_input() {
        let dir = tempfile::tempdir().unwrap();
        let pyro = test_pyro(dir.path());
        let huge = "y".repeat(1 << 20);
        for (m, p) in [
            (
                "exec_workspace",
                json!({"workspace_id": "0123456789ab", "command": huge}),
            ),
            (
                "run_in_vm",
                json!({"environment": "debian:12", "command": huge}),
            ),
            ("exec_vm", json!({"vm_id": "v", "command": [huge]})),
        ] {
            let e = call(&pyro, m, p, pyro_core::no_progress())
                .await
                .unwrap_err();
            assert_eq!(e.data, Some(json!({"kind": "invalid_input"})), "{m}");
            assert!(e.message.contains("command"), "{m}: {}", e.message);
            assert!(e.message.len() < 1_000, "{m}: {}", e.message.len());
        }
    }

    #[test]
    fn requests_parse_and_notifications_have_no_id() {
        assert!(parse("   ").unwrap().is_none());
        let r = parse(r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(r.method, "ping");
        assert_eq!(r.params, json!({}));
        let n = parse(r#"{"jsonrpc":"2.0","method":"ping","params":null}"#)
            .unwrap()
            .unwrap();
        assert!(n.id.is_none());
        assert_eq!(n.params, json!({}));
    }

    #[test]
    fn malformed_requests_get_their_codes() {
        assert_eq!(err("{nope").1.code, PARSE_ERROR);
        assert_eq!(err("[]").1.code, INVALID_REQUEST);
        assert_eq!(err("3").1.code, INVALID_REQUEST);
        let (id, e) = err(r#"{"jsonrpc":"1.0","id":"a","method":"ping"}"#);
        assert_eq!((id, e.code), (json!("a"), INVALID_REQUEST));
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#).1.code,
            INVALID_REQUEST
        );
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":1,"method":5}"#).1.code,
            INVALID_REQUEST
        );
        let (id, e) = err(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#);
        assert_eq!((id, e.code), (json!(1), INVALID_PARAMS));
        assert_eq!(e.data, Some(json!({"kind": "invalid_input"})));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unknown_and_ill_typed_params_are_invalid_params() {
        let dir = tempfile::tempdir().unwrap();
        let pyro = test_pyro(dir.path());
        let call = |m: &'static str, p: Value| call(&pyro, m, p, pyro_core::no_progress());
        let e = call("status_vm", json!({"vm_id": "a", "extra": 1}))
            .await
            .unwrap_err();
        assert_eq!(e.code, INVALID_PARAMS);
        assert!(e.message.contains("unknown field `extra`"), "{}", e.message);
        let e = call("status_vm", json!({})).await.unwrap_err();
        assert!(e.message.contains("missing field `vm_id`"), "{}", e.message);
        let e = call(
            "run_in_vm",
            json!({"environment": "debian:12", "command": "true", "vcpu_count": 1.5}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, INVALID_PARAMS);
        assert_eq!(e.data, Some(json!({"kind": "invalid_input"})));
        let e = call("exec_vm", json!({"vm_id": "v", "command": 5}))
            .await
            .unwrap_err();
        assert!(e.message.contains("a string"), "{}", e.message);
        assert!(call("ping", json!({"x": 1})).await.is_err());
    }

    #[test]
    fn core_errors_become_application_errors_with_their_kind() {
        let e = RpcError::from(CoreError::WorkspaceNotFound { id: "w".into() });
        assert_eq!(e.code, APPLICATION_ERROR);
        assert_eq!(e.data, Some(json!({"kind": "not_found"})));
        assert_eq!(e.message, "unknown workspace `w`");
        let e = RpcError::from(CoreError::io(
            "read",
            "/x",
            std::io::Error::other("disk on fire"),
        ));
        assert_eq!(e.message, "cannot read `/x`: disk on fire");
        assert_eq!(e.data, Some(json!({"kind": "runtime"})));
        let j = e.to_json();
        assert_eq!(j["code"], json!(APPLICATION_ERROR));
    }

    fn test_pyro(dir: &std::path::Path) -> Pyro {
        Pyro::new(pyro_core::PyroOptions {
            state_dir: dir.join("state"),
            cache_dir: dir.join("cache"),
            backend: pyro_core::BackendChoice::Auto,
            agent_bin: None,
            max_active_vms: 4,
            boot_timeout: std::time::Duration::from_secs(5),
            limits: Default::default(),
        })
        .unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn methods_dispatch_without_booting_anything() {
        let dir = tempfile::tempdir().unwrap();
        let pyro = test_pyro(dir.path());
        let call = |m: &'static str, p: Value| call(&pyro, m, p, pyro_core::no_progress());
        let ping = call("ping", json!({})).await.unwrap();
        assert_eq!(ping["pong"], json!(true));
        assert_eq!(
            ping["methods"].as_array().unwrap().len(),
            Op::catalogue().len()
        );
        assert_eq!(
            call("nope", json!({})).await.unwrap_err().code,
            METHOD_NOT_FOUND
        );
        let e = call("status_vm", json!({"vm_id": "x"})).await.unwrap_err();
        assert_eq!(e.data, Some(json!({"kind": "not_found"})));
        let e = call("create_vm", json!({"environment": "debian:99"}))
            .await
            .unwrap_err();
        assert_eq!(e.data, Some(json!({"kind": "invalid_input"})));
        let e = call(
            "run_in_vm",
            json!({"environment": "debian:12", "command": "true", "allow_host_compat": true}),
        )
        .await
        .unwrap_err();
        assert!(e.message.contains("allow_host_compat"), "{}", e.message);
        let list = call("list_workspaces", json!(null)).await.unwrap();
        assert_eq!(list["count"], json!(0), "null params mean {{}}");
        let list = call("list_workspaces", json!({})).await.unwrap();
        assert_eq!(list["count"], json!(0));
        let envs = call("list_environments", json!({})).await.unwrap();
        assert_eq!(envs["environments"].as_array().unwrap().len(), 3);
    }

    /// Regression test: requests used to run as local tasks on one thread, so a call that
    /// kept its thread busy (the core's synchronous sections) held up every other request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_slow_request_does_not_delay_a_fast_one() {
        let dir = tempfile::tempdir().unwrap();
        let pyro = Arc::new(test_pyro(dir.path()));
        let (_cancel, cancelled) = watch::channel(false);
        // More thread-blocking requests than the runtime has workers, each busy for 3 s.
        let slow: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn(on_own_thread(Some(cancelled.clone()), || async {
                    std::thread::sleep(std::time::Duration::from_secs(3));
                    "slow"
                }))
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // A ping goes through the whole request path and is answered at once.
        let (tx, rx) = std::sync::mpsc::channel();
        let started = Instant::now();
        let ping = Incoming {
            id: Some(json!(1)),
            method: "ping".into(),
            params: json!({}),
        };
        serve(pyro.clone(), Out(tx.clone()), ping, cancelled.clone()).await;
        let line: Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(line["id"], json!(1));
        assert_eq!(line["result"]["pong"], json!(true));
        // So is a call into the core (SQLite, the state directory).
        let list = Incoming {
            id: Some(json!(2)),
            method: "list_workspaces".into(),
            params: json!({}),
        };
        serve(pyro, Out(tx), list, cancelled).await;
        let line: Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(line["result"]["count"], json!(0), "{line}");
        let waited = started.elapsed();
        assert!(
            waited < std::time::Duration::from_secs(1),
            "fast requests waited {waited:?} for the slow ones"
        );
        for s in &slow {
            assert!(
                !s.is_finished(),
                "the slow requests should still be running"
            );
        }
        for s in slow {
            assert_eq!(s.await.unwrap().unwrap(), Some("slow"));
        }
    }

    #[test]
    fn every_served_method_is_dispatched() {
        let dir = tempfile::tempdir().unwrap();
        let pyro = test_pyro(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for m in Op::catalogue().iter().map(|o| o.method) {
            // Empty params: every method either runs or complains about its params; none
            // is unknown.
            let r = rt.block_on(call(
                &pyro,
                m,
                json!({"__probe": true}),
                pyro_core::no_progress(),
            ));
            let e = r.unwrap_err();
            assert_eq!(e.code, INVALID_PARAMS, "{m}: {}", e.message);
        }
    }
}
