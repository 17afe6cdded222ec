//! `pyro doctor`: real checks of what this host needs, and a non-zero exit when it cannot
//! run sandboxes.

use std::path::Path;
use std::process::ExitCode;

use pyro_core::{BackendChoice, BackendKind, HostFacts, PyroOptions};
use serde::Serialize;

#[derive(Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct KvmReport {
    exists: bool,
    readable: bool,
    writable: bool,
    hardware_assisted: bool,
    paravirtual: bool,
    reason: String,
}

#[derive(Serialize)]
struct DoctorReport {
    platform: String,
    runtime_ok: bool,
    issues: Vec<String>,
    kvm: KvmReport,
    backend: Option<String>,
    checks: Vec<Check>,
    cache_dir: Option<String>,
    state_dir: Option<String>,
    environments: Vec<pyro_image::EnvironmentInfo>,
    /// `--environment`: how ready that environment is.
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<pyro_core::warm::EnvironmentReadiness>,
}

fn on_path(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(Into::into))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs the checks; prints the report; exit 0 only when sandboxes can run.
pub fn run(platform: &str, environment: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    let mut issues = Vec::new();
    if platform != "linux-x86_64" {
        issues.push(format!(
            "platform `{platform}` is not supported (only linux-x86_64)"
        ));
    }
    let k = pyro_firecracker::kvm_status();
    let facts = HostFacts::probe();
    checks.push(Check {
        name: "kvm",
        ok: true,
        detail: k.reason.clone(),
    });
    let opts = PyroOptions::from_env();
    let (backend_choice, cache_dir, state_dir, agent_explicit) = match &opts {
        Ok(o) => (
            o.backend,
            Some(o.cache_dir.clone()),
            Some(o.state_dir.clone()),
            o.agent_bin.clone(),
        ),
        Err(e) => {
            issues.push(format!("configuration: {e}"));
            (BackendChoice::Auto, None, None, None)
        }
    };
    let backend = match pyro_core::backend::resolve(backend_choice, &facts) {
        Ok(kind) => {
            let why = match kind {
                BackendKind::Firecracker => "hardware-assisted KVM is available".to_string(),
                BackendKind::Qemu if facts.kvm_accelerates() => {
                    "qemu chosen explicitly; it will use KVM".to_string()
                }
                BackendKind::Qemu => format!(
                    "no hardware-assisted KVM ({}), so QEMU runs guests under TCG emulation",
                    facts.kvm_reason
                ),
                // A test backend (pyro-core's `fake-backend` feature).
                _ => "a test backend, no VM".to_string(),
            };
            checks.push(Check {
                name: "backend",
                ok: true,
                detail: format!("{} ({why})", kind.as_str()),
            });
            Some(kind)
        }
        Err(e) => {
            issues.push(e.to_string());
            checks.push(Check {
                name: "backend",
                ok: false,
                detail: e.to_string(),
            });
            None
        }
    };
    match backend {
        Some(BackendKind::Qemu) => match pyro_qemu::locate_qemu() {
            Ok(p) => checks.push(Check {
                name: "qemu",
                ok: true,
                detail: p.display().to_string(),
            }),
            Err(e) => {
                issues.push(e.to_string());
                checks.push(Check {
                    name: "qemu",
                    ok: false,
                    detail: e.to_string(),
                });
            }
        },
        Some(BackendKind::Firecracker) => {
            let detail = match &cache_dir {
                Some(c) => match pyro_firecracker::locate(c) {
                    Ok(b) => format!("{} ({:?})", b.firecracker.display(), b.source),
                    Err(_) => "not installed yet; the first run fetches the pinned, sha256-verified v1.12.1 with pip".into(),
                },
                None => "no cache directory".into(),
            };
            checks.push(Check {
                name: "firecracker",
                ok: true,
                detail,
            });
        }
        Some(_) | None => {}
    }
    match pyro_core::host::locate_agent(agent_explicit.as_deref()) {
        Ok(p) => checks.push(Check {
            name: "agent",
            ok: true,
            detail: format!("{} (static)", p.display()),
        }),
        Err(e) => {
            issues.push(e.to_string());
            checks.push(Check {
                name: "agent",
                ok: false,
                detail: e.to_string(),
            });
        }
    }
    let mut environments = Vec::new();
    let mut any_installed = false;
    if let Some(c) = &cache_dir {
        match pyro_image::Cache::open(c.clone()) {
            Ok(cache) => {
                environments = pyro_image::list(&cache);
                any_installed = environments.iter().any(|e| e.installed);
                checks.push(Check {
                    name: "cache",
                    ok: true,
                    detail: format!(
                        "{} ({} of {} environments built)",
                        c.display(),
                        environments.iter().filter(|e| e.installed).count(),
                        environments.len()
                    ),
                });
            }
            Err(e) => {
                issues.push(format!("environment cache: {e}"));
                checks.push(Check {
                    name: "cache",
                    ok: false,
                    detail: e.to_string(),
                });
            }
        }
    }
    for (tool, package) in [
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("xz", "xz-utils"),
    ] {
        let found = on_path(tool);
        let ok = found.is_some();
        if !ok && !any_installed {
            issues.push(format!(
                "`{tool}` is missing and no environment is built yet; install it: apt-get install {package}"
            ));
        }
        checks.push(Check {
            name: tool_name(tool),
            ok,
            detail: found.map(|p| p.display().to_string()).unwrap_or_else(|| {
                format!("missing (apt-get install {package}); needed to build environments")
            }),
        });
    }
    if let Some(c) = &cache_dir {
        // Informational: warm snapshots are built on first use and never required.
        let store = pyro_core::warm::SnapshotStore::new(c);
        let snaps = store.list();
        let bytes: u64 = snaps.iter().map(|s| s.meta().disk_bytes).sum();
        let failed = std::fs::read_dir(store.root())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".failed"))
                    .count()
            })
            .unwrap_or(0);
        checks.push(Check {
            name: "snapshots",
            ok: true,
            detail: format!(
                "warm snapshots {} (PYRO_SNAPSHOTS); {} built, {:.0} MiB, in {}{}",
                if pyro_core::warm::enabled_by_env() {
                    "on"
                } else {
                    "off"
                },
                snaps.len(),
                bytes as f64 / 1048576.0,
                store.root().display(),
                if failed > 0 {
                    format!("; {failed} failed build(s) or restore(s) recorded (*.failed)")
                } else {
                    String::new()
                }
            ),
        });
    }
    if let Some(s) = &state_dir {
        let ok = std::fs::create_dir_all(s).is_ok() && is_writable(s);
        if !ok {
            issues.push(format!("state directory {} is not writable", s.display()));
        }
        checks.push(Check {
            name: "state",
            ok,
            detail: s.display().to_string(),
        });
    }
    // Guest networking's host side (`pyro-net`): informational, because only networked
    // sandboxes need it.
    checks.push(match pyro_net::setup::check_capabilities(true) {
        Ok(_) => {
            // What a networked sandbox changes on the host, and whom its resolver asks.
            let forward = match std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward") {
                Ok(v) if v.trim() == "1" => "ip_forward is on (left as it is)".to_string(),
                Ok(_) => "ip_forward is off: pyro turns it on while networked sandboxes run \
                          and restores it after the last one"
                    .to_string(),
                Err(e) => format!("ip_forward unreadable ({e})"),
            };
            let upstreams = pyro_core::net::upstreams().unwrap_or_default();
            let dns = if upstreams.is_empty() {
                "no DNS resolver (none in /etc/resolv.conf, or PYRO_NET_UPSTREAMS unset or \
                 invalid)"
                    .to_string()
            } else {
                format!(
                    "guests' DNS goes to {}",
                    upstreams
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            Check {
                name: "network",
                ok: !upstreams.is_empty(),
                detail: format!(
                    "ready: CAP_NET_ADMIN, CAP_SYS_ADMIN, /dev/net/tun, ip and nft present; \
                     {forward}; {dns} (only networked sandboxes need this)"
                ),
            }
        }
        Err(e) => Check {
            name: "network",
            ok: false,
            detail: format!("{e} (only networked sandboxes need it; others run without)"),
        },
    });
    // `--environment`: informational (a cold environment still runs), but a name the
    // catalog does not know is an error.
    let readiness = match (environment, &opts) {
        (Some(name), Ok(o)) => Some(
            pyro_core::Pyro::new(o.clone())
                .and_then(|p| p.environment_readiness(name))
                .map_err(anyhow::Error::new)?,
        ),
        _ => None,
    };
    let report = DoctorReport {
        platform: platform.to_string(),
        runtime_ok: issues.is_empty(),
        issues,
        kvm: KvmReport {
            exists: k.exists,
            readable: k.readable,
            writable: k.writable,
            hardware_assisted: k.hardware_assisted,
            paravirtual: k.paravirtual_pvm,
            reason: k.reason.clone(),
        },
        backend: backend.map(|b| b.as_str().to_string()),
        checks,
        cache_dir: cache_dir.map(|c| c.display().to_string()),
        state_dir: state_dir.map(|s| s.display().to_string()),
        environments,
        environment: readiness,
    };
    if json {
        crate::render::print_json(&report);
    } else {
        println!("Platform: {}", report.platform);
        println!(
            "Runtime: {}",
            if report.runtime_ok { "PASS" } else { "FAIL" }
        );
        println!(
            "KVM: exists={} readable={} writable={} hardware_assisted={} paravirtual={}",
            yn(k.exists),
            yn(k.readable),
            yn(k.writable),
            yn(k.hardware_assisted),
            yn(k.paravirtual_pvm)
        );
        for c in &report.checks {
            println!(
                "[{}] {}: {}",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        if let Some(r) = &report.environment {
            println!(
                "Environment {}: {} ({})",
                r.environment,
                r.state.as_str(),
                r.detail
            );
        }
        if !report.issues.is_empty() {
            println!("Issues:");
            for i in &report.issues {
                println!("- {i}");
            }
        }
    }
    Ok(if report.runtime_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn tool_name(tool: &str) -> &'static str {
    match tool {
        "mmdebstrap" => "mmdebstrap",
        "mkfs.ext4" => "mkfs.ext4",
        _ => "xz",
    }
}

fn yn(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn is_writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
