//! The pre-warmed pool on real sandboxes: pooled sandboxes are hidden, handed out resumed
//! and reseeded (their own random numbers, machine id and a correct clock after a pause),
//! refilled, not used for other shapes, and killed on shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyro_core::warm::pool::{MAX_POOL_SIZE, PoolSpec};
use pyro_core::{Command, CoreError, ExecOptions, Pyro, no_progress};

mod common;
use common::{ENV, create, now_secs, rt};

/// This test's own guest memory size, so its warm snapshot is its own.
const MEM: i64 = 320;

fn pyro(state: &std::path::Path) -> Pyro {
    common::pyro(state, Some(true))
}

async fn wait_ready(p: &Pyro, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = p.pool_status();
        if s.ready >= n {
            return;
        }
        assert!(Instant::now() < deadline, "the pool never filled: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Random bytes, boot id, machine id and the guest clock's distance from the host's.
async fn identity(p: &Pyro, mem_mib: i64) -> (String, Vec<String>, f64) {
    let script = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                  cat /proc/sys/kernel/random/boot_id /etc/machine-id; date +%s.%N";
    let before = now_secs();
    let r = p
        .run_in_vm(
            create(mem_mib),
            ExecOptions::new(Command::Shell(script.into())),
            no_progress(),
            None,
        )
        .await
        .unwrap();
    let after = now_secs();
    assert_eq!(r.exit_code, 0, "{r:?}");
    let lines: Vec<String> = r.stdout.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "{:?}", r.stdout);
    let guest: f64 = lines[3].parse().unwrap();
    let skew = common::clock_skew(guest, before, after);
    (r.boot_mode.unwrap_or_default(), lines, skew)
}

#[test]
fn the_pool_hands_out_its_own_resumed_sandboxes_and_refills() {
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let p = Arc::new(pyro(state.path()));
        let mut spec = PoolSpec::new(ENV, 2);
        spec.mem_mib = MEM;
        p.enable_pool(spec.clone()).unwrap();
        let again = p.enable_pool(spec).unwrap_err();
        assert!(again.to_string().contains("already enabled"), "{again}");
        wait_ready(&p, 2).await;
        assert!(p.vm_ids().is_empty(), "pooled sandboxes are not listed");
        let status = p.pool_status();
        assert!(status.enabled);
        assert_eq!((status.size, status.ready, status.taken), (2, 2, 0));

        // Paused for a while: the clock must still be right when they are handed out.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ((mode_a, a, skew_a), (mode_b, b, skew_b)) =
            tokio::join!(identity(&p, MEM), identity(&p, MEM));
        assert_eq!(mode_a, "pooled");
        assert_eq!(mode_b, "pooled");
        for skew in [skew_a, skew_b] {
            assert!(skew < 1.0, "guest clock off by {skew} s after a pause");
        }
        assert_eq!(a[0].len(), 64);
        assert_ne!(a[0], b[0], "pooled sandboxes share random numbers");
        assert_ne!(a[1], b[1], "pooled sandboxes share a boot id");
        assert_eq!(a[2].len(), 32, "{a:?}");
        assert_ne!(a[2], b[2], "pooled sandboxes share a machine id");
        // Both were deleted after their command.
        assert!(p.vm_ids().is_empty());

        // Taken sandboxes are replaced.
        wait_ready(&p, 2).await;
        assert_eq!(p.pool_status().taken, 2);

        // Another shape is not served from the pool.
        let (mode, _, _) = identity(&p, MEM + 16).await;
        assert_ne!(mode, "pooled");
        assert_eq!(p.pool_status().ready, 2);

        // Shutdown kills the pooled sandboxes too.
        p.shutdown().await;
        let status = p.pool_status();
        assert!(!status.enabled);
        assert_eq!(status.ready, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = pyro_core::host::processes_with_cwd_in(state.path());
            let dirs = std::fs::read_dir(state.path().join("vms"))
                .map(|d| d.count())
                .unwrap_or(0);
            if left.is_empty() && dirs == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: {left:?}, {dirs} dirs"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn bad_pool_settings_are_refused() {
    let state = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let p = Arc::new(pyro(state.path()));
        for size in [0, MAX_POOL_SIZE + 1] {
            let err = p.enable_pool(PoolSpec::new(ENV, size)).unwrap_err();
            assert!(
                matches!(
                    err,
                    CoreError::OutOfRange {
                        field: "pool_size",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        let err = p.enable_pool(PoolSpec::new("nope:1", 1)).unwrap_err();
        assert!(err.to_string().contains("nope:1"), "{err}");
        let mut spec = PoolSpec::new(ENV, 1);
        spec.mem_mib = 1;
        let err = p.enable_pool(spec).unwrap_err();
        assert!(err.to_string().contains("mem_mib"), "{err}");
        // Nothing was enabled by the refused calls.
        assert!(!p.pool_status().enabled);
        assert_eq!(p.pool_status().size, 0);
    });
}
