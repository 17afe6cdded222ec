//! Tool failures: every failure of a tool call, argument errors included, becomes a tool
//! result with `isError: true` whose text a model can act on, an unknown tool name included.
//! Protocol errors are kept for messages that are not a well-formed request (`framing.rs`).

use pyro_core::CoreError;
use rmcp::model::{CallToolResult, ContentBlock};

/// Why a tool call failed.
#[derive(Debug)]
pub(crate) struct ToolError {
    /// `invalid_input`, `not_found`, `state`, `unavailable` or `runtime` (the core's
    /// [`pyro_core::ErrorKind`] names).
    pub kind: String,
    /// The message with its causes, `{:#}` style (`outer: inner: innermost`).
    pub message: String,
    /// Structured facts ([`CoreError::data`]: a failed service's record), sent as a second
    /// text block of JSON.
    pub data: Option<serde_json::Value>,
}

impl ToolError {
    /// Bad arguments caught before the core is called.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self {
            kind: "invalid_input".into(),
            message: message.into(),
            data: None,
        }
    }

    /// The tool result a client receives.
    pub(crate) fn into_result(self, tool: &str) -> CallToolResult {
        let text = format!("{tool} failed [{}]: {}", self.kind, self.message);
        let mut blocks = vec![ContentBlock::text(text)];
        if let Some(data) = self.data {
            blocks.push(ContentBlock::text(data.to_string()));
        }
        CallToolResult::error(blocks)
    }
}

/// An error and its sources, joined by `: ` (what anyhow prints for `{:#}`), with
/// consecutive repeats dropped.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if parts.last().is_none_or(|p| !p.ends_with(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

impl From<CoreError> for ToolError {
    fn from(e: CoreError) -> Self {
        let kind = serde_json::to_value(e.kind())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "runtime".into());
        Self {
            kind,
            data: e.data(),
            message: chain(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_keep_kind_and_causes() {
        let e = CoreError::OutOfRange {
            field: "vcpu_count",
            value: 99,
            min: 1,
            max: 8,
        };
        let t = ToolError::from(e);
        assert_eq!(t.kind, "invalid_input");
        assert_eq!(t.message, "vcpu_count must be between 1 and 8, got 99");

        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = CoreError::Io {
            action: "open",
            path: "/x".into(),
            source: io,
        };
        let t = ToolError::from(e);
        assert_eq!(t.kind, "runtime");
        assert_eq!(t.message, "cannot open `/x`: denied");

        let r = ToolError::invalid("bad").into_result("vm_run");
        assert_eq!(r.is_error, Some(true));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["content"][0]["text"],
            "vm_run failed [invalid_input]: bad"
        );
    }
}
