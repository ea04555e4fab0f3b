//! Accounting of transient failures: every retry is counted (`ProgressSnapshot::retries`), and an
//! operation that has been failing for more than `NOTE_AFTER` is reported once per outage of its side as
//! an `EngineEvent::Note` of kind `"retry"`, with an error summary that carries no credentials.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::mongo::Side;
use crate::types::EngineEvent;

/// How long an operation fails before the operator hears of it.
pub(crate) const NOTE_AFTER: Duration = Duration::from_secs(5);
/// Longest error summary in a note.
const SUMMARY_CHARS: usize = 300;

#[derive(Debug, Default)]
struct Outage {
    /// A note was sent for the current outage.
    noted: bool,
    /// When the last noted outage ended: operations failing since before then belong to it.
    recovered_at: Option<Instant>,
}

/// Retry accounting of one migration (shared by all its operations).
#[derive(Debug)]
pub(crate) struct Retries {
    count: AtomicU64,
    events: Option<mpsc::Sender<EngineEvent>>,
    /// Strings never to show (the endpoints' passwords).
    secrets: Vec<String>,
    /// Per side: source, destination.
    sides: Mutex<[Outage; 2]>,
}

fn idx(side: Side) -> usize {
    match side {
        Side::Source => 0,
        Side::Destination => 1,
    }
}

impl Retries {
    /// Accounting that sends notes to `events`; `secrets` are redacted from error summaries.
    pub(crate) fn new(events: Option<mpsc::Sender<EngineEvent>>, secrets: Vec<String>) -> Self {
        Self {
            count: AtomicU64::new(0),
            events,
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
            sides: Mutex::new(Default::default()),
        }
    }

    /// Accounting outside a migration: counts, never notes.
    pub(crate) fn detached() -> Self {
        Self::new(None, Vec::new())
    }

    fn lock(&self) -> MutexGuard<'_, [Outage; 2]> {
        self.sides.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Transient failures retried so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// A transient failure on `side` about to be retried; the operation has been failing since
    /// `failing_since`. Sends the outage's note once it has lasted more than `NOTE_AFTER`.
    pub(crate) async fn failed(
        &self,
        side: Side,
        failing_since: Instant,
        budget: Duration,
        error: &(dyn std::fmt::Display + Sync),
    ) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let Some(events) = &self.events else { return };
        let Some(detail) = self.note(side, failing_since, budget, error) else {
            return;
        };
        tracing::warn!(side = side.name(), %detail, "long outage");
        let _ = events
            .send(EngineEvent::Note {
                kind: "retry".into(),
                detail,
            })
            .await;
    }

    /// The note to send for this failure, if it is the first of its outage to last past `NOTE_AFTER`.
    fn note(
        &self,
        side: Side,
        failing_since: Instant,
        budget: Duration,
        error: &(dyn std::fmt::Display + Sync),
    ) -> Option<String> {
        let failing = failing_since.elapsed();
        if failing <= NOTE_AFTER {
            return None;
        }
        {
            let mut sides = self.lock();
            let o = &mut sides[idx(side)];
            if o.noted || o.recovered_at.is_some_and(|r| failing_since < r) {
                return None;
            }
            o.noted = true;
        }
        Some(format!(
            "{} unreachable for {} s, retrying (budget {} s): {}",
            side.name(),
            failing.as_secs(),
            budget.as_secs(),
            self.summary(error)
        ))
    }

    /// An operation on `side` that had failed succeeded: the side's outage, if noted, is over.
    pub(crate) fn recovered(&self, side: Side) {
        let mut sides = self.lock();
        let o = &mut sides[idx(side)];
        if o.noted {
            o.noted = false;
            o.recovered_at = Some(Instant::now());
            tracing::info!(side = side.name(), "reachable again");
        }
    }

    /// The error's message without credentials (passwords, user info in URIs), shortened.
    fn summary(&self, error: &(dyn std::fmt::Display + Sync)) -> String {
        let mut s = strip_userinfo(&error.to_string());
        for secret in &self.secrets {
            s = s.replace(secret.as_str(), "<redacted>");
        }
        if s.chars().count() > SUMMARY_CHARS {
            s = s.chars().take(SUMMARY_CHARS).collect::<String>() + "…";
        }
        s
    }
}

/// `scheme://user:password@host` becomes `scheme://<redacted>@host`.
fn strip_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c.is_whitespace() || c == ',' || c == '"')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("<redacted>");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn long_ago() -> Instant {
        Instant::now() - Duration::from_secs(6)
    }

    #[tokio::test]
    async fn a_long_outage_is_noted_once_and_counted_every_time() {
        let (tx, mut rx) = mpsc::channel(16);
        let r = Retries::new(Some(tx), vec!["hunter2".into()]);
        let budget = Duration::from_secs(120);
        let err = "connection refused to mongodb://root:hunter2@10.0.0.1:27017/?x=1 (pw hunter2)";
        // Failing for less than 5 s: counted, not noted.
        r.failed(Side::Destination, Instant::now(), budget, &err)
            .await;
        assert!(rx.try_recv().is_err());
        // Past 5 s: one note for the outage, however many operations fail.
        let since = long_ago();
        r.failed(Side::Destination, since, budget, &err).await;
        r.failed(Side::Destination, since, budget, &err).await;
        r.failed(Side::Destination, long_ago(), budget, &err).await;
        let Ok(EngineEvent::Note { kind, detail }) = rx.try_recv() else {
            panic!("no note")
        };
        assert_eq!(kind, "retry");
        assert!(
            detail.starts_with("destination unreachable for 6 s, retrying (budget 120 s): "),
            "{detail}"
        );
        assert!(
            !detail.contains("hunter2") && !detail.contains("root"),
            "{detail}"
        );
        assert!(detail.contains("10.0.0.1:27017"), "{detail}");
        assert!(rx.try_recv().is_err(), "one note per outage");
        // The other side has its own outages.
        r.failed(Side::Source, long_ago(), budget, &"timeout").await;
        assert!(
            matches!(rx.try_recv(), Ok(EngineEvent::Note { detail, .. }) if detail.starts_with("source unreachable"))
        );
        // Recovered: an operation still failing since before belongs to the old outage; a new one is noted.
        r.recovered(Side::Destination);
        r.failed(Side::Destination, since, budget, &err).await;
        assert!(rx.try_recv().is_err());
        let later = Instant::now();
        r.failed(Side::Destination, later, budget, &err).await;
        assert!(rx.try_recv().is_err(), "not failing for 5 s yet");
        assert_eq!(r.count(), 7);
    }

    #[test]
    fn a_new_outage_after_recovery_is_noted_again() {
        let r = Retries::detached();
        let budget = Duration::from_secs(60);
        assert!(r.note(Side::Source, long_ago(), budget, &"x").is_some());
        assert!(r.note(Side::Source, long_ago(), budget, &"x").is_none());
        r.recovered(Side::Source);
        // Failing since after the recovery (simulated by a recovery in the past).
        r.lock()[0].recovered_at = Some(Instant::now() - Duration::from_secs(60));
        assert!(r.note(Side::Source, long_ago(), budget, &"x").is_some());
    }

    #[test]
    fn userinfo_is_stripped_from_uris() {
        assert_eq!(
            strip_userinfo("a mongodb://u:p@h:1/db b"),
            "a mongodb://<redacted>@h:1/db b"
        );
        assert_eq!(strip_userinfo("mongodb://h:1/"), "mongodb://h:1/");
        assert_eq!(
            strip_userinfo("x://a@b, y://c:d@e"),
            "x://<redacted>@b, y://<redacted>@e"
        );
        assert_eq!(strip_userinfo("no uri"), "no uri");
    }
}
