//! The per-sandbox network daemon: the body of the detached helper `pyro __net SPEC_FILE`.
//!
//! The core spawns one per networked sandbox (and records it in its ledger, like the port
//! relays). [`run`] starts, for the sandbox namespace named in the [`DaemonSpec`]:
//!
//! - pyro's resolver on `gateway:53` ([`crate::dns::server::spawn`]), forwarding to the
//!   host's resolvers and adding the answers for allowed names to the `allowed_v4` set
//!   ([`on_answer`]);
//! - when the allowlist has host patterns or the spec has credentials
//!   ([`ruleset::proxied`]), the egress proxy on `gateway:`[`PROXY_PORT`], to which the
//!   ruleset redirects the guest's HTTP(S) ([`crate::ruleset`]); it listens and connects
//!   upstream from inside the namespace, and finds each connection's destination with
//!   [`original_dst`]. With credentials it injects them ([`crate::proxy::creds`]), with the
//!   workspace CA loaded from `ca_dir` ([`crate::ca`]).
//!
//! What the user sees lands in `state_dir`: the last [`MAX_DENIAL_LINES`] denials of both in
//! `denials.jsonl` (one [`DenialRecord`] a line, the file rewritten atomically) and the
//! counters in `net-stats.json` ([`NetStats`], rewritten atomically at most once a second).
//! [`read_denials`] and [`read_stats`] read them back for the core, safely on a missing,
//! truncated or hostile file.
//!
//! It serves until SIGTERM or SIGINT, or until the namespace disappears (checked every
//! second: the sandbox was torn down), and then returns `Ok`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ca::{CaError, WorkspaceCa};
use crate::dns::server::{self as dns_server, UPSTREAM_TIMEOUT};
use crate::dns::{OnAnswer, Resolver, ResolverError, ServerConfig};
use crate::plan::SandboxNet;
use crate::policy::{Allowlist, NetworkPolicy};
use crate::proxy::creds::{CredentialRule, Credentials};
use crate::proxy::server::{
    Injection, InjectionError, Passthrough, Proxy, ProxyConfig, ProxyError, ProxyStats,
    SYSTEM_ROOTS, original_dst,
};
use crate::ruleset::{self, PROXY_PORT};
use crate::setup::{self, NetError, Tools};
use crate::{cmd, netns, proxy};

/// The file of recent denials in `state_dir`.
pub const DENIALS_FILE: &str = "denials.jsonl";
/// The counters' file in `state_dir`.
pub const STATS_FILE: &str = "net-stats.json";
/// Most lines `denials.jsonl` holds (the oldest go first).
pub const MAX_DENIAL_LINES: usize = 256;
/// Most bytes of a spec file (credentials' values included).
pub const MAX_SPEC_BYTES: u64 = 1024 * 1024;
/// Most upstream resolvers a spec may name.
pub const MAX_UPSTREAMS: usize = 8;
/// Most bytes [`read_denials`] reads (the end of the file).
const MAX_DENIALS_BYTES: u64 = 1024 * 1024;
/// Most bytes [`read_stats`] reads.
const MAX_STATS_BYTES: u64 = 4096;
/// Longest text field kept in a record read back.
const MAX_FIELD_CHARS: usize = 512;
/// How often the daemon collects denials and checks for a stop.
const TICK: Duration = Duration::from_millis(50);
/// How often it checks that the namespace still exists.
const NETNS_CHECK: Duration = Duration::from_secs(1);
/// Least time between two writes of the counters.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// What `pyro __net` is told to serve (its spec file, JSON).
///
/// With credentials the file holds secret values: the core writes it mode 0600 (created
/// so, never readable by others even briefly), in a directory only the host's pyro reads.
/// The `Debug` of a spec never shows a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSpec {
    /// The sandbox's network namespace (`pyro-<index>`, as [`SandboxNet::name`]).
    pub netns: String,
    /// The sandbox's index in the address plan.
    pub index: u32,
    /// Its policy (not `off`).
    pub policy: NetworkPolicy,
    /// Its allowlist (validated again on deserialisation).
    pub allowlist: Allowlist,
    /// The host's resolvers, asked in order (1 to [`MAX_UPSTREAMS`]).
    pub upstreams: Vec<SocketAddr>,
    /// Where `denials.jsonl` and `net-stats.json` are written (an absolute path).
    pub state_dir: PathBuf,
    /// Credentials the proxy injects (at most [`crate::proxy::creds::MAX_RULES`]); with
    /// any, the proxy runs even without host patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialRule>,
    /// The workspace CA's directory ([`WorkspaceCa::create`]'s `ca.pem` and `ca.key`), an
    /// absolute path; required with credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_dir: Option<PathBuf>,
    /// A PEM file of extra roots the proxy trusts upstream, besides [`SYSTEM_ROOTS`] (for
    /// tests with their own CA), an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_roots: Option<PathBuf>,
}

/// A [`DaemonSpec`] field that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network daemon spec: `{field}` {reason}")]
pub struct DaemonSpecError {
    /// The field's name.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl DaemonSpec {
    /// Checks every field; the sandbox's plan on success.
    pub fn validate(&self) -> Result<SandboxNet, DaemonSpecError> {
        let bad = |field, reason: String| DaemonSpecError { field, reason };
        let plan = SandboxNet::new(self.index).map_err(|e| bad("index", e.to_string()))?;
        if self.netns != plan.name() {
            return Err(bad(
                "netns",
                format!(
                    "is `{}`, but sandbox {} lives in `{}`",
                    self.netns.chars().take(64).collect::<String>(),
                    self.index,
                    plan.name()
                ),
            ));
        }
        if !self.policy.is_networked() {
            return Err(bad(
                "policy",
                "is `off`: there is no network to serve".into(),
            ));
        }
        if self.upstreams.is_empty() || self.upstreams.len() > MAX_UPSTREAMS {
            return Err(bad(
                "upstreams",
                format!(
                    "has {} entries (expected 1 to {MAX_UPSTREAMS})",
                    self.upstreams.len()
                ),
            ));
        }
        if let Some(zero) = self
            .upstreams
            .iter()
            .find(|a| a.port() == 0 || a.ip().is_unspecified())
        {
            return Err(bad(
                "upstreams",
                format!("contains {zero}, which is no resolver"),
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(bad(
                "state_dir",
                format!("`{}` is not an absolute path", self.state_dir.display()),
            ));
        }
        Credentials::new(self.credentials.clone())
            .map_err(|e| bad("credentials", e.to_string()))?;
        for (field, path) in [("ca_dir", &self.ca_dir), ("extra_roots", &self.extra_roots)] {
            if let Some(path) = path
                && !path.is_absolute()
            {
                return Err(bad(
                    field,
                    format!("`{}` is not an absolute path", path.display()),
                ));
            }
        }
        if !self.credentials.is_empty() && self.ca_dir.is_none() {
            return Err(bad(
                "ca_dir",
                "is missing: credentials need the workspace CA".into(),
            ));
        }
        Ok(plan)
    }

    /// Reads and validates a spec file (at most [`MAX_SPEC_BYTES`]).
    pub fn load(path: &Path) -> Result<(DaemonSpec, SandboxNet), DaemonError> {
        let read = |source| DaemonError::SpecFile {
            path: path.to_owned(),
            source,
        };
        let mut text = String::new();
        File::open(path)
            .and_then(|f| f.take(MAX_SPEC_BYTES).read_to_string(&mut text))
            .map_err(read)?;
        let spec: DaemonSpec = serde_json::from_str(&text).map_err(|e| read(e.into()))?;
        let plan = spec.validate()?;
        Ok((spec, plan))
    }
}

/// Why the daemon could not start, or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] DaemonSpecError),
    /// The spec file could not be read or parsed.
    #[error("cannot read the network daemon spec {path}")]
    SpecFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `ip` or `nft` is missing, or a capability.
    #[error(transparent)]
    Tools(#[from] NetError),
    /// The sandbox's namespace does not exist.
    #[error("network namespace {name} does not exist")]
    NoNamespace {
        /// Its name.
        name: String,
    },
    /// The state directory could not be made.
    #[error("cannot create the state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The resolver could not start.
    #[error(transparent)]
    Resolver(#[from] ResolverError),
    /// The egress proxy could not start.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The workspace CA could not be loaded.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Credential injection could not be set up.
    #[error(transparent)]
    Injection(#[from] InjectionError),
    /// The async runtime could not be built.
    #[error("cannot start the network daemon's runtime")]
    Runtime {
        /// Why.
        source: io::Error,
    },
}

/// Where the daemon listens, once it does (the helper prints it for its parent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The resolver (`gateway:53`).
    pub dns: SocketAddr,
    /// The egress proxy (`gateway:PROXY_PORT`), when the allowlist has host patterns or
    /// the spec has credentials.
    pub proxy: Option<SocketAddr>,
}

/// Which part of the daemon refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenialKind {
    /// The resolver answered NXDOMAIN.
    Dns,
    /// The egress proxy closed a connection.
    Connection,
}

/// One line of `denials.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialRecord {
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// Resolver or proxy.
    pub kind: DenialKind,
    /// The name asked for (DNS) or read from `Host`/SNI (connection), if any.
    pub name: Option<String>,
    /// The connection's original destination (`IP:PORT`), if known.
    pub destination: Option<String>,
    /// Why, in words.
    pub reason: String,
}

impl DenialRecord {
    fn from_dns(denial: &crate::dns::Denial) -> Self {
        DenialRecord {
            at: unix_seconds(denial.at),
            kind: DenialKind::Dns,
            name: Some(denial.name.clone()),
            destination: None,
            reason: "the name is not in the allowlist".to_owned(),
        }
    }

    fn from_proxy(denial: &proxy::Denial) -> Self {
        DenialRecord {
            at: unix_seconds(denial.at),
            kind: DenialKind::Connection,
            name: denial.host.clone(),
            destination: denial.destination.map(|d| d.to_string()),
            reason: denial.reason.to_string(),
        }
    }

    /// Cuts every text field to a bounded length (for records read from a file).
    fn bounded(mut self) -> Self {
        let cut = |s: &mut String| {
            if s.chars().count() > MAX_FIELD_CHARS {
                *s = s.chars().take(MAX_FIELD_CHARS).collect();
            }
        };
        for field in [&mut self.name, &mut self.destination]
            .into_iter()
            .flatten()
        {
            cut(field);
        }
        cut(&mut self.reason);
        self
    }
}

/// The counters in `net-stats.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetStats {
    /// Queries the resolver answered NXDOMAIN because of the allowlist.
    pub dns_denied: u64,
    /// Connections the egress proxy refused.
    pub connections_denied: u64,
    /// Answers for allowed names whose addresses were opened in `allowed_v4`.
    pub dns_answered: u64,
    /// Requests in which the proxy replaced a placeholder by its credential.
    #[serde(default)]
    pub credentials_injected: u64,
    /// Connections the proxy blocked for a placeholder where it may not go (also counted
    /// in `connections_denied`).
    #[serde(default)]
    pub credentials_blocked: u64,
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The resolver's callback for sandbox `plan` without a [`setup::Network`] at hand: adds the
/// addresses to the `allowed_v4` set inside namespace `netns`
/// (`nft -j -f -`, entering NETNS itself).
pub fn on_answer(tools: &Tools, plan: SandboxNet, netns: &str) -> OnAnswer {
    let (ip, nft, ns) = (
        tools.ip.clone(),
        tools.nft.to_string_lossy().into_owned(),
        netns.to_owned(),
    );
    Arc::new(move |addrs: &[(Ipv4Addr, Duration)]| {
        let doc = ruleset::allow_addresses(&plan, addrs).to_string();
        cmd::run(
            &ip,
            &["netns", "exec", &ns, &nft, "-j", "-f", "-"],
            Some(doc.as_bytes()),
        )
        .map(drop)
        .map_err(NetError::from)
    })
}

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATED.store(true, Ordering::Relaxed);
}

/// The body of `pyro __net`: serves the spec until SIGTERM or SIGINT, or until the
/// namespace disappears; `ready` gets the bound addresses first.
pub fn run(spec: DaemonSpec, ready: impl FnOnce(&Ready)) -> Result<(), DaemonError> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let handler: extern "C" fn(libc::c_int) = on_terminate;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
        // handler is a plain function that lives for the whole program.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
    run_until(spec, ready, &TERMINATED)
}

/// [`run`] without the signal handlers: serves until `stop` is set or the namespace
/// disappears (for tests, and for callers that handle signals themselves).
pub fn run_until(
    spec: DaemonSpec,
    ready: impl FnOnce(&Ready),
    stop: &AtomicBool,
) -> Result<(), DaemonError> {
    let plan = spec.validate()?;
    let tools = setup::check_capabilities(false)?;
    if !netns::exists(&spec.netns) {
        return Err(DaemonError::NoNamespace { name: spec.netns });
    }
    let mut recorder = Recorder::open(&spec.state_dir)?;

    let answered = Arc::new(AtomicU64::new(0));
    let callback = {
        let (inner, answered) = (on_answer(&tools, plan, &spec.netns), answered.clone());
        Arc::new(move |addrs: &[(Ipv4Addr, Duration)]| {
            inner(addrs)?;
            answered.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }) as OnAnswer
    };
    let resolver = Arc::new(Resolver::new(spec.allowlist.clone()));
    let dns = dns_server::spawn(
        Some(&spec.netns),
        ServerConfig {
            listen: SocketAddr::from((plan.gateway(), 53)),
            upstreams: spec.upstreams.clone(),
            timeout: UPSTREAM_TIMEOUT,
        },
        resolver.clone(),
        callback,
    )?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|source| DaemonError::Runtime { source })?;
    let injection = match &spec.ca_dir {
        Some(ca_dir) if !spec.credentials.is_empty() => {
            let credentials =
                Credentials::new(spec.credentials.clone()).map_err(|e| DaemonSpecError {
                    field: "credentials",
                    reason: e.to_string(),
                })?;
            Some(Arc::new(Injection::new(
                credentials,
                WorkspaceCa::load(ca_dir)?,
                Some(Path::new(SYSTEM_ROOTS)),
                spec.extra_roots.as_deref(),
            )?))
        }
        _ => None,
    };
    let result = rt.block_on(async {
        let proxied = ruleset::proxied(spec.policy, &spec.allowlist, injection.is_some());
        let proxy = if !proxied {
            None
        } else {
            let mut config = ProxyConfig::new(SocketAddr::from((plan.gateway(), PROXY_PORT)));
            config.listen_netns = Some(spec.netns.clone());
            config.upstream_netns = Some(spec.netns.clone());
            config.injection = injection.clone();
            Some(
                Proxy::start(
                    config,
                    spec.allowlist.clone(),
                    Arc::new(|s: &tokio::net::TcpStream| original_dst(s)),
                    Arc::new(Passthrough),
                )
                .await?,
            )
        };
        ready(&Ready {
            dns: dns.local_addr,
            proxy: proxy.as_ref().map(Proxy::local_addr),
        });
        let mut seen_dns = Vec::new();
        let mut seen_proxy = Vec::new();
        let mut seen_stats = ProxyStats::default();
        let mut last_check = Instant::now();
        loop {
            tokio::time::sleep(TICK).await;
            let dns_now = resolver.denials();
            let mut fresh: Vec<DenialRecord> = new_since(&seen_dns, &dns_now)
                .iter()
                .map(DenialRecord::from_dns)
                .collect();
            seen_dns = dns_now;
            if let Some(proxy) = &proxy {
                let proxy_now = proxy.denials();
                fresh.extend(
                    new_since(&seen_proxy, &proxy_now)
                        .iter()
                        .map(DenialRecord::from_proxy),
                );
                seen_proxy = proxy_now;
                let stats = proxy.stats();
                recorder.note_credentials(
                    stats.credentials_injected - seen_stats.credentials_injected,
                    stats.credentials_blocked - seen_stats.credentials_blocked,
                );
                seen_stats = stats;
            }
            recorder.note(fresh, answered.swap(0, Ordering::Relaxed));
            recorder.flush(false);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if last_check.elapsed() >= NETNS_CHECK {
                last_check = Instant::now();
                if !netns::exists(&spec.netns) {
                    break;
                }
            }
        }
        Ok::<_, DaemonError>(())
    });
    dns.stop();
    recorder.flush(true);
    result
}

/// The items of `now` that `seen` (an earlier snapshot of the same bounded, append-only
/// list) did not hold: `now` minus the longest prefix that is a suffix of `seen`.
fn new_since<'a, T: PartialEq>(seen: &[T], now: &'a [T]) -> &'a [T] {
    let most = seen.len().min(now.len());
    let overlap = (0..=most)
        .rev()
        .find(|&k| seen.get(seen.len() - k..) == now.get(..k))
        .unwrap_or(0);
    now.get(overlap..).unwrap_or_default()
}

/// The daemon's side of `state_dir`: the recent denials and the counters, written
/// atomically. Write failures are ignored (the next flush tries again): the daemon keeps
/// serving the guest whatever happens to its reporting.
#[derive(Debug)]
struct Recorder {
    dir: PathBuf,
    denials: VecDeque<DenialRecord>,
    stats: NetStats,
    denials_dirty: bool,
    stats_dirty: bool,
    stats_written: Option<Instant>,
}

impl Recorder {
    /// Creates `dir` if needed and continues from what an earlier daemon left there.
    fn open(dir: &Path) -> Result<Recorder, DaemonError> {
        std::fs::create_dir_all(dir).map_err(|source| DaemonError::StateDir {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Recorder {
            dir: dir.to_owned(),
            denials: read_denials(dir, MAX_DENIAL_LINES).into(),
            stats: read_stats(dir).unwrap_or_default(),
            denials_dirty: false,
            stats_dirty: true,
            stats_written: None,
        })
    }

    fn note_credentials(&mut self, injected: u64, blocked: u64) {
        if injected + blocked > 0 {
            self.stats.credentials_injected += injected;
            self.stats.credentials_blocked += blocked;
            self.stats_dirty = true;
        }
    }

    fn note(&mut self, fresh: Vec<DenialRecord>, answered: u64) {
        if answered > 0 {
            self.stats.dns_answered += answered;
            self.stats_dirty = true;
        }
        for record in fresh {
            match record.kind {
                DenialKind::Dns => self.stats.dns_denied += 1,
                DenialKind::Connection => self.stats.connections_denied += 1,
            }
            if self.denials.len() >= MAX_DENIAL_LINES {
                self.denials.pop_front();
            }
            self.denials.push_back(record);
            self.denials_dirty = true;
            self.stats_dirty = true;
        }
    }

    /// Writes what changed; the counters with new denials, else at most once per
    /// [`STATS_INTERVAL`] unless `now`.
    fn flush(&mut self, now: bool) {
        // Counters that disagree with the list next to them would confuse a reader: with
        // new denials, both are written.
        let now = now || self.denials_dirty;
        if self.denials_dirty {
            let mut text = String::new();
            for record in &self.denials {
                if let Ok(line) = serde_json::to_string(record) {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            if write_atomic(&self.dir, DENIALS_FILE, text.as_bytes()).is_ok() {
                self.denials_dirty = false;
            }
        }
        let due = self
            .stats_written
            .is_none_or(|at| at.elapsed() >= STATS_INTERVAL);
        if self.stats_dirty && (now || due) {
            let written = serde_json::to_vec(&self.stats)
                .map_err(io::Error::from)
                .and_then(|body| write_atomic(&self.dir, STATS_FILE, &body));
            if written.is_ok() {
                self.stats_dirty = false;
                self.stats_written = Some(Instant::now());
            }
        }
    }
}

/// Writes `dir/name` through a temporary file and a rename.
fn write_atomic(dir: &Path, name: &str, body: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp)?;
    // No fsync: the files are a report, rewritten often; the rename keeps each whole.
    file.write_all(body)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Reads at most the last `max` bytes of `path`, starting at a line boundary.
fn read_tail(path: &Path, max: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let skipped = len > max;
    if skipped {
        file.seek(SeekFrom::Start(len - max))?;
    }
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(match (skipped, text.find('\n')) {
        // The first line is likely cut: drop it.
        (true, Some(nl)) => text.get(nl + 1..).unwrap_or_default().to_owned(),
        _ => text.into_owned(),
    })
}

/// The last `limit` (at most [`MAX_DENIAL_LINES`]) denials in `state_dir`, oldest first.
/// A missing file reads as none; lines that are not records are skipped; at most the last
/// 1 MiB is read and text fields are cut to 512 characters.
pub fn read_denials(state_dir: &Path, limit: usize) -> Vec<DenialRecord> {
    let limit = limit.min(MAX_DENIAL_LINES);
    let Ok(text) = read_tail(&state_dir.join(DENIALS_FILE), MAX_DENIALS_BYTES) else {
        return Vec::new();
    };
    let mut records: Vec<DenialRecord> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<DenialRecord>(line).ok())
        .map(DenialRecord::bounded)
        .collect();
    let keep = records.len().saturating_sub(limit);
    records.drain(..keep);
    records
}

/// The counters in `state_dir`, or `None` when the file is missing or unreadable.
pub fn read_stats(state_dir: &Path) -> Option<NetStats> {
    let mut text = String::new();
    File::open(state_dir.join(STATS_FILE))
        .and_then(|f| f.take(MAX_STATS_BYTES).read_to_string(&mut text))
        .ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests;
