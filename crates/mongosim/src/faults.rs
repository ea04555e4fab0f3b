//! Fault injection for tests: close connections after N commands, delay replies, fail a named
//! command with a given code, drop every open connection, cut the network (an outage).
//!
//! Owns the fault rules and their bookkeeping. Handshake and monitoring traffic (`hello`,
//! `isMaster`, `saslStart`, `saslContinue`, `endSessions`) is never counted or failed by the
//! command rules, so drivers can always reconnect; only an outage refuses it too. It must not
//! touch sockets itself: the accept and connection loops ask it what to do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::CommandError;

/// One "fail this command" rule.
#[derive(Debug, Clone)]
struct FailRule {
    command: String,
    code: i32,
    remaining: Option<u32>,
    close_connection: bool,
}

#[derive(Debug, Default)]
struct State {
    close_after: Option<u64>,
    delay: Option<Duration>,
    rules: Vec<FailRule>,
    /// Enabled server fail points by name (e.g. `hangAfterStartingIndexBuild`).
    fail_points: std::collections::BTreeSet<String>,
}

/// What the connection loop must do with a command.
#[derive(Debug)]
pub(crate) enum Action {
    /// Run it (after sleeping `delay` if set).
    Proceed(Option<Duration>),
    /// Close the connection without replying.
    Close,
    /// Reply with this error instead of running it.
    Fail(CommandError),
}

/// Cloneable handle on the fault rules of one server.
#[derive(Debug, Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
    generation_tx: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped whenever a fail point is switched on or off.
    fail_points_tx: Arc<tokio::sync::watch::Sender<u64>>,
    /// Checked on every accept and message, hence an atomic rather than part of `state`.
    outage: Arc<AtomicBool>,
}

impl Default for Faults {
    fn default() -> Self {
        let (tx, _) = tokio::sync::watch::channel(0);
        let (fp_tx, _) = tokio::sync::watch::channel(0);
        Self {
            state: Arc::default(),
            generation_tx: Arc::new(tx),
            fail_points_tx: Arc::new(fp_tx),
            outage: Arc::default(),
        }
    }
}

fn exempt(command: &str) -> bool {
    matches!(
        command,
        "hello"
            | "isMaster"
            | "ismaster"
            | "saslStart"
            | "saslContinue"
            | "endSessions"
            | "configureFailPoint"
    )
}

impl Faults {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// After `n` more (non-handshake) commands succeed, the connection that receives the next
    /// one is closed without a reply. One-shot.
    pub fn close_connections_after(&self, n: u64) {
        self.with(|s| s.close_after = Some(n));
    }

    /// Delays every non-handshake reply by `d` (`None` to stop).
    pub fn delay_replies(&self, d: Option<Duration>) {
        self.with(|s| s.delay = d);
    }

    /// Fails `command` with `code` (`times`: how many times, `None` = until cleared).
    pub fn fail_command(&self, command: &str, code: i32, times: Option<u32>) {
        self.add_rule(command, code, times, false);
    }

    /// Closes the connection instead of answering `command` (`times` as above).
    pub fn close_on_command(&self, command: &str, times: Option<u32>) {
        self.add_rule(command, 0, times, true);
    }

    fn add_rule(&self, command: &str, code: i32, times: Option<u32>, close_connection: bool) {
        self.with(|s| {
            s.rules.push(FailRule {
                command: command.to_string(),
                code,
                remaining: times,
                close_connection,
            })
        });
    }

    /// Closes every connection open right now (new ones are accepted).
    pub fn drop_connections(&self) {
        self.generation_tx.send_modify(|g| *g += 1);
    }

    /// Starts (`true`) or ends (`false`) a network outage. While it lasts, every open
    /// connection is closed and every new connection is closed as soon as it is accepted,
    /// before anything is read or answered, handshakes (`hello`, `saslStart`...) included: a
    /// driver sees the server down exactly as when the network is cut. Nothing else changes
    /// (data, other rules); [`Faults::clear`] ends an outage too.
    pub fn set_outage(&self, on: bool) {
        // The flag is set before the generation moves, so a connection that subscribed to the
        // generation too late to see the change still sees the flag (see `connection`).
        self.outage.store(on, Ordering::SeqCst);
        if on {
            self.drop_connections();
        }
    }

    /// Whether a network outage is in progress.
    pub fn in_outage(&self) -> bool {
        self.outage.load(Ordering::SeqCst)
    }

    /// Removes every rule and ends an outage.
    pub fn clear(&self) {
        self.with(|s| *s = State::default());
        self.outage.store(false, Ordering::SeqCst);
        self.fail_points_tx.send_modify(|g| *g += 1);
    }

    /// Switches a server fail point on or off, like `configureFailPoint` with `alwaysOn` /
    /// `off`. Supported: `hangAfterStartingIndexBuild` and `hangIndexBuildBeforeCommit`
    /// (mongodb/mongo `src/mongo/db/index_builds_coordinator.cpp`): a two-phase index build
    /// (`createIndexes` on a non-empty collection) logs `startIndexBuild` and then waits,
    /// without returning, until the fail point is switched off (it then commits) or the build
    /// is aborted by `dropIndexes` (it then returns IndexBuildAborted, 276).
    pub fn set_fail_point(&self, name: &str, on: bool) {
        self.with(|s| {
            if on {
                s.fail_points.insert(name.to_string());
            } else {
                s.fail_points.remove(name);
            }
        });
        self.fail_points_tx.send_modify(|g| *g += 1);
    }

    /// Whether the fail point `name` is on.
    pub fn fail_point(&self, name: &str) -> bool {
        self.with(|s| s.fail_points.contains(name))
    }

    /// A receiver that changes whenever a fail point is switched.
    pub(crate) fn fail_points_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.fail_points_tx.subscribe()
    }

    pub(crate) fn generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation_tx.subscribe()
    }

    pub(crate) fn on_command(&self, command: &str) -> Action {
        if exempt(command) {
            return Action::Proceed(None);
        }
        self.with(|s| {
            if let Some(n) = s.close_after.as_mut() {
                if *n == 0 {
                    s.close_after = None;
                    return Action::Close;
                }
                *n -= 1;
            }
            if let Some(pos) = s.rules.iter().position(|r| r.command == command) {
                let rule = s.rules[pos].clone();
                match s.rules[pos].remaining.as_mut() {
                    Some(1) => {
                        s.rules.remove(pos);
                    }
                    Some(n) => *n = n.saturating_sub(1),
                    None => {}
                }
                if rule.close_connection {
                    return Action::Close;
                }
                return Action::Fail(CommandError::new(
                    rule.code,
                    format!("Failing command {command} via mongosim fault injection"),
                ));
            }
            Action::Proceed(s.delay)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_count_down_and_skip_handshake() {
        let f = Faults::default();
        f.fail_command("find", 6, Some(2));
        f.close_connections_after(3);
        assert!(matches!(f.on_command("hello"), Action::Proceed(None)));
        assert!(matches!(f.on_command("find"), Action::Fail(e) if e.code == 6));
        assert!(matches!(f.on_command("find"), Action::Fail(_)));
        assert!(matches!(f.on_command("find"), Action::Proceed(_)));
        assert!(matches!(f.on_command("insert"), Action::Close));
        assert!(matches!(f.on_command("insert"), Action::Proceed(_)));
    }

    #[test]
    fn an_outage_closes_open_connections_and_ends_on_clear() {
        let f = Faults::default();
        let mut generation = f.generation();
        generation.borrow_and_update();
        assert!(!f.in_outage());
        f.set_outage(true);
        assert!(f.in_outage());
        assert!(generation.has_changed().unwrap_or(false));
        f.set_outage(false);
        assert!(!f.in_outage());
        f.set_outage(true);
        f.clear();
        assert!(!f.in_outage());
    }
}
