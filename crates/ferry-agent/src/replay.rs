//! `ferry-agent replay`: applies a file of oplog entries to a destination with exactly the engine's
//! rules and says what it did with each entry, so support can reproduce a failure from the entry a
//! task saved. The password is read from a file and never printed.

use std::fmt::Write as _;

use crate::config::{read_token_file, ReplayArgs};
use crate::AgentError;

/// Runs the tool; returns the report to print and whether every entry applied.
pub async fn run(args: ReplayArgs) -> Result<(String, bool), AgentError> {
    if args.destination_uri.contains('@') {
        return Err(AgentError::Config(
            "--destination-uri must not carry credentials: pass --username and --password-file"
                .into(),
        ));
    }
    let password = match &args.password_file {
        Some(path) => read_token_file(path)?.expose().to_string(),
        None => String::new(),
    };
    if args.username.is_some() != args.password_file.is_some() {
        return Err(AgentError::Config(
            "--username and --password-file go together".into(),
        ));
    }
    let entries =
        ferry_engine::read_entries(&args.file).map_err(|e| AgentError::Config(e.to_string()))?;
    let destination = ferry_engine::Endpoint {
        uri: args.destination_uri.clone(),
        username: args.username.clone().unwrap_or_default(),
        password,
    };
    let done = ferry_engine::replay(&destination, &args.databases, &entries)
        .await
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let mut out = String::new();
    let mut ok = true;
    for r in &done {
        match &r.result {
            Ok(()) => {
                let _ = writeln!(out, "applied  {}  op={}  ns={}", r.ts, r.op, r.namespace);
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(
                    out,
                    "FAILED   {}  op={}  ns={}: {e}",
                    r.ts, r.op, r.namespace
                );
            }
        }
    }
    let skipped = entries.len() - done.len();
    let _ = writeln!(
        out,
        "{} of {} entries applied{}",
        done.iter().filter(|r| r.result.is_ok()).count(),
        entries.len(),
        if skipped > 0 {
            format!("; {skipped} not tried after the failure")
        } else {
            String::new()
        }
    );
    Ok((out, ok))
}
