//! Every check of a caller's input, in one place: ranges, exec parameters (here), and
//! workspace names and labels ([`names`]). The store and the operations call these; none of
//! them is written twice.

pub mod names;

use crate::{
    Command, CoreError, ExecOptions, MAX_COMMAND_BYTES, MAX_EXEC_REQUEST_BYTES, MAX_STDIN_BYTES,
    MAX_TIMEOUT_SECONDS, Result, api,
};

pub use names::{
    ValidationError, validate_label_key, validate_label_value, validate_labels, validate_name,
};

/// Refuses `value` outside `min..=max`, naming `field`.
pub fn check_range(field: &'static str, value: i64, (min, max): (i64, i64)) -> Result<()> {
    if value < min || value > max {
        return Err(CoreError::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// A network policy's name (`off`, `egress`, `egress+published-ports`), checked.
pub fn network_policy(name: &str) -> Result<pyro_net::NetworkPolicy> {
    name.trim()
        .parse()
        .map_err(|e: pyro_net::PolicyError| CoreError::Invalid {
            field: "network_policy",
            reason: e.to_string(),
        })
}

/// The allowlist of `allow_hosts` and `allow_cidrs` under `policy`: each entry checked
/// (bounded counts and lengths, DNS rules, CIDRs clear of the ranges no guest may reach),
/// and refused altogether without a network to narrow.
pub fn allowlist(
    policy: pyro_net::NetworkPolicy,
    hosts: &[String],
    cidrs: &[String],
) -> Result<pyro_net::Allowlist> {
    let list = pyro_net::Allowlist::parse(hosts, cidrs).map_err(|e| CoreError::Invalid {
        field: match e {
            pyro_net::AllowlistError::BadCidr { .. }
            | pyro_net::AllowlistError::ForbiddenCidr { .. } => "allow_cidrs",
            pyro_net::AllowlistError::TooMany { what, .. } if what.contains("cidr") => {
                "allow_cidrs"
            }
            _ => "allow_hosts",
        },
        reason: e.to_string(),
    })?;
    if !list.is_empty() && !policy.is_networked() {
        return Err(CoreError::Invalid {
            field: if hosts.is_empty() {
                "allow_cidrs"
            } else {
                "allow_hosts"
            },
            reason: "an allowlist narrows a network, and this sandbox has none: use network \
                     (run) or network_policy egress (workspaces)"
                .into(),
        });
    }
    Ok(list)
}

/// Validates exec parameters (shared by every exec entry point).
pub fn validate_exec(opts: &ExecOptions) -> Result<()> {
    check_range(
        "timeout_seconds",
        opts.timeout_seconds,
        (1, MAX_TIMEOUT_SECONDS),
    )?;
    match &opts.command {
        Command::Argv(a) if a.is_empty() => {
            return Err(CoreError::Invalid {
                field: "command",
                reason: "a command is required".into(),
            });
        }
        Command::Argv(a) if a[0].is_empty() => {
            return Err(CoreError::Invalid {
                field: "command",
                reason: "the program name is empty".into(),
            });
        }
        Command::Shell(s) if s.trim().is_empty() => {
            return Err(CoreError::Invalid {
                field: "command",
                reason: "a command is required".into(),
            });
        }
        _ => {}
    }
    let all = match &opts.command {
        Command::Argv(a) => a.iter().any(|s| s.contains('\0')),
        Command::Shell(s) => s.contains('\0'),
    };
    if all {
        return Err(CoreError::Invalid {
            field: "command",
            reason: "NUL bytes cannot be passed to a program".into(),
        });
    }
    if let Some(cwd) = &opts.cwd
        && !cwd.starts_with('/')
    {
        return Err(CoreError::Invalid {
            field: "cwd",
            reason: format!("`{cwd}` is not an absolute guest path"),
        });
    }
    for k in opts.env.keys() {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(CoreError::Invalid {
                field: "env",
                reason: format!("`{k}` is not a valid environment variable name"),
            });
        }
    }
    if let Some(m) = opts.max_output_bytes
        && m == 0
    {
        return Err(CoreError::Invalid {
            field: "max_output_bytes",
            reason: "must be at least 1".into(),
        });
    }
    validate_exec_sizes(opts)
}

/// The size limits of an exec: [`MAX_COMMAND_BYTES`], [`MAX_EXEC_REQUEST_BYTES`] and
/// [`MAX_STDIN_BYTES`], so that an oversized request fails as invalid input up front instead
/// of deep inside the protocol.
pub(crate) fn validate_exec_sizes(opts: &ExecOptions) -> Result<()> {
    let command = match &opts.command {
        Command::Argv(a) => a.iter().map(|s| s.len() + 1).sum(),
        Command::Shell(s) => s.len() + 1,
    };
    if command > MAX_COMMAND_BYTES {
        return Err(CoreError::Invalid {
            field: "command",
            reason: format!(
                "{command} bytes (with a NUL per argument) exceed the limit of \
                 {MAX_COMMAND_BYTES} bytes"
            ),
        });
    }
    if let Some(stdin) = &opts.stdin
        && stdin.len() > MAX_STDIN_BYTES
    {
        return Err(CoreError::Invalid {
            field: "stdin",
            reason: format!(
                "{} bytes exceed the limit of {MAX_STDIN_BYTES} bytes (64 MiB)",
                stdin.len()
            ),
        });
    }
    // The request travels as one message; the field named is the largest part of it.
    let cwd = opts.cwd.as_deref().unwrap_or("/workspace");
    let env: usize = opts.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let field = [("command", command), ("cwd", cwd.len()), ("env", env)]
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map_or("command", |(f, _)| f);
    let too_large = |n: usize| CoreError::Invalid {
        field,
        reason: format!(
            "the exec request (command, cwd and environment) takes {n} bytes encoded, over \
             the limit of {MAX_EXEC_REQUEST_BYTES} bytes of one request"
        ),
    };
    let raw = command + cwd.len() + env;
    if raw > MAX_EXEC_REQUEST_BYTES {
        return Err(too_large(raw));
    }
    // Encoding can grow text (escapes), so measure the request as it will be sent: the
    // largest values of the other fields, a copy of at most a few hundred KiB.
    let req = api::Request::Exec(api::ExecRequest {
        timeout_ms: Some(u64::MAX),
        stdin: true,
        ..crate::output::exec_request(opts, cwd, Some(u64::MAX))
    });
    let encoded = req.encoded_len().map_err(|e| CoreError::Invalid {
        field,
        reason: format!("cannot be encoded: {e}"),
    })?;
    if encoded > MAX_EXEC_REQUEST_BYTES {
        return Err(too_large(encoded));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ErrorKind;

    #[test]
    fn exec_validation_rejects_bad_input() {
        let mut o = ExecOptions::new(Command::Argv(vec![]));
        assert!(
            validate_exec(&o)
                .unwrap_err()
                .to_string()
                .contains("command is required")
        );
        o.command = Command::Shell("  ".into());
        assert!(validate_exec(&o).is_err());
        o.command = Command::Argv(vec!["true".into()]);
        o.timeout_seconds = 0;
        assert!(matches!(
            validate_exec(&o),
            Err(CoreError::OutOfRange {
                field: "timeout_seconds",
                ..
            })
        ));
        o.timeout_seconds = 5;
        o.cwd = Some("relative".into());
        assert!(matches!(
            validate_exec(&o),
            Err(CoreError::Invalid { field: "cwd", .. })
        ));
        o.cwd = None;
        o.env.insert("1BAD".into(), "x".into());
        assert!(matches!(
            validate_exec(&o),
            Err(CoreError::Invalid { field: "env", .. })
        ));
        o.env.clear();
        assert!(validate_exec(&o).is_ok());
    }

    #[test]
    fn exec_validation_bounds_argv_and_stdin() {
        // A 2 MiB argv is invalid input naming the limit, not a protocol failure later.
        let mut o = ExecOptions::new(Command::Argv(vec!["echo".into(), "x".repeat(2 << 20)]));
        let err = validate_exec(&o).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            matches!(&err, CoreError::Invalid { field: "command", reason }
                if reason.contains(&MAX_COMMAND_BYTES.to_string())),
            "{err}"
        );
        // Exactly at the limit passes; one byte more does not (each argument has a NUL).
        o.command = Command::Argv(vec!["x".repeat(MAX_COMMAND_BYTES - 1)]);
        assert!(validate_exec(&o).is_ok());
        o.command = Command::Argv(vec!["x".repeat(MAX_COMMAND_BYTES - 1), String::new()]);
        assert!(validate_exec(&o).is_err());
        o.command = Command::Shell("x".repeat(MAX_COMMAND_BYTES));
        assert!(matches!(
            validate_exec(&o),
            Err(CoreError::Invalid {
                field: "command",
                ..
            })
        ));
        // Within the command limit but escaped beyond one request message.
        o.command = Command::Argv(vec!["\u{1}".repeat(100 * 1024)]);
        let err = validate_exec(&o).unwrap_err();
        assert!(
            matches!(&err, CoreError::Invalid { field: "command", reason }
                if reason.contains(&MAX_EXEC_REQUEST_BYTES.to_string())),
            "{err}"
        );
        // A large environment is named as such.
        o.command = Command::Argv(vec!["true".into()]);
        o.env.insert("BIG".into(), "v".repeat(300 * 1024));
        assert!(matches!(
            validate_exec(&o),
            Err(CoreError::Invalid { field: "env", .. })
        ));
        o.env.clear();
        // 70 MiB of stdin is refused; 64 MiB is fine.
        o.stdin = Some(Bytes::from(vec![0u8; 70 << 20]));
        let err = validate_exec(&o).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            matches!(&err, CoreError::Invalid { field: "stdin", reason }
                if reason.contains(&MAX_STDIN_BYTES.to_string())),
            "{err}"
        );
        o.stdin = Some(Bytes::from(vec![0u8; MAX_STDIN_BYTES]));
        assert!(validate_exec(&o).is_ok());
    }
}
