//! `pyro-agent`: the guest agent binary.
//!
//! As PID 1 (the initramfs `/init`) it first runs stage 1 (mounts, modules, overlay root,
//! switch root), then serves the pyro protocol on the virtio-serial port and on vsock port
//! [`pyro_proto::AGENT_PORT`], whichever the VMM provides. Outside a guest it can serve on a
//! Unix socket (`pyro-agent --listen-unix PATH`), which the test suites use; with
//! `PYRO_AGENT_WORKSPACE=DIR` (read only in that mode) it stands in for a whole guest, as
//! pyro-core's fake backend runs it: the guest path `/workspace` is `DIR` and a poweroff
//! ends the process.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pyro_agent::server::{self, AgentInfo};
use pyro_agent::{init, limits, reaper, transport};

fn main() -> ExitCode {
    let started = Instant::now();
    let pid1 = std::process::id() == 1;
    if pid1 && let Err(e) = init::run_stage1() {
        eprintln!("pyro-agent: stage 1 failed: {e}");
        init::poweroff();
    }
    if pid1 {
        match limits::setup() {
            Ok((l, problems)) => {
                eprintln!(
                    "pyro-agent: commands limited to {} tasks, {} MiB, cpu weight {}",
                    l.pids_max,
                    l.memory_max >> 20,
                    l.cpu_weight
                );
                for p in problems {
                    eprintln!("pyro-agent: warning: {p}");
                }
            }
            Err(e) => eprintln!("pyro-agent: warning: commands run without limits: {e}"),
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen_unix = match args.as_slice() {
        [] => None,
        [flag, path] if flag == "--listen-unix" => Some(path.clone()),
        [flag] if flag == "--version" => {
            println!("pyro-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("usage: pyro-agent [--listen-unix PATH | --version]");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pyro-agent: cannot start the runtime: {e}");
            if pid1 {
                init::poweroff();
            }
            return ExitCode::FAILURE;
        }
    };
    // Test mode: a stand-in guest on a host, whose `/workspace` is another directory and
    // which "powers off" by exiting. Read only with --listen-unix, never as PID 1.
    let mut exit_on_poweroff = false;
    if !pid1 && listen_unix.is_some() {
        match workspace_dir_from_env() {
            Ok(Some(dir)) => {
                // main runs once: the mapping cannot have been set before.
                let _ = pyro_agent::fs::map_workspace_to(dir);
                exit_on_poweroff = true;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("pyro-agent: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let info = AgentInfo {
        started,
        pid1,
        exit_on_poweroff,
    };
    let res = rt.block_on(async move {
        reaper::start()?;
        if let Some(path) = listen_unix {
            return serve_unix(&path, info).await;
        }
        let mut serving = false;
        if let Some(port) = transport::find_serial_port(pyro_proto::SERIAL_PORT_NAME) {
            tokio::spawn(serve_serial(port, info));
            serving = true;
        }
        match transport::VsockListener::bind(pyro_proto::AGENT_PORT) {
            Ok(listener) => {
                tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok(conn) => {
                                tokio::spawn(server::serve(conn, info));
                            }
                            Err(e) => {
                                eprintln!("pyro-agent: vsock accept failed: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                });
                serving = true;
            }
            Err(e) if !serving => eprintln!("pyro-agent: no vsock ({e}) and no serial port"),
            Err(_) => {}
        }
        if !serving {
            return Err(std::io::Error::other(
                "no agent channel (virtio-serial or vsock) found",
            ));
        }
        eprintln!(
            "pyro-agent: ready after {} ms",
            started.elapsed().as_millis()
        );
        std::future::pending::<()>().await;
        Ok(())
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pyro-agent: {e}");
            if pid1 {
                init::poweroff();
            }
            ExitCode::FAILURE
        }
    }
}

/// Serves the serial port forever: when the host side disconnects, the session ends and a
/// new one starts as soon as the host reconnects.
async fn serve_serial(port: std::path::PathBuf, info: AgentInfo) {
    loop {
        match transport::open_device(&port) {
            Ok(dev) => {
                if let Err(e) = server::serve(dev, info).await {
                    tracing_free_log(&format!("serial session ended: {e}"));
                }
            }
            Err(e) => tracing_free_log(&format!("cannot open {}: {e}", port.display())),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tracing_free_log(msg: &str) {
    if std::env::var_os("PYRO_AGENT_DEBUG").is_some() {
        eprintln!("pyro-agent: {msg}");
    }
}

/// The variable naming the directory that stands in for `/workspace` in test mode.
const WORKSPACE_ENV: &str = "PYRO_AGENT_WORKSPACE";

/// `PYRO_AGENT_WORKSPACE`, which must be an absolute path to an existing directory.
fn workspace_dir_from_env() -> Result<Option<std::path::PathBuf>, String> {
    let Some(dir) = std::env::var_os(WORKSPACE_ENV) else {
        return Ok(None);
    };
    let dir = std::path::PathBuf::from(dir);
    if !dir.is_absolute() || !dir.is_dir() {
        return Err(format!(
            "{WORKSPACE_ENV}={} must be an absolute path to an existing directory",
            dir.display()
        ));
    }
    Ok(Some(dir))
}

async fn serve_unix(path: &str, info: AgentInfo) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    loop {
        let (conn, _) = listener.accept().await?;
        tokio::spawn(server::serve(conn, info));
    }
}
