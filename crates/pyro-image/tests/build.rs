//! Real builds against the Debian mirror.
//!
//! `kernel_step_produces_a_pvh_bootable_vmlinux` always runs (about 10 s: it downloads and
//! unpacks `linux-image-amd64`). The full environment build (about 30 s more) runs only with
//! `PYRO_IMAGE_FULL_TEST=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pyro_image::{Cache, Progress, kernel};

fn have(tool: &str) -> bool {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

/// Any existing executable will do as the "agent": these tests do not boot it.
fn dummy_agent() -> PathBuf {
    [
        "/bin/busybox",
        "/usr/bin/busybox",
        "/bin/true",
        "/usr/bin/true",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .expect("some executable to stand in for the agent")
}

fn debugfs(image: &Path, request: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs) is installed");
    assert!(out.status.success(), "debugfs {request}");
    out.stdout
}

#[test]
fn kernel_step_produces_a_pvh_bootable_vmlinux() {
    if !have("mmdebstrap") {
        eprintln!("skipping: mmdebstrap is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().to_owned()).unwrap();
    let t = Instant::now();
    let mut phases = Vec::new();
    let k = pyro_image::ensure_kernel(&cache, &mut |p: Progress| {
        eprintln!("{:6.2}s {}", p.elapsed.as_secs_f64(), p.message);
        phases.push(p)
    })
    .unwrap();
    eprintln!("kernel step: {:.1} s", t.elapsed().as_secs_f64());
    assert!(phases.iter().all(|p| p.phase == "kernel" && p.step == 1));

    let vmlinux = cache.blob_path(&k.vmlinux.sha256);
    let elf = kernel::check_pvh_elf(&mut fs::File::open(&vmlinux).unwrap()).unwrap();
    assert!(elf.pvh_entry > 0);
    assert!(k.kernel_release.ends_with("-amd64"), "{}", k.kernel_release);
    let names: Vec<&str> = k.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, kernel::all_modules().collect::<Vec<_>>());
    for m in &k.modules {
        let bytes = fs::read(cache.blob_path(&m.artifact.sha256)).unwrap();
        assert!(
            bytes.starts_with(b"\x7fELF"),
            "{} is not a plain .ko",
            m.name
        );
    }
    // The build directory is gone and a second call is served from the cache.
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    let mut rebuilt = false;
    let again =
        pyro_image::ensure_kernel(&cache, &mut |p| rebuilt |= !p.message.contains("cached"))
            .unwrap();
    assert_eq!(again, k);
    assert!(!rebuilt, "the second call rebuilt the kernel");
}

#[test]
fn full_environment_build() {
    if std::env::var("PYRO_IMAGE_FULL_TEST").as_deref() != Ok("1") {
        eprintln!("skipping: set PYRO_IMAGE_FULL_TEST=1 to build debian:12 for real");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().to_owned()).unwrap();
    let agent = dummy_agent();

    // Two concurrent pulls of the same environment: one builds, the other waits.
    let log: Arc<Mutex<Vec<(usize, Progress)>>> = Arc::default();
    let t = Instant::now();
    let results: Vec<_> = (0..2)
        .map(|i| {
            let (cache, agent, log) = (cache.clone(), agent.clone(), log.clone());
            std::thread::spawn(move || {
                pyro_image::ensure_environment(&cache, "debian:12", &agent, &mut |p| {
                    eprintln!(
                        "[{i}] [{}/{}] {:>9} {:6.1}s {}",
                        p.step,
                        p.total,
                        p.phase,
                        p.elapsed.as_secs_f64(),
                        p.message
                    );
                    log.lock().unwrap().push((i, p));
                })
                .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    eprintln!("debian:12 pull: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(results[0], results[1]);
    let inst = &results[0];
    let log = log.lock().unwrap();
    let bootstraps = log
        .iter()
        .filter(|(_, p)| p.message.starts_with("bootstrapping debian:12"))
        .count();
    assert_eq!(bootstraps, 1, "the rootfs was built more than once");
    for phase in ["kernel", "bootstrap", "mkfs", "hash", "initramfs", "ready"] {
        assert!(
            log.iter().any(|(_, p)| p.phase == phase),
            "no {phase} progress"
        );
    }

    // The image: label, agent, hostname, workspace.
    let label = Command::new("e2label").arg(&inst.rootfs).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "pyro-rootfs");
    assert_eq!(debugfs(&inst.rootfs, "cat /etc/hostname"), b"pyro\n");
    assert_eq!(
        debugfs(&inst.rootfs, "cat /opt/pyro/bin/pyro-agent"),
        fs::read(&agent).unwrap()
    );
    let stat = String::from_utf8_lossy(&debugfs(&inst.rootfs, "stat /opt/pyro/bin/pyro-agent"))
        .into_owned();
    assert!(stat.contains("Mode:  0755"), "{stat}");
    let stat = String::from_utf8_lossy(&debugfs(&inst.rootfs, "stat /workspace")).into_owned();
    assert!(stat.contains("Type: directory"), "{stat}");
    let ls = String::from_utf8_lossy(&debugfs(&inst.rootfs, "ls -l /usr/bin")).into_owned();
    assert!(ls.contains(" git"), "git missing from /usr/bin");

    // Installed: a repeat pull returns at once; verify re-hashes everything.
    let t = Instant::now();
    let again = pyro_image::ensure_environment(&cache, "debian:12", &agent, &mut |_| {}).unwrap();
    eprintln!("repeat pull: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!(&again, inst);
    let t = Instant::now();
    let report = pyro_image::verify(&cache, "debian:12").unwrap();
    eprintln!("verify: {:.1} s", t.elapsed().as_secs_f64());
    assert!(report.ok, "{report:?}");
    assert!(pyro_image::prune(&cache).unwrap().deleted.is_empty());
    let info = pyro_image::inspect(&cache, "debian:12").unwrap();
    assert!(info.installed);
    eprintln!(
        "rootfs {} MiB, initramfs {} KiB, vmlinux {} MiB",
        fs::metadata(&inst.rootfs).unwrap().len() >> 20,
        fs::metadata(&inst.initramfs).unwrap().len() >> 10,
        fs::metadata(&inst.kernel).unwrap().len() >> 20
    );
}
