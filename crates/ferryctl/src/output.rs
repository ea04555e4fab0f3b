//! Rendering of API objects as tables (humans) or JSON (scripts).
//!
//! Owns formatting only; it must not do IO. No renderer reads a password field: passwords are input only and never
//! shown, even if a server were to send one back.

use std::time::SystemTime;

use ferry_proto::v1::{
    Agent, CheckItem, CheckStatus, Checkpoint, Instance, Mismatch, MismatchKind, OplogTimestamp,
    Progress, SourceDatabase, Task, TaskKind, TaskPhase, TaskSpec, TaskState, Verification,
    VerificationState, VerifyMode,
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

/// Aligned columns with a header row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
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
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
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
    })
}

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

pub fn verification_state_name(state: i32) -> String {
    strip(
        VerificationState::try_from(state)
            .unwrap_or(VerificationState::Unspecified)
            .as_str_name(),
        "VERIFICATION_STATE_",
    )
}

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

/// One line: state, phase, documents compared, mismatches, ETA.
pub fn verification_summary(v: &Verification) -> String {
    let c = v.confirmed.unwrap_or_default();
    let mut line = format!(
        "run {} {} {}: {}/{} documents compared, {} confirmed mismatches (missing {}, extra {}, different {}, metadata {}), {} pending",
        v.run,
        verification_state_name(v.state),
        v.phase,
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
        line.push_str(&format!(" ({})", v.detail));
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

pub fn mismatch_json(m: &Mismatch) -> Value {
    json!({
        "namespace": m.namespace,
        "id": m.id,
        "kind": mismatch_kind_name(m.kind),
        "field_path": m.field_path,
        "detail": m.detail,
    })
}

pub fn mismatches_table(mismatches: &[Mismatch]) -> String {
    let rows: Vec<Vec<String>> = mismatches
        .iter()
        .map(|m| {
            vec![
                m.namespace.clone(),
                mismatch_kind_name(m.kind),
                escape(&m.id),
                escape(&m.field_path),
                escape(&m.detail),
            ]
        })
        .collect();
    table(&["NAMESPACE", "KIND", "_ID", "FIELD", "DETAIL"], &rows)
}

/// Control characters from the server (document ids, field names) printed escaped, never raw.
fn escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
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
    })
}

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
    })
}

pub fn database_json(db: &SourceDatabase) -> Value {
    json!({"name": db.name, "size_on_disk_bytes": db.size_on_disk_bytes, "empty": db.empty})
}

// ---- tables ----

pub fn tasks_table(tasks: &[Task]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let spec = t.spec.clone().unwrap_or_default();
            vec![
                t.id.clone(),
                spec.name,
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
            "ID", "NAME", "KIND", "REGION", "STATE", "PHASE", "PROGRESS", "AGENT",
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
    let mut out = String::new();
    for (key, value) in rows {
        out.push_str(&format!("{:<12} {}\n", format!("{key}:"), value));
    }
    if let Some(v) = &task.verification {
        out.push_str(&format!(
            "{:<12} {}\n",
            "Verified:",
            verification_summary(v)
        ));
    }
    if !task.checks.is_empty() {
        out.push('\n');
        out.push_str(&checks_table(&task.checks));
    }
    out
}

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

pub fn instances_table(instances: &[Instance]) -> String {
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            vec![
                i.instance_id.clone(),
                i.region.clone(),
                i.uri.clone(),
                i.username.clone(),
                if i.password_set { "set" } else { "not set" }.to_owned(),
                time(i.create_time.as_ref()),
            ]
        })
        .collect();
    table(
        &["ID", "REGION", "URI", "USERNAME", "PASSWORD", "CREATED"],
        &rows,
    )
}

pub fn agents_table(agents: &[Agent]) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.agent_id.clone(),
                a.cvm_instance_id.clone(),
                a.region.clone(),
                a.private_ips.join(","),
                a.version.clone(),
                if a.connected { "yes" } else { "no" }.to_owned(),
                time(a.last_seen_time.as_ref()),
                a.task_ids.join(","),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "CVM",
            "REGION",
            "IPS",
            "VERSION",
            "CONNECTED",
            "LAST SEEN",
            "TASKS",
        ],
        &rows,
    )
}

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
}
