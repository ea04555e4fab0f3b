//! ferryctl: the operator CLI over `ferry.v1.MigrationService` (instances, tasks, agents), with table or JSON
//! output and a live `task watch`.
//!
//! Owns argument handling, calls and rendering. It uses only the public contract (`ferry-proto`), never coordinator
//! internals, and never prints a password or a token.
//!
//! Exit codes: 0 success; 1 the coordinator returned an error (the gRPC code and message are printed); 2 usage
//! error (bad flags, unreadable token or password file); 3 the coordinator could not be reached; 4 the watched task
//! ended FAILED or its checks failed (`task watch`, `task check --wait`), or a verification did not pass
//! (`task verify --wait`).

pub mod cli;
pub mod client;
pub mod output;
pub mod password;

use std::io::IsTerminal;

use ferry_proto::v1::{
    CheckTaskRequest, CompleteTaskRequest, CreateTaskRequest, DeleteInstanceRequest,
    DeleteTaskRequest, GetTaskRequest, Instance, ListAgentsRequest, ListInstancesRequest,
    ListMismatchesRequest, ListSourceDatabasesRequest, ListTasksRequest, RegisterInstanceRequest,
    StartTaskRequest, StopTaskRequest, Task, TaskKind, TaskSpec, TaskState, UpdateTaskRequest,
    VerificationState, VerifyMode, VerifyTaskRequest, WatchTaskRequest,
};
use serde_json::json;

use crate::cli::{
    AgentCommand, Cli, Command, InstanceCommand, Kind, Output, SpecArgs, StateFilter, TaskCommand,
};
use crate::client::Client;

/// Errors of ferryctl, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad flags or local inputs.
    #[error("{0}")]
    Usage(String),
    /// The coordinator could not be reached.
    #[error("{0}")]
    Connect(String),
    /// The coordinator answered with an error.
    #[error("{code:?}: {message}", code = .0.code(), message = .0.message())]
    Status(#[from] tonic::Status),
    /// The watched task ended badly.
    #[error("task {task_id} ended {state}{reason}")]
    TaskFailed {
        /// The task.
        task_id: String,
        /// Its final state.
        state: String,
        /// ": <failure reason>" or empty.
        reason: String,
    },
    /// A verification waited for did not pass.
    #[error("{0}")]
    Ended(String),
}

impl CtlError {
    /// Process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Status(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::Connect(_) => 3,
            CtlError::TaskFailed { .. } | CtlError::Ended(_) => 4,
        }
    }
}

/// Runs one ferryctl invocation; output goes to stdout, the caller prints the error.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let url = cli.coordinator.clone().ok_or_else(|| {
        CtlError::Usage("--coordinator URL (or FERRY_COORDINATOR) is required".to_owned())
    })?;
    let token = client::read_token(cli.token_file.as_deref(), cli.token_env.as_deref())?;
    // Passwords are read before connecting so a usage error never costs a round trip.
    let mut ctl = Ctl {
        client: None,
        url,
        plaintext: cli.plaintext,
        tls_ca: cli.tls_ca.clone(),
        token: client::BearerToken::new(token.as_deref())?,
        output: cli.output,
    };
    match cli.command {
        Command::Instance(command) => ctl.instance(command).await,
        Command::Task(command) => ctl.task(command).await,
        Command::Agent(command) => ctl.agent(command).await,
    }
}

struct Ctl {
    client: Option<Client>,
    url: String,
    plaintext: bool,
    tls_ca: Option<std::path::PathBuf>,
    token: client::BearerToken,
    output: Output,
}

impl Ctl {
    async fn client(&mut self) -> Result<Client, CtlError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = client::connect(
            &self.url,
            self.plaintext,
            self.tls_ca.as_deref(),
            self.token.clone(),
        )
        .await?;
        self.client = Some(client.clone());
        Ok(client)
    }

    fn print_json(&self, value: serde_json::Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    }

    fn print_task(&self, task: &Task) {
        match self.output {
            Output::Json => self.print_json(output::task_json(task)),
            Output::Table => print!("{}", output::task_detail(task)),
        }
    }

    fn print_instance(&self, instance: &Instance) {
        match self.output {
            Output::Json => self.print_json(output::instance_json(instance)),
            Output::Table => print!(
                "{}",
                output::instances_table(std::slice::from_ref(instance))
            ),
        }
    }

    async fn instance(&mut self, command: InstanceCommand) -> Result<(), CtlError> {
        match command {
            InstanceCommand::Register(args) => {
                let password = password::read(&args.password, "destination", true)?;
                let instance = Instance {
                    instance_id: args.instance_id,
                    region: args.region,
                    uri: args.uri,
                    username: args.username,
                    password,
                    ..Instance::default()
                };
                let created = self
                    .client()
                    .await?
                    .register_instance(RegisterInstanceRequest {
                        instance: Some(instance),
                    })
                    .await?
                    .into_inner();
                self.print_instance(&created);
            }
            InstanceCommand::List(args) => {
                let response = self
                    .client()
                    .await?
                    .list_instances(ListInstancesRequest {
                        page_size: args.page_size,
                        page_token: args.page_token.unwrap_or_default(),
                        region: args.region.unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                match self.output {
                    Output::Json => self.print_json(json!({
                        "instances": response.instances.iter().map(output::instance_json).collect::<Vec<_>>(),
                        "next_page_token": response.next_page_token,
                    })),
                    Output::Table => {
                        print!("{}", output::instances_table(&response.instances));
                        print_next_page(&response.next_page_token);
                    }
                }
            }
            InstanceCommand::Delete { instance_id } => {
                self.client()
                    .await?
                    .delete_instance(DeleteInstanceRequest {
                        instance_id: instance_id.clone(),
                    })
                    .await?;
                self.print_deleted("instance", &instance_id);
            }
        }
        Ok(())
    }

    fn print_deleted(&self, what: &str, id: &str) {
        match self.output {
            Output::Json => self.print_json(json!({"deleted": id})),
            Output::Table => println!("deleted {what} {id}"),
        }
    }

    async fn task(&mut self, command: TaskCommand) -> Result<(), CtlError> {
        match command {
            TaskCommand::Create(args) => {
                let spec = new_spec(args)?;
                let task = self
                    .client()
                    .await?
                    .create_task(CreateTaskRequest { spec: Some(spec) })
                    .await?
                    .into_inner();
                self.print_task(&task);
            }
            TaskCommand::Get { task_id } => {
                let task = self
                    .client()
                    .await?
                    .get_task(GetTaskRequest { task_id })
                    .await?
                    .into_inner();
                self.print_task(&task);
            }
            TaskCommand::List(args) => self.list_tasks(args).await?,
            TaskCommand::Update {
                task_id,
                spec,
                all_databases,
            } => {
                let password = password::read(&spec.password, "source", false)?;
                let mut client = self.client().await?;
                let current = client
                    .get_task(GetTaskRequest {
                        task_id: task_id.clone(),
                    })
                    .await?
                    .into_inner();
                let mut merged =
                    overlay_spec(current.spec.unwrap_or_default(), spec, all_databases);
                merged.password = password;
                let task = client
                    .update_task(UpdateTaskRequest {
                        task_id,
                        spec: Some(merged),
                    })
                    .await?
                    .into_inner();
                self.print_task(&task);
            }
            TaskCommand::Delete { task_id } => {
                self.client()
                    .await?
                    .delete_task(DeleteTaskRequest {
                        task_id: task_id.clone(),
                    })
                    .await?;
                self.print_deleted("task", &task_id);
            }
            TaskCommand::Check { task_id, wait } => {
                let task = self
                    .client()
                    .await?
                    .check_task(CheckTaskRequest {
                        task_id: task_id.clone(),
                    })
                    .await?
                    .into_inner();
                if !wait {
                    self.print_task(&task);
                    return Ok(());
                }
                let last = self.follow(&task_id, false).await?;
                match self.output {
                    Output::Json => self.print_json(output::task_json(&last)),
                    Output::Table => {
                        println!("task {} {}", last.id, output::state_name(last.state));
                        print!("{}", output::checks_table(&last.checks));
                    }
                }
                ended_badly(&last)?;
            }
            TaskCommand::Start { task_id } => {
                let task = self
                    .client()
                    .await?
                    .start_task(StartTaskRequest { task_id })
                    .await?
                    .into_inner();
                self.print_task(&task);
            }
            TaskCommand::Complete { task_id, verify } => {
                let task = self
                    .client()
                    .await?
                    .complete_task(CompleteTaskRequest {
                        task_id,
                        require_verification: verify,
                    })
                    .await?
                    .into_inner();
                self.print_task(&task);
            }
            TaskCommand::Verify {
                task_id,
                mode,
                wait,
            } => self.verify(task_id, mode, wait).await?,
            TaskCommand::Mismatches {
                task_id,
                page_size,
                page_token,
            } => {
                let response = self
                    .client()
                    .await?
                    .list_mismatches(ListMismatchesRequest {
                        task_id,
                        page_size,
                        page_token: page_token.unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                match self.output {
                    Output::Json => self.print_json(json!({
                        "run": response.run,
                        "total": response.total,
                        "mismatches": response.mismatches.iter().map(output::mismatch_json).collect::<Vec<_>>(),
                        "next_page_token": response.next_page_token,
                    })),
                    Output::Table => {
                        print!("{}", output::mismatches_table(&response.mismatches));
                        println!("run {}: {} stored mismatches", response.run, response.total);
                        print_next_page(&response.next_page_token);
                    }
                }
            }
            TaskCommand::Stop { task_id } => {
                let task = self
                    .client()
                    .await?
                    .stop_task(StopTaskRequest { task_id })
                    .await?
                    .into_inner();
                self.print_task(&task);
            }
            TaskCommand::Watch { task_id } => {
                let last = self.follow(&task_id, true).await?;
                if self.output == Output::Table {
                    print!("{}", output::task_detail(&last));
                }
                ended_badly(&last)?;
            }
            TaskCommand::Databases { task_id } => {
                let response = self
                    .client()
                    .await?
                    .list_source_databases(ListSourceDatabasesRequest { task_id })
                    .await?
                    .into_inner();
                match self.output {
                    Output::Json => self.print_json(json!({
                        "databases": response.databases.iter().map(output::database_json).collect::<Vec<_>>(),
                    })),
                    Output::Table => print!("{}", output::databases_table(&response.databases)),
                }
            }
        }
        Ok(())
    }

    /// VerifyTask, then (with `wait`) the verdict: a progress bar on a terminal, the per-collection table at the
    /// end; exit 4 when the verification FAILED.
    async fn verify(
        &mut self,
        task_id: String,
        mode: cli::VerifyModeArg,
        wait: bool,
    ) -> Result<(), CtlError> {
        let mode = match mode {
            cli::VerifyModeArg::Full => VerifyMode::Full,
            cli::VerifyModeArg::Hashed => VerifyMode::Hashed,
        };
        let mut task = self
            .client()
            .await?
            .verify_task(VerifyTaskRequest {
                task_id: task_id.clone(),
                mode: mode as i32,
            })
            .await?
            .into_inner();
        if !wait {
            self.print_task(&task);
            return Ok(());
        }
        let run = task.verification.as_ref().map_or(0, |v| v.run);
        let bar = (self.output == Output::Table && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(1000);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:40}] {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        let mut last_line = String::new();
        loop {
            let v = task.verification.clone().unwrap_or_default();
            let line = output::verification_summary(&v);
            match (&bar, self.output) {
                (_, Output::Json) if line != last_line => {
                    println!("{}", output::verification_json(&v))
                }
                (Some(bar), _) => {
                    let total = v.documents_total.max(1);
                    bar.set_position(v.documents_compared.min(total) * 1000 / total);
                    bar.set_message(line.clone());
                }
                (None, Output::Table) if line != last_line => println!("{line}"),
                _ => {}
            }
            last_line = line;
            let finished = v.run != run
                || v.state != VerificationState::Running as i32
                || task.state == TaskState::Failed as i32;
            if finished {
                if let Some(bar) = &bar {
                    bar.finish();
                }
                if self.output == Output::Table {
                    print!("{}", output::verification_detail(&v));
                }
                if v.state != VerificationState::Passed as i32 {
                    return Err(CtlError::Ended(format!(
                        "verification {}: {}",
                        output::verification_state_name(v.state),
                        output::verification_summary(&v)
                    )));
                }
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            task = self
                .client()
                .await?
                .get_task(GetTaskRequest {
                    task_id: task_id.clone(),
                })
                .await?
                .into_inner();
        }
    }

    async fn list_tasks(&mut self, args: cli::ListTasks) -> Result<(), CtlError> {
        let response = self
            .client()
            .await?
            .list_tasks(ListTasksRequest {
                page_size: args.page_size,
                page_token: args.page_token.unwrap_or_default(),
                region: args.region.unwrap_or_default(),
                state: args
                    .state
                    .map(state_filter)
                    .unwrap_or(TaskState::Unspecified) as i32,
            })
            .await?
            .into_inner();
        match self.output {
            Output::Json => self.print_json(json!({
                "tasks": response.tasks.iter().map(output::task_json).collect::<Vec<_>>(),
                "next_page_token": response.next_page_token,
            })),
            Output::Table => {
                print!("{}", output::tasks_table(&response.tasks));
                print_next_page(&response.next_page_token);
            }
        }
        Ok(())
    }

    /// Follows WatchTask until the task is no longer active (or the stream ends); returns the last snapshot.
    /// With `live`, shows a progress bar on a terminal, one line per change otherwise (JSON: one object per line).
    async fn follow(&mut self, task_id: &str, live: bool) -> Result<Task, CtlError> {
        let mut stream = self
            .client()
            .await?
            .watch_task(WatchTaskRequest {
                task_id: task_id.to_owned(),
            })
            .await?
            .into_inner();
        let bar =
            (live && self.output == Output::Table && std::io::stderr().is_terminal()).then(|| {
                let bar = indicatif::ProgressBar::new(1000);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{bar:40}] {msg}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar
            });
        let mut last: Option<Task> = None;
        let mut last_line = String::new();
        while let Some(task) = stream.message().await? {
            let line = format!(
                "{} {} {}",
                output::state_name(task.state),
                output::phase_name(task.phase),
                output::progress_summary(&task)
            );
            if live {
                match (&bar, self.output) {
                    (_, Output::Json) => println!("{}", output::task_json(&task)),
                    (Some(bar), _) => {
                        let fraction = task
                            .progress
                            .as_ref()
                            .and_then(output::fraction)
                            .unwrap_or(0.0);
                        bar.set_position((fraction * 1000.0) as u64);
                        bar.set_message(line.clone());
                    }
                    (None, _) if line != last_line => println!("{line}"),
                    (None, _) => {}
                }
            }
            last_line = line;
            let active = is_active(task.state);
            last = Some(task);
            if !active {
                break;
            }
        }
        if let Some(bar) = bar {
            bar.finish();
        }
        last.ok_or_else(|| {
            CtlError::Status(tonic::Status::unknown("watch ended without a snapshot"))
        })
    }

    async fn agent(&mut self, command: AgentCommand) -> Result<(), CtlError> {
        let AgentCommand::List {
            page_size,
            page_token,
        } = command;
        let response = self
            .client()
            .await?
            .list_agents(ListAgentsRequest {
                page_size,
                page_token: page_token.unwrap_or_default(),
            })
            .await?
            .into_inner();
        match self.output {
            Output::Json => self.print_json(json!({
                "agents": response.agents.iter().map(output::agent_json).collect::<Vec<_>>(),
                "next_page_token": response.next_page_token,
            })),
            Output::Table => {
                print!("{}", output::agents_table(&response.agents));
                print_next_page(&response.next_page_token);
            }
        }
        Ok(())
    }
}

fn print_next_page(token: &str) {
    if !token.is_empty() {
        println!("(more: --page-token {token})");
    }
}

/// Whether the task is doing something (watch continues).
fn is_active(state: i32) -> bool {
    matches!(
        TaskState::try_from(state),
        Ok(TaskState::Checking | TaskState::Running | TaskState::Completing | TaskState::Stopping)
    )
}

fn ended_badly(task: &Task) -> Result<(), CtlError> {
    match TaskState::try_from(task.state) {
        Ok(TaskState::Failed | TaskState::CheckFailed) => Err(CtlError::TaskFailed {
            task_id: task.id.clone(),
            state: output::state_name(task.state),
            reason: if task.failure_reason.is_empty() {
                String::new()
            } else {
                format!(": {}", task.failure_reason)
            },
        }),
        _ => Ok(()),
    }
}

fn kind(kind: Kind) -> TaskKind {
    match kind {
        Kind::Cvm => TaskKind::Cvm,
        Kind::PublicNetwork => TaskKind::PublicNetwork,
    }
}

fn state_filter(state: StateFilter) -> TaskState {
    match state {
        StateFilter::NotStarted => TaskState::NotStarted,
        StateFilter::Checking => TaskState::Checking,
        StateFilter::CheckPassed => TaskState::CheckPassed,
        StateFilter::CheckFailed => TaskState::CheckFailed,
        StateFilter::Running => TaskState::Running,
        StateFilter::Completing => TaskState::Completing,
        StateFilter::Succeeded => TaskState::Succeeded,
        StateFilter::Stopping => TaskState::Stopping,
        StateFilter::Failed => TaskState::Failed,
    }
}

/// A new spec from flags; the server validates every field (and names the bad one).
fn new_spec(args: SpecArgs) -> Result<TaskSpec, CtlError> {
    let password = password::read(&args.password, "source", args.username.is_some())?;
    let mut spec = overlay_spec(TaskSpec::default(), args, false);
    spec.password = password;
    Ok(spec)
}

/// `base` with every flag that was given replacing its field. Never copies a password.
fn overlay_spec(base: TaskSpec, args: SpecArgs, all_databases: bool) -> TaskSpec {
    let mut spec = base;
    spec.password = String::new();
    if let Some(v) = args.name {
        spec.name = v;
    }
    if let Some(v) = args.region {
        spec.region = v;
    }
    if let Some(v) = args.kind {
        spec.kind = kind(v) as i32;
    }
    if let Some(v) = args.cvm_id {
        spec.cvm_id = v;
    }
    if let Some(v) = args.host {
        spec.mongo_host = v;
    }
    if let Some(v) = args.port {
        spec.port = v;
    }
    if let Some(v) = args.username {
        spec.username = v;
    }
    if let Some(v) = args.destination {
        spec.destination_instance_id = v;
    }
    if all_databases {
        spec.databases.clear();
    } else if !args.databases.is_empty() {
        spec.databases = args.databases;
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_password_flag_does_not_exist() {
        let result = Cli::try_parse_from([
            "ferryctl",
            "task",
            "create",
            "--name",
            "n",
            "--password",
            "hunter2",
        ]);
        assert!(result.is_err());
    }

    #[test]
    fn update_overlays_only_given_flags_and_never_copies_a_password() {
        let base = TaskSpec {
            name: "old".to_owned(),
            port: 27017,
            password: "stored".to_owned(),
            databases: vec!["a".to_owned()],
            require_verification: false,
            ..TaskSpec::default()
        };
        let cli = Cli::parse_from([
            "ferryctl",
            "task",
            "update",
            "task-1",
            "--name",
            "new",
            "--database",
            "b,c",
        ]);
        let Command::Task(TaskCommand::Update {
            spec,
            all_databases,
            ..
        }) = cli.command
        else {
            panic!("parsed into another command");
        };
        let merged = overlay_spec(base, spec, all_databases);
        assert_eq!(merged.name, "new");
        assert_eq!(merged.port, 27017);
        assert_eq!(merged.password, "");
        assert_eq!(merged.databases, vec!["b".to_owned(), "c".to_owned()]);
    }

    #[test]
    fn exit_codes_are_distinct() {
        let codes = [
            CtlError::Status(tonic::Status::not_found("x")).exit_code(),
            CtlError::Usage(String::new()).exit_code(),
            CtlError::Connect(String::new()).exit_code(),
            CtlError::TaskFailed {
                task_id: String::new(),
                state: String::new(),
                reason: String::new(),
            }
            .exit_code(),
        ];
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
        assert!(!codes.contains(&0));
    }

    #[test]
    fn password_is_read_from_file_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let source = cli::PasswordSource {
            password_file: Some(file),
            password_env: None,
        };
        assert_eq!(password::read(&source, "source", true).unwrap(), "s3cret");
        let none = cli::PasswordSource::default();
        assert_eq!(password::read(&none, "source", false).unwrap(), "");
    }
}
