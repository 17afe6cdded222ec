//! Workspace name and label rules: what callers of [`crate::store::Store`] check before
//! anything is stored.

use std::collections::BTreeMap;

use crate::store::{LABEL_KEY_MAX_CHARS, LABEL_KEY_RULE, LABEL_VALUE_MAX_CHARS, NAME_MAX_CHARS};

/// A rule a name or label broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The name is empty once trimmed.
    #[error("name must not be empty or only whitespace")]
    NameEmpty,
    /// The name is too long once trimmed.
    #[error("name must be at most {max} characters, got {len}")]
    NameTooLong {
        /// Its length in characters, trimmed.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A label key does not match [`LABEL_KEY_RULE`].
    #[error("label key `{key}` is invalid: {reason} (keys must match {LABEL_KEY_RULE})")]
    LabelKey {
        /// The key as given.
        key: String,
        /// Which part of the rule it breaks.
        reason: &'static str,
    },
    /// A label value is empty once trimmed.
    #[error("label `{key}` must have a non-empty value")]
    LabelValueEmpty {
        /// The label.
        key: String,
    },
    /// A label value is too long once trimmed.
    #[error("label `{key}` value must be at most {max} characters, got {len}")]
    LabelValueTooLong {
        /// The label.
        key: String,
        /// Its length in characters, trimmed.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A label value contains a line break.
    #[error("label `{key}` value must not contain line breaks (CR or LF)")]
    LabelValueLineBreak {
        /// The label.
        key: String,
    },
}

/// Checks a workspace name: trimmed, 1..=120 characters. Returns the trimmed name.
pub fn validate_name(name: &str) -> Result<String, ValidationError> {
    let t = name.trim();
    let len = t.chars().count();
    if len == 0 {
        return Err(ValidationError::NameEmpty);
    }
    if len > NAME_MAX_CHARS {
        return Err(ValidationError::NameTooLong {
            len,
            max: NAME_MAX_CHARS,
        });
    }
    Ok(t.to_owned())
}

/// Checks a label key against [`LABEL_KEY_RULE`] after trimming. Returns the trimmed key.
pub fn validate_label_key(key: &str) -> Result<String, ValidationError> {
    let t = key.trim();
    let fail = |reason| {
        Err(ValidationError::LabelKey {
            key: key.to_owned(),
            reason,
        })
    };
    let Some(first) = t.chars().next() else {
        return fail("it is empty");
    };
    if !first.is_ascii_alphanumeric() {
        return fail("it must start with an ASCII letter or digit");
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return fail("only ASCII letters, digits, `.`, `_` and `-` are allowed");
    }
    // Every character is ASCII here, so bytes are characters.
    if t.len() > LABEL_KEY_MAX_CHARS {
        return fail("it is longer than 64 characters");
    }
    Ok(t.to_owned())
}

/// Checks the value of label `key`: trimmed, 1..=120 characters, no CR or LF. Returns the
/// trimmed value.
pub fn validate_label_value(key: &str, value: &str) -> Result<String, ValidationError> {
    let t = value.trim();
    let len = t.chars().count();
    if len == 0 {
        return Err(ValidationError::LabelValueEmpty {
            key: key.to_owned(),
        });
    }
    if t.contains(['\r', '\n']) {
        return Err(ValidationError::LabelValueLineBreak {
            key: key.to_owned(),
        });
    }
    if len > LABEL_VALUE_MAX_CHARS {
        return Err(ValidationError::LabelValueTooLong {
            key: key.to_owned(),
            len,
            max: LABEL_VALUE_MAX_CHARS,
        });
    }
    Ok(t.to_owned())
}

/// Checks every label and returns them trimmed (sorted by key).
pub fn validate_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<BTreeMap<String, String>, ValidationError> {
    labels
        .into_iter()
        .map(|(k, v)| {
            let key = validate_label_key(k)?;
            let value = validate_label_value(&key, v)?;
            Ok((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        let ok: &[(&str, &str)] = &[
            ("a", "a"),
            ("  my workspace  ", "my workspace"),
            ("ünïcødé ✓", "ünïcødé ✓"),
        ];
        for (input, want) in ok {
            assert_eq!(validate_name(input).unwrap(), *want);
        }
        assert_eq!(
            validate_name(&"é".repeat(120)).unwrap().chars().count(),
            120
        );
        assert_eq!(validate_name(""), Err(ValidationError::NameEmpty));
        assert_eq!(validate_name(" \t\n "), Err(ValidationError::NameEmpty));
        assert_eq!(
            validate_name(&"x".repeat(121)),
            Err(ValidationError::NameTooLong { len: 121, max: 120 })
        );
        assert_eq!(
            validate_name(&format!("  {}  ", "x".repeat(120)))
                .unwrap()
                .len(),
            120
        );
    }

    #[test]
    fn label_keys_follow_the_contract_pattern() {
        let long_ok = format!("a{}", "b".repeat(63));
        for key in [
            "a",
            "Z9",
            "0",
            "team.name",
            "a_b-c.d",
            long_ok.as_str(),
            " padded ",
        ] {
            assert_eq!(validate_label_key(key).unwrap(), key.trim(), "{key:?}");
        }
        let too_long = "a".repeat(65);
        let bad = [
            "",
            "   ",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "a:b",
            "é",
            "aé",
            too_long.as_str(),
        ];
        for key in bad {
            match validate_label_key(key) {
                Err(ValidationError::LabelKey { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key:?}: unexpected {other:?}"),
            }
        }
        let e = validate_label_key("-a").unwrap_err().to_string();
        assert!(e.contains(LABEL_KEY_RULE), "{e}");
    }

    #[test]
    fn label_values_are_trimmed_bounded_and_single_line() {
        assert_eq!(validate_label_value("k", " v ").unwrap(), "v");
        assert_eq!(validate_label_value("k", "a b=c").unwrap(), "a b=c");
        // Surrounding line breaks are trimmed away, inner ones are refused.
        assert_eq!(validate_label_value("k", "\nv\r\n").unwrap(), "v");
        assert_eq!(
            validate_label_value("k", "  "),
            Err(ValidationError::LabelValueEmpty { key: "k".into() })
        );
        for v in ["a\nb", "a\rb", "a\r\nb"] {
            assert_eq!(
                validate_label_value("k", v),
                Err(ValidationError::LabelValueLineBreak { key: "k".into() })
            );
        }
        assert!(validate_label_value("k", &"é".repeat(120)).is_ok());
        assert_eq!(
            validate_label_value("k", &"v".repeat(121)),
            Err(ValidationError::LabelValueTooLong {
                key: "k".into(),
                len: 121,
                max: 120
            })
        );
        let mut m = BTreeMap::new();
        m.insert(" b ".to_string(), " 2 ".to_string());
        m.insert("a".to_string(), "1".to_string());
        let v = validate_labels(&m).unwrap();
        assert_eq!(
            v.into_iter().collect::<Vec<_>>(),
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        m.insert("c".to_string(), "x\ny".to_string());
        assert!(matches!(
            validate_labels(&m),
            Err(ValidationError::LabelValueLineBreak { key }) if key == "c"
        ));
    }
}
