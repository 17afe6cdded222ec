//! The rules are checked three ways: the typed model (which chain, which order), a small
//! evaluator that walks a packet through a chain as nft would, and the rendered JSON read
//! back as data.

use super::*;
use proptest::prelude::*;

/// A packet as the rules see it.
#[derive(Debug, Clone)]
struct Packet {
    iif: &'static str,
    oif: &'static str,
    ipv6: bool,
    saddr: Ipv4Addr,
    daddr: Ipv4Addr,
    l4: Option<(L4, u16)>,
    /// `None`: a new connection.
    ct: Option<CtState>,
}

fn from_guest(plan: &SandboxNet, daddr: Ipv4Addr) -> Packet {
    Packet {
        iif: TAP_NAME,
        oif: UPLINK_NS_NAME,
        ipv6: false,
        saddr: plan.guest(),
        daddr,
        l4: Some((L4::Tcp, 443)),
        ct: None,
    }
}

/// The verdict of `chain` for `packet`; `allowed` holds the `allowed_v4` set's contents.
fn verdict(rules: &Ruleset, chain: &str, p: &Packet, allowed: &[Ipv4Addr]) -> Action {
    let chain = rules.chain(chain).unwrap();
    let in_set = |name: &str, addr: Ipv4Addr| {
        if name == ALLOWED_SET {
            return allowed.contains(&addr);
        }
        rules
            .set(name)
            .unwrap()
            .elements
            .iter()
            .any(|net| net.contains(addr))
    };
    let holds = |m: &Match| match m {
        Match::Iif(name) => p.iif == name,
        Match::Oif(name) => p.oif == name,
        Match::Ipv6 => p.ipv6,
        // `ip saddr`/`ip daddr` carry an implicit "is IPv4".
        Match::SaddrNot(a) => !p.ipv6 && p.saddr != *a,
        Match::SaddrIn(net) => !p.ipv6 && net.contains(p.saddr),
        Match::Daddr(a) => !p.ipv6 && p.daddr == *a,
        Match::DaddrInSet(set) => !p.ipv6 && in_set(set, p.daddr),
        Match::Ct(states) => p.ct.is_some_and(|s| states.contains(&s)),
        Match::Dport(l4, ports) => {
            p.l4.is_some_and(|(l, port)| l == *l4 && ports.contains(&port))
        }
    };
    chain
        .rules
        .iter()
        .find(|r| r.matches.iter().all(holds))
        .map_or(chain.policy, |r| r.action)
}

/// Where a new connection from the guest ends, as the kernel would walk it: the NAT
/// prerouting chain (when there is one) may redirect it to the namespace itself, where the
/// input chain decides on `gateway:PORT`; otherwise the forward chain decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Redirected to the proxy; the input chain's verdict on it.
    Proxied(Action),
    /// Routed through; the forward chain's verdict.
    Forwarded(Action),
}

fn fate(rules: &Ruleset, p: &Packet, allowed: &[Ipv4Addr], gateway: Ipv4Addr) -> Fate {
    if rules.chain("redirect").is_some()
        && let Action::Redirect(port) = verdict(rules, "redirect", p, allowed)
    {
        let mut local = p.clone();
        local.daddr = gateway;
        local.l4 = Some((L4::Tcp, port));
        return Fate::Proxied(verdict(rules, "input", &local, allowed));
    }
    Fate::Forwarded(verdict(rules, "forward", p, allowed))
}

fn plan() -> SandboxNet {
    SandboxNet::new(5).unwrap()
}

fn egress() -> Ruleset {
    sandbox(&plan(), NetworkPolicy::Egress, &Allowlist::default())
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn blocked_ranges_are_sorted_and_disjoint() {
    for pair in BLOCKED.windows(2) {
        assert!(
            pair[0].0 < pair[1].0 && !pair[0].0.overlaps(&pair[1].0),
            "{pair:?}"
        );
    }
}

#[test]
fn egress_reaches_public_addresses_only() {
    let r = egress();
    for public in [
        "198.51.100.10",
        "203.0.113.7",
        "1.1.1.1",
        "8.8.8.8",
        "172.32.0.1",
    ] {
        assert_eq!(
            verdict(&r, "forward", &from_guest(&plan(), ip4(public)), &[]),
            Action::Accept
        );
    }
    for blocked in [
        "10.9.9.9",
        "10.200.0.26", // another sandbox's guest
        "10.201.0.21", // the host end of this sandbox's uplink
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254", // metadata
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.0.170",
        "198.18.0.1",
    ] {
        assert_eq!(
            verdict(&r, "forward", &from_guest(&plan(), ip4(blocked)), &[]),
            Action::Reject,
            "{blocked}"
        );
    }
}

#[test]
fn dns_only_to_the_gateway() {
    let r = egress();
    for (l4, port) in [(L4::Udp, 53), (L4::Tcp, 53), (L4::Tcp, 853), (L4::Udp, 853)] {
        let mut p = from_guest(&plan(), ip4("198.51.100.53"));
        p.l4 = Some((l4, port));
        assert_eq!(
            verdict(&r, "forward", &p, &[]),
            Action::Reject,
            "{l4:?} {port}"
        );
    }
    for l4 in [L4::Udp, L4::Tcp] {
        let mut p = from_guest(&plan(), plan().gateway());
        p.l4 = Some((l4, 53));
        assert_eq!(verdict(&r, "input", &p, &[]), Action::Accept);
        p.l4 = Some((l4, 8080));
        assert_eq!(
            verdict(&r, "input", &p, &[]),
            Action::Reject,
            "services on 0.0.0.0"
        );
    }
    // The namespace's other address (the uplink's end) is local too, and refused.
    let mut p = from_guest(&plan(), plan().uplink_ns());
    p.l4 = Some((L4::Udp, 53));
    assert_eq!(verdict(&r, "input", &p, &[]), Action::Reject);
    // Broadcast to the namespace.
    p.daddr = ip4("255.255.255.255");
    p.l4 = Some((L4::Udp, 67));
    assert_eq!(verdict(&r, "input", &p, &[]), Action::Reject);
}

#[test]
fn spoofed_and_ipv6_packets_are_dropped_before_routing() {
    let r = egress();
    let mut p = from_guest(&plan(), ip4("198.51.100.10"));
    assert_eq!(verdict(&r, "prerouting", &p, &[]), Action::Accept);
    for spoofed in ["127.0.0.1", "10.200.0.26", "198.51.100.99", "10.200.0.21"] {
        p.saddr = ip4(spoofed);
        assert_eq!(
            verdict(&r, "prerouting", &p, &[]),
            Action::Drop,
            "{spoofed}"
        );
    }
    p.saddr = plan().guest();
    p.ipv6 = true;
    assert_eq!(verdict(&r, "prerouting", &p, &[]), Action::Drop);

    // From the uplink, nothing may claim the guest's subnet.
    let inbound = Packet {
        iif: UPLINK_NS_NAME,
        oif: TAP_NAME,
        ipv6: false,
        saddr: plan().guest(),
        daddr: plan().guest(),
        l4: None,
        ct: None,
    };
    assert_eq!(verdict(&r, "prerouting", &inbound, &[]), Action::Drop);
}

#[test]
fn nothing_new_reaches_the_guest_from_outside() {
    let r = egress();
    let mut p = Packet {
        iif: UPLINK_NS_NAME,
        oif: TAP_NAME,
        ipv6: false,
        saddr: ip4("198.51.100.10"),
        daddr: plan().guest(),
        l4: Some((L4::Tcp, 22)),
        ct: None,
    };
    assert_eq!(verdict(&r, "forward", &p, &[]), Action::Drop);
    p.ct = Some(CtState::Established);
    assert_eq!(verdict(&r, "forward", &p, &[]), Action::Accept);
    p.ct = Some(CtState::Invalid);
    assert_eq!(verdict(&r, "forward", &p, &[]), Action::Drop);
    // And nothing new from the uplink ends in the namespace.
    p.daddr = plan().uplink_ns();
    p.ct = None;
    assert_eq!(verdict(&r, "input", &p, &[]), Action::Drop);
}

#[test]
fn allowlist_narrows_egress() {
    let list = Allowlist::parse(["*.example.org"], ["203.0.113.0/24", "10.9.9.0/24"]).unwrap();
    let r = sandbox(&plan(), NetworkPolicy::Egress, &list);
    let v = |d: &str, allowed: &[Ipv4Addr]| {
        verdict(&r, "forward", &from_guest(&plan(), ip4(d)), allowed)
    };
    assert_eq!(v("203.0.113.9", &[]), Action::Accept, "--allow-cidr");
    assert_eq!(
        v("10.9.9.9", &[]),
        Action::Accept,
        "--allow-cidr opens a private range"
    );
    assert_eq!(v("10.9.8.1", &[]), Action::Reject);
    assert_eq!(
        v("198.51.100.10", &[]),
        Action::Reject,
        "not resolved for an allowed name"
    );
    assert_eq!(v("198.51.100.10", &[ip4("198.51.100.10")]), Action::Accept);
    // A resolver answer never opens a blocked range (DNS rebinding).
    assert_eq!(
        v("169.254.169.254", &[ip4("169.254.169.254")]),
        Action::Reject
    );
    assert_eq!(r.set(ALLOWED_CIDRS_SET).unwrap().elements, list.cidrs());
    assert_eq!(
        r.set(ALLOWED_SET).unwrap().timeout,
        Some(ALLOWED_DEFAULT_TIMEOUT)
    );
}

#[test]
fn off_and_published_ports() {
    let off = sandbox(&plan(), NetworkPolicy::Off, &Allowlist::default());
    assert_eq!(
        verdict(
            &off,
            "forward",
            &from_guest(&plan(), ip4("198.51.100.10")),
            &[]
        ),
        Action::Reject
    );
    let mut dns = from_guest(&plan(), plan().gateway());
    dns.l4 = Some((L4::Udp, 53));
    assert_eq!(verdict(&off, "input", &dns, &[]), Action::Reject);
    // Published ports are not built yet: the same rules as egress.
    assert_eq!(
        sandbox(
            &plan(),
            NetworkPolicy::EgressPublishedPorts,
            &Allowlist::default()
        )
        .chains,
        egress().chains
    );
}

#[test]
fn masquerade_only_the_guest_subnet_out_of_the_uplink() {
    let r = egress();
    let post = r.chain("postrouting").unwrap();
    assert_eq!(post.kind, ChainType::Nat);
    assert_eq!(post.rules.len(), 1);
    assert_eq!(post.rules[0].action, Action::Masquerade);
    assert_eq!(
        post.rules[0].matches,
        vec![
            Match::Oif(UPLINK_NS_NAME.to_owned()),
            Match::SaddrIn(plan().guest_subnet())
        ]
    );
}

#[test]
fn host_guard_refuses_everything_to_the_host() {
    let g = host_guard(&plan());
    assert_eq!(g.table, "pyro-5");
    let p = Packet {
        iif: "pyro-5",
        oif: "",
        ipv6: false,
        saddr: plan().uplink_ns(),
        daddr: ip4("203.0.113.1"),
        l4: Some((L4::Tcp, 22)),
        ct: None,
    };
    assert_eq!(verdict(&g, "input", &p, &[]), Action::Reject);
    let mut reply = p.clone();
    reply.ct = Some(CtState::Established);
    assert_eq!(verdict(&g, "input", &reply, &[]), Action::Accept);
    let mut other = p.clone();
    other.iif = "eth0";
    assert_eq!(
        verdict(&g, "input", &other, &[]),
        Action::Accept,
        "other interfaces untouched"
    );

    let mut fwd = p.clone();
    fwd.daddr = ip4("198.51.100.10");
    assert_eq!(verdict(&g, "forward", &fwd, &[]), Action::Accept);
    fwd.daddr = SandboxNet::new(6).unwrap().uplink_ns();
    assert_eq!(
        verdict(&g, "forward", &fwd, &[]),
        Action::Reject,
        "another sandbox"
    );
    fwd.daddr = ip4("198.51.100.10");
    fwd.saddr = ip4("10.201.0.25");
    assert_eq!(verdict(&g, "forward", &fwd, &[]), Action::Drop, "spoofed");
}

/// The rendered document, read back as data.
#[test]
fn json_structure() {
    let list = Allowlist::parse(["api.example.org"], ["203.0.113.0/24", "198.51.100.7"]).unwrap();
    let doc = sandbox(&plan(), NetworkPolicy::Egress, &list).to_json();
    let cmds = doc["nftables"].as_array().unwrap();
    let table = json!({"family": "inet", "name": "pyro-5"});
    assert_eq!(cmds[0], json!({"add": {"table": table}}));
    assert_eq!(cmds[1], json!({"delete": {"table": table}}));
    assert_eq!(cmds[2], json!({"add": {"table": table}}));
    // Every later command is an `add` inside this one table: nothing else is touched.
    for cmd in &cmds[3..] {
        let obj = cmd["add"].as_object().unwrap();
        assert_eq!(obj.len(), 1);
        let (_, body) = obj.iter().next().unwrap();
        assert_eq!(body["family"], "inet");
        assert_eq!(body["table"], "pyro-5");
    }
    let find = |kind: &str, name: &str| {
        cmds.iter()
            .find(|c| c["add"][kind]["name"] == name)
            .unwrap()["add"][kind]
            .clone()
    };
    let blocked = find("set", BLOCKED_SET);
    assert_eq!(blocked["type"], "ipv4_addr");
    assert_eq!(blocked["flags"], json!(["interval"]));
    assert_eq!(
        blocked["elem"][1],
        json!({"prefix": {"addr": "10.0.0.0", "len": 8}})
    );
    assert_eq!(blocked["elem"].as_array().unwrap().len(), BLOCKED.len());
    let allowed = find("set", ALLOWED_SET);
    assert_eq!(allowed["flags"], json!(["timeout"]));
    assert_eq!(allowed["timeout"], 300);
    assert!(allowed.get("elem").is_none());
    let cidrs = find("set", ALLOWED_CIDRS_SET);
    assert_eq!(
        cidrs["elem"],
        json!(["198.51.100.7", {"prefix": {"addr": "203.0.113.0", "len": 24}}])
    );

    let forward = find("chain", "forward");
    assert_eq!(forward["type"], "filter");
    assert_eq!(forward["hook"], "forward");
    assert_eq!(forward["policy"], "drop");
    assert_eq!(find("chain", "postrouting")["type"], "nat");
    assert_eq!(find("chain", "prerouting")["prio"], -300);

    let rules: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("rule")).collect();
    let spoof = rules
        .iter()
        .find(|r| r["comment"] == "anti-spoofing: only the guest's address from the TAP")
        .unwrap();
    assert_eq!(spoof["chain"], "prerouting");
    assert_eq!(
        spoof["expr"],
        json!([
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "pyro-tap"}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.200.0.22"}},
            {"counter": null},
            {"drop": null},
        ])
    );
    let blocked_rule = rules
        .iter()
        .find(|r| r["chain"] == "forward" && r["expr"][1]["match"]["right"] == "@blocked_v4")
        .unwrap();
    assert_eq!(blocked_rule["chain"], "forward");
    assert_eq!(
        blocked_rule["expr"].as_array().unwrap().last().unwrap(),
        &json!({"reject": {"type": "icmpx", "expr": "admin-prohibited"}})
    );
    let dns = rules
        .iter()
        .find(|r| {
            r["chain"] == "forward" && r["expr"][1]["match"]["left"]["payload"]["field"] == "dport"
        })
        .unwrap();
    assert_eq!(dns["expr"][1]["match"]["right"], json!({"set": [53, 853]}));
    let ct = rules
        .iter()
        .find(|r| r["chain"] == "input" && r["comment"] == "replies")
        .unwrap();
    assert_eq!(
        ct["expr"][0]["match"]["right"],
        json!(["established", "related"])
    );
}

#[test]
fn element_and_delete_documents() {
    let doc = allow_addresses(
        &plan(),
        &[
            (ip4("198.51.100.10"), Duration::from_secs(60)),
            (ip4("203.0.113.5"), Duration::ZERO),
        ],
    );
    assert_eq!(
        doc,
        json!({"nftables": [{"add": {"element": {
            "family": "inet", "table": "pyro-5", "name": "allowed_v4",
            "elem": [
                {"elem": {"val": "198.51.100.10", "timeout": 60}},
                {"elem": {"val": "203.0.113.5", "timeout": 1}},
            ],
        }}}]})
    );
    assert_eq!(
        delete_table("pyro-5"),
        json!({"nftables": [{"delete": {"table": {"family": "inet", "name": "pyro-5"}}}]})
    );
}

fn hosts_and_cidrs() -> Allowlist {
    Allowlist::parse(["allowed.test"], ["203.0.113.0/24", "10.9.9.0/24"]).unwrap()
}

#[test]
fn host_patterns_redirect_http_and_https_to_the_proxy() {
    let r = sandbox(&plan(), NetworkPolicy::Egress, &hosts_and_cidrs());
    let gw = plan().gateway();
    let to = |d: &str, l4: L4, port: u16| {
        let mut p = from_guest(&plan(), ip4(d));
        p.l4 = Some((l4, port));
        fate(&r, &p, &[], gw)
    };
    for port in PROXIED_PORTS {
        assert_eq!(
            to("198.51.100.10", L4::Tcp, port),
            Fate::Proxied(Action::Accept),
            "any public address, under the proxy's eye"
        );
        assert_eq!(
            to("203.0.113.9", L4::Tcp, port),
            Fate::Forwarded(Action::Accept),
            "--allow-cidr goes straight out"
        );
        assert_eq!(
            to("10.9.9.9", L4::Tcp, port),
            Fate::Forwarded(Action::Accept)
        );
        for blocked in ["169.254.169.254", "10.9.8.1", "127.0.0.1", "192.168.1.1"] {
            assert_eq!(
                to(blocked, L4::Tcp, port),
                Fate::Forwarded(Action::Reject),
                "{blocked}"
            );
        }
        assert_eq!(
            to("198.51.100.10", L4::Udp, port),
            Fate::Forwarded(Action::Reject),
            "UDP is not proxied"
        );
    }
    assert_eq!(
        to("198.51.100.10", L4::Tcp, 22),
        Fate::Forwarded(Action::Reject),
        "other ports: allowed_v4 only"
    );
    // The redirect chain hangs at destination NAT, after the raw chain, from the TAP only.
    let chain = r.chain("redirect").unwrap();
    assert_eq!(
        (chain.kind, chain.hook, chain.priority),
        (ChainType::Nat, Hook::Prerouting, -100)
    );
    assert!(
        chain
            .rules
            .iter()
            .all(|rule| rule.matches.contains(&Match::Iif(TAP_NAME.to_owned())))
    );
    let redirect = chain.rules.last().unwrap();
    assert_eq!(redirect.action, Action::Redirect(PROXY_PORT));
    let doc = r.to_json();
    let rendered = doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["add"]["rule"]["chain"] == "redirect"
                && c["add"]["rule"]["expr"][1]["match"]["left"]["payload"]["field"] == "dport"
        })
        .unwrap();
    assert_eq!(
        rendered["add"]["rule"]["expr"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        &json!({"redirect": {"port": PROXY_PORT}})
    );
}

#[test]
fn the_proxy_port_is_open_only_with_host_patterns() {
    let mut direct = from_guest(&plan(), plan().gateway());
    direct.l4 = Some((L4::Tcp, PROXY_PORT));
    let with = sandbox(&plan(), NetworkPolicy::Egress, &hosts_and_cidrs());
    assert_eq!(verdict(&with, "input", &direct, &[]), Action::Accept);
    let cidrs_only = Allowlist::parse::<[&str; 0], _>([], ["203.0.113.0/24"]).unwrap();
    for (list, what) in [
        (Allowlist::default(), "open egress"),
        (cidrs_only, "CIDRs only"),
    ] {
        let r = sandbox(&plan(), NetworkPolicy::Egress, &list);
        assert!(r.chain("redirect").is_none(), "{what}");
        assert_eq!(verdict(&r, "input", &direct, &[]), Action::Reject, "{what}");
        let mut web = from_guest(&plan(), ip4("198.51.100.10"));
        web.l4 = Some((L4::Tcp, 80));
        assert!(
            matches!(fate(&r, &web, &[], plan().gateway()), Fate::Forwarded(_)),
            "{what}"
        );
    }
    // Under `off` nothing is proxied either, whatever the list.
    let off = sandbox(&plan(), NetworkPolicy::Off, &hosts_and_cidrs());
    assert!(off.chain("redirect").is_none());
    assert_eq!(verdict(&off, "input", &direct, &[]), Action::Reject);
}

proptest! {
    /// With host patterns: a new TCP connection from the guest to 80 or 443 is proxied
    /// exactly when its destination is neither blocked nor in an allowed CIDR; everything
    /// else meets the forward chain, which passes allowed CIDRs and `allowed_v4` only.
    #[test]
    fn proxied_exactly_when_not_blocked(bits in any::<u32>(), port in 1u16.., udp in any::<bool>(), resolved in any::<bool>()) {
        let plan = plan();
        let list = hosts_and_cidrs();
        let r = sandbox(&plan, NetworkPolicy::Egress, &list);
        let daddr = Ipv4Addr::from_bits(bits);
        let mut p = from_guest(&plan, daddr);
        let l4 = if udp { L4::Udp } else { L4::Tcp };
        p.l4 = Some((l4, port));
        let allowed = if resolved { vec![daddr] } else { Vec::new() };
        let in_cidr = list.cidrs().iter().any(|c| c.contains(daddr));
        let blocked = BLOCKED.iter().any(|(n, _)| n.contains(daddr));
        let expected = if l4 == L4::Tcp && PROXIED_PORTS.contains(&port) && !in_cidr && !blocked {
            Fate::Proxied(Action::Accept)
        } else if port != 53 && port != 853 && (in_cidr || (!blocked && resolved)) {
            Fate::Forwarded(Action::Accept)
        } else {
            Fate::Forwarded(Action::Reject)
        };
        prop_assert_eq!(fate(&r, &p, &allowed, plan.gateway()), expected);
    }
}

proptest! {
    /// Whatever the plan and the destination: a new connection from the guest is accepted
    /// exactly when the destination is public unicast and not DNS.
    #[test]
    fn forward_verdict_is_public_unicast(index in 0..crate::plan::MAX_SANDBOXES, bits in any::<u32>(), port in 1u16..) {
        let plan = SandboxNet::new(index).unwrap();
        let r = sandbox(&plan, NetworkPolicy::Egress, &Allowlist::default());
        let daddr = Ipv4Addr::from_bits(bits);
        let mut p = from_guest(&plan, daddr);
        p.l4 = Some((L4::Tcp, port));
        let public = !BLOCKED.iter().any(|(n, _)| n.contains(daddr))
            && !daddr.is_private() && !daddr.is_loopback() && !daddr.is_link_local()
            && !daddr.is_multicast() && !daddr.is_broadcast() && !daddr.is_unspecified();
        let expected = if public && port != 53 && port != 853 { Action::Accept } else { Action::Reject };
        prop_assert_eq!(verdict(&r, "forward", &p, &[]), expected);
        // Any other source from the TAP is dropped before routing.
        let mut spoofed = p.clone();
        spoofed.saddr = Ipv4Addr::from_bits(bits.rotate_left(7));
        if spoofed.saddr != plan.guest() {
            prop_assert_eq!(verdict(&r, "prerouting", &spoofed, &[]), Action::Drop);
        }
    }
}

#[test]
fn credentials_redirect_http_and_https_without_host_patterns() {
    let open = Allowlist::default();
    assert!(!proxied(NetworkPolicy::Egress, &open, false));
    assert!(proxied(NetworkPolicy::Egress, &open, true));
    assert!(!proxied(NetworkPolicy::Off, &open, true));
    assert_eq!(
        sandbox(&plan(), NetworkPolicy::Egress, &open).chain("redirect"),
        None
    );
    let r = sandbox_with(&plan(), NetworkPolicy::Egress, &open, true);
    let gw = plan().gateway();
    for port in PROXIED_PORTS {
        let mut p = from_guest(&plan(), ip4("198.51.100.10"));
        p.l4 = Some((L4::Tcp, port));
        assert_eq!(fate(&r, &p, &[], gw), Fate::Proxied(Action::Accept));
        let mut p = from_guest(&plan(), ip4("169.254.169.254"));
        p.l4 = Some((L4::Tcp, port));
        assert_eq!(fate(&r, &p, &[], gw), Fate::Forwarded(Action::Reject));
    }
    // Other ports go out as without credentials (no allowlist: any public address).
    let mut p = from_guest(&plan(), ip4("198.51.100.10"));
    p.l4 = Some((L4::Tcp, 22));
    assert_eq!(fate(&r, &p, &[], gw), Fate::Forwarded(Action::Accept));
}
