//! The guest side of networking: `eth0`'s address, the default route and
//! `/etc/resolv.conf`, from the kernel command-line parameter [`NET_PARAM`] or, in a clone
//! restored from a snapshot, from [`pyro_proto::api::Reseed::network`].
//!
//! The host puts `pyro.net=ADDRESS/PREFIX,GATEWAY[,DNS]` on the command line of a networked
//! sandbox (IPv4 only; see `docs/network.md`: the guest is `10.200.x.2/30`, the gateway
//! `.1` and the resolver on the gateway). [`parse`] validates it into a [`NetConfig`];
//! [`configure`] applies it with the classic interface and route ioctls (no netlink, no
//! `ip` in the guest). A networked warm-snapshot template boots with
//! `pyro.net=`[`PENDING`] instead: the NIC's driver is loaded but nothing is configured,
//! and each restored clone gets its own MAC and address through [`reconfigure`]. Without
//! the parameter, nothing here runs: the guest has only `lo`.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::sys;

/// The kernel command-line parameter carrying the guest's network configuration.
pub const NET_PARAM: &str = "pyro.net";

/// The value of [`NET_PARAM`] for a guest that has a NIC but no address yet (a networked
/// warm-snapshot template; each clone gets its own through [`reconfigure`]).
pub const PENDING: &str = "pending";

/// What [`NET_PARAM`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetParam {
    /// A NIC, left unconfigured until [`reconfigure`] (`pyro.net=pending`).
    Pending,
    /// A NIC with this configuration.
    Static(NetConfig),
}

/// The interface the guest's virtio-net device gets (the kernel's first Ethernet name;
/// nothing in the guest renames interfaces).
pub const GUEST_IFACE: &str = "eth0";

/// Where the resolver configuration goes.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Where the resolver configuration really lives in a networked guest: `/etc/resolv.conf`
/// links here, on the tmpfs `/run`, so that a restored clone's reseed rewrites a file in
/// memory instead of the overlay on its disk (a copy-up and a journal commit).
pub const RUN_RESOLV_CONF: &str = "/run/pyro/resolv.conf";

/// The two paths of the guest's resolver configuration ([`RESOLV_CONF`] linking to
/// [`RUN_RESOLV_CONF`]); tests name their own.
#[derive(Debug, Clone)]
pub struct ResolvPaths {
    /// The path programs read (`/etc/resolv.conf`).
    pub etc: std::path::PathBuf,
    /// The file it links to (`/run/pyro/resolv.conf`).
    pub run: std::path::PathBuf,
}

impl ResolvPaths {
    /// The guest's own paths.
    pub fn guest() -> Self {
        Self {
            etc: RESOLV_CONF.into(),
            run: RUN_RESOLV_CONF.into(),
        }
    }
}

/// Writes `text` to `paths.run` (atomically; its directory is created) and makes
/// `paths.etc` a symbolic link to it, unless it already is one (then nothing on the disk
/// changes: a restored clone touches only `/run`).
///
/// # Errors
/// Writing the file or replacing the link.
pub fn install_resolv_conf(paths: &ResolvPaths, text: &str) -> Result<(), NetError> {
    let fail = |path: &Path| {
        let path = path.to_owned();
        move |source| NetError::ResolvConf { path, source }
    };
    if let Some(dir) = paths.run.parent() {
        std::fs::create_dir_all(dir).map_err(fail(dir))?;
    }
    write_atomically(&paths.run, text).map_err(fail(&paths.run))?;
    if std::fs::read_link(&paths.etc).is_ok_and(|t| t == paths.run) {
        return Ok(());
    }
    let mut tmp_name = paths.etc.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".pyro-link");
    let tmp = paths.etc.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&paths.run, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &paths.etc))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(&paths.etc)(e)
        })
}

/// Writes `text` to `path` through a temporary file beside it and a rename (no fsync: the
/// resolver configuration is written again from the host's data at every boot and restore).
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".pyro-tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Longest accepted value of [`NET_PARAM`] (`255.255.255.255/30` and two more addresses
/// take 50 bytes).
pub const MAX_PARAM_LEN: usize = 64;

/// A validated guest network configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Prefix length of the guest's subnet (1 to 30).
    pub prefix: u8,
    /// The default gateway, inside the subnet.
    pub gateway: Ipv4Addr,
    /// The resolver; `None` means the gateway.
    pub dns: Option<Ipv4Addr>,
}

impl NetConfig {
    /// The netmask of [`prefix`](Self::prefix).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The resolver the guest uses: [`dns`](Self::dns), or else the gateway.
    pub fn resolver(&self) -> Ipv4Addr {
        self.dns.unwrap_or(self.gateway)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// Why a [`NET_PARAM`] value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The value is longer than [`MAX_PARAM_LEN`].
    #[error("{NET_PARAM} value is {len} bytes long, at most {MAX_PARAM_LEN} are accepted")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Not `ADDRESS/PREFIX,GATEWAY[,DNS]`.
    #[error("{NET_PARAM}={value:?} is not ADDRESS/PREFIX,GATEWAY[,DNS] or {PENDING}")]
    Shape {
        /// The value.
        value: String,
    },
    /// A field is not a dotted-quad IPv4 address.
    #[error("{field} {value:?} is not an IPv4 address")]
    BadAddress {
        /// `address`, `gateway` or `dns`.
        field: &'static str,
        /// The field's text.
        value: String,
    },
    /// The prefix is not a number from 1 to 30.
    #[error("prefix {value:?} is not a number from 1 to 30")]
    BadPrefix {
        /// The prefix's text.
        value: String,
    },
    /// An address that cannot be a host's (`0/8`, `127/8`, multicast, `240/4`).
    #[error("{field} {addr} is not a unicast host address")]
    NotUnicast {
        /// `address`, `gateway` or `dns`.
        field: &'static str,
        /// The address.
        addr: Ipv4Addr,
    },
    /// A MAC address that is multicast or all zeros.
    #[error("mac {mac} is not a unicast address")]
    NotUnicastMac {
        /// The MAC address.
        mac: pyro_proto::api::MacAddr,
    },
    /// The address or the gateway is the subnet's network or broadcast address.
    #[error("{field} {addr} is the network or broadcast address of its /{prefix}")]
    NotHost {
        /// `address` or `gateway`.
        field: &'static str,
        /// The address.
        addr: Ipv4Addr,
        /// The prefix length.
        prefix: u8,
    },
    /// The gateway is outside the guest's subnet, or is the guest's own address.
    #[error("gateway {gateway} is not another host of {address}/{prefix}")]
    GatewayOffLink {
        /// The guest's address.
        address: Ipv4Addr,
        /// The prefix length.
        prefix: u8,
        /// The gateway.
        gateway: Ipv4Addr,
    },
}

fn addr(field: &'static str, value: &str) -> Result<Ipv4Addr, ParseError> {
    let addr: Ipv4Addr = value.parse().map_err(|_| ParseError::BadAddress {
        field,
        value: value.to_owned(),
    })?;
    unicast(field, addr)
}

fn unicast(field: &'static str, addr: Ipv4Addr) -> Result<Ipv4Addr, ParseError> {
    let [a, ..] = addr.octets();
    if a == 0 || addr.is_loopback() || addr.is_multicast() || a >= 240 {
        return Err(ParseError::NotUnicast { field, addr });
    }
    Ok(addr)
}

/// Parses a [`NET_PARAM`] value: `ADDRESS/PREFIX,GATEWAY[,DNS]`, e.g.
/// `10.200.0.2/30,10.200.0.1`.
///
/// # Errors
/// A [`ParseError`] naming the refused part.
pub fn parse(value: &str) -> Result<NetConfig, ParseError> {
    if value.len() > MAX_PARAM_LEN {
        return Err(ParseError::TooLong { len: value.len() });
    }
    let shape = || ParseError::Shape {
        value: value.to_owned(),
    };
    let fields: Vec<&str> = value.split(',').collect();
    let (cidr, gateway, dns) = match fields.as_slice() {
        [cidr, gateway] => (*cidr, *gateway, None),
        [cidr, gateway, dns] => (*cidr, *gateway, Some(*dns)),
        _ => return Err(shape()),
    };
    let (address, prefix_text) = cidr.split_once('/').ok_or_else(shape)?;
    let address = addr("address", address)?;
    let bad_prefix = || ParseError::BadPrefix {
        value: prefix_text.to_owned(),
    };
    if prefix_text.is_empty()
        || prefix_text.len() > 2
        || !prefix_text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad_prefix());
    }
    let prefix: u8 = prefix_text.parse().map_err(|_| bad_prefix())?;
    if !(1..=30).contains(&prefix) {
        return Err(bad_prefix());
    }
    let gateway = addr("gateway", gateway)?;
    let dns = dns.map(|d| addr("dns", d)).transpose()?;
    check(address, prefix, gateway, dns)
}

/// Parses a [`NET_PARAM`] value: [`PENDING`], or a configuration as [`parse`] reads it.
///
/// # Errors
/// A [`ParseError`] naming the refused part.
pub fn parse_param(value: &str) -> Result<NetParam, ParseError> {
    if value == PENDING {
        return Ok(NetParam::Pending);
    }
    parse(value).map(NetParam::Static)
}

/// Checks a configuration given as typed fields (the rules of [`parse`]: prefix 1 to 30,
/// unicast host addresses, the gateway another host of the subnet).
///
/// # Errors
/// A [`ParseError`] naming the refused part.
pub fn check(
    address: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    dns: Option<Ipv4Addr>,
) -> Result<NetConfig, ParseError> {
    if !(1..=30).contains(&prefix) {
        return Err(ParseError::BadPrefix {
            value: prefix.to_string(),
        });
    }
    let address = unicast("address", address)?;
    let gateway = unicast("gateway", gateway)?;
    let dns = dns.map(|d| unicast("dns", d)).transpose()?;
    let m = mask(prefix);
    for (field, a) in [("address", address), ("gateway", gateway)] {
        let host = u32::from(a) & !m;
        if host == 0 || host == !m {
            return Err(ParseError::NotHost {
                field,
                addr: a,
                prefix,
            });
        }
    }
    if u32::from(address) & m != u32::from(gateway) & m || address == gateway {
        return Err(ParseError::GatewayOffLink {
            address,
            prefix,
            gateway,
        });
    }
    Ok(NetConfig {
        address,
        prefix,
        gateway,
        dns,
    })
}

/// Reads [`NET_PARAM`] from `/proc/cmdline`: `Ok(None)` when it is absent (no network).
///
/// # Errors
/// A present but malformed value.
pub fn from_cmdline() -> Result<Option<NetParam>, ParseError> {
    crate::init::kernel_cmdline_param(NET_PARAM)
        .map(|v| parse_param(&v))
        .transpose()
}

/// Checks a clone's [`GuestNetwork`](pyro_proto::api::GuestNetwork) with the rules of
/// [`NET_PARAM`] (and a unicast MAC).
///
/// # Errors
/// A [`ParseError`] naming the refused part.
pub fn check_guest_network(net: &pyro_proto::api::GuestNetwork) -> Result<NetConfig, ParseError> {
    if !net.mac.is_unicast() {
        return Err(ParseError::NotUnicastMac { mac: net.mac });
    }
    check(net.address, net.prefix, net.gateway, net.dns)
}

/// What failed while applying a [`NetConfig`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Configuring the interface failed.
    #[error("cannot {step} on {iface}")]
    Interface {
        /// The interface.
        iface: String,
        /// What was being done.
        step: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// Removing the old default route failed.
    #[error("cannot remove the old default route")]
    OldRoute {
        /// The system error.
        source: io::Error,
    },
    /// Adding the default route failed.
    #[error("cannot add the default route via {gateway}")]
    Route {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The system error.
        source: io::Error,
    },
    /// Writing the resolver configuration failed.
    #[error("cannot write {path}")]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
}

/// Gives `iface` its address and netmask, brings it up and adds the default route via the
/// gateway (in the calling thread's network namespace).
///
/// # Errors
/// The first step that failed.
pub fn configure_interface(iface: &str, cfg: &NetConfig) -> Result<(), NetError> {
    let fail = |step: &'static str| {
        move |source| NetError::Interface {
            iface: iface.to_owned(),
            step,
            source,
        }
    };
    // Guests are IPv4-only: no link-local address, nothing sent over IPv6.
    disable_ipv6(iface).map_err(fail("turn IPv6 off"))?;
    sys::set_interface_ipv4(iface, cfg.address, cfg.netmask()).map_err(fail("set the address"))?;
    sys::interface_up(iface).map_err(fail("bring the interface up"))?;
    sys::add_default_route(cfg.gateway).map_err(|source| NetError::Route {
        gateway: cfg.gateway,
        source,
    })
}

/// The contents of `resolv.conf` for `cfg`.
pub fn resolv_conf(cfg: &NetConfig) -> String {
    format!(
        "# written by pyro-agent from {NET_PARAM}\nnameserver {}\n",
        cfg.resolver()
    )
}

/// Writes [`resolv_conf`] to `path` atomically (a temporary file beside it, then a rename
/// that also replaces a symlink left there by the image).
///
/// # Errors
/// Creating, writing or renaming the file.
pub fn write_resolv_conf(path: &Path, cfg: &NetConfig) -> Result<(), NetError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |source| NetError::ResolvConf {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".pyro-tmp");
    let tmp = path.with_file_name(tmp_name);
    let write = || -> io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        // No fsync: the file is written again from the host's data at every boot and
        // restore, so losing it in a crash loses nothing (and a sync here costs a restore
        // tens of milliseconds on a durable disk). The rename keeps it whole.
        f.write_all(resolv_conf(cfg).as_bytes())?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// Moves `iface` to a new MAC address and configuration, replacing what it had (a clone
/// restored from a snapshot of a networked template takes over its own network), in the
/// calling thread's network namespace, then writes `resolv_conf`.
///
/// The interface is brought down first: on the way down the kernel flushes the
/// interface's neighbour (ARP) entries (`neigh_ifdown`) and drops its IPv4 routes, so no
/// entry learnt under the old address survives, with neither netlink nor `ip` (the
/// neighbour ioctl `SIOCDARP` deletes one entry by address and could miss some). Then the
/// MAC is set (`SIOCSIFHWADDR`), any default route left is deleted (`SIOCDELRT`), the
/// address is set (`SIOCSIFADDR` replaces the interface's primary address, so the old one
/// is gone) with its netmask, the interface comes up and the default route via the new
/// gateway is added.
///
/// # Errors
/// The first step that failed.
pub fn reconfigure(
    iface: &str,
    mac: [u8; 6],
    cfg: &NetConfig,
    resolv: &ResolvPaths,
) -> Result<(), NetError> {
    let fail = |step: &'static str| {
        move |source| NetError::Interface {
            iface: iface.to_owned(),
            step,
            source,
        }
    };
    // An interface that had an address may hold routes and neighbour entries learnt under
    // it: bringing it down drops them. A warm template's card never had one
    // (`pyro.net=pending`: up, IPv6 off, no address, so nothing was ever sent or learnt),
    // and skipping the down saves a restore the kernel's synchronisation.
    let had_address =
        sys::interface_has_ipv4(iface).map_err(fail("read the interface's address"))?;
    if had_address && sys::interface_is_up(iface).map_err(fail("read the interface's flags"))? {
        sys::interface_down(iface).map_err(fail("bring the interface down"))?;
    }
    sys::set_interface_mac(iface, mac).map_err(fail("set the MAC address"))?;
    sys::delete_default_routes().map_err(|source| NetError::OldRoute { source })?;
    configure_interface(iface, cfg)?;
    install_resolv_conf(resolv, &resolv_conf(cfg))
}

/// Readies a warm template's card (`pyro.net=pending`): IPv6 off on it (guests are
/// IPv4-only, and a link-local address derived from the template's MAC would be shared
/// by every clone), then up without an address, so that nothing is sent and a restored
/// clone only sets its MAC, address and route.
///
/// # Errors
/// The step that failed.
pub fn ready_pending(iface: &str) -> Result<(), NetError> {
    let fail = |step: &'static str| {
        move |source| NetError::Interface {
            iface: iface.to_owned(),
            step,
            source,
        }
    };
    disable_ipv6(iface).map_err(fail("turn IPv6 off"))?;
    sys::interface_up(iface).map_err(fail("bring the interface up"))?;
    // The link is made now, on the template's disk, so no clone writes to its disk.
    install_resolv_conf(
        &ResolvPaths::guest(),
        "# pyro: the address comes with the restore\n",
    )
}

/// Turns IPv6 off on `iface` (its `disable_ipv6` sysctl); a kernel without IPv6 has
/// nothing to turn off.
fn disable_ipv6(iface: &str) -> io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6");
    match std::fs::write(path, "1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Applies `cfg`: [`configure_interface`] on `iface`, then [`write_resolv_conf`] to
/// [`RESOLV_CONF`].
///
/// # Errors
/// The first step that failed.
pub fn configure(iface: &str, cfg: &NetConfig) -> Result<(), NetError> {
    configure_interface(iface, cfg)?;
    install_resolv_conf(&ResolvPaths::guest(), &resolv_conf(cfg))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_plan_addresses() {
        let cfg = parse("10.200.0.2/30,10.200.0.1").unwrap();
        assert_eq!(
            cfg,
            NetConfig {
                address: v4("10.200.0.2"),
                prefix: 30,
                gateway: v4("10.200.0.1"),
                dns: None,
            }
        );
        assert_eq!(cfg.netmask(), v4("255.255.255.252"));
        assert_eq!(cfg.resolver(), v4("10.200.0.1"));
        let cfg = parse("10.200.255.254/30,10.200.255.253,192.0.2.53").unwrap();
        assert_eq!(cfg.dns, Some(v4("192.0.2.53")));
        assert_eq!(cfg.resolver(), v4("192.0.2.53"));
        assert_eq!(
            resolv_conf(&cfg),
            "# written by pyro-agent from pyro.net\nnameserver 192.0.2.53\n"
        );
        assert_eq!(parse("172.16.0.5/1,172.16.0.1").unwrap().prefix, 1);
    }

    #[test]
    fn refuses_each_malformed_class() {
        use ParseError::*;
        let long = "1".repeat(MAX_PARAM_LEN + 1);
        assert_eq!(parse(&long), Err(TooLong { len: long.len() }));
        for shape in [
            "",
            "10.200.0.2/30",
            "10.200.0.2/30,10.200.0.1,10.200.0.1,10.200.0.1",
            "10.200.0.2,10.200.0.1",
        ] {
            assert!(matches!(parse(shape), Err(Shape { .. })), "{shape:?}");
        }
        for bad in [
            "10.200.0/30,10.200.0.1",
            "10.200.0.256/30,10.200.0.1",
            " 10.200.0.2/30,10.200.0.1",
            "::1/30,10.200.0.1",
        ] {
            assert!(
                matches!(
                    parse(bad),
                    Err(BadAddress {
                        field: "address",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse("10.200.0.2/30,gw"),
            Err(BadAddress {
                field: "gateway",
                ..
            })
        ));
        assert!(matches!(
            parse("10.200.0.2/30,10.200.0.1,"),
            Err(BadAddress { field: "dns", .. })
        ));
        for prefix in ["", "0", "31", "32", "+8", "030", "x", "-1"] {
            let v = format!("10.200.0.2/{prefix},10.200.0.1");
            assert_eq!(
                parse(&v),
                Err(BadPrefix {
                    value: prefix.to_owned()
                }),
                "{v:?}"
            );
        }
        for (v, field) in [
            ("127.0.0.2/30,127.0.0.1", "address"),
            ("0.0.0.2/30,0.0.0.1", "address"),
            ("10.200.0.2/30,224.0.0.1", "gateway"),
            ("10.200.0.2/30,10.200.0.1,255.255.255.255", "dns"),
            ("10.200.0.2/30,10.200.0.1,240.0.0.1", "dns"),
        ] {
            assert!(
                matches!(parse(v), Err(NotUnicast { field: f, .. }) if f == field),
                "{v:?}"
            );
        }
        assert!(matches!(
            parse("10.200.0.3/30,10.200.0.1"),
            Err(NotHost {
                field: "address",
                ..
            })
        ));
        assert!(matches!(
            parse("10.200.0.2/30,10.200.0.0"),
            Err(NotHost {
                field: "gateway",
                ..
            })
        ));
        for v in ["10.200.0.2/30,10.200.0.5", "10.200.0.2/30,10.200.0.2"] {
            assert!(matches!(parse(v), Err(GatewayOffLink { .. })), "{v:?}");
        }
    }

    #[test]
    fn errors_name_the_input() {
        let err = parse("10.200.0.2/30,10.9.0.1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "gateway 10.9.0.1 is not another host of 10.200.0.2/30"
        );
        let err = parse("10.200.0.2").unwrap_err();
        assert_eq!(
            err.to_string(),
            "pyro.net=\"10.200.0.2\" is not ADDRESS/PREFIX,GATEWAY[,DNS] or pending"
        );
    }

    #[test]
    fn pending_is_a_nic_without_an_address() {
        assert_eq!(parse_param("pending"), Ok(NetParam::Pending));
        assert_eq!(
            parse_param("10.200.0.2/30,10.200.0.1"),
            Ok(NetParam::Static(parse("10.200.0.2/30,10.200.0.1").unwrap()))
        );
        for bad in ["Pending", "pending,", " pending", "pending/30", ""] {
            assert!(
                matches!(parse_param(bad), Err(ParseError::Shape { .. })),
                "{bad:?}"
            );
        }
        assert!(parse("pending").is_err(), "parse wants a configuration");
    }

    fn guest_network(mac: &str, cidr: &str, gateway: &str) -> pyro_proto::api::GuestNetwork {
        let (address, prefix) = cidr.split_once('/').unwrap();
        pyro_proto::api::GuestNetwork {
            mac: mac.parse().unwrap(),
            address: v4(address),
            prefix: prefix.parse().unwrap(),
            gateway: v4(gateway),
            dns: None,
        }
    }

    #[test]
    fn guest_network_is_checked_like_the_parameter() {
        use ParseError::*;
        let ok = guest_network("02:70:79:00:00:05", "10.200.0.6/30", "10.200.0.5");
        assert_eq!(check_guest_network(&ok), parse("10.200.0.6/30,10.200.0.5"));
        let dns = pyro_proto::api::GuestNetwork {
            dns: Some(v4("192.0.2.53")),
            ..ok.clone()
        };
        assert_eq!(
            check_guest_network(&dns).unwrap().resolver(),
            v4("192.0.2.53")
        );
        for mac in [
            "03:70:79:00:00:05",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            let n = guest_network(mac, "10.200.0.6/30", "10.200.0.5");
            assert!(
                matches!(check_guest_network(&n), Err(NotUnicastMac { .. })),
                "{mac}"
            );
        }
        for (cidr, gw) in [
            ("10.200.0.6/0", "10.200.0.5"),
            ("10.200.0.6/31", "10.200.0.7"),
        ] {
            let n = guest_network("02:70:79:00:00:05", cidr, gw);
            assert!(
                matches!(check_guest_network(&n), Err(BadPrefix { .. })),
                "{cidr}"
            );
        }
        for (cidr, gw) in [
            ("127.0.0.2/30", "127.0.0.1"),
            ("0.0.0.2/30", "0.0.0.1"),
            ("224.0.0.2/30", "224.0.0.1"),
            ("240.0.0.2/30", "240.0.0.1"),
        ] {
            let n = guest_network("02:70:79:00:00:05", cidr, gw);
            assert!(
                matches!(check_guest_network(&n), Err(NotUnicast { .. })),
                "{cidr}"
            );
        }
        let n = guest_network("02:70:79:00:00:05", "10.200.0.7/30", "10.200.0.5");
        assert!(matches!(check_guest_network(&n), Err(NotHost { .. })));
        let n = guest_network("02:70:79:00:00:05", "10.200.0.6/30", "10.200.0.1");
        assert!(matches!(
            check_guest_network(&n),
            Err(GatewayOffLink { .. })
        ));
        let bad_dns = pyro_proto::api::GuestNetwork {
            dns: Some(v4("255.255.255.255")),
            ..ok
        };
        assert!(matches!(
            check_guest_network(&bad_dns),
            Err(NotUnicast { field: "dns", .. })
        ));
    }

    #[test]
    fn resolv_conf_links_to_run_and_a_rewrite_touches_only_run() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ResolvPaths {
            etc: dir.path().join("etc/resolv.conf"),
            run: dir.path().join("run/pyro/resolv.conf"),
        };
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        // An image's own file is replaced by the link.
        std::fs::write(&paths.etc, "nameserver 9.9.9.9\n").unwrap();
        install_resolv_conf(&paths, "nameserver 10.200.0.1\n").unwrap();
        assert_eq!(std::fs::read_link(&paths.etc).unwrap(), paths.run);
        assert_eq!(
            std::fs::read_to_string(&paths.etc).unwrap(),
            "nameserver 10.200.0.1\n"
        );
        let linked = std::fs::symlink_metadata(&paths.etc).unwrap();
        // A second write changes the file in /run only: the link is the same inode.
        install_resolv_conf(&paths, "nameserver 10.200.0.5\n").unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::symlink_metadata(&paths.etc).unwrap().ino(),
            linked.ino()
        );
        assert_eq!(
            std::fs::read_to_string(&paths.etc).unwrap(),
            "nameserver 10.200.0.5\n"
        );
        let etc: Vec<_> = std::fs::read_dir(dir.path().join("etc")).unwrap().collect();
        assert_eq!(etc.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn resolv_conf_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink("/nonexistent/stub-resolv.conf", &path).unwrap();
        let cfg = parse("10.200.0.6/30,10.200.0.5").unwrap();
        write_resolv_conf(&path, &cfg).unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# written by pyro-agent from pyro.net\nnameserver 10.200.0.5\n"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
        let err = write_resolv_conf(&dir.path().join("missing/resolv.conf"), &cfg).unwrap_err();
        assert!(matches!(err, NetError::ResolvConf { .. }));
    }

    /// Runs `ip ARGS` (in the calling thread's network namespace).
    fn ip(args: &[&str]) -> std::process::Output {
        std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap()
    }

    /// Root only: runs `test` in a throwaway network namespace (a thread that
    /// `unshare(CLONE_NEWNET)`s, so the host's namespace is never touched) holding a dummy
    /// (or else veth) `eth0`; skipped with a reason where that is impossible.
    fn in_throwaway_netns(name: &str, test: fn() -> Result<(), String>) {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: {name} needs root");
            return;
        }
        if std::process::Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: {name} needs iproute2's ip");
            return;
        }
        let result = std::thread::spawn(move || -> Result<(), String> {
            // SAFETY: unshare with CLONE_NEWNET only changes this thread's network
            // namespace (allowed in a multi-threaded process); the thread ends after the
            // test, taking the namespace with it.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!("skip: unshare: {}", io::Error::last_os_error()));
            }
            let dummy = ip(&["link", "add", "eth0", "type", "dummy"]);
            if !dummy.status.success() {
                let veth = ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "p0"]);
                if !veth.status.success() {
                    return Err(format!(
                        "skip: neither dummy nor veth interfaces: {}",
                        String::from_utf8_lossy(&veth.stderr)
                    ));
                }
                assert!(ip(&["link", "set", "p0", "up"]).status.success());
            }
            test()
        })
        .join()
        .unwrap();
        match result {
            Ok(()) => {}
            Err(reason) if reason.starts_with("skip: ") => {
                eprintln!("skipped: {name}: {reason}");
            }
            Err(err) => panic!("{err}"),
        }
    }

    /// `eth0`'s `ip -j addr` object and its IPv4 addresses.
    fn eth0() -> (serde_json::Value, Vec<serde_json::Value>) {
        let addrs: serde_json::Value =
            serde_json::from_slice(&ip(&["-j", "addr", "show", "dev", "eth0"]).stdout).unwrap();
        let link = addrs[0].clone();
        let inet = link["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == "inet")
            .cloned()
            .collect();
        (link, inet)
    }

    /// The IPv4 default routes, from `ip -j`.
    fn default_routes() -> Vec<serde_json::Value> {
        let routes: serde_json::Value =
            serde_json::from_slice(&ip(&["-j", "-4", "route", "show", "default"]).stdout).unwrap();
        routes.as_array().unwrap().clone()
    }

    /// Root only: applies a configuration to an interface in a throwaway network namespace
    /// and reads it back with `ip -j`.
    #[test]
    fn configure_interface_in_throwaway_netns() {
        in_throwaway_netns("configure_interface_in_throwaway_netns", || {
            let cfg = parse("10.200.0.2/30,10.200.0.1").unwrap();
            configure_interface(GUEST_IFACE, &cfg).map_err(|e| format!("{e}: {:?}", e))?;
            // Applying it again (a restarted agent) succeeds too.
            configure_interface(GUEST_IFACE, &cfg).map_err(|e| format!("again: {e:?}"))?;

            let addrs: serde_json::Value =
                serde_json::from_slice(&ip(&["-j", "addr", "show", "dev", "eth0"]).stdout).unwrap();
            let link = &addrs[0];
            let flags = link["flags"].as_array().unwrap();
            assert!(flags.iter().any(|f| f == "UP"), "{link}");
            let inet: Vec<_> = link["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["family"] == "inet")
                .collect();
            assert_eq!(inet.len(), 1, "{link}");
            assert_eq!(inet[0]["local"], "10.200.0.2");
            assert_eq!(inet[0]["prefixlen"], 30);
            assert_eq!(inet[0]["broadcast"], "10.200.0.3");

            let routes: serde_json::Value =
                serde_json::from_slice(&ip(&["-j", "-4", "route", "show", "default"]).stdout)
                    .unwrap();
            let routes = routes.as_array().unwrap();
            assert_eq!(routes.len(), 1, "{routes:?}");
            assert_eq!(routes[0]["gateway"], "10.200.0.1");
            assert_eq!(routes[0]["dev"], "eth0");

            // A missing interface is a typed error naming it, not a panic.
            let err = configure_interface("nosuch0", &cfg).unwrap_err();
            assert!(
                matches!(&err, NetError::Interface { iface, .. } if iface == "nosuch0"),
                "{err:?}"
            );
            Ok(())
        });
    }

    /// Root only: a clone's reseed moves a configured `eth0` to a new MAC, address and
    /// gateway: the old address, default route and neighbour entries are gone.
    #[test]
    fn reconfigure_replaces_mac_address_route_and_neighbours() {
        in_throwaway_netns(
            "reconfigure_replaces_mac_address_route_and_neighbours",
            || {
                let old = parse("10.200.0.2/30,10.200.0.1").unwrap();
                configure_interface(GUEST_IFACE, &old).map_err(|e| format!("{e:?}"))?;
                let neigh = ip(&[
                    "neigh",
                    "replace",
                    "10.200.0.1",
                    "lladdr",
                    "02:00:00:00:00:01",
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ]);
                let had_neighbour = neigh.status.success();
                let neighbours = || {
                    let v: serde_json::Value = serde_json::from_slice(
                        &ip(&["-j", "-4", "neigh", "show", "dev", "eth0"]).stdout,
                    )
                    .unwrap();
                    v.as_array().unwrap().len()
                };
                if had_neighbour {
                    assert_eq!(neighbours(), 1);
                }

                let net = guest_network("02:70:79:00:01:07", "10.200.1.6/30", "10.200.1.5");
                let cfg = check_guest_network(&net).unwrap();
                let dir = tempfile::tempdir().unwrap();
                let resolv = ResolvPaths {
                    etc: dir.path().join("resolv.conf"),
                    run: dir.path().join("run/pyro/resolv.conf"),
                };
                reconfigure(GUEST_IFACE, net.mac.0, &cfg, &resolv).map_err(|e| format!("{e:?}"))?;

                let (link, inet) = eth0();
                assert_eq!(link["address"], "02:70:79:00:01:07", "{link}");
                assert!(
                    link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
                    "{link}"
                );
                assert_eq!(inet.len(), 1, "the old address is gone: {link}");
                assert_eq!(inet[0]["local"], "10.200.1.6");
                assert_eq!(inet[0]["prefixlen"], 30);
                let routes = default_routes();
                assert_eq!(routes.len(), 1, "{routes:?}");
                assert_eq!(routes[0]["gateway"], "10.200.1.5");
                assert_eq!(routes[0]["dev"], "eth0");
                if had_neighbour {
                    assert_eq!(neighbours(), 0, "the neighbour cache is flushed");
                }
                assert_eq!(
                    std::fs::read_to_string(&resolv.etc).unwrap(),
                    resolv_conf(&cfg)
                );
                assert_eq!(std::fs::read_link(&resolv.etc).unwrap(), resolv.run);

                // Again, with the same values (a retried reseed): the same result.
                reconfigure(GUEST_IFACE, net.mac.0, &cfg, &resolv).map_err(|e| format!("{e:?}"))?;
                assert_eq!(eth0().1.len(), 1);
                assert_eq!(default_routes().len(), 1);

                let err = reconfigure("nosuch0", net.mac.0, &cfg, &resolv).unwrap_err();
                assert!(
                    matches!(&err, NetError::Interface { iface, .. } if iface == "nosuch0"),
                    "{err:?}"
                );
                Ok(())
            },
        );
    }
}
