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

/// SplitMix64: the small seeded generator of the seeded tests, the fault campaign and the fuzz smoke test (a seed
/// printed by a run replays it).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
}
