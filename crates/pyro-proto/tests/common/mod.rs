//! Helpers shared by the integration tests: a raw, hand-driven peer that speaks (or abuses)
//! the frame protocol, so the tests can play a hostile guest or host.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pyro_proto::frame::{Decoder, Frame, FrameKind, MAX_FRAME_PAYLOAD};
use pyro_proto::{Config, Incoming, Session};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};

/// How long a test waits for something that must happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The payload of a hello frame.
pub fn hello_payload(version: u16, window: u32, max_frame: u32) -> BytesMut {
    let mut p = BytesMut::new();
    p.extend_from_slice(b"PYRO");
    p.put_u16(version);
    p.put_u16(0);
    p.put_u32(window);
    p.put_u32(max_frame);
    p
}

/// An encoded hello frame announcing `window` and the default frame limit.
pub fn hello(window: u32) -> Vec<u8> {
    frame(
        FrameKind::Hello,
        0,
        &hello_payload(pyro_proto::PROTOCOL_VERSION, window, MAX_FRAME_PAYLOAD),
    )
}

/// One encoded frame.
pub fn frame(kind: FrameKind, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    Frame::new(kind, stream, payload.to_vec()).encode(&mut buf);
    buf.to_vec()
}

/// A frame header declaring `len` payload bytes, with no payload.
pub fn header(kind: u8, stream: u32, len: u32) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// A `Data` frame carrying one message.
pub fn data(stream: u32, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![kind];
    p.extend_from_slice(body);
    frame(FrameKind::Data, stream, &p)
}

/// The raw end of a connection.
pub struct RawPeer<T> {
    pub io: T,
    buf: BytesMut,
    dec: Decoder,
}

impl<T: AsyncRead + AsyncWrite + Unpin> RawPeer<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            dec: Decoder::new(MAX_FRAME_PAYLOAD),
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next frame the session sent; `None` at the end of the connection.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let n = self.io.read_buf(&mut self.buf).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// The next frame of `kind`, skipping others.
    pub async fn read_kind(&mut self, kind: FrameKind) -> Option<Frame> {
        loop {
            let f = self.read_frame().await?;
            if f.kind == kind {
                return Some(f);
            }
        }
    }
}

/// A host-side (client) session whose peer is a raw end announcing `window`; the session's
/// hello has been read off the raw end.
pub async fn client_with_raw_peer(
    pipe: usize,
    window: u32,
    cfg: Config,
) -> (Session, RawPeer<DuplexStream>) {
    let (a, b) = duplex(pipe);
    let client = tokio::spawn(Session::client(a, cfg));
    let mut raw = RawPeer::new(b);
    raw.send(&hello(window)).await;
    let session = client.await.unwrap().unwrap();
    assert_eq!(raw.read_frame().await.unwrap().kind, FrameKind::Hello);
    (session, raw)
}

/// An agent-side (server) session whose peer is a raw end.
pub async fn server_with_raw_peer(
    pipe: usize,
    window: u32,
) -> (Session, Incoming, RawPeer<DuplexStream>) {
    let (a, b) = duplex(pipe);
    let server = tokio::spawn(Session::server(a, Config::default()));
    let mut raw = RawPeer::new(b);
    raw.send(&hello(window)).await;
    let (session, incoming) = server.await.unwrap().unwrap();
    assert_eq!(raw.read_frame().await.unwrap().kind, FrameKind::Hello);
    (session, incoming, raw)
}

/// Waits for the session to end and returns why.
pub async fn closed_reason(session: &Session) -> String {
    tokio::time::timeout(PATIENCE, session.closed())
        .await
        .expect("the session did not end")
}

/// A multi-threaded runtime for one test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
