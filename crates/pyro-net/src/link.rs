//! Links, addresses and routes, through `ip` with argv (`ip -n NS …` enters a namespace
//! itself). `ns` is `None` for the namespace pyro runs in (the host's). A [`Batch`] runs
//! several as one `ip -batch -` process; [`index`] looks a link up without a process.
//!
//! The guest's TAP is made persistent with `ip tuntap add … mode tap` rather than our own
//! `TUNSETIFF`/`TUNSETPERSIST` ioctls: the same kernel calls, but from inside the target
//! namespace without a setns thread holding a descriptor, and one tool for every link. The
//! VMM, started inside the namespace, attaches to it by name.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::cmd::{self, CmdError};
use crate::netns::{self, NetnsError};

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

/// The interface index of `dev` in `ns`, `None` if there is no such link: what
/// [`exists`] answers, from `if_nametoindex(3)` (on a thread inside `ns`) instead of a
/// process.
pub fn index(ns: Option<&str>, dev: &str) -> Result<Option<u32>, NetnsError> {
    let Ok(name) = CString::new(dev) else {
        return Ok(None);
    };
    // SAFETY: `name` is a NUL-terminated string that lives across the call; the call
    // only reads it.
    let lookup = || unsafe { libc::if_nametoindex(name.as_ptr()) };
    let index = match ns {
        Some(ns) => netns::run_in(ns, lookup)?,
        None => lookup(),
    };
    Ok((index != 0).then_some(index))
}

/// Several `ip` commands in one namespace, run as one process (`ip [-n NS] -batch -`), in
/// order, stopping at the first that fails.
#[derive(Debug, Default)]
pub struct Batch {
    lines: Vec<Vec<String>>,
}

impl Batch {
    fn push(&mut self, args: &[&str]) -> &mut Self {
        self.lines
            .push(args.iter().map(|a| (*a).to_owned()).collect());
        self
    }

    /// As [`add_veth`].
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_ns: &str) -> &mut Self {
        self.push(&[
            "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_ns,
        ])
    }

    /// As [`add_tap`].
    pub fn add_tap(&mut self, name: &str) -> &mut Self {
        self.push(&["tuntap", "add", "dev", name, "mode", "tap"])
    }

    /// As [`add_addr`].
    pub fn add_addr(&mut self, dev: &str, addr: Ipv4Addr, len: u8) -> &mut Self {
        self.push(&["addr", "add", &format!("{addr}/{len}"), "dev", dev])
    }

    /// As [`up`].
    pub fn up(&mut self, dev: &str) -> &mut Self {
        self.push(&["link", "set", "dev", dev, "up"])
    }

    /// As [`default_route`].
    pub fn default_route(&mut self, gateway: Ipv4Addr) -> &mut Self {
        self.push(&["route", "add", "default", "via", &gateway.to_string()])
    }

    /// Runs the commands in `ns` (`None`: this thread's namespace).
    pub fn run(&self, tool: &Path, ns: Option<&str>) -> Result<(), CmdError> {
        cmd::ip_batch(tool, ns, &self.lines)
    }
}

/// Deletes `dev` (with a veth, its peer goes too).
pub fn delete(tool: &Path, ns: Option<&str>, dev: &str) -> Result<(), CmdError> {
    ip(tool, ns, &["link", "del", "dev", dev]).map(drop)
}
