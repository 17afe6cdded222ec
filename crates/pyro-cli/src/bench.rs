//! `pyro bench`: cold start of `pyro run ENV -- true` (end to end, including the CLI's own
//! start) and exec round trips on one booted sandbox, per available backend, reported as
//! median and p95.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use pyro_core::{BackendChoice, BackendKind, CreateVm, HostFacts};
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
}

/// Summary statistics of a sample, in milliseconds.
#[derive(Serialize, Debug, Clone)]
pub struct Stats {
    samples: usize,
    median_ms: f64,
    p95_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stats(mut v: Vec<f64>) -> Stats {
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
        for i in 0..args.iterations {
            let t = Instant::now();
            let out = tokio::process::Command::new(&exe)
                .args([
                    "run",
                    "--backend",
                    kind.as_str(),
                    &args.environment,
                    "--",
                    "true",
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if !out.status.success() {
                anyhow::bail!(
                    "run {i} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            runs.push(ms);
        }
        eprintln!(
            "[bench] backend={} measuring exec and ping round trips x{}",
            kind.as_str(),
            args.iterations
        );
        let mut create = CreateVm::new(args.environment.clone());
        create.backend = Some(match kind {
            BackendKind::Firecracker => BackendChoice::Firecracker,
            BackendKind::Qemu => BackendChoice::Qemu,
        });
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

#[derive(Serialize)]
struct WorkspaceBench {
    backend: String,
    seed_bytes: u64,
    create_with_seed: Stats,
    exec_round_trip: Stats,
    reset: Stats,
}

async fn timed(exe: &std::path::Path, args: &[&str]) -> anyhow::Result<(f64, Vec<u8>)> {
    let t = Instant::now();
    let out = tokio::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        anyhow::bail!(
            "`pyro {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((ms, out.stdout))
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
    // A 10 MB seed: 100 files of 100 KiB of pseudo-random bytes, in 10 directories.
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
