//! `pyro bench --procs`: what shells, services and published ports cost, side by side in
//! one run on one workspace, with medians and p95 over `--iterations`.
//!
//! Figures:
//! - **shell round trip**: one PTY shell (`Pyro::open_shell`); each sample writes
//!   `echo mark-N` (`write_shell`) and polls `read_shell` (`wait_for_idle_ms: None`, a 2 ms
//!   sleep between reads) until a line `mark-N` of output (not the echoed input) appears,
//!   timed from the write call to the read that shows it. Interleaved with the exec round
//!   trip of `true` (`exec_workspace`) in the same workspace, and their ratio.
//! - **service start to ready**: `start_service` of `exec sleep 600` with no probe, and of
//!   `touch /workspace/ready-N; exec sleep 600` with a file probe on `ready-N` (interval
//!   10 ms), interleaved; each start is timed, the stop after it is not.
//! - **published port throughput**: as root, inside the namespace world of
//!   `pyro bench --network` ([`crate::bench_net`]; no packet leaves it), a workspace with
//!   policy `egress+published-ports` serves a 64 MiB file (`python3 -m http.server`) through
//!   a published port, and a thread of this process in the world's host namespace
//!   downloads it from `127.0.0.1:HOST_PORT` three times (MB/s). Without root, or when the
//!   world cannot be built, this part is skipped and says why.
//!
//! Run it as `sudo pyro bench --procs [--iterations N] [--json]`. With a development build,
//! point it at the static agent and the environment cache as the tests do:
//! `PYRO_AGENT_BIN=…/x86_64-unknown-linux-gnu/release/pyro-agent PYRO_CACHE_DIR=~/.cache/pyro`.
//! The workspaces it creates are deleted at the end, also when a measurement fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pyro_core::workspace::{CreateWorkspace, OpenShell, ReadShell, ReadinessSpec, StartService};
use pyro_core::{Command, ExecOptions, Pyro};
use serde::Serialize;

use super::bench::{Stats, stats};
use super::bench_net::{self as net, World};

/// Pause between two polling reads of the shell.
const POLL_MS: u64 = 2;
/// How the shell's output is read, as the output says it.
const SHELL_READ: &str = "read_shell with wait_for_idle_ms none, polled every 2 ms";
/// The services' readiness probe interval.
const READY_INTERVAL_MS: i64 = 10;
/// Bytes the guest serves per download.
const BLOB_BYTES: u64 = 64 << 20;
/// Downloads through the published port.
const DOWNLOADS: usize = 3;
/// The guest port of the file server.
const GUEST_PORT: u16 = 8000;
/// Longest wait for one marker, one download.
const WAIT: Duration = Duration::from_secs(120);

/// The results of `pyro bench --procs`.
#[derive(Serialize, Debug)]
pub struct ProcsBench {
    pub(crate) backend: String,
    pub(crate) environment: String,
    /// How the shell was read.
    pub(crate) shell_read: &'static str,
    /// `write_shell` of `echo mark-N` to the read that shows `mark-N`.
    pub(crate) shell_round_trip: Stats,
    /// `exec_workspace` of `true`, in the same workspace, interleaved.
    pub(crate) exec_round_trip: Stats,
    /// Shell median / exec median.
    pub(crate) shell_exec_median_ratio: f64,
    /// Shell p95 / exec p95.
    pub(crate) shell_exec_p95_ratio: f64,
    pub(crate) ready_interval_ms: i64,
    /// `start_service` of `exec sleep 600`, no probe.
    pub(crate) service_start_no_probe: Stats,
    /// `start_service` with a file probe on a file the command touches.
    pub(crate) service_start_file_probe: Stats,
    /// File probe median / no probe median.
    pub(crate) file_probe_median_ratio: f64,
    pub(crate) published_port: PortPart,
}

/// The published-port part: measured, skipped (with why), or failed (with the error).
#[derive(Serialize, Debug)]
#[serde(rename_all = "snake_case")]
pub enum PortPart {
    Measured(PortBench),
    Skipped(String),
    Failed(String),
}

/// Downloads through a published port.
#[derive(Serialize, Debug)]
pub struct PortBench {
    /// What serves the bytes in the guest.
    pub(crate) server: &'static str,
    pub(crate) bytes_per_download: u64,
    /// One sample per download, MB/s (10^6 bytes).
    pub(crate) download_mb_per_s: Vec<f64>,
    pub(crate) median_mb_per_s: f64,
}

/// Runs the whole procs bench (see the module docs) with `pyro`, whose backend is
/// `backend`; `exe` is this binary, for the networked part's commands.
pub async fn run(
    pyro: &Pyro,
    exe: &std::path::Path,
    backend: &str,
    environment: &str,
    iterations: usize,
) -> anyhow::Result<ProcsBench> {
    eprintln!("[bench] creating a workspace ({environment})");
    let ws = pyro
        .create_workspace(CreateWorkspace::new(environment), pyro_core::no_progress())
        .await?;
    let id = ws.workspace_id;
    let measured = measure(pyro, &id, iterations).await;
    if let Err(e) = pyro.delete_workspace(&id).await {
        eprintln!("[bench] could not delete workspace {id}: {e}");
    }
    let (shell, exec, none, file) = measured?;
    let published_port = published_port(exe, backend, environment).await;
    let (shell, exec, none, file) = (stats(shell), stats(exec), stats(none), stats(file));
    Ok(ProcsBench {
        backend: backend.into(),
        environment: environment.into(),
        shell_read: SHELL_READ,
        shell_exec_median_ratio: shell.median_ms / exec.median_ms,
        shell_exec_p95_ratio: shell.p95_ms / exec.p95_ms,
        shell_round_trip: shell,
        exec_round_trip: exec,
        ready_interval_ms: READY_INTERVAL_MS,
        file_probe_median_ratio: file.median_ms / none.median_ms,
        service_start_no_probe: none,
        service_start_file_probe: file,
        published_port,
    })
}

type Samples = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// The shell, exec and service samples in workspace `id`.
async fn measure(pyro: &Pyro, id: &str, iterations: usize) -> anyhow::Result<Samples> {
    let shell = pyro
        .open_shell(
            id,
            OpenShell {
                cwd: "/workspace".into(),
                cols: 120,
                rows: 40,
                secret_env: Default::default(),
            },
        )
        .await?;
    let shell_id = shell.shell_id;
    let mut cursor = 0;
    // The first marker waits for the shell to come up; not a sample.
    echo_round_trip(pyro, id, &shell_id, &mut cursor, 0).await?;
    eprintln!(
        "[bench] measuring shell echo and exec `true` round trips x{iterations}, interleaved"
    );
    let (mut shells, mut execs) = (Vec::new(), Vec::new());
    for n in 1..=iterations {
        shells.push(echo_round_trip(pyro, id, &shell_id, &mut cursor, n).await?);
        let t = Instant::now();
        let r = pyro
            .exec_workspace(
                id,
                ExecOptions::new(Command::Argv(vec!["true".into()])),
                None,
            )
            .await?;
        execs.push(ms_since(t));
        if r.exit_code != 0 {
            anyhow::bail!("`true` exited {} in the workspace", r.exit_code);
        }
    }
    let _ = pyro.close_shell(id, &shell_id).await;
    eprintln!(
        "[bench] measuring service start, no probe and file probe, x{iterations} each, interleaved"
    );
    let (mut none, mut file) = (Vec::new(), Vec::new());
    for n in 1..=iterations {
        none.push(start_stop(pyro, id, &format!("bench-none-{n}"), "exec sleep 600", None).await?);
        let ready = format!("/workspace/ready-{n}");
        file.push(
            start_stop(
                pyro,
                id,
                &format!("bench-file-{n}"),
                &format!("touch {ready}; exec sleep 600"),
                Some(ReadinessSpec::File(ready.clone())),
            )
            .await?,
        );
    }
    Ok((shells, execs, none, file))
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Writes `echo mark-N` and reads from `cursor` until the output line `mark-N` appears;
/// milliseconds from the write call to that read. Leaves `cursor` after what was read.
async fn echo_round_trip(
    pyro: &Pyro,
    id: &str,
    shell_id: &str,
    cursor: &mut u64,
    n: usize,
) -> anyhow::Result<f64> {
    let marker = format!("mark-{n}");
    let t = Instant::now();
    pyro.write_shell(id, shell_id, &format!("echo {marker}"), true)
        .await?;
    let mut text = String::new();
    loop {
        let r = pyro
            .read_shell(
                id,
                shell_id,
                ReadShell {
                    cursor: *cursor,
                    max_chars: 65_536,
                    plain: false,
                    wait_for_idle_ms: None,
                },
            )
            .await?;
        *cursor = r.next_cursor;
        text.push_str(&r.output);
        if has_output_line(&text, &marker) {
            return Ok(ms_since(t));
        }
        if r.shell.state != "running" {
            anyhow::bail!("the shell ended before printing {marker}: {text}");
        }
        if t.elapsed() > WAIT {
            anyhow::bail!("no {marker} from the shell after {WAIT:?}: {text}");
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// Whether `text` has a complete line printed by `echo MARKER`, not the terminal's echo
/// of the command line (`…$ echo MARKER`).
fn has_output_line(text: &str, marker: &str) -> bool {
    let typed = format!("echo {marker}");
    let mut lines: Vec<&str> = text.split('\n').collect();
    lines.pop(); // Not yet ended.
    lines.iter().any(|l| {
        let l = l.trim_end_matches('\r');
        l.ends_with(marker) && !l.ends_with(&typed)
    })
}

/// Starts service `name` (timed), then stops it (not timed).
async fn start_stop(
    pyro: &Pyro,
    id: &str,
    name: &str,
    command: &str,
    readiness: Option<ReadinessSpec>,
) -> anyhow::Result<f64> {
    let req = StartService {
        name: name.into(),
        command: command.into(),
        cwd: "/workspace".into(),
        readiness,
        ready_timeout_seconds: 60,
        ready_interval_ms: READY_INTERVAL_MS,
        secret_env: Default::default(),
        published_ports: Vec::new(),
    };
    let t = Instant::now();
    let info = pyro
        .start_service(id, req, pyro_core::no_progress())
        .await?;
    let ms = ms_since(t);
    pyro.stop_service(id, name).await?;
    if info.state != "running" {
        anyhow::bail!("service {name} started as `{}`", info.state);
    }
    Ok(ms)
}

/// The published-port part; never an error (a failure is reported as the part's result).
async fn published_port(exe: &std::path::Path, backend: &str, environment: &str) -> PortPart {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return PortPart::Skipped("not running as root (the namespace world needs it)".into());
    }
    if let Err(e) = pyro_net::setup::check_capabilities(true) {
        return PortPart::Skipped(format!("networking is not available: {e}"));
    }
    let world = match World::build() {
        Ok(w) => w,
        Err(e) => return PortPart::Skipped(format!("the namespace world was not built: {e:#}")),
    };
    let r = match start_dns() {
        Ok(()) => in_world(exe, backend, environment).await,
        Err(e) => Err(e),
    };
    drop(world);
    match r {
        Ok(b) => PortPart::Measured(b),
        Err(e) => PortPart::Failed(format!("{e:#}")),
    }
}

/// The world's DNS server (the networked sandbox's upstream), in the internet namespace.
fn start_dns() -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    net::spawn_in(net::INET_NS, move || {
        match std::net::UdpSocket::bind((net::DNS_IP, 53)) {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                net::dns_server(s);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    })?;
    rx.recv()?
        .map_err(|e| anyhow::anyhow!("the world's DNS server could not start: {e}"))
}

/// The networked workspace, made and measured with `pyro` commands run in the world's host
/// namespace; deleted at the end.
async fn in_world(
    exe: &std::path::Path,
    backend: &str,
    environment: &str,
) -> anyhow::Result<PortBench> {
    eprintln!("[bench] creating a workspace with egress+published-ports in the namespace world");
    let (_, out) = net::pyro_in_world(
        exe,
        &[
            "workspace",
            "create",
            "--backend",
            backend,
            "--network-policy",
            "egress+published-ports",
            environment,
            "--id-only",
        ],
    )?;
    let id = out.trim().to_string();
    let r = serve_and_download(exe, &id).await;
    if let Err(e) = net::pyro_in_world(exe, &["workspace", "delete", &id]) {
        eprintln!("[bench] could not delete workspace {id}: {e:#}");
    }
    r
}

async fn serve_and_download(exe: &std::path::Path, id: &str) -> anyhow::Result<PortBench> {
    let blob = format!("head -c {BLOB_BYTES} /dev/zero > /workspace/blob");
    net::pyro_in_world(exe, &["workspace", "exec", id, "--", "sh", "-c", &blob])?;
    let publish = GUEST_PORT.to_string();
    let ready = format!("127.0.0.1:{GUEST_PORT}");
    let server = format!("exec python3 -m http.server {GUEST_PORT} --directory /workspace");
    let (_, out) = net::pyro_in_world(
        exe,
        &[
            "workspace",
            "service",
            "start",
            id,
            "blob",
            "--publish",
            &publish,
            "--ready-tcp",
            &ready,
            "--json",
            &server,
        ],
    )?;
    let info: serde_json::Value = serde_json::from_str(&out)?;
    let host_port = info["published_ports"][0]["host_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| anyhow::anyhow!("no published port in {out}"))?;
    eprintln!(
        "[bench] measuring downloads of {} MiB through 127.0.0.1:{host_port} x{DOWNLOADS}",
        BLOB_BYTES >> 20
    );
    let mut download_mb_per_s = Vec::new();
    for _ in 0..DOWNLOADS {
        download_mb_per_s.push(download(host_port).await?);
    }
    let median_mb_per_s = stats(download_mb_per_s.clone()).median_ms;
    Ok(PortBench {
        server: "python3 -m http.server",
        bytes_per_download: BLOB_BYTES,
        download_mb_per_s,
        median_mb_per_s,
    })
}

/// One `GET /blob` from `127.0.0.1:port` in the world's host namespace; MB/s from connect
/// to the last byte.
async fn download(port: u16) -> anyhow::Result<f64> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    net::spawn_in(net::HOST_NS, move || {
        let _ = tx.send(fetch_blob(port));
    })?;
    let (bytes, secs) = rx
        .await
        .map_err(|_| anyhow::anyhow!("the download thread did not answer"))??;
    Ok(bytes as f64 / secs / 1e6)
}

/// Bytes of body received and seconds taken.
fn fetch_blob(port: u16) -> anyhow::Result<(u64, f64)> {
    let t = Instant::now();
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(WAIT))?;
    conn.write_all(b"GET /blob HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = Vec::new();
    let mut in_body = false;
    let mut buf = vec![0u8; 256 * 1024];
    let mut body = 0u64;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if in_body {
            body += n as u64;
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            in_body = true;
            body = (head.len() - end - 4) as u64;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if !head.starts_with(b"HTTP/1.0 200") || body != BLOB_BYTES {
        anyhow::bail!(
            "the download got {body} of {BLOB_BYTES} bytes: {}",
            String::from_utf8_lossy(&head[..head.len().min(200)])
        );
    }
    Ok((body, secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_printed_marker_line_counts() {
        let typed = "\x1b]0;root@pyro: /workspace\x07root@pyro:/workspace# echo mark-3\r\n";
        assert!(!has_output_line(typed, "mark-3"));
        assert!(!has_output_line(&format!("{typed}mark-3"), "mark-3"));
        assert!(has_output_line(&format!("{typed}mark-3\r\n"), "mark-3"));
        assert!(has_output_line(
            &format!("{typed}\x1b[?2004l\rmark-3\r\nroot@pyro:/workspace# "),
            "mark-3"
        ));
        assert!(!has_output_line(&format!("{typed}mark-2\r\n"), "mark-3"));
    }
}
