//! The proxy's TCP server.
//!
//! The caller redirects the guest's TCP 80 and 443 to the proxy's listener inside the
//! sandbox's namespace and tells the proxy, through a [`Destination`] resolver, where each
//! accepted connection was going ([`original_dst`] reads it from a redirected socket; tests
//! pass a closure). For each connection the proxy reads the first bytes, at most
//! [`MAX_PEEK`] within [`ProxyConfig::head_timeout`], until [`inspect`] decides; then it
//! either connects to the original destination (from `upstream_netns`, like the port relay,
//! see [`crate::ports`]), sends the bytes read (through the [`FirstBytes`] stage) and
//! splices both ways with bounded buffers and half-close, or closes the connection and
//! records a [`Denial`] (the last [`MAX_DENIALS`]).

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use super::{Allowed, Denial, DenyReason, Inspection, MAX_DENIALS, MAX_PEEK, Verdict, inspect};
use crate::netns::NetnsError;
use crate::policy::Allowlist;
use crate::ports::{CONNECT_TIMEOUT, COPY_BUFFER, SocketFactory};

/// How long a client has to send its request head or ClientHello.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Proxied connections at once, unless the config says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// The pause after a failed `accept` before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Finds where an accepted connection was going.
pub type Destination = Arc<dyn Fn(&TcpStream) -> io::Result<SocketAddrV4> + Send + Sync>;

/// The stage between the decision and the upstream: it gets an allowed connection's
/// verdict and the bytes read so far, and returns the bytes to send upstream first.
/// Credential injection will implement it for HTTP (rewrite [`Allowed::http`]'s head);
/// [`Passthrough`] sends the bytes unchanged.
pub trait FirstBytes: Send + Sync {
    /// The bytes to send to the original destination before splicing.
    fn first_bytes(&self, allowed: &Allowed, buffered: Vec<u8>) -> Vec<u8>;
}

/// The [`FirstBytes`] stage that changes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passthrough;

impl FirstBytes for Passthrough {
    fn first_bytes(&self, _: &Allowed, buffered: Vec<u8>) -> Vec<u8> {
        buffered
    }
}

/// The original destination of a connection redirected by nftables (`SO_ORIGINAL_DST`).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    let mut addr = libc::sockaddr_in {
        sin_family: 0,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    let size = std::mem::size_of::<libc::sockaddr_in>();
    let mut len = libc::socklen_t::try_from(size).map_err(io::Error::other)?;
    // SAFETY: the descriptor is open for the life of `stream`; `addr` and `len` are live
    // locals, and `len` tells the kernel how many bytes `addr` holds, so it writes no more.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if i32::from(addr.sin_family) != libc::AF_INET || usize::try_from(len).ok() != Some(size) {
        return Err(io::Error::other("SO_ORIGINAL_DST returned no IPv4 address"));
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

/// Where and how the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The listening address.
    pub listen: SocketAddr,
    /// The namespace to listen in; `None` is the process's own.
    pub listen_netns: Option<String>,
    /// The namespace to connect upstream from; `None` is the process's own.
    pub upstream_netns: Option<String>,
    /// How long a client has to send its first bytes ([`HEAD_TIMEOUT`]).
    pub head_timeout: Duration,
    /// Proxied connections at once; one beyond is reset.
    pub max_connections: usize,
}

impl ProxyConfig {
    /// Listening on `listen` in the process's own namespace, with the defaults.
    pub fn new(listen: SocketAddr) -> Self {
        ProxyConfig {
            listen,
            listen_netns: None,
            upstream_netns: None,
            head_timeout: HEAD_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
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
}

/// The record of refused connections.
#[derive(Debug, Default)]
struct Denials(Mutex<VecDeque<Denial>>);

impl Denials {
    fn record(&self, denial: Denial) {
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() >= MAX_DENIALS {
            list.pop_front();
        }
        list.push_back(denial);
    }

    fn list(&self) -> Vec<Denial> {
        let list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().cloned().collect()
    }
}

/// What every connection's task shares.
struct Shared {
    allowlist: Allowlist,
    destination: Destination,
    stage: Arc<dyn FirstBytes>,
    factory: Option<SocketFactory>,
    denials: Arc<Denials>,
    head_timeout: Duration,
}

/// A running proxy; dropping it stops the listener and every proxied connection.
#[derive(Debug)]
pub struct Proxy {
    local_addr: SocketAddr,
    denials: Arc<Denials>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Binds the listener and starts proxying on the current tokio runtime.
    pub async fn start(
        config: ProxyConfig,
        allowlist: Allowlist,
        destination: Destination,
        stage: Arc<dyn FirstBytes>,
    ) -> Result<Proxy, ProxyError> {
        let factory = match &config.upstream_netns {
            Some(name) => Some(SocketFactory::start(name).await?),
            None => None,
        };
        let addr = config.listen;
        let listener = crate::ports::bind_listener(addr, config.listen_netns.as_deref())?
            .map_err(|source| ProxyError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ProxyError::Bind { addr, source })?;
        let denials = Arc::new(Denials::default());
        let shared = Arc::new(Shared {
            allowlist,
            destination,
            stage,
            factory,
            denials: denials.clone(),
            head_timeout: config.head_timeout,
        });
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let task = tokio::spawn(accept_loop(listener, shared, limit));
        Ok(Proxy {
            local_addr,
            denials,
            task,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The recent denials, oldest first.
    pub fn denials(&self) -> Vec<Denial> {
        self.denials.list()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, limit: Arc<Semaphore>) {
    // Owning the connections' tasks here means aborting this task aborts them all.
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            let _ = client.set_zero_linger();
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _ = proxy_one(client, &shared).await;
        });
    }
}

/// Decides on one connection, then splices it or records its denial.
async fn proxy_one(mut client: TcpStream, shared: &Shared) -> io::Result<()> {
    let deny = |destination, reason: DenyReason| {
        let host = match &reason {
            DenyReason::HostNotAllowed { host } => Some(host.clone()),
            _ => None,
        };
        shared.denials.record(Denial {
            host,
            destination,
            reason,
            at: SystemTime::now(),
        });
    };
    let Ok(dst) = (shared.destination)(&client) else {
        deny(None, DenyReason::NoDestination);
        return Ok(());
    };
    let mut buf = Vec::with_capacity(MAX_PEEK);
    let decided = tokio::time::timeout(shared.head_timeout, async {
        loop {
            match inspect(dst, &buf, &shared.allowlist) {
                Inspection::Decided(verdict) => return verdict,
                Inspection::NeedMore if buf.len() < MAX_PEEK => {}
                Inspection::NeedMore => return Verdict::Deny(DenyReason::Timeout),
            }
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(MAX_PEEK - buf.len());
            match client.read(&mut chunk[..want]).await {
                Ok(0) | Err(_) => return Verdict::Deny(DenyReason::Timeout),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let allowed = match decided {
        Ok(Verdict::Allow(allowed)) => allowed,
        Ok(Verdict::Deny(reason)) => {
            deny(Some(dst), reason);
            return Ok(());
        }
        Err(_) => {
            deny(Some(dst), DenyReason::Timeout);
            return Ok(());
        }
    };
    let socket = match &shared.factory {
        Some(factory) => {
            TcpSocket::from_std_stream(std::net::TcpStream::from(factory.socket().await?))
        }
        None => TcpSocket::new_v4()?,
    };
    let mut upstream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(dst.into()))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let first = shared.stage.first_bytes(&allowed, buf);
    upstream.write_all(&first).await?;
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, COPY_BUFFER, COPY_BUFFER)
        .await?;
    Ok(())
}
