//! The shared state of one running migration: clients, cancellation, the persisted plan
//! (`EngineState` behind a std mutex never held across `.await`), live counters, and the helpers that
//! emit checkpoints and progress events. No migration logic lives here.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mongodb::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::figures::{self, RateWindow, Rates, RATE_WINDOW};
use crate::mongo::Policy;
use crate::oplog::NsFilter;
use crate::retries::Retries;
use crate::spool::SpoolHandle;
use crate::state::EngineState;
use crate::throttle::Limiter;
use crate::types::{
    Checkpoint, CollectionProgress, EngineEvent, MigrationConfig, OpTime, Phase, ProgressSnapshot,
};
use crate::EngineError;

#[derive(Debug, Default)]
pub(crate) struct CollCounters {
    pub docs: AtomicU64,
    pub bytes: AtomicU64,
    pub ranges_done: AtomicU32,
}

#[derive(Debug, Default)]
pub(crate) struct Live {
    pub phase: Mutex<Option<Phase>>,
    pub colls: Mutex<Vec<Arc<CollCounters>>>,
    pub indexes_built: AtomicU32,
    pub indexes_total: AtomicU32,
    /// Oplog entries of the task's databases applied past the start (or resume) point.
    pub applied: AtomicU64,
    /// Oplog entries of the task's databases spooled past the start (or resume) point (counted like
    /// `applied`, from the same base after a restart).
    pub read: AtomicU64,
    /// The source's oldest oplog entry (packed), polled now and then; 0 = not known yet.
    pub source_oldest: AtomicU64,
    /// Packed OpTime (seconds << 32 | increment); 0 = none.
    pub last_applied: AtomicU64,
    pub source_newest: AtomicU64,
    /// The source's majority commit point (packed); `MAJORITY_UNKNOWN` before the first poll,
    /// `MAJORITY_UNBOUNDED` when the source does not report one.
    pub majority: AtomicU64,
}

pub(crate) const MAJORITY_UNKNOWN: u64 = 0;
pub(crate) const MAJORITY_UNBOUNDED: u64 = u64::MAX;

/// How far the applier may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Majority {
    /// Not read yet: apply nothing.
    Unknown,
    /// The source reports no majority point (apply everything read).
    Unbounded,
    At(OpTime),
}

pub(crate) fn pack(t: OpTime) -> u64 {
    (u64::from(t.seconds) << 32) | u64::from(t.increment)
}

pub(crate) fn unpack(v: u64) -> Option<OpTime> {
    (v != 0).then_some(OpTime {
        seconds: (v >> 32) as u32,
        increment: v as u32,
    })
}

pub(crate) struct Ctx {
    pub cfg: MigrationConfig,
    pub src: Client,
    pub dst: Client,
    /// Cancelled by the operator (stop) or internally on the first fatal error.
    pub cancel: CancellationToken,
    pub control: crate::types::MigrationControl,
    pub failure: Mutex<Option<EngineError>>,
    pub events: mpsc::Sender<EngineEvent>,
    pub state: Mutex<EngineState>,
    pub filter: NsFilter,
    pub start_ts: OpTime,
    pub live: Live,
    pub spool: Mutex<Option<SpoolHandle>>,
    pub max_batch_docs: usize,
    pub max_batch_bytes: usize,
    /// Retry accounting (counts, long-outage notes).
    pub retries: Arc<Retries>,
    /// Copy throttle (documents and bytes read from the source), shared by all copy workers.
    pub copy_limit: Limiter,
    /// Apply throttle (entries and bytes written to the destination), shared by all apply workers.
    pub apply_limit: Limiter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    pub(crate) fn state(&self) -> MutexGuard<'_, EngineState> {
        lock(&self.state)
    }

    /// Namespaces of the planned collections, in plan order.
    pub(crate) fn planned_namespaces(&self) -> Vec<String> {
        self.state()
            .collections
            .iter()
            .map(|c| c.ns.clone())
            .collect()
    }

    /// Records the first fatal error and cancels every task of the migration.
    pub(crate) fn fail(&self, error: EngineError) {
        let mut f = lock(&self.failure);
        if f.is_none() {
            tracing::error!(task_id = %self.cfg.task_id, %error, "migration failed");
            *f = Some(error);
        }
        self.cancel.cancel();
    }

    /// Runs `cmd` on the destination database `db`, retrying transient failures within the task's retry budget.
    pub(crate) async fn dst_command(
        &self,
        db: &str,
        cmd: mongodb::bson::Document,
    ) -> Result<Option<mongodb::bson::Document>, crate::mongo::RetryError> {
        crate::mongo::command(
            &self.dst,
            self.policy(),
            crate::mongo::Side::Destination,
            db,
            cmd,
        )
        .await
    }

    /// Like `dst_command` for a command built from raw BSON (oplog payloads are never decoded).
    pub(crate) async fn dst_raw_command(
        &self,
        db: &str,
        cmd: mongodb::bson::RawDocumentBuf,
    ) -> Result<Option<mongodb::bson::Document>, crate::mongo::RetryError> {
        crate::mongo::raw_command(
            &self.dst,
            self.policy(),
            crate::mongo::Side::Destination,
            db,
            cmd,
        )
        .await
    }

    /// How long transient failures are retried without progress (`tuning.retry_budget`).
    pub(crate) fn retry_budget(&self) -> std::time::Duration {
        self.cfg.tuning.retry_budget
    }

    /// The retry policy of the migration's operations (cancelled with the migration).
    pub(crate) fn policy(&self) -> Policy<'_> {
        Policy {
            cancel: &self.cancel,
            budget: self.retry_budget(),
            retries: &self.retries,
        }
    }

    /// Waits while the migration is paused; `false` when it was cancelled.
    pub(crate) async fn wait_unpaused(&self) -> bool {
        self.control.wait_unpaused(&self.cancel).await
    }

    /// The oldest oplog position a restart from a checkpoint taken now would read again: the apply
    /// start point (the last applied entry in OPLOG_SYNC, the start point before), or earlier for
    /// transactions open there.
    pub(crate) fn resume_point(&self) -> OpTime {
        let from = match self.phase() {
            Phase::OplogSync => self.last_applied().unwrap_or(self.start_ts),
            _ => self.start_ts,
        };
        match self.state().fetch_from.map(crate::state::optime) {
            Some(f) => f.min(from),
            None => from,
        }
    }

    pub(crate) fn take_failure(&self) -> Option<EngineError> {
        lock(&self.failure).take()
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        *lock(&self.live.phase) = Some(phase);
    }

    pub(crate) fn phase(&self) -> Phase {
        lock(&self.live.phase).unwrap_or(Phase::DataSync)
    }

    pub(crate) fn counters(&self, idx: usize) -> Arc<CollCounters> {
        let mut colls = lock(&self.live.colls);
        while colls.len() <= idx {
            colls.push(Arc::default());
        }
        colls[idx].clone()
    }

    pub(crate) fn last_applied(&self) -> Option<OpTime> {
        unpack(self.live.last_applied.load(Ordering::SeqCst))
    }

    pub(crate) fn majority(&self) -> Majority {
        match self.live.majority.load(Ordering::SeqCst) {
            MAJORITY_UNKNOWN => Majority::Unknown,
            MAJORITY_UNBOUNDED => Majority::Unbounded,
            v => unpack(v).map_or(Majority::Unknown, Majority::At),
        }
    }

    pub(crate) fn set_last_applied(&self, t: OpTime) {
        self.live.last_applied.store(pack(t), Ordering::SeqCst);
    }

    pub(crate) fn checkpoint(&self) -> Checkpoint {
        let mut st = self.state();
        st.indexes_built = self.live.indexes_built.load(Ordering::SeqCst);
        st.indexes_total = self.live.indexes_total.load(Ordering::SeqCst);
        st.oplog_entries_applied = self.live.applied.load(Ordering::SeqCst);
        Checkpoint {
            phase: self.phase(),
            start_ts: Some(self.start_ts),
            last_applied: self.last_applied(),
            engine_state: st.encode(),
        }
    }

    /// Emits a checkpoint event (awaits channel capacity; a closed channel is ignored).
    pub(crate) async fn emit_checkpoint(&self) {
        let cp = self.checkpoint();
        tracing::debug!(task_id = %self.cfg.task_id, phase = ?cp.phase, last_applied = ?cp.last_applied, "checkpoint");
        let _ = self.events.send(EngineEvent::Checkpoint(cp)).await;
    }

    pub(crate) async fn emit(&self, ev: EngineEvent) {
        let _ = self.events.send(ev).await;
    }

    /// The current figures, with rate-derived ones computed from `rates`.
    pub(crate) fn snapshot(&self, rates: &Rates) -> ProgressSnapshot {
        let st = self.state();
        let mut collections = Vec::with_capacity(st.collections.len());
        let (mut dc, mut de, mut bc, mut be) = (0u64, 0u64, 0u64, 0u64);
        for (i, c) in st.collections.iter().enumerate() {
            let ctr = self.counters(i);
            let done_ranges = c.ranges.iter().filter(|r| r.done).count() as u32;
            let docs = ctr.docs.load(Ordering::Relaxed);
            let bytes = ctr.bytes.load(Ordering::Relaxed);
            let cp = CollectionProgress {
                namespace: c.ns.clone(),
                documents_copied: docs,
                documents_estimated: c.docs_estimated.max(docs),
                bytes_copied: bytes,
                bytes_estimated: c.bytes_estimated.max(bytes),
                ranges_total: c.ranges.len() as u32,
                ranges_done: done_ranges,
                done: done_ranges as usize == c.ranges.len(),
                eta_seconds: None,
            };
            dc += cp.documents_copied;
            de += cp.documents_estimated;
            bc += cp.bytes_copied;
            be += cp.bytes_estimated;
            collections.push(cp);
        }
        drop(st);
        let phase = self.phase();
        let last_applied = self.last_applied();
        let source_newest = unpack(self.live.source_newest.load(Ordering::SeqCst));
        let lag_seconds = match (source_newest, last_applied.or(Some(self.start_ts))) {
            (Some(n), Some(a)) if n > a => f64::from(n.seconds.saturating_sub(a.seconds)),
            _ => 0.0,
        };
        let oplog_headroom_seconds = unpack(self.live.source_oldest.load(Ordering::SeqCst))
            .map(|oldest| u64::from(self.resume_point().seconds.saturating_sub(oldest.seconds)));
        let applied = self.live.applied.load(Ordering::SeqCst);
        let mut snap = ProgressSnapshot {
            phase,
            collections,
            documents_copied: dc,
            documents_estimated: de,
            bytes_copied: bc,
            bytes_estimated: be,
            documents_per_second: 0.0,
            bytes_per_second: 0.0,
            eta_seconds: None,
            indexes_built: self.live.indexes_built.load(Ordering::SeqCst),
            indexes_total: self.live.indexes_total.load(Ordering::SeqCst),
            last_applied,
            source_newest,
            lag_seconds,
            oplog_entries_applied: applied,
            spool_bytes: lock(&self.spool).as_ref().map(|s| s.bytes()).unwrap_or(0),
            spool_cap_bytes: self.cfg.tuning.spool_cap_bytes,
            apply_entries_per_second: 0.0,
            source_entries_per_second: 0.0,
            // Never below `applied`: both count from the same base, the tailer's ahead of the applier's.
            oplog_entries_read: self.live.read.load(Ordering::SeqCst).max(applied),
            catch_up_eta_seconds: None,
            converging: false,
            spool_full_eta_seconds: None,
            oplog_headroom_seconds,
            paused: self.control.is_paused(),
            retries: self.retries.count(),
        };
        figures::derive(&mut snap, rates);
        snap
    }
}

/// The moving rates of the progress figures.
struct Windows {
    docs: RateWindow,
    bytes: RateWindow,
    applied: RateWindow,
    read: RateWindow,
    spool: RateWindow,
    collections: Vec<(RateWindow, RateWindow)>,
}

impl Windows {
    fn new() -> Self {
        Self {
            docs: RateWindow::new(RATE_WINDOW),
            bytes: RateWindow::new(RATE_WINDOW),
            applied: RateWindow::new(RATE_WINDOW),
            read: RateWindow::new(RATE_WINDOW),
            spool: RateWindow::new(RATE_WINDOW),
            collections: Vec::new(),
        }
    }

    /// Records the figures of `snap` taken at `at`; the rates over the window.
    fn record(&mut self, at: Instant, snap: &ProgressSnapshot) -> Rates {
        self.docs.push(at, snap.documents_copied as f64);
        self.bytes.push(at, snap.bytes_copied as f64);
        self.applied.push(at, snap.oplog_entries_applied as f64);
        self.read.push(at, snap.oplog_entries_read as f64);
        self.spool.push(at, snap.spool_bytes as f64);
        while self.collections.len() < snap.collections.len() {
            self.collections
                .push((RateWindow::new(RATE_WINDOW), RateWindow::new(RATE_WINDOW)));
        }
        for (c, (docs, bytes)) in snap.collections.iter().zip(self.collections.iter_mut()) {
            docs.push(at, c.documents_copied as f64);
            bytes.push(at, c.bytes_copied as f64);
        }
        Rates {
            docs: self.docs.rate(),
            bytes: self.bytes.rate(),
            applied: self.applied.rate(),
            read: self.read.rate(),
            spool: self.spool.rate(),
            collections: self
                .collections
                .iter()
                .map(|(d, b)| (d.rate(), b.rate()))
                .collect(),
        }
    }
}

/// Emits a progress event every `interval` until `done` is cancelled (also while paused).
pub(crate) async fn progress_loop(ctx: Arc<Ctx>, done: CancellationToken) {
    let interval = ctx
        .cfg
        .tuning
        .progress_interval
        .max(Duration::from_millis(50));
    let mut windows = Windows::new();
    // The first sample is the starting point of the rates.
    windows.record(Instant::now(), &ctx.snapshot(&Rates::default()));
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let mut snap = ctx.snapshot(&Rates::default());
        let rates = windows.record(Instant::now(), &snap);
        figures::derive(&mut snap, &rates);
        ctx.emit(EngineEvent::Progress(snap)).await;
    }
}
