//! The test world: an "internet" built from network namespaces and veth pairs, all created
//! (and removed) by the tests. No packet ever leaves namespaces the test made: the root
//! namespace is never connected to any of them.
//!
//! ```text
//!  guest ns (veth eth0) ── pyro-tap │ sandbox ns pyro-N │ pyro-up ── pyro-N │ host ns │ wan0 ── inet0 │ internet ns
//!  10.200.x.2            10.200.x.1  (pyro's ruleset)     10.201.x.2   .1    host guard, 203.0.113.1  .2   198.51.100.10/11,
//!                                                                             pyro-host NAT                 10.9.9.9, 169.254.169.254
//! ```
//!
//! The host starts with `ip_forward=0` and the internet has no route back to the uplink
//! pool: sandboxes get out only through what `host::ensure` sets up.

// Test support: a failed set-up step should stop the test loudly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use pyro_net::setup::{self, GuestLink, Network, Options, Tools};
use pyro_net::{Allowlist, NetworkPolicy, SandboxNet, cmd, netns};

pub const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const PUBLIC_2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
pub const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The host's "public" address, on its link to the internet.
pub const HOST_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const INTERNET_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// The tools, or `None` (with the reason printed) where these tests cannot run.
pub fn tools() -> Option<Tools> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the network tests need root");
        return None;
    }
    match setup::check_capabilities(true) {
        Ok(tools) => Some(tools),
        Err(err) => {
            eprintln!("skipped: {err}");
            None
        }
    }
}

pub fn ip(tools: &Tools, args: &[&str]) -> String {
    cmd::run(&tools.ip, args, None).unwrap_or_else(|e| panic!("{e}"))
}

/// A network namespace the test made; deleted on drop.
pub struct Ns {
    pub name: String,
    tools: Tools,
}

impl Ns {
    pub fn new(tools: &Tools, name: &str) -> Ns {
        if netns::exists(name) {
            let _ = cmd::run(&tools.ip, &["netns", "del", name], None);
        }
        ip(tools, &["netns", "add", name]);
        ip(tools, &["-n", name, "link", "set", "lo", "up"]);
        Ns {
            name: name.to_owned(),
            tools: tools.clone(),
        }
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["-n", &self.name];
        argv.extend_from_slice(args);
        ip(&self.tools, &argv)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        netns::write_sysctl(&self.name, key, value).unwrap();
    }

    pub fn sysctl_value(&self, key: &str) -> String {
        netns::read_sysctl(Some(&self.name), key).unwrap()
    }

    /// The names of the nft tables in this namespace (`inet pyro-1`, …).
    pub fn tables(&self) -> Vec<String> {
        let nft = self.tools.nft.to_string_lossy().into_owned();
        let out = cmd::run(
            &self.tools.ip,
            &["netns", "exec", &self.name, &nft, "list", "tables"],
            None,
        )
        .unwrap();
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("table "))
            .map(str::to_owned)
            .collect()
    }

    /// Runs `f` inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in(&self.name, f).unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = cmd::run(&self.tools.ip, &["netns", "del", &self.name], None);
    }
}

/// A server thread inside a namespace; stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Result<(), netns::NetnsError>>>,
}

impl Server {
    /// Runs `serve` inside `ns` on its own thread: `serve(stop, hits, ready)` binds, sends
    /// on `ready`, then serves until `stop`.
    fn start(
        ns: &str,
        serve: impl FnOnce(Arc<AtomicBool>, Arc<AtomicUsize>, std::sync::mpsc::Sender<()>)
        + Send
        + 'static,
    ) -> Server {
        let (stop, hits) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s, h) = (stop.clone(), hits.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = netns::spawn_in(ns, move || serve(s, h, ready_tx));
        ready_rx.recv_timeout(TIMEOUT).expect("server started");
        Server {
            stop,
            hits,
            handle: Some(handle),
        }
    }

    /// TCP on `addr`: answers each connection with the peer's address, then closes.
    pub fn tcp(ns: &str, addr: SocketAddr) -> Server {
        Self::start(ns, move |stop, hits, ready| {
            let listener = TcpListener::bind(addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    }

    /// UDP on `addr`: counts datagrams and echoes each back.
    pub fn udp(ns: &str, addr: SocketAddr) -> Server {
        Self::start(ns, move |stop, hits, ready| {
            let socket = UdpSocket::bind(addr).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            ready.send(()).unwrap();
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                    hits.fetch_add(1, Ordering::Relaxed);
                    let _ = socket.send_to(&buf[..n], peer);
                }
            }
        })
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Connects over TCP from inside `ns` and returns what the server said.
pub fn tcp_connect(ns: &str, addr: Ipv4Addr, port: u16) -> std::io::Result<String> {
    netns::run_in(ns, || {
        let mut conn = TcpStream::connect_timeout(&SocketAddr::from((addr, port)), TIMEOUT)?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .unwrap()
}

/// Sends one UDP datagram from `ns` (from `from`, if given) and waits briefly for an echo.
pub fn udp_exchange(ns: &str, from: Option<Ipv4Addr>, to: SocketAddr) -> bool {
    netns::run_in(ns, || {
        let socket = UdpSocket::bind((from.unwrap_or(Ipv4Addr::UNSPECIFIED), 0)).unwrap();
        socket.set_broadcast(true).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        if socket.send_to(b"ping", to).is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        socket.recv_from(&mut buf).is_ok()
    })
    .unwrap()
}

pub fn assert_refused(result: std::io::Result<String>, what: &str) {
    match result {
        Err(err) if err.raw_os_error() == Some(libc::EHOSTUNREACH) => {}
        other => panic!("{what}: expected a refusal (EHOSTUNREACH), got {other:?}"),
    }
}

/// A sandbox in the world: pyro's network plus the namespace standing in for its VM.
pub struct Sandbox {
    pub net: Network,
    pub guest: Ns,
    tools: Tools,
}

impl Sandbox {
    pub fn plan(&self) -> SandboxNet {
        self.net.plan
    }
    pub fn ns(&self) -> String {
        self.net.plan.name()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.net.teardown.run(&self.tools);
    }
}

/// The "internet", the "host", and sandboxes hanging off the host.
pub struct World {
    pub tools: Tools,
    pub internet: Ns,
    pub host: Ns,
}

impl World {
    /// `tag` keeps each test's namespaces apart from the others'.
    pub fn new(tools: &Tools, tag: &str) -> World {
        let internet = Ns::new(tools, &format!("pyrotest-{tag}-i"));
        let host = Ns::new(tools, &format!("pyrotest-{tag}-h"));
        internet.ip(&[
            "link", "add", "inet0", "type", "veth", "peer", "name", "wan0", "netns", &host.name,
        ]);
        for addr in [PUBLIC, PUBLIC_2, PRIVATE, METADATA] {
            internet.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        }
        internet.ip(&["addr", "add", &format!("{INTERNET_WAN}/24"), "dev", "inet0"]);
        internet.ip(&["link", "set", "inet0", "up"]);
        host.ip(&["addr", "add", &format!("{HOST_WAN}/24"), "dev", "wan0"]);
        host.ip(&["link", "set", "wan0", "up"]);
        host.ip(&["route", "add", "default", "via", &INTERNET_WAN.to_string()]);
        // Forwarding stays off, as on a fresh host: pyro's `host::ensure` turns it on. The
        // internet has no route to the uplink pool: sandboxes reach it through the host's
        // NAT only.
        host.sysctl("net/ipv4/ip_forward", "0");
        World {
            tools: tools.clone(),
            internet,
            host,
        }
    }

    /// The host's `ip_forward`, and whether its `inet pyro-host` table exists.
    pub fn host_forwarding(&self) -> (String, bool) {
        (
            self.host.sysctl_value("net/ipv4/ip_forward"),
            self.host.tables().iter().any(|t| t == "inet pyro-host"),
        )
    }

    pub fn options(&self, guest: &Ns) -> Options {
        Options {
            host_netns: Some(self.host.name.clone()),
            guest: GuestLink::Veth {
                netns: guest.name.clone(),
                name: "eth0".to_owned(),
            },
            credentials: false,
        }
    }

    /// Sandbox number `index` under `policy`, its guest namespace wired like a VM would be.
    pub fn sandbox(&self, index: u32, policy: NetworkPolicy, allowlist: &Allowlist) -> Sandbox {
        let plan = SandboxNet::new(index).unwrap();
        // Whatever an earlier, killed run left behind.
        let _ = setup::Teardown::all(plan, Some(self.host.name.clone())).run(&self.tools);
        let guest = Ns::new(&self.tools, &format!("pyrotest-g{index}"));
        let net = setup::create(&self.tools, plan, policy, allowlist, &self.options(&guest))
            .unwrap_or_else(|e| panic!("create: {e}"));
        self.wire_guest(net, guest, policy)
    }

    /// A sandbox on an index claimed from `start` ([`setup::claim`], then
    /// [`setup::create_in_claimed`]), as the core makes them.
    pub fn claimed_sandbox(&self, start: u32, policy: NetworkPolicy) -> Sandbox {
        let plan = setup::claim(&self.tools, Some(&self.host.name), start).unwrap();
        let guest = Ns::new(&self.tools, &format!("pyrotest-g{}", plan.index()));
        let net = setup::create_in_claimed(
            &self.tools,
            plan,
            policy,
            &Allowlist::default(),
            &self.options(&guest),
        )
        .unwrap_or_else(|e| panic!("create_in_claimed: {e}"));
        self.wire_guest(net, guest, policy)
    }

    fn wire_guest(&self, net: Network, guest: Ns, policy: NetworkPolicy) -> Sandbox {
        let plan = net.plan;
        if policy.is_networked() {
            guest.ip(&[
                "addr",
                "add",
                &format!("{}/30", plan.guest()),
                "dev",
                "eth0",
            ]);
            guest.ip(&[
                "link",
                "set",
                "eth0",
                "address",
                &plan.guest_mac_string(),
                "up",
            ]);
            guest.ip(&[
                "route",
                "add",
                "default",
                "via",
                &plan.gateway().to_string(),
            ]);
        }
        Sandbox {
            net,
            guest,
            tools: self.tools.clone(),
        }
    }
}
