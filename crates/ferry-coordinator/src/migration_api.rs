//! `ferry.v1.MigrationService`: a thin adapter from gRPC to [`Coordinator`]. Converts at the edge, maps errors
//! with `?` (see `error.rs`), never returns a password.

use std::pin::Pin;
use std::sync::Arc;

use ferry_proto::v1 as pb;
use ferry_proto::v1::migration_service_server::MigrationService;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::coordinator::Coordinator;
use crate::error::ServiceError;

/// The operator API.
pub struct MigrationApi {
    pub(crate) core: Arc<Coordinator>,
}

type TaskStream = Pin<Box<dyn Stream<Item = Result<pb::Task, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl MigrationService for MigrationApi {
    async fn register_instance(
        &self,
        req: Request<pb::RegisterInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let input = convert::instance_input(req.into_inner().instance);
        let instance = self.core.register_instance(input).await?;
        Ok(Response::new(convert::instance_to_pb(&instance)))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let r = req.into_inner();
        let page = self
            .core
            .list_instances(r.page_size, &r.page_token, &r.region)
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
        self.core
            .delete_instance(&req.into_inner().instance_id)
            .await?;
        Ok(Response::new(pb::DeleteInstanceResponse {}))
    }

    async fn create_task(
        &self,
        req: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let task = self
            .core
            .create_task(convert::spec_input(req.into_inner().spec))
            .await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let task = self.core.get_task(&req.into_inner().task_id).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let r = req.into_inner();
        let page = self
            .core
            .list_tasks(r.page_size, &r.page_token, &r.region, r.state)
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
        let r = req.into_inner();
        let task = self
            .core
            .update_task(&r.task_id, convert::spec_input(r.spec))
            .await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn delete_task(
        &self,
        req: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<pb::DeleteTaskResponse>, Status> {
        self.core.delete_task(&req.into_inner().task_id).await?;
        Ok(Response::new(pb::DeleteTaskResponse {}))
    }

    async fn check_task(
        &self,
        req: Request<pb::CheckTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let task = self.core.check_task(&req.into_inner().task_id).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn start_task(
        &self,
        req: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let task = self.core.start_task(&req.into_inner().task_id).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn complete_task(
        &self,
        req: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let r = req.into_inner();
        let task = self
            .core
            .complete_task(&r.task_id, r.require_verification)
            .await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn verify_task(
        &self,
        req: Request<pb::VerifyTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let r = req.into_inner();
        let task = self.core.verify_task(&r.task_id, r.mode).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    async fn list_mismatches(
        &self,
        req: Request<pb::ListMismatchesRequest>,
    ) -> Result<Response<pb::ListMismatchesResponse>, Status> {
        let r = req.into_inner();
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
        let task = self.core.stop_task(&req.into_inner().task_id).await?;
        Ok(Response::new(self.core.task_to_pb(&task)))
    }

    type WatchTaskStream = TaskStream;

    async fn watch_task(
        &self,
        req: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let raw_id = req.into_inner().task_id;
        // Subscribe before the snapshot so no change falls between the two.
        let changes = self.core.subscribe();
        let first = self.core.get_task(&raw_id).await?;
        let (tx, rx) = mpsc::channel(16);
        let core = Arc::clone(&self.core);
        self.core.tracker.spawn(watch(core, first, changes, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let r = req.into_inner();
        let page = self.core.list_agents(r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.items,
            next_page_token: page.next_page_token,
        }))
    }

    async fn list_source_databases(
        &self,
        req: Request<pb::ListSourceDatabasesRequest>,
    ) -> Result<Response<pb::ListSourceDatabasesResponse>, Status> {
        let databases = self
            .core
            .list_source_databases(&req.into_inner().task_id)
            .await?;
        Ok(Response::new(pb::ListSourceDatabasesResponse { databases }))
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
