//! The shared state of one running migration: clients, cancellation, the persisted plan
//! (`EngineState` behind a std mutex never held across `.await`), live counters, and the helpers that
//! emit checkpoints and progress events. No migration logic lives here.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mongodb::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::oplog::NsFilter;
use crate::spool::SpoolHandle;
use crate::state::EngineState;
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
    pub applied: AtomicU64,
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
            &self.cancel,
            self.retry_budget(),
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
            &self.cancel,
            self.retry_budget(),
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

    pub(crate) fn snapshot(&self, rates: (f64, f64)) -> ProgressSnapshot {
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
        let eta_seconds = match phase {
            Phase::DataSync if rates.0 > 0.0 => {
                Some((de.saturating_sub(dc) as f64 / rates.0).ceil() as u64)
            }
            Phase::DataSync => None,
            _ => Some(0),
        };
        ProgressSnapshot {
            phase,
            collections,
            documents_copied: dc,
            documents_estimated: de,
            bytes_copied: bc,
            bytes_estimated: be,
            documents_per_second: rates.0,
            bytes_per_second: rates.1,
            eta_seconds,
            indexes_built: self.live.indexes_built.load(Ordering::SeqCst),
            indexes_total: self.live.indexes_total.load(Ordering::SeqCst),
            last_applied,
            source_newest,
            lag_seconds,
            oplog_entries_applied: self.live.applied.load(Ordering::SeqCst),
            spool_bytes: lock(&self.spool).as_ref().map(|s| s.bytes()).unwrap_or(0),
        }
    }
}

/// Emits a progress event every `interval` until `done` is cancelled.
pub(crate) async fn progress_loop(ctx: Arc<Ctx>, done: CancellationToken) {
    let interval = ctx
        .cfg
        .tuning
        .progress_interval
        .max(Duration::from_millis(50));
    let mut last = (Instant::now(), 0u64, 0u64, 0u64);
    let mut rates = (0.0f64, 0.0f64);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let snap = ctx.snapshot(rates);
        let now = Instant::now();
        let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let (docs, bytes) = match snap.phase {
            Phase::OplogSync => (snap.oplog_entries_applied, 0),
            _ => (snap.documents_copied, snap.bytes_copied),
        };
        let dr = docs.saturating_sub(last.1) as f64 / dt;
        let br = bytes.saturating_sub(last.2) as f64 / dt;
        rates = (0.5 * rates.0 + 0.5 * dr, 0.5 * rates.1 + 0.5 * br);
        last = (now, docs, bytes, 0);
        let snap = ProgressSnapshot {
            documents_per_second: rates.0,
            bytes_per_second: rates.1,
            ..snap
        };
        ctx.emit(EngineEvent::Progress(snap)).await;
    }
}
