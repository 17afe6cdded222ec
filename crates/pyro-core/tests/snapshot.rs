//! Warm snapshots on real sandboxes: restores report `boot_mode` warm, clones restored from
//! one snapshot do not share random numbers, machine ids or clocks, a changed key builds a
//! new snapshot, a broken snapshot falls back to a cold boot, and snapshots can be turned
//! off.
//!
//! Each test uses its own guest memory size, so its snapshot key (and directory) is its
//! own, and tests running in parallel do not race over one snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use pyro_core::warm::{Snapshot, SnapshotStore};
use pyro_core::{Command, ExecOptions, Pyro, VmInfo, no_progress};

mod common;
use common::{ENV, create, now_secs, rt};

fn pyro(state: &std::path::Path) -> Pyro {
    common::pyro(state, Some(true))
}

/// The current one-shot snapshot for `ENV` with this memory size, if any.
fn snapshot_for(p: &Pyro, mem_mib: u32) -> Option<Snapshot> {
    // The cache is shared: snapshots of earlier agent builds may still be there.
    SnapshotStore::new(p.cache().root())
        .list()
        .into_iter()
        .filter(|s| {
            let k = &s.meta().key;
            k.environment == ENV
                && k.mem_mib == mem_mib
                && !k.durable_disk
                && pyro_core::warm::is_current(s.meta(), p.cache())
        })
        .max_by(|a, b| a.meta().created_at.total_cmp(&b.meta().created_at))
}

/// Removes every snapshot for `ENV` with this memory size.
fn forget_snapshots(p: &Pyro, mem_mib: u32) {
    while let Some(s) = snapshot_for(p, mem_mib) {
        std::fs::remove_dir_all(s.dir()).unwrap();
    }
}

fn boot_mode(info: &VmInfo) -> &str {
    info.metadata
        .get("boot_mode")
        .map(String::as_str)
        .unwrap_or("")
}

/// What a clone reports about its identity.
#[derive(Debug)]
struct Identity {
    random: String,
    machine_id: String,
    boot_id: String,
    clock_skew: f64,
}

/// Starts a sandbox and reads its identity (the one exec deletes it).
async fn identity(p: &Pyro, mem_mib: i64) -> (VmInfo, Identity) {
    let id = p
        .create_vm(create(mem_mib), no_progress())
        .await
        .unwrap()
        .vm_id;
    let info = p.start_vm(&id, no_progress()).await.unwrap();
    let script = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                  cat /etc/machine-id 2>/dev/null || echo none; \
                  cat /proc/sys/kernel/random/boot_id; date +%s.%N";
    let before = now_secs();
    let r = p
        .exec_vm(&id, ExecOptions::new(Command::Shell(script.into())), None)
        .await
        .unwrap();
    let after = now_secs();
    assert_eq!(r.exit_code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{:?}", r.stdout);
    let guest: f64 = lines[3].parse().unwrap();
    // The guest read its clock while the host was between `before` and `after`.
    let skew = common::clock_skew(guest, before, after);
    (
        info,
        Identity {
            random: lines[0].to_string(),
            machine_id: lines[1].to_string(),
            boot_id: lines[2].to_string(),
            clock_skew: skew,
        },
    )
}

#[test]
fn clones_of_one_snapshot_share_no_randomness_identity_or_clock() {
    const MEM: i64 = 272;
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let p = pyro(state.path());
        // The first start builds the snapshot if needed; it is already warm.
        let (first, a) = identity(&p, MEM).await;
        assert_eq!(boot_mode(&first), "warm", "{first:?}");
        let snap = snapshot_for(&p, MEM as u32).expect("a snapshot was built");
        let (second, b) = identity(&p, MEM).await;
        assert_eq!(boot_mode(&second), "warm", "{second:?}");
        assert_eq!(
            snapshot_for(&p, MEM as u32).unwrap().meta().id,
            snap.meta().id,
            "the second clone reuses the snapshot"
        );
        for x in [&a, &b] {
            assert_eq!(x.random.len(), 64, "{x:?}");
            assert!(x.clock_skew < 2.0, "guest clock off by {} s", x.clock_skew);
        }
        assert_ne!(a.random, b.random, "clones share their random numbers");
        assert_ne!(a.boot_id, b.boot_id, "clones share their boot id");
        for x in [&a, &b] {
            assert_eq!(
                x.machine_id.len(),
                32,
                "every sandbox has a machine id: {x:?}"
            );
        }
        assert_ne!(a.machine_id, b.machine_id, "clones share /etc/machine-id");
    });
}

#[test]
fn a_changed_key_builds_a_new_snapshot_and_keeps_the_old_one() {
    const MEM: i64 = 288;
    const OTHER: i64 = 304;
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let p = pyro(state.path());
        let started = now_secs();
        forget_snapshots(&p, OTHER as u32);
        let id = p.create_vm(create(MEM), no_progress()).await.unwrap().vm_id;
        assert_eq!(
            boot_mode(&p.start_vm(&id, no_progress()).await.unwrap()),
            "warm"
        );
        p.delete_vm(&id).await.unwrap();
        let old = snapshot_for(&p, MEM as u32).unwrap();

        assert!(snapshot_for(&p, OTHER as u32).is_none());
        // The build is announced as progress, once.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let progress: pyro_core::ProgressFn = {
            let seen = seen.clone();
            std::sync::Arc::new(move |e: &pyro_core::ProgressEvent| {
                if let pyro_core::ProgressEvent::Snapshot(m) = e {
                    seen.lock().unwrap().push(m.clone());
                }
            })
        };
        for _ in 0..2 {
            let id = p
                .create_vm(create(OTHER), no_progress())
                .await
                .unwrap()
                .vm_id;
            let info = p.start_vm(&id, progress.clone()).await.unwrap();
            assert_eq!(boot_mode(&info), "warm");
            p.delete_vm(&id).await.unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            seen[0].starts_with("building the warm snapshot of debian:12 with 304 MiB"),
            "{seen:?}"
        );
        assert!(seen[1].contains("ready"), "{seen:?}");
        let new = snapshot_for(&p, OTHER as u32).expect("a snapshot for the new key");
        assert_ne!(new.meta().id, old.meta().id);
        assert!(new.meta().created_at >= started);
        assert!(new.meta().build_ms > 0);
        assert!(
            snapshot_for(&p, MEM as u32).is_some(),
            "the other key's snapshot stays valid"
        );
    });
}

#[test]
fn a_broken_snapshot_falls_back_to_a_cold_boot() {
    const MEM: i64 = 320;
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let p = pyro(state.path());
        let id = p.create_vm(create(MEM), no_progress()).await.unwrap().vm_id;
        p.start_vm(&id, no_progress()).await.unwrap();
        p.delete_vm(&id).await.unwrap();
        let snap = snapshot_for(&p, MEM as u32).unwrap();
        // Cut the saved state short: QEMU cannot load it.
        let state_file = snap.dir().join("state.bin");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&state_file)
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len / 2).unwrap();
        drop(f);

        let id = p.create_vm(create(MEM), no_progress()).await.unwrap().vm_id;
        let info = p.start_vm(&id, no_progress()).await.unwrap();
        assert_eq!(boot_mode(&info), "cold");
        let r = p
            .exec_vm(
                &id,
                ExecOptions::new(Command::Shell("echo ok".into())),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.stdout, "ok\n");
        // The broken snapshot is gone, and later starts boot cold (quietly) instead of
        // rebuilding it on every run until the failure back-off ends.
        assert!(snapshot_for(&p, MEM as u32).is_none());
        let id = p.create_vm(create(MEM), no_progress()).await.unwrap().vm_id;
        assert_eq!(
            boot_mode(&p.start_vm(&id, no_progress()).await.unwrap()),
            "cold"
        );
        p.delete_vm(&id).await.unwrap();
        assert!(snapshot_for(&p, MEM as u32).is_none());
        // Leave no failure record behind for the next run of this test.
        let record = SnapshotStore::new(p.cache().root())
            .root()
            .join(format!("{}.failed", snap.meta().id));
        assert!(
            std::fs::read_to_string(&record)
                .unwrap()
                .contains("restoring failed")
        );
        std::fs::remove_file(&record).unwrap();
    });
}

#[test]
fn disabled_snapshots_boot_cold() {
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let p = pyro(state.path());
        p.set_snapshots_enabled(false);
        assert!(!p.snapshots_enabled());
        let id = p.create_vm(create(256), no_progress()).await.unwrap().vm_id;
        let info = p.start_vm(&id, no_progress()).await.unwrap();
        assert_eq!(boot_mode(&info), "cold");
        let r = p
            .exec_vm(
                &id,
                ExecOptions::new(Command::Argv(vec!["true".into()])),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.exit_code, 0);
    });
}
