//! Store tests: schema and migrations, CRUD and labels, transactions, concurrent writers on
//! several connections and in two processes, a writer dying mid-transaction, and the name rules.

use super::records::{WORKSPACE_COLUMNS, workspace_values};
use super::*;
use crate::backend::BackendKind;
use crate::warm::BootMode;
use pyro_net::NetworkPolicy;
use std::time::Instant;

const CHILD_DIR_ENV: &str = "PYRO_STORE_TEST_DIR";
const CHILD_MODE_ENV: &str = "PYRO_STORE_TEST_MODE";

fn ws(id: &str, now: f64) -> WorkspaceRecord {
    WorkspaceRecord::new(id, "debian:12", "1.0.0", BackendKind::Firecracker, now)
}

fn cmd(tag: &str, seq: u64) -> NewCommand {
    NewCommand {
        command: format!("echo {tag}"),
        cwd: "/workspace".into(),
        exit_code: 0,
        duration_ms: 3,
        timed_out: false,
        stdout_bytes: 5,
        stderr_bytes: 0,
        stdout_path: format!("commands/{seq:06}.stdout"),
        stderr_path: format!("commands/{tag}"),
        recorded_at: 1000.0 + seq as f64,
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir).unwrap()
}

/// Asserts the history of `id` is exactly 1..=n with matching `command_count`.
fn assert_gap_free(store: &Store, id: &str, n: u64) -> Vec<CommandRecord> {
    let all = store.commands(id, 0, u64::MAX).unwrap();
    let seqs: Vec<u64> = all.iter().map(|c| c.sequence).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    assert_eq!(store.command_count(id).unwrap(), n);
    for c in &all {
        assert_eq!(c.stdout_path, format!("commands/{:06}.stdout", c.sequence));
    }
    all
}

#[test]
fn schema_is_created_and_kept_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        s.insert_workspace(&ws("a", 1.0)).unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(s.path(), dir.path().join(DB_FILE_NAME));
    assert_eq!(s.get_workspace("a").unwrap().unwrap(), ws("a", 1.0));
}

#[test]
fn database_is_private_and_in_wal_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mode: String = s
        .conn
        .lock()
        .unwrap()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: bool = s
        .conn
        .lock()
        .unwrap()
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert!(fk);
    let sync: i64 = s
        .conn
        .lock()
        .unwrap()
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 1, "NORMAL");
    s.insert_workspace(&ws("a", 1.0)).unwrap();
    for name in [DB_FILE_NAME, "pyro.db-wal", "pyro.db-shm"] {
        let m = std::fs::metadata(dir.path().join(name)).unwrap();
        assert_eq!(m.permissions().mode() & 0o077, 0, "{name}");
    }
}

#[test]
fn a_missing_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(matches!(
        Store::open(&missing),
        Err(StoreError::StateDirMissing { path }) if path == missing
    ));
    assert!(!missing.exists());
}

#[test]
fn the_value_list_matches_the_selected_columns() {
    let rec = ws("a", 1.0);
    let names: Vec<&str> = workspace_values(&rec).iter().map(|(c, _)| *c).collect();
    let columns: Vec<&str> = WORKSPACE_COLUMNS.split(',').map(str::trim).collect();
    assert_eq!(
        names, columns,
        "workspace_from_row reads by these positions"
    );
}

#[test]
fn a_version_1_database_is_migrated_keeping_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE_NAME);
    {
        let raw = Connection::open(&path).unwrap();
        raw.execute_batch(MIGRATIONS[0]).unwrap();
        raw.execute(
            "INSERT INTO workspaces (id, environment, environment_version, backend, \
             vcpu_count, mem_mib, ttl_seconds, created_at, last_activity_at, state, \
             network_policy) VALUES ('old', 'debian:12', '1.0.0', 'qemu', 1, 1024, 600, \
             1.0, 1.0, 'stopped', 'off')",
            [],
        )
        .unwrap();
        raw.pragma_update(None, "user_version", 1).unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    let old = s.get_workspace("old").unwrap().unwrap();
    assert_eq!(old.environment, "debian:12");
    assert_eq!(old.boot_mode, None);
    s.update_workspace("old", |r| {
        r.boot_mode = Some(BootMode::Warm);
        Ok::<(), StoreError>(())
    })
    .unwrap();
    assert_eq!(
        s.get_workspace("old").unwrap().unwrap().boot_mode,
        Some(BootMode::Warm)
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let raw = Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
    raw.pragma_update(None, "user_version", SCHEMA_VERSION + 5)
        .unwrap();
    drop(raw);
    match Store::open(dir.path()) {
        Err(StoreError::SchemaTooNew {
            found, supported, ..
        }) => {
            assert_eq!(found, SCHEMA_VERSION + 5);
            assert_eq!(supported, SCHEMA_VERSION);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn concurrent_first_opens_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let d = dir.path().to_path_buf();
            std::thread::spawn(move || Store::open(&d).map(|s| s.schema_version()))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap().unwrap(), SCHEMA_VERSION);
    }
}

#[test]
fn workspace_crud_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut a = ws("a", 10.0);
    a.name = Some("alpha".into());
    a.labels.insert("team".into(), "core".into());
    a.labels.insert("env".into(), "dev".into());
    a.machine = Some(crate::backend::MachineRecord {
        backend: BackendKind::Qemu,
        vmm: Some(crate::backend::ProcessRef {
            pid: 1234,
            start_ticks: u64::from(u32::MAX) + 7,
        }),
        relay: None,
        relay_bin: Some("/usr/bin/pyro".into()),
        socket: "/s/vm/vsock.sock".into(),
        workdir: "/s/vm".into(),
    });
    s.insert_workspace(&a).unwrap();
    assert!(matches!(
        s.insert_workspace(&a),
        Err(StoreError::AlreadyExists { id }) if id == "a"
    ));
    s.insert_workspace(&ws("b", 20.0)).unwrap();
    s.insert_workspace(&ws("c", 20.0)).unwrap();
    assert_eq!(s.get_workspace("a").unwrap().unwrap(), a);
    assert!(s.get_workspace("zzz").unwrap().is_none());

    // Most recently active first, then newest, then id.
    let ids: Vec<String> = s
        .list_workspaces()
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(ids, ["b", "c", "a"]);
    s.update_workspace::<StoreError>("a", |w| {
        w.last_activity_at = 30.0;
        Ok(())
    })
    .unwrap();
    let list = s.list_workspaces().unwrap();
    assert_eq!(list[0].id, "a");
    assert_eq!(list[0].labels.len(), 2);

    let mut more = BTreeMap::new();
    more.insert("team".to_string(), "infra".to_string());
    more.insert("tier".to_string(), "1".to_string());
    s.set_labels("a", &more).unwrap();
    let got = s.get_workspace("a").unwrap().unwrap().labels;
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        [
            ("env".to_string(), "dev".to_string()),
            ("team".to_string(), "infra".to_string()),
            ("tier".to_string(), "1".to_string()),
        ]
    );
    assert_eq!(s.clear_labels("a", ["env", "absent"]).unwrap(), 1);
    assert_eq!(s.get_workspace("a").unwrap().unwrap().labels.len(), 2);
    assert!(matches!(
        s.set_labels("zzz", &more),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.clear_labels("zzz", ["x"]),
        Err(StoreError::NotFound { .. })
    ));

    // Labels can also be rewritten whole through an update.
    let w = s
        .update_workspace::<StoreError>("a", |w| {
            w.labels.clear();
            w.labels.insert("only".into(), "one".into());
            Ok(())
        })
        .unwrap();
    assert_eq!(s.get_workspace("a").unwrap().unwrap(), w);

    s.next_command_sequence_and_record("a", |n| cmd("a", n))
        .unwrap();
    assert!(s.delete_workspace("a").unwrap());
    assert!(!s.delete_workspace("a").unwrap());
    assert!(s.get_workspace("a").unwrap().is_none());
    // Labels and commands went with it.
    let orphans: i64 = s
        .conn
        .lock()
        .unwrap()
        .query_row(
            "SELECT (SELECT COUNT(*) FROM labels WHERE workspace_id = 'a') + \
             (SELECT COUNT(*) FROM commands WHERE workspace_id = 'a')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
}

#[test]
fn update_errors_leave_the_record_unchanged() {
    #[derive(Debug)]
    enum AppError {
        Store,
        WrongState,
    }
    impl From<StoreError> for AppError {
        fn from(_: StoreError) -> Self {
            Self::Store
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.insert_workspace(&ws("a", 1.0)).unwrap();
    let before = s.get_workspace("a").unwrap().unwrap();
    let r = s.update_workspace("a", |w| {
        w.name = Some("changed".into());
        Err(AppError::WrongState)
    });
    assert!(matches!(r, Err(AppError::WrongState)));
    assert!(matches!(
        s.update_workspace("zzz", |_| Ok::<(), AppError>(())),
        Err(AppError::Store)
    ));
    assert!(matches!(
        s.update_workspace::<StoreError>("a", |w| {
            w.id = "b".into();
            Ok(())
        }),
        Err(StoreError::IdChanged { .. })
    ));
    // command_count belongs to the command methods.
    let w = s
        .update_workspace::<StoreError>("a", |w| {
            w.command_count = 99;
            Ok(())
        })
        .unwrap();
    assert_eq!(w.command_count, 0);
    assert_eq!(s.get_workspace("a").unwrap().unwrap(), before);
}

#[test]
fn commands_are_paged_oldest_first_and_cleared_on_reset() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.insert_workspace(&ws("a", 1.0)).unwrap();
    assert!(s.last_command("a").unwrap().is_none());
    for _ in 0..10 {
        s.next_command_sequence_and_record("a", |n| cmd("t", n))
            .unwrap();
    }
    let page = s.commands("a", 3, 4).unwrap();
    assert_eq!(
        page.iter().map(|c| c.sequence).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert_eq!(
        page[0],
        CommandRecord {
            workspace_id: "a".into(),
            sequence: 4,
            command: "echo t".into(),
            cwd: "/workspace".into(),
            exit_code: 0,
            duration_ms: 3,
            timed_out: false,
            stdout_bytes: 5,
            stderr_bytes: 0,
            stdout_path: "commands/000004.stdout".into(),
            stderr_path: "commands/t".into(),
            recorded_at: 1004.0,
        }
    );
    assert!(s.commands("a", 10, 5).unwrap().is_empty());
    assert_eq!(s.last_command("a").unwrap().unwrap().sequence, 10);
    // Recording touched activity.
    assert_eq!(
        s.get_workspace("a").unwrap().unwrap().last_activity_at,
        1010.0
    );
    assert!(matches!(
        s.commands("zzz", 0, 1),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.next_command_sequence_and_record("zzz", |n| cmd("t", n)),
        Err(StoreError::NotFound { .. })
    ));

    assert_eq!(s.clear_commands("a").unwrap(), 10);
    assert_eq!(s.command_count("a").unwrap(), 0);
    assert!(s.commands("a", 0, 100).unwrap().is_empty());
    let c = s
        .next_command_sequence_and_record("a", |n| cmd("t", n))
        .unwrap();
    assert_eq!(c.sequence, 1);
    assert!(matches!(
        s.clear_commands("zzz"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn several_operations_in_one_transaction_commit_together() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.with_tx(|tx| {
        tx.insert_workspace(&ws("a", 1.0))?;
        tx.next_command_sequence_and_record("a", |n| cmd("t", n))?;
        tx.update_workspace::<StoreError>("a", |w| {
            w.state = WorkspaceState::Started;
            Ok(())
        })
    })
    .unwrap();
    let w = s.get_workspace("a").unwrap().unwrap();
    assert_eq!(w.state, WorkspaceState::Started);
    assert_eq!(w.command_count, 1);
}

#[test]
fn a_failed_or_panicking_transaction_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.insert_workspace(&ws("keep", 1.0)).unwrap();
    let r: Result<(), StoreError> = s.with_tx(|tx| {
        tx.insert_workspace(&ws("x", 1.0))?;
        tx.next_command_sequence_and_record("keep", |n| cmd("t", n))?;
        Err(StoreError::NotFound { id: "boom".into() })
    });
    assert!(r.is_err());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = s.with_tx::<(), StoreError>(|tx| {
            tx.insert_workspace(&ws("y", 1.0))?;
            tx.delete_workspace("keep")?;
            panic!("writer crashed mid-transaction");
        });
    }));
    assert!(panicked.is_err());
    // The same connection is usable again and sees only committed state.
    let ids: Vec<String> = s
        .list_workspaces()
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(ids, ["keep"]);
    assert_eq!(s.command_count("keep").unwrap(), 0);
    s.next_command_sequence_and_record("keep", |n| cmd("t", n))
        .unwrap();
    assert_gap_free(&s, "keep", 1);
}

#[test]
fn concurrent_writers_on_eight_connections_get_gap_free_sequences() {
    const THREADS: u64 = 8;
    const EACH: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).insert_workspace(&ws("a", 1.0)).unwrap();
    let start = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let d = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let s = Store::open(&d).unwrap();
                for _ in 0..EACH {
                    s.next_command_sequence_and_record("a", |n| cmd(&format!("t{t}"), n))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total = THREADS * EACH;
    let elapsed = start.elapsed();
    eprintln!(
        "{total} commands from {THREADS} threads in {elapsed:?}: {:.3} ms per command",
        elapsed.as_secs_f64() * 1000.0 / total as f64
    );
    let s = open(dir.path());
    let all = assert_gap_free(&s, "a", total);
    for t in 0..THREADS {
        let tag = format!("commands/t{t}");
        assert_eq!(
            all.iter().filter(|c| c.stderr_path == tag).count() as u64,
            EACH
        );
    }
}

#[test]
fn uncontended_recording_is_fast() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.insert_workspace(&ws("a", 1.0)).unwrap();
    let n: u32 = 500;
    let start = Instant::now();
    for _ in 0..n {
        s.next_command_sequence_and_record("a", |n| cmd("t", n))
            .unwrap();
    }
    let per = start.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    eprintln!("uncontended: {per:.3} ms per recorded command");
    assert_gap_free(&s, "a", u64::from(n));
}

#[test]
fn concurrent_updates_are_serialized() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).insert_workspace(&ws("a", 1.0)).unwrap();
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let d = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let s = Store::open(&d).unwrap();
                for _ in 0..500 {
                    s.update_workspace::<StoreError>("a", |w| {
                        w.reset_count += 1;
                        Ok(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let w = open(dir.path()).get_workspace("a").unwrap().unwrap();
    assert_eq!(w.reset_count, 2500);
}

/// Child half of the multi-process tests; does nothing unless run by one of them.
#[test]
#[ignore = "helper run by other tests in a child process"]
fn child_process_helper() {
    let (Some(dir), Ok(mode)) = (
        std::env::var_os(CHILD_DIR_ENV),
        std::env::var(CHILD_MODE_ENV),
    ) else {
        return;
    };
    let s = Store::open(Path::new(&dir)).unwrap();
    if let Some(tag) = mode.strip_prefix("record:") {
        for _ in 0..200 {
            s.next_command_sequence_and_record("a", |n| cmd(tag, n))
                .unwrap();
        }
    } else if mode == "crash" {
        let _ = s.with_tx::<(), StoreError>(|tx| {
            tx.insert_workspace(&ws("ghost", 1.0))?;
            for _ in 0..50 {
                tx.next_command_sequence_and_record("a", |n| cmd("ghost", n))?;
            }
            tx.delete_workspace("a")?;
            // Dies holding the write lock with uncommitted pages in the WAL.
            std::process::abort();
        });
    }
}

fn spawn_child(dir: &Path, mode: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::child_process_helper",
            "--ignored",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_MODE_ENV, mode)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn concurrent_writers_in_two_processes_get_gap_free_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.insert_workspace(&ws("a", 1.0)).unwrap();
    let start = Instant::now();
    let children = [
        spawn_child(dir.path(), "record:p1"),
        spawn_child(dir.path(), "record:p2"),
    ];
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    eprintln!("2 processes x 200 commands in {:?}", start.elapsed());
    let all = assert_gap_free(&s, "a", 400);
    for tag in ["commands/p1", "commands/p2"] {
        assert_eq!(all.iter().filter(|c| c.stderr_path == tag).count(), 200);
    }
}

#[test]
fn a_writer_process_dying_mid_transaction_leaves_the_database_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.insert_workspace(&ws("a", 1.0)).unwrap();
    for _ in 0..3 {
        s.next_command_sequence_and_record("a", |n| cmd("t", n))
            .unwrap();
    }
    let status = spawn_child(dir.path(), "crash").wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let check: String = s
        .conn
        .lock()
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert!(s.get_workspace("ghost").unwrap().is_none());
    assert_gap_free(&s, "a", 3);
    // The dead writer's lock is gone: writing works at once.
    let t = Instant::now();
    s.next_command_sequence_and_record("a", |n| cmd("t", n))
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    drop(s);
    assert_gap_free(&open(dir.path()), "a", 4);
}

#[test]
fn ttl_only_runs_while_started() {
    let mut w = ws("a", 1000.0);
    w.ttl_seconds = 600;
    // Created but never started: nothing used, no expiry time.
    assert_eq!(w.remaining_ttl(5000.0), 600.0);
    assert!(!w.is_expired(5000.0));
    assert_eq!(w.expires_at, None);

    w.resume_ttl(1000.0);
    w.state = WorkspaceState::Started;
    assert_eq!(w.started_at, Some(1000.0));
    assert_eq!(w.expires_at, Some(1600.0));
    assert_eq!(w.remaining_ttl(1100.0), 500.0);
    assert_eq!(w.ttl_used(1100.0), 100.0);

    // Stopped after 250 s: the clock pauses.
    w.pause_ttl(1250.0);
    w.state = WorkspaceState::Stopped;
    assert_eq!(w.ttl_consumed, 250.0);
    assert_eq!(w.started_at, None);
    assert_eq!(w.expires_at, None);
    assert_eq!(w.remaining_ttl(9000.0), 350.0);
    assert!(!w.is_expired(9000.0));

    // Started again much later: expiry is now + what is left.
    w.resume_ttl(10_000.0);
    w.state = WorkspaceState::Started;
    assert_eq!(w.expires_at, Some(10_350.0));
    // Resuming a running clock keeps its start.
    w.resume_ttl(10_100.0);
    assert_eq!(w.started_at, Some(10_000.0));
    assert_eq!(w.expires_at, Some(10_350.0));
    assert!(!w.is_expired(10_349.0));
    assert!(w.is_expired(10_350.0));
    assert_eq!(w.remaining_ttl(20_000.0), 0.0);

    // A clock that went backwards counts as no time.
    assert_eq!(w.remaining_ttl(9_000.0), 350.0);

    // A stopped workspace that used its budget is expired; so is one marked expired.
    w.pause_ttl(10_400.0);
    w.state = WorkspaceState::Stopped;
    assert_eq!(w.ttl_consumed, 650.0);
    assert!(w.is_expired(10_400.0));
    let mut fresh = ws("b", 0.0);
    fresh.state = WorkspaceState::Expired;
    assert!(fresh.is_expired(0.0));
}

#[test]
fn ttl_fields_round_trip_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.insert_workspace(&ws("a", 1.0)).unwrap();
    let w = s
        .update_workspace::<StoreError>("a", |w| {
            w.resume_ttl(100.0);
            w.state = WorkspaceState::Started;
            Ok(())
        })
        .unwrap();
    let got = s.get_workspace("a").unwrap().unwrap();
    assert_eq!(got, w);
    assert_eq!(got.expires_at, Some(700.0));
    assert_eq!(got.state, WorkspaceState::Started);
}

#[test]
fn backends_are_stored_as_their_names_and_unknown_names_read_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut q = ws("q", 1.0);
    q.backend = BackendKind::Qemu;
    s.insert_workspace(&ws("f", 1.0)).unwrap();
    s.insert_workspace(&q).unwrap();
    let stored = |id: &str| -> String {
        s.conn
            .lock()
            .unwrap()
            .query_row("SELECT backend FROM workspaces WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
    };
    assert_eq!(stored("f"), "firecracker");
    assert_eq!(stored("q"), "qemu");
    assert_eq!(
        s.get_workspace("f").unwrap().unwrap().backend,
        BackendKind::Firecracker
    );
    assert_eq!(
        s.get_workspace("q").unwrap().unwrap().backend,
        BackendKind::Qemu
    );
    s.conn
        .lock()
        .unwrap()
        .execute(
            "UPDATE workspaces SET backend = 'vmware' WHERE id = 'f'",
            [],
        )
        .unwrap();
    assert_eq!(
        s.get_workspace("f").unwrap().unwrap().backend,
        BackendKind::Qemu
    );
}

#[test]
fn states_have_stable_spellings() {
    for st in [
        WorkspaceState::Creating,
        WorkspaceState::Started,
        WorkspaceState::Stopped,
        WorkspaceState::Expired,
        WorkspaceState::Error,
    ] {
        assert_eq!(WorkspaceState::parse(st.as_str()), Some(st));
        assert_eq!(
            serde_json::to_string(&st).unwrap(),
            format!("\"{}\"", st.as_str())
        );
    }
    assert_eq!(WorkspaceState::parse("running"), None);
}

#[test]
fn busy_errors_are_recognised() {
    let e = StoreError::Sqlite {
        op: "test",
        source: rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ),
    };
    assert!(e.is_busy());
    assert!(!StoreError::NotFound { id: "a".into() }.is_busy());
}

#[test]
fn a_machine_record_this_build_cannot_read_reads_as_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.insert_workspace(&ws("a", 1.0)).unwrap();
    let raw = rusqlite::Connection::open(s.path()).unwrap();
    raw.execute(
        "UPDATE workspaces SET machine = '{\"backend\":\"vmware\"}' WHERE id = 'a'",
        [],
    )
    .unwrap();
    let rec = s.get_workspace("a").unwrap().unwrap();
    assert_eq!(rec.machine, None);
    assert_eq!(rec.id, "a");
}

/// The text a column of workspace `id` holds.
fn stored_text(s: &Store, column: &str, id: &str) -> Option<String> {
    s.conn
        .lock()
        .unwrap()
        .query_row(
            &format!("SELECT {column} FROM workspaces WHERE id = ?1"),
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn network_policies_and_boot_modes_round_trip_as_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let fresh = ws("new", 1.0);
    assert_eq!(fresh.network_policy, NetworkPolicy::Off);
    assert_eq!(fresh.boot_mode, None);
    s.insert_workspace(&fresh).unwrap();
    assert_eq!(
        stored_text(&s, "network_policy", "new").as_deref(),
        Some("off")
    );
    assert_eq!(stored_text(&s, "boot_mode", "new"), None);
    let modes = BootMode::ALL.map(Some).into_iter().chain([None]);
    for (i, (policy, mode)) in NetworkPolicy::ALL
        .into_iter()
        .cycle()
        .zip(modes)
        .enumerate()
    {
        let id = format!("w{i}");
        let mut rec = ws(&id, 1.0);
        rec.network_policy = policy;
        rec.boot_mode = mode;
        s.insert_workspace(&rec).unwrap();
        assert_eq!(s.get_workspace(&id).unwrap().unwrap(), rec);
        assert_eq!(
            stored_text(&s, "network_policy", &id).as_deref(),
            Some(policy.as_str())
        );
        assert_eq!(
            stored_text(&s, "boot_mode", &id).as_deref(),
            mode.map(BootMode::as_str)
        );
        // And through an update, which writes every column again.
        let updated = s
            .update_workspace(&id, |r| {
                r.boot_mode = Some(BootMode::Cold);
                Ok::<(), StoreError>(())
            })
            .unwrap();
        assert_eq!(updated.network_policy, policy);
        assert_eq!(
            s.get_workspace(&id).unwrap().unwrap().boot_mode,
            Some(BootMode::Cold)
        );
    }
}

#[test]
fn unknown_policy_and_boot_mode_names_read_as_off_and_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut rec = ws("a", 1.0);
    rec.boot_mode = Some(BootMode::Warm);
    s.insert_workspace(&rec).unwrap();
    // As a newer pyro might write them; case matters, as on the command line.
    for (policy, mode) in [("egress+proxy", "hibernated"), ("Egress", "WARM"), ("", "")] {
        s.conn
            .lock()
            .unwrap()
            .execute(
                "UPDATE workspaces SET network_policy = ?1, boot_mode = ?2 WHERE id = 'a'",
                [policy, mode],
            )
            .unwrap();
        let read = s.get_workspace("a").unwrap().unwrap();
        assert_eq!(read.network_policy, NetworkPolicy::Off, "{policy:?}");
        assert_eq!(read.boot_mode, None, "{mode:?}");
        assert_eq!(s.list_workspaces().unwrap().len(), 1);
    }
    // The row stays usable: an update writes back what was read.
    s.update_workspace("a", |r| {
        r.name = Some("still here".into());
        Ok::<(), StoreError>(())
    })
    .unwrap();
    assert_eq!(
        stored_text(&s, "network_policy", "a").as_deref(),
        Some("off")
    );
    assert_eq!(stored_text(&s, "boot_mode", "a"), None);
}

/// This process's POSIX locks on `path` (from `/proc/locks`, by device and inode), as the
/// byte ranges they cover per lock type, adjacent ranges merged (the kernel may list one
/// lock as two entries or two as one; what is covered is what matters).
fn own_locks_on(path: &Path) -> Vec<(String, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    let (major, minor) = (libc::major(m.dev()), libc::minor(m.dev()));
    let id = format!("{major:02x}:{minor:02x}:{}", m.ino());
    let me = std::process::id().to_string();
    let mut ranges: Vec<(String, u64, u64)> = std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(1) != Some(&"POSIX")
                || f.get(4) != Some(&me.as_str())
                || f.get(5) != Some(&id.as_str())
            {
                return None;
            }
            let start = f.get(6)?.parse().ok()?;
            let end = match *f.get(7)? {
                "EOF" => u64::MAX,
                n => n.parse().ok()?,
            };
            Some((f.get(3)?.to_string(), start, end))
        })
        .collect();
    ranges.sort();
    let mut merged: Vec<(String, u64, u64)> = Vec::new();
    for (t, a, b) in ranges {
        match merged.last_mut() {
            Some((lt, _, le)) if *lt == t && a <= le.saturating_add(1) => *le = (*le).max(b),
            _ => merged.push((t, a, b)),
        }
    }
    merged
}

/// Regression: opening an existing database opened and closed a descriptor of it outside
/// SQLite, which drops every POSIX lock this process holds on the file, so a connection
/// already open in the process silently lost its locks (with sixteen workspaces created at
/// once another process then removed a WAL still in use: "database disk image is
/// malformed").
#[test]
fn opening_the_database_again_keeps_the_locks_of_a_connection_already_open() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let path = dir.path().join(DB_FILE_NAME);
    // A read transaction: its connection holds locks for as long as it runs.
    first
        .with_read(|tx| {
            tx.list_workspaces()?;
            let before = own_locks_on(&path);
            assert!(
                !before.is_empty(),
                "a WAL connection holds a lock on the database file"
            );
            let second = open(dir.path());
            assert_eq!(
                own_locks_on(&path),
                before,
                "opening the database again dropped the first connection's locks"
            );
            drop(second);
            Ok::<(), StoreError>(())
        })
        .unwrap();
}
