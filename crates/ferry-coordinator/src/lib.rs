//! ferry-coordinator: the control plane. Serves the operator API (`ferry.v1.MigrationService`), agent enrollment
//! and sessions (`ferry.v1.AgentService`), `grpc.health.v1` and server reflection on one listener; keeps tasks,
//! instances, agents, join tokens, the audit log and checkpoints durable in sled (through `ferry-store`); issues
//! agents' client certificates from its own CA; schedules tasks on agents by their enrolled identity, with epochs.
//!
//! Must not: link the MongoDB driver or the engine (data never flows through the coordinator), return or log
//! secrets, or decide transitions outside `ferry-core`'s state machine.

mod agent_api;
mod audit;
mod ca;
pub mod config;
mod convert;
mod coordinator;
mod dispatch;
mod enroll;
mod error;
mod history;
pub mod metrics;
mod migration_api;
pub mod principal;
mod registry;
mod reports;
mod scheduler;
mod server;
mod verification;

pub use config::{Config, FileConfig, TlsPem};
pub use error::ServiceError;
pub use principal::Principals;
pub use server::{run, run_with_metrics};

/// Fuzzing hooks (`crates/ferry-fuzz-targets`): the operator API's proto-to-input conversions, so that the
/// `task_spec` target feeds the code the API runs. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::convert::{instance_input, spec_input};
}
