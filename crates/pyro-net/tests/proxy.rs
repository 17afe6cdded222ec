//! The egress proxy against the namespace-built world of `common/mod.rs`: a client in the
//! test's "host" namespace sends HTTP through the proxy (listening on that namespace's
//! 127.0.0.1, connecting upstream from it) to a server in the "internet" namespace. The
//! original destination comes from a closure, as no nft redirect is involved. Needs root,
//! `ip` and `nft`; skips with a printed reason without them. No packet leaves the
//! namespaces the test creates.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use pyro_net::proxy::{Denial, DenyReason, Passthrough, Proxy, ProxyConfig};
use pyro_net::{Allowlist, netns};

/// Answers each request head with `200` and the head it got, then closes.
fn http_server(ns: &str, stop: Arc<AtomicBool>, hits: Arc<AtomicUsize>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    netns::spawn_in(ns, move || {
        let listener = TcpListener::bind((PUBLIC, 80)).unwrap();
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    hits.fetch_add(1, Ordering::Relaxed);
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let _ = conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
                    let _ = conn.write_all(&head);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    ready_rx.recv_timeout(TIMEOUT).expect("server started");
}

/// The proxy on its own thread and runtime; `stop` returns its denials.
struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: std::thread::JoinHandle<Vec<Denial>>,
}

fn start_proxy(ns: &str, allowlist: Allowlist, dst: SocketAddrV4) -> Running {
    let mut config = ProxyConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    config.listen_netns = Some(ns.to_owned());
    config.upstream_netns = Some(ns.to_owned());
    config.head_timeout = Duration::from_millis(300);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let proxy = Proxy::start(
                config,
                allowlist,
                Arc::new(move |_: &tokio::net::TcpStream| Ok(dst)),
                Arc::new(Passthrough),
            )
            .await
            .unwrap();
            addr_tx.send(proxy.local_addr()).unwrap();
            let _ = stopped.await;
            proxy.denials()
        })
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    Running { addr, stop, handle }
}

/// Sends `request` from `ns` to the proxy and returns everything it answered.
fn exchange(ns: &str, proxy: SocketAddr, request: &[u8]) -> Vec<u8> {
    netns::run_in(ns, || {
        let mut conn = TcpStream::connect_timeout(&proxy, TIMEOUT).unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        conn.write_all(request).unwrap();
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply);
        reply
    })
    .unwrap()
}

#[test]
fn http_is_proxied_by_host_header_and_denials_are_recorded() {
    let Some(tools) = tools() else { return };
    let world = World::new(&tools, "px");
    let (stop, hits) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    http_server(&world.internet.name, stop.clone(), hits.clone());
    let dst = SocketAddrV4::new(PUBLIC, 80);
    let allowlist = Allowlist::parse(["allowed.test"], [] as [&str; 0]).unwrap();
    let proxy = start_proxy(&world.host.name, allowlist, dst);
    let ns = &world.host.name;

    let allowed = b"GET /x HTTP/1.1\r\nHost: allowed.test\r\n\r\n";
    let reply = exchange(ns, proxy.addr, allowed);
    let mut want = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
    want.extend_from_slice(allowed);
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(hits.load(Ordering::Relaxed), 1);

    // Same address, another name: closed before anything reaches the server.
    let reply = exchange(
        ns,
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n",
    );
    assert!(reply.is_empty(), "{reply:?}");
    // Not HTTP, and silence past the timeout: both closed.
    assert!(exchange(ns, proxy.addr, b"\x16\x03\x01\x00\x05hello").is_empty());
    assert!(exchange(ns, proxy.addr, b"GET / HT").is_empty());
    assert_eq!(hits.load(Ordering::Relaxed), 1);

    drop(proxy.stop);
    let denials = proxy.handle.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(denials.len(), 3, "{denials:?}");
    assert_eq!(denials[0].host.as_deref(), Some("denied.test"));
    assert_eq!(denials[0].destination, Some(dst));
    assert_eq!(
        denials[0].reason,
        DenyReason::HostNotAllowed {
            host: "denied.test".to_owned()
        }
    );
    assert!(matches!(denials[1].reason, DenyReason::Http(_)));
    assert_eq!(denials[2].reason, DenyReason::Timeout);
}
