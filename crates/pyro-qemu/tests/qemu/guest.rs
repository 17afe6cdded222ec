//! QEMU booting the real guest under TCG: kernel, initramfs and rootfs from `pyro-image`,
//! the statically linked agent as `/init`, the relay in-process, and a host client that
//! talks to the agent exactly as it would through Firecracker's vsock.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyro_image::{Cache, Installed};
use pyro_proto::api::{self, Command, ExecRequest, Output, PingResult, Request};
use pyro_proto::{Config, Session};
use pyro_qemu::{
    Accel, LaunchOptions, QemuError, QemuSpec, RELAY_SOCKET, launch, locate_qemu, run_relay,
};
use tokio::sync::oneshot;

use crate::util::wait_until;

const ENVIRONMENT: &str = "debian:12";
const UPPER_MIB: u64 = 256;

/// The statically linked agent: `$PYRO_AGENT_BIN`, else the workspace's release build for
/// the gnu target.
fn agent_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PYRO_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let p = target.join("x86_64-unknown-linux-gnu/release/pyro-agent");
    p.is_file().then_some(p)
}

/// Everything a guest test needs, or `None` (after saying why, loudly) when this machine
/// cannot run one.
async fn prerequisites() -> Option<(PathBuf, Cache, Installed)> {
    let Some(agent) = agent_binary() else {
        eprintln!(
            "\n!!! SKIPPED: no static pyro-agent. Build it with\n!!!   RUSTFLAGS='-C \
             target-feature=+crt-static' cargo build -p pyro-agent --release --target \
             x86_64-unknown-linux-gnu\n!!! or set PYRO_AGENT_BIN.\n"
        );
        return None;
    };
    let qemu = match locate_qemu() {
        Ok(q) => q,
        Err(e) => {
            eprintln!("\n!!! SKIPPED: {e}\n");
            return None;
        }
    };
    // One build (or cache check) per test binary, shared by the guest tests.
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    let installed = tokio::task::spawn_blocking(move || {
        INSTALLED
            .get_or_init(|| {
                let started = Instant::now();
                let cache = Cache::open(pyro_image::default_cache_dir().unwrap()).unwrap();
                let installed =
                    pyro_image::ensure_environment(&cache, ENVIRONMENT, &agent, &mut |p| {
                        eprintln!("[{}/{}] {}: {}", p.step, p.total, p.phase, p.message);
                    })
                    .unwrap_or_else(|e| panic!("cannot provide {ENVIRONMENT}: {e:#?}"));
                eprintln!("environment {ENVIRONMENT} ready in {:?}", started.elapsed());
                installed
            })
            .clone()
    })
    .await
    .unwrap();
    let cache = Cache::open(pyro_image::default_cache_dir().unwrap()).unwrap();
    Some((qemu, cache, installed))
}

fn spec(installed: &Installed, upper: &Path) -> QemuSpec {
    QemuSpec {
        kernel: installed.kernel.clone(),
        initrd: installed.initramfs.clone(),
        rootfs: installed.rootfs.clone(),
        upper: upper.to_owned(),
        vcpu_count: 1,
        mem_mib: 256,
        accel: Accel::Tcg,
        extra_cmdline: String::new(),
        upper_cache_unsafe: true,
        memory_file: None,
        nic: None,
    }
}

fn options(qemu: &Path, workdir: &Path) -> LaunchOptions {
    LaunchOptions {
        qemu: qemu.to_owned(),
        workdir: workdir.to_owned(),
        die_with_parent: true,
        new_session: false,
        boot: None,
        incoming: None,
        netns: None,
    }
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn sockets_in(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_guest_answers_through_qemu_and_the_relay() {
    let Some((qemu_bin, cache, installed)) = prerequisites().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().join("sandbox");
    std::fs::create_dir_all(&workdir).unwrap();
    let upper = workdir.join("upper.ext4");
    cache.create_upper_disk(&upper, UPPER_MIB).unwrap();

    let t0 = Instant::now();
    let mut qemu = launch(&spec(&installed, &upper), &options(&qemu_bin, &workdir))
        .await
        .unwrap();
    let t_sockets = t0.elapsed();
    let pid = qemu.pid();
    assert!(process_exists(pid));

    let listen = workdir.join(RELAY_SOCKET);
    let (ready_tx, ready_rx) = oneshot::channel();
    let relay = {
        let (agent_sock, listen) = (qemu.agent_socket_path(), listen.clone());
        tokio::spawn(async move { run_relay(&agent_sock, &listen, Some(ready_tx)).await })
    };
    let ready_at = tokio::spawn(async move { ready_rx.await.map(|()| t0.elapsed()) });

    // Exactly what a host client does with Firecracker's hybrid vsock.
    let conn = match pyro_firecracker::vsock::connect(
        &listen,
        pyro_proto::AGENT_PORT,
        Duration::from_secs(60),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            let console = std::fs::read_to_string(qemu.console_log_path()).unwrap_or_default();
            let _ = qemu.kill().await;
            panic!("the agent never came up: {e}\n--- console ---\n{console}");
        }
    };
    let session = Session::client(conn, Config::default()).await.unwrap();
    let pong: PingResult = api::call(&session, &Request::Ping).await.unwrap();
    let t_ping = t0.elapsed();
    let t_ready = ready_at.await.unwrap().unwrap();
    assert!(pong.pid1, "the agent runs as the guest's init: {pong:?}");
    assert_eq!(pong.protocol_version, pyro_proto::PROTOCOL_VERSION);

    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let t_exec = Instant::now();
    let result = api::exec(
        &session,
        ExecRequest {
            command: Command::Argv(vec!["git".into(), "--version".into()]),
            cwd: None,
            env: Default::default(),
            timeout_ms: Some(60_000),
            max_output_bytes: None,
            stdin: false,
        },
        None,
        |out| match out {
            Output::Stdout(b) => stdout.extend_from_slice(&b),
            Output::Stderr(b) => stderr.extend_from_slice(&b),
        },
    )
    .await
    .unwrap();
    let t_exec = t_exec.elapsed();
    let stdout = String::from_utf8_lossy(&stdout);
    assert_eq!(
        result.exit_code,
        0,
        "{result:?} stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    assert!(stdout.starts_with("git version "), "{stdout:?}");

    // QMP, for real: pause, check, resume, check, and the guest still answers.
    let mut qmp = qemu.qmp().await.unwrap();
    assert_eq!(qmp.qemu_version().map(|v| !v.is_empty()), Some(true));
    assert_eq!(qmp.query_status().await.unwrap(), "running");
    qmp.stop().await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap(), "paused");
    // While paused, the agent cannot answer (session pings would be answered by the
    // relay itself: only a call reaches the guest).
    let paused_call = tokio::time::timeout(
        Duration::from_millis(500),
        api::call::<PingResult>(&session, &Request::Ping),
    )
    .await;
    assert!(
        paused_call.is_err(),
        "a paused guest answered: {paused_call:?}"
    );
    qmp.cont().await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap(), "running");
    let rtt = Instant::now();
    api::call::<PingResult>(&session, &Request::Ping)
        .await
        .unwrap();
    let rtt = rtt.elapsed();

    // The migration commands snapshots will use: a paused VM's state into a file.
    qmp.stop().await.unwrap();
    qmp.migrate_set_parameters(10_000_000_000).await.unwrap();
    let t_migrate = Instant::now();
    qmp.migrate("exec:cat > state.bin").await.unwrap();
    let info = loop {
        let info = qmp.query_migrate().await.unwrap();
        match info.status.as_deref() {
            Some("completed" | "failed" | "cancelled") => break info,
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let t_migrate = t_migrate.elapsed();
    assert_eq!(info.status.as_deref(), Some("completed"), "{info:?}");
    let state = std::fs::metadata(workdir.join("state.bin")).unwrap().len();
    assert!(state > 1 << 20, "migration stream of {state} bytes");
    assert_eq!(qmp.query_status().await.unwrap(), "postmigrate");
    qmp.cont().await.unwrap();
    let again: PingResult = api::call(&session, &Request::Ping).await.unwrap();
    assert!(again.uptime_ms >= pong.uptime_ms);
    drop(qmp);

    // A relay that dies (a persistent workspace's relay process crashing or being
    // restarted) can be replaced: the agent starts a new session on its port.
    relay.abort();
    let _ = relay.await;
    tokio::time::timeout(Duration::from_secs(5), session.closed())
        .await
        .expect("the client's session outlived its relay");
    assert!(!listen.exists(), "an aborted relay removes its socket");
    let t_relay2 = Instant::now();
    let relay = {
        let (agent_sock, listen) = (qemu.agent_socket_path(), listen.clone());
        tokio::spawn(async move { run_relay(&agent_sock, &listen, None).await })
    };
    let conn =
        pyro_firecracker::vsock::connect(&listen, pyro_proto::AGENT_PORT, Duration::from_secs(30))
            .await
            .unwrap();
    let session = Session::client(conn, Config::default()).await.unwrap();
    let third: PingResult = api::call(&session, &Request::Ping).await.unwrap();
    let t_relay2 = t_relay2.elapsed();
    assert!(third.uptime_ms >= again.uptime_ms, "the same guest answers");

    eprintln!(
        "TIMINGS (TCG): QEMU start -> sockets {t_sockets:?}, -> relay ready (agent \
         handshake) {t_ready:?}, -> first ping answered {t_ping:?}; agent uptime at ping \
         {} ms; exec git --version {t_exec:?}; ping call after cont {rtt:?}; migrate of a \
         paused 256 MiB guest {t_migrate:?} ({state} bytes); new relay -> ping {t_relay2:?}",
        pong.uptime_ms
    );

    let status = qemu.kill().await.unwrap();
    assert!(!status.success());
    assert!(!process_exists(pid), "QEMU (pid {pid}) is still there");
    let ended = tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .expect("the relay outlived QEMU")
        .unwrap();
    ended.unwrap();
    tokio::time::timeout(Duration::from_secs(5), session.closed())
        .await
        .expect("the client's session outlived the relay");
    wait_until("no sockets are left", Duration::from_secs(2), || {
        sockets_in(&workdir).is_empty()
    })
    .await;
    assert!(qemu.console_log_path().is_file());
}

/// Connects a host client through a relay that is already listening on `listen`.
async fn client(listen: &Path) -> Session {
    let conn =
        pyro_firecracker::vsock::connect(listen, pyro_proto::AGENT_PORT, Duration::from_secs(60))
            .await
            .unwrap();
    Session::client(conn, Config::default()).await.unwrap()
}

/// Runs a shell command in the guest and returns its stdout.
async fn sh(session: &Session, script: &str) -> String {
    let mut stdout = Vec::new();
    let r = api::exec(
        session,
        ExecRequest {
            command: Command::Shell(script.into()),
            cwd: None,
            env: Default::default(),
            timeout_ms: Some(60_000),
            max_output_bytes: None,
            stdin: false,
        },
        None,
        |out| {
            if let Output::Stdout(b) = out {
                stdout.extend_from_slice(&b);
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    String::from_utf8(stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_guest_is_restored_in_another_directory_and_greets_a_new_relay() {
    let Some((qemu_bin, cache, installed)) = prerequisites().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template");
    std::fs::create_dir_all(&template).unwrap();
    let upper = template.join("upper.ext4");
    cache.create_upper_disk(&upper, UPPER_MIB).unwrap();
    let mut opts = options(&qemu_bin, &template);
    opts.boot = Some(pyro_qemu::BootParams::without_clock());
    // Memory in a file the template writes through to and the clones map privately.
    let mem = template.join("mem.img");
    let with_memory = |upper: &Path, shared: bool| QemuSpec {
        memory_file: Some(pyro_qemu::MemoryFile {
            path: mem.clone(),
            shared,
        }),
        ..spec(&installed, upper)
    };
    let mut qemu = launch(&with_memory(&upper, true), &opts).await.unwrap();
    assert!(
        !qemu.argv().iter().any(|a| a.contains("pyro.clock")),
        "{:?}",
        qemu.argv()
    );
    let listen = template.join(RELAY_SOCKET);
    let relay = {
        let (agent_sock, listen) = (qemu.agent_socket_path(), listen.clone());
        tokio::spawn(async move { run_relay(&agent_sock, &listen, None).await })
    };
    let session = client(&listen).await;
    let marker = sh(
        &session,
        "echo before > /tmp/marker && sync && cat /tmp/marker",
    )
    .await;
    assert_eq!(marker, "before\n");
    // The host goes away; the agent waits for the next one with its hello pending.
    drop(session);
    relay.abort();
    let _ = relay.await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let state = template.join("state.bin");
    let info = qemu.save_state(&state).await.unwrap();
    assert_eq!(info.status.as_deref(), Some("completed"));
    let saved = std::fs::metadata(&state).unwrap();
    assert!(
        saved.len() < 4 << 20,
        "memory stays out of the stream: {} bytes",
        saved.len()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(saved.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        qemu.qmp().await.unwrap().query_status().await.unwrap(),
        "postmigrate"
    );
    let boot = qemu.boot_params();
    qemu.kill().await.unwrap();
    let mem_before = std::fs::read(&mem).unwrap();

    // Two clones, each in its own directory with its own copy of the disk.
    let mut clones = Vec::new();
    for name in ["clone1", "clone2"] {
        let workdir = dir.path().join(name);
        std::fs::create_dir_all(&workdir).unwrap();
        let disk = workdir.join("upper.ext4");
        std::fs::copy(&upper, &disk).unwrap();
        let mut opts = options(&qemu_bin, &workdir);
        opts.boot = Some(boot);
        opts.incoming = Some(state.clone());
        let t0 = Instant::now();
        let clone = launch(&with_memory(&disk, false), &opts).await.unwrap();
        let t_resumed = t0.elapsed();
        assert!(clone.argv().iter().any(|a| a.ends_with("share=off")));
        assert_eq!(
            clone.qmp().await.unwrap().query_status().await.unwrap(),
            "running"
        );
        let listen = workdir.join(RELAY_SOCKET);
        let relay = {
            let (agent_sock, listen) = (clone.agent_socket_path(), listen.clone());
            tokio::spawn(async move { run_relay(&agent_sock, &listen, None).await })
        };
        let session = client(&listen).await;
        let pong: PingResult = api::call(&session, &Request::Ping).await.unwrap();
        let t_ping = t0.elapsed();
        assert!(pong.pid1);
        assert_eq!(sh(&session, "cat /tmp/marker").await, "before\n");
        // Each clone writes to its own disk only.
        sh(&session, &format!("echo {name} > /{name} && sync")).await;
        eprintln!("TIMINGS (TCG): restore -> resumed {t_resumed:?}, -> first ping {t_ping:?}");
        clones.push((clone, relay, session));
    }
    for (i, (_, _, session)) in clones.iter().enumerate() {
        let other = if i == 0 { "clone2" } else { "clone1" };
        let seen = sh(session, &format!("cat /{other} 2>/dev/null || echo absent")).await;
        assert_eq!(seen, "absent\n");
    }
    for (mut clone, relay, session) in clones {
        drop(session);
        clone.kill().await.unwrap();
        let _ = relay.await;
    }
    assert!(
        std::fs::read(&mem).unwrap() == mem_before,
        "clones never write the memory file"
    );

    // A stream that does not fit is refused with QEMU's own words, and nothing is left.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let disk = bad.join("upper.ext4");
    std::fs::copy(&upper, &disk).unwrap();
    let truncated = dir.path().join("truncated.bin");
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let mut opts = options(&qemu_bin, &bad);
    opts.boot = Some(boot);
    opts.incoming = Some(truncated);
    let err = launch(&with_memory(&disk, false), &opts).await.unwrap_err();
    assert!(matches!(err, QemuError::Exited { .. }), "{err:?}");
    assert!(sockets_in(&bad).is_empty(), "{:?}", sockets_in(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qmp_quit_ends_qemu_and_its_sockets() {
    let Some((qemu_bin, cache, installed)) = prerequisites().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("upper.ext4");
    cache.create_upper_disk(&upper, UPPER_MIB).unwrap();
    let mut qemu = launch(&spec(&installed, &upper), &options(&qemu_bin, dir.path()))
        .await
        .unwrap();
    assert_eq!(qemu.try_wait().unwrap(), None);
    let mut qmp = qemu.qmp().await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap(), "running");
    qmp.quit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), qemu.wait())
        .await
        .expect("QEMU ignored quit")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!process_exists(qemu.pid()));
    assert!(
        sockets_in(dir.path()).is_empty(),
        "{:?}",
        sockets_in(dir.path())
    );
    // Killing an exited QEMU is harmless.
    assert!(qemu.kill().await.unwrap().success());
}

#[tokio::test]
async fn an_early_exit_reports_qemus_stderr() {
    let Ok(qemu_bin) = locate_qemu() else {
        eprintln!("\n!!! SKIPPED: no QEMU\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    let spec = QemuSpec {
        kernel: kernel.clone(),
        initrd: kernel,
        rootfs: dir.path().join("missing-rootfs.ext4"),
        upper: dir.path().join("missing-upper.ext4"),
        vcpu_count: 1,
        mem_mib: 64,
        accel: Accel::Tcg,
        extra_cmdline: String::new(),
        upper_cache_unsafe: false,
        memory_file: None,
        nic: None,
    };
    let err = launch(&spec, &options(&qemu_bin, &dir.path().join("w")))
        .await
        .unwrap_err();
    match &err {
        QemuError::Exited { stderr, .. } => {
            assert!(stderr.contains("missing-rootfs.ext4"), "{stderr}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(sockets_in(&dir.path().join("w")).is_empty());
}
