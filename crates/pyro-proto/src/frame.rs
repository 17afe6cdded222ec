//! The frame layer: the unit that crosses the byte stream between host and agent.
//!
//! Every frame is a 9-byte header followed by `len` payload bytes:
//!
//! ```text
//! +--------+----------------+----------------+-----------------+
//! | kind:1 | stream:4 (BE)  | len:4 (BE)     | payload: len    |
//! +--------+----------------+----------------+-----------------+
//! ```
//!
//! Frames never depend on message boundaries of the transport: a decoder fed any split of the
//! byte stream yields the same frames (see the property tests).
//!
//! The peer is not trusted: the only number it controls here is `len`, and it is checked
//! against the decoder's limit ([`MAX_FRAME_PAYLOAD`] by default) before a single payload byte
//! is buffered, so a decoder never holds more than `HEADER_LEN + limit` bytes for one frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 9;

/// Largest payload this implementation sends or accepts in one frame.
pub const MAX_FRAME_PAYLOAD: u32 = 256 * 1024;

/// What a frame means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Handshake; sent once by each side on stream 0 before anything else.
    Hello = 0,
    /// Opens a new stream (the id is chosen by the opener).
    Open = 1,
    /// One message on a stream; counts against the stream's flow-control window.
    Data = 2,
    /// Grants the peer more send credit on a stream (payload: u32 BE bytes).
    Window = 3,
    /// The sender will send nothing more on this stream.
    End = 4,
    /// Aborts a stream in both directions (payload: UTF-8 reason).
    Reset = 5,
    /// Liveness probe on stream 0 (payload echoed in the pong).
    Ping = 6,
    /// Answer to a ping.
    Pong = 7,
    /// The sender is closing the session.
    GoAway = 8,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Hello,
            1 => Self::Open,
            2 => Self::Data,
            3 => Self::Window,
            4 => Self::End,
            5 => Self::Reset,
            6 => Self::Ping,
            7 => Self::Pong,
            8 => Self::GoAway,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the frame means.
    pub kind: FrameKind,
    /// The stream it belongs to (0 for session-level frames).
    pub stream: u32,
    /// The payload bytes.
    pub payload: Bytes,
}

impl Frame {
    /// Builds a frame.
    pub fn new(kind: FrameKind, stream: u32, payload: impl Into<Bytes>) -> Self {
        Self {
            kind,
            stream,
            payload: payload.into(),
        }
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(HEADER_LEN + self.payload.len());
        dst.put_u8(self.kind as u8);
        dst.put_u32(self.stream);
        // Payloads are bounded by MAX_FRAME_PAYLOAD at every construction site that takes
        // input sizes (messages are checked in `Stream::send`).
        dst.put_u32(self.payload.len() as u32);
        dst.put_slice(&self.payload);
    }
}

/// Errors of the frame layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The kind byte is not one this version knows.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// The byte received.
        kind: u8,
    },
    /// The declared payload is larger than allowed.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared length.
        len: u32,
        /// Limit in force.
        max: u32,
    },
}

/// Incremental frame decoder over a byte buffer.
#[derive(Debug)]
pub struct Decoder {
    max_payload: u32,
}

impl Decoder {
    /// A decoder accepting payloads up to `max_payload` bytes.
    pub fn new(max_payload: u32) -> Self {
        Self { max_payload }
    }

    /// Takes one complete frame off the front of `src`, if there is one.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind_byte = src[0];
        let kind =
            FrameKind::from_u8(kind_byte).ok_or(FrameError::UnknownKind { kind: kind_byte })?;
        let stream = u32::from_be_bytes([src[1], src[2], src[3], src[4]]);
        let len = u32::from_be_bytes([src[5], src[6], src[7], src[8]]);
        let too_large = FrameError::TooLarge {
            len,
            max: self.max_payload,
        };
        if len > self.max_payload {
            return Err(too_large);
        }
        // Only reachable on targets where `usize` is narrower than the limit.
        let Some(total) = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(HEADER_LEN))
        else {
            return Err(too_large);
        };
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(total - HEADER_LEN).freeze();
        Ok(Some(Frame {
            kind,
            stream,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind_strategy() -> impl Strategy<Value = FrameKind> {
        (0u8..=8).prop_map(|k| FrameKind::from_u8(k).unwrap_or(FrameKind::Data))
    }

    proptest! {
        /// Any sequence of frames, cut into arbitrary chunks, decodes back to itself.
        #[test]
        fn frames_survive_any_chunking(
            frames in proptest::collection::vec(
                (kind_strategy(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)),
                0..20,
            ),
            cuts in proptest::collection::vec(1usize..64, 1..50),
        ) {
            let frames: Vec<Frame> = frames
                .into_iter()
                .map(|(k, s, p)| Frame::new(k, s, p))
                .collect();
            let mut wire = BytesMut::new();
            for f in &frames {
                f.encode(&mut wire);
            }
            let wire = wire.freeze();
            let dec = Decoder::new(MAX_FRAME_PAYLOAD);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < wire.len() {
                let n = cuts[i % cuts.len()].min(wire.len() - pos);
                buf.extend_from_slice(&wire[pos..pos + n]);
                pos += n;
                i += 1;
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    out.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(out, frames);
        }
    }

    #[test]
    fn rejects_unknown_kind() {
        let mut buf = BytesMut::from(&[42u8, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(
            Decoder::new(16).decode(&mut buf),
            Err(FrameError::UnknownKind { kind: 42 })
        );
    }

    #[test]
    fn rejects_oversized_payload_before_buffering_it() {
        let mut buf = BytesMut::new();
        Frame::new(FrameKind::Data, 1, vec![0u8; 17]).encode(&mut buf);
        buf.truncate(HEADER_LEN);
        assert_eq!(
            Decoder::new(16).decode(&mut buf),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
    }

    #[test]
    fn declared_length_reserves_at_most_one_frame() {
        // A header declaring the largest allowed payload reserves room for it, no more.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[2u8, 0, 0, 0, 1]);
        buf.extend_from_slice(&MAX_FRAME_PAYLOAD.to_be_bytes());
        assert_eq!(Decoder::new(MAX_FRAME_PAYLOAD).decode(&mut buf), Ok(None));
        assert!(buf.capacity() <= 2 * (HEADER_LEN + MAX_FRAME_PAYLOAD as usize));
        // One byte more is refused without reserving anything.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[2u8, 0, 0, 0, 1]);
        buf.extend_from_slice(&(MAX_FRAME_PAYLOAD + 1).to_be_bytes());
        let cap = buf.capacity();
        assert_eq!(
            Decoder::new(MAX_FRAME_PAYLOAD).decode(&mut buf),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_PAYLOAD + 1,
                max: MAX_FRAME_PAYLOAD
            })
        );
        assert_eq!(buf.capacity(), cap);
        let mut buf = BytesMut::from(&[2u8, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            Decoder::new(MAX_FRAME_PAYLOAD).decode(&mut buf),
            Err(FrameError::TooLarge { len: u32::MAX, .. })
        ));
    }

    #[test]
    fn partial_header_waits() {
        let mut buf = BytesMut::from(&[2u8, 0, 0][..]);
        assert_eq!(Decoder::new(16).decode(&mut buf), Ok(None));
        assert_eq!(buf.len(), 3);
    }
}
