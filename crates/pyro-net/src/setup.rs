//! One sandbox's network on the host: the capability check, claiming an index ([`claim`]),
//! [`create`] / [`create_in_claimed`], and [`Teardown`].
//!
//! The namespace `pyro-<index>` is the host-wide claim on an index: `ip netns add` creates
//! `/run/netns/pyro-<index>` with `O_EXCL`, so of several pyro processes (with different
//! state directories, say) exactly one gets it. [`claim`] tries indices from a start until
//! one is free; the caller records the index (its ledger) and then calls
//! [`create_in_claimed`]. [`create`] does both steps in one, for callers that know the index
//! is theirs.
//!
//! Creation builds, in this order, so the rules are in force before any link exists:
//!
//! 1. the namespace `pyro-<index>` (refused if it exists: never adopt what someone else made;
//!    [`create_in_claimed`] takes the one [`claim`] made), IPv6 disabled and strict
//!    reverse-path filtering inside it;
//! 2. the sandbox table inside it (`create table`: the namespace is new), and at the same
//!    time, under the host lock and in one transaction, the host-guard table (refused if a
//!    table of that name exists there) with the host's forwarding and NAT for all sandboxes
//!    (the shared `inet pyro-host` table, then `ip_forward`; see [`crate::host::ensure`]);
//! 3. the lock held until the uplink exists, so a concurrent teardown cannot undo the
//!    forwarding in between;
//! 4. the uplink veth (`pyro-<index>` on the host, `pyro-up` inside), its addresses, and the
//!    namespace's default route via the host end;
//! 5. the guest link `pyro-tap` (a TAP for the VMM, or for tests a veth into another
//!    namespace) with the gateway address;
//! 6. `ip_forward` inside the namespace.
//!
//! Every step that creates something is recorded in the [`Teardown`] first (an nft
//! transaction as soon as it has succeeded: a failed one made nothing); if a later step
//! fails, what was made is removed before the error is returned (for [`create_in_claimed`],
//! the claimed namespace too). [`Teardown`] removes, under the host lock, the uplink while
//! one nft transaction deletes the host guard and, when no other uplink is left, what
//! [`crate::host::ensure`] made; then the namespace.
//!
//! Speed: `nft` runs enter their namespace themselves ([`cmd::run_in`], no `ip netns
//! exec`), the links of each namespace are made by one `ip -batch -` ([`link::Batch`]),
//! existence checks need no process ([`link::index`], `/run/netns`), and nothing is
//! deleted while creating (an nft transaction that deletes waits for an RCU grace period).
//! A TAP sandbox: 4 processes to create, 2 to tear down.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::{self, CmdError};
use crate::netns::{self, SysctlError};
use crate::plan::{SandboxNet, TAP_NAME, UPLINK_NS_NAME};
use crate::policy::{Allowlist, NetworkPolicy};
use crate::{host, link, ruleset};

/// Most indices [`claim`] tries before giving up.
pub const CLAIM_TRIES: u32 = 64;

/// `CAP_NET_ADMIN`: links, addresses, routes, nftables.
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`: creating and bind-mounting a network namespace.
const CAP_SYS_ADMIN: u32 = 21;
/// The TUN/TAP device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Why a sandbox's network could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The host lacks something guest networking needs (one line, naming each thing).
    #[error("guest networking is unavailable: missing {missing}")]
    Unavailable {
        /// What is missing, comma-separated.
        missing: String,
    },
    /// Something of this name exists already; pyro does not adopt what it did not make.
    #[error("{what} `{name}` already exists; refusing to reuse it")]
    Exists {
        /// Network namespace or nft table.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A command failed.
    #[error(transparent)]
    Command(#[from] CmdError),
    /// A sysctl could not be read or set.
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    /// [`claim`] found no free index.
    #[error("no free sandbox network index: {tries} tried from {start}, all in use")]
    Exhausted {
        /// The first index tried.
        start: u32,
        /// How many were tried.
        tries: u32,
    },
    /// [`create_in_claimed`] was given a namespace that does not exist.
    #[error("network namespace `{name}` was not claimed (it does not exist)")]
    NotClaimed {
        /// Its name.
        name: String,
    },
    /// A namespace could not be entered or identified.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// pyro's host-wide network state (`/run/pyro/net`) could not be used.
    #[error("cannot use pyro's network state {path}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The programs guest networking runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// iproute2's `ip`.
    pub ip: PathBuf,
    /// nftables' `nft`.
    pub nft: PathBuf,
}

/// What [`missing`] looks at, gathered from the host by [`check_capabilities`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The effective capability set (`CapEff` of `/proc/self/status`).
    pub cap_eff: u64,
    /// Whether `/dev/net/tun` exists.
    pub tun: bool,
    /// Where `ip` is.
    pub ip: Option<PathBuf>,
    /// Where `nft` is.
    pub nft: Option<PathBuf>,
}

/// What guest networking lacks on a host with `facts`; `tap` says whether a TAP is needed.
pub fn missing(facts: &HostFacts, tap: bool) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if facts.cap_eff & (1 << CAP_NET_ADMIN) == 0 {
        missing.push("CAP_NET_ADMIN");
    }
    if facts.cap_eff & (1 << CAP_SYS_ADMIN) == 0 {
        missing.push("CAP_SYS_ADMIN (to create network namespaces)");
    }
    if tap && !facts.tun {
        missing.push(TUN_DEVICE);
    }
    if facts.ip.is_none() {
        missing.push("`ip` (iproute2)");
    }
    if facts.nft.is_none() {
        missing.push("`nft` (nftables)");
    }
    missing
}

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Checks, creating nothing, that this process can build guest networks; a one-line
/// [`NetError::Unavailable`] names everything missing.
pub fn check_capabilities(tap: bool) -> Result<Tools, NetError> {
    let facts = HostFacts {
        cap_eff: effective_caps(),
        tun: Path::new(TUN_DEVICE).exists(),
        ip: cmd::find_program("ip"),
        nft: cmd::find_program("nft"),
    };
    match (missing(&facts, tap).as_slice(), facts.ip, facts.nft) {
        ([], Some(ip), Some(nft)) => Ok(Tools { ip, nft }),
        (missing, _, _) => Err(NetError::Unavailable {
            missing: missing.join(", "),
        }),
    }
}

/// The guest's side of the sandbox namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestLink {
    /// A persistent TAP `pyro-tap`, for a VMM started inside the namespace.
    Tap,
    /// A veth pair: `pyro-tap` inside, `name` in namespace `netns` (a stand-in for a VM, in
    /// tests).
    Veth {
        /// The namespace standing in for the guest.
        netns: String,
        /// The interface's name there.
        name: String,
    },
}

/// Where [`create`] puts things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The namespace playing the host (the host end of the uplink and the host-guard
    /// table); `None` is the namespace pyro runs in.
    pub host_netns: Option<String>,
    /// The guest link.
    pub guest: GuestLink,
    /// Whether the sandbox has credentials to inject: its HTTP(S) then goes through the
    /// egress proxy even without host patterns ([`ruleset::proxied`]).
    pub credentials: bool,
}

/// A sandbox's network, as made by [`create`].
#[derive(Debug)]
pub struct Network {
    /// Its plan.
    pub plan: SandboxNet,
    /// What removes it.
    pub teardown: Teardown,
    tools: Tools,
}

impl Network {
    /// Adds `addrs` to the sandbox's `allowed_v4` set, each for its lifetime (what pyro's
    /// resolver will do for answers to allowed names).
    pub fn allow(&self, addrs: &[(Ipv4Addr, Duration)]) -> Result<(), NetError> {
        apply(
            &self.tools,
            Some(&self.plan.name()),
            &ruleset::allow_addresses(&self.plan, addrs),
        )
    }

    /// The resolver's callback for this sandbox ([`crate::dns::server::spawn`]): what
    /// [`Network::allow`] does, on its own copy of the plan and tools.
    pub fn on_answer(&self) -> crate::dns::OnAnswer {
        let (tools, plan) = (self.tools.clone(), self.plan);
        std::sync::Arc::new(move |addrs: &[(Ipv4Addr, Duration)]| {
            apply(
                &tools,
                Some(&plan.name()),
                &ruleset::allow_addresses(&plan, addrs),
            )
        })
    }
}

/// Applies an nft JSON document inside `ns` (`nft -j -f -`, entering `ns` itself).
pub(crate) fn apply(
    tools: &Tools,
    ns: Option<&str>,
    doc: &serde_json::Value,
) -> Result<(), NetError> {
    let body = doc.to_string();
    nft(tools, ns, &["-j", "-f", "-"], Some(body.as_bytes())).map(drop)
}

fn nft(
    tools: &Tools,
    ns: Option<&str>,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<String, NetError> {
    Ok(cmd::run_in(ns, &tools.nft, args, stdin)?)
}

pub(crate) fn table_exists(tools: &Tools, ns: Option<&str>, table: &str) -> bool {
    nft(tools, ns, &["list", "table", ruleset::FAMILY, table], None).is_ok()
}

/// Claims a sandbox index host-wide: tries `start`, `start + 1`, … (wrapping below
/// [`crate::plan::MAX_SANDBOXES`]), at most [`CLAIM_TRIES`] of them, and creates the
/// namespace of the first free one (`ip netns add`, which fails if it exists). An index whose
/// namespace, host link `pyro-<index>` or host table `inet pyro-<index>` (in `host_netns`,
/// `None`: this process's) exists is skipped. The namespace is the caller's from now on:
/// build on it with [`create_in_claimed`], or remove it with [`Teardown::all`].
pub fn claim(tools: &Tools, host_netns: Option<&str>, start: u32) -> Result<SandboxNet, NetError> {
    let max = crate::plan::MAX_SANDBOXES;
    for i in 0..CLAIM_TRIES {
        let index = start.wrapping_add(i) % max;
        let Ok(plan) = SandboxNet::new(index) else {
            continue;
        };
        let name = plan.name();
        if netns::exists(&name)
            || link::index(host_netns, &name)?.is_some()
            || table_exists(tools, host_netns, &name)
        {
            continue;
        }
        match cmd::run(&tools.ip, &["netns", "add", &name], None) {
            Ok(_) => return Ok(plan),
            // Another process claimed it between the check and the add.
            Err(_) if netns::exists(&name) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(NetError::Exhausted {
        start: start % max,
        tries: CLAIM_TRIES,
    })
}

/// Builds the network of sandbox `plan` (see the module docs), creating its namespace
/// (refused if it exists). Under [`NetworkPolicy::Off`] nothing is created and the
/// [`Teardown`] is empty.
pub fn create(
    tools: &Tools,
    plan: SandboxNet,
    policy: NetworkPolicy,
    allowlist: &Allowlist,
    options: &Options,
) -> Result<Network, NetError> {
    create_with(tools, plan, policy, allowlist, options, false)
}

/// Builds the network of sandbox `plan` in the namespace [`claim`] made for it (which must
/// exist; it is taken as the caller's). On failure everything is removed, the namespace
/// included. Under [`NetworkPolicy::Off`] nothing is built and the [`Teardown`] removes just
/// the namespace.
pub fn create_in_claimed(
    tools: &Tools,
    plan: SandboxNet,
    policy: NetworkPolicy,
    allowlist: &Allowlist,
    options: &Options,
) -> Result<Network, NetError> {
    create_with(tools, plan, policy, allowlist, options, true)
}

fn create_with(
    tools: &Tools,
    plan: SandboxNet,
    policy: NetworkPolicy,
    allowlist: &Allowlist,
    options: &Options,
    claimed: bool,
) -> Result<Network, NetError> {
    let mut net = Network {
        plan,
        teardown: Teardown::nothing(plan, options.host_netns.clone()),
        tools: tools.clone(),
    };
    if claimed {
        if !netns::exists(&plan.name()) {
            return Err(NetError::NotClaimed { name: plan.name() });
        }
        net.teardown.netns = true;
    }
    if !policy.is_networked() {
        return Ok(net);
    }
    match build(
        tools,
        &mut net.teardown,
        policy,
        allowlist,
        options,
        claimed,
    ) {
        Ok(()) => Ok(net),
        Err(err) => {
            // Best effort: the build error is the one worth reporting; Teardown::all (by
            // name) cleans up whatever this leaves.
            let _ = net.teardown.run(tools);
            Err(err)
        }
    }
}

fn build(
    tools: &Tools,
    td: &mut Teardown,
    policy: NetworkPolicy,
    allowlist: &Allowlist,
    options: &Options,
    claimed: bool,
) -> Result<(), NetError> {
    let plan = td.plan;
    let name = plan.name();
    let host = options.host_netns.as_deref();
    let ip = tools.ip.as_path();

    if !claimed && netns::exists(&name) {
        return Err(NetError::Exists {
            what: "network namespace",
            name,
        });
    }
    if !claimed {
        cmd::run(ip, &["netns", "add", &name], None)?;
        td.netns = true;
    }
    netns::run_in(&name, || {
        for key in [
            "net/ipv4/conf/all/rp_filter",
            "net/ipv4/conf/default/rp_filter",
        ] {
            netns::write_own_sysctl(&name, key, "1")?;
        }
        for key in [
            "net/ipv6/conf/all/disable_ipv6",
            "net/ipv6/conf/default/disable_ipv6",
        ] {
            match netns::write_own_sysctl(&name, key, "1") {
                // A kernel without IPv6 has no such file, and nothing to disable.
                Err(SysctlError::Write { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok::<_, SysctlError>(())
    })??;

    // Both tables before any link exists, made at the same time (each `nft` run costs a
    // few milliseconds), the sandbox's on a thread of its own.
    //
    // The namespace is new (this call's or `claim`'s): `create table` makes the sandbox
    // table without the deletion a replacement does (quicker: a deletion waits for an RCU
    // grace period), and refuses one someone else put there meanwhile.
    //
    // The host guard and the host's forwarding go in one transaction, under the host lock,
    // which is held until the uplink exists: a teardown running meanwhile sees this
    // sandbox's link and leaves the host's forwarding alone. Dropped before this function
    // returns, so a failure's teardown can take the lock. `create table` refuses a guard
    // table that exists (pyro never adopts what it did not make), and then nothing of the
    // transaction is applied. Recorded as soon as it is: if `ensure` fails later, the
    // teardown's release undoes it.
    let sandbox =
        ruleset::sandbox_with(&plan, policy, allowlist, options.credentials).create_commands();
    let sandbox = serde_json::json!({ "nftables": sandbox });
    let guard = ruleset::host_guard(&plan).create_commands();
    let (sandbox, forwarding) = std::thread::scope(|scope| {
        let sandbox = scope.spawn(|| apply(tools, Some(&name), &sandbox));
        let forwarding = host::ensure_with(tools, host, guard, || {
            td.host_table = true;
            td.host_link = true;
        });
        let sandbox = sandbox
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (sandbox, forwarding)
    });
    let forwarding = match forwarding {
        Ok(forwarding) => forwarding,
        Err(_) if !td.host_table && table_exists(tools, host, &name) => {
            return Err(NetError::Exists {
                what: "nft table inet",
                name,
            });
        }
        Err(err) => return Err(err),
    };
    // With the lock released if it failed.
    sandbox?;
    link::Batch::default()
        .add_veth(&name, UPLINK_NS_NAME, &name)
        .add_addr(&name, plan.uplink_host(), plan.uplink_subnet().prefix_len())
        .up(&name)
        .run(ip, host)?;
    drop(forwarding);

    let mut inside = link::Batch::default();
    inside
        .up("lo")
        .add_addr(
            UPLINK_NS_NAME,
            plan.uplink_ns(),
            plan.uplink_subnet().prefix_len(),
        )
        .up(UPLINK_NS_NAME)
        .default_route(plan.uplink_host());
    match &options.guest {
        GuestLink::Tap => inside.add_tap(TAP_NAME),
        GuestLink::Veth { netns, name: peer } => inside.add_veth(TAP_NAME, peer, netns),
    };
    inside
        .add_addr(TAP_NAME, plan.gateway(), plan.guest_subnet().prefix_len())
        .up(TAP_NAME)
        .run(ip, Some(&name))?;

    netns::write_sysctl(&name, "net/ipv4/ip_forward", "1")?;
    Ok(())
}

/// Removes a sandbox's network: exactly the things it names, each only if still there.
/// Safe to run twice, after a crash ([`Teardown::all`] names everything a plan could have
/// made), or on half-made state. Deleting the namespace takes the TAP, the namespace's end
/// of the uplink and the sandbox table with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Teardown {
    plan: SandboxNet,
    host_netns: Option<String>,
    /// The host-guard table `inet pyro-<index>` in the host's namespace.
    pub host_table: bool,
    /// The host end of the uplink, `pyro-<index>`.
    pub host_link: bool,
    /// The namespace `pyro-<index>`.
    pub netns: bool,
}

impl Teardown {
    /// Removes nothing.
    pub fn nothing(plan: SandboxNet, host_netns: Option<String>) -> Self {
        Self {
            plan,
            host_netns,
            host_table: false,
            host_link: false,
            netns: false,
        }
    }

    /// Removes everything `plan` could own (for cleaning up after a crash, from the
    /// ledger's record of the index).
    pub fn all(plan: SandboxNet, host_netns: Option<String>) -> Self {
        Self {
            plan,
            host_netns,
            host_table: true,
            host_link: true,
            netns: true,
        }
    }

    /// Whether there is nothing left to remove.
    pub fn is_done(&self) -> bool {
        !(self.host_table || self.host_link || self.netns)
    }

    /// Removes what is recorded; each thing removed (or found gone) is struck off, so a
    /// second run does nothing. On failure the rest is still tried and the first error
    /// returned.
    pub fn run(&mut self, tools: &Tools) -> Result<(), NetError> {
        let name = self.plan.name();
        let host = self.host_netns.as_deref();
        let mut first_error = None;
        // `still_there` is asked only after a failure.
        let mut note = |result: Result<(), NetError>, still_there: &dyn Fn() -> bool| match result {
            Ok(()) => true,
            Err(_) if !still_there() => true,
            Err(err) => {
                first_error.get_or_insert(err);
                false
            }
        };
        let link_there = || !matches!(link::index(host, &name), Ok(None));
        if self.host_link || self.host_table {
            // The uplink, the host guard and (if this was the last uplink) the host's
            // forwarding: see `host::remove`. The last sandbox's teardown undoes the
            // forwarding; not retried by a second run once the uplink is gone:
            // `Teardown::all` of any sandbox, or the next sandbox's teardown, does it again.
            let guard = self.host_table.then_some(name.as_str());
            let uplink = self.host_link.then_some(name.as_str());
            match host::remove(tools, host, guard, uplink) {
                Err(err) => {
                    note(Err(err), &|| true);
                }
                Ok(removed) => {
                    if self.host_link {
                        self.host_link = !note(removed.uplink, &link_there);
                    }
                    if let Err(err) = removed.tables {
                        let guard_there = guard.is_some() && table_exists(tools, host, &name);
                        self.host_table = guard_there;
                        // A failed release is worth reporting even with the guard gone.
                        note(Err(err), &|| uplink.is_some() || guard_there);
                    } else {
                        self.host_table = false;
                    }
                }
            }
        }
        if self.netns {
            let result = if netns::exists(&name) {
                netns::remove(&name).map_err(NetError::from)
            } else {
                Ok(())
            };
            self.netns = !note(result, &|| netns::exists(&name));
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            cap_eff: (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN),
            tun: true,
            ip: Some("/usr/sbin/ip".into()),
            nft: Some("/usr/sbin/nft".into()),
        }
    }

    #[test]
    fn nothing_missing() {
        assert!(missing(&facts(), true).is_empty());
    }

    #[test]
    fn missing_things_are_named_on_one_line() {
        let f = HostFacts {
            cap_eff: 0,
            tun: false,
            ip: None,
            nft: None,
        };
        let err = NetError::Unavailable {
            missing: missing(&f, true).join(", "),
        };
        assert_eq!(
            err.to_string(),
            "guest networking is unavailable: missing CAP_NET_ADMIN, CAP_SYS_ADMIN (to create \
             network namespaces), /dev/net/tun, `ip` (iproute2), `nft` (nftables)"
        );
        assert_eq!(
            missing(
                &HostFacts {
                    tun: false,
                    ..facts()
                },
                false
            ),
            Vec::<&str>::new()
        );
        assert_eq!(
            missing(
                &HostFacts {
                    nft: None,
                    ..facts()
                },
                true
            ),
            vec!["`nft` (nftables)"]
        );
        assert_eq!(
            missing(
                &HostFacts {
                    cap_eff: 1 << CAP_SYS_ADMIN,
                    ..facts()
                },
                true
            ),
            vec!["CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn exhaustion_names_the_range_tried() {
        let err = NetError::Exhausted {
            start: 16380,
            tries: CLAIM_TRIES,
        };
        assert_eq!(
            err.to_string(),
            "no free sandbox network index: 64 tried from 16380, all in use"
        );
    }

    #[test]
    fn teardown_records() {
        let plan = SandboxNet::new(3).unwrap();
        assert!(Teardown::nothing(plan, None).is_done());
        assert!(!Teardown::all(plan, None).is_done());
    }
}
