//! Helpers shared by the integration tests of `pyro-core` that boot real sandboxes.

#![allow(dead_code, clippy::expect_used)] // each test binary uses its own subset

use pyro_core::{CreateVm, Pyro, PyroOptions};

/// The environment every test boots.
pub const ENV: &str = "debian:12";

/// A core with its own state directory; warm snapshots on or off as asked (`None`: as
/// `PYRO_SNAPSHOTS` says).
pub fn pyro(state: &std::path::Path, snapshots: Option<bool>) -> Pyro {
    let mut opts = PyroOptions::from_env().expect("options");
    opts.state_dir = state.to_path_buf();
    let p = Pyro::new(opts).expect("pyro");
    if let Some(on) = snapshots {
        p.set_snapshots_enabled(on);
    }
    p
}

/// A two-thread runtime, as the CLI uses.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A create request for [`ENV`] with this much memory (tests that need their own warm
/// snapshot use their own size).
pub fn create(mem_mib: i64) -> CreateVm {
    let mut c = CreateVm::new(ENV);
    c.mem_mib = mem_mib;
    c
}

/// Seconds since the epoch on the host.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// How far `guest` (seconds since the epoch) lies outside the host interval
/// `[before, after]` in which the guest read its clock.
pub fn clock_skew(guest: f64, before: f64, after: f64) -> f64 {
    if guest < before {
        before - guest
    } else if guest > after {
        guest - after
    } else {
        0.0
    }
}
