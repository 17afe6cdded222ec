//! Links, addresses and routes, through `ip` with argv (`ip -n NS …` enters a namespace
//! itself). `ns` is `None` for the namespace pyro runs in (the host's).
//!
//! The guest's TAP is made persistent with `ip tuntap add … mode tap` rather than our own
//! `TUNSETIFF`/`TUNSETPERSIST` ioctls: the same kernel calls, but from inside the target
//! namespace without a setns thread holding a descriptor, and one tool for every link. The
//! VMM, started inside the namespace, attaches to it by name.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::cmd::{self, CmdError};

fn ip(tool: &Path, ns: Option<&str>, args: &[&str]) -> Result<String, CmdError> {
    let mut argv: Vec<&str> = Vec::with_capacity(args.len() + 2);
    if let Some(ns) = ns {
        argv.extend(["-n", ns]);
    }
    argv.extend_from_slice(args);
    cmd::run(tool, &argv, None)
}

/// Creates a veth pair: `name` in `ns`, its peer `peer` in namespace `peer_ns`.
pub fn add_veth(
    tool: &Path,
    ns: Option<&str>,
    name: &str,
    peer: &str,
    peer_ns: &str,
) -> Result<(), CmdError> {
    ip(
        tool,
        ns,
        &[
            "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_ns,
        ],
    )
    .map(drop)
}

/// Creates a persistent TAP `name` in `ns`.
pub fn add_tap(tool: &Path, ns: Option<&str>, name: &str) -> Result<(), CmdError> {
    ip(tool, ns, &["tuntap", "add", "dev", name, "mode", "tap"]).map(drop)
}

/// Adds `addr/len` to `dev`.
pub fn add_addr(
    tool: &Path,
    ns: Option<&str>,
    dev: &str,
    addr: Ipv4Addr,
    len: u8,
) -> Result<(), CmdError> {
    ip(
        tool,
        ns,
        &["addr", "add", &format!("{addr}/{len}"), "dev", dev],
    )
    .map(drop)
}

/// Brings `dev` up.
pub fn up(tool: &Path, ns: Option<&str>, dev: &str) -> Result<(), CmdError> {
    ip(tool, ns, &["link", "set", "dev", dev, "up"]).map(drop)
}

/// Adds a default route via `gateway`.
pub fn default_route(tool: &Path, ns: Option<&str>, gateway: Ipv4Addr) -> Result<(), CmdError> {
    ip(
        tool,
        ns,
        &["route", "add", "default", "via", &gateway.to_string()],
    )
    .map(drop)
}

/// Whether `dev` exists in `ns`.
pub fn exists(tool: &Path, ns: Option<&str>, dev: &str) -> bool {
    ip(tool, ns, &["link", "show", "dev", dev]).is_ok()
}

/// Deletes `dev` (with a veth, its peer goes too).
pub fn delete(tool: &Path, ns: Option<&str>, dev: &str) -> Result<(), CmdError> {
    ip(tool, ns, &["link", "del", "dev", dev]).map(drop)
}
