//! The capped `local.oplog.rs` collection and the cluster clock that stamps it.
//!
//! Owns timestamp allocation (strictly increasing `ts`), the capped entry queue (old entries
//! roll off by size) and change notification for tailing cursors. It must not build entries
//! from commands (that is `store`'s job) or answer queries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bson::{RawDocumentBuf, Timestamp};

/// Election term written into `t` and `electionId`.
pub const TERM: i64 = 1;

/// Hands out strictly increasing cluster times.
#[derive(Debug, Clone)]
pub struct Clock {
    last: Timestamp,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock that has not ticked yet.
    pub fn new() -> Self {
        Self {
            last: Timestamp {
                time: 0,
                increment: 0,
            },
        }
    }

    /// The newest timestamp handed out (the cluster time).
    pub fn now(&self) -> Timestamp {
        self.last
    }

    /// Allocates the next timestamp: wall-clock seconds, counter within the second.
    pub fn tick(&mut self) -> Timestamp {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.tick_at(secs)
    }

    /// Like [`Clock::tick`] with the wall-clock seconds already read.
    pub fn tick_at(&mut self, secs: u64) -> Timestamp {
        let secs = u32::try_from(secs).unwrap_or(u32::MAX);
        self.last = if secs > self.last.time {
            Timestamp {
                time: secs,
                increment: 1,
            }
        } else {
            Timestamp {
                time: self.last.time,
                increment: self.last.increment.saturating_add(1),
            }
        };
        self.last
    }
}

/// Orders timestamps like the server (seconds, then increment).
pub fn ts_key(ts: Timestamp) -> u64 {
    (u64::from(ts.time) << 32) | u64::from(ts.increment)
}

/// One stored oplog entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The entry's `ts`.
    pub ts: Timestamp,
    /// Wall clock of the entry, ms since the epoch.
    pub wall_ms: i64,
    /// The encoded entry.
    pub doc: Arc<RawDocumentBuf>,
}

/// The capped oplog.
#[derive(Debug)]
pub struct Oplog {
    entries: VecDeque<Entry>,
    bytes: usize,
    cap_bytes: usize,
    changed_tx: tokio::sync::watch::Sender<u64>,
    /// While a batch is open, the newest unannounced entry (announced when it closes).
    deferred: Option<Option<u64>>,
}

impl Oplog {
    /// An empty oplog capped at `cap_bytes`.
    pub fn new(cap_bytes: usize) -> Self {
        let (changed_tx, _) = tokio::sync::watch::channel(0);
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            cap_bytes: cap_bytes.max(4096),
            changed_tx,
            deferred: None,
        }
    }

    /// Appends an entry and truncates the oldest ones beyond the cap (never the newest).
    pub fn push(&mut self, entry: Entry) {
        self.bytes += entry.doc.as_bytes().len();
        let key = ts_key(entry.ts);
        self.entries.push_back(entry);
        while self.bytes > self.cap_bytes && self.entries.len() > 1 {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.doc.as_bytes().len();
            }
        }
        match &mut self.deferred {
            Some(pending) => *pending = Some(key),
            None => {
                self.changed_tx.send_replace(key);
            }
        }
    }

    /// Starts a batch: appends are announced to tailing cursors once, when it ends. Readers
    /// only see entries after the store lock is released anyway, so one wake-up per batch is
    /// equivalent to one per entry.
    pub fn begin_batch(&mut self) {
        if self.deferred.is_none() {
            self.deferred = Some(None);
        }
    }

    /// Ends a batch and announces its newest entry.
    pub fn end_batch(&mut self) {
        if let Some(Some(key)) = self.deferred.take() {
            self.changed_tx.send_replace(key);
        }
    }

    /// Removes every entry with `ts` after `key` (a rollback); returns how many.
    pub fn truncate_after(&mut self, key: u64) -> usize {
        let keep = self.position_after(key, false);
        let mut n = 0;
        while self.entries.len() > keep {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= e.doc.as_bytes().len();
                n += 1;
            }
        }
        n
    }

    /// A receiver that changes whenever an entry is appended.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed_tx.subscribe()
    }

    /// Oldest retained entry.
    pub fn first(&self) -> Option<&Entry> {
        self.entries.front()
    }

    /// Newest entry.
    pub fn last(&self) -> Option<&Entry> {
        self.entries.back()
    }

    /// Number of retained entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total encoded size of the retained entries.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The configured cap in bytes.
    pub fn cap_bytes(&self) -> usize {
        self.cap_bytes
    }

    /// Index of the first entry with `ts > after` (or `>=` when `inclusive`).
    pub fn position_after(&self, after: u64, inclusive: bool) -> usize {
        self.entries.partition_point(|e| {
            let k = ts_key(e.ts);
            if inclusive {
                k < after
            } else {
                k <= after
            }
        })
    }

    /// Entries from index `from` on.
    pub fn iter_from(&self, from: usize) -> impl DoubleEndedIterator<Item = &Entry> {
        self.entries.range(from.min(self.entries.len())..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(clock: &mut Clock, size: usize) -> Entry {
        let ts = clock.tick();
        let mut d = bson::Document::new();
        d.insert("ts", ts);
        d.insert("pad", "x".repeat(size));
        Entry {
            ts,
            wall_ms: 0,
            doc: Arc::new(RawDocumentBuf::try_from(&d).unwrap()),
        }
    }

    #[test]
    fn clock_is_strictly_increasing() {
        let mut c = Clock::new();
        let mut prev = 0;
        for _ in 0..10_000 {
            let k = ts_key(c.tick());
            assert!(k > prev);
            prev = k;
        }
    }

    #[test]
    fn capped_oplog_rolls_off_oldest() {
        let mut c = Clock::new();
        let mut o = Oplog::new(4096);
        for _ in 0..100 {
            o.push(entry(&mut c, 100));
        }
        assert!(o.bytes() <= 4096);
        assert!(o.len() < 100);
        let first = ts_key(o.first().unwrap().ts);
        assert_eq!(o.position_after(first, true), 0);
        assert_eq!(o.position_after(first, false), 1);
    }
}
