//! Git's C-style path quoting (`"a/with\ttab"`, `"caf\303\251"`), in both directions.

/// Reads one quoted string at the start of `input` (which must begin with `"`).
///
/// Returns the unescaped bytes and how many input bytes the quoted string used, or `None`
/// when the quoting is malformed (no closing quote, unknown escape, bad octal).
pub(crate) fn unquote_prefix(input: &[u8]) -> Option<(Vec<u8>, usize)> {
    if input.first() != Some(&b'"') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 1;
    while i < input.len() {
        match input[i] {
            b'"' => return Some((out, i + 1)),
            b'\\' => {
                let escaped = *input.get(i + 1)?;
                i += 2;
                let byte = match escaped {
                    b'a' => 0x07,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 0x0b,
                    b'\\' => b'\\',
                    b'"' => b'"',
                    b'0'..=b'3' => {
                        let digits = input.get(i..i + 2)?;
                        let mut value = u32::from(escaped - b'0');
                        for &d in digits {
                            if !(b'0'..=b'7').contains(&d) {
                                return None;
                            }
                            value = value * 8 + u32::from(d - b'0');
                        }
                        i += 2;
                        u8::try_from(value).ok()?
                    }
                    _ => return None,
                };
                out.push(byte);
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    None
}

/// Unquotes `input` when it is entirely one quoted string; `None` when it is not.
pub(crate) fn unquote_exact(input: &[u8]) -> Option<Vec<u8>> {
    match unquote_prefix(input) {
        Some((bytes, used)) if used == input.len() => Some(bytes),
        _ => None,
    }
}

/// Whether git would quote this name: control characters, `"` and `\`.
///
/// Non-ASCII names are left as they are (git's `core.quotePath=false`); `git apply` reads
/// both forms.
fn needs_quoting(name: &str) -> bool {
    name.bytes()
        .any(|b| b < 0x20 || b == 0x7f || b == b'"' || b == b'\\')
}

/// Renders `name` as git writes it in headers: verbatim, or C-quoted when it must be.
pub(crate) fn quote(name: &str) -> String {
    if !needs_quoting(name) {
        return name.to_owned();
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        match ch {
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\{:03o}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquotes_escapes_and_octal() {
        let (bytes, used) = unquote_prefix(br#""a/caf\303\251 \"x\"\t" rest"#).unwrap();
        assert_eq!(bytes, "a/café \"x\"\t".as_bytes());
        assert_eq!(used, 23);
    }

    #[test]
    fn rejects_malformed_quoting() {
        assert_eq!(unquote_prefix(br#""open"#), None);
        assert_eq!(unquote_prefix(br#""bad\q""#), None);
        assert_eq!(unquote_prefix(br#""oct\39""#), None);
        assert_eq!(unquote_prefix(b"plain"), None);
        assert_eq!(unquote_exact(br#""a" b"#), None);
    }

    #[test]
    fn quote_round_trips() {
        for name in [
            "plain/name",
            "with space",
            "tab\there",
            "q\"uote",
            "back\\slash",
            "é\x01",
        ] {
            let quoted = quote(name);
            let back = if quoted.starts_with('"') {
                unquote_exact(quoted.as_bytes()).unwrap()
            } else {
                quoted.clone().into_bytes()
            };
            assert_eq!(back, name.as_bytes(), "{quoted}");
        }
        assert_eq!(quote("with space"), "with space");
        assert_eq!(quote("a\tb"), "\"a\\tb\"");
    }
}
