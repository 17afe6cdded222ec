//! `pyro bench --network`: what networking costs, measured side by side in one run, inside a
//! small world of network namespaces this process builds (and removes), so that no packet
//! leaves the machine.
//!
//! The world: a namespace playing the host (`pyrobench-h`, 203.0.113.1, default route into
//! the internet) and one playing the internet (`pyrobench-i`) where threads of this process
//! serve HTTP on 198.51.100.10:80 (`GET /N` answers N zero bytes) and DNS on
//! 198.51.100.53:53 (`bench.test` is 198.51.100.10). The measured `pyro` commands run with
//! their network namespace switched to the host's and `PYRO_NET_UPSTREAMS` at the world's
//! DNS server.
//!
//! Figures:
//! - warm `pyro run -- true` with the network off and on (`--network`), interleaved;
//! - HTTP download throughput from the world's server into the guest (3 × 64 MiB);
//! - connection setup (connect, request, first line of the answer) to the world's server
//!   from the guest: open egress vs through the allowlist's proxy (`--allow-host`).

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::Instant;

use serde::Serialize;

use super::bench::{Stats, stats};

pub(super) const HOST_NS: &str = "pyrobench-h";
pub(super) const INET_NS: &str = "pyrobench-i";
const SERVER_IP: &str = "198.51.100.10";
pub(super) const DNS_IP: &str = "198.51.100.53";
/// Bytes of one download.
const DOWNLOAD_BYTES: u64 = 64 << 20;
/// Connections per connection-setup sample.
const CONNECTIONS: usize = 30;

/// The results of `pyro bench --network`.
#[derive(Serialize, Debug)]
pub struct NetBench {
    backend: String,
    /// `pyro run ENV -- true`, warm, no network.
    warm_run_off: Stats,
    /// `pyro run --network ENV -- true`, warm.
    warm_run_network: Stats,
    /// Median with the network minus median without, ms.
    network_overhead_ms: f64,
    /// Guest downloads of 64 MiB from the world's server, MB/s (one sample per download).
    download_mb_per_s: Vec<f64>,
    /// Connection setup from the guest with open egress, ms per connection.
    connect_open: Stats,
    /// Connection setup through the allowlist's proxy, ms per connection.
    connect_proxied: Stats,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces of the bench's world; removed on drop.
pub(super) struct World;

impl World {
    pub(super) fn build() -> anyhow::Result<World> {
        for ns in [HOST_NS, INET_NS] {
            let _ = ip(&["netns", "del", ns]);
            ip(&["netns", "add", ns])?;
        }
        let world = World;
        ip(&["-n", HOST_NS, "link", "set", "lo", "up"])?;
        ip(&["-n", INET_NS, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", HOST_NS, "link", "add", "pbh0", "type", "veth", "peer", "name", "pbi0", "netns",
            INET_NS,
        ])?;
        ip(&[
            "-n",
            HOST_NS,
            "addr",
            "add",
            "203.0.113.1/24",
            "dev",
            "pbh0",
        ])?;
        ip(&["-n", HOST_NS, "link", "set", "pbh0", "up"])?;
        ip(&[
            "-n",
            INET_NS,
            "addr",
            "add",
            "203.0.113.254/24",
            "dev",
            "pbi0",
        ])?;
        ip(&["-n", INET_NS, "link", "set", "pbi0", "up"])?;
        for a in [SERVER_IP, DNS_IP] {
            ip(&[
                "-n",
                INET_NS,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "lo",
            ])?;
        }
        ip(&[
            "-n",
            HOST_NS,
            "route",
            "add",
            "default",
            "via",
            "203.0.113.254",
        ])?;
        Ok(world)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for ns in [HOST_NS, INET_NS] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Runs `f` on a new thread inside namespace `ns`, detached.
pub(super) fn spawn_in(ns: &str, f: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on a namespace file's descriptor; the thread is ours alone.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
            f();
        }
    });
    Ok(())
}

/// HTTP/1.0: `GET /N` is answered with N zero bytes (at most 1 GiB), then closed.
fn http_server(listener: TcpListener) {
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut conn = conn;
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head);
            let n: u64 = text
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.trim_start_matches('/').parse().ok())
                .unwrap_or(0)
                .min(1 << 30);
            let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {n}\r\n\r\n");
            let zeros = vec![0u8; 256 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(zeros.len() as u64) as usize;
                if conn.write_all(&zeros[..k]).is_err() {
                    return;
                }
                left -= k as u64;
            }
        });
    }
}

/// DNS: `bench.test` A is the server; everything else NXDOMAIN.
pub(super) fn dns_server(socket: UdpSocket) {
    let mut buf = [0u8; 512];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        let q = &buf[..n];
        if n < 17 {
            continue;
        }
        let mut i = 12;
        let mut labels = Vec::new();
        while i < n && q[i] != 0 && labels.len() < 16 {
            let l = q[i] as usize;
            if i + 1 + l > n {
                break;
            }
            labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + l]).to_lowercase());
            i += 1 + l;
        }
        if i + 5 > n {
            continue;
        }
        let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
        let question = &q[12..i + 5];
        let known = labels.join(".") == "bench.test";
        let mut r = Vec::with_capacity(64);
        r.extend_from_slice(&q[..2]);
        let flags: u16 = 0x8180 | if known { 0 } else { 3 };
        r.extend_from_slice(&flags.to_be_bytes());
        let answers: u16 = u16::from(known && qtype == 1);
        for v in [1u16, answers, 0, 0] {
            r.extend_from_slice(&v.to_be_bytes());
        }
        r.extend_from_slice(question);
        if answers == 1 {
            r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            r.extend_from_slice(&[198, 51, 100, 10]);
        }
        let _ = socket.send_to(&r, from);
    }
}

/// `pyro ARGS` from the world's host namespace; milliseconds from spawn to exit, and its
/// stdout. Fails with its stderr when it fails.
pub(super) fn pyro_in_world(exe: &std::path::Path, args: &[&str]) -> anyhow::Result<(f64, String)> {
    use std::os::unix::process::CommandExt;
    let ns = std::fs::File::open(format!("/run/netns/{HOST_NS}"))?;
    let fd = ns.as_raw_fd();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env("PYRO_NET_UPSTREAMS", DNS_IP)
        .env(pyro_core::warm::SNAPSHOTS_ENV, "1")
        .stdin(Stdio::null());
    // SAFETY: setns(2) between fork and exec; the descriptor outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t = Instant::now();
    let out = cmd.output()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(ns);
    if !out.status.success() {
        anyhow::bail!(
            "`pyro {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((ms, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The guest's script: `CONNECTIONS` sequential HTTP requests for one byte (Host:
/// bench.test), each timed with bash's clock; prints one duration (µs) per line.
fn connect_script() -> String {
    format!(
        "for i in $(seq {CONNECTIONS}); do s=$EPOCHREALTIME; \
         exec 3<>/dev/tcp/{SERVER_IP}/80 || exit 1; \
         printf 'GET /1 HTTP/1.0\\r\\nHost: bench.test\\r\\n\\r\\n' >&3; read -r line <&3; \
         exec 3>&-; e=$EPOCHREALTIME; echo $(( (${{e/./}} - ${{s/./}}) )); done"
    )
}

fn micros_to_ms(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect()
}

/// Runs the whole network bench (see the module docs).
pub async fn run(
    exe: &std::path::Path,
    backend: &str,
    environment: &str,
    iterations: usize,
) -> anyhow::Result<NetBench> {
    pyro_net::setup::check_capabilities(true).map_err(|e| anyhow::anyhow!("{e}"))?;
    let world = World::build()?;
    let listener = {
        let (tx, rx) = std::sync::mpsc::channel();
        spawn_in(INET_NS, move || {
            let http = TcpListener::bind((SERVER_IP, 80));
            let dns = UdpSocket::bind((DNS_IP, 53));
            match (http, dns) {
                (Ok(http), Ok(dns)) => {
                    let _ = tx.send(Ok(()));
                    std::thread::spawn(move || dns_server(dns));
                    http_server(http);
                }
                (Err(e), _) | (_, Err(e)) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
        rx.recv()?
    };
    listener.map_err(|e| anyhow::anyhow!("the bench's servers could not start: {e}"))?;
    let run_args = |network: bool, extra: &'static [&'static str]| {
        let mut v = vec!["run", "--backend", backend];
        if network {
            v.push("--network");
        }
        v.extend_from_slice(extra);
        v.extend_from_slice(&[environment, "--"]);
        v
    };
    // The first of each builds its warm snapshot; not a sample.
    eprintln!("[bench] preparing the warm snapshots (networked and not)");
    for network in [false, true] {
        let mut a = run_args(network, &[]);
        a.push("true");
        pyro_in_world(exe, &a)?;
    }
    eprintln!(
        "[bench] measuring `pyro run [--network] {environment} -- true` x{iterations} each, interleaved"
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        for network in [false, true] {
            let mut a = run_args(network, &[]);
            a.push("true");
            let (ms, _) = pyro_in_world(exe, &a)?;
            if network { on.push(ms) } else { off.push(ms) }
        }
    }
    eprintln!(
        "[bench] measuring downloads of {} MiB into the guest x3",
        DOWNLOAD_BYTES >> 20
    );
    let download = format!(
        "for i in 1 2 3; do s=$EPOCHREALTIME; exec 3<>/dev/tcp/{SERVER_IP}/80 || exit 1; \
         printf 'GET /{DOWNLOAD_BYTES} HTTP/1.0\\r\\nHost: bench.test\\r\\n\\r\\n' >&3; \
         n=$(cat <&3 | wc -c); e=$EPOCHREALTIME; echo \"$n $(( (${{e/./}} - ${{s/./}}) ))\"; done"
    );
    let mut a = run_args(true, &["--timeout-seconds", "600"]);
    a.extend_from_slice(&["bash", "-c", &download]);
    let (_, out) = pyro_in_world(exe, &a)?;
    let download_mb_per_s: Vec<f64> = out
        .lines()
        .filter_map(|l| {
            let (bytes, us) = l.split_once(' ')?;
            let (bytes, us) = (bytes.parse::<f64>().ok()?, us.parse::<f64>().ok()?);
            (bytes >= DOWNLOAD_BYTES as f64 && us > 0.0).then(|| bytes / us)
        })
        .collect();
    if download_mb_per_s.len() != 3 {
        anyhow::bail!("the guest's downloads did not complete: {out}");
    }
    eprintln!(
        "[bench] measuring connection setup x{CONNECTIONS}: open egress, then through the allowlist's proxy"
    );
    let script = connect_script();
    let mut open = run_args(true, &[]);
    open.extend_from_slice(&["bash", "-c", &script]);
    let connect_open = micros_to_ms(&pyro_in_world(exe, &open)?.1);
    let mut proxied = run_args(true, &["--allow-host", "bench.test"]);
    proxied.extend_from_slice(&["bash", "-c", &script]);
    let connect_proxied = micros_to_ms(&pyro_in_world(exe, &proxied)?.1);
    if connect_open.len() != CONNECTIONS || connect_proxied.len() != CONNECTIONS {
        anyhow::bail!("the guest's connections did not all complete");
    }
    drop(world);
    let (warm_run_off, warm_run_network) = (stats(off), stats(on));
    Ok(NetBench {
        backend: backend.into(),
        network_overhead_ms: warm_run_network.median_ms - warm_run_off.median_ms,
        warm_run_off,
        warm_run_network,
        download_mb_per_s,
        connect_open: stats(connect_open),
        connect_proxied: stats(connect_proxied),
    })
}
