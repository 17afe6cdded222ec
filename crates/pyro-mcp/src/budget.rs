//! Result sizes: every tool result fits what MCP clients accept.
//!
//! Clients bound what they take: Claude Code refuses a result over `MAX_MCP_OUTPUT_TOKENS`
//! (25,000 tokens by default) and the TypeScript SDK's stdio transport closes the session on
//! a message over 10 MiB. So, after the core has answered and before the result is rendered,
//! [`fit`] bounds the output fields of the tools that return output (command output, file
//! content, command history, diffs, service logs) to a [`ResultBudget`]:
//!
//! - without an explicit size argument, the whole result stays within the budget:
//!   [`DEFAULT_BUDGET_BYTES`] (25,000 tokens at 4 bytes each), or `MAX_MCP_OUTPUT_TOKENS` × 4
//!   when the server's environment sets it;
//! - with one (`max_bytes`, `tail_lines`, `all`), what was asked for is honoured up to
//!   [`HARD_MAX_BYTES`] of the fields as JSON, which keeps the whole JSON-RPC message under
//!   10 MiB (an argument over that maximum is refused before the call: [`HARD_MAX_BYTES`]
//!   is the `maximum` of those arguments in the input schemas);
//! - a field cut to fit keeps its start (a service log its end), its `*_truncated` flag (or
//!   `truncated`) says so, and the result gains `hint` (a sentence naming the tool and the
//!   argument that returns the rest) and, where the rest can be fetched, `next`: the tool and
//!   the arguments of the call that continues exactly where this one stopped;
//! - output that is not UTF-8 is sent once: over [`DUPLICATE_MAX_BYTES`], its base64 field
//!   only, the lossy text replaced by a note.
//!
//! The budget is measured in bytes of JSON (escapes included), each field cut on a character
//! (base64: a 4-character group) boundary, so the bytes kept are the exact bytes of the
//! output and the next page starts right after them.

use pyro_core::{base64, base64_decode};
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Map, Value, json};

/// Tokens per result when `MAX_MCP_OUTPUT_TOKENS` is unset: Claude Code's default.
pub const DEFAULT_TOKENS: u64 = 25_000;
/// Bytes per token, the usual estimate for English text and code.
pub const BYTES_PER_TOKEN: u64 = 4;
/// The default budget of a result: 100,000 bytes of JSON.
pub const DEFAULT_BUDGET_BYTES: usize = (DEFAULT_TOKENS * BYTES_PER_TOKEN) as usize;
/// The most output fields may take as JSON, whatever the arguments or the environment ask:
/// 8 MiB, so that a whole message (the result's other fields, a short text item, the
/// JSON-RPC envelope) stays under the 10 MiB that clients accept.
pub const HARD_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Above this many bytes of JSON a result is not repeated as a text item, and output that is
/// not UTF-8 is sent as base64 only.
pub const DUPLICATE_MAX_BYTES: usize = 8 * 1024;
/// The environment variable Claude Code reads for its own limit, in tokens.
pub const TOKENS_ENV: &str = "MAX_MCP_OUTPUT_TOKENS";

/// Bytes kept for the fields a cut leaves in place (flags, hint, next, markers).
const SLACK_BYTES: usize = 2048;
/// The least a cut field keeps, however large the rest of the result.
const MIN_FIELD_BYTES: usize = 256;

/// How large a result may be, in bytes of JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResultBudget {
    bytes: usize,
}

impl Default for ResultBudget {
    fn default() -> Self {
        Self {
            bytes: DEFAULT_BUDGET_BYTES,
        }
    }
}

/// `MAX_MCP_OUTPUT_TOKENS` is not a positive whole number.
#[derive(Debug, thiserror::Error)]
#[error("{TOKENS_ENV} must be a positive whole number of tokens, got `{value}`")]
pub struct BadTokens {
    /// What the variable held.
    pub value: String,
}

impl ResultBudget {
    /// A budget of `tokens` tokens ([`BYTES_PER_TOKEN`] bytes each), at most
    /// [`HARD_MAX_BYTES`].
    pub fn from_tokens(tokens: u64) -> Self {
        let bytes = tokens.saturating_mul(BYTES_PER_TOKEN);
        Self {
            bytes: usize::try_from(bytes)
                .unwrap_or(HARD_MAX_BYTES)
                .clamp(1024, HARD_MAX_BYTES),
        }
    }

    /// The budget `MAX_MCP_OUTPUT_TOKENS` sets (the default when unset or empty).
    pub fn from_env() -> Result<Self, BadTokens> {
        Self::parse(std::env::var(TOKENS_ENV).ok().as_deref())
    }

    fn parse(value: Option<&str>) -> Result<Self, BadTokens> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::default()),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(Self::from_tokens(n)),
                _ => Err(BadTokens {
                    value: pyro_core::error::one_line(v),
                }),
            },
        }
    }

    /// The budget in bytes of JSON.
    pub fn bytes(self) -> usize {
        self.bytes
    }
}

/// The size arguments of each tool: a call that names one asked for its size explicitly and
/// gets up to [`HARD_MAX_BYTES`] instead of the budget. The byte counts among them are the
/// ones whose input schema says `maximum: HARD_MAX_BYTES` on MCP.
pub(crate) const SIZE_ARGS: &[(&str, &[&str])] = &[
    ("workspace_file_read", &["max_bytes"]),
    ("workspace_disk_read", &["max_bytes"]),
    ("workspace_logs", &["max_bytes"]),
    ("service_logs", &["tail_lines", "all"]),
];

/// The arguments [`fit`] reads: the size arguments and where a page started.
pub(crate) const PAGING_ARGS: &[&str] =
    &["max_bytes", "tail_lines", "all", "offset", "output_offset"];

/// The byte-count arguments capped at [`HARD_MAX_BYTES`] in MCP input schemas.
pub(crate) fn capped_arg(tool: &str, field: &str) -> bool {
    field == "max_bytes" && SIZE_ARGS.iter().any(|(t, _)| *t == tool)
}

/// The fields [`fit`] may add to `tool`'s result, with their JSON types: the output schemas
/// document them.
pub(crate) fn added_fields(tool: &str) -> &'static [(&'static str, &'static str)] {
    match tool {
        "workspace_file_read" => &[
            ("hint", "string"),
            ("next", "object"),
            ("next_offset", "integer"),
        ],
        "workspace_diff" => &[("hint", "string"), ("patch_truncated", "boolean")],
        "workspace_exec" | "workspace_logs" => &[("hint", "string"), ("next", "object")],
        "vm_run" | "vm_exec" | "workspace_disk_read" | "service_logs" => &[("hint", "string")],
        _ => &[],
    }
}

/// One output field of a result.
struct Field {
    /// Index into `entries` for the history's fields; `None` at the top level.
    entry: Option<usize>,
    /// The text field (`stdout`, `content`, `patch`).
    text: &'static str,
    /// Its exact bytes in base64, when the result has such a field.
    base64: Option<&'static str>,
    /// The flag saying it was cut.
    flag: &'static str,
    /// Whether the text ends with the core's `[pyro: output truncated: …]` marker line when
    /// cut (exec results).
    marker: bool,
    /// Keep the end rather than the start (logs shown as a tail).
    tail: bool,
}

impl Field {
    fn top(text: &'static str, base64: Option<&'static str>, flag: &'static str) -> Self {
        Self {
            entry: None,
            text,
            base64,
            flag,
            marker: false,
            tail: false,
        }
    }
}

/// The output fields of `tool`'s result `v`.
fn fields(tool: &str, v: &Value) -> Vec<Field> {
    let exec = |marker| {
        ["stdout", "stderr"]
            .into_iter()
            .zip([
                ("stdout_base64", "stdout_truncated"),
                ("stderr_base64", "stderr_truncated"),
            ])
            .map(|(text, (b, flag))| Field {
                marker,
                ..Field::top(text, Some(b), flag)
            })
            .collect()
    };
    match tool {
        "vm_run" | "vm_exec" | "workspace_exec" => exec(true),
        "workspace_file_read" | "workspace_disk_read" => {
            vec![Field::top("content", Some("content_base64"), "truncated")]
        }
        "workspace_diff" => vec![Field::top("patch", None, "patch_truncated")],
        "service_logs" => ["stdout", "stderr"]
            .into_iter()
            .zip(["stdout_truncated", "stderr_truncated"])
            .map(|(text, flag)| Field {
                tail: true,
                ..Field::top(text, None, flag)
            })
            .collect(),
        "workspace_logs" => {
            let n = v["entries"].as_array().map_or(0, Vec::len);
            (0..n)
                .flat_map(|i| {
                    [
                        ("stdout", "stdout_truncated"),
                        ("stderr", "stderr_truncated"),
                    ]
                    .map(|(text, flag)| Field {
                        entry: Some(i),
                        ..Field::top(text, None, flag)
                    })
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// A field's kept output.
enum Raw {
    /// UTF-8 text: exactly the output's bytes.
    Text(String),
    /// Output that is not UTF-8.
    Bytes(Vec<u8>),
}

impl Raw {
    fn len(&self) -> usize {
        match self {
            Raw::Text(t) => t.len(),
            Raw::Bytes(b) => b.len(),
        }
    }
}

/// The bytes of JSON `c` takes inside a string (serde_json's escapes).
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The bytes of JSON a string takes, quotes included.
fn json_str_len(s: &str) -> usize {
    2 + s.chars().map(json_len).sum::<usize>()
}

/// The longest start (or end, with `tail`) of `s` that takes at most `room` bytes of JSON.
fn cut_text(s: &str, room: usize, tail: bool) -> &str {
    let mut used = 0;
    if tail {
        let mut start = s.len();
        for (i, c) in s.char_indices().rev() {
            used += json_len(c);
            if used > room {
                break;
            }
            start = i;
        }
        &s[start..]
    } else {
        let mut end = 0;
        for (i, c) in s.char_indices() {
            used += json_len(c);
            if used > room {
                break;
            }
            end = i + c.len_utf8();
        }
        &s[..end]
    }
}

/// The object holding `f` in `v`.
fn holder<'a>(v: &'a mut Value, f: &Field) -> Option<&'a mut Map<String, Value>> {
    match f.entry {
        None => v.as_object_mut(),
        Some(i) => v["entries"].get_mut(i)?.as_object_mut(),
    }
}

/// The core's marker ending a cut exec stream: `[pyro: output truncated: N of M bytes
/// shown]`; returns N, the bytes kept before it.
fn marker_kept(text: &str) -> Option<usize> {
    let at = text.rfind("[pyro: output truncated: ")?;
    let rest = &text[at + "[pyro: output truncated: ".len()..];
    let n: usize = rest.split(' ').next()?.parse().ok()?;
    (n <= at && text.is_char_boundary(n)).then_some(n)
}

/// The output `f` holds, without the core's marker, and its current cost in JSON.
fn raw(o: &Map<String, Value>, f: &Field) -> Option<(Raw, usize)> {
    let text = o.get(f.text)?.as_str()?;
    let b64 = f.base64.and_then(|k| o.get(k)).and_then(Value::as_str);
    let cost = json_str_len(text) + b64.map_or(0, |b| b.len() + 2);
    if let Some(bytes) = b64.and_then(base64_decode) {
        return Some((Raw::Bytes(bytes), cost));
    }
    let flagged = o.get(f.flag).and_then(Value::as_bool).unwrap_or(false);
    let kept = match (f.marker && flagged).then(|| marker_kept(text)).flatten() {
        Some(n) => &text[..n],
        None => text,
    };
    Some((Raw::Text(kept.to_string()), cost))
}

/// What [`fit`] cut: per field, the bytes kept (from the start, or the end with `tail`).
struct Cut {
    field: usize,
    kept: usize,
    total: usize,
}

/// Bounds `tool`'s result `v` (called with `args`) to `budget` as the module says, and
/// returns the hint sentence when something was cut.
pub(crate) fn fit(
    tool: &str,
    args: &Map<String, Value>,
    v: &mut Value,
    budget: ResultBudget,
) -> Option<String> {
    let fs = fields(tool, v);
    if fs.is_empty() {
        return None;
    }
    let explicit = SIZE_ARGS
        .iter()
        .any(|(t, a)| *t == tool && a.iter().any(|a| args.contains_key(*a)));
    let limit = if explicit {
        HARD_MAX_BYTES
    } else {
        budget.bytes()
    };
    let mut raws: Vec<Option<(Raw, usize)>> = fs
        .iter()
        .map(|f| holder(v, f).and_then(|o| raw(o, f)))
        .collect();
    // Output that is not UTF-8 is sent once when large: base64 only.
    for (f, r) in fs.iter().zip(&raws) {
        if let Some((Raw::Bytes(b), cost)) = r
            && *cost > DUPLICATE_MAX_BYTES
            && let (Some(o), Some(k)) = (holder(v, f), f.base64)
        {
            o.insert(f.text.into(), Value::from(binary_note(k, b.len())));
            o.insert(k.into(), Value::from(base64(b)));
        }
    }
    for (f, r) in fs.iter().zip(raws.iter_mut()) {
        if let Some((_, cost)) = r {
            *cost = holder(v, f).map_or(0, |o| current_cost(o, f));
        }
    }
    let total = serde_json::to_string(v).map_or(0, |s| s.len());
    let outputs: usize = raws.iter().flatten().map(|(_, c)| c).sum();
    let room = limit.saturating_sub(total - outputs.min(total) + SLACK_BYTES);
    if outputs <= room {
        return hint(tool, args, v, &fs, &[], &raws);
    }
    // Water-filling: fields under an equal share keep everything, the rest share the
    // room left equally.
    let mut order: Vec<usize> = (0..fs.len()).filter(|&i| raws[i].is_some()).collect();
    order.sort_by_key(|&i| raws[i].as_ref().map_or(0, |(_, c)| *c));
    let mut left = room;
    let mut cuts = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let share = left / (order.len() - k);
        let Some((r, cost)) = &raws[i] else { continue };
        if *cost <= share {
            left -= cost;
            continue;
        }
        let share = share.max(MIN_FIELD_BYTES);
        let f = &fs[i];
        let Some(o) = holder(v, f) else { continue };
        let kept = match r {
            Raw::Text(t) => {
                let piece = cut_text(t, share.saturating_sub(64), f.tail);
                let mut text = piece.to_string();
                if f.marker {
                    if !text.is_empty() && !text.ends_with('\n') {
                        text.push('\n');
                    }
                    let total = o
                        .get(&format!("{}_bytes", f.text))
                        .and_then(Value::as_u64)
                        .unwrap_or(t.len() as u64);
                    text.push_str(&format!(
                        "[pyro: output truncated: {} of {total} bytes shown]\n",
                        piece.len(),
                    ));
                }
                o.insert(f.text.into(), Value::from(text));
                piece.len()
            }
            Raw::Bytes(b) => {
                let n = (share.saturating_sub(2) / 4 * 3).min(b.len());
                let piece = if f.tail { &b[b.len() - n..] } else { &b[..n] };
                if let Some(k) = f.base64 {
                    o.insert(f.text.into(), Value::from(binary_note(k, n)));
                    o.insert(k.into(), Value::from(base64(piece)));
                }
                n
            }
        };
        o.insert(f.flag.into(), Value::Bool(true));
        let total = o
            .get(&format!("{}_bytes", f.text))
            .and_then(Value::as_u64)
            .map_or(r.len(), |n| n as usize);
        left = left.saturating_sub(share);
        cuts.push(Cut {
            field: i,
            kept,
            total,
        });
    }
    cuts.sort_by_key(|c| c.field);
    hint(tool, args, v, &fs, &cuts, &raws)
}

/// What a field now costs in JSON.
fn current_cost(o: &Map<String, Value>, f: &Field) -> usize {
    let text = o
        .get(f.text)
        .and_then(Value::as_str)
        .map_or(0, json_str_len);
    let b64 = f
        .base64
        .and_then(|k| o.get(k))
        .and_then(Value::as_str)
        .map_or(0, |b| b.len() + 2);
    text + b64
}

/// The text sent instead of a lossy copy of output that is not UTF-8.
fn binary_note(base64_field: &str, bytes: usize) -> String {
    format!(
        "[pyro: {bytes} bytes of output that is not UTF-8: their exact bytes are in {base64_field}]"
    )
}

/// The `hint` (and `next`) of a result whose fields in `cuts` were cut; file reads also
/// continue when the file itself goes on past what was read.
fn hint(
    tool: &str,
    args: &Map<String, Value>,
    v: &mut Value,
    fs: &[Field],
    cuts: &[Cut],
    raws: &[Option<(Raw, usize)>],
) -> Option<String> {
    let u = |k: &str| args.get(k).and_then(Value::as_u64).unwrap_or(0);
    let what = |c: &Cut| {
        let f = &fs[c.field];
        let end = if f.tail { "last" } else { "first" };
        format!("{} shows the {end} {} of {} bytes", f.text, c.kept, c.total)
    };
    let listed = cuts.iter().map(what).collect::<Vec<_>>().join(", ");
    let fitted = format!("{listed} to fit the result size limit");
    let (hint, next) = match tool {
        "vm_run" | "vm_exec" if !cuts.is_empty() => (
            format!(
                "{fitted}; the sandbox is gone, so run the command again with its output \
                 narrowed (| tail -c N, | grep …) or, in a workspace, redirect it to a file \
                 and page it with workspace_file_read offset"
            ),
            None,
        ),
        "workspace_exec" if !cuts.is_empty() => {
            let seq = v["sequence"].as_u64().unwrap_or(1);
            let from = cuts.iter().map(|c| c.kept).min().unwrap_or(0);
            let next = json!({"tool": "workspace_logs", "arguments": {
                "workspace_id": v["workspace_id"], "offset": seq.saturating_sub(1),
                "limit": 1, "output_offset": from,
            }});
            (
                format!(
                    "{fitted}; the whole output is in the command log: call workspace_logs \
                     with offset={} limit=1 output_offset={from} for the rest",
                    seq.saturating_sub(1)
                ),
                Some(next),
            )
        }
        "workspace_file_read" => {
            let kept = match cuts.first() {
                Some(c) => c.kept,
                None => raws.first()?.as_ref()?.0.len(),
            };
            let truncated = v["truncated"].as_bool().unwrap_or(false);
            if cuts.is_empty() && !truncated {
                return None;
            }
            let offset = u("offset");
            let next_offset = offset + kept as u64;
            let max = v["max_bytes"].as_u64().unwrap_or(0);
            let room = pyro_core::workspace::MAX_READ_BYTES.saturating_sub(next_offset);
            v["next_offset"] = Value::from(next_offset);
            let start = if cuts.is_empty() {
                "more of the file follows".to_string()
            } else {
                fitted
            };
            if room == 0 {
                (
                    format!(
                        "{start}; reads stop {} bytes into a file: read the rest with \
                         workspace_exec (tail -c +{} FILE | head -c N)",
                        pyro_core::workspace::MAX_READ_BYTES,
                        next_offset + 1
                    ),
                    None,
                )
            } else {
                let a = json!({"workspace_id": v["workspace_id"], "path": v["path"],
                    "offset": next_offset, "max_bytes": max.min(room)});
                (
                    format!(
                        "{start}; call workspace_file_read with offset={next_offset} for the \
                         rest"
                    ),
                    Some(json!({"tool": "workspace_file_read", "arguments": a})),
                )
            }
        }
        "workspace_disk_read" if !cuts.is_empty() => (
            format!(
                "{fitted}; start the workspace and call workspace_file_read with offset={} \
                 for the rest",
                cuts[0].kept
            ),
            None,
        ),
        "workspace_logs" if !cuts.is_empty() => {
            let c = &cuts[0];
            let i = fs[c.field].entry.unwrap_or(0);
            let offset = u("offset") + i as u64;
            let from = u("output_offset") + c.kept as u64;
            let mut a = json!({"workspace_id": v["workspace_id"], "offset": offset,
                "limit": 1, "output_offset": from});
            if let Some(m) = args.get("max_bytes") {
                a["max_bytes"] = m.clone();
            }
            (
                format!(
                    "{fitted}; call workspace_logs with offset={offset} limit=1 \
                     output_offset={from} for the rest of entry {offset}"
                ),
                Some(json!({"tool": "workspace_logs", "arguments": a})),
            )
        }
        "workspace_diff" if !cuts.is_empty() => (
            format!(
                "{fitted}; entries lists every changed path: read them with \
                 workspace_file_read"
            ),
            None,
        ),
        "service_logs" if !cuts.is_empty() => (
            format!("{fitted}; pass a smaller tail_lines to see the end whole"),
            None,
        ),
        _ => return None,
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("hint".into(), Value::from(hint.clone()));
        if let Some(n) = next {
            o.insert("next".into(), n);
        }
    }
    Some(hint)
}

/// A successful result: `value` as `structuredContent`, and as the text item too while its
/// JSON is at most [`DUPLICATE_MAX_BYTES`] (clients without structured content read the
/// text); a larger one gets a one-sentence text item instead of a second copy.
pub(crate) fn render(tool: &str, value: Value, hint: Option<&str>) -> CallToolResult {
    let json = value.to_string();
    if json.len() <= DUPLICATE_MAX_BYTES {
        let mut r = CallToolResult::success(vec![ContentBlock::text(json)]);
        r.structured_content = Some(value);
        return r;
    }
    let mut text = format!(
        "{tool} succeeded; its result ({} bytes of JSON) is in structuredContent, not \
         repeated here.",
        json.len()
    );
    if let Some(h) = hint {
        text.push(' ');
        text.push_str(h);
        text.push('.');
    }
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(value);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    /// What the core answers to `workspace_file_read` on a file holding `data`.
    fn core_read(data: &[u8], offset: usize, max: usize) -> Value {
        let end = (offset + max).min(data.len());
        let page = &data[offset.min(end)..end];
        let (content, b64) = match std::str::from_utf8(page) {
            Ok(s) => (s.to_string(), None),
            Err(_) => (
                String::from_utf8_lossy(page).into_owned(),
                Some(base64(page)),
            ),
        };
        let mut v = json!({"workspace_id": "w1", "path": "/workspace/f", "size_bytes": data.len(),
            "offset": offset, "max_bytes": max, "content": content,
            "truncated": end < data.len(), "mode": 420, "execution_mode": "guest_vsock"});
        if let Some(b) = b64 {
            v["content_base64"] = Value::from(b);
        }
        v
    }

    /// The bytes a fitted file read holds.
    fn bytes_of(v: &Value) -> Vec<u8> {
        match v.get("content_base64").and_then(Value::as_str) {
            Some(b) => base64_decode(b).unwrap(),
            None => v["content"].as_str().unwrap().as_bytes().to_vec(),
        }
    }

    /// The whole JSON-RPC message that carries `v` as `tool`'s result.
    fn message(tool: &str, v: Value, hint: Option<&str>) -> String {
        let r = render(tool, v, hint);
        json!({"jsonrpc": "2.0", "id": 7, "result": r}).to_string()
    }

    #[test]
    fn the_budget_follows_max_mcp_output_tokens() {
        assert_eq!(ResultBudget::parse(None).unwrap().bytes(), 100_000);
        assert_eq!(ResultBudget::parse(Some("")).unwrap().bytes(), 100_000);
        assert_eq!(ResultBudget::parse(Some("50000")).unwrap().bytes(), 200_000);
        assert_eq!(
            ResultBudget::parse(Some("99999999999")).unwrap().bytes(),
            HARD_MAX_BYTES
        );
        for bad in ["0", "-1", "lots", "1.5"] {
            let e = ResultBudget::parse(Some(bad)).unwrap_err();
            assert!(e.to_string().contains(TOKENS_ENV), "{e}");
        }
    }

    #[test]
    fn a_large_exec_output_is_cut_to_the_budget_and_names_the_rest() {
        let out: String = (0..40_000).map(|i| format!("line {i}\n")).collect();
        let err = "e\"\t".repeat(200_000);
        let core = |s: &str| {
            format!(
                "{s}[pyro: output truncated: {} of 9000000 bytes shown]\n",
                s.len()
            )
        };
        let mut v = json!({"workspace_id": "w1", "sequence": 4, "exit_code": 0,
            "stdout": core(&out), "stderr": core(&err), "stdout_bytes": 9_000_000,
            "stderr_bytes": 9_000_000, "stdout_truncated": true, "stderr_truncated": true});
        let hint = fit(
            "workspace_exec",
            &Map::new(),
            &mut v,
            ResultBudget::default(),
        )
        .unwrap();
        assert!(
            v.to_string().len() <= DEFAULT_BUDGET_BYTES,
            "{}",
            v.to_string().len()
        );
        assert!(hint.contains("workspace_logs"), "{hint}");
        let next = &v["next"];
        assert_eq!(next["tool"], "workspace_logs");
        assert_eq!(next["arguments"]["offset"], 3);
        assert_eq!(next["arguments"]["limit"], 1);
        // What is shown is the exact start, then the marker; the next page starts after it.
        let shown = v["stdout"].as_str().unwrap();
        let kept = marker_kept(shown).unwrap();
        assert!(out.starts_with(&shown[..kept]));
        assert!(shown.ends_with(&format!(
            "[pyro: output truncated: {kept} of 9000000 bytes shown]\n"
        )));
        let err_kept = marker_kept(v["stderr"].as_str().unwrap()).unwrap();
        assert_eq!(
            next["arguments"]["output_offset"].as_u64().unwrap() as usize,
            kept.min(err_kept)
        );
    }

    #[test]
    fn binary_output_is_sent_once_as_base64() {
        let data: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 + 128) as u8).collect();
        let text = String::from_utf8_lossy(&data).into_owned();
        let mut v = json!({"vm_id": "v", "exit_code": 0, "stdout": text, "stderr": "",
            "stdout_bytes": data.len(), "stderr_bytes": 0, "stdout_truncated": false,
            "stderr_truncated": false, "stdout_base64": base64(&data)});
        let hint = fit("vm_run", &Map::new(), &mut v, ResultBudget::default()).unwrap();
        assert!(hint.contains("run the command again"), "{hint}");
        assert!(v.to_string().len() <= DEFAULT_BUDGET_BYTES);
        assert!(v["stdout"].as_str().unwrap().contains("stdout_base64"));
        let kept = base64_decode(v["stdout_base64"].as_str().unwrap()).unwrap();
        assert!(kept.len() > 50_000 && data.starts_with(&kept));
        assert_eq!(v["stdout_truncated"], true);

        // Small binary output keeps both forms; nothing is cut, no hint.
        let mut small = json!({"stdout": "\u{fffd}", "stdout_base64": base64(&[0xff]),
            "stderr": "", "stdout_truncated": false, "stderr_truncated": false});
        assert_eq!(
            fit("vm_run", &Map::new(), &mut small, ResultBudget::default()),
            None
        );
        assert_eq!(small["stdout"], "\u{fffd}");
    }

    #[test]
    fn small_results_are_repeated_as_text_and_large_ones_are_not() {
        let small = json!({"count": 1});
        let r = serde_json::to_value(render("workspace_list", small.clone(), None)).unwrap();
        assert_eq!(r["content"][0]["text"], small.to_string());
        assert_eq!(r["structuredContent"], small);

        let large = json!({"content": "x".repeat(50_000), "truncated": true});
        let r = serde_json::to_value(render(
            "workspace_file_read",
            large.clone(),
            Some("call again"),
        ))
        .unwrap();
        assert_eq!(r["structuredContent"], large);
        let text = r["content"][0]["text"].as_str().unwrap();
        assert!(
            text.len() < 300 && text.contains("structuredContent"),
            "{text}"
        );
        assert!(text.contains("call again"));
        assert_eq!(r["content"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn file_reads_page_through_the_exact_bytes() {
        // Text with escapes and multi-byte characters, then bytes that are not UTF-8.
        let mut data: Vec<u8> = (0..30_000)
            .flat_map(|i| format!("{i}\t\"é€\"\u{1}\n").into_bytes())
            .collect();
        data.extend((0..200_000u32).map(|i| (i % 251) as u8));
        let mut got = Vec::new();
        let (mut offset, mut max, mut calls) = (0usize, 65_536usize, 0);
        let mut explicit = false;
        loop {
            calls += 1;
            assert!(calls < 1000);
            let mut v = core_read(&data, offset, max);
            let mut a = json!({"offset": offset});
            if explicit {
                a["max_bytes"] = Value::from(max);
            }
            let hint = fit(
                "workspace_file_read",
                &args(a),
                &mut v,
                ResultBudget::from_tokens(5000),
            );
            let limit = if explicit { HARD_MAX_BYTES } else { 20_000 };
            assert!(v.to_string().len() <= limit, "{}", v.to_string().len());
            got.extend(bytes_of(&v));
            let Some(next) = v.get("next") else {
                assert_eq!(v["truncated"], false);
                assert_eq!(hint, None);
                break;
            };
            assert!(hint.unwrap().contains("workspace_file_read with offset="));
            assert_eq!(v["truncated"], true);
            assert_eq!(next["arguments"]["offset"], v["next_offset"]);
            offset = next["arguments"]["offset"].as_u64().unwrap() as usize;
            max = next["arguments"]["max_bytes"].as_u64().unwrap() as usize;
            explicit = true;
            // An explicit size is honoured up to the hard maximum: pages then grow.
            if calls == 3 {
                max = 300_000;
            }
        }
        assert_eq!(got, data);
    }

    #[test]
    fn the_worst_case_explicit_read_stays_under_10_mib_on_the_wire() {
        let cap = HARD_MAX_BYTES;
        // Control bytes (6 bytes of JSON each) and bytes that are not UTF-8 (lossy text and
        // base64): the two largest encodings of 8 MiB of content.
        for data in [vec![1u8; cap], vec![0xffu8; cap]] {
            let mut v = core_read(&data, 0, cap);
            let a = args(json!({"max_bytes": cap}));
            let hint = fit("workspace_file_read", &a, &mut v, ResultBudget::default());
            assert!(hint.is_some());
            let msg = message("workspace_file_read", v.clone(), hint.as_deref());
            assert!(msg.len() < 10 * 1024 * 1024, "{} bytes", msg.len());
            // And still as much as the hard maximum allows.
            assert!(
                msg.len() > HARD_MAX_BYTES - 4 * SLACK_BYTES,
                "{}",
                msg.len()
            );
            let kept = bytes_of(&v);
            assert_eq!(v["next_offset"], kept.len());
            assert!(data.starts_with(&kept));
        }
    }

    #[test]
    fn history_entries_share_the_budget_and_the_first_cut_one_continues() {
        let entry = |seq: u64, out: String| {
            json!({"sequence": seq, "stdout": out, "stderr": "", "stdout_bytes": 1,
                "stderr_bytes": 0, "stdout_truncated": false, "stderr_truncated": false})
        };
        let mut v = json!({"workspace_id": "w1", "count": 3, "total": 9, "offset": 5, "entries": [
            entry(6, "small\n".into()), entry(7, "a".repeat(300_000)), entry(8, "b".repeat(300_000)),
        ]});
        let hint = fit(
            "workspace_logs",
            &args(json!({"offset": 5})),
            &mut v,
            ResultBudget::default(),
        )
        .unwrap();
        assert!(v.to_string().len() <= DEFAULT_BUDGET_BYTES);
        assert_eq!(v["entries"][0]["stdout"], "small\n");
        assert_eq!(v["entries"][0]["stdout_truncated"], false);
        assert_eq!(v["entries"][1]["stdout_truncated"], true);
        let kept = v["entries"][1]["stdout"].as_str().unwrap().len();
        assert!(kept > 40_000, "{kept}");
        assert_eq!(v["next"]["arguments"]["offset"], 6);
        assert_eq!(v["next"]["arguments"]["output_offset"], kept);
        assert!(hint.contains("output_offset="), "{hint}");
    }

    #[test]
    fn service_logs_keep_their_end() {
        let out: String = (0..100_000).map(|i| format!("{i}\n")).collect();
        let mut v = json!({"name": "web", "stdout": out, "stderr": "", "truncated": false,
            "stdout_truncated": false, "stderr_truncated": false});
        let hint = fit("service_logs", &Map::new(), &mut v, ResultBudget::default()).unwrap();
        assert!(hint.contains("tail_lines"));
        let shown = v["stdout"].as_str().unwrap();
        assert!(out.ends_with(shown) && shown.len() > 50_000);
    }

    #[test]
    fn results_of_other_tools_and_small_outputs_are_untouched() {
        let list = json!({"workspaces": ["x".repeat(200_000)]});
        let small = json!({"stdout": "hi\n", "stderr": "", "stdout_truncated": false,
            "stderr_truncated": false, "sequence": 1});
        for (tool, before) in [("workspace_list", list), ("workspace_exec", small)] {
            let mut v = before.clone();
            let hint = fit(tool, &Map::new(), &mut v, ResultBudget::default());
            assert_eq!(hint, None, "{tool}");
            assert_eq!(v, before, "{tool}");
        }
    }
}
