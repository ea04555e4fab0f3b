//! Connected agent sessions: who is connected, and the outbound queue of each session. One struct behind a std
//! mutex that is never held across `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ferry_core::{AgentId, AgentRecord};
use ferry_proto::v1::CoordinatorMessage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Outbound queue of a session, as consumed by the gRPC response stream.
pub type Outbound = mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>;

struct Session {
    id: u64,
    record: AgentRecord,
    outbound: Outbound,
    cancel: CancellationToken,
}

/// Why a command could not be queued to an agent.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    NotConnected,
    /// The session queue is full or closed: the session was cancelled so the agent reconnects and gets every
    /// command re-sent with a new epoch.
    SessionDropped,
}

/// The registry of connected agents.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<AgentId, Session>>,
    next_id: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, Session>> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a session and returns its id, or `None` when the agent already has a live session: one session
    /// per agent, a second one is refused (never swapped in).
    pub fn register(
        &self,
        record: AgentRecord,
        outbound: Outbound,
        cancel: CancellationToken,
    ) -> Option<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut sessions = self.lock();
        if sessions.contains_key(&record.agent_id) {
            return None;
        }
        sessions.insert(
            record.agent_id.clone(),
            Session {
                id,
                record,
                outbound,
                cancel,
            },
        );
        Some(id)
    }

    /// Ends the agent's live session, if any (revocation).
    pub fn cancel(&self, agent_id: &AgentId) {
        if let Some(session) = self.lock().get(agent_id) {
            session.cancel.cancel();
        }
    }

    /// Removes a session if it is still the current one for its agent; returns whether it was.
    pub fn unregister(&self, agent_id: &AgentId, session_id: u64) -> bool {
        let mut sessions = self.lock();
        if sessions.get(agent_id).is_some_and(|s| s.id == session_id) {
            sessions.remove(agent_id);
            return true;
        }
        false
    }

    pub fn is_connected(&self, agent_id: &AgentId) -> bool {
        self.lock().contains_key(agent_id)
    }

    /// Whether `session_id` is the current session of `agent_id`.
    pub fn is_current(&self, agent_id: &AgentId, session_id: u64) -> bool {
        self.lock()
            .get(agent_id)
            .is_some_and(|s| s.id == session_id)
    }

    /// Identities of the connected agents.
    pub fn connected(&self) -> Vec<AgentRecord> {
        self.lock().values().map(|s| s.record.clone()).collect()
    }

    /// Queues a message to an agent without waiting.
    pub fn send(&self, agent_id: &AgentId, msg: CoordinatorMessage) -> Result<(), SendError> {
        let sessions = self.lock();
        let session = sessions.get(agent_id).ok_or(SendError::NotConnected)?;
        if session.outbound.try_send(Ok(msg)).is_err() {
            tracing::warn!(%agent_id, "agent session queue full or closed: dropping the session");
            session.cancel.cancel();
            return Err(SendError::SessionDropped);
        }
        Ok(())
    }

    /// Cancels every session (shutdown).
    pub fn cancel_all(&self) {
        for s in self.lock().values() {
            s.cancel.cancel();
        }
    }
}
