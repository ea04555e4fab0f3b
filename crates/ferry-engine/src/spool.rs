//! The bounded on-disk oplog spool: the tailer appends raw oplog entries (length-prefixed BSON, so the
//! files are plain concatenated BSON) to numbered segment files in the spool directory; the applier
//! reads them back in order and deletes each segment once consumed. The bytes on disk never exceed the
//! cap: hitting it is an error, never silent loss. Owns only its directory; knows nothing of MongoDB.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::RawDocumentBuf;
use tokio::sync::Notify;

use crate::EngineError;

const SEGMENT_BYTES: u64 = 32 << 20;

#[derive(Debug)]
struct Segment {
    id: u64,
    committed: u64,
    sealed: bool,
}

#[derive(Debug, Default)]
struct State {
    segments: VecDeque<Segment>,
    total: u64,
    written: u64,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    cap: u64,
    state: Mutex<State>,
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update; the counters stay usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Read-only view of the spool's size.
#[derive(Clone, Debug)]
pub(crate) struct SpoolHandle(Arc<Shared>);

impl SpoolHandle {
    /// Bytes currently held on disk (written, not yet consumed).
    pub(crate) fn bytes(&self) -> u64 {
        self.0.lock().total
    }
}

/// Appends entries; one writer per spool.
pub(crate) struct SpoolWriter {
    shared: Arc<Shared>,
    file: Option<BufWriter<File>>,
    seg_id: u64,
    seg_len: u64,
    /// Tests: the append fails with a full disk before writing this entry of its batch.
    #[cfg(test)]
    fail_before_entry: Option<usize>,
}

/// Reads entries in order; one reader per spool.
pub(crate) struct SpoolReader {
    shared: Arc<Shared>,
    seg_id: u64,
    offset: u64,
    file: Option<File>,
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("oplog-{id:010}.bson"))
}

fn io_err(dir: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Spool {
        dir: dir.display().to_string(),
        detail: e.to_string(),
    }
}

/// Creates an empty spool in `dir` (any previous content of the directory's spool files is removed).
pub(crate) fn create(
    dir: &Path,
    cap: u64,
) -> Result<(SpoolWriter, SpoolReader, SpoolHandle), EngineError> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("oplog-") && name.ends_with(".bson") {
            fs::remove_file(entry.path()).map_err(|e| io_err(dir, e))?;
        }
    }
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        cap,
        state: Mutex::new(State::default()),
        notify: Notify::new(),
    });
    let writer = SpoolWriter {
        shared: shared.clone(),
        file: None,
        seg_id: 0,
        seg_len: 0,
        #[cfg(test)]
        fail_before_entry: None,
    };
    let reader = SpoolReader {
        shared: shared.clone(),
        seg_id: 1,
        offset: 0,
        file: None,
    };
    Ok((writer, reader, SpoolHandle(shared)))
}

impl SpoolWriter {
    /// Appends a batch (blocking IO; call from `spawn_blocking` for large batches).
    pub(crate) fn append_blocking(&mut self, docs: &[RawDocumentBuf]) -> Result<(), EngineError> {
        let bytes: u64 = docs.iter().map(|d| d.as_bytes().len() as u64).sum();
        {
            let st = self.shared.lock();
            if st.total + bytes > self.shared.cap {
                return Err(EngineError::SpoolFull {
                    cap_bytes: self.shared.cap,
                    dir: self.shared.dir.display().to_string(),
                });
            }
        }
        let dir = self.shared.dir.clone();
        if self.file.is_none() || self.seg_len >= SEGMENT_BYTES {
            self.rotate()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io_err(&dir, "segment not open"));
        };
        #[cfg(test)]
        let fail_before = self.fail_before_entry;
        let written = docs
            .iter()
            .enumerate()
            .try_for_each(|(_i, d)| {
                #[cfg(test)]
                if fail_before == Some(_i) {
                    return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
                }
                file.write_all(d.as_bytes())
            })
            .and_then(|()| file.flush());
        if let Err(e) = written {
            // Part of the batch may be in the file or in the buffer: cut the segment back to what was committed
            // so that a retry of the whole batch appends right after it (never after half an entry).
            self.discard_uncommitted(&dir)?;
            return Err(match e.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    EngineError::SpoolDiskFull {
                        dir: dir.display().to_string(),
                        detail: e.to_string(),
                    }
                }
                _ => io_err(&dir, e),
            });
        }
        self.seg_len += bytes;
        {
            let mut st = self.shared.lock();
            if let Some(seg) = st.segments.back_mut() {
                seg.committed = self.seg_len;
            }
            st.total += bytes;
            st.written += bytes;
        }
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Drops the buffered bytes of a failed append and truncates the segment to its committed length.
    fn discard_uncommitted(&mut self, dir: &Path) -> Result<(), EngineError> {
        let Some(buffered) = self.file.take() else {
            return Ok(());
        };
        // `into_parts` hands the file back without flushing the buffer (dropping a BufWriter would flush it).
        let (mut file, _unwritten) = buffered.into_parts();
        file.set_len(self.seg_len).map_err(|e| io_err(dir, e))?;
        file.seek(SeekFrom::Start(self.seg_len))
            .map_err(|e| io_err(dir, e))?;
        self.file = Some(BufWriter::with_capacity(1 << 20, file));
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), EngineError> {
        let dir = self.shared.dir.clone();
        self.seg_id += 1;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(seg_path(&dir, self.seg_id))
            .map_err(|e| io_err(&dir, e))?;
        self.file = Some(BufWriter::with_capacity(1 << 20, file));
        self.seg_len = 0;
        let mut st = self.shared.lock();
        if let Some(prev) = st.segments.back_mut() {
            prev.sealed = true;
        }
        st.segments.push_back(Segment {
            id: self.seg_id,
            committed: 0,
            sealed: false,
        });
        Ok(())
    }
}

impl SpoolReader {
    /// Returns up to `max_bytes` of entries (at least one when any is available), waiting up to `wait`
    /// for data; an empty vector means nothing arrived in time.
    pub(crate) async fn read(
        mut self,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<(Self, Vec<RawDocumentBuf>), EngineError> {
        if !self.has_data() {
            let notified = self.shared.notify.notified();
            if !self.has_data() {
                let _ = tokio::time::timeout(wait, notified).await;
            }
        }
        let dir = self.shared.dir.clone();
        let res = tokio::task::spawn_blocking(move || {
            let r = self.read_blocking(max_bytes);
            r.map(|docs| (self, docs))
        })
        .await;
        match res {
            Ok(v) => v,
            Err(e) => Err(io_err(&dir, format!("spool reader task failed: {e}"))),
        }
    }

    fn has_data(&self) -> bool {
        let st = self.shared.lock();
        match st.segments.iter().find(|s| s.id == self.seg_id) {
            Some(seg) => seg.committed > self.offset || seg.sealed,
            None => false,
        }
    }

    fn read_blocking(&mut self, max_bytes: usize) -> Result<Vec<RawDocumentBuf>, EngineError> {
        let dir = self.shared.dir.clone();
        let mut out = Vec::new();
        let mut got = 0usize;
        loop {
            let (committed, sealed) = {
                let st = self.shared.lock();
                match st.segments.iter().find(|s| s.id == self.seg_id) {
                    Some(seg) => (seg.committed, seg.sealed),
                    None => return Ok(out),
                }
            };
            if self.offset >= committed {
                if !sealed {
                    return Ok(out);
                }
                // Segment fully consumed: delete it and move on.
                self.file = None;
                let path = seg_path(&dir, self.seg_id);
                fs::remove_file(&path).map_err(|e| io_err(&dir, e))?;
                {
                    let mut st = self.shared.lock();
                    st.segments.retain(|s| s.id != self.seg_id);
                    st.total = st.total.saturating_sub(committed);
                }
                self.seg_id += 1;
                self.offset = 0;
                continue;
            }
            if got >= max_bytes {
                return Ok(out);
            }
            if self.file.is_none() {
                let mut f = File::open(seg_path(&dir, self.seg_id)).map_err(|e| io_err(&dir, e))?;
                f.seek(SeekFrom::Start(self.offset))
                    .map_err(|e| io_err(&dir, e))?;
                self.file = Some(f);
            }
            let Some(file) = self.file.as_mut() else {
                return Ok(out);
            };
            let want = ((committed - self.offset) as usize)
                .min(max_bytes.saturating_sub(got).max(64 << 10));
            let mut region = vec![0u8; want];
            file.read_exact(&mut region).map_err(|e| io_err(&dir, e))?;
            let mut pos = 0usize;
            while pos + 4 <= region.len() {
                let len = i32::from_le_bytes([
                    region[pos],
                    region[pos + 1],
                    region[pos + 2],
                    region[pos + 3],
                ]);
                let len =
                    usize::try_from(len).map_err(|_| io_err(&dir, "corrupt spool entry length"))?;
                if len < 5 || pos + len > region.len() {
                    break;
                }
                let doc = RawDocumentBuf::from_bytes(region[pos..pos + len].to_vec())
                    .map_err(|e| io_err(&dir, format!("corrupt spool entry: {e}")))?;
                out.push(doc);
                pos += len;
            }
            if pos == 0 {
                // A single entry larger than the region: read exactly that entry.
                let Some(prefix) = region.get(..4) else {
                    return Err(io_err(
                        &dir,
                        format!(
                            "corrupt spool entry: {} bytes at the end of the segment are too short for an entry",
                            region.len()
                        ),
                    ));
                };
                let len = i32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
                let len =
                    usize::try_from(len).map_err(|_| io_err(&dir, "corrupt spool entry length"))?;
                if len < 5 || self.offset + len as u64 > committed {
                    return Err(io_err(&dir, "corrupt spool entry length"));
                }
                let mut buf = region;
                buf.resize(len, 0);
                file.read_exact(&mut buf[want..])
                    .map_err(|e| io_err(&dir, e))?;
                let doc = RawDocumentBuf::from_bytes(buf)
                    .map_err(|e| io_err(&dir, format!("corrupt spool entry: {e}")))?;
                out.push(doc);
                pos = len;
            } else if pos < want {
                // Rewind the partial tail so the next read starts on an entry boundary.
                file.seek(SeekFrom::Current(-((want - pos) as i64)))
                    .map_err(|e| io_err(&dir, e))?;
            }
            self.offset += pos as u64;
            got += pos;
        }
    }
}

/// Fuzzing hook: `bytes` as the committed content of a spool segment (what a crash or a bad disk could leave),
/// read back in chunks of every size until the reader stops or errs. Must never panic or allocate unboundedly.
pub(crate) fn fuzz_segment(bytes: &[u8]) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ferry-fuzz-spool-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let Ok((mut writer, mut reader, _)) = create(&dir, u64::MAX) else {
        return;
    };
    if writer.rotate().is_ok() {
        if let Some(file) = writer.file.as_mut() {
            if file.write_all(bytes).and_then(|()| file.flush()).is_ok() {
                let mut st = writer.shared.lock();
                if let Some(seg) = st.segments.back_mut() {
                    seg.committed = bytes.len() as u64;
                    seg.sealed = true;
                }
                st.total += bytes.len() as u64;
            }
        }
        for max in [1usize, 64, 4096, usize::MAX] {
            match reader.read_blocking(max) {
                Ok(docs) if !docs.is_empty() => continue,
                _ => break,
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, Document};

    fn raw(i: i32, pad: usize) -> RawDocumentBuf {
        RawDocumentBuf::try_from(&doc! {"i": i, "pad": "x".repeat(pad)}).unwrap()
    }

    #[test]
    fn torn_and_corrupted_segments_are_errors_never_panics() {
        // Found by the spool_segment fuzz target: a 2-byte torn tail panicked on the length prefix.
        let entry = raw(1, 10);
        let whole = entry.as_bytes().to_vec();
        for bytes in [
            vec![0x2b, 0xf8],
            whole[..whole.len() / 2].to_vec(),
            [whole.clone(), vec![0x01]].concat(),
            0x7fff_ffff_i32.to_le_bytes().to_vec(),
            (-5_i32).to_le_bytes().to_vec(),
            vec![0xff; 300],
        ] {
            fuzz_segment(&bytes);
        }
        // And a reader reports the torn tail as an error (the task fails; a resume refetches from the source).
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, mut reader, _) = create(dir.path(), u64::MAX).unwrap();
        writer.rotate().unwrap();
        let torn = [whole.clone(), vec![0x2b, 0xf8]].concat();
        let file = writer.file.as_mut().unwrap();
        file.write_all(&torn).unwrap();
        file.flush().unwrap();
        {
            let mut st = writer.shared.lock();
            let seg = st.segments.back_mut().unwrap();
            seg.committed = torn.len() as u64;
            seg.sealed = true;
        }
        let err = reader.read_blocking(usize::MAX).unwrap_err().to_string();
        assert!(err.contains("corrupt spool entry"), "{err}");
    }

    #[tokio::test]
    async fn a_failed_append_leaves_no_torn_entry_and_its_retry_reads_back_whole() {
        // A full disk in the middle of a batch whose first entry (2 MiB, larger than the write buffer) already
        // reached the file: the segment is cut back to its committed length, the error says the disk is full,
        // and the retried batch follows the earlier entries with no garbage in between (issue #12, chaos).
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r, h) = create(dir.path(), 1 << 30).unwrap();
        w.append_blocking(&[raw(0, 10)]).unwrap();
        let committed = w.seg_len;
        let batch = [raw(1, 2 << 20), raw(2, 10)];
        w.fail_before_entry = Some(1);
        let err = w.append_blocking(&batch).unwrap_err();
        assert!(matches!(err, EngineError::SpoolDiskFull { .. }), "{err}");
        assert!(err.resumable());
        assert!(err.to_string().contains("free space"), "{err}");
        let on_disk = fs::metadata(seg_path(dir.path(), w.seg_id)).unwrap().len();
        assert_eq!(on_disk, committed, "the torn part of the batch was cut off");
        assert_eq!(h.bytes(), committed);
        w.fail_before_entry = None;
        w.append_blocking(&batch).unwrap();
        let mut seen = Vec::new();
        loop {
            let (r2, got) = r.read(usize::MAX, Duration::from_millis(10)).await.unwrap();
            r = r2;
            if got.is_empty() {
                break;
            }
            for d in got {
                seen.push(Document::try_from(d).unwrap().get_i32("i").unwrap());
            }
        }
        assert_eq!(seen, [0, 1, 2]);
    }

    #[tokio::test]
    async fn entries_come_back_in_order_and_segments_are_freed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r, h) = create(dir.path(), 1 << 30).unwrap();
        let mut n = 0;
        for batch in 0..10 {
            let docs: Vec<_> = (0..100)
                .map(|k| raw(batch * 100 + k, 10 + (k as usize * 37) % 300))
                .collect();
            w.append_blocking(&docs).unwrap();
        }
        assert!(h.bytes() > 0);
        loop {
            let (r2, got) = r.read(4096, Duration::from_millis(10)).await.unwrap();
            r = r2;
            if got.is_empty() {
                break;
            }
            for d in got {
                let d = Document::try_from(d).unwrap();
                assert_eq!(d.get_i32("i").unwrap(), n);
                n += 1;
            }
        }
        assert_eq!(n, 1000);
        assert_eq!(h.bytes(), w.seg_len);
    }

    #[test]
    fn cap_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _r, _h) = create(dir.path(), 1000).unwrap();
        w.append_blocking(&[raw(1, 500)]).unwrap();
        let err = w.append_blocking(&[raw(2, 500)]).unwrap_err();
        assert!(matches!(err, EngineError::SpoolFull { .. }), "{err}");
        assert!(err.to_string().contains("spool cap"));
    }

    #[tokio::test]
    async fn reader_waits_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, r, _h) = create(dir.path(), 1 << 20).unwrap();
        let reader =
            tokio::spawn(
                async move { r.read(1 << 20, Duration::from_secs(10)).await.map(|x| x.1) },
            );
        tokio::task::yield_now().await;
        w.append_blocking(&[raw(7, 3)]).unwrap();
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
    }
}
