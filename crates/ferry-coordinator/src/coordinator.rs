//! The coordinator's core: operator operations on tasks and instances, every state change made durable before it
//! is acknowledged. Task mutations are serialised by one async lock (the state is small), so an epoch bump, the
//! write to sled and the command queued to the agent happen in that order with no interleaving.
//!
//! Must not: know about gRPC transport details (the `api` modules adapt), or return passwords (`convert` strips
//! them).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use ferry_core::{
    Action, AgentRecord, CheckItem, CheckStatus, Event, Instance, InstanceId, Task, TaskId,
    TaskKind, TaskSpec, TaskState,
};
use ferry_proto::v1 as pb;
use ferry_store::{Store, StoreError};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::convert::{self, now_ms};
use crate::error::ServiceError;
use crate::principal::Principal;
use crate::registry::Registry;
use crate::scheduler;

/// Runtime knobs of the coordinator core.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Heartbeat interval announced to agents; 3 missed intervals mark an agent disconnected.
    pub heartbeat_interval: Duration,
    /// How long ListSourceDatabases waits for the agent's answer.
    pub list_databases_timeout: Duration,
    /// Serving without TLS (loopback only): agents authenticate with their enrollment secret.
    pub plaintext: bool,
    /// Public-network tasks may name loopback, link-local and private addresses (labs only).
    pub allow_private_sources: bool,
    /// Most WatchTask streams open at once.
    pub max_watchers: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            list_databases_timeout: Duration::from_secs(30),
            plaintext: false,
            allow_private_sources: false,
            max_watchers: 256,
        }
    }
}

/// What the coordinator trusts and records with: the agent CA, the principals and the audit log.
pub struct Trust {
    pub ca: crate::ca::AgentCa,
    pub principals: crate::principal::Principals,
    pub auditor: crate::audit::Auditor,
}

/// Largest page of a List call.
const MAX_PAGE_SIZE: usize = 1000;
const DEFAULT_PAGE_SIZE: usize = 100;

/// A ListSourceDatabases call waiting for its agent.
pub(crate) struct PendingList {
    pub(crate) agent_id: ferry_core::AgentId,
    pub(crate) task_id: TaskId,
    pub(crate) answer: oneshot::Sender<pb::DatabasesReport>,
}

/// Pending ListSourceDatabases calls by request id.
pub(crate) type PendingLists = Mutex<HashMap<u64, PendingList>>;

/// Shared state of a running coordinator.
pub struct Coordinator {
    pub(crate) store: Store,
    pub(crate) registry: Registry,
    pub(crate) changes: broadcast::Sender<TaskId>,
    pub(crate) write_lock: tokio::sync::Mutex<()>,
    pub(crate) pending_lists: PendingLists,
    pub(crate) next_request_id: AtomicU64,
    pub(crate) settings: Settings,
    /// Cancelled at shutdown: ends agent sessions and watch streams.
    pub(crate) cancel: CancellationToken,
    /// Tracks sessions and watch streams so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    pub(crate) ca: crate::ca::AgentCa,
    pub(crate) principals: crate::principal::Principals,
    pub(crate) auditor: crate::audit::Auditor,
    /// Open WatchTask streams.
    pub(crate) watchers: std::sync::Arc<tokio::sync::Semaphore>,
    /// Serialises read-modify-write of agent records (revocation must never be overwritten by a heartbeat).
    pub(crate) agent_write: std::sync::Arc<Mutex<()>>,
    pub(crate) metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// A page of results and the token of the next one (empty when done).
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

impl Coordinator {
    pub fn new(store: Store, settings: Settings, trust: Trust, cancel: CancellationToken) -> Self {
        let (changes, _) = broadcast::channel(1024);
        Self {
            watchers: std::sync::Arc::new(tokio::sync::Semaphore::new(settings.max_watchers)),
            metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
            agent_write: std::sync::Arc::new(Mutex::new(())),
            ca: trust.ca,
            principals: trust.principals,
            auditor: trust.auditor,
            store,
            registry: Registry::default(),
            changes,
            write_lock: tokio::sync::Mutex::new(()),
            pending_lists: Mutex::new(HashMap::new()),
            next_request_id: AtomicU64::new(1),
            settings,
            cancel,
            tracker: TaskTracker::new(),
        }
    }

    /// Runs a blocking store call off the async workers.
    pub(crate) async fn db<T, F>(&self, f: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ServiceError::Internal(format!("store task: {e}")))?
            .map_err(ServiceError::from)
    }

    /// The operator-facing form of a task.
    pub fn task_to_pb(&self, task: &Task) -> pb::Task {
        let connected = task
            .agent_id
            .as_ref()
            .is_some_and(|a| self.registry.is_connected(a));
        convert::task_to_pb(task, connected)
    }

    pub(crate) fn notify(&self, id: &TaskId) {
        // No receiver just means nobody watches.
        let _ = self.changes.send(id.clone());
    }

    /// Subscribes to task changes (ids of changed tasks).
    pub fn subscribe(&self) -> broadcast::Receiver<TaskId> {
        self.changes.subscribe()
    }

    pub(crate) fn parse_task_id(raw: &str) -> Result<TaskId, ServiceError> {
        Ok(TaskId::parse("task_id", raw)?)
    }

    pub(crate) async fn load_task(&self, id: &TaskId) -> Result<Task, ServiceError> {
        let key = id.clone();
        self.db(move |s| s.get_task(&key))
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("task {id} not found")))
    }

    /// Writes a task durably, with the history events of what changed since its stored version.
    pub(crate) async fn save_task(&self, task: &Task) -> Result<(), ServiceError> {
        let copy = task.clone();
        let events = self
            .db(move |s| {
                let old = s.get_task(&copy.id)?;
                let events = crate::history::diff(old.as_ref(), &copy);
                let stored = s.append_task_events(&copy.id, events)?;
                s.put_task(&copy)?;
                Ok(stored)
            })
            .await?;
        for e in &events {
            self.metrics.task_event(&e.kind);
        }
        self.notify(&task.id);
        Ok(())
    }

    // ---- destination catalog ----

    pub async fn register_instance(
        &self,
        input: ferry_core::InstanceInput,
    ) -> Result<Instance, ServiceError> {
        let instance = Instance::from_input(input, now_ms())?;
        let copy = instance.clone();
        if !self.db(move |s| s.insert_instance(&copy)).await? {
            return Err(ServiceError::AlreadyExists(format!(
                "instance {} already exists",
                instance.instance_id
            )));
        }
        tracing::info!(instance_id = %instance.instance_id, region = %instance.region, "instance registered");
        Ok(instance)
    }

    pub async fn list_instances(
        &self,
        by: &Principal,
        page_size: i32,
        page_token: &str,
        region: &str,
    ) -> Result<Page<Instance>, ServiceError> {
        let all = self.db(|s| s.list_instances()).await?;
        let region = region.to_owned();
        paginate(
            all,
            page_size,
            page_token,
            |i| i.instance_id.to_string(),
            move |i| by.sees(&i.tenant) && (region.is_empty() || i.region == region),
        )
    }

    pub async fn delete_instance(&self, raw_id: &str) -> Result<(), ServiceError> {
        let id = InstanceId::parse("instance_id", raw_id)?;
        let _guard = self.write_lock.lock().await;
        let tasks = self.db(|s| s.list_tasks()).await?;
        let users: Vec<String> = tasks
            .iter()
            .filter(|t| t.spec.destination_instance_id == id)
            .map(|t| t.id.to_string())
            .collect();
        if !users.is_empty() {
            return Err(ServiceError::FailedPrecondition(format!(
                "instance {id} is the destination of task(s) {}: delete them first",
                users.join(", ")
            )));
        }
        let key = id.clone();
        if !self.db(move |s| s.delete_instance(&key)).await? {
            return Err(ServiceError::NotFound(format!("instance {id} not found")));
        }
        tracing::info!(instance_id = %id, "instance deleted");
        Ok(())
    }

    // ---- tasks ----

    /// Catalog checks on a validated spec: the destination exists, and a CVM task is in its region.
    pub(crate) async fn check_destination(
        &self,
        spec: &TaskSpec,
    ) -> Result<Instance, ServiceError> {
        let dest_id = spec.destination_instance_id.clone();
        let instance = self
            .db(move |s| s.get_instance(&dest_id))
            .await?
            .ok_or_else(|| {
                ServiceError::invalid(
                    "spec.destination_instance_id",
                    format!(
                        "unknown instance {}: register it first",
                        spec.destination_instance_id
                    ),
                )
            })?;
        if instance.tenant != spec.tenant {
            return Err(ServiceError::invalid(
                "spec.destination_instance_id",
                format!(
                    "unknown instance {} in tenant {}: register it first",
                    spec.destination_instance_id, spec.tenant
                ),
            ));
        }
        if spec.kind == TaskKind::Cvm && instance.region != spec.region {
            return Err(ServiceError::invalid(
                "spec.region",
                format!(
                    "{} differs from the region of destination {} ({}): a CVM task must stay in its region",
                    spec.region, instance.instance_id, instance.region
                ),
            ));
        }
        Ok(instance)
    }

    pub async fn create_task(
        &self,
        input: ferry_core::TaskSpecInput,
    ) -> Result<Task, ServiceError> {
        let spec = TaskSpec::try_from(input)?;
        self.check_source(&spec)?;
        self.check_destination(&spec).await?;
        let _guard = self.write_lock.lock().await;
        let tasks = self.db(|s| s.list_tasks()).await?;
        if tasks.iter().any(|t| t.spec.name == spec.name) {
            return Err(ServiceError::AlreadyExists(format!(
                "a task named {:?} already exists",
                spec.name
            )));
        }
        let task = Task::new(TaskId::generate(), spec, now_ms());
        self.save_task(&task).await?;
        tracing::info!(task_id = %task.id, name = %task.spec.name, "task created");
        Ok(task)
    }

    pub async fn get_task(&self, raw_id: &str) -> Result<Task, ServiceError> {
        self.load_task(&Self::parse_task_id(raw_id)?).await
    }

    pub async fn list_tasks(
        &self,
        by: &Principal,
        page_size: i32,
        page_token: &str,
        region: &str,
        state: i32,
    ) -> Result<Page<Task>, ServiceError> {
        let state_filter = match state {
            0 => None,
            s => Some(
                convert::state_from_pb(s)
                    .ok_or_else(|| ServiceError::invalid("state", format!("unknown state {s}")))?,
            ),
        };
        let all = self.db(|s| s.list_tasks()).await?;
        let region = region.to_owned();
        paginate(
            all,
            page_size,
            page_token,
            |t| t.id.to_string(),
            move |t| {
                by.sees(&t.spec.tenant)
                    && (region.is_empty() || t.spec.region == region)
                    && state_filter.is_none_or(|s| t.state == s)
            },
        )
    }

    pub async fn update_task(
        &self,
        raw_id: &str,
        input: ferry_core::TaskSpecInput,
    ) -> Result<Task, ServiceError> {
        let id = Self::parse_task_id(raw_id)?;
        let _guard = self.write_lock.lock().await;
        let mut task = self.load_task(&id).await?;
        task.apply(Action::Update, now_ms())?;
        let keep_password = !input.password.is_set();
        let mut spec = TaskSpec::try_from(input)?;
        if spec.tenant != task.spec.tenant {
            return Err(ServiceError::invalid(
                "spec.tenant",
                format!(
                    "cannot change ({} -> {}): create the task again in the other tenant",
                    task.spec.tenant, spec.tenant
                ),
            ));
        }
        if keep_password {
            let moved = retargeted(&task.spec, &spec);
            if !moved.is_empty() {
                return Err(ServiceError::invalid(
                    "spec.password",
                    format!(
                        "is required again because the update changes where the data comes from or goes to ({}): the stored password is never sent to a new place",
                        moved.join(", ")
                    ),
                ));
            }
            spec.password = task.spec.password.clone();
        }
        self.check_source(&spec)?;
        self.check_destination(&spec).await?;
        let tasks = self.db(|s| s.list_tasks()).await?;
        if tasks.iter().any(|t| t.spec.name == spec.name && t.id != id) {
            return Err(ServiceError::AlreadyExists(format!(
                "a task named {:?} already exists",
                spec.name
            )));
        }
        task.spec = spec;
        self.save_task(&task).await?;
        tracing::info!(task_id = %task.id, "task updated");
        Ok(task)
    }

    pub async fn delete_task(&self, raw_id: &str) -> Result<(), ServiceError> {
        let id = Self::parse_task_id(raw_id)?;
        let _guard = self.write_lock.lock().await;
        let mut task = self.load_task(&id).await?;
        task.apply(Action::Delete, now_ms())?;
        let key = id.clone();
        self.db(move |s| s.delete_task(&key)).await?;
        self.notify(&id);
        tracing::info!(task_id = %id, "task deleted");
        Ok(())
    }

    pub async fn check_task(&self, raw_id: &str) -> Result<Task, ServiceError> {
        let id = Self::parse_task_id(raw_id)?;
        let _guard = self.write_lock.lock().await;
        let mut task = self.load_task(&id).await?;
        task.check(Action::Check)?;
        let destination = self.check_destination(&task.spec).await?;
        let tasks = self.db(|s| s.list_tasks()).await?;
        let now = now_ms();
        let Some(agent_id) = scheduler::pick(&task, &self.registry.connected(), &tasks) else {
            task.checks = vec![agent_available_item(&task, false, now)];
            task.on_event(Event::NoAgentForChecks, &no_agent_reason(&task), false, now);
            self.save_task(&task).await?;
            tracing::info!(task_id = %task.id, "checks failed: no eligible agent connected");
            return Ok(task);
        };
        task.apply(Action::Check, now)?;
        task.checks = vec![agent_available_item(&task, true, now)];
        self.assign(&mut task, agent_id);
        self.save_task(&task).await?;
        self.send_for_state(&task, &destination);
        Ok(task)
    }

    pub async fn start_task(&self, raw_id: &str) -> Result<Task, ServiceError> {
        let id = Self::parse_task_id(raw_id)?;
        let _guard = self.write_lock.lock().await;
        let mut task = self.load_task(&id).await?;
        task.check(Action::Start)?;
        let resuming = task.resumes();
        let destination = self.check_destination(&task.spec).await?;
        let tasks = self.db(|s| s.list_tasks()).await?;
        task.apply(Action::Start, now_ms())?;
        if resuming {
            tracing::info!(task_id = %task.id, phase = ?task.phase, "resuming a failed task from its checkpoint");
        }
        match scheduler::pick(&task, &self.registry.connected(), &tasks) {
            Some(agent_id) => {
                self.assign(&mut task, agent_id);
                self.save_task(&task).await?;
                self.send_for_state(&task, &destination);
            }
            None => {
                self.save_task(&task).await?;
                tracing::info!(task_id = %task.id, "task started; waiting for an eligible agent");
            }
        }
        Ok(task)
    }

    /// CompleteTask. With `require_verification` (or the spec's default) the cut-over ends with a verification
    /// run (source quiescent) and the task succeeds only if it passes.
    pub async fn complete_task(
        &self,
        raw_id: &str,
        require_verification: bool,
    ) -> Result<Task, ServiceError> {
        let id = Self::parse_task_id(raw_id)?;
        let _guard = self.write_lock.lock().await;
        let mut task = self.load_task(&id).await?;
        let now = now_ms();
        task.apply(Action::Complete, now)?;
        task.verify_at_cut_over = require_verification || task.spec.require_verification;
        if task.verify_at_cut_over {
            let key = task.id.clone();
            self.db(move |s| s.delete_mismatches(&key)).await?;
            task.verification = Some(ferry_core::Verification::start(
                task.verification.as_ref(),
                ferry_core::VerifyMode::Full,
                true,
                now,
            ));
        }
        self.save_task(&task).await?;
        self.send_command(&task, self.complete_command(&task));
        tracing::info!(task_id = %task.id, verify = task.verify_at_cut_over, "task completing");
        Ok(task)
    }

    /// The CompleteMigration command of a COMPLETING task.
    pub(crate) fn complete_command(&self, task: &Task) -> pb::coordinator_message::Body {
        let (mode, run) = match (&task.verification, task.verify_at_cut_over) {
            (Some(v), true) => (crate::verification::mode_to_pb(v.mode) as i32, v.run),
            _ => (0, 0),
        };
        pb::coordinator_message::Body::CompleteMigration(pb::CompleteMigration {
            verify: task.verify_at_cut_over,
            mode,
            run,
        })
    }

    pub async fn stop_task(&self, raw_id: &str) -> Result<Task, ServiceError> {
        let id = Self::parse_task_id(raw_id)?;
        let _guard = self.write_lock.lock().await;
        let mut task = self.load_task(&id).await?;
        let from = task.state;
        task.apply(Action::Stop, now_ms())?;
        if task.state == TaskState::Failed {
            // Stopped while checking: nothing was created. A new epoch makes the agent's late reports stale.
            task.epoch = task.epoch.next();
            self.save_task(&task).await?;
        } else {
            let destination = self.check_destination(&task.spec).await?;
            if from == TaskState::Failed {
                // Rolling back a failure: nothing runs, so the rollback is a new assignment (the failed
                // run's agent if it is still here); with no eligible agent it waits like any orphaned task.
                let tasks = self.db(|s| s.list_tasks()).await?;
                match scheduler::pick(&task, &self.registry.connected(), &tasks) {
                    Some(agent_id) => self.assign(&mut task, agent_id),
                    None => task.epoch = task.epoch.next(),
                }
            }
            self.save_task(&task).await?;
            self.send_for_state(&task, &destination);
        }
        tracing::info!(task_id = %task.id, state = %task.state, "task stop requested");
        Ok(task)
    }

    /// PauseTask / ResumeTask.
    pub async fn set_paused(&self, raw_id: &str, paused: bool) -> Result<Task, ServiceError> {
        let id = Self::parse_task_id(raw_id)?;
        let _guard = self.write_lock.lock().await;
        let mut task = self.load_task(&id).await?;
        let action = if paused {
            Action::Pause
        } else {
            Action::Resume
        };
        task.apply(action, now_ms())?;
        self.save_task(&task).await?;
        self.send_command(
            &task,
            pb::coordinator_message::Body::SetPaused(pb::SetPaused { paused }),
        );
        tracing::info!(task_id = %task.id, paused, "task pause changed");
        Ok(task)
    }

    /// SetTaskThrottle.
    pub async fn set_throttle(
        &self,
        raw_id: &str,
        throttle: ferry_core::Throttle,
    ) -> Result<Task, ServiceError> {
        let id = Self::parse_task_id(raw_id)?;
        let _guard = self.write_lock.lock().await;
        let mut task = self.load_task(&id).await?;
        task.apply(Action::Throttle, now_ms())?;
        task.throttle = throttle;
        self.save_task(&task).await?;
        if matches!(task.state, TaskState::Running | TaskState::Completing) {
            self.send_command(
                &task,
                pb::coordinator_message::Body::SetThrottle(pb::SetThrottle {
                    throttle: Some(convert::throttle_to_pb(&throttle)),
                }),
            );
        }
        tracing::info!(task_id = %task.id, %throttle, "task throttle changed");
        Ok(task)
    }

    // ---- agents ----

    pub async fn list_agents(
        &self,
        by: &Principal,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<pb::Agent>, ServiceError> {
        let (agents, tasks) = self.db(|s| Ok((s.list_agents()?, s.list_tasks()?))).await?;
        let page = paginate(
            agents,
            page_size,
            page_token,
            |a| a.agent_id.to_string(),
            |a| by.tenants.is_empty() || (!a.tenant.is_empty() && by.sees(&a.tenant)),
        )?;
        let items = page
            .items
            .iter()
            .map(|a| {
                let ids = tasks
                    .iter()
                    .filter(|t| {
                        t.agent_id.as_ref() == Some(&a.agent_id)
                            && !t.state.is_terminal()
                            && by.sees(&t.spec.tenant)
                    })
                    .map(|t| t.id.to_string())
                    .collect();
                convert::agent_to_pb(a, self.registry.is_connected(&a.agent_id), ids)
            })
            .collect();
        Ok(Page {
            items,
            next_page_token: page.next_page_token,
        })
    }

    /// Records what an agent said in its hello (never its binding, credentials or revocation).
    pub(crate) async fn remember_agent(&self, record: AgentRecord) -> Result<(), ServiceError> {
        let lock = std::sync::Arc::clone(&self.agent_write);
        self.db(move |s| {
            let _guard = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(mut stored) = s.get_agent(&record.agent_id)? else {
                return Ok(());
            };
            stored.private_ips = record.private_ips;
            stored.version = record.version;
            stored.hostname = record.hostname;
            stored.capabilities = record.capabilities;
            stored.last_seen_ms = record.last_seen_ms;
            s.put_agent(&stored)
        })
        .await
    }

    /// Records that an agent was seen now.
    pub(crate) async fn touch_agent(&self, id: &ferry_core::AgentId) -> Result<(), ServiceError> {
        let lock = std::sync::Arc::clone(&self.agent_write);
        let id = id.clone();
        self.db(move |s| {
            let _guard = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(mut stored) = s.get_agent(&id)? else {
                return Ok(());
            };
            stored.last_seen_ms = now_ms();
            s.put_agent(&stored)
        })
        .await
    }

    /// Source checks that depend on the coordinator's settings.
    pub(crate) fn check_source(&self, spec: &TaskSpec) -> Result<(), ServiceError> {
        if spec.kind == TaskKind::PublicNetwork && !self.settings.allow_private_sources {
            ferry_core::check_public_source_host(&spec.mongo_host)?;
        }
        Ok(())
    }

    /// Removes what is stale: join tokens a day past their expiry, and agents revoked over a week ago or not seen
    /// for 30 days that hold no unfinished task. Returns how many of each were removed.
    pub(crate) async fn clean_up(&self, now: i64) -> Result<(usize, usize), ServiceError> {
        const DAY_MS: i64 = 24 * 3600 * 1000;
        let connected: Vec<ferry_core::AgentId> = self
            .registry
            .connected()
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        let lock = std::sync::Arc::clone(&self.agent_write);
        self.db(move |s| {
            let mut tokens = 0;
            for t in s.list_join_tokens()? {
                if now > t.expires_ms + DAY_MS && s.delete_join_token(&t.hash)? {
                    tokens += 1;
                }
            }
            let tasks = s.list_tasks()?;
            let _guard = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut agents = 0;
            for a in s.list_agents()? {
                let busy = tasks
                    .iter()
                    .any(|t| t.agent_id.as_ref() == Some(&a.agent_id) && !t.state.is_terminal());
                let stale = a.revoked_ms.is_some_and(|r| now > r + 7 * DAY_MS)
                    || now > a.last_seen_ms + 30 * DAY_MS;
                if stale
                    && !busy
                    && !connected.contains(&a.agent_id)
                    && s.delete_agent(&a.agent_id)?
                {
                    agents += 1;
                }
            }
            Ok((tokens, agents))
        })
        .await
    }
}

/// The fields of an update that change where the data comes from or goes to.
fn retargeted(old: &TaskSpec, new: &TaskSpec) -> Vec<&'static str> {
    let mut moved = Vec::new();
    if old.mongo_host != new.mongo_host {
        moved.push("mongo_host");
    }
    if old.port != new.port {
        moved.push("port");
    }
    if old.cvm_id != new.cvm_id {
        moved.push("cvm_id");
    }
    if old.kind != new.kind {
        moved.push("kind");
    }
    if old.destination_instance_id != new.destination_instance_id {
        moved.push("destination_instance_id");
    }
    if old.username != new.username {
        moved.push("username");
    }
    moved
}

/// The coordinator-side `agent_available` check item.
fn agent_available_item(task: &Task, pass: bool, now: i64) -> CheckItem {
    let (status, message, fix) = if pass {
        (
            CheckStatus::Pass,
            "an eligible agent is connected".to_owned(),
            String::new(),
        )
    } else {
        (CheckStatus::Fail, no_agent_reason(task), no_agent_fix(task))
    };
    CheckItem {
        id: "agent_available".into(),
        name: "Agent available".into(),
        status,
        message,
        fix,
        finish_time_ms: Some(now),
        duration_ms: 0,
    }
}

fn no_agent_reason(task: &Task) -> String {
    match &task.spec.cvm_id {
        Some(cvm) => format!("no ferry-agent of CVM {cvm} is connected"),
        None => "no pool ferry-agent is connected".to_owned(),
    }
}

fn no_agent_fix(task: &Task) -> String {
    match &task.spec.cvm_id {
        Some(cvm) => {
            format!("install and start ferry-agent on CVM {cvm}, or check that it can reach the coordinator")
        }
        None => {
            "start a ferry-agent with pool mode enabled, or check that it can reach the coordinator"
                .to_owned()
        }
    }
}

/// The size and start of a page of records numbered by sequence: `page_token` is the last seq of the previous page
/// (empty: from the start); a size of 0 means 100, at most 1000.
pub(crate) fn seq_page(page_size: i32, page_token: &str) -> Result<(usize, u64), ServiceError> {
    let size = match usize::try_from(page_size) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(n) => n.min(MAX_PAGE_SIZE),
        Err(_) => return Err(ServiceError::invalid("page_size", "must not be negative")),
    };
    let after = if page_token.is_empty() {
        0
    } else {
        page_token.parse().map_err(|_| {
            ServiceError::invalid(
                "page_token",
                "is malformed: pass the next_page_token of a previous call",
            )
        })?
    };
    Ok((size, after))
}

/// Pages over items ordered by `key`; the page token is the key of the last item returned.
fn paginate<T>(
    all: Vec<T>,
    page_size: i32,
    page_token: &str,
    key: impl Fn(&T) -> String,
    keep: impl Fn(&T) -> bool,
) -> Result<Page<T>, ServiceError> {
    let size = match usize::try_from(page_size) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(n) => n.min(MAX_PAGE_SIZE),
        Err(_) => return Err(ServiceError::invalid("page_size", "must not be negative")),
    };
    if !page_token.is_empty()
        && !page_token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ServiceError::invalid(
            "page_token",
            "is malformed: pass the next_page_token of a previous call",
        ));
    }
    let mut items: Vec<T> = all
        .into_iter()
        .filter(|t| keep(t) && (page_token.is_empty() || key(t).as_str() > page_token))
        .collect();
    let next_page_token = if items.len() > size {
        items.truncate(size);
        items.last().map(&key).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Page {
        items,
        next_page_token,
    })
}

#[cfg(test)]
mod janitor_tests {
    use ferry_core::{AgentId, JoinTokenRecord, Secret, TaskSpecInput};

    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    fn agent(now: i64, seen_days_ago: i64, revoked_days_ago: Option<i64>) -> AgentRecord {
        AgentRecord {
            agent_id: AgentId::generate(),
            cvm_instance_id: String::new(),
            region: String::new(),
            private_ips: vec![],
            version: String::new(),
            hostname: String::new(),
            pool: true,
            capabilities: vec![],
            last_seen_ms: now - seen_days_ago * DAY,
            tenant: String::new(),
            enrolled_ms: now - 90 * DAY,
            revoked_ms: revoked_days_ago.map(|d| now - d * DAY),
            credentials: vec![format!("digest-{}", rand::random::<u64>())],
        }
    }

    fn token(now: i64, expired_days_ago: i64) -> JoinTokenRecord {
        JoinTokenRecord {
            token_id: format!("jt-{}", rand::random::<u32>()),
            hash: format!("{:064x}", rand::random::<u128>()),
            cvm_id: String::new(),
            region: String::new(),
            pool: true,
            tenant: String::new(),
            description: String::new(),
            created_by: "admin".into(),
            created_ms: now - 30 * DAY,
            expires_ms: now - expired_days_ago * DAY,
            used_ms: None,
            used_by: None,
        }
    }

    #[tokio::test]
    async fn the_janitor_removes_stale_tokens_and_agents_but_never_a_busy_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let trust = Trust {
            ca: crate::ca::AgentCa::load_or_create(dir.path(), Duration::from_secs(3600)).unwrap(),
            principals: crate::principal::Principals::single_admin(&Secret::new("t")),
            auditor: crate::audit::Auditor::new(store.clone(), None).unwrap(),
        };
        let core = Coordinator::new(
            store.clone(),
            Settings::default(),
            trust,
            CancellationToken::new(),
        );
        let now = now_ms();
        let old_token = token(now, 2);
        let fresh_token = token(now, -1);
        for t in [&old_token, &fresh_token] {
            store.put_join_token(t).unwrap();
        }
        let revoked = agent(now, 8, Some(8));
        let unseen = agent(now, 31, None);
        let recent = agent(now, 1, Some(1));
        let busy = agent(now, 40, Some(10));
        for a in [&revoked, &unseen, &recent, &busy] {
            store.put_agent_durable(a).unwrap();
            store
                .put_credential(&a.credentials[0], &a.agent_id)
                .unwrap();
        }
        let spec = TaskSpec::try_from(TaskSpecInput {
            name: "t".into(),
            region: "ap-guangzhou".into(),
            kind: Some(TaskKind::PublicNetwork),
            mongo_host: "mongo.example.com".into(),
            port: 27017,
            destination_instance_id: "cmgo-6wk2mxa1".into(),
            ..Default::default()
        })
        .unwrap();
        let mut task = Task::new(TaskId::generate(), spec, now);
        task.state = TaskState::Running;
        task.agent_id = Some(busy.agent_id.clone());
        store.put_task(&task).unwrap();

        assert_eq!(core.clean_up(now).await.unwrap(), (1, 2));
        assert!(store.get_join_token(&old_token.hash).unwrap().is_none());
        assert!(store.get_join_token(&fresh_token.hash).unwrap().is_some());
        let left: Vec<AgentId> = store
            .list_agents()
            .unwrap()
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        assert!(left.contains(&recent.agent_id) && left.contains(&busy.agent_id));
        assert!(!left.contains(&revoked.agent_id) && !left.contains(&unseen.agent_id));
        assert!(store
            .agent_by_credential(&revoked.credentials[0])
            .unwrap()
            .is_none());
        assert_eq!(core.clean_up(now).await.unwrap(), (0, 0));
    }
}
