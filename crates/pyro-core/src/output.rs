//! One pipeline for a command's output: every exec (one-shot VMs and workspaces) sends each
//! chunk the agent forwards through an [`OutputPipeline`], and so will shell reads and service
//! logs.
//!
//! Each chunk is taken once and goes, in this order, through:
//!
//! 1. the stream's [`Transform`] (a pass-through today; secret redaction will be one). Each
//!    stream has its own transform, and a transform must hold across chunk boundaries: it may
//!    keep back the tail of a chunk that could begin a match and emit it with a later chunk
//!    or from [`Transform::flush`], which [`OutputPipeline::finish`] calls once after the
//!    last chunk;
//! 2. the result's capture: the first `limit` bytes of the stream (the rest is dropped);
//! 3. the stream's log file, if any ([`LogFile`], up to [`MAX_LOG_BYTES`]);
//! 4. the live callback ([`OutputFn`]), if any.
//!
//! So the result, the log and the live stream see the same bytes in the same order, all of
//! them after the transform; only the capture and the log stop at their caps. A log's write
//! error does not interrupt the command: it is kept and returned by `finish`.
//!
//! [`OutputPipeline::finish`] renders a stream as [`render_output`] says: lossy UTF-8 text,
//! a truncation marker line when the result does not hold everything, and the exact bytes in
//! base64 when they are not valid UTF-8. A stream counts as truncated when the agent says it
//! cut it or counted more bytes than were kept. Those counts are of the command's own bytes,
//! so a transform that changes lengths will have to account for it there.
//!
//! [`exec_request`] builds the agent's request from [`ExecOptions`] and [`exec`] runs it
//! through a pipeline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use pyro_proto::Session;
use pyro_proto::api::{self, Output};

use crate::workspace::MAX_LOG_BYTES;
use crate::{
    Command, CoreError, DEFAULT_MAX_OUTPUT_BYTES, ExecOptions, HOST_GRACE, OutputFn, Result,
};

/// Rewrites one stream's bytes on their way to the result, the log and the live stream.
///
/// The contract: whatever [`Transform::feed`] is meant to catch must be caught however the
/// stream is cut into chunks, so an implementation keeps back what might continue in the
/// next chunk and returns it later; [`Transform::flush`] returns what is still held once the
/// stream has ended.
pub(crate) trait Transform: Send {
    /// Takes the next chunk; returns the bytes ready to pass on (possibly none).
    fn feed(&mut self, chunk: Bytes) -> Bytes;
    /// Returns what is held back; called once, after the last chunk. `cut`: the stream
    /// did not end there (the agent stopped forwarding it), so what is held may be the
    /// beginning of something that went on.
    fn flush(&mut self, cut: bool) -> Bytes;
}

/// The transform of today: every chunk passes unchanged, nothing is held back.
pub(crate) struct PassThrough;

impl Transform for PassThrough {
    fn feed(&mut self, chunk: Bytes) -> Bytes {
        chunk
    }

    fn flush(&mut self, _cut: bool) -> Bytes {
        Bytes::new()
    }
}

/// One stream's stages after the agent.
struct Stream {
    transform: Box<dyn Transform>,
    kept: Vec<u8>,
    /// Whether the capture dropped bytes at its limit.
    dropped: bool,
    /// Bytes the agent forwarded (before the transform).
    received: u64,
    log: Option<LogFile>,
}

impl Stream {
    fn new() -> Self {
        Self {
            transform: Box::new(PassThrough),
            kept: Vec::new(),
            dropped: false,
            received: 0,
            log: None,
        }
    }

    /// Closes the log (reporting its first error) and renders what the result keeps.
    fn finish(&mut self, agent_truncated: bool, total: u64) -> Result<Rendered> {
        if let Some(log) = self.log.as_mut() {
            log.finish()?;
        }
        // The agent's counts are of the command's own bytes, as are `received`; a transform
        // may change lengths, so the capture's own drop says whether it cut what it got.
        let truncated = agent_truncated || self.received < total || self.dropped;
        let (text, base64) = render_output(&self.kept, truncated, total);
        Ok(Rendered {
            text,
            base64,
            truncated,
        })
    }
}

/// A command's output on its way to the result, the logs and the live stream.
pub(crate) struct OutputPipeline<'a> {
    limit: u64,
    stdout: Stream,
    stderr: Stream,
    live: Option<OutputFn<'a>>,
}

/// One stream as a result shows it.
#[derive(Debug)]
pub(crate) struct Rendered {
    /// The kept bytes as text, with the truncation marker when `truncated`.
    pub(crate) text: String,
    /// The kept bytes in base64 when they are not valid UTF-8.
    pub(crate) base64: Option<String>,
    /// Whether the result holds less than the command wrote.
    pub(crate) truncated: bool,
}

/// Both streams as a result shows them.
#[derive(Debug)]
pub(crate) struct Captured {
    pub(crate) stdout: Rendered,
    pub(crate) stderr: Rendered,
}

impl<'a> OutputPipeline<'a> {
    /// A pipeline keeping `limit` bytes per stream for the result, passing every chunk to
    /// `live` too.
    pub(crate) fn new(limit: u64, live: Option<OutputFn<'a>>) -> Self {
        Self {
            limit,
            stdout: Stream::new(),
            stderr: Stream::new(),
            live,
        }
    }

    /// Passes each stream through its own transform (stdout's, stderr's) first.
    pub(crate) fn with_transforms(
        mut self,
        stdout: Box<dyn Transform>,
        stderr: Box<dyn Transform>,
    ) -> Self {
        self.stdout.transform = stdout;
        self.stderr.transform = stderr;
        self
    }

    /// Also writes each stream to its log file.
    pub(crate) fn with_logs(mut self, stdout: LogFile, stderr: LogFile) -> Self {
        self.stdout.log = Some(stdout);
        self.stderr.log = Some(stderr);
        self
    }

    /// Takes one chunk from the agent.
    pub(crate) fn push(&mut self, chunk: Output) {
        let out = match chunk {
            Output::Stdout(b) => {
                self.stdout.received += b.len() as u64;
                Output::Stdout(self.stdout.transform.feed(b))
            }
            Output::Stderr(b) => {
                self.stderr.received += b.len() as u64;
                Output::Stderr(self.stderr.transform.feed(b))
            }
        };
        self.emit(out);
    }

    /// Passes transformed bytes to the capture, the log and the live callback.
    fn emit(&mut self, out: Output) {
        let (stream, bytes) = match &out {
            Output::Stdout(b) => (&mut self.stdout, b),
            Output::Stderr(b) => (&mut self.stderr, b),
        };
        if bytes.is_empty() {
            return;
        }
        stream.dropped |= push_capped(&mut stream.kept, bytes, self.limit);
        if let Some(log) = stream.log.as_mut() {
            log.write(bytes);
        }
        if let Some(live) = self.live.as_mut() {
            live(&out);
        }
    }

    /// Ends both streams (the transforms' held-back bytes pass through every stage first),
    /// closes the logs (stdout's first) and renders the result's output against the agent's
    /// counts in `res`.
    pub(crate) fn finish(mut self, res: &api::ExecResult) -> Result<Captured> {
        let cut = |s: &Stream, truncated: bool, total: u64| truncated || s.received < total;
        let out_cut = cut(&self.stdout, res.stdout_truncated, res.stdout_bytes);
        let out = Output::Stdout(self.stdout.transform.flush(out_cut));
        self.emit(out);
        let err_cut = cut(&self.stderr, res.stderr_truncated, res.stderr_bytes);
        let err = Output::Stderr(self.stderr.transform.flush(err_cut));
        self.emit(err);
        Ok(Captured {
            stdout: self.stdout.finish(res.stdout_truncated, res.stdout_bytes)?,
            stderr: self.stderr.finish(res.stderr_truncated, res.stderr_bytes)?,
        })
    }
}

/// The result limit of an exec: `max_output_bytes`, else [`DEFAULT_MAX_OUTPUT_BYTES`].
pub(crate) fn result_limit(opts: &ExecOptions) -> u64 {
    opts.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES)
}

/// The agent's request for `opts`, run in `cwd`; the agent forwards at most `forward` bytes
/// of each stream (all of them when `None`) and counts the rest. Stdin is announced by
/// [`api::exec`] when it is sent.
pub(crate) fn exec_request(
    opts: &ExecOptions,
    cwd: &str,
    forward: Option<u64>,
) -> api::ExecRequest {
    api::ExecRequest {
        command: match &opts.command {
            Command::Argv(a) => api::Command::Argv(a.clone()),
            Command::Shell(s) => api::Command::Shell(s.clone()),
        },
        cwd: Some(cwd.to_string()),
        env: opts.env.clone(),
        timeout_ms: Some((opts.timeout_seconds as u64).saturating_mul(1000)),
        max_output_bytes: forward,
        stdin: false,
    }
}

/// Runs `opts` through [`exec_request`] (with its stdin), feeding every chunk to `pipe`. The
/// host gives up on the agent [`HOST_GRACE`] after the command's own timeout.
pub(crate) async fn exec(
    session: &Session,
    opts: &ExecOptions,
    cwd: &str,
    forward: Option<u64>,
    pipe: &mut OutputPipeline<'_>,
) -> Result<api::ExecResult> {
    let req = exec_request(opts, cwd, forward);
    let deadline = Duration::from_secs(opts.timeout_seconds as u64) + HOST_GRACE;
    let call = api::exec(session, req, opts.stdin.clone(), |o| pipe.push(o));
    let res =
        tokio::time::timeout(deadline, call)
            .await
            .map_err(|_| CoreError::AgentTimeout {
                seconds: deadline.as_secs(),
            })??;
    Ok(res)
}

/// Appends as much of `b` as fits under `limit` bytes (output kept for a result); returns
/// whether some did not fit.
fn push_capped(buf: &mut Vec<u8>, b: &[u8], limit: u64) -> bool {
    let room = (limit as usize).saturating_sub(buf.len());
    buf.extend_from_slice(&b[..b.len().min(room)]);
    b.len() > room
}

/// A result's view of kept output: lossy UTF-8 text (with a marker line saying how much is
/// shown when `truncated`) and, when `data` is not valid UTF-8, its exact bytes in base64.
pub(crate) fn render_output(data: &[u8], truncated: bool, total: u64) -> (String, Option<String>) {
    let exact = match std::str::from_utf8(data) {
        Ok(_) => None,
        Err(_) => Some(base64(data)),
    };
    let mut text = String::from_utf8_lossy(data).into_owned();
    if truncated {
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!(
            "[pyro: output truncated: {} of {} bytes shown]\n",
            data.len(),
            total
        ));
    }
    (text, exact)
}

/// Decodes standard base64 (RFC 4648; padding optional); `None` for any other character.
pub use pyro_net::ca::base64_decode;

/// Standard base64 (RFC 4648, with padding).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// A command's log file: written as output arrives, up to [`MAX_LOG_BYTES`].
pub(crate) struct LogFile {
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    written: u64,
    error: Option<std::io::Error>,
}

impl LogFile {
    /// Creates (or truncates) the file at `path`.
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let f = std::fs::File::create(path).map_err(|e| CoreError::io("create", path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(std::io::BufWriter::new(f)),
            written: 0,
            error: None,
        })
    }

    /// Appends what fits under the cap; after the first error, only counts.
    fn write(&mut self, b: &[u8]) {
        use std::io::Write;
        let room = MAX_LOG_BYTES.saturating_sub(self.written) as usize;
        let part = &b[..b.len().min(room)];
        if let (Some(f), None) = (self.file.as_mut(), self.error.as_ref())
            && let Err(e) = f.write_all(part)
        {
            self.error = Some(e);
        }
        self.written += part.len() as u64;
    }

    /// Flushes the file; returns the first write error, if any.
    fn finish(&mut self) -> Result<()> {
        use std::io::Write;
        if let Some(e) = self.error.take() {
            return Err(CoreError::io("write", &self.path, e));
        }
        if let Some(mut f) = self.file.take() {
            f.flush()
                .map_err(|e| CoreError::io("write", &self.path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(stdout_bytes: u64, stderr_bytes: u64) -> api::ExecResult {
        api::ExecResult {
            stdout_bytes,
            stderr_bytes,
            ..Default::default()
        }
    }

    fn out(s: &'static [u8]) -> Output {
        Output::Stdout(Bytes::from_static(s))
    }

    fn err(s: &'static [u8]) -> Output {
        Output::Stderr(Bytes::from_static(s))
    }

    #[test]
    fn base64_decode_inverts_base64() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\xff\x00\x80bar"] {
            assert_eq!(base64_decode(&base64(data)).as_deref(), Some(data));
        }
        assert_eq!(base64_decode("Zm9v!"), None);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn truncated_output_carries_a_marker_and_non_utf8_keeps_exact_bytes() {
        let (text, exact) = render_output(b"abc", true, 10);
        assert_eq!(text, "abc\n[pyro: output truncated: 3 of 10 bytes shown]\n");
        assert!(exact.is_none());
        let (text, exact) = render_output(&[0xff, b'a'], false, 2);
        assert_eq!(text, "\u{fffd}a");
        assert_eq!(exact.as_deref(), Some("/2E="));
    }

    #[test]
    fn each_stream_keeps_its_first_limit_bytes() {
        let mut p = OutputPipeline::new(4, None);
        p.push(out(b"ab"));
        p.push(err(b"xy"));
        p.push(out(b"cdef"));
        let c = p.finish(&result(6, 2)).unwrap();
        assert_eq!(
            c.stdout.text,
            "abcd\n[pyro: output truncated: 4 of 6 bytes shown]\n"
        );
        assert!(c.stdout.truncated);
        assert_eq!(c.stderr.text, "xy");
        assert!(!c.stderr.truncated);
        assert!(c.stdout.base64.is_none() && c.stderr.base64.is_none());
    }

    #[test]
    fn redaction_is_not_truncation_and_a_cut_stream_hides_a_value_it_began() {
        let redactor = || Box::new(crate::secrets::Redactor::new(vec!["s3cr3t-42".into()]));
        // Ended by the command: what it printed stays, redacted values are not "truncated".
        let mut p = OutputPipeline::new(100, None).with_transforms(redactor(), redactor());
        p.push(out(b"a s3cr3t-42 b s3cr"));
        let c = p.finish(&result(18, 0)).unwrap();
        assert_eq!(
            (c.stdout.text.as_str(), c.stdout.truncated),
            ("a [REDACTED] b s3cr", false)
        );
        // Cut by the agent right inside the value: its beginning is not shown.
        let mut p = OutputPipeline::new(100, None).with_transforms(redactor(), redactor());
        p.push(out(b"a s3cr"));
        let c = p.finish(&result(4096, 0)).unwrap();
        assert!(c.stdout.truncated);
        assert!(
            c.stdout.text.starts_with("a [REDACTED]\n"),
            "{}",
            c.stdout.text
        );
        assert!(!c.stdout.text.contains("s3cr"), "{}", c.stdout.text);
    }

    #[test]
    fn output_exactly_at_the_limit_is_not_truncated() {
        let mut p = OutputPipeline::new(3, None);
        p.push(out(b"abc"));
        let c = p.finish(&result(3, 0)).unwrap();
        assert_eq!((c.stdout.text.as_str(), c.stdout.truncated), ("abc", false));
        assert_eq!((c.stderr.text.as_str(), c.stderr.truncated), ("", false));
    }

    #[test]
    fn bytes_the_agent_did_not_forward_count_as_truncation() {
        // Counted but not sent (the agent's forwarding cap), or flagged by the agent.
        let mut p = OutputPipeline::new(10, None);
        p.push(out(b"abc"));
        let c = p.finish(&result(8, 0)).unwrap();
        assert!(c.stdout.truncated);
        assert!(
            c.stdout
                .text
                .ends_with("[pyro: output truncated: 3 of 8 bytes shown]\n")
        );
        let p = OutputPipeline::new(10, None);
        let res = api::ExecResult {
            stderr_truncated: true,
            ..Default::default()
        };
        let c = p.finish(&res).unwrap();
        assert!(c.stderr.truncated && !c.stdout.truncated);
    }

    #[test]
    fn non_utf8_output_keeps_its_exact_bytes_in_base64() {
        let mut p = OutputPipeline::new(10, None);
        p.push(Output::Stderr(Bytes::from_static(&[0xff, b'a'])));
        let c = p.finish(&result(0, 2)).unwrap();
        assert_eq!(c.stderr.text, "\u{fffd}a");
        assert_eq!(c.stderr.base64.as_deref(), Some("/2E="));
    }

    #[test]
    fn log_and_live_stream_receive_everything_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (so, se) = (dir.path().join("so"), dir.path().join("se"));
        let mut seen = Vec::new();
        let mut live = |o: &Output| seen.push(o.clone());
        let mut p = OutputPipeline::new(2, Some(&mut live))
            .with_logs(LogFile::create(&so).unwrap(), LogFile::create(&se).unwrap());
        let chunks = [out(b"one "), err(b"E1"), out(b"two"), err(b"E2")];
        for c in chunks.clone() {
            p.push(c);
        }
        let c = p.finish(&result(7, 4)).unwrap();
        assert_eq!(seen, chunks);
        assert_eq!(std::fs::read(&so).unwrap(), b"one two");
        assert_eq!(std::fs::read(&se).unwrap(), b"E1E2");
        assert!(
            c.stdout
                .text
                .starts_with("on\n[pyro: output truncated: 2 of 7")
        );
        assert!(
            c.stderr
                .text
                .starts_with("E1\n[pyro: output truncated: 2 of 4")
        );
    }

    /// A toy redactor: masks `SECRET`, keeping back the tail that could begin one.
    #[derive(Default)]
    struct Mask {
        carry: Vec<u8>,
    }

    impl Transform for Mask {
        fn feed(&mut self, chunk: Bytes) -> Bytes {
            const PAT: &[u8] = b"SECRET";
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(&chunk);
            let mut i = 0;
            while i + PAT.len() <= buf.len() {
                if &buf[i..i + PAT.len()] == PAT {
                    buf[i..i + PAT.len()].fill(b'*');
                    i += PAT.len();
                } else {
                    i += 1;
                }
            }
            let ready = buf.len().saturating_sub(PAT.len() - 1);
            self.carry = buf.split_off(ready);
            Bytes::from(buf)
        }

        fn flush(&mut self, _cut: bool) -> Bytes {
            Bytes::from(std::mem::take(&mut self.carry))
        }
    }

    #[test]
    fn a_transform_catches_a_pattern_split_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (so, se) = (dir.path().join("so"), dir.path().join("se"));
        let mut seen = Vec::new();
        let mut live = |o: &Output| {
            if let Output::Stdout(b) = o {
                seen.extend_from_slice(b);
            }
        };
        let mut p = OutputPipeline::new(100, Some(&mut live))
            .with_logs(LogFile::create(&so).unwrap(), LogFile::create(&se).unwrap());
        p.stdout.transform = Box::new(Mask::default());
        p.push(out(b"key=SEC"));
        p.push(err(b"RET"));
        p.push(out(b"RET; tail"));
        let c = p.finish(&result(16, 3)).unwrap();
        assert_eq!(c.stdout.text, "key=******; tail");
        assert!(!c.stdout.truncated);
        assert_eq!(std::fs::read(&so).unwrap(), b"key=******; tail");
        assert_eq!(seen, b"key=******; tail");
        // Streams are transformed apart: stderr's `RET` does not complete stdout's `SEC`.
        assert_eq!(c.stderr.text, "RET");
    }

    #[test]
    fn exec_request_carries_the_options_and_the_forwarding_cap() {
        let mut o = ExecOptions::new(Command::Shell("echo hi".into()));
        o.timeout_seconds = 7;
        o.env.insert("A".into(), "1".into());
        o.stdin = Some(Bytes::from_static(b"in"));
        let r = exec_request(&o, "/workspace/sub", Some(5));
        assert_eq!(r.command, api::Command::Shell("echo hi".into()));
        assert_eq!(r.cwd.as_deref(), Some("/workspace/sub"));
        assert_eq!(r.env, o.env);
        assert_eq!(r.timeout_ms, Some(7000));
        assert_eq!(r.max_output_bytes, Some(5));
        assert!(!r.stdin, "api::exec announces stdin when it sends it");
        o.command = Command::Argv(vec!["ls".into(), "-l".into()]);
        let r = exec_request(&o, "/", None);
        assert_eq!(
            r.command,
            api::Command::Argv(vec!["ls".into(), "-l".into()])
        );
        assert_eq!(r.max_output_bytes, None);
        assert_eq!(result_limit(&o), DEFAULT_MAX_OUTPUT_BYTES);
        o.max_output_bytes = Some(9);
        assert_eq!(result_limit(&o), 9);
    }
}
