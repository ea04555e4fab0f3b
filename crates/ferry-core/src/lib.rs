//! Ferry domain model: id newtypes, validated task specs and destination instances, the task record and the task
//! state machine (the one place that decides which transitions are legal).
//!
//! Pure types and logic only: no IO, no sled, no gRPC. Generated protobuf types are converted into these types at
//! the edges (the coordinator's `convert` module); everything inside works on validated values.

pub mod agent;
pub mod error;
pub mod ids;
pub mod net;
pub mod secret;
pub mod spec;
pub mod state;
pub mod task;

pub use agent::{AgentRecord, JoinTokenRecord};
pub use error::{CoreError, Field};
pub use ids::{AgentId, CvmId, Epoch, InstanceId, TaskId};
pub use secret::Secret;
pub use spec::{
    check_public_source_host, validate_tenant, Instance, InstanceInput, TaskKind, TaskSpec,
    TaskSpecInput, ALLOWED_AUTH_MECHANISMS, ALLOWED_URI_OPTIONS, DEFAULT_TENANT, SYSTEM_DATABASES,
};
pub use state::{Action, Event, Failure, TaskState};
pub use task::{
    CheckItem, CheckStatus, Checkpoint, OplogTs, Task, TaskPhase, Throttle, Verification,
    VerificationState, VerifyMode, STOPPED_BY_OPERATOR,
};
