//! Our framing in front of rmcp: every incoming message is checked here before rmcp sees it,
//! and the ones rmcp would drop or answer badly are answered here, with the right JSON-RPC
//! code and the request's `id`.
//!
//! rmcp (3.9) silently ignores a line that is not JSON and a stdio line over its 16 MiB cap,
//! answers a well-formed message of the wrong shape with `-32600` without its `id`, takes a
//! standard method with ill-typed params (`tools/call` with `"name": 5`) for an unknown
//! custom method (`-32601`), and over HTTP answers a non-JSON body with 415 and a body over
//! 4 MiB with 413, both as plain text. Its message types are public, so the check is done
//! with them: [`check`] parses a message as rmcp would and decides what a client gets. On
//! stdio, [`LineTransport`] replaces rmcp's reader and writer (it implements rmcp's
//! `Transport`, so no second copy of a message goes through a pipe); over HTTP,
//! `http.rs` checks each POST body before rmcp's handler.
//!
//! | input | answer (id) |
//! |---|---|
//! | not JSON | -32700 (null) |
//! | not one JSON-RPC 2.0 object (a batch, a scalar, no `method`, `jsonrpc` ≠ "2.0", an id that is not a string or an integer) | -32600 (the id when it has one of those types, else null) |
//! | a standard MCP method with params of the wrong shape | -32602 (the id) |
//! | over [`MAX_MESSAGE_BYTES`] | -32600 (the id, when it is in the first 64 KiB) |
//! | an unknown method | -32601 (the id), by rmcp |
//!
//! A notification is never answered on stdio (a bad one is logged and dropped); over HTTP a
//! bad one gets HTTP 400 with the error.

use std::borrow::Cow;

use rmcp::RoleServer;
use rmcp::model::{
    CallToolRequestParams, ClientJsonRpcMessage, ClientRequest, InitializeRequestParams,
    JsonRpcMessage, PaginatedRequestParams,
};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// The largest message accepted, on stdio (one line) and over HTTP (one body): 24 MiB, room
/// for the largest argument (`workspace_file_write`'s 16 MiB `content`) with its JSON
/// escapes and the rest of the request.
pub const MAX_MESSAGE_BYTES: usize = 24 * 1024 * 1024;

/// How much of an oversized message is kept to find its `id`.
const SNIFF_BYTES: usize = 64 * 1024;

/// Invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a JSON-RPC 2.0 request object.
pub const INVALID_REQUEST: i64 = -32600;
/// Params of the wrong shape.
pub const INVALID_PARAMS: i64 = -32602;

/// The requests a client may send in MCP (the ones rmcp would otherwise take for a custom
/// method when their params do not parse).
const CLIENT_REQUESTS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "completion/complete",
    "logging/setLevel",
    "prompts/get",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "subscriptions/listen",
    "tools/call",
    "tools/list",
    "tasks/get",
    "tasks/list",
    "tasks/cancel",
    "tasks/result",
];

/// What to do with one incoming message.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Hand it to rmcp.
    Pass(Box<ClientJsonRpcMessage>),
    /// Nothing to do (a blank line).
    Skip,
    /// Refuse it with this error (a JSON-RPC error object, `id` included).
    Refuse(Refusal),
}

/// A refused message and the answer it gets.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The JSON-RPC error message to send.
    pub reply: Value,
    /// Whether the message was a notification (on stdio: not answered).
    pub notification: bool,
}

impl Refusal {
    fn new(code: i64, id: Value, message: impl Into<String>, notification: bool) -> Self {
        Self {
            reply: error_reply(code, id, message),
            notification,
        }
    }

    /// The JSON-RPC error code (the HTTP transport picks its status by it).
    #[cfg(any(feature = "http", test))]
    pub(crate) fn code(&self) -> i64 {
        self.reply["error"]["code"]
            .as_i64()
            .unwrap_or(INVALID_REQUEST)
    }
}

/// A JSON-RPC error response.
pub fn error_reply(code: i64, id: Value, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

/// The answer to a message of `len` bytes over [`MAX_MESSAGE_BYTES`] whose first bytes are
/// `prefix`.
pub fn too_large(prefix: &[u8], len: Option<usize>) -> Value {
    let size = match len {
        Some(n) => format!("{n} bytes"),
        None => format!("more than {MAX_MESSAGE_BYTES} bytes"),
    };
    error_reply(
        INVALID_REQUEST,
        sniff_id(prefix).unwrap_or(Value::Null),
        format!(
            "Invalid Request: the message is {size}, over the limit of {MAX_MESSAGE_BYTES} bytes \
             (24 MiB) per message; a file's content may be up to 16 MiB"
        ),
    )
}

/// Checks one message (a stdio line without its `\n`, or an HTTP body).
pub(crate) fn check(bytes: &[u8]) -> Verdict {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Skip;
    }
    match serde_json::from_slice::<ClientJsonRpcMessage>(bytes) {
        Ok(JsonRpcMessage::Request(r)) => {
            if let ClientRequest::CustomRequest(c) = &r.request
                && CLIENT_REQUESTS.contains(&c.method.as_str())
            {
                let id = r.id.into_json_value();
                let why = typed_params_error(&c.method, c.params.clone());
                return Verdict::Refuse(invalid_params(id, &c.method, why, false));
            }
            Verdict::Pass(Box::new(JsonRpcMessage::Request(r)))
        }
        Ok(m) => Verdict::Pass(Box::new(m)),
        Err(e) => Verdict::Refuse(diagnose(bytes, &e)),
    }
}

/// Why `bytes`, which rmcp cannot parse, is refused.
fn diagnose(bytes: &[u8], typed: &serde_json::Error) -> Refusal {
    let v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            return Refusal::new(
                PARSE_ERROR,
                Value::Null,
                format!("Parse error: not JSON ({e})"),
                false,
            );
        }
    };
    let Value::Object(obj) = v else {
        let what = if v.is_array() {
            "Invalid Request: batches are not supported; send one message at a time"
        } else {
            "Invalid Request: a message must be a JSON object"
        };
        return Refusal::new(INVALID_REQUEST, Value::Null, what, false);
    };
    let invalid = |id: Value, why: &str, notification| {
        Refusal::new(
            INVALID_REQUEST,
            id,
            format!("Invalid Request: {why}"),
            notification,
        )
    };
    let id = match obj.get("id") {
        None => None,
        Some(i @ Value::String(_)) => Some(i.clone()),
        Some(i @ Value::Number(n)) => {
            if n.is_i64() || n.is_u64() {
                Some(i.clone())
            } else {
                return invalid(i.clone(), "`id` must be a string or an integer", false);
            }
        }
        Some(_) => {
            return invalid(Value::Null, "`id` must be a string or an integer", false);
        }
    };
    let notification = id.is_none();
    let answer_id = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(answer_id, "`jsonrpc` must be \"2.0\"", notification);
    }
    match obj.get("method") {
        Some(Value::String(method)) => {
            let why = match obj.get("params") {
                None | Some(Value::Object(_)) => pyro_core::error::one_line(&typed.to_string()),
                Some(_) => "`params` must be an object".into(),
            };
            invalid_params(answer_id, method, why, notification)
        }
        Some(_) => invalid(answer_id, "`method` must be a string", notification),
        // A client's answer to a server request (rmcp sends none we wait on): nothing to
        // answer it with but an error without a request to match.
        None if obj.contains_key("result") || obj.contains_key("error") => invalid(
            answer_id,
            &format!(
                "a response of the wrong shape ({})",
                pyro_core::error::one_line(&typed.to_string())
            ),
            true,
        ),
        None => invalid(answer_id, "a request needs a `method`", notification),
    }
}

fn invalid_params(id: Value, method: &str, why: String, notification: bool) -> Refusal {
    Refusal::new(
        INVALID_PARAMS,
        id,
        format!(
            "Invalid params for `{}`: {why}",
            pyro_core::error::one_line(method)
        ),
        notification,
    )
}

/// serde's complaint about the params of a standard method, for the ones whose params type
/// is at hand.
fn typed_params_error(method: &str, params: Option<Value>) -> String {
    let params = params.unwrap_or_else(|| json!({}));
    if !params.is_object() {
        return "`params` must be an object".into();
    }
    let e = match method {
        "tools/call" => serde_json::from_value::<CallToolRequestParams>(params).err(),
        "initialize" => serde_json::from_value::<InitializeRequestParams>(params).err(),
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
            serde_json::from_value::<PaginatedRequestParams>(params).err()
        }
        _ => None,
    };
    match e {
        Some(e) => pyro_core::error::one_line(&e.to_string()),
        None => "they do not match the method's schema".into(),
    }
}

/// The top-level `id` of a JSON object whose beginning is `prefix` (a string or a number),
/// found without parsing the rest: for answering a message too large to parse.
pub fn sniff_id(prefix: &[u8]) -> Option<Value> {
    let mut i = 0;
    let n = prefix.len();
    let skip_ws = |i: &mut usize| {
        while *i < n && prefix[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // Reads a string starting at the quote at `*i`; returns its raw bytes (escapes kept).
    let string = |i: &mut usize| -> Option<(usize, usize)> {
        let start = *i + 1;
        let mut j = start;
        while j < n {
            match prefix[j] {
                b'\\' => j += 2,
                b'"' => {
                    *i = j + 1;
                    return Some((start, j));
                }
                _ => j += 1,
            }
        }
        None
    };
    skip_ws(&mut i);
    if prefix.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut depth = 1usize;
    // At depth 1, whether the next string is a key.
    let mut expect_key = true;
    while i < n {
        match prefix[i] {
            b'"' => {
                let (s, e) = string(&mut i)?;
                if depth == 1 && expect_key {
                    skip_ws(&mut i);
                    if prefix.get(i) != Some(&b':') {
                        return None;
                    }
                    i += 1;
                    expect_key = false;
                    if &prefix[s..e] == b"id" {
                        skip_ws(&mut i);
                        let start = i;
                        return if prefix.get(i) == Some(&b'"') {
                            let (s, e) = string(&mut i)?;
                            serde_json::from_slice(&prefix[s - 1..=e]).ok()
                        } else {
                            while i < n && (prefix[i] == b'-' || prefix[i].is_ascii_digit()) {
                                i += 1;
                            }
                            // A number cut by the end of the prefix is not the whole id.
                            if i == n {
                                return None;
                            }
                            serde_json::from_slice::<Value>(&prefix[start..i])
                                .ok()
                                .filter(Value::is_number)
                        };
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' => {
                if depth == 1 {
                    expect_key = true;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// Reads `\n`-terminated lines of at most [`MAX_MESSAGE_BYTES`] bytes.
#[derive(Debug)]
pub struct LineReader<R> {
    read: BufReader<R>,
}

/// One read of [`LineReader::next`].
#[derive(Debug)]
pub enum Line {
    /// A whole line, without its `\n`.
    Line(Vec<u8>),
    /// A line over the limit, dropped: its first bytes (for its `id`) and its length.
    TooLong {
        /// The first 64 KiB.
        prefix: Vec<u8>,
        /// Its length, `\n` excluded.
        len: usize,
    },
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Reads `read`.
    pub fn new(read: R) -> Self {
        Self {
            read: BufReader::with_capacity(256 * 1024, read),
        }
    }

    /// The next line; `None` at the end of input (a last line without `\n` included).
    pub async fn next(&mut self) -> std::io::Result<Option<Line>> {
        let mut line = Vec::new();
        let mut len = 0usize;
        loop {
            let available = match self.read.fill_buf().await {
                Ok(a) => a,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(match len {
                    0 => None,
                    _ if len > MAX_MESSAGE_BYTES => Some(Line::TooLong { prefix: line, len }),
                    _ => Some(Line::Line(line)),
                });
            }
            let newline = available.iter().position(|b| *b == b'\n');
            let take = newline.unwrap_or(available.len());
            len += take;
            let room = if len > MAX_MESSAGE_BYTES {
                SNIFF_BYTES.saturating_sub(line.len())
            } else {
                take
            };
            line.extend_from_slice(&available[..take.min(room)]);
            if len > MAX_MESSAGE_BYTES && line.len() > SNIFF_BYTES {
                line.truncate(SNIFF_BYTES);
                line.shrink_to_fit();
            }
            let consumed = take + usize::from(newline.is_some());
            self.read.consume(consumed);
            if newline.is_some() {
                return Ok(Some(if len > MAX_MESSAGE_BYTES {
                    Line::TooLong { prefix: line, len }
                } else {
                    Line::Line(line)
                }));
            }
        }
    }
}

/// A line to write, and who waits for it to be written.
type Outgoing = (Vec<u8>, Option<oneshot::Sender<std::io::Result<()>>>);

/// rmcp's stdio transport replaced: lines are read by [`LineReader`] and checked by
/// [`check`] on a task of their own; refused ones are answered there, the others handed to
/// rmcp. One writer task writes every line whole, rmcp's and ours, in the order queued.
pub(crate) struct LineTransport {
    incoming: mpsc::Receiver<RxJsonRpcMessage<RoleServer>>,
    out: mpsc::UnboundedSender<Outgoing>,
    reader: tokio::task::JoinHandle<()>,
    writer: Option<tokio::task::JoinHandle<()>>,
}

impl LineTransport {
    pub(crate) fn new<R, W>(read: R, write: W) -> Self
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (out, queued) = mpsc::unbounded_channel::<Outgoing>();
        let writer = tokio::spawn(write_lines(write, queued));
        let (pass, incoming) = mpsc::channel(16);
        let reader = tokio::spawn(read_lines(read, pass, out.clone()));
        Self {
            incoming,
            out,
            reader,
            writer: Some(writer),
        }
    }
}

async fn write_lines<W: AsyncWrite + Unpin>(
    mut write: W,
    mut queued: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut broken: Option<std::io::ErrorKind> = None;
    while let Some((line, done)) = queued.recv().await {
        let r = match broken {
            Some(kind) => Err(std::io::Error::new(kind, "the output is closed")),
            None => {
                let r = async {
                    write.write_all(&line).await?;
                    write.flush().await
                }
                .await;
                if let Err(e) = &r {
                    broken = Some(e.kind());
                }
                r
            }
        };
        if let Some(done) = done {
            let _ = done.send(r);
        }
    }
}

async fn read_lines<R: AsyncRead + Unpin>(
    read: R,
    pass: mpsc::Sender<RxJsonRpcMessage<RoleServer>>,
    out: mpsc::UnboundedSender<Outgoing>,
) {
    let mut lines = LineReader::new(read);
    let answer = |v: &Value| {
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        let _ = out.send((line, None));
    };
    loop {
        let line = match lines.next().await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("cannot read the MCP input: {e}");
                break;
            }
        };
        match line {
            Line::TooLong { prefix, len } => {
                tracing::warn!(len, "refused an MCP message over {MAX_MESSAGE_BYTES} bytes");
                answer(&too_large(&prefix, Some(len)));
            }
            Line::Line(bytes) => match check(&bytes) {
                Verdict::Pass(m) => {
                    if pass.send(*m).await.is_err() {
                        break;
                    }
                }
                Verdict::Skip => {}
                Verdict::Refuse(r) if r.notification => {
                    tracing::info!("ignored a malformed notification: {}", r.reply["error"]);
                }
                Verdict::Refuse(r) => {
                    tracing::info!("refused a malformed message: {}", r.reply["error"]);
                    answer(&r.reply);
                }
            },
        }
    }
}

impl rmcp::transport::Transport<RoleServer> for LineTransport {
    type Error = std::io::Error;

    fn name() -> Cow<'static, str> {
        "pyro-lines".into()
    }

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let out = self.out.clone();
        async move {
            let mut line = serde_json::to_vec(&item)?;
            line.push(b'\n');
            let (done, written) = oneshot::channel();
            out.send((line, Some(done)))
                .map_err(|_| std::io::Error::other("the output is closed"))?;
            written
                .await
                .map_err(|_| std::io::Error::other("the output is closed"))?
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        self.incoming.recv().await
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.reader.abort();
        self.incoming.close();
        // The writer ends once every queued line is written and every sender is gone.
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.out, closed));
        if let Some(w) = self.writer.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), w).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(line: &str) -> (i64, Value, bool) {
        match check(line.as_bytes()) {
            Verdict::Refuse(r) => (r.code(), r.reply["id"].clone(), r.notification),
            other => panic!("`{line}` was not refused: {other:?}"),
        }
    }

    #[test]
    fn valid_messages_pass() {
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x","arguments":{"a":1}}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"no/such/method"}"#,
            "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r",
        ] {
            assert!(matches!(check(line.as_bytes()), Verdict::Pass(_)), "{line}");
        }
        assert!(matches!(check(b"  "), Verdict::Skip));
    }

    #[test]
    fn malformed_messages_get_their_code_and_id() {
        assert_eq!(refused("{nope"), (PARSE_ERROR, Value::Null, false));
        assert_eq!(refused("[]").0, INVALID_REQUEST);
        assert_eq!(refused("3").0, INVALID_REQUEST);
        assert_eq!(
            refused(r#"{"jsonrpc":"1.0","id":"a","method":"ping"}"#),
            (INVALID_REQUEST, json!("a"), false)
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#),
            (INVALID_REQUEST, Value::Null, false)
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#),
            (INVALID_REQUEST, json!(1.5), false)
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":7,"method":5}"#),
            (INVALID_REQUEST, json!(7), false)
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":8}"#),
            (INVALID_REQUEST, json!(8), false)
        );
        for params in [
            r#"{"name":5}"#,
            r#"{"name":"x","arguments":"nope"}"#,
            r#"{"arguments":{}}"#,
            r#"[1]"#,
            r#""x""#,
        ] {
            let line =
                format!(r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{params}}}"#);
            assert_eq!(refused(&line), (INVALID_PARAMS, json!(9), false), "{line}");
        }
        assert_eq!(
            refused(
                r#"{"jsonrpc":"2.0","id":"i","method":"initialize","params":{"protocolVersion":1}}"#
            ),
            (INVALID_PARAMS, json!("i"), false)
        );
        // A notification is never answered on stdio; one of a known method with bad params
        // goes to rmcp as a custom notification, which it ignores.
        assert_eq!(
            refused(r#"{"jsonrpc":"1.0","method":"notifications/initialized"}"#),
            (INVALID_REQUEST, Value::Null, true)
        );
    }

    #[test]
    fn errors_do_not_echo_unbounded_input() {
        let name = "n".repeat(100_000);
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":5}}}}"#
        );
        let Verdict::Refuse(r) = check(line.as_bytes()) else {
            panic!("passed")
        };
        assert!(r.reply.to_string().len() < 2_000, "{}", r.reply);
    }

    #[test]
    fn the_id_of_a_message_too_large_to_parse_is_found_in_its_beginning() {
        let sniff = |s: &str| sniff_id(s.as_bytes());
        assert_eq!(
            sniff(r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"#),
            Some(json!(42))
        );
        assert_eq!(
            sniff(r#" { "method" : "x", "params": {"id": 1}, "id" : "abc" , "#),
            Some(json!("abc"))
        );
        assert_eq!(sniff(r#"{"method":"x","params":{"id":1,"a":"#), None);
        assert_eq!(sniff(r#"{"a":"\"id\":3","id":-4,"#), Some(json!(-4)));
        assert_eq!(sniff(r#"{"id":12"#), None, "a number cut short");
        assert_eq!(sniff(r#"[{"id":1}]"#), None);
        let v = too_large(br#"{"jsonrpc":"2.0","id":5,"#, Some(30 << 20));
        assert_eq!(v["id"], json!(5));
        assert_eq!(v["error"]["code"], json!(INVALID_REQUEST));
    }

    #[tokio::test]
    async fn lines_over_the_limit_are_cut_to_their_beginning() {
        let mut input = br#"{"jsonrpc":"2.0","id":3,"x":""#.to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_MESSAGE_BYTES));
        input.extend_from_slice(b"\"}\n{\"short\":1}\nlast");
        let total = input.iter().position(|b| *b == b'\n').unwrap();
        let mut r = LineReader::new(&input[..]);
        match r.next().await.unwrap().unwrap() {
            Line::TooLong { prefix, len } => {
                assert_eq!(len, total);
                assert_eq!(prefix.len(), SNIFF_BYTES);
                assert_eq!(sniff_id(&prefix), Some(json!(3)));
            }
            Line::Line(_) => panic!("not refused"),
        }
        assert!(matches!(r.next().await.unwrap(), Some(Line::Line(l)) if l == b"{\"short\":1}"));
        assert!(matches!(r.next().await.unwrap(), Some(Line::Line(l)) if l == b"last"));
        assert!(r.next().await.unwrap().is_none());
    }
}
