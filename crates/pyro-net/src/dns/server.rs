//! The resolver's UDP server: one socket on the gateway address, one task per query.
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

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::oneshot;

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
/// process's), bound to `config.listen`; returns once it is bound.
pub fn spawn(
    netns: Option<&str>,
    config: ServerConfig,
    resolver: Arc<Resolver>,
    on_answer: OnAnswer,
) -> Result<Running, ResolverError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let body = move || {
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|source| ResolverError::Runtime { source })
            .and_then(|rt| {
                let socket = rt
                    .block_on(UdpSocket::bind(config.listen))
                    .map_err(|source| ResolverError::Bind {
                        addr: config.listen,
                        source,
                    })?;
                Ok((rt, socket))
            });
        let (rt, socket) = match started {
            Ok(ok) => ok,
            Err(err) => {
                let _ = ready_tx.send(Err(err));
                return;
            }
        };
        let _ = ready_tx.send(Ok(socket.local_addr()));
        rt.block_on(async move {
            tokio::select! {
                _ = serve(Arc::new(socket), resolver, Arc::new(config), on_answer) => {}
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

/// Serves queries on `socket` until a receive fails for good.
pub async fn serve(
    socket: Arc<UdpSocket>,
    resolver: Arc<Resolver>,
    config: Arc<ServerConfig>,
    on_answer: OnAnswer,
) -> io::Result<()> {
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
        let (socket, resolver, config, on_answer) = (
            socket.clone(),
            resolver.clone(),
            config.clone(),
            on_answer.clone(),
        );
        tokio::spawn(async move {
            let _guard = guard;
            if let Some(reply) = handle(&packet, &resolver, &config, &on_answer).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

/// The reply to one datagram from the guest, if any.
async fn handle(
    packet: &[u8],
    resolver: &Resolver,
    config: &ServerConfig,
    on_answer: &OnAnswer,
) -> Option<Vec<u8>> {
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
    let allow_answers = match resolver.decide(&query.question.name.to_dotted(), SystemTime::now()) {
        Decision::Deny => return fail(Rcode::NxDomain),
        Decision::Forward { allow_answers } => allow_answers,
    };
    let Some((reply, response)) = forward(&query, config).await else {
        return fail(Rcode::ServFail);
    };
    if allow_answers {
        let addrs = allowed_addresses(&query, &response);
        if !addrs.is_empty() {
            let on_answer = on_answer.clone();
            let added = tokio::task::spawn_blocking(move || on_answer(&addrs)).await;
            if !matches!(added, Ok(Ok(()))) {
                return fail(Rcode::ServFail);
            }
        }
    }
    Some(reply)
}

/// Asks the upstreams in order; the first matching reply (raw, and parsed), or `None` when
/// none answered within the timeout.
async fn forward(query: &Query, config: &ServerConfig) -> Option<(Vec<u8>, Response)> {
    let deadline = Instant::now() + config.timeout;
    let packet = wire::write_query(query.header.id, &query.question);
    for (i, upstream) in config.upstreams.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(config.upstreams.len() - i).unwrap_or(u32::MAX);
        if let Ok(Some(got)) = tokio::time::timeout(share, ask(*upstream, &packet, query)).await {
            return Some(got);
        }
    }
    None
}

/// One exchange with one upstream; `None` on a socket error.
async fn ask(upstream: SocketAddr, packet: &[u8], query: &Query) -> Option<(Vec<u8>, Response)> {
    let local = match upstream {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(packet).await.ok()?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = socket.recv(&mut buf).await.ok()?;
        let reply = buf.get(..n)?;
        let Ok(response) = wire::parse_response(reply) else {
            continue;
        };
        let matches = response.header.is_response()
            && response.header.id == query.header.id
            && response.question.as_ref().is_some_and(|q| {
                q.name.eq_ignore_case(&query.question.name)
                    && q.qtype == query.question.qtype
                    && q.qclass == query.question.qclass
            });
        if matches {
            return Some((reply.to_vec(), response));
        }
    }
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
