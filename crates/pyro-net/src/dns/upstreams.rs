//! The host's resolvers, from `resolv.conf`: whom pyro's resolver forwards to.
//!
//! [`upstreams_from_resolv_conf`] is the pure parser; [`host_upstreams`] reads
//! `/etc/resolv.conf` and, where that names only loopback stubs (systemd-resolved's
//! `127.0.0.53`), the list of real resolvers the stub itself uses,
//! `/run/systemd/resolve/resolv.conf`. A loopback stub still works as an upstream (the
//! upstream sockets are made in the host's namespace, see [`super::server`]); the real
//! resolvers are preferred because they do not depend on the stub's configuration.

use std::net::{IpAddr, SocketAddr};

/// Most upstreams taken (glibc's `MAXNS`).
pub const MAX_UPSTREAMS: usize = 3;
/// The system's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of the resolvers behind its stub.
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// The `nameserver` addresses of a `resolv.conf` text (IPv4 and IPv6, port 53), in order,
/// without repeats, at most [`MAX_UPSTREAMS`]. Comments (`#`, `;`), other options, malformed
/// lines and scoped IPv6 addresses (`fe80::1%eth0`: the scope names an interface of the
/// host that a plain address cannot carry) are skipped.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut found: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let addr = SocketAddr::new(ip, 53);
        if !found.contains(&addr) {
            found.push(addr);
        }
        if found.len() == MAX_UPSTREAMS {
            break;
        }
    }
    found
}

/// The upstreams from `etc` (the text of `/etc/resolv.conf`), or from `systemd` (that of
/// systemd-resolved's list) when every one of `etc`'s is a loopback address and `systemd`
/// names any.
pub fn choose_upstreams(etc: &str, systemd: Option<&str>) -> Vec<SocketAddr> {
    let upstreams = upstreams_from_resolv_conf(etc);
    let all_loopback = upstreams.iter().all(|a| a.ip().is_loopback());
    if all_loopback {
        let behind_stub = systemd.map(upstreams_from_resolv_conf).unwrap_or_default();
        if !behind_stub.is_empty() {
            return behind_stub;
        }
    }
    upstreams
}

/// The host's resolvers ([`choose_upstreams`] of [`RESOLV_CONF`] and
/// [`SYSTEMD_RESOLV_CONF`]); empty when neither names any.
pub fn host_upstreams() -> Vec<SocketAddr> {
    let etc = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let systemd = std::fs::read_to_string(SYSTEMD_RESOLV_CONF).ok();
    choose_upstreams(&etc, systemd.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn nameservers_are_read_in_order_at_most_three() {
        let text = "# comment\nsearch example.org\nnameserver 10.0.0.2\n\
                    nameserver   2001:db8::53  # trailing\n\tnameserver 10.0.0.2\n\
                    nameserver 192.0.2.1\nnameserver 192.0.2.2\n";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            addrs(&["10.0.0.2:53", "[2001:db8::53]:53", "192.0.2.1:53"])
        );
    }

    #[test]
    fn garbage_is_skipped() {
        let text = "nameserver\nnameserver not-an-address\n;nameserver 10.0.0.9\n\
                    #nameserver 10.0.0.8\nnameserverx 10.0.0.7\nnameserver fe80::1%eth0\n\
                    nameserver 10.0.0.1:5353\n\u{0}\u{ff}nameserver 1.1.1.1\n\
                    options ndots:2\nnameserver 10.0.0.3\n";
        assert_eq!(upstreams_from_resolv_conf(text), addrs(&["10.0.0.3:53"]));
        assert!(upstreams_from_resolv_conf("").is_empty());
    }

    #[test]
    fn a_loopback_stub_defers_to_the_resolvers_behind_it() {
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\n";
        let behind = "nameserver 10.0.0.2\nnameserver 10.0.0.3\n";
        assert_eq!(
            choose_upstreams(stub, Some(behind)),
            addrs(&["10.0.0.2:53", "10.0.0.3:53"])
        );
        // No list behind it, or an empty one: the stub itself.
        assert_eq!(choose_upstreams(stub, None), addrs(&["127.0.0.53:53"]));
        assert_eq!(choose_upstreams(stub, Some("")), addrs(&["127.0.0.53:53"]));
        // A real resolver beside the stub: /etc/resolv.conf as it is.
        let mixed = "nameserver 127.0.0.53\nnameserver 10.0.0.9\n";
        assert_eq!(
            choose_upstreams(mixed, Some(behind)),
            addrs(&["127.0.0.53:53", "10.0.0.9:53"])
        );
        assert_eq!(
            choose_upstreams("", Some(behind)),
            addrs(&["10.0.0.2:53", "10.0.0.3:53"])
        );
    }
}
