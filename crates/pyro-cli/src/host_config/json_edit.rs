//! Order-, layout- and comment-preserving edits of one member of a JSON (or JSONC) document.
//!
//! serde_json here is built without `preserve_order` (turning it on would reorder every JSON
//! output of the workspace), so a parse-and-reserialize round trip would sort the user's keys
//! and reformat the whole file. Instead [`parse`] records where each value lies in the text,
//! and [`upsert`] splices only the bytes of the one member it adds or replaces: every other
//! byte of the file (keys, order, whitespace, comments) stays as it was.
//!
//! With `jsonc` the parser also accepts `//` and `/* */` comments and trailing commas
//! (opencode reads its config with a JSONC parser); without it the text must be strict JSON.

use serde_json::Value;

/// Nesting the parser accepts (a config file is a few levels deep).
const MAX_DEPTH: usize = 128;

/// Where a value lies in the text, and what it holds.
#[derive(Debug)]
pub struct Node {
    /// Offset of its first byte.
    pub start: usize,
    /// Offset just past its last byte.
    pub end: usize,
    /// What it is.
    pub kind: Kind,
}

/// The shape of a [`Node`].
#[derive(Debug)]
pub enum Kind {
    /// An object, members in text order.
    Object(Vec<Member>),
    /// An array.
    Array(Vec<Node>),
    /// A string, number, `true`, `false` or `null`.
    Scalar(Value),
}

/// One `"key": value` of an object.
#[derive(Debug)]
pub struct Member {
    /// The key, unescaped.
    pub key: String,
    /// Offset of the key's opening quote.
    pub key_start: usize,
    /// The value.
    pub value: Node,
}

impl Node {
    /// The value as serde_json's (object keys sorted; a duplicate key keeps its last value).
    pub fn to_value(&self) -> Value {
        match &self.kind {
            Kind::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|m| (m.key.clone(), m.value.to_value()))
                    .collect(),
            ),
            Kind::Array(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Kind::Scalar(v) => v.clone(),
        }
    }

    /// The member `key` of an object (the last one when the key repeats, as JSON readers do).
    pub fn member(&self, key: &str) -> Option<&Member> {
        match &self.kind {
            Kind::Object(members) => members.iter().rev().find(|m| m.key == key),
            _ => None,
        }
    }
}

/// Why a text is not (strict or JSONC) JSON: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in bytes).
    pub column: usize,
    /// What was wrong there.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {} column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Parses `text` into its tree of [`Node`]s.
pub fn parse(text: &str, jsonc: bool) -> Result<Node, ParseError> {
    let mut p = Parser {
        text,
        b: text.as_bytes(),
        i: 0,
        jsonc,
    };
    if text.starts_with('\u{feff}') {
        p.i = 3;
    }
    p.ws()?;
    let root = p.value(0)?;
    p.ws()?;
    if p.i != p.b.len() {
        return Err(p.error("unexpected text after the top-level value"));
    }
    Ok(root)
}

struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    jsonc: bool,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> ParseError {
        let before = &self.b[..self.i.min(self.b.len())];
        let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
        let column = self.i
            - before
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        ParseError {
            line,
            column,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips whitespace, and comments in JSONC.
    fn ws(&mut self) -> Result<(), ParseError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n' | b'\r') => self.i += 1,
                Some(b'/') if self.jsonc => match self.b.get(self.i + 1) {
                    Some(b'/') => {
                        while self.peek().is_some_and(|c| c != b'\n') {
                            self.i += 1;
                        }
                    }
                    Some(b'*') => {
                        let rest = &self.text[self.i + 2..];
                        let Some(end) = rest.find("*/") else {
                            return Err(self.error("unterminated /* comment"));
                        };
                        self.i += 2 + end + 2;
                    }
                    _ => return Err(self.error("unexpected `/`")),
                },
                Some(b'/') => {
                    return Err(self.error("comments are not allowed in this JSON file"));
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        let start = self.i;
        match self.peek() {
            None => Err(self.error("unexpected end of the file")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => {
                let s = self.string()?;
                Ok(Node {
                    start,
                    end: self.i,
                    kind: Kind::Scalar(Value::String(s)),
                })
            }
            Some(_) => {
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
                {
                    self.i += 1;
                }
                let raw = &self.text[start..self.i];
                if raw.is_empty() {
                    return Err(self.error("expected a value"));
                }
                let v: Value = serde_json::from_str(raw).map_err(|_| {
                    let mut e = self.error(format!("`{raw}` is not a JSON value"));
                    e.column -= raw.len();
                    e
                })?;
                Ok(Node {
                    start,
                    end: self.i,
                    kind: Kind::Scalar(v),
                })
            }
        }
    }

    /// A string at `self.i` (which is a `"`), unescaped.
    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.i;
        self.i += 1;
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => self.i += 2,
                Some(c) if c < 0x20 => {
                    return Err(self.error("control character in a string"));
                }
                Some(_) => self.i += 1,
            }
        }
        self.i += 1;
        let raw = self.text.get(start..self.i).unwrap_or_default();
        serde_json::from_str::<String>(raw).map_err(|e| {
            let mut err = self.error(format!("invalid string: {e}"));
            err.column = err.column.saturating_sub(self.i - start);
            err
        })
    }

    fn object(&mut self, depth: usize) -> Result<Node, ParseError> {
        let start = self.i;
        self.i += 1;
        let mut members = Vec::new();
        self.ws()?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Node {
                start,
                end: self.i,
                kind: Kind::Object(members),
            });
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key_start = self.i;
            let key = self.string()?;
            self.ws()?;
            if self.peek() != Some(b':') {
                return Err(self.error("expected `:` after the key"));
            }
            self.i += 1;
            self.ws()?;
            let value = self.value(depth + 1)?;
            members.push(Member {
                key,
                key_start,
                value,
            });
            self.ws()?;
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws()?;
                    if self.jsonc && self.peek() == Some(b'}') {
                        self.i += 1;
                        break;
                    }
                }
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
        Ok(Node {
            start,
            end: self.i,
            kind: Kind::Object(members),
        })
    }

    fn array(&mut self, depth: usize) -> Result<Node, ParseError> {
        let start = self.i;
        self.i += 1;
        let mut items = Vec::new();
        self.ws()?;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Node {
                start,
                end: self.i,
                kind: Kind::Array(items),
            });
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.ws()?;
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws()?;
                    if self.jsonc && self.peek() == Some(b']') {
                        self.i += 1;
                        break;
                    }
                }
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
        Ok(Node {
            start,
            end: self.i,
            kind: Kind::Array(items),
        })
    }
}

/// A value to write: objects keep the member order given and are laid out one member per
/// line; everything else is written on one line.
#[derive(Debug, Clone, PartialEq)]
pub enum Tree {
    /// An object, in this order.
    Object(Vec<(String, Tree)>),
    /// Any other value (an object here is written inline).
    Leaf(Value),
}

impl Tree {
    /// Writes the tree; `indent` is the indentation of the line it starts on, `unit` one
    /// level of indentation.
    pub fn render(&self, indent: &str, unit: &str) -> String {
        match self {
            Tree::Leaf(v) => inline(v),
            Tree::Object(members) if members.is_empty() => "{}".into(),
            Tree::Object(members) => {
                let inner = format!("{indent}{unit}");
                let body: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("{inner}{}: {}", quote(k), v.render(&inner, unit)))
                    .collect();
                format!("{{\n{}\n{indent}}}", body.join(",\n"))
            }
        }
    }

    /// The tree as a serde_json value.
    pub fn to_value(&self) -> Value {
        match self {
            Tree::Leaf(v) => v.clone(),
            Tree::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
            }
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// One-line JSON with a space after `:` and `,` (`["mcp", "serve"]`).
fn inline(v: &Value) -> String {
    match v {
        Value::Array(items) if !items.is_empty() => {
            format!(
                "[{}]",
                items.iter().map(inline).collect::<Vec<_>>().join(", ")
            )
        }
        Value::Object(m) if !m.is_empty() => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", quote(k), inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => serde_json::to_string(other).unwrap_or_else(|_| "null".into()),
    }
}

/// What to put at the end of a path of objects.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Keys from the top-level object to the object that holds the entry
    /// (`["mcpServers"]`, `["mcp"]`).
    pub container: &'a [&'a str],
    /// The entry's key (`pyro`).
    pub name: &'a str,
    /// Members the entry must have with exactly these values, in this order.
    pub managed: Vec<(String, Value)>,
    /// Members added with these values only when the entry lacks them.
    pub defaults: Vec<(String, Value)>,
}

/// Why an edit is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// The text does not parse.
    Parse(ParseError),
    /// A value on the way is not an object (`what` names it).
    NotAnObject {
        /// The JSON path, e.g. `mcpServers.pyro`.
        what: String,
    },
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EditError::Parse(e) => write!(f, "not valid JSON: {e}"),
            EditError::NotAnObject { what } => write!(f, "`{what}` is not a JSON object"),
        }
    }
}

impl std::error::Error for EditError {}

/// Adds the entry to `text`, or brings the existing one up to date (its managed members
/// replaced in place, its other members kept). `None`: the entry is already as wanted.
pub fn upsert(text: &str, jsonc: bool, entry: &Entry<'_>) -> Result<Option<String>, EditError> {
    let root = parse(text, jsonc).map_err(EditError::Parse)?;
    if !matches!(root.kind, Kind::Object(_)) {
        return Err(EditError::NotAnObject {
            what: "(top level)".into(),
        });
    }
    let unit = indent_unit(text, &root);
    let mut cur = &root;
    for (depth, key) in entry.container.iter().enumerate() {
        match cur.member(key) {
            None => {
                // Build the rest of the path around the entry.
                let mut tree = Tree::Object(vec![(entry.name.to_string(), desired(entry, None))]);
                for k in entry.container[depth + 1..].iter().rev() {
                    tree = Tree::Object(vec![(k.to_string(), tree)]);
                }
                return Ok(Some(insert_member(text, cur, key, &tree, &unit)));
            }
            Some(m) if matches!(m.value.kind, Kind::Object(_)) => cur = &m.value,
            Some(_) => {
                return Err(EditError::NotAnObject {
                    what: entry.container[..=depth].join("."),
                });
            }
        }
    }
    match cur.member(entry.name) {
        None => {
            let tree = desired(entry, None);
            Ok(Some(insert_member(text, cur, entry.name, &tree, &unit)))
        }
        Some(m) => {
            let Kind::Object(existing) = &m.value.kind else {
                return Err(EditError::NotAnObject {
                    what: format!("{}.{}", entry.container.join("."), entry.name),
                });
            };
            let tree = desired(entry, Some(existing));
            let Tree::Object(wanted) = &tree else {
                return Ok(None);
            };
            let same = wanted.len() == existing.len()
                && wanted
                    .iter()
                    .zip(existing)
                    .all(|((k, v), m)| *k == m.key && v.to_value() == m.value.to_value());
            if same {
                return Ok(None);
            }
            let indent = line_indent(text, m.key_start);
            let mut out = String::with_capacity(text.len() + 256);
            out.push_str(&text[..m.value.start]);
            out.push_str(&tree.render(&indent, &unit));
            out.push_str(&text[m.value.end..]);
            Ok(Some(out))
        }
    }
}

/// The entry's members: the existing ones in their order (managed ones with their wanted
/// values), then the managed ones it lacked, then the defaults it lacked.
fn desired(entry: &Entry<'_>, existing: Option<&Vec<Member>>) -> Tree {
    let mut out: Vec<(String, Tree)> = Vec::new();
    let managed = |k: &str| entry.managed.iter().find(|(m, _)| m == k);
    for m in existing.into_iter().flatten() {
        if out.iter().any(|(k, _)| *k == m.key) {
            continue;
        }
        let v = managed(&m.key).map_or_else(|| m.value.to_value(), |(_, v)| v.clone());
        out.push((m.key.clone(), Tree::Leaf(v)));
    }
    for (k, v) in entry.managed.iter().chain(&entry.defaults) {
        if !out.iter().any(|(o, _)| o == k) {
            out.push((k.clone(), Tree::Leaf(v.clone())));
        }
    }
    Tree::Object(out)
}

/// The text with `"key": tree` added as the last member of the object `obj`.
fn insert_member(text: &str, obj: &Node, key: &str, tree: &Tree, unit: &str) -> String {
    let Kind::Object(members) = &obj.kind else {
        return text.to_string();
    };
    let mut out = String::with_capacity(text.len() + 256);
    match members.last() {
        Some(last) => {
            let indent = line_indent(text, members[0].key_start);
            let member = format!("{}: {}", quote(key), tree.render(&indent, unit));
            // A trailing comma (JSONC) stays trailing: add after it.
            let after = &text[last.value.end..obj.end - 1];
            let trailing = after
                .find(',')
                .filter(|&p| after[..p].trim().is_empty())
                .map(|p| last.value.end + p + 1);
            match trailing {
                Some(at) => {
                    out.push_str(&text[..at]);
                    out.push_str(&format!("\n{indent}{member},"));
                    out.push_str(&text[at..]);
                }
                None => {
                    out.push_str(&text[..last.value.end]);
                    out.push_str(&format!(",\n{indent}{member}"));
                    out.push_str(&text[last.value.end..]);
                }
            }
        }
        None => {
            let outer = line_indent(text, obj.start);
            let indent = format!("{outer}{unit}");
            let member = format!("{}: {}", quote(key), tree.render(&indent, unit));
            let inside = &text[obj.start + 1..obj.end - 1];
            out.push_str(&text[..obj.start + 1]);
            if inside.trim().is_empty() {
                out.push_str(&format!("\n{indent}{member}\n{outer}"));
            } else {
                // Only comments inside (JSONC): keep them after the new member.
                out.push_str(&format!("\n{indent}{member},"));
                out.push_str(inside);
            }
            out.push_str(&text[obj.end - 1..]);
        }
    }
    out
}

/// The whitespace that starts the line holding offset `at`.
fn line_indent(text: &str, at: usize) -> String {
    let line_start = text[..at].rfind('\n').map_or(0, |p| p + 1);
    text[line_start..at]
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .collect()
}

/// One level of indentation as the file uses it: that of the top-level members, or two
/// spaces.
fn indent_unit(text: &str, root: &Node) -> String {
    if let Kind::Object(members) = &root.kind
        && let Some(first) = members.first()
    {
        let before = &text[..first.key_start];
        if before.contains('\n') {
            let ind = line_indent(text, first.key_start);
            if !ind.is_empty() && before.trim_end_matches([' ', '\t']).ends_with('\n') {
                return ind;
            }
        }
    }
    "  ".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            container: &["mcpServers"],
            name: "pyro",
            managed: vec![
                ("command".into(), Value::from("/bin/pyro")),
                ("args".into(), serde_json::json!(["mcp", "serve"])),
            ],
            defaults: vec![("env".into(), serde_json::json!({}))],
        }
    }

    #[test]
    fn adds_to_an_existing_container_keeping_every_other_byte() {
        let text = "{\n    \"zeta\": 1,\n    \"mcpServers\": {\n        \"other\": {\"command\": \"x\"}\n    },\n    \"alpha\": [1, 2]\n}\n";
        let out = upsert(text, false, &entry()).unwrap().unwrap();
        assert_eq!(
            out,
            "{\n    \"zeta\": 1,\n    \"mcpServers\": {\n        \"other\": {\"command\": \"x\"},\n        \"pyro\": {\n            \"command\": \"/bin/pyro\",\n            \"args\": [\"mcp\", \"serve\"],\n            \"env\": {}\n        }\n    },\n    \"alpha\": [1, 2]\n}\n"
        );
        assert!(upsert(&out, false, &entry()).unwrap().is_none());
    }

    #[test]
    fn creates_the_container_and_fills_an_empty_object() {
        let out = upsert("{}", false, &entry()).unwrap().unwrap();
        assert_eq!(
            out,
            "{\n  \"mcpServers\": {\n    \"pyro\": {\n      \"command\": \"/bin/pyro\",\n      \"args\": [\"mcp\", \"serve\"],\n      \"env\": {}\n    }\n  }\n}"
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["mcpServers"]["pyro"]["command"], "/bin/pyro");
    }

    #[test]
    fn updates_managed_members_and_keeps_the_users_own() {
        let text = r#"{"mcpServers": {"pyro": {"command": "/old/pyro", "env": {"PYRO_STATE_DIR": "/s"}, "args": ["mcp", "serve"]}}}"#;
        let out = upsert(text, false, &entry()).unwrap().unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["mcpServers"]["pyro"]["command"], "/bin/pyro");
        assert_eq!(v["mcpServers"]["pyro"]["env"]["PYRO_STATE_DIR"], "/s");
        // Existing order kept: command, env, args.
        let c = out.find("\"command\"").unwrap();
        let e = out.find("\"env\"").unwrap();
        let a = out.find("\"args\"").unwrap();
        assert!(c < e && e < a, "{out}");
        assert!(upsert(&out, false, &entry()).unwrap().is_none());
    }

    #[test]
    fn jsonc_comments_and_trailing_commas_survive() {
        let text =
            "{\n  // servers\n  \"mcp\": {\n    \"a\": {\"type\": \"local\"}, // a\n  },\n}\n";
        let e = Entry {
            container: &["mcp"],
            ..entry()
        };
        let out = upsert(text, true, &e).unwrap().unwrap();
        assert!(out.contains("// servers") && out.contains("// a"), "{out}");
        assert!(parse(&out, true).is_ok(), "{out}");
        assert!(upsert(&out, true, &e).unwrap().is_none());
        // Strict JSON refuses the same text.
        assert!(matches!(upsert(text, false, &e), Err(EditError::Parse(_))));
    }

    #[test]
    fn refuses_broken_or_misshapen_documents() {
        for bad in [
            "",
            "{",
            "{\"a\": }",
            "[1]",
            "{\"a\": 1} x",
            "{\"a\": 1,}",
            "{'a': 1}",
        ] {
            assert!(upsert(bad, false, &entry()).is_err(), "{bad:?}");
        }
        let e = upsert(r#"{"mcpServers": []}"#, false, &entry()).unwrap_err();
        assert_eq!(e.to_string(), "`mcpServers` is not a JSON object");
        let e = parse("{\n  \"a\": tru\n}", false).unwrap_err();
        assert_eq!((e.line, e.column), (2, 8));
    }
}
