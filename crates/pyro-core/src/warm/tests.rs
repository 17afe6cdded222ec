//! Tests of the warm-snapshot cache: keys and ids, metadata, failure markers, pruning,
//! sparse copies and the environment switch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::cache::FAILURE_BACKOFF;
use super::cache::FailureRecord;
use super::disk::allocated_bytes;
use super::error::error_chain;
use super::reseed::fill_random;
use super::*;
use std::path::PathBuf;

fn key() -> SnapshotKey {
    SnapshotKey {
        format: SNAPSHOT_FORMAT,
        backend: "qemu".into(),
        environment: "debian:12".into(),
        environment_version: "1.0.0".into(),
        kernel_digest: "k".into(),
        initramfs_digest: "i".into(),
        rootfs_digest: "r".into(),
        agent_digest: "a".into(),
        vcpu_count: 1,
        mem_mib: 256,
        upper_disk_mib: 4096,
        durable_disk: false,
        vmm: "qemu /usr/bin/qemu size=1".into(),
    }
}

fn meta(k: &SnapshotKey, artifacts: Vec<PathBuf>) -> SnapshotMeta {
    SnapshotMeta {
        id: k.id(),
        key: k.clone(),
        artifacts,
        created_at: 1.0,
        boot_ms: 1,
        save_ms: 1,
        build_ms: 2,
        disk_bytes: 0,
    }
}

/// Writes a complete-looking snapshot for `k` into `store`.
fn fake_snapshot(store: &SnapshotStore, k: &SnapshotKey, artifacts: Vec<PathBuf>) {
    let dir = store.root().join(k.id());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(UPPER_FILE), b"disk").unwrap();
    std::fs::write(
        dir.join(META_FILE),
        serde_json::to_vec(&meta(k, artifacts)).unwrap(),
    )
    .unwrap();
}

#[test]
fn every_key_input_changes_the_id() {
    let base = key();
    let id = base.id();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(base.id(), id, "ids are stable");
    let variants: [fn(&mut SnapshotKey); 13] = [
        |k| k.format += 1,
        |k| k.backend = "firecracker".into(),
        |k| k.environment = "debian:12-base".into(),
        |k| k.environment_version = "1.0.1".into(),
        |k| k.kernel_digest = "k2".into(),
        |k| k.initramfs_digest = "i2".into(),
        |k| k.rootfs_digest = "r2".into(),
        |k| k.agent_digest = "a2".into(),
        |k| k.vcpu_count = 2,
        |k| k.mem_mib = 512,
        |k| k.upper_disk_mib = 8192,
        |k| k.durable_disk = true,
        |k| k.vmm = "qemu /usr/bin/qemu size=2".into(),
    ];
    let mut seen = std::collections::HashSet::from([id]);
    for change in variants {
        let mut k = base.clone();
        change(&mut k);
        assert!(seen.insert(k.id()), "{k:?} collides");
    }
}

#[test]
fn lookup_needs_a_matching_complete_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::new(dir.path());
    let k = key();
    assert!(store.lookup(&k).is_none());
    // A build in progress (no meta.json yet) is not a snapshot.
    let snap_dir = store.root().join(k.id());
    std::fs::create_dir_all(&snap_dir).unwrap();
    std::fs::write(snap_dir.join(UPPER_FILE), b"disk").unwrap();
    assert!(store.lookup(&k).is_none());
    fake_snapshot(&store, &k, vec![]);
    let found = store.lookup(&k).unwrap();
    assert_eq!(found.dir(), snap_dir);
    assert_eq!(found.upper_disk(), snap_dir.join(UPPER_FILE));
    assert_eq!(found.meta().key, k);
    // A different key never matches, even if its directory were reused.
    let mut other = k.clone();
    other.mem_mib = 512;
    assert!(store.lookup(&other).is_none());
    // A meta.json whose key does not belong to its directory is ignored.
    let meta_path = snap_dir.join(META_FILE);
    let mut m = meta(&k, vec![]);
    m.key = other;
    std::fs::write(&meta_path, serde_json::to_vec(&m).unwrap()).unwrap();
    assert!(store.lookup(&k).is_none());
    std::fs::write(&meta_path, b"{not json").unwrap();
    assert!(store.lookup(&k).is_none());
}

#[test]
fn prune_keeps_valid_snapshots_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::new(dir.path());
    let artifact = dir.path().join("kernel");
    std::fs::write(&artifact, b"k").unwrap();
    let live = key();
    fake_snapshot(&store, &live, vec![artifact.clone()]);
    let mut stale = key();
    stale.agent_digest = "old".into();
    fake_snapshot(&store, &stale, vec![dir.path().join("gone")]);
    std::fs::create_dir_all(store.root().join(".build-abc")).unwrap();
    std::fs::create_dir_all(store.root().join("garbage")).unwrap();
    let old_failure = FailureRecord {
        at: 0.0,
        reason: "x".into(),
    };
    std::fs::write(
        store.root().join("abc.failed"),
        serde_json::to_vec(&old_failure).unwrap(),
    )
    .unwrap();
    let (removed, _) = store.prune(|m| m.artifacts.iter().all(|p| p.exists()));
    let mut expected = vec![
        "snapshots/.build-abc".to_string(),
        "snapshots/abc.failed".into(),
        format!("snapshots/{}", stale.id()),
        "snapshots/garbage".into(),
    ];
    expected.sort();
    assert_eq!(removed, expected);
    assert!(store.lookup(&live).is_some());
    assert_eq!(store.list().len(), 1);
}

#[test]
fn only_snapshots_of_the_installed_environment_are_current() {
    let dir = tempfile::tempdir().unwrap();
    let cache = pyro_image::Cache::open(dir.path().to_path_buf()).unwrap();
    let artifact = dir.path().join("vmlinux");
    std::fs::write(&artifact, b"k").unwrap();
    let k = key();
    let m = meta(&k, vec![artifact.clone()]);
    assert!(!is_current(&m, &cache), "the environment is not installed");
    let manifest = serde_json::json!({
        "schema_version": 1,
        "name": "debian:12",
        "version": "1.0.0",
        "source": "test",
        "artifacts": {
            "kernel": {"sha256": "k", "size_bytes": 1},
            "rootfs": {"sha256": "r", "size_bytes": 1}
        },
        "kernel_release": "6.1",
        "packages": [],
        "rootfs_agent_sha256": "a",
        "initramfs": {
            "key": "x", "sha256": "i", "size_bytes": 1,
            "agent_sha256": "a", "kernel_sha256": "k"
        },
        "built_at": 0.0,
        "build_seconds": 0.0,
        "pyro_image_version": "0"
    });
    let path = cache.environment_manifest_path("debian:12");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, manifest.to_string()).unwrap();
    assert!(is_current(&m, &cache));
    let mut other_agent = k.clone();
    other_agent.agent_digest = "a2".into();
    assert!(!is_current(
        &meta(&other_agent, vec![artifact.clone()]),
        &cache
    ));
    let mut old_format = k.clone();
    old_format.format -= 1;
    assert!(!is_current(&meta(&old_format, vec![artifact]), &cache));
    assert!(!is_current(
        &meta(&k, vec![dir.path().join("gone")]),
        &cache
    ));
}

#[test]
fn a_recent_failure_makes_runs_boot_cold_for_a_while() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::new(dir.path());
    std::fs::create_dir_all(store.root()).unwrap();
    let e = SnapshotError::Build {
        id: "x".into(),
        reason: "QEMU refused".into(),
    };
    store.record_failure("x", error_chain(&e));
    let err = store.check_failure("x").unwrap_err();
    assert!(err.to_string().contains("QEMU refused"), "{err}");
    let old = FailureRecord {
        at: crate::host::now() - FAILURE_BACKOFF.as_secs_f64() - 1.0,
        reason: "old".into(),
    };
    std::fs::write(
        store.root().join("x.failed"),
        serde_json::to_vec(&old).unwrap(),
    )
    .unwrap();
    assert!(store.check_failure("x").is_ok());
    assert!(store.check_failure("never-built").is_ok());
}

#[test]
fn disk_copies_keep_content_and_holes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&src).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(128 << 20).unwrap();
    }
    let dst = dir.path().join("dst.img");
    copy_disk(&src, &dst).unwrap();
    let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
    assert_eq!(a.len(), b.len());
    assert!(a == b);
    assert!(allocated_bytes(&dst) < 8 << 20, "the copy stays sparse");
    // The destination must be new.
    assert!(copy_disk(&src, &dst).is_err());
    assert!(
        dst.exists(),
        "a refused copy leaves the existing file alone"
    );
}

#[test]
fn snapshots_are_on_unless_switched_off() {
    assert!(enabled_by(None));
    for (v, on) in [
        ("0", false),
        ("off", false),
        (" No ", false),
        ("false", false),
        ("1", true),
        ("", true),
    ] {
        assert_eq!(enabled_by(Some(v)), on, "{v:?}");
    }
    assert_eq!(BootMode::Warm.as_str(), "warm");
    assert_eq!(BootMode::Cold.as_str(), "cold");
    assert_eq!(BootMode::Pooled.as_str(), "pooled");
}

#[test]
fn boot_modes_parse_from_their_names_only() {
    for m in BootMode::ALL {
        assert_eq!(m.as_str().parse::<BootMode>(), Ok(m));
        assert_eq!(m.to_string(), m.as_str());
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            format!("\"{}\"", m.as_str())
        );
    }
    for bad in ["", "Warm", " cold", "hot"] {
        let err = bad.parse::<BootMode>().unwrap_err();
        assert_eq!(err.input, bad);
        assert!(
            err.to_string()
                .contains("expected cold, warm, pooled or snapshot"),
            "{err}"
        );
    }
    let long = "x".repeat(100);
    assert_eq!(long.parse::<BootMode>().unwrap_err().input.len(), 64);
}

#[test]
fn random_bytes_differ() {
    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    fill_random(&mut a).unwrap();
    fill_random(&mut b).unwrap();
    assert_ne!(a, b);
}
