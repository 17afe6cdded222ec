//! Fuzzing on stable Rust: property tests that throw hostile input at every decoder the host
//! runs on bytes from the guest (and the agent on bytes from the host).
//!
//! Targets:
//!
//! - the frame decoder, on arbitrary bytes and on valid frame streams with flipped bytes,
//!   truncations, huge or wrong length fields, wrong kinds and duplicated ranges, cut into
//!   arbitrary chunks;
//! - the message decoder (`Message::decode`), on arbitrary payloads;
//! - the JSON decoders of every request and reply type, on arbitrary bytes and on valid
//!   encodings with flipped bytes, truncations, wrong-typed values, huge numbers, deep
//!   nesting, long strings, removed and duplicated fields;
//! - a whole [`Session`] (host side and agent side) whose peer sends arbitrary hellos and
//!   frame sequences, garbage, then hangs up;
//! - the client calls of `api` (`call`, `exec`, `read_file`, `list_files`, `export_tar`)
//!   against a hostile agent answering with arbitrary message sequences.
//!
//! Each case asserts that nothing panics (spawned tasks included: a panic hook counts them),
//! that the decoder returns a value or an error, that a session ends cleanly once the peer
//! hangs up, and that no single allocation (nor, for the session cases, the peak of live
//! memory) exceeds a bound derived from the documented limits. A counting global allocator
//! measures this per thread.
//!
//! # Budget
//!
//! Without `PROPTEST_CASES`, the pure decoder targets run 1024 cases each and the session
//! and call targets 512 (each of those starts a runtime and a session per case): the whole
//! file takes about 7 s in a debug build on two busy cores, inside the 20 s budget of the
//! ordinary `cargo test -p pyro-proto`. `PROPTEST_CASES=<n>` sets every target to `n` cases;
//! for a longer campaign build in release:
//!
//! ```text
//! PROPTEST_CASES=200000 cargo test -p pyro-proto --release --test fuzz
//! ```
//!
//! (200,000 cases per target took 203 s on two cores, nearly all of it in the session and
//! call targets; see `README-fuzz.md`). `PROPTEST_RNG_SEED=<n>` makes a run reproducible. A failing case
//! is shrunk and its seed saved in `tests/fuzz.proptest-regressions`; fix the bug and keep
//! the minimal input as a named test in `tests/fuzz_regressions.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Once;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use pyro_proto::api::{self, Request};
use pyro_proto::frame::{Decoder, Frame, FrameKind, HEADER_LEN, MAX_FRAME_PAYLOAD};
use pyro_proto::{Config, Message, MsgKind, PROTOCOL_VERSION, Session, Stream};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

// ---------------------------------------------------------------------------------------------
// Measuring allocations and panics.

/// The system allocator, noting sizes while the current thread measures.
struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(grow: isize, size: usize) {
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            LARGEST.with(|l| l.set(l.get().max(size)));
            LIVE.with(|live| {
                let now = live.get() + grow;
                live.set(now);
                PEAK.with(|p| p.set(p.get().max(now)));
            });
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; `note`
// only touches const-initialised thread-local cells (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize, layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize, layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize), 0);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize, new_size);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What one measured closure allocated on this thread.
#[derive(Debug, Clone, Copy)]
struct Allocs {
    /// The largest single allocation (or reallocation), bytes.
    largest: usize,
    /// The peak of bytes allocated and not yet freed, relative to the start.
    peak: usize,
}

fn measure<R>(f: impl FnOnce() -> R) -> (R, Allocs) {
    LARGEST.with(|l| l.set(0));
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    MEASURING.with(|m| m.set(true));
    let r = f();
    MEASURING.with(|m| m.set(false));
    let allocs = Allocs {
        largest: LARGEST.with(Cell::get),
        peak: PEAK.with(Cell::get).max(0) as usize,
    };
    (r, allocs)
}

thread_local! {
    /// Panics seen on this thread: the session cases run every task on their own thread
    /// (a current-thread runtime), so this counts the panics of spawned tasks too.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f`, returning how many panics happened on this thread meanwhile.
fn panics_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICS.try_with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
    let before = PANICS.with(Cell::get);
    let r = f();
    (r, PANICS.with(Cell::get) - before)
}

/// Cases per target: `PROPTEST_CASES` when set, else `default`.
fn config(default: u32) -> ProptestConfig {
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default().cases
    } else {
        default
    };
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Cases of the cheap, pure decoder targets.
const CHEAP: u32 = 1024;
/// Cases of the targets that run a session per case.
const SESSION: u32 = 512;

// ---------------------------------------------------------------------------------------------
// Frames.

/// Feeds `wire` to a decoder in `cuts`-sized chunks, the way the session reader does: frames
/// until the first error. Returns the frames and whether it ended in an error.
fn decode_all(wire: &[u8], cuts: &[usize], max: u32) -> (Vec<Frame>, bool) {
    // Room for every frame the input can hold, reserved before measuring, so that only the
    // decoder's own allocations are measured.
    let mut out = Vec::with_capacity(wire.len() / HEADER_LEN + 1);
    let (failed, allocs) = measure(|| decode_into(wire, cuts, max, &mut out));
    LAST_DECODE.with(|l| l.set(Some(allocs)));
    (out, failed)
}

thread_local! {
    /// What the last `decode_all` allocated.
    static LAST_DECODE: Cell<Option<Allocs>> = const { Cell::new(None) };
}

fn last_decode_allocs() -> Allocs {
    LAST_DECODE.with(|l| l.take()).expect("decode_all ran")
}

fn decode_into(wire: &[u8], cuts: &[usize], max: u32, out: &mut Vec<Frame>) -> bool {
    let dec = Decoder::new(max);
    let mut buf = BytesMut::new();
    let (mut pos, mut i) = (0, 0);
    while pos < wire.len() {
        let n = cuts[i % cuts.len()].min(wire.len() - pos);
        buf.extend_from_slice(&wire[pos..pos + n]);
        pos += n;
        i += 1;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(_) => return true,
            }
        }
    }
    false
}

/// The most one decoding run may allocate at once: the buffered input and one frame, doubled
/// for `BytesMut`'s growth.
fn frame_alloc_bound(input: usize, max: u32) -> usize {
    2 * (input + HEADER_LEN + max as usize) + 64
}

#[derive(Clone, Debug)]
enum FrameMutation {
    Flip(Index, u8),
    Truncate(Index),
    /// Overwrite the length field of one frame.
    SetLen(Index, u32),
    /// Overwrite the kind byte of one frame.
    SetKind(Index, u8),
    /// Copy a range of the encoding right after itself.
    Duplicate(Index, Index),
    Insert(Index, Vec<u8>),
}

fn frame_mutation() -> impl Strategy<Value = FrameMutation> {
    let len = prop_oneof![
        Just(u32::MAX),
        Just(MAX_FRAME_PAYLOAD + 1),
        Just(MAX_FRAME_PAYLOAD),
        Just(0u32),
        any::<u32>(),
        0u32..64,
    ];
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, b)| FrameMutation::Flip(i, b)),
        any::<Index>().prop_map(FrameMutation::Truncate),
        (any::<Index>(), len).prop_map(|(i, l)| FrameMutation::SetLen(i, l)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, k)| FrameMutation::SetKind(i, k)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| FrameMutation::Duplicate(a, b)),
        (
            any::<Index>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, v)| FrameMutation::Insert(i, v)),
    ]
}

fn apply_frame_mutation(wire: &mut Vec<u8>, starts: &[usize], m: &FrameMutation) {
    if wire.is_empty() {
        return;
    }
    match m {
        FrameMutation::Flip(i, b) => {
            let at = i.index(wire.len());
            wire[at] ^= b;
        }
        FrameMutation::Truncate(i) => wire.truncate(i.index(wire.len())),
        FrameMutation::SetLen(i, len) => {
            let at = starts[i.index(starts.len())] + 5;
            if at + 4 <= wire.len() {
                wire[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
        FrameMutation::SetKind(i, k) => {
            let at = starts[i.index(starts.len())];
            if at < wire.len() {
                wire[at] = *k;
            }
        }
        FrameMutation::Duplicate(a, b) => {
            let (x, y) = (a.index(wire.len()), b.index(wire.len()));
            let (from, to) = (x.min(y), x.max(y) + 1);
            let copy = wire[from..to].to_vec();
            wire.splice(to..to, copy);
        }
        FrameMutation::Insert(i, bytes) => {
            let at = i.index(wire.len() + 1);
            wire.splice(at..at, bytes.iter().copied());
        }
    }
}

fn frames_strategy() -> impl Strategy<Value = Vec<Frame>> {
    proptest::collection::vec(
        (
            0u8..=8,
            prop_oneof![Just(0u32), Just(1), Just(2), any::<u32>()],
            proptest::collection::vec(any::<u8>(), 0..300),
        ),
        1..8,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(k, s, p)| Frame::new(frame_kind(k), s, p))
            .collect()
    })
}

fn frame_kind(k: u8) -> FrameKind {
    match k {
        0 => FrameKind::Hello,
        1 => FrameKind::Open,
        2 => FrameKind::Data,
        3 => FrameKind::Window,
        4 => FrameKind::End,
        5 => FrameKind::Reset,
        6 => FrameKind::Ping,
        7 => FrameKind::Pong,
        _ => FrameKind::GoAway,
    }
}

proptest! {
    #![proptest_config(config(CHEAP))]

    /// Arbitrary bytes, under any frame limit: frames within the limit or an error, and never
    /// an allocation beyond the input plus one frame.
    #[test]
    fn frame_decoder_takes_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(1usize..128, 1..16),
        max in prop_oneof![Just(MAX_FRAME_PAYLOAD), 0u32..4096, Just(u32::MAX)],
    ) {
        let (frames, _) = decode_all(&bytes, &cuts, max);
        let allocs = last_decode_allocs();
        for f in &frames {
            prop_assert!(f.payload.len() <= max as usize);
        }
        // An unbounded decoder (`u32::MAX`) may reserve what a header declares; the bound
        // only means something for real limits.
        if max != u32::MAX {
            prop_assert!(allocs.largest <= frame_alloc_bound(bytes.len(), max), "{allocs:?}");
        }
    }

    /// Valid frame streams, mutated: the unmutated ones round-trip; the mutated ones decode
    /// to frames within the limit or fail, within the same allocation bound.
    #[test]
    fn frame_decoder_takes_mutated_frames(
        frames in frames_strategy(),
        mutations in proptest::collection::vec(frame_mutation(), 0..4),
        cuts in proptest::collection::vec(1usize..128, 1..16),
        max in prop_oneof![Just(MAX_FRAME_PAYLOAD), 0u32..512],
    ) {
        let mut wire = Vec::new();
        let mut starts = Vec::new();
        for f in &frames {
            starts.push(wire.len());
            let mut b = BytesMut::new();
            f.encode(&mut b);
            wire.extend_from_slice(&b);
        }
        for m in &mutations {
            apply_frame_mutation(&mut wire, &starts, m);
        }
        let (decoded, failed) = decode_all(&wire, &cuts, max);
        let allocs = last_decode_allocs();
        for f in &decoded {
            prop_assert!(f.payload.len() <= max as usize);
        }
        prop_assert!(allocs.largest <= frame_alloc_bound(wire.len(), max), "{allocs:?}");
        if mutations.is_empty() && frames.iter().all(|f| f.payload.len() <= max as usize) {
            prop_assert!(!failed);
            prop_assert_eq!(decoded, frames);
        }
    }

    /// `Data` payloads: a message sharing the payload's buffer (no allocation), or an error
    /// for the empty payload.
    #[test]
    fn message_decoder_takes_arbitrary_payloads(
        payload in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let bytes = Bytes::from(payload.clone());
        let (res, allocs) = measure(|| Message::decode(bytes));
        match res {
            Ok(m) => {
                prop_assert_eq!(m.kind, MsgKind(payload[0]));
                prop_assert_eq!(&m.body[..], &payload[1..]);
                prop_assert_eq!(allocs.largest, 0);
            }
            Err(_) => {
                prop_assert!(payload.is_empty());
                // Only the error's text.
                prop_assert!(allocs.largest <= 64, "{allocs:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON messages.

/// A valid encoding of every request and reply type.
fn json_corpus() -> Vec<Value> {
    let entry = json!({"path": "/workspace/a", "artifact_type": "file", "size_bytes": 3,
                       "mode": 420, "link_target": "b"});
    vec![
        json!({"op": "ping"}),
        json!({"op": "exec", "command": {"argv": ["git", "--version"]}, "cwd": "/workspace",
               "env": {"A": "1", "B": "2"}, "timeout_ms": 1000, "max_output_bytes": 10,
               "stdin": true}),
        json!({"op": "exec", "command": {"shell": "echo hi"}}),
        json!({"op": "sync_clock", "unix_nanos": 1}),
        json!({"op": "shutdown", "poweroff": false}),
        json!({"op": "list_files", "root": "/r", "path": "a", "recursive": true,
               "max_entries": 5}),
        json!({"op": "read_file", "path": "a", "max_bytes": 10}),
        json!({"op": "write_files", "changes": [
            {"op": "write", "path": "a", "size": 3, "mode": 420},
            {"op": "delete", "path": "b"},
            {"op": "mkdir", "path": "c", "mode": 493},
            {"op": "symlink", "path": "l", "target": "a"}]}),
        json!({"op": "export_tar", "path": "a"}),
        json!({"op": "import_tar", "dest": "d", "mode": "replace"}),
        json!({"op": "sync"}),
        json!({"op": "reseed", "entropy_hex": "ab".repeat(32), "unix_nanos": 7}),
        json!({"exit_code": 0, "signal": null, "timed_out": false, "duration_ms": 1,
               "stdout_bytes": 2, "stderr_bytes": 0, "stdout_truncated": false,
               "stderr_truncated": false, "spawn_error": null}),
        json!({"path": "/workspace", "artifact_type": "directory",
               "entries": [entry.clone(), entry.clone()], "truncated": false}),
        json!([entry.clone(), entry]),
        json!({"path": "/workspace/a", "size_bytes": 3, "truncated": false, "mode": 420}),
        json!({"entries": [{"path": "/workspace/a", "op": "write", "bytes_written": 3}]}),
        json!({"entry_count": 1, "bytes": 2, "skipped": ["/workspace/fifo"],
               "skipped_count": 1}),
        json!({"code": "bad_request", "message": "no"}),
        json!({"agent_version": "0.1.0", "protocol_version": 1, "pid1": true,
               "uptime_ms": 5}),
        json!({"entropy_bytes": 32, "crng_reseeded": true, "machine_id_regenerated": true}),
        json!({}),
    ]
}

/// Decodes `body` as every type a peer's JSON message can be read as. Returns how many
/// decoded.
fn parse_everything(body: &[u8]) -> usize {
    let m = Message::new(MsgKind::RESPONSE, Bytes::copy_from_slice(body));
    let mut ok = 0;
    if let Ok(req) = m.parse::<Request>() {
        ok += 1;
        if let Request::Reseed(r) = &req
            && let Ok(e) = r.entropy()
        {
            assert!((api::RESEED_MIN_ENTROPY..=api::RESEED_MAX_ENTROPY).contains(&e.len()));
        }
        // Whatever decodes re-encodes.
        assert!(req.encoded_len().is_ok());
    }
    ok += usize::from(m.parse::<api::ExecResult>().is_ok());
    ok += usize::from(m.parse::<api::FileList>().is_ok());
    ok += usize::from(m.parse::<Vec<api::FileEntry>>().is_ok());
    ok += usize::from(m.parse::<api::FileRead>().is_ok());
    ok += usize::from(m.parse::<api::WriteResult>().is_ok());
    ok += usize::from(m.parse::<api::TarResult>().is_ok());
    ok += usize::from(m.parse::<api::AgentError>().is_ok());
    ok += usize::from(m.parse::<api::PingResult>().is_ok());
    ok += usize::from(m.parse::<api::ReseedResult>().is_ok());
    ok += usize::from(m.parse::<api::Empty>().is_ok());
    ok
}

/// The most decoding a JSON body may allocate at once: a vector of 24-byte strings from
/// 3 bytes of JSON each (`"",`), doubled by growth.
fn json_alloc_bound(len: usize) -> usize {
    16 * len + 4096
}

#[derive(Clone, Debug)]
enum JsonMutation {
    /// Replace the value at a path with a wrong-typed, huge or deep one.
    Replace(Vec<Index>, Index),
    /// Remove the member at a path.
    Remove(Vec<Index>),
    /// Repeat a top-level member (textually: JSON objects may not hold duplicates).
    DuplicateField(Index),
    Bytes(FrameMutation),
}

fn replacement(i: &Index) -> Value {
    let deep = |n: usize| -> Value {
        let text = format!("{}{}", "[".repeat(n), "]".repeat(n));
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    match i.index(13) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(1.5),
        4 => json!(u64::MAX),
        5 => json!(i64::MIN),
        6 => json!("text"),
        7 => json!([]),
        8 => json!({}),
        9 => deep(100),
        10 => json!("x".repeat(4096)),
        11 => json!(["", "", ""]),
        _ => json!({"op": "exec"}),
    }
}

fn at_path<'a>(v: &'a mut Value, path: &[Index]) -> &'a mut Value {
    let Some((first, rest)) = path.split_first() else {
        return v;
    };
    let len = match &*v {
        Value::Object(o) => o.len(),
        Value::Array(a) => a.len(),
        _ => 0,
    };
    if len == 0 {
        return v;
    }
    let k = first.index(len);
    match v {
        Value::Object(o) => {
            let Some(child) = o.values_mut().nth(k) else {
                unreachable!("index within len");
            };
            at_path(child, rest)
        }
        Value::Array(a) => at_path(&mut a[k], rest),
        _ => unreachable!("containers only"),
    }
}

fn mutate_json(mut v: Value, mutations: &[JsonMutation]) -> Vec<u8> {
    let mut dup = None;
    let mut bytes_m = Vec::new();
    for m in mutations {
        match m {
            JsonMutation::Replace(path, with) => *at_path(&mut v, path) = replacement(with),
            JsonMutation::Remove(path) => {
                if let Some((last, parent)) = path.split_last() {
                    match at_path(&mut v, parent) {
                        Value::Object(o) if !o.is_empty() => {
                            let key = o.keys().nth(last.index(o.len())).cloned();
                            if let Some(key) = key {
                                o.remove(&key);
                            }
                        }
                        Value::Array(a) if !a.is_empty() => {
                            a.remove(last.index(a.len()));
                        }
                        _ => {}
                    }
                }
            }
            JsonMutation::DuplicateField(i) => dup = Some(*i),
            JsonMutation::Bytes(b) => bytes_m.push(b.clone()),
        }
    }
    let mut text = serde_json::to_vec(&v).unwrap();
    if let (Some(i), Value::Object(o)) = (dup, &v)
        && !o.is_empty()
    {
        let (k, val) = o.iter().nth(i.index(o.len())).unwrap();
        let member = format!("{}:{},", Value::String(k.clone()), val);
        text.splice(1..1, member.into_bytes());
    }
    let starts = [0usize];
    for b in &bytes_m {
        apply_frame_mutation(&mut text, &starts, b);
    }
    text
}

fn json_mutation() -> impl Strategy<Value = JsonMutation> {
    let path = proptest::collection::vec(any::<Index>(), 0..4);
    prop_oneof![
        (path.clone(), any::<Index>()).prop_map(|(p, i)| JsonMutation::Replace(p, i)),
        path.prop_map(JsonMutation::Remove),
        any::<Index>().prop_map(JsonMutation::DuplicateField),
        frame_mutation().prop_map(JsonMutation::Bytes),
    ]
}

/// A JSON body a hostile peer might send: a mutated valid encoding, arbitrary bytes, or
/// pathological nesting.
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let corpus = json_corpus();
    prop_oneof![
        6 => (any::<Index>(), proptest::collection::vec(json_mutation(), 0..4))
            .prop_map(move |(i, ms)| mutate_json(corpus[i.index(corpus.len())].clone(), &ms)),
        2 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => (1usize..5000).prop_map(|n| "[".repeat(n).into_bytes()),
        1 => (1usize..5000).prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))
            .into_bytes()),
    ]
}

proptest! {
    #![proptest_config(config(CHEAP))]

    /// Every JSON type a peer's message is read as: a value or an error, no panic, no stack
    /// overflow, allocation proportional to the (frame-bounded) body.
    #[test]
    fn json_decoders_take_hostile_bodies(body in json_body()) {
        let (_, allocs) = measure(|| parse_everything(&body));
        prop_assert!(allocs.largest <= json_alloc_bound(body.len()), "{allocs:?}");
    }
}

#[test]
fn json_corpus_is_valid() {
    // Each corpus entry decodes as at least one type, so the mutations start from real
    // messages.
    for v in json_corpus() {
        let body = serde_json::to_vec(&v).unwrap();
        assert!(parse_everything(&body) > 0, "{v}");
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions with a hostile peer.

#[derive(Clone, Debug)]
enum HelloKind {
    Valid,
    Version(u16),
    Window(u32, u32),
    BadMagic,
    Short(usize),
    Garbage(Vec<u8>),
    Nothing,
}

#[derive(Clone, Debug)]
enum Op {
    Frame {
        kind: u8,
        stream: u32,
        payload: Vec<u8>,
    },
    /// A header declaring `len` bytes, then only `payload`.
    Lying {
        kind: u8,
        stream: u32,
        len: u32,
        payload: Vec<u8>,
    },
    Garbage(Vec<u8>),
    Yield,
}

fn hello_kind() -> impl Strategy<Value = HelloKind> {
    prop_oneof![
        8 => Just(HelloKind::Valid),
        1 => any::<u16>().prop_map(HelloKind::Version),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(w, f)| HelloKind::Window(w, f)),
        1 => Just(HelloKind::BadMagic),
        1 => (0usize..25).prop_map(HelloKind::Short),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(HelloKind::Garbage),
        1 => Just(HelloKind::Nothing),
    ]
}

fn stream_id() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(3),
        Just(4),
        Just(5),
        any::<u32>()
    ]
}

/// A frame kind byte, weighted towards the kinds that reach deep into stream handling (a
/// `Hello`, `GoAway` or unknown kind ends the session at once); `strict` keeps to those.
fn kind_byte(strict: bool) -> BoxedStrategy<u8> {
    let deep = prop_oneof![
        8 => Just(FrameKind::Data as u8),
        3 => Just(FrameKind::Window as u8),
        2 => Just(FrameKind::End as u8),
        2 => Just(FrameKind::Reset as u8),
        2 => Just(FrameKind::Open as u8),
        2 => Just(FrameKind::Ping as u8),
        2 => Just(FrameKind::Pong as u8),
    ];
    if strict {
        return deep.boxed();
    }
    prop_oneof![
        21 => deep,
        1 => Just(FrameKind::Hello as u8),
        1 => Just(FrameKind::GoAway as u8),
        1 => 9u8..=255,
    ]
    .boxed()
}

/// A payload of the right shape for `kind`; unless `strict`, sometimes anything.
fn payload_for(kind: u8, strict: bool) -> BoxedStrategy<Vec<u8>> {
    let any_bytes = proptest::collection::vec(any::<u8>(), 0..48);
    let grant = prop_oneof![Just(u32::MAX), any::<u32>(), 0u32..70_000]
        .prop_map(|g| g.to_be_bytes().to_vec());
    let message = (
        prop_oneof![
            Just(MsgKind::STDOUT.0),
            Just(MsgKind::RESPONSE.0),
            Just(MsgKind::DATA.0),
            any::<u8>()
        ],
        prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), json_body(),],
    )
        .prop_map(|(k, body)| {
            let mut p = vec![k];
            p.extend(body);
            p
        });
    let ping = prop_oneof![
        any::<u64>().prop_map(|v| v.to_be_bytes().to_vec()),
        (1u64..4).prop_map(|v| v.to_be_bytes().to_vec()),
    ];
    let shaped = match kind {
        2 => message.boxed(),
        3 => grant.boxed(),
        6 | 7 => ping.boxed(),
        1 | 4 => Just(Vec::new()).boxed(),
        _ => any_bytes.clone().boxed(),
    };
    if strict {
        return shaped;
    }
    prop_oneof![
        8 => shaped,
        1 => any_bytes,
        1 => Just(Vec::new()),
        1 => proptest::collection::vec(any::<u8>(), 60..70),
    ]
    .boxed()
}

/// One thing the hostile peer does. `strict` ops are all well-formed frames (whose
/// sequence may still break the protocol's rules), so a case gets deep into stream handling
/// instead of ending at the first malformed frame.
fn op(strict: bool) -> BoxedStrategy<Op> {
    let frame = (kind_byte(strict), stream_id()).prop_flat_map(move |(kind, stream)| {
        payload_for(kind, strict).prop_map(move |payload| Op::Frame {
            kind,
            stream,
            payload,
        })
    });
    if strict {
        return prop_oneof![10 => frame, 1 => Just(Op::Yield)].boxed();
    }
    prop_oneof![
        20 => frame,
        1 => (kind_byte(false), stream_id(), prop_oneof![Just(u32::MAX),
                Just(MAX_FRAME_PAYLOAD + 1), Just(MAX_FRAME_PAYLOAD), 0u32..128],
              proptest::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(kind, stream, len, payload)| Op::Lying { kind, stream, len, payload }),
        1 => proptest::collection::vec(any::<u8>(), 1..32).prop_map(Op::Garbage),
        3 => Just(Op::Yield),
    ]
    .boxed()
}

/// The peer's ops of one case: well-formed frames only in half the cases.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    any::<bool>().prop_flat_map(|strict| proptest::collection::vec(op(strict), 0..40))
}

fn hello_bytes(h: &HelloKind) -> Vec<u8> {
    match h {
        HelloKind::Valid => common::hello(1 << 20),
        HelloKind::Version(v) => common::frame(
            FrameKind::Hello,
            0,
            &common::hello_payload(*v, 1 << 20, MAX_FRAME_PAYLOAD),
        ),
        HelloKind::Window(w, f) => common::frame(
            FrameKind::Hello,
            0,
            &common::hello_payload(PROTOCOL_VERSION, *w, *f),
        ),
        HelloKind::BadMagic => {
            let mut p = common::hello_payload(PROTOCOL_VERSION, 1 << 20, MAX_FRAME_PAYLOAD);
            p[0] = b'X';
            common::frame(FrameKind::Hello, 0, &p)
        }
        HelloKind::Short(n) => {
            let mut h = common::hello(1 << 20);
            h.truncate(*n);
            h
        }
        HelloKind::Garbage(g) => g.clone(),
        HelloKind::Nothing => Vec::new(),
    }
}

fn op_bytes(op: &Op) -> Vec<u8> {
    match op {
        Op::Frame {
            kind,
            stream,
            payload,
        } => {
            let mut v = common::header(*kind, *stream, payload.len() as u32);
            v.extend_from_slice(payload);
            v
        }
        Op::Lying {
            kind,
            stream,
            len,
            payload,
        } => {
            let mut v = common::header(*kind, *stream, *len);
            v.extend_from_slice(payload);
            v
        }
        Op::Garbage(g) => g.clone(),
        Op::Yield => Vec::new(),
    }
}

/// The application side: on a client, three streams that send and read until the end; on a
/// server, echo every accepted stream. Returns the tasks, which must all finish once the
/// session has ended.
fn drive(
    session: &Session,
    incoming: Option<pyro_proto::Incoming>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    match incoming {
        None => {
            for i in 0..3u8 {
                let Ok(stream) = session.open() else {
                    break;
                };
                tasks.push(tokio::spawn(async move {
                    let (mut tx, mut rx) = stream.split();
                    let _ = tx.send(Message::new(MsgKind::STDIN, vec![i; 16])).await;
                    let _ = tx.finish();
                    while let Ok(Some(_)) = rx.recv().await {}
                }));
            }
            let s = session.clone();
            tasks.push(tokio::spawn(async move {
                let _ = s.ping(Duration::from_millis(50)).await;
            }));
        }
        Some(mut incoming) => tasks.push(tokio::spawn(async move {
            let mut echoes = Vec::new();
            while let Some(stream) = incoming.accept().await {
                echoes.push(tokio::spawn(async move {
                    let (mut tx, mut rx) = stream.split();
                    while let Ok(Some(m)) = rx.recv().await {
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.finish();
                }));
            }
            for e in echoes {
                let _ = e.await;
            }
        })),
    }
    tasks
}

/// Runs one hostile-peer case; returns `Err` with what went wrong.
fn hostile_peer_case(server: bool, hello: &HelloKind, ops: &[Op]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Large enough that the peer's writes never wait for the session to read.
        let (ours, theirs) = duplex(64 * 1024);
        let cfg = Config {
            handshake_timeout: Duration::from_millis(50),
            ..Config::default()
        };
        let (mut rd, mut wr) = tokio::io::split(theirs);
        // The peer drains whatever we send, so our writer never stalls on it, and says when
        // the session is ready for the hostile part: a client once it has opened its three
        // streams (so frames naming them reach them), a server once it has said hello.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let want_opens = if server { 0 } else { 3 };
        let drain = tokio::spawn(async move {
            let dec = Decoder::new(MAX_FRAME_PAYLOAD);
            let mut buf = BytesMut::new();
            let (mut hello_seen, mut opens, mut ready) = (false, 0, Some(ready_tx));
            loop {
                while let Ok(Some(f)) = dec.decode(&mut buf) {
                    hello_seen |= f.kind == FrameKind::Hello;
                    opens += usize::from(f.kind == FrameKind::Open);
                }
                if hello_seen
                    && opens >= want_opens
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
                buf.clear();
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return rd,
                    Ok(_) => {}
                }
            }
        });
        // Only a hello that can succeed waits for the session; after any other the peer
        // goes on at once, so a handshake failure is seen without waiting for its timeout.
        let wait = matches!(hello, HelloKind::Valid | HelloKind::Window(..));
        let hello = hello_bytes(hello);
        let ops = ops.to_vec();
        let peer = tokio::spawn(async move {
            let send = async {
                wr.write_all(&hello).await?;
                // Without a session (failed handshake) the signal never comes.
                if wait {
                    let _ = ready_rx.await;
                }
                for op in &ops {
                    match op {
                        Op::Yield => tokio::task::yield_now().await,
                        op => wr.write_all(&op_bytes(op)).await?,
                    }
                }
                wr.flush().await
            };
            let _ = tokio::time::timeout(common::PATIENCE, send).await;
            wr
        });
        let started = if server {
            Session::server(ours, cfg).await.map(|(s, i)| (s, Some(i)))
        } else {
            Session::client(ours, cfg).await.map(|s| (s, None))
        };
        let (session, tasks) = match started {
            Ok((session, incoming)) => {
                let tasks = drive(&session, incoming);
                (Some(session), tasks)
            }
            // A handshake failure is a clean, typed error.
            Err(_) => (None, Vec::new()),
        };
        // Hang up once everything is written: both halves of the peer's end go.
        let wr = peer.await.map_err(|e| format!("peer task: {e}"))?;
        drain.abort();
        let rd = drain.await.ok();
        drop((wr, rd));
        let Some(session) = session else {
            return Ok(());
        };
        let reason = tokio::time::timeout(common::PATIENCE, session.closed())
            .await
            .map_err(|_| "the session did not end after the peer hung up".to_string())?;
        if reason.is_empty() {
            return Err("empty close reason".into());
        }
        for t in tasks {
            tokio::time::timeout(common::PATIENCE, t)
                .await
                .map_err(|_| "a stream task hung after the session ended".to_string())?
                .map_err(|e| format!("a stream task failed: {e}"))?;
        }
        Ok(())
    })
}

/// Bounds of one session case: no single allocation beyond a frame buffer and its growth
/// (the reader's 64 KiB buffer, one 256 KiB frame, doubled); no more live memory than a few
/// of those, whatever the peer sends.
const SESSION_LARGEST: usize = 1 << 20;
const SESSION_PEAK: usize = 8 << 20;

proptest! {
    #![proptest_config(config(SESSION))]

    /// A whole session, host side or agent side, against a peer sending an arbitrary hello
    /// and arbitrary (mostly well-formed) frames, then hanging up: the handshake fails with
    /// a typed error, or the session ends with a reason and every stream task finishes.
    #[test]
    fn sessions_survive_a_hostile_peer(
        server in any::<bool>(),
        hello in hello_kind(),
        ops in ops(),
    ) {
        let ((res, panics), allocs) =
            measure(|| panics_during(|| hostile_peer_case(server, &hello, &ops)));
        prop_assert_eq!(res, Ok(()));
        prop_assert_eq!(panics, 0, "a task panicked");
        prop_assert!(allocs.largest <= SESSION_LARGEST, "{allocs:?}");
        prop_assert!(allocs.peak <= SESSION_PEAK, "{allocs:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Calls against a hostile agent.

#[derive(Clone, Copy, Debug)]
enum Ending {
    End,
    Reset,
    Drop,
    /// Finish without ending: the call must not hang (its own timeout is the caller's).
    Stall,
}

#[derive(Clone, Copy, Debug)]
enum CallKind {
    Ping,
    Exec,
    ReadFile,
    ListFiles,
    ExportTar,
}

/// The read limits the calls ask for; what they return must stay within them.
const READ_LIMIT: u64 = 100;
const LIST_LIMIT: u64 = 5;

fn reply_message() -> impl Strategy<Value = (u8, Vec<u8>)> {
    let kind = prop_oneof![
        3 => Just(MsgKind::RESPONSE.0),
        3 => Just(MsgKind::DATA.0),
        2 => Just(MsgKind::STDOUT.0),
        1 => Just(MsgKind::STDERR.0),
        1 => Just(MsgKind::EVENT.0),
        1 => Just(MsgKind::ERROR.0),
        1 => any::<u8>(),
    ];
    let body = prop_oneof![
        4 => json_body(),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
    ];
    (kind, body)
}

async fn hostile_agent(mut s: Stream, replies: Vec<(u8, Vec<u8>)>, ending: Ending) {
    let _request = s.recv().await;
    for (kind, body) in replies {
        if s.send(Message::new(MsgKind(kind), body)).await.is_err() {
            return;
        }
    }
    match ending {
        Ending::End => {
            let _ = s.finish();
            while let Ok(Some(_)) = s.recv().await {}
        }
        Ending::Reset => {
            let (tx, _rx) = s.split();
            tx.reset("hostile");
        }
        Ending::Drop => {}
        Ending::Stall => std::future::pending::<()>().await,
    }
}

fn hostile_call_case(
    call: CallKind,
    replies: &[(u8, Vec<u8>)],
    ending: &Ending,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = duplex(64 * 1024);
        let server = tokio::spawn(Session::server(b, Config::default()));
        let client = Session::client(a, Config::default())
            .await
            .map_err(|e| e.to_string())?;
        let (server, mut incoming) = server.await.unwrap().map_err(|e| e.to_string())?;
        let (replies, ending) = (replies.to_vec(), *ending);
        tokio::spawn(async move {
            let _server = server;
            if let Some(stream) = incoming.accept().await {
                hostile_agent(stream, replies, ending).await;
            }
        });
        let run = async {
            match call {
                CallKind::Ping => {
                    let _ = api::call::<api::PingResult>(&client, &Request::Ping).await;
                }
                CallKind::Exec => {
                    let req = api::ExecRequest {
                        command: api::Command::Argv(vec!["cat".into()]),
                        cwd: None,
                        env: Default::default(),
                        timeout_ms: None,
                        max_output_bytes: None,
                        stdin: false,
                    };
                    let _ = api::exec(&client, req, Some(Bytes::from_static(b"in")), |_| {}).await;
                }
                CallKind::ReadFile => {
                    let req = api::ReadFile {
                        root: api::WORKSPACE_ROOT.into(),
                        path: "a".into(),
                        max_bytes: Some(READ_LIMIT),
                    };
                    if let Ok((_, data)) = api::read_file(&client, req).await {
                        assert!(data.len() as u64 <= READ_LIMIT);
                    }
                }
                CallKind::ListFiles => {
                    let req = api::ListFiles {
                        root: api::WORKSPACE_ROOT.into(),
                        path: String::new(),
                        recursive: true,
                        max_entries: Some(LIST_LIMIT),
                    };
                    if let Ok(list) = api::list_files(&client, req).await {
                        assert!(list.entries.len() as u64 <= LIST_LIMIT);
                    }
                }
                CallKind::ExportTar => {
                    let mut sink = Vec::new();
                    let req = api::ExportTar {
                        root: api::WORKSPACE_ROOT.into(),
                        path: String::new(),
                    };
                    let _ = api::export_tar(&client, req, |b| {
                        sink.extend_from_slice(&b);
                        Ok(())
                    })
                    .await;
                }
            }
        };
        // A stalling agent is the caller's timeout to handle; everything else must finish.
        let limit = match ending {
            Ending::Stall => Duration::from_millis(20),
            _ => common::PATIENCE,
        };
        match tokio::time::timeout(limit, run).await {
            Ok(()) => Ok(()),
            Err(_) if matches!(ending, Ending::Stall) => Ok(()),
            Err(_) => Err(format!("{call:?} hung")),
        }
    })
}

proptest! {
    #![proptest_config(config(SESSION))]

    /// The client calls against an agent answering with arbitrary messages (kinds and
    /// bodies, valid JSON or not), then ending, resetting or dropping the stream: each call
    /// returns, its result within the limits it asked for, and nothing panics.
    #[test]
    fn calls_survive_a_hostile_agent(
        call in prop_oneof![
            Just(CallKind::Ping),
            Just(CallKind::Exec),
            Just(CallKind::ReadFile),
            Just(CallKind::ListFiles),
            Just(CallKind::ExportTar),
        ],
        replies in proptest::collection::vec(reply_message(), 0..8),
        ending in prop_oneof![
            3 => Just(Ending::End),
            1 => Just(Ending::Reset),
            1 => Just(Ending::Drop),
            1 => Just(Ending::Stall),
        ],
    ) {
        let ((res, panics), allocs) =
            measure(|| panics_during(|| hostile_call_case(call, &replies, &ending)));
        prop_assert_eq!(res, Ok(()));
        prop_assert_eq!(panics, 0, "a task panicked");
        prop_assert!(allocs.largest <= SESSION_LARGEST, "{allocs:?}");
        prop_assert!(allocs.peak <= SESSION_PEAK, "{allocs:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// A hostile peer on a real socket.

/// Starts a host-side session on one end of a socketpair; the test writes `first` from the
/// other end (then, with `eof`, shuts its sending side down). Returns the handshake's
/// outcome and the raw end.
async fn socket_client(
    first: &[u8],
    eof: bool,
) -> (
    Result<Session, pyro_proto::ProtoError>,
    tokio::net::UnixStream,
) {
    let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
    theirs.write_all(first).await.unwrap();
    if eof {
        theirs.shutdown().await.unwrap();
    }
    let cfg = Config {
        handshake_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    (Session::client(ours, cfg).await, theirs)
}

#[test]
fn socket_peer_garbage_oversized_frames_and_early_eof() {
    use pyro_proto::ProtoError;
    use pyro_proto::frame::FrameError;
    common::rt().block_on(async {
        // Garbage instead of a hello.
        let (res, _) = socket_client(b"GET / HTTP/1.1\r\n\r\n", false).await;
        assert!(
            matches!(res, Err(ProtoError::Frame(FrameError::UnknownKind { .. }))),
            "{res:?}"
        );
        // A hello header declaring an oversized payload: refused before it is read.
        let (res, _) = socket_client(&common::header(0, 0, u32::MAX), false).await;
        assert!(
            matches!(
                res,
                Err(ProtoError::Frame(FrameError::TooLarge {
                    len: u32::MAX,
                    ..
                }))
            ),
            "{res:?}"
        );
        // Early EOF: half a hello, then the peer hangs up.
        let hello = common::hello(1 << 20);
        let (res, _) = socket_client(&hello[..hello.len() / 2], true).await;
        assert!(
            matches!(res, Err(ProtoError::SessionClosed { .. })),
            "{res:?}"
        );
        // After the handshake: an oversized frame, garbage, and EOF in the middle of a frame
        // each end the session with a reason, and fail the open streams cleanly.
        for (after, expect) in [
            (
                common::header(FrameKind::Data as u8, 1, MAX_FRAME_PAYLOAD + 1),
                "exceeds the limit",
            ),
            (
                b"\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
                "unknown frame kind",
            ),
            (
                common::header(FrameKind::Data as u8, 1, 100)
                    .into_iter()
                    .chain([2u8; 10])
                    .collect(),
                "closed the connection",
            ),
        ] {
            let (res, mut theirs) = socket_client(&hello, false).await;
            let session = res.unwrap();
            let mut stream = session.open().unwrap();
            theirs.write_all(&after).await.unwrap();
            theirs.shutdown().await.unwrap();
            let reason = common::closed_reason(&session).await;
            assert!(reason.contains(expect), "{reason}");
            let err = stream.recv().await.unwrap_err();
            assert!(
                matches!(
                    err,
                    ProtoError::SessionClosed { .. } | ProtoError::StreamReset { .. }
                ),
                "{err:?}"
            );
            assert!(session.open().is_err());
        }
    });
}
