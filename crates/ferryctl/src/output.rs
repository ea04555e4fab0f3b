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
    Agent, AuditEvent, CheckItem, CheckStatus, Checkpoint, CollectionProgress, Instance, JoinToken,
    Mismatch, MismatchKind, OplogTimestamp, Principal, Progress, SourceDatabase, Task, TaskEvent,
    TaskKind, TaskPhase, TaskSpec, TaskState, Throttle, Verification, VerificationState,
    VerifyMode,
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

/// One-line summary of a task's progress (task list, `task watch` lines): copy percentage, documents, copy rate and
/// ETA; indexes; applied entries, lag, catch-up ETA and spool usage.
pub fn progress_summary(task: &Task) -> String {
    let Some(progress) = &task.progress else {
        return String::new();
    };
    let phase = effective_phase(task, progress);
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
    if phase == TaskPhase::DataSync && progress.documents_per_second > 0.0 {
        parts.push(format!("{} docs/s", rate(progress.documents_per_second)));
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
    let activity = Activity::of(task);
    if phase == TaskPhase::OplogSync && activity != Activity::Ended {
        parts.push(format!(
            "catch-up {}",
            catch_up_text(progress, activity, phase)
        ));
    }
    if progress.spool_cap_bytes > 0 {
        parts.push(format!(
            "spool {}%",
            percent(progress.spool_bytes, progress.spool_cap_bytes)
        ));
    }
    if phase == TaskPhase::DataSync && progress.eta_seconds > 0 {
        parts.push(format!("ETA {}", eta_text(progress.eta_seconds)));
    }
    parts.join(", ")
}

/// The task's state, followed by `PAUSED` when copy and apply are paused: `RUNNING PAUSED`.
pub fn state_text(task: &Task) -> String {
    if task.paused || task.progress.as_ref().is_some_and(|p| p.paused) {
        format!("{} PAUSED", state_name(task.state))
    } else {
        state_name(task.state)
    }
}

/// The line `task watch` prints per change (without a terminal): state (with PAUSED), phase, progress summary.
pub fn watch_line(task: &Task) -> String {
    format!(
        "{} {} {}",
        state_text(task),
        phase_name(task.phase),
        progress_summary(task)
    )
}

/// The phase the progress describes: its own, or the task's when the progress does not say.
fn effective_phase(task: &Task, progress: &Progress) -> TaskPhase {
    let phase = if progress.phase == TaskPhase::Unspecified as i32 {
        task.phase
    } else {
        progress.phase
    };
    TaskPhase::try_from(phase).unwrap_or(TaskPhase::Unspecified)
}

/// A duration in at most two units, largest first: `45s`, `3m 20s`, `2h 5m`, `3d 4h`; `0s` for zero.
pub fn duration_text(seconds: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = seconds;
    for (size, unit) in UNITS {
        let count = rest / size;
        rest %= size;
        if count > 0 || !parts.is_empty() {
            parts.push((count, unit));
        }
    }
    let shown: Vec<String> = parts
        .iter()
        .take(2)
        .filter(|(count, _)| *count > 0)
        .map(|(count, unit)| format!("{count}{unit}"))
        .collect();
    if shown.is_empty() {
        "0s".to_owned()
    } else {
        shown.join(" ")
    }
}

/// An ETA in seconds as [`duration_text`]; `unknown` when negative (the API's -1).
pub fn eta_text(seconds: i64) -> String {
    u64::try_from(seconds).map_or_else(|_| "unknown".to_owned(), duration_text)
}

/// A rate: one decimal below 100 per second, whole numbers above.
fn rate(per_second: f64) -> String {
    if !per_second.is_finite() || per_second <= 0.0 {
        "0".to_owned()
    } else if per_second < 100.0 {
        format!("{per_second:.1}")
    } else {
        format!("{per_second:.0}")
    }
}

/// `part` as a whole percentage of `whole` (rounded down, so 100% means full); 0 when `whole` is 0.
fn percent(part: u64, whole: u64) -> u128 {
    if whole == 0 {
        0
    } else {
        u128::from(part) * 100 / u128::from(whole)
    }
}

/// What copy and apply of a task are doing, which decides how a missing ETA reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Running (or not known to have stopped).
    Running,
    /// Paused by `task pause`.
    Paused,
    /// The task SUCCEEDED, FAILED or is STOPPING: its progress is the last one reported.
    Ended,
}

impl Activity {
    /// The task's activity: ended (SUCCEEDED, FAILED, STOPPING), else paused (task or progress says so), else
    /// running.
    pub fn of(task: &Task) -> Self {
        let ended = matches!(
            TaskState::try_from(task.state),
            Ok(TaskState::Succeeded | TaskState::Failed | TaskState::Stopping)
        );
        if ended {
            Activity::Ended
        } else if task.paused || task.progress.as_ref().is_some_and(|p| p.paused) {
            Activity::Paused
        } else {
            Activity::Running
        }
    }

    /// The activity a bare [`Progress`] reports (its `paused` flag).
    pub fn of_progress(progress: &Progress) -> Self {
        if progress.paused {
            Activity::Paused
        } else {
            Activity::Running
        }
    }
}

/// Catch-up ETA of the oplog apply: `caught up`, a duration, or when the server has none (-1) `paused`,
/// `not converging` (running in OPLOG_SYNC, the source writes at least as fast as the apply) or `unknown`.
pub fn catch_up_text(progress: &Progress, activity: Activity, phase: TaskPhase) -> String {
    let eta = progress.catch_up_eta_seconds;
    if eta > 0 {
        return eta_text(eta);
    }
    if eta == 0 && (progress.converging || progress.lag_seconds < 1.0) {
        return "caught up".to_owned();
    }
    match activity {
        Activity::Paused => "paused".to_owned(),
        Activity::Running if phase == TaskPhase::OplogSync && !progress.converging => {
            "not converging".to_owned()
        }
        _ => "unknown".to_owned(),
    }
}

/// Spool usage: `850 B of 1000 B (85%)`, then `; full in 5m` when it grows (`spool_full_eta_seconds` >= 0).
pub fn spool_text(progress: &Progress) -> String {
    let mut text = if progress.spool_cap_bytes > 0 {
        format!(
            "{} of {} ({}%)",
            bytes(progress.spool_bytes),
            bytes(progress.spool_cap_bytes),
            percent(progress.spool_bytes, progress.spool_cap_bytes)
        )
    } else {
        bytes(progress.spool_bytes)
    };
    if progress.spool_full_eta_seconds >= 0 {
        text.push_str(&format!(
            "; full in {} (a full spool fails the task)",
            eta_text(progress.spool_full_eta_seconds)
        ));
    }
    text
}

/// How long the source's oplog keeps the task's resume point (`oplog_headroom_seconds`), or `unknown` for -1.
pub fn headroom_text(seconds: i64) -> String {
    if seconds < 0 {
        "unknown".to_owned()
    } else {
        format!(
            "source oplog keeps the resume point for {}",
            eta_text(seconds)
        )
    }
}

/// Megabytes (1 MB = 1,000,000 bytes) without trailing zeros: `0.5`, `12`, `1.234567`.
pub fn mb_text(bytes_per_second: u64) -> String {
    let whole = bytes_per_second / 1_000_000;
    let fraction = bytes_per_second % 1_000_000;
    if fraction == 0 {
        whole.to_string()
    } else {
        let digits = format!("{fraction:06}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Whether any limit is set (all zeros means unlimited).
pub fn throttle_is_set(throttle: &Throttle) -> bool {
    throttle.copy_documents_per_second != 0
        || throttle.copy_bytes_per_second != 0
        || throttle.apply_entries_per_second != 0
        || throttle.apply_bytes_per_second != 0
}

/// A throttle in words: `copy 1000 docs/s, unlimited MB/s; apply unlimited` (a side without limits is just
/// `unlimited`).
pub fn throttle_text(throttle: &Throttle) -> String {
    let count = |n: u64, unit: &str| {
        if n == 0 {
            format!("unlimited {unit}")
        } else {
            format!("{n} {unit}")
        }
    };
    let mb = |b: u64| {
        if b == 0 {
            "unlimited MB/s".to_owned()
        } else {
            format!("{} MB/s", mb_text(b))
        }
    };
    let side = |name: &str, n: u64, unit: &str, b: u64| {
        if n == 0 && b == 0 {
            format!("{name} unlimited")
        } else {
            format!("{name} {}, {}", count(n, unit), mb(b))
        }
    };
    format!(
        "{}; {}",
        side(
            "copy",
            throttle.copy_documents_per_second,
            "docs/s",
            throttle.copy_bytes_per_second
        ),
        side(
            "apply",
            throttle.apply_entries_per_second,
            "entries/s",
            throttle.apply_bytes_per_second
        )
    )
}

/// Width of the per-collection progress bars.
const BAR_WIDTH: usize = 20;

/// A text progress bar, `[#######.............]`; dots only when the fraction is unknown.
pub fn bar(fraction: Option<f64>) -> String {
    let filled = fraction.filter(|f| f.is_finite()).map_or(0, |f| {
        (f.clamp(0.0, 1.0) * BAR_WIDTH as f64).floor() as usize
    });
    format!(
        "[{}{}]",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH.saturating_sub(filled))
    )
}

/// Fraction of one collection copied (bytes if estimated, else documents); 1 when done.
fn collection_fraction(c: &CollectionProgress) -> Option<f64> {
    if c.done {
        Some(1.0)
    } else if c.bytes_estimated > 0 {
        Some((c.bytes_copied as f64 / c.bytes_estimated as f64).min(1.0))
    } else if c.documents_estimated > 0 {
        Some((c.documents_copied as f64 / c.documents_estimated as f64).min(1.0))
    } else {
        None
    }
}

/// Collections being copied, one per row: a progress bar with its percentage, documents, bytes and ETA.
pub fn collections_table(collections: &[CollectionProgress]) -> String {
    let rows: Vec<Vec<String>> = collections
        .iter()
        .map(|c| {
            let fraction = collection_fraction(c);
            let pct = fraction.map_or_else(|| "?".to_owned(), |f| format!("{:.0}%", f * 100.0));
            vec![
                c.namespace.clone(),
                format!("{} {pct}", bar(fraction)),
                format!("{}/{}", c.documents_copied, c.documents_estimated),
                format!("{} of {}", bytes(c.bytes_copied), bytes(c.bytes_estimated)),
                if c.done {
                    "done".to_owned()
                } else {
                    eta_text(c.eta_seconds)
                },
            ]
        })
        .collect();
    table(&["COLLECTION", "PROGRESS", "DOCS", "SIZE", "ETA"], &rows)
}

/// The progress section of `task get` as key/value rows (copy with rate and ETA, indexes, apply and source rates,
/// lag with the catch-up ETA, spool, oplog headroom, retries), by phase. `activity` is the task's, `phase` the
/// phase the progress describes. An ended task shows no ETA for its copy or its catch-up.
pub fn progress_rows(
    progress: &Progress,
    activity: Activity,
    phase: TaskPhase,
) -> Vec<(&'static str, String)> {
    let running = phase != TaskPhase::Unspecified;
    let mut rows = Vec::new();
    let copied_any = progress.documents_copied > 0
        || progress.documents_estimated > 0
        || progress.bytes_estimated > 0;
    if phase == TaskPhase::DataSync || copied_any {
        let mut copy =
            fraction(progress).map_or_else(String::new, |f| format!("{:.1}% ", f * 100.0));
        copy.push_str(&format!(
            "({} of {}, {}/{} docs)",
            bytes(progress.bytes_copied),
            bytes(progress.bytes_estimated),
            progress.documents_copied,
            progress.documents_estimated
        ));
        if phase == TaskPhase::DataSync && activity == Activity::Ended {
            copy.push_str("; not running");
        } else if phase == TaskPhase::DataSync {
            let eta = if progress.eta_seconds < 0 && activity == Activity::Paused {
                "paused".to_owned()
            } else {
                eta_text(progress.eta_seconds)
            };
            copy.push_str(&format!(
                " at {} docs/s, {}/s; ETA {eta}",
                rate(progress.documents_per_second),
                bytes(progress.bytes_per_second.max(0.0) as u64)
            ));
        } else {
            copy.push_str("; done");
        }
        rows.push(("Copy", copy));
    }
    if progress.indexes_total > 0 {
        rows.push((
            "Indexes",
            format!(
                "{} of {} built",
                progress.indexes_built, progress.indexes_total
            ),
        ));
    }
    if running {
        rows.push((
            "Apply",
            format!(
                "{} entries/s; source writes {} entries/s ({} applied of {} read)",
                rate(progress.apply_entries_per_second),
                rate(progress.source_entries_per_second),
                progress.oplog_entries_applied,
                progress.oplog_entries_read
            ),
        ));
        let mut lag = format!("{:.1}s", progress.lag_seconds.max(0.0));
        if phase == TaskPhase::OplogSync && activity != Activity::Ended {
            lag.push_str(&format!(
                "; catch-up ETA {}",
                catch_up_text(progress, activity, phase)
            ));
        }
        rows.push(("Lag", lag));
    }
    if running || progress.spool_bytes > 0 || progress.spool_cap_bytes > 0 {
        rows.push(("Spool", spool_text(progress)));
    }
    if running {
        rows.push(("Headroom", headroom_text(progress.oplog_headroom_seconds)));
    }
    if running || progress.retries > 0 {
        rows.push(("Retries", progress.retries.to_string()));
    }
    rows
}

/// The progress section of `task get` for a bare [`Progress`] (its own phase and paused flag): key/value lines,
/// then the collections still being copied.
pub fn progress_detail(progress: &Progress) -> String {
    let phase = TaskPhase::try_from(progress.phase).unwrap_or(TaskPhase::Unspecified);
    let mut out = detail(&progress_rows(
        progress,
        Activity::of_progress(progress),
        phase,
    ));
    out.push_str(&collections_section(progress));
    out
}

/// A blank line and the collections table when a collection is still being copied; empty otherwise.
fn collections_section(progress: &Progress) -> String {
    if progress.collections.iter().all(|c| c.done) {
        return String::new();
    }
    format!("\n{}", collections_table(&progress.collections))
}

/// RFC 3339 UTC with milliseconds, or empty.
pub fn time_millis(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|ts| SystemTime::try_from(*ts).ok())
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_default()
}

/// A task event's state and phase: `RUNNING/OPLOG_SYNC`, or the state alone when the phase is unspecified.
fn event_state(event: &TaskEvent) -> String {
    let phase = phase_name(event.phase);
    if phase.is_empty() {
        state_name(event.state)
    } else {
        format!("{}/{phase}", state_name(event.state))
    }
}

/// One task event on one line: time (RFC 3339 UTC, milliseconds), kind, principal, state/phase, `epoch N`,
/// detail; `-` for an empty field, every field [`escape`]d.
pub fn task_event_line(event: &TaskEvent) -> String {
    let fields = [
        time_millis(event.time.as_ref()),
        event.kind.clone(),
        event.principal.clone(),
        event_state(event),
        format!("epoch {}", event.epoch),
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

/// A task event as JSON (time with milliseconds).
pub fn task_event_json(event: &TaskEvent) -> Value {
    let time = time_millis(event.time.as_ref());
    json!({
        "seq": event.seq,
        "time": if time.is_empty() { Value::Null } else { Value::String(time) },
        "kind": event.kind,
        "principal": event.principal,
        "state": state_name(event.state),
        "phase": phase_name(event.phase),
        "epoch": event.epoch,
        "detail": event.detail,
    })
}

/// A throttle as JSON (0 = unlimited).
pub fn throttle_json(throttle: &Throttle) -> Value {
    json!({
        "copy_documents_per_second": throttle.copy_documents_per_second,
        "copy_bytes_per_second": throttle.copy_bytes_per_second,
        "apply_entries_per_second": throttle.apply_entries_per_second,
        "apply_bytes_per_second": throttle.apply_bytes_per_second,
    })
}

/// The line printed after `task throttle`: `task ID throttle: copy ...; apply ...`.
pub fn throttle_line(task: &Task) -> String {
    format!(
        "task {} throttle: {}",
        escape(&task.id),
        throttle_text(&task.throttle.unwrap_or_default())
    )
}

/// The line printed after `task pause` (`pause` true) or `task resume`: `task ID RUNNING/OPLOG_SYNC: paused`
/// (or `resumed`); when the returned task does not show the change yet, says it was requested.
pub fn pause_line(task: &Task, pause: bool) -> String {
    let paused = task.paused || task.progress.as_ref().is_some_and(|p| p.paused);
    let phase = phase_name(task.phase);
    let state = if phase.is_empty() {
        state_name(task.state)
    } else {
        format!("{}/{phase}", state_name(task.state))
    };
    let outcome = match (pause, paused) {
        (true, true) => "paused",
        (false, false) => "resumed",
        (true, false) => "pause requested (the task does not report paused yet)",
        (false, true) => "resume requested (the task still reports paused)",
    };
    format!("task {} {state}: {outcome}", escape(&task.id))
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

/// Progress as JSON (every field; ETAs keep the API's -1 for unknown).
pub fn progress_json(progress: &Progress) -> Value {
    let mut value = json!({
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
            "eta_seconds": c.eta_seconds,
        })).collect::<Vec<_>>(),
        "update_time": time_json(progress.update_time.as_ref()),
    });
    // Added separately: one json! call this large would exceed the macro recursion limit.
    if let Value::Object(map) = &mut value {
        let more = [
            ("spool_cap_bytes", json!(progress.spool_cap_bytes)),
            (
                "apply_entries_per_second",
                json!(progress.apply_entries_per_second),
            ),
            (
                "source_entries_per_second",
                json!(progress.source_entries_per_second),
            ),
            ("oplog_entries_read", json!(progress.oplog_entries_read)),
            ("catch_up_eta_seconds", json!(progress.catch_up_eta_seconds)),
            ("converging", json!(progress.converging)),
            (
                "spool_full_eta_seconds",
                json!(progress.spool_full_eta_seconds),
            ),
            (
                "oplog_headroom_seconds",
                json!(progress.oplog_headroom_seconds),
            ),
            ("paused", json!(progress.paused)),
            ("retries", json!(progress.retries)),
        ];
        for (key, field) in more {
            map.insert(key.to_owned(), field);
        }
    }
    value
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
        "throttle": throttle_json(&task.throttle.unwrap_or_default()),
        "paused": task.paused,
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
                state_text(t),
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

/// A task in detail: key/value lines (state with PAUSED, throttle when set, the progress section of
/// [`progress_rows`]), then the collections still being copied, then the check items.
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
        ("State", state_text(task)),
        ("Phase", phase_name(task.phase)),
    ];
    let throttle = task.throttle.unwrap_or_default();
    if throttle_is_set(&throttle) {
        rows.push(("Throttle", throttle_text(&throttle)));
    }
    rows.push(("Progress", progress_summary(task)));
    if let Some(progress) = &task.progress {
        rows.extend(progress_rows(
            progress,
            Activity::of(task),
            effective_phase(task, progress),
        ));
    }
    rows.extend([
        ("Agent", agent_cell(task)),
        ("Epoch", task.epoch.to_string()),
        ("Created", time(task.create_time.as_ref())),
        ("Updated", time(task.update_time.as_ref())),
    ]);
    if !task.failure_reason.is_empty() {
        rows.push(("Failure", task.failure_reason.clone()));
        rows.push((
            "Resumable",
            if task.resumable {
                "yes: fix the cause, then `task start` resumes from the last checkpoint (or `task stop` rolls back)"
                    .to_owned()
            } else if task.failure_reason == "stopped by operator" || task.checkpoint.is_none() {
                "no".to_owned()
            } else {
                "no: `task stop` rolls back what it created, then create a new task".to_owned()
            },
        ));
    }
    if let Some(v) = &task.verification {
        rows.push(("Verified", verification_summary(v)));
    }
    let mut out = detail(&rows);
    if let Some(progress) = &task.progress {
        out.push_str(&collections_section(progress));
    }
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
    let fields = [
        time_millis(event.time.as_ref()),
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

    fn oplog_sync_progress() -> Progress {
        Progress {
            phase: TaskPhase::OplogSync as i32,
            lag_seconds: 42.5,
            oplog_entries_applied: 1200,
            oplog_entries_read: 1500,
            apply_entries_per_second: 300.0,
            source_entries_per_second: 450.0,
            catch_up_eta_seconds: -1,
            converging: false,
            spool_bytes: 850,
            spool_cap_bytes: 1000,
            spool_full_eta_seconds: -1,
            oplog_headroom_seconds: 9000,
            retries: 2,
            ..Progress::default()
        }
    }

    fn row<'a>(rows: &'a [(&str, String)], key: &str) -> Option<&'a str> {
        rows.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn durations_are_humanized() {
        assert_eq!(eta_text(200), "3m 20s");
        assert_eq!(eta_text(-1), "unknown");
        assert_eq!(eta_text(-7), "unknown");
        assert_eq!(eta_text(0), "0s");
        assert_eq!(duration_text(45), "45s");
        assert_eq!(duration_text(60), "1m");
        assert_eq!(duration_text(3600), "1h");
        assert_eq!(duration_text(3725), "1h 2m");
        assert_eq!(duration_text(9000), "2h 30m");
        assert_eq!(duration_text(90_061), "1d 1h");
        assert_eq!(duration_text(86_400 + 59), "1d");
    }

    #[test]
    fn catch_up_eta_in_words() {
        let progress = oplog_sync_progress();
        let phase = TaskPhase::OplogSync;
        assert_eq!(
            catch_up_text(&progress, Activity::Running, phase),
            "not converging"
        );
        assert_eq!(catch_up_text(&progress, Activity::Paused, phase), "paused");
        assert_eq!(catch_up_text(&progress, Activity::Ended, phase), "unknown");
        assert_eq!(
            catch_up_text(&progress, Activity::Running, TaskPhase::DataSync),
            "unknown"
        );
        let unknown = Progress {
            converging: true,
            ..oplog_sync_progress()
        };
        assert_eq!(catch_up_text(&unknown, Activity::Running, phase), "unknown");
        let converging = Progress {
            converging: true,
            catch_up_eta_seconds: 200,
            ..oplog_sync_progress()
        };
        assert_eq!(
            catch_up_text(&converging, Activity::Running, phase),
            "3m 20s"
        );
        let caught_up = Progress {
            catch_up_eta_seconds: 0,
            lag_seconds: 0.2,
            ..oplog_sync_progress()
        };
        assert_eq!(
            catch_up_text(&caught_up, Activity::Running, phase),
            "caught up"
        );
    }

    #[test]
    fn a_task_in_oplog_sync_that_does_not_converge_says_so() {
        let mut task = task_with_password();
        task.phase = TaskPhase::OplogSync as i32;
        task.progress = Some(oplog_sync_progress());
        let text = task_detail(&task);
        let lag = text.lines().find(|l| l.starts_with("Lag:")).unwrap();
        assert_eq!(lag, "Lag:         42.5s; catch-up ETA not converging");
        assert!(progress_summary(&task).contains("catch-up not converging"));
        // Paused: no longer "not converging".
        task.paused = true;
        let text = task_detail(&task);
        assert!(text.contains("State:       RUNNING PAUSED\n"), "{text}");
        assert!(text.contains("catch-up ETA paused"), "{text}");
        assert!(!text.contains("not converging"), "{text}");
        assert!(watch_line(&task).starts_with("RUNNING PAUSED OPLOG_SYNC "));
        assert!(tasks_table(std::slice::from_ref(&task)).contains("RUNNING PAUSED"));
        // A task that ended shows its last lag, no catch-up verdict.
        task.paused = false;
        task.state = TaskState::Failed as i32;
        let text = task_detail(&task);
        assert!(text.contains("Lag:         42.5s\n"), "{text}");
        assert!(!text.contains("not converging") && !progress_summary(&task).contains("catch-up"));
        assert!(text.contains("Headroom:    source oplog keeps the resume point for 2h 30m\n"));
        // A task whose state is not set yet counts as running.
        task.state = TaskState::Unspecified as i32;
        assert!(task_detail(&task).contains("catch-up ETA not converging"));
    }

    #[test]
    fn the_progress_section_in_oplog_sync() {
        let progress = oplog_sync_progress();
        let rows = progress_rows(&progress, Activity::Running, TaskPhase::OplogSync);
        assert_eq!(
            row(&rows, "Apply"),
            Some("300 entries/s; source writes 450 entries/s (1200 applied of 1500 read)")
        );
        assert_eq!(row(&rows, "Spool"), Some("850 B of 1000 B (85%)"));
        assert_eq!(
            row(&rows, "Headroom"),
            Some("source oplog keeps the resume point for 2h 30m")
        );
        assert_eq!(row(&rows, "Retries"), Some("2"));
        assert_eq!(row(&rows, "Copy"), None, "nothing was copied");
        let text = progress_detail(&progress);
        assert!(
            text.contains("Spool:       850 B of 1000 B (85%)\n"),
            "{text}"
        );
        assert!(text.contains("catch-up ETA not converging"), "{text}");
        let unknown_headroom = Progress {
            oplog_headroom_seconds: -1,
            ..oplog_sync_progress()
        };
        let rows = progress_rows(&unknown_headroom, Activity::Running, TaskPhase::OplogSync);
        assert_eq!(row(&rows, "Headroom"), Some("unknown"));
    }

    #[test]
    fn spool_usage_with_percentage_and_time_to_full() {
        let progress = oplog_sync_progress();
        assert_eq!(spool_text(&progress), "850 B of 1000 B (85%)");
        let growing = Progress {
            spool_full_eta_seconds: 300,
            ..oplog_sync_progress()
        };
        let text = spool_text(&growing);
        assert!(
            text.starts_with("850 B of 1000 B (85%); full in 5m"),
            "{text}"
        );
        let full_now = Progress {
            spool_bytes: 1000,
            spool_full_eta_seconds: 0,
            ..oplog_sync_progress()
        };
        assert!(spool_text(&full_now).contains("(100%); full in 0s"));
        let almost = Progress {
            spool_bytes: 999,
            ..oplog_sync_progress()
        };
        assert!(spool_text(&almost).contains("(99%)"), "rounded down");
        let no_cap = Progress {
            spool_bytes: 2048,
            spool_full_eta_seconds: -1,
            ..Progress::default()
        };
        assert_eq!(spool_text(&no_cap), "2.0 KiB");
    }

    #[test]
    fn the_copy_section_with_eta_and_collection_bars() {
        let progress = Progress {
            phase: TaskPhase::DataSync as i32,
            documents_copied: 2500,
            documents_estimated: 10_000,
            bytes_copied: 250 * 1024 * 1024,
            bytes_estimated: 1000 * 1024 * 1024,
            documents_per_second: 1234.4,
            bytes_per_second: 3.0 * 1024.0 * 1024.0,
            eta_seconds: 200,
            oplog_headroom_seconds: -1,
            spool_full_eta_seconds: -1,
            catch_up_eta_seconds: -1,
            collections: vec![
                CollectionProgress {
                    namespace: "shop.orders".to_owned(),
                    documents_copied: 500,
                    documents_estimated: 1000,
                    bytes_copied: 50,
                    bytes_estimated: 100,
                    eta_seconds: 200,
                    ..CollectionProgress::default()
                },
                CollectionProgress {
                    namespace: "shop.users".to_owned(),
                    documents_copied: 10,
                    eta_seconds: -1,
                    ..CollectionProgress::default()
                },
                CollectionProgress {
                    namespace: "shop.carts".to_owned(),
                    documents_copied: 7,
                    documents_estimated: 7,
                    done: true,
                    ..CollectionProgress::default()
                },
            ],
            ..Progress::default()
        };
        let rows = progress_rows(&progress, Activity::Running, TaskPhase::DataSync);
        assert_eq!(
            row(&rows, "Copy"),
            Some("25.0% (250.0 MiB of 1000.0 MiB, 2500/10000 docs) at 1234 docs/s, 3.0 MiB/s; ETA 3m 20s")
        );
        assert_eq!(
            row(&rows, "Lag").map(|l| l.contains("catch-up")),
            Some(false)
        );
        let paused = Progress {
            eta_seconds: -1,
            ..progress.clone()
        };
        let rows = progress_rows(&paused, Activity::Paused, TaskPhase::DataSync);
        assert!(row(&rows, "Copy").unwrap().ends_with("ETA paused"));
        let rows = progress_rows(&paused, Activity::Running, TaskPhase::DataSync);
        assert!(row(&rows, "Copy").unwrap().ends_with("ETA unknown"));
        let rows = progress_rows(&paused, Activity::Ended, TaskPhase::DataSync);
        assert!(row(&rows, "Copy").unwrap().ends_with("docs); not running"));

        let table_text = collections_table(&progress.collections);
        let lines: Vec<&str> = table_text.lines().collect();
        assert!(lines[0].starts_with("COLLECTION") && lines[0].ends_with("ETA"));
        assert!(
            lines[1].contains("shop.orders")
                && lines[1].contains("[##########..........] 50%")
                && lines[1].contains("500/1000")
                && lines[1].ends_with("3m 20s"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("[....................] ?") && lines[2].ends_with("unknown"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("[####################] 100%") && lines[3].ends_with("done"),
            "{}",
            lines[3]
        );
        // In the task detail, after the key/value block.
        let mut task = task_with_password();
        task.progress = Some(progress.clone());
        let text = task_detail(&task);
        assert!(text.contains("\nCOLLECTION"), "{text}");
        assert!(text.contains("ETA 3m 20s"), "{text}");
        // Once every collection is copied the table is left out.
        let mut done = progress;
        for c in &mut done.collections {
            c.done = true;
        }
        assert!(!progress_detail(&done).contains("COLLECTION"));
    }

    #[test]
    fn bars_are_bounded() {
        assert_eq!(bar(Some(0.0)), "[....................]");
        assert_eq!(bar(Some(1.0)), "[####################]");
        assert_eq!(bar(Some(7.0)), "[####################]");
        assert_eq!(bar(Some(f64::NAN)), "[....................]");
        assert_eq!(bar(None), "[....................]");
    }

    #[test]
    fn throttles_in_words() {
        let copy_only = Throttle {
            copy_documents_per_second: 1000,
            ..Throttle::default()
        };
        assert_eq!(
            throttle_text(&copy_only),
            "copy 1000 docs/s, unlimited MB/s; apply unlimited"
        );
        let both = Throttle {
            copy_documents_per_second: 0,
            copy_bytes_per_second: 500_000,
            apply_entries_per_second: 200,
            apply_bytes_per_second: 12_000_000,
        };
        assert_eq!(
            throttle_text(&both),
            "copy unlimited docs/s, 0.5 MB/s; apply 200 entries/s, 12 MB/s"
        );
        assert_eq!(
            throttle_text(&Throttle::default()),
            "copy unlimited; apply unlimited"
        );
        assert_eq!(mb_text(1_234_567), "1.234567");
        assert_eq!(mb_text(1), "0.000001");
        assert!(!throttle_is_set(&Throttle::default()));
        assert!(throttle_is_set(&both));

        let mut task = task_with_password();
        assert!(
            !task_detail(&task).contains("Throttle:"),
            "shown only when set"
        );
        task.throttle = Some(copy_only);
        assert!(task_detail(&task)
            .contains("Throttle:    copy 1000 docs/s, unlimited MB/s; apply unlimited\n"));
        assert_eq!(
            throttle_line(&task),
            "task task-0123456789ab throttle: copy 1000 docs/s, unlimited MB/s; apply unlimited"
        );
        let json = task_json(&task);
        assert_eq!(json["throttle"]["copy_documents_per_second"], 1000);
        assert_eq!(json["throttle"]["apply_bytes_per_second"], 0);
        assert_eq!(json["paused"], false);
    }

    #[test]
    fn pause_and_resume_lines() {
        let mut task = task_with_password();
        task.paused = true;
        assert_eq!(
            pause_line(&task, true),
            "task task-0123456789ab RUNNING/DATA_SYNC: paused"
        );
        task.paused = false;
        assert_eq!(
            pause_line(&task, false),
            "task task-0123456789ab RUNNING/DATA_SYNC: resumed"
        );
        assert!(pause_line(&task, true)
            .ends_with("pause requested (the task does not report paused yet)"));
    }

    #[test]
    fn task_events_on_one_line_and_as_json() {
        let event = TaskEvent {
            seq: 12,
            time: Some(prost_types::Timestamp {
                seconds: 1_714_550_400,
                nanos: 250_000_000,
            }),
            kind: "paused".to_owned(),
            principal: "admin".to_owned(),
            detail: "paused by operator".to_owned(),
            state: TaskState::Running as i32,
            phase: TaskPhase::OplogSync as i32,
            epoch: 3,
        };
        assert_eq!(
            task_event_line(&event),
            "2024-05-01T08:00:00.250Z paused admin RUNNING/OPLOG_SYNC epoch 3 paused by operator"
        );
        let json = task_event_json(&event);
        assert_eq!(json["time"], "2024-05-01T08:00:00.250Z");
        assert_eq!(json["seq"], 12);
        assert_eq!(json["state"], "RUNNING");
        assert_eq!(json["phase"], "OPLOG_SYNC");
        assert_eq!(json["epoch"], 3);
        let bare = TaskEvent {
            time: None,
            kind: "created".to_owned(),
            principal: String::new(),
            detail: String::new(),
            state: TaskState::NotStarted as i32,
            phase: 0,
            epoch: 0,
            seq: 1,
        };
        assert_eq!(task_event_line(&bare), "- created - NOT_STARTED epoch 0");
        assert_eq!(task_event_json(&bare)["time"], Value::Null);
        let hostile = TaskEvent {
            kind: format!("state{HOSTILE}"),
            principal: format!("agent:x{HOSTILE}"),
            detail: format!("boom{HOSTILE}"),
            ..event
        };
        assert_inert(&format!("{}\n", task_event_line(&hostile)), 1);
        let text = json_text(&task_event_json(&hostile), false);
        assert_eq!(text.lines().count(), 1, "one JSON object per line");
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'));
    }

    #[test]
    fn a_hostile_collection_name_stays_inert() {
        let collections = [CollectionProgress {
            namespace: format!("shop.orders{HOSTILE}"),
            ..CollectionProgress::default()
        }];
        assert_inert(&collections_table(&collections), 2);
    }

    #[test]
    fn progress_json_has_the_new_fields() {
        let mut progress = oplog_sync_progress();
        progress.collections = vec![CollectionProgress {
            namespace: "shop.orders".to_owned(),
            eta_seconds: -1,
            ..CollectionProgress::default()
        }];
        let json = progress_json(&progress);
        assert_eq!(json["spool_cap_bytes"], 1000);
        assert_eq!(json["catch_up_eta_seconds"], -1);
        assert_eq!(json["converging"], false);
        assert_eq!(json["oplog_headroom_seconds"], 9000);
        assert_eq!(json["oplog_entries_read"], 1500);
        assert_eq!(json["apply_entries_per_second"], 300.0);
        assert_eq!(json["source_entries_per_second"], 450.0);
        assert_eq!(json["spool_full_eta_seconds"], -1);
        assert_eq!(json["paused"], false);
        assert_eq!(json["retries"], 2);
        assert_eq!(json["collections"][0]["eta_seconds"], -1);
        assert_eq!(json["phase"], "OPLOG_SYNC");
    }
}
