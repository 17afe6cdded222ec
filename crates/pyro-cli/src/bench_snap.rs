//! `pyro bench --workspace-snapshots`: what named snapshots, restores, forks and the disk
//! tools cost, side by side in one run, with medians over `--iterations`.
//!
//! Figures, on one workspace holding 100 MB of written data (`/workspace/data.bin`, random)
//! and a running service (`python3 -m http.server`, ready by TCP):
//! - **snapshot create**: `create_snapshot` of the running workspace, whole call and the
//!   guest's pause (`pause_ms`); each snapshot is deleted after it is timed.
//! - **restore**: interleaved per iteration, `reset --snapshot` to a snapshot of that state,
//!   `reset` to the baseline (a fresh disk from the warm snapshot, the empty seed), and a
//!   cold boot (`stop`, then `start` timed: the machine boots from its disk).
//! - **fork**: `fork_workspace` of a snapshot with `count` 1, then 10 (each call returns
//!   once every fork's agent answered and was reseeded), and the host memory of each fork's
//!   VMM (PSS from `/proc/PID/smaps_rollup`, which splits shared pages among sharers).
//! - **disk tools**: on the stopped workspace, `disk_list` (recursive, `/workspace`) and
//!   `disk_read` (64 KiB of `data.bin`); then, started, `list_workspace_files` and
//!   `read_workspace_file` of the same.
//!
//! The workspaces it creates are deleted at the end, also when a measurement fails.

use std::time::Instant;

use pyro_core::workspace::{CreateWorkspace, ForkWorkspace, ReadinessSpec, StartService};
use pyro_core::{Command, ExecOptions, Pyro};
use serde::Serialize;

use super::bench::{Stats, stats};

/// Forks of the large fork.
const WIDE_FORK: u32 = 10;
/// Bytes read by the disk and file reads.
const READ_BYTES: i64 = 64 * 1024;

/// The results of `pyro bench --workspace-snapshots`.
#[derive(Serialize, Debug)]
pub struct SnapBench {
    pub(crate) backend: String,
    pub(crate) environment: String,
    pub(crate) mem_mib: i64,
    /// Bytes written into the workspace before the measurements.
    pub(crate) data_bytes: u64,
    pub(crate) snapshot_create: Stats,
    pub(crate) snapshot_pause: Stats,
    /// Bytes one snapshot takes on the host's disk.
    pub(crate) snapshot_size_bytes: u64,
    pub(crate) reset_to_snapshot: Stats,
    pub(crate) reset_to_baseline: Stats,
    pub(crate) cold_boot_start: Stats,
    /// reset --snapshot median / cold boot median.
    pub(crate) snapshot_restore_vs_cold_boot: f64,
    pub(crate) fork_1: Stats,
    pub(crate) fork_10: Stats,
    /// PSS of each of the 10 forks' VMMs, MiB.
    pub(crate) fork_pss_mib: Vec<f64>,
    pub(crate) fork_pss_mib_median: f64,
    pub(crate) disk_list_stopped: Stats,
    pub(crate) file_list_started: Stats,
    pub(crate) disk_read_stopped: Stats,
    pub(crate) file_read_started: Stats,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

async fn sh(pyro: &Pyro, id: &str, script: &str) -> anyhow::Result<String> {
    let argv = vec!["sh".into(), "-c".into(), script.into()];
    let r = pyro
        .exec_workspace(id, ExecOptions::new(Command::Argv(argv)), None)
        .await?;
    if r.exit_code != 0 {
        anyhow::bail!("`{script}` exited {}: {}", r.exit_code, r.stderr);
    }
    Ok(r.stdout)
}

/// The PSS, MiB, of the processes whose working directory is `dir` (a workspace's VM
/// directory: its VMM).
fn pss_mib_in(dir: &std::path::Path) -> f64 {
    let mut kib = 0u64;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let p = e.path();
        if std::fs::read_link(p.join("cwd")).ok().as_deref() != Some(dir) {
            continue;
        }
        let Ok(rollup) = std::fs::read_to_string(p.join("smaps_rollup")) else {
            continue;
        };
        kib += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    kib as f64 / 1024.0
}

pub async fn run(
    pyro: &Pyro,
    backend: &str,
    environment: &str,
    mem_mib: i64,
    iterations: usize,
) -> anyhow::Result<SnapBench> {
    eprintln!("[bench] creating a workspace ({environment}, {mem_mib} MiB)");
    let mut req = CreateWorkspace::new(environment);
    req.mem_mib = mem_mib;
    let ws = pyro.create_workspace(req, pyro_core::no_progress()).await?;
    let id = ws.workspace_id;
    let mut made = vec![id.clone()];
    let measured = measure(pyro, &id, iterations, &mut made).await;
    for w in &made {
        if let Err(e) = pyro.delete_workspace(w).await {
            eprintln!("[bench] could not delete workspace {w}: {e}");
        }
    }
    let mut r = measured?;
    r.backend = backend.into();
    r.environment = environment.into();
    r.mem_mib = mem_mib;
    Ok(r)
}

async fn measure(
    pyro: &Pyro,
    id: &str,
    iterations: usize,
    made: &mut Vec<String>,
) -> anyhow::Result<SnapBench> {
    let data_bytes: u64 = 100 * 1000 * 1000;
    eprintln!("[bench] writing {data_bytes} bytes and starting a service");
    sh(
        pyro,
        id,
        &format!("head -c {data_bytes} /dev/urandom > /workspace/data.bin && sync"),
    )
    .await?;
    let svc = StartService {
        name: "web".into(),
        command: "python3 -m http.server 8000".into(),
        cwd: "/workspace".into(),
        readiness: Some(ReadinessSpec::Tcp("127.0.0.1:8000".into())),
        ready_timeout_seconds: 60,
        ready_interval_ms: 50,
        secret_env: Default::default(),
        published_ports: Vec::new(),
    };
    pyro.start_service(id, svc, pyro_core::no_progress())
        .await?;

    eprintln!("[bench] snapshot create x{iterations}");
    let (mut creates, mut pauses, mut size) = (Vec::new(), Vec::new(), 0);
    for n in 0..iterations {
        let name = format!("bench-{n}");
        let t = Instant::now();
        let r = pyro.create_snapshot(id, &name).await?;
        creates.push(ms_since(t));
        pauses.push(r.snapshot.pause_ms.unwrap_or(0) as f64);
        size = r.snapshot.size_bytes;
        pyro.delete_snapshot(id, &name).await?;
    }

    eprintln!("[bench] reset --snapshot / reset / cold boot x{iterations}, interleaved");
    pyro.create_snapshot(id, "state").await?;
    let (mut to_snap, mut to_base, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iterations {
        let t = Instant::now();
        pyro.reset_workspace_to(id, "state", pyro_core::no_progress())
            .await?;
        to_snap.push(ms_since(t));
        let t = Instant::now();
        pyro.reset_workspace_to(id, "baseline", pyro_core::no_progress())
            .await?;
        to_base.push(ms_since(t));
        pyro.stop_workspace(id).await?;
        let t = Instant::now();
        pyro.start_workspace(id, pyro_core::no_progress()).await?;
        cold.push(ms_since(t));
    }
    pyro.reset_workspace_to(id, "state", pyro_core::no_progress())
        .await?;

    eprintln!("[bench] fork of 1 x{iterations}, then of {WIDE_FORK}");
    let mut fork1 = Vec::new();
    for _ in 0..iterations {
        let req = ForkWorkspace {
            snapshot: Some("state".into()),
            count: 1,
            ..ForkWorkspace::default()
        };
        let t = Instant::now();
        let r = pyro
            .fork_workspace(id, req, pyro_core::no_progress())
            .await?;
        fork1.push(ms_since(t));
        for w in &r.workspaces {
            pyro.delete_workspace(&w.workspace_id).await?;
        }
    }
    let req = ForkWorkspace {
        snapshot: Some("state".into()),
        count: WIDE_FORK,
        ..ForkWorkspace::default()
    };
    let t = Instant::now();
    let r = pyro
        .fork_workspace(id, req, pyro_core::no_progress())
        .await?;
    let fork10 = vec![ms_since(t)];
    made.extend(r.workspaces.iter().map(|w| w.workspace_id.clone()));
    // All answer.
    for w in &r.workspaces {
        sh(pyro, &w.workspace_id, "test -s /workspace/data.bin").await?;
    }
    let state_dir = pyro.options().state_dir.join("workspaces");
    let mut pss: Vec<f64> = r
        .workspaces
        .iter()
        .map(|w| pss_mib_in(&state_dir.join(&w.workspace_id).join("vm")))
        .collect();
    for w in &r.workspaces {
        pyro.delete_workspace(&w.workspace_id).await?;
    }
    made.truncate(1);

    eprintln!("[bench] disk tools (stopped) / file tools (started) x{iterations}");
    pyro.stop_workspace(id).await?;
    let (mut dlist, mut dread) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let t = Instant::now();
        pyro.disk_list(id, "/workspace", true).await?;
        dlist.push(ms_since(t));
        let t = Instant::now();
        pyro.disk_read(id, "data.bin", READ_BYTES).await?;
        dread.push(ms_since(t));
    }
    pyro.start_workspace(id, pyro_core::no_progress()).await?;
    let (mut flist, mut fread) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let t = Instant::now();
        pyro.list_workspace_files(id, "/workspace", true).await?;
        flist.push(ms_since(t));
        let t = Instant::now();
        pyro.read_workspace_file(id, "data.bin", READ_BYTES).await?;
        fread.push(ms_since(t));
    }

    pss.sort_by(f64::total_cmp);
    let pss_median = pss.get(pss.len() / 2).copied().unwrap_or(f64::NAN);
    let (to_snap, cold) = (stats(to_snap), stats(cold));
    Ok(SnapBench {
        backend: String::new(),
        environment: String::new(),
        mem_mib: 0,
        data_bytes,
        snapshot_create: stats(creates),
        snapshot_pause: stats(pauses),
        snapshot_size_bytes: size,
        snapshot_restore_vs_cold_boot: to_snap.median_ms / cold.median_ms,
        reset_to_snapshot: to_snap,
        reset_to_baseline: stats(to_base),
        cold_boot_start: cold,
        fork_1: stats(fork1),
        fork_10: stats(fork10),
        fork_pss_mib: pss,
        fork_pss_mib_median: pss_median,
        disk_list_stopped: stats(dlist),
        file_list_started: stats(flist),
        disk_read_stopped: stats(dread),
        file_read_started: stats(fread),
    })
}
