//! The proxy's TCP server.
//!
//! The caller redirects the guest's TCP 80 and 443 to the proxy's listener inside the
//! sandbox's namespace and tells the proxy, through a [`Destination`] resolver, where each
//! accepted connection was going ([`original_dst`] reads it from a redirected socket; tests
//! pass a closure). For each connection the proxy reads the first bytes, at most
//! [`MAX_PEEK`] within [`ProxyConfig::head_timeout`], until [`inspect`](super::inspect) decides; then it
//! either connects to the original destination (from `upstream_netns`, like the port relay,
//! see [`crate::ports`]), sends the bytes read (through the [`FirstBytes`] stage) and
//! splices both ways with bounded buffers and half-close, or closes the connection and
//! records a [`Denial`] (the last [`MAX_DENIALS`]).
//!
//! With an [`Injection`] ([`ProxyConfig::injection`]) HTTP connections are relayed request
//! by request through an [`http1::Framer`], and TLS to a credential host is terminated
//! with the workspace CA's leaf and re-originated to the server (see the [module
//! docs](super)).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::creds::Credentials;
use super::http1::{self, Framer};
use super::{
    Allowed, Denial, DenyReason, Inspection, MAX_DENIALS, MAX_PEEK, Protocol, Verdict, inspect_for,
};
use crate::ca::{self, WorkspaceCa};
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

/// The stage between the decision and the upstream of a spliced connection: it gets an
/// allowed connection's verdict and the bytes read so far, and returns the bytes to send
/// upstream first. [`Passthrough`] sends the bytes unchanged. (Credential injection does
/// not use it: it must see every request, see [`Injection`].)
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
    /// Credential injection, if the sandbox has credentials.
    pub injection: Option<Arc<Injection>>,
}

/// The host's trust roots for the upstream side of intercepted TLS.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Most bytes read from a roots file.
const MAX_ROOTS_FILE: u64 = 4 * 1024 * 1024;
/// The one application protocol spoken on intercepted TLS.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// What credential injection needs: the rules, the workspace's CA, and the TLS settings of
/// both sides of an intercepted connection.
pub struct Injection {
    credentials: Credentials,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl fmt::Debug for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The rules' Debug hides their values.
        f.debug_struct("Injection")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Why injection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum InjectionError {
    /// A roots file could not be read.
    #[error("cannot read trust roots from {path}")]
    Roots {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No trust root at all.
    #[error("no trust roots for intercepted TLS (neither {SYSTEM_ROOTS} nor an extra file)")]
    NoRoots,
    /// The TLS settings were refused.
    #[error("TLS settings")]
    Tls {
        /// Why.
        source: rustls::Error,
    },
}

fn read_roots(path: &Path, roots: &mut RootCertStore) -> Result<(), InjectionError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_ROOTS_FILE).read_to_string(&mut text))
        .map_err(|source| InjectionError::Roots {
            path: path.to_owned(),
            source,
        })?;
    let ders = ca::pem_certificates(&text)
        .into_iter()
        .map(rustls::pki_types::CertificateDer::from);
    roots.add_parsable_certificates(ders);
    Ok(())
}

impl Injection {
    /// Injection of `credentials`, intercepting TLS with leaves of `ca`; the upstream side
    /// trusts the roots in `system_roots` (normally [`SYSTEM_ROOTS`]; a missing file is
    /// skipped) and in `extra_roots` (for a test's own CA; must be readable).
    pub fn new(
        credentials: Credentials,
        ca: WorkspaceCa,
        system_roots: Option<&Path>,
        extra_roots: Option<&Path>,
    ) -> Result<Injection, InjectionError> {
        let mut roots = RootCertStore::empty();
        if let Some(path) = system_roots {
            match read_roots(path, &mut roots) {
                Err(InjectionError::Roots { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        if let Some(path) = extra_roots {
            read_roots(path, &mut roots)?;
        }
        if roots.is_empty() {
            return Err(InjectionError::NoRoots);
        }
        let tls = |source| InjectionError::Tls { source };
        let provider = ca::tls_provider();
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ca));
        server.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(Injection {
            credentials,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The rules.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }
}

/// The proxy's counters of credential injection, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests in which a placeholder was replaced by its value.
    pub credentials_injected: u64,
    /// Connections blocked for a placeholder where it may not go.
    pub credentials_blocked: u64,
}

#[derive(Debug, Default)]
struct Counters {
    injected: AtomicU64,
    blocked: AtomicU64,
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
            injection: None,
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
    injection: Option<Arc<Injection>>,
    counters: Arc<Counters>,
}

impl Shared {
    fn deny(&self, destination: Option<SocketAddrV4>, reason: DenyReason) {
        if matches!(reason, DenyReason::Credential { .. }) {
            self.counters.blocked.fetch_add(1, Ordering::Relaxed);
        }
        self.denials.record(Denial {
            host: reason.host().map(str::to_owned),
            destination,
            reason,
            at: SystemTime::now(),
        });
    }

    async fn connect(&self, dst: SocketAddrV4) -> io::Result<TcpStream> {
        let socket = match &self.factory {
            Some(factory) => {
                TcpSocket::from_std_stream(std::net::TcpStream::from(factory.socket().await?))
            }
            None => TcpSocket::new_v4()?,
        };
        let upstream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(dst.into()))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        upstream.set_nodelay(true)?;
        Ok(upstream)
    }
}

/// A running proxy; dropping it stops the listener and every proxied connection.
#[derive(Debug)]
pub struct Proxy {
    local_addr: SocketAddr,
    denials: Arc<Denials>,
    counters: Arc<Counters>,
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
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            allowlist,
            destination,
            stage,
            factory,
            denials: denials.clone(),
            head_timeout: config.head_timeout,
            injection: config.injection,
            counters: counters.clone(),
        });
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let task = tokio::spawn(accept_loop(listener, shared, limit));
        Ok(Proxy {
            local_addr,
            denials,
            counters,
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

    /// The counters of credential injection.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            credentials_injected: self.counters.injected.load(Ordering::Relaxed),
            credentials_blocked: self.counters.blocked.load(Ordering::Relaxed),
        }
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

/// Decides on one connection, then splices it (or relays it request by request) or
/// records its denial.
async fn proxy_one(mut client: TcpStream, shared: &Shared) -> io::Result<()> {
    let Ok(dst) = (shared.destination)(&client) else {
        shared.deny(None, DenyReason::NoDestination);
        return Ok(());
    };
    let read_names = shared.injection.is_some();
    let mut buf = Vec::with_capacity(MAX_PEEK);
    let decided = tokio::time::timeout(shared.head_timeout, async {
        loop {
            match inspect_for(dst, &buf, &shared.allowlist, read_names) {
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
            shared.deny(Some(dst), reason);
            return Ok(());
        }
        Err(_) => {
            shared.deny(Some(dst), DenyReason::Timeout);
            return Ok(());
        }
    };
    client.set_nodelay(true)?;
    if let Some(injection) = &shared.injection {
        match (Protocol::for_port(dst.port()), &allowed) {
            (Some(Protocol::Http), Allowed { http: Some(_), .. }) => {
                return relay_requests(client, buf, shared, dst, None, async {
                    shared.connect(dst).await.map_err(|_| None)
                })
                .await;
            }
            (
                Some(Protocol::Tls),
                Allowed {
                    host: Some(host), ..
                },
            ) if injection.credentials.intercepts(host) => {
                return intercept_tls(client, buf, shared, injection, dst, host).await;
            }
            _ => {}
        }
    }
    let mut upstream = shared.connect(dst).await?;
    let first = shared.stage.first_bytes(&allowed, buf);
    upstream.write_all(&first).await?;
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, COPY_BUFFER, COPY_BUFFER)
        .await?;
    Ok(())
}

/// Terminates the guest's TLS to `host` with the workspace CA's leaf, connects to the
/// server over TLS verified for `host`, and relays request by request.
async fn intercept_tls(
    client: TcpStream,
    hello: Vec<u8>,
    shared: &Shared,
    injection: &Injection,
    dst: SocketAddrV4,
    host: &str,
) -> io::Result<()> {
    let tls_denial = |side, error: String| DenyReason::Intercept {
        host: host.to_owned(),
        side,
        error,
    };
    let acceptor = TlsAcceptor::from(injection.server.clone());
    let accepted = tokio::time::timeout(
        shared.head_timeout,
        acceptor.accept(Rewind::new(hello, client)),
    )
    .await;
    let guest = match accepted {
        Ok(Ok(guest)) => guest,
        Ok(Err(err)) => {
            shared.deny(Some(dst), tls_denial("guest", err.to_string()));
            return Ok(());
        }
        Err(_) => {
            shared.deny(Some(dst), DenyReason::Timeout);
            return Ok(());
        }
    };
    let Ok(name) = ServerName::try_from(host.to_owned()) else {
        shared.deny(
            Some(dst),
            tls_denial("upstream", "not a server name".into()),
        );
        return Ok(());
    };
    let connector = TlsConnector::from(injection.client.clone());
    let upstream = async {
        let tcp = shared.connect(dst).await.map_err(|_| None)?;
        tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| Some(tls_denial("upstream", "handshake timed out".into())))?
            .map_err(|err| Some(tls_denial("upstream", err.to_string())))
    };
    relay_requests(guest, Vec::new(), shared, dst, Some(host), upstream).await
}

/// The response to a blocked first request.
fn forbidden(reason: &DenyReason) -> Vec<u8> {
    let body = format!("pyro egress proxy: {reason}\n");
    format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Relays an HTTP/1.1 connection request by request through a [`Framer`]: `first` holds
/// bytes already read from the client; `upstream` connects once the first request is
/// checked (its error, if a denial, is recorded). A blocked first request is answered with
/// a `403`; a blocked later one closes both sides.
async fn relay_requests<C, U>(
    client: C,
    first: Vec<u8>,
    shared: &Shared,
    dst: SocketAddrV4,
    server_name: Option<&str>,
    upstream: impl Future<Output = Result<U, Option<DenyReason>>>,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let Some(injection) = &shared.injection else {
        return Ok(());
    };
    let ctx = http1::Context {
        credentials: &injection.credentials,
        allowlist: &shared.allowlist,
        server_name,
    };
    let counters = &shared.counters;
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let mut framer = Framer::new();
    let mut out = Vec::new();
    let mut pending = first;
    let mut chunk = vec![0u8; COPY_BUFFER];
    // The first request, checked before anything is sent upstream.
    let first_done = tokio::time::timeout(shared.head_timeout, async {
        loop {
            let fed = framer.feed(&pending, &ctx, &mut out)?;
            counters
                .injected
                .fetch_add(fed.injected_requests as u64, Ordering::Relaxed);
            if fed.requests > 0 || framer.is_opaque() {
                return Ok::<_, http1::FrameError>(true);
            }
            match client_rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return Ok(false),
                Ok(n) => pending = chunk[..n].to_vec(),
            }
        }
    })
    .await;
    match first_done {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Ok(()),
        Ok(Err(err)) => {
            let reason = DenyReason::from(err);
            let _ = client_wr.write_all(&forbidden(&reason)).await;
            let _ = client_wr.shutdown().await;
            shared.deny(Some(dst), reason);
            return Ok(());
        }
        Err(_) => {
            shared.deny(Some(dst), DenyReason::Timeout);
            return Ok(());
        }
    }
    let upstream = match upstream.await {
        Ok(upstream) => upstream,
        Err(reason) => {
            if let Some(reason) = reason {
                shared.deny(Some(dst), reason);
            }
            return Ok(());
        }
    };
    let (mut up_rd, mut up_wr) = tokio::io::split(upstream);
    up_wr.write_all(&out).await?;
    let requests = async {
        loop {
            let n = client_rd.read(&mut chunk).await?;
            if n == 0 {
                up_wr.shutdown().await?;
                return Ok::<_, io::Error>(());
            }
            out.clear();
            match framer.feed(&chunk[..n], &ctx, &mut out) {
                Ok(fed) => {
                    counters
                        .injected
                        .fetch_add(fed.injected_requests as u64, Ordering::Relaxed);
                }
                Err(err) => {
                    shared.deny(Some(dst), DenyReason::from(err));
                    return Err(io::Error::from(io::ErrorKind::PermissionDenied));
                }
            }
            up_wr.write_all(&out).await?;
        }
    };
    let responses = async {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = up_rd.read(&mut buf).await?;
            if n == 0 {
                client_wr.shutdown().await?;
                return Ok::<_, io::Error>(());
            }
            client_wr.write_all(&buf[..n]).await?;
        }
    };
    tokio::try_join!(requests, responses)?;
    Ok(())
}

/// A stream whose first reads return bytes already taken from it (the ClientHello the
/// proxy inspected), for the TLS acceptor.
struct Rewind<S> {
    replay: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(replay: Vec<u8>, inner: S) -> Self {
        Rewind {
            replay,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.replay.len() {
            let n = buf.remaining().min(self.replay.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.replay[at..at + n]);
            self.at += n;
            if self.at == self.replay.len() {
                self.replay = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
