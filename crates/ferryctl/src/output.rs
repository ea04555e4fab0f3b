//! Rendering of API objects as tables (humans) or JSON (scripts).
//!
//! Owns formatting only; it must not do IO. No renderer reads a password field: passwords are input only and never
//! shown, even if a server were to send one back.
//!
//! Every string in text output may come from a hostile server or from a value another tenant stored, so text
//! output never shows a control character raw: [`table`] and [`detail`] (through which every table and key/value
//! block goes) and the few one-line renderers pass each field through [`escape`]. JSON output goes through
//! [`json_text`], which adds the escapes serde_json leaves out (DEL, C1 controls, bidirectional overrides).

use std::time::SystemTime;

use ferry_proto::v1::{
    Agent, AuditEvent, CheckItem, CheckStatus, Checkpoint, Instance, JoinToken, Mismatch,
    MismatchKind, OplogTimestamp, Principal, Progress, SourceDatabase, Task, TaskKind, TaskPhase,
    TaskSpec, TaskState, Verification, VerificationState, VerifyMode,
};
use serde_json::{json, Value};

/// `RUNNING` for `TASK_STATE_RUNNING`.
pub fn state_name(state: i32) -> String {
    TaskState::try_from(state)
        .map(|s| strip(s.as_str_name(), "TASK_STATE_"))
        .unwrap_or_else(|_| format!("UNKNOWN({state})"))
}

/// `DATA_SYNC` for `TASK_PHASE_DATA_SYNC`; empty when unspecified.
pub fn phase_name(phase: i32) -> String {
    match TaskPhase::try_from(phase) {
        Ok(TaskPhase::Unspecified) => String::new(),
        Ok(p) => strip(p.as_str_name(), "TASK_PHASE_"),
        Err(_) => format!("UNKNOWN({phase})"),
    }
}

/// `CVM` / `PUBLIC_NETWORK`.
pub fn kind_name(kind: i32) -> String {
    TaskKind::try_from(kind)
        .map(|k| strip(k.as_str_name(), "TASK_KIND_"))
        .unwrap_or_else(|_| format!("UNKNOWN({kind})"))
}

/// `PASS`, `FAIL`...
pub fn check_status_name(status: i32) -> String {
    CheckStatus::try_from(status)
        .map(|s| strip(s.as_str_name(), "CHECK_STATUS_"))
        .unwrap_or_else(|_| format!("UNKNOWN({status})"))
}

fn strip(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

/// Whether `c` must not reach a terminal raw: control characters (C0 such as ESC, newline, carriage return and
/// tab; DEL; C1 such as the 8-bit CSI), the bidirectional embeddings, overrides and isolates (they reorder what is
/// shown), and the Unicode line and paragraph separators.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `text` with every unsafe character (see the module doc) written as a Rust escape (`\n`, `\r`, `\t`, `\u{1b}`),
/// ordinary Unicode kept; the result never contains a control character, and escaping it again changes nothing.
/// Applied to every server-supplied string in text output so a hostile value cannot move the cursor, clear or
/// retitle the terminal, or print a fake line.
pub fn escape(text: &str) -> String {
    if !text.chars().any(is_unsafe) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `value` as pretty (or, with `pretty` false, one-line) JSON, with the characters serde_json leaves raw (DEL, C1
/// controls, bidirectional controls, line separators) written as `\uXXXX` escapes. They can only occur inside JSON
/// strings, where the escape means the same character, so the document is unchanged for a parser.
pub fn json_text(value: &Value, pretty: bool) -> String {
    let text = if pretty {
        serde_json::to_string_pretty(value).unwrap_or_default()
    } else {
        value.to_string()
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // C0 characters are already escaped inside strings; raw ones are the pretty printer's newlines.
        if u32::from(c) >= 0x7f && is_unsafe(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// RFC 3339 (seconds) or empty.
pub fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|ts| SystemTime::try_from(*ts).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

fn time_json(ts: Option<&prost_types::Timestamp>) -> Value {
    let text = time(ts);
    if text.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    }
}

fn oplog_ts_json(ts: Option<&OplogTimestamp>) -> Value {
    match ts {
        Some(ts) if ts.seconds != 0 || ts.increment != 0 => {
            json!({"seconds": ts.seconds, "increment": ts.increment})
        }
        _ => Value::Null,
    }
}

/// Fraction done in DATA_SYNC (bytes if known, else documents), 0..=1.
pub fn fraction(progress: &Progress) -> Option<f64> {
    if progress.bytes_estimated > 0 {
        Some((progress.bytes_copied as f64 / progress.bytes_estimated as f64).min(1.0))
    } else if progress.documents_estimated > 0 {
        Some((progress.documents_copied as f64 / progress.documents_estimated as f64).min(1.0))
    } else {
        None
    }
}

/// Human bytes: 1.5 GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One-line summary of a task's progress.
pub fn progress_summary(task: &Task) -> String {
    let Some(progress) = &task.progress else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(f) = fraction(progress) {
        parts.push(format!("{:.1}%", f * 100.0));
    }
    if progress.documents_copied > 0 || progress.documents_estimated > 0 {
        parts.push(format!(
            "{}/{} docs",
            progress.documents_copied, progress.documents_estimated
        ));
    }
    if progress.indexes_total > 0 {
        parts.push(format!(
            "indexes {}/{}",
            progress.indexes_built, progress.indexes_total
        ));
    }
    if progress.oplog_entries_applied > 0 || progress.lag_seconds > 0.0 {
        parts.push(format!(
            "oplog applied {} lag {:.1}s",
            progress.oplog_entries_applied, progress.lag_seconds
        ));
    }
    if progress.eta_seconds > 0 {
        parts.push(format!("eta {}s", progress.eta_seconds));
    }
    parts.join(", ")
}

/// Aligned columns with a header row; every cell is [`escape`]d.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Key/value lines (`Key:` padded to 12 columns); every value is [`escape`]d.
pub fn detail(rows: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (key, value) in rows {
        out.push_str(&format!("{:<12} {}\n", format!("{key}:"), escape(value)));
    }
    out
}

/// `-` for an empty value (keeps table columns aligned and visible).
fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// A task's or instance's tenant; `-` when the server sent none.
fn tenant_cell(tenant: &str) -> String {
    or_dash(tenant)
}

/// An agent's or join token's tenant: empty means it serves every tenant.
fn served_tenant(tenant: &str) -> String {
    if tenant.is_empty() {
        "any".to_owned()
    } else {
        tenant.to_owned()
    }
}

/// What an agent or join token is bound to: `pool`, or `cvm ins-...`.
pub fn binding(pool: bool, cvm_id: &str) -> String {
    if pool {
        "pool".to_owned()
    } else if cvm_id.is_empty() {
        "-".to_owned()
    } else {
        format!("cvm {cvm_id}")
    }
}

// ---- JSON ----

/// A spec as JSON; the password is never included.
pub fn spec_json(spec: &TaskSpec) -> Value {
    json!({
        "name": spec.name,
        "region": spec.region,
        "kind": kind_name(spec.kind),
        "cvm_id": spec.cvm_id,
        "mongo_host": spec.mongo_host,
        "port": spec.port,
        "username": spec.username,
        "destination_instance_id": spec.destination_instance_id,
        "databases": spec.databases,
        "tenant": spec.tenant,
    })
}

/// A check item as JSON.
pub fn check_json(item: &CheckItem) -> Value {
    json!({
        "id": item.id,
        "name": item.name,
        "status": check_status_name(item.status),
        "message": item.message,
        "fix": item.fix,
        "finish_time": time_json(item.finish_time.as_ref()),
        "duration_ms": item.duration_ms,
    })
}

/// Progress as JSON.
pub fn progress_json(progress: &Progress) -> Value {
    json!({
        "phase": phase_name(progress.phase),
        "documents_copied": progress.documents_copied,
        "documents_estimated": progress.documents_estimated,
        "bytes_copied": progress.bytes_copied,
        "bytes_estimated": progress.bytes_estimated,
        "documents_per_second": progress.documents_per_second,
        "bytes_per_second": progress.bytes_per_second,
        "eta_seconds": progress.eta_seconds,
        "indexes_built": progress.indexes_built,
        "indexes_total": progress.indexes_total,
        "last_applied": oplog_ts_json(progress.last_applied.as_ref()),
        "source_newest": oplog_ts_json(progress.source_newest.as_ref()),
        "lag_seconds": progress.lag_seconds,
        "oplog_entries_applied": progress.oplog_entries_applied,
        "spool_bytes": progress.spool_bytes,
        "collections": progress.collections.iter().map(|c| json!({
            "namespace": c.namespace,
            "documents_copied": c.documents_copied,
            "documents_estimated": c.documents_estimated,
            "bytes_copied": c.bytes_copied,
            "bytes_estimated": c.bytes_estimated,
            "ranges_total": c.ranges_total,
            "ranges_done": c.ranges_done,
            "done": c.done,
        })).collect::<Vec<_>>(),
        "update_time": time_json(progress.update_time.as_ref()),
    })
}

fn checkpoint_json(checkpoint: &Checkpoint) -> Value {
    json!({
        "phase": phase_name(checkpoint.phase),
        "start_ts": oplog_ts_json(checkpoint.start_ts.as_ref()),
        "last_applied": oplog_ts_json(checkpoint.last_applied.as_ref()),
        "engine_state_bytes": checkpoint.engine_state.len(),
        "update_time": time_json(checkpoint.update_time.as_ref()),
    })
}

/// A task as JSON; the password is never included.
pub fn task_json(task: &Task) -> Value {
    json!({
        "id": task.id,
        "spec": task.spec.as_ref().map(spec_json).unwrap_or(Value::Null),
        "password_set": task.password_set,
        "state": state_name(task.state),
        "phase": phase_name(task.phase),
        "checks": task.checks.iter().map(check_json).collect::<Vec<_>>(),
        "progress": task.progress.as_ref().map(progress_json).unwrap_or(Value::Null),
        "create_time": time_json(task.create_time.as_ref()),
        "update_time": time_json(task.update_time.as_ref()),
        "failure_reason": task.failure_reason,
        "resumable": task.resumable,
        "agent_id": task.agent_id,
        "agent_connected": task.agent_connected,
        "epoch": task.epoch,
        "checkpoint": task.checkpoint.as_ref().map(checkpoint_json).unwrap_or(Value::Null),
        "verification": task.verification.as_ref().map(verification_json).unwrap_or(Value::Null),
    })
}

/// `RUNNING` for `VERIFICATION_STATE_RUNNING`.
pub fn verification_state_name(state: i32) -> String {
    strip(
        VerificationState::try_from(state)
            .unwrap_or(VerificationState::Unspecified)
            .as_str_name(),
        "VERIFICATION_STATE_",
    )
}

/// `MISSING_ON_DESTINATION` for `MISMATCH_KIND_MISSING_ON_DESTINATION`.
pub fn mismatch_kind_name(kind: i32) -> String {
    strip(
        MismatchKind::try_from(kind)
            .unwrap_or(MismatchKind::Unspecified)
            .as_str_name(),
        "MISMATCH_KIND_",
    )
}

fn confirmed_total(v: &Verification) -> u64 {
    v.confirmed.as_ref().map_or(0, |c| {
        c.missing_on_destination + c.extra_on_destination + c.different + c.metadata
    })
}

/// One line: state, phase, documents compared, mismatches, ETA (server strings [`escape`]d).
pub fn verification_summary(v: &Verification) -> String {
    let c = v.confirmed.unwrap_or_default();
    let mut line = format!(
        "run {} {} {}: {}/{} documents compared, {} confirmed mismatches (missing {}, extra {}, different {}, metadata {}), {} pending",
        v.run,
        verification_state_name(v.state),
        escape(&v.phase),
        v.documents_compared,
        v.documents_total,
        confirmed_total(v),
        c.missing_on_destination,
        c.extra_on_destination,
        c.different,
        c.metadata,
        v.pending
    );
    if v.eta_seconds > 0 {
        line.push_str(&format!(", ETA {}s", v.eta_seconds));
    }
    if !v.detail.is_empty() {
        line.push_str(&format!(" ({})", escape(&v.detail)));
    }
    line
}

/// The summary and a per-collection table.
pub fn verification_detail(v: &Verification) -> String {
    let mut out = format!("{}\n", verification_summary(v));
    let rows: Vec<Vec<String>> = v
        .collections
        .iter()
        .map(|c| {
            vec![
                c.namespace.clone(),
                c.documents_source.to_string(),
                c.documents_destination.to_string(),
                c.mismatches.to_string(),
                if c.done { "done" } else { "..." }.to_owned(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &[
                "NAMESPACE",
                "SOURCE DOCS",
                "DEST DOCS",
                "MISMATCHES",
                "STATUS",
            ],
            &rows,
        ));
    }
    out
}

/// A verification run as JSON.
pub fn verification_json(v: &Verification) -> Value {
    let c = v.confirmed.unwrap_or_default();
    json!({
        "run": v.run,
        "state": verification_state_name(v.state),
        "mode": strip(VerifyMode::try_from(v.mode).unwrap_or(VerifyMode::Unspecified).as_str_name(), "VERIFY_MODE_"),
        "phase": v.phase,
        "documents_compared": v.documents_compared,
        "documents_total": v.documents_total,
        "confirmed": {
            "missing_on_destination": c.missing_on_destination,
            "extra_on_destination": c.extra_on_destination,
            "different": c.different,
            "metadata": c.metadata,
        },
        "pending": v.pending,
        "collections": v.collections.iter().map(|c| json!({
            "namespace": c.namespace,
            "documents_source": c.documents_source,
            "documents_destination": c.documents_destination,
            "mismatches": c.mismatches,
            "done": c.done,
        })).collect::<Vec<_>>(),
        "start_time": time_json(v.start_time.as_ref()),
        "finish_time": time_json(v.finish_time.as_ref()),
        "eta_seconds": v.eta_seconds,
        "at_cut_over": v.at_cut_over,
        "detail": v.detail,
    })
}

/// A mismatch as JSON.
pub fn mismatch_json(m: &Mismatch) -> Value {
    json!({
        "namespace": m.namespace,
        "id": m.id,
        "kind": mismatch_kind_name(m.kind),
        "field_path": m.field_path,
        "detail": m.detail,
    })
}

/// Mismatches, one per row.
pub fn mismatches_table(mismatches: &[Mismatch]) -> String {
    let rows: Vec<Vec<String>> = mismatches
        .iter()
        .map(|m| {
            vec![
                m.namespace.clone(),
                mismatch_kind_name(m.kind),
                m.id.clone(),
                m.field_path.clone(),
                m.detail.clone(),
            ]
        })
        .collect();
    table(&["NAMESPACE", "KIND", "_ID", "FIELD", "DETAIL"], &rows)
}

/// An instance as JSON; the password is never included.
pub fn instance_json(instance: &Instance) -> Value {
    json!({
        "instance_id": instance.instance_id,
        "region": instance.region,
        "uri": instance.uri,
        "username": instance.username,
        "password_set": instance.password_set,
        "create_time": time_json(instance.create_time.as_ref()),
        "tenant": instance.tenant,
    })
}

/// An agent as JSON.
pub fn agent_json(agent: &Agent) -> Value {
    json!({
        "agent_id": agent.agent_id,
        "cvm_instance_id": agent.cvm_instance_id,
        "region": agent.region,
        "private_ips": agent.private_ips,
        "version": agent.version,
        "hostname": agent.hostname,
        "connected": agent.connected,
        "last_seen_time": time_json(agent.last_seen_time.as_ref()),
        "task_ids": agent.task_ids,
        "pool": agent.pool,
        "tenant": agent.tenant,
        "enroll_time": time_json(agent.enroll_time.as_ref()),
        "revoke_time": time_json(agent.revoke_time.as_ref()),
        "revoked": agent.revoke_time.is_some(),
    })
}

/// A join token as JSON. `token` is the secret, included only when the user asked for it on stdout; otherwise
/// `token_file` names where it was written.
pub fn join_token_json(token: &JoinToken, show_secret: bool, token_file: Option<&str>) -> Value {
    let mut value = json!({
        "token_id": token.token_id,
        "cvm_id": token.cvm_id,
        "region": token.region,
        "pool": token.pool,
        "tenant": token.tenant,
        "create_time": time_json(token.create_time.as_ref()),
        "expire_time": time_json(token.expire_time.as_ref()),
    });
    if let Value::Object(map) = &mut value {
        if show_secret {
            map.insert("token".to_owned(), Value::String(token.token.clone()));
        }
        if let Some(path) = token_file {
            map.insert("token_file".to_owned(), Value::String(path.to_owned()));
        }
    }
    value
}

/// An audit event as JSON.
pub fn audit_event_json(event: &AuditEvent) -> Value {
    json!({
        "seq": event.seq,
        "time": time_json(event.time.as_ref()),
        "principal": event.principal,
        "peer": event.peer,
        "method": event.method,
        "targets": event.targets,
        "code": event.code,
        "detail": event.detail,
    })
}

/// A principal as JSON.
pub fn principal_json(principal: &Principal) -> Value {
    json!({
        "name": principal.name,
        "role": principal.role,
        "tenants": principal.tenants,
        "permissions": principal.permissions,
    })
}

/// A source database as JSON.
pub fn database_json(db: &SourceDatabase) -> Value {
    json!({"name": db.name, "size_on_disk_bytes": db.size_on_disk_bytes, "empty": db.empty})
}

// ---- tables ----

/// Tasks, one per row.
pub fn tasks_table(tasks: &[Task]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let spec = t.spec.clone().unwrap_or_default();
            vec![
                t.id.clone(),
                spec.name,
                tenant_cell(&spec.tenant),
                kind_name(spec.kind),
                spec.region,
                state_name(t.state),
                phase_name(t.phase),
                progress_summary(t),
                agent_cell(t),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NAME", "TENANT", "KIND", "REGION", "STATE", "PHASE", "PROGRESS", "AGENT",
        ],
        &rows,
    )
}

fn agent_cell(task: &Task) -> String {
    if task.agent_id.is_empty() {
        "-".to_owned()
    } else if task.agent_connected {
        task.agent_id.clone()
    } else {
        format!("{} (disconnected)", task.agent_id)
    }
}

/// A task in detail: key/value lines, then the check items.
pub fn task_detail(task: &Task) -> String {
    let spec = task.spec.clone().unwrap_or_default();
    let databases = if spec.databases.is_empty() {
        "(all non-system databases)".to_owned()
    } else {
        spec.databases.join(",")
    };
    let mut rows = vec![
        ("ID", task.id.clone()),
        ("Name", spec.name),
        ("Tenant", tenant_cell(&spec.tenant)),
        ("Kind", kind_name(spec.kind)),
        ("Region", spec.region),
        ("CVM", spec.cvm_id),
        ("Source", format!("{}:{}", spec.mongo_host, spec.port)),
        ("Username", spec.username),
        (
            "Password",
            if task.password_set {
                "(set)"
            } else {
                "(not set)"
            }
            .to_owned(),
        ),
        ("Destination", spec.destination_instance_id),
        ("Databases", databases),
        ("State", state_name(task.state)),
        ("Phase", phase_name(task.phase)),
        ("Progress", progress_summary(task)),
        ("Agent", agent_cell(task)),
        ("Epoch", task.epoch.to_string()),
        ("Created", time(task.create_time.as_ref())),
        ("Updated", time(task.update_time.as_ref())),
    ];
    if !task.failure_reason.is_empty() {
        rows.push(("Failure", task.failure_reason.clone()));
        rows.push((
            "Resumable",
            if task.resumable {
                "yes: fix the cause, then `task start` resumes from the last checkpoint (or `task stop` rolls back)"
                    .to_owned()
            } else {
                "no".to_owned()
            },
        ));
    }
    if let Some(v) = &task.verification {
        rows.push(("Verified", verification_summary(v)));
    }
    let mut out = detail(&rows);
    if !task.checks.is_empty() {
        out.push('\n');
        out.push_str(&checks_table(&task.checks));
    }
    out
}

/// Check items, one per row.
pub fn checks_table(checks: &[CheckItem]) -> String {
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                check_status_name(c.status),
                c.message.clone(),
                c.fix.clone(),
            ]
        })
        .collect();
    table(&["CHECK", "STATUS", "MESSAGE", "FIX"], &rows)
}

/// Instances, one per row.
pub fn instances_table(instances: &[Instance]) -> String {
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            vec![
                i.instance_id.clone(),
                tenant_cell(&i.tenant),
                i.region.clone(),
                i.uri.clone(),
                i.username.clone(),
                if i.password_set { "set" } else { "not set" }.to_owned(),
                time(i.create_time.as_ref()),
            ]
        })
        .collect();
    table(
        &[
            "ID", "TENANT", "REGION", "URI", "USERNAME", "PASSWORD", "CREATED",
        ],
        &rows,
    )
}

/// Agents, one per row: binding (pool or CVM), tenant, whether connected and whether revoked.
pub fn agents_table(agents: &[Agent]) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.agent_id.clone(),
                binding(a.pool, &a.cvm_instance_id),
                or_dash(&a.region),
                served_tenant(&a.tenant),
                or_dash(&a.hostname),
                or_dash(&a.private_ips.join(",")),
                or_dash(&a.version),
                if a.connected { "yes" } else { "no" }.to_owned(),
                revoked_cell(a),
                or_dash(&time(a.last_seen_time.as_ref())),
                or_dash(&a.task_ids.join(",")),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "BINDING",
            "REGION",
            "TENANT",
            "HOSTNAME",
            "IPS",
            "VERSION",
            "CONNECTED",
            "REVOKED",
            "LAST SEEN",
            "TASKS",
        ],
        &rows,
    )
}

fn revoked_cell(agent: &Agent) -> String {
    match &agent.revoke_time {
        None => "no".to_owned(),
        Some(ts) => {
            let when = time(Some(ts));
            if when.is_empty() {
                "yes".to_owned()
            } else {
                format!("yes {when}")
            }
        }
    }
}

/// One agent in detail (e.g. after `agent revoke`).
pub fn agent_detail(agent: &Agent) -> String {
    detail(&[
        ("ID", agent.agent_id.clone()),
        ("Binding", binding(agent.pool, &agent.cvm_instance_id)),
        ("CVM", agent.cvm_instance_id.clone()),
        ("Region", agent.region.clone()),
        ("Tenant", served_tenant(&agent.tenant)),
        ("Hostname", agent.hostname.clone()),
        ("IPs", agent.private_ips.join(",")),
        ("Version", agent.version.clone()),
        (
            "Connected",
            if agent.connected { "yes" } else { "no" }.to_owned(),
        ),
        ("Revoked", revoked_cell(agent)),
        ("Enrolled", time(agent.enroll_time.as_ref())),
        ("Last seen", time(agent.last_seen_time.as_ref())),
        ("Tasks", agent.task_ids.join(",")),
    ])
}

/// A new join token: id, binding, tenant, expiry; then, when `show_secret`, the `token: ...` line, and a hint on
/// how to start the agent. Without `show_secret` the hint names `token_file`, where the token was written.
pub fn join_token_text(token: &JoinToken, show_secret: bool, token_file: Option<&str>) -> String {
    let bound = if token.pool {
        binding(true, "")
    } else if token.region.is_empty() {
        binding(false, &token.cvm_id)
    } else {
        format!("{} ({})", binding(false, &token.cvm_id), token.region)
    };
    let expiry = or_dash(&time(token.expire_time.as_ref()));
    let mut out = detail(&[
        ("Token ID", token.token_id.clone()),
        ("Binding", bound),
        ("Tenant", served_tenant(&token.tenant)),
        ("Expires", expiry.clone()),
    ]);
    let expiry = escape(&expiry);
    match (show_secret, token_file) {
        (true, _) => {
            out.push_str(&format!("token: {}\n", escape(&token.token)));
            out.push_str(&format!(
                "start the agent with --join-token-file FILE containing the token; it is valid once, until {expiry}\n"
            ));
        }
        (false, Some(path)) => {
            let path = escape(path);
            out.push_str(&format!(
                "wrote the token to {path} (mode 0600)\nstart the agent with --join-token-file {path}; it is valid \
                 once, until {expiry}\n"
            ));
        }
        (false, None) => {}
    }
    out
}

/// One audit event on one line: time (RFC 3339 UTC), principal, peer, method, targets (comma separated), code,
/// detail; `-` for an empty field, every field [`escape`]d.
pub fn audit_line(event: &AuditEvent) -> String {
    let when = event
        .time
        .and_then(|ts| SystemTime::try_from(ts).ok())
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_default();
    let fields = [
        when,
        event.principal.clone(),
        event.peer.clone(),
        event.method.clone(),
        event.targets.join(","),
        event.code.clone(),
    ];
    let mut line = fields
        .iter()
        .map(|f| escape(&or_dash(f)))
        .collect::<Vec<_>>()
        .join(" ");
    if !event.detail.is_empty() {
        line.push(' ');
        line.push_str(&escape(&event.detail));
    }
    line
}

/// The calling principal: name, role, tenants (`all` when unrestricted), permissions.
pub fn principal_text(principal: &Principal) -> String {
    detail(&[
        ("Name", principal.name.clone()),
        ("Role", principal.role.clone()),
        (
            "Tenants",
            if principal.tenants.is_empty() {
                "all".to_owned()
            } else {
                principal.tenants.join(", ")
            },
        ),
        ("Permissions", principal.permissions.join(", ")),
    ])
}

/// Source databases, one per row.
pub fn databases_table(databases: &[SourceDatabase]) -> String {
    let rows: Vec<Vec<String>> = databases
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                bytes(d.size_on_disk_bytes),
                if d.empty { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    table(&["DATABASE", "SIZE", "EMPTY"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "hunter2-Secret!";

    fn task_with_password() -> Task {
        Task {
            id: "task-0123456789ab".to_owned(),
            spec: Some(TaskSpec {
                name: "orders".to_owned(),
                region: "ap-guangzhou".to_owned(),
                kind: TaskKind::Cvm as i32,
                cvm_id: "ins-abcd1234".to_owned(),
                mongo_host: "127.0.0.5".to_owned(),
                port: 27017,
                username: "root".to_owned(),
                password: PASSWORD.to_owned(),
                destination_instance_id: "cmgo-6wk2mxa1".to_owned(),
                databases: vec!["shop".to_owned()],
                require_verification: false,
                tenant: "team-a".to_owned(),
            }),
            password_set: true,
            state: TaskState::Running as i32,
            phase: TaskPhase::DataSync as i32,
            progress: Some(Progress {
                bytes_copied: 50,
                bytes_estimated: 200,
                ..Progress::default()
            }),
            agent_id: "agent-0123456789ab".to_owned(),
            ..Task::default()
        }
    }

    #[test]
    fn no_renderer_shows_a_password_even_if_the_server_sent_one() {
        let task = task_with_password();
        let instance = Instance {
            instance_id: "cmgo-6wk2mxa1".to_owned(),
            password: PASSWORD.to_owned(),
            password_set: true,
            ..Instance::default()
        };
        let outputs = [
            task_json(&task).to_string(),
            tasks_table(std::slice::from_ref(&task)),
            task_detail(&task),
            instance_json(&instance).to_string(),
            instances_table(std::slice::from_ref(&instance)),
        ];
        for out in outputs {
            assert!(!out.contains(PASSWORD), "password leaked: {out}");
        }
        assert!(task_detail(&task).contains("(set)"));
    }

    #[test]
    fn names_drop_enum_prefixes() {
        assert_eq!(state_name(TaskState::CheckPassed as i32), "CHECK_PASSED");
        assert_eq!(phase_name(TaskPhase::OplogSync as i32), "OPLOG_SYNC");
        assert_eq!(phase_name(0), "");
        assert_eq!(kind_name(TaskKind::PublicNetwork as i32), "PUBLIC_NETWORK");
        assert_eq!(check_status_name(CheckStatus::Fail as i32), "FAIL");
        assert_eq!(state_name(99), "UNKNOWN(99)");
    }

    #[test]
    fn progress_and_tables() {
        let task = task_with_password();
        assert_eq!(progress_summary(&task), "25.0%");
        let out = tasks_table(&[task]);
        let mut lines = out.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("ID"));
        let row = lines.next().unwrap();
        assert!(
            row.contains("RUNNING") && row.contains("DATA_SYNC") && row.contains("(disconnected)"),
            "{row}"
        );
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
    const HOSTILE: &str = "\u{1b}[2J\nFAKE LINE\r\t\u{7}\u{9b}31m\u{202e}";

    /// No raw control character, no injected line, and the escaped form visible.
    fn assert_inert(out: &str, lines: usize) {
        assert!(
            !out.chars().any(|c| c != '\n' && is_unsafe(c)),
            "raw control character in {out:?}"
        );
        assert_eq!(out.lines().count(), lines, "injected line in:\n{out}");
        assert!(
            !out.lines().any(|l| l.starts_with("FAKE LINE")),
            "fake line in:\n{out}"
        );
        assert!(out.contains("\\u{1b}[2J\\nFAKE LINE"), "{out}");
    }

    #[test]
    fn escape_shows_controls_and_keeps_unicode() {
        assert_eq!(escape("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(escape("a\nFAKE LINE"), "a\\nFAKE LINE");
        assert_eq!(escape("\r\t\u{7f}\u{9b}"), "\\r\\t\\u{7f}\\u{9b}");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        let plain = "订单库 café 🚀 a\\b \"q\"";
        assert_eq!(escape(plain), plain);
        let once = escape(HOSTILE);
        assert_eq!(escape(&once), once, "escaping is idempotent");
    }

    #[test]
    fn a_hostile_task_name_and_failure_reason_stay_inert() {
        let mut task = task_with_password();
        if let Some(spec) = task.spec.as_mut() {
            spec.name = format!("orders{HOSTILE}");
        }
        task.state = TaskState::Failed as i32;
        task.failure_reason = format!("boom{HOSTILE}");
        task.checks = vec![CheckItem {
            id: "source_reachable".to_owned(),
            status: CheckStatus::Fail as i32,
            message: format!("unreachable{HOSTILE}"),
            fix: format!("fix{HOSTILE}"),
            ..CheckItem::default()
        }];
        task.verification = Some(Verification {
            phase: format!("compare{HOSTILE}"),
            detail: format!("detail{HOSTILE}"),
            ..Verification::default()
        });
        assert_inert(&tasks_table(std::slice::from_ref(&task)), 2);
        let detail_text = task_detail(&task);
        assert!(!detail_text.contains('\u{1b}'));
        let name_line = detail_text
            .lines()
            .find(|l| l.starts_with("Name:"))
            .unwrap();
        assert!(
            name_line.contains("orders\\u{1b}[2J\\nFAKE LINE"),
            "{name_line}"
        );
        let failure_line = detail_text
            .lines()
            .find(|l| l.starts_with("Failure:"))
            .unwrap();
        assert!(
            failure_line.contains("boom\\u{1b}[2J\\nFAKE LINE"),
            "{failure_line}"
        );
        assert!(!detail_text.lines().any(|l| l.starts_with("FAKE LINE")));
        assert!(!detail_text.chars().any(|c| c != '\n' && is_unsafe(c)));
        assert_inert(&checks_table(&task.checks), 2);
        let summary = verification_summary(task.verification.as_ref().unwrap());
        assert!(!summary.chars().any(is_unsafe), "{summary:?}");
        // JSON keeps the exact value (escaped by serde_json and json_text) and stays parseable.
        let json = json_text(&task_json(&task), true);
        assert!(!json.contains('\u{1b}') && !json.contains('\u{9b}') && !json.contains('\u{202e}'));
        let parsed: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["failure_reason"], task.failure_reason);
        assert_eq!(parsed["spec"]["tenant"], "team-a");
    }

    #[test]
    fn other_server_strings_stay_inert() {
        let mismatch = Mismatch {
            namespace: format!("shop.orders{HOSTILE}"),
            id: format!("id{HOSTILE}"),
            detail: format!("detail{HOSTILE}"),
            ..Mismatch::default()
        };
        assert_inert(&mismatches_table(&[mismatch]), 2);
        let agent = Agent {
            agent_id: "agent-0123456789ab".to_owned(),
            hostname: format!("host{HOSTILE}"),
            ..Agent::default()
        };
        assert_inert(&agents_table(std::slice::from_ref(&agent)), 2);
        assert!(!agent_detail(&agent).contains('\u{1b}'));
        let event = AuditEvent {
            principal: "admin".to_owned(),
            detail: format!("denied{HOSTILE}"),
            targets: vec![format!("task-1{HOSTILE}")],
            ..AuditEvent::default()
        };
        assert_inert(&format!("{}\n", audit_line(&event)), 1);
        let principal = Principal {
            name: format!("admin{HOSTILE}"),
            role: "admin".to_owned(),
            ..Principal::default()
        };
        assert_inert(&principal_text(&principal), 4);
        let instance = Instance {
            instance_id: "cmgo-6wk2mxa1".to_owned(),
            uri: format!("mongodb://x{HOSTILE}"),
            tenant: format!("t{HOSTILE}"),
            ..Instance::default()
        };
        assert_inert(&instances_table(&[instance]), 2);
        let database = SourceDatabase {
            name: format!("db{HOSTILE}"),
            ..SourceDatabase::default()
        };
        assert_inert(&databases_table(&[database]), 2);
    }

    #[test]
    fn json_text_escapes_what_serde_json_leaves_raw() {
        let value = json!({"name": "a\u{9b}2J\u{7f}\u{202e}b\nc", "plain": "订单 🚀"});
        for pretty in [true, false] {
            let text = json_text(&value, pretty);
            assert!(
                !text.contains('\u{9b}') && !text.contains('\u{7f}') && !text.contains('\u{202e}'),
                "{text}"
            );
            assert!(
                text.contains("\\u009b") && text.contains("订单 🚀"),
                "{text}"
            );
            let parsed: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(parsed, value);
        }
        assert_eq!(json_text(&value, false).lines().count(), 1);
    }

    fn join_token() -> JoinToken {
        JoinToken {
            token_id: "jt-3f9a1c2b7d4e".to_owned(),
            token: "ftk_SECRET-value".to_owned(),
            cvm_id: "ins-abcd1234".to_owned(),
            region: "ap-guangzhou".to_owned(),
            expire_time: Some(prost_types::Timestamp {
                seconds: 1_714_550_400,
                nanos: 0,
            }),
            ..JoinToken::default()
        }
    }

    #[test]
    fn a_join_token_is_shown_only_when_asked_for() {
        let token = join_token();
        let shown = join_token_text(&token, true, None);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines,
            [
                "Token ID:    jt-3f9a1c2b7d4e",
                "Binding:     cvm ins-abcd1234 (ap-guangzhou)",
                "Tenant:      any",
                "Expires:     2024-05-01T08:00:00Z",
                "token: ftk_SECRET-value",
                "start the agent with --join-token-file FILE containing the token; it is valid once, until \
                 2024-05-01T08:00:00Z",
            ]
        );
        let json = join_token_json(&token, true, None);
        assert_eq!(json["token"], "ftk_SECRET-value");
        assert_eq!(json["expire_time"], "2024-05-01T08:00:00Z");

        let written = join_token_text(&token, false, Some("/etc/ferry/join-token"));
        assert!(!written.contains("ftk_SECRET"), "{written}");
        assert!(
            written.contains("--join-token-file /etc/ferry/join-token")
                && written.contains("mode 0600"),
            "{written}"
        );
        let json = join_token_json(&token, false, Some("/etc/ferry/join-token")).to_string();
        assert!(!json.contains("ftk_SECRET"), "{json}");
        assert!(json.contains("token_file"), "{json}");

        let pool = JoinToken {
            pool: true,
            cvm_id: String::new(),
            region: String::new(),
            tenant: "team-a".to_owned(),
            ..join_token()
        };
        let text = join_token_text(&pool, true, None);
        assert!(
            text.contains("Binding:     pool\n") && text.contains("Tenant:      team-a\n"),
            "{text}"
        );
    }

    #[test]
    fn agents_show_binding_tenant_and_revocation() {
        let revoked = prost_types::Timestamp {
            seconds: 1_714_550_400,
            nanos: 0,
        };
        let agents = [
            Agent {
                agent_id: "agent-000000000001".to_owned(),
                cvm_instance_id: "ins-abcd1234".to_owned(),
                region: "ap-guangzhou".to_owned(),
                hostname: "db-1".to_owned(),
                connected: true,
                ..Agent::default()
            },
            Agent {
                agent_id: "agent-000000000002".to_owned(),
                pool: true,
                tenant: "team-a".to_owned(),
                revoke_time: Some(revoked),
                ..Agent::default()
            },
        ];
        let out = agents_table(&agents);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].contains("BINDING")
                && lines[0].contains("TENANT")
                && lines[0].contains("REVOKED")
        );
        assert!(
            lines[1].contains("cvm ins-abcd1234")
                && lines[1].contains(" any ")
                && lines[1].contains(" no "),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("pool")
                && lines[2].contains("team-a")
                && lines[2].contains("yes 2024-05-01T08:00:00Z"),
            "{}",
            lines[2]
        );
        let json = agent_json(&agents[1]);
        assert_eq!(json["pool"], true);
        assert_eq!(json["revoked"], true);
        assert_eq!(json["tenant"], "team-a");
        assert_eq!(json["revoke_time"], "2024-05-01T08:00:00Z");
        let text = agent_detail(&agents[1]);
        assert!(
            text.contains("Revoked:     yes 2024-05-01T08:00:00Z"),
            "{text}"
        );
    }

    #[test]
    fn audit_lines_and_principals() {
        let event = AuditEvent {
            seq: 7,
            time: Some(prost_types::Timestamp {
                seconds: 1_714_550_400,
                nanos: 250_000_000,
            }),
            principal: "admin".to_owned(),
            peer: "10.0.0.9:51234".to_owned(),
            method: "CreateTask".to_owned(),
            targets: vec!["task-7f3a9c2d1e4b".to_owned(), "cmgo-6wk2mxa1".to_owned()],
            code: "OK".to_owned(),
            detail: String::new(),
        };
        assert_eq!(
            audit_line(&event),
            "2024-05-01T08:00:00.250Z admin 10.0.0.9:51234 CreateTask task-7f3a9c2d1e4b,cmgo-6wk2mxa1 OK"
        );
        let failed = AuditEvent {
            time: None,
            principal: "anonymous".to_owned(),
            method: "Connect".to_owned(),
            targets: Vec::new(),
            code: "UNAUTHENTICATED".to_owned(),
            detail: "bad token".to_owned(),
            ..event
        };
        assert_eq!(
            audit_line(&failed),
            "- anonymous 10.0.0.9:51234 Connect - UNAUTHENTICATED bad token"
        );
        assert_eq!(audit_event_json(&failed)["time"], Value::Null);

        let everyone = Principal {
            name: "ops".to_owned(),
            role: "operator".to_owned(),
            tenants: Vec::new(),
            permissions: vec!["tasks.read".to_owned(), "tasks.write".to_owned()],
        };
        assert_eq!(
            principal_text(&everyone),
            "Name:        ops\nRole:        operator\nTenants:     all\nPermissions: tasks.read, tasks.write\n"
        );
        let limited = Principal {
            tenants: vec!["team-a".to_owned(), "team-b".to_owned()],
            ..everyone
        };
        assert!(principal_text(&limited).contains("Tenants:     team-a, team-b\n"));
        assert_eq!(principal_json(&limited)["tenants"][1], "team-b");
    }

    #[test]
    fn tasks_and_instances_show_the_tenant() {
        let task = task_with_password();
        let table_text = tasks_table(std::slice::from_ref(&task));
        assert!(table_text.lines().next().unwrap().contains("TENANT"));
        assert!(table_text.lines().nth(1).unwrap().contains("team-a"));
        assert!(task_detail(&task).contains("Tenant:      team-a\n"));
        let instance = Instance {
            instance_id: "cmgo-6wk2mxa1".to_owned(),
            tenant: "team-a".to_owned(),
            ..Instance::default()
        };
        assert!(instances_table(std::slice::from_ref(&instance)).contains("team-a"));
        assert_eq!(instance_json(&instance)["tenant"], "team-a");
        let legacy = Instance::default();
        let row = instances_table(&[legacy]);
        assert!(row.lines().nth(1).unwrap().contains('-'));
    }
}
