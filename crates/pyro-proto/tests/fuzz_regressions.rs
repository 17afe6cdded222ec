//! Named regression inputs from fuzzing (`tests/fuzz.rs`): the minimal input of every case
//! that failed, kept as a plain test so it stays covered whatever happens to proptest's seed
//! file.
//!
//! No decoder has crashed under fuzzing so far (see `README-fuzz.md` for the campaigns). The
//! two failures the fuzzer did shrink were in the harness's allocation accounting (it counted
//! the error's text and its own output vector), fixed in the harness; their inputs sit on the
//! decoders' boundaries, so they are kept here with the behaviour they must keep.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{Bytes, BytesMut};
use pyro_proto::frame::{Decoder, Frame, FrameKind, HEADER_LEN};
use pyro_proto::{Config, Message, ProtoError, Session};
use tokio::io::{AsyncWriteExt, duplex};

/// Shrunk from `message_decoder_takes_arbitrary_payloads`: `payload = []`.
#[test]
fn empty_data_payload_is_a_typed_error() {
    let err = Message::decode(Bytes::new()).unwrap_err();
    assert!(
        matches!(&err, ProtoError::Protocol { detail } if detail.contains("empty data frame")),
        "{err:?}"
    );
}

/// Shrunk from `frame_decoder_takes_mutated_frames`: one empty `Hello` frame, cut into
/// one-byte chunks, under a frame limit of 0.
#[test]
fn empty_frame_under_a_zero_limit_decodes_byte_by_byte() {
    let mut wire = BytesMut::new();
    Frame::new(FrameKind::Hello, 0, Bytes::new()).encode(&mut wire);
    assert_eq!(wire.len(), HEADER_LEN);
    let dec = Decoder::new(0);
    let mut buf = BytesMut::new();
    for (i, b) in wire.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = dec.decode(&mut buf).unwrap();
        if i + 1 < HEADER_LEN {
            assert_eq!(got, None);
        } else {
            assert_eq!(got, Some(Frame::new(FrameKind::Hello, 0, Bytes::new())));
        }
    }
    assert!(buf.is_empty());
}

/// The same empty `Hello` as a session's first frame: a typed handshake error.
#[test]
fn empty_hello_is_a_handshake_error() {
    common::rt().block_on(async {
        let (a, mut b) = duplex(4096);
        b.write_all(&common::frame(FrameKind::Hello, 0, &[]))
            .await
            .unwrap();
        let err = Session::client(a, Config::default()).await.unwrap_err();
        assert!(
            matches!(&err, ProtoError::Protocol { detail } if detail.contains("hello")),
            "{err:?}"
        );
    });
}
