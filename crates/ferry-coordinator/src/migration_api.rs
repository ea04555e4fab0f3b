//! `ferry.v1.MigrationService`: a thin adapter from gRPC to [`Coordinator`]. Every call first authenticates its
//! principal and checks the method's permission (failures are audited), tasks and instances of tenants the
//! principal may not see are NOT_FOUND, and every mutating call is audited (success or failure) before it
//! returns. Converts at the edge, maps errors with `?` (see `error.rs`), never returns a password.

use std::pin::Pin;
use std::sync::Arc;

use ferry_core::{InstanceId, Task};
use ferry_proto::v1 as pb;
use ferry_proto::v1::migration_service_server::MigrationService;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::audit::AuditEntry;
use crate::convert;
use crate::coordinator::Coordinator;
use crate::error::ServiceError;
use crate::principal::{Permission, Principal};

/// The operator API.
pub struct MigrationApi {
    pub(crate) core: Arc<Coordinator>,
}

type TaskStream = Pin<Box<dyn Stream<Item = Result<pb::Task, Status>> + Send + 'static>>;

/// An authenticated, authorised call in progress.
struct Call {
    principal: Principal,
    peer: String,
    method: &'static str,
}

impl MigrationApi {
    /// Authenticates the caller and checks `permission`; failures are audited and returned as a status.
    async fn begin<T>(
        &self,
        req: &Request<T>,
        method: &'static str,
        permission: Permission,
    ) -> Result<Call, Status> {
        let peer = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        let principal = match self.authenticate(req) {
            Ok(p) => p,
            Err(error) => {
                let status = Status::from(error);
                self.core
                    .auditor
                    .record_failure(AuditEntry {
                        principal: "anonymous".into(),
                        peer,
                        method,
                        targets: vec![],
                        code: status.code(),
                        detail: status.message().to_owned(),
                    })
                    .await;
                return Err(status);
            }
        };
        if let Err(error) = principal.require(permission, method) {
            let status = Status::from(error);
            self.core
                .auditor
                .record_failure(AuditEntry {
                    principal: principal.name.clone(),
                    peer,
                    method,
                    targets: vec![],
                    code: status.code(),
                    detail: status.message().to_owned(),
                })
                .await;
            return Err(status);
        }
        Ok(Call {
            principal,
            peer,
            method,
        })
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<Principal, ServiceError> {
        let principals = &self.core.principals;
        if principals.uses_certificates() {
            if let Some(certs) = req.peer_certs() {
                if let Some(leaf) = certs.first() {
                    if let Some(subject) = self.core.ca.operator_subject(leaf.as_ref()) {
                        if let Some(p) = principals.by_subject(&subject) {
                            return Ok(p);
                        }
                    }
                }
            }
        }
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            Some(token) => principals.by_token(token).ok_or_else(|| {
                tracing::warn!("rejected a request with an unknown bearer token");
                ServiceError::Unauthenticated("invalid operator token".into())
            }),
            None => Err(ServiceError::Unauthenticated(
                "missing operator token: send `authorization: Bearer <token>` metadata (or a client certificate named in the principals file)".into(),
            )),
        }
    }

    /// Audits a mutating call's outcome, then returns it.
    async fn finish<R>(
        &self,
        call: &Call,
        targets: Vec<String>,
        result: Result<R, ServiceError>,
    ) -> Result<R, Status> {
        let (code, detail, out) = match result {
            Ok(value) => (tonic::Code::Ok, String::new(), Ok(value)),
            Err(error) => {
                let status = Status::from(error);
                (status.code(), status.message().to_owned(), Err(status))
            }
        };
        if code != tonic::Code::Ok && code != tonic::Code::NotFound {
            if let Some(id) = targets
                .first()
                .and_then(|t| ferry_core::TaskId::parse("task_id", t).ok())
            {
                let refused = format!(
                    "{} refused: {}: {detail}",
                    call.method,
                    crate::audit::code_name(code)
                );
                let _ = self
                    .core
                    .record_task_event(&id, "operator", call.principal.name.clone(), refused)
                    .await;
            }
        }
        let _ = self
            .core
            .auditor
            .record(AuditEntry {
                principal: call.principal.name.clone(),
                peer: call.peer.clone(),
                method: call.method,
                targets,
                code,
                detail,
            })
            .await;
        out
    }

    /// Records an operator action in the task's history, before the action runs.
    async fn operator_event(
        &self,
        call: &Call,
        task: &Task,
        what: String,
    ) -> Result<(), ServiceError> {
        let detail = if what.is_empty() {
            format!("{} requested", call.method)
        } else {
            format!("{} requested: {what}", call.method)
        };
        self.core
            .record_task_event(&task.id, "operator", call.principal.name.clone(), detail)
            .await
    }

    /// The visible task, with the operator's request recorded in its history.
    async fn acted_on(
        &self,
        call: &Call,
        raw_id: &str,
        what: String,
    ) -> Result<Task, ServiceError> {
        let task = self.visible_task(call, raw_id).await?;
        self.operator_event(call, &task, what).await?;
        Ok(task)
    }

    /// The task, if the principal may see it (otherwise NOT_FOUND, as if it did not exist).
    async fn visible_task(&self, call: &Call, raw_id: &str) -> Result<Task, ServiceError> {
        let task = self.core.get_task(raw_id).await?;
        if !call.principal.sees(&task.spec.tenant) {
            return Err(ServiceError::NotFound(format!(
                "task {} not found",
                task.id
            )));
        }
        Ok(task)
    }
}

impl MigrationApi {
    /// PauseTask (`paused`) or ResumeTask, audited and in the task's history.
    async fn pause_or_resume(
        &self,
        call: Call,
        id: String,
        paused: bool,
    ) -> Result<Response<pb::Task>, Status> {
        let result = async {
            self.acted_on(&call, &id, String::new()).await?;
            self.core.set_paused(&id, paused).await
        }
        .await;
        let task = self.finish(&call, vec![id.clone()], result).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }
}

/// Fills an empty tenant with the principal's default and checks the principal may use it.
fn scoped_tenant(
    principal: &Principal,
    tenant: &mut String,
    field: &'static str,
) -> Result<(), ServiceError> {
    if tenant.is_empty() {
        *tenant = principal.default_tenant(field)?;
    }
    principal.require_tenant(tenant)
}

#[tonic::async_trait]
impl MigrationService for MigrationApi {
    async fn register_instance(
        &self,
        req: Request<pb::RegisterInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let call = self
            .begin(&req, "RegisterInstance", Permission::InstancesWrite)
            .await?;
        let mut instance = req.into_inner().instance.unwrap_or_default();
        let targets = vec![instance.instance_id.clone()];
        let result = async {
            scoped_tenant(&call.principal, &mut instance.tenant, "instance.tenant")?;
            let input = convert::instance_input(Some(instance));
            self.core.register_instance(input).await
        }
        .await;
        let instance = self.finish(&call, targets, result).await?;
        Ok(Response::new(convert::instance_to_pb(&instance)))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let call = self
            .begin(&req, "ListInstances", Permission::InstancesRead)
            .await?;
        let r = req.into_inner();
        let page = self
            .core
            .list_instances(&call.principal, r.page_size, &r.page_token, &r.region)
            .await?;
        Ok(Response::new(pb::ListInstancesResponse {
            instances: page.items.iter().map(convert::instance_to_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_instance(
        &self,
        req: Request<pb::DeleteInstanceRequest>,
    ) -> Result<Response<pb::DeleteInstanceResponse>, Status> {
        let call = self
            .begin(&req, "DeleteInstance", Permission::InstancesWrite)
            .await?;
        let raw_id = req.into_inner().instance_id;
        let result = async {
            let id = InstanceId::parse("instance_id", &raw_id)?;
            let key = id.clone();
            let visible = self
                .core
                .db(move |s| s.get_instance(&key))
                .await?
                .is_some_and(|i| call.principal.sees(&i.tenant));
            if !visible {
                return Err(ServiceError::NotFound(format!("instance {id} not found")));
            }
            self.core.delete_instance(&raw_id).await
        }
        .await;
        self.finish(&call, vec![raw_id.clone()], result).await?;
        Ok(Response::new(pb::DeleteInstanceResponse {}))
    }

    async fn create_task(
        &self,
        req: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let call = self
            .begin(&req, "CreateTask", Permission::TasksWrite)
            .await?;
        let mut spec = req.into_inner().spec.unwrap_or_default();
        let mut targets = vec![];
        let result = async {
            scoped_tenant(&call.principal, &mut spec.tenant, "spec.tenant")?;
            self.core.create_task(convert::spec_input(Some(spec))).await
        }
        .await;
        if let Ok(task) = &result {
            targets.push(task.id.to_string());
            let _ = self
                .operator_event(&call, task, format!("by {}", call.principal.name))
                .await;
        }
        let task = self.finish(&call, targets, result).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let call = self.begin(&req, "GetTask", Permission::TasksRead).await?;
        let task = self.visible_task(&call, &req.into_inner().task_id).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let call = self.begin(&req, "ListTasks", Permission::TasksRead).await?;
        let r = req.into_inner();
        let page = self
            .core
            .list_tasks(
                &call.principal,
                r.page_size,
                &r.page_token,
                &r.region,
                r.state,
            )
            .await?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: page.items.iter().map(|t| self.core.task_to_pb(t)).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_task(
        &self,
        req: Request<pb::UpdateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let call = self
            .begin(&req, "UpdateTask", Permission::TasksWrite)
            .await?;
        let r = req.into_inner();
        let result = async {
            let task = self.acted_on(&call, &r.task_id, String::new()).await?;
            let mut spec = r.spec.unwrap_or_default();
            if spec.tenant.is_empty() {
                spec.tenant = task.spec.tenant.clone();
            }
            call.principal.require_tenant(&spec.tenant)?;
            self.core
                .update_task(&r.task_id, convert::spec_input(Some(spec)))
                .await
        }
        .await;
        let task = self.finish(&call, vec![r.task_id.clone()], result).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn delete_task(
        &self,
        req: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<pb::DeleteTaskResponse>, Status> {
        let call = self
            .begin(&req, "DeleteTask", Permission::TasksWrite)
            .await?;
        let id = req.into_inner().task_id;
        let result = async {
            self.visible_task(&call, &id).await?;
            self.core.delete_task(&id).await
        }
        .await;
        self.finish(&call, vec![id.clone()], result).await?;
        Ok(Response::new(pb::DeleteTaskResponse {}))
    }

    async fn check_task(
        &self,
        req: Request<pb::CheckTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let call = self
            .begin(&req, "CheckTask", Permission::TasksWrite)
            .await?;
        let id = req.into_inner().task_id;
        let result = async {
            self.acted_on(&call, &id, String::new()).await?;
            self.core.check_task(&id).await
        }
        .await;
        let task = self.finish(&call, vec![id.clone()], result).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn start_task(
        &self,
        req: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let call = self
            .begin(&req, "StartTask", Permission::TasksWrite)
            .await?;
        let id = req.into_inner().task_id;
        let result = async {
            self.acted_on(&call, &id, String::new()).await?;
            self.core.start_task(&id).await
        }
        .await;
        let task = self.finish(&call, vec![id.clone()], result).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn complete_task(
        &self,
        req: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let call = self
            .begin(&req, "CompleteTask", Permission::TasksWrite)
            .await?;
        let r = req.into_inner();
        let result = async {
            let what = if r.require_verification {
                "with verification".to_owned()
            } else {
                String::new()
            };
            self.acted_on(&call, &r.task_id, what).await?;
            self.core
                .complete_task(&r.task_id, r.require_verification)
                .await
        }
        .await;
        let task = self.finish(&call, vec![r.task_id.clone()], result).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn verify_task(
        &self,
        req: Request<pb::VerifyTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let call = self
            .begin(&req, "VerifyTask", Permission::TasksWrite)
            .await?;
        let r = req.into_inner();
        let result = async {
            self.acted_on(&call, &r.task_id, String::new()).await?;
            self.core.verify_task(&r.task_id, r.mode).await
        }
        .await;
        let task = self.finish(&call, vec![r.task_id.clone()], result).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn list_mismatches(
        &self,
        req: Request<pb::ListMismatchesRequest>,
    ) -> Result<Response<pb::ListMismatchesResponse>, Status> {
        let call = self
            .begin(&req, "ListMismatches", Permission::TasksRead)
            .await?;
        let r = req.into_inner();
        self.visible_task(&call, &r.task_id).await?;
        let page = self
            .core
            .list_mismatches(&r.task_id, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(page))
    }

    async fn stop_task(
        &self,
        req: Request<pb::StopTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let call = self.begin(&req, "StopTask", Permission::TasksWrite).await?;
        let id = req.into_inner().task_id;
        let result = async {
            self.acted_on(&call, &id, String::new()).await?;
            self.core.stop_task(&id).await
        }
        .await;
        let task = self.finish(&call, vec![id.clone()], result).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    type WatchTaskStream = TaskStream;

    async fn watch_task(
        &self,
        req: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let call = self.begin(&req, "WatchTask", Permission::TasksRead).await?;
        let raw_id = req.into_inner().task_id;
        let permit = Arc::clone(&self.core.watchers)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "too many WatchTask streams are open (at most {}): close some, or poll GetTask",
                    self.core.settings.max_watchers
                ))
            })?;
        // Subscribe before the snapshot so no change falls between the two.
        let changes = self.core.subscribe();
        let first = self.visible_task(&call, &raw_id).await?;
        let (tx, rx) = mpsc::channel(16);
        let core = Arc::clone(&self.core);
        self.core.tracker.spawn(async move {
            watch(core, first, changes, tx).await;
            drop(permit);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let call = self
            .begin(&req, "ListAgents", Permission::AgentsRead)
            .await?;
        let r = req.into_inner();
        let page = self
            .core
            .list_agents(&call.principal, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.items,
            next_page_token: page.next_page_token,
        }))
    }

    async fn list_source_databases(
        &self,
        req: Request<pb::ListSourceDatabasesRequest>,
    ) -> Result<Response<pb::ListSourceDatabasesResponse>, Status> {
        let call = self
            .begin(&req, "ListSourceDatabases", Permission::TasksRead)
            .await?;
        let id = req.into_inner().task_id;
        self.visible_task(&call, &id).await?;
        let databases = self.core.list_source_databases(&id).await?;
        Ok(Response::new(pb::ListSourceDatabasesResponse { databases }))
    }

    async fn set_task_throttle(
        &self,
        req: Request<pb::SetTaskThrottleRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let call = self
            .begin(&req, "SetTaskThrottle", Permission::TasksWrite)
            .await?;
        let r = req.into_inner();
        let throttle = convert::throttle_from_pb(r.throttle);
        let result = async {
            self.acted_on(&call, &r.task_id, throttle.to_string())
                .await?;
            self.core.set_throttle(&r.task_id, throttle).await
        }
        .await;
        let task = self.finish(&call, vec![r.task_id.clone()], result).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn pause_task(
        &self,
        req: Request<pb::PauseTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let call = self
            .begin(&req, "PauseTask", Permission::TasksWrite)
            .await?;
        self.pause_or_resume(call, req.into_inner().task_id, true)
            .await
    }

    async fn resume_task(
        &self,
        req: Request<pb::ResumeTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let call = self
            .begin(&req, "ResumeTask", Permission::TasksWrite)
            .await?;
        self.pause_or_resume(call, req.into_inner().task_id, false)
            .await
    }

    async fn list_task_events(
        &self,
        req: Request<pb::ListTaskEventsRequest>,
    ) -> Result<Response<pb::ListTaskEventsResponse>, Status> {
        let call = self
            .begin(&req, "ListTaskEvents", Permission::TasksRead)
            .await?;
        let r = req.into_inner();
        let task = self.visible_task(&call, &r.task_id).await?;
        let page = self
            .core
            .list_task_events(&task, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(page))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let call = self
            .begin(&req, "CreateJoinToken", Permission::AgentsEnroll)
            .await?;
        let r = req.into_inner();
        let mut targets = vec![if r.pool {
            "pool".to_owned()
        } else {
            r.cvm_id.clone()
        }];
        let result = self.core.create_join_token(&call.principal, r).await;
        if let Ok(token) = &result {
            targets.push(token.token_id.clone());
        }
        let token = self.finish(&call, targets, result).await?;
        Ok(Response::new(token))
    }

    async fn revoke_agent(
        &self,
        req: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let call = self
            .begin(&req, "RevokeAgent", Permission::AgentsEnroll)
            .await?;
        let r = req.into_inner();
        let result = self.core.revoke_agent(&r.agent_id, &r.reason).await;
        let mut targets = vec![r.agent_id.clone()];
        if !r.reason.is_empty() {
            targets.push(format!("reason:{}", r.reason));
        }
        let agent = self.finish(&call, targets, result).await?;
        if !self.core.cancel.is_cancelled() {
            if let Err(error) = self.core.reschedule(None).await {
                tracing::warn!(%error, "rescheduling after a revocation failed");
            }
        }
        Ok(Response::new(agent))
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        self.begin(&req, "ListAuditEvents", Permission::AuditRead)
            .await?;
        let page = self.core.list_audit(req.into_inner()).await?;
        Ok(Response::new(page))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        // Every role has tasks.read: any authenticated principal may ask who it is.
        let call = self.begin(&req, "WhoAmI", Permission::TasksRead).await?;
        let p = call.principal;
        Ok(Response::new(pb::Principal {
            name: p.name,
            role: p.role.as_str().to_owned(),
            tenants: p.tenants.into_iter().collect(),
            permissions: p
                .role
                .permissions()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }))
    }
}

/// Feeds one WatchTask stream: the snapshot, then every distinct change, until the task ends (SUCCEEDED or
/// FAILED), is deleted, the client leaves, or the coordinator shuts down.
async fn watch(
    core: Arc<Coordinator>,
    first: ferry_core::Task,
    mut changes: broadcast::Receiver<ferry_core::TaskId>,
    tx: mpsc::Sender<Result<pb::Task, Status>>,
) {
    let id = first.id.clone();
    let mut last = core.task_to_pb(&first);
    if tx.send(Ok(last.clone())).await.is_err() || first.state.is_terminal() {
        return;
    }
    loop {
        let changed = tokio::select! {
            _ = core.cancel.cancelled() => return,
            _ = tx.closed() => return,
            changed = changes.recv() => changed,
        };
        match changed {
            Ok(changed_id) if changed_id != id => continue,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
        let task = match core.load_task(&id).await {
            Ok(task) => task,
            Err(ServiceError::NotFound(msg)) => {
                let _ = tx.send(Err(Status::not_found(msg))).await;
                return;
            }
            Err(err) => {
                let _ = tx.send(Err(err.into())).await;
                return;
            }
        };
        let now = core.task_to_pb(&task);
        if now != last {
            if tx.send(Ok(now.clone())).await.is_err() {
                return;
            }
            last = now;
        }
        if task.state.is_terminal() {
            return;
        }
    }
}
