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
//! [`release_if_unused`] undoes it once no uplink (`pyro-<digits>`) is left in the host's
//! namespace: deletes the table and, only if pyro had set it, puts `ip_forward` back to 0.
//! Both run under an exclusive `flock` of `/run/pyro/net/lock`, shared by every pyro process
//! on the host; [`ensure`]'s [`HostForwarding`] keeps holding it until dropped, so a creation
//! keeps it until its uplink exists and a concurrent teardown cannot undo the forwarding in
//! between.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::netns;
use crate::plan::UPLINK_POOL;
use crate::ruleset::{self, FAMILY};
use crate::setup::{self, NetError, Tools};

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
    json!({"nftables": [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
        chain("forward", "filter", 0),
        chain("postrouting", "nat", SRCNAT),
        rule(
            "forward",
            "forward: sandbox uplinks out",
            vec![cmp("==", meta("iifname"), json!("pyro-*")), cmp("==", saddr.clone(), pool.clone())],
            json!({"accept": null}),
        ),
        rule(
            "forward",
            "forward: replies back to sandbox uplinks",
            vec![
                cmp("==", meta("oifname"), json!("pyro-*")),
                cmp("in", json!({"ct": {"key": "state"}}), json!(["established", "related"])),
            ],
            json!({"accept": null}),
        ),
        rule(
            "postrouting",
            "sandbox traffic leaves as the host",
            vec![cmp("==", saddr, pool), cmp("!=", meta("oifname"), json!("pyro-*"))],
            json!({"masquerade": null}),
        ),
    ]})
}

/// Makes the host's namespace (`host_netns`; `None`: this process's) forward and masquerade
/// sandbox traffic (see the module docs). Idempotent. The returned [`HostForwarding`] holds
/// the host lock: drop it once the uplink exists, and before any teardown.
pub fn ensure(tools: &Tools, host_netns: Option<&str>) -> Result<HostForwarding, NetError> {
    let lock = HostLock::take()?;
    setup::apply(tools, host_netns, &table_json())?;
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
    let _lock = HostLock::take()?;
    if host_netns.is_some_and(|ns| !netns::exists(ns)) {
        // The host namespace is gone, and with it everything there was to undo.
        return Ok(false);
    }
    let mut argv = Vec::new();
    if let Some(ns) = host_netns {
        argv.extend(["-n", ns]);
    }
    argv.extend(["-o", "link", "show"]);
    let links = crate::cmd::run(&tools.ip, &argv, None)?;
    if links_in(&links).any(is_uplink) {
        return Ok(false);
    }
    if setup::table_exists(tools, host_netns, TABLE) {
        setup::apply(tools, host_netns, &ruleset::delete_table(TABLE))?;
    }
    let marker = Marker::of(host_netns)?;
    marker.forget_if_stale()?;
    if marker.path.exists() {
        netns::write_sysctl_in(host_netns, IP_FORWARD, "0")?;
        marker.remove()?;
    }
    Ok(true)
}

/// The interface names in `ip -o link show` output (`3: name@peer: <…> …`).
fn links_in(output: &str) -> impl Iterator<Item = &str> {
    output.lines().filter_map(|line| {
        let name = line.split(": ").nth(1)?;
        Some(name.split('@').next().unwrap_or(name))
    })
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
    fn link_names_are_read_from_ip_output() {
        let out = "1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue\n\
                   7: pyro-12@if2: <BROADCAST> mtu 1500\n\
                   9: wan0@if10: <BROADCAST> mtu 1500\n";
        assert_eq!(links_in(out).collect::<Vec<_>>(), ["lo", "pyro-12", "wan0"]);
        assert_eq!(links_in(out).filter(|l| is_uplink(l)).count(), 1);
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
