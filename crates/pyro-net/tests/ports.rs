//! Published ports: the relay from the host's 127.0.0.1 to a guest port, against the
//! namespace-built world of `common/mod.rs` (a "host" namespace, a sandbox from
//! `setup::create`, and a namespace standing in for its guest). They need root, `ip` and
//! `nft`, and skip with a printed reason without them. The relay listens in the test's host
//! namespace, not the real one: no packet leaves the namespaces the tests create.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use pyro_net::ports::{PortRelay, RelayError, RelaySpec};
use pyro_net::{Allowlist, NetworkPolicy, netns};

const ECHO: u16 = 7000;
/// Sends a banner, shuts its write side, then records everything it receives until EOF.
const BANNER: u16 = 7001;
/// Reads to EOF, then answers with the number of bytes read.
const COUNT: u16 = 7002;
/// `common::Server::tcp`: answers with the peer's address.
const WHOAMI: u16 = 7003;
const BANNER_TEXT: &[u8] = b"hello from the guest\n";

/// A thread-per-connection server inside a namespace, in the style of `common::Server`.
struct GuestServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<(), netns::NetnsError>>>,
}

impl GuestServer {
    fn start(
        ns: &str,
        port: u16,
        serve: fn(TcpStream, &Mutex<Vec<u8>>),
        seen: Arc<Mutex<Vec<u8>>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = netns::spawn_in(ns, move || {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let seen = seen.clone();
                        std::thread::spawn(move || serve(conn, &seen));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx
            .recv_timeout(TIMEOUT)
            .expect("guest server started");
        GuestServer {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for GuestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn echo(mut conn: TcpStream, _: &Mutex<Vec<u8>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

fn banner(mut conn: TcpStream, seen: &Mutex<Vec<u8>>) {
    conn.write_all(BANNER_TEXT).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    seen.lock().unwrap().extend_from_slice(&got);
}

fn count(mut conn: TcpStream, _: &Mutex<Vec<u8>>) {
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    let _ = conn.write_all(got.len().to_string().as_bytes());
}

/// A relay on its own thread and runtime; stopped (listener and connections) on drop.
struct Relay {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(spec: RelaySpec) -> Result<Relay, RelayError> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                match PortRelay::start(spec).await {
                    Ok(relay) => {
                        addr_tx.send(Ok(relay.local_addr())).unwrap();
                        let _ = stopped.await;
                    }
                    Err(err) => addr_tx.send(Err(err)).unwrap(),
                }
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(5)).unwrap()?;
        Ok(Relay {
            addr,
            stop: Some(stop),
            handle: Some(handle),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// A world with one sandbox whose guest runs the servers above, and a spec for it.
struct Fixture {
    world: World,
    sandbox: Sandbox,
    _servers: Vec<GuestServer>,
    _whoami: Server,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Drop for Fixture {
    /// The sandbox goes before the world (its host namespace), as on a real host: its
    /// teardown then finds the host and restores its forwarding.
    fn drop(&mut self) {
        let _ = self.sandbox.net.teardown.run(&self.world.tools);
    }
}

impl Fixture {
    fn new(tools: &pyro_net::setup::Tools, tag: &str, index: u32) -> Fixture {
        let world = World::new(tools, tag);
        let sandbox = world.sandbox(
            index,
            NetworkPolicy::EgressPublishedPorts,
            &Allowlist::default(),
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let g = &sandbox.guest.name;
        let servers = vec![
            GuestServer::start(g, ECHO, echo, seen.clone()),
            GuestServer::start(g, BANNER, banner, seen.clone()),
            GuestServer::start(g, COUNT, count, seen.clone()),
        ];
        let whoami = Server::tcp(g, SocketAddr::from((Ipv4Addr::UNSPECIFIED, WHOAMI)));
        Fixture {
            world,
            sandbox,
            _servers: servers,
            _whoami: whoami,
            seen,
        }
    }

    fn spec(&self, host_port: u16, guest_port: u16) -> RelaySpec {
        RelaySpec {
            host_netns: Some(self.world.host.name.clone()),
            ..RelaySpec::new(
                &self.sandbox.ns(),
                host_port,
                self.sandbox.plan().guest(),
                guest_port,
            )
        }
    }

    /// A connection made from the host namespace (the socket stays there).
    fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let conn = self
            .world
            .host
            .run(|| TcpStream::connect_timeout(&addr, TIMEOUT))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(conn)
    }
}

#[test]
fn data_round_trips_and_the_guest_sees_the_gateway() {
    let Some(tools) = tools() else { return };
    let fx = Fixture::new(&tools, "pt-rt", 16370);
    let relay = Relay::start(fx.spec(0, ECHO)).unwrap();
    let mut conn = fx.connect(relay.addr).unwrap();
    for msg in [&b"ping"[..], b"a second message", &[0u8; 3000]] {
        conn.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }

    // The connection to the guest is made inside the sandbox's namespace.
    let whoami = Relay::start(fx.spec(0, WHOAMI)).unwrap();
    let mut conn = fx.connect(whoami.addr).unwrap();
    let mut peer = String::new();
    conn.read_to_string(&mut peer).unwrap();
    assert_eq!(peer, fx.sandbox.plan().gateway().to_string());
}

#[test]
fn an_os_chosen_port_is_reported_and_a_fixed_one_kept() {
    let Some(tools) = tools() else { return };
    let fx = Fixture::new(&tools, "pt-port", 16371);
    let chosen = Relay::start(fx.spec(0, ECHO)).unwrap();
    assert_eq!(chosen.addr.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(chosen.addr.port(), 0);
    fx.connect(chosen.addr).expect("the reported port answers");

    let fixed = Relay::start(fx.spec(18080, ECHO)).unwrap();
    assert_eq!(fixed.addr, SocketAddr::from((Ipv4Addr::LOCALHOST, 18080)));
    fx.connect(fixed.addr).expect("the fixed port answers");
    // The port is taken now: a second relay on it fails with a typed error.
    match Relay::start(fx.spec(18080, ECHO)) {
        Err(RelayError::Bind { source, .. }) => assert_eq!(source.kind(), ErrorKind::AddrInUse),
        other => panic!("expected a bind error, got {:?}", other.map(|r| r.addr)),
    }
}

#[test]
fn the_relay_listens_only_on_127_0_0_1() {
    let Some(tools) = tools() else { return };
    let fx = Fixture::new(&tools, "pt-lo", 16372);
    let relay = Relay::start(fx.spec(0, ECHO)).unwrap();
    let port = relay.addr.port();
    fx.connect(relay.addr).expect("127.0.0.1 answers");
    for other in [HOST_WAN, Ipv4Addr::new(127, 0, 0, 2)] {
        let err = fx
            .connect(SocketAddr::from((other, port)))
            .expect_err("only 127.0.0.1 is bound");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{other}");
    }
}

#[test]
fn half_close_passes_both_ways() {
    let Some(tools) = tools() else { return };
    let fx = Fixture::new(&tools, "pt-half", 16373);

    // The client's FIN reaches the guest, and the guest's answer still comes back.
    let relay = Relay::start(fx.spec(0, COUNT)).unwrap();
    let mut conn = fx.connect(relay.addr).unwrap();
    conn.write_all(&[7u8; 1000]).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "1000");

    // The guest's FIN reaches the client, and the client can still send to the guest.
    let relay = Relay::start(fx.spec(0, BANNER)).unwrap();
    let mut conn = fx.connect(relay.addr).unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    assert_eq!(got, BANNER_TEXT, "banner, then EOF");
    conn.write_all(b"still open").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    wait_for(
        || fx.seen.lock().unwrap().as_slice() == b"still open",
        "the guest got the data",
    );
}

#[test]
fn a_large_transfer_to_a_slow_reader_completes_with_backpressure() {
    let Some(tools) = tools() else { return };
    let fx = Fixture::new(&tools, "pt-big", 16374);
    let relay = Relay::start(fx.spec(0, ECHO)).unwrap();
    let conn = fx.connect(relay.addr).unwrap();
    const TOTAL: usize = 64 << 20;
    let pattern = |i: usize| (i % 251) as u8;

    let written = Arc::new(AtomicUsize::new(0));
    let mut writer_conn = conn.try_clone().unwrap();
    let w = written.clone();
    let writer = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..64 * 1024).map(pattern).collect();
        let mut sent = 0;
        while sent < TOTAL {
            // Continue the pattern from where the last chunk stopped.
            let off = sent % 251;
            let n = (TOTAL - sent).min(chunk.len() - 251);
            writer_conn.write_all(&chunk[off..off + n]).unwrap();
            sent += n;
            w.store(sent, Ordering::Relaxed);
        }
        writer_conn.shutdown(Shutdown::Write).unwrap();
    });

    // Nobody reads for a while: the writer must stall well short of the total, since the
    // relay only moves what the other side takes.
    std::thread::sleep(Duration::from_millis(800));
    let stalled_at = written.load(Ordering::Relaxed);
    assert!(
        stalled_at < TOTAL,
        "the writer was held back (wrote {stalled_at} of {TOTAL} with no reader)"
    );

    // Then a slow reader takes it all, intact.
    let mut reader = conn;
    let mut buf = vec![0u8; 32 * 1024];
    let mut got = 0usize;
    let started = Instant::now();
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(got + k), "byte {}", got + k);
        }
        got += n;
        if got % (4 << 20) < n {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "transfer too slow"
        );
    }
    writer.join().unwrap();
    assert_eq!(got, TOTAL);
    eprintln!("stalled at {stalled_at} bytes of {TOTAL} without a reader");
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let Some(tools) = tools() else { return };
    let fx = Fixture::new(&tools, "pt-limit", 16375);
    let relay = Relay::start(RelaySpec {
        max_connections: 3,
        ..fx.spec(0, ECHO)
    })
    .unwrap();
    let round_trip = |conn: &mut TcpStream| -> std::io::Result<()> {
        conn.write_all(b"x")?;
        let mut b = [0u8; 1];
        conn.read_exact(&mut b)
    };
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = fx.connect(relay.addr).unwrap();
            round_trip(&mut c).unwrap();
            c
        })
        .collect();
    // The fourth is accepted by the kernel, then reset by the relay, never relayed. The
    // reset may already be there when `connect` looks (then `connect` fails with it).
    assert!(
        fx.connect(relay.addr)
            .and_then(|mut extra| round_trip(&mut extra))
            .is_err(),
        "the extra connection is refused"
    );

    // Closing one frees its place.
    drop(held.pop());
    wait_for(
        || {
            fx.connect(relay.addr)
                .and_then(|mut c| round_trip(&mut c))
                .is_ok()
        },
        "a place is free again",
    );
}

#[test]
fn a_missing_namespace_is_a_typed_error() {
    let Some(tools) = tools() else { return };
    let fx = Fixture::new(&tools, "pt-nons", 16376);
    let spec = RelaySpec {
        netns: "pyrotest-no-such-ns".to_owned(),
        ..fx.spec(0, ECHO)
    };
    assert!(matches!(
        Relay::start(spec).map(|r| r.addr),
        Err(RelayError::Netns(netns::NetnsError::Open { .. }))
    ));
}

fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stopping_the_relay_closes_the_listener_and_its_connections() {
    let Some(tools) = tools() else { return };
    let fx = Fixture::new(&tools, "pt-stop", 16377);
    let relay = Relay::start(fx.spec(0, ECHO)).unwrap();
    let addr = relay.addr;
    let mut conn = fx.connect(addr).unwrap();
    conn.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).unwrap();
    drop(relay);
    let mut rest = Vec::new();
    // EOF or a reset: either way the relayed connection is gone.
    let _ = conn.read_to_end(&mut rest);
    assert!(rest.is_empty());
    let err = fx.connect(addr).expect_err("nothing listens any more");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}
