//! The `ferryctl` command line (clap definitions only).
//!
//! Owns flag names and help; it must not do IO. Passwords are never accepted as flag values (they would leak into
//! shell history and `ps`): only `--password-file`, `--password-env` or an interactive prompt.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Operator CLI for Ferry.
#[derive(Debug, Parser)]
#[command(
    name = "ferryctl",
    version,
    about = "Operator CLI for Ferry migrations"
)]
pub struct Cli {
    /// Coordinator URL, e.g. https://coordinator.example:7443 (http:// needs --plaintext).
    #[arg(long, env = "FERRY_COORDINATOR", global = true)]
    pub coordinator: Option<String>,
    /// File holding the operator bearer token.
    #[arg(long, global = true, conflicts_with = "token_env")]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the operator bearer token.
    #[arg(long, global = true)]
    pub token_env: Option<String>,
    /// Plaintext HTTP/2 (loopback and tests only).
    #[arg(long, global = true)]
    pub plaintext: bool,
    /// CA certificate (PEM) to trust for the coordinator.
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for humans.
    Table,
    /// JSON for scripts (one document; `task watch` and `task events` print one per line).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Destination instances (the catalog).
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Migration tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Agents: list, enroll (join tokens), revoke.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// The audit log (admin).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show the calling principal: name, role, tenants and permissions.
    #[command(name = "whoami")]
    WhoAmI,
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Register a destination instance.
    Register(RegisterInstance),
    /// List destination instances.
    List(ListInstances),
    /// Delete a destination instance.
    Delete {
        /// Instance id, e.g. cmgo-6wk2mxa1.
        instance_id: String,
    },
}

/// Where a password comes from (never a flag value).
#[derive(Debug, Args, Default)]
pub struct PasswordSource {
    /// Read the password from this file (first line).
    #[arg(long, conflicts_with = "password_env")]
    pub password_file: Option<PathBuf>,
    /// Read the password from this environment variable.
    #[arg(long)]
    pub password_env: Option<String>,
}

#[derive(Debug, Args)]
pub struct RegisterInstance {
    /// Instance id, "cmgo-" + 8 lowercase alphanumerics.
    #[arg(long = "id")]
    pub instance_id: String,
    /// Region, e.g. ap-guangzhou.
    #[arg(long)]
    pub region: String,
    /// mongodb:// URI without credentials.
    #[arg(long)]
    pub uri: String,
    /// Destination user.
    #[arg(long)]
    pub username: String,
    /// Tenant the instance belongs to (1..40 of [a-z0-9-]); only tasks of that tenant may use it. Default: the
    /// caller's only tenant (or "default").
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub password: PasswordSource,
}

#[derive(Debug, Args)]
pub struct ListInstances {
    /// Only this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Page size (0 = server default).
    #[arg(long, default_value_t = 0)]
    pub page_size: i32,
    /// Page token from a previous call.
    #[arg(long)]
    pub page_token: Option<String>,
}

/// Task kind as typed by operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Source on a cloud VM (the agent on that VM runs the task).
    Cvm,
    /// Source reachable over the internet (a pool agent runs the task).
    PublicNetwork,
}

/// Task state filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    NotStarted,
    Checking,
    CheckPassed,
    CheckFailed,
    Running,
    Completing,
    Succeeded,
    Stopping,
    Failed,
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Task name (1..60 characters).
    #[arg(long)]
    pub name: Option<String>,
    /// Region of the source, e.g. ap-guangzhou.
    #[arg(long)]
    pub region: Option<String>,
    /// cvm or public-network.
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// CVM instance id ("ins-" + 8 lowercase alphanumerics); CVM tasks only.
    #[arg(long)]
    pub cvm_id: Option<String>,
    /// Source host: the CVM's private IP or a public address.
    #[arg(long)]
    pub host: Option<String>,
    /// Source port.
    #[arg(long)]
    pub port: Option<u32>,
    /// Source user.
    #[arg(long)]
    pub username: Option<String>,
    /// Destination instance id from the catalog.
    #[arg(long)]
    pub destination: Option<String>,
    /// Database to migrate (repeat, or comma-separated); none = every non-system database.
    #[arg(long = "database", value_delimiter = ',')]
    pub databases: Vec<String>,
    #[command(flatten)]
    pub password: PasswordSource,
}

/// `task create`: the spec flags plus the tenant (fixed at creation).
#[derive(Debug, Args)]
pub struct CreateTask {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Tenant (project) the task belongs to (1..40 of [a-z0-9-]); fixed at creation. Default: the caller's only
    /// tenant (or "default").
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Create a task.
    Create(CreateTask),
    /// Show a task: spec, state (PAUSED when paused), throttle, progress with ETAs, lag, spool and oplog
    /// headroom, checks.
    #[command(visible_alias = "show")]
    Get { task_id: String },
    /// List tasks.
    List(ListTasks),
    /// Change a task's spec (before migration starts); unset flags keep their values.
    Update {
        task_id: String,
        #[command(flatten)]
        spec: SpecArgs,
        /// Migrate every non-system database (clears the database list).
        #[arg(long, conflicts_with = "databases")]
        all_databases: bool,
    },
    /// Delete a task (never while it runs).
    Delete { task_id: String },
    /// Run the pre-migration checks.
    Check {
        task_id: String,
        /// Wait for the checks to finish and print the items.
        #[arg(long)]
        wait: bool,
    },
    /// Start the migration (after the checks passed), or resume a FAILED task whose failure is resumable from
    /// its last checkpoint.
    Start { task_id: String },
    /// Cut over: apply the source's oplog up to now, then succeed.
    Complete {
        task_id: String,
        /// Verify the destination after the cut-over (source quiescent) and succeed only if it passes; with
        /// mismatches the task fails resumable and `task mismatches` lists them.
        #[arg(long)]
        verify: bool,
    },
    /// Verify the destination against the source with the built-in verifier: online while the task is in
    /// OPLOG_SYNC (lagging documents are rechecked until they converge), or after it SUCCEEDED.
    Verify {
        task_id: String,
        /// `full` compares every document; `hashed` compares range hashes first.
        #[arg(long, value_enum, default_value = "full")]
        mode: VerifyModeArg,
        /// Wait for the verdict, with a progress bar and a per-collection table; exit 4 when it FAILED.
        #[arg(long)]
        wait: bool,
    },
    /// List the confirmed mismatches of the task's newest verification run.
    Mismatches {
        task_id: String,
        /// At most 1000; default 100.
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Stop the task (running, or FAILED and not rolled back yet) and roll back what it created on the destination.
    Stop { task_id: String },
    /// Follow state, phase and progress live until the task ends.
    Watch { task_id: String },
    /// List the source's databases and sizes (asks the task's agent).
    Databases { task_id: String },
    /// Limit the copy and the apply of a task (takes effect within 2 seconds, kept across restarts). A flag not
    /// given keeps the task's current limit; 0 means unlimited for that limit; `--unlimited` clears them all.
    Throttle(ThrottleArgs),
    /// Pause copy and apply of a RUNNING task: the source sees at most the oplog tail, the oplog keeps spooling
    /// (watch the spool and the oplog headroom in `task get`). Resume before `task complete`; `task stop` works
    /// paused.
    Pause {
        /// Task id, e.g. task-7f3a9c2d1e4b.
        task_id: String,
    },
    /// Resume copy and apply of a paused task.
    Resume {
        /// Task id, e.g. task-7f3a9c2d1e4b.
        task_id: String,
    },
    /// The task's history, oldest first: state and phase changes, checks, operator actions with their principal,
    /// assignments with their epoch, agent disconnects, retries, failures, throttles, pauses. One line per event
    /// (`-o json`: one JSON object per line).
    Events {
        /// Task id, e.g. task-7f3a9c2d1e4b.
        task_id: String,
        /// After the last event, keep polling every second for new ones until the task is SUCCEEDED or FAILED
        /// (or you interrupt with Ctrl-C).
        #[arg(long)]
        follow: bool,
        /// Stop after this many events (default: all).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
}

/// `task throttle` flags. At least one is required; `--unlimited` excludes the others.
#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("limits")
        .required(true)
        .multiple(true)
        .args([
            "copy_documents_per_second",
            "copy_bytes_per_second",
            "apply_entries_per_second",
            "apply_bytes_per_second",
            "unlimited",
        ])
))]
pub struct ThrottleArgs {
    /// Task id, e.g. task-7f3a9c2d1e4b.
    pub task_id: String,
    /// Copy at most N documents per second (0 = unlimited).
    #[arg(
        long = "copy-docs-per-second",
        value_name = "N",
        value_parser = parse_per_second,
        allow_negative_numbers = true
    )]
    pub copy_documents_per_second: Option<u64>,
    /// Copy at most M megabytes per second (1 MB = 1,000,000 bytes; decimals such as 0.5 allowed; 0 = unlimited).
    // Held here in bytes per second.
    #[arg(
        long = "copy-mb-per-second",
        value_name = "M",
        value_parser = parse_mb_per_second,
        allow_negative_numbers = true
    )]
    pub copy_bytes_per_second: Option<u64>,
    /// Apply at most N oplog entries per second (0 = unlimited).
    #[arg(
        long = "apply-entries-per-second",
        value_name = "N",
        value_parser = parse_per_second,
        allow_negative_numbers = true
    )]
    pub apply_entries_per_second: Option<u64>,
    /// Apply at most M megabytes of oplog per second (1 MB = 1,000,000 bytes; decimals allowed; 0 = unlimited).
    // Held here in bytes per second.
    #[arg(
        long = "apply-mb-per-second",
        value_name = "M",
        value_parser = parse_mb_per_second,
        allow_negative_numbers = true
    )]
    pub apply_bytes_per_second: Option<u64>,
    /// Remove every limit (copy and apply run at full speed).
    #[arg(
        long,
        conflicts_with_all = [
            "copy_documents_per_second",
            "copy_bytes_per_second",
            "apply_entries_per_second",
            "apply_bytes_per_second",
        ]
    )]
    pub unlimited: bool,
}

/// Bytes in the megabyte of the `--*-mb-per-second` flags (decimal, as network rates are quoted).
pub const BYTES_PER_MB: u64 = 1_000_000;

/// `--copy-docs-per-second` / `--apply-entries-per-second`: a whole number, 0 meaning unlimited.
pub fn parse_per_second(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(format!(
            "{text:?} is negative: give a rate of 0 or more per second (0 = unlimited)"
        ));
    }
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a whole number per second: use e.g. 1000 (0 = unlimited)"
        ));
    }
    trimmed
        .parse::<u64>()
        .map_err(|_| format!("{text:?} is too large: at most {} per second", u64::MAX))
}

/// `--copy-mb-per-second` / `--apply-mb-per-second`: megabytes per second (1 MB = 1,000,000 bytes), decimals
/// allowed down to one byte (`0.5` = 500000), 0 meaning unlimited; returns bytes per second. Parsed exactly
/// (no floating point), so `1.1` is 1100000 bytes.
pub fn parse_mb_per_second(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(format!(
            "{text:?} is negative: give 0 or more MB per second (0 = unlimited)"
        ));
    }
    let (whole, fraction) = trimmed.split_once('.').unwrap_or((trimmed, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(format!(
            "{text:?} is not a number of MB per second: use e.g. 50 or 0.5 (1 MB = 1000000 bytes; 0 = unlimited)"
        ));
    }
    // Six decimals are whole bytes; further digits must be zeros.
    let (kept, rest) = fraction.split_at(fraction.len().min(6));
    if rest.bytes().any(|b| b != b'0') {
        return Err(format!(
            "{text:?} is finer than one byte per second: use at most 6 decimals (1 MB = 1000000 bytes)"
        ));
    }
    let too_large = || format!("{text:?} is too large: at most 18446744073709 MB per second");
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let fraction_bytes: u64 = if kept.is_empty() {
        0
    } else {
        // e.g. "5" -> 500000, "25" -> 250000.
        format!("{kept:0<6}").parse().map_err(|_| too_large())?
    };
    whole
        .checked_mul(BYTES_PER_MB)
        .and_then(|b| b.checked_add(fraction_bytes))
        .ok_or_else(too_large)
}

/// Verifier mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyModeArg {
    Full,
    Hashed,
}

#[derive(Debug, Args)]
pub struct ListTasks {
    /// Only this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Only this state.
    #[arg(long, value_enum)]
    pub state: Option<StateFilter>,
    /// Page size (0 = server default).
    #[arg(long, default_value_t = 0)]
    pub page_size: i32,
    /// Page token from a previous call.
    #[arg(long)]
    pub page_token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List agents.
    List {
        /// Page size (0 = server default).
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        /// Page token from a previous call.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Single-use tokens that enroll a new agent (admin).
    #[command(subcommand)]
    JoinToken(JoinTokenCommand),
    /// Revoke an agent (admin): its session ends and its credential is refused from then on; its tasks wait for
    /// another eligible agent.
    Revoke {
        /// Agent id, e.g. agent-0123456789ab.
        agent_id: String,
        /// Why, for the audit log (at most 200 characters).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `agent join-token ...`.
#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Create a join token for one CVM (--cvm-id with --region) or for a pool agent (--pool). The token is shown
    /// once: printed, or written to --output-file.
    Create(CreateJoinToken),
}

/// `agent join-token create` flags.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("binding").required(true).args(["cvm_id", "pool"])))]
pub struct CreateJoinToken {
    /// The CVM the agent will run on ("ins-" + 8 lowercase alphanumerics); needs --region.
    #[arg(long, requires = "region")]
    pub cvm_id: Option<String>,
    /// The CVM's region, e.g. ap-guangzhou (with --cvm-id).
    #[arg(long, requires = "cvm_id")]
    pub region: Option<String>,
    /// Instead of a CVM: the agent joins the pool that runs public-network tasks.
    #[arg(long, conflicts_with_all = ["cvm_id", "region"])]
    pub pool: bool,
    /// How long the token may be used, e.g. 30m, 1h, 2d (at most 7d).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: u32,
    /// Tenant the agent serves (default: any tenant).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Free text for the audit log, e.g. a ticket number (at most 200 characters).
    #[arg(long)]
    pub description: Option<String>,
    /// Write the token to this new file (mode 0600; an existing file is never overwritten) instead of printing it.
    #[arg(long)]
    pub output_file: Option<PathBuf>,
}

/// The longest join-token TTL the coordinator accepts.
pub const MAX_JOIN_TOKEN_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// `--ttl`: a humantime duration of whole seconds, 1s..=7d, as seconds.
pub fn parse_ttl(text: &str) -> Result<u32, String> {
    let ttl = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}): use e.g. 30m, 1h or 2d"))?;
    if ttl.subsec_nanos() != 0 {
        return Err(format!(
            "{text:?} is not a whole number of seconds: use e.g. 90s or 2m"
        ));
    }
    let seconds = ttl.as_secs();
    if seconds == 0 {
        return Err(format!(
            "{text:?} is zero: a token must be valid for at least 1s"
        ));
    }
    if seconds > MAX_JOIN_TOKEN_TTL_SECONDS {
        return Err(format!(
            "{text:?} is longer than the coordinator allows: at most 7d"
        ));
    }
    u32::try_from(seconds).map_err(|_| format!("{text:?} is too long: at most 7d"))
}

/// `audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, oldest first (every page, up to --limit).
    List(ListAudit),
}

/// `audit list` flags. Times are durations ago (`1h` = one hour ago) or RFC 3339 times.
#[derive(Debug, Args)]
pub struct ListAudit {
    /// Only events acting on this task.
    #[arg(long = "task")]
    pub task_id: Option<String>,
    /// Only events of this principal, e.g. admin or agent:agent-0123456789ab.
    #[arg(long)]
    pub principal: Option<String>,
    /// Only events at or after this time: a duration ago (30m, 1h, 2d) or RFC 3339 (2024-05-01T08:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Only events before this time: a duration ago (30m, 1h, 2d) or RFC 3339 (2024-05-01T08:00:00Z).
    #[arg(long)]
    pub until: Option<String>,
    /// Stop after this many events (default: all).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

/// `--since` / `--until`: a duration ago (`1h` = one hour before `now`) or an RFC 3339 time (`Z` or a `+08:00`
/// style offset). The error names the flag, the value and the accepted forms.
pub fn parse_time_bound(
    flag: &str,
    text: &str,
    now: std::time::SystemTime,
) -> Result<std::time::SystemTime, String> {
    let text = text.trim();
    if let Ok(ago) = humantime::parse_duration(text) {
        return now.checked_sub(ago).ok_or_else(|| {
            format!("{flag} {text:?}: that duration reaches before 1970; use a shorter one")
        });
    }
    if let Some(time) = parse_rfc3339(text) {
        return Ok(time);
    }
    Err(format!(
        "{flag} {text:?} is neither a duration ago (e.g. 30m, 1h, 2d) nor an RFC 3339 time (e.g. \
         2024-05-01T08:00:00Z or 2024-05-01T16:00:00+08:00)"
    ))
}

/// RFC 3339 with `Z` (humantime) or a numeric `+HH:MM` / `-HH:MM` offset.
fn parse_rfc3339(text: &str) -> Option<std::time::SystemTime> {
    if let Ok(time) = humantime::parse_rfc3339(text) {
        return Some(time);
    }
    // "...+08:00": the last six characters are the offset; the rest parsed as UTC, then shifted.
    let split = text.len().checked_sub(6)?;
    if !text.is_char_boundary(split) {
        return None;
    }
    let (local, offset) = text.split_at(split);
    let bytes = offset.as_bytes();
    let sign = match bytes {
        [b'+', h1, h2, b':', m1, m2] if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()) => 1i64,
        [b'-', h1, h2, b':', m1, m2] if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()) => {
            -1i64
        }
        _ => return None,
    };
    let hours: u64 = offset.get(1..3)?.parse().ok()?;
    let minutes: u64 = offset.get(4..6)?.parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    let as_utc = humantime::parse_rfc3339(&format!("{local}Z")).ok()?;
    let shift = std::time::Duration::from_secs(hours * 3600 + minutes * 60);
    // Local time = UTC + offset, so UTC = local - offset.
    if sign > 0 {
        as_utc.checked_sub(shift)
    } else {
        as_utc.checked_add(shift)
    }
}
