//! Integration tests of pyro's guest networking against a small "internet" of network
//! namespaces (see `common/mod.rs`). They need root, `ip` and `nft`, and skip with a printed
//! reason without them. No packet leaves the namespaces they create.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pyro_net::dns::{self, Resolver, wire};
use pyro_net::plan::TAP_NAME;
use pyro_net::setup::{self, GuestLink, NetError, Options, Teardown};
use pyro_net::{Allowlist, NetworkPolicy, SandboxNet, cmd, netns};

fn sock(addr: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((addr, port))
}

fn open() -> Allowlist {
    Allowlist::default()
}

#[test]
fn egress_reaches_a_public_server_by_address_masqueraded() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "egress");
    let _web = Server::tcp(&world.internet.name, sock(Ipv4Addr::UNSPECIFIED, 80));
    let sb = world.sandbox(16301, NetworkPolicy::Egress, &open());
    let seen_as = tcp_connect(&sb.guest.name, PUBLIC, 80).expect("egress to a public address");
    assert_eq!(
        seen_as,
        HOST_WAN.to_string(),
        "the guest leaves masqueraded, by the sandbox namespace and then by the host"
    );
}

#[test]
fn blocked_destinations_are_refused() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "blocked");
    let a = world.sandbox(16302, NetworkPolicy::Egress, &open());
    let b = world.sandbox(16303, NetworkPolicy::EgressPublishedPorts, &open());
    let any = |port| sock(Ipv4Addr::UNSPECIFIED, port);
    let _internet = Server::tcp(&world.internet.name, any(80));
    let host_service = Server::tcp(&world.host.name, any(8080));
    let gateway_service = Server::tcp(&a.ns(), any(8080));
    let other_guest = Server::tcp(&b.guest.name, any(8080));

    // Controls: every server is up and reachable where pyro's rules do not apply.
    for target in [PRIVATE, METADATA, PUBLIC] {
        tcp_connect(&world.host.name, target, 80).expect("reachable from the host");
        tcp_connect(&a.ns(), target, 80).expect("reachable from the sandbox namespace");
    }
    tcp_connect(&a.guest.name, PUBLIC, 80).expect("public egress");

    let pa = a.plan();
    for (target, port, what) in [
        (PRIVATE, 80, "a private address"),
        (METADATA, 80, "the metadata address"),
        (
            pa.gateway(),
            8080,
            "a service on 0.0.0.0 in the sandbox namespace, via the gateway",
        ),
        (
            pa.uplink_ns(),
            8080,
            "the sandbox namespace's uplink address",
        ),
        (pa.uplink_host(), 8080, "the host, on its uplink address"),
        (
            HOST_WAN,
            8080,
            "the host, on its public address (service on 0.0.0.0)",
        ),
        (b.plan().guest(), 8080, "another sandbox's guest"),
        (b.plan().uplink_ns(), 8080, "another sandbox's namespace"),
        (
            Ipv4Addr::new(127, 0, 0, 1),
            1,
            "loopback (the guest's own: nothing listens there)",
        ),
    ] {
        let result = tcp_connect(&a.guest.name, target, port);
        if target.is_loopback() {
            assert!(result.is_err(), "{what}");
            continue;
        }
        assert_refused(result, what);
    }
    assert_eq!(host_service.hits(), 0);
    assert_eq!(gateway_service.hits(), 0);
    assert_eq!(other_guest.hits(), 0);
    // And the host guard works on the host's side too: from the second sandbox.
    assert_refused(
        tcp_connect(&b.guest.name, HOST_WAN, 8080),
        "host from sandbox b",
    );
}

#[test]
fn dns_goes_only_to_the_gateway() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "dns");
    let sb = world.sandbox(16304, NetworkPolicy::Egress, &open());
    let outside_dns = Server::udp(&world.internet.name, sock(PUBLIC, 53));
    let _tcp_dns = Server::tcp(&world.internet.name, sock(PUBLIC, 53));
    let _dot = Server::tcp(&world.internet.name, sock(PUBLIC, 853));
    let resolver = Server::udp(&sb.ns(), sock(sb.plan().gateway(), 53));

    assert!(
        udp_exchange(&world.host.name, None, sock(PUBLIC, 53)),
        "control: server answers"
    );
    let before = outside_dns.hits();
    assert!(
        !udp_exchange(&sb.guest.name, None, sock(PUBLIC, 53)),
        "UDP 53 elsewhere"
    );
    assert_eq!(outside_dns.hits(), before);
    assert_refused(tcp_connect(&sb.guest.name, PUBLIC, 53), "TCP 53 elsewhere");
    assert_refused(
        tcp_connect(&sb.guest.name, PUBLIC, 853),
        "DNS over TLS elsewhere",
    );

    assert!(
        udp_exchange(&sb.guest.name, None, sock(sb.plan().gateway(), 53)),
        "the resolver"
    );
    assert_eq!(resolver.hits(), 1);
}

#[test]
fn spoofed_sources_are_dropped() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "spoof");
    let sb = world.sandbox(16305, NetworkPolicy::Egress, &open());
    let echo = Server::udp(&world.internet.name, sock(PUBLIC, 7));
    // Control: the real address gets through (a few tries: the first datagram waits for
    // three ARP resolutions, which a loaded machine can stretch past one try's timeout).
    assert!(
        (0..5).any(|_| udp_exchange(&sb.guest.name, None, sock(PUBLIC, 7))),
        "control: the real address"
    );
    std::thread::sleep(Duration::from_millis(300));
    let control_hits = echo.hits();
    assert!(control_hits >= 1);

    let other_guest = SandboxNet::new(16300).unwrap().guest();
    for spoofed in [Ipv4Addr::new(198, 51, 100, 99), other_guest] {
        sb.guest
            .ip(&["addr", "add", &format!("{spoofed}/32"), "dev", "eth0"]);
        assert!(
            !udp_exchange(&sb.guest.name, Some(spoofed), sock(PUBLIC, 7)),
            "{spoofed}"
        );
    }
    assert_eq!(echo.hits(), control_hits, "no spoofed datagram arrived");
}

#[test]
fn broadcast_and_multicast_reach_nothing() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "bcast");
    let sb = world.sandbox(16306, NetworkPolicy::Egress, &open());
    let in_sandbox_ns = Server::udp(&sb.ns(), sock(Ipv4Addr::UNSPECIFIED, 9999));
    let on_host = Server::udp(&world.host.name, sock(Ipv4Addr::UNSPECIFIED, 9999));
    assert!(
        udp_exchange(&sb.ns(), None, sock(Ipv4Addr::LOCALHOST, 9999)),
        "control"
    );
    let before = in_sandbox_ns.hits();
    sb.guest.ip(&["route", "add", "224.0.0.0/4", "dev", "eth0"]);
    for target in [
        Ipv4Addr::BROADCAST,
        sb.plan().guest_subnet().last(),
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(239, 255, 255, 250),
    ] {
        assert!(
            !udp_exchange(&sb.guest.name, None, sock(target, 9999)),
            "{target}"
        );
    }
    assert_eq!(in_sandbox_ns.hits(), before);
    assert_eq!(on_host.hits(), 0);
}

#[test]
fn allowlist_admits_allowed_cidrs_and_resolved_addresses_only() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "allow");
    let _web = Server::tcp(&world.internet.name, sock(Ipv4Addr::UNSPECIFIED, 8080));
    let list = Allowlist::parse(["*.example.org"], [PUBLIC_2.to_string()]).unwrap();
    let sb = world.sandbox(16307, NetworkPolicy::Egress, &list);

    tcp_connect(&sb.guest.name, PUBLIC_2, 8080).expect("--allow-cidr");
    assert_refused(
        tcp_connect(&sb.guest.name, PUBLIC, 8080),
        "not (yet) resolved",
    );
    sb.net.allow(&[(PUBLIC, Duration::from_secs(60))]).unwrap();
    tcp_connect(&sb.guest.name, PUBLIC, 8080).expect("resolved for an allowed name");
    // A resolver answer never opens a blocked range.
    sb.net
        .allow(&[(METADATA, Duration::from_secs(60))])
        .unwrap();
    assert_refused(
        tcp_connect(&sb.guest.name, METADATA, 8080),
        "metadata, even when resolved",
    );
}

#[test]
fn off_creates_nothing_and_the_guest_has_no_route() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "off");
    let _web = Server::tcp(&world.internet.name, sock(Ipv4Addr::UNSPECIFIED, 80));
    let sb = world.sandbox(16308, NetworkPolicy::Off, &open());
    assert!(sb.net.teardown.is_done());
    assert!(!netns::exists(&sb.ns()));
    let err = tcp_connect(&sb.guest.name, PUBLIC, 80).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
}

fn leftovers(world: &World, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let netns_list = ip(&world.tools, &["netns", "list"]);
    if netns_list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
    {
        found.push(format!("namespace {name}"));
    }
    if world
        .host
        .ip(&["-o", "link"])
        .contains(&format!(" {name}@"))
    {
        found.push(format!("link {name}"));
    }
    let tables = cmd::run(
        &world.tools.ip,
        &[
            "netns",
            "exec",
            &world.host.name,
            &world.tools.nft.to_string_lossy(),
            "list",
            "tables",
        ],
        None,
    )
    .unwrap();
    if tables
        .lines()
        .any(|l| l.trim() == format!("table inet {name}"))
    {
        found.push(format!("table inet {name}"));
    }
    found
}

#[test]
fn teardown_leaves_nothing_and_is_idempotent() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "teardown");
    let mut sb = world.sandbox(16309, NetworkPolicy::Egress, &open());
    let name = sb.ns();
    assert_eq!(
        leftovers(&world, &name).len(),
        3,
        "all three exist while it runs"
    );
    sb.net.teardown.run(&tools).unwrap();
    assert!(sb.net.teardown.is_done());
    assert_eq!(leftovers(&world, &name), Vec::<String>::new());
    sb.net.teardown.run(&tools).unwrap();

    // After a crash: rebuild by name from the plan alone; also on nothing at all.
    let host = Some(world.host.name.clone());
    let plan = sb.plan();
    let mut after_crash = Teardown::all(plan, host.clone());
    after_crash.run(&tools).unwrap();
    assert!(after_crash.is_done());

    // Half-made state: only the namespace and the host table.
    ip(&tools, &["netns", "add", &name]);
    let guard = pyro_net::ruleset::host_guard(&plan).to_json().to_string();
    cmd::run(
        &tools.ip,
        &[
            "netns",
            "exec",
            &world.host.name,
            &tools.nft.to_string_lossy(),
            "-j",
            "-f",
            "-",
        ],
        Some(guard.as_bytes()),
    )
    .unwrap();
    assert_eq!(leftovers(&world, &name).len(), 2);
    // create refuses to adopt the existing namespace, and removes nothing of it.
    let options = Options {
        host_netns: host.clone(),
        guest: GuestLink::Tap,
        credentials: false,
    };
    let err = setup::create(&tools, plan, NetworkPolicy::Egress, &open(), &options).unwrap_err();
    assert!(matches!(err, NetError::Exists { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("network namespace `{name}` already exists; refusing to reuse it")
    );
    assert_eq!(leftovers(&world, &name).len(), 2);
    Teardown::all(plan, host).run(&tools).unwrap();
    assert_eq!(leftovers(&world, &name), Vec::<String>::new());
}

#[test]
fn a_tap_is_created_in_the_namespace_and_removed() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "tap");
    let plan = SandboxNet::new(16310).unwrap();
    let host = Some(world.host.name.clone());
    let _ = Teardown::all(plan, host.clone()).run(&tools);
    let options = Options {
        host_netns: host,
        guest: GuestLink::Tap,
        credentials: false,
    };
    let mut net = setup::create(&tools, plan, NetworkPolicy::Egress, &open(), &options).unwrap();
    let details = ip(
        &tools,
        &["-n", &plan.name(), "-d", "addr", "show", "dev", TAP_NAME],
    );
    assert!(details.contains("tun type tap"), "{details}");
    assert!(
        details.contains(&format!("inet {}/30", plan.gateway())),
        "{details}"
    );
    assert!(
        !ip(&tools, &["-o", "link"]).contains(TAP_NAME),
        "not in pyro's own namespace"
    );
    net.teardown.run(&tools).unwrap();
    assert_eq!(leftovers(&world, &plan.name()), Vec::<String>::new());
}

#[test]
fn the_capability_check_passes_here() {
    let Some(tools) = tools() else { return };
    assert!(tools.ip.is_absolute() && tools.nft.is_absolute());
}

/// The fake upstream resolver's address, in the "internet".
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);

/// The fake upstream's answer to `packet`: `allowed.test` is PUBLIC, `denied.test` is
/// PUBLIC_2 (it must never be asked), anything else goes unanswered.
fn fake_answer(packet: &[u8]) -> Option<Vec<u8>> {
    let query = wire::parse_query(packet).ok()?;
    let answer = match query.question.name.to_dotted().as_str() {
        "allowed.test" => PUBLIC,
        "denied.test" => PUBLIC_2,
        _ => return None,
    };
    Some(wire::write_a_response(
        query.header.id,
        &query.question,
        &[(answer, 120)],
    ))
}

/// A fake upstream resolver on UDP `addr` inside `ns` ([`fake_answer`]).
fn fake_upstream(ns: &str, addr: SocketAddr) -> (Arc<AtomicBool>, Arc<AtomicUsize>) {
    let (stop, hits) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (s, h) = (stop.clone(), hits.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    netns::spawn_in(ns, move || {
        let socket = std::net::UdpSocket::bind(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while !s.load(Ordering::Relaxed) {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            h.fetch_add(1, Ordering::Relaxed);
            if let Some(reply) = fake_answer(&buf[..n]) {
                let _ = socket.send_to(&reply, peer);
            }
        }
    });
    ready_rx.recv_timeout(TIMEOUT).unwrap();
    (stop, hits)
}

/// The same over TCP on `addr`: one message each way per connection.
fn fake_tcp_upstream(ns: &str, addr: SocketAddr) -> (Arc<AtomicBool>, Arc<AtomicUsize>) {
    let (stop, hits) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (s, h) = (stop.clone(), hits.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    netns::spawn_in(ns, move || {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        while !s.load(Ordering::Relaxed) {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            h.fetch_add(1, Ordering::Relaxed);
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(TIMEOUT)).unwrap();
            let Ok(query) = read_framed(&mut conn) else {
                continue;
            };
            if let Some(reply) = fake_answer(&query) {
                let _ = write_framed(&mut conn, &reply);
            }
        }
    });
    ready_rx.recv_timeout(TIMEOUT).unwrap();
    (stop, hits)
}

fn read_framed(conn: &mut std::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut len = [0u8; 2];
    conn.read_exact(&mut len)?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut message)?;
    Ok(message)
}

fn write_framed(conn: &mut std::net::TcpStream, message: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut framed = u16::try_from(message.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    conn.write_all(&framed)
}

/// Asks `server` for `name`'s A record from inside `ns`; the parsed response.
fn lookup(ns: &str, server: SocketAddr, name: &str) -> wire::Response {
    let question = wire::Question {
        name: wire::Name::from_dotted(name).unwrap(),
        qtype: wire::TYPE_A,
        qclass: wire::CLASS_IN,
    };
    let reply = exchange(ns, server, &wire::write_query(0x5150, &question));
    let response = wire::parse_response(&reply).unwrap();
    assert_eq!(response.header.id, 0x5150);
    response
}

fn exchange(ns: &str, server: SocketAddr, packet: &[u8]) -> Vec<u8> {
    netns::run_in(ns, || {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        socket.send_to(packet, server).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = socket
            .recv_from(&mut buf)
            .expect("an answer from the resolver");
        buf[..n].to_vec()
    })
    .unwrap()
}

#[test]
fn the_resolver_answers_allowed_names_only_and_opens_their_addresses() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "resolver");
    world
        .internet
        .ip(&["addr", "add", &format!("{UPSTREAM}/32"), "dev", "lo"]);
    let _web = Server::tcp(&world.internet.name, sock(Ipv4Addr::UNSPECIFIED, 8080));
    let (stop_upstream, upstream_hits) = fake_upstream(&world.internet.name, sock(UPSTREAM, 53));
    let list = Allowlist::parse(["allowed.test", "*.slow.test"], [] as [&str; 0]).unwrap();
    let sb = world.sandbox(16311, NetworkPolicy::Egress, &list);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let allow = sb.net.on_answer();
    let record = seen.clone();
    let on_answer: dns::OnAnswer = Arc::new(move |addrs: &[(Ipv4Addr, Duration)]| {
        record.lock().unwrap().extend_from_slice(addrs);
        allow(addrs)
    });
    let policy = Arc::new(Resolver::new(list));
    let gateway = sock(sb.plan().gateway(), 53);
    let config = dns::ServerConfig {
        listen: gateway,
        upstreams: vec![sock(UPSTREAM, 53)],
        timeout: Duration::from_millis(500),
    };
    // Spawned from the "host": the upstream sockets are made there.
    let resolver = netns::run_in(&world.host.name, || {
        dns::server::spawn(Some(&sb.ns()), config, policy.clone(), on_answer)
    })
    .unwrap()
    .unwrap();
    assert_eq!(resolver.local_addr, gateway);

    assert_refused(
        tcp_connect(&sb.guest.name, PUBLIC, 8080),
        "before resolving",
    );
    let allowed = lookup(&sb.guest.name, gateway, "Allowed.Test");
    assert_eq!(allowed.header.rcode(), 0);
    assert_eq!(
        allowed.answers.first().map(|r| r.data.clone()),
        Some(wire::RData::A(PUBLIC))
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(PUBLIC, Duration::from_secs(120))]
    );
    tcp_connect(&sb.guest.name, PUBLIC, 8080).expect("the resolved address is open");

    let hits = upstream_hits.load(Ordering::Relaxed);
    let denied = lookup(&sb.guest.name, gateway, "denied.test");
    assert_eq!(denied.header.rcode(), 3, "NXDOMAIN");
    assert!(denied.answers.is_empty());
    assert_eq!(
        upstream_hits.load(Ordering::Relaxed),
        hits,
        "never asked upstream"
    );
    let denials: Vec<String> = policy.denials().into_iter().map(|d| d.name).collect();
    assert_eq!(denials, ["denied.test"]);
    assert_refused(
        tcp_connect(&sb.guest.name, PUBLIC_2, 8080),
        "denied name's address",
    );

    // The upstream never answers this one: SERVFAIL after the timeout.
    assert_eq!(
        lookup(&sb.guest.name, gateway, "x.slow.test")
            .header
            .rcode(),
        2
    );
    // A header without a question: FORMERR.
    let formerr = exchange(
        &sb.guest.name,
        gateway,
        &[0, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(wire::Header::parse(&formerr).unwrap().rcode(), 1);
    assert_eq!(seen.lock().unwrap().len(), 1);

    resolver.stop();
    stop_upstream.store(true, Ordering::Relaxed);
}

fn add_host_guard(world: &World, plan: &SandboxNet) {
    let guard = pyro_net::ruleset::host_guard(plan).to_json().to_string();
    let nft = world.tools.nft.to_string_lossy().into_owned();
    cmd::run(
        &world.tools.ip,
        &["netns", "exec", &world.host.name, &nft, "-j", "-f", "-"],
        Some(guard.as_bytes()),
    )
    .unwrap();
}

fn clean(world: &World, indices: std::ops::Range<u32>) {
    for i in indices {
        let plan = SandboxNet::new(i).unwrap();
        Teardown::all(plan, Some(world.host.name.clone()))
            .run(&world.tools)
            .unwrap();
    }
}

#[test]
fn the_host_forwards_and_masquerades_only_while_sandboxes_exist() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "fwd");
    let _web = Server::tcp(&world.internet.name, sock(Ipv4Addr::UNSPECIFIED, 80));
    assert_eq!(
        world.host_forwarding(),
        ("0".to_owned(), false),
        "a fresh host"
    );
    let mut a = world.sandbox(16320, NetworkPolicy::Egress, &open());
    let mut b = world.sandbox(16321, NetworkPolicy::Egress, &open());
    assert_eq!(world.host_forwarding(), ("1".to_owned(), true));
    assert_eq!(
        tcp_connect(&a.guest.name, PUBLIC, 80).expect("egress through the host"),
        HOST_WAN.to_string()
    );
    a.net.teardown.run(&tools).unwrap();
    assert_eq!(
        world.host_forwarding(),
        ("1".to_owned(), true),
        "b still needs it"
    );
    tcp_connect(&b.guest.name, PUBLIC, 80).expect("b still reaches out");
    b.net.teardown.run(&tools).unwrap();
    assert_eq!(
        world.host_forwarding(),
        ("0".to_owned(), false),
        "the last teardown restores the host"
    );
}

#[test]
fn forwarding_that_was_on_stays_on() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "fwdon");
    world.host.sysctl("net/ipv4/ip_forward", "1");
    let _web = Server::tcp(&world.internet.name, sock(Ipv4Addr::UNSPECIFIED, 80));
    let mut sb = world.sandbox(16322, NetworkPolicy::Egress, &open());
    tcp_connect(&sb.guest.name, PUBLIC, 80).expect("egress");
    sb.net.teardown.run(&tools).unwrap();
    assert_eq!(
        world.host_forwarding(),
        ("1".to_owned(), false),
        "pyro did not turn it on, so it does not turn it off"
    );
}

#[test]
fn concurrent_claims_get_different_indices_and_skip_taken_ones() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "claim");
    clean(&world, 16330..16336);
    let host = world.host.name.as_str();
    let (a, b) = std::thread::scope(|s| {
        let one = s.spawn(|| setup::claim(&tools, Some(host), 16330));
        let two = s.spawn(|| setup::claim(&tools, Some(host), 16330));
        (one.join().unwrap().unwrap(), two.join().unwrap().unwrap())
    });
    let mut got = [a.index(), b.index()];
    got.sort_unstable();
    assert_eq!(got, [16330, 16331]);
    assert!(netns::exists(&a.name()) && netns::exists(&b.name()));

    // Someone else's namespace, and a host link of a sandbox's name, are skipped.
    ip(&tools, &["netns", "add", "pyro-16332"]);
    world.host.ip(&[
        "link",
        "add",
        "pyro-16333",
        "type",
        "veth",
        "peer",
        "name",
        "other-16333",
    ]);
    let c = setup::claim(&tools, Some(host), 16330).unwrap();
    assert_eq!(c.index(), 16334);
    clean(&world, 16330..16336);
}

#[test]
fn a_claimed_namespace_is_built_on_and_removed_on_failure() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "claimed");
    clean(&world, 16337..16340);
    let _web = Server::tcp(&world.internet.name, sock(Ipv4Addr::UNSPECIFIED, 80));
    let mut sb = world.claimed_sandbox(16337, NetworkPolicy::Egress);
    assert_eq!(sb.plan().index(), 16337);
    assert_eq!(
        tcp_connect(&sb.guest.name, PUBLIC, 80).expect("egress"),
        HOST_WAN.to_string()
    );
    sb.net.teardown.run(&tools).unwrap();
    assert_eq!(leftovers(&world, &sb.ns()), Vec::<String>::new());

    // A host table of its name appears after the claim: refused, and the claimed namespace
    // goes again (the table, not pyro's to remove, stays).
    let host = Some(world.host.name.clone());
    let plan = setup::claim(&tools, host.as_deref(), 16338).unwrap();
    assert_eq!(plan.index(), 16338);
    add_host_guard(&world, &plan);
    let options = Options {
        host_netns: host.clone(),
        guest: GuestLink::Tap,
        credentials: false,
    };
    let err = setup::create_in_claimed(&tools, plan, NetworkPolicy::Egress, &open(), &options)
        .unwrap_err();
    assert!(matches!(err, NetError::Exists { .. }), "{err}");
    assert!(!netns::exists(&plan.name()));
    assert_eq!(
        leftovers(&world, &plan.name()),
        vec![format!("table inet {}", plan.name())]
    );
    Teardown::all(plan, host).run(&tools).unwrap();

    // Nothing claimed: refused, nothing made.
    let err = setup::create_in_claimed(&tools, plan, NetworkPolicy::Egress, &open(), &options)
        .unwrap_err();
    assert!(matches!(err, NetError::NotClaimed { .. }), "{err}");
    assert_eq!(leftovers(&world, &plan.name()), Vec::<String>::new());
}

fn question(name: &str) -> wire::Question {
    wire::Question {
        name: wire::Name::from_dotted(name).unwrap(),
        qtype: wire::TYPE_A,
        qclass: wire::CLASS_IN,
    }
}

/// Asks `server` over one TCP connection from inside `ns` for each of `names` (all sent
/// before the first answer is read); the parsed responses.
fn lookup_tcp(ns: &str, server: SocketAddr, names: &[&str]) -> Vec<wire::Response> {
    netns::run_in(ns, || {
        let mut conn = std::net::TcpStream::connect_timeout(&server, TIMEOUT).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        for (id, name) in (1u16..).zip(names) {
            write_framed(&mut conn, &wire::write_query(id, &question(name))).unwrap();
        }
        (1u16..)
            .zip(names)
            .map(|(id, _)| {
                let response = wire::parse_response(&read_framed(&mut conn).unwrap()).unwrap();
                assert_eq!(response.header.id, id);
                response
            })
            .collect()
    })
    .unwrap()
}

#[test]
fn the_resolver_answers_over_tcp_via_a_loopback_upstream_on_the_host() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "dnstcp");
    let _web = Server::tcp(&world.internet.name, sock(Ipv4Addr::UNSPECIFIED, 8080));
    // Like systemd-resolved's stub: reachable only from the host's own namespace.
    let stub = sock(Ipv4Addr::new(127, 0, 0, 53), 53);
    let (stop_udp, _) = fake_upstream(&world.host.name, stub);
    let (stop_tcp, tcp_hits) = fake_tcp_upstream(&world.host.name, stub);
    let list = Allowlist::parse(["allowed.test"], [] as [&str; 0]).unwrap();
    let sb = world.sandbox(16324, NetworkPolicy::Egress, &list);
    let gateway = sock(sb.plan().gateway(), 53);
    let config = dns::ServerConfig {
        listen: gateway,
        upstreams: vec![stub],
        timeout: Duration::from_millis(500),
    };
    let policy = Arc::new(Resolver::new(list));
    let resolver = netns::run_in(&world.host.name, || {
        dns::server::spawn(Some(&sb.ns()), config, policy.clone(), sb.net.on_answer())
    })
    .unwrap()
    .unwrap();

    // A silent client holds a connection; it blocks nobody.
    let silent = netns::run_in(&sb.guest.name, || {
        std::net::TcpStream::connect_timeout(&gateway, TIMEOUT)
    })
    .unwrap()
    .unwrap();
    let silent_since = std::time::Instant::now();

    assert_refused(
        tcp_connect(&sb.guest.name, PUBLIC, 8080),
        "before resolving",
    );
    let answers = lookup_tcp(&sb.guest.name, gateway, &["allowed.test", "denied.test"]);
    assert_eq!(answers[0].header.rcode(), 0);
    assert_eq!(
        answers[0].answers.first().map(|r| r.data.clone()),
        Some(wire::RData::A(PUBLIC))
    );
    assert_eq!(answers[1].header.rcode(), 3, "NXDOMAIN");
    assert_eq!(
        tcp_hits.load(Ordering::Relaxed),
        1,
        "forwarded over TCP, the denied name never"
    );
    assert!(silent_since.elapsed() < dns::server::TCP_IDLE_TIMEOUT);
    tcp_connect(&sb.guest.name, PUBLIC, 8080).expect("the resolved address is open");
    // And over UDP through the same loopback upstream.
    assert_eq!(
        lookup(&sb.guest.name, gateway, "allowed.test")
            .header
            .rcode(),
        0
    );

    // Beyond MAX_TCP_CLIENTS connections at once, the next is closed at once.
    let held: Vec<_> = (1..dns::server::MAX_TCP_CLIENTS)
        .map(|_| {
            netns::run_in(&sb.guest.name, || {
                std::net::TcpStream::connect_timeout(&gateway, TIMEOUT).unwrap()
            })
            .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut extra = netns::run_in(&sb.guest.name, || {
        std::net::TcpStream::connect_timeout(&gateway, TIMEOUT).unwrap()
    })
    .unwrap();
    extra
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(std::io::Read::read(&mut extra, &mut byte), Ok(0) | Err(_)),
        "closed"
    );
    let closed_early = std::time::Instant::now();
    assert!(closed_early.duration_since(silent_since) < dns::server::TCP_IDLE_TIMEOUT);

    // The silent client is dropped after the idle timeout.
    let mut silent = silent;
    silent
        .set_read_timeout(Some(dns::server::TCP_IDLE_TIMEOUT * 2))
        .unwrap();
    let read = std::io::Read::read(&mut silent, &mut byte);
    assert!(matches!(read, Ok(0)), "{read:?}");
    let waited = silent_since.elapsed();
    assert!(
        waited >= dns::server::TCP_IDLE_TIMEOUT - Duration::from_millis(100)
            && waited < dns::server::TCP_IDLE_TIMEOUT * 2,
        "{waited:?}"
    );
    drop(held);
    resolver.stop();
    stop_udp.store(true, Ordering::Relaxed);
    stop_tcp.store(true, Ordering::Relaxed);
}

#[test]
fn a_teardown_waits_for_a_creation_holding_the_host_lock() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "hostlock");
    let host = world.host.name.clone();
    let forwarding = pyro_net::host::ensure(&tools, Some(&host)).unwrap();
    assert!(forwarding.enabled_forwarding);
    let release = {
        let (tools, host) = (tools.clone(), host.clone());
        std::thread::spawn(move || pyro_net::host::release_if_unused(&tools, Some(&host)))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!release.is_finished(), "blocked on the lock");
    // The creation's uplink appears before it lets go.
    world.host.ip(&[
        "link",
        "add",
        "pyro-16325",
        "type",
        "veth",
        "peer",
        "name",
        "other-16325",
    ]);
    drop(forwarding);
    assert!(!release.join().unwrap().unwrap(), "an uplink remains");
    assert_eq!(world.host_forwarding(), ("1".to_owned(), true));
    world.host.ip(&["link", "del", "pyro-16325"]);
    assert!(pyro_net::host::release_if_unused(&tools, Some(&host)).unwrap());
    assert_eq!(world.host_forwarding(), ("0".to_owned(), false));
}
