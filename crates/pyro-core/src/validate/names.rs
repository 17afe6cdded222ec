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
