//! Server-side cursors: materialised result sets and tailable oplog cursors.
//!
//! Owns cursor ids, batching (101 documents first, 16 MiB per batch) and the oplog cursor
//! position used to detect `CappedPositionLost`. It must not evaluate queries beyond the
//! filter it is given.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{Document, RawDocumentBuf};

/// Default number of documents in a first batch.
pub const DEFAULT_FIRST_BATCH: usize = 101;
/// Batch byte budget.
pub const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// What a cursor iterates.
#[derive(Debug)]
pub enum Source {
    /// A materialised result set.
    Docs(VecDeque<Arc<RawDocumentBuf>>),
    /// A tailable cursor on `local.oplog.rs`.
    Oplog {
        /// `ts` key of the last entry examined.
        last: u64,
        /// Filter applied to entries.
        filter: Document,
        /// Whether getMore waits for new entries.
        await_data: bool,
        /// `readConcern: majority`: entries after the majority commit point stay hidden.
        majority: bool,
    },
}

/// One open cursor.
#[derive(Debug)]
pub struct Cursor {
    /// Namespace.
    pub ns: String,
    /// Source.
    pub source: Source,
    /// Remaining documents allowed by `limit`.
    pub remaining: Option<usize>,
    /// Owner (authenticated user), if any.
    pub user: Option<String>,
    /// `noCursorTimeout`: never reaped while idle.
    pub no_timeout: bool,
}

/// The cursor table.
#[derive(Debug, Default)]
pub struct Cursors {
    map: HashMap<i64, (Cursor, Instant)>,
    next: i64,
}

/// Idle time after which a cursor is closed (`cursorTimeoutMillis`, 10 minutes).
pub const CURSOR_TIMEOUT: Duration = Duration::from_secs(600);

impl Cursors {
    /// Registers a cursor; returns its id (never 0, always positive).
    pub fn insert(&mut self, c: Cursor) -> i64 {
        if self.next == 0 {
            self.next = 1_000_000 + i64::from(rand::random::<u32>());
        }
        let now = Instant::now();
        self.map
            .retain(|_, (c, used)| c.no_timeout || now.duration_since(*used) < CURSOR_TIMEOUT);
        self.next += 1;
        self.map.insert(self.next, (c, now));
        self.next
    }

    /// Takes a cursor out (put it back with `put` while still open).
    pub fn take(&mut self, id: i64) -> Option<Cursor> {
        self.map.remove(&id).map(|(c, _)| c)
    }

    /// Puts a cursor back under its id.
    pub fn put(&mut self, id: i64, c: Cursor) {
        self.map.insert(id, (c, Instant::now()));
    }

    /// Closes every cursor (a rollback).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Removes a cursor; `true` when it existed.
    pub fn kill(&mut self, id: i64) -> bool {
        self.map.remove(&id).is_some()
    }

    /// Number of open cursors.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// Splits off one batch from a materialised source.
pub fn next_batch(
    docs: &mut VecDeque<Arc<RawDocumentBuf>>,
    max_docs: usize,
) -> (Vec<Arc<RawDocumentBuf>>, usize) {
    let mut out = Vec::new();
    let mut bytes = 0;
    while out.len() < max_docs {
        let Some(front) = docs.front() else { break };
        let len = front.as_bytes().len();
        if !out.is_empty() && bytes + len > BATCH_BYTES {
            break;
        }
        bytes += len;
        if let Some(d) = docs.pop_front() {
            out.push(d);
        }
    }
    (out, bytes)
}
