//! Published ports: a TCP relay from the host's `127.0.0.1:HOST_PORT` to a port of the guest.
//!
//! A [`PortRelay`] listens on `127.0.0.1` (never another address) in the host's namespace
//! and, for each connection it accepts, opens a connection to `guest_ip:guest_port` from
//! inside the sandbox's network namespace, then copies both directions until both are done.
//!
//! - **Namespaces.** A socket belongs to the network namespace of the thread that created it,
//!   for its whole life, whatever thread later calls `connect` on it. The relay keeps one
//!   dedicated thread that has `setns(2)`-ed into the sandbox's namespace and does nothing
//!   but create sockets there, handing the descriptors back; the runtime's own threads never
//!   change namespace (a worker thread moved into a namespace would take every other task
//!   scheduled on it along), and the connect itself stays asynchronous. The listener is
//!   made the same way in `host_netns` when one is named (tests), else in the process's own
//!   namespace.
//! - **Backpressure.** Each direction copies through one fixed buffer of [`COPY_BUFFER`]
//!   bytes ([`tokio::io::copy_bidirectional_with_sizes`]): the relay reads only what it can
//!   write next, so a slow reader on either side stalls the writer on the other through
//!   TCP's own flow control. Memory is bounded by `2 × COPY_BUFFER × max_connections`.
//! - **Half-close.** When one side sends FIN, the relay shuts down the write half toward the
//!   other side and keeps copying the opposite direction until it, too, ends.
//! - **Limits.** At most `max_connections` relayed connections at once (default
//!   [`DEFAULT_MAX_CONNECTIONS`]); one beyond is accepted and reset at once.
//!
//! [`run_relay`] is the body of the detached helper process (`pyro __port-relay`, wired in
//! with services) that outlives the call which published the port; the core records it in
//! its ledger and kills it on stop, delete or after a crash.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::netns::{self, NetnsError};
use crate::plan::GUEST_POOL;

/// The size of each direction's copy buffer, per connection.
pub const COPY_BUFFER: usize = 64 * 1024;
/// Relayed connections at once, unless the spec says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// The most `max_connections` may be.
pub const MAX_CONNECTIONS_LIMIT: u32 = 4096;
/// How long a connection to the guest may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed `accept` (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Longest namespace name accepted.
const MAX_NETNS_NAME: usize = 64;

/// One published port: what `pyro __port-relay` is started with (as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySpec {
    /// The sandbox's network namespace (`/run/netns/NAME`), where the guest is reached.
    pub netns: String,
    /// The namespace to listen in; `None` is the relay process's own (the host's). Tests
    /// name a namespace of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_netns: Option<String>,
    /// The port on the host's 127.0.0.1; 0 lets the OS choose (see [`PortRelay::local_addr`]).
    pub host_port: u16,
    /// The guest's address, inside pyro's guest pool (`10.200.0.0/16`).
    pub guest_ip: Ipv4Addr,
    /// The guest's port (not 0).
    pub guest_port: u16,
    /// Relayed connections at once (1 to [`MAX_CONNECTIONS_LIMIT`]).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    DEFAULT_MAX_CONNECTIONS
}

impl RelaySpec {
    /// A spec with the default connection limit.
    pub fn new(netns: &str, host_port: u16, guest_ip: Ipv4Addr, guest_port: u16) -> Self {
        RelaySpec {
            netns: netns.to_owned(),
            host_netns: None,
            host_port,
            guest_ip,
            guest_port,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// Checks the spec; every [`SpecError`] names the value it refuses.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_netns_name(&self.netns)?;
        if let Some(name) = &self.host_netns {
            check_netns_name(name)?;
        }
        if self.guest_port == 0 {
            return Err(SpecError::GuestPortZero);
        }
        if !GUEST_POOL.contains(self.guest_ip) {
            return Err(SpecError::GuestIpOutsidePool { ip: self.guest_ip });
        }
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS_LIMIT {
            return Err(SpecError::MaxConnections {
                value: self.max_connections,
            });
        }
        Ok(())
    }
}

fn check_netns_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NETNS_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::NetnsName {
            name: name.to_owned(),
        })
    }
}

/// A [`RelaySpec`] that cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The guest's port is 0.
    #[error("the guest port must not be 0")]
    GuestPortZero,
    /// The guest's address is not one pyro hands out.
    #[error("guest address {ip} is outside pyro's guest pool {GUEST_POOL}")]
    GuestIpOutsidePool {
        /// The address given.
        ip: Ipv4Addr,
    },
    /// A namespace name that is empty, too long, or not `[A-Za-z0-9._-]`.
    #[error("`{name}` is not a valid network namespace name")]
    NetnsName {
        /// The name given.
        name: String,
    },
    /// The connection limit is out of range.
    #[error("max_connections {value} is outside 1..={MAX_CONNECTIONS_LIMIT}")]
    MaxConnections {
        /// The value given.
        value: u32,
    },
}

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// No socket could be made in the sandbox's namespace.
    #[error("cannot create a socket in network namespace {netns}")]
    Socket {
        /// The namespace.
        netns: String,
        /// Why.
        source: io::Error,
    },
    /// The relay's task ended abnormally.
    #[error("the relay task failed")]
    Task {
        /// Why.
        source: tokio::task::JoinError,
    },
}

/// A request for one socket, answered by the namespace thread.
type SocketRequest = oneshot::Sender<io::Result<OwnedFd>>;

/// Makes TCP sockets inside one network namespace, on a thread that lives there. The
/// thread ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct SocketFactory {
    requests: mpsc::Sender<SocketRequest>,
}

impl SocketFactory {
    /// Starts the thread in namespace `name`; fails if it cannot enter it.
    pub(crate) async fn start(name: &str) -> Result<Self, NetnsError> {
        let (requests, incoming) = mpsc::channel::<SocketRequest>();
        let (entered_tx, entered_rx) = oneshot::channel();
        let owned = name.to_owned();
        std::thread::spawn(move || {
            let entered = netns::enter(&owned);
            let ok = entered.is_ok();
            let _ = entered_tx.send(entered);
            if ok {
                for reply in incoming {
                    let _ = reply.send(new_tcp_socket());
                }
            }
        });
        match entered_rx.await {
            Ok(Ok(())) => Ok(SocketFactory { requests }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(NetnsError::Panicked {
                name: name.to_owned(),
            }),
        }
    }

    /// One non-blocking TCP socket inside the namespace.
    pub(crate) async fn socket(&self) -> io::Result<OwnedFd> {
        let (reply, answer) = oneshot::channel();
        let gone = || io::Error::other("the namespace's socket thread has ended");
        self.requests.send(reply).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// A fresh IPv4 TCP socket (non-blocking, close-on-exec) in the calling thread's namespace.
pub(crate) fn new_tcp_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked before it is used.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2): it is open and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A running relay; dropping it stops the listener and every relayed connection.
#[derive(Debug)]
pub struct PortRelay {
    local_addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl PortRelay {
    /// Validates `spec`, enters the namespaces, binds `127.0.0.1:host_port` and starts
    /// relaying on the current tokio runtime.
    pub async fn start(spec: RelaySpec) -> Result<Self, RelayError> {
        spec.validate()?;
        let factory = SocketFactory::start(&spec.netns).await?;
        // Fail now, not on the first connection, if sockets cannot be made there.
        factory
            .socket()
            .await
            .map_err(|source| RelayError::Socket {
                netns: spec.netns.clone(),
                source,
            })?;
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, spec.host_port));
        let listener = bind_listener(addr, spec.host_netns.as_deref())?
            .map_err(|source| RelayError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| RelayError::Bind { addr, source })?;
        let guest = SocketAddr::V4(SocketAddrV4::new(spec.guest_ip, spec.guest_port));
        let limit = Arc::new(Semaphore::new(spec.max_connections as usize));
        let task = tokio::spawn(accept_loop(listener, factory, guest, limit));
        Ok(PortRelay {
            local_addr,
            task: Some(task),
        })
    }

    /// Where it listens (`127.0.0.1:PORT`, the port the OS chose if the spec said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs until the relay ends, which it does only if its task fails.
    pub async fn wait(mut self) -> Result<(), RelayError> {
        match self.task.take() {
            Some(task) => task.await.map_err(|source| RelayError::Task { source }),
            None => Ok(()),
        }
    }
}

impl Drop for PortRelay {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The body of the detached relay process: starts the relay, reports the bound address to
/// `ready` (the helper prints it for the process that spawned it), and relays until killed.
pub async fn run_relay(spec: RelaySpec, ready: impl FnOnce(SocketAddr)) -> Result<(), RelayError> {
    let relay = PortRelay::start(spec).await?;
    ready(relay.local_addr());
    relay.wait().await
}

async fn accept_loop(
    listener: TcpListener,
    factory: SocketFactory,
    guest: SocketAddr,
    limit: Arc<Semaphore>,
) {
    // Owning the connections' tasks here means aborting this task aborts them all.
    let mut connections = JoinSet::new();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of descriptors or memory, or a connection reset before accept: the
                // listener itself is fine, so pause and go on.
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Over the limit: reset rather than leave the client waiting on a queue.
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        };
        let factory = factory.clone();
        connections.spawn(async move {
            let _permit = permit;
            // A failed connection is the client's to see (its connection closes); the relay
            // carries on.
            let _ = relay_one(client, &factory, guest).await;
        });
    }
}

/// Relays one client connection to the guest until both directions have ended.
async fn relay_one(
    mut client: TcpStream,
    factory: &SocketFactory,
    guest: SocketAddr,
) -> io::Result<()> {
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(factory.socket().await?));
    let mut upstream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(guest))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, COPY_BUFFER, COPY_BUFFER)
        .await?;
    Ok(())
}

/// Binds a non-blocking TCP listener on `addr`, inside the network namespace `netns` when
/// given (the socket stays in the namespace it was made in). The outer error is entering the
/// namespace, the inner one binding. Shared by the port relay and the egress proxy.
pub(crate) fn bind_listener(
    addr: SocketAddr,
    netns: Option<&str>,
) -> Result<io::Result<TcpListener>, NetnsError> {
    let bind = || -> io::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    };
    let std = match netns {
        Some(name) => netns::run_in(name, bind)?,
        None => bind(),
    };
    Ok(std.and_then(TcpListener::from_std))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RelaySpec {
        RelaySpec::new("pyro-7", 8080, Ipv4Addr::new(10, 200, 0, 30), 80)
    }

    #[test]
    fn a_valid_spec_passes() {
        assert_eq!(spec().validate(), Ok(()));
        let os_chosen = RelaySpec {
            host_port: 0,
            host_netns: Some("pyrotest-h".to_owned()),
            ..spec()
        };
        assert_eq!(os_chosen.validate(), Ok(()));
    }

    #[test]
    fn guest_port_zero_is_refused() {
        let s = RelaySpec {
            guest_port: 0,
            ..spec()
        };
        assert_eq!(s.validate(), Err(SpecError::GuestPortZero));
    }

    #[test]
    fn guest_addresses_outside_the_pool_are_refused() {
        for ip in [
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(10, 201, 0, 2),
            Ipv4Addr::new(192, 168, 1, 1),
        ] {
            let s = RelaySpec {
                guest_ip: ip,
                ..spec()
            };
            assert_eq!(s.validate(), Err(SpecError::GuestIpOutsidePool { ip }));
        }
    }

    #[test]
    fn bad_namespace_names_are_refused() {
        for name in ["", ".", "..", "a/b", "../x", "with space", &"n".repeat(65)] {
            let s = RelaySpec {
                netns: name.to_owned(),
                ..spec()
            };
            assert_eq!(
                s.validate(),
                Err(SpecError::NetnsName {
                    name: name.to_owned()
                })
            );
            let s = RelaySpec {
                host_netns: Some(name.to_owned()),
                ..spec()
            };
            assert!(matches!(s.validate(), Err(SpecError::NetnsName { .. })));
        }
    }

    #[test]
    fn connection_limit_out_of_range_is_refused() {
        for value in [0, MAX_CONNECTIONS_LIMIT + 1] {
            let s = RelaySpec {
                max_connections: value,
                ..spec()
            };
            assert_eq!(s.validate(), Err(SpecError::MaxConnections { value }));
        }
    }

    #[test]
    fn the_spec_reads_json_with_defaults_and_refuses_unknown_fields() {
        let parsed: RelaySpec = serde_json::from_str(
            r#"{"netns":"pyro-7","host_port":8080,"guest_ip":"10.200.0.30","guest_port":80}"#,
        )
        .unwrap();
        assert_eq!(parsed, spec());
        let back: RelaySpec =
            serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(back, parsed);
        let unknown = r#"{"netns":"pyro-7","host_port":1,"guest_ip":"10.200.0.2","guest_port":80,"bind":"0.0.0.0"}"#;
        assert!(serde_json::from_str::<RelaySpec>(unknown).is_err());
    }
}
