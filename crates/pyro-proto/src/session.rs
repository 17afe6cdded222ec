//! Sessions: many concurrent streams multiplexed over one byte stream, with flow control.
//!
//! A [`Session`] owns one transport (a vsock connection, a virtio-serial port, a Unix socket).
//! Both ends first exchange a `Hello` frame (magic, protocol version, window, frame limit),
//! then either end may [`Session::open`] streams. A stream carries [`Message`]s in both
//! directions; each direction ends with `End`, or the whole stream is aborted with `Reset`.
//!
//! Flow control is per stream and per direction: a sender may have at most the peer's window
//! of message bytes in flight; the receiver grants credit back as its application consumes
//! messages. A slow consumer therefore stalls only its own stream, never the session, and no
//! side buffers more than `window` bytes per stream.
//!
//! # Limits against a hostile peer
//!
//! The host treats everything the guest sends as hostile, so every buffer or queue whose size
//! the peer could drive has a bound; breaking one ends the session with a protocol error
//! (never a panic or an unbounded allocation):
//!
//! - one frame: [`Config::max_frame`] payload bytes, checked before it is buffered;
//! - message data queued for the application: the receive window per stream
//!   ([`Config::window`]); data beyond the granted credit, data after `End`, and a second
//!   `End` are protocol errors;
//! - frames queued in answer to the peer (pongs, refusals of streams it opens) and not yet
//!   written: [`MAX_PENDING_REPLIES`]; a peer that keeps asking without reading is cut off;
//! - credit grants: at most one pending `Window` frame per stream (grants coalesce while the
//!   transport is busy), however many messages the application consumes;
//! - ping payloads: [`MAX_PING_PAYLOAD`] bytes; reset reasons kept: [`MAX_RESET_REASON`];
//! - streams open at once: [`MAX_STREAMS`]; the peer's `Open` beyond it is refused;
//! - our own data queued towards the peer: its announced window, clamped to
//!   [`MAX_PEER_WINDOW`], per stream (credit the peer grants never exceeds that window).
//!
//! One bound is looser than the rest: each queued message costs about 64 bytes of
//! bookkeeping and header besides its body, so a peer sending one-byte messages to a stream
//! whose application does not read can make it hold some 32 times its window (32 MiB per
//! stream with the default 1 MiB window, measured). Tightening that needs a flow-control
//! change on both sides (charging a per-message overhead against the window).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::frame::{Decoder, Frame, FrameKind, HEADER_LEN, MAX_FRAME_PAYLOAD};
use crate::{Message, PROTOCOL_VERSION, ProtoError};

const MAGIC: &[u8; 4] = b"PYRO";
const HELLO_LEN: usize = 4 + 2 + 2 + 4 + 4;

/// Most payload bytes a `Ping` (and so the `Pong` answering it) may carry; ours carry 8. A
/// larger ping is a protocol error.
pub const MAX_PING_PAYLOAD: usize = 64;

/// Most frames a session keeps queued in answer to the peer (pongs, `Reset`s refusing streams
/// it opened) while its transport does not take them. A peer that keeps asking without
/// reading the answers past this is cut off with a protocol error.
pub const MAX_PENDING_REPLIES: usize = 1024;

/// Most streams open at once on one session (either side's); an `Open` from the peer beyond
/// it is refused with a `Reset`.
pub const MAX_STREAMS: usize = 1024;

/// Largest receive window of the peer this side honours: a larger announced window is
/// clamped to it, so a peer cannot make us queue more than this per stream towards it.
pub const MAX_PEER_WINDOW: u32 = 16 * 1024 * 1024;

/// Longest reason of a peer's `Reset` kept (longer ones are cut at a character boundary).
pub const MAX_RESET_REASON: usize = 1024;

/// Tunables of a session. Both ends may choose different values; each side honours the
/// window and frame size the *peer* announced.
#[derive(Clone, Debug)]
pub struct Config {
    /// Bytes of message data the peer may send on one stream before waiting for credit.
    pub window: u32,
    /// Largest frame payload we accept.
    pub max_frame: u32,
    /// How long to wait for the peer's `Hello`.
    pub handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window: 1024 * 1024,
            max_frame: MAX_FRAME_PAYLOAD,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What the peer announced in its `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's protocol version.
    pub version: u16,
    /// The peer's receive window per stream.
    pub window: u32,
    /// The largest frame payload the peer accepts.
    pub max_frame: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

enum Inbound {
    Msg(Message),
    End,
    Reset(String),
}

/// Send credit of one stream direction.
struct Credit {
    avail: Mutex<u64>,
    /// Most credit we can have: the peer's (clamped) window. A well-behaved peer never grants
    /// past it; a hostile one is not allowed to make us queue more.
    cap: u64,
    notify: Notify,
    dead: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Credit {
    fn new(initial: u32) -> Self {
        Self {
            avail: Mutex::new(u64::from(initial)),
            cap: u64::from(initial),
            notify: Notify::new(),
            dead: AtomicBool::new(false),
            reason: Mutex::new(None),
        }
    }

    fn grant(&self, amount: u64) {
        let mut avail = self.avail.lock().unwrap_or_else(|p| p.into_inner());
        *avail = avail.saturating_add(amount).min(self.cap);
        drop(avail);
        self.notify.notify_waiters();
    }

    fn kill(&self, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert_with(|| reason.to_string());
        }
        self.dead.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

struct Slot {
    tx: mpsc::UnboundedSender<Inbound>,
    credit: Arc<Credit>,
    /// How many more message bytes the peer may send us before we grant more.
    recv_budget: u64,
    /// Whether the peer ended its side (nothing more may arrive but a `Reset`).
    peer_ended: bool,
    /// Credit granted by the application and not yet taken by the writer; non-zero exactly
    /// while an [`Outbound::Grant`] for this stream is queued.
    grant_queued: u64,
}

impl Slot {
    fn new(tx: mpsc::UnboundedSender<Inbound>, credit: Arc<Credit>, window: u32) -> Self {
        Self {
            tx,
            credit,
            recv_budget: u64::from(window),
            peer_ended: false,
            grant_queued: 0,
        }
    }
}

/// What the writer task sends.
enum Outbound {
    /// A frame of our own.
    Frame(Frame),
    /// A frame in answer to the peer; counted in [`Shared::replies`] until written.
    Reply(Frame),
    /// Grant the credit accumulated in the stream's [`Slot::grant_queued`].
    Grant(u32),
}

struct State {
    streams: HashMap<u32, Slot>,
    next_id: u32,
    closed: Option<String>,
    accept_tx: Option<mpsc::UnboundedSender<Stream>>,
    pings: HashMap<u64, oneshot::Sender<()>>,
    next_ping: u64,
}

struct Shared {
    state: Mutex<State>,
    out: mpsc::UnboundedSender<Outbound>,
    /// Reply frames queued and not yet written (see [`MAX_PENDING_REPLIES`]).
    replies: AtomicUsize,
    peer: PeerInfo,
    /// The peer's window, clamped to [`MAX_PEER_WINDOW`]: our send credit per stream.
    send_window: u32,
    config: Config,
    closed_notify: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state itself stays consistent
        // because every critical section is a handful of map operations.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send_frame(&self, frame: Frame) -> Result<(), ProtoError> {
        self.out
            .send(Outbound::Frame(frame))
            .map_err(|_| ProtoError::SessionClosed {
                reason: self.close_reason(),
            })
    }

    /// Queues a frame answering the peer; an `Err` (the peer is not reading its answers) is a
    /// protocol violation.
    fn send_reply(&self, frame: Frame) -> Result<(), String> {
        if self.replies.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_REPLIES {
            self.replies.fetch_sub(1, Ordering::SeqCst);
            return Err(format!(
                "the peer does not read its answers ({MAX_PENDING_REPLIES} pongs or refusals \
                 pending)"
            ));
        }
        // A closed session drops the answer; the reader notices the end on its own.
        let _ = self.out.send(Outbound::Reply(frame));
        Ok(())
    }

    fn close_reason(&self) -> String {
        self.lock()
            .closed
            .clone()
            .unwrap_or_else(|| "session closed".to_string())
    }

    fn shut(&self, reason: &str) {
        // Tells the writer to finish: it writes this frame (if the transport still works) and
        // exits, releasing the transport.
        let _ = self.out.send(Outbound::Frame(Frame::new(
            FrameKind::GoAway,
            0,
            Bytes::new(),
        )));
        let slots: Vec<Slot> = {
            let mut st = self.lock();
            if st.closed.is_none() {
                st.closed = Some(reason.to_string());
            }
            st.accept_tx = None;
            st.pings.clear();
            st.streams.drain().map(|(_, s)| s).collect()
        };
        for slot in slots {
            slot.credit.kill(reason);
            // Dropping `slot.tx` makes the receiver see the session end.
        }
        self.closed_notify.notify_waiters();
    }
}

struct Inner {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.shut("session dropped");
        // The writer drains the GoAway before it notices the channel closing; the reader is
        // stopped at once so the transport is released.
        if let Some(reader) = self.tasks.first() {
            reader.abort();
        }
    }
}

/// One multiplexed session. Cheap to clone; the transport closes when the last clone and
/// every stream opened on it are dropped.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.inner.shared.peer)
            .finish_non_exhaustive()
    }
}

/// Streams opened by the peer, in order.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::UnboundedReceiver<Stream>,
    _session: Session,
}

impl Incoming {
    /// The next stream the peer opened; `None` once the session has ended.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.rx.recv().await
    }
}

impl Session {
    /// Performs the handshake as the connecting side and starts the session.
    pub async fn client<T>(io: T, config: Config) -> Result<Session, ProtoError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (session, _incoming) = Self::start(io, config, Role::Client).await?;
        Ok(session)
    }

    /// Performs the handshake as the serving side; streams the client opens arrive on the
    /// returned [`Incoming`].
    pub async fn server<T>(io: T, config: Config) -> Result<(Session, Incoming), ProtoError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::start(io, config, Role::Server).await
    }

    async fn start<T>(io: T, config: Config, role: Role) -> Result<(Session, Incoming), ProtoError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut hello = BytesMut::with_capacity(HELLO_LEN);
        hello.put_slice(MAGIC);
        hello.put_u16(PROTOCOL_VERSION);
        hello.put_u16(0);
        hello.put_u32(config.window);
        hello.put_u32(config.max_frame);
        let mut buf = BytesMut::new();
        Frame::new(FrameKind::Hello, 0, hello.freeze()).encode(&mut buf);
        wr.write_all(&buf).await.map_err(ProtoError::io)?;
        wr.flush().await.map_err(ProtoError::io)?;

        let decoder = Decoder::new(config.max_frame.max(HELLO_LEN as u32));
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let hello = tokio::time::timeout(config.handshake_timeout, async {
            loop {
                if let Some(frame) = decoder.decode(&mut rbuf).map_err(ProtoError::Frame)? {
                    return Ok::<Frame, ProtoError>(frame);
                }
                let n = rd.read_buf(&mut rbuf).await.map_err(ProtoError::io)?;
                if n == 0 {
                    return Err(ProtoError::SessionClosed {
                        reason: "peer closed the connection during the handshake".into(),
                    });
                }
            }
        })
        .await
        .map_err(|_| ProtoError::HandshakeTimeout {
            after: config.handshake_timeout,
        })??;
        let peer = parse_hello(&hello)?;
        let send_window = peer.window.min(MAX_PEER_WINDOW);

        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (accept_tx, accept_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                streams: HashMap::new(),
                next_id: if role == Role::Client { 1 } else { 2 },
                closed: None,
                accept_tx: if role == Role::Server {
                    Some(accept_tx)
                } else {
                    None
                },
                pings: HashMap::new(),
                next_ping: 0,
            }),
            out: out_tx,
            replies: AtomicUsize::new(0),
            peer,
            send_window,
            config: config.clone(),
            closed_notify: Notify::new(),
        });
        // `Incoming` must hold the session, and the reader needs to build `Stream`s that hold
        // it too; the reader therefore receives the `Session` through a oneshot once built.
        let (sess_tx, sess_rx) = oneshot::channel::<std::sync::Weak<Inner>>();
        let reader = tokio::spawn(reader_task(rd, rbuf, decoder, shared.clone(), sess_rx));
        let writer = tokio::spawn(writer_task(wr, out_rx, shared.clone()));
        let inner = Arc::new(Inner {
            shared,
            tasks: vec![reader, writer],
        });
        let _ = sess_tx.send(Arc::downgrade(&inner));
        let session = Session { inner };
        let incoming = Incoming {
            rx: accept_rx,
            _session: session.clone(),
        };
        Ok((session, incoming))
    }

    /// What the peer announced.
    pub fn peer(&self) -> PeerInfo {
        self.inner.shared.peer
    }

    /// Whether the session has ended (transport closed, protocol error, or dropped).
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().closed.is_some()
    }

    /// Resolves once the session has ended, with the reason.
    pub async fn closed(&self) -> String {
        loop {
            let notified = self.inner.shared.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.inner.shared.lock().closed.clone() {
                return reason;
            }
            notified.await;
        }
    }

    /// Opens a new stream. The peer learns of it with the first frame; data may follow at once.
    pub fn open(&self) -> Result<Stream, ProtoError> {
        let shared = &self.inner.shared;
        let (id, rx, credit) = {
            let mut st = shared.lock();
            if let Some(reason) = &st.closed {
                return Err(ProtoError::SessionClosed {
                    reason: reason.clone(),
                });
            }
            let id = st.next_id;
            st.next_id = st.next_id.wrapping_add(2);
            let (tx, rx) = mpsc::unbounded_channel();
            let credit = Arc::new(Credit::new(shared.send_window));
            st.streams
                .insert(id, Slot::new(tx, credit.clone(), shared.config.window));
            (id, rx, credit)
        };
        shared.send_frame(Frame::new(FrameKind::Open, id, Bytes::new()))?;
        Ok(Stream::new(self.clone(), id, rx, credit))
    }

    /// Round-trips a ping through the peer.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, ProtoError> {
        let shared = &self.inner.shared;
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = shared.lock();
            st.next_ping += 1;
            let id = st.next_ping;
            st.pings.insert(id, tx);
            id
        };
        let start = std::time::Instant::now();
        shared.send_frame(Frame::new(FrameKind::Ping, 0, id.to_be_bytes().to_vec()))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(_)) => Err(ProtoError::SessionClosed {
                reason: shared.close_reason(),
            }),
            Err(_) => Err(ProtoError::Timeout { after: timeout }),
        }
    }
}

fn parse_hello(frame: &Frame) -> Result<PeerInfo, ProtoError> {
    if frame.kind != FrameKind::Hello || frame.payload.len() < HELLO_LEN {
        return Err(ProtoError::Protocol {
            detail: "the peer did not start with a hello frame".into(),
        });
    }
    let mut p = frame.payload.clone();
    let mut magic = [0u8; 4];
    p.copy_to_slice(&mut magic);
    if &magic != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    let version = p.get_u16();
    let _flags = p.get_u16();
    let window = p.get_u32();
    let max_frame = p.get_u32();
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    // A peer window smaller than one full frame could never carry a maximal message.
    if window < 1024 || max_frame < 1024 {
        return Err(ProtoError::Protocol {
            detail: format!(
                "peer announced an unusable window ({window}) or frame size ({max_frame})"
            ),
        });
    }
    Ok(PeerInfo {
        version,
        window,
        max_frame,
    })
}

/// What the writer put into one batch.
#[derive(Default)]
struct Batch {
    replies: usize,
    goaway: bool,
}

/// Encodes one queued item into `buf`.
fn encode_outbound(item: Outbound, buf: &mut BytesMut, shared: &Shared, batch: &mut Batch) {
    match item {
        Outbound::Frame(frame) => {
            batch.goaway |= frame.kind == FrameKind::GoAway;
            frame.encode(buf);
        }
        Outbound::Reply(frame) => {
            batch.replies += 1;
            frame.encode(buf);
        }
        Outbound::Grant(id) => {
            let amount = shared
                .lock()
                .streams
                .get_mut(&id)
                .map_or(0, |slot| std::mem::take(&mut slot.grant_queued));
            if amount > 0 {
                // `grant_queued` is capped at `u32::MAX` where it accumulates.
                let amount = u32::try_from(amount).unwrap_or(u32::MAX);
                Frame::new(FrameKind::Window, id, amount.to_be_bytes().to_vec()).encode(buf);
            }
        }
    }
}

async fn writer_task<W: AsyncWrite>(
    wr: W,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    shared: Arc<Shared>,
) {
    tokio::pin!(wr);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(item) = rx.recv().await {
        let mut batch = Batch::default();
        encode_outbound(item, &mut buf, &shared, &mut batch);
        // Batch whatever else is queued into the same write.
        while buf.len() < 256 * 1024 && !batch.goaway {
            match rx.try_recv() {
                Ok(item) => encode_outbound(item, &mut buf, &shared, &mut batch),
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            if let Err(e) = wr.write_all(&buf).await {
                shared.shut(&format!("write failed: {e}"));
                return;
            }
            buf.clear();
            if let Err(e) = wr.flush().await {
                shared.shut(&format!("flush failed: {e}"));
                return;
            }
        }
        shared.replies.fetch_sub(batch.replies, Ordering::SeqCst);
        if batch.goaway {
            let _ = wr.shutdown().await;
            return;
        }
    }
    let _ = wr.shutdown().await;
}

async fn reader_task<R: AsyncRead>(
    rd: R,
    mut buf: BytesMut,
    decoder: Decoder,
    shared: Arc<Shared>,
    session: oneshot::Receiver<std::sync::Weak<Inner>>,
) {
    let Ok(session) = session.await else {
        return;
    };
    tokio::pin!(rd);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Err(reason) = dispatch(&shared, &session, frame) {
                        shared.shut(&reason);
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    shared.shut(&format!("protocol error: {e}"));
                    return;
                }
            }
        }
        if buf.capacity() - buf.len() < HEADER_LEN {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                shared.shut("the peer closed the connection");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                shared.shut(&format!("read failed: {e}"));
                return;
            }
        }
    }
}

/// Handles one inbound frame. An `Err` is a protocol violation that ends the session.
fn dispatch(
    shared: &Arc<Shared>,
    session: &std::sync::Weak<Inner>,
    frame: Frame,
) -> Result<(), String> {
    match frame.kind {
        FrameKind::Hello => Err("unexpected second hello".into()),
        FrameKind::Open => {
            let id = frame.stream;
            let mut st = shared.lock();
            let Some(accept) = st.accept_tx.clone() else {
                drop(st);
                return shared.send_reply(Frame::new(
                    FrameKind::Reset,
                    id,
                    Bytes::from_static(b"this side accepts no streams"),
                ));
            };
            // The client (the only side that accepts no streams) opens odd ids; even ones
            // are this side's.
            if id.is_multiple_of(2) {
                return Err(format!("peer opened stream {id}, an id of this side"));
            }
            if st.streams.contains_key(&id) {
                return Err(format!("peer reopened stream {id}"));
            }
            if st.streams.len() >= MAX_STREAMS {
                drop(st);
                return shared.send_reply(Frame::new(
                    FrameKind::Reset,
                    id,
                    Bytes::from(format!("too many streams (at most {MAX_STREAMS} at once)")),
                ));
            }
            let Some(inner) = session.upgrade() else {
                return Ok(());
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let credit = Arc::new(Credit::new(shared.send_window));
            st.streams
                .insert(id, Slot::new(tx, credit.clone(), shared.config.window));
            drop(st);
            let stream = Stream::new(Session { inner }, id, rx, credit);
            let _ = accept.send(stream);
            Ok(())
        }
        FrameKind::Data => {
            let mut st = shared.lock();
            let Some(slot) = st.streams.get_mut(&frame.stream) else {
                // The stream was dropped locally; late data is discarded.
                return Ok(());
            };
            if slot.peer_ended {
                return Err(format!(
                    "peer sent data on stream {} after ending it",
                    frame.stream
                ));
            }
            let len = frame.payload.len() as u64;
            if len > slot.recv_budget {
                return Err(format!(
                    "peer overran the flow-control window on stream {}",
                    frame.stream
                ));
            }
            slot.recv_budget -= len;
            let msg = Message::decode(frame.payload).map_err(|e| e.to_string())?;
            let _ = slot.tx.send(Inbound::Msg(msg));
            Ok(())
        }
        FrameKind::Window => {
            if frame.payload.len() != 4 {
                return Err("malformed window frame".into());
            }
            let mut p = frame.payload;
            let grant = u64::from(p.get_u32());
            let credit = shared
                .lock()
                .streams
                .get(&frame.stream)
                .map(|slot| slot.credit.clone());
            if let Some(credit) = credit {
                credit.grant(grant);
            }
            Ok(())
        }
        FrameKind::End => {
            let mut st = shared.lock();
            if let Some(slot) = st.streams.get_mut(&frame.stream) {
                if slot.peer_ended {
                    return Err(format!("peer ended stream {} twice", frame.stream));
                }
                slot.peer_ended = true;
                let _ = slot.tx.send(Inbound::End);
            }
            Ok(())
        }
        FrameKind::Reset => {
            let reason = reset_reason(&frame.payload);
            let slot = shared.lock().streams.remove(&frame.stream);
            if let Some(slot) = slot {
                slot.credit.kill(&reason);
                let _ = slot.tx.send(Inbound::Reset(reason));
            }
            Ok(())
        }
        FrameKind::Ping => {
            if frame.payload.len() > MAX_PING_PAYLOAD {
                return Err(format!(
                    "ping of {} bytes exceeds the limit of {MAX_PING_PAYLOAD} bytes",
                    frame.payload.len()
                ));
            }
            shared.send_reply(Frame::new(FrameKind::Pong, 0, frame.payload))
        }
        FrameKind::Pong => {
            if frame.payload.len() == 8 {
                let mut p = frame.payload;
                let id = p.get_u64();
                if let Some(tx) = shared.lock().pings.remove(&id) {
                    let _ = tx.send(());
                }
            }
            Ok(())
        }
        FrameKind::GoAway => Err("the peer closed the session".into()),
    }
}

/// The reason of a peer's `Reset`, lossily decoded and cut to [`MAX_RESET_REASON`] bytes.
fn reset_reason(payload: &[u8]) -> String {
    let mut reason =
        String::from_utf8_lossy(&payload[..payload.len().min(MAX_RESET_REASON)]).into_owned();
    if reason.len() > MAX_RESET_REASON {
        // Lossy decoding can grow the text (a cut character becomes U+FFFD).
        let mut end = MAX_RESET_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

struct StreamCore {
    session: Session,
    id: u32,
    sent_end: AtomicBool,
    recv_end: AtomicBool,
}

impl Drop for StreamCore {
    fn drop(&mut self) {
        let shared = &self.session.inner.shared;
        let removed = shared.lock().streams.remove(&self.id);
        let complete = self.sent_end.load(Ordering::SeqCst) && self.recv_end.load(Ordering::SeqCst);
        if removed.is_some() && !complete {
            let _ = shared.send_frame(Frame::new(
                FrameKind::Reset,
                self.id,
                Bytes::from_static(b"stream dropped"),
            ));
        }
    }
}

/// One bidirectional stream of messages.
pub struct Stream {
    send: SendHalf,
    recv: RecvHalf,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.send.core.id)
            .finish()
    }
}

/// The sending side of a [`Stream`].
pub struct SendHalf {
    core: Arc<StreamCore>,
    credit: Arc<Credit>,
}

impl std::fmt::Debug for SendHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendHalf")
            .field("id", &self.core.id)
            .finish()
    }
}

/// The receiving side of a [`Stream`].
pub struct RecvHalf {
    core: Arc<StreamCore>,
    rx: mpsc::UnboundedReceiver<Inbound>,
    consumed: u64,
}

impl std::fmt::Debug for RecvHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvHalf")
            .field("id", &self.core.id)
            .finish()
    }
}

impl Stream {
    fn new(
        session: Session,
        id: u32,
        rx: mpsc::UnboundedReceiver<Inbound>,
        credit: Arc<Credit>,
    ) -> Self {
        let core = Arc::new(StreamCore {
            session,
            id,
            sent_end: AtomicBool::new(false),
            recv_end: AtomicBool::new(false),
        });
        Self {
            send: SendHalf {
                core: core.clone(),
                credit,
            },
            recv: RecvHalf {
                core,
                rx,
                consumed: 0,
            },
        }
    }

    /// The stream id (odd: opened by the client, even: by the server).
    pub fn id(&self) -> u32 {
        self.send.core.id
    }

    /// Sends one message, waiting for flow-control credit if needed.
    pub async fn send(&mut self, msg: Message) -> Result<(), ProtoError> {
        self.send.send(msg).await
    }

    /// Receives the next message; `Ok(None)` once the peer has ended its side.
    pub async fn recv(&mut self) -> Result<Option<Message>, ProtoError> {
        self.recv.recv().await
    }

    /// Ends our sending side.
    pub fn finish(&mut self) -> Result<(), ProtoError> {
        self.send.finish()
    }

    /// Splits into halves usable from different tasks.
    pub fn split(self) -> (SendHalf, RecvHalf) {
        (self.send, self.recv)
    }
}

impl SendHalf {
    /// Sends one message, waiting for flow-control credit if needed.
    pub async fn send(&mut self, msg: Message) -> Result<(), ProtoError> {
        let shared = self.core.session.inner.shared.clone();
        let need = msg.wire_len() as u64;
        let max = u64::from(
            shared
                .peer
                .max_frame
                .min(shared.config.max_frame)
                .min(shared.send_window),
        );
        if need > max {
            return Err(ProtoError::MessageTooLarge { len: need, max });
        }
        if self.core.sent_end.load(Ordering::SeqCst) {
            return Err(ProtoError::Protocol {
                detail: "send after finish".into(),
            });
        }
        loop {
            let notified = self.credit.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.credit.dead.load(Ordering::SeqCst) {
                return Err(self.dead_error());
            }
            {
                let mut avail = self.credit.avail.lock().unwrap_or_else(|p| p.into_inner());
                if *avail >= need {
                    *avail -= need;
                    break;
                }
            }
            notified.await;
        }
        let mut payload = BytesMut::with_capacity(need as usize);
        msg.encode_into(&mut payload);
        shared.send_frame(Frame::new(FrameKind::Data, self.core.id, payload.freeze()))
    }

    fn dead_error(&self) -> ProtoError {
        let reason = self
            .credit
            .reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "stream reset".into());
        ProtoError::StreamReset { reason }
    }

    /// Ends our sending side. Idempotent.
    pub fn finish(&mut self) -> Result<(), ProtoError> {
        if self.core.sent_end.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.core.session.inner.shared.send_frame(Frame::new(
            FrameKind::End,
            self.core.id,
            Bytes::new(),
        ))
    }

    /// Waits until the stream can no longer send: the peer reset it, or the session ended.
    /// The reason. A relay watches this while it waits for the other side, so that a
    /// client's reset reaches the agent even when nothing flows (a silent command).
    pub async fn stopped(&self) -> String {
        loop {
            let notified = self.credit.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.credit.dead.load(Ordering::SeqCst) {
                return match self.dead_error() {
                    ProtoError::StreamReset { reason } => reason,
                    other => other.to_string(),
                };
            }
            notified.await;
        }
    }

    /// Aborts the whole stream with a reason the peer sees.
    pub fn reset(self, reason: &str) {
        let shared = &self.core.session.inner.shared;
        if shared.lock().streams.remove(&self.core.id).is_some() {
            let _ = shared.send_frame(Frame::new(
                FrameKind::Reset,
                self.core.id,
                Bytes::copy_from_slice(reason.as_bytes()),
            ));
        }
        self.credit.kill(reason);
    }
}

impl RecvHalf {
    /// Receives the next message; `Ok(None)` once the peer has ended its side.
    pub async fn recv(&mut self) -> Result<Option<Message>, ProtoError> {
        match self.rx.recv().await {
            Some(Inbound::Msg(msg)) => {
                self.consumed += msg.wire_len() as u64;
                let shared = &self.core.session.inner.shared;
                let window = u64::from(shared.config.window);
                // Grant in batches, but always once everything delivered so far has been
                // consumed: otherwise a sender waiting for room for a large message could
                // wait forever on a small, un-granted remainder.
                if self.consumed >= window / 4 || self.rx.is_empty() {
                    let grant = self.consumed;
                    self.consumed = 0;
                    // Grants coalesce: while one is queued (the transport is busy, or the peer
                    // does not read), later ones add to it instead of queueing more frames.
                    let queue = {
                        let mut st = shared.lock();
                        match st.streams.get_mut(&self.core.id) {
                            Some(slot) => {
                                slot.recv_budget += grant;
                                let first = slot.grant_queued == 0;
                                slot.grant_queued = slot
                                    .grant_queued
                                    .saturating_add(grant)
                                    .min(u64::from(u32::MAX));
                                first
                            }
                            None => false,
                        }
                    };
                    if queue {
                        let _ = shared.out.send(Outbound::Grant(self.core.id));
                    }
                }
                Ok(Some(msg))
            }
            Some(Inbound::End) => {
                self.core.recv_end.store(true, Ordering::SeqCst);
                Ok(None)
            }
            Some(Inbound::Reset(reason)) => Err(ProtoError::StreamReset { reason }),
            None => Err(ProtoError::SessionClosed {
                reason: self.core.session.inner.shared.close_reason(),
            }),
        }
    }
}
