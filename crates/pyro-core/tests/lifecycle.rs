//! The VM lifecycle through the Rust library, on real sandboxes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use pyro_core::{Command, CoreError, CreateVm, ExecOptions, Pyro, VmState, no_progress};

mod common;
use common::rt;

fn pyro(state: &std::path::Path) -> Pyro {
    common::pyro(state, None)
}

fn vm_dirs(state: &std::path::Path) -> usize {
    std::fs::read_dir(state.join("vms"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn create_start_stop_start_delete() {
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let p = pyro(state.path());
        let info = p
            .create_vm(CreateVm::new("debian:12"), no_progress())
            .await
            .unwrap();
        assert_eq!(info.state, VmState::Created);
        assert_eq!(info.execution_mode, "pending");
        assert_eq!(info.vcpu_count, 1);
        assert_eq!(info.mem_mib, 1024);
        assert!((info.expires_at - info.created_at - 600.0).abs() < 1e-6);
        let id = info.vm_id.clone();
        assert_eq!(vm_dirs(state.path()), 1);

        // exec before start is refused and changes nothing.
        let err = p
            .exec_vm(
                &id,
                ExecOptions::new(Command::Argv(vec!["true".into()])),
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, CoreError::WrongState { .. }), "{err}");
        assert_eq!(p.status_vm(&id).await.unwrap().state, VmState::Created);

        let started = p.start_vm(&id, no_progress()).await.unwrap();
        assert_eq!(started.state, VmState::Started);
        assert_eq!(started.execution_mode, "guest_serial");
        let err = p.start_vm(&id, no_progress()).await.unwrap_err();
        assert!(matches!(err, CoreError::WrongState { .. }), "{err}");

        let stopped = p.stop_vm(&id).await.unwrap();
        assert_eq!(stopped.state, VmState::Stopped);
        // Stopped VMs boot again from the same writable disk.
        assert_eq!(
            p.start_vm(&id, no_progress()).await.unwrap().state,
            VmState::Started
        );

        let del = p.delete_vm(&id).await.unwrap();
        assert!(del.deleted);
        assert_eq!(del.reason, "explicit_delete");
        assert!(matches!(
            p.status_vm(&id).await,
            Err(CoreError::VmNotFound { .. })
        ));
        assert_eq!(vm_dirs(state.path()), 0);
    });
}

#[test]
fn exec_vm_runs_once_then_deletes_the_vm() {
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let p = pyro(state.path());
        let id = p
            .create_vm(CreateVm::new("debian:12"), no_progress())
            .await
            .unwrap()
            .vm_id;
        p.start_vm(&id, no_progress()).await.unwrap();
        let mut exec = ExecOptions::new(Command::Shell(
            "echo $GREETING from $(hostname) in $(pwd)".into(),
        ));
        exec.env.insert("GREETING".into(), "hello".into());
        exec.cwd = Some("/tmp".into());
        let r = p.exec_vm(&id, exec, None).await.unwrap();
        assert_eq!(r.stdout, "hello from pyro in /tmp\n");
        assert_eq!(r.exit_code, 0);
        assert!(r.cleanup.deleted);
        assert_eq!(r.cleanup.reason, "post_exec_cleanup");
        assert!(matches!(
            p.status_vm(&id).await,
            Err(CoreError::VmNotFound { .. })
        ));
        assert_eq!(vm_dirs(state.path()), 0);
    });
}

#[test]
fn failed_exec_still_cleans_up() {
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let p = pyro(state.path());
        let id = p
            .create_vm(CreateVm::new("debian:12"), no_progress())
            .await
            .unwrap()
            .vm_id;
        p.start_vm(&id, no_progress()).await.unwrap();
        let mut exec = ExecOptions::new(Command::Argv(vec!["true".into()]));
        exec.cwd = Some("/does/not/exist".into());
        let err = p.exec_vm(&id, exec, None).await.unwrap_err();
        assert!(err.to_string().contains("guest agent"), "{err}");
        assert!(matches!(
            p.status_vm(&id).await,
            Err(CoreError::VmNotFound { .. })
        ));
        assert_eq!(vm_dirs(state.path()), 0);
    });
}

#[test]
fn status_notices_a_dead_vmm() {
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let p = pyro(state.path());
        let id = p
            .create_vm(CreateVm::new("debian:12"), no_progress())
            .await
            .unwrap()
            .vm_id;
        p.start_vm(&id, no_progress()).await.unwrap();
        // Kill the VMM behind pyro's back: its pid is recorded in owner.json.
        let owner: serde_json::Value = serde_json::from_slice(
            &std::fs::read(state.path().join("vms").join(&id).join("owner.json")).unwrap(),
        )
        .unwrap();
        let pid = owner["vmm_pid"].as_u64().unwrap() as i32;
        // SAFETY: signalling a child process this test started through pyro.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let info = p.status_vm(&id).await.unwrap();
        assert_eq!(info.state, VmState::Stopped);
        assert_eq!(
            info.metadata.get("last_error").map(String::as_str),
            Some("the VMM process exited")
        );
        p.delete_vm(&id).await.unwrap();
        assert_eq!(vm_dirs(state.path()), 0);
    });
}

#[test]
fn unknown_ids_are_not_found() {
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let p = pyro(state.path());
        for r in [
            p.status_vm("000000000000").await.map(|_| ()),
            p.stop_vm("000000000000").await.map(|_| ()),
            p.delete_vm("000000000000").await.map(|_| ()),
        ] {
            let err = r.unwrap_err();
            assert!(matches!(err, CoreError::VmNotFound { .. }), "{err}");
            assert_eq!(err.to_string(), "unknown vm `000000000000`");
        }
        assert_eq!(p.reap_expired().await.count, 0);
    });
}
