//! `pyro-proto`: the wire protocol between the host and the guest agent.
//!
//! Three layers, bottom up:
//!
//! 1. [`frame`]: length-prefixed frames on any byte stream (vsock connection, virtio-serial
//!    port, Unix socket).
//! 2. [`session`]: a versioned handshake, then many concurrent [`Stream`]s multiplexed over the
//!    one byte stream, each with per-direction flow control, `End` and `Reset`.
//! 3. [`Message`]s on a stream (a kind byte plus a body), and the typed requests and results in
//!    [`api`]: one request per stream, then streamed output and a final typed result or error.
//!
//! The protocol never relies on socket half-close (lost replies were measured over
//! vhost-user vsock): the end of a direction is an explicit `End` frame.

pub mod api;
pub mod frame;
pub mod procs;
pub mod session;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

pub use session::{Config, Incoming, PeerInfo, RecvHalf, SendHalf, Session, Stream};

/// Version of the session protocol; both ends must announce the same one.
pub const PROTOCOL_VERSION: u16 = 1;

/// The vsock port the agent listens on (and the port named in `CONNECT <port>`).
pub const AGENT_PORT: u32 = 5005;

/// Name of the virtio-serial port the agent serves on when the VMM offers no vsock.
pub const SERIAL_PORT_NAME: &str = "org.pyro.agent.0";

/// Kind of a [`Message`]. A plain byte so that new kinds do not break old peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsgKind(pub u8);

impl MsgKind {
    /// A JSON request ([`api::Request`]); the first message of a stream.
    pub const REQUEST: MsgKind = MsgKind(1);
    /// A JSON success result; the last message before `End`.
    pub const RESPONSE: MsgKind = MsgKind(2);
    /// A JSON [`api::AgentError`]; the last message before `End`.
    pub const ERROR: MsgKind = MsgKind(3);
    /// Raw bytes of a process's standard output.
    pub const STDOUT: MsgKind = MsgKind(4);
    /// Raw bytes of a process's standard error.
    pub const STDERR: MsgKind = MsgKind(5);
    /// Raw bytes for a process's standard input.
    pub const STDIN: MsgKind = MsgKind(6);
    /// Raw bytes of a file or archive.
    pub const DATA: MsgKind = MsgKind(7);
    /// A JSON progress or state event.
    pub const EVENT: MsgKind = MsgKind(8);
    /// Asks the agent to cancel the request running on this stream.
    pub const CANCEL: MsgKind = MsgKind(9);
}

/// One message on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// What the body is.
    pub kind: MsgKind,
    /// The body; binary-safe.
    pub body: Bytes,
}

impl Message {
    /// A message with raw bytes.
    pub fn new(kind: MsgKind, body: impl Into<Bytes>) -> Self {
        Self {
            kind,
            body: body.into(),
        }
    }

    /// A message whose body is `value` as JSON.
    pub fn json<T: Serialize>(kind: MsgKind, value: &T) -> Result<Self, ProtoError> {
        let body = serde_json::to_vec(value).map_err(|source| ProtoError::Json { source })?;
        Ok(Self::new(kind, body))
    }

    /// Parses the body as JSON. The body is at most one frame ([`Message::MAX_BODY`] bytes),
    /// which bounds what parsing allocates; nesting deeper than `serde_json`'s recursion limit
    /// (128) is an error, not a stack overflow.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ProtoError> {
        serde_json::from_slice(&self.body).map_err(|source| ProtoError::Json { source })
    }

    /// Bytes this message occupies in a frame payload (and against the window).
    pub fn wire_len(&self) -> usize {
        1 + self.body.len()
    }

    /// Largest body that fits one frame with the default limits.
    pub const MAX_BODY: usize = frame::MAX_FRAME_PAYLOAD as usize - 1;

    pub(crate) fn encode_into(&self, dst: &mut BytesMut) {
        dst.put_u8(self.kind.0);
        dst.put_slice(&self.body);
    }

    /// Decodes the payload of a `Data` frame: a kind byte, then the body (which shares
    /// `payload`'s buffer, so nothing is copied or allocated). An empty payload is an error.
    pub fn decode(mut payload: Bytes) -> Result<Self, ProtoError> {
        if payload.is_empty() {
            return Err(ProtoError::Protocol {
                detail: "empty data frame".into(),
            });
        }
        let kind = MsgKind(payload.get_u8());
        Ok(Self {
            kind,
            body: payload,
        })
    }
}

/// Everything that can go wrong in the protocol layers.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Reading or writing the transport failed.
    #[error("transport I/O failed")]
    Io {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A frame could not be decoded.
    #[error("bad frame")]
    Frame(#[source] frame::FrameError),
    /// The peer is not speaking this protocol.
    #[error("the peer does not speak the pyro protocol (bad magic)")]
    BadMagic,
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The peer broke a protocol rule.
    #[error("protocol violation: {detail}")]
    Protocol {
        /// What went wrong.
        detail: String,
    },
    /// No hello arrived in time.
    #[error("no handshake from the peer within {after:?}")]
    HandshakeTimeout {
        /// How long we waited.
        after: Duration,
    },
    /// A wait ran out.
    #[error("timed out after {after:?}")]
    Timeout {
        /// How long we waited.
        after: Duration,
    },
    /// The session ended.
    #[error("session closed: {reason}")]
    SessionClosed {
        /// Why.
        reason: String,
    },
    /// The stream was aborted.
    #[error("stream reset: {reason}")]
    StreamReset {
        /// The reason given.
        reason: String,
    },
    /// A message does not fit in one frame.
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    MessageTooLarge {
        /// Message size on the wire.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A JSON body could not be encoded or decoded.
    #[error("invalid JSON message")]
    Json {
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

impl ProtoError {
    pub(crate) fn io(source: std::io::Error) -> Self {
        Self::Io { source }
    }
}

#[cfg(test)]
mod tests;
