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
    /// JSON for scripts (one document; `watch` prints one per line).
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
    /// Agents.
    #[command(subcommand)]
    Agent(AgentCommand),
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

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Create a task.
    Create(SpecArgs),
    /// Show a task.
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
    /// Stop the task (running, or FAILED and resumable) and roll back what it created on the destination.
    Stop { task_id: String },
    /// Follow state, phase and progress live until the task ends.
    Watch { task_id: String },
    /// List the source's databases and sizes (asks the task's agent).
    Databases { task_id: String },
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
}
