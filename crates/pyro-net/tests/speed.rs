//! How long one sandbox's network takes to build and remove, and how many processes that
//! spawns: `create_in_claimed` plus `Teardown::run` of a sandbox with a TAP, in a host
//! namespace the test makes. Prints the medians; asserts no timing (timing goals are not
//! tests), only the number of processes spawned. One test in its own binary, so the process count
//! is this test's alone. Needs root, `ip` and `nft`; skips with a printed reason without
//! them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::*;
use pyro_net::setup::{self, GuestLink, Options, Teardown};
use pyro_net::{Allowlist, NetworkPolicy, SandboxNet, cmd};

const ROUNDS: usize = 10;

#[test]
fn create_and_teardown_of_a_tap_sandbox_are_quick() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "speed");
    let host = Some(world.host.name.clone());
    let _ = Teardown::all(SandboxNet::new(16360).unwrap(), host.clone()).run(&tools);
    let options = Options {
        host_netns: host.clone(),
        guest: GuestLink::Tap,
        credentials: false,
    };
    let (mut create, mut teardown) = (Vec::new(), Vec::new());
    let (mut create_procs, mut teardown_procs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let plan = setup::claim(&tools, host.as_deref(), 16360).unwrap();
        let (spawned, started) = (cmd::spawned(), Instant::now());
        let mut net = setup::create_in_claimed(
            &tools,
            plan,
            NetworkPolicy::Egress,
            &Allowlist::default(),
            &options,
        )
        .unwrap();
        create.push(started.elapsed());
        create_procs.push(cmd::spawned() - spawned);
        let (spawned, started) = (cmd::spawned(), Instant::now());
        net.teardown.run(&tools).unwrap();
        teardown.push(started.elapsed());
        teardown_procs.push(cmd::spawned() - spawned);
        assert!(net.teardown.is_done());
        assert!(!pyro_net::netns::exists(&plan.name()));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let total: Vec<Duration> = create.iter().zip(&teardown).map(|(c, t)| *c + *t).collect();
    eprintln!(
        "create_in_claimed + teardown (TAP, egress), median of {ROUNDS}: create {:?}, \
         teardown {:?}, both {:?}; processes: create {:?}, teardown {:?}",
        median(&mut create),
        median(&mut teardown),
        median(&mut total.clone()),
        create_procs[0],
        teardown_procs[0],
    );
    // Two nft runs and two ip batches; an ip link del and one nft run (docs/network.md,
    // "Creation and teardown").
    assert!(create_procs.iter().all(|&n| n == 4), "{create_procs:?}");
    assert!(teardown_procs.iter().all(|&n| n == 2), "{teardown_procs:?}");
}
