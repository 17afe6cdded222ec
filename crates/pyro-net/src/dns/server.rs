//! The resolver's server: UDP and TCP on the gateway address, one task per query (UDP) or
//! per connection (TCP).
//!
//! A query is parsed ([`wire::parse_query`]; a response, or anything shorter than a header,
//! is dropped; a malformed query is answered FORMERR, another opcode NOTIMP), decided on by
//! the [`Resolver`] (denied: NXDOMAIN), and forwarded to the upstreams in order, all within
//! [`ServerConfig::timeout`] (else SERVFAIL). A reply counts only if it comes from the
//! upstream asked (a connected socket), carries the query's ID and echoes its question. For
//! a name an allowlist matched, the A records for the name (and the CNAME chain from it) go
//! to the [`OnAnswer`] callback before the reply is relayed; if that fails, the guest gets
//! SERVFAIL instead. At most [`MAX_IN_FLIGHT`] queries are handled at once; more are dropped
//! (the guest retries).
//!
//! Over TCP (RFC 7766: each message after a two-byte length) the same decision is made per
//! message and the query is forwarded to the upstreams over TCP (so a truncated UDP answer
//! can be retried in full). At most [`MAX_TCP_CLIENTS`] connections are served at once (more
//! are closed at once); a connection that does not deliver a whole message within
//! [`TCP_IDLE_TIMEOUT`] of the last answer is closed, and one slow client blocks nobody.
//!
//! # Which namespace
//!
//! The listening sockets live in the sandbox's namespace (the guest reaches them at its
//! gateway); the sockets to the upstreams are made in the namespace of the thread that
//! called [`spawn`] (the host's, for pyro), by a thread of their own that stays there, so a
//! resolver on the host's loopback (`127.0.0.53`) is reachable and the host's routes apply.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, oneshot};

use super::wire::{self, Query, RData, Rcode, Response};
use super::{Decision, Resolver};
use crate::netns::{self, NetnsError};
use crate::setup::NetError;

/// How long the upstreams get, all together, before the guest gets SERVFAIL.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Most queries handled at once.
pub const MAX_IN_FLIGHT: usize = 128;
/// Shortest lifetime given to an allowed address: a TTL of 0 must not expire before the
/// guest's connection starts (connections in progress outlive it through conntrack).
pub const MIN_ALLOW_TTL: Duration = Duration::from_secs(30);
/// Longest lifetime given to an allowed address.
pub const MAX_ALLOW_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Most TCP connections from the guest served at once.
pub const MAX_TCP_CLIENTS: usize = 16;
/// How long a TCP client has to deliver each whole query (from the connection's start or
/// the last answer) before it is closed; also the limit on writing an answer.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest datagram read (queries with EDNS, and upstream replies).
const MAX_DATAGRAM: usize = 4096;
/// Most CNAMEs followed from the question's name when collecting addresses.
const MAX_CNAME_CHAIN: usize = 8;

/// Called with the addresses (and lifetimes) an allowed name resolved to, before the answer
/// is relayed; an error turns the answer into SERVFAIL. [`crate::setup::Network::allow`]
/// fits. It may block (it runs on a blocking thread).
pub type OnAnswer = Arc<dyn Fn(&[(Ipv4Addr, Duration)]) -> Result<(), NetError> + Send + Sync>;

/// Where the resolver listens and whom it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The address to bind (the gateway's, port 53).
    pub listen: SocketAddr,
    /// The host's resolvers, asked in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long the upstreams get, together ([`UPSTREAM_TIMEOUT`]).
    pub timeout: Duration,
}

/// The resolver could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The listening socket could not be bound.
    #[error("cannot bind the resolver to {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The async runtime could not be built.
    #[error("cannot start the resolver's runtime")]
    Runtime {
        /// Why.
        source: io::Error,
    },
    /// The resolver's thread ended before it said whether it started.
    #[error("the resolver's thread ended while starting")]
    Vanished,
}

/// A resolver running on a thread of its own; stopped by [`Running::stop`] or on drop.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), NetnsError>>>,
}

impl Running {
    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts the resolver on a thread inside network namespace `netns` (`None`: this
/// process's), bound to `config.listen` over UDP and TCP (for port 0, TCP on the port UDP
/// got); returns once both are bound. The sockets to the upstreams are made in the calling
/// thread's namespace (see the module docs).
pub fn spawn(
    netns: Option<&str>,
    config: ServerConfig,
    resolver: Arc<Resolver>,
    on_answer: OnAnswer,
) -> Result<Running, ResolverError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    // Started from the calling thread, so it makes sockets in the caller's namespace.
    let upstream = UpstreamSockets::start();
    let body = move || {
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|source| ResolverError::Runtime { source })
            .and_then(|rt| {
                let bind_error = |source| ResolverError::Bind {
                    addr: config.listen,
                    source,
                };
                let socket = rt
                    .block_on(UdpSocket::bind(config.listen))
                    .map_err(bind_error)?;
                // The same port over TCP (on an OS-chosen UDP port, the port it got).
                let tcp_addr = socket.local_addr().map_err(bind_error)?;
                let listener = rt
                    .block_on(TcpListener::bind(tcp_addr))
                    .map_err(bind_error)?;
                Ok((rt, socket, listener))
            });
        let (rt, socket, listener) = match started {
            Ok(ok) => ok,
            Err(err) => {
                let _ = ready_tx.send(Err(err));
                return;
            }
        };
        let _ = ready_tx.send(Ok(socket.local_addr()));
        let shared = Arc::new(Shared {
            resolver,
            config,
            on_answer,
            upstream,
        });
        rt.block_on(async move {
            tokio::select! {
                _ = serve(Arc::new(socket), shared.clone()) => {}
                _ = serve_tcp(listener, shared) => {}
                _ = shutdown_rx => {}
            }
        });
    };
    let thread = match netns {
        Some(name) => netns::spawn_in(name, body),
        None => std::thread::spawn(move || {
            body();
            Ok(())
        }),
    };
    match ready_rx.recv() {
        Ok(Ok(local_addr)) => Ok(Running {
            local_addr: local_addr.map_err(|source| ResolverError::Bind {
                addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                source,
            })?,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }),
        Ok(Err(err)) => {
            let _ = thread.join();
            Err(err)
        }
        Err(_) => match thread.join() {
            Ok(Err(err)) => Err(err.into()),
            _ => Err(ResolverError::Vanished),
        },
    }
}

/// Counts a query in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every query's task needs.
struct Shared {
    resolver: Arc<Resolver>,
    config: ServerConfig,
    on_answer: OnAnswer,
    upstream: UpstreamSockets,
}

/// How a query reached the resolver, and so how it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// Serves UDP queries on `socket` until a receive fails for good.
async fn serve(socket: Arc<UdpSocket>, shared: Arc<Shared>) -> io::Result<()> {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            Err(err) => return Err(err),
        };
        if in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let guard = InFlight(in_flight.clone());
        let packet = buf.get(..n).unwrap_or_default().to_vec();
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            let _guard = guard;
            if let Some(reply) = handle(&packet, &shared, Transport::Udp).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

/// Serves TCP clients on `listener`, at most [`MAX_TCP_CLIENTS`] at once.
async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            // A connection that died before it was accepted, or out of descriptors for a
            // moment: the listener itself is fine.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Over the limit: closed at once (dropped).
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = serve_tcp_client(conn, &shared).await;
        });
    }
}

/// Answers one TCP client's queries in order until it closes, stalls or errs.
async fn serve_tcp_client(mut conn: TcpStream, shared: &Shared) -> io::Result<()> {
    loop {
        let Ok(read) = tokio::time::timeout(TCP_IDLE_TIMEOUT, read_framed(&mut conn)).await else {
            return Ok(());
        };
        let Some(packet) = read? else {
            return Ok(());
        };
        let Some(reply) = handle(&packet, shared, Transport::Tcp).await else {
            return Ok(());
        };
        tokio::time::timeout(TCP_IDLE_TIMEOUT, write_framed(&mut conn, &reply))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    }
}

/// One message after its two-byte length; `None` at a clean end (or a zero length).
async fn read_framed(conn: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match conn.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 {
        return Ok(None);
    }
    let mut message = vec![0u8; len];
    conn.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// Writes `message` after its two-byte length (a message over 65535 bytes is refused).
async fn write_framed(conn: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    conn.write_all(&framed).await
}

/// The reply to one query from the guest, if any.
async fn handle(packet: &[u8], shared: &Shared, transport: Transport) -> Option<Vec<u8>> {
    let header = wire::Header::parse(packet).ok()?;
    if header.is_response() {
        return None;
    }
    if header.opcode() != 0 {
        return Some(wire::write_error(&header, None, Rcode::NotImp));
    }
    let query = match wire::parse_query(packet) {
        Ok(query) => query,
        Err(_) => return Some(wire::write_error(&header, None, Rcode::FormErr)),
    };
    let fail = |rcode| Some(wire::write_error(&header, Some(&query.question), rcode));
    let decision = shared
        .resolver
        .decide(&query.question.name.to_dotted(), SystemTime::now());
    let allow_answers = match decision {
        Decision::Deny => return fail(Rcode::NxDomain),
        Decision::Forward { allow_answers } => allow_answers,
    };
    let Some((reply, response)) = forward(&query, shared, transport).await else {
        return fail(Rcode::ServFail);
    };
    if allow_answers {
        let addrs = allowed_addresses(&query, &response);
        if !addrs.is_empty() {
            let on_answer = shared.on_answer.clone();
            let added = tokio::task::spawn_blocking(move || on_answer(&addrs)).await;
            if !matches!(added, Ok(Ok(()))) {
                return fail(Rcode::ServFail);
            }
        }
    }
    Some(reply)
}

/// Asks the upstreams in order, over `transport`; the first matching reply (raw, and
/// parsed), or `None` when none answered within the timeout.
async fn forward(
    query: &Query,
    shared: &Shared,
    transport: Transport,
) -> Option<(Vec<u8>, Response)> {
    let config = &shared.config;
    let deadline = Instant::now() + config.timeout;
    let packet = wire::write_query(query.header.id, &query.question);
    for (i, upstream) in config.upstreams.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(config.upstreams.len() - i).unwrap_or(u32::MAX);
        let asked = match transport {
            Transport::Udp => {
                tokio::time::timeout(share, ask(&shared.upstream, *upstream, &packet, query)).await
            }
            Transport::Tcp => {
                let exchange = ask_tcp(&shared.upstream, *upstream, &packet, query);
                tokio::time::timeout(share, exchange).await
            }
        };
        if let Ok(Some(got)) = asked {
            return Some(got);
        }
    }
    None
}

/// Whether `response` answers `query` (its ID, and its question echoed).
fn answers(query: &Query, response: &Response) -> bool {
    response.header.is_response()
        && response.header.id == query.header.id
        && response.question.as_ref().is_some_and(|q| {
            q.name.eq_ignore_case(&query.question.name)
                && q.qtype == query.question.qtype
                && q.qclass == query.question.qclass
        })
}

/// One UDP exchange with one upstream; `None` on a socket error.
async fn ask(
    sockets: &UpstreamSockets,
    upstream: SocketAddr,
    packet: &[u8],
    query: &Query,
) -> Option<(Vec<u8>, Response)> {
    let fd = sockets.socket(Kind::Udp, upstream.is_ipv6()).await.ok()?;
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd)).ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(packet).await.ok()?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = socket.recv(&mut buf).await.ok()?;
        let reply = buf.get(..n)?;
        let Ok(response) = wire::parse_response(reply) else {
            continue;
        };
        if answers(query, &response) {
            return Some((reply.to_vec(), response));
        }
    }
}

/// One TCP exchange with one upstream; `None` on an error or a reply that does not match.
async fn ask_tcp(
    sockets: &UpstreamSockets,
    upstream: SocketAddr,
    packet: &[u8],
    query: &Query,
) -> Option<(Vec<u8>, Response)> {
    let fd = sockets.socket(Kind::Tcp, upstream.is_ipv6()).await.ok()?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    let mut conn = socket.connect(upstream).await.ok()?;
    write_framed(&mut conn, packet).await.ok()?;
    let reply = read_framed(&mut conn).await.ok()??;
    let response = wire::parse_response(&reply).ok()?;
    answers(query, &response).then_some((reply, response))
}

/// The kind of upstream socket.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Udp,
    Tcp,
}

/// A request for one upstream socket, answered by the factory thread.
type SocketRequest = (Kind, bool, oneshot::Sender<io::Result<OwnedFd>>);

/// Makes the sockets to the upstreams on a thread that stays in the namespace it was
/// started from (see the module docs); the thread ends when the last handle is dropped.
#[derive(Debug, Clone)]
struct UpstreamSockets {
    requests: std::sync::mpsc::Sender<SocketRequest>,
}

impl UpstreamSockets {
    /// Starts the thread, in the calling thread's namespace.
    fn start() -> UpstreamSockets {
        let (requests, incoming) = std::sync::mpsc::channel::<SocketRequest>();
        std::thread::spawn(move || {
            for (kind, v6, reply) in incoming {
                let _ = reply.send(new_socket(kind, v6));
            }
        });
        UpstreamSockets { requests }
    }

    /// One non-blocking socket of `kind` (IPv6 if `v6`), in the factory's namespace.
    async fn socket(&self, kind: Kind, v6: bool) -> io::Result<OwnedFd> {
        let (reply, answer) = oneshot::channel();
        let gone = || io::Error::other("the resolver's upstream socket thread has ended");
        self.requests.send((kind, v6, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// A fresh non-blocking, close-on-exec socket in the calling thread's namespace.
fn new_socket(kind: Kind, v6: bool) -> io::Result<OwnedFd> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let kind = match kind {
        Kind::Udp => libc::SOCK_DGRAM,
        Kind::Tcp => libc::SOCK_STREAM,
    };
    // SAFETY: socket(2) takes no pointers; the result is checked before it is used.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2): it is open and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The A records of `response` for the query's name, or for a name a CNAME chain from it
/// leads to, each with its TTL clamped to [`MIN_ALLOW_TTL`]..=[`MAX_ALLOW_TTL`].
pub fn allowed_addresses(query: &Query, response: &Response) -> Vec<(Ipv4Addr, Duration)> {
    let mut names = vec![&query.question.name];
    let mut addrs = Vec::new();
    for record in &response.answers {
        if !names.iter().any(|n| n.eq_ignore_case(&record.name)) {
            continue;
        }
        match &record.data {
            RData::A(addr) => {
                let ttl = Duration::from_secs(u64::from(record.ttl));
                addrs.push((*addr, ttl.clamp(MIN_ALLOW_TTL, MAX_ALLOW_TTL)));
            }
            RData::Cname(target) if names.len() <= MAX_CNAME_CHAIN => names.push(target),
            _ => {}
        }
    }
    addrs
}
