//! The host's side of every sandbox's uplink: forwarding and NAT to the outside world.
//!
//! A sandbox namespace masquerades its guest to its uplink address `10.201.x.2` and routes to
//! the host end `10.201.x.1` (`pyro-<index>` in the host's namespace). For that traffic to
//! go further, the host's namespace must forward it and masquerade it to whatever interface
//! leads out. [`ensure`] sets that up, shared by all sandboxes:
//!
//! - one nft table `inet pyro-host` ([`TABLE`]), replaced atomically on every call (the same
//!   `add; delete; add` transaction as the sandbox tables; no other table is touched):
//!   - `forward` (filter hook, priority 0, policy accept): accepts what comes from an uplink
//!     (`iifname "pyro-*"`) with a source in `10.201.0.0/16`, and replies going back to one
//!     (`oifname "pyro-*"`, `ct state established,related`). Those accepts only document
//!     pyro's traffic: in nftables an accept ends one base chain, and another table's (or
//!     iptables') forward chain may still drop the packet;
//!   - `postrouting` (NAT hook, priority 100, srcnat): `ip saddr 10.201.0.0/16` leaving
//!     through an interface that is not an uplink is masqueraded;
//! - `net.ipv4.ip_forward` of the host's namespace: if it is 0 it is set to 1, and a state
//!   file `/run/pyro/net/ip_forward.<namespace inode>` records that pyro did so (with the
//!   namespace's cookie, so a file left by a namespace long gone is not mistaken for this
//!   one's).
//!
//! A creation applies the table in the same transaction as its sandbox's host guard, and
//! creates it (`create table`, quick) where there is none, replacing it only where there is.
//!
//! [`release_if_unused`] undoes it once no uplink (`pyro-<digits>`, counted from
//! `/proc/net/dev` of the host's namespace) is left there: deletes the table and, only if
//! pyro had set it, puts `ip_forward` back to 0. A sandbox's teardown does the same in
//! the transaction that deletes its host guard, while its uplink is being deleted.
//! Both run under an exclusive `flock` of `/run/pyro/net/lock`, shared by every pyro process
//! on the host; [`ensure`]'s [`HostForwarding`] keeps holding it until dropped, so a creation
//! keeps it until its uplink exists and a concurrent teardown cannot undo the forwarding in
//! between.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::plan::UPLINK_POOL;
use crate::ruleset::{self, FAMILY};
use crate::setup::{self, NetError, Tools};
use crate::{link, netns};

/// The shared table in the host's namespace.
pub const TABLE: &str = "pyro-host";
/// Where pyro keeps host-wide network state (the lock, who set `ip_forward`).
pub const STATE_DIR: &str = "/run/pyro/net";
/// The sysctl [`ensure`] turns on.
const IP_FORWARD: &str = "net/ipv4/ip_forward";
/// Priority of the NAT chain: `srcnat`.
const SRCNAT: i32 = 100;

/// Proof that the host forwards and masquerades sandbox traffic; holds the host lock until
/// dropped (keep it only until the uplink exists).
#[derive(Debug)]
pub struct HostForwarding {
    /// Whether this call turned `ip_forward` on (it was 0).
    pub enabled_forwarding: bool,
    _lock: HostLock,
}

/// The exclusive `flock` of `/run/pyro/net/lock`; released when dropped (the file closes).
#[derive(Debug)]
struct HostLock {
    _file: File,
}

impl HostLock {
    fn take() -> Result<HostLock, NetError> {
        let dir = Path::new(STATE_DIR);
        std::fs::create_dir_all(dir).map_err(|source| NetError::State {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("lock");
        let state = |source| NetError::State {
            path: path.clone(),
            source,
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(state)?;
        loop {
            // SAFETY: flock takes a descriptor `file` keeps open, and no pointers.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(HostLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(state(err));
            }
        }
    }
}

/// The nft JSON document creating (or atomically replacing) the `inet pyro-host` table.
pub fn table_json() -> Value {
    json!({ "nftables": table_commands(true) })
}

/// The nft commands making the `inet pyro-host` table: replacing it (`add`, `delete`,
/// `add`), or, for `replace == false`, creating it (`create`: fails if it exists).
/// Creating is much quicker: a transaction that deletes anything waits for an RCU grace
/// period (about 13 ms here) before `nft` exits.
fn table_commands(replace: bool) -> Vec<Value> {
    let table = json!({"family": FAMILY, "name": TABLE});
    let pool = json!({"prefix": {"addr": UPLINK_POOL.addr().to_string(), "len": UPLINK_POOL.prefix_len()}});
    let cmp = |op: &str, left: Value, right: Value| json!({"match": {"op": op, "left": left, "right": right}});
    let meta = |key: &str| json!({"meta": {"key": key}});
    let saddr = json!({"payload": {"protocol": "ip", "field": "saddr"}});
    let rule = |chain: &str, comment: &str, mut expr: Vec<Value>, verdict: Value| {
        expr.push(json!({"counter": null}));
        expr.push(verdict);
        json!({"add": {"rule": {
            "family": FAMILY, "table": TABLE, "chain": chain, "comment": comment, "expr": expr,
        }}})
    };
    let chain = |name: &str, kind: &str, prio: i32| {
        json!({"add": {"chain": {
            "family": FAMILY, "table": TABLE, "name": name, "type": kind, "hook": name,
            "prio": prio, "policy": "accept",
        }}})
    };
    let head = if replace {
        vec![
            json!({"add": {"table": table}}),
            json!({"delete": {"table": table}}),
            json!({"add": {"table": table}}),
        ]
    } else {
        vec![json!({"create": {"table": table}})]
    };
    head.into_iter()
        .chain([
            chain("forward", "filter", 0),
            chain("postrouting", "nat", SRCNAT),
            rule(
                "forward",
                "forward: sandbox uplinks out",
                vec![
                    cmp("==", meta("iifname"), json!("pyro-*")),
                    cmp("==", saddr.clone(), pool.clone()),
                ],
                json!({"accept": null}),
            ),
            rule(
                "forward",
                "forward: replies back to sandbox uplinks",
                vec![
                    cmp("==", meta("oifname"), json!("pyro-*")),
                    cmp(
                        "in",
                        json!({"ct": {"key": "state"}}),
                        json!(["established", "related"]),
                    ),
                ],
                json!({"accept": null}),
            ),
            rule(
                "postrouting",
                "sandbox traffic leaves as the host",
                vec![
                    cmp("==", saddr, pool),
                    cmp("!=", meta("oifname"), json!("pyro-*")),
                ],
                json!({"masquerade": null}),
            ),
        ])
        .collect()
}

/// Makes the host's namespace (`host_netns`; `None`: this process's) forward and masquerade
/// sandbox traffic (see the module docs). Idempotent. The returned [`HostForwarding`] holds
/// the host lock: drop it once the uplink exists, and before any teardown.
pub fn ensure(tools: &Tools, host_netns: Option<&str>) -> Result<HostForwarding, NetError> {
    ensure_with(tools, host_netns, Vec::new(), || {})
}

/// [`ensure`], with the nft commands `first` in the same transaction as the `pyro-host`
/// table (a sandbox's host guard: both in force at the same moment, one `nft` process).
/// `applied` is called once that transaction has succeeded; if it fails, nothing of it
/// was applied.
pub(crate) fn ensure_with(
    tools: &Tools,
    host_netns: Option<&str>,
    first: Vec<Value>,
    applied: impl FnOnce(),
) -> Result<HostForwarding, NetError> {
    let lock = HostLock::take()?;
    let with = |replace| {
        let mut commands = first.clone();
        commands.extend(table_commands(replace));
        json!({ "nftables": commands })
    };
    // Created if there is none (no other sandbox: the usual case, and quick), else
    // replaced. If `first` is what failed, the second try fails too.
    setup::apply(tools, host_netns, &with(false))
        .or_else(|_| setup::apply(tools, host_netns, &with(true)))?;
    applied();
    let marker = Marker::of(host_netns)?;
    marker.forget_if_stale()?;
    let enabled_forwarding = netns::read_sysctl(host_netns, IP_FORWARD)? == "0";
    if enabled_forwarding {
        // The record first: a crash in between leaves a record of a 0 that is still 0.
        marker.write()?;
        netns::write_sysctl_in(host_netns, IP_FORWARD, "1")?;
    }
    Ok(HostForwarding {
        enabled_forwarding,
        _lock: lock,
    })
}

/// Undoes [`ensure`] if no sandbox uplink (`pyro-<digits>`) is left in `host_netns`: deletes
/// the `pyro-host` table and, only if pyro had turned it on, sets `ip_forward` back to 0.
/// Returns whether it did (`false`: uplinks remain, or the namespace is gone; nothing
/// changed).
pub fn release_if_unused(tools: &Tools, host_netns: Option<&str>) -> Result<bool, NetError> {
    remove(tools, host_netns, None, None)?.tables
}

/// What [`remove`] did, each part on its own.
#[derive(Debug)]
pub(crate) struct Removed {
    /// Deleting the uplink (`Ok`: it is gone, or there was none to delete).
    pub uplink: Result<(), NetError>,
    /// Deleting the guard table and, where this released the host's forwarding, the
    /// `pyro-host` table and `ip_forward` (`Ok(true)`: it did release).
    pub tables: Result<bool, NetError>,
}

/// A sandbox's side of the host, removed under the host lock: its `uplink` (if given and
/// there), its `guard` table (if given; whether or not it exists) and, if no other uplink
/// is left, what [`release_if_unused`] removes. The link is deleted while one nft
/// transaction deletes both tables (each deletion waits for an RCU grace period, so they
/// overlap). If the uplink cannot be deleted, the `pyro-host` table is put back: it stays
/// while an uplink does. A host namespace that is gone has nothing left to remove.
pub(crate) fn remove(
    tools: &Tools,
    host_netns: Option<&str>,
    guard: Option<&str>,
    uplink: Option<&str>,
) -> Result<Removed, NetError> {
    let _lock = HostLock::take()?;
    if host_netns.is_some_and(|ns| !netns::exists(ns)) {
        // The host namespace is gone, and with it everything there was to undo.
        return Ok(Removed {
            uplink: Ok(()),
            tables: Ok(false),
        });
    }
    let present = match uplink {
        Some(dev) => link::index(host_netns, dev)?.is_some(),
        None => false,
    };
    let release = !uplinks_left(host_netns, uplink)?;
    let mut commands = Vec::new();
    if let Some(guard) = guard {
        commands.extend(ruleset::remove_table_commands(guard));
    }
    if release {
        commands.extend(ruleset::remove_table_commands(TABLE));
    }
    let (deleted, applied) = std::thread::scope(|scope| {
        let deleting = uplink
            .filter(|_| present)
            .map(|dev| scope.spawn(move || link::delete(&tools.ip, host_netns, dev)));
        let applied = if commands.is_empty() {
            Ok(())
        } else {
            setup::apply(tools, host_netns, &json!({ "nftables": commands }))
        };
        let deleted = deleting.map_or(Ok(()), |thread| {
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        (deleted.map_err(NetError::from), applied)
    });
    if release && deleted.is_err() {
        // The uplink stays, and so must the forwarding it needs.
        let restored = setup::apply(tools, host_netns, &table_json());
        return Ok(Removed {
            uplink: deleted,
            tables: applied.and(restored).map(|()| false),
        });
    }
    let tables = applied.and_then(|()| {
        if release {
            let marker = Marker::of(host_netns)?;
            marker.forget_if_stale()?;
            if marker.path.exists() {
                netns::write_sysctl_in(host_netns, IP_FORWARD, "0")?;
                marker.remove()?;
            }
        }
        Ok(release)
    });
    Ok(Removed {
        uplink: deleted,
        tables,
    })
}

/// Whether any sandbox uplink but `except` is left in `host_netns`: the interfaces of
/// `/proc/thread-self/net/dev`, read on a thread inside it (`/proc/self/net` would show
/// the main thread's namespace).
fn uplinks_left(host_netns: Option<&str>, except: Option<&str>) -> Result<bool, NetError> {
    let path = Path::new("/proc/thread-self/net/dev");
    let read = || std::fs::read_to_string(path);
    let dev = match host_netns {
        Some(ns) => netns::run_in(ns, read)?,
        None => read(),
    }
    .map_err(|source| NetError::State {
        path: path.to_owned(),
        source,
    })?;
    Ok(links_in(&dev).any(|l| is_uplink(l) && Some(l) != except))
}

/// The interface names in `/proc/net/dev` (two header lines, then `  name: counters…`).
fn links_in(dev: &str) -> impl Iterator<Item = &str> {
    dev.lines()
        .skip(2)
        .filter_map(|line| Some(line.split_once(':')?.0.trim()))
}

/// Whether `name` is a sandbox's uplink on the host, `pyro-<digits>`.
pub fn is_uplink(name: &str) -> bool {
    name.strip_prefix("pyro-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The record that pyro turned `ip_forward` on in one namespace.
struct Marker {
    path: PathBuf,
    /// What the file holds: the namespace's cookie (empty where the kernel has none).
    content: String,
}

impl Marker {
    fn of(host_netns: Option<&str>) -> Result<Marker, NetError> {
        let (inode, cookie) = netns::identity(host_netns)?;
        Ok(Marker {
            path: Path::new(STATE_DIR).join(format!("ip_forward.{inode}")),
            content: cookie.map(|c| c.to_string()).unwrap_or_default(),
        })
    }

    fn error(&self, source: std::io::Error) -> NetError {
        NetError::State {
            path: self.path.clone(),
            source,
        }
    }

    /// Removes a record left by another namespace that had the same inode number.
    fn forget_if_stale(&self) -> Result<(), NetError> {
        match std::fs::read_to_string(&self.path) {
            Ok(content) if content.trim() != self.content => self.remove(),
            Ok(_) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(self.error(err)),
        }
    }

    /// Writes the record atomically (a temporary file, then a rename).
    fn write(&self) -> Result<(), NetError> {
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let written = File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(self.content.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(|e| self.error(e))
    }

    fn remove(&self) -> Result<(), NetError> {
        match std::fs::remove_file(&self.path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(self.error(err)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplinks_are_pyro_and_digits() {
        for name in ["pyro-0", "pyro-16383"] {
            assert!(is_uplink(name), "{name}");
        }
        for name in [
            "pyro-",
            "pyro-up",
            "pyro-tap",
            "pyro-host",
            "pyro-1a",
            "eth0",
            "xpyro-1",
        ] {
            assert!(!is_uplink(name), "{name}");
        }
    }

    #[test]
    fn link_names_are_read_from_proc_net_dev() {
        let dev = "Inter-|   Receive                            |  Transmit\n \
                   face |bytes    packets errs drop fifo frame compressed multicast|bytes\n    \
                   lo:       0       0    0    0    0     0          0         0        0\n\
                   pyro-12: 180       2    0    0    0     0          0         0      180\n  \
                   wan0: 1000      10    0    0    0     0          0         0     1000\n";
        assert_eq!(links_in(dev).collect::<Vec<_>>(), ["lo", "pyro-12", "wan0"]);
        assert_eq!(links_in(dev).filter(|l| is_uplink(l)).count(), 1);
    }

    #[test]
    fn the_table_masquerades_the_uplink_pool_only_outwards() {
        let doc = table_json();
        let commands = doc["nftables"].as_array().unwrap();
        assert_eq!(commands[1]["delete"]["table"]["name"], TABLE);
        let nat = commands
            .iter()
            .find(|c| c["add"]["rule"]["expr"].to_string().contains("masquerade"))
            .unwrap();
        let expr = nat["add"]["rule"]["expr"].to_string();
        assert!(expr.contains(r#""addr":"10.201.0.0","len":16"#), "{expr}");
        assert!(
            expr.contains(r#""op":"!=""#) && expr.contains("pyro-*"),
            "{expr}"
        );
        assert!(
            commands
                .iter()
                .filter_map(|c| c["add"]["chain"]["policy"].as_str())
                .all(|p| p == "accept")
        );
    }
}
