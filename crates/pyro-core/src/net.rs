//! Networked sandboxes: the core's side of `pyro_net`.
//!
//! A networked sandbox (policy `egress` or `egress+published-ports`) gets, for as long as
//! its machine runs, one network: an index of pyro's address plan claimed host-wide (its
//! namespace `pyro-<index>` is made with `O_EXCL`, so two pyro processes never share one),
//! the namespace with its TAP, uplink and nftables tables (`pyro_net::setup`), and the
//! network daemon `pyro __net` (the resolver on the gateway, and with host patterns the
//! egress proxy; it writes denials and counters into the sandbox's `net/` directory).
//!
//! The ledger records the index ([`Resource::Network`]) as soon as the namespace is
//! claimed and before anything else is made, and the daemon as a helper process, so every
//! teardown (stop, delete, a failed create, reaping after a crash) removes all of it: the
//! daemon before the machine, the network after it (the VMM holds the TAP).
//!
//! Order of a networked boot: [`Pyro::check_network`] (nothing created; fails with one line
//! naming what is missing), [`Pyro::open_network`] (claim, record, build, daemon), then the
//! machine boots with the [`GuestNic`] inside the namespace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pyro_net::setup::{self, GuestLink, Options, Tools};
use pyro_net::{Allowlist, NetworkPolicy, SandboxNet};

use crate::Pyro;
use crate::backend::{GuestAddress, GuestNic};
use crate::error::{CoreError, Result};
use crate::host;
use crate::ledger::Resource;

/// The ledger role of a sandbox's network daemon.
pub(crate) const DAEMON_ROLE: &str = "net";
/// How long a helper (the daemon, a port relay) may take to say it serves.
const HELPER_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Test hook: a PEM file of extra roots the egress proxy trusts when it re-originates an
/// intercepted TLS connection (the test world's own CA).
pub const EXTRA_ROOTS_ENV: &str = "PYRO_NET_EXTRA_ROOTS";

/// The sandbox's subdirectory the daemon keeps its spec, denials and counters in.
pub(crate) const NET_DIR: &str = "net";
/// The MAC a networked warm snapshot's template has (every clone gets its own when it is
/// restored): locally administered, outside the range of [`SandboxNet::guest_mac`].
pub(crate) const TEMPLATE_MAC: [u8; 6] = [0x02, 0x70, 0x79, 0xff, 0xff, 0xfe];

/// A sandbox's network while its machine runs.
#[derive(Debug)]
pub(crate) struct SandboxNetwork {
    /// Its addresses and names.
    pub(crate) plan: SandboxNet,
    /// The card its machine gets.
    pub(crate) nic: GuestNic,
    /// The network daemon until it said it serves ([`Pyro::network_ready`]): it starts
    /// while the machine boots.
    daemon: Option<PendingHelper>,
}

impl SandboxNetwork {
    fn new(plan: SandboxNet) -> Self {
        let nic = GuestNic {
            netns: pyro_net::netns::path(&plan.name()),
            tap: pyro_net::plan::TAP_NAME.to_string(),
            mac: plan.guest_mac(),
            config: Some(GuestAddress {
                address: plan.guest(),
                prefix: plan.guest_subnet().prefix_len(),
                gateway: plan.gateway(),
            }),
        };
        Self {
            plan,
            nic,
            daemon: None,
        }
    }
}

/// The card of a networked warm snapshot's template (and of every restore of it): `nic`'s
/// namespace and TAP, the template's MAC, and no address yet.
pub(crate) fn template_nic(nic: &GuestNic) -> GuestNic {
    GuestNic {
        netns: nic.netns.clone(),
        tap: nic.tap.clone(),
        mac: TEMPLATE_MAC,
        config: None,
    }
}

/// The network tools, or why networking is unavailable here.
fn tools() -> Result<Tools> {
    setup::check_capabilities(true).map_err(|e| CoreError::NetworkUnavailable {
        reason: e.to_string(),
    })
}

fn net_error(e: impl std::fmt::Display) -> CoreError {
    CoreError::Network {
        reason: e.to_string(),
    }
}

/// Removes everything network `index` could own (the ledger's release of
/// [`Resource::Network`]); what is gone already counts as removed.
pub(crate) fn release(index: u32) -> Result<()> {
    let plan = SandboxNet::new(index).map_err(net_error)?;
    let tools = tools()?;
    setup::Teardown::all(plan, None)
        .run(&tools)
        .map_err(net_error)
}

/// The variable that names the resolvers the guests' queries go to (`IP[:PORT]`, comma
/// separated) instead of the host's `/etc/resolv.conf`.
pub const UPSTREAMS_ENV: &str = "PYRO_NET_UPSTREAMS";

/// The resolvers pyro's resolver forwards to: [`UPSTREAMS_ENV`], else the host's.
///
/// # Errors
///
/// [`UPSTREAMS_ENV`] set to something that is not a list of `IP[:PORT]`.
pub fn upstreams() -> Result<Vec<std::net::SocketAddr>> {
    let Some(value) = std::env::var_os(UPSTREAMS_ENV) else {
        return Ok(pyro_net::dns::host_upstreams());
    };
    let bad = |reason: String| CoreError::Invalid {
        field: UPSTREAMS_ENV,
        reason,
    };
    let value = value.into_string().map_err(|_| bad("not UTF-8".into()))?;
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .take(8)
        .map(|item| {
            item.parse::<std::net::SocketAddr>()
                .or_else(|_| {
                    item.parse::<std::net::IpAddr>()
                        .map(|ip| std::net::SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    bad(format!(
                        "`{}` is not IP or IP:PORT",
                        item.chars().take(64).collect::<String>()
                    ))
                })
        })
        .collect()
}

impl Pyro {
    /// Checks, creating nothing, that this host can make networked sandboxes: one error
    /// naming everything missing (CAP_NET_ADMIN, namespaces, /dev/net/tun, ip, nft) and
    /// the `pyro` binary that runs the network daemon.
    pub(crate) fn check_network(&self, policy: NetworkPolicy) -> Result<()> {
        if !policy.is_networked() {
            return Ok(());
        }
        tools()?;
        if upstreams()?.is_empty() {
            return Err(CoreError::NetworkUnavailable {
                reason: format!(
                    "guest networking is unavailable: the host has no DNS resolver to forward \
                     the guest's queries to (no nameserver in /etc/resolv.conf; or set \
                     {UPSTREAMS_ENV})"
                ),
            });
        }
        if self.pyro_bin().is_none() {
            return Err(CoreError::NetworkUnavailable {
                reason:
                    "the `pyro` binary that runs the network daemon was not found; set PYRO_BIN"
                        .into(),
            });
        }
        Ok(())
    }

    /// Makes the network of sandbox `owner` (its ledger's owner) for one boot: claims an
    /// index, records it, builds namespace, TAP, uplink and rules, and starts the daemon in
    /// `sandbox_dir/net`. On failure whatever was made is removed again (and forgotten).
    pub(crate) async fn open_network(
        &self,
        owner: &str,
        policy: NetworkPolicy,
        allowlist: &Allowlist,
        sandbox_dir: &Path,
    ) -> Result<SandboxNetwork> {
        let started = std::time::Instant::now();
        // A workspace's credentials (`--secret-host`): the proxy injects them.
        let credentials = crate::secrets::credential_rules(sandbox_dir)?;
        let tools = tools()?;
        let bin = self
            .pyro_bin()
            .ok_or_else(|| CoreError::NetworkUnavailable {
                reason:
                    "the `pyro` binary that runs the network daemon was not found; set PYRO_BIN"
                        .into(),
            })?;
        let store = self.store()?;
        // The top indices are left to pyro-net's own tests, which name theirs.
        let start = host::random_u32() % (pyro_net::plan::MAX_SANDBOXES - 256);
        let claim_tools = tools.clone();
        let plan = tokio::task::spawn_blocking(move || setup::claim(&claim_tools, None, start))
            .await
            .map_err(net_error)?
            .map_err(net_error)?;
        let resource = Resource::Network {
            index: plan.index(),
        };
        if let Err(e) = store.record_resource(owner, &resource) {
            let _ = tokio::task::spawn_blocking(move || release(plan.index())).await;
            return Err(e.into());
        }
        let has_credentials = !credentials.is_empty();
        let made: Result<PendingHelper> = async {
            let (build_tools, allow) = (tools.clone(), allowlist.clone());
            tokio::task::spawn_blocking(move || {
                setup::create_in_claimed(
                    &build_tools,
                    plan,
                    policy,
                    &allow,
                    &Options {
                        host_netns: None,
                        guest: GuestLink::Tap,
                        credentials: has_credentials,
                    },
                )
            })
            .await
            .map_err(net_error)?
            .map_err(net_error)?;
            let dir = sandbox_dir.join(NET_DIR);
            host::ensure_private_dir(&dir)?;
            self.start_daemon(owner, &bin, plan, policy, allowlist, &dir)
                .await
        }
        .await;
        tracing::debug!(owner, elapsed = ?started.elapsed(), "network made, daemon starting");
        match made {
            Ok(daemon) => {
                let mut net = SandboxNetwork::new(plan);
                net.daemon = Some(daemon);
                Ok(net)
            }
            Err(e) => {
                self.close_network(owner).await;
                Err(e)
            }
        }
    }

    /// Ends sandbox `owner`'s network daemon and removes its network (what the ledger
    /// records of both).
    pub(crate) async fn close_network(&self, owner: &str) {
        let started = std::time::Instant::now();
        self.release_ledger(owner, crate::ledger::Phase::BeforeMachine)
            .await;
        tracing::debug!(owner, elapsed = ?started.elapsed(), "network helpers ended");
        self.release_ledger(owner, crate::ledger::Phase::AfterMachine)
            .await;
        tracing::debug!(owner, elapsed = ?started.elapsed(), "network removed");
    }

    /// Waits until the network daemon `net` started serves (its machine boots meanwhile);
    /// on failure the daemon is ended and the error says why. Nothing may run in the guest
    /// before this returns.
    pub(crate) async fn network_ready(&self, owner: &str, net: &mut SandboxNetwork) -> Result<()> {
        let Some(daemon) = net.daemon.take() else {
            return Ok(());
        };
        let log = daemon.log.clone();
        daemon
            .ready(self, owner)
            .await
            .map(drop)
            .map_err(|reason| CoreError::Network {
                reason: format!(
                    "the network daemon of {} did not start: {reason}; see {}",
                    net.plan.name(),
                    log.display()
                ),
            })
    }

    /// Starts `pyro __net` detached for network `plan` and records it in `owner`'s ledger;
    /// [`Pyro::network_ready`] waits for it.
    async fn start_daemon(
        &self,
        owner: &str,
        bin: &Path,
        plan: SandboxNet,
        policy: NetworkPolicy,
        allowlist: &Allowlist,
        dir: &Path,
    ) -> Result<PendingHelper> {
        // `dir` is the sandbox's `net/`: its credentials live beside it.
        let sandbox_dir = dir.parent().unwrap_or(dir);
        let credentials = crate::secrets::credential_rules(sandbox_dir)?;
        let ca_dir = crate::secrets::ca_dir(sandbox_dir);
        let upstreams = upstreams()?;
        if upstreams.is_empty() {
            return Err(CoreError::NetworkUnavailable {
                reason: format!(
                    "guest networking is unavailable: the host has no DNS resolver to forward \
                     the guest's queries to (no nameserver in /etc/resolv.conf; or set \
                     {UPSTREAMS_ENV})"
                ),
            });
        }
        let state_dir = std::fs::canonicalize(dir).map_err(|e| CoreError::io("resolve", dir, e))?;
        let spec = pyro_net::daemon::DaemonSpec {
            netns: plan.name(),
            index: plan.index(),
            policy,
            allowlist: allowlist.clone(),
            upstreams,
            state_dir,
            credentials,
            ca_dir,
            // Test worlds serve HTTPS with their own CA (never set in production).
            extra_roots: std::env::var_os(EXTRA_ROOTS_ENV).map(PathBuf::from),
        };
        // The daemon would refuse it at start: say why here, before it is spawned.
        spec.validate().map_err(net_error)?;
        let path = dir.join("spec.json");
        let body = serde_json::to_vec_pretty(&spec).map_err(net_error)?;
        pyro_host::fs::atomic_write(&path, &body, 0o600)
            .map_err(|e| CoreError::io("write", &path, e))?;
        let log_path = dir.join("daemon.log");
        self.start_helper(
            owner,
            DAEMON_ROLE,
            bin,
            &["__net".as_ref(), path.as_os_str()],
            dir,
            &log_path,
        )
        .await
        .map_err(|reason| CoreError::Network {
            reason: format!(
                "the network daemon of {} did not start: {reason}; see {}",
                plan.name(),
                log_path.display()
            ),
        })
    }

    /// Starts `bin args` detached in `dir` (stderr to `log`), records it in `owner`'s
    /// ledger as a helper of `role`, and waits for the one line it prints once it serves.
    /// On failure the process is ended and forgotten; the error says why, in words.
    pub(crate) async fn spawn_helper(
        &self,
        owner: &str,
        role: &str,
        bin: &Path,
        args: &[&std::ffi::OsStr],
        dir: &Path,
        log: &Path,
    ) -> std::result::Result<(Resource, String), String> {
        self.start_helper(owner, role, bin, args, dir, log)
            .await?
            .ready(self, owner)
            .await
    }

    /// The start of [`Pyro::spawn_helper`]: the helper runs and is recorded; its ready line
    /// is awaited with [`PendingHelper::ready`].
    async fn start_helper(
        &self,
        owner: &str,
        role: &str,
        bin: &Path,
        args: &[&std::ffi::OsStr],
        dir: &Path,
        log: &Path,
    ) -> std::result::Result<PendingHelper, String> {
        let log_file = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut cmd = std::process::Command::new(bin);
        cmd.args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log_file);
        let mut child = host::spawn_detached(&mut cmd)
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        let ticks = host::process_start_ticks(pid).unwrap_or(0);
        let helper = Resource::Process {
            role: role.into(),
            pid,
            ticks,
        };
        let stdout = child.stdout.take();
        // The child is detached: nothing waits for it here (the ledger ends it).
        drop(child);
        let recorded = self
            .store()
            .map_err(|e| e.to_string())
            .and_then(|s| s.record_resource(owner, &helper).map_err(|e| e.to_string()));
        if let Err(e) = recorded {
            helper.release().await;
            return Err(e);
        }
        Ok(PendingHelper {
            helper,
            stdout,
            log: log.to_path_buf(),
        })
    }
}

/// A helper process that runs and is recorded, until it says it serves.
#[derive(Debug)]
pub(crate) struct PendingHelper {
    helper: Resource,
    stdout: Option<std::process::ChildStdout>,
    log: PathBuf,
}

impl PendingHelper {
    /// Its ready line (within [`HELPER_READY_TIMEOUT`]); on failure the helper is ended and
    /// forgotten from `owner`'s ledger.
    async fn ready(
        self,
        pyro: &Pyro,
        owner: &str,
    ) -> std::result::Result<(Resource, String), String> {
        let ready = async {
            let Some(stdout) = self.stdout else {
                return Err("no output pipe".to_string());
            };
            let stdout =
                tokio::process::ChildStdout::from_std(stdout).map_err(|e| e.to_string())?;
            let mut line = String::new();
            use tokio::io::{AsyncBufReadExt, AsyncReadExt};
            // One line, bounded.
            let mut reader = tokio::io::BufReader::new(stdout.take(4096));
            match tokio::time::timeout(HELPER_READY_TIMEOUT, reader.read_line(&mut line)).await {
                Ok(Ok(n)) if n > 0 => Ok(line.trim().to_string()),
                Ok(Ok(_)) => Err("it exited before serving".to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "it did not serve within {} s",
                    HELPER_READY_TIMEOUT.as_secs()
                )),
            }
        }
        .await;
        match ready {
            Ok(line) => Ok((self.helper, line)),
            Err(e) => {
                self.helper.release().await;
                if let Ok(store) = pyro.store() {
                    let _ = store.forget_resource(owner, &self.helper.key());
                }
                Err(e)
            }
        }
    }
}

/// How many refusals a status shows.
const RECENT_DENIALS: usize = 20;

/// What `status` and `network_info` show of network `plan` (policy `policy`, allowlist
/// `allowlist`), with the refusals its daemon recorded in `sandbox_dir/net`.
pub(crate) fn describe(
    plan: &SandboxNet,
    policy: NetworkPolicy,
    allowlist: &Allowlist,
    sandbox_dir: &Path,
) -> crate::SandboxNetworkInfo {
    let dir = sandbox_dir.join(NET_DIR);
    let stats = pyro_net::daemon::read_stats(&dir).unwrap_or_default();
    let recent = pyro_net::daemon::read_denials(&dir, RECENT_DENIALS)
        .into_iter()
        .map(|d| crate::DenialInfo {
            at: d.at as f64,
            kind: match d.kind {
                pyro_net::daemon::DenialKind::Dns => "dns",
                pyro_net::daemon::DenialKind::Connection => "connection",
            }
            .into(),
            name: d.name,
            destination: d.destination,
            reason: d.reason,
        })
        .collect();
    crate::SandboxNetworkInfo {
        policy: policy.as_str().into(),
        namespace: plan.name(),
        tap_name: pyro_net::plan::TAP_NAME.into(),
        guest_ip: plan.guest().to_string(),
        gateway_ip: plan.gateway().to_string(),
        subnet_cidr: plan.guest_subnet().to_string(),
        mac_address: plan.guest_mac_string(),
        dns_servers: vec![plan.gateway().to_string()],
        allow_hosts: allowlist.hosts().iter().map(ToString::to_string).collect(),
        allow_cidrs: allowlist.cidrs().iter().map(ToString::to_string).collect(),
        dns_denied: stats.dns_denied,
        connections_denied: stats.connections_denied,
        recent_denials: recent,
        published_ports: Vec::new(),
    }
}

impl Pyro {
    /// The network sandbox `owner`'s ledger records, if any.
    pub(crate) fn recorded_network(&self, owner: &str) -> Option<SandboxNet> {
        let store = self.store().ok()?;
        store
            .resources(owner)
            .ok()?
            .into_iter()
            .find_map(|(_, r)| match r {
                Ok(Resource::Network { index }) => SandboxNet::new(index).ok(),
                _ => None,
            })
    }

    /// Releases, without an async runtime, what the ledger of a VM whose owner died
    /// records: its daemon (killed by identity) and its network.
    pub(crate) fn release_orphan_network(&self, owner: &str) {
        let Ok(store) = self.store() else {
            return;
        };
        let Ok(entries) = store.resources(owner) else {
            return;
        };
        for (key, resource) in entries {
            let released = match resource {
                Ok(Resource::Process { pid, ticks, .. }) => {
                    pyro_host::process::kill_and_wait(pid, ticks, Duration::from_secs(5))
                }
                Ok(Resource::Network { index }) => match release(index) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(owner, index, "cannot remove an orphan's network: {e}");
                        false
                    }
                },
                _ => false,
            };
            if released {
                let _ = store.forget_resource(owner, &key);
            }
        }
    }
}
