//! The Firecracker backend's warm-snapshot path against a stand-in VMM process.
//!
//! No Linux guest boots under Firecracker on the build machines (paravirtual KVM), so the
//! backend's snapshot methods are driven here against a small Python program that takes
//! Firecracker's place: it serves the API socket, records every request, and does what
//! Firecracker does on the file system (writes the snapshot files, expects the drives to be
//! staged before a load). The real Firecracker process is exercised by the `pyro-firecracker`
//! tests (tiny guest: launch, pause, full snapshot, load and resume into new sandboxes).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pyro_core::backend::{Backend, BootSpec, FC_MEMORY_FILE, FC_STATE_FILE, FirecrackerBackend};
use serde_json::{Value, json};

/// The stand-in: `fake-firecracker --log-path L --level Info --api-sock S`, in the sandbox
/// root. One request per connection (as pyro's client sends them), answered 204.
const FAKE_FIRECRACKER: &str = r#"#!/usr/bin/env python3
import json, os, socket, sys
RECORD = sys.argv[1]
args = sys.argv[2:]
sock_path = args[args.index("--api-sock") + 1]
open(args[args.index("--log-path") + 1], "a").close()
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sock_path)
srv.listen(8)
while True:
    conn, _ = srv.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    if b"\r\n\r\n" not in data:
        conn.close()
        continue
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    while len(body) < length:
        body += conn.recv(65536)
    parsed = json.loads(body) if body else None
    entry = {"method": method, "path": path, "body": parsed}
    if path == "/snapshot/create":
        with open(parsed["snapshot_path"], "wb") as f:
            f.write(b"device state")
        with open(parsed["mem_file_path"], "wb") as f:
            f.write(b"\0" * 65536)
    if path == "/snapshot/load":
        entry["files_at_load"] = sorted(os.listdir("."))
        entry["state_readable"] = os.path.isfile(parsed["snapshot_path"])
        entry["memory_readable"] = os.path.isfile(parsed["mem_backend"]["backend_path"])
    with open(RECORD, "a") as f:
        f.write(json.dumps(entry) + "\n")
    conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    conn.close()
"#;

struct Fixture {
    dir: tempfile::TempDir,
    env: pyro_image::Installed,
    backend: FirecrackerBackend,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("requests.jsonl");
        let script = dir.path().join("fake-firecracker-impl");
        std::fs::write(&script, FAKE_FIRECRACKER).unwrap();
        // Firecracker's own arguments follow; the record file comes first.
        let wrapper = dir.path().join("firecracker");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec python3 {} {} \"$@\"\n",
                script.display(),
                record.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let artifacts = dir.path().join("env");
        std::fs::create_dir(&artifacts).unwrap();
        for name in ["vmlinux", "initramfs", "rootfs.ext4", "manifest.json"] {
            std::fs::write(artifacts.join(name), name).unwrap();
        }
        let env = pyro_image::Installed {
            name: "debian:12".into(),
            version: "1.0.0".into(),
            kernel: artifacts.join("vmlinux"),
            initramfs: artifacts.join("initramfs"),
            rootfs: artifacts.join("rootfs.ext4"),
            manifest: artifacts.join("manifest.json"),
            kernel_release: "6.1.0-test".into(),
            digests: pyro_image::Digests {
                kernel: "k".into(),
                initramfs: "i".into(),
                rootfs: "r".into(),
                agent: "a".into(),
                rootfs_agent: "a".into(),
            },
        };
        let backend = FirecrackerBackend::with_binaries(pyro_firecracker::Binaries {
            firecracker: wrapper,
            jailer: None,
            source: pyro_firecracker::BinarySource::Env,
        });
        Self { dir, env, backend }
    }

    /// A sandbox directory with a writable disk.
    fn sandbox(&self, name: &str) -> (PathBuf, PathBuf) {
        let work = self.dir.path().join(name);
        std::fs::create_dir(&work).unwrap();
        let upper = work.join("upper.ext4");
        std::fs::write(&upper, format!("disk of {name}")).unwrap();
        (work, upper)
    }

    fn spec<'a>(&'a self, work: &'a Path, upper: &'a Path, mem_mib: u32) -> BootSpec<'a> {
        BootSpec {
            id: "fc-test",
            workdir: work,
            env: &self.env,
            upper,
            vcpu_count: 1,
            mem_mib,
            persistent: false,
            durable_disk: false,
            relay_bin: None,
            boot_timeout: Duration::from_secs(5),
            net: None,
        }
    }

    /// The requests recorded since the last call.
    fn take_requests(&self) -> Vec<Value> {
        let path = self.dir.path().join("requests.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn same_inode(a: &Path, b: &Path) -> bool {
    let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[test]
fn a_template_is_booted_without_a_clock_paused_and_saved_next_to_its_disk() {
    let fx = Fixture::new();
    let (work, upper) = fx.sandbox("template");
    rt().block_on(async {
        let mut machine = fx
            .backend
            .boot_for_snapshot(fx.spec(&work, &upper, 256))
            .await
            .unwrap();
        let boot = fx.take_requests();
        let paths: Vec<&str> = boot.iter().map(|r| r["path"].as_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/machine-config",
                "/boot-source",
                "/drives/rootfs",
                "/drives/upper",
                "/vsock",
                "/actions"
            ]
        );
        let args = boot[1]["body"]["boot_args"].as_str().unwrap();
        assert!(
            !args.contains("pyro.clock="),
            "a template's command line carries no boot-time clock: {args}"
        );
        assert_eq!(
            boot[4]["body"],
            json!({"guest_cid": 3, "uds_path": "vsock.sock"})
        );
        assert_eq!(boot[3]["body"]["path_on_host"], "drive-upper.img");
        assert!(same_inode(&upper, &work.join("drive-upper.img")));
        assert_eq!(socket_of(machine.as_ref()), work.join("vsock.sock"));

        machine.save_state(&work).await.unwrap();
        let save = fx.take_requests();
        assert_eq!(save.len(), 2, "{save:?}");
        assert_eq!(save[0]["method"], "PATCH");
        assert_eq!(save[0]["path"], "/vm");
        assert_eq!(save[0]["body"], json!({"state": "Paused"}));
        assert_eq!(save[1]["method"], "PUT");
        assert_eq!(save[1]["path"], "/snapshot/create");
        assert_eq!(
            save[1]["body"],
            json!({
                "snapshot_type": "Full",
                "snapshot_path": FC_STATE_FILE,
                "mem_file_path": FC_MEMORY_FILE
            })
        );
        assert!(work.join(FC_STATE_FILE).is_file());
        assert!(work.join(FC_MEMORY_FILE).is_file());
        // The staged links are gone (the disk template itself stays).
        for name in ["vmlinux", "initrd", "drive-rootfs.img", "drive-upper.img"] {
            assert!(!work.join(name).exists(), "{name} left in the snapshot");
        }
        assert_eq!(std::fs::read_to_string(&upper).unwrap(), "disk of template");
        machine.halt().await;
        assert!(!machine.is_alive());
    });
}

#[test]
fn a_clone_stages_its_own_disk_and_loads_the_snapshot_resumed() {
    let fx = Fixture::new();
    let (template, t_upper) = fx.sandbox("template");
    let (clone, c_upper) = fx.sandbox("clone");
    rt().block_on(async {
        let mut t = fx
            .backend
            .boot_for_snapshot(fx.spec(&template, &t_upper, 256))
            .await
            .unwrap();
        t.save_state(&template).await.unwrap();
        t.halt().await;
        fx.take_requests();

        let mut c = fx
            .backend
            .restore(fx.spec(&clone, &c_upper, 256), &template)
            .await
            .unwrap();
        let load = fx.take_requests();
        assert_eq!(load.len(), 1, "a restore configures nothing else: {load:?}");
        assert_eq!(load[0]["method"], "PUT");
        assert_eq!(load[0]["path"], "/snapshot/load");
        let body = &load[0]["body"];
        let abs = |name: &str| {
            std::fs::canonicalize(template.join(name))
                .unwrap()
                .display()
                .to_string()
        };
        assert_eq!(body["snapshot_path"], abs(FC_STATE_FILE));
        assert_eq!(
            body["mem_backend"],
            json!({"backend_type": "File", "backend_path": abs(FC_MEMORY_FILE)})
        );
        assert_eq!(body["resume_vm"], true);
        assert_eq!(load[0]["state_readable"], true);
        assert_eq!(load[0]["memory_readable"], true);
        // The drives the snapshot names relatively were staged in the clone before the
        // load: its own disk (linked, never copied) and the root filesystem.
        let files: Vec<&str> = load[0]["files_at_load"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(files.contains(&"drive-upper.img"), "{files:?}");
        assert!(files.contains(&"drive-rootfs.img"), "{files:?}");
        assert!(same_inode(&c_upper, &clone.join("drive-upper.img")));
        assert!(!same_inode(&c_upper, &t_upper));
        assert_eq!(socket_of(c.as_ref()), clone.join("vsock.sock"));
        // A restored machine is not itself a template.
        let err = c.save_state(&clone).await.unwrap_err().to_string();
        assert!(err.contains("not booted to be snapshotted"), "{err}");
        assert!(
            fx.take_requests().is_empty(),
            "the refusal made no API call"
        );
        c.halt().await;
    });
}

#[test]
fn an_ordinary_boot_has_a_clock_cannot_be_saved_and_pauses() {
    let fx = Fixture::new();
    let (work, upper) = fx.sandbox("plain");
    rt().block_on(async {
        let mut m = fx.backend.boot(fx.spec(&work, &upper, 256)).await.unwrap();
        let boot = fx.take_requests();
        let args = boot[1]["body"]["boot_args"].as_str().unwrap();
        assert!(args.contains("pyro.clock="), "{args}");
        let err = m.save_state(&work).await.unwrap_err().to_string();
        assert!(err.contains("not booted to be snapshotted"), "{err}");
        assert!(fx.take_requests().is_empty());
        // Pause and resume (the pre-warmed pool) are the VM state calls.
        m.pause().await.unwrap();
        m.resume().await.unwrap();
        let calls: Vec<(String, String, Value)> = fx
            .take_requests()
            .into_iter()
            .map(|r| {
                (
                    r["method"].as_str().unwrap().to_string(),
                    r["path"].as_str().unwrap().to_string(),
                    r["body"].clone(),
                )
            })
            .collect();
        assert_eq!(
            calls,
            [
                ("PATCH".into(), "/vm".into(), json!({"state": "Paused"})),
                ("PATCH".into(), "/vm".into(), json!({"state": "Resumed"})),
            ]
        );
        m.halt().await;
    });
}

#[test]
fn the_snapshot_identity_follows_the_machine_and_not_the_sandbox() {
    let fx = Fixture::new();
    let (a, a_upper) = fx.sandbox("a");
    let (b, b_upper) = fx.sandbox("b");
    let id = |spec: BootSpec<'_>| fx.backend.snapshot_identity(&spec).unwrap();
    let base = id(fx.spec(&a, &a_upper, 256));
    assert!(!base.contains("pyro.clock"), "{base}");
    assert!(base.starts_with("firecracker "), "{base}");
    assert_eq!(
        base,
        id(fx.spec(&b, &b_upper, 256)),
        "sandbox paths are not part of it"
    );
    assert_ne!(base, id(fx.spec(&a, &a_upper, 512)));
    let mut durable = fx.spec(&a, &a_upper, 256);
    durable.durable_disk = true;
    assert_ne!(base, id(durable));
    let mut two = fx.spec(&a, &a_upper, 256);
    two.vcpu_count = 2;
    assert_ne!(base, id(two));
}

/// The agent socket a machine's record names.
fn socket_of(machine: &dyn pyro_core::backend::Machine) -> std::path::PathBuf {
    let rec = serde_json::to_value(machine.record()).unwrap();
    std::path::PathBuf::from(rec["socket"].as_str().unwrap())
}

/// A workspace's machine is snapshotted from a later process (its record attached):
/// paused, saved through its API socket into the snapshot directory, resumed; a fork or a
/// `reset --snapshot` loads that directory into another sandbox.
#[test]
fn a_workspace_machine_is_saved_through_its_record_and_restored_elsewhere() {
    let fx = Fixture::new();
    let (ws, ws_upper) = fx.sandbox("workspace");
    let (fork, fork_upper) = fx.sandbox("fork");
    let snap = fx.dir.path().join("snap");
    std::fs::create_dir(&snap).unwrap();
    rt().block_on(async {
        assert!(fx.backend.boots_recorded());
        let m = fx
            .backend
            .boot_recorded(fx.spec(&ws, &ws_upper, 256))
            .await
            .unwrap();
        let boot = fx.take_requests();
        let args = boot[1]["body"]["boot_args"].as_str().unwrap();
        assert!(!args.contains("pyro.clock="), "{args}");
        // Another process finds it again by its record.
        let mut attached = pyro_core::backend::attach(&m.record());
        attached.save_state(&snap).await.unwrap();
        attached.resume().await.unwrap();
        let calls: Vec<(String, String, Value)> = fx
            .take_requests()
            .into_iter()
            .map(|r| {
                (
                    r["method"].as_str().unwrap().to_string(),
                    r["path"].as_str().unwrap().to_string(),
                    r["body"].clone(),
                )
            })
            .collect();
        assert_eq!(
            calls,
            [
                ("PATCH".into(), "/vm".into(), json!({"state": "Paused"})),
                (
                    "PUT".into(),
                    "/snapshot/create".into(),
                    json!({"snapshot_type": "Full", "snapshot_path": FC_STATE_FILE, "mem_file_path": FC_MEMORY_FILE})
                ),
                ("PATCH".into(), "/vm".into(), json!({"state": "Resumed"})),
            ]
        );
        // The files were moved into the snapshot directory, none left in the sandbox.
        for name in [FC_STATE_FILE, FC_MEMORY_FILE] {
            assert!(snap.join(name).is_file(), "{name}");
            assert!(!ws.join(name).exists(), "{name}");
        }
        let mut f = fx
            .backend
            .restore(fx.spec(&fork, &fork_upper, 256), &snap)
            .await
            .unwrap();
        let load = fx.take_requests();
        assert_eq!(load.len(), 1, "{load:?}");
        assert_eq!(load[0]["path"], "/snapshot/load");
        assert_eq!(load[0]["state_readable"], true);
        assert_eq!(load[0]["memory_readable"], true);
        assert!(same_inode(&fork_upper, &fork.join("drive-upper.img")));
        f.halt().await;
        attached.halt().await;
    });
}
