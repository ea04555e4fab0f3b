//! ferry-testkit: sandboxes for end-to-end tests, never shipped.
//!
//! - [`Sandbox`] (in-process): the coordinator (`ferry_coordinator::run` on 127.0.0.1:0, temp data dir,
//!   plaintext, test tokens), one local metadata HTTP server per agent and n agents (`ferry_agent::run`), with a
//!   connected operator client, `wait_for_state`, `wait_for`, `kill_agent`/`restart_agent` and
//!   `restart_coordinator`.
//! - [`mongo`]: driver helpers (authenticated client, comparable index specs).
//! - [`process`]: the real binaries as child processes (SIGKILL-able), for crash tests and the demo.
//!
//! Must not be a dependency of any product crate (dev-dependencies and the demo only), and must only ever listen
//! on or dial loopback addresses.

pub mod mongo;
pub mod process;
mod sandbox;

pub use sandbox::{wait_for, AgentSetup, Sandbox, SandboxBuilder, SandboxTls, OPERATOR_TOKEN};
