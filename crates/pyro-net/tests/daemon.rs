//! The per-sandbox network daemon ([`pyro_net::daemon`]) in the namespace-built world of
//! `common/mod.rs`: a sandbox with `--allow-host allowed.test`, its guest in a namespace of
//! its own, a fake upstream resolver and an HTTP server in the "internet" namespace. Needs
//! root, `ip` and `nft`; skips with a printed reason without them. No packet leaves the
//! namespaces the test creates.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use pyro_net::daemon::{self, DaemonSpec, DenialKind, NetStats, Ready};
use pyro_net::dns::wire;
use pyro_net::ruleset::PROXY_PORT;
use pyro_net::{Allowlist, NetworkPolicy, netns};

/// The fake upstream resolver's address, in the "internet".
const UPSTREAM: Ipv4Addr = PUBLIC_2;

/// A resolver on `UPSTREAM:53` in `ns` answering every A question with PUBLIC.
fn fake_upstream(ns: &str, stop: Arc<AtomicBool>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    netns::spawn_in(ns, move || {
        let socket = std::net::UdpSocket::bind((UPSTREAM, 53)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(query) = wire::parse_query(&buf[..n]) else {
                continue;
            };
            let reply = wire::write_a_response(query.header.id, &query.question, &[(PUBLIC, 120)]);
            let _ = socket.send_to(&reply, peer);
        }
    });
    ready_rx.recv_timeout(TIMEOUT).unwrap();
}

/// HTTP on `PUBLIC:80` in `ns`: answers each request head with `200`, the peer's address
/// on a line, and the head it got.
fn http_server(ns: &str, stop: Arc<AtomicBool>, hits: Arc<AtomicUsize>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    netns::spawn_in(ns, move || {
        let listener = TcpListener::bind((PUBLIC, 80)).unwrap();
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, peer)) => {
                    hits.fetch_add(1, Ordering::Relaxed);
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let _ = conn
                        .write_all(format!("HTTP/1.0 200 OK\r\n\r\n{}\n", peer.ip()).as_bytes());
                    let _ = conn.write_all(&head);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    ready_rx.recv_timeout(TIMEOUT).expect("server started");
}

/// Sends a request for `/` with `Host: host` to `addr:80` from inside `ns`; what came back
/// (empty when the connection was closed unanswered).
fn http_get(ns: &str, addr: Ipv4Addr, host: &str) -> std::io::Result<String> {
    netns::run_in(ns, || {
        let mut conn = TcpStream::connect_timeout(&SocketAddr::from((addr, 80)), TIMEOUT)?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        conn.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .unwrap()
}

/// The rcode and A records of `name` asked of `server` from inside `ns`.
fn lookup(ns: &str, server: SocketAddr, name: &str) -> (u8, Vec<Ipv4Addr>) {
    let question = wire::Question {
        name: wire::Name::from_dotted(name).unwrap(),
        qtype: wire::TYPE_A,
        qclass: wire::CLASS_IN,
    };
    let packet = wire::write_query(0x7070, &question);
    let reply = netns::run_in(ns, || {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        socket.send_to(&packet, server).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = socket
            .recv_from(&mut buf)
            .expect("an answer from the resolver");
        buf[..n].to_vec()
    })
    .unwrap();
    let response = wire::parse_response(&reply).unwrap();
    assert_eq!(response.header.id, 0x7070);
    let addrs = response
        .answers
        .iter()
        .filter_map(|r| match r.data {
            wire::RData::A(a) => Some(a),
            _ => None,
        })
        .collect();
    (response.header.rcode(), addrs)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn state_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("pyro-net-daemon-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_daemon_resolves_proxies_records_denials_and_ends_with_the_namespace() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "daemon");
    let stop_servers = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    fake_upstream(&world.internet.name, stop_servers.clone());
    http_server(&world.internet.name, stop_servers.clone(), hits.clone());
    let allowlist = Allowlist::parse(["allowed.test"], [] as [&str; 0]).unwrap();
    let mut sb = world.sandbox(16350, NetworkPolicy::Egress, &allowlist);
    let plan = sb.plan();
    let dir = state_dir("main");

    let spec = DaemonSpec {
        netns: sb.ns(),
        index: plan.index(),
        policy: NetworkPolicy::Egress,
        allowlist,
        upstreams: vec![SocketAddr::from((UPSTREAM, 53))],
        state_dir: dir.clone(),
        credentials: Vec::new(),
        ca_dir: None,
        extra_roots: None,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let never = Box::leak(Box::new(AtomicBool::new(false)));
    // The daemon runs in the test's "host" namespace, as `pyro __net` runs in the host's:
    // its upstream sockets are made there (never in the namespace this test runs in).
    let daemon = netns::spawn_in(&world.host.name, move || {
        daemon::run_until(spec, |ready: &Ready| ready_tx.send(*ready).unwrap(), never)
    });
    let ready = ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the daemon is ready");
    assert_eq!(ready.dns, SocketAddr::from((plan.gateway(), 53)));
    assert_eq!(
        ready.proxy,
        Some(SocketAddr::from((plan.gateway(), PROXY_PORT)))
    );
    let guest = sb.guest.name.clone();

    // An allowed name resolves, and its address opens through the proxy under that name.
    assert_eq!(lookup(&guest, ready.dns, "allowed.test"), (0, vec![PUBLIC]));
    let reply = http_get(&guest, PUBLIC, "allowed.test").expect("allowed through the proxy");
    assert!(reply.starts_with("HTTP/1.0 200 OK"), "{reply}");
    assert!(reply.contains("Host: allowed.test"), "{reply}");
    // The proxy's upstream connection leaves the namespace from the uplink's address, and
    // the host's forwarding masquerades it as the host's own.
    assert_eq!(
        reply.lines().nth(2),
        Some(HOST_WAN.to_string().as_str()),
        "{reply}"
    );
    assert_eq!(hits.load(Ordering::Relaxed), 1);

    // A denied name is NXDOMAIN; a denied Host to an allowed address never reaches it.
    assert_eq!(lookup(&guest, ready.dns, "denied.test"), (3, vec![]));
    let refused = http_get(&guest, PUBLIC, "denied.test");
    assert!(
        refused.as_ref().is_ok_and(String::is_empty) || refused.is_err(),
        "{refused:?}"
    );
    assert_eq!(hits.load(Ordering::Relaxed), 1, "the proxy did not connect");
    // Blocked ranges are not proxied: refused by the forward chain as before.
    assert_refused(tcp_connect(&guest, METADATA, 80), "metadata on port 80");

    wait_until("both denials in denials.jsonl", || {
        daemon::read_denials(&dir, 10).len() >= 2
    });
    let denials = daemon::read_denials(&dir, 10);
    assert_eq!(denials.len(), 2, "{denials:?}");
    let dns = denials.iter().find(|d| d.kind == DenialKind::Dns).unwrap();
    assert_eq!(dns.name.as_deref(), Some("denied.test"));
    let conn = denials
        .iter()
        .find(|d| d.kind == DenialKind::Connection)
        .unwrap();
    assert_eq!(conn.name.as_deref(), Some("denied.test"));
    assert_eq!(conn.destination.as_deref(), Some("198.51.100.10:80"));
    assert!(conn.reason.contains("not allowed"), "{}", conn.reason);
    let expected = NetStats {
        dns_denied: 1,
        connections_denied: 1,
        dns_answered: 1,
        ..NetStats::default()
    };
    wait_until("the counters", || {
        daemon::read_stats(&dir) == Some(expected)
    });

    // A direct connection to the proxy's port passes the ruleset, but the proxy finds its
    // destination (the gateway itself) blocked and closes it.
    let direct = netns::run_in(&guest, || {
        let mut conn = TcpStream::connect_timeout(&ready.proxy.unwrap(), TIMEOUT)?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        conn.write_all(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).map(|_| reply)
    })
    .unwrap();
    assert!(
        direct.as_ref().is_ok_and(String::is_empty) || direct.is_err(),
        "{direct:?}"
    );
    wait_until("the direct connection's denial", || {
        daemon::read_denials(&dir, 10).len() == 3
    });
    let last = daemon::read_denials(&dir, 1).pop().unwrap();
    assert_eq!(last.kind, DenialKind::Connection);
    assert!(last.reason.contains("blocked"), "{}", last.reason);
    assert_eq!(hits.load(Ordering::Relaxed), 1);

    // The sandbox goes away: the daemon ends by itself, cleanly.
    sb.net.teardown.run(&tools).unwrap();
    let started = Instant::now();
    while !daemon.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the daemon outlived its namespace"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
        .join()
        .unwrap()
        .expect("entered the host namespace")
        .expect("a clean exit");
    stop_servers.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without host patterns: no proxy, every name forwarded, the guest's HTTP goes straight
/// out; SIGTERM ends `run` cleanly.
#[test]
fn without_host_patterns_there_is_no_proxy_and_sigterm_ends_the_daemon() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "daemon-open");
    let stop_servers = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    fake_upstream(&world.internet.name, stop_servers.clone());
    http_server(&world.internet.name, stop_servers.clone(), hits.clone());
    let sb = world.sandbox(16352, NetworkPolicy::Egress, &Allowlist::default());
    let plan = sb.plan();
    let dir = state_dir("open");
    let spec = DaemonSpec {
        netns: sb.ns(),
        index: plan.index(),
        policy: NetworkPolicy::Egress,
        allowlist: Allowlist::default(),
        upstreams: vec![SocketAddr::from((UPSTREAM, 53))],
        state_dir: dir.clone(),
        credentials: Vec::new(),
        ca_dir: None,
        extra_roots: None,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // The daemon runs in the test's "host" namespace, as `pyro __net` runs in the host's:
    // its upstream sockets are made there (never in the namespace this test runs in).
    let daemon = netns::spawn_in(&world.host.name, move || {
        daemon::run(spec, |ready: &Ready| ready_tx.send(*ready).unwrap())
    });
    let ready = ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the daemon is ready");
    assert_eq!(ready.proxy, None);
    let guest = sb.guest.name.clone();
    assert_eq!(
        lookup(&guest, ready.dns, "anything.test"),
        (0, vec![PUBLIC])
    );
    let reply = http_get(&guest, PUBLIC, "anything.test").expect("straight out");
    assert!(reply.contains("Host: anything.test"), "{reply}");
    assert_refused(
        tcp_connect(&guest, plan.gateway(), PROXY_PORT),
        "the proxy's port without host patterns",
    );

    // SAFETY: `run` installed its handler before it reported ready; the handler only
    // stores to an atomic.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    let started = Instant::now();
    while !daemon.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM did not end the daemon"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
        .join()
        .unwrap()
        .expect("entered the host namespace")
        .expect("a clean exit");
    assert_eq!(daemon::read_stats(&dir), Some(NetStats::default()));
    assert!(daemon::read_denials(&dir, 10).is_empty());
    stop_servers.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_daemon_refuses_a_missing_namespace() {
    let Some(_tools) = tools() else { return };
    let spec = DaemonSpec {
        netns: "pyro-16351".to_owned(),
        index: 16351,
        policy: NetworkPolicy::Egress,
        allowlist: Allowlist::default(),
        upstreams: vec![SocketAddr::from((UPSTREAM, 53))],
        state_dir: state_dir("missing"),
        credentials: Vec::new(),
        ca_dir: None,
        extra_roots: None,
    };
    let err =
        daemon::run_until(spec, |_| panic!("not ready"), &AtomicBool::new(false)).unwrap_err();
    assert!(
        matches!(err, daemon::DaemonError::NoNamespace { .. }),
        "{err}"
    );
}
