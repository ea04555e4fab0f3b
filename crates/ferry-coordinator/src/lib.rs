//! ferry-coordinator: the control plane. Serves the operator API (`ferry.v1.MigrationService`), agent sessions
//! (`ferry.v1.AgentService`), `grpc.health.v1` and server reflection on one listener; keeps tasks, instances,
//! agents and checkpoints durable in sled (through `ferry-store`); schedules tasks on agents with epochs.
//!
//! Must not: link the MongoDB driver or the engine (data never flows through the coordinator), return or log
//! secrets, or decide transitions outside `ferry-core`'s state machine.

mod agent_api;
mod auth;
pub mod config;
mod convert;
mod coordinator;
mod dispatch;
mod error;
mod migration_api;
mod registry;
mod reports;
mod scheduler;
mod server;
mod verification;

pub use config::{Config, FileConfig, TlsPem};
pub use error::ServiceError;
pub use server::run;
