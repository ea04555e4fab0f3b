//! ferry-checks: the agent-side pre-migration checks ("parameter verification") of a task.
//!
//! Owns the check items from `cvm_identity` to `destination_capacity` (see [`ITEM_IDS`]): what each
//! measures, how it decides PASS/WARN/FAIL/SKIPPED, and the fix it suggests. The agent fills a
//! [`CheckInput`] (including what it read from the metadata service), calls [`run_checks`] and streams
//! each [`CheckItem`] to the coordinator as it arrives.
//!
//! Must not: talk gRPC or know the coordinator (the agent converts items into stream messages), produce
//! `agent_available` (the coordinator does), read the metadata service itself (the agent does), write to
//! any MongoDB server (checks only read), or let a password into a message, a log line or a `Debug`.
//!
//! ```no_run
//! # async fn agent(input: ferry_checks::CheckInput) {
//! let (items_tx, mut items_rx) = tokio::sync::mpsc::channel(16);
//! let run = tokio::spawn(ferry_checks::run_checks(input, items_tx));
//! while let Some(item) = items_rx.recv().await {
//!     // stream `item` to the coordinator as a CheckItemReport
//!     println!("{} {}: {}", item.id, item.status, item.message);
//! }
//! let items = run.await.unwrap_or_default();
//! let passed = ferry_checks::checks_passed(&items);
//! # let _ = passed;
//! # }
//! ```
//!
//! Supported MongoDB versions, source and destination: 4.0 to 8.0 by major.minor
//! ([`MIN_SUPPORTED_VERSION`], [`MAX_SUPPORTED_VERSION`]); an older destination than the source is a WARN.

mod evaluate;
mod model;
mod probe;
mod runner;

pub use evaluate::{
    format_bytes, format_secs, is_system_database, MAX_SUPPORTED_VERSION, MIN_SUPPORTED_VERSION,
    OPLOG_MARGIN_FACTOR, SYSTEM_DATABASES,
};
pub use model::*;
pub use probe::CheckError;
pub use runner::{run_checks, DEFAULT_COPY_RATE_BYTES_PER_SECOND, DEFAULT_ITEM_TIMEOUT};
