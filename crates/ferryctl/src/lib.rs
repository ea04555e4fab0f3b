//! ferryctl: the operator CLI over `ferry.v1.MigrationService` (instances, tasks, agents and their join tokens,
//! the audit log, the calling principal), with table or JSON output and a live `task watch`. Running tasks can be
//! throttled (`task throttle`), paused and resumed (`task pause` / `task resume`), and their history listed or
//! followed (`task events [--follow]`, one line or JSON object per event).
//!
//! Owns argument handling, calls and rendering. It uses only the public contract (`ferry-proto`), never coordinator
//! internals, and never prints a password or the operator token. The one secret it shows is a new join token, and
//! only when the user asked for it on stdout (`agent join-token create` without `--output-file`). Text output never
//! shows a server-supplied control character raw (see [`output::escape`]).
//!
//! Exit codes: 0 success; 1 the coordinator returned an error (the gRPC code and message are printed) or an unusable
//! answer; 2 usage error (bad flags, unreadable token or password file, an existing `--output-file`); 3 the
//! coordinator could not be reached; 4 the watched task ended FAILED or its checks failed (`task watch`,
//! `task check --wait`), or a verification did not pass (`task verify --wait`).

pub mod cli;
pub mod client;
pub mod output;
pub mod password;
pub mod token_file;

use std::io::{IsTerminal, Write};
use std::time::SystemTime;

use ferry_proto::v1::{
    CheckTaskRequest, CompleteTaskRequest, CreateJoinTokenRequest, CreateTaskRequest,
    DeleteInstanceRequest, DeleteTaskRequest, GetTaskRequest, Instance, JoinToken,
    ListAgentsRequest, ListAuditEventsRequest, ListInstancesRequest, ListMismatchesRequest,
    ListSourceDatabasesRequest, ListTaskEventsRequest, ListTasksRequest, PauseTaskRequest,
    RegisterInstanceRequest, ResumeTaskRequest, RevokeAgentRequest, SetTaskThrottleRequest,
    StartTaskRequest, StopTaskRequest, Task, TaskEvent, TaskKind, TaskSpec, TaskState, Throttle,
    UpdateTaskRequest, VerificationState, VerifyMode, VerifyTaskRequest, WatchTaskRequest,
    WhoAmIRequest,
};
use serde_json::json;

use crate::cli::{
    AgentCommand, AuditCommand, Cli, Command, CreateJoinToken, InstanceCommand, JoinTokenCommand,
    Kind, ListAudit, Output, SpecArgs, StateFilter, TaskCommand, ThrottleArgs,
};
use crate::client::Client;
use crate::token_file::TokenFile;

/// Page size of `audit list` (the most the coordinator serves per page).
const AUDIT_PAGE_SIZE: u64 = 1000;

/// Page size of `task events` (the most the coordinator serves per page).
const EVENTS_PAGE_SIZE: u64 = 1000;

/// How often `task events --follow` asks for new events.
const EVENTS_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// The coordinator answered, but with something unusable (e.g. a malformed join token or a page token that
    /// does not advance).
    #[error("{0}")]
    BadResponse(String),
}

impl CtlError {
    /// Process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Status(_) | CtlError::BadResponse(_) => 1,
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
        Command::Audit(AuditCommand::List(args)) => ctl.audit_list(args).await,
        Command::WhoAmI => ctl.whoami().await,
    }
}

/// The line `main` prints for an error: `error: ...` with control characters escaped (messages may quote
/// server-supplied text such as a failure reason).
pub fn error_line(error: &CtlError) -> String {
    format!("error: {}", output::escape(&error.to_string()))
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
        println!("{}", output::json_text(&value, true));
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
                    tenant: args.tenant.unwrap_or_default(),
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
            Output::Table => println!("deleted {what} {}", output::escape(id)),
        }
    }

    async fn task(&mut self, command: TaskCommand) -> Result<(), CtlError> {
        match command {
            TaskCommand::Create(args) => {
                let mut spec = new_spec(args.spec)?;
                spec.tenant = args.tenant.unwrap_or_default();
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
                        println!(
                            "task {} {}",
                            output::escape(&last.id),
                            output::state_name(last.state)
                        );
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
            TaskCommand::Throttle(args) => self.throttle(args).await?,
            TaskCommand::Pause { task_id } => {
                let task = self
                    .client()
                    .await?
                    .pause_task(PauseTaskRequest { task_id })
                    .await?
                    .into_inner();
                self.print_pause(&task, true);
            }
            TaskCommand::Resume { task_id } => {
                let task = self
                    .client()
                    .await?
                    .resume_task(ResumeTaskRequest { task_id })
                    .await?
                    .into_inner();
                self.print_pause(&task, false);
            }
            TaskCommand::Events {
                task_id,
                follow,
                limit,
            } => self.task_events(task_id, follow, limit).await?,
        }
        Ok(())
    }

    /// After PauseTask (`pause`) or ResumeTask: the task's state and `paused` / `resumed` (JSON: the task).
    fn print_pause(&self, task: &Task, pause: bool) {
        match self.output {
            Output::Json => self.print_json(output::task_json(task)),
            Output::Table => println!("{}", output::pause_line(task, pause)),
        }
    }

    /// SetTaskThrottle with the flags merged into the task's current throttle (GetTask first, unless
    /// `--unlimited`), then the throttle in words. The API has no compare-and-set: a change another operator makes
    /// between the two calls is overwritten.
    async fn throttle(&mut self, args: ThrottleArgs) -> Result<(), CtlError> {
        let mut client = self.client().await?;
        let current = if args.unlimited {
            None
        } else {
            client
                .get_task(GetTaskRequest {
                    task_id: args.task_id.clone(),
                })
                .await?
                .into_inner()
                .throttle
        };
        let throttle = merge_throttle(current, &args);
        let task = client
            .set_task_throttle(SetTaskThrottleRequest {
                task_id: args.task_id,
                throttle: Some(throttle),
            })
            .await?
            .into_inner();
        match self.output {
            Output::Json => self.print_json(output::task_json(&task)),
            Output::Table => println!("{}", output::throttle_line(&task)),
        }
        Ok(())
    }

    /// ListTaskEvents page by page (oldest first), one line (JSON: one object) per event as each page arrives,
    /// up to `limit`. With `follow`, then polls every second for newer events until the task is SUCCEEDED or
    /// FAILED (its remaining events are printed first) or the user interrupts (exit 0 either way).
    async fn task_events(
        &mut self,
        task_id: String,
        follow: bool,
        limit: Option<u64>,
    ) -> Result<(), CtlError> {
        let mut client = self.client().await?;
        let mut cursor = EventCursor::new(limit);
        let output = self.output;
        if !follow {
            drain_events(&mut client, &task_id, &mut cursor, output).await?;
            return Ok(());
        }
        let follow_loop = async {
            loop {
                // The state is read before the events, so once it is final every event up to it is listed.
                let task = client
                    .get_task(GetTaskRequest {
                        task_id: task_id.clone(),
                    })
                    .await?
                    .into_inner();
                let open = drain_events(&mut client, &task_id, &mut cursor, output).await?;
                if !open || cursor.limit_reached() || is_final(task.state) {
                    return Ok(());
                }
                tokio::time::sleep(EVENTS_POLL_INTERVAL).await;
            }
        };
        tokio::select! {
            result = follow_loop => result,
            () = interrupted() => Ok(()),
        }
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
                    println!(
                        "{}",
                        output::json_text(&output::verification_json(&v), false)
                    )
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
            let line = output::watch_line(&task);
            if live {
                match (&bar, self.output) {
                    (_, Output::Json) => {
                        println!("{}", output::json_text(&output::task_json(&task), false))
                    }
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
        match command {
            AgentCommand::List {
                page_size,
                page_token,
            } => {
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
            }
            AgentCommand::JoinToken(JoinTokenCommand::Create(args)) => {
                self.create_join_token(args).await?
            }
            AgentCommand::Revoke { agent_id, reason } => {
                let agent = self
                    .client()
                    .await?
                    .revoke_agent(RevokeAgentRequest {
                        agent_id,
                        reason: reason.unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                match self.output {
                    Output::Json => self.print_json(output::agent_json(&agent)),
                    Output::Table => print!("{}", output::agent_detail(&agent)),
                }
            }
        }
        Ok(())
    }

    /// CreateJoinToken. With `--output-file` the file is created (new, 0600) before the call, so a bad path never
    /// costs a token, and the token goes only there; otherwise the token is printed, as the user asked.
    async fn create_join_token(&mut self, args: CreateJoinToken) -> Result<(), CtlError> {
        let file = args
            .output_file
            .as_deref()
            .map(TokenFile::create)
            .transpose()?;
        let request = join_token_request(&args);
        let response = match self.client().await {
            Ok(mut client) => client
                .create_join_token(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(CtlError::from),
            Err(error) => Err(error),
        };
        let token = match response.and_then(check_join_token) {
            Ok(token) => token,
            Err(error) => {
                if let Some(file) = file {
                    file.discard();
                }
                return Err(error);
            }
        };
        let path = file.as_ref().map(|f| f.path().display().to_string());
        if let Some(file) = file {
            file.write_token(&token.token).map_err(|e| {
                CtlError::Usage(format!(
                    "the coordinator created join token {} but it could not be written: {e}; that token is \
                     lost (it expires unused at {}): create another",
                    output::escape(&token.token_id),
                    output::time(token.expire_time.as_ref()),
                ))
            })?;
        }
        let show_secret = path.is_none();
        match self.output {
            Output::Json => self.print_json(output::join_token_json(
                &token,
                show_secret,
                path.as_deref(),
            )),
            Output::Table => print!(
                "{}",
                output::join_token_text(&token, show_secret, path.as_deref())
            ),
        }
        Ok(())
    }

    /// ListAuditEvents page by page (oldest first) until the log is exhausted or `--limit` events were shown.
    /// Text: one line per event as each page arrives; JSON: one document `{"events": [...]}`.
    async fn audit_list(&mut self, args: ListAudit) -> Result<(), CtlError> {
        let now = SystemTime::now();
        let bound = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| cli::parse_time_bound(flag, t, now))
                .transpose()
                .map_err(CtlError::Usage)
        };
        let since = bound("--since", &args.since)?;
        let until = bound("--until", &args.until)?;
        if let (Some(since), Some(until)) = (since, until) {
            if since > until {
                return Err(CtlError::Usage(format!(
                    "--since {:?} ({}) is after --until {:?} ({}): nothing can match; swap them or widen the \
                     range",
                    args.since.as_deref().unwrap_or_default(),
                    humantime::format_rfc3339_seconds(since),
                    args.until.as_deref().unwrap_or_default(),
                    humantime::format_rfc3339_seconds(until),
                )));
            }
        }
        let mut client = self.client().await?;
        let mut page_token = String::new();
        let mut shown: u64 = 0;
        let mut events_json = Vec::new();
        loop {
            let wanted = args
                .limit
                .map_or(AUDIT_PAGE_SIZE, |limit| limit.saturating_sub(shown))
                .min(AUDIT_PAGE_SIZE);
            let response = client
                .list_audit_events(ListAuditEventsRequest {
                    task_id: args.task_id.clone().unwrap_or_default(),
                    principal: args.principal.clone().unwrap_or_default(),
                    start_time: since.map(prost_types::Timestamp::from),
                    end_time: until.map(prost_types::Timestamp::from),
                    page_size: i32::try_from(wanted).unwrap_or(1000),
                    page_token: page_token.clone(),
                })
                .await?
                .into_inner();
            let take = usize::try_from(wanted).unwrap_or(usize::MAX);
            let mut text = String::new();
            for event in response.events.iter().take(take) {
                shown += 1;
                match self.output {
                    Output::Json => events_json.push(output::audit_event_json(event)),
                    Output::Table => {
                        text.push_str(&output::audit_line(event));
                        text.push('\n');
                    }
                }
            }
            if !write_stdout(&text)? {
                return Ok(());
            }
            let limit_reached = args.limit.is_some_and(|limit| shown >= limit);
            if limit_reached || response.next_page_token.is_empty() {
                break;
            }
            if response.next_page_token == page_token {
                return Err(CtlError::BadResponse(format!(
                    "the coordinator returned page token {:?} again: stopping after {shown} events \
                     (narrow the query with --since/--until)",
                    output::escape(&page_token)
                )));
            }
            page_token = response.next_page_token;
        }
        if self.output == Output::Json {
            self.print_json(json!({ "events": events_json }));
        }
        Ok(())
    }

    async fn whoami(&mut self) -> Result<(), CtlError> {
        let principal = self
            .client()
            .await?
            .who_am_i(WhoAmIRequest {})
            .await?
            .into_inner();
        match self.output {
            Output::Json => self.print_json(output::principal_json(&principal)),
            Output::Table => print!("{}", output::principal_text(&principal)),
        }
        Ok(())
    }
}

/// Writes `text` to stdout; `false` when the reader went away (e.g. `| head`), so the caller stops quietly.
fn write_stdout(text: &str) -> Result<bool, CtlError> {
    if text.is_empty() {
        return Ok(true);
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CtlError::Usage(format!("cannot write to stdout: {e}"))),
    }
}

/// The CreateJoinToken request for the flags (clap already enforced `--cvm-id` with `--region`, or `--pool`).
fn join_token_request(args: &CreateJoinToken) -> CreateJoinTokenRequest {
    CreateJoinTokenRequest {
        cvm_id: args.cvm_id.clone().unwrap_or_default(),
        region: args.region.clone().unwrap_or_default(),
        pool: args.pool,
        ttl_seconds: args.ttl,
        tenant: args.tenant.clone().unwrap_or_default(),
        description: args.description.clone().unwrap_or_default(),
    }
}

/// Refuses a join token the agent could not use: empty, or with whitespace or control characters (a file holding
/// it would be misread, a terminal showing it could be rewritten).
fn check_join_token(token: JoinToken) -> Result<JoinToken, CtlError> {
    if token.token.is_empty() {
        return Err(CtlError::BadResponse(format!(
            "the coordinator returned join token {} without the secret token; create another",
            output::escape(&token.token_id)
        )));
    }
    if !token.token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CtlError::BadResponse(format!(
            "the coordinator returned join token {} whose secret contains whitespace, control or non-ASCII \
             characters; it was not printed or written: create another, and check the coordinator version",
            output::escape(&token.token_id)
        )));
    }
    Ok(token)
}

fn print_next_page(token: &str) {
    if !token.is_empty() {
        println!("(more: --page-token {})", output::escape(token));
    }
}

/// Whether `task events --follow` stops: the task SUCCEEDED or FAILED.
fn is_final(state: i32) -> bool {
    matches!(
        TaskState::try_from(state),
        Ok(TaskState::Succeeded | TaskState::Failed)
    )
}

/// Resolves when the user presses Ctrl-C (never, if the signal cannot be listened to).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The throttle to send: all zeros with `--unlimited`; otherwise `current` (absent = unlimited) with every limit
/// that was given replacing its value (0 = unlimited for that limit).
fn merge_throttle(current: Option<Throttle>, args: &ThrottleArgs) -> Throttle {
    if args.unlimited {
        return Throttle::default();
    }
    let mut throttle = current.unwrap_or_default();
    if let Some(v) = args.copy_documents_per_second {
        throttle.copy_documents_per_second = v;
    }
    if let Some(v) = args.copy_bytes_per_second {
        throttle.copy_bytes_per_second = v;
    }
    if let Some(v) = args.apply_entries_per_second {
        throttle.apply_entries_per_second = v;
    }
    if let Some(v) = args.apply_bytes_per_second {
        throttle.apply_bytes_per_second = v;
    }
    throttle
}

/// Where `task events` is: the next page token, the newest seq shown and how many events were shown.
#[derive(Debug)]
struct EventCursor {
    page_token: String,
    last_seq: Option<u64>,
    shown: u64,
    limit: Option<u64>,
}

impl EventCursor {
    fn new(limit: Option<u64>) -> Self {
        Self {
            page_token: String::new(),
            last_seq: None,
            shown: 0,
            limit,
        }
    }

    /// Whether `--limit` events were shown.
    fn limit_reached(&self) -> bool {
        self.limit.is_some_and(|limit| self.shown >= limit)
    }

    /// The page size to ask for: 1000, or fewer when the limit is near.
    fn page_size(&self) -> i32 {
        let wanted = self
            .limit
            .map_or(EVENTS_PAGE_SIZE, |limit| limit.saturating_sub(self.shown))
            .clamp(1, EVENTS_PAGE_SIZE);
        i32::try_from(wanted).unwrap_or(1000)
    }

    /// The events of a page not shown yet (seq after the newest shown; a page repeated by the server adds nothing),
    /// up to the limit; counts them as shown.
    fn take(&mut self, events: Vec<TaskEvent>) -> Vec<TaskEvent> {
        let mut fresh = Vec::new();
        for event in events {
            if self.limit_reached() {
                break;
            }
            if self.last_seq.is_some_and(|last| event.seq <= last) {
                continue;
            }
            self.last_seq = Some(event.seq);
            self.shown += 1;
            fresh.push(event);
        }
        fresh
    }

    /// Moves to the next page; `false` at the end (no next page token, or a page without new events), where the
    /// next poll starts after the newest seq shown (the API's page token is the last seq seen).
    fn advance(&mut self, next_page_token: String, got_new: bool) -> bool {
        if next_page_token.is_empty() || !got_new {
            self.page_token = self
                .last_seq
                .map_or_else(|| self.page_token.clone(), |seq| seq.to_string());
            return false;
        }
        self.page_token = next_page_token;
        true
    }
}

/// Lists and prints every event after `cursor` (until the last page or the limit); `false` when stdout was
/// closed (e.g. `| head`), so the caller stops quietly.
async fn drain_events(
    client: &mut Client,
    task_id: &str,
    cursor: &mut EventCursor,
    output: Output,
) -> Result<bool, CtlError> {
    while !cursor.limit_reached() {
        let response = client
            .list_task_events(ListTaskEventsRequest {
                task_id: task_id.to_owned(),
                page_size: cursor.page_size(),
                page_token: cursor.page_token.clone(),
            })
            .await?
            .into_inner();
        let events = cursor.take(response.events);
        let mut text = String::new();
        for event in &events {
            match output {
                Output::Json => {
                    text.push_str(&output::json_text(&output::task_event_json(event), false))
                }
                Output::Table => text.push_str(&output::task_event_line(event)),
            }
            text.push('\n');
        }
        if !write_stdout(&text)? {
            return Ok(false);
        }
        if !cursor.advance(response.next_page_token, !events.is_empty()) {
            break;
        }
    }
    Ok(true)
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

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ferryctl").chain(args.iter().copied()))
    }

    fn join_token_args(args: &[&str]) -> Result<CreateJoinToken, clap::Error> {
        let mut all = vec!["agent", "join-token", "create"];
        all.extend_from_slice(args);
        match parse(&all)?.command {
            Command::Agent(AgentCommand::JoinToken(JoinTokenCommand::Create(args))) => Ok(args),
            other => panic!("parsed into {other:?}"),
        }
    }

    #[test]
    fn join_token_create_for_a_cvm() {
        let args = join_token_args(&[
            "--cvm-id",
            "ins-abcd1234",
            "--region",
            "ap-guangzhou",
            "--tenant",
            "team-a",
            "--description",
            "TICKET-7",
        ])
        .unwrap();
        assert_eq!(args.ttl, 3600, "default TTL is 1h");
        assert!(args.output_file.is_none());
        let request = join_token_request(&args);
        assert_eq!(request.cvm_id, "ins-abcd1234");
        assert_eq!(request.region, "ap-guangzhou");
        assert!(!request.pool);
        assert_eq!(request.ttl_seconds, 3600);
        assert_eq!(request.tenant, "team-a");
        assert_eq!(request.description, "TICKET-7");
    }

    #[test]
    fn join_token_create_for_the_pool_with_ttl_and_file() {
        let args =
            join_token_args(&["--pool", "--ttl", "2h 30m", "--output-file", "/tmp/t"]).unwrap();
        let request = join_token_request(&args);
        assert!(request.pool);
        assert_eq!(request.cvm_id, "");
        assert_eq!(request.ttl_seconds, 9000);
        assert_eq!(request.tenant, "");
        assert_eq!(
            args.output_file.as_deref(),
            Some(std::path::Path::new("/tmp/t"))
        );
        assert_eq!(
            join_token_args(&["--pool", "--ttl", "7d"]).unwrap().ttl,
            604_800
        );
    }

    #[test]
    fn join_token_create_needs_exactly_one_binding() {
        for bad in [
            &[][..],
            &["--cvm-id", "ins-abcd1234"][..],
            &["--region", "ap-guangzhou"][..],
            &[
                "--pool",
                "--cvm-id",
                "ins-abcd1234",
                "--region",
                "ap-guangzhou",
            ][..],
            &["--pool", "--region", "ap-guangzhou"][..],
        ] {
            assert!(join_token_args(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn join_token_ttl_is_checked_with_a_clear_error() {
        for (ttl, why) in [
            ("8d", "at most 7d"),
            ("0s", "at least 1s"),
            ("1500ms", "whole number of seconds"),
            ("soon", "not a duration"),
        ] {
            let error = join_token_args(&["--pool", "--ttl", ttl]).unwrap_err();
            let text = error.to_string();
            assert!(
                text.contains("--ttl") && text.contains(ttl) && text.contains(why),
                "{text}"
            );
        }
    }

    #[test]
    fn a_join_token_that_is_empty_or_not_printable_is_refused() {
        let token = |secret: &str| JoinToken {
            token_id: "jt-3f9a1c2b7d4e".to_owned(),
            token: secret.to_owned(),
            ..JoinToken::default()
        };
        assert!(check_join_token(token("ftk_abc.DEF-123")).is_ok());
        for bad in ["", "abc def", "abc\ndef", "abc\u{1b}[2J", "abc\u{e9}"] {
            let error = check_join_token(token(bad)).unwrap_err();
            assert_eq!(error.exit_code(), 1);
            assert!(error.to_string().contains("jt-3f9a1c2b7d4e"), "{error}");
        }
    }

    #[test]
    fn agent_revoke_parses_id_and_reason() {
        let cli = parse(&[
            "agent",
            "revoke",
            "agent-0123456789ab",
            "--reason",
            "host lost",
        ])
        .unwrap();
        let Command::Agent(AgentCommand::Revoke { agent_id, reason }) = cli.command else {
            panic!("parsed into another command");
        };
        assert_eq!(agent_id, "agent-0123456789ab");
        assert_eq!(reason.as_deref(), Some("host lost"));
        assert!(
            parse(&["agent", "revoke"]).is_err(),
            "the agent id is required"
        );
    }

    #[test]
    fn audit_list_parses_filters() {
        let cli = parse(&[
            "audit",
            "list",
            "--task",
            "task-7f3a9c2d1e4b",
            "--principal",
            "admin",
            "--since",
            "1h",
            "--until",
            "2024-05-01T08:00:00Z",
            "--limit",
            "25",
        ])
        .unwrap();
        let Command::Audit(AuditCommand::List(args)) = cli.command else {
            panic!("parsed into another command");
        };
        assert_eq!(args.task_id.as_deref(), Some("task-7f3a9c2d1e4b"));
        assert_eq!(args.principal.as_deref(), Some("admin"));
        assert_eq!(args.since.as_deref(), Some("1h"));
        assert_eq!(args.until.as_deref(), Some("2024-05-01T08:00:00Z"));
        assert_eq!(args.limit, Some(25));
        assert!(parse(&["audit", "list", "--limit", "0"]).is_err());
        let Command::Audit(AuditCommand::List(none)) = parse(&["audit", "list"]).unwrap().command
        else {
            panic!("parsed into another command");
        };
        assert!(none.since.is_none() && none.limit.is_none());
    }

    #[test]
    fn since_and_until_take_a_duration_ago_or_rfc3339() {
        let now = humantime::parse_rfc3339("2024-05-01T12:00:00Z").unwrap();
        let at = |text: &str| cli::parse_time_bound("--since", text, now).unwrap();
        assert_eq!(
            at("1h"),
            humantime::parse_rfc3339("2024-05-01T11:00:00Z").unwrap()
        );
        assert_eq!(
            at("90m"),
            humantime::parse_rfc3339("2024-05-01T10:30:00Z").unwrap()
        );
        assert_eq!(
            at("2024-04-30T08:00:00Z"),
            humantime::parse_rfc3339("2024-04-30T08:00:00Z").unwrap()
        );
        assert_eq!(
            at("2024-04-30T16:00:00+08:00"),
            humantime::parse_rfc3339("2024-04-30T08:00:00Z").unwrap()
        );
        assert_eq!(
            at("2024-04-30T03:30:00-04:30"),
            humantime::parse_rfc3339("2024-04-30T08:00:00Z").unwrap()
        );
        for bad in [
            "yesterday",
            "2024-04-30",
            "2024-04-30T16:00:00+8:00",
            "2024-04-30T16:00:00+25:00",
            "+08:00",
            "é",
        ] {
            let error = cli::parse_time_bound("--until", bad, now).unwrap_err();
            assert!(
                error.contains("--until") && error.contains(bad) && error.contains("RFC 3339"),
                "{error}"
            );
        }
    }

    #[test]
    fn whoami_parses() {
        assert!(matches!(
            parse(&["whoami"]).unwrap().command,
            Command::WhoAmI
        ));
        assert!(parse(&["whoami", "extra"]).is_err());
    }

    #[test]
    fn tenant_on_task_create_and_instance_register_only() {
        let cli = parse(&["task", "create", "--name", "orders", "--tenant", "team-a"]).unwrap();
        let Command::Task(TaskCommand::Create(args)) = cli.command else {
            panic!("parsed into another command");
        };
        assert_eq!(args.tenant.as_deref(), Some("team-a"));
        assert_eq!(args.spec.name.as_deref(), Some("orders"));
        let cli = parse(&[
            "instance",
            "register",
            "--id",
            "cmgo-6wk2mxa1",
            "--region",
            "ap-guangzhou",
            "--uri",
            "mongodb://10.0.0.5:27017",
            "--username",
            "root",
            "--tenant",
            "team-a",
        ])
        .unwrap();
        let Command::Instance(InstanceCommand::Register(args)) = cli.command else {
            panic!("parsed into another command");
        };
        assert_eq!(args.tenant.as_deref(), Some("team-a"));
        // The tenant is fixed at creation.
        assert!(parse(&["task", "update", "task-1", "--tenant", "team-b"]).is_err());
    }

    #[test]
    fn the_token_file_is_new_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("join-token");
        let file = TokenFile::create(&path).unwrap();
        file.write_token("ftk_secret").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ftk_secret\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let error = TokenFile::create(&path).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        let text = error.to_string();
        assert!(
            text.contains("--output-file")
                && text.contains("join-token")
                && text.contains("already exists"),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "ftk_secret\n",
            "not overwritten"
        );
        let missing = dir.path().join("no-such-dir").join("t");
        let text = TokenFile::create(&missing).unwrap_err().to_string();
        assert!(text.contains("directory does not exist"), "{text}");
        let discarded = dir.path().join("discarded");
        TokenFile::create(&discarded).unwrap().discard();
        assert!(!discarded.exists());
    }

    #[test]
    fn error_lines_escape_server_text() {
        let error = CtlError::TaskFailed {
            task_id: "task-1".to_owned(),
            state: "FAILED".to_owned(),
            reason: ": boom\u{1b}[2J\nFAKE LINE".to_owned(),
        };
        let line = error_line(&error);
        assert!(!line.contains('\u{1b}') && !line.contains('\n'), "{line:?}");
        assert!(line.contains("\\nFAKE LINE"), "{line}");
        let status = CtlError::Status(tonic::Status::not_found("no\rtask"));
        assert!(!error_line(&status).contains('\r'));
    }

    fn throttle_args(args: &[&str]) -> Result<ThrottleArgs, clap::Error> {
        let mut all = vec!["task", "throttle", "task-1"];
        all.extend_from_slice(args);
        match parse(&all)?.command {
            Command::Task(TaskCommand::Throttle(args)) => Ok(args),
            other => panic!("parsed into {other:?}"),
        }
    }

    fn current_throttle() -> Throttle {
        Throttle {
            copy_documents_per_second: 5000,
            copy_bytes_per_second: 20_000_000,
            apply_entries_per_second: 800,
            apply_bytes_per_second: 3_000_000,
        }
    }

    #[test]
    fn throttle_parses_rates_and_megabytes() {
        let args = throttle_args(&[
            "--copy-docs-per-second",
            "1000",
            "--copy-mb-per-second",
            "0.5",
            "--apply-entries-per-second",
            "0",
            "--apply-mb-per-second",
            "12",
        ])
        .unwrap();
        assert_eq!(args.task_id, "task-1");
        assert_eq!(args.copy_documents_per_second, Some(1000));
        assert_eq!(args.copy_bytes_per_second, Some(500_000));
        assert_eq!(args.apply_entries_per_second, Some(0));
        assert_eq!(args.apply_bytes_per_second, Some(12_000_000));
        assert!(!args.unlimited);
        for (text, bytes) in [
            ("1.1", 1_100_000),
            (".25", 250_000),
            ("3.", 3_000_000),
            ("0.000001", 1),
            ("2.5000000", 2_500_000),
            ("0", 0),
            ("18446744073709", 18_446_744_073_709_000_000),
        ] {
            assert_eq!(cli::parse_mb_per_second(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn throttle_merges_given_flags_into_the_current_throttle() {
        let args = throttle_args(&["--copy-docs-per-second", "1000"]).unwrap();
        let merged = merge_throttle(Some(current_throttle()), &args);
        assert_eq!(
            merged,
            Throttle {
                copy_documents_per_second: 1000,
                ..current_throttle()
            }
        );
        // 0 lifts one limit and keeps the others.
        let args = throttle_args(&["--apply-mb-per-second", "0"]).unwrap();
        let merged = merge_throttle(Some(current_throttle()), &args);
        assert_eq!(merged.apply_bytes_per_second, 0);
        assert_eq!(merged.apply_entries_per_second, 800);
        assert_eq!(merged.copy_bytes_per_second, 20_000_000);
        // A task without a throttle is unlimited.
        let args = throttle_args(&["--copy-mb-per-second", "50"]).unwrap();
        assert_eq!(
            merge_throttle(None, &args),
            Throttle {
                copy_bytes_per_second: 50_000_000,
                ..Throttle::default()
            }
        );
    }

    #[test]
    fn throttle_unlimited_clears_everything_and_excludes_the_other_flags() {
        let args = throttle_args(&["--unlimited"]).unwrap();
        assert!(args.unlimited);
        assert_eq!(
            merge_throttle(Some(current_throttle()), &args),
            Throttle::default()
        );
        for other in [
            "--copy-docs-per-second",
            "--copy-mb-per-second",
            "--apply-entries-per-second",
            "--apply-mb-per-second",
        ] {
            let error = throttle_args(&["--unlimited", other, "5"]).unwrap_err();
            assert_eq!(error.exit_code(), 2);
            let text = error.to_string();
            assert!(
                text.contains("--unlimited") && text.contains(other),
                "{text}"
            );
        }
    }

    #[test]
    fn throttle_needs_a_task_and_at_least_one_flag() {
        let error = throttle_args(&[]).unwrap_err();
        assert_eq!(error.exit_code(), 2, "a usage error");
        let text = error.to_string();
        assert!(
            text.contains("required") && text.contains("--unlimited"),
            "{text}"
        );
        assert!(parse(&["task", "throttle", "--unlimited"]).is_err());
    }

    #[test]
    fn throttle_values_are_checked_with_a_clear_error() {
        for (flag, value, why) in [
            ("--copy-docs-per-second", "-5", "negative"),
            ("--copy-docs-per-second", "1.5", "whole number"),
            ("--apply-entries-per-second", "fast", "whole number"),
            (
                "--apply-entries-per-second",
                "99999999999999999999",
                "too large",
            ),
            ("--copy-mb-per-second", "-1", "negative"),
            ("--copy-mb-per-second", "abc", "not a number of MB"),
            ("--apply-mb-per-second", "1e3", "not a number of MB"),
            ("--apply-mb-per-second", ".", "not a number of MB"),
            ("--apply-mb-per-second", "", "not a number of MB"),
            ("--copy-mb-per-second", "0.0000001", "at most 6 decimals"),
            ("--copy-mb-per-second", "18446744073710", "too large"),
        ] {
            let error = throttle_args(&[flag, value]).unwrap_err();
            assert_eq!(error.exit_code(), 2);
            let text = error.to_string();
            assert!(
                text.contains(flag) && text.contains(value) && text.contains(why),
                "{flag} {value:?}: {text}"
            );
        }
    }

    #[test]
    fn pause_resume_and_events_parse() {
        let Command::Task(TaskCommand::Pause { task_id }) =
            parse(&["task", "pause", "task-1"]).unwrap().command
        else {
            panic!("parsed into another command");
        };
        assert_eq!(task_id, "task-1");
        let Command::Task(TaskCommand::Resume { task_id }) =
            parse(&["task", "resume", "task-2"]).unwrap().command
        else {
            panic!("parsed into another command");
        };
        assert_eq!(task_id, "task-2");
        assert!(parse(&["task", "pause"]).is_err());
        let Command::Task(TaskCommand::Events {
            task_id,
            follow,
            limit,
        }) = parse(&["task", "events", "task-3", "--follow", "--limit", "20"])
            .unwrap()
            .command
        else {
            panic!("parsed into another command");
        };
        assert_eq!(
            (task_id.as_str(), follow, limit),
            ("task-3", true, Some(20))
        );
        let Command::Task(TaskCommand::Events { follow, limit, .. }) =
            parse(&["task", "events", "task-3"]).unwrap().command
        else {
            panic!("parsed into another command");
        };
        assert!(!follow && limit.is_none());
        assert!(parse(&["task", "events", "task-3", "--limit", "0"]).is_err());
        assert!(matches!(
            parse(&["task", "show", "task-1"]).unwrap().command,
            Command::Task(TaskCommand::Get { .. })
        ));
    }

    fn event(seq: u64) -> TaskEvent {
        TaskEvent {
            seq,
            kind: "state".to_owned(),
            ..TaskEvent::default()
        }
    }

    #[test]
    fn the_event_cursor_pages_then_polls_after_the_last_seq() {
        let mut cursor = EventCursor::new(None);
        assert_eq!(cursor.page_size(), 1000);
        assert_eq!(cursor.page_token, "");
        let page = cursor.take(vec![event(1), event(2)]);
        assert_eq!(page.len(), 2);
        assert!(cursor.advance("2".to_owned(), true), "more pages");
        assert_eq!(cursor.page_token, "2");
        // The last page: the next poll starts after seq 3.
        let page = cursor.take(vec![event(3)]);
        assert_eq!(page.len(), 1);
        assert!(!cursor.advance(String::new(), true));
        assert_eq!(cursor.page_token, "3");
        // Events already shown are not shown again; a page without new ones ends the round.
        let page = cursor.take(vec![event(2), event(3)]);
        assert!(page.is_empty());
        assert!(!cursor.advance("3".to_owned(), false));
        assert_eq!(cursor.page_token, "3");
        let page = cursor.take(vec![event(3), event(4)]);
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);
        assert_eq!(cursor.shown, 4);
        // No events at all: keep asking from the start.
        let mut empty = EventCursor::new(None);
        assert!(empty.take(Vec::new()).is_empty());
        assert!(!empty.advance(String::new(), false));
        assert_eq!(empty.page_token, "");
    }

    #[test]
    fn the_event_cursor_stops_at_the_limit() {
        let mut cursor = EventCursor::new(Some(3));
        assert_eq!(cursor.page_size(), 3);
        let page = cursor.take(vec![event(1), event(2)]);
        assert_eq!(page.len(), 2);
        assert_eq!(cursor.page_size(), 1);
        assert!(!cursor.limit_reached());
        let page = cursor.take(vec![event(3), event(4), event(5)]);
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        assert!(cursor.limit_reached());
        let big = EventCursor::new(Some(5000));
        assert_eq!(big.page_size(), 1000);
    }

    #[test]
    fn follow_stops_only_at_succeeded_or_failed() {
        assert!(is_final(TaskState::Succeeded as i32));
        assert!(is_final(TaskState::Failed as i32));
        for state in [
            TaskState::Running,
            TaskState::Completing,
            TaskState::Stopping,
            TaskState::CheckFailed,
            TaskState::NotStarted,
        ] {
            assert!(!is_final(state as i32), "{state:?}");
        }
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
