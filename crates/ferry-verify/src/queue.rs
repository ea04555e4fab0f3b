//! The disk-backed recheck queue: an append-only file in the work dir
//! (`<work_dir>/<task>/recheck-<gen>.q`) of `(reason, attempts, read_at, ns, {_id} raw bytes)`
//! records, read from a head offset that only moves past entries that were fully processed. The
//! live part (`len - head`) is capped; when the queue drains, the file is replaced by an empty one
//! of the next generation, so it never grows without bound. An in-memory count per document of the
//! entries still queued tells the recheck whether a later entry will decide (bounded by the cap).
//! Records are small; file access happens under a mutex never held across `.await`.
//!
//! Record: `u32 len | u8 reason | u8 attempts | u64 read_at | u16 ns_len | ns | id_doc`.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::types::OpTime;
use crate::VerifyError;

/// Why a document is queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// It differed when compared.
    Diff = 1,
    /// The source oplog touched it after the verification started.
    Touch = 2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub reason: Reason,
    pub attempts: u8,
    /// Packed `OpTime` after which the destination should have caught up.
    pub read_at: u64,
    pub ns: String,
    pub id: Vec<u8>,
}

const HEADER: usize = 4 + 1 + 1 + 8 + 2;

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let ns = self.ns.as_bytes();
        let len = HEADER + ns.len() + self.id.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.push(self.reason as u8);
        out.push(self.attempts);
        out.extend_from_slice(&self.read_at.to_le_bytes());
        out.extend_from_slice(&(ns.len() as u16).to_le_bytes());
        out.extend_from_slice(ns);
        out.extend_from_slice(&self.id);
        out
    }

    fn decode(rec: &[u8]) -> Option<Self> {
        let reason = match *rec.get(4)? {
            1 => Reason::Diff,
            2 => Reason::Touch,
            _ => return None,
        };
        let attempts = *rec.get(5)?;
        let read_at = u64::from_le_bytes(rec.get(6..14)?.try_into().ok()?);
        let ns_len = usize::from(u16::from_le_bytes(rec.get(14..16)?.try_into().ok()?));
        let ns = std::str::from_utf8(rec.get(16..16 + ns_len)?)
            .ok()?
            .to_string();
        let id = rec.get(16 + ns_len..)?.to_vec();
        Some(Self {
            reason,
            attempts,
            read_at,
            ns,
            id,
        })
    }

    fn key(&self) -> (String, Vec<u8>) {
        (self.ns.clone(), self.id.clone())
    }
}

struct Inner {
    gen: u64,
    writer: File,
    reader: File,
    /// End of the file.
    len: u64,
    /// Everything before `head` was processed.
    head: u64,
    /// Everything before `read_pos` was handed out (processed or in progress).
    read_pos: u64,
    /// One record read but not ready yet.
    peeked: VecDeque<(Entry, u64)>,
    queued: HashMap<(String, Vec<u8>), u32>,
    diffs: HashMap<(String, Vec<u8>), u32>,
    entries: u64,
}

pub(crate) struct RecheckQueue {
    dir: PathBuf,
    cap: u64,
    inner: Mutex<Inner>,
    /// Signalled on every push (one waiter: the recheck loop).
    pub(crate) pushed: Notify,
}

fn qerr(dir: &Path, e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Queue {
        dir: dir.display().to_string(),
        detail: e.to_string(),
    }
}

fn file_path(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("recheck-{gen}.q"))
}

fn open_files(dir: &Path, gen: u64, create: bool) -> Result<(File, File), VerifyError> {
    let path = file_path(dir, gen);
    let writer = OpenOptions::new()
        .create(create)
        .append(true)
        .open(&path)
        .map_err(|e| qerr(dir, format!("{}: {e}", path.display())))?;
    let reader = File::open(&path).map_err(|e| qerr(dir, e))?;
    Ok((writer, reader))
}

impl RecheckQueue {
    /// Opens the queue: a fresh one (`resume == None`: earlier files of this task are removed), or
    /// the one a checkpoint points at (`(gen, head)`), rebuilding the per-document counts.
    pub(crate) fn open(
        dir: &Path,
        cap: u64,
        resume: Option<(u64, u64)>,
    ) -> Result<Self, VerifyError> {
        std::fs::create_dir_all(dir).map_err(|e| qerr(dir, e))?;
        let (gen, head) = match resume {
            Some(pos) => pos,
            None => {
                for ent in std::fs::read_dir(dir).map_err(|e| qerr(dir, e))?.flatten() {
                    let name = ent.file_name();
                    if name.to_string_lossy().starts_with("recheck-") {
                        std::fs::remove_file(ent.path()).map_err(|e| qerr(dir, e))?;
                    }
                }
                (0, 0)
            }
        };
        let exists = file_path(dir, gen).exists();
        if !exists && head > 0 {
            return Err(VerifyError::BadCheckpoint(format!(
                "the recheck queue {} is missing from the work dir",
                file_path(dir, gen).display()
            )));
        }
        let (writer, reader) = open_files(dir, gen, true)?;
        let len = writer.metadata().map_err(|e| qerr(dir, e))?.len();
        if head > len {
            return Err(VerifyError::BadCheckpoint(format!(
                "the recheck queue is shorter ({len} bytes) than the checkpoint's position ({head})"
            )));
        }
        let q = Self {
            dir: dir.to_path_buf(),
            cap,
            inner: Mutex::new(Inner {
                gen,
                writer,
                reader,
                len,
                head,
                read_pos: head,
                peeked: VecDeque::new(),
                queued: HashMap::new(),
                diffs: HashMap::new(),
                entries: 0,
            }),
            pushed: Notify::new(),
        };
        q.rebuild_counts()?;
        Ok(q)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rebuild_counts(&self) -> Result<(), VerifyError> {
        let mut g = self.lock();
        let mut pos = g.head;
        while pos < g.len {
            let (e, next) = self.read_at(&mut g, pos)?;
            count(&mut g, &e, 1);
            pos = next;
        }
        Ok(())
    }

    fn read_at(&self, g: &mut Inner, pos: u64) -> Result<(Entry, u64), VerifyError> {
        g.reader
            .seek(SeekFrom::Start(pos))
            .map_err(|e| qerr(&self.dir, e))?;
        let mut len = [0u8; 4];
        g.reader
            .read_exact(&mut len)
            .map_err(|e| qerr(&self.dir, e))?;
        let n = u32::from_le_bytes(len) as usize;
        if n < HEADER || pos + n as u64 > g.len {
            return Err(qerr(&self.dir, format!("corrupt record at offset {pos}")));
        }
        let mut rec = vec![0u8; n];
        rec[..4].copy_from_slice(&len);
        g.reader
            .read_exact(&mut rec[4..])
            .map_err(|e| qerr(&self.dir, e))?;
        let e = Entry::decode(&rec)
            .ok_or_else(|| qerr(&self.dir, format!("corrupt record at offset {pos}")))?;
        Ok((e, pos + n as u64))
    }

    /// Appends an entry; fails when the live part of the queue would exceed the cap.
    pub(crate) fn push(&self, e: Entry) -> Result<(), VerifyError> {
        let rec = e.encode();
        {
            let mut g = self.lock();
            if g.len - g.head + rec.len() as u64 > self.cap {
                return Err(VerifyError::RecheckQueueFull {
                    cap_bytes: self.cap,
                    dir: self.dir.display().to_string(),
                });
            }
            g.writer
                .write_all(&rec)
                .map_err(|err| qerr(&self.dir, err))?;
            g.len += rec.len() as u64;
            count(&mut g, &e, 1);
        }
        self.pushed.notify_one();
        Ok(())
    }

    /// Hands out up to `max` entries from the head whose `read_at` the applier has passed (all of
    /// them when `applied` is `None`); stops at the first that is not ready.
    pub(crate) fn take_ready(
        &self,
        applied: Option<OpTime>,
        max: usize,
    ) -> Result<Vec<Entry>, VerifyError> {
        let mut g = self.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let next = match g.peeked.pop_front() {
                Some(p) => p,
                None if g.read_pos < g.len => {
                    let pos = g.read_pos;
                    self.read_at(&mut g, pos)?
                }
                None => break,
            };
            let ready = applied.is_none_or(|a| next.0.read_at <= a.pack());
            if !ready {
                g.peeked.push_front(next);
                break;
            }
            g.read_pos = next.1;
            out.push(next.0);
        }
        Ok(out)
    }

    /// Marks the entries handed out by the last `take_ready` as processed; rotates the file when
    /// the queue is empty.
    pub(crate) fn finish(&self, done: &[Entry]) -> Result<(), VerifyError> {
        let mut g = self.lock();
        for e in done {
            count(&mut g, e, -1);
        }
        g.head = g.read_pos;
        if g.head == g.len && g.len > 0 && g.peeked.is_empty() {
            let old = g.gen;
            let (writer, reader) = open_files(&self.dir, old + 1, true)?;
            g.gen = old + 1;
            g.writer = writer;
            g.reader = reader;
            g.len = 0;
            g.head = 0;
            g.read_pos = 0;
            if let Err(e) = std::fs::remove_file(file_path(&self.dir, old)) {
                tracing::debug!(error = %e, "old recheck queue file not removed");
            }
        }
        Ok(())
    }

    /// Other entries for the same document are still queued (besides one being processed).
    pub(crate) fn others_queued(&self, ns: &str, id: &[u8]) -> bool {
        let g = self.lock();
        g.queued
            .get(&(ns.to_string(), id.to_vec()))
            .is_some_and(|n| *n > 1)
    }

    /// `(generation, head)`: the resume position.
    pub(crate) fn position(&self) -> (u64, u64) {
        let g = self.lock();
        (g.gen, g.head)
    }

    /// `(entries queued, distinct documents queued because they differed)`.
    pub(crate) fn sizes(&self) -> (u64, u64) {
        let g = self.lock();
        (g.entries, g.diffs.len() as u64)
    }

    pub(crate) fn is_empty(&self) -> bool {
        let g = self.lock();
        g.head == g.len
    }
}

fn count(g: &mut Inner, e: &Entry, delta: i64) {
    fn bump(map: &mut HashMap<(String, Vec<u8>), u32>, key: (String, Vec<u8>), delta: i64) {
        let n = map.entry(key.clone()).or_insert(0);
        *n = (i64::from(*n) + delta).max(0) as u32;
        if *n == 0 {
            map.remove(&key);
        }
    }
    g.entries = (g.entries as i64 + delta).max(0) as u64;
    bump(&mut g.queued, e.key(), delta);
    if e.reason == Reason::Diff {
        bump(&mut g.diffs, e.key(), delta);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn entry(read_at: u64, id: u8) -> Entry {
        Entry {
            reason: Reason::Diff,
            attempts: 0,
            read_at,
            ns: "db.c".into(),
            id: vec![id],
        }
    }

    fn at(v: u64) -> Option<OpTime> {
        Some(OpTime::unpack(v))
    }

    #[test]
    fn entries_wait_for_the_applier_and_resume_from_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let q = RecheckQueue::open(dir.path(), 1 << 20, None).unwrap();
        q.push(entry(10, 1)).unwrap();
        q.push(entry(20, 2)).unwrap();
        q.push(entry(20, 1)).unwrap();
        assert!(q.others_queued("db.c", &[1]));
        assert_eq!(q.sizes(), (3, 2));
        let got = q.take_ready(at(15), 10).unwrap();
        assert_eq!(got, vec![entry(10, 1)]);
        q.finish(&got).unwrap();
        assert!(!q.others_queued("db.c", &[1]));
        let pos = q.position();
        drop(q);
        // Reopened at the checkpoint's position: the processed entry is not handed out again.
        let q = RecheckQueue::open(dir.path(), 1 << 20, Some(pos)).unwrap();
        assert_eq!(q.sizes(), (2, 2));
        let got = q.take_ready(None, 10).unwrap();
        assert_eq!(got, vec![entry(20, 2), entry(20, 1)]);
        q.finish(&got).unwrap();
        assert!(q.is_empty());
        // Drained: a new generation, the old file is gone.
        assert_eq!(q.position(), (1, 0));
        assert!(!file_path(dir.path(), 0).exists());
    }

    #[test]
    fn the_cap_bounds_the_live_part() {
        let dir = tempfile::tempdir().unwrap();
        let rec = entry(1, 1).encode().len() as u64;
        let q = RecheckQueue::open(dir.path(), rec * 2, None).unwrap();
        q.push(entry(1, 1)).unwrap();
        q.push(entry(1, 2)).unwrap();
        let err = q.push(entry(1, 3)).unwrap_err();
        assert!(matches!(err, VerifyError::RecheckQueueFull { .. }), "{err}");
        let got = q.take_ready(None, 1).unwrap();
        q.finish(&got).unwrap();
        q.push(entry(1, 3)).unwrap();
    }
}
