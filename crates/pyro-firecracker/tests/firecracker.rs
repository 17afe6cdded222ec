//! Integration tests: the API client and `configure` against a fake Firecracker API server,
//! `vsock::connect` against a fake hybrid-vsock server, and real Firecracker processes
//! booting a hand-assembled tiny guest (see `pyro_firecracker::tiny_guest`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyro_firecracker::api::{ApiClient, ApiError, Method};
use pyro_firecracker::binary::{self, Binaries};
use pyro_firecracker::tiny_guest::{self, Ending};
use pyro_firecracker::vmm::{self, DriveSpec, JailerMode, LaunchOptions, VmSpec, VmmError};
use pyro_firecracker::vsock::{self, VsockError};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

// ---------------------------------------------------------------------------------------
// Fake Firecracker API server
// ---------------------------------------------------------------------------------------

/// One request the fake server received.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    method: String,
    path: String,
    body: Value,
}

type Responder = Arc<dyn Fn(&Recorded) -> (u16, String) + Send + Sync>;

/// Serves HTTP/1.1 on a Unix socket, one request per connection, recording each.
struct FakeApi {
    socket: PathBuf,
    log: Arc<Mutex<Vec<Recorded>>>,
    _dir: tempfile::TempDir,
}

impl FakeApi {
    fn start(respond: Responder) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log2.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    let _ = serve_one(stream, &log, &*respond).await;
                });
            }
        });
        Self {
            socket,
            log,
            _dir: dir,
        }
    }

    fn ok() -> Self {
        Self::start(Arc::new(|_| (204, String::new())))
    }

    fn recorded(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    fn client(&self) -> ApiClient {
        ApiClient::new(self.socket.clone()).with_timeout(Duration::from_secs(2))
    }
}

async fn serve_one(
    stream: UnixStream,
    log: &Mutex<Vec<Recorded>>,
    respond: &(dyn Fn(&Recorded) -> (u16, String) + Send + Sync),
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    let rec = Recorded {
        method,
        path,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    log.lock().unwrap().push(rec.clone());
    let (status, body) = respond(&rec);
    let reply = if status == 204 {
        "HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n".to_owned()
    } else {
        format!(
            "HTTP/1.1 {status} X\r\nServer: Firecracker API\r\nContent-Type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut stream = reader.into_inner();
    stream.write_all(reply.as_bytes()).await?;
    // Keep the connection open like Firecracker does; the client must not wait for EOF.
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(())
}

fn rec(method: &str, path: &str, body: Value) -> Recorded {
    Recorded {
        method: method.into(),
        path: path.into(),
        body,
    }
}

fn sample_spec() -> VmSpec {
    VmSpec {
        kernel: "/k/vmlinux".into(),
        initrd: Some("/k/initrd.img".into()),
        boot_args: "console=ttyS0 quiet".into(),
        drives: vec![
            DriveSpec {
                id: "rootfs".into(),
                path: "/i/base.ext4".into(),
                read_only: true,
            },
            DriveSpec {
                id: "upper".into(),
                path: "/s/upper.ext4".into(),
                read_only: false,
            },
        ],
        vcpu_count: 2,
        mem_mib: 256,
        vsock_cid: Some(3),
        nic: None,
    }
}

#[tokio::test]
async fn configure_sends_exact_sequence_with_relative_paths() {
    let fake = FakeApi::ok();
    vmm::configure(&fake.client(), &sample_spec())
        .await
        .unwrap();
    assert_eq!(
        fake.recorded(),
        vec![
            rec(
                "PUT",
                "/machine-config",
                json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false})
            ),
            rec(
                "PUT",
                "/boot-source",
                json!({"kernel_image_path": "vmlinux", "initrd_path": "initrd",
                       "boot_args": "console=ttyS0 quiet"})
            ),
            rec(
                "PUT",
                "/drives/rootfs",
                json!({"drive_id": "rootfs", "path_on_host": "drive-rootfs.img",
                       "is_root_device": false, "is_read_only": true})
            ),
            rec(
                "PUT",
                "/drives/upper",
                json!({"drive_id": "upper", "path_on_host": "drive-upper.img",
                       "is_root_device": false, "is_read_only": false})
            ),
            rec(
                "PUT",
                "/vsock",
                json!({"guest_cid": 3, "uds_path": "vsock.sock"})
            ),
            rec("PUT", "/actions", json!({"action_type": "InstanceStart"})),
        ]
    );
}

#[tokio::test]
async fn configure_puts_the_network_interface_before_starting() {
    let fake = FakeApi::ok();
    let spec = VmSpec {
        nic: Some(pyro_firecracker::NicSpec {
            tap: "pyro-tap".into(),
            mac: [0x02, 0x70, 0x79, 0x00, 0x01, 0x2c],
        }),
        ..sample_spec()
    };
    vmm::configure(&fake.client(), &spec).await.unwrap();
    let recorded = fake.recorded();
    let n = recorded.len();
    assert_eq!(
        recorded[n - 2],
        rec(
            "PUT",
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "guest_mac": "02:70:79:00:01:2c", "host_dev_name": "pyro-tap"})
        )
    );
    assert_eq!(recorded[n - 1].path, "/actions");
}

#[tokio::test]
async fn configure_refuses_a_bad_tap_name_or_a_multicast_mac() {
    let fake = FakeApi::ok();
    for (tap, mac) in [
        ("pyro tap", [2u8, 0, 0, 0, 0, 1]),
        ("a-name-longer-than-15", [2, 0, 0, 0, 0, 1]),
        ("", [2, 0, 0, 0, 0, 1]),
        ("pyro-tap", [3, 0, 0, 0, 0, 1]),
    ] {
        let spec = VmSpec {
            nic: Some(pyro_firecracker::NicSpec {
                tap: tap.into(),
                mac,
            }),
            ..sample_spec()
        };
        let err = vmm::configure(&fake.client(), &spec).await.unwrap_err();
        assert!(matches!(err, VmmError::InvalidSpec { .. }), "{tap}: {err}");
    }
    assert!(fake.recorded().is_empty(), "nothing sent for a bad spec");
}

#[tokio::test]
async fn configure_without_initrd_drives_or_vsock() {
    let fake = FakeApi::ok();
    let spec = VmSpec {
        initrd: None,
        drives: vec![],
        vsock_cid: None,
        vcpu_count: 1,
        ..sample_spec()
    };
    vmm::configure(&fake.client(), &spec).await.unwrap();
    let paths: Vec<String> = fake.recorded().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/machine-config", "/boot-source", "/actions"]);
    assert_eq!(
        fake.recorded()[1].body,
        json!({"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0 quiet"})
    );
}

#[tokio::test]
async fn configure_rejects_invalid_specs_before_any_call() {
    let fake = FakeApi::ok();
    let mut bad_drive = sample_spec();
    bad_drive.drives[0].id = "../x".into();
    let mut dup = sample_spec();
    dup.drives[1].id = "rootfs".into();
    for spec in [
        VmSpec {
            vcpu_count: 3,
            ..sample_spec()
        },
        VmSpec {
            vcpu_count: 0,
            ..sample_spec()
        },
        VmSpec {
            vsock_cid: Some(2),
            ..sample_spec()
        },
        bad_drive,
        dup,
    ] {
        let err = vmm::configure(&fake.client(), &spec).await.unwrap_err();
        assert!(matches!(err, VmmError::InvalidSpec { .. }), "{err}");
    }
    assert!(fake.recorded().is_empty());
}

#[tokio::test]
async fn fault_message_becomes_status_error_and_stops_configure() {
    let fake = FakeApi::start(Arc::new(|r: &Recorded| {
        if r.path.starts_with("/drives/") {
            (
                400,
                r#"{"fault_message":"Unable to open drive-rootfs.img: No such file"}"#.into(),
            )
        } else {
            (204, String::new())
        }
    }));
    let err = vmm::configure(&fake.client(), &sample_spec())
        .await
        .unwrap_err();
    match err {
        VmmError::Api {
            step: "drives",
            source:
                ApiError::Status {
                    method,
                    path,
                    status,
                    fault_message,
                },
        } => {
            assert_eq!(method, Method::Put);
            assert_eq!(path, "/drives/rootfs");
            assert_eq!(status, 400);
            assert_eq!(
                fault_message,
                "Unable to open drive-rootfs.img: No such file"
            );
        }
        other => panic!("unexpected error: {other:?}"),
    }
    // Nothing after the failed drive was sent.
    assert_eq!(fake.recorded().len(), 3);
}

#[tokio::test]
async fn get_returns_json_and_patch_sends_body() {
    let fake = FakeApi::start(Arc::new(|r: &Recorded| match r.method.as_str() {
        "GET" => (
            200,
            r#"{"id":"anonymous-instance","state":"Running","vmm_version":"1.12.1"}"#.into(),
        ),
        _ => (204, String::new()),
    }));
    let c = fake.client();
    let v = c.get("/").await.unwrap();
    assert_eq!(v["state"], "Running");
    c.patch("/vm", &json!({"state": "Paused"})).await.unwrap();
    assert_eq!(
        fake.recorded()[1],
        rec("PATCH", "/vm", json!({"state": "Paused"}))
    );
}

/// A one-shot server that answers every connection with fixed bytes.
async fn raw_server(reply: &'static [u8], close: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("raw.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
                if !close {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            });
        }
    });
    (dir, socket)
}

#[tokio::test]
async fn chunked_and_garbage_responses_are_errors() {
    let (_d, sock) = raw_server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        true,
    )
    .await;
    let err = ApiClient::new(sock).get("/").await.unwrap_err();
    assert!(
        matches!(err, ApiError::ChunkedUnsupported { .. }),
        "{err:?}"
    );

    let (_d, sock) = raw_server(b"SSH-2.0-OpenSSH\r\n\r\n", true).await;
    let err = ApiClient::new(sock).get("/").await.unwrap_err();
    assert!(matches!(err, ApiError::Malformed { .. }), "{err:?}");

    let (_d, sock) = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true).await;
    let err = ApiClient::new(sock).get("/").await.unwrap_err();
    assert!(matches!(err, ApiError::Malformed { .. }), "{err:?}");

    let (_d, sock) = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", true).await;
    let err = ApiClient::new(sock).get("/").await.unwrap_err();
    assert!(matches!(err, ApiError::Json { .. }), "{err:?}");

    // Non-JSON error bodies are kept as text.
    let (_d, sock) = raw_server(
        b"HTTP/1.1 500 Internal\r\nContent-Length: 4\r\n\r\noops",
        true,
    )
    .await;
    let err = ApiClient::new(sock)
        .put("/x", &json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Status { status: 500, fault_message, .. } if fault_message == "oops"),
        "{err:?}"
    );
}

#[tokio::test]
async fn silent_server_times_out() {
    let (_d, sock) = raw_server(b"", false).await;
    let started = Instant::now();
    let err = ApiClient::new(sock)
        .with_timeout(Duration::from_millis(200))
        .get("/")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Timeout {
                method: Method::Get,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------
// Fake hybrid vsock
// ---------------------------------------------------------------------------------------

/// Accepts connections, reads `CONNECT <port>\n`, answers `reply`, then echoes.
fn spawn_hybrid(listener: UnixListener, reply: &'static str) {
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let mut line = String::new();
                if r.read_line(&mut line).await.is_err() || !line.starts_with("CONNECT ") {
                    return;
                }
                let mut s = r.into_inner();
                // Reply and the first application bytes in one write: connect must not
                // swallow what follows the newline.
                let _ = s.write_all(format!("{reply}greeting").as_bytes()).await;
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[tokio::test]
async fn vsock_ok_reply_hands_over_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    spawn_hybrid(UnixListener::bind(&uds).unwrap(), "OK 1073741824\n");
    let mut s = vsock::connect(&uds, 52, Duration::from_secs(2))
        .await
        .unwrap();
    let mut greet = [0u8; 8];
    s.read_exact(&mut greet).await.unwrap();
    assert_eq!(&greet, b"greeting");
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test]
async fn vsock_error_reply_is_rejected_without_retry() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    spawn_hybrid(UnixListener::bind(&uds).unwrap(), "ERR no listener\n");
    let started = Instant::now();
    let err = vsock::connect(&uds, 52, Duration::from_secs(5))
        .await
        .unwrap_err();
    match &err {
        VsockError::Rejected { port, reply, .. } => {
            assert_eq!(*port, 52);
            assert_eq!(reply, "ERR no listener");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    // "OK" without the space is not the contract.
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    spawn_hybrid(UnixListener::bind(&uds).unwrap(), "OKAY\n");
    let err = vsock::connect(&uds, 1, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, VsockError::Rejected { .. }), "{err:?}");
}

#[tokio::test]
async fn vsock_overlong_reply_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let long: &'static str = Box::leak("X".repeat(100).into_boxed_str());
    spawn_hybrid(UnixListener::bind(&uds).unwrap(), long);
    let err = vsock::connect(&uds, 1, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, VsockError::ReplyTooLong { .. }), "{err:?}");
}

#[tokio::test]
async fn vsock_retries_until_a_late_listener_answers() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("late.sock");
    let uds2 = uds.clone();
    // First a listener that hangs up before replying (like Firecracker when the guest is not
    // listening yet), then the real one.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let l = UnixListener::bind(&uds2).unwrap();
        for _ in 0..3 {
            let (s, _) = l.accept().await.unwrap();
            drop(s);
        }
        spawn_hybrid(l, "OK 5\n");
    });
    let started = Instant::now();
    let mut s = vsock::connect(&uds, 1024, Duration::from_secs(3))
        .await
        .unwrap();
    let mut greet = [0u8; 8];
    s.read_exact(&mut greet).await.unwrap();
    assert_eq!(&greet, b"greeting");
    assert!(started.elapsed() >= Duration::from_millis(60));
}

#[tokio::test]
async fn vsock_deadline_names_socket_port_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("never.sock");
    let started = Instant::now();
    let err = vsock::connect(&uds, 7, Duration::from_millis(150))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    match &err {
        VsockError::Timeout {
            socket,
            port,
            attempts,
            last_cause,
            ..
        } => {
            assert_eq!(socket, &uds);
            assert_eq!(*port, 7);
            assert!(*attempts >= 3, "attempts {attempts}");
            assert!(last_cause.contains("connect"), "{last_cause}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(elapsed >= Duration::from_millis(150) && elapsed < Duration::from_secs(1));
    let msg = err.to_string();
    assert!(
        msg.contains("never.sock") && msg.contains("port 7"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------
// Real Firecracker
// ---------------------------------------------------------------------------------------

const MARKER: &str = "PYRO-TINY-OK";

/// The binaries for real tests, provisioning them once into a shared cache; `None` (with
/// the reason printed) when this host has no /dev/kvm.
fn real_binaries() -> Option<Binaries> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipping: /dev/kvm does not exist on this host");
        return None;
    }
    let cache = std::env::var_os("PYRO_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/pyro-test-cache"));
    match binary::locate(&cache) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("locate: {e}; provisioning into {}", cache.display());
            Some(binary::provision(&cache, &mut |m| eprintln!("provision: {m}")).unwrap())
        }
    }
}

/// A directory holding guest files, on the same filesystem as the sandboxes.
struct Fixture {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    ro_drive: PathBuf,
    rw_drive: PathBuf,
}

fn fixture(ending: Ending) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("tiny.elf");
    std::fs::write(
        &kernel,
        tiny_guest::elf(format!("{MARKER}\n").as_bytes(), ending),
    )
    .unwrap();
    let ro_drive = dir.path().join("ro.img");
    std::fs::write(&ro_drive, vec![0u8; 64 * 1024]).unwrap();
    let rw_drive = dir.path().join("rw.img");
    std::fs::write(&rw_drive, vec![0u8; 64 * 1024]).unwrap();
    Fixture {
        dir,
        kernel,
        ro_drive,
        rw_drive,
    }
}

impl Fixture {
    fn spec(&self) -> VmSpec {
        VmSpec {
            kernel: self.kernel.clone(),
            initrd: None,
            boot_args: "console=ttyS0".into(),
            drives: self.drives(),
            vcpu_count: 1,
            mem_mib: 16,
            vsock_cid: Some(3),
            nic: None,
        }
    }

    fn drives(&self) -> Vec<DriveSpec> {
        vec![
            DriveSpec {
                id: "base".into(),
                path: self.ro_drive.clone(),
                read_only: true,
            },
            DriveSpec {
                id: "upper".into(),
                path: self.rw_drive.clone(),
                read_only: false,
            },
        ]
    }

    fn workdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

fn options(binaries: &Binaries, workdir: PathBuf, jailer: JailerMode) -> LaunchOptions {
    LaunchOptions {
        binaries: binaries.clone(),
        workdir,
        jailer,
        die_with_parent: true,
        new_session: false,
        netns: None,
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Boots the print-and-reset guest and returns the time from launch to process exit.
async fn boot_and_exit(
    binaries: &Binaries,
    fx: &Fixture,
    workdir: PathBuf,
    mode: JailerMode,
) -> Duration {
    let opts = options(binaries, workdir, mode);
    let started = Instant::now();
    let mut fc = vmm::launch(&fx.spec(), &opts).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), fc.wait())
        .await
        .expect("guest did not reset within 20 s")
        .unwrap();
    let elapsed = started.elapsed();
    let console = std::fs::read_to_string(fc.console_path()).unwrap();
    assert!(
        console.contains(MARKER),
        "status {status}; console:\n{console}\nlog:\n{}",
        std::fs::read_to_string(fc.log_path()).unwrap_or_default()
    );
    // The writable drive is the caller's file, linked, never copied.
    assert!(same_file(
        &fc.root_dir().join(vmm::drive_file_name("upper")),
        &fx.rw_drive
    ));
    elapsed
}

#[tokio::test]
async fn real_tiny_guest_prints_and_exits() {
    let Some(bins) = real_binaries() else { return };
    let fx = fixture(Ending::Reset);
    let elapsed = boot_and_exit(&bins, &fx, fx.workdir("sandbox"), JailerMode::Never).await;
    eprintln!(
        "tiny guest launch→exit: {:.1} ms",
        elapsed.as_secs_f64() * 1e3
    );
}

#[tokio::test]
async fn real_tiny_guest_under_jailer() {
    let Some(bins) = real_binaries() else { return };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || bins.jailer.is_none() {
        eprintln!("skipping: the jailer needs root and a jailer binary");
        return;
    }
    let fx = fixture(Ending::Reset);
    let workdir = fx.workdir("jailed");
    let opts = options(&bins, workdir.clone(), JailerMode::Always);
    let root = opts.root_dir().unwrap();
    assert!(root.starts_with(workdir.join("jail").join("firecracker")));
    let elapsed = boot_and_exit(&bins, &fx, workdir.clone(), JailerMode::Always).await;
    eprintln!(
        "jailed tiny guest launch→exit: {:.1} ms",
        elapsed.as_secs_f64() * 1e3
    );
    // The jailer's chroot holds the staged files and the sockets.
    assert!(root.join("vmlinux").exists());
    assert!(root.join("dev/kvm").exists());
    assert!(workdir.join("console.log").exists());
}

#[tokio::test]
async fn real_writable_drive_is_never_copied_across_filesystems() {
    let Some(bins) = real_binaries() else { return };
    // /dev/shm is tmpfs: a different filesystem from the fixture's directory.
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("skipping: no /dev/shm");
        return;
    };
    let fx = fixture(Ending::Reset);
    let mut spec = fx.spec();
    spec.drives[1].path = shm.path().join("rw.img");
    std::fs::write(&spec.drives[1].path, [0u8; 4096]).unwrap();
    if same_dev(shm.path(), fx.dir.path()) {
        eprintln!("skipping: /dev/shm is on the same filesystem");
        return;
    }
    let opts = options(&bins, fx.workdir("xdev"), JailerMode::Never);
    let err = vmm::launch(&spec, &opts).await.unwrap_err();
    assert!(
        matches!(err, VmmError::WritableDriveNotLinkable { ref drive, .. } if drive == "upper"),
        "{err:?}"
    );
    // A read-only drive from another filesystem is copied instead.
    spec.drives[1].read_only = true;
    let mut fc = vmm::launch(&spec, &opts).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), fc.wait())
        .await
        .unwrap()
        .unwrap();
}

fn same_dev(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(a).unwrap().dev() == std::fs::metadata(b).unwrap().dev()
}

#[tokio::test]
async fn real_early_exit_reports_logs() {
    let Some(bins) = real_binaries() else { return };
    let fx = fixture(Ending::Reset);
    let workdir = fx.workdir("bad");
    // Firecracker refuses an unknown flag and exits before opening its socket.
    let fake_fc = fx.dir.path().join("firecracker-wrapper");
    std::fs::write(
        &fake_fc,
        format!(
            "#!/bin/sh\necho wrapper-was-here\nexec {} --no-such-flag \"$@\"\n",
            bins.firecracker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake_fc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let b = Binaries {
        firecracker: fake_fc,
        jailer: None,
        source: binary::BinarySource::Env,
    };
    let err = vmm::launch(&fx.spec(), &options(&b, workdir, JailerMode::Auto))
        .await
        .unwrap_err();
    match &err {
        VmmError::ExitedEarly { console_tail, .. } => {
            assert!(console_tail.contains("wrapper-was-here"), "{console_tail}");
            assert!(console_tail.contains("no-such-flag"), "{console_tail}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn wait_for_console(path: &Path, needle: &str) {
    let started = Instant::now();
    loop {
        if std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{needle:?} never appeared in {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn real_snapshot_and_restore_into_new_sandboxes() {
    let Some(bins) = real_binaries() else { return };
    let fx = fixture(Ending::Halt);
    let a = fx.workdir("a");
    let mut fc = vmm::launch(&fx.spec(), &options(&bins, a.clone(), JailerMode::Never))
        .await
        .unwrap();
    wait_for_console(&fc.console_path(), MARKER).await;
    assert_eq!(fc.api().get("/").await.unwrap()["state"], "Running");
    assert!(fc.vsock_path().exists(), "vsock socket missing");

    // Nothing listens on a vsock port in this guest: Firecracker hangs up, connect retries
    // and reports the deadline.
    let err = vsock::connect(&fc.vsock_path(), 52, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, VsockError::Timeout { .. }), "{err:?}");

    let t = Instant::now();
    fc.pause().await.unwrap();
    let pause = t.elapsed();
    assert_eq!(fc.api().get("/").await.unwrap()["state"], "Paused");
    let t = Instant::now();
    fc.snapshot_create(Path::new("snap.state"), Path::new("snap.mem"))
        .await
        .unwrap();
    let snap = t.elapsed();
    fc.kill().await.unwrap();
    assert_eq!(
        std::fs::metadata(a.join("snap.mem")).unwrap().len(),
        16 << 20
    );

    let mut modes = vec![JailerMode::Never];
    // SAFETY: geteuid has no preconditions.
    if bins.jailer.is_some() && unsafe { libc::geteuid() } == 0 {
        modes.push(JailerMode::Always);
    }
    for (i, mode) in modes.into_iter().enumerate() {
        let b = fx.workdir(&format!("b{i}"));
        let opts = options(&bins, b.clone(), mode);
        vmm::stage_drives(&opts, &fx.drives()).unwrap();
        let t = Instant::now();
        let mut restored = vmm::restore(&a.join("snap.state"), &a.join("snap.mem"), &opts)
            .await
            .unwrap();
        let restore = t.elapsed();
        let info = restored.api().get("/").await.unwrap();
        assert_eq!(info["state"], "Running", "{info}");
        assert!(restored.try_wait().unwrap().is_none());
        // The vsock socket was re-created relative to the new sandbox.
        let vsock_path = restored.vsock_path();
        assert!(vsock_path.starts_with(&b), "{}", vsock_path.display());
        assert!(vsock_path.exists());
        assert_eq!(restored.jailed(), mode == JailerMode::Always);
        // Still controllable: pause and resume the restored VM.
        restored.pause().await.unwrap();
        restored.resume().await.unwrap();
        restored.kill().await.unwrap();
        eprintln!(
            "pause {:.1} ms, snapshot {:.1} ms, restore ({mode:?}) {:.1} ms",
            pause.as_secs_f64() * 1e3,
            snap.as_secs_f64() * 1e3,
            restore.as_secs_f64() * 1e3
        );
    }
}

#[tokio::test]
async fn real_kill_reaps_a_running_vm() {
    let Some(bins) = real_binaries() else { return };
    let fx = fixture(Ending::Halt);
    let mut fc = vmm::launch(
        &fx.spec(),
        &options(&bins, fx.workdir("k"), JailerMode::Never),
    )
    .await
    .unwrap();
    let pid = fc.pid();
    assert!(fc.try_wait().unwrap().is_none());
    let status = fc.kill().await.unwrap();
    assert!(!status.success());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

/// Not a timing assertion: prints the median of 10 launches (process start to exit).
#[tokio::test]
async fn real_tiny_guest_launch_median() {
    let Some(bins) = real_binaries() else { return };
    let fx = fixture(Ending::Reset);
    let mut times = Vec::new();
    for i in 0..10 {
        times
            .push(boot_and_exit(&bins, &fx, fx.workdir(&format!("m{i}")), JailerMode::Never).await);
    }
    times.sort();
    eprintln!(
        "tiny guest launch→exit over 10 runs: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        times[5].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[9].as_secs_f64() * 1e3
    );
}
