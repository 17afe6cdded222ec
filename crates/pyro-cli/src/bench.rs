//! `pyro bench`: cold start of `pyro run ENV -- true` (end to end, including the CLI's own
//! start) and exec round trips on one booted sandbox, per available backend, reported as
//! median and p95.
//!
//! `pyro bench --snapshots` compares warm snapshots with cold boots instead, side by side
//! in one invocation: the same end-to-end run with `PYRO_SNAPSHOTS=0` and with snapshots on
//! (interleaved, so both see the same background load) and their ratio, the snapshot's
//! build time, `workspace create` with a 10 MB seed cold and warm (ratio), `workspace exec`
//! end to end and the in-process exec round trip on cold and warm sandboxes, then N
//! sandboxes restored at once (`--concurrency`, default 10 and 50) with the host memory
//! each idle one costs (PSS of its VMM process, from `/proc/<pid>/smaps_rollup`) and the
//! host's peak memory use.
//!
//! `pyro bench --network` measures networking ([`crate::bench_net`]); `pyro bench --procs`
//! measures shells, services and published ports ([`crate::bench_procs`]); `pyro bench
//! --workspace-snapshots` measures named snapshots, restores, forks and the disk tools
//! ([`crate::bench_snap`]).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use pyro_core::warm::{self, SnapshotStore};
use pyro_core::{BackendChoice, BackendKind, CreateVm, HostFacts, Pyro};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Samples per measurement.
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Environment to measure with.
    #[arg(long, default_value = "debian:12")]
    environment: String,
    /// Backends to measure (repeatable); default: every backend this host can run.
    #[arg(long = "backend")]
    backends: Vec<String>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Measure persistent workspaces instead: create with a 10 MB seed, exec round trip
    /// (`pyro workspace exec ID -- true`, end to end) and reset.
    #[arg(long)]
    workspaces: bool,
    /// Compare warm snapshots with cold boots (end-to-end runs, ratio, snapshot build
    /// time), then start `--concurrency` sandboxes at once and report host memory.
    #[arg(long)]
    snapshots: bool,
    /// Guest memory of the measured sandboxes, MiB.
    #[arg(long, default_value_t = 1024)]
    mem_mib: i64,
    /// Measure networking inside a world of network namespaces this run builds: warm
    /// `run -- true` with the network off and on, download throughput into the guest, and
    /// connection setup with open egress and through the allowlist's proxy. Needs root.
    #[arg(long, conflicts_with_all = ["workspaces", "snapshots"])]
    network: bool,
    /// Measure processes in one workspace: shell write-to-read round trip against the exec
    /// round trip, service start to ready with and without a file probe, and (as root, in
    /// the --network namespace world) download throughput through a published port.
    #[arg(long, conflicts_with_all = ["workspaces", "snapshots", "network"])]
    procs: bool,
    /// Measure named workspace snapshots: create (and the guest's pause) with 100 MB of
    /// data and a running service, reset --snapshot against reset and a cold boot, fork of
    /// 1 and of 10 with each fork's host memory, and the disk tools against the file tools.
    #[arg(long, conflicts_with_all = ["workspaces", "snapshots", "network", "procs"])]
    workspace_snapshots: bool,
    /// With --snapshots: how many sandboxes to restore at once (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 50])]
    concurrency: Vec<usize>,
}

/// Summary statistics of a sample, in milliseconds.
#[derive(Serialize, Debug, Clone)]
pub struct Stats {
    pub(crate) samples: usize,
    pub(crate) median_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) min_ms: f64,
    pub(crate) max_ms: f64,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Stats {
        samples: v.len(),
        median_ms: median,
        p95_ms: percentile(&v, 95.0),
        min_ms: v.first().copied().unwrap_or(f64::NAN),
        max_ms: v.last().copied().unwrap_or(f64::NAN),
    }
}

#[derive(Serialize)]
struct BackendResult {
    backend: String,
    run_true: Stats,
    exec_round_trip: Stats,
    ping_round_trip: Stats,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.iterations == 0 {
        anyhow::bail!("--iterations must be at least 1");
    }
    if args.workspaces {
        return workspaces(args).await;
    }
    if args.snapshots {
        return snapshots(args).await;
    }
    if args.network {
        return network(args).await;
    }
    if args.procs {
        return procs(args).await;
    }
    if args.workspace_snapshots {
        return workspace_snapshots(args).await;
    }
    let facts = HostFacts::probe();
    let kinds: Vec<BackendKind> = if args.backends.is_empty() {
        let mut k = vec![BackendKind::Qemu];
        if facts.kvm_accelerates() {
            k.insert(0, BackendKind::Firecracker);
        }
        k
    } else {
        args.backends
            .iter()
            .map(|b| pyro_core::backend::resolve(b.parse::<BackendChoice>()?, &facts))
            .collect::<Result<_, _>>()?
    };
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    for kind in kinds {
        let pyro = crate::open_pyro(Some(kind.as_str()))?;
        // Build the environment first so the measurement is of runs, not of the build.
        pyro.pull_environment(
            &args.environment,
            crate::stderr_progress(args.environment.clone()),
        )
        .await?;
        eprintln!(
            "[bench] backend={} measuring `pyro run {} -- true` x{}",
            kind.as_str(),
            args.environment,
            args.iterations
        );
        let mut runs = Vec::new();
        for _ in 0..args.iterations {
            let (ms, _) =
                run_true(&exe, kind.as_str(), &args.environment, args.mem_mib, None).await?;
            runs.push(ms);
        }
        eprintln!(
            "[bench] backend={} measuring exec and ping round trips x{}",
            kind.as_str(),
            args.iterations
        );
        let mut create = CreateVm::new(args.environment.clone());
        create.backend = Some(BackendChoice::from(kind));
        let rt = pyro.round_trips(create, args.iterations).await?;
        results.push(BackendResult {
            backend: kind.as_str().into(),
            run_true: stats(runs),
            exec_round_trip: stats(rt.exec_ms),
            ping_round_trip: stats(rt.ping_ms),
        });
    }
    if args.json {
        crate::render::print_json(&results);
    } else {
        println!(
            "{:<12} {:<22} {:>8} {:>10} {:>10} {:>10} {:>10}",
            "backend", "measure", "samples", "median_ms", "p95_ms", "min_ms", "max_ms"
        );
        for r in &results {
            for (name, s) in [
                ("run -- true (e2e)", &r.run_true),
                ("exec round trip", &r.exec_round_trip),
                ("ping round trip", &r.ping_round_trip),
            ] {
                println!(
                    "{:<12} {:<22} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                    r.backend, name, s.samples, s.median_ms, s.p95_ms, s.min_ms, s.max_ms
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What the modes that build a namespace world share: this binary, the backend (the first
/// `--backend`, else `default`), and the environment pulled first, from this process's
/// namespace (the world has no route to the mirrors).
async fn in_world_setup(
    args: &BenchArgs,
    default: &str,
) -> anyhow::Result<(std::path::PathBuf, String, pyro_core::Pyro)> {
    let exe = std::env::current_exe()?;
    let backend = args
        .backends
        .first()
        .cloned()
        .unwrap_or_else(|| default.into());
    let pyro = crate::open_pyro(Some(&backend))?;
    pyro.pull_environment(
        &args.environment,
        crate::stderr_progress(args.environment.clone()),
    )
    .await?;
    Ok((exe, backend, pyro))
}

/// `pyro bench --network` (see [`crate::bench_net`]).
async fn network(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let (exe, backend, _pyro) = in_world_setup(&args, "qemu").await?;
    let r = crate::bench_net::run(&exe, &backend, &args.environment, args.iterations).await?;
    if args.json {
        crate::render::print_json(&r);
        return Ok(ExitCode::SUCCESS);
    }
    let json = serde_json::to_value(&r)?;
    println!(
        "{:<34} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "measure", "samples", "median_ms", "p95_ms", "min_ms", "max_ms"
    );
    for (name, key) in [
        ("warm run -- true, network off", "warm_run_off"),
        ("warm run -- true, --network", "warm_run_network"),
        ("connect+request, open egress", "connect_open"),
        ("connect+request, allowlist proxy", "connect_proxied"),
    ] {
        let s = &json[key];
        println!(
            "{:<34} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            name,
            s["samples"],
            s["median_ms"].as_f64().unwrap_or(0.0),
            s["p95_ms"].as_f64().unwrap_or(0.0),
            s["min_ms"].as_f64().unwrap_or(0.0),
            s["max_ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "network overhead (median on - off): {:.1} ms",
        json["network_overhead_ms"].as_f64().unwrap_or(0.0)
    );
    println!(
        "download into the guest, MB/s: {}",
        json["download_mb_per_s"]
    );
    Ok(ExitCode::SUCCESS)
}

/// `pyro bench --workspace-snapshots` (see [`crate::bench_snap`]).
async fn workspace_snapshots(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let (_exe, _backend, pyro) = in_world_setup(&args, "auto").await?;
    let kind = pyro
        .backend(pyro.options().backend, &pyro_core::no_progress())
        .await?
        .kind();
    let r = crate::bench_snap::run(
        &pyro,
        kind.as_str(),
        &args.environment,
        args.mem_mib,
        args.iterations,
    )
    .await?;
    if args.json {
        crate::render::print_json(&r);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<10} {:<40} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "backend", "measure", "samples", "median_ms", "p95_ms", "min_ms", "max_ms"
    );
    for (name, s) in [
        ("snapshot create (running, 100 MB)", &r.snapshot_create),
        ("  guest pause during it", &r.snapshot_pause),
        ("reset --snapshot (memory)", &r.reset_to_snapshot),
        ("reset to baseline", &r.reset_to_baseline),
        ("cold boot (start of a stopped one)", &r.cold_boot_start),
        ("fork, count 1", &r.fork_1),
        ("fork, count 10 (all answering)", &r.fork_10),
        ("disk list -r /workspace (stopped)", &r.disk_list_stopped),
        ("file list -r /workspace (started)", &r.file_list_started),
        ("disk read 64 KiB (stopped)", &r.disk_read_stopped),
        ("file read 64 KiB (started)", &r.file_read_started),
    ] {
        println!(
            "{:<10} {:<40} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            r.backend, name, s.samples, s.median_ms, s.p95_ms, s.min_ms, s.max_ms
        );
    }
    println!(
        "guest memory {} MiB; snapshot size on disk: {:.1} MB",
        r.mem_mib,
        r.snapshot_size_bytes as f64 / 1e6
    );
    println!(
        "reset --snapshot / cold boot: {:.2}x (median)",
        r.snapshot_restore_vs_cold_boot
    );
    println!(
        "host memory (PSS) per fork of 10, MiB: median {:.1} (each: {})",
        r.fork_pss_mib_median,
        r.fork_pss_mib
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// `pyro bench --procs` (see [`crate::bench_procs`]).
async fn procs(args: BenchArgs) -> anyhow::Result<ExitCode> {
    use crate::bench_procs::PortPart;
    let (exe, _backend, pyro) = in_world_setup(&args, "auto").await?;
    let kind = pyro
        .backend(pyro.options().backend, &pyro_core::no_progress())
        .await?
        .kind();
    let r = crate::bench_procs::run(
        &pyro,
        &exe,
        kind.as_str(),
        &args.environment,
        args.iterations,
    )
    .await?;
    let code = match r.published_port {
        PortPart::Failed(_) => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    };
    if args.json {
        crate::render::print_json(&r);
        return Ok(code);
    }
    println!(
        "{:<10} {:<36} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "backend", "measure", "samples", "median_ms", "p95_ms", "min_ms", "max_ms"
    );
    for (name, s) in [
        ("shell write->read (echo)", &r.shell_round_trip),
        ("exec round trip (true)", &r.exec_round_trip),
        ("service start, no probe", &r.service_start_no_probe),
        ("service start, file probe", &r.service_start_file_probe),
    ] {
        println!(
            "{:<10} {:<36} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            r.backend, name, s.samples, s.median_ms, s.p95_ms, s.min_ms, s.max_ms
        );
    }
    println!("shell: {}", r.shell_read);
    println!(
        "shell round trip / exec round trip: {:.2}x (median), {:.2}x (p95)",
        r.shell_exec_median_ratio, r.shell_exec_p95_ratio
    );
    println!(
        "service start, file probe / no probe: {:.2}x (median; probe interval {} ms)",
        r.file_probe_median_ratio, r.ready_interval_ms
    );
    match &r.published_port {
        PortPart::Measured(p) => println!(
            "published port, host <- guest ({}, {} MiB): median {:.1} MB/s (samples: {})",
            p.server,
            p.bytes_per_download >> 20,
            p.median_mb_per_s,
            p.download_mb_per_s
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        PortPart::Skipped(why) => println!("published port throughput: skipped ({why})"),
        PortPart::Failed(e) => println!("published port throughput: FAILED: {e}"),
    }
    Ok(code)
}

/// One end-to-end `pyro run ENV -- true`, with snapshots on or off (`None`: as this
/// process's environment says). Returns milliseconds and whether a warm start was refused
/// (the CLI then warns on stderr).
async fn run_true(
    exe: &std::path::Path,
    backend: &str,
    environment: &str,
    mem_mib: i64,
    snapshots: Option<bool>,
) -> anyhow::Result<(f64, bool)> {
    let mem = mem_mib.to_string();
    let argv = [
        "run",
        "--backend",
        backend,
        "--mem-mib",
        &mem,
        environment,
        "--",
        "true",
    ];
    let (ms, out) = timed_with(exe, &argv, snapshots).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok((ms, stderr.contains("warm start failed")))
}

/// Memory figures in MiB.
#[derive(Serialize, Debug, Clone)]
struct MemStats {
    samples: usize,
    median_mib: f64,
    max_mib: f64,
    total_mib: f64,
}

fn mem_stats(kib: &[u64]) -> MemStats {
    let mib: Vec<f64> = kib.iter().map(|k| *k as f64 / 1024.0).collect();
    let s = stats(mib.clone());
    MemStats {
        samples: s.samples,
        median_mib: s.median_ms,
        max_mib: s.max_ms,
        total_mib: mib.iter().sum(),
    }
}

/// A `/proc` field in KiB (`Pss:` of `smaps_rollup`, `MemAvailable:` of `meminfo`).
fn proc_kib(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

#[derive(Serialize)]
struct SnapshotInfo {
    id: String,
    built_by_this_bench: bool,
    build_ms: u64,
    template_boot_ms: u64,
    save_ms: u64,
    disk_mib: f64,
}

#[derive(Serialize)]
struct ConcurrentResult {
    sandboxes: usize,
    warm: usize,
    /// From the first create to the last agent answering.
    all_started_ms: f64,
    /// Per sandbox: create + start.
    start: Stats,
    /// PSS of each idle sandbox's QEMU process.
    pss_per_sandbox: MemStats,
    /// PSS of this process (the in-process relays of all sandboxes).
    host_process_pss_mib: f64,
    /// Largest drop of the host's MemAvailable while the sandboxes started and idled.
    host_peak_mib: f64,
}

#[derive(Serialize)]
struct SnapshotBench {
    backend: String,
    environment: String,
    mem_mib: i64,
    snapshot: SnapshotInfo,
    cold_run_true: Stats,
    warm_run_true: Stats,
    median_ratio: f64,
    p95_ratio: f64,
    /// Size of the workspace seed.
    seed_bytes: u64,
    cold_workspace_create: Stats,
    warm_workspace_create: Stats,
    workspace_create_median_ratio: f64,
    workspace_create_p95_ratio: f64,
    /// `pyro workspace exec ID -- true` end to end, on a cold-created workspace.
    cold_workspace_exec: Stats,
    /// The same on a warm-created one.
    warm_workspace_exec: Stats,
    /// In-process exec round trip on a cold-booted sandbox.
    cold_exec_round_trip: Stats,
    /// The same on a warm-restored one.
    warm_exec_round_trip: Stats,
    /// In-process `run_in_vm` of `true` (create, warm start, exec, delete).
    warm_run_in_vm: Stats,
    /// The same served from the pre-warmed pool.
    pooled_run_in_vm: Stats,
    warm_refused: usize,
    concurrent: Vec<ConcurrentResult>,
}

async fn snapshots(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let backend = args
        .backends
        .first()
        .cloned()
        .unwrap_or_else(|| "qemu".into());
    let pyro = Arc::new(crate::open_pyro(Some(&backend))?);
    pyro.set_snapshots_enabled(true);
    let kind = pyro
        .backend(pyro.options().backend, &pyro_core::no_progress())
        .await?
        .kind();
    let env = pyro
        .pull_environment(
            &args.environment,
            crate::stderr_progress(args.environment.clone()),
        )
        .await?;
    let store = SnapshotStore::new(pyro.cache().root());
    // The snapshot `pyro run` uses: this environment as installed now, this shape, the
    // newest if the VMM changed in between.
    let matching = |store: &SnapshotStore| {
        store
            .list()
            .into_iter()
            .filter(|s| {
                let k = &s.meta().key;
                k.format == warm::SNAPSHOT_FORMAT
                    && k.environment == args.environment
                    && k.backend == kind.as_str()
                    && k.kernel_digest == env.digests.kernel
                    && k.initramfs_digest == env.digests.initramfs
                    && k.rootfs_digest == env.digests.rootfs
                    && k.agent_digest == env.digests.agent
                    && i64::from(k.mem_mib) == args.mem_mib
                    && k.vcpu_count == 1
                    && !k.durable_disk
            })
            .max_by(|a, b| a.meta().created_at.total_cmp(&b.meta().created_at))
    };
    let (exe_ref, env_ref) = (&exe, &args.environment);
    let run = |snapshots: bool| {
        run_true(
            exe_ref,
            kind.as_str(),
            env_ref,
            args.mem_mib,
            Some(snapshots),
        )
    };
    // The first warm run builds the snapshot when needed; it is not a sample.
    let before: Vec<String> = store.list().iter().map(|s| s.meta().id.clone()).collect();
    eprintln!("[bench] preparing the warm snapshot (built on first use)");
    let (first_ms, refused) = run(true).await?;
    if refused {
        anyhow::bail!("the warm start was refused; see `PYRO_LOG=debug pyro run ...`");
    }
    let snap = matching(&store)
        .ok_or_else(|| anyhow::anyhow!("no snapshot was built for {}", args.environment))?;
    let built_now = !before.contains(&snap.meta().id);
    let m = snap.meta();
    eprintln!(
        "[bench] snapshot {} {} (build {} ms; first run {first_ms:.0} ms)",
        m.id,
        if built_now { "built" } else { "reused" },
        m.build_ms
    );
    eprintln!(
        "[bench] measuring `pyro run {} -- true` x{} cold and x{} warm, interleaved",
        args.environment, args.iterations, args.iterations
    );
    let (mut cold, mut warm, mut warm_refused) = (Vec::new(), Vec::new(), 0);
    for _ in 0..args.iterations {
        cold.push(run(false).await?.0);
        let (ms, refused) = run(true).await?;
        warm_refused += usize::from(refused);
        warm.push(ms);
    }
    let (cold, warm) = (stats(cold), stats(warm));

    // Workspaces: create with the 10 MB seed, cold and warm interleaved; the first warm
    // create builds the workspace snapshot when needed and is not a sample.
    let (seed, seed_bytes) = make_seed()?;
    let seed_s = seed.display().to_string();
    let ws = async {
        eprintln!("[bench] preparing the warm workspace snapshot (built on first use)");
        let (_, first, _) = create_workspace(&exe, kind.as_str(), &args, &seed_s, true).await?;
        let _ = timed(&exe, &["workspace", "delete", &first]).await;
        eprintln!(
            "[bench] measuring `pyro workspace create --seed-path` ({seed_bytes} bytes) x{} \
             cold and x{} warm, interleaved",
            args.iterations, args.iterations
        );
        let (mut cold_ws, mut warm_ws, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        let mut warm_refused = 0;
        for i in 0..args.iterations {
            for on in [false, true] {
                let (ms, id, mode) =
                    create_workspace(&exe, kind.as_str(), &args, &seed_s, on).await?;
                if on {
                    warm_refused += usize::from(mode != "warm");
                    warm_ws.push(ms);
                } else {
                    cold_ws.push(ms);
                }
                // The first of each is kept for the exec round trips.
                if i == 0 {
                    kept.push(id);
                } else {
                    let _ = timed(&exe, &["workspace", "delete", &id]).await;
                }
            }
        }
        let mut ws_exec = [Vec::new(), Vec::new()];
        eprintln!(
            "[bench] measuring `pyro workspace exec ID -- true` x{} on a cold and a warm one",
            args.iterations * 2
        );
        for _ in 0..args.iterations * 2 {
            for (i, id) in kept.iter().enumerate() {
                ws_exec[i].push(
                    timed(&exe, &["workspace", "exec", id, "--", "true"])
                        .await?
                        .0,
                );
            }
        }
        for id in &kept {
            let _ = timed(&exe, &["workspace", "delete", id]).await;
        }
        let [cold_exec, warm_exec] = ws_exec;
        Ok::<_, anyhow::Error>((
            stats(cold_ws),
            stats(warm_ws),
            stats(cold_exec),
            stats(warm_exec),
            warm_refused,
        ))
    }
    .await;
    let _ = std::fs::remove_dir_all(&seed);
    let (cold_ws, warm_ws, cold_ws_exec, warm_ws_exec, ws_refused) = ws?;
    warm_refused += ws_refused;

    // Exec round trips (in process, `true` through the agent) on a cold-booted and on a
    // warm-restored sandbox.
    eprintln!(
        "[bench] measuring exec round trips x{} on a cold-booted and a warm-restored sandbox",
        args.iterations * 2
    );
    let mut create = CreateVm::new(args.environment.clone());
    create.mem_mib = args.mem_mib;
    pyro.set_snapshots_enabled(false);
    let cold_rt = pyro.round_trips(create.clone(), args.iterations * 2).await;
    pyro.set_snapshots_enabled(true);
    let cold_rt = cold_rt?;
    let warm_rt = pyro.round_trips(create, args.iterations * 2).await?;

    // `run_in_vm` in process (as `vm_run` in the MCP server): warm, then from a pool of one
    // (each sample waits until the pool has refilled).
    eprintln!(
        "[bench] measuring in-process run_in_vm(true) x{} warm and x{} from a pool",
        args.iterations, args.iterations
    );
    let (warm_call, pooled_call) = in_process_runs(&pyro, &args, &backend).await?;

    let mut concurrent = Vec::new();
    for &n in &args.concurrency {
        eprintln!("[bench] restoring {n} sandboxes at once");
        concurrent.push(concurrent_starts(&pyro, &args, n).await?);
    }
    let r = SnapshotBench {
        backend: kind.as_str().into(),
        environment: args.environment.clone(),
        mem_mib: args.mem_mib,
        snapshot: SnapshotInfo {
            id: m.id.clone(),
            built_by_this_bench: built_now,
            build_ms: m.build_ms,
            template_boot_ms: m.boot_ms,
            save_ms: m.save_ms,
            disk_mib: m.disk_bytes as f64 / 1048576.0,
        },
        median_ratio: cold.median_ms / warm.median_ms,
        p95_ratio: cold.p95_ms / warm.p95_ms,
        cold_run_true: cold,
        warm_run_true: warm,
        seed_bytes,
        workspace_create_median_ratio: cold_ws.median_ms / warm_ws.median_ms,
        workspace_create_p95_ratio: cold_ws.p95_ms / warm_ws.p95_ms,
        cold_workspace_create: cold_ws,
        warm_workspace_create: warm_ws,
        cold_workspace_exec: cold_ws_exec,
        warm_workspace_exec: warm_ws_exec,
        cold_exec_round_trip: stats(cold_rt.exec_ms),
        warm_exec_round_trip: stats(warm_rt.exec_ms),
        warm_run_in_vm: warm_call,
        pooled_run_in_vm: pooled_call,
        warm_refused,
        concurrent,
    };
    if args.json {
        crate::render::print_json(&r);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "snapshot {}: build {} ms (template boot {} ms, save {} ms), {:.0} MiB on disk{}",
        r.snapshot.id,
        r.snapshot.build_ms,
        r.snapshot.template_boot_ms,
        r.snapshot.save_ms,
        r.snapshot.disk_mib,
        if built_now { "" } else { " (built earlier)" }
    );
    println!(
        "{:<10} {:<36} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "backend", "measure", "samples", "median_ms", "p95_ms", "min_ms", "max_ms"
    );
    for (name, s) in [
        ("run -- true, cold (e2e)", &r.cold_run_true),
        ("run -- true, warm (e2e)", &r.warm_run_true),
        (
            "workspace create 10 MB, cold (e2e)",
            &r.cold_workspace_create,
        ),
        (
            "workspace create 10 MB, warm (e2e)",
            &r.warm_workspace_create,
        ),
        ("workspace exec, cold-created (e2e)", &r.cold_workspace_exec),
        ("workspace exec, warm-created (e2e)", &r.warm_workspace_exec),
        ("exec round trip, cold-booted", &r.cold_exec_round_trip),
        ("exec round trip, warm-restored", &r.warm_exec_round_trip),
        ("run_in_vm(true) in process, warm", &r.warm_run_in_vm),
        ("run_in_vm(true) in process, pooled", &r.pooled_run_in_vm),
    ] {
        println!(
            "{:<10} {:<36} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            r.backend, name, s.samples, s.median_ms, s.p95_ms, s.min_ms, s.max_ms
        );
    }
    println!(
        "workspace create: warm is {:.1}x faster (median), {:.1}x (p95)",
        r.workspace_create_median_ratio, r.workspace_create_p95_ratio
    );
    println!(
        "run -- true: warm is {:.1}x faster (median), {:.1}x (p95){}",
        r.median_ratio,
        r.p95_ratio,
        if r.warm_refused > 0 {
            format!("; {} warm starts fell back to cold", r.warm_refused)
        } else {
            String::new()
        }
    );
    for c in &r.concurrent {
        println!(
            "{} at once: {}/{} warm, all answering after {:.0} ms (each: median {:.0} ms, p95 \
             {:.0} ms); idle PSS per sandbox median {:.0} MiB (max {:.0}), total {:.0} MiB, \
             pyro process {:.0} MiB; host peak {:.0} MiB",
            c.sandboxes,
            c.warm,
            c.sandboxes,
            c.all_started_ms,
            c.start.median_ms,
            c.start.p95_ms,
            c.pss_per_sandbox.median_mib,
            c.pss_per_sandbox.max_mib,
            c.pss_per_sandbox.total_mib,
            c.host_process_pss_mib,
            c.host_peak_mib
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `run_in_vm(true)` in this process, `--iterations` times without a pool and as many
/// times from a pool of one (refilled between samples).
async fn in_process_runs(
    pyro: &Arc<Pyro>,
    args: &BenchArgs,
    backend: &str,
) -> anyhow::Result<(Stats, Stats)> {
    let create = || {
        let mut c = CreateVm::new(args.environment.clone());
        c.mem_mib = args.mem_mib;
        c
    };
    let run = |p: Arc<Pyro>| {
        let create = create();
        async move {
            let t = Instant::now();
            let exec = pyro_core::ExecOptions::new(pyro_core::Command::Argv(vec!["true".into()]));
            let r = p
                .run_in_vm(create, exec, pyro_core::no_progress(), None)
                .await?;
            Ok::<_, anyhow::Error>((t.elapsed().as_secs_f64() * 1000.0, r.boot_mode))
        }
    };
    let mut warm = Vec::new();
    for _ in 0..args.iterations {
        warm.push(run(pyro.clone()).await?.0);
    }
    let pooled = Arc::new(crate::open_pyro(Some(backend))?);
    let mut spec = pyro_core::warm::pool::PoolSpec::new(args.environment.clone(), 1);
    spec.mem_mib = args.mem_mib;
    pooled.enable_pool(spec)?;
    let mut from_pool = Vec::new();
    let measured = async {
        for _ in 0..args.iterations {
            let deadline = Instant::now() + Duration::from_secs(120);
            while pooled.pool_status().ready == 0 {
                if Instant::now() > deadline {
                    anyhow::bail!("the pool did not fill: {:?}", pooled.pool_status());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (ms, mode) = run(pooled.clone()).await?;
            if mode.as_deref() != Some("pooled") {
                anyhow::bail!("a pooled run was not served from the pool ({mode:?})");
            }
            from_pool.push(ms);
        }
        Ok(())
    }
    .await;
    pooled.shutdown().await;
    measured?;
    Ok((stats(warm), stats(from_pool)))
}

/// Starts `n` sandboxes at once in this process, lets them idle, measures, deletes them.
async fn concurrent_starts(
    pyro: &Arc<Pyro>,
    args: &BenchArgs,
    n: usize,
) -> anyhow::Result<ConcurrentResult> {
    let available = || proc_kib("/proc/meminfo", "MemAvailable").unwrap_or(0);
    let baseline = available();
    let lowest = Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampler = {
        let lowest = lowest.clone();
        tokio::spawn(async move {
            loop {
                lowest.fetch_min(available(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let pyro = pyro.clone();
        let mut create = CreateVm::new(args.environment.clone());
        create.mem_mib = args.mem_mib;
        tasks.spawn(async move {
            let t = Instant::now();
            let info = pyro.create_vm(create, pyro_core::no_progress()).await?;
            let started = pyro.start_vm(&info.vm_id, pyro_core::no_progress()).await;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            Ok::<_, pyro_core::CoreError>((info.vm_id, started, ms))
        });
    }
    let mut ids = Vec::new();
    let mut times = Vec::new();
    let mut warm = 0;
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok((id, Ok(info), ms)) => {
                warm +=
                    usize::from(info.metadata.get("boot_mode").map(String::as_str) == Some("warm"));
                times.push(ms);
                ids.push(id);
            }
            Ok((id, Err(e), _)) => {
                ids.push(id);
                failure.get_or_insert(e.to_string());
            }
            Err(e) => {
                failure.get_or_insert(e.to_string());
            }
        }
    }
    let all_started_ms = t0.elapsed().as_secs_f64() * 1000.0;
    // Idle for a moment, so what is measured is the resting footprint.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut pss = Vec::new();
    for id in &ids {
        if let Ok(Some(pid)) = pyro.vmm_pid(id).await
            && let Some(kib) = proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss")
        {
            pss.push(kib);
        }
    }
    let own = proc_kib("/proc/self/smaps_rollup", "Pss").unwrap_or(0);
    sampler.abort();
    let host_peak_kib = baseline.saturating_sub(lowest.load(std::sync::atomic::Ordering::Relaxed));
    for id in &ids {
        let _ = pyro.delete_vm(id).await;
    }
    if let Some(e) = failure {
        anyhow::bail!("{} of {n} sandboxes did not start: {e}", n - times.len());
    }
    Ok(ConcurrentResult {
        sandboxes: n,
        warm,
        all_started_ms,
        start: stats(times),
        pss_per_sandbox: mem_stats(&pss),
        host_process_pss_mib: own as f64 / 1024.0,
        host_peak_mib: host_peak_kib as f64 / 1024.0,
    })
}

#[derive(Serialize)]
struct WorkspaceBench {
    backend: String,
    seed_bytes: u64,
    create_with_seed: Stats,
    exec_round_trip: Stats,
    reset: Stats,
}

async fn timed(exe: &std::path::Path, args: &[&str]) -> anyhow::Result<(f64, Vec<u8>)> {
    let (ms, out) = timed_with(exe, args, None).await?;
    Ok((ms, out.stdout))
}

/// Runs `pyro ARGS` (with `PYRO_SNAPSHOTS` set when `snapshots` is given), timed from spawn
/// to exit; fails with its stderr when it fails.
async fn timed_with(
    exe: &std::path::Path,
    args: &[&str],
    snapshots: Option<bool>,
) -> anyhow::Result<(f64, std::process::Output)> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args).stdin(std::process::Stdio::null());
    if let Some(on) = snapshots {
        cmd.env(warm::SNAPSHOTS_ENV, if on { "1" } else { "0" });
    }
    let t = Instant::now();
    let out = cmd.output().await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        anyhow::bail!(
            "`pyro {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((ms, out))
}

/// A 10 MB seed in the temporary directory: 100 files of 100 KiB of pseudo-random bytes,
/// in 10 directories. Returns it and its size in bytes.
fn make_seed() -> anyhow::Result<(std::path::PathBuf, u64)> {
    let seed = std::env::temp_dir().join(format!("pyro-bench-seed-{}", std::process::id()));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut seed_bytes = 0u64;
    for d in 0..10 {
        let dir = seed.join(format!("dir{d}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..10 {
            let mut buf = vec![0u8; 100 * 1024];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            seed_bytes += buf.len() as u64;
            std::fs::write(dir.join(format!("file{f}.bin")), buf)?;
        }
    }
    Ok((seed, seed_bytes))
}

/// `pyro workspace create` of the 10 MB seed with snapshots on or off, timed end to end;
/// returns milliseconds, the workspace id and its boot mode.
async fn create_workspace(
    exe: &std::path::Path,
    backend: &str,
    args: &BenchArgs,
    seed: &str,
    snapshots: bool,
) -> anyhow::Result<(f64, String, String)> {
    let mem = args.mem_mib.to_string();
    let argv = [
        "workspace",
        "create",
        "--backend",
        backend,
        "--mem-mib",
        &mem,
        &args.environment,
        "--seed-path",
        seed,
        "--json",
    ];
    let (ms, out) = timed_with(exe, &argv, Some(snapshots)).await?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = info["workspace_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mode = info["metadata"]["boot_mode"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    Ok((ms, id, mode))
}

async fn workspaces(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let backend = args
        .backends
        .first()
        .cloned()
        .unwrap_or_else(|| "auto".into());
    let pyro = crate::open_pyro(Some(&backend))?;
    pyro.pull_environment(
        &args.environment,
        crate::stderr_progress(args.environment.clone()),
    )
    .await?;
    let (seed, seed_bytes) = make_seed()?;
    let seed_s = seed.display().to_string();
    let mut creates = Vec::new();
    let mut ids = Vec::new();
    eprintln!(
        "[bench] workspace create --seed-path ({seed_bytes} bytes) x{}",
        args.iterations
    );
    for _ in 0..args.iterations {
        let (ms, out) = timed(
            &exe,
            &[
                "workspace",
                "create",
                "--backend",
                &backend,
                &args.environment,
                "--seed-path",
                &seed_s,
                "--id-only",
            ],
        )
        .await?;
        creates.push(ms);
        ids.push(String::from_utf8_lossy(&out).trim().to_string());
    }
    let id = ids[0].clone();
    eprintln!(
        "[bench] workspace exec {id} -- true x{}",
        args.iterations * 2
    );
    let mut execs = Vec::new();
    for _ in 0..args.iterations * 2 {
        execs.push(
            timed(&exe, &["workspace", "exec", &id, "--", "true"])
                .await?
                .0,
        );
    }
    eprintln!("[bench] workspace reset x{}", args.iterations);
    let mut resets = Vec::new();
    for _ in 0..args.iterations {
        resets.push(timed(&exe, &["workspace", "reset", &id, "--json"]).await?.0);
    }
    for id in &ids {
        let _ = timed(&exe, &["workspace", "delete", id]).await;
    }
    let _ = std::fs::remove_dir_all(&seed);
    let r = WorkspaceBench {
        backend: pyro
            .backend(pyro.options().backend, &pyro_core::no_progress())
            .await?
            .kind()
            .as_str()
            .into(),
        seed_bytes,
        create_with_seed: stats(creates),
        exec_round_trip: stats(execs),
        reset: stats(resets),
    };
    if args.json {
        crate::render::print_json(&r);
    } else {
        println!(
            "{:<10} {:<28} {:>8} {:>10} {:>10} {:>10} {:>10}",
            "backend", "measure", "samples", "median_ms", "p95_ms", "min_ms", "max_ms"
        );
        for (name, s) in [
            ("workspace create (10 MB)", &r.create_with_seed),
            ("workspace exec (e2e)", &r.exec_round_trip),
            ("workspace reset", &r.reset),
        ] {
            println!(
                "{:<10} {:<28} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                r.backend, name, s.samples, s.median_ms, s.p95_ms, s.min_ms, s.max_ms
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_read_in_kib() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("smaps_rollup");
        std::fs::write(
            &f,
            "00400000-7ffd [rollup]\nRss:              120000 kB\nPss:              117047 kB\n\
             Pss_Dirty:        115196 kB\n",
        )
        .unwrap();
        let path = f.to_str().unwrap();
        assert_eq!(proc_kib(path, "Pss"), Some(117_047));
        assert_eq!(proc_kib(path, "Rss"), Some(120_000));
        assert_eq!(proc_kib(path, "Swap"), None);
        assert!(proc_kib("/proc/meminfo", "MemAvailable").is_some());
        let m = mem_stats(&[1024, 2048, 3072]);
        assert_eq!((m.median_mib, m.max_mib, m.total_mib), (2.0, 3.0, 6.0));
    }

    #[test]
    fn median_and_p95_follow_nearest_rank() {
        let s = stats((1..=20).map(f64::from).collect());
        assert_eq!(s.median_ms, 10.5);
        assert_eq!(s.p95_ms, 19.0);
        let s = stats(vec![5.0, 1.0, 3.0]);
        assert_eq!(s.median_ms, 3.0);
        assert_eq!(s.p95_ms, 5.0);
        assert_eq!(s.min_ms, 1.0);
    }
}
